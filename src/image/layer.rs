//! Unpacking one layer: a tar (plain, gzip or zstd) into a new directory,
//! its whiteouts turned into overlayfs's, both its digests verified.
//!
//! # Contract
//! - Runs as the host's root on content from anyone: no entry lands outside
//!   the directory. Paths with `..` are refused; a path through a symbolic
//!   link is resolved and refused if it leads out (the `tar` crate's
//!   `unpack_in`); hard links must point inside; whiteouts are made through
//!   descriptors resolved inside the directory (`openat2` with
//!   `RESOLVE_IN_ROOT`). Extended attributes in the archive are not applied
//!   (they could carry overlayfs's own `trusted.overlay.*`).
//! - Whiteouts (the OCI image spec's): `.wh.NAME` becomes a character device
//!   0/0 named `NAME`, overlayfs's whiteout; `.wh..wh..opq` marks its
//!   directory opaque (`trusted.overlay.opaque=y`); other `.wh..wh.` names
//!   (aufs bookkeeping) are skipped.
//! - Ownership, modes (setuid included) and times are kept as the archive
//!   says; ids are shifted to a sandbox's range by the id-mapped mount that
//!   shows the layer, not here.
//! - The caller owns the directory: on any error it is left half-filled for
//!   the caller to delete.

use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{makedev, mkdirat, mknodat, Mode, SFlag};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Prefix of whiteout entries.
const WHITEOUT: &str = ".wh.";
/// Prefix of whiteout entries that are not whiteouts of a name.
const WHITEOUT_META: &str = ".wh..wh.";
/// The opaque-directory marker.
const OPAQUE: &str = ".wh..wh..opq";

/// A reader that hashes what passes through it.
pub(crate) struct Hashing<R> {
    inner: R,
    hash: Sha256,
    bytes: u64,
}

impl<R: Read> Hashing<R> {
    pub(crate) fn new(inner: R) -> Self {
        Self {
            inner,
            hash: Sha256::new(),
            bytes: 0,
        }
    }

    /// Reads what is left, then returns the digest (`sha256:<hex>`) of
    /// everything read and its length.
    pub(crate) fn finish(mut self) -> io::Result<(String, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((
            format!("sha256:{}", hex::encode(self.hash.finalize())),
            self.bytes,
        ))
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// The digest (`sha256:<hex>`) of `bytes`.
pub(crate) fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Checks that `digest` is `sha256:` and 64 lowercase hex digits; returns
/// the hex.
///
/// # Errors
/// [`Error::ImageCorrupt`] otherwise.
pub(crate) fn digest_hex(digest: &str) -> Result<&str> {
    digest
        .strip_prefix("sha256:")
        .filter(|hex| {
            hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        })
        .ok_or_else(|| Error::ImageCorrupt {
            digest: digest.to_string(),
            message: "not a sha256 digest".into(),
        })
}

/// What [`unpack`] checks the layer against.
pub(crate) struct Expected<'a> {
    /// The digest of the bytes read (compressed or not), if known.
    pub(crate) blob: Option<&'a str>,
    /// The digest of the uncompressed tar (the image config's diff id).
    pub(crate) diff_id: &'a str,
}

/// Unpacks the layer read from `input` into `dir` (an existing, empty
/// directory); returns the bytes of file content unpacked.
///
/// # Errors
/// [`Error::ImageCorrupt`] (naming the blob's digest, or the diff id) if a
/// digest does not match, the data does not decompress or is not a tar, or
/// an entry would land outside `dir`; [`Error::Io`] (naming `dir`) if
/// writing fails (a full disk, say).
pub(crate) fn unpack(input: impl Read, dir: &Path, expected: &Expected<'_>) -> Result<u64> {
    let named = expected.blob.unwrap_or(expected.diff_id);
    let corrupt = |message: String| Error::ImageCorrupt {
        digest: named.to_string(),
        message,
    };
    let mut blob = Hashing::new(input);
    let size = {
        let decoded = decompressed(&mut blob).map_err(|e| corrupt(format!("reading: {e}")))?;
        let mut diff = Hashing::new(decoded);
        let size = entries(super::guard::TarGuard::new(&mut diff), dir, &corrupt)?;
        let (diff_id, _) = diff
            .finish()
            .map_err(|e| corrupt(format!("decompressing: {e}")))?;
        if diff_id != expected.diff_id {
            return Err(corrupt(format!(
                "its content is {diff_id}, the image says {}",
                expected.diff_id
            )));
        }
        size
    };
    let (digest, _) = blob
        .finish()
        .map_err(|e| corrupt(format!("reading: {e}")))?;
    if let Some(want) = expected.blob {
        if digest != want {
            return Err(corrupt(format!("its content is {digest}")));
        }
    }
    Ok(size)
}

/// `input` decompressed: gzip and zstd are told by their magic numbers;
/// anything else is read as is.
///
/// # Errors
/// The read error, if the first bytes cannot be read or zstd refuses them.
pub(super) fn decompressed<'a>(input: impl Read + 'a) -> io::Result<Box<dyn Read + 'a>> {
    let mut buffered = BufReader::with_capacity(1 << 20, input);
    let magic = buffered.fill_buf()?;
    Ok(if magic.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(buffered))
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(buffered)?)
    } else {
        Box::new(buffered)
    })
}

