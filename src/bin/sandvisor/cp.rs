//! `sandvisor cp SRC NAME:DST` and `sandvisor cp NAME:SRC DST`, with docker
//! cp's semantics (one side is a sandbox path, `NAME:PATH`):
//! - a destination directory that exists gets the source inside it, under
//!   its own name; `SRC/.` copies the directory's contents instead;
//! - a destination that does not exist (its parent must) becomes a copy of
//!   the source; one ending in `/` must be an existing directory;
//! - a file onto an existing file replaces it; a directory onto a file is
//!   an error;
//! - `-` as SRC reads a tar stream from stdin (unpacked at DST, a
//!   directory); `-` as DST writes the tar stream to stdout.
//!
//! The sandbox side goes through [`sandvisor::SandboxHandle`] (here, the
//! daemon's control socket, or the stopped sandbox's layers). The host side
//! trusts nothing from the sandbox: its archive is unpacked with the `tar`
//! crate's `unpack_in` (no `..`, no writing through a link out of the
//! destination), into a staging directory beside the target when a name
//! changes.

use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use sandvisor::{Error, FileKind, SandboxHandle};
use tokio::io::AsyncRead;

use crate::args::CpArgs;
use crate::open;

/// One side of a copy.
enum Side {
    Host(String),
    Sandbox { name: String, path: String },
}

/// `NAME:PATH` when the text before the first `:` holds no `/` (docker's
/// rule: a host path with a colon is written `./a:b`).
fn side(arg: &str) -> Side {
    match arg.split_once(':') {
        Some((name, path)) if !name.is_empty() && !name.contains('/') => Side::Sandbox {
            name: name.to_string(),
            path: if path.is_empty() {
                "/".into()
            } else {
                path.to_string()
            },
        },
        _ => Side::Host(arg.to_string()),
    }
}

fn usage(message: &str) -> Error {
    Error::InvalidConfig {
        field: "cp".into(),
        reason: message.into(),
    }
}

fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}

/// Whether `path` asks for a directory's contents (`DIR/.`).
fn contents(path: &str) -> bool {
    path == "." || path.ends_with("/.")
}

/// The last component of `path` (`None` for `/` or `DIR/.`).
fn base(path: &str) -> Option<String> {
    if contents(path) {
        return None;
    }
    Path::new(path)
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
}

/// The directory holding `path`, inside a sandbox.
fn parent_in(path: &str) -> String {
    match Path::new(path.trim_end_matches('/')).parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.display().to_string(),
        _ => "/".into(),
    }
}

