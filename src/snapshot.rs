//! Snapshots (SPEC §8): a stopped sandbox's writable layer, config and
//! image reference as one portable archive, and sandboxes created from one.
//!
//! # The archive
//! A zstd-compressed tar of two entries, in this order:
//! - `manifest.json`: [`SnapshotManifest`] — the sandbox's config, its image
//!   (name and id; the layers themselves are not included: a home that
//!   restores it needs that image), and the digest and size of
//!   `upper.tar`.
//! - `upper.tar`: the writable layer as an OCI layer diff: overlayfs's
//!   whiteouts become `.wh.NAME` entries and opaque directories
//!   `.wh..wh..opq`, owners are the ids inside the sandbox (not the host
//!   range it had), hard links stay links.
//!
//! Stored snapshots live at `<home>/snapshots/<name>/snapshot.tar.zst`,
//! with a copy of the manifest beside it (`manifest.json`) for listing.
//!
//! # Contract
//! - Only a sandbox that is not running (Created, Stopped, Crashed) is
//!   snapshotted; one that starts while its snapshot is written makes the
//!   snapshot fail with [`Error::SnapshotSandboxRunning`] (checked again at
//!   the end), and nothing is stored.
//! - Archives are written to a work directory and renamed into place: an
//!   interrupted snapshot, export or import leaves nothing half-written
//!   under that name.
//! - Reading one checks all of it (its entries, the manifest, the digest
//!   of `upper.tar`) before anything is stored or any sandbox created from
//!   it: a corrupt archive is refused whole ([`Error::SnapshotCorrupt`]).
//!   Restoring unpacks through the image layer unpacker, so its entries
//!   cannot land outside the new sandbox's layer.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::SandboxConfig;
use crate::error::{Error, Result};
use crate::home;
use crate::image::layer::{self, Hashing};
use crate::workdir::WorkDir;

/// The snapshots directory in the home.
pub const SNAPSHOTS_DIR: &str = "snapshots";
const ARCHIVE_FILE: &str = "snapshot.tar.zst";
/// Work directories in `snapshots/` (hidden from the listing).
const WORK_PREFIX: &str = ".work-";
const MANIFEST: &str = "manifest.json";
const UPPER: &str = "upper.tar";
/// The manifest format this build writes and reads.
const VERSION: u32 = 1;
/// The largest manifest read (configs are small).
const MAX_MANIFEST: u64 = 1 << 20;
/// The id a file gets when its owner is outside the sandbox's range.
const NOBODY: u32 = 65_534;

/// What a snapshot holds besides its files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotManifest {
    /// The format version (1).
    pub version: u32,
    /// The snapshot's name.
    pub name: String,
    /// The sandbox it was taken of.
    pub sandbox: String,
    /// When it was taken.
    pub created_at: DateTime<Utc>,
    /// The sandbox's config.
    pub config: SandboxConfig,
    /// The image the sandbox was created from: its name and id.
    pub image: Option<SnapshotImage>,
    /// `upper.tar`'s digest (`sha256:…`).
    pub upper_digest: String,
    /// `upper.tar`'s size in bytes.
    pub upper_bytes: u64,
}

/// The image of a snapshot's sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotImage {
    /// The name the sandbox was created with.
    pub reference: Option<String>,
    /// The image's id.
    pub id: String,
}

/// A snapshot: its manifest and where its archive is.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Snapshot {
    /// What it holds.
    pub manifest: SnapshotManifest,
    /// The archive.
    pub path: PathBuf,
    /// The archive's size in bytes.
    pub bytes: u64,
}

