//! The microVM backend (issue 16), tried from outside and from inside real
//! guests under qemu (TCG here: this host's `/dev/kvm` runs no stock
//! kernel): the guest's own kernel, `/proc/sys` writes that stay in it, the
//! console in `kernel.log`, the root and writable layer the host staged;
//! boot failures with their stage; many VMs at once; nothing of qemu left
//! behind. The backend-independent tests (lifecycle, exec, terminal, logs,
//! events, CLI) run on both backends in their topic's file (`on_both!` of
//! `tests/common/backends.rs`); the two bodies here are those not covered
//! there.

mod common;
#[allow(dead_code)]
#[path = "common/faults.rs"]
mod faults;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::backends::{self, VM};
use futures::StreamExt;
use sandvisor::logs::{LogSource, LogStreamOptions};
use sandvisor::{Backend, ExecConfig, SandboxConfig, SandboxStatus, Sandvisor};

fn sh(script: &str) -> ExecConfig {
    ExecConfig::new("sh", ["-c", script])
}

/// The qemu processes a home's sandboxes run: qemu's standard output is
/// the sandbox's `kernel.log` under that home.
fn qemus_of(home: &Path) -> Vec<u32> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.starts_with("qemu-system"))
                && std::fs::read_link(format!("/proc/{pid}/fd/1"))
                    .is_ok_and(|out| out.starts_with(home))
        })
        .collect()
}

/// Runs `script` in `sandbox`; its stdout and exit code.
async fn run_sh(sandbox: &sandvisor::Sandbox, script: &str) -> (String, Option<i32>) {
    let mut session = sandbox.exec(sh(script)).await.unwrap();
    let mut out = Vec::new();
    while let Some(chunk) = session.next().await {
        if chunk.source == LogSource::Stdout {
            out.extend_from_slice(&chunk.data);
        }
    }
    let status = session.status().unwrap();
    (String::from_utf8_lossy(&out).into_owned(), status.code)
}

fn host_kernel() -> String {
    nix::sys::utsname::uname()
        .unwrap()
        .release()
        .to_string_lossy()
        .into_owned()
}

fn guest_kernel() -> String {
    sandvisor::vm::default_kernel()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .trim_start_matches("vmlinuz-")
        .to_string()
}