/// `sandvisor cp`.
///
/// # Errors
/// A usage error (both or neither side a sandbox), the sandbox's typed
/// errors naming the path, [`Error::Io`] naming a host path.
pub(crate) async fn cp(home: Option<PathBuf>, args: CpArgs) -> sandvisor::Result<ExitCode> {
    let runtime = open(home).await?;
    match (side(&args.src), side(&args.dst)) {
        (Side::Host(src), Side::Sandbox { name, path }) => {
            copy_in(&runtime.get(&name).await?, &src, &path).await?
        }
        (Side::Sandbox { name, path }, Side::Host(dst)) => {
            copy_out(&runtime.get(&name).await?, &path, &dst).await?
        }
        _ => {
            return Err(usage(
                "exactly one of SRC and DST must be a sandbox path (NAME:PATH)",
            ))
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A tar stream of the host path `src` whose top entry is named `name`
/// (`.`: the contents), built on a thread as it is read.
fn host_tar(src: PathBuf, name: String) -> sandvisor::Result<impl AsyncRead + Unpin> {
    let (reader, writer) = StdUnixStream::pair().map_err(io("socketpair"))?;
    let meta = std::fs::symlink_metadata(&src).map_err(io(&src))?;
    std::thread::spawn(move || {
        let mut builder = tar::Builder::new(writer);
        builder.follow_symlinks(false);
        let written = if meta.is_dir() {
            builder.append_dir_all(&name, &src)
        } else {
            builder.append_path_with_name(&src, &name)
        };
        if let Err(err) = written.and_then(|()| builder.finish()) {
            // The reader sees a cut-short archive and fails with it.
            eprintln!("sandvisor: reading {}: {err}", src.display());
        }
    });
    reader.set_nonblocking(true).map_err(io("socketpair"))?;
    tokio::net::UnixStream::from_std(reader).map_err(io("socketpair"))
}

async fn copy_in(sandbox: &SandboxHandle, src: &str, dst: &str) -> sandvisor::Result<()> {
    if src == "-" {
        return sandbox.copy_in(tokio::io::stdin(), dst).await;
    }
    let src_is_dir = std::fs::metadata(src).map_err(io(src))?.is_dir();
    let existing = match sandbox.stat(dst).await {
        Ok(entry) => Some(entry.kind),
        Err(Error::FileNotFound { .. }) => None,
        Err(err) => return Err(err),
    };
    let name = base(src).unwrap_or_else(|| ".".into());
    let (name, into) = match existing {
        // Into the directory, under the source's own name (or its contents).
        Some(FileKind::Dir) => (name, dst.to_string()),
        Some(_) if src_is_dir => {
            return Err(Error::NotADirectory {
                sandbox: sandbox.name().to_string(),
                path: dst.to_string(),
            })
        }
        None if dst.ends_with('/') => {
            return Err(Error::FileNotFound {
                sandbox: sandbox.name().to_string(),
                path: dst.to_string(),
            })
        }
        // A new (or replaced) name in the parent.
        _ => match base(dst) {
            Some(target) => (target, parent_in(dst)),
            None => return Err(usage("the destination names no file")),
        },
    };
    let tar = host_tar(PathBuf::from(src), name)?;
    sandbox.copy_in(tar, &into).await
}

async fn copy_out(sandbox: &SandboxHandle, src: &str, dst: &str) -> sandvisor::Result<()> {
    // Asked first: a stopped sandbox serves one operation at a time.
    let source_is_dir = dst != "-" && sandbox.stat(src).await?.kind == FileKind::Dir;
    let mut stream = sandbox.copy_out(src).await?;
    if dst == "-" {
        let mut stdout = tokio::io::stdout();
        tokio::io::copy(&mut stream, &mut stdout)
            .await
            .map_err(io("<stdout>"))?;
        return Ok(());
    }
    let dst = PathBuf::from(dst);
    // The archive is unpacked on a thread, fed through a socket pair.
    let (reader, writer) = StdUnixStream::pair().map_err(io("socketpair"))?;
    writer.set_nonblocking(true).map_err(io("socketpair"))?;
    let mut writer = tokio::net::UnixStream::from_std(writer).map_err(io("socketpair"))?;
    let top = base(src);
    let unpack = tokio::task::spawn_blocking(move || unpack(reader, &dst, top, source_is_dir));
    let fed = tokio::io::copy(&mut stream, &mut writer).await;
    drop(writer);
    let unpacked = unpack
        .await
        .map_err(|e| Error::Internal(format!("unpacking: {e}")))?;
    fed.map_err(io("<archive>"))?;
    unpacked
}

/// Unpacks the archive on `reader` as `dst` says (see the module docs);
/// `top`: the archive's top entry name (`None`: its entries are the
/// contents, below `.`).
fn unpack(
    reader: StdUnixStream,
    dst: &Path,
    top: Option<String>,
    source_is_dir: bool,
) -> sandvisor::Result<()> {
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    // Never a setuid or setgid file of the sandbox's making on the host
    // (owned by whoever runs `cp`, root often).
    archive.set_mask(0o6000);
    archive.set_preserve_mtime(true);
    let existing = std::fs::metadata(dst).ok();
    if existing.as_ref().is_some_and(|meta| meta.is_dir()) {
        // Into a directory that holds other things: only what was asked
        // for (entries below `top`) may land there.
        for entry in archive.entries().map_err(io(dst))? {
            let mut entry = entry.map_err(io(dst))?;
            if let Some(top) = &top {
                let path = entry.path().map_err(io(dst))?.into_owned();
                let first = path.components().find_map(|part| match part {
                    std::path::Component::Normal(name) => Some(name.to_owned()),
                    _ => None,
                });
                if first.as_deref() != Some(std::ffi::OsStr::new(top)) {
                    return Err(Error::Io {
                        path: dst.join(&path),
                        source: std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            format!("the archive holds {} beside {top}", path.display()),
                        ),
                    });
                }
            }
            entry.unpack_in(dst).map_err(io(dst))?;
        }
        return Ok(());
    }
    if existing.is_some() && source_is_dir {
        return Err(Error::Io {
            path: dst.to_path_buf(),
            source: std::io::Error::from_raw_os_error(libc::ENOTDIR),
        });
    }
    if existing.is_none() && dst.to_string_lossy().ends_with('/') {
        return Err(Error::Io {
            path: dst.to_path_buf(),
            source: std::io::Error::from_raw_os_error(libc::ENOENT),
        });
    }
    // A new name: unpacked beside it first, then moved into place.
    let parent = match dst.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let staging = Staging::new(&parent)?;
    archive.unpack(&staging.0).map_err(io(dst))?;
    let from = match &top {
        Some(name) => staging.0.join(name),
        // The staging directory itself becomes `dst`.
        None => staging.0.clone(),
    };
    std::fs::rename(&from, dst).map_err(io(dst))
}

/// A private directory beside the target, removed with whatever is left
/// in it when dropped.
struct Staging(PathBuf);

impl Staging {
    fn new(parent: &Path) -> sandvisor::Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = parent.join(format!(".sandvisor-cp-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&path).map_err(io(&path))?;
        Ok(Self(path))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // Gone already when it became the destination.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
