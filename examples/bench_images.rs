//! Image benchmark (issue 15), both sides measured in one run:
//!
//! 1. Pull: a ~50 MiB image of four layers (a static busybox, many small
//!    files, large semi-compressible files, large incompressible files),
//!    pushed to a `docker-registry` on 127.0.0.1, pulled and unpacked by
//!    sandvisor into a fresh home, against `skopeo copy` (registry → OCI
//!    layout) + `umoci unpack` (layout → root filesystem) of the same image;
//!    median of 3 each. Target: ratio ≤ 1.0.
//! 2. First output: `create` until the first line of stdout arrives, for a
//!    sandbox of the cached image against one of the host base, both
//!    running `echo`; median of 25 each (after 3 unmeasured; dirty pages
//!    written back before each). Target: ratio
//!    ≤ 1.1.
//!
//! Needs `docker-registry`, `skopeo` and `umoci` (Debian packages;
//! `.ci/run` installs them): says which is missing and stops otherwise.
//! Traffic only on 127.0.0.1.
//!
//! Run: `cargo build --release --bin sandvisor-agent --example bench_images`
//! then `target/release/examples/bench_images` (as root: namespaces).

#[path = "../tests/common/image.rs"]
mod image_kit;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use futures::StreamExt;
use image_kit::{busybox_layer, layout, Entry, Layer, Registry, RunConfig};
use sandvisor::logs::{LogSource, LogStreamOptions, LogStreamStart};
use sandvisor::{PullOptions, SandboxConfig, Sandvisor};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

const PULL_RUNS: usize = 3;
const OUTPUT_RUNS: usize = 25;
const OUTPUT_WARMUP: usize = 3;

/// Deterministic bytes: `compressible` makes them text-like (gzip about
/// halves them), else they do not compress.
fn bytes(seed: u64, len: usize, compressible: bool) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len);
    const WORDS: [&[u8]; 8] = [
        b"sandbox ",
        b"layer ",
        b"overlay ",
        b"image ",
        b"registry ",
        b"digest ",
        b"tar ",
        b"\n",
    ];
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        if compressible {
            out.extend_from_slice(WORDS[(state % 8) as usize]);
            out.extend_from_slice(&state.to_le_bytes()[..2]);
        } else {
            out.extend_from_slice(&state.to_le_bytes());
        }
    }
    out.truncate(len);
    out
}

fn image_layers() -> Vec<Layer> {
    let mut base = busybox_layer();
    base.push(Entry::Dir("usr"));
    base.push(Entry::Dir("usr/share"));
    for i in 0..1000 {
        base.push(Entry::File(
            format!("usr/share/doc-{i}.txt"),
            bytes(i, 2048, true),
            0o644,
        ));
    }
    let mut small = vec![Entry::Dir("lib"), Entry::Dir("lib/python")];
    for i in 0..3000 {
        small.push(Entry::File(
            format!("lib/python/mod_{i}.py"),
            bytes(10_000 + i, 4096, true),
            0o644,
        ));
    }
    let mut large = vec![Entry::Dir("opt")];
    for i in 0..20 {
        large.push(Entry::File(
            format!("opt/data-{i}.bin"),
            bytes(20_000 + i, 1 << 20, true),
            0o644,
        ));
    }
    let mut random = vec![Entry::Dir("models")];
    for i in 0..4 {
        random.push(Entry::File(
            format!("models/weights-{i}.bin"),
            bytes(30_000 + i, 4 << 20, false),
            0o644,
        ));
    }
    vec![base, small, large, random]
}

/// Writes back dirty pages, so that no measurement pays for an earlier one.
fn settle() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn missing_tools() -> Vec<&'static str> {
    ["docker-registry", "skopeo", "umoci"]
        .into_iter()
        .filter(|tool| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .is_ok_and(|out| out.status.success())
        })
        .collect()
}

