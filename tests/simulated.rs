//! The simulated backend drives the real supervisor, agent link, relay tap,
//! store and events — without root, namespaces or KVM. These tests must pass
//! as an unprivileged user.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use sandvisor::testing::{BootStage, Script, SimulatedBackend};
use sandvisor::{
    Error, EscalationStep, EventEnvelope, LogOptions, LogSource, SandboxConfig, SandboxEvent,
    SandboxStatus, Sandvisor, TerminationReason,
};
use tempfile::TempDir;

async fn runtime(backend: SimulatedBackend) -> (TempDir, Sandvisor, Arc<SimulatedBackend>) {
    let home = tempfile::tempdir().unwrap();
    let backend = Arc::new(backend);
    let rt = Sandvisor::builder()
        .home(home.path())
        .backend(backend.clone())
        .open()
        .await
        .unwrap();
    (home, rt, backend)
}

/// A config whose kill timeout is short, so escalation tests are quick.
fn config(name: &str) -> SandboxConfig {
    // Validated against PATH like any config; the simulated agent runs its script instead.
    let mut config = SandboxConfig::new(name, "true");
    config.kill_timeout = Duration::from_millis(300);
    config
}

/// Events of `name` until (and including) its terminal status change.
async fn events_until_ended(
    events: &mut (impl futures::Stream<Item = EventEnvelope> + Unpin),
    name: &str,
) -> Vec<SandboxEvent> {
    let mut seen = Vec::new();
    loop {
        let envelope = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("events stalled")
            .expect("event bus closed");
        if envelope.sandbox != name {
            continue;
        }
        let terminal = matches!(
            envelope.event,
            SandboxEvent::StatusChanged { to, .. } if to.is_terminal()
        );
        seen.push(envelope.event);
        if terminal {
            return seen;
        }
    }
}

fn statuses(events: &[SandboxEvent]) -> Vec<(SandboxStatus, SandboxStatus)> {
    events
        .iter()
        .filter_map(|event| match event {
            SandboxEvent::StatusChanged { from, to } => Some((*from, *to)),
            _ => None,
        })
        .collect()
}

fn escalations(events: &[SandboxEvent]) -> Vec<(EscalationStep, EscalationStep)> {
    events
        .iter()
        .filter_map(|event| match event {
            SandboxEvent::Escalated { from, to } => Some((*from, *to)),
            _ => None,
        })
        .collect()
}

async fn markers(rt: &Sandvisor, name: &str) -> Vec<String> {
    let options = LogOptions {
        sources: vec![LogSource::System],
        ..LogOptions::default()
    };
    rt.get(name)
        .await
        .unwrap()
        .logs(&options)
        .await
        .unwrap()
        .iter()
        .map(|e| String::from_utf8_lossy(&e.data).into_owned())
        // System entries include runtime.log's lines: keep exec.log's markers.
        .filter(|text| text.starts_with("---"))
        .collect()
}

fn runtime_log(home: &TempDir, name: &str) -> String {
    let path = home
        .path()
        .join("sandboxes")
        .join(name)
        .join("logs")
        .join("runtime.log");
    std::fs::read_to_string(path).unwrap_or_default()
}

#[tokio::test]
async fn output_and_exit_code_reach_exec_log_run_row_and_events() {
    let (_home, rt, backend) = runtime(SimulatedBackend::new()).await;
    backend.script(
        "out",
        Script::new()
            .stdout("to-stdout\n")
            .stderr("to-stderr\n")
            .exit(7),
    );
    let mut events = rt.events();
    let sandbox = rt.create(config("out")).await.unwrap();
    let result = sandbox.wait_until_stopped().await.unwrap();
    assert_eq!(result.status, SandboxStatus::Stopped);
    assert_eq!((result.exit_code, result.signal), (Some(7), None));

    let entries = sandbox.logs(&LogOptions::default()).await.unwrap();
    let got: Vec<_> = entries
        .iter()
        .map(|e| {
            (
                e.source,
                String::from_utf8_lossy(&e.data).into_owned(),
                e.session_id,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (LogSource::Stdout, "to-stdout\n".to_string(), Some(1)),
            (LogSource::Stderr, "to-stderr\n".to_string(), Some(1)),
        ]
    );
    assert_eq!(
        markers(&rt, "out").await,
        vec![
            "--- sandbox started ---",
            "--- sandbox stopped (exit 7) ---"
        ]
    );
    let runs = rt.runs("out").await.unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].exit_code, Some(7));
    assert_eq!(runs[0].termination_reason, Some(TerminationReason::Failed));
    assert_eq!(runs[0].pid, std::process::id());

    let seen = events_until_ended(&mut events, "out").await;
    assert_eq!(
        statuses(&seen),
        vec![
            (SandboxStatus::Starting, SandboxStatus::Running),
            (SandboxStatus::Running, SandboxStatus::Stopped),
        ]
    );
    assert!(seen.contains(&SandboxEvent::SessionStarted { id: 1 }));
    assert!(seen.contains(&SandboxEvent::SessionExited {
        id: 1,
        code: Some(7),
        signal: None
    }));
}

