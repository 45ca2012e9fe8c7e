//! Spawn benchmark: first the host memory an idle sandbox costs (200 running
//! `sleep`); then 500 sandboxes with the full default isolation (user, pid,
//! mount, net, uts, ipc and cgroup namespaces, their own root, dropped
//! capabilities, seccomp, cgroup limits) running `true`, started at once and
//! reaped, against `bwrap` doing the equivalent (every namespace including
//! user, read-only binds of the system directories, fresh `/proc`, `/dev`
//! and `/tmp`, every capability dropped; 500 at once; the row says so when
//! bwrap is missing), the `unshare` floor (the namespaces without user or
//! root, 500 at once) and plain `true`.
//!
//! Run: `cargo run --release --example bench_spawn` (as root: namespaces).

use std::process::Stdio;
use std::time::{Duration, Instant};

use sandvisor::{Isolation, SandboxConfig, SandboxStatus, Sandvisor};

const N: usize = 500;
const IDLE: usize = 200;
const ROUNDS: usize = 3;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let agent = std::env::current_exe()?
        .parent()
        .and_then(|dir| dir.parent())
        .map(|dir| dir.join("sandvisor-agent"))
        .filter(|path| path.is_file())
        .ok_or("build the agent first: cargo build --release --bin sandvisor-agent")?;

    idle_memory(&agent).await?;
    let mut sandvisor_times = Vec::new();
    let mut tmpfs_times = Vec::new();
    let mut unconfined_times = Vec::new();
    let mut unshare_times = Vec::new();
    let mut bwrap_times = Vec::new();
    let mut plain_times = Vec::new();
    let bwrap = bwrap_available();
    // Homes are kept to the end: deleting thousands of directories between
    // rounds makes ext4's inode allocator slow for the next round's mkdirs.
    let mut homes = Vec::new();
    for round in 0..ROUNDS {
        let home = tempfile::tempdir()?;
        let rt = runtime(home.path(), &agent).await?;
        sandvisor_times.push(spawn_sandboxes(&rt, round, Isolation::default()).await?);
        // The same with the home on tmpfs: what is left once the filesystem's
        // inode allocation (the directories and exec.log) costs nothing.
        let shm = tempfile::tempdir_in("/dev/shm")?;
        let rt_shm = runtime(shm.path(), &agent).await?;
        tmpfs_times.push(spawn_sandboxes(&rt_shm, round, Isolation::default()).await?);
        homes.push(shm);
        let bare = tempfile::tempdir()?;
        let rt_bare = runtime(bare.path(), &agent).await?;
        unconfined_times.push(spawn_sandboxes(&rt_bare, round, Isolation::unconfined()).await?);
        homes.push(bare);
        unshare_times.push(
            spawn_commands(|| {
                let mut c = tokio::process::Command::new("unshare");
                c.args([
                    "--pid",
                    "--fork",
                    "--mount",
                    "--mount-proc",
                    "--net",
                    "--uts",
                    "--ipc",
                    "true",
                ]);
                c
            })
            .await?,
        );
        if bwrap {
            bwrap_times.push(spawn_commands(bwrap_command).await?);
        }
        plain_times.push(spawn_commands(|| tokio::process::Command::new("true")).await?);
        homes.push(home);
    }
    let (s, u, p) = (
        median(&mut sandvisor_times),
        median(&mut unshare_times),
        median(&mut plain_times),
    );
    let m = median(&mut tmpfs_times);
    let bare = median(&mut unconfined_times);
    println!("spawn {N} at once and reap (median of {ROUNDS})");
    println!("| what | total ms | per sandbox µs | vs unshare floor |");
    println!("| --- | ---: | ---: | ---: |");
    println!(
        "| sandvisor, full default isolation, create+start+wait (`true`) | {:.0} | {:.0} | {:.2}x |",
        ms(s),
        us(s) / N as f64,
        s.as_secs_f64() / u.as_secs_f64()
    );
    println!(
        "| sandvisor, home on tmpfs | {:.0} | {:.0} | {:.2}x |",
        ms(m),
        us(m) / N as f64,
        m.as_secs_f64() / u.as_secs_f64()
    );
    println!(
        "| sandvisor unconfined: no isolation, the runtime's own path | {:.0} | {:.0} | {:.2}x |",
        ms(bare),
        us(bare) / N as f64,
        bare.as_secs_f64() / u.as_secs_f64()
    );
    println!(
        "| unshare -p -f -m --mount-proc -n -u -i true | {:.0} | {:.0} | 1.00x |",
        ms(u),
        us(u) / N as f64
    );
    let b = bwrap.then(|| median(&mut bwrap_times));
    if let Some(b) = b {
        println!(
            "| bwrap --unshare-all --uid 0, system dirs ro, fresh /proc /dev /tmp, --cap-drop ALL | {:.0} | {:.0} | {:.2}x |",
            ms(b),
            us(b) / N as f64,
            b.as_secs_f64() / u.as_secs_f64()
        );
    } else {
        println!("| bwrap | - | - | missing (apt-get install bubblewrap) |");
    }
    println!(
        "| plain true (no namespaces) | {:.0} | {:.0} | {:.2}x |",
        ms(p),
        us(p) / N as f64,
        p.as_secs_f64() / u.as_secs_f64()
    );
    println!();
    println!(
        "sandvisor (full isolation) / unshare floor: {:.2}x",
        s.as_secs_f64() / u.as_secs_f64()
    );
    if let Some(b) = b {
        println!(
            "sandvisor (full isolation) / bwrap: {:.2}x (target <= 0.60x, {:.0} ms)",
            s.as_secs_f64() / b.as_secs_f64(),
            ms(b) * 0.6
        );
        println!(
            "sandvisor unconfined / bwrap: {:.2}x; unshare floor / bwrap: {:.2}x",
            bare.as_secs_f64() / b.as_secs_f64(),
            u.as_secs_f64() / b.as_secs_f64()
        );
    } else {
        println!("sandvisor / bwrap: not measured, bwrap is missing (apt-get install bubblewrap)");
    }

    Ok(())
}

