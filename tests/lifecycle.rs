//! Sandbox lifecycle with real processes, real namespaces, real signals and
//! real SQLite in a temp home. What the SPEC promises whatever the backend
//! runs on both backends (`on_both!`); the rest looks at host processes,
//! limits, freezing or many sandboxes, and runs on namespaces only.

mod common;

use common::backends;
use common::runtime;
use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt;
use sandvisor::{
    Backend, Error, LogOptions, LogSource, LogStreamOptions, SandboxConfig, SandboxStatus,
    Sandvisor, TerminationReason,
};

fn texts(entries: &[sandvisor::LogEntry]) -> Vec<String> {
    entries
        .iter()
        .map(|e| String::from_utf8_lossy(&e.data).into_owned())
        .collect()
}

/// The pid namespace of host pid `pid` and the processes in it, captured
/// while it lives, so that survivors can be looked for after its PID 1 is gone.
fn namespace_of(pid: u32) -> (std::path::PathBuf, Vec<u32>) {
    let ns = std::fs::read_link(format!("/proc/{pid}/ns/pid")).unwrap();
    let pids = processes_in_namespace_of(pid)
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    (ns, pids)
}

/// Which of `pids` still run in namespace `ns`.
fn survivors((ns, pids): &(std::path::PathBuf, Vec<u32>)) -> Vec<u32> {
    pids.iter()
        .copied()
        .filter(|p| {
            std::fs::read_link(format!("/proc/{p}/ns/pid"))
                .ok()
                .as_ref()
                == Some(ns)
        })
        .collect()
}

/// Pids of every process in the pid namespace whose PID 1 has host pid `init`.
fn processes_in_namespace_of(init: u32) -> Vec<(u32, char)> {
    let Ok(ns) = std::fs::read_link(format!("/proc/{init}/ns/pid")) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if std::fs::read_link(format!("/proc/{pid}/ns/pid"))
            .ok()
            .as_ref()
            == Some(&ns)
        {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat
                .rfind(')')
                .and_then(|i| stat[i + 2..].chars().next())
                .unwrap_or('?');
            found.push((pid, state));
        }
    }
    found
}

on_both!(output_lands_in_exec_log_and_exit_code_in_the_run_row);
async fn output_lands_in_exec_log_and_exit_code_in_the_run_row(backend: Backend) {
    let (_home, rt) = backends::runtime(backend).await;
    let config = SandboxConfig::shell("out", "echo to-stdout; echo to-stderr >&2; exit 7")
        .with_backend(backend);
    let sandbox = rt.create(config).await.unwrap();
    let result = sandbox.wait_until_stopped().await.unwrap();
    assert_eq!(result.status, SandboxStatus::Stopped);
    assert_eq!(result.exit_code, Some(7));
    assert_eq!(result.signal, None);

    let entries = sandbox.logs(&LogOptions::default()).await.unwrap();
    let mut got: Vec<_> = entries
        .iter()
        .map(|e| {
            (
                e.source,
                String::from_utf8_lossy(&e.data).into_owned(),
                e.session_id,
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            (LogSource::Stdout, "to-stdout\n".to_string(), Some(1)),
            (LogSource::Stderr, "to-stderr\n".to_string(), Some(1)),
        ]
    );
    let system = sandbox
        .logs(&LogOptions {
            sources: vec![LogSource::System],
            ..LogOptions::default()
        })
        .await
        .unwrap();
    let markers = texts(&system);
    assert!(
        markers.contains(&"--- sandbox started ---".to_string()),
        "{markers:?}"
    );
    assert!(
        markers.contains(&"--- sandbox stopped (exit 7) ---".to_string()),
        "{markers:?}"
    );

    let runs = rt.runs("out").await.unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].exit_code, Some(7));
    assert_eq!(runs[0].termination_reason, Some(TerminationReason::Failed));
    assert!(runs[0].terminated_at.is_some());
    assert_eq!(
        rt.get("out").await.unwrap().status_snapshot(),
        SandboxStatus::Stopped
    );
}

