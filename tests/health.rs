//! Health checks (issue 18, part 2): a command run inside the sandbox on a
//! timer, whose results make it Starting, Healthy or Unhealthy; what
//! `on_unhealthy` does; that checks are neither user sessions nor logged;
//! bad values; the CLI. Real sandboxes, real processes, real SQLite, each
//! test in a temp home of its own.

mod common;

use common::{runs_until, runtime};
use std::time::{Duration, Instant};

use sandvisor::{
    Error, EventEnvelope, ExecConfig, Health, HealthCheck, OnUnhealthy, RunRow, SandboxConfig,
    SandboxEvent, SandboxStatus, Sandvisor, TerminationReason,
};
use serde_json::Value;

#[path = "common/cli.rs"]
mod cli_home;
use cli_home::Cli;

/// Bounds every wait of these tests: a hang fails instead of blocking.
const WAIT: Duration = Duration::from_secs(60);

/// What the checks print: it must reach the run row, never `exec.log`.
const PROBE_OUTPUT: &str = "health-probe-says-hi";

/// A check of `script` every 200 ms.
fn check(script: &str, retries: u32) -> HealthCheck {
    HealthCheck {
        command: vec!["sh".into(), "-c".into(), script.into()],
        interval: Duration::from_millis(200),
        timeout: Duration::from_secs(10),
        retries,
        start_period: Duration::ZERO,
    }
}

fn health_of(run: &RunRow) -> Option<Health> {
    run.health.as_ref().map(|report| report.status)
}

fn exec_log(rt: &Sandvisor, name: &str) -> String {
    let dir = sandvisor::home::log_dir(rt.home(), name).unwrap();
    String::from_utf8_lossy(&std::fs::read(dir.join("exec.log")).unwrap()).into_owned()
}

