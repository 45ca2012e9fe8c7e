//! Actor message probes: test code that drives sandvisor by asserting on the
//! messages sandvisor sends it; and a simulated backend, so such tests need
//! no root, namespaces or KVM.
//!
//! [`SimulatedBackend`] (given to
//! [`SandvisorBuilder::backend`](crate::SandvisorBuilder::backend)) runs a
//! scripted agent per sandbox ([`Script`]: output, exit code or signal, boot
//! failure, an agent that never gets ready or goes away, a stubborn stop)
//! that speaks the real agent protocol to the real supervisor, relay tap,
//! store and events.
//!
//! A [`Probe<M>`] is a real ractor actor of message type `M` that records
//! every message it receives, in order. Hand its [`actor`](Probe::actor) (or,
//! for sandbox events, its [`sink`](Probe::sink)) to the code under test, then
//! assert with [`expect_msg`](Probe::expect_msg),
//! [`expect_match`](Probe::expect_match) and
//! [`expect_no_msg`](Probe::expect_no_msg).
//!
//! ```no_run
//! # async fn demo(sandbox: sandvisor::Sandbox) -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use sandvisor::engine::events::SandboxEvent;
//! use sandvisor::testing::Probe;
//!
//! let mut probe = Probe::spawn().await?;
//! sandbox.subscribe(probe.sink())?;
//! sandbox.request_stop(Some(Duration::from_secs(1)));
//! let event = probe.expect_msg(Duration::from_secs(5)).await?;
//! assert!(matches!(event.event, SandboxEvent::StatusChanged { .. }));
//! # Ok(()) }
//! ```

use std::fmt::Debug;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use sandvisor_actors::events::{EventEnvelope, EventSink};
use tokio::sync::mpsc;

pub use sandvisor_actors::backend::simulated::{Script, SimulatedBackend};
/// Where a scripted boot failure happened (see [`Script::boot_failure`]).
pub use sandvisor_actors::protocol::BootStage;

/// What a probe expectation ran into.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// Nothing (matching) arrived in time.
    #[error("no matching message within {0:?}")]
    Timeout(Duration),
    /// A message arrived when none was expected.
    #[error("unexpected message: {0}")]
    Unexpected(String),
    /// The probe actor could not be started.
    #[error("probe actor: {0}")]
    Spawn(String),
}

/// An actor that records every message it receives. See the module docs.
pub struct Probe<M: Clone + Debug + Send + 'static> {
    actor: ActorRef<M>,
    inbox: mpsc::UnboundedReceiver<M>,
    received: Arc<Mutex<Vec<M>>>,
}

struct ProbeActor<M>(PhantomData<fn() -> M>);

struct ProbeState<M> {
    forward: mpsc::UnboundedSender<M>,
    received: Arc<Mutex<Vec<M>>>,
}

impl<M: Clone + Debug + Send + 'static> Actor for ProbeActor<M> {
    type Msg = M;
    type State = ProbeState<M>;
    type Arguments = ProbeState<M>;

    async fn pre_start(
        &self,
        _: ActorRef<M>,
        state: ProbeState<M>,
    ) -> Result<ProbeState<M>, ActorProcessingErr> {
        Ok(state)
    }

    async fn handle(
        &self,
        _: ActorRef<M>,
        msg: M,
        state: &mut ProbeState<M>,
    ) -> Result<(), ActorProcessingErr> {
        state
            .received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(msg.clone());
        // The test side may have stopped expecting; the record stands.
        let _ = state.forward.send(msg);
        Ok(())
    }
}

impl<M: Clone + Debug + Send + 'static> Probe<M> {
    /// Starts a probe actor.
    pub async fn spawn() -> Result<Self, ProbeError> {
        let (forward, inbox) = mpsc::unbounded_channel();
        let received = Arc::new(Mutex::new(Vec::new()));
        let state = ProbeState {
            forward,
            received: received.clone(),
        };
        let (actor, _) = Actor::spawn(None, ProbeActor(PhantomData), state)
            .await
            .map_err(|e| ProbeError::Spawn(e.to_string()))?;
        Ok(Self {
            actor,
            inbox,
            received,
        })
    }

    /// The probe's actor, to hand to the code under test.
    pub fn actor(&self) -> &ActorRef<M> {
        &self.actor
    }

    /// The next message, within `timeout`.
    pub async fn expect_msg(&mut self, timeout: Duration) -> Result<M, ProbeError> {
        match tokio::time::timeout(timeout, self.inbox.recv()).await {
            Ok(Some(msg)) => Ok(msg),
            _ => Err(ProbeError::Timeout(timeout)),
        }
    }

    /// The next message for which `pred` holds, within `timeout`; messages
    /// before it are passed over (they stay in [`received`](Self::received)).
    pub async fn expect_match(
        &mut self,
        pred: impl Fn(&M) -> bool,
        timeout: Duration,
    ) -> Result<M, ProbeError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.inbox.recv()).await {
                Ok(Some(msg)) if pred(&msg) => return Ok(msg),
                Ok(Some(_)) => continue,
                _ => return Err(ProbeError::Timeout(timeout)),
            }
        }
    }

    /// Succeeds if no message arrives within `duration`.
    pub async fn expect_no_msg(&mut self, duration: Duration) -> Result<(), ProbeError> {
        match tokio::time::timeout(duration, self.inbox.recv()).await {
            Ok(Some(msg)) => Err(ProbeError::Unexpected(format!("{msg:?}"))),
            _ => Ok(()),
        }
    }

    /// Every message received so far, in order.
    pub fn received(&self) -> Vec<M> {
        self.received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Probe<EventEnvelope> {
    /// A sink delivering sandbox events to this probe (see
    /// [`Sandbox::subscribe`](crate::Sandbox::subscribe)).
    pub fn sink(&self) -> EventSink {
        let actor = self.actor.clone();
        Arc::new(move |event| actor.cast(event.clone()).is_ok())
    }
}

impl<M: Clone + Debug + Send + 'static> Drop for Probe<M> {
    fn drop(&mut self) {
        self.actor.stop(None);
    }
}