fn corrupt(path: &Path, message: impl Into<String>) -> Error {
    Error::SnapshotCorrupt {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The snapshots of one home.
#[derive(Clone)]
pub struct Snapshots {
    home: PathBuf,
}

impl Snapshots {
    pub(crate) fn new(home: &Path) -> Self {
        Self {
            home: home.to_path_buf(),
        }
    }

    fn dir(&self) -> PathBuf {
        self.home.join(SNAPSHOTS_DIR)
    }

    /// A work directory under `snapshots/`, deleted when dropped (and
    /// those of dead processes swept first).
    fn work_dir(&self) -> Result<WorkDir> {
        crate::workdir::sweep(&self.dir(), WORK_PREFIX);
        WorkDir::new(&self.dir(), WORK_PREFIX)
    }

    /// Where snapshot `name` is stored.
    ///
    /// # Errors
    /// [`Error::InvalidName`] if `name` breaks the naming rules.
    fn path_of(&self, name: &str) -> Result<PathBuf> {
        home::validate_name(name)?;
        Ok(self.dir().join(name))
    }

    /// Every stored snapshot, by name.
    ///
    /// # Errors
    /// [`Error::Io`] if the directory cannot be read. A snapshot whose
    /// manifest does not read is left out with a WARN.
    pub fn list(&self) -> Result<Vec<Snapshot>> {
        let dir = self.dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_at(&dir)(e)),
        };
        let mut found = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            match self.get(&name) {
                Ok(snapshot) => found.push(snapshot),
                Err(err) => tracing::warn!(snapshot = name, %err, "unreadable snapshot left out"),
            }
        }
        found.sort_by(|a, b| a.manifest.name.cmp(&b.manifest.name));
        Ok(found)
    }

    /// Stored snapshot `name`.
    ///
    /// # Errors
    /// [`Error::InvalidName`]; [`Error::SnapshotNotFound`];
    /// [`Error::SnapshotCorrupt`] if its manifest does not read.
    pub fn get(&self, name: &str) -> Result<Snapshot> {
        let dir = self.path_of(name)?;
        let manifest_path = dir.join(MANIFEST);
        let text = match std::fs::read(&manifest_path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::SnapshotNotFound(name.to_string()))
            }
            Err(e) => return Err(io_at(&manifest_path)(e)),
        };
        let manifest = parse_manifest(&text, &manifest_path)?;
        let path = dir.join(ARCHIVE_FILE);
        let bytes = std::fs::metadata(&path).map_err(io_at(&path))?.len();
        Ok(Snapshot {
            manifest,
            path,
            bytes,
        })
    }

    /// Deletes stored snapshot `name`.
    ///
    /// # Errors
    /// [`Error::InvalidName`]; [`Error::SnapshotNotFound`]; [`Error::Io`].
    pub fn remove(&self, name: &str) -> Result<()> {
        let dir = self.path_of(name)?;
        if !dir.join(MANIFEST).exists() {
            return Err(Error::SnapshotNotFound(name.to_string()));
        }
        // Out of the listing in one step, then deleted.
        let doomed = self.work_dir()?;
        let moved = doomed.path().join("doomed");
        std::fs::rename(&dir, &moved).map_err(io_at(&dir))?;
        Ok(())
    }

    /// Copies stored snapshot `name` to the file `to` (replaced
    /// atomically if it exists).
    ///
    /// # Errors
    /// As [`Self::get`]; [`Error::Io`] if `to` cannot be written.
    pub async fn export(&self, name: &str, to: &Path) -> Result<Snapshot> {
        let snapshot = self.get(name)?;
        let dest = to.to_path_buf();
        let to = dest.clone();
        let from = snapshot.path.clone();
        tokio::task::spawn_blocking(move || copy_replacing(&from, &to))
            .await
            .map_err(|e| Error::Internal(format!("export: {e}")))??;
        Ok(Snapshot {
            path: dest,
            ..snapshot
        })
    }

    /// Checks the archive `from` whole and stores it as snapshot `name`
    /// (default: the name in its manifest).
    ///
    /// # Errors
    /// [`Error::SnapshotCorrupt`] if it is not a sound snapshot archive;
    /// [`Error::SnapshotExists`] if the name is taken; [`Error::InvalidName`];
    /// [`Error::Io`]. Nothing is stored on error.
    pub async fn import(&self, from: &Path, name: Option<&str>) -> Result<Snapshot> {
        let work = self.work_dir()?;
        let staged = work.path().join("snapshot");
        home::create_private_dir(&staged).map_err(io_at(&staged))?;
        let archive = staged.join(ARCHIVE_FILE);
        std::fs::copy(from, &archive).map_err(io_at(from))?;
        // The copy is what is checked, and what is kept.
        let checked = archive.clone();
        let mut manifest = tokio::task::spawn_blocking(move || read_archive(&checked, None))
            .await
            .map_err(|e| Error::Internal(format!("import: {e}")))?
            .map_err(|e| match e {
                Error::SnapshotCorrupt { message, .. } => corrupt(from, message),
                other => other,
            })?;
        if let Some(name) = name {
            manifest.name = name.to_string();
        }
        let dest = self.path_of(&manifest.name)?;
        write_manifest(&staged.join(MANIFEST), &manifest)?;
        install(&staged, &dest, &manifest.name)?;
        self.get(&manifest.name)
    }

    /// Writes the snapshot of a sandbox's writable layer `upper` (host ids
    /// shifted by `first`) into a work directory; [`Staged::publish`] puts
    /// it in place.
    pub(crate) async fn stage(
        &self,
        upper: PathBuf,
        first: Option<u32>,
        manifest: SnapshotManifest,
        stored: bool,
    ) -> Result<Staged> {
        if stored && self.path_of(&manifest.name)?.exists() {
            return Err(Error::SnapshotExists(manifest.name.clone()));
        }
        let work = self.work_dir()?;
        let dir = work.path().join("snapshot");
        home::create_private_dir(&dir).map_err(io_at(&dir))?;
        let archive = dir.join(ARCHIVE_FILE);
        let manifest =
            tokio::task::spawn_blocking(move || write_archive(&upper, first, manifest, &archive))
                .await
                .map_err(|e| Error::Internal(format!("snapshot: {e}")))??;
        Ok(Staged {
            manifest,
            dir,
            _work: work,
        })
    }

    /// Reads the snapshot `source` (a stored name, or a path when it has a
    /// `/`), checks it whole and unpacks its writable layer into a work
    /// directory, ids as inside the sandbox.
    pub(crate) async fn unpack(&self, source: &str) -> Result<Restore> {
        let path = if source.contains('/') {
            PathBuf::from(source)
        } else {
            self.get(source)?.path
        };
        let work = self.work_dir()?;
        let upper = work.path().join("upper");
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&upper)
            .map_err(io_at(&upper))?;
        let into = upper.clone();
        // A layer bigger than the free space would fill the home's disk.
        let free = nix::sys::statvfs::statvfs(&self.home)
            .map(|fs| fs.blocks_available().saturating_mul(fs.fragment_size()))
            .map_err(|e| io_at(&self.home)(e.into()))?;
        let manifest =
            tokio::task::spawn_blocking(move || read_archive(&path, Some((&into, free))))
                .await
                .map_err(|e| Error::Internal(format!("restore: {e}")))??;
        Ok(Restore {
            manifest,
            upper,
            _work: work,
        })
    }
}