on_both!(live_output_is_followed_by_log_stream);
async fn live_output_is_followed_by_log_stream(backend: Backend) {
    let (_home, rt) = backends::runtime(backend).await;
    let config = SandboxConfig::shell("live", "for i in 1 2 3; do echo line-$i; sleep 0.2; done")
        .with_backend(backend);
    let sandbox = rt.create(config).await.unwrap();
    let opts = LogStreamOptions {
        follow: true,
        ..LogStreamOptions::default()
    };
    let mut stream = sandbox.log_stream(&opts).await.unwrap();
    for i in 1..=3 {
        // A hang guard: a guest under TCG starts its first shell slowly.
        let entry = tokio::time::timeout(Duration::from_secs(60), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&entry.data), format!("line-{i}\n"));
    }
    assert_eq!(
        sandbox.wait_until_stopped().await.unwrap().exit_code,
        Some(0)
    );
}

on_both!(stop_ends_sleep_by_sigterm_inside_the_timeout);
async fn stop_ends_sleep_by_sigterm_inside_the_timeout(backend: Backend) {
    let (_home, rt) = backends::runtime(backend).await;
    let sandbox = rt
        .create(
            SandboxConfig::new("sleeper", "sleep")
                .args(["1000"])
                .with_backend(backend),
        )
        .await
        .unwrap();
    assert_eq!(sandbox.status().await.unwrap(), SandboxStatus::Running);
    let started = std::time::Instant::now();
    let result = sandbox
        .stop_with_timeout(Duration::from_secs(30))
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(30), "hang guard");
    assert_eq!(result.signal, Some(libc::SIGTERM));
    let runs = rt.runs("sleeper").await.unwrap();
    assert_eq!(
        runs[0].termination_reason,
        Some(TerminationReason::ShutdownRequested)
    );
    assert_eq!(runs[0].exit_signal, Some(libc::SIGTERM));
    // Stopping a stopped sandbox is fine.
    assert!(rt
        .get("sleeper")
        .await
        .unwrap()
        .stop()
        .await
        .unwrap()
        .is_some());
}

on_both!(stop_escalates_to_sigkill_and_leaves_no_process);
async fn stop_escalates_to_sigkill_and_leaves_no_process(backend: Backend) {
    let (_home, rt) = backends::runtime(backend).await;
    let script = "trap '' TERM; for i in 1 2 3; do (trap '' TERM; sleep 1000) & done; echo ready; while :; do sleep 1; done";
    let sandbox = rt
        .create(SandboxConfig::shell("stubborn", script).with_backend(backend))
        .await
        .unwrap();
    let opts = LogStreamOptions {
        follow: true,
        ..LogStreamOptions::default()
    };
    let mut stream = sandbox.log_stream(&opts).await.unwrap();
    // A hang guard: a guest under TCG starts its first shell slowly.
    let ready = tokio::time::timeout(Duration::from_secs(60), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&ready.data), "ready\n");
    // The host's processes of the run: in a microVM the shells are the
    // guest's, and the guest lives in qemu.
    let init = rt.runs("stubborn").await.unwrap()[0].pid;
    let tree = namespace_of(init);
    if backend.is_vm() {
        assert!(tree.1.len() >= 3, "launcher, qemu, virtiofsd: {tree:?}");
    } else {
        assert!(tree.1.len() >= 5, "agent, shell, three subshells");
    }

    let result = sandbox
        .stop_with_timeout(Duration::from_millis(500))
        .await
        .unwrap();
    assert_eq!(result.signal, Some(libc::SIGKILL));
    let runs = rt.runs("stubborn").await.unwrap();
    assert_eq!(runs[0].termination_reason, Some(TerminationReason::Killed));
    assert_eq!(runs[0].exit_signal, Some(9));
    assert!(
        survivors(&tree).is_empty(),
        "processes of the sandbox survived: {:?}",
        survivors(&tree)
    );
}

