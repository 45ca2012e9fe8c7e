//! File sessions: a file operation ([`FileOp`]) carried out by a process
//! the agent forks inside the sandbox, confined as any session is.
//!
//! # Contract
//! - [`spawn`] forks; the child leads a process group of its own, takes the
//!   three pipes as its standard streams, closes every other descriptor (the
//!   host's socket among them), applies the session's confinement
//!   ([`confine::apply`]) and carries the operation
//!   out from `/` of the sandbox: nothing outside the sandbox's root is in
//!   its mount namespace or reachable from its root, and it holds no more
//!   privilege than the sandbox's own code. It never returns to the agent's
//!   code: it writes one JSON [`FileResult`] on stderr and exits 0 (success)
//!   or 1.
//! - Archive entries unpack below the destination as if it were `/`: each
//!   path is resolved with `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`
//!   from the destination, so neither a symlink in the archive nor one the
//!   sandbox planted under the destination leads out of it; `..` in an
//!   entry's name or in a hard link's target is refused (`Escapes`), a
//!   leading `/` is dropped. Directories, regular files, symlinks and hard
//!   links are unpacked; other entries (devices, fifos) are skipped — a
//!   sandbox cannot make devices. Modes and mtimes are kept; the owner is
//!   the session's user (whoever creates a file owns it).
//! - The destination itself (and every path of the other operations) is
//!   resolved as the sandbox's own processes resolve it, from its root.

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::signal::SigSet;
use nix::sys::stat::Mode;
use nix::unistd::ForkResult;
use sandvisor_actors::protocol::{
    Confinement, FileAnswer, FileFailure, FileFailureKind, FileKind, FileOp, FileResult, FileStat,
    Ids,
};

use super::confine::{self, Prepared};
use super::session::Spawned;

/// Bytes per write of a file session's output (one `Output` frame's worth).
const OUTPUT_BUFFER: usize = 64 * 1024;

/// Forks the process that carries out `op`, confined by `confine` (or, for
/// an unconfined sandbox, only switched to `user`); returns the agent's
/// ends of its stdin, stdout and stderr.
///
/// # Errors
/// The confinement could not be prepared, or a pipe or the fork failed.
pub(super) fn spawn(
    op: &FileOp,
    confine: Option<&Confinement>,
    user: Option<Ids>,
) -> io::Result<Spawned> {
    let prepared = confine.map(confine::prepare).transpose()?;
    let pipe = || nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(io::Error::from);
    let (in_read, in_write) = pipe()?;
    let (out_read, out_write) = pipe()?;
    let (err_read, err_write) = pipe()?;
    // SAFETY: the agent is single-threaded, so the child may run any code.
    match unsafe { nix::unistd::fork() }.map_err(io::Error::from)? {
        ForkResult::Child => {
            let streams = [in_read, out_write, err_write];
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                child(op, prepared.as_ref(), user, streams)
            }))
            .unwrap_or(2);
            // SAFETY: ends the child without running the agent's exit path.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            // Both sides set the group, so a signal to it right after the
            // fork cannot miss the child.
            let _ = nix::unistd::setpgid(child, child);
            Ok(Spawned {
                pid: child,
                stdin: Some(in_write),
                stdout: Some(out_read),
                stderr: Some(err_read),
                terminal: None,
                windowed: true,
            })
        }
    }
}

/// The forked child: streams in place, confinement, the operation, its
/// result on stderr. Returns the exit code.
fn child(
    op: &FileOp,
    prepared: Option<&Prepared>,
    user: Option<Ids>,
    streams: [OwnedFd; 3],
) -> i32 {
    // SAFETY: plain syscalls on this process; the descriptors are its own.
    unsafe {
        libc::setpgid(0, 0);
        for (target, fd) in streams.into_iter().enumerate() {
            let fd = fd.into_raw_fd();
            libc::dup2(fd, target as RawFd);
        }
        // Nothing of the agent's (its host socket, other sessions' pipes)
        // stays open here.
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
        libc::umask(0o022);
        libc::chdir(c"/".as_ptr());
    }
    // The agent reads its signals from a signalfd with them blocked; the
    // operation takes them as any process does.
    let _ = SigSet::all().thread_unblock();
    let result = enter(prepared, user)
        .map_err(|err| failure(FileFailureKind::Other, "/", format!("confinement: {err}")))
        .and_then(|()| run(op));
    let code = i32::from(result.is_err());
    // SAFETY: fd 2 is this process's stderr pipe; never closed here.
    let mut stderr = ManuallyDrop::new(unsafe { File::from_raw_fd(2) });
    let _ = serde_json::to_writer(&mut *stderr, &result);
    code
}