/// A snapshot written, not yet in place.
pub(crate) struct Staged {
    manifest: SnapshotManifest,
    /// Holds the archive (and its manifest, once stored).
    dir: PathBuf,
    _work: WorkDir,
}

impl Staged {
    /// Moves the archive to `to` (replaced if it exists), or stores it in
    /// `snapshots` under its name.
    pub(crate) fn publish(self, snapshots: &Snapshots, to: Option<PathBuf>) -> Result<Snapshot> {
        let archive = self.dir.join(ARCHIVE_FILE);
        match to {
            Some(to) => {
                if std::fs::rename(&archive, &to).is_err() {
                    // Another file system.
                    copy_replacing(&archive, &to)?;
                }
                let bytes = std::fs::metadata(&to).map_err(io_at(&to))?.len();
                Ok(Snapshot {
                    manifest: self.manifest,
                    path: to,
                    bytes,
                })
            }
            None => {
                let dest = snapshots.path_of(&self.manifest.name)?;
                write_manifest(&self.dir.join(MANIFEST), &self.manifest)?;
                install(&self.dir, &dest, &self.manifest.name)?;
                snapshots.get(&self.manifest.name)
            }
        }
    }
}

/// A snapshot's writable layer unpacked, waiting for its sandbox.
pub(crate) struct Restore {
    pub manifest: SnapshotManifest,
    upper: PathBuf,
    _work: WorkDir,
}