/// Unpacks every entry of the tar read from `tar` into `dir`.
fn entries(tar: impl Read, dir: &Path, corrupt: &dyn Fn(String) -> Error) -> Result<u64> {
    let write_err = |source: io::Error| Error::Io {
        path: dir.to_path_buf(),
        source,
    };
    let root = open_dir(dir).map_err(|e| write_err(e.into()))?;
    let mut archive = tar::Archive::new(tar);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    archive.set_unpack_xattrs(false);
    let mut size = 0u64;
    for entry in archive
        .entries()
        .map_err(|e| corrupt(format!("not a tar: {e}")))?
    {
        let mut entry = entry.map_err(|e| corrupt(format!("not a tar: {e}")))?;
        let path = entry
            .path()
            .map_err(|e| corrupt(format!("bad entry path: {e}")))?
            .into_owned();
        let shown = path.display().to_string();
        let Some(parts) = relative_parts(&path) else {
            return Err(corrupt(format!("entry {shown} leaves the layer")));
        };
        if let Some(name) = parts.last().and_then(|last| last.to_str()) {
            if name.starts_with(WHITEOUT) {
                let parent: PathBuf = parts[..parts.len() - 1].iter().collect();
                whiteout(&root, &parent, name).map_err(|e| match e {
                    Errno::ENOSPC | Errno::EDQUOT | Errno::EIO | Errno::EROFS => {
                        write_err(e.into())
                    }
                    e => corrupt(format!("whiteout {shown}: {e}")),
                })?;
                continue;
            }
        }
        if entry.header().entry_type().is_file() {
            size += entry.header().size().unwrap_or(0);
        }
        match entry.unpack_in(dir) {
            Ok(true) => {}
            Ok(false) => return Err(corrupt(format!("entry {shown} leaves the layer"))),
            Err(e) if is_write_error(&e) => return Err(write_err(e)),
            Err(e) => return Err(corrupt(format!("entry {shown}: {}", chain(&e)))),
        }
    }
    Ok(size)
}

/// `e` and its sources, as one line (the `tar` crate wraps the cause).
pub(super) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Whether `e` is the disk's fault rather than the archive's (the `tar`
/// crate wraps the OS error).
pub(super) fn is_write_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error()
            .or_else(|| e.get_ref().and_then(find_os_error)),
        Some(libc::ENOSPC | libc::EDQUOT | libc::EIO | libc::EROFS)
    ) || e.kind() == io::ErrorKind::StorageFull
}

/// The OS error inside the `tar` crate's wrapped errors.
fn find_os_error(e: &(dyn std::error::Error + Send + Sync + 'static)) -> Option<i32> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(code) = err
            .downcast_ref::<io::Error>()
            .and_then(io::Error::raw_os_error)
        {
            return Some(code);
        }
        source = err.source();
    }
    None
}

/// The normal components of `path` (leading `/` and `.` dropped), or `None`
/// if it has `..`.
fn relative_parts(path: &Path) -> Option<Vec<&std::ffi::OsStr>> {
    let mut parts = Vec::new();
    for part in path.components() {
        match part {
            Component::Normal(part) => parts.push(part),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => return None,
        }
    }
    Some(parts)
}

/// Carries out whiteout entry `name` in directory `parent` (relative to
/// `root`, created if missing).
fn whiteout(root: &OwnedFd, parent: &Path, name: &str) -> std::result::Result<(), Errno> {
    if name.starts_with(WHITEOUT_META) && name != OPAQUE {
        return Ok(());
    }
    let dir = dir_in(root, parent)?;
    if name == OPAQUE {
        use xattr::FileExt;
        let file = std::fs::File::from(dir);
        return file
            .set_xattr("trusted.overlay.opaque", b"y")
            .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)));
    }
    let hidden = &name[WHITEOUT.len()..];
    if hidden.is_empty() || hidden == "." || hidden == ".." {
        return Err(Errno::EINVAL);
    }
    mknodat(
        dir.as_fd(),
        hidden,
        SFlag::S_IFCHR,
        Mode::empty(),
        makedev(0, 0),
    )
}