/// Confines this process as a session (see the module docs).
fn enter(prepared: Option<&Prepared>, user: Option<Ids>) -> io::Result<()> {
    match (prepared, user) {
        (Some(prepared), user) => confine::apply(prepared, user),
        (None, Some(ids)) => {
            // SAFETY: plain syscalls on this process's credentials.
            if unsafe { libc::setresgid(ids.gid, ids.gid, ids.gid) } < 0
                || unsafe { libc::setresuid(ids.uid, ids.uid, ids.uid) } < 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        }
        (None, None) => Ok(()),
    }
}

/// Carries out `op` on the standard streams.
fn run(op: &FileOp) -> FileResult {
    // SAFETY: fds 0 and 1 are this process's pipes; never closed here.
    let input = ManuallyDrop::new(unsafe { File::from_raw_fd(0) });
    let output = ManuallyDrop::new(unsafe { File::from_raw_fd(1) });
    let mut output = BufWriter::with_capacity(OUTPUT_BUFFER, &*output);
    let answer = match op {
        FileOp::CopyIn { dest } => copy_in(dest, &*input),
        FileOp::CopyOut { path } => copy_out(path, &mut output),
        FileOp::Read { path } => read(path, &mut output),
        FileOp::Write { path, mode } => write(path, *mode, &*input),
        FileOp::List { path } => list(path),
        FileOp::Stat { path } => std::fs::symlink_metadata(path)
            .map(|meta| FileAnswer::Stat(stat_of(name_of(path), &meta)))
            .map_err(|err| io_failure(path, &err)),
        FileOp::Remove { path, recursive } => remove(path, *recursive),
        FileOp::Mkdir { path, parents } => mkdir(path, *parents),
    }?;
    output.flush().map_err(|err| io_failure("<output>", &err))?;
    Ok(answer)
}

fn failure(kind: FileFailureKind, path: &str, message: impl Into<String>) -> FileFailure {
    FileFailure {
        kind,
        path: path.to_string(),
        message: message.into(),
    }
}

/// `err` about `path`, by kind.
fn io_failure(path: &str, err: &io::Error) -> FileFailure {
    let kind = match err.raw_os_error() {
        Some(libc::ENOENT) => FileFailureKind::NotFound,
        Some(libc::ENOTDIR) => FileFailureKind::NotADirectory,
        Some(libc::EISDIR | libc::ENOTEMPTY) => FileFailureKind::IsADirectory,
        Some(libc::EEXIST) => FileFailureKind::Exists,
        // RESOLVE_IN_ROOT never leaves its root; EXDEV is a magic link.
        Some(libc::EXDEV) => FileFailureKind::Escapes,
        _ => FileFailureKind::Other,
    };
    failure(kind, path, err.to_string())
}

fn errno_failure(path: &str, errno: Errno) -> FileFailure {
    io_failure(path, &io::Error::from(errno))
}

/// The last component of `path` (`/` for the root).
fn name_of(path: &str) -> String {
    Path::new(path).file_name().map_or_else(
        || "/".to_string(),
        |name| name.to_string_lossy().into_owned(),
    )
}

fn stat_of(name: String, meta: &std::fs::Metadata) -> FileStat {
    let kind = match meta.file_type() {
        t if t.is_symlink() => FileKind::Symlink,
        t if t.is_dir() => FileKind::Dir,
        t if t.is_file() => FileKind::File,
        _ => FileKind::Other,
    };
    FileStat {
        name,
        kind,
        size: meta.len(),
        mode: meta.mode() & 0o7777,
        mtime: meta.mtime(),
    }
}

