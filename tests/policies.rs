//! Supervision users configure (issue 18): restart policies with backoff,
//! idle timeouts and max lifetimes, exec deadlines, durations as humantime
//! strings. Real processes, real signals, real SQLite in a temp home.

mod common;

use common::{runs_until, runtime};
use std::time::Duration;

use sandvisor::{
    Error, ExecConfig, Restart, RestartBackoff, RestartEnd, SandboxConfig, SandboxEvent,
    SandboxStatus, Sandvisor, TerminationReason,
};

/// Bounds every wait of these tests: a hang fails instead of blocking.
const WAIT: Duration = Duration::from_secs(60);

/// `future`'s value; fails the test if it takes longer than [`WAIT`] or errs.
async fn within<T, E: std::fmt::Debug>(
    future: impl std::future::Future<Output = Result<T, E>>,
) -> T {
    tokio::time::timeout(WAIT, future)
        .await
        .expect("took longer than WAIT")
        .expect("failed")
}

#[tokio::test]
async fn on_failure_5_runs_six_times_with_growing_delays_then_stays_stopped() {
    let (_home, rt) = runtime().await;
    let mut events = Box::pin(rt.events());
    let mut config = SandboxConfig::shell("flaky", "exit 1");
    config.restart = "on-failure:5".parse().unwrap();
    let sandbox = rt.create(config).await.unwrap();
    let result = within(sandbox.wait_until_stopped()).await;
    assert_eq!(result.status, SandboxStatus::Stopped);
    assert_eq!(result.exit_code, Some(1));

    let runs = rt.runs("flaky").await.unwrap();
    assert_eq!(runs.len(), 6, "{runs:?}");
    for (i, run) in runs.iter().enumerate() {
        assert_eq!(run.restart_count, i as u32);
        assert_eq!(run.exit_code, Some(1));
        assert_eq!(run.termination_reason, Some(TerminationReason::Failed));
    }
    // Why restarting ended is on the last run only.
    assert!(runs[..5].iter().all(|run| run.restart_end.is_none()));
    assert_eq!(runs[5].restart_end, Some(RestartEnd::RetriesExhausted));
    // Growing delays, loosely from the rows (the first gap waited 100 ms,
    // the last 1.6 s), exactly from the events.
    let gaps: Vec<_> = runs
        .windows(2)
        .map(|pair| pair[1].started_at - pair[0].started_at)
        .collect();
    assert!(gaps[4] > gaps[0], "gaps {gaps:?}");

    let seen: Vec<SandboxEvent> = common::drain_events(&mut events)
        .into_iter()
        .map(|envelope| envelope.event)
        .collect();
    let scheduled: Vec<(u32, Duration)> = seen
        .iter()
        .filter_map(|event| match event {
            SandboxEvent::RestartScheduled { attempt, delay } => Some((*attempt, *delay)),
            _ => None,
        })
        .collect();
    let ms = Duration::from_millis;
    assert_eq!(
        scheduled,
        [
            (1, ms(100)),
            (2, ms(200)),
            (3, ms(400)),
            (4, ms(800)),
            (5, ms(1600))
        ]
    );
    let tail = &seen[seen.len() - 2..];
    assert_eq!(
        tail,
        [
            SandboxEvent::StatusChanged {
                from: SandboxStatus::Running,
                to: SandboxStatus::Stopped
            },
            SandboxEvent::RestartEnded {
                reason: RestartEnd::RetriesExhausted
            },
        ]
    );
    // Stays stopped: nobody hosts it any more, so nothing can restart it.
    assert!(rt.connect("flaky").await.unwrap().is_none());
    let handle = rt.get("flaky").await.unwrap();
    assert_eq!(handle.status_snapshot(), SandboxStatus::Stopped);
    assert_eq!(handle.pending_restart(), None);
}

#[tokio::test]
async fn always_restarts_after_exit_0_until_stopped() {
    let (_home, rt) = runtime().await;
    let mut config = SandboxConfig::shell("again", "echo hi");
    config.restart = Restart::Always;
    rt.create(config).await.unwrap();
    let runs = runs_until(&rt, "again", "three runs", |runs| runs.len() >= 3).await;
    assert!(runs
        .iter()
        .filter(|run| run.terminated_at.is_some())
        .all(|run| run.termination_reason == Some(TerminationReason::Completed)));
    let stopped = within(rt.get("again").await.unwrap().stop()).await.unwrap();
    assert_eq!(stopped.status, SandboxStatus::Stopped);
    assert!(rt.connect("again").await.unwrap().is_none());
    let runs = rt.runs("again").await.unwrap();
    let last = runs.last().unwrap();
    assert!(last.terminated_at.is_some());
    assert_eq!(last.restart_end, Some(RestartEnd::StopRequested));
    assert_eq!(
        rt.get("again").await.unwrap().status_snapshot(),
        SandboxStatus::Stopped
    );
}

