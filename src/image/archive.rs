//! Loading images from archives: `docker save` output and OCI image
//! layouts (as tars, plain or gzip/zstd-compressed).
//!
//! # Contract
//! - The archive is first extracted into a work directory (entries that
//!   would land outside it are refused), then read through descriptors
//!   resolved inside that directory (`openat2` with `RESOLVE_IN_ROOT`): a
//!   link in the archive never makes sandvisor read a host file.
//! - `docker save` (`manifest.json`): each config's digest is its id, each
//!   layer is checked against the config's diff ids; names from `RepoTags`.
//! - OCI layout (`index.json`): every blob is checked against the digest
//!   that names it; an index inside is resolved to linux/amd64; names from
//!   the `io.containerd.image.name` annotation, else
//!   `org.opencontainers.image.ref.name` when it is a whole name (a bare
//!   tag names no repository: the image is stored by id only).
//! - All or nothing per image: an image is recorded only once all its
//!   layers are in place; the first bad image ends the load with its error
//!   (images recorded before it stay).

use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::Path;

use nix::fcntl::OFlag;
use serde::Deserialize;

use super::{layer, parse_config, reference, unpack_layer, Image, Images};
use crate::error::{Error, Result};

const INDEX_MEDIA_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// An entry of `manifest.json` in a `docker save` archive.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    #[serde(default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    annotations: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Debug, Deserialize)]
struct Platform {
    architecture: String,
    os: String,
}

#[derive(Debug, Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
struct Manifest {
    config: Descriptor,
    layers: Vec<Descriptor>,
}

/// The largest manifest, index or config read.
const MAX_JSON_BYTES: u64 = 4 << 20;
/// Where the archive came from, for errors.
const ARCHIVE: &str = "archive";

fn corrupt(message: String) -> Error {
    Error::ImageCorrupt {
        digest: ARCHIVE.into(),
        message,
    }
}

/// Loads every image of the archive read from `input`.
pub(super) async fn load(images: &Images, input: Box<dyn Read + Send>) -> Result<Vec<Image>> {
    let work = images.work_dir()?;
    let root = work.path().join("archive");
    let extract_to = root.clone();
    tokio::task::spawn_blocking(move || extract(input, &extract_to))
        .await
        .map_err(|e| Error::Internal(format!("reading an archive: {e}")))??;
    let dir = nix::fcntl::open(
        &root,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| Error::Io {
        path: root.clone(),
        source: e.into(),
    })?;
    let archive = Archive { dir };
    let mut loaded = Vec::new();
    if archive.exists("manifest.json") {
        let entries: Vec<DockerEntry> = archive.json("manifest.json")?;
        for entry in entries {
            loaded.push(load_docker(images, &archive, entry).await?);
        }
    } else if archive.exists("index.json") {
        let index: Index = archive.json("index.json")?;
        for descriptor in index.manifests {
            for (manifest, names) in archive.manifests(descriptor, Vec::new())? {
                loaded.push(load_oci(images, &archive, manifest, names).await?);
            }
        }
    } else {
        return Err(corrupt(
            "neither a docker save archive (manifest.json) nor an OCI layout (index.json)".into(),
        ));
    }
    drop(work);
    Ok(loaded)
}

/// Extracts the (maybe compressed) tar `input` into `dir` (made here).
fn extract(input: Box<dyn Read + Send>, dir: &Path) -> Result<()> {
    std::fs::create_dir(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let decoded = layer::decompressed(input).map_err(|e| corrupt(format!("reading: {e}")))?;
    let mut archive = tar::Archive::new(super::guard::TarGuard::new(decoded));
    archive.set_preserve_ownerships(false);
    archive.set_unpack_xattrs(false);
    for entry in archive
        .entries()
        .map_err(|e| corrupt(format!("not a tar: {e}")))?
    {
        let mut entry = entry.map_err(|e| corrupt(format!("not a tar: {e}")))?;
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir() || kind.is_symlink() || kind.is_hard_link()) {
            continue;
        }
        let shown = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        match entry.unpack_in(dir) {
            Ok(true) => {}
            Ok(false) => return Err(corrupt(format!("entry {shown} leaves the archive"))),
            Err(e) if layer::is_write_error(&e) => {
                return Err(Error::Io {
                    path: dir.to_path_buf(),
                    source: e,
                })
            }
            Err(e) => return Err(corrupt(format!("entry {shown}: {}", layer::chain(&e)))),
        }
    }
    Ok(())
}

/// An extracted archive, read only inside its directory.
struct Archive {
    dir: OwnedFd,
}

impl Archive {
    fn open(&self, path: &str) -> Result<std::fs::File> {
        layer::open_in(&self.dir, Path::new(path), OFlag::O_RDONLY)
            .map(std::fs::File::from)
            .map_err(|e| corrupt(format!("{path}: {e}")))
    }

    fn exists(&self, path: &str) -> bool {
        self.open(path).is_ok()
    }

    /// Reads a small file (JSON, configs): at most [`MAX_JSON_BYTES`].
    fn read(&self, path: &str) -> Result<Vec<u8>> {
        let mut bytes = Vec::new();
        let file = self.open(path)?;
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if len > MAX_JSON_BYTES {
            return Err(corrupt(format!(
                "{path} takes {len} bytes (at most {MAX_JSON_BYTES})"
            )));
        }
        file.take(MAX_JSON_BYTES)
            .read_to_end(&mut bytes)
            .map_err(|e| corrupt(format!("{path}: {e}")))?;
        Ok(bytes)
    }

