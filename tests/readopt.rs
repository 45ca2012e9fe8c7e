//! Re-adoption: sandboxes outlive a host process that dies, and the next
//! host takes them over — same run, output resumed exactly where `exec.log`
//! ends. Real `sandvisor serve` processes and an embedding runtime in a
//! helper test process, SIGKILLed; real agents, sockets and SQLite.

mod common;
#[allow(dead_code)]
#[path = "common/faults.rs"]
mod faults;

use std::time::{Duration, Instant};

use faults::{eventually, stderr, Cli};
use sandvisor::{ExecConfig, LogOptions, LogSource, SandboxConfig, SandboxStatus, Sandvisor};

/// Prints 1, 2, 3, … one line every 10 ms.
const COUNTER: &str = "i=0; while :; do i=$((i+1)); echo $i; sleep 0.01; done";

/// The numbers `name` printed, as `exec.log` holds them.
fn numbers(cli: &Cli, name: &str) -> Vec<u64> {
    parse_numbers(name, &cli.ok(&["logs", name]))
}

fn parse_numbers(name: &str, text: &str) -> Vec<u64> {
    text.lines()
        .map(|line| {
            line.parse()
                .unwrap_or_else(|_| panic!("{name}: {line:?} is not a number"))
        })
        .collect()
}

/// A home whose daemon ran `sleep 1000` as `name` and was SIGKILLed; the
/// sandbox's agent pid.
fn left_by_a_killed_daemon(name: &str) -> (Cli, u32) {
    let mut cli = Cli::new();
    cli.serve(None);
    cli.ok(&["run", "-d", "--name", name, "--", "sleep", "1000"]);
    let pid = cli.ps()[0]["pid"].as_u64().unwrap() as u32;
    cli.kill_daemon();
    (cli, pid)
}

/// Every line once, in order: 1, 2, …, n.
fn assert_exact(name: &str, numbers: &[u64]) {
    for (i, n) in numbers.iter().enumerate() {
        assert_eq!(
            *n,
            i as u64 + 1,
            "{name}: line {} is {n} (a line lost or repeated): {:?}",
            i + 1,
            &numbers[i.saturating_sub(3)..(i + 3).min(numbers.len())]
        );
    }
}

#[test]
fn sandboxes_of_a_killed_daemon_are_readopted_by_the_next_with_exact_logs() {
    const COUNT: usize = 20;
    let mut cli = Cli::new();
    cli.serve(None);
    let names: Vec<String> = (0..COUNT).map(|i| format!("count{i}")).collect();
    for out in cli.run_many("count", COUNT, &["sh", "-c", COUNTER]) {
        assert!(out.status.success(), "{}", stderr(&out));
    }
    assert!(
        eventually(Duration::from_secs(60), || names
            .iter()
            .all(|name| numbers(&cli, name).len() >= 10)),
        "the sandboxes did not print"
    );
    let pids: Vec<u64> = cli
        .ps()
        .iter()
        .filter_map(|row| row["pid"].as_u64())
        .collect();
    assert_eq!(pids.len(), COUNT);
    cli.kill_daemon();
    let printed_before: Vec<usize> = names.iter().map(|name| numbers(&cli, name).len()).collect();
    // A CLI call that hosts nothing leaves them to the next host: still
    // Running, their agents alive, keeping what they print.
    for name in &names {
        assert_eq!(cli.status(name), "Running", "{name}");
    }
    for pid in &pids {
        assert!(faults::alive(*pid as u32), "agent {pid} died with its host");
    }
    std::thread::sleep(Duration::from_secs(1));

    cli.serve(None);
    for name in &names {
        assert_eq!(cli.status(name), "Running", "{name}");
        let runtime_log = std::fs::read_to_string(
            cli.home()
                .join("sandboxes")
                .join(name)
                .join("logs/runtime.log"),
        )
        .unwrap();
        assert!(runtime_log.contains("re-adopted"), "{name}: {runtime_log}");
    }
    // What they printed while no host was there arrives, and they go on.
    assert!(
        eventually(Duration::from_secs(60), || names
            .iter()
            .zip(&printed_before)
            .all(|(name, before)| numbers(&cli, name).len() > before + 150)),
        "the re-adopted sandboxes' output does not flow"
    );
    for name in &names {
        cli.ok(&["stop", name]);
        assert_eq!(cli.status(name), "Stopped", "{name}");
    }
    for name in &names {
        let printed = numbers(&cli, name);
        assert_exact(name, &printed);
        // One run from start to stop.
        let all = cli.ok(&["logs", "--source", "system", name]);
        let starts = all
            .lines()
            .filter(|l| *l == "--- sandbox started ---")
            .count();
        assert_eq!(starts, 1, "{name}: {all}");
    }
    for pid in pids {
        assert!(
            !faults::alive(pid as u32),
            "agent {pid} still runs after stop"
        );
    }
}

/// Child half of `an_embedding_runtime_killed_and_reopened_readopts`: opens
/// a runtime (re-adoption on, the default) in the home named by the
/// environment, starts a counting sandbox and an exec session that never
/// ends, says so, and waits to be killed. Ignored unless run by that test.
#[tokio::test]
#[ignore]
async fn readopt_host_child() {
    let Ok(home) = std::env::var("SANDVISOR_READOPT_HOME") else {
        return;
    };
    let rt = Sandvisor::builder()
        .home(home)
        .agent_path(env!("CARGO_BIN_EXE_sandvisor-agent"))
        .open()
        .await
        .unwrap();
    let sandbox = rt
        .create(SandboxConfig::shell("counter", COUNTER))
        .await
        .unwrap();
    let session = sandbox
        .exec(ExecConfig::new("sh", ["-c", "echo session-up; sleep 1000"]))
        .await
        .unwrap();
    println!("SANDBOX-RUNNING {}", session.id());
    std::future::pending::<()>().await;
}

