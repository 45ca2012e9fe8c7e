//! Pulling an image from an OCI distribution registry (the `oci-client`
//! crate speaks the protocol; this file verifies and stores).
//!
//! # Contract
//! - The manifest is verified against the reference's digest when it has
//!   one (a multi-platform index is resolved to linux/amd64 and that
//!   manifest verified against the index's entry); the config against the
//!   manifest's descriptor; each layer against its descriptor (compressed)
//!   and the config's diff id (uncompressed), while it streams into its
//!   work directory. Any mismatch → [`Error::ImageCorrupt`], nothing stored.
//! - Layers already unpacked in this home are not downloaded again; the
//!   others are downloaded and unpacked at once, [`CONCURRENT_LAYERS`] at a
//!   time.
//! - Plain HTTP only for a registry on loopback or when the caller says
//!   the registry is insecure ([`PullOptions::insecure`]); credentials from
//!   the user's docker config (`~/.docker/config.json`, credential helpers
//!   included), anonymous otherwise.

use std::sync::{Arc, Once};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use tokio::sync::mpsc;

use super::{layer, parse_config, reference, unpack_layer, Image, Images, WorkDir};
use crate::error::{Error, Result};

/// Layers downloaded and unpacked at once.
pub const CONCURRENT_LAYERS: usize = 4;
/// The largest image config accepted (real ones are a few KiB).
const MAX_CONFIG_BYTES: i64 = 4 << 20;
/// Chunks buffered between a download and its unpacking thread.
const CHUNKS_IN_FLIGHT: usize = 32;

/// How to pull.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// Reach the registry over plain HTTP (docker's "insecure registry");
    /// registries on loopback always are.
    pub insecure: bool,
}

/// What a pull is doing, for progress displays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullProgress {
    /// The manifest is read: these layers (compressed digest, size) make
    /// the image.
    Resolved {
        /// The normalized reference.
        reference: String,
        /// Each layer's digest and compressed size, base first.
        layers: Vec<(String, u64)>,
    },
    /// A layer is already unpacked in this home.
    LayerExists {
        /// Its (compressed) digest.
        digest: String,
    },
    /// Bytes of a layer downloaded so far.
    Downloading {
        /// Its (compressed) digest.
        digest: String,
        /// Bytes received.
        done: u64,
    },
    /// A layer is downloaded, verified and unpacked.
    LayerDone {
        /// Its (compressed) digest.
        digest: String,
    },
}

/// A progress callback.
pub(super) type Progress = Arc<dyn Fn(PullProgress) + Send + Sync>;

/// Installs the TLS crypto provider once per process (`ring`: no C build
/// tools beyond a compiler).
fn tls_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The credentials of `registry` in the user's docker config.
fn auth_for(registry: &str) -> RegistryAuth {
    match docker_credential::get_credential(registry) {
        Ok(docker_credential::DockerCredential::UsernamePassword(user, password)) => {
            RegistryAuth::Basic(user, password)
        }
        Ok(docker_credential::DockerCredential::IdentityToken(token)) => {
            RegistryAuth::Bearer(token)
        }
        Err(_) => RegistryAuth::Anonymous,
    }
}

