//! An image's config applied to a sandbox's, as `docker run` does: what
//! the sandbox config says wins.
//!
//! - Command: with no command in the sandbox config, the image's
//!   `Entrypoint` + `Cmd`; with one, `Entrypoint` + that command and its
//!   arguments (docker's `docker run IMAGE CMD…`).
//! - Environment: the image's `Env`, then the sandbox's variables over it.
//! - Working directory and user: the sandbox's, else the image's. A user
//!   or group given by name is looked up in the image's `/etc/passwd` and
//!   `/etc/group` (the topmost layer that has the file), since the sandbox
//!   takes numbers only.

use std::io::Read;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;

use super::Image;
use crate::config::SandboxConfig;
use crate::error::{Error, Result};

/// Applies `image` (whose layer directories are `lowers`, top first) to
/// `config`.
///
/// # Errors
/// [`Error::InvalidConfig`] (`image`) if the image gives no command and the
/// config has none, or names a user or group its files do not have.
pub fn apply_image(config: &mut SandboxConfig, image: &Image, lowers: &[PathBuf]) -> Result<()> {
    let invalid = |reason: String| Error::InvalidConfig {
        field: "image".into(),
        reason,
    };
    let run = &image.config;
    let mut argv: Vec<String> = run.entrypoint.clone();
    if config.command.is_empty() {
        argv.extend(run.cmd.iter().cloned());
    } else {
        argv.push(std::mem::take(&mut config.command));
        argv.append(&mut config.args);
    }
    let mut argv = argv.into_iter();
    match argv.next() {
        Some(command) => {
            config.command = command;
            config.args = argv.collect();
        }
        None => {
            return Err(invalid(format!(
                "image {} has no command (Entrypoint, Cmd): give one",
                image.short_id()
            )))
        }
    }
    for pair in &run.env {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if !key.is_empty() && !config.env.contains_key(key) {
            config.env.insert(key.to_string(), value.to_string());
        }
    }
    if config.working_dir.is_none() {
        config.working_dir = run.working_dir.clone();
    }
    if config.user.is_none() {
        if let Some(user) = &run.user {
            config.user = Some(numeric_user(user, lowers).map_err(invalid)?);
        }
    }
    Ok(())
}

/// `user[:group]` in numbers, names looked up in the image's files.
fn numeric_user(user: &str, lowers: &[PathBuf]) -> std::result::Result<String, String> {
    let (name, group) = match user.split_once(':') {
        Some((name, group)) => (name, Some(group)),
        None => (user, None),
    };
    let numeric = |s: &str| s.parse::<u32>().ok();
    let passwd = || read_from_layers(lowers, "etc/passwd");
    let (uid, primary) = match numeric(name) {
        Some(uid) => (uid, None),
        None => {
            let entry = passwd()
                .as_deref()
                .and_then(|text| find(text, name))
                .ok_or_else(|| format!("user {name:?} of the image is not in its /etc/passwd"))?;
            let uid = entry.get(2).and_then(|s| numeric(s));
            let gid = entry.get(3).and_then(|s| numeric(s));
            (
                uid.ok_or_else(|| format!("bad /etc/passwd entry of {name:?}"))?,
                gid,
            )
        }
    };
    let gid = match group {
        Some(group) => match numeric(group) {
            Some(gid) => gid,
            None => read_from_layers(lowers, "etc/group")
                .as_deref()
                .and_then(|text| find(text, group))
                .and_then(|entry| entry.get(2).and_then(|s| numeric(s)))
                .ok_or_else(|| format!("group {group:?} of the image is not in its /etc/group"))?,
        },
        None => primary.unwrap_or(uid),
    };
    Ok(format!("{uid}:{gid}"))
}

/// The `:`-separated fields of the line of `text` whose first field is
/// `name`.
fn find(text: &str, name: &str) -> Option<Vec<String>> {
    text.lines()
        .map(|line| line.split(':').map(str::to_string).collect::<Vec<_>>())
        .find(|fields| fields.first().is_some_and(|first| first == name))
}

/// The file at `path` in the topmost layer that has it (a whiteout hides
/// it), read inside that layer.
fn read_from_layers(lowers: &[PathBuf], path: &str) -> Option<String> {
    for layer in lowers {
        let Ok(root) = nix::fcntl::open(
            Path::new(layer),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        ) else {
            continue;
        };
        // O_PATH first: a whiteout (a device) is looked at, not opened.
        let Ok(found) = super::layer::open_in(&root, Path::new(path), OFlag::O_PATH) else {
            continue;
        };
        let meta = std::fs::File::from(found).metadata().ok()?;
        if meta.file_type().is_char_device() {
            return None;
        }
        let mut text = String::new();
        std::fs::File::from(super::layer::open_in(&root, Path::new(path), OFlag::O_RDONLY).ok()?)
            .take(1 << 20)
            .read_to_string(&mut text)
            .ok()?;
        return Some(text);
    }
    None
}