async fn vm_runtime(settings: sandvisor::vm::VmSettings) -> (tempfile::TempDir, Sandvisor) {
    let home = tempfile::tempdir().unwrap();
    let rt = Sandvisor::builder()
        .home(home.path())
        .agent_path(env!("CARGO_BIN_EXE_sandvisor-agent"))
        .vm(settings)
        .open()
        .await
        .unwrap();
    (home, rt)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_runs_its_own_kernel_keeps_sysctl_writes_and_logs_its_console() {
    let (home, rt) = common::runtime().await;
    let mut config = SandboxConfig::new("vm1", "sleep")
        .args(["600"])
        .with_backend(VM);
    // SYS_ADMIN lets the sandbox remount /proc/sys writable: in a guest
    // that reaches only the guest's kernel.
    config.cap_add = vec!["SYS_ADMIN".into()];
    let sandbox = rt.create(config).await.unwrap();
    assert_eq!(qemus_of(home.path()).len(), 1);

    let (release, code) = run_sh(&sandbox, "uname -r").await;
    assert_eq!(code, Some(0));
    assert_eq!(release.trim(), guest_kernel());
    assert_ne!(release.trim(), host_kernel());

    let host_before = std::fs::read_to_string("/proc/sys/vm/overcommit_ratio").unwrap();
    let wanted = if host_before.trim() == "77" {
        "78"
    } else {
        "77"
    };
    let (seen, code) = run_sh(
        &sandbox,
        &format!(
            "mount -o remount,bind,rw /proc/sys && echo {wanted} > /proc/sys/vm/overcommit_ratio && cat /proc/sys/vm/overcommit_ratio"
        ),
    )
    .await;
    assert_eq!((seen.trim(), code), (wanted, Some(0)));
    assert_eq!(
        std::fs::read_to_string("/proc/sys/vm/overcommit_ratio").unwrap(),
        host_before,
        "a guest's sysctl must not reach the host"
    );

    // The host base, read-only, and the sandbox's writable layer.
    let (out, code) = run_sh(
        &sandbox,
        "test -x /usr/bin/env && echo base; touch /usr/bin/x 2>/dev/null && echo wrote-usr; \
         echo kept > /root/kept && cat /root/kept; test -e /etc/shadow && wc -c < /etc/shadow",
    )
    .await;
    assert_eq!(code, Some(0), "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "base");
    assert!(lines.contains(&"kept"), "{out}");
    assert!(!std::path::Path::new("/usr/bin/x").exists());
    assert!(
        lines.last() == Some(&"0") || lines.last() == Some(&"kept"),
        "host secrets stay masked: {out}"
    );

    sandbox.stop().await.unwrap();
    let logs = home.path().join("sandboxes/vm1/logs");
    let console = std::fs::read_to_string(logs.join("kernel.log")).unwrap();
    assert!(console.contains("Linux version"), "{console}");
    assert!(console.contains("Run /init as init process"), "{console}");
    let runtime_log = std::fs::read_to_string(logs.join("runtime.log")).unwrap();
    assert!(
        runtime_log.contains("microVM up: qemu microvm"),
        "{runtime_log}"
    );
    common::wait_until("qemu exits with its guest", || {
        qemus_of(home.path()).is_empty()
    });

    // The writable layer lives on the host: kept across runs, and readable
    // while the sandbox is stopped.
    let handle = rt.get("vm1").await.unwrap();
    assert_eq!(handle.read_file("/root/kept").await.unwrap(), b"kept\n");
    let sandbox = rt.start("vm1").await.unwrap();
    let (out, _) = run_sh(&sandbox, "cat /root/kept").await;
    assert_eq!(out, "kept\n");
    sandbox.kill().await.unwrap();
    common::wait_until("qemu is killed with its sandbox", || {
        qemus_of(home.path()).is_empty()
    });
}

/// A start that fails names its stage and leaves no process behind.
async fn boot_fails(settings: sandvisor::vm::VmSettings, memory: u64, stage: &str, says: &str) {
    let (home, rt) = vm_runtime(settings).await;
    let config =
        SandboxConfig::new("bad", "true").with_backend(Backend::MicroVm { vcpus: 1, memory });
    let err = rt.create(config).await.unwrap_err();
    let sandvisor::Error::BootFailed {
        stage: got,
        message,
        hint,
        ..
    } = &err
    else {
        panic!("expected BootFailed, got {err:?}");
    };
    assert_eq!(got, stage, "{err}");
    assert!(message.contains(says), "{message}");
    assert!(!hint.is_empty());
    let record: serde_json::Value = serde_json::from_slice(
        &std::fs::read(home.path().join("sandboxes/bad/logs/boot-error.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(record["stage"], stage);
    assert!(qemus_of(home.path()).is_empty());
    assert_eq!(
        rt.get("bad").await.unwrap().status_snapshot(),
        SandboxStatus::Stopped
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_kernel_or_qemu_fails_at_build_vm() {
    boot_fails(
        sandvisor::vm::VmSettings {
            kernel: Some(PathBuf::from("/nonexistent/vmlinuz-0")),
            ..Default::default()
        },
        0,
        "build_vm",
        "/nonexistent/vmlinuz-0",
    )
    .await;
    boot_fails(
        sandvisor::vm::VmSettings {
            qemu: Some(PathBuf::from("/nonexistent/qemu-system-x86_64")),
            ..Default::default()
        },
        0,
        "build_vm",
        "/nonexistent/qemu-system-x86_64",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kernel_that_does_not_boot_or_too_little_memory_fails_at_kernel() {
    // Not a kernel: qemu refuses it, and its words are in the message.
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("vmlinuz-garbage");
    std::fs::write(&garbage, vec![0x5a; 64 << 10]).unwrap();
    boot_fails(
        sandvisor::vm::VmSettings {
            kernel: Some(garbage),
            modules: Some(PathBuf::from("/nonexistent")),
            ..Default::default()
        },
        0,
        "kernel",
        "the console's last lines",
    )
    .await;
    // A real kernel in 16 MiB: it cannot even unpack its initramfs.
    boot_fails(
        sandvisor::vm::VmSettings::default(),
        16 << 20,
        "kernel",
        "the console's last lines",
    )
    .await;
}

#[tokio::test]
async fn bad_vm_configs_are_refused_before_anything_starts() {
    let (home, rt) = common::runtime().await;
    for (config, field) in [
        (
            SandboxConfig::new("v", "true").with_backend(Backend::MicroVm {
                vcpus: 0,
                memory: 0,
            }),
            "backend.vcpus",
        ),
        (
            SandboxConfig::new("v", "true").with_backend(Backend::MicroVm {
                vcpus: 1,
                memory: 1 << 20,
            }),
            "backend.memory",
        ),
        (
            SandboxConfig {
                network: sandvisor::Network::Host,
                ..SandboxConfig::new("v", "true").with_backend(VM)
            },
            "network",
        ),
        (
            SandboxConfig {
                isolation: sandvisor::Isolation::unconfined(),
                ..SandboxConfig::new("v", "true").with_backend(VM)
            },
            "backend",
        ),
        // qemu never runs as host root (`--userns=host`).
        (
            SandboxConfig {
                isolation: sandvisor::Isolation {
                    user: false,
                    ..Default::default()
                },
                ..SandboxConfig::new("v", "true").with_backend(VM)
            },
            "backend",
        ),
    ] {
        match rt.create(config).await {
            Err(sandvisor::Error::InvalidConfig { field: got, .. }) => assert_eq!(got, field),
            other => panic!("{field}: expected InvalidConfig, got {other:?}"),
        }
    }
    assert!(!home.path().join("sandboxes/v").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_vms_at_once_run_an_exec_each_and_stop_cleanly() {
    let (home, rt) = common::runtime().await;
    let started = futures::future::join_all((0..20).map(|i| {
        let rt = rt.clone();
        async move {
            rt.create(
                SandboxConfig::new(format!("many{i}"), "sleep")
                    .args(["600"])
                    .with_backend(VM),
            )
            .await
        }
    }))
    .await;
    let sandboxes: Vec<_> = started
        .into_iter()
        .map(|s| s.expect("every VM reaches Running"))
        .collect();
    assert_eq!(qemus_of(home.path()).len(), 20);
    let outs = futures::future::join_all(
        sandboxes
            .iter()
            .enumerate()
            .map(|(i, s)| async move { run_sh(s, &format!("echo exec-{i}")).await }),
    )
    .await;
    for (i, (out, code)) in outs.into_iter().enumerate() {
        assert_eq!((out.trim(), code), (format!("exec-{i}").as_str(), Some(0)));
    }
    let stopped =
        futures::future::join_all(sandboxes.iter().map(|s| async move { s.stop().await })).await;
    for result in stopped {
        let result = result.unwrap();
        assert_eq!(result.status, SandboxStatus::Stopped);
        assert_eq!(result.signal, Some(libc::SIGTERM));
    }
    common::wait_until("no qemu is left", || qemus_of(home.path()).is_empty());
}

#[test]
fn a_sigkilled_host_leaves_no_qemu_after_reconcile() {
    let mut cli = faults::Cli::new();
    cli.serve(None);
    let out = cli.run(&[
        "run", "-d", "--vm", "--name", "orphan", "--", "sleep", "600",
    ]);
    assert!(out.status.success(), "{}", faults::stderr(&out));
    assert_eq!(qemus_of(cli.home()).len(), 1);
    cli.kill_daemon();
    // The host's end of the SAP socket closed with it: the guest's agent
    // ends everything and powers off.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !qemus_of(cli.home()).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "qemu outlived its host"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(cli.status("orphan"), "Crashed");
    assert!(qemus_of(cli.home()).is_empty());
}

/// Backend-independent behaviour the topic files do not cover: each body
/// runs on both backends.
mod both {
    use super::*;

    on_both!(lifecycle);
    on_both!(blocking cli);

    /// Start, stop with the stop signal (a command that traps it ends with
    /// its own code), start again, kill; the statuses and exit records the
    /// SPEC gives.
    async fn lifecycle(backend: Backend) {
        let (_home, rt) = backends::runtime(backend).await;
        let sandbox = rt
            .create(
                SandboxConfig::new("life", "sh")
                    .args([
                        "-c",
                        "trap 'exit 7' TERM; echo armed; while :; do sleep 0.1; done",
                    ])
                    .with_backend(backend),
            )
            .await
            .unwrap();
        assert_eq!(sandbox.status().await.unwrap(), SandboxStatus::Running);
        // Stop only once the trap is set (a guest's shell starts slowly).
        let mut follow = sandbox
            .log_stream(&LogStreamOptions {
                follow: true,
                ..Default::default()
            })
            .await
            .unwrap();
        while common::text(&common::next_within(&mut follow, 60).await.unwrap().unwrap())
            != "armed\n"
        {}
        let stopped = sandbox.stop().await.unwrap();
        assert_eq!(
            (stopped.status, stopped.exit_code),
            (SandboxStatus::Stopped, Some(7))
        );
        let sandbox = rt.start("life").await.unwrap();
        assert_eq!(sandbox.status().await.unwrap(), SandboxStatus::Running);
        sandbox.kill().await.unwrap();
        let ended = sandbox.wait_until_stopped().await.unwrap();
        assert_eq!(ended.signal, Some(libc::SIGKILL));
        let exits = rt
            .create(
                SandboxConfig::new("exits", "sh")
                    .args(["-c", "exit 3"])
                    .with_backend(backend),
            )
            .await
            .unwrap();
        let ended = exits.wait_until_stopped().await.unwrap();
        assert_eq!(
            (ended.status, ended.exit_code),
            (SandboxStatus::Stopped, Some(3))
        );
        assert_eq!(rt.runs("life").await.unwrap().len(), 2);
    }

    /// The CLI: `run` prints the output and exits with the command's code;
    /// `ps` lists the sandbox; `inspect` names the backend.
    fn cli(backend: Backend) {
        let cli = faults::Cli::new();
        backends::prepare_home(backend, cli.home());
        let args = |rest: &[&'static str]| {
            let mut all = vec!["run", "--name", "c"];
            all.extend_from_slice(backends::vm_flag(backend));
            all.extend_from_slice(rest);
            all
        };
        let out = cli.run(&args(&["--", "sh", "-c", "echo hello-cli; exit 4"]));
        assert_eq!(out.status.code(), Some(4), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("hello-cli"));
        let ps = cli.ok(&["ps", "-a"]);
        assert!(ps.contains('c'), "{ps}");
        let inspect: serde_json::Value = serde_json::from_str(&cli.ok(&["inspect", "c"])).unwrap();
        let inspect = &inspect[0];
        let kind = if backend.is_vm() {
            "micro_vm"
        } else {
            "namespaces"
        };
        assert_eq!(inspect["backend"]["kind"], kind, "{inspect}");
        if backend.is_vm() {
            let accel = &inspect["backend"]["accel"];
            assert!(accel == "kvm" || accel == "tcg", "{inspect}");
        }
    }
}