/// Pulls `reference` into `images`.
pub(super) async fn pull(
    images: &Images,
    reference: &str,
    options: &PullOptions,
    progress: Progress,
) -> Result<Image> {
    tls_provider();
    let parsed = reference::parse(reference)?;
    let name = parsed.whole();
    let registry_err = |e: oci_client::errors::OciDistributionError| {
        use oci_client::errors::OciDistributionError as E;
        match e {
            E::DigestError(e) => Error::ImageCorrupt {
                digest: name.clone(),
                message: e.to_string(),
            },
            e => Error::Registry {
                reference: name.clone(),
                message: e.to_string(),
            },
        }
    };
    let registry = parsed.resolve_registry().to_string();
    let protocol = if options.insecure || reference::is_loopback(&registry) {
        ClientProtocol::HttpsExcept(vec![registry.clone()])
    } else {
        ClientProtocol::Https
    };
    let client = Client::new(ClientConfig {
        protocol,
        platform_resolver: Some(Box::new(oci_client::client::linux_amd64_resolver)),
        connect_timeout: Some(Duration::from_secs(10)),
        read_timeout: Some(Duration::from_secs(60)),
        max_concurrent_download: CONCURRENT_LAYERS,
        ..ClientConfig::default()
    });
    let auth = auth_for(&registry);
    let (manifest, manifest_digest) = client
        .pull_image_manifest(&parsed, &auth)
        .await
        .map_err(registry_err)?;
    layer::digest_hex(&manifest.config.digest)?;
    if !(0..=MAX_CONFIG_BYTES).contains(&manifest.config.size) {
        return Err(Error::ImageCorrupt {
            digest: manifest.config.digest.clone(),
            message: format!("a config of {} bytes", manifest.config.size),
        });
    }
    let mut config_bytes = Vec::new();
    client
        .pull_blob(
            &parsed,
            &manifest.config,
            LimitedWriter {
                inner: &mut config_bytes,
                left: MAX_CONFIG_BYTES as usize,
            },
        )
        .await
        .map_err(registry_err)?;
    let id = layer::digest_of(&config_bytes);
    if id != manifest.config.digest {
        return Err(Error::ImageCorrupt {
            digest: manifest.config.digest.clone(),
            message: format!("the config's content is {id}"),
        });
    }
    let parsed_config = parse_config(&config_bytes, &id)?;
    if parsed_config.diff_ids.len() != manifest.layers.len() {
        return Err(Error::ImageCorrupt {
            digest: manifest_digest,
            message: format!(
                "{} layers in the manifest, {} in the config",
                manifest.layers.len(),
                parsed_config.diff_ids.len()
            ),
        });
    }
    for descriptor in &manifest.layers {
        layer::digest_hex(&descriptor.digest)?;
    }
    progress(PullProgress::Resolved {
        reference: name.clone(),
        layers: manifest
            .layers
            .iter()
            .map(|l| (l.digest.clone(), l.size.max(0) as u64))
            .collect(),
    });
    let present = images.present(&parsed_config.diff_ids).await?;
    let client = Arc::new(client);
    let unpacked: Vec<(String, Option<(WorkDir, u64)>)> = futures::stream::iter(
        manifest
            .layers
            .iter()
            .cloned()
            .zip(parsed_config.diff_ids.iter().cloned()),
    )
    .map(|(descriptor, diff_id)| {
        let client = client.clone();
        let parsed = parsed.clone();
        let progress = progress.clone();
        let present = present.contains(&diff_id);
        let registry_err = &registry_err;
        async move {
            if present {
                progress(PullProgress::LayerExists {
                    digest: descriptor.digest.clone(),
                });
                return Ok((diff_id, None));
            }
            let unpacked = fetch_layer(images, &client, &parsed, &descriptor, &diff_id, &progress)
                .await
                .map_err(|e| match e {
                    Fetch::Registry(e) => registry_err(e),
                    // The client checks the digest too, at the end of the
                    // stream: that is corrupt content, not a failed download.
                    Fetch::Download(e)
                        if e.get_ref()
                            .is_some_and(|inner| inner.is::<oci_client::errors::DigestError>()) =>
                    {
                        Error::ImageCorrupt {
                            digest: descriptor.digest.clone(),
                            message: e.to_string(),
                        }
                    }
                    Fetch::Download(e) => Error::Registry {
                        reference: parsed.whole(),
                        message: format!("downloading {}: {e}", descriptor.digest),
                    },
                    Fetch::Other(e) => e,
                })?;
            progress(PullProgress::LayerDone {
                digest: descriptor.digest.clone(),
            });
            Ok::<_, Error>((diff_id, Some(unpacked)))
        }
    })
    .buffered(CONCURRENT_LAYERS)
    .try_collect()
    .await?;
    images
        .commit(&config_bytes, Some(&manifest_digest), unpacked, &[name])
        .await
}

/// Why a layer could not be fetched.
enum Fetch {
    Registry(oci_client::errors::OciDistributionError),
    Download(std::io::Error),
    Other(Error),
}

/// Downloads layer `descriptor` and unpacks it as it arrives.
async fn fetch_layer(
    images: &Images,
    client: &Client,
    image: &Reference,
    descriptor: &OciDescriptor,
    diff_id: &str,
    progress: &Progress,
) -> std::result::Result<(WorkDir, u64), Fetch> {
    // Only from the registry: a descriptor's `urls` would have this host
    // fetch any address the registry names.
    let descriptor = &OciDescriptor {
        urls: None,
        ..descriptor.clone()
    };
    let mut stream = client
        .pull_blob_stream(image, descriptor)
        .await
        .map_err(Fetch::Registry)?;
    let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
    let unpacking = unpack_layer(
        images,
        ChannelReader {
            rx,
            chunk: bytes::Bytes::new(),
        },
        Some(descriptor.digest.clone()),
        diff_id.to_string(),
    );
    let digest = descriptor.digest.clone();
    let feeding = async move {
        let mut done = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(e) => {
                    let told = std::io::Error::new(e.kind(), e.to_string());
                    let _ = tx.send(Err(told)).await;
                    return Some(e);
                }
            };
            done += chunk.len() as u64;
            // The unpacker stopped (it failed): its error is the one to tell.
            if tx.send(Ok(chunk)).await.is_err() {
                return None;
            }
            progress(PullProgress::Downloading {
                digest: digest.clone(),
                done,
            });
        }
        None
    };
    let (unpacked, failed) = tokio::join!(unpacking, feeding);
    match failed {
        Some(e) => Err(Fetch::Download(e)),
        None => unpacked.map_err(Fetch::Other),
    }
}

/// Reads the chunks a download sends (blocking: for the unpacking thread).
struct ChannelReader {
    rx: mpsc::Receiver<std::io::Result<bytes::Bytes>>,
    chunk: bytes::Bytes,
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => self.chunk = chunk,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        bytes::Buf::advance(&mut self.chunk, n);
        Ok(n)
    }
}

/// Takes at most `left` bytes, then fails the write: a config larger than
/// its descriptor said is not held in memory.
struct LimitedWriter<'a> {
    inner: &'a mut Vec<u8>,
    left: usize,
}

impl tokio::io::AsyncWrite for LimitedWriter<'_> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if buf.len() > self.left {
            return std::task::Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the config is larger than allowed",
            )));
        }
        self.left -= buf.len();
        self.inner.extend_from_slice(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}
