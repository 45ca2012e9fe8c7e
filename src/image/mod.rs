//! Images (SPEC §8): OCI images pulled from registries or loaded from
//! archives, unpacked once into shared read-only layers.
//!
//! # Layout in the home
//! - `images/layers/sha256/<hex>/`: one unpacked layer, named by its diff id
//!   (the digest of its uncompressed tar), shared by every image and every
//!   sandbox that has it; overlayfs whiteouts already in place. Never
//!   written once there.
//! - `images/tmp/<pid>-<start>-<n>/`: work in progress (a download being
//!   unpacked, an archive being read); deleted when done, and by the next
//!   removal or prune if its process died.
//! - `images/.lock`: shared by a pull or load while it adds layers and
//!   records the image, exclusive while unused layers are deleted — so a
//!   layer found on disk cannot vanish before the image naming it is
//!   recorded.
//! - The index (images, their configs, layers and names, and which sandbox
//!   uses which image) is in the database (`crate::store::images`).
//!
//! **Decision:** compressed layer blobs are not kept once unpacked (as
//! docker does): a layer is stored once, unpacked; manifests and configs
//! (small) are kept in the index by digest.
//!
//! # Contract
//! - Atomic: a layer is unpacked in `tmp/` and renamed into place only
//!   when its digests matched; an image is recorded only when all its
//!   layers are in place. An interrupted or refused pull or load leaves at
//!   most a `tmp/` entry, removed later.
//! - An image used by a sandbox (created from it) cannot be removed
//!   ([`Error::ImageInUse`]); its layers stay until no image names them.

mod apply;
mod archive;
pub(crate) mod guard;
pub(crate) mod layer;
mod pull;
mod reference;

use std::collections::BTreeSet;
use std::io::Read;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use apply::apply_image;
pub use pull::{PullOptions, PullProgress};
pub(crate) use reference::id_prefix;
pub use reference::normalize;

use crate::error::{Error, Result};
use crate::store::images::{ImageRow, NewImage};
use crate::store::Store;
use crate::workdir::WorkDir;

/// The images directory in the home.
pub const IMAGES_DIR: &str = "images";

/// An image stored in the home.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Image {
    /// The digest of its config (`sha256:…`), docker's image id.
    pub id: String,
    /// The names pointing at it (`registry/repository:tag`), sorted.
    pub references: Vec<String>,
    /// The digest of the manifest it came with, if any.
    pub manifest: Option<String>,
    /// Its layers' diff ids, base first.
    pub layers: Vec<String>,
    /// Bytes of its unpacked layers.
    pub size: u64,
    /// When it was stored in this home.
    pub created_at: DateTime<Utc>,
    /// What its config says about running it.
    pub config: ImageConfig,
}

/// The part of an OCI image config that says how to run it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// `Env`: `KEY=value` strings.
    pub env: Vec<String>,
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `WorkingDir`.
    pub working_dir: Option<String>,
    /// `User`: `user`, `uid`, `user:group` or `uid:gid`.
    pub user: Option<String>,
    /// The CPU architecture it was built for (`amd64`).
    pub architecture: String,
    /// The operating system (`linux`).
    pub os: String,
}

