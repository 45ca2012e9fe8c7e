//! `runtime.log`: a sandbox's own diagnostics, written through `tracing`.
//!
//! Each note is an event dispatched to a subscriber that formats it with an
//! RFC 3339 timestamp into the sandbox's `runtime.log`, so the file reads back
//! as System entries with their own times (SPEC §3). The subscriber is built
//! per note rather than kept per sandbox: notes are rare (start, stop,
//! restarts) and idle sandboxes should cost the host nothing.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;

use tracing::Level;

/// The file's name in the log directory.
pub const RUNTIME_LOG: &str = "runtime.log";
/// A microVM's console (its guest kernel's and init's messages, and qemu's
/// own), in the same directory.
pub const KERNEL_LOG: &str = "kernel.log";

/// Appends one event to `<log_dir>/runtime.log`.
pub fn append(log_dir: &Path, level: Level, sandbox: &str, message: &str) {
    // 0600, as every file in the home.
    let file = match OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(log_dir.join(RUNTIME_LOG))
    {
        Ok(file) => file,
        Err(err) => {
            tracing::debug!(dir = %log_dir.display(), %err, "cannot open runtime.log");
            return;
        }
    };
    let subscriber = tracing_subscriber::fmt()
        .with_writer(Mutex::new(file))
        .with_ansi(false)
        .with_target(false)
        .with_max_level(Level::TRACE)
        .finish();
    tracing::subscriber::with_default(subscriber, || match level {
        Level::ERROR => tracing::error!(sandbox, "{message}"),
        Level::WARN => tracing::warn!(sandbox, "{message}"),
        _ => tracing::info!(sandbox, "{message}"),
    });
    // A directory claimed by its RelayTap has no inotify watch: readers in
    // this process learn of the note here.
    if let Ok(dir) = std::fs::canonicalize(log_dir) {
        crate::log::read::watch_hub::wake_readers_of(&dir);
    }
}