on_both!(kill_and_zero_timeout_stop_kill_at_once);
async fn kill_and_zero_timeout_stop_kill_at_once(backend: Backend) {
    let (_home, rt) = backends::runtime(backend).await;
    let sandbox = rt
        .create(SandboxConfig::shell("k1", "trap '' TERM; sleep 1000").with_backend(backend))
        .await
        .unwrap();
    let result = sandbox.kill().await.unwrap();
    assert_eq!(result.signal, Some(9));
    let sandbox = rt
        .create(SandboxConfig::shell("k2", "trap '' TERM; sleep 1000").with_backend(backend))
        .await
        .unwrap();
    let result = sandbox.stop_with_timeout(Duration::ZERO).await.unwrap();
    assert_eq!(result.signal, Some(9));
    assert_eq!(
        rt.runs("k2").await.unwrap()[0].termination_reason,
        Some(TerminationReason::Killed)
    );
}

on_both!(the_sandbox_sees_only_its_processes_and_lo);
async fn the_sandbox_sees_only_its_processes_and_lo(backend: Backend) {
    let (_home, rt) = backends::runtime(backend).await;
    let script =
        "sleep 5 & ps -e -o pid= -o comm=; echo NET; ls /sys/class/net; echo END; hostname";
    let sandbox = rt
        .create(SandboxConfig::shell("inside", script).with_backend(backend))
        .await
        .unwrap();
    sandbox.wait_until_stopped().await.unwrap();
    let out = texts(&sandbox.logs(&LogOptions::default()).await.unwrap()).concat();
    let pids: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|t| t.parse::<u32>().is_ok())
        .collect();
    // The agent is PID 1; a guest's agent is forked from its `/init` (the
    // agent binary under that name) and keeps that name.
    let agent = if backend.is_vm() {
        "1 init"
    } else {
        "1 sandvisor-agent"
    };
    assert!(out.lines().any(|l| l.trim() == agent), "{out}");
    assert!(pids.len() <= 4, "only the agent, sh, sleep and ps: {out}");
    assert!(pids.iter().all(|p| p.parse::<u32>().unwrap() < 10), "{out}");
    let ifaces: Vec<&str> = out
        .lines()
        .skip_while(|l| *l != "NET")
        .skip(1)
        .take_while(|l| *l != "END")
        .collect();
    assert_eq!(ifaces, ["lo"], "{out}");
    assert!(
        out.lines().any(|l| l.trim() == "inside"),
        "hostname is the sandbox name: {out}"
    );
}

// Namespaces only: it looks for zombies in the sandbox's pid namespace from
// the host, where a guest's processes are not.
#[tokio::test]
async fn the_agent_reaps_a_hundred_orphans() {
    let (_home, rt) = runtime().await;
    let script = "for i in $(seq 1 100); do (sleep 0.2 &) ; done; sleep 1.5; echo done";
    let sandbox = rt
        .create(SandboxConfig::shell("orphans", script))
        .await
        .unwrap();
    let init = rt.runs("orphans").await.unwrap()[0].pid;
    // Mid-run, after the orphans exited, none may linger as a zombie.
    tokio::time::sleep(Duration::from_millis(900)).await;
    let procs = processes_in_namespace_of(init);
    assert!(!procs.is_empty(), "sandbox should still run");
    assert!(
        procs.iter().all(|&(_, state)| state != 'Z'),
        "zombies: {procs:?}"
    );
    assert_eq!(
        sandbox.wait_until_stopped().await.unwrap().exit_code,
        Some(0)
    );
}

