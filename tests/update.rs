//! Live resource updates (issue 18, part 5), with real sandboxes, real
//! cgroups (read from the host) and the real store: `Sandbox::update` and
//! `sandvisor update` change the running sandbox's cgroup and its stored
//! config; a stopped sandbox and bad values are refused with nothing changed.

mod common;

#[path = "common/cgroup.rs"]
mod cgroup;
#[path = "common/cli.rs"]
mod cli_home;
use cgroup::host_limit;

use std::time::{Duration, Instant};

use common::runtime;
use sandvisor::{
    Error, ExecConfig, Limit, Resources, SandboxConfig, SandboxStatus, TerminationReason,
};
use serde_json::Value;

fn memory_limit(pid: u32) -> Option<String> {
    host_limit(pid, "memory", "memory.limit_in_bytes", "memory.max")
}

fn pids_limit(pid: u32) -> Option<String> {
    host_limit(pid, "pids", "pids.max", "pids.max")
}

/// The CPU quota as "QUOTA PERIOD" (v2's `cpu.max`, or v1's two files).
fn cpu_limit(pid: u32) -> Option<String> {
    host_limit(pid, "cpu", "cpu.cfs_quota_us", "cpu.max").map(|quota| {
        if quota.contains(' ') {
            quota
        } else {
            let period = host_limit(pid, "cpu", "cpu.cfs_period_us", "cpu.max").unwrap_or_default();
            format!("{quota} {period}")
        }
    })
}

/// A python program that waits for `/tmp/go`, then allocates 96 MiB.
fn allocate_on_signal() -> Vec<String> {
    vec![
        "-c".into(),
        "import os, time\n\
         print('waiting', flush=True)\n\
         while not os.path.exists('/tmp/go'):\n    time.sleep(0.02)\n\
         x = bytearray(96 << 20)\n\
         print('allocated', flush=True)"
            .into(),
    ]
}

#[tokio::test]
async fn an_update_lowers_memory_max_and_an_allocation_beyond_it_is_oom_killed() {
    let (_home, rt) = runtime().await;
    let mut config = SandboxConfig::new("shrink", "python3");
    config.args = allocate_on_signal();
    config.memory = Limit::Value(512 << 20);
    let sandbox = rt.create(config).await.unwrap();
    let pid = rt.runs("shrink").await.unwrap()[0].pid;
    assert_eq!(memory_limit(pid).as_deref(), Some("536870912"));

    sandbox
        .update(Resources {
            memory: Some(Limit::Value(32 << 20)),
            ..Resources::default()
        })
        .await
        .unwrap();
    assert_eq!(
        memory_limit(pid).as_deref(),
        Some("33554432"),
        "memory.max of the running sandbox, read from the host"
    );
    // The stored config says so too: the next run starts with it.
    let stored = rt.get("shrink").await.unwrap().config().unwrap();
    assert_eq!(stored.memory, Limit::Value(32 << 20));

    let touched = sandbox
        .exec(ExecConfig::new("touch", ["/tmp/go"]))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(touched.code, Some(0), "{touched:?}");
    let result = sandbox.wait_until_stopped().await.unwrap();
    assert_eq!(result.signal, Some(libc::SIGKILL), "{result:?}");
    let runs = rt.runs("shrink").await.unwrap();
    assert_eq!(
        runs[0].termination_reason,
        Some(TerminationReason::OutOfMemory)
    );
    assert!(!common::stdout_of(&sandbox).await.contains("allocated"));

    // The same program in a sandbox whose limit stays at 512 MiB completes:
    // the update, not the program, made the difference.
    let mut config = SandboxConfig::new("roomy", "python3");
    config.args = allocate_on_signal();
    config.memory = Limit::Value(512 << 20);
    let roomy = rt.create(config).await.unwrap();
    roomy
        .exec(ExecConfig::new("touch", ["/tmp/go"]))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    let result = roomy.wait_until_stopped().await.unwrap();
    assert_eq!(result.exit_code, Some(0), "{result:?}");
}

#[tokio::test]
async fn every_limit_changes_live_and_in_the_store_and_a_restart_keeps_them() {
    let (_home, rt) = runtime().await;
    let mut config = SandboxConfig::shell("all", "sleep 300");
    config.cpus = Some(1.0);
    let sandbox = rt.create(config).await.unwrap();
    let pid = rt.runs("all").await.unwrap()[0].pid;
    assert_eq!(cpu_limit(pid).as_deref(), Some("100000 100000"));

    sandbox
        .update(Resources {
            memory: Some(Limit::Value(256 << 20)),
            cpus: Some(2.0),
            pids: Some(Limit::Value(200)),
        })
        .await
        .unwrap();
    assert_eq!(memory_limit(pid).as_deref(), Some("268435456"));
    assert_eq!(pids_limit(pid).as_deref(), Some("200"));
    assert_eq!(cpu_limit(pid).as_deref(), Some("200000 100000"));

    // Lifted: the kernel's "no limit".
    sandbox
        .update(Resources {
            pids: Some(Limit::Unlimited),
            ..Resources::default()
        })
        .await
        .unwrap();
    assert_eq!(pids_limit(pid).as_deref(), Some("max"));

    sandbox.stop().await.unwrap();
    let stored = rt.get("all").await.unwrap().config().unwrap();
    assert_eq!(stored.memory, Limit::Value(256 << 20));
    assert_eq!(stored.pids, Limit::Unlimited);
    assert_eq!(stored.cpus, Some(2.0));

    // The next run starts with the stored limits.
    rt.start("all").await.unwrap();
    let runs = rt.runs("all").await.unwrap();
    let pid = runs[1].pid;
    assert_eq!(memory_limit(pid).as_deref(), Some("268435456"));
    assert_eq!(cpu_limit(pid).as_deref(), Some("200000 100000"));
    rt.get("all").await.unwrap().kill().await.unwrap();
}

