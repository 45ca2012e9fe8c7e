//! Testing your own code against sandvisor without root: a simulated backend
//! plus actor message probes.
//!
//! `SimulatedBackend` runs a scripted agent per sandbox that speaks the real
//! agent protocol, so the real supervisor, logs, store and events run with
//! no namespaces, no KVM and no privileges. A `Probe` subscribed to a
//! sandbox's events records exactly what sandvisor told it.
//!
//! Each check below scripts one behaviour and asserts the events a probe
//! receives: a clean stop, a kill, a stop the sandbox ignores (escalation
//! Term → Kill → HostKill), an agent that never gets ready (boot timeout), and
//! an agent that goes away (Crashed).
//!
//! Run: `cargo run --release --example simulated_probes` (prints each check),
//! or `cargo test --release --example simulated_probes`; any user will do.

use std::sync::Arc;
use std::time::Duration;

use sandvisor::testing::{Probe, Script, SimulatedBackend};
use sandvisor::{
    Error, EscalationStep, EventEnvelope, SandboxConfig, SandboxEvent, SandboxStatus, Sandvisor,
    TerminationReason,
};

type Failure = Box<dyn std::error::Error + Send + Sync>;

const WAIT: Duration = Duration::from_secs(10);

/// A runtime on a fresh home whose sandboxes run on `backend`.
async fn runtime(
    backend: Arc<SimulatedBackend>,
) -> Result<(tempfile::TempDir, Sandvisor), Failure> {
    let home = tempfile::tempdir()?;
    let rt = Sandvisor::builder()
        .home(home.path())
        .backend(backend)
        .open()
        .await?;
    Ok((home, rt))
}

fn config(name: &str) -> SandboxConfig {
    // Validated against PATH like any config; the simulated agent runs its script instead.
    let mut config = SandboxConfig::new(name, "true");
    config.kill_timeout = Duration::from_millis(200);
    config.metrics_interval = None;
    config
}

/// The next escalation or terminal status change the probe receives.
async fn next_milestone(probe: &mut Probe<EventEnvelope>) -> Result<SandboxEvent, Failure> {
    let envelope = probe
        .expect_match(
            |e| match e.event {
                SandboxEvent::Escalated { .. } => true,
                SandboxEvent::StatusChanged { to, .. } => to.is_terminal(),
                _ => false,
            },
            WAIT,
        )
        .await?;
    Ok(envelope.event)
}

/// Runs every check; prints one line per check that passed.
async fn check() -> Result<(), Failure> {
    let backend = Arc::new(SimulatedBackend::new().with_boot_timeout(Duration::from_millis(300)));
    backend.script(
        "stubborn",
        Script::new().stdout("ignoring you\n").ignore_kill(),
    );
    backend.script("slow", Script::new().never_ready());
    backend.script("flaky", Script::new().stdout("bye\n").lose_agent());
    let (_home, rt) = runtime(backend).await?;

    // A clean stop: Draining, then Stopped by the stop signal.
    let sandbox = rt.create(config("calm")).await?;
    let mut probe = Probe::<EventEnvelope>::spawn().await?;
    sandbox.subscribe(probe.sink())?;
    sandbox.request_stop(Some(Duration::from_secs(5)));
    let draining = probe.expect_msg(WAIT).await?;
    assert_eq!(
        draining.event,
        SandboxEvent::StatusChanged {
            from: SandboxStatus::Running,
            to: SandboxStatus::Draining
        }
    );
    let ended = sandbox.wait_until_stopped().await?;
    assert_eq!(ended.signal, Some(libc::SIGTERM));
    println!("ok: stop → Draining → Stopped by SIGTERM");

    // A kill: SIGKILL at once, no escalation.
    let sandbox = rt.create(config("doomed")).await?;
    let mut probe = Probe::<EventEnvelope>::spawn().await?;
    sandbox.subscribe(probe.sink())?;
    sandbox.request_kill();
    assert_eq!(
        next_milestone(&mut probe).await?,
        SandboxEvent::StatusChanged {
            from: SandboxStatus::Draining,
            to: SandboxStatus::Stopped
        }
    );
    assert_eq!(
        sandbox.wait_until_stopped().await?.signal,
        Some(libc::SIGKILL)
    );
    println!("ok: kill → Stopped by SIGKILL");

    // A stop the sandbox ignores, and a kill its agent ignores.
    let sandbox = rt.create(config("stubborn")).await?;
    let mut probe = Probe::<EventEnvelope>::spawn().await?;
    sandbox.subscribe(probe.sink())?;
    sandbox.request_stop(Some(Duration::from_millis(100)));
    for (from, to) in [
        (EscalationStep::Term, EscalationStep::Kill),
        (EscalationStep::Kill, EscalationStep::HostKill),
    ] {
        assert_eq!(
            next_milestone(&mut probe).await?,
            SandboxEvent::Escalated { from, to }
        );
        println!("ok: escalated {from:?} → {to:?}");
    }
    assert!(matches!(
        next_milestone(&mut probe).await?,
        SandboxEvent::StatusChanged {
            to: SandboxStatus::Stopped,
            ..
        }
    ));
    let runs = rt.runs("stubborn").await?;
    assert_eq!(runs[0].termination_reason, Some(TerminationReason::Killed));
    println!("ok: killed from the host → Stopped (Killed)");

    // An agent that never reports ready: the start fails at the boot timeout.
    match rt.create(config("slow")).await {
        Err(Error::BootFailed { stage, errno, .. }) => {
            assert_eq!((stage.as_str(), errno), ("other", libc::ETIMEDOUT));
        }
        other => return Err(format!("expected a boot timeout, got {other:?}").into()),
    }
    println!("ok: never ready → BootFailed (other, ETIMEDOUT)");

    // An agent that goes away without reporting an exit: Crashed.
    let sandbox = rt.create(config("flaky")).await?;
    let ended = sandbox.wait_until_stopped().await?;
    assert_eq!(ended.status, SandboxStatus::Crashed);
    let runs = rt.runs("flaky").await?;
    assert_eq!(
        runs[0].termination_reason,
        Some(TerminationReason::InternalError)
    );
    println!("ok: agent lost → Crashed (InternalError)");
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Failure> {
    check().await?;
    // SAFETY: getuid cannot fail and touches no memory.
    let uid = unsafe { libc::getuid() };
    println!("every check passed, as uid {uid}");
    Ok(())
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn every_check_passes() {
        super::check().await.unwrap();
    }
}