/// Opens directory `path` of the layer, resolved inside `root` (links
/// included), making what is missing (mode 0755, root's).
fn dir_in(root: &OwnedFd, path: &Path) -> std::result::Result<OwnedFd, Errno> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY;
    let mut at = PathBuf::new();
    let mut fd = open_in(root, Path::new("."), flags)?;
    for part in path.components() {
        at.push(part);
        fd = match open_in(root, &at, flags) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => {
                mkdirat(
                    fd.as_fd(),
                    part.as_os_str(),
                    Mode::from_bits_truncate(0o755),
                )?;
                open_in(root, &at, flags)?
            }
            Err(e) => return Err(e),
        };
    }
    Ok(fd)
}

/// Opens `path` (`flags`, close-on-exec) resolved inside the directory
/// `root`: links are followed as if `root` were `/`, never out of it.
///
/// # Errors
/// The `openat2` error.
pub(super) fn open_in(
    root: &impl AsFd,
    path: &Path,
    flags: OFlag,
) -> std::result::Result<OwnedFd, Errno> {
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    openat2(root.as_fd(), path, how)
}

fn open_dir(dir: &Path) -> std::result::Result<OwnedFd, Errno> {
    nix::fcntl::open(
        dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, kind, data, link) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_mode(0o755);
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(1);
            header.set_size(data.len() as u64);
            if let Some(link) = link {
                header.set_link_name(link).unwrap();
            }
            // Raw names: `append_data` refuses `..`, which these tests need.
            let name = header.as_old_mut().name.as_mut();
            name[..path.len()].copy_from_slice(path.as_bytes());
            header.set_cksum();
            builder.append(&header, *data).unwrap();
        }
        builder.into_inner().unwrap()
    }

    fn unpack_bytes(bytes: &[u8], dir: &Path) -> Result<u64> {
        let diff_id = digest_of(bytes);
        unpack(
            bytes,
            dir,
            &Expected {
                blob: None,
                diff_id: &diff_id,
            },
        )
    }

    #[test]
    fn files_whiteouts_and_opaque_directories() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = tar_of(&[
            ("etc/", tar::EntryType::Directory, b"", None),
            ("etc/hello", tar::EntryType::Regular, b"hi\n", None),
            ("etc/.wh.gone", tar::EntryType::Regular, b"", None),
            ("var/lib/.wh..wh..opq", tar::EntryType::Regular, b"", None),
        ]);
        assert_eq!(unpack_bytes(&bytes, dir.path()).unwrap(), 3);
        assert_eq!(
            std::fs::read(dir.path().join("etc/hello")).unwrap(),
            b"hi\n"
        );
        let meta = std::fs::symlink_metadata(dir.path().join("etc/gone")).unwrap();
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        assert!(meta.file_type().is_char_device());
        assert_eq!(meta.rdev(), 0);
        assert!(!dir.path().join("etc/.wh.gone").exists());
        let opaque = xattr::get(dir.path().join("var/lib"), "trusted.overlay.opaque").unwrap();
        assert_eq!(opaque.as_deref(), Some(&b"y"[..]));
    }

    #[test]
    fn escapes_are_refused() {
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().to_str().unwrap().to_string();
        let cases: Vec<Vec<u8>> = vec![
            tar_of(&[("../escaped", tar::EntryType::Regular, b"x", None)]),
            tar_of(&[
                ("link", tar::EntryType::Symlink, b"", Some(&target)),
                ("link/escaped", tar::EntryType::Regular, b"x", None),
            ]),
            tar_of(&[
                ("link", tar::EntryType::Symlink, b"", Some(&target)),
                ("link/.wh.escaped", tar::EntryType::Regular, b"", None),
            ]),
            tar_of(&[(
                "hard",
                tar::EntryType::Link,
                b"",
                Some(&format!("{target}/../../etc/passwd")),
            )]),
        ];
        for (i, bytes) in cases.iter().enumerate() {
            let dir = tempfile::tempdir().unwrap();
            let result = unpack_bytes(bytes, dir.path());
            assert!(
                matches!(result, Err(Error::ImageCorrupt { .. })),
                "case {i}: {result:?}"
            );
            assert!(
                !outside.path().join("escaped").exists(),
                "case {i} wrote outside"
            );
        }
    }

    #[test]
    fn a_wrong_digest_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = tar_of(&[("a", tar::EntryType::Regular, b"a", None)]);
        let result = unpack(
            &bytes[..],
            dir.path(),
            &Expected {
                blob: None,
                diff_id: &digest_of(b"other"),
            },
        );
        assert!(
            matches!(result, Err(Error::ImageCorrupt { .. })),
            "{result:?}"
        );
    }
}