#[tokio::test]
async fn a_stopped_sandbox_and_bad_values_are_refused_with_nothing_changed() {
    let (_home, rt) = runtime().await;
    let sandbox = rt
        .create(SandboxConfig::shell("bad", "sleep 300"))
        .await
        .unwrap();
    let pid = rt.runs("bad").await.unwrap()[0].pid;
    let before = memory_limit(pid);
    assert_eq!(before.as_deref(), Some("1073741824"), "the default 1 GiB");

    let bad = [
        (
            Resources {
                memory: Some(Limit::Value(64 << 20)),
                cpus: Some(0.0),
                ..Resources::default()
            },
            "cpus",
        ),
        (
            Resources {
                memory: Some(Limit::Value(0)),
                ..Resources::default()
            },
            "memory",
        ),
        (
            Resources {
                memory: Some(Limit::Value(64 << 20)),
                pids: Some(Limit::Value(0)),
                ..Resources::default()
            },
            "pids",
        ),
        (Resources::default(), "resources"),
    ];
    let handle = rt.get("bad").await.unwrap();
    for (resources, field) in bad {
        for result in [
            sandbox.update(resources).await,
            handle.update(resources).await,
        ] {
            match result {
                Err(Error::InvalidConfig { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{resources:?}: {other:?}"),
            }
        }
    }
    assert_eq!(memory_limit(pid), before, "nothing was half-applied");
    assert_eq!(
        rt.get("bad").await.unwrap().config().unwrap().memory,
        Limit::Default
    );

    // Stopped: refused, and the stored config keeps its limits.
    sandbox.stop().await.unwrap();
    let grow = Resources {
        memory: Some(Limit::Value(2 << 30)),
        ..Resources::default()
    };
    let handle = rt.get("bad").await.unwrap();
    assert_eq!(handle.status_snapshot(), SandboxStatus::Stopped);
    match handle.update(grow).await {
        Err(Error::SandboxNotRunning(name)) => assert_eq!(name, "bad"),
        other => panic!("{other:?}"),
    }
    match sandbox.update(grow).await {
        Err(Error::SandboxNotRunning(_)) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(
        rt.get("bad").await.unwrap().config().unwrap().memory,
        Limit::Default
    );
}

#[tokio::test]
async fn a_limit_cgroup_v1_cannot_add_is_refused_before_anything_is_written() {
    if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        // cgroup v2 enables a missing controller live: nothing to refuse.
        return;
    }
    let (_home, rt) = runtime().await;
    // No `cpus`: the run has no cpu group.
    let sandbox = rt
        .create(SandboxConfig::shell("v1", "sleep 300"))
        .await
        .unwrap();
    let pid = rt.runs("v1").await.unwrap()[0].pid;
    let result = sandbox
        .update(Resources {
            memory: Some(Limit::Value(64 << 20)),
            cpus: Some(1.0),
            ..Resources::default()
        })
        .await;
    match result {
        Err(Error::UpdateRefused { name, reason }) => {
            assert_eq!(name, "v1");
            assert!(reason.contains("cpu"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(memory_limit(pid).as_deref(), Some("1073741824"));
    let stored = rt.get("v1").await.unwrap().config().unwrap();
    assert_eq!((stored.memory, stored.cpus), (Limit::Default, None));
    sandbox.kill().await.unwrap();
}

fn inspect(cli: &cli_home::Cli, name: &str) -> Value {
    let text = cli.ok(&["inspect", name]);
    serde_json::from_str::<Value>(&text).unwrap()[0].clone()
}

#[test]
fn the_cli_updates_a_sandbox_hosted_by_the_daemon() {
    // Its daemon (started by `run -d`) is killed when it drops.
    let cli = &cli_home::Cli::new();
    cli.ok(&[
        "run", "-d", "--name", "web", "--cpus", "1", "--", "sleep", "300",
    ]);
    let pid = {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let found = inspect(cli, "web")["runs"]
                .as_array()
                .and_then(|runs| runs.last())
                .and_then(|run| run["pid"].as_u64());
            if let Some(pid) = found {
                break pid as u32;
            }
            assert!(Instant::now() < deadline, "a run within 30 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    };

    let out = cli.ok(&[
        "update",
        "--memory",
        "512M",
        "--cpus",
        "2",
        "--pids-limit",
        "200",
        "web",
    ]);
    assert_eq!(out.trim(), "web");
    assert_eq!(memory_limit(pid).as_deref(), Some("536870912"));
    assert_eq!(pids_limit(pid).as_deref(), Some("200"));
    assert_eq!(cpu_limit(pid).as_deref(), Some("200000 100000"));
    let config = &inspect(cli, "web")["config"];
    assert_eq!(config["memory"], 512u64 << 20, "{config}");
    assert_eq!(config["pids"], 200, "{config}");
    assert_eq!(config["cpus"], 2.0, "{config}");

    // Bad values: usage errors (exit 2) or typed ones (exit 1), nothing
    // changed.
    for args in [
        &["update", "--memory", "lots", "web"][..],
        &["update", "--pids-limit", "0", "web"],
        &["update", "--cpus", "many", "web"],
    ] {
        let out = cli.run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
    let out = cli.run(&["update", "--cpus", "0", "web"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("invalid config: cpus"), "{stderr}");
    assert_eq!(memory_limit(pid).as_deref(), Some("536870912"));

    // Stopped: refused, stored config unchanged.
    cli.ok(&["stop", "-t", "1", "web"]);
    let out = cli.run(&["update", "--memory", "1g", "web"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not running"), "{stderr}");
    assert_eq!(inspect(cli, "web")["config"]["memory"], 512u64 << 20);
}