on_both!(remove_refuses_a_running_sandbox_then_deletes_everything);
async fn remove_refuses_a_running_sandbox_then_deletes_everything(backend: Backend) {
    let (home, rt) = backends::runtime(backend).await;
    let sandbox = rt
        .create(
            SandboxConfig::new("rm-me", "sleep")
                .args(["1000"])
                .with_backend(backend),
        )
        .await
        .unwrap();
    let err = rt.remove("rm-me").await.unwrap_err();
    assert!(
        matches!(err, Error::SandboxStillRunning(ref n) if n == "rm-me"),
        "{err:?}"
    );
    sandbox
        .stop_with_timeout(Duration::from_secs(5))
        .await
        .unwrap();
    let dir = home.path().join("sandboxes/rm-me");
    assert!(dir.join("logs/exec.log").exists());
    rt.remove("rm-me").await.unwrap();
    assert!(!dir.exists());
    assert!(matches!(
        rt.get("rm-me").await.unwrap_err(),
        Error::SandboxNotFound(_)
    ));
    assert!(rt.runs("rm-me").await.unwrap().is_empty());
}

on_both!(bad_names_configs_and_missing_commands_leave_nothing);
async fn bad_names_configs_and_missing_commands_leave_nothing(backend: Backend) {
    let (home, rt) = backends::runtime(backend).await;
    let err = rt
        .create(SandboxConfig::new("../x", "true").with_backend(backend))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidName(_)), "{err:?}");
    let err = rt
        .create(SandboxConfig::new("nocmd", "definitely-not-a-command").with_backend(backend))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::CommandNotFound { ref command } if command == "definitely-not-a-command"),
        "{err:?}"
    );
    let mut config = SandboxConfig::new("badkeep", "true").with_backend(backend);
    config.log.keep = 0;
    let err = rt.create(config).await.unwrap_err();
    assert!(
        matches!(err, Error::InvalidConfig { ref field, .. } if field == "log.keep"),
        "{err:?}"
    );
    let mut config = SandboxConfig::new("badcwd", "true").with_backend(backend);
    config.working_dir = Some("relative".into());
    assert!(matches!(
        rt.create(config).await.unwrap_err(),
        Error::InvalidConfig { .. }
    ));
    assert!(rt.list().await.unwrap().is_empty());
    assert!(
        !home.path().join("sandboxes").exists()
            || std::fs::read_dir(home.path().join("sandboxes"))
                .unwrap()
                .next()
                .is_none()
    );
    // A duplicate name is refused too.
    rt.create(SandboxConfig::new("dup", "true").with_backend(backend))
        .await
        .unwrap()
        .wait_until_stopped()
        .await
        .unwrap();
    assert!(matches!(
        rt.create(SandboxConfig::new("dup", "true").with_backend(backend))
            .await
            .unwrap_err(),
        Error::SandboxExists(_)
    ));
}

