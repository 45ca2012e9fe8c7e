//! `boot-error.json`: why a sandbox failed before it was ready.
//!
//! # Contract
//! - Written atomically (temp file, then rename) by the supervisor when a
//!   run ends before Ready (boot failure or boot timeout); removed by the
//!   supervisor when a run reaches Ready.
//! - Failing to write or remove it is logged, never fatal: the run's outcome
//!   is in the store either way.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use chrono::Utc;
use serde::Serialize;

use super::BootFailure;

/// The boot error record's file name in the log directory.
pub const BOOT_ERROR_FILE: &str = "boot-error.json";

/// SPEC §5's fields, exactly: what else a [`BootFailure`] carries is for
/// the host.
#[derive(Serialize)]
struct BootErrorRecord<'a> {
    t: String,
    stage: crate::protocol::BootStage,
    errno: i32,
    message: &'a str,
}

/// Writes `boot-error.json` atomically (temp file, then rename).
pub fn write(log_dir: &Path, failure: &BootFailure) {
    let record = BootErrorRecord {
        t: Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        stage: failure.stage,
        errno: failure.errno,
        message: &failure.message,
    };
    let result = serde_json::to_vec_pretty(&record)
        .map_err(std::io::Error::other)
        .and_then(|json| {
            let tmp = log_dir.join(".boot-error.json.tmp");
            // 0600, as every file in the home.
            std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?
                .write_all(&json)?;
            std::fs::rename(&tmp, log_dir.join(BOOT_ERROR_FILE))
        });
    if let Err(err) = result {
        tracing::warn!(dir = %log_dir.display(), %err, "cannot write boot-error.json");
    }
}

/// Removes `boot-error.json` if there is one.
pub fn remove(log_dir: &Path) {
    match std::fs::remove_file(log_dir.join(BOOT_ERROR_FILE)) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            tracing::warn!(dir = %log_dir.display(), %err, "cannot remove boot-error.json");
        }
        _ => {}
    }
}
