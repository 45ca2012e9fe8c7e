//! Resource limits through cgroups, with real sandboxes (as root): an OOM
//! kill ends the run `OutOfMemory`, a pids limit makes forks fail, a CPU
//! limit is written as the group's quota.

mod common;

use common::runtime;
use sandvisor::engine::host::cgroup::{cpu_quota_us, Cgroup, Limits, CPU_PERIOD_US};
use sandvisor::{LogOptions, SandboxConfig, SandboxStatus, TerminationReason};

fn output_of(entries: &[sandvisor::LogEntry]) -> String {
    entries
        .iter()
        .map(|e| String::from_utf8_lossy(&e.data).into_owned())
        .collect()
}

#[tokio::test]
async fn an_oom_kill_ends_the_run_out_of_memory() {
    let (_home, rt) = runtime().await;
    let mut config = SandboxConfig::new("oom", "python3");
    config.args = vec![
        "-c".into(),
        "x = bytearray(512 << 20); print('allocated')".into(),
    ];
    config.memory = sandvisor::Limit::Value(32 << 20);
    let sandbox = rt.create(config).await.unwrap();
    let result = sandbox.wait_until_stopped().await.unwrap();
    assert_eq!(result.status, SandboxStatus::Stopped);
    assert_eq!(result.signal, Some(libc::SIGKILL), "{result:?}");
    let runs = rt.runs("oom").await.unwrap();
    assert_eq!(
        runs[0].termination_reason,
        Some(TerminationReason::OutOfMemory)
    );
    let out = output_of(&sandbox.logs(&LogOptions::default()).await.unwrap());
    assert!(
        !out.contains("allocated"),
        "the allocation succeeded: {out}"
    );

    // The same command within its limit completes.
    let mut config = SandboxConfig::new("fits", "python3");
    config.args = vec![
        "-c".into(),
        "x = bytearray(1 << 20); print('allocated')".into(),
    ];
    config.memory = sandvisor::Limit::Value(32 << 20);
    let sandbox = rt.create(config).await.unwrap();
    let result = sandbox.wait_until_stopped().await.unwrap();
    assert_eq!(result.exit_code, Some(0), "{result:?}");
    let runs = rt.runs("fits").await.unwrap();
    assert_eq!(
        runs[0].termination_reason,
        Some(TerminationReason::Completed)
    );
}

#[tokio::test]
async fn a_pids_limit_makes_forks_fail() {
    let (_home, rt) = runtime().await;
    let mut config = SandboxConfig::shell(
        "pids",
        "for i in $(seq 50); do sleep 2 & done; wait; echo finished",
    );
    config.pids = sandvisor::Limit::Value(20);
    let sandbox = rt.create(config).await.unwrap();
    sandbox.wait_until_stopped().await.unwrap();
    let out = output_of(&sandbox.logs(&LogOptions::default()).await.unwrap());
    assert!(
        out.to_lowercase().contains("fork"),
        "no fork failure reported: {out}"
    );
}

#[test]
fn cpus_become_a_quota_per_period() {
    assert_eq!(CPU_PERIOD_US, 100_000);
    assert_eq!(cpu_quota_us(1.5), Some(150_000));
    assert_eq!(cpu_quota_us(0.5), Some(50_000));
    assert_eq!(cpu_quota_us(0.001), Some(1_000), "the kernel's minimum");
    assert_eq!(cpu_quota_us(0.0), None);
    assert_eq!(cpu_quota_us(-1.0), None);
    assert_eq!(cpu_quota_us(f64::NAN), None);
}

#[test]
fn a_cpu_limit_is_the_groups_quota() {
    let limits = Limits {
        cpu_quota_us: cpu_quota_us(0.5),
        ..Limits::default()
    };
    assert!(limits.any());
    let id = format!("limits-test-{}", std::process::id());
    let group = Cgroup::create(&id, limits).unwrap();
    let quota = group
        .dirs()
        .iter()
        .find_map(|dir| {
            // v2: "50000 100000"; v1: the quota and period apart.
            std::fs::read_to_string(dir.join("cpu.max"))
                .ok()
                .or_else(|| {
                    let quota = std::fs::read_to_string(dir.join("cpu.cfs_quota_us")).ok()?;
                    let period = std::fs::read_to_string(dir.join("cpu.cfs_period_us")).ok()?;
                    Some(format!("{} {}", quota.trim(), period.trim()))
                })
        })
        .expect("a cpu quota file");
    assert_eq!(quota.trim(), "50000 100000");
    assert_eq!(group.oom_kills(), 0, "no memory controller, no OOM count");
    let dirs = group.dirs().to_vec();
    drop(group);
    assert!(
        dirs.iter().all(|dir| !dir.exists()),
        "removed with the handle"
    );
}