on_both!(a_boot_failure_writes_boot_error_json_and_a_good_start_removes_it);
async fn a_boot_failure_writes_boot_error_json_and_a_good_start_removes_it(backend: Backend) {
    let (home, rt) = backends::runtime(backend).await;
    let mut config = SandboxConfig::new("boot", "sh")
        .args(["-c", "echo ok"])
        .with_backend(backend);
    config.working_dir = Some("/no/such/dir".into());
    let err = rt.create(config).await.unwrap_err();
    let Error::BootFailed { stage, errno, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(stage, "config");
    assert_eq!(*errno, libc::ENOENT);
    let path = home.path().join("sandboxes/boot/logs/boot-error.json");
    let record: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(record["stage"], "config");
    assert_eq!(record["errno"], libc::ENOENT);
    assert!(record["t"].as_str().unwrap().ends_with('Z'));
    assert!(record["message"].as_str().unwrap().contains("sh"));
    assert_eq!(
        rt.get("boot").await.unwrap().status_snapshot(),
        SandboxStatus::Stopped
    );
}

// Namespaces only: a stress test (20000 lines under twenty tap kills).
#[tokio::test]
async fn killing_the_relay_tap_twenty_times_loses_and_repeats_nothing() {
    use sandvisor::engine::log::tap::RelayTapMsg;
    let (_home, rt) = runtime().await;
    let script = "i=0; while [ $i -lt 20000 ]; do echo n-$i; i=$((i+1)); [ $((i % 400)) -eq 0 ] && sleep 0.1; done; true";
    let sandbox = rt
        .create(SandboxConfig::shell("taps", script))
        .await
        .unwrap();
    let mut kills = 0;
    while kills < 20 {
        let tap = sandbox
            .supervisor()
            .get_cell()
            .get_children()
            .into_iter()
            .find(|c| c.is_message_type_of::<RelayTapMsg>() == Some(true));
        match tap {
            Some(tap) => {
                if kills % 2 == 0 {
                    tap.kill();
                } else {
                    tap.stop(None);
                }
                kills += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            None => break,
        }
    }
    assert!(
        kills >= 10,
        "the run ended before the taps could be killed ({kills} kills)"
    );
    assert_eq!(
        sandbox.wait_until_stopped().await.unwrap().exit_code,
        Some(0)
    );
    let all = texts(&sandbox.logs(&LogOptions::default()).await.unwrap()).concat();
    let numbers: Vec<u32> = all
        .lines()
        .map(|l| l.strip_prefix("n-").unwrap().parse().unwrap())
        .collect();
    assert_eq!(numbers, (0..20000).collect::<Vec<_>>());
    let runtime_log =
        std::fs::read_to_string(rt.logs().log_dir_for("taps").unwrap().join("runtime.log"))
            .unwrap();
    assert!(
        runtime_log.matches("relay tap ended").count() >= kills.min(20),
        "{runtime_log}"
    );
}

// Namespaces only: a stress test (`tests/microvm.rs` runs twenty VMs at once).
#[tokio::test]
async fn two_hundred_sandboxes_at_once_each_print_a_thousand_lines() {
    let (_home, rt) = runtime().await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let rt = rt.clone();
        tasks.push(tokio::spawn(async move {
            let name = format!("many-{i}");
            let script = "i=0; while [ $i -lt 1000 ]; do echo $i; i=$((i+1)); done";
            let sandbox = rt
                .create(SandboxConfig::shell(&name, script))
                .await
                .unwrap();
            let result = sandbox.wait_until_stopped().await.unwrap();
            (name, result, sandbox)
        }));
    }
    let mut inits = HashSet::new();
    for task in tasks {
        let (name, result, sandbox) = task.await.unwrap();
        assert_eq!(result.exit_code, Some(0), "{name}");
        let all = texts(&sandbox.logs(&LogOptions::default()).await.unwrap()).concat();
        let numbers: Vec<u32> = all.lines().map(|l| l.parse().unwrap()).collect();
        assert_eq!(numbers, (0..1000).collect::<Vec<_>>(), "{name}");
        let runs = rt.runs(&name).await.unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].exit_code, Some(0));
        inits.insert(runs[0].pid);
    }
    assert_eq!(inits.len(), 200);
    // A run ends only once its PID 1 (and with it the pid namespace) is gone.
    for init in inits {
        let cmdline = std::fs::read(format!("/proc/{init}/cmdline")).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&cmdline).contains("sandvisor-agent"),
            "PID 1 of a finished sandbox still runs: host pid {init}"
        );
    }
}

/// Child half of `a_crashed_host_is_reconciled_on_open`: opens a runtime in
/// the home named by the environment, starts a sandbox, says so, and waits to
/// be killed. Ignored unless run by that test.
#[tokio::test]
#[ignore]
async fn crash_host_child() {
    let Ok(home) = std::env::var("SANDVISOR_CRASH_HOME") else {
        return;
    };
    // Its sandboxes die with it (the re-adoption tests cover the default).
    let rt = Sandvisor::builder()
        .home(home)
        .agent_path(env!("CARGO_BIN_EXE_sandvisor-agent"))
        .readopt(false)
        .open()
        .await
        .unwrap();
    rt.create(SandboxConfig::new("orphan", "sleep").args(["1000"]))
        .await
        .unwrap();
    println!("SANDBOX-RUNNING");
    std::future::pending::<()>().await;
}