fn read(path: &str, output: &mut impl Write) -> FileResult {
    // A fifo or device planted where the host expects a file would make the
    // read wait or never end: regular files only, no further than their
    // size when opened.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|err| io_failure(path, &err))?;
    let meta = file.metadata().map_err(|err| io_failure(path, &err))?;
    if meta.is_dir() {
        return Err(failure(
            FileFailureKind::IsADirectory,
            path,
            "is a directory",
        ));
    }
    if !meta.is_file() {
        return Err(failure(FileFailureKind::Other, path, "not a regular file"));
    }
    io::copy(&mut file.take(meta.len()), output).map_err(|err| io_failure(path, &err))?;
    Ok(FileAnswer::Done)
}

fn write(path: &str, mode: u32, mut input: impl Read) -> FileResult {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode & 0o7777)
        .open(path)
        .map_err(|err| io_failure(path, &err))?;
    io::copy(&mut input, &mut file).map_err(|err| io_failure(path, &err))?;
    // The umask cut the mode at creation, and an existing file kept its own.
    file.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))
        .map_err(|err| io_failure(path, &err))?;
    Ok(FileAnswer::Done)
}

fn list(path: &str) -> FileResult {
    let dir = std::fs::read_dir(path).map_err(|err| io_failure(path, &err))?;
    let mut entries = Vec::new();
    for entry in dir {
        let entry = entry.map_err(|err| io_failure(path, &err))?;
        // A file removed meanwhile is no longer an entry.
        if let Ok(meta) = entry.path().symlink_metadata() {
            entries.push(stat_of(
                entry.file_name().to_string_lossy().into_owned(),
                &meta,
            ));
        }
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(FileAnswer::List(entries))
}

fn remove(path: &str, recursive: bool) -> FileResult {
    let meta = std::fs::symlink_metadata(path).map_err(|err| io_failure(path, &err))?;
    let removed = match (meta.is_dir(), recursive) {
        (true, true) => std::fs::remove_dir_all(path),
        (true, false) => std::fs::remove_dir(path),
        (false, _) => std::fs::remove_file(path),
    };
    removed.map_err(|err| io_failure(path, &err))?;
    Ok(FileAnswer::Done)
}

fn mkdir(path: &str, parents: bool) -> FileResult {
    let made = if parents {
        std::fs::create_dir_all(path)
    } else {
        std::fs::create_dir(path)
    };
    made.map_err(|err| io_failure(path, &err))?;
    Ok(FileAnswer::Done)
}

/// `path` as a tar stream: a file (or link) as one entry named by its
/// basename, a directory as the top entry with everything under it; a
/// path ending in `/.` as its contents, named below `.`.
fn copy_out(path: &str, output: &mut impl Write) -> FileResult {
    let meta = std::fs::symlink_metadata(path).map_err(|err| io_failure(path, &err))?;
    // `DIR/.` (docker's "the contents"): entries below `.`, no top name.
    let contents = path == "." || path.ends_with("/.");
    let name = match Path::new(path).file_name() {
        Some(name) if !contents => name.to_os_string(),
        _ => OsString::from("."),
    };
    let mut builder = tar::Builder::new(output);
    // A link is copied as a link (docker cp without -L).
    builder.follow_symlinks(false);
    let written = if meta.is_dir() {
        builder.append_dir_all(&name, path)
    } else {
        builder.append_path_with_name(path, &name)
    };
    written
        .and_then(|()| builder.finish())
        .map_err(|err| io_failure(path, &err))?;
    Ok(FileAnswer::Done)
}

/// An entry's name as components below the destination: `None` if one is
/// `..`; `.`, empty components and a leading `/` are dropped.
fn components(raw: &[u8]) -> Option<Vec<OsString>> {
    let mut parts = Vec::new();
    for part in raw.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return None,
            name => parts.push(OsString::from_vec(name.to_vec())),
        }
    }
    Some(parts)
}

fn joined(parts: &[OsString]) -> OsString {
    let mut path = OsString::from(".");
    for part in parts {
        path.push("/");
        path.push(part);
    }
    path
}