impl Restore {
    /// Fills `config` in from the snapshot's: its image (or rootfs), and
    /// its command, environment, working directory and user where `config`
    /// leaves them out.
    pub(crate) fn apply(&self, config: &mut SandboxConfig) -> Result<()> {
        let saved = &self.manifest.config;
        // Nothing that names a host path comes from an archive: a rootfs
        // must be given again, and the image is taken by its full id only.
        if saved.rootfs.is_some() && config.rootfs.is_none() && config.image.is_none() {
            return Err(Error::InvalidConfig {
                field: "rootfs".into(),
                reason: "the snapshot's sandbox ran on a rootfs directory: give it (rootfs)".into(),
            });
        }
        if config.image.is_none() && config.rootfs.is_none() {
            if let Some(image) = &self.manifest.image {
                layer::digest_hex(&image.id)
                    .map_err(|_| corrupt(Path::new(&image.id), "bad image id"))?;
                config.image = Some(image.id.clone());
            }
        }
        if config.command.is_empty() {
            config.command = saved.command.clone();
            config.args = saved.args.clone();
        }
        for (key, value) in &saved.env {
            config
                .env
                .entry(key.clone())
                .or_insert_with(|| value.clone());
        }
        if config.working_dir.is_none() {
            config.working_dir = saved.working_dir.clone();
        }
        if config.user.is_none() {
            config.user = saved.user.clone();
        }
        Ok(())
    }

    /// Moves the layer into place as `fs/upper` of the sandbox whose
    /// directory is `sandbox_dir`, its ids shifted to the host range
    /// starting at `first` (none: host ids).
    pub(crate) fn install(self, sandbox_dir: &Path, first: Option<u32>) -> Result<()> {
        // Its top level is where the agent makes the overlays' writable
        // layers (`root`, and the host base's directories): real
        // directories only, or a link would send a writable layer, and the
        // agent's chmod, anywhere on the host.
        for entry in std::fs::read_dir(&self.upper)
            .map_err(io_at(&self.upper))?
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            let known =
                name == "root" || sandvisor_actors::protocol::HOST_BASE.contains(&name.as_str());
            let is_dir = entry.file_type().is_ok_and(|kind| kind.is_dir());
            if !known || !is_dir {
                return Err(corrupt(
                    Path::new(&self.manifest.name),
                    format!("its writable layer has {name:?} at the top (only directories root, usr, etc… belong there)"),
                ));
            }
        }
        if let Some(first) = first {
            shift_ids(&self.upper, first)?;
        }
        let fs = sandbox_dir.join(home::FS_DIR);
        home::create_private_dir(&fs).map_err(io_at(&fs))?;
        let dest = fs.join("upper");
        std::fs::rename(&self.upper, &dest).map_err(io_at(&dest))
    }
}

/// Copies `from` to `to` through a new temp file beside `to` (0600, no
/// link followed), renamed over it.
fn copy_replacing(from: &Path, to: &Path) -> Result<()> {
    let parent = to
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut temp = tempfile::NamedTempFile::new_in(parent).map_err(io_at(parent))?;
    let mut source = std::fs::File::open(from).map_err(io_at(from))?;
    std::io::copy(&mut source, temp.as_file_mut()).map_err(io_at(to))?;
    temp.as_file().sync_all().map_err(io_at(to))?;
    temp.persist(to).map_err(|e| io_at(to)(e.error))?;
    Ok(())
}

/// Renames the staged snapshot directory into place as `dest`.
fn install(staged: &Path, dest: &Path, name: &str) -> Result<()> {
    match std::fs::rename(staged, dest) {
        Ok(()) => Ok(()),
        // A non-empty directory there: the name is taken.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTEMPTY | libc::EEXIST)) => {
            Err(Error::SnapshotExists(name.to_string()))
        }
        Err(e) => Err(io_at(dest)(e)),
    }
}