// Namespaces only: it follows the orphan's processes on the host
// (`tests/microvm.rs` has a VM's crash and reconcile).
#[tokio::test]
async fn a_crashed_host_is_reconciled_on_open() {
    let home = tempfile::tempdir().unwrap();
    let (mut child, _) = common::child_test(
        "crash_host_child",
        "SANDVISOR_CRASH_HOME",
        home.path(),
        "SANDBOX-RUNNING",
    )
    .await;
    let rt = Sandvisor::builder().home(home.path()).open().await.unwrap();
    let init = rt.runs("orphan").await.unwrap()[0].pid;
    let tree = namespace_of(init);
    assert!(!tree.1.is_empty());
    drop(rt);

    // The host dies without a word.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    child.wait().unwrap();

    let rt = Sandvisor::builder().home(home.path()).open().await.unwrap();
    let handle = rt.get("orphan").await.unwrap();
    assert!(
        matches!(
            handle.status_snapshot(),
            SandboxStatus::Crashed | SandboxStatus::Stopped
        ),
        "{:?}",
        handle.status_snapshot()
    );
    let run = &rt.runs("orphan").await.unwrap()[0];
    assert!(run.terminated_at.is_some());
    assert_eq!(
        run.termination_reason,
        Some(TerminationReason::InternalError)
    );
    // Nothing of the orphaned sandbox survives (its agent also ends when its host's socket closes).
    for _ in 0..100 {
        if survivors(&tree).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        survivors(&tree).is_empty(),
        "the orphaned sandbox still runs"
    );
}

// Namespaces only: a VM's cgroup holds qemu and its guest RAM, so its
// memory limit is at least guest RAM + 256 MiB.
#[tokio::test]
async fn memory_and_process_limits_are_enforced() {
    let (_home, rt) = runtime().await;
    // A shell that builds a 64 MB string in a 16 MiB sandbox is OOM-killed.
    let mut config = SandboxConfig::shell(
        "mem",
        "x=$(head -c 64000000 /dev/zero | tr '\\0' a); echo ${#x}",
    );
    config.memory = sandvisor::Limit::Value(16 << 20);
    let result = rt
        .create(config)
        .await
        .unwrap()
        .wait_until_stopped()
        .await
        .unwrap();
    assert!(
        result.exit_code != Some(0) || result.signal.is_some(),
        "{result:?}"
    );
    let out = texts(
        &rt.logs()
            .read_logs("mem", &LogOptions::default())
            .await
            .unwrap(),
    )
    .concat();
    assert!(!out.contains("64000000"), "the allocation succeeded: {out}");

    // With at most 8 processes, the ninth fork fails.
    let mut config = SandboxConfig::shell(
        "pids",
        "for i in $(seq 1 20); do sleep 2 & done; wait; echo finished",
    );
    config.pids = sandvisor::Limit::Value(8);
    let sandbox = rt.create(config).await.unwrap();
    sandbox.wait_until_stopped().await.unwrap();
    let out = texts(&sandbox.logs(&LogOptions::default()).await.unwrap()).concat();
    assert!(
        out.to_lowercase().contains("fork"),
        "no fork failure reported: {out}"
    );

    // Without limits the same commands succeed.
    let config = SandboxConfig::shell(
        "free",
        "x=$(head -c 64000000 /dev/zero | tr '\\0' a); echo ${#x}",
    );
    let result = rt
        .create(config)
        .await
        .unwrap()
        .wait_until_stopped()
        .await
        .unwrap();
    assert_eq!(result.exit_code, Some(0));
    let out = texts(
        &rt.logs()
            .read_logs("free", &LogOptions::default())
            .await
            .unwrap(),
    )
    .concat();
    assert_eq!(out.trim(), "64000000");
}

