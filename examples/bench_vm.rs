//! microVM benchmark (issue 16): a VM sandbox against a bare qemu boot of
//! the same kernel, and against the namespace backend, in one run.
//!
//! 1. Boot: from `create` to the first output of `echo hi` (read from the
//!    sandbox's log) in a VM sandbox, against the floor — qemu `microvm`
//!    booting the same kernel with the same machine options and a minimal
//!    initramfs (a static busybox whose `/init` prints `hi` and powers off),
//!    from spawn to `hi` on its console; and the namespace backend's
//!    figure. Median of 5 each.
//! 2. Memory: host memory per idle VM sandbox beyond its guest's RAM —
//!    the proportional set (PSS) of qemu less the guest RAM it has touched
//!    (its shared memory), of the launcher and of virtiofsd, and this
//!    process's own growth per sandbox — over 3 idle sandboxes; the
//!    namespace backend's beside.
//!
//! Run: `cargo build --release --bin sandvisor-agent --example bench_vm` then
//! `target/release/examples/bench_vm` (as root; needs qemu-system-x86,
//! a Debian cloud kernel, virtiofsd and busybox-static).

use std::error::Error;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use sandvisor::logs::{LogSource, LogStreamOptions};
use sandvisor::{Backend, SandboxConfig, Sandvisor};

type BoxError = Box<dyn Error + Send + Sync>;
type Result<T> = std::result::Result<T, BoxError>;

const RUNS: usize = 5;
const IDLE: usize = 3;
const BUSYBOX: &str = "/bin/busybox";
const VM: Backend = Backend::MicroVm {
    vcpus: 1,
    memory: 0,
};

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The floor's initramfs: busybox as `/bin/sh`, an `/init` that prints `hi`
/// and powers off.
fn floor_initramfs(dir: &Path) -> Result<PathBuf> {
    let path = dir.join("floor.cpio");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&path)?);
    let busybox = std::fs::read(BUSYBOX)?;
    let init = b"#!/bin/busybox sh\n/bin/busybox echo hi\n/bin/busybox poweroff -f\n";
    for (name, mode, bytes) in [
        ("bin", 0o040_755, &[][..]),
        ("dev", 0o040_755, &[][..]),
        ("bin/busybox", 0o100_755, &busybox[..]),
        ("init", 0o100_755, &init[..]),
    ] {
        let mut writer = cpio::newc::Builder::new(name)
            .mode(mode)
            .nlink(1)
            .write(out, u32::try_from(bytes.len())?);
        writer.write_all(bytes)?;
        out = writer.finish()?;
    }
    out = cpio::newc::Builder::new("dev/console")
        .mode(0o020_600)
        .rdev_major(5)
        .rdev_minor(1)
        .write(out, 0)
        .finish()?;
    cpio::newc::trailer(out)?.flush()?;
    Ok(path)
}

/// Seconds from spawning qemu to `hi` on the floor guest's console.
fn floor_boot(kernel: &Path, initramfs: &Path) -> Result<f64> {
    let start = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-M",
            "microvm,pit=on,pic=on,rtc=on,isa-serial=on,memory-backend=mem",
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-smp",
            "1",
            "-m",
            "512M",
            "-object",
            "memory-backend-memfd,id=mem,size=512M,share=on",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-no-reboot",
            "-append",
            &format!("console=ttyS0 panic=-1 {}", sandvisor::vm::clock_args()),
        ])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initramfs)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut elapsed = None;
    for line in BufReader::new(stdout).lines() {
        if line?.trim() == "hi" {
            elapsed = Some(start.elapsed().as_secs_f64());
            break;
        }
    }
    let _ = child.kill();
    child.wait()?;
    elapsed.ok_or_else(|| "the floor guest never printed hi".into())
}

/// Seconds from `create` of an `echo hi` sandbox on `backend` to `hi` in
/// its log.
async fn sandbox_boot(rt: &Sandvisor, name: &str, backend: Backend) -> Result<f64> {
    let start = Instant::now();
    rt.create(
        SandboxConfig::new(name, "echo")
            .args(["hi"])
            .with_backend(backend),
    )
    .await?;
    let mut stream = rt
        .logs()
        .log_stream(
            name,
            &LogStreamOptions {
                sources: vec![LogSource::Stdout],
                follow: true,
                ..Default::default()
            },
        )
        .await?;
    let entry = tokio::time::timeout(Duration::from_secs(120), stream.next())
        .await?
        .ok_or("no output")??;
    if &entry.data[..] != b"hi\n" {
        return Err(format!("unexpected output {:?}", entry.data).into());
    }
    Ok(start.elapsed().as_secs_f64())
}