/// An OCI image config as found in a blob: only what sandvisor uses;
/// `null`s (docker writes them) read as empty.
#[derive(Debug, Deserialize)]
struct RawConfig {
    #[serde(default)]
    architecture: Option<String>,
    #[serde(default)]
    os: Option<String>,
    #[serde(default)]
    config: Option<RawRunConfig>,
    rootfs: RawRootfs,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawRunConfig {
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawRootfs {
    #[serde(rename = "type")]
    kind: String,
    diff_ids: Vec<String>,
}

/// A config blob, parsed and checked.
struct ParsedConfig {
    config: ImageConfig,
    diff_ids: Vec<String>,
}

/// Parses the config blob `bytes` (digest `digest`).
///
/// # Errors
/// [`Error::ImageCorrupt`] if it is not an image config, its layers are not
/// sha256 digests, or it is not for Linux.
fn parse_config(bytes: &[u8], digest: &str) -> Result<ParsedConfig> {
    let corrupt = |message: String| Error::ImageCorrupt {
        digest: digest.to_string(),
        message,
    };
    let raw: RawConfig =
        serde_json::from_slice(bytes).map_err(|e| corrupt(format!("not an image config: {e}")))?;
    if raw.rootfs.kind != "layers" {
        return Err(corrupt(format!(
            "rootfs type {:?}, not \"layers\"",
            raw.rootfs.kind
        )));
    }
    for diff_id in &raw.rootfs.diff_ids {
        layer::digest_hex(diff_id)?;
    }
    let os = raw.os.unwrap_or_default();
    if !os.is_empty() && os != "linux" {
        return Err(corrupt(format!("an image for {os}, not linux")));
    }
    let run = raw.config.unwrap_or_default();
    Ok(ParsedConfig {
        config: ImageConfig {
            env: run.env.unwrap_or_default(),
            entrypoint: run.entrypoint.unwrap_or_default(),
            cmd: run.cmd.unwrap_or_default(),
            working_dir: run.working_dir.filter(|dir| !dir.is_empty()),
            user: run.user.filter(|user| !user.is_empty()),
            architecture: raw.architecture.unwrap_or_default(),
            os,
        },
        diff_ids: raw.rootfs.diff_ids,
    })
}

impl Image {
    fn from_row(row: ImageRow) -> Result<Self> {
        let parsed = parse_config(row.config.as_bytes(), &row.id)
            .map_err(|e| Error::Database(format!("stored image {}: {e}", row.id)))?;
        Ok(Self {
            id: row.id,
            references: row.references,
            manifest: row.manifest,
            layers: row.layers,
            size: row.size,
            created_at: row.created_at,
            config: parsed.config,
        })
    }

    /// The short id docker shows: 12 hex digits.
    pub fn short_id(&self) -> &str {
        let hex = self.id.strip_prefix("sha256:").unwrap_or(&self.id);
        &hex[..hex.len().min(12)]
    }
}

/// What [`Images::remove`] and [`Images::prune`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Removed {
    /// Names removed.
    pub untagged: Vec<String>,
    /// Images deleted.
    pub deleted: Vec<String>,
    /// Layers whose files were deleted (no image has them any more).
    pub layers: Vec<String>,
    /// Bytes freed.
    pub freed: u64,
}

/// The images of one home. Cheap to clone.
#[derive(Clone)]
pub struct Images {
    home: PathBuf,
    store: Store,
}

impl Images {
    pub(crate) fn new(home: &Path, store: Store) -> Self {
        Self {
            home: home.to_path_buf(),
            store,
        }
    }

    fn dir(&self) -> PathBuf {
        self.home.join(IMAGES_DIR)
    }

    /// Where layer `diff_id` is unpacked.
    ///
    /// # Errors
    /// [`Error::ImageCorrupt`] if `diff_id` is not a sha256 digest.
    pub fn layer_dir(&self, diff_id: &str) -> Result<PathBuf> {
        Ok(self
            .dir()
            .join("layers/sha256")
            .join(layer::digest_hex(diff_id)?))
    }

    /// The directories of `image`'s layers, top first (overlayfs's
    /// `lowerdir` order).
    ///
    /// # Errors
    /// As [`Self::layer_dir`].
    pub fn lowers(&self, image: &Image) -> Result<Vec<PathBuf>> {
        image
            .layers
            .iter()
            .rev()
            .map(|diff_id| self.layer_dir(diff_id))
            .collect()
    }

    /// Makes `images/`, `layers/sha256/` and `tmp/` (root's, 0700 at the
    /// top: layers hold setuid files of images, for sandboxes only).
    fn prepare(&self) -> Result<()> {
        for dir in [
            self.dir(),
            self.dir().join("layers/sha256"),
            self.dir().join("tmp"),
        ] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(|source| Error::Io { path: dir, source })?;
        }
        Ok(())
    }

    /// A new work directory under `tmp/`, removed when dropped.
    fn work_dir(&self) -> Result<WorkDir> {
        self.prepare()?;
        WorkDir::new(&self.dir().join("tmp"), "")
    }