#[tokio::test]
async fn a_stop_during_the_backoff_calls_the_restart_off() {
    let (_home, rt) = runtime().await;
    let mut events = Box::pin(rt.events());
    let mut config = SandboxConfig::shell("patient", "exit 3");
    config.restart = Restart::OnFailure { max_retries: None };
    // A delay no test waits out: the stop must come during it.
    config.restart_backoff = RestartBackoff {
        initial: Duration::from_secs(3600),
        max: Duration::from_secs(3600),
        ..RestartBackoff::default()
    };
    rt.create(config).await.unwrap();
    // The run ended and the restart waits: Starting, with the restart pending.
    let deadline = tokio::time::Instant::now() + WAIT;
    let handle = loop {
        let handle = rt.get("patient").await.unwrap();
        if handle.pending_restart().is_some() {
            break handle;
        }
        assert!(tokio::time::Instant::now() < deadline, "a pending restart");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(handle.status_snapshot(), SandboxStatus::Starting);
    let pending = handle.pending_restart().unwrap();
    assert_eq!(pending.attempt, 1);
    assert_eq!(pending.delay, Duration::from_secs(3600));
    // Waiting for the restart, it refuses exec sessions and cannot be removed.
    assert!(matches!(
        handle.exec(ExecConfig::new("true", [""; 0])).await,
        Err(Error::SandboxNotRunning(_))
    ));
    assert!(matches!(
        rt.remove("patient").await,
        Err(Error::SandboxStillRunning(_))
    ));

    let result = within(handle.stop()).await.unwrap();
    assert_eq!(result.status, SandboxStatus::Stopped);
    assert_eq!(result.exit_code, Some(3));
    let handle = rt.get("patient").await.unwrap();
    assert_eq!(handle.status_snapshot(), SandboxStatus::Stopped);
    assert_eq!(handle.pending_restart(), None);
    let runs = rt.runs("patient").await.unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].restart_end, Some(RestartEnd::StopRequested));
    let seen: Vec<SandboxEvent> = common::drain_events(&mut events)
        .into_iter()
        .map(|envelope| envelope.event)
        .collect();
    let restart_events: Vec<_> = seen
        .iter()
        .skip_while(|event| !matches!(event, SandboxEvent::RestartScheduled { .. }))
        .cloned()
        .collect();
    assert_eq!(
        restart_events,
        [
            SandboxEvent::RestartScheduled {
                attempt: 1,
                delay: Duration::from_secs(3600)
            },
            SandboxEvent::StatusChanged {
                from: SandboxStatus::Starting,
                to: SandboxStatus::Stopped
            },
            SandboxEvent::RestartEnded {
                reason: RestartEnd::StopRequested
            },
        ]
    );
    // The scheduling said Stopped → Starting before it.
    assert!(seen.contains(&SandboxEvent::StatusChanged {
        from: SandboxStatus::Stopped,
        to: SandboxStatus::Starting
    }));
    rt.remove("patient").await.unwrap();
}

#[tokio::test]
async fn a_kill_of_a_running_restarted_sandbox_ends_the_policy() {
    let (_home, rt) = runtime().await;
    let mut config = SandboxConfig::new("svc", "sleep").args(["100"]);
    config.restart = Restart::UnlessStopped;
    config.restart_backoff.initial = Duration::from_millis(10);
    let sandbox = rt.create(config).await.unwrap();
    // A crash from outside (SIGKILL to the main command) is a failure: it
    // restarts.
    let first = rt.runs("svc").await.unwrap()[0].clone();
    let main = processes_named(first.pid, "sleep");
    assert_eq!(main.len(), 1);
    common::sigkill(main[0]);
    let runs = runs_until(&rt, "svc", "a second run", |runs| {
        runs.len() == 2 && runs[1].terminated_at.is_none()
    })
    .await;
    assert_eq!(runs[0].termination_reason, Some(TerminationReason::Signal));
    assert_eq!(runs[1].restart_count, 1);
    let result = within(sandbox.kill()).await;
    assert_eq!(result.status, SandboxStatus::Stopped);
    let runs = rt.runs("svc").await.unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[1].termination_reason, Some(TerminationReason::Killed));
    assert_eq!(runs[1].restart_end, Some(RestartEnd::StopRequested));
}