fn write_manifest(path: &Path, manifest: &SnapshotManifest) -> Result<()> {
    let text = serde_json::to_vec_pretty(manifest).map_err(|e| Error::Internal(e.to_string()))?;
    std::fs::write(path, text).map_err(io_at(path))
}

fn parse_manifest(bytes: &[u8], path: &Path) -> Result<SnapshotManifest> {
    let manifest: SnapshotManifest =
        serde_json::from_slice(bytes).map_err(|e| corrupt(path, format!("bad manifest: {e}")))?;
    if manifest.version != VERSION {
        return Err(corrupt(
            path,
            format!(
                "manifest version {} (this build reads {VERSION})",
                manifest.version
            ),
        ));
    }
    home::validate_name(&manifest.name)
        .map_err(|_| corrupt(path, format!("bad snapshot name {:?}", manifest.name)))?;
    layer::digest_hex(&manifest.upper_digest).map_err(|_| corrupt(path, "bad upper digest"))?;
    Ok(manifest)
}

/// Writes the archive of `upper` (and `manifest`, completed with the
/// layer's digest and size) to `to`.
fn write_archive(
    upper: &Path,
    first: Option<u32>,
    mut manifest: SnapshotManifest,
    to: &Path,
) -> Result<SnapshotManifest> {
    // Staged compressed: a sparse file's zeros take no room here.
    let layer_path = to.with_file_name("upper.tar.zst");
    {
        let file = std::fs::File::create(&layer_path).map_err(io_at(&layer_path))?;
        let compressed = zstd::stream::write::Encoder::new(file, 1).map_err(io_at(&layer_path))?;
        let mut hashing = HashingWriter::new(compressed);
        let mut builder = tar::Builder::new(&mut hashing);
        builder.follow_symlinks(false);
        if upper.exists() {
            let mut links = HashMap::new();
            append_tree(&mut builder, upper, Path::new(""), first, &mut links)?;
        }
        builder.finish().map_err(io_at(&layer_path))?;
        drop(builder);
        let (digest, size, compressed) = hashing.finish().map_err(io_at(&layer_path))?;
        compressed.finish().map_err(io_at(&layer_path))?;
        manifest.upper_digest = digest;
        manifest.upper_bytes = size;
    }
    let manifest_bytes =
        serde_json::to_vec_pretty(&manifest).map_err(|e| Error::Internal(e.to_string()))?;
    // 0600: it holds the sandbox's files, whatever their modes inside.
    let out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)
        .map_err(io_at(to))?;
    let mut encoder = zstd::stream::write::Encoder::new(out, 3).map_err(io_at(to))?;
    // The frame's checksum covers the manifest too.
    encoder.include_checksum(true).map_err(io_at(to))?;
    let mut builder = tar::Builder::new(encoder);
    let mut header = tar::Header::new_gnu();
    header.set_mode(0o644);
    header.set_size(manifest_bytes.len() as u64);
    header.set_mtime(manifest.created_at.timestamp().max(0) as u64);
    builder
        .append_data(&mut header, MANIFEST, &manifest_bytes[..])
        .map_err(io_at(to))?;
    let staged = std::fs::File::open(&layer_path).map_err(io_at(&layer_path))?;
    let layer = zstd::stream::read::Decoder::new(staged).map_err(io_at(&layer_path))?;
    let mut header = tar::Header::new_gnu();
    header.set_mode(0o644);
    header.set_size(manifest.upper_bytes);
    header.set_mtime(manifest.created_at.timestamp().max(0) as u64);
    builder
        .append_data(&mut header, UPPER, layer.take(manifest.upper_bytes))
        .map_err(io_at(to))?;
    let encoder = builder.into_inner().map_err(io_at(to))?;
    encoder
        .finish()
        .and_then(|file| file.sync_all())
        .map_err(io_at(to))?;
    let _ = std::fs::remove_file(&layer_path);
    Ok(manifest)
}

