//! Testing your own orchestrator with actor message probes.
//!
//! `Restarter` is a small orchestrator: an actor that watches one sandbox's
//! events and starts it again when its main command fails, at most `limit`
//! times, telling a supervisor actor what it did. The test half of this
//! example replaces that supervisor with a `Probe` and asserts the exact
//! messages.
//!
//! Run (as root): `cargo build --release --bins && cargo run --release --example orchestrator_probes`

use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use sandvisor::testing::Probe;
use sandvisor::{EventEnvelope, SandboxConfig, SandboxEvent, SandboxStatus, Sandvisor};

/// What the orchestrator reports.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Report {
    Restarted { name: String, attempt: u32 },
    GaveUp { name: String, attempts: u32 },
}

/// The orchestrator under test.
struct Restarter;

struct RestarterState {
    rt: Sandvisor,
    name: String,
    limit: u32,
    attempts: u32,
    report: ActorRef<Report>,
    events: ActorRef<EventEnvelope>,
}

impl Actor for Restarter {
    type Msg = EventEnvelope;
    type State = RestarterState;
    type Arguments = (Sandvisor, String, u32, ActorRef<Report>);

    async fn pre_start(
        &self,
        myself: ActorRef<EventEnvelope>,
        (rt, name, limit, report): Self::Arguments,
    ) -> Result<RestarterState, ActorProcessingErr> {
        let state = RestarterState {
            rt,
            name,
            limit,
            attempts: 0,
            report,
            events: myself,
        };
        state.watch().await?;
        Ok(state)
    }

    async fn handle(
        &self,
        _: ActorRef<EventEnvelope>,
        event: EventEnvelope,
        state: &mut RestarterState,
    ) -> Result<(), ActorProcessingErr> {
        if let SandboxEvent::SessionExited { id: 1, code, .. } = event.event {
            if code == Some(0) {
                return Ok(());
            }
            // Wait for the end to be recorded before starting again.
            state
                .rt
                .get(&state.name)
                .await?
                .wait_until_stopped()
                .await?;
            if state.attempts == state.limit {
                state.report.cast(Report::GaveUp {
                    name: state.name.clone(),
                    attempts: state.attempts,
                })?;
                return Ok(());
            }
            state.attempts += 1;
            state.watch().await?;
            state.report.cast(Report::Restarted {
                name: state.name.clone(),
                attempt: state.attempts,
            })?;
        }
        Ok(())
    }
}

impl RestarterState {
    /// Starts the sandbox (if it is not running) and subscribes to its events.
    async fn watch(&self) -> Result<(), ActorProcessingErr> {
        let sandbox = self.rt.start(&self.name).await?;
        let events = self.events.clone();
        sandbox.subscribe(std::sync::Arc::new(move |event| {
            events.cast(event.clone()).is_ok()
        }))?;
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let home = tempfile::tempdir()?;
    let rt = Sandvisor::builder().home(home.path()).open().await?;
    let mut config = SandboxConfig::shell("flaky", "sleep 0.2; echo failing; exit 1");
    config.metrics_interval = None;
    // Running (it fails after 0.2 s); the orchestrator takes it from here.
    rt.create(config).await?;

    // The test: a probe stands in for whoever receives the orchestrator's reports.
    let mut reports = Probe::<Report>::spawn().await?;
    let (restarter, _) = Actor::spawn(
        None,
        Restarter,
        (rt.clone(), "flaky".to_string(), 2, reports.actor().clone()),
    )
    .await?;
    let wait = Duration::from_secs(10);
    for attempt in 1..=2 {
        let report = reports.expect_msg(wait).await?;
        assert_eq!(
            report,
            Report::Restarted {
                name: "flaky".into(),
                attempt
            }
        );
        println!("ok: {report:?}");
    }
    let report = reports.expect_msg(wait).await?;
    assert_eq!(
        report,
        Report::GaveUp {
            name: "flaky".into(),
            attempts: 2
        }
    );
    println!("ok: {report:?}");
    reports.expect_no_msg(Duration::from_millis(500)).await?;
    assert_eq!(
        rt.runs("flaky").await?.len(),
        3,
        "the first run and two restarts"
    );
    assert_eq!(
        rt.get("flaky").await?.status_snapshot(),
        SandboxStatus::Stopped
    );
    restarter.stop(None);
    println!("orchestrator test passed: 2 restarts, then it gave up, and nothing else was sent");
    Ok(())
}
