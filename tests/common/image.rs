//! Test images built here (layers as tars, an OCI layout on disk), a real
//! registry on loopback (Debian's `docker-registry`), and `skopeo` to push
//! and convert.
#![allow(dead_code)] // not every test crate uses every helper

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tempfile::TempDir;

/// One entry of a layer.
#[derive(Debug, Clone)]
pub enum Entry {
    Dir(&'static str),
    File(String, Vec<u8>, u32),
    Symlink(String, String),
    /// `.wh.NAME` in the entry's directory.
    Whiteout(&'static str),
    /// `.wh..wh..opq` in the directory.
    Opaque(&'static str),
    /// A hard link `path` to `target`.
    HardLink(String, String),
}

pub type Layer = Vec<Entry>;

/// How to run the image.
#[derive(Debug, Clone, Default)]
pub struct RunConfig {
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
}

pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The tar of `layer` (uncompressed).
pub fn layer_tar(layer: &Layer) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(size);
        h
    };
    for entry in layer {
        match entry {
            Entry::Dir(path) => {
                let mut h = header(tar::EntryType::Directory, 0o755, 0);
                builder.append_data(&mut h, path, &[][..]).unwrap();
            }
            Entry::File(path, data, mode) => {
                let mut h = header(tar::EntryType::Regular, *mode, data.len() as u64);
                builder.append_data(&mut h, path, &data[..]).unwrap();
            }
            Entry::Symlink(path, target) => {
                let mut h = header(tar::EntryType::Symlink, 0o777, 0);
                builder.append_link(&mut h, path, target).unwrap();
            }
            Entry::HardLink(path, target) => {
                let mut h = header(tar::EntryType::Link, 0o644, 0);
                builder.append_link(&mut h, path, target).unwrap();
            }
            Entry::Whiteout(path) => {
                let path = Path::new(path);
                let name = format!(".wh.{}", path.file_name().unwrap().to_str().unwrap());
                let full = path.parent().unwrap().join(name);
                let mut h = header(tar::EntryType::Regular, 0o644, 0);
                builder.append_data(&mut h, full, &[][..]).unwrap();
            }
            Entry::Opaque(dir) => {
                let mut h = header(tar::EntryType::Regular, 0o644, 0);
                builder
                    .append_data(&mut h, Path::new(dir).join(".wh..wh..opq"), &[][..])
                    .unwrap();
            }
        }
    }
    builder.into_inner().unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    out.write_all(bytes).unwrap();
    out.finish().unwrap()
}

/// A base layer with a static busybox as `/bin/sh` and friends, the mount
/// points a root needs, and an `app` user (1000:1000).
pub fn busybox_layer() -> Layer {
    let mut layer = vec![
        Entry::Dir("bin"),
        Entry::Dir("etc"),
        Entry::Dir("proc"),
        Entry::Dir("sys"),
        Entry::Dir("dev"),
        Entry::Dir("tmp"),
        Entry::Dir("run"),
        Entry::Dir("var"),
        Entry::Dir("var/tmp"),
        Entry::Dir("root"),
        Entry::File(
            "bin/busybox".into(),
            std::fs::read("/bin/busybox").expect("busybox-static is installed"),
            0o755,
        ),
        Entry::File(
            "etc/passwd".into(),
            b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/tmp:/bin/sh\n".to_vec(),
            0o644,
        ),
        Entry::File(
            "etc/group".into(),
            b"root:x:0:\napp:x:1000:\n".to_vec(),
            0o644,
        ),
    ];
    for tool in [
        "sh", "ls", "cat", "echo", "id", "pwd", "env", "test", "stat", "rm", "mkdir", "du", "true",
        "sleep", "touch", "wc",
    ] {
        layer.push(Entry::Symlink(format!("bin/{tool}"), "busybox".into()));
    }
    layer
}

/// An OCI image layout built on disk.
pub struct Layout {
    pub dir: TempDir,
    /// The config's digest: the image id.
    pub id: String,
    /// The manifest's digest.
    pub manifest: String,
    /// The compressed layers' digests, base first.
    pub layers: Vec<String>,
}

impl Layout {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The layout as one tar (for `image load`).
    pub fn tar(&self) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        builder.append_dir_all(".", self.path()).unwrap();
        builder.into_inner().unwrap()
    }

    /// Path of blob `digest`.
    pub fn blob(&self, digest: &str) -> PathBuf {
        self.path()
            .join("blobs/sha256")
            .join(digest.strip_prefix("sha256:").unwrap())
    }
}