/// Appends `base/rel`'s entries (recursively, sorted) as an OCI layer diff.
fn append_tree<W: Write>(
    builder: &mut tar::Builder<W>,
    base: &Path,
    rel: &Path,
    first: Option<u32>,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> Result<()> {
    let dir = base.join(rel);
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .map_err(io_at(&dir))?
        .flatten()
        .map(|entry| entry.file_name())
        .collect();
    entries.sort();
    for name in entries {
        let path = dir.join(&name);
        let rel_path = rel.join(&name);
        let meta = std::fs::symlink_metadata(&path).map_err(io_at(&path))?;
        let kind = meta.file_type();
        let mut header = tar::Header::new_gnu();
        header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
        let inside = |id: u32| match first {
            Some(first) => id
                .checked_sub(first)
                .filter(|id| *id < crate::config::USER_NAMESPACE_IDS)
                .unwrap_or(NOBODY),
            None => id,
        };
        header.set_uid(u64::from(inside(meta.uid())));
        header.set_gid(u64::from(inside(meta.gid())));
        let failed = io_at(&path);
        if kind.is_char_device() && meta.rdev() == 0 {
            let whiteout = rel.join(format!(".wh.{}", name.to_string_lossy()));
            let mut header = tar::Header::new_gnu();
            header.set_mode(0o600);
            header.set_size(0);
            builder
                .append_data(&mut header, whiteout, std::io::empty())
                .map_err(failed)?;
        } else if kind.is_dir() {
            header.set_size(0);
            builder
                .append_data(&mut header, &rel_path, std::io::empty())
                .map_err(failed)?;
            if xattr::get(&path, "trusted.overlay.opaque")
                .ok()
                .flatten()
                .is_some_and(|value| value == b"y")
            {
                let mut header = tar::Header::new_gnu();
                header.set_mode(0o600);
                header.set_size(0);
                builder
                    .append_data(&mut header, rel_path.join(".wh..wh..opq"), std::io::empty())
                    .map_err(io_at(&path))?;
            }
            append_tree(builder, base, &rel_path, first, links)?;
        } else if kind.is_symlink() {
            let target = std::fs::read_link(&path).map_err(io_at(&path))?;
            header.set_size(0);
            builder
                .append_link(&mut header, &rel_path, target)
                .map_err(failed)?;
        } else if kind.is_file() {
            if meta.nlink() > 1 {
                if let Some(earlier) = links.get(&(meta.dev(), meta.ino())) {
                    header.set_entry_type(tar::EntryType::Link);
                    header.set_size(0);
                    builder
                        .append_link(&mut header, &rel_path, earlier)
                        .map_err(failed)?;
                    continue;
                }
                links.insert((meta.dev(), meta.ino()), rel_path.clone());
            }
            // Opened without following a link or waiting on a fifo, and
            // checked to be the file looked at; never more than its size.
            let file = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                .open(&path)
                .map_err(io_at(&path))?;
            let opened = file.metadata().map_err(io_at(&path))?;
            if !opened.is_file() || (opened.dev(), opened.ino()) != (meta.dev(), meta.ino()) {
                return Err(Error::SnapshotSandboxRunning(format!(
                    "{} changed while the snapshot was written",
                    path.display()
                )));
            }
            builder
                .append_data(&mut header, &rel_path, file.take(meta.len()))
                .map_err(failed)?;
        }
        // Devices (other than whiteouts), fifos and sockets: a sandbox's
        // layer is mounted nodev; they carry nothing worth keeping.
    }
    Ok(())
}

/// Reads the archive at `path` whole: its manifest, and `upper.tar`
/// checked against it (and unpacked into `into`, if given).
fn read_archive(path: &Path, into: Option<(&Path, u64)>) -> Result<SnapshotManifest> {
    let file = std::fs::File::open(path).map_err(io_at(path))?;
    let decoder = zstd::stream::read::Decoder::new(file)
        .map_err(|e| corrupt(path, format!("not zstd: {e}")))?;
    let mut archive = tar::Archive::new(crate::image::guard::TarGuard::new(decoder));
    let mut entries = archive
        .entries()
        .map_err(|e| corrupt(path, format!("not a tar: {e}")))?;
    let mut next = |what: &str| -> Result<tar::Entry<'_, _>> {
        match entries.next() {
            Some(Ok(entry)) => {
                let name = entry.path_bytes().into_owned();
                if name != what.as_bytes() {
                    return Err(corrupt(
                        path,
                        format!(
                            "found {} where {what} belongs",
                            String::from_utf8_lossy(&name)
                        ),
                    ));
                }
                Ok(entry)
            }
            Some(Err(e)) => Err(corrupt(path, format!("reading {what}: {e}"))),
            None => Err(corrupt(path, format!("{what} is missing"))),
        }
    };
    let mut manifest_bytes = Vec::new();
    next(MANIFEST)?
        .take(MAX_MANIFEST)
        .read_to_end(&mut manifest_bytes)
        .map_err(|e| corrupt(path, format!("reading {MANIFEST}: {e}")))?;
    let manifest = parse_manifest(&manifest_bytes, path)?;
    let layer = next(UPPER)?;
    match into {
        Some((dir, free)) => {
            if manifest.upper_bytes > free {
                return Err(Error::Io {
                    path: dir.to_path_buf(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::StorageFull,
                        format!(
                            "the snapshot's layer takes {} bytes, {free} are free",
                            manifest.upper_bytes
                        ),
                    ),
                });
            }
            layer::unpack(
                layer,
                dir,
                &layer::Expected {
                    blob: None,
                    diff_id: &manifest.upper_digest,
                },
            )
            .map_err(|e| match e {
                Error::ImageCorrupt { message, .. } => corrupt(path, message),
                other => other,
            })?;
        }
        None => {
            let (digest, _) = Hashing::new(layer)
                .finish()
                .map_err(|e| corrupt(path, format!("reading {UPPER}: {e}")))?;
            if digest != manifest.upper_digest {
                return Err(corrupt(
                    path,
                    format!(
                        "{UPPER} is {digest}, the manifest says {}",
                        manifest.upper_digest
                    ),
                ));
            }
        }
    }
    if entries.next().is_some() {
        return Err(corrupt(path, "entries after upper.tar"));
    }
    // To the end of the zstd frame, whose checksum covers every byte.
    std::io::copy(&mut archive.into_inner(), &mut std::io::sink())
        .map_err(|e| corrupt(path, format!("checksum: {e}")))?;
    Ok(manifest)
}

