//! Where sandvisor keeps its state, and sandbox names.
//!
//! Layout under the home: `sandvisor.db`, and `sandboxes/<name>/logs/` holding
//! `exec.log`, `exec.log.1` … `exec.log.4`, `runtime.log`, `kernel.log`,
//! `boot-error.json`; `sandboxes/<name>/fs/` holds the sandbox's writable
//! layer and the mount point of its root.
//!
//! # Contract
//! Only the home's owner can see into it: directories are created 0700
//! ([`create_private_dir`]), files 0600 ([`PRIVATE_FILE_MODE`]) — the
//! database and its WAL, logs, control sockets and their locks. A home that
//! exists already is narrowed to 0700 when a runtime opens it.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The environment variable naming the home directory.
pub const HOME_ENV: &str = "SANDVISOR_HOME";

/// The mode of every file sandvisor creates in the home.
pub const PRIVATE_FILE_MODE: u32 = 0o600;
/// The mode of every directory sandvisor creates in the home.
pub const PRIVATE_DIR_MODE: u32 = 0o700;
/// A sandbox's filesystem directory (writable layer, root mount point),
/// beside `logs/` in its directory.
pub const FS_DIR: &str = "fs";

/// Creates `dir` and any missing parents, each 0700 (the umask can only
/// narrow that further). A directory that exists is left as it is.
///
/// # Errors
/// What the OS said, as [`std::io::Error`].
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR_MODE)
        .create(dir)
}

/// Creates the home (0700) if missing, else narrows it to 0700.
///
/// # Errors
/// [`Error::Io`] naming the home.
pub fn create_home(home: &Path) -> Result<()> {
    let io = |source| Error::Io {
        path: home.to_path_buf(),
        source,
    };
    create_private_dir(home).map_err(io)?;
    std::fs::set_permissions(home, std::fs::Permissions::from_mode(PRIVATE_DIR_MODE)).map_err(io)
}

/// Longest sandbox name, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// The home named by the environment: `SANDVISOR_HOME`, else `$HOME/.sandvisor`.
///
/// # Errors
/// [`Error::NoHome`] if neither is set (or both are empty).
pub fn home_from_env() -> Result<PathBuf> {
    if let Some(home) = std::env::var_os(HOME_ENV).filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(home));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".sandvisor"))
        .ok_or(Error::NoHome)
}

/// Checks a sandbox name: 1–128 bytes, first character ASCII alphanumeric, the
/// rest ASCII alphanumeric, `.`, `-` or `_`.
///
/// # Errors
/// [`Error::InvalidName`] if `name` breaks the rules.
pub fn validate_name(name: &str) -> Result<()> {
    let bytes = name.as_bytes();
    let valid = !bytes.is_empty()
        && bytes.len() <= MAX_NAME_LEN
        && bytes[0].is_ascii_alphanumeric()
        && bytes[1..]
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if valid {
        Ok(())
    } else {
        Err(Error::InvalidName(name.to_string()))
    }
}

/// `<home>/sandboxes/<name>`, after checking the name.
///
/// # Errors
/// [`Error::InvalidName`] if `name` breaks the rules.
pub fn sandbox_dir(home: &Path, name: &str) -> Result<PathBuf> {
    validate_name(name)?;
    Ok(home.join("sandboxes").join(name))
}

/// `<home>/sandboxes/<name>/logs`, after checking the name.
///
/// # Errors
/// [`Error::InvalidName`] if `name` breaks the rules.
pub fn log_dir(home: &Path, name: &str) -> Result<PathBuf> {
    Ok(sandbox_dir(home, name)?.join("logs"))
}

/// Where a running sandbox's agent waits for a host that re-adopts it:
/// `<home>/sandboxes/<name>/agent.sock`.
///
/// # Errors
/// [`Error::InvalidName`] if `name` breaks the rules.
pub fn adopt_socket(home: &Path, name: &str) -> Result<PathBuf> {
    Ok(sandbox_dir(home, name)?.join("agent.sock"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["a", "A9", "web-1", "x.y_z", &"n".repeat(128)] {
            assert!(validate_name(good).is_ok(), "{good:?}");
        }
        for bad in [
            "",
            &"n".repeat(129),
            "../x",
            "a/b",
            "-lead",
            ".hidden",
            "_x",
            "a\0b",
            "sp ace",
            "é",
            "a:b",
        ] {
            assert!(
                matches!(validate_name(bad), Err(Error::InvalidName(n)) if n == bad),
                "{bad:?}"
            );
        }
    }
}
