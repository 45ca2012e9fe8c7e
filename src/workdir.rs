//! Work directories: where images and snapshots are put together before
//! they are renamed into place, so that nothing half-written is ever found
//! where it belongs.
//!
//! A work directory is named after its process (pid and start time) and is
//! deleted when its [`WorkDir`] drops; one left by a process that died (a
//! SIGKILL) is deleted by the next [`sweep`] of its parent.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// Numbers this process's work directories.
static NEXT: AtomicU64 = AtomicU64::new(0);

/// A directory deleted (with its contents) when dropped.
#[derive(Debug)]
pub(crate) struct WorkDir(PathBuf);

impl WorkDir {
    /// A new work directory in `parent` (made 0700 if missing), named
    /// `<prefix><pid>-<start ticks>-<n>`.
    ///
    /// # Errors
    /// [`Error::Io`] if either cannot be made.
    pub(crate) fn new(parent: &Path, prefix: &str) -> Result<Self> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(|source| Error::Io {
                path: parent.to_path_buf(),
                source,
            })?;
        let me = crate::store::this_host();
        let path = parent.join(format!(
            "{prefix}{}-{}-{}",
            me.pid,
            me.start_ticks,
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })?;
        Ok(Self(path))
    }

    /// Its path.
    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Deletes the work directories (`<prefix>…`) in `parent` whose process is
/// gone.
pub(crate) fn sweep(parent: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(prefix) else {
            continue;
        };
        let mut parts = rest.splitn(3, '-');
        let owner = match (parts.next(), parts.next()) {
            (Some(pid), Some(start)) => pid.parse().ok().zip(start.parse().ok()),
            _ => None,
        };
        let alive = owner.is_some_and(|(pid, start_ticks)| {
            crate::store::host_alive(sandvisor_actors::lifecycle::HostId { pid, start_ticks })
        });
        if !alive {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