#[tokio::test]
async fn an_embedding_runtime_killed_and_reopened_readopts() {
    let home = tempfile::tempdir().unwrap();
    let (mut child, session) = common::child_test(
        "readopt_host_child",
        "SANDVISOR_READOPT_HOME",
        home.path(),
        "SANDBOX-RUNNING ",
    )
    .await;
    let session: u64 = session.parse().unwrap();
    let stdout_of = |entries: &[sandvisor::LogEntry], id: u64| {
        entries
            .iter()
            .filter(|e| e.session_id == Some(id) && e.source == LogSource::Stdout)
            .map(|e| String::from_utf8_lossy(&e.data).into_owned())
            .collect::<String>()
    };
    let logs = sandvisor::logs::Logs::at(home.path());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let entries = logs
            .read_logs("counter", &LogOptions::default())
            .await
            .unwrap();
        if stdout_of(&entries, 1).lines().count() >= 10
            && stdout_of(&entries, session) == "session-up\n"
        {
            break;
        }
        assert!(Instant::now() < deadline, "the sandbox did not print");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The host dies without a word; the sandbox goes on printing.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    child.wait().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let rt = Sandvisor::builder()
        .home(home.path())
        .agent_path(env!("CARGO_BIN_EXE_sandvisor-agent"))
        .open()
        .await
        .unwrap();
    let sandbox = rt
        .connect("counter")
        .await
        .unwrap()
        .expect("the sandbox was not re-adopted");
    assert_eq!(sandbox.status().await.unwrap(), SandboxStatus::Running);
    let runs = rt.runs("counter").await.unwrap();
    assert_eq!(runs.len(), 1, "{runs:#?}");
    assert!(runs[0].terminated_at.is_none());
    // New sessions are numbered after the dead host's, and run.
    let mut exec = sandbox
        .exec(ExecConfig::new("echo", ["after"]))
        .await
        .unwrap();
    assert!(exec.id() > session, "{} after {session}", exec.id());
    let mut out = Vec::new();
    while let Some(chunk) = futures::StreamExt::next(&mut exec).await {
        out.extend_from_slice(&chunk.data);
    }
    assert_eq!(out, b"after\n");
    let before = stdout_of(&sandbox.logs(&LogOptions::default()).await.unwrap(), 1)
        .lines()
        .count();
    let deadline = Instant::now() + Duration::from_secs(30);
    while stdout_of(&sandbox.logs(&LogOptions::default()).await.unwrap(), 1)
        .lines()
        .count()
        < before + 50
    {
        assert!(
            Instant::now() < deadline,
            "the re-adopted sandbox's output does not flow"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let end = sandbox.stop().await.unwrap();
    assert_eq!(end.status, SandboxStatus::Stopped, "{end:?}");
    let entries = sandbox.logs(&LogOptions::default()).await.unwrap();
    let main = stdout_of(&entries, 1);
    assert_exact("counter", &parse_numbers("counter", &main));
    // The dead host's session was ended with it; its output stayed logged once.
    assert_eq!(stdout_of(&entries, session), "session-up\n");
    let runs = rt.runs("counter").await.unwrap();
    assert_eq!(runs.len(), 1, "{runs:#?}");
    assert_eq!(runs[0].status, SandboxStatus::Stopped);
}

/// A runtime that does not re-adopt (a CLI call) leaves a dead host's live
/// sandbox alone; its agent gone meanwhile, the next open settles the run
/// as Crashed, as for any sandbox whose processes are gone.
#[test]
fn a_readoptable_sandbox_whose_agent_died_is_settled_as_before() {
    let (mut cli, pid) = left_by_a_killed_daemon("gone");
    assert_eq!(cli.status("gone"), "Running");
    faults::signal(pid, nix::sys::signal::Signal::SIGKILL);
    assert!(
        eventually(Duration::from_secs(10), || !faults::alive(pid)),
        "the agent did not die"
    );
    assert_eq!(cli.status("gone"), "Crashed");
    cli.serve(None);
    assert_eq!(cli.status("gone"), "Crashed");
    // Started again, it runs as a new run.
    cli.ok(&["start", "gone"]);
    assert_eq!(cli.status("gone"), "Running");
    cli.ok(&["rm", "-f", "gone"]);
}

/// An agent whose host died after its `Ready` but before the run's row was
/// written waits for a host no row points to: the next reconciliation
/// tells it to end its sandbox.
#[test]
fn an_agent_whose_run_was_never_recorded_is_ended() {
    let (cli, pid) = left_by_a_killed_daemon("unrecorded");
    // As if the host had died before it recorded the run.
    let db = cli.home().join("sandvisor.db");
    let forget = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute('DELETE FROM run'); c.commit()",
        ])
        .arg(&db)
        .status()
        .unwrap();
    assert!(forget.success());
    assert!(faults::alive(pid), "the agent died with its host");
    assert_eq!(cli.status("unrecorded"), "Crashed");
    assert!(
        eventually(Duration::from_secs(15), || !faults::alive(pid)),
        "the unrecorded sandbox still runs"
    );
}