async fn runtime(
    home: &std::path::Path,
    agent: &std::path::Path,
) -> Result<Sandvisor, Box<dyn std::error::Error + Send + Sync>> {
    Ok(Sandvisor::builder()
        .home(home)
        .agent_path(agent)
        .open()
        .await?)
}

/// `bwrap` runs here (installed, and allowed to make its namespaces).
fn bwrap_available() -> bool {
    std::process::Command::new("bwrap")
        .args(["--ro-bind", "/", "/", "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// bwrap doing what a default sandbox gets: every namespace including user
/// (root inside), read-only system directories, fresh `/proc`, `/dev` and
/// `/tmp`, no capabilities.
fn bwrap_command() -> tokio::process::Command {
    let mut c = tokio::process::Command::new("bwrap");
    c.args([
        "--unshare-all",
        "--uid",
        "0",
        "--ro-bind",
        "/usr",
        "/usr",
        "--symlink",
        "usr/bin",
        "/bin",
        "--symlink",
        "usr/lib",
        "/lib",
        "--symlink",
        "usr/lib64",
        "/lib64",
        "--symlink",
        "usr/sbin",
        "/sbin",
        "--ro-bind",
        "/etc",
        "/etc",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--tmpfs",
        "/tmp",
        "--cap-drop",
        "ALL",
        "--",
        "/bin/true",
    ]);
    c
}

/// Host memory per idle sandbox, measured first, in a process that has not
/// yet run (and freed) hundreds of sandboxes: later, the allocator's freed
/// pages would absorb the idle sandboxes and hide their cost.
async fn idle_memory(
    agent: &std::path::Path,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let home = tempfile::tempdir()?;
    let rt = runtime(home.path(), agent).await?;
    // Warm up allocator pools, SQLite and the actor runtime before measuring.
    let warm = rt
        .create(SandboxConfig::new("warm", "sleep").args(["1000"]))
        .await?;
    warm.kill().await?;
    let before = rss_bytes()?;
    let mut sandboxes = Vec::new();
    for i in 0..IDLE {
        sandboxes.push(
            rt.create(SandboxConfig::new(format!("idle-{i}"), "sleep").args(["1000"]))
                .await?,
        );
    }
    for sandbox in &sandboxes {
        assert_eq!(sandbox.status().await?, SandboxStatus::Running);
    }
    let after = rss_bytes()?;
    let per = after.saturating_sub(before) as f64 / IDLE as f64;
    println!("| idle sandboxes | host RSS before | after | per sandbox | target |");
    println!("| ---: | ---: | ---: | ---: | ---: |");
    println!(
        "| {IDLE} | {:.1} MiB | {:.1} MiB | {:.1} KiB | <= 64 KiB |",
        before as f64 / 1048576.0,
        after as f64 / 1048576.0,
        per / 1024.0
    );
    println!();
    let kills: Vec<_> = sandboxes.iter().map(|s| s.kill()).collect();
    for result in futures::future::join_all(kills).await {
        result?;
    }
    Ok(())
}

async fn spawn_sandboxes(
    rt: &Sandvisor,
    round: usize,
    isolation: Isolation,
) -> Result<Duration, Box<dyn std::error::Error + Send + Sync>> {
    let started = Instant::now();
    let tasks: Vec<_> = (0..N)
        .map(|i| {
            let rt = rt.clone();
            let mut config = SandboxConfig::new(format!("b{round}-{i}"), "true");
            config.isolation = isolation;
            tokio::spawn(async move {
                let sandbox = rt.create(config).await?;
                sandbox.wait_until_stopped().await
            })
        })
        .collect();
    for task in tasks {
        let result = task.await??;
        if result.exit_code != Some(0) {
            return Err(format!("{} exited with {:?}", result.name, result.exit_code).into());
        }
    }
    Ok(started.elapsed())
}

async fn spawn_commands(
    make: impl Fn() -> tokio::process::Command,
) -> Result<Duration, Box<dyn std::error::Error + Send + Sync>> {
    let started = Instant::now();
    let mut children = Vec::with_capacity(N);
    for _ in 0..N {
        children.push(
            make()
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
        );
    }
    for mut child in children {
        let status = child.wait().await?;
        if !status.success() {
            return Err(format!("baseline command failed: {status}").into());
        }
    }
    Ok(started.elapsed())
}

fn rss_bytes() -> std::io::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0);
    Ok(kib * 1024)
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