/// Writes an OCI layout of `layers` (gzip) and `run`, tagged `tag`
/// (`org.opencontainers.image.ref.name`).
pub fn layout(layers: &[Layer], run: &RunConfig, tag: &str) -> Layout {
    let dir = tempfile::tempdir().unwrap();
    let blobs = dir.path().join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let digest = digest(bytes);
        std::fs::write(blobs.join(digest.strip_prefix("sha256:").unwrap()), bytes).unwrap();
        digest
    };
    let mut diff_ids = Vec::new();
    let mut descriptors = Vec::new();
    let mut layer_digests = Vec::new();
    for layer in layers {
        let tar = layer_tar(layer);
        diff_ids.push(digest(&tar));
        let compressed = gzip(&tar);
        let blob = put(&compressed);
        descriptors.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": blob,
            "size": compressed.len(),
        }));
        layer_digests.push(blob);
    }
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": run.env,
            "Entrypoint": if run.entrypoint.is_empty() { serde_json::Value::Null } else { serde_json::json!(run.entrypoint) },
            "Cmd": run.cmd,
            "WorkingDir": run.working_dir.clone().unwrap_or_default(),
            "User": run.user.clone().unwrap_or_default(),
        },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    });
    let config = serde_json::to_vec(&config).unwrap();
    let id = put(&config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": id,
            "size": config.len(),
        },
        "layers": descriptors,
    }))
    .unwrap();
    let manifest_digest = put(&manifest);
    std::fs::write(
        dir.path().join("index.json"),
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": manifest.len(),
                "annotations": { "org.opencontainers.image.ref.name": tag },
            }],
        }))
        .unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    Layout {
        dir,
        id,
        manifest: manifest_digest,
        layers: layer_digests,
    }
}

/// A distribution registry on 127.0.0.1, killed on drop.
pub struct Registry {
    child: Child,
    pub dir: TempDir,
    pub port: u16,
}

impl Registry {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry is installed (.ci/run installs it)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the registry listens within 20 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, dir, port }
    }

    /// `127.0.0.1:PORT/<repository>`.
    pub fn name(&self, repository: &str) -> String {
        format!("127.0.0.1:{}/{repository}", self.port)
    }

    /// Pushes `layout` (its tag `tag`) as `<repository>` with skopeo.
    pub fn push(&self, layout: &Layout, tag: &str, repository: &str) {
        let out = Command::new("skopeo")
            .args(["copy", "--quiet", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:{tag}", layout.path().display()))
            .arg(format!("docker://{}", self.name(repository)))
            .output()
            .expect("skopeo is installed (.ci/run installs it)");
        assert!(
            out.status.success(),
            "skopeo push: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Where the registry keeps blob `digest`.
    pub fn blob(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `layout` as a `docker save` archive named `name`, made by skopeo.
pub fn docker_archive(layout: &Layout, tag: &str, name: &str, to: &Path) {
    let out = Command::new("skopeo")
        .args(["copy", "--quiet"])
        .arg(format!("oci:{}:{tag}", layout.path().display()))
        .arg(format!("docker-archive:{}:{name}", to.display()))
        .output()
        .expect("skopeo is installed");
    assert!(
        out.status.success(),
        "skopeo docker-archive: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Bytes used under `dir` (allocated blocks), like `du -s`.
pub fn disk_use(dir: &Path) -> u64 {
    let out = Command::new("du")
        .args(["-s", "-B1"])
        .arg(dir)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// `layout` turned into a multi-platform image: its index.json names an
/// image index of an arm64 image (one tiny layer) and the original amd64
/// one.
pub fn multi_platform(layout: &Layout, tag: &str) -> String {
    let blobs = layout.path().join("blobs/sha256");
    let put = |bytes: &[u8]| {
        let digest = digest(bytes);
        std::fs::write(blobs.join(digest.strip_prefix("sha256:").unwrap()), bytes).unwrap();
        (digest, bytes.len())
    };
    let tar = layer_tar(&vec![Entry::File("arm".into(), b"arm64\n".to_vec(), 0o644)]);
    let (layer, layer_size) = put(&gzip(&tar));
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "arm64", "os": "linux", "config": {},
        "rootfs": { "type": "layers", "diff_ids": [digest(&tar)] },
    }))
    .unwrap();
    let (config, config_size) = put(&config);
    let arm = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": config_size },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer, "size": layer_size }],
    }))
    .unwrap();
    let (arm, arm_size) = put(&arm);
    let amd_size = std::fs::metadata(layout.blob(&layout.manifest))
        .unwrap()
        .len();
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            { "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": arm, "size": arm_size,
              "platform": { "architecture": "arm64", "os": "linux" } },
            { "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": layout.manifest, "size": amd_size,
              "platform": { "architecture": "amd64", "os": "linux" } },
        ],
    }))
    .unwrap();
    let (index, index_size) = put(&index);
    std::fs::write(
        layout.path().join("index.json"),
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "digest": index,
                "size": index_size,
                "annotations": { "org.opencontainers.image.ref.name": tag },
            }],
        }))
        .unwrap(),
    )
    .unwrap();
    index
}

impl Registry {
    /// Pushes every platform of `layout` (an index) as `<repository>`.
    pub fn push_all(&self, layout: &Layout, tag: &str, repository: &str) {
        let out = Command::new("skopeo")
            .args(["copy", "--all", "--quiet", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:{tag}", layout.path().display()))
            .arg(format!("docker://{}", self.name(repository)))
            .output()
            .expect("skopeo is installed");
        assert!(
            out.status.success(),
            "skopeo push --all: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