#[tokio::test]
async fn stop_ends_the_main_command_with_the_stop_signal() {
    let (_home, rt, _backend) = runtime(SimulatedBackend::new()).await;
    let mut events = rt.events();
    let sandbox = rt.create(config("stop")).await.unwrap();
    assert_eq!(sandbox.status().await.unwrap(), SandboxStatus::Running);
    let result = sandbox
        .stop_with_timeout(Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(result.signal, Some(libc::SIGTERM));
    let runs = rt.runs("stop").await.unwrap();
    assert_eq!(
        runs[0].termination_reason,
        Some(TerminationReason::ShutdownRequested)
    );
    assert_eq!(
        markers(&rt, "stop").await.last().unwrap(),
        "--- sandbox stopped (signal 15) ---"
    );
    let seen = events_until_ended(&mut events, "stop").await;
    assert_eq!(
        statuses(&seen),
        vec![
            (SandboxStatus::Starting, SandboxStatus::Running),
            (SandboxStatus::Running, SandboxStatus::Draining),
            (SandboxStatus::Draining, SandboxStatus::Stopped),
        ]
    );
    assert!(escalations(&seen).is_empty());
}

#[tokio::test]
async fn kill_ends_it_at_once_with_sigkill() {
    let (_home, rt, _backend) = runtime(SimulatedBackend::new()).await;
    let sandbox = rt.create(config("kill")).await.unwrap();
    let result = sandbox.kill().await.unwrap();
    assert_eq!(result.signal, Some(libc::SIGKILL));
    let runs = rt.runs("kill").await.unwrap();
    assert_eq!(runs[0].termination_reason, Some(TerminationReason::Killed));
    assert_eq!(runs[0].exit_signal, Some(9));
}

#[tokio::test]
async fn a_stop_that_is_ignored_escalates_to_sigkill() {
    let (_home, rt, backend) = runtime(SimulatedBackend::new()).await;
    backend.script("term", Script::new().ignore_stop());
    let mut events = rt.events();
    let sandbox = rt.create(config("term")).await.unwrap();
    let result = sandbox
        .stop_with_timeout(Duration::from_millis(200))
        .await
        .unwrap();
    assert_eq!(result.signal, Some(libc::SIGKILL));
    let runs = rt.runs("term").await.unwrap();
    assert_eq!(runs[0].termination_reason, Some(TerminationReason::Killed));
    let seen = events_until_ended(&mut events, "term").await;
    assert_eq!(
        escalations(&seen),
        vec![(EscalationStep::Term, EscalationStep::Kill)]
    );
}

#[tokio::test]
async fn an_agent_ignoring_the_kill_is_killed_from_the_host() {
    let (home, rt, backend) = runtime(SimulatedBackend::new()).await;
    backend.script("host", Script::new().stdout("stubborn\n").ignore_kill());
    let mut events = rt.events();
    let sandbox = rt.create(config("host")).await.unwrap();
    let result = sandbox
        .stop_with_timeout(Duration::from_millis(200))
        .await
        .unwrap();
    assert_eq!(result.status, SandboxStatus::Stopped);
    assert_eq!(result.signal, Some(libc::SIGKILL));
    let runs = rt.runs("host").await.unwrap();
    assert_eq!(runs[0].termination_reason, Some(TerminationReason::Killed));
    assert_eq!(
        markers(&rt, "host").await.last().unwrap(),
        "--- sandbox stopped (signal 9) ---"
    );
    let seen = events_until_ended(&mut events, "host").await;
    assert_eq!(
        escalations(&seen),
        vec![
            (EscalationStep::Term, EscalationStep::Kill),
            (EscalationStep::Kill, EscalationStep::HostKill),
        ]
    );
    assert!(runtime_log(&home, "host").contains("killing PID 1 from the host"));
}

#[tokio::test]
async fn an_agent_surviving_the_host_kill_is_given_up_as_crashed() {
    let (home, rt, backend) = runtime(SimulatedBackend::new()).await;
    backend.script("undead", Script::new().survive_host_kill());
    let sandbox = rt.create(config("undead")).await.unwrap();
    let result = sandbox.kill().await.unwrap();
    assert_eq!(result.status, SandboxStatus::Crashed);
    let runs = rt.runs("undead").await.unwrap();
    assert_eq!(
        runs[0].termination_reason,
        Some(TerminationReason::InternalError)
    );
    assert!(runtime_log(&home, "undead").contains("giving it up as crashed"));
}

#[tokio::test]
async fn an_agent_that_never_gets_ready_fails_at_the_boot_timeout() {
    let backend = SimulatedBackend::new().with_boot_timeout(Duration::from_millis(300));
    let (home, rt, backend) = runtime(backend).await;
    backend.script("slow", Script::new().never_ready());
    let started = std::time::Instant::now();
    let err = rt.create(config("slow")).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10));
    match err {
        Error::BootFailed {
            stage,
            errno,
            message,
            ..
        } => {
            assert_eq!(stage, "other");
            assert_eq!(errno, libc::ETIMEDOUT);
            assert!(message.contains("300ms"), "{message}");
        }
        other => panic!("expected BootFailed, got {other:?}"),
    }
    let record = home
        .path()
        .join("sandboxes/slow/logs")
        .join(sandvisor::engine::sandbox::BOOT_ERROR_FILE);
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(record).unwrap()).unwrap();
    assert_eq!(record["stage"], "other");
    assert_eq!(
        rt.get("slow").await.unwrap().status_snapshot(),
        SandboxStatus::Stopped
    );
    assert!(rt.runs("slow").await.unwrap().is_empty());
}