on_both!(a_second_runtime_on_the_same_home_leaves_live_sandboxes_alone);
async fn a_second_runtime_on_the_same_home_leaves_live_sandboxes_alone(backend: Backend) {
    let (home, rt) = backends::runtime(backend).await;
    let sandbox = rt
        .create(
            SandboxConfig::new("shared", "sleep")
                .args(["1000"])
                .with_backend(backend),
        )
        .await
        .unwrap();
    let other = Sandvisor::builder()
        .home(home.path())
        .agent_path(env!("CARGO_BIN_EXE_sandvisor-agent"))
        .open()
        .await
        .unwrap();
    assert_eq!(
        other.get("shared").await.unwrap().status_snapshot(),
        SandboxStatus::Running
    );
    assert_eq!(sandbox.status().await.unwrap(), SandboxStatus::Running);
    // The other runtime does not host it, and says so.
    let err = other.get("shared").await.unwrap().stop().await.unwrap_err();
    assert!(matches!(err, Error::SandboxNotHosted(_)), "{err:?}");
    let result = sandbox
        .stop_with_timeout(Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(result.signal, Some(libc::SIGTERM));
}

on_both!(restart_and_remove_right_after_a_stop);
async fn restart_and_remove_right_after_a_stop(backend: Backend) {
    let (_home, rt) = backends::runtime(backend).await;
    let name = "n".repeat(100);
    let sandbox = rt
        .create(
            SandboxConfig::new(&name, "sleep")
                .args(["1000"])
                .with_backend(backend),
        )
        .await
        .unwrap();
    sandbox
        .stop_with_timeout(Duration::from_secs(5))
        .await
        .unwrap();
    // Started again at once: a new run, not the old supervisor.
    let again = rt.start(&name).await.unwrap();
    assert_eq!(again.status().await.unwrap(), SandboxStatus::Running);
    assert_eq!(rt.runs(&name).await.unwrap().len(), 2);
    again.kill().await.unwrap();
    rt.remove(&name).await.unwrap();
}

// Namespaces only: its timing (output within 300 ms of the start) is a
// namespace sandbox's; a VM's pause freezes all of qemu, guest and all.
#[tokio::test]
async fn pause_freezes_the_tree_and_resume_and_stop_work() {
    let (_home, rt) = runtime().await;
    let script = "i=0; while :; do echo $i; i=$((i+1)); sleep 0.05; done";
    let sandbox = rt
        .create(SandboxConfig::shell("freeze", script))
        .await
        .unwrap();
    let count = |sandbox: sandvisor::Sandbox| async move {
        sandbox.logs(&LogOptions::default()).await.unwrap().len()
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    sandbox.pause().await.unwrap();
    assert_eq!(sandbox.status().await.unwrap(), SandboxStatus::Paused);
    assert_eq!(
        rt.get("freeze").await.unwrap().status_snapshot(),
        SandboxStatus::Paused
    );
    // Let what was in flight land, then nothing may advance.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let frozen = count(sandbox.clone()).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        count(sandbox.clone()).await,
        frozen,
        "output advanced while paused"
    );
    sandbox.resume().await.unwrap();
    assert_eq!(sandbox.status().await.unwrap(), SandboxStatus::Running);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        count(sandbox.clone()).await > frozen,
        "output did not resume"
    );
    // Resuming a running sandbox is fine; stop works while paused.
    sandbox.resume().await.unwrap();
    sandbox.pause().await.unwrap();
    let result = sandbox
        .stop_with_timeout(Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(result.signal, Some(libc::SIGTERM));
    assert!(matches!(
        sandbox.pause().await.unwrap_err(),
        Error::SandboxNotRunning(_)
    ));
}

#[tokio::test]
async fn runtimes_opening_a_new_home_at_once_all_open() {
    // Two connections switching a new database to WAL at once: SQLite tells
    // one "database is locked" without waiting, unless opening is serialized.
    for _ in 0..20 {
        let home = tempfile::tempdir().unwrap();
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(6));
        let opens: Vec<_> = (0..6)
            .map(|_| {
                let path = home.path().to_path_buf();
                let barrier = barrier.clone();
                tokio::spawn(async move {
                    barrier.wait().await;
                    Sandvisor::builder()
                        .home(path)
                        .agent_path(env!("CARGO_BIN_EXE_sandvisor-agent"))
                        .open()
                        .await
                        .map(|_| ())
                })
            })
            .collect();
        for open in opens {
            open.await.unwrap().unwrap();
        }
    }
}