    /// Takes the layers lock, shared (adding) or exclusive (deleting).
    async fn lock(&self, exclusive: bool) -> Result<nix::fcntl::Flock<std::fs::File>> {
        self.prepare()?;
        let path = self.dir().join(".lock");
        tokio::task::spawn_blocking(move || {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|source| Error::Io {
                    path: path.clone(),
                    source,
                })?;
            let how = if exclusive {
                nix::fcntl::FlockArg::LockExclusive
            } else {
                nix::fcntl::FlockArg::LockShared
            };
            nix::fcntl::Flock::lock(file, how).map_err(|(_, errno)| Error::Io {
                path,
                source: errno.into(),
            })
        })
        .await
        .map_err(|e| Error::Internal(format!("image lock: {e}")))?
    }

    /// Pulls `reference` from its registry (see the `pull` module doc for what is
    /// verified); a pulled image is stored under its normalized name.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] (`image`) for a malformed reference;
    /// [`Error::Registry`] if the registry cannot be reached, refuses or
    /// lacks the image; [`Error::ImageCorrupt`] if content does not match
    /// its digest; [`Error::Io`] if the home cannot be written (a full
    /// disk); [`Error::Database`]. Nothing is stored on error.
    ///
    /// # Cancel safety
    /// Dropped, it stores nothing (its work directory is deleted).
    pub async fn pull(&self, reference: &str, options: &PullOptions) -> Result<Image> {
        pull::pull(self, reference, options, std::sync::Arc::new(|_| {})).await
    }

    /// As [`Self::pull`], telling `progress` what it does.
    ///
    /// # Errors
    /// As [`Self::pull`].
    pub async fn pull_with_progress(
        &self,
        reference: &str,
        options: &PullOptions,
        progress: impl Fn(PullProgress) + Send + Sync + 'static,
    ) -> Result<Image> {
        pull::pull(self, reference, options, std::sync::Arc::new(progress)).await
    }

    /// Loads the images of an archive: `docker save` output or an OCI image
    /// layout, as a tar (gzip or zstd compressed or not).
    ///
    /// # Errors
    /// [`Error::ImageCorrupt`] (digest `archive` for the archive itself) if
    /// it is not such an archive or content does not match its digest;
    /// [`Error::Io`] if the home cannot be written; [`Error::Database`].
    /// Images recorded before the bad one stay; nothing of it is stored.
    pub async fn load(&self, archive: impl Read + Send + 'static) -> Result<Vec<Image>> {
        archive::load(self, Box::new(archive)).await
    }

    /// Every stored image, oldest first.
    ///
    /// # Errors
    /// [`Error::Database`] if the index cannot be read.
    pub async fn list(&self) -> Result<Vec<Image>> {
        self.store
            .images()
            .await?
            .into_iter()
            .map(Image::from_row)
            .collect()
    }

    /// The image `reference` names: a name (`busybox`, `host:5000/app:v1`,
    /// `…@sha256:…`), an id (`sha256:<hex>`) or an id's first 12 or more
    /// hex digits.
    ///
    /// # Errors
    /// [`Error::ImageNotFound`] if none (or, for a short id, more than one)
    /// matches; [`Error::InvalidConfig`] (`image`) if `reference` is not a
    /// reference; [`Error::Database`].
    pub async fn inspect(&self, reference: &str) -> Result<Image> {
        let not_found = || Error::ImageNotFound(reference.to_string());
        if let Some(prefix) = reference::id_prefix(reference) {
            let mut rows = self.store.images_by_id_prefix(&prefix).await?;
            if rows.len() == 1 {
                return Image::from_row(rows.remove(0));
            }
            if rows.len() > 1 || reference.starts_with("sha256:") {
                return Err(not_found());
            }
        }
        let name = normalize(reference)?;
        match self.store.image_by_reference(&name).await? {
            Some(row) => Image::from_row(row),
            None => Err(not_found()),
        }
    }

    /// Removes `reference`: a name is untagged (and its image deleted when
    /// it was its last name), an id deletes the image and all its names.
    /// Layers no image has any more are deleted.
    ///
    /// # Errors
    /// [`Error::ImageNotFound`]; [`Error::ImageInUse`] if a sandbox uses the
    /// image (it would lose its last name, or be deleted); [`Error::Io`] if
    /// a layer's files cannot be deleted (the index is already updated; the
    /// next prune retries); [`Error::Database`].
    pub async fn remove(&self, reference: &str) -> Result<Removed> {
        let by_id = match reference::id_prefix(reference) {
            Some(prefix) => {
                let rows = self.store.images_by_id_prefix(&prefix).await?;
                match rows.as_slice() {
                    [row] => Some(row.id.clone()),
                    _ => None,
                }
            }
            None => None,
        };
        let removed = match by_id {
            Some(id) => self.store.remove_image(&id, reference).await?,
            None => self.store.untag_image(&normalize(reference)?).await?,
        };
        self.collect(removed).await
    }

    /// Deletes the images no sandbox uses — those without a name, or all of
    /// them with `all` — then every layer no image has, and work
    /// directories of processes that died.
    ///
    /// # Errors
    /// As [`Self::remove`].
    pub async fn prune(&self, all: bool) -> Result<Removed> {
        let removed = self.store.prune_images(all).await?;
        self.collect(removed).await
    }

    /// Deletes the layers no image has (under the exclusive lock) and dead
    /// processes' work directories.
    async fn collect(&self, removed: crate::store::images::Removed) -> Result<Removed> {
        let mut out = Removed {
            untagged: removed.untagged,
            deleted: removed.deleted,
            ..Removed::default()
        };
        let _lock = self.lock(true).await?;
        let used = self.store.used_layers().await?;
        let layers = self.dir().join("layers/sha256");
        let on_disk = std::fs::read_dir(&layers).map_err(|source| Error::Io {
            path: layers.clone(),
            source,
        })?;
        let mut unused = Vec::new();
        for entry in on_disk.flatten() {
            let diff_id = format!("sha256:{}", entry.file_name().to_string_lossy());
            if !used.contains(&diff_id) {
                unused.push(diff_id);
            }
        }
        for diff_id in unused {
            let size = self.store.layer_size(&diff_id).await?.unwrap_or(0);
            let dir = self.layer_dir(&diff_id)?;
            // Out of `layers/` in one step, so a half-deleted layer is never
            // found there.
            let doomed = self.work_dir()?;
            let moved = doomed.path().join("layer");
            std::fs::rename(&dir, &moved).map_err(|source| Error::Io {
                path: dir.clone(),
                source,
            })?;
            self.store.forget_layer(&diff_id).await?;
            out.freed += size;
            out.layers.push(diff_id);
        }
        crate::workdir::sweep(&self.dir().join("tmp"), "");
        Ok(out)
    }

    /// Records an image whose layers are `layers` (diff id, and its work
    /// directory when it was unpacked now), moving new layers into place.
    /// Holds the shared lock from the first check to the record.
    async fn commit(
        &self,
        config_bytes: &[u8],
        manifest: Option<&str>,
        layers: Vec<(String, Option<(WorkDir, u64)>)>,
        references: &[String],
    ) -> Result<Image> {
        let id = layer::digest_of(config_bytes);
        let config = std::str::from_utf8(config_bytes).map_err(|e| Error::ImageCorrupt {
            digest: id.clone(),
            message: format!("config is not UTF-8: {e}"),
        })?;
        let _lock = self.lock(false).await?;
        let mut sized = Vec::with_capacity(layers.len());
        for (diff_id, unpacked) in layers {
            let dir = self.layer_dir(&diff_id)?;
            let size = match unpacked {
                Some((work, size)) if !dir.exists() => {
                    let from = work.path().join("layer");
                    std::fs::rename(&from, &dir).map_err(|source| Error::Io {
                        path: dir.clone(),
                        source,
                    })?;
                    size
                }
                Some((_, size)) => size,
                None => self
                    .store
                    .layer_size(&diff_id)
                    .await?
                    .ok_or_else(|| Error::Internal(format!("layer {diff_id} vanished")))?,
            };
            sized.push((diff_id, size));
        }
        self.store
            .record_image(&NewImage {
                id: &id,
                manifest,
                config,
                layers: &sized,
                references,
            })
            .await?;
        drop(_lock);
        self.inspect(&id).await
    }

    /// Which of `diff_ids` are already unpacked and recorded.
    async fn present(&self, diff_ids: &[String]) -> Result<BTreeSet<String>> {
        let mut present = BTreeSet::new();
        for diff_id in diff_ids {
            if self.layer_dir(diff_id)?.is_dir() && self.store.layer_size(diff_id).await?.is_some()
            {
                present.insert(diff_id.clone());
            }
        }
        Ok(present)
    }
}

/// A new empty directory `layer` in `work`, for a layer to unpack into
/// (0755: it becomes the layer's root).
fn layer_dir_in(work: &WorkDir) -> Result<PathBuf> {
    let path = work.path().join("layer");
    std::fs::DirBuilder::new()
        .mode(0o755)
        .create(&path)
        .map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
    Ok(path)
}

/// Unpacks `input` into a new work directory on a blocking thread.
async fn unpack_layer(
    images: &Images,
    input: impl std::io::Read + Send + 'static,
    blob: Option<String>,
    diff_id: String,
) -> Result<(WorkDir, u64)> {
    let work = images.work_dir()?;
    let dir = layer_dir_in(&work)?;
    let size = tokio::task::spawn_blocking(move || {
        layer::unpack(
            input,
            &dir,
            &layer::Expected {
                blob: blob.as_deref(),
                diff_id: &diff_id,
            },
        )
    })
    .await
    .map_err(|e| Error::Internal(format!("unpacking a layer: {e}")))??;
    Ok((work, size))
}
