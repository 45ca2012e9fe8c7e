//! Where sandvisor keeps its state, and sandbox names.
//!
//! Layout under the home: `sandvisor.db`, and `sandboxes/<name>/logs/` holding
//! `exec.log`, `exec.log.1` … `exec.log.4`, `runtime.log`, `kernel.log`,
//! `boot-error.json`.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The environment variable naming the home directory.
pub const HOME_ENV: &str = "SANDVISOR_HOME";

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