fn run(command: &mut Command) -> Result<()> {
    let out = command.output()?;
    if !out.status.success() {
        return Err(format!("{command:?}: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(())
}

/// `skopeo copy` + `umoci unpack` of `reference` into `dir`.
fn baseline_pull(reference: &str, dir: &Path) -> Result<Duration> {
    let started = Instant::now();
    run(Command::new("skopeo")
        .args(["copy", "--quiet", "--src-tls-verify=false"])
        .arg(format!("docker://{reference}"))
        .arg(format!("oci:{}:v1", dir.join("oci").display())))?;
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:v1", dir.join("oci").display()))
        .arg(dir.join("bundle")))?;
    Ok(started.elapsed())
}

async fn open(home: &Path) -> Result<Sandvisor> {
    let agent = std::env::current_exe()?
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("sandvisor-agent"))
        .ok_or("no agent path")?;
    Ok(Sandvisor::builder()
        .home(home)
        .agent_path(agent)
        .open()
        .await?)
}

/// `create` until the first stdout entry of `config`.
async fn first_output(rt: &Sandvisor, config: SandboxConfig) -> Result<Duration> {
    let name = config.name.clone();
    let started = Instant::now();
    let sandbox = rt.create(config).await?;
    let mut stream = rt
        .logs()
        .log_stream(
            &name,
            &LogStreamOptions {
                sources: vec![LogSource::Stdout],
                start: LogStreamStart::Beginning,
                until: None,
                follow: true,
            },
        )
        .await?;
    let first = tokio::time::timeout(Duration::from_secs(30), stream.next()).await?;
    let took = started.elapsed();
    first.ok_or("no output")??;
    sandbox.wait_until_stopped().await?;
    rt.remove(&name).await?;
    Ok(took)
}

#[tokio::main]
async fn main() -> Result<()> {
    let missing = missing_tools();
    if !missing.is_empty() {
        println!(
            "bench_images: {} not installed (Debian packages; .ci/run installs them): nothing measured",
            missing.join(", ")
        );
        return Ok(());
    }
    let built = Instant::now();
    let image = layout(&image_layers(), &RunConfig::default(), "v1");
    let registry = Registry::start();
    registry.push(&image, "v1", "bench/big:v1");
    let reference = registry.name("bench/big:v1");
    let compressed = image_kit::disk_use(&image.path().join("blobs"));
    println!(
        "image: 4 layers, {:.1} MiB in the layout (gzip), built and pushed in {:.1} s",
        compressed as f64 / (1 << 20) as f64,
        built.elapsed().as_secs_f64()
    );

    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    let mut unpacked = 0;
    for _ in 0..PULL_RUNS {
        let home = tempfile::tempdir()?;
        let rt = open(home.path()).await?;
        let started = Instant::now();
        let pulled = rt
            .images()
            .pull(&reference, &PullOptions::default())
            .await?;
        ours.push(started.elapsed());
        unpacked = pulled.size;
        drop(rt);
        let dir = tempfile::tempdir()?;
        settle();
        theirs.push(baseline_pull(&reference, dir.path())?);
    }
    let (ours, theirs) = (median(ours), median(theirs));

    let home = tempfile::tempdir()?;
    let rt = open(home.path()).await?;
    let small = layout(
        &[busybox_layer()],
        &RunConfig {
            env: vec!["PATH=/bin".into()],
            ..RunConfig::default()
        },
        "v1",
    );
    let loaded = rt
        .images()
        .load(std::io::Cursor::new(small.tar()))
        .await?
        .remove(0);
    let mut from_image = Vec::new();
    let mut from_base = Vec::new();
    for i in 0..OUTPUT_WARMUP + OUTPUT_RUNS {
        settle();
        let image_run = first_output(
            &rt,
            SandboxConfig::new(format!("img-{i}"), "echo")
                .args(["hi"])
                .image(&loaded.id),
        )
        .await?;
        let base_run = first_output(
            &rt,
            SandboxConfig::new(format!("base-{i}"), "echo").args(["hi"]),
        )
        .await?;
        if i >= OUTPUT_WARMUP {
            from_image.push(image_run);
            from_base.push(base_run);
        }
    }
    let (from_image, from_base) = (median(from_image), median(from_base));

    println!();
    println!(
        "{:<58} {:>10} {:>10} {:>7} {:>8}",
        "measure", "sandvisor", "baseline", "ratio", "target"
    );
    println!(
        "{:<58} {:>10} {:>10} {:>7.2} {:>8}",
        format!(
            "pull + unpack {:.1} MiB (ms; baseline skopeo + umoci)",
            unpacked as f64 / (1 << 20) as f64
        ),
        ms(ours),
        ms(theirs),
        ours.as_secs_f64() / theirs.as_secs_f64(),
        "<= 1.0"
    );
    println!(
        "{:<58} {:>10} {:>10} {:>7.2} {:>8}",
        "first output, cached image vs host base (ms)",
        ms(from_image),
        ms(from_base),
        from_image.as_secs_f64() / from_base.as_secs_f64(),
        "<= 1.1"
    );
    Ok(())
}