/// A field (in KiB) of `/proc/PID/<file>`: `status` or `smaps_rollup`.
fn kib_in(file: &str, pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Processes whose parent is `parent`.
fn children(parent: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter(|pid| {
                    std::fs::read_to_string(format!("/proc/{pid}/stat"))
                        .ok()
                        .and_then(|stat| {
                            let after = stat.rsplit_once(')')?.1.to_string();
                            after.split_whitespace().nth(1)?.parse::<u32>().ok()
                        })
                        == Some(parent)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// MiB per idle sandbox on `backend` beyond a VM guest's RAM: the
/// sandbox's host processes (for a VM, qemu less its shared guest memory)
/// and this process's growth.
async fn idle_memory(rt: &Sandvisor, prefix: &str, backend: Backend) -> Result<f64> {
    let before = kib_in("status", std::process::id(), "VmRSS:");
    let mut sandboxes = Vec::new();
    for i in 0..IDLE {
        sandboxes.push(
            rt.create(
                SandboxConfig::new(format!("{prefix}{i}"), "sleep")
                    .args(["600"])
                    .with_backend(backend),
            )
            .await?,
        );
    }
    // Idle: let the guests settle after boot.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ours = kib_in("status", std::process::id(), "VmRSS:").saturating_sub(before);
    let mut theirs = 0;
    for sandbox in &sandboxes {
        let runs = rt.runs(sandbox.name()).await?;
        let launcher = runs.last().ok_or("no run")?.pid;
        let mut tree = vec![launcher];
        let mut i = 0;
        while i < tree.len() {
            tree.extend(children(tree[i]));
            i += 1;
        }
        for pid in tree {
            // Proportional: the pages of qemu's binary and libraries that
            // every VM shares count once in all; guest RAM is qemu's shared
            // memory (Pss_Shmem) and is not counted.
            theirs +=
                kib_in("smaps_rollup", pid, "Pss_Anon:") + kib_in("smaps_rollup", pid, "Pss_File:");
        }
    }
    for sandbox in &sandboxes {
        sandbox.kill().await?;
    }
    Ok((ours + theirs) as f64 / IDLE as f64 / 1024.0)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let agent = std::env::current_exe()?
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("sandvisor-agent"))
        .ok_or("no agent path")?;
    let rt = Sandvisor::builder()
        .home(dir.path().join("home"))
        .agent_path(agent)
        .vm(sandvisor::vm::VmSettings {
            accel: Some(sandvisor::vm::Accel::Tcg),
            ..Default::default()
        })
        .open()
        .await?;
    let kernel = sandvisor::vm::default_kernel();
    let floor = floor_initramfs(dir.path())?;
    // Untimed: builds the initramfs once, as any first VM of a home does.
    eprintln!("warming up");
    sandbox_boot(&rt, "warm", VM).await?;
    let mut floors = Vec::new();
    let mut vms = Vec::new();
    let mut namespaces = Vec::new();
    for i in 0..RUNS {
        eprintln!("run {}/{RUNS}", i + 1);
        floors.push(floor_boot(&kernel, &floor)?);
        vms.push(sandbox_boot(&rt, &format!("vm{i}"), VM).await?);
        namespaces.push(sandbox_boot(&rt, &format!("ns{i}"), Backend::Namespaces).await?);
    }
    let (floor, vm, ns) = (median(floors), median(vms), median(namespaces));
    let vm_memory = idle_memory(&rt, "idle-vm", VM).await?;
    let ns_memory = idle_memory(&rt, "idle-ns", Backend::Namespaces).await?;
    println!("kernel: {} (TCG)", kernel.display());
    println!("| measure | sandvisor | baseline | ratio | target |");
    println!("| --- | --- | --- | --- | --- |");
    println!(
        "| boot → first output of `echo hi`, VM sandbox vs bare qemu microvm | {:.2} s | {:.2} s | {:.2}× | ≤ 1.2× |",
        vm,
        floor,
        vm / floor
    );
    println!(
        "| same, namespace backend (beside) | {:.3} s | {:.2} s | {:.3}× | — |",
        ns,
        floor,
        ns / floor
    );
    println!(
        "| host memory per idle VM sandbox beyond guest RAM | {vm_memory:.1} MiB | 24 MiB (target) | {:.2}× | ≤ 1.0× |",
        vm_memory / 24.0
    );
    println!(
        "| host memory per idle namespace sandbox (beside) | {ns_memory:.1} MiB | — | — | — |"
    );
    Ok(())
}