/// The session ids the events of `name` say started or exited.
fn session_ids(events: &[EventEnvelope]) -> Vec<u64> {
    events
        .iter()
        .filter_map(|envelope| match envelope.event {
            SandboxEvent::SessionStarted { id } | SandboxEvent::SessionExited { id, .. } => {
                Some(id)
            }
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_passing_check_makes_the_sandbox_healthy_without_sessions_or_log_lines() {
    let (_home, rt) = runtime().await;
    let mut events = Box::pin(rt.events());
    let mut config = SandboxConfig::new("fine", "sleep").args(["1000"]);
    config.health = Some(check(&format!("echo {PROBE_OUTPUT}"), 3));
    let sandbox = rt.create(config).await.unwrap();
    // Several checks ran: the last results are kept, with their output.
    let runs = runs_until(&rt, "fine", "healthy after 3 checks", |runs| {
        runs.last()
            .and_then(|run| run.health.as_ref())
            .is_some_and(|report| report.status == Health::Healthy && report.log.len() >= 3)
    })
    .await;
    let report = runs[0].health.clone().unwrap();
    assert_eq!(report.failing_streak, 0);
    for result in &report.log {
        assert_eq!(result.exit_code, Some(0), "{result:?}");
        assert_eq!(result.output, format!("{PROBE_OUTPUT}\n"));
        assert!(!result.timed_out);
    }

    let seen = common::drain_events(&mut events);
    let changes: Vec<_> = seen
        .iter()
        .filter_map(|envelope| match envelope.event {
            SandboxEvent::HealthChanged { from, to } => Some((from, to, envelope.run)),
            _ => None,
        })
        .collect();
    assert_eq!(
        changes,
        [(Health::Starting, Health::Healthy, Some(runs[0].id))]
    );
    // Only the main command is a session; the checks are not.
    assert!(session_ids(&seen).iter().all(|id| *id == 1), "{seen:?}");
    assert!(!exec_log(&rt, "fine").contains(PROBE_OUTPUT));
    // Nor do they hold up a drain.
    let stopped = tokio::time::timeout(WAIT, sandbox.drain(Some(Duration::from_secs(30))))
        .await
        .expect("drain within WAIT")
        .unwrap();
    assert_eq!(stopped.status, SandboxStatus::Stopped);
    let runs = rt.runs("fine").await.unwrap();
    assert_eq!(
        runs[0].termination_reason,
        Some(TerminationReason::DrainRequested)
    );
}

#[tokio::test]
async fn a_check_that_starts_failing_turns_unhealthy_after_retries_and_restarts_it() {
    let (_home, rt) = runtime().await;
    let mut events = Box::pin(rt.events());
    // /tmp is a fresh tmpfs each run: each run creates the file again.
    let mut config = SandboxConfig::shell("sick", "touch /tmp/ok; exec sleep 1000");
    config.health = Some(check(&format!("echo {PROBE_OUTPUT}; test -f /tmp/ok"), 2));
    config.on_unhealthy = OnUnhealthy::Restart;
    // The restart policy is `No`: the health check restarts it anyway.
    let sandbox = rt.create(config).await.unwrap();
    runs_until(&rt, "sick", "healthy", |runs| {
        runs.last().and_then(health_of) == Some(Health::Healthy)
    })
    .await;
    let removed = sandbox
        .exec(ExecConfig::new("rm", ["/tmp/ok"]))
        .await
        .unwrap();
    let removed_id = removed.id();
    assert_eq!(
        tokio::time::timeout(WAIT, removed.wait())
            .await
            .unwrap()
            .unwrap()
            .code,
        Some(0)
    );
    // Unhealthy, the run ends with reason Unhealthy and a new one starts,
    // healthy again.
    let runs = runs_until(&rt, "sick", "a second run, healthy", |runs| {
        runs.len() >= 2 && runs[1].health.as_ref().map(|r| r.status) == Some(Health::Healthy)
    })
    .await;
    let first = &runs[0];
    assert_eq!(first.termination_reason, Some(TerminationReason::Unhealthy));
    let report = first.health.as_ref().unwrap();
    assert_eq!(report.status, Health::Unhealthy);
    assert_eq!(report.failing_streak, 2);
    let failed = report.log.last().unwrap();
    assert_eq!(failed.exit_code, Some(1));
    assert_eq!(failed.output, format!("{PROBE_OUTPUT}\n"));
    assert_eq!(runs[1].restart_count, 1);
    assert_eq!(sandbox.status().await.unwrap(), SandboxStatus::Running);

    let seen = common::drain_events(&mut events);
    let first_run: Vec<_> = seen
        .iter()
        .filter(|envelope| envelope.run == Some(first.id))
        .cloned()
        .collect();
    let changes: Vec<_> = first_run
        .iter()
        .filter_map(|envelope| match envelope.event {
            SandboxEvent::HealthChanged { from, to } => Some((from, to)),
            _ => None,
        })
        .collect();
    assert_eq!(
        changes,
        [
            (Health::Starting, Health::Healthy),
            (Health::Healthy, Health::Unhealthy)
        ]
    );
    assert!(first_run.iter().any(|envelope| matches!(
        envelope.event,
        SandboxEvent::RestartScheduled { attempt: 1, .. }
    )));
    // Sessions: the main command and the `rm`, never a check.
    let mut ids = session_ids(&first_run);
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids, [1, removed_id]);
    assert!(!exec_log(&rt, "sick").contains(PROBE_OUTPUT));
    sandbox.kill().await.unwrap();
}

#[tokio::test]
async fn a_check_past_its_timeout_is_killed_and_on_unhealthy_stop_stops_it() {
    let (_home, rt) = runtime().await;
    let mut config = SandboxConfig::new("slow", "sleep").args(["1000"]);
    config.health = Some(HealthCheck {
        timeout: Duration::from_millis(300),
        ..check("sleep 100", 1)
    });
    config.on_unhealthy = OnUnhealthy::Stop;
    config.restart = "always".parse().unwrap();
    let sandbox = rt.create(config).await.unwrap();
    let started = Instant::now();
    let result = tokio::time::timeout(WAIT, sandbox.wait_until_stopped())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(result.status, SandboxStatus::Stopped);
    assert!(started.elapsed() < Duration::from_secs(50));
    // A stop asked for: `always` does not restart it.
    let runs = rt.runs("slow").await.unwrap();
    assert_eq!(
        runs[0].termination_reason,
        Some(TerminationReason::Unhealthy)
    );
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].restart_end, Some(sandvisor::RestartEnd::Unhealthy));
    let report = runs[0].health.as_ref().unwrap();
    assert_eq!(report.status, Health::Unhealthy);
    assert!(report.log.last().unwrap().timed_out, "{report:?}");
}