    fn json<T: for<'de> Deserialize<'de>>(&self, path: &str) -> Result<T> {
        serde_json::from_slice(&self.read(path)?).map_err(|e| corrupt(format!("{path}: {e}")))
    }

    /// The path of blob `digest` in an OCI layout.
    fn blob_path(digest: &str) -> Result<String> {
        Ok(format!("blobs/sha256/{}", layer::digest_hex(digest)?))
    }

    /// Blob `digest`, checked.
    fn blob(&self, digest: &str) -> Result<Vec<u8>> {
        let bytes = self.read(&Self::blob_path(digest)?)?;
        let actual = layer::digest_of(&bytes);
        if actual != digest {
            return Err(Error::ImageCorrupt {
                digest: digest.to_string(),
                message: format!("its content is {actual}"),
            });
        }
        Ok(bytes)
    }

    /// The image manifests `descriptor` leads to (resolving indexes to
    /// linux/amd64), each with its names.
    fn manifests(
        &self,
        descriptor: Descriptor,
        mut names: Vec<String>,
    ) -> Result<Vec<(Descriptor, Vec<String>)>> {
        names.extend(names_of(&descriptor));
        if !INDEX_MEDIA_TYPES.contains(&descriptor.media_type.as_str()) {
            return Ok(vec![(descriptor, names)]);
        }
        let index: Index = serde_json::from_slice(&self.blob(&descriptor.digest)?)
            .map_err(|e| corrupt(format!("index {}: {e}", descriptor.digest)))?;
        let chosen = index
            .manifests
            .into_iter()
            .find(|entry| {
                entry
                    .platform
                    .as_ref()
                    .is_none_or(|p| p.os == "linux" && p.architecture == "amd64")
            })
            .ok_or_else(|| Error::ImageCorrupt {
                digest: descriptor.digest.clone(),
                message: "the index has no linux/amd64 image".into(),
            })?;
        self.manifests(chosen, names)
    }
}

/// The names a descriptor's annotations give.
fn names_of(descriptor: &Descriptor) -> Vec<String> {
    let full = descriptor
        .annotations
        .get("io.containerd.image.name")
        .or_else(|| {
            descriptor
                .annotations
                .get("org.opencontainers.image.ref.name")
                .filter(|name| name.contains(['/', ':']))
        });
    full.and_then(|name| reference::normalize(name).ok())
        .into_iter()
        .collect()
}

async fn load_docker(images: &Images, archive: &Archive, entry: DockerEntry) -> Result<Image> {
    let config_bytes = archive.read(&entry.config)?;
    let id = layer::digest_of(&config_bytes);
    let parsed = parse_config(&config_bytes, &id)?;
    if parsed.diff_ids.len() != entry.layers.len() {
        return Err(Error::ImageCorrupt {
            digest: id,
            message: format!(
                "{} layers in manifest.json, {} in the config",
                entry.layers.len(),
                parsed.diff_ids.len()
            ),
        });
    }
    let mut names = Vec::new();
    for tag in entry.repo_tags.unwrap_or_default() {
        names.push(reference::normalize(&tag)?);
    }
    let present = images.present(&parsed.diff_ids).await?;
    let mut layers = Vec::new();
    for (path, diff_id) in entry.layers.iter().zip(parsed.diff_ids) {
        if present.contains(&diff_id) {
            layers.push((diff_id, None));
            continue;
        }
        let file = archive.open(path)?;
        let unpacked = unpack_layer(images, file, None, diff_id.clone()).await?;
        layers.push((diff_id, Some(unpacked)));
    }
    images.commit(&config_bytes, None, layers, &names).await
}

async fn load_oci(
    images: &Images,
    archive: &Archive,
    descriptor: Descriptor,
    names: Vec<String>,
) -> Result<Image> {
    let manifest: Manifest = serde_json::from_slice(&archive.blob(&descriptor.digest)?)
        .map_err(|e| corrupt(format!("manifest {}: {e}", descriptor.digest)))?;
    let config_bytes = archive.blob(&manifest.config.digest)?;
    let parsed = parse_config(&config_bytes, &manifest.config.digest)?;
    if parsed.diff_ids.len() != manifest.layers.len() {
        return Err(Error::ImageCorrupt {
            digest: descriptor.digest,
            message: format!(
                "{} layers in the manifest, {} in the config",
                manifest.layers.len(),
                parsed.diff_ids.len()
            ),
        });
    }
    let present = images.present(&parsed.diff_ids).await?;
    let mut layers = Vec::new();
    for (blob, diff_id) in manifest.layers.iter().zip(parsed.diff_ids) {
        if present.contains(&diff_id) {
            layers.push((diff_id, None));
            continue;
        }
        let file = archive.open(&Archive::blob_path(&blob.digest)?)?;
        let unpacked =
            unpack_layer(images, file, Some(blob.digest.clone()), diff_id.clone()).await?;
        layers.push((diff_id, Some(unpacked)));
    }
    images
        .commit(&config_bytes, Some(&descriptor.digest), layers, &names)
        .await
}