/// Shifts the owner of everything under `dir` (itself excluded) by
/// `first`; modes are set again (a chown clears setuid bits).
fn shift_ids(dir: &Path, first: u32) -> Result<()> {
    // Hard links: each inode once.
    let mut seen = std::collections::HashSet::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).map_err(io_at(&dir))?.flatten() {
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path).map_err(io_at(&path))?;
            if !seen.insert((meta.dev(), meta.ino())) {
                continue;
            }
            let shift =
                |id: u32| first.saturating_add(id.min(crate::config::USER_NAMESPACE_IDS - 1));
            std::os::unix::fs::lchown(&path, Some(shift(meta.uid())), Some(shift(meta.gid())))
                .map_err(io_at(&path))?;
            if meta.file_type().is_symlink() {
                continue;
            }
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(meta.mode() & 0o7777))
                .map_err(io_at(&path))?;
            if meta.is_dir() {
                pending.push(path);
            }
        }
    }
    Ok(())
}

/// A writer that hashes what passes through it.
struct HashingWriter<W> {
    inner: W,
    hash: sha2::Sha256,
    bytes: u64,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W) -> Self {
        Self {
            inner,
            hash: <sha2::Sha256 as sha2::Digest>::new(),
            bytes: 0,
        }
    }

    fn finish(mut self) -> std::io::Result<(String, u64, W)> {
        self.inner.flush()?;
        let digest = sha2::Digest::finalize(self.hash);
        Ok((
            format!("sha256:{}", hex::encode(digest)),
            self.bytes,
            self.inner,
        ))
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        sha2::Digest::update(&mut self.hash, &buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