#[tokio::test]
async fn bad_health_values_are_invalid_config() {
    let (_home, rt) = runtime().await;
    let base = || {
        let mut config = SandboxConfig::new("bad", "true");
        config.health = Some(check("true", 3));
        config
    };
    let with = |edit: fn(&mut HealthCheck)| {
        let mut config = base();
        if let Some(check) = config.health.as_mut() {
            edit(check);
        }
        config
    };
    let cases = [
        (with(|c| c.command.clear()), "health.command"),
        (with(|c| c.command = vec![String::new()]), "health.command"),
        (with(|c| c.interval = Duration::ZERO), "health.interval"),
        (with(|c| c.timeout = Duration::ZERO), "health.timeout"),
        (with(|c| c.retries = 0), "health.retries"),
    ];
    for (config, want) in cases {
        match rt.create(config).await {
            Err(Error::InvalidConfig { field, .. }) => assert_eq!(field, want),
            other => panic!("{want}: {other:?}"),
        }
    }
    assert!(rt.list().await.unwrap().is_empty());
    // Negative durations do not parse.
    let json = r#"{"name":"bad","command":"true","health":{"command":["true"],"interval":"-1s"}}"#;
    assert!(serde_json::from_str::<SandboxConfig>(json).is_err());
}

#[test]
fn the_cli_health_flags_and_ps() {
    let cli = Cli::new();
    cli.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--health-cmd",
        "test -f /tmp/up && echo up",
        "--health-interval",
        "200ms",
        "--health-retries",
        "1",
        "--on-unhealthy",
        "none",
        "--",
        "sh",
        "-c",
        "touch /tmp/up; exec sleep 1000",
    ]);
    let deadline = Instant::now() + WAIT;
    let line = loop {
        let table = cli.ok(&["ps"]);
        if let Some(line) = table
            .lines()
            .find(|line| line.starts_with("web ") && line.contains("(healthy)"))
        {
            break line.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "ps never showed healthy: {table}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(line.contains("Running (healthy)"), "{line}");
    let listed: Value = serde_json::from_str(&cli.ok(&["ps", "--json"])).unwrap();
    let health = &listed[0]["health"];
    assert_eq!(health["status"], "healthy", "{listed}");
    assert_eq!(
        health["log"].as_array().unwrap().last().unwrap()["output"],
        "up\n"
    );
    let inspected: Value = serde_json::from_str(&cli.ok(&["inspect", "web"])).unwrap();
    let health = &inspected[0]["health"];
    assert_eq!(health["check"]["command"][0], "sh");
    assert_eq!(health["check"]["interval"], "200ms");
    assert_eq!(health["on_unhealthy"], "none");
    assert_eq!(health["state"]["status"], "healthy");

    // With --on-unhealthy none it only shows.
    cli.ok(&["exec", "web", "rm", "/tmp/up"]);
    let deadline = Instant::now() + WAIT;
    loop {
        let table = cli.ok(&["ps"]);
        if table
            .lines()
            .any(|line| line.contains("Running (unhealthy)"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ps never showed unhealthy: {table}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    cli.ok(&["rm", "-f", "web"]);

    for (args, field) in [
        (
            &["--health-cmd", "true", "--health-retries", "0"][..],
            "health.retries",
        ),
        (
            &["--health-cmd", "true", "--health-interval", "0s"][..],
            "health.interval",
        ),
        (
            &["--health-cmd", "true", "--health-timeout", "0s"][..],
            "health.timeout",
        ),
    ] {
        let mut all = vec!["run", "-d", "--name", "nope"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--", "true"]);
        let out = cli.run(&all);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(field), "{args:?}: {stderr}");
        assert!(
            !cli.ok(&["ps", "-a"]).contains("nope"),
            "{args:?}: nothing is created"
        );
    }
    // A health option without a check, or a bad action: usage errors.
    for args in [
        &["--health-interval", "1s"][..],
        &["--health-cmd", "true", "--on-unhealthy", "sometimes"][..],
    ] {
        let mut all = vec!["run", "-d", "--name", "nope"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--", "true"]);
        assert_eq!(cli.run(&all).status.code(), Some(2), "{args:?}");
    }
}