/// `openat2(dir, path, flags, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`:
/// `dir` is the root of the lookup, whatever links `path` meets.
fn open_in(dir: &OwnedFd, path: &OsStr, flags: i32, mode: u32) -> Result<OwnedFd, Errno> {
    let path = CString::new(path.as_bytes()).map_err(|_| Errno::EINVAL)?;
    // SAFETY: open_how is plain data; zero is "unset" for every field.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    if flags & libc::O_CREAT != 0 {
        how.mode = u64::from(mode);
    }
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: a NUL-terminated path and an open_how of the size given.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            path.as_ptr(),
            std::ptr::addr_of!(how),
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: a new descriptor this process owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// The directory `parts` below `dest` (resolved in it as its root),
/// created with its missing parents.
fn ensure_dirs(dest: &OwnedFd, parts: &[OsString], shown: &str) -> Result<OwnedFd, FileFailure> {
    let dir_flags = libc::O_PATH | libc::O_DIRECTORY;
    match open_in(dest, &joined(parts), dir_flags, 0) {
        Err(Errno::ENOENT) => {}
        other => return other.map_err(|errno| errno_failure(shown, errno)),
    }
    let mut current = open_in(dest, OsStr::new("."), dir_flags, 0)
        .map_err(|errno| errno_failure(shown, errno))?;
    for i in 0..parts.len() {
        let prefix = joined(&parts[..=i]);
        current = match open_in(dest, &prefix, dir_flags, 0) {
            Err(Errno::ENOENT) => {
                // One plain name in a directory already resolved in the root.
                match nix::sys::stat::mkdirat(
                    &current,
                    parts[i].as_os_str(),
                    Mode::from_bits_truncate(0o755),
                ) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(errno) => return Err(errno_failure(shown, errno)),
                }
                open_in(dest, &prefix, dir_flags, 0)
            }
            other => other,
        }
        .map_err(|errno| errno_failure(shown, errno))?;
    }
    Ok(current)
}

/// Makes room for a new non-directory `name` in `dir`: an existing file or
/// link is removed, a directory is an error.
fn clear_name(dir: &OwnedFd, name: &OsStr, shown: &str) -> Result<(), FileFailure> {
    match nix::sys::stat::fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
        Err(Errno::ENOENT) => Ok(()),
        Err(errno) => Err(errno_failure(shown, errno)),
        Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => Err(failure(
            FileFailureKind::IsADirectory,
            shown,
            "a directory is in the way",
        )),
        Ok(_) => nix::unistd::unlinkat(dir, name, nix::unistd::UnlinkatFlags::NoRemoveDir)
            .map_err(|errno| errno_failure(shown, errno)),
    }
}

fn timespec(secs: u64) -> libc::timespec {
    libc::timespec {
        tv_sec: secs.min(i64::MAX as u64) as libc::time_t,
        tv_nsec: 0,
    }
}