/// Host pids of the processes named `comm` in the pid namespace whose PID 1
/// has host pid `init`.
fn processes_named(init: u32, comm: &str) -> Vec<u32> {
    let Ok(ns) = std::fs::read_link(format!("/proc/{init}/ns/pid")) else {
        return Vec::new();
    };
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| entry.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/ns/pid"))
                .ok()
                .as_ref()
                == Some(&ns)
        })
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|name| name.trim() == comm)
        })
        .filter(|pid| !common::ended(*pid))
        .collect()
}

#[tokio::test]
async fn an_idle_sandbox_stops_with_idle_timeout_and_an_exec_keeps_it_alive() {
    let (_home, rt) = runtime().await;
    let mut config = SandboxConfig::new("idle", "sleep").args(["100"]);
    config.idle_timeout = Some(Duration::from_secs(1));
    config.restart = Restart::Always;
    let sandbox = rt.create(config).await.unwrap();
    // A session twice as long as the idle timeout, silent: the sandbox must
    // outlive it.
    let session = sandbox.exec(ExecConfig::new("sleep", ["2"])).await.unwrap();
    let status = within(session.wait()).await;
    assert_eq!(status.code, Some(0));
    assert_eq!(sandbox.status().await.unwrap(), SandboxStatus::Running);
    // Then nothing happens: it stops by itself, and is not restarted.
    let result = within(sandbox.wait_until_stopped()).await;
    assert_eq!(result.status, SandboxStatus::Stopped);
    let runs = rt.runs("idle").await.unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(
        runs[0].termination_reason,
        Some(TerminationReason::IdleTimeout)
    );
    assert_eq!(runs[0].restart_end, Some(RestartEnd::IdleTimeout));
}

#[tokio::test]
async fn output_keeps_a_sandbox_from_idling_and_max_lifetime_stops_it() {
    let (_home, rt) = runtime().await;
    let mut config = SandboxConfig::shell("chatty", "while :; do echo tick; sleep 0.1; done");
    config.idle_timeout = Some(Duration::from_millis(800));
    config.max_lifetime = Some(Duration::from_secs(3));
    let sandbox = rt.create(config).await.unwrap();
    let result = within(sandbox.wait_until_stopped()).await;
    assert_eq!(result.status, SandboxStatus::Stopped);
    let runs = rt.runs("chatty").await.unwrap();
    assert_eq!(
        runs[0].termination_reason,
        Some(TerminationReason::LifetimeExceeded)
    );
    // No policy: nothing to say about restarting.
    assert_eq!(runs[0].restart_end, None);
}

#[tokio::test]
async fn an_exec_timeout_kills_the_whole_process_group() {
    let (_home, rt) = runtime().await;
    let mut events = Box::pin(rt.events());
    let sandbox = rt
        .create(SandboxConfig::new("host", "sleep").args(["1000"]))
        .await
        .unwrap();
    let init = rt.runs("host").await.unwrap()[0].pid;
    let mut config = ExecConfig::new("sh", ["-c", "sleep 100 & sleep 100"]);
    config.timeout = Some(Duration::from_secs(1));
    let session = sandbox.exec(config).await.unwrap();
    let id = session.id();
    // Both sleeps of the session run (besides the main command's).
    common::wait_until("the session's two sleeps", || {
        processes_named(init, "sleep").len() == 3
    });
    let status = within(session.wait()).await;
    assert!(status.timed_out, "{status:?}");
    assert_eq!(status.signal, Some(libc::SIGKILL));
    // Both are gone; the main command runs on.
    common::wait_until("the session's sleeps gone", || {
        processes_named(init, "sleep").len() == 1
    });
    assert_eq!(sandbox.status().await.unwrap(), SandboxStatus::Running);
    let seen: Vec<SandboxEvent> = common::drain_events(&mut events)
        .into_iter()
        .map(|envelope| envelope.event)
        .collect();
    let timed_out = seen
        .iter()
        .position(|event| {
            *event
                == SandboxEvent::SessionTimedOut {
                    id,
                    timeout: Duration::from_secs(1),
                }
        })
        .expect("SessionTimedOut");
    assert!(seen[timed_out..].contains(&SandboxEvent::SessionExited {
        id,
        code: None,
        signal: Some(libc::SIGKILL)
    }));
    // An exec that ends in time is not marked.
    let mut quick = ExecConfig::new("true", [""; 0]);
    quick.timeout = Some(Duration::from_secs(30));
    let status = sandbox.exec(quick).await.unwrap().wait().await.unwrap();
    assert!(!status.timed_out);
    assert_eq!(status.code, Some(0));
    sandbox.kill().await.unwrap();
}