#[tokio::test]
async fn a_boot_failure_is_reported_with_its_stage_and_recorded() {
    let (home, rt, backend) = runtime(SimulatedBackend::new()).await;
    backend.script(
        "broken",
        Script::new().boot_failure(BootStage::Mount, libc::EPERM, "no mount for you"),
    );
    match rt.create(config("broken")).await.unwrap_err() {
        Error::BootFailed {
            stage,
            errno,
            message,
            ..
        } => {
            assert_eq!(stage, "mount");
            assert_eq!(errno, libc::EPERM);
            assert_eq!(message, "no mount for you");
        }
        other => panic!("expected BootFailed, got {other:?}"),
    }
    let record = home.path().join("sandboxes/broken/logs/boot-error.json");
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    assert_eq!(record["stage"], "mount");
    assert_eq!(record["message"], "no mount for you");
    assert!(markers(&rt, "broken").await.is_empty());

    // A good start removes the record.
    backend.script("broken", Script::new().exit(0));
    let sandbox = rt.start("broken").await.unwrap();
    sandbox.wait_until_stopped().await.unwrap();
    assert!(!home
        .path()
        .join("sandboxes/broken/logs/boot-error.json")
        .exists());
}

#[tokio::test]
async fn an_agent_lost_without_an_exit_ends_crashed() {
    let (home, rt, backend) = runtime(SimulatedBackend::new()).await;
    backend.script("lost", Script::new().stdout("last words\n").lose_agent());
    let mut events = rt.events();
    let sandbox = rt.create(config("lost")).await.unwrap();
    let result = sandbox.wait_until_stopped().await.unwrap();
    assert_eq!(result.status, SandboxStatus::Crashed);
    let runs = rt.runs("lost").await.unwrap();
    assert_eq!(
        runs[0].termination_reason,
        Some(TerminationReason::InternalError)
    );
    let entries = sandbox.logs(&LogOptions::default()).await.unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(&entries[0].data[..], b"last words\n");
    assert_eq!(
        markers(&rt, "lost").await.last().unwrap(),
        "--- sandbox stopped (InternalError) ---"
    );
    let seen = events_until_ended(&mut events, "lost").await;
    assert_eq!(
        statuses(&seen).last(),
        Some(&(SandboxStatus::Running, SandboxStatus::Crashed))
    );
    assert!(runtime_log(&home, "lost").contains("lost the sandbox process"));
}

#[tokio::test]
async fn pause_and_resume_go_through_the_agent() {
    let (_home, rt, _backend) = runtime(SimulatedBackend::new()).await;
    let sandbox = rt.create(config("frozen")).await.unwrap();
    sandbox.pause().await.unwrap();
    assert_eq!(sandbox.status().await.unwrap(), SandboxStatus::Paused);
    sandbox.resume().await.unwrap();
    assert_eq!(sandbox.status().await.unwrap(), SandboxStatus::Running);
    // A stop while paused still ends it (SIGCONT follows the stop signal).
    sandbox.pause().await.unwrap();
    let result = sandbox.stop().await.unwrap();
    assert_eq!(result.signal, Some(libc::SIGTERM));
    assert!(matches!(
        sandbox.pause().await,
        Err(Error::SandboxNotRunning(_))
    ));
}