/// Sets the access and modification times of `name` in `dir` (a link
/// itself, not its target) to `mtime`.
fn set_mtime(dir: &OwnedFd, name: &OsStr, mtime: u64) -> Result<(), Errno> {
    let name = CString::new(name.as_bytes()).map_err(|_| Errno::EINVAL)?;
    let times = [timespec(mtime), timespec(mtime)];
    // SAFETY: a NUL-terminated name and two timespecs.
    let ret = unsafe {
        libc::utimensat(
            dir.as_raw_fd(),
            name.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    Errno::result(ret).map(drop)
}

fn bad_archive(err: &io::Error) -> FileFailure {
    failure(FileFailureKind::BadArchive, "<archive>", err.to_string())
}

/// Unpacks the tar stream `input` at `dest` (see the module docs).
fn copy_in(dest: &str, input: impl Read) -> FileResult {
    let root = nix::fcntl::open(
        "/",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|errno| errno_failure("/", errno))?;
    let dest_fd = open_in(&root, OsStr::new(dest), libc::O_PATH | libc::O_DIRECTORY, 0)
        .map_err(|errno| errno_failure(dest, errno))?;
    let mut archive = tar::Archive::new(input);
    // Directories get their times last: filling them changes their mtime.
    let mut dirs = Vec::new();
    for entry in archive.entries().map_err(|err| bad_archive(&err))? {
        let mut entry = entry.map_err(|err| bad_archive(&err))?;
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let parts = components(&raw).ok_or_else(|| {
            failure(
                FileFailureKind::Escapes,
                &shown,
                "an archive entry may not contain ..",
            )
        })?;
        let Some((name, parents)) = parts.split_last() else {
            // The destination itself.
            continue;
        };
        let header = entry.header();
        let mode = header.mode().map_err(|err| bad_archive(&err))? & 0o7777;
        let mtime = header.mtime().map_err(|err| bad_archive(&err))?;
        let kind = header.entry_type();
        let parent = ensure_dirs(&dest_fd, parents, &shown)?;
        if kind.is_dir() {
            match nix::sys::stat::mkdirat(&parent, name.as_os_str(), Mode::from_bits_truncate(mode))
            {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(errno) => return Err(errno_failure(&shown, errno)),
            }
            let dir = open_in(
                &dest_fd,
                &joined(&parts),
                libc::O_RDONLY | libc::O_DIRECTORY,
                0,
            )
            .map_err(|errno| errno_failure(&shown, errno))?;
            nix::sys::stat::fchmod(&dir, Mode::from_bits_truncate(mode))
                .map_err(|errno| errno_failure(&shown, errno))?;
            dirs.push((parts.clone(), mtime));
        } else if kind.is_file() || kind == tar::EntryType::Continuous {
            clear_name(&parent, name, &shown)?;
            let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW;
            let fd = nix::fcntl::openat(
                &parent,
                name.as_os_str(),
                OFlag::from_bits_truncate(flags) | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o600),
            )
            .map_err(|errno| errno_failure(&shown, errno))?;
            let mut file = File::from(fd);
            io::copy(&mut entry, &mut file).map_err(|err| io_failure(&shown, &err))?;
            file.set_permissions(std::fs::Permissions::from_mode(mode))
                .map_err(|err| io_failure(&shown, &err))?;
            let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime);
            file.set_modified(time)
                .map_err(|err| io_failure(&shown, &err))?;
        } else if kind.is_symlink() {
            let target = link_target(&entry, &shown)?;
            clear_name(&parent, name, &shown)?;
            nix::unistd::symlinkat(OsStr::from_bytes(&target), &parent, name.as_os_str())
                .map_err(|errno| errno_failure(&shown, errno))?;
            set_mtime(&parent, name, mtime).map_err(|errno| errno_failure(&shown, errno))?;
        } else if kind.is_hard_link() {
            let target = link_target(&entry, &shown)?;
            let target_parts = components(&target).ok_or_else(|| {
                failure(
                    FileFailureKind::Escapes,
                    &shown,
                    "a hard link's target may not contain ..",
                )
            })?;
            let Some((target_name, target_parents)) = target_parts.split_last() else {
                return Err(failure(
                    FileFailureKind::BadArchive,
                    &shown,
                    "a hard link to the destination",
                ));
            };
            let target_dir = open_in(
                &dest_fd,
                &joined(target_parents),
                libc::O_PATH | libc::O_DIRECTORY,
                0,
            )
            .map_err(|errno| errno_failure(&shown, errno))?;
            clear_name(&parent, name, &shown)?;
            // No AT_SYMLINK_FOLLOW: a link target that is a symlink is
            // linked itself, never followed out of the destination.
            nix::unistd::linkat(
                &target_dir,
                target_name.as_os_str(),
                &parent,
                name.as_os_str(),
                nix::fcntl::AtFlags::empty(),
            )
            .map_err(|errno| errno_failure(&shown, errno))?;
        }
    }
    for (parts, mtime) in dirs.iter().rev() {
        let Some((name, parents)) = parts.split_last() else {
            continue;
        };
        // A directory removed meanwhile has no time to keep.
        if let Ok(parent) = open_in(
            &dest_fd,
            &joined(parents),
            libc::O_PATH | libc::O_DIRECTORY,
            0,
        ) {
            let _ = set_mtime(&parent, name, *mtime);
        }
    }
    Ok(FileAnswer::Done)
}

/// The target an archive's link entry names.
fn link_target<R: Read>(entry: &tar::Entry<'_, R>, shown: &str) -> Result<Vec<u8>, FileFailure> {
    entry
        .link_name_bytes()
        .map(std::borrow::Cow::into_owned)
        .ok_or_else(|| {
            failure(
                FileFailureKind::BadArchive,
                shown,
                "a link without a target",
            )
        })
}