#[tokio::test]
async fn bad_policies_are_refused_naming_the_field_before_anything_is_created() {
    let (_home, rt) = runtime().await;
    let base = || SandboxConfig::shell("bad", "true");
    let cases: Vec<(SandboxConfig, &str)> = vec![
        (
            SandboxConfig {
                restart: Restart::OnFailure {
                    max_retries: Some(0),
                },
                ..base()
            },
            "restart",
        ),
        (
            SandboxConfig {
                idle_timeout: Some(Duration::ZERO),
                ..base()
            },
            "idle_timeout",
        ),
        (
            SandboxConfig {
                max_lifetime: Some(Duration::from_secs(400 * 24 * 3600)),
                ..base()
            },
            "max_lifetime",
        ),
        (
            SandboxConfig {
                restart_backoff: RestartBackoff {
                    initial: Duration::ZERO,
                    ..RestartBackoff::default()
                },
                ..base()
            },
            "restart_backoff.initial",
        ),
        (
            SandboxConfig {
                restart_backoff: RestartBackoff {
                    initial: Duration::from_secs(5),
                    max: Duration::from_secs(1),
                    ..RestartBackoff::default()
                },
                ..base()
            },
            "restart_backoff.max",
        ),
    ];
    for (config, want) in cases {
        match rt.create(config).await {
            Err(Error::InvalidConfig { field, .. }) => assert_eq!(field, want),
            other => panic!("{want}: {other:?}"),
        }
    }
    assert!(rt.list().await.unwrap().is_empty());
    assert!(!rt.home().join("sandboxes").join("bad").exists());

    let sandbox = rt
        .create(SandboxConfig::new("ok", "sleep").args(["1000"]))
        .await
        .unwrap();
    let mut config = ExecConfig::new("true", [""; 0]);
    config.timeout = Some(Duration::ZERO);
    match sandbox.exec(config).await {
        Err(Error::InvalidConfig { field, .. }) => assert_eq!(field, "timeout"),
        other => panic!("{other:?}"),
    }
    sandbox.kill().await.unwrap();
}

#[tokio::test]
async fn durations_are_humantime_strings_and_old_rows_still_load() {
    let (home, rt) = runtime().await;
    let mut config = SandboxConfig::shell("old", "true");
    config.stop_timeout = Duration::from_secs(90);
    config.idle_timeout = Some(Duration::from_millis(1500));
    let sandbox = rt.create(config).await.unwrap();
    sandbox.wait_until_stopped().await.unwrap();
    let stored: serde_json::Value =
        serde_json::from_str(rt.get("old").await.unwrap().config_json()).unwrap();
    assert_eq!(stored["stop_timeout"], "1m 30s");
    assert_eq!(stored["kill_timeout"], "5s");
    assert_eq!(stored["metrics_interval"], "1s");
    assert_eq!(stored["idle_timeout"], "1s 500ms");
    assert_eq!(stored["max_lifetime"], serde_json::Value::Null);
    assert_eq!(stored["restart"], "no");
    assert_eq!(stored["restart_backoff"]["initial"], "100ms");
    drop(sandbox);
    drop(rt);

    // A row as sandvisor wrote it before: durations as {"secs", "nanos"},
    // none of the new fields.
    let old = r#"{"name":"old","command":"true","args":[],"stop_signal":15,
        "stop_timeout":{"secs":10,"nanos":0},"kill_timeout":{"secs":5,"nanos":0},
        "metrics_interval":{"secs":1,"nanos":500000000}}"#;
    {
        use sqlx::Connection;
        let url = format!("sqlite://{}", home.path().join("sandvisor.db").display());
        let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query("UPDATE sandbox SET config = ? WHERE name = 'old'")
            .bind(old)
            .execute(&mut db)
            .await
            .unwrap();
    }
    let rt = Sandvisor::builder()
        .home(home.path())
        .agent_path(env!("CARGO_BIN_EXE_sandvisor-agent"))
        .open()
        .await
        .unwrap();
    let loaded = rt.get("old").await.unwrap().config().unwrap();
    assert_eq!(loaded.stop_timeout, Duration::from_secs(10));
    assert_eq!(loaded.metrics_interval, Some(Duration::from_millis(1500)));
    assert_eq!(loaded.restart, Restart::No);
    assert_eq!(loaded.idle_timeout, None);
    // It starts again as it is.
    let sandbox = rt.start("old").await.unwrap();
    assert_eq!(
        sandbox.wait_until_stopped().await.unwrap().exit_code,
        Some(0)
    );
    // `inspect` prints today's shape.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sandvisor"))
        .args(["inspect", "old"])
        .env("SANDVISOR_HOME", home.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let inspected: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(inspected[0]["config"]["stop_timeout"], "10s");
    assert_eq!(inspected[0]["config"]["metrics_interval"], "1s 500ms");
    assert_eq!(inspected[0]["restart"]["policy"], "no");
}
