//! The root actor of a runtime: supervises one [`SandboxSupervisor`] per
//! running sandbox and finds them by name.
//!
//! # Contract
//! - Unnamed: several runtimes in one process do not collide (ractor names
//!   are process-global).
//! - [`RootMsg::Launch`] spawns a supervisor linked to the root; a name that
//!   is already running is refused.
//! - A supervisor that ends normally has persisted its outcome; the root only
//!   forgets it. One that fails (panics) left its run open: the root marks the
//!   sandbox Crashed. Its AgentLink died with it, which closed the agent's
//!   socket, so the agent killed the sandbox.
//! - An end the store refused (a full disk) comes with
//!   [`SandboxEnded::unrecorded`]; the root keeps it and writes it again,
//!   first after 100 ms, then twice as long each time up to 2 s, until the
//!   store takes it — so once space returns the rows are right without a
//!   restart. The same holds for the Crashed status of a failed supervisor.
//! - Every supervisor gets the runtime's [`Backend`] (the namespace backend
//!   unless the runtime was given another), through which its agent starts.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use crate::backend::Backend;
use crate::sandbox::events::EventSink;
use crate::sandbox::lifecycle::{HostId, LifecycleStore, RunEnd, SandboxStatus, TerminationReason};
use crate::sandbox::{
    BootFailure, Readoption, SandboxEnded, SandboxSpec, SandboxSupervisor, SupervisorArgs,
    SupervisorMsg, UnrecordedEnd,
};

/// The first wait before an unrecorded end is written again; it doubles
/// up to [`LONGEST_RECORD_PAUSE`].
const FIRST_RECORD_PAUSE: Duration = Duration::from_millis(100);
const LONGEST_RECORD_PAUSE: Duration = Duration::from_secs(2);
use tokio::sync::oneshot;

/// Why [`RootMsg::Launch`] started no supervisor.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LaunchRefused {
    /// A sandbox of that name runs in this runtime already.
    #[error("sandbox {0} is already running")]
    AlreadyRunning(String),
    /// The supervisor actor could not be spawned.
    #[error("{0}")]
    Spawn(String),
}

/// Messages of the [`Root`].
pub enum RootMsg {
    /// Start supervising a sandbox.
    Launch {
        /// What to run.
        spec: Box<SandboxSpec>,
        /// Told once the sandbox runs or failed to boot.
        started: oneshot::Sender<Result<u32, BootFailure>>,
        /// A running sandbox to take over instead of starting one.
        adopt: Option<Box<Readoption>>,
        /// Its supervisor, or why none was started.
        reply: RpcReplyPort<Result<ActorRef<SupervisorMsg>, LaunchRefused>>,
    },
    /// The supervisor of a running sandbox.
    Lookup {
        /// The sandbox.
        name: String,
        /// Its supervisor, if it runs in this runtime.
        reply: RpcReplyPort<Option<ActorRef<SupervisorMsg>>>,
    },
    /// The names of every sandbox running in this runtime, sorted.
    Hosted(RpcReplyPort<Vec<String>>),
    /// A supervisor's run has ended.
    Ended(SandboxEnded),
    /// Write the ends the store refused so far (the root's own timer).
    RecordPending,
    /// The runs whose ends the root keeps (name, run id), oldest first.
    Unrecorded(RpcReplyPort<Vec<(String, i64)>>),
}

impl From<SandboxEnded> for RootMsg {
    fn from(ended: SandboxEnded) -> Self {
        Self::Ended(ended)
    }
}

impl TryFrom<RootMsg> for SandboxEnded {
    type Error = ();
    fn try_from(msg: RootMsg) -> Result<Self, ()> {
        match msg {
            RootMsg::Ended(ended) => Ok(ended),
            _ => Err(()),
        }
    }
}

/// Arguments to spawn a [`Root`].
pub struct RootArgs {
    /// Where supervisors persist.
    pub store: Arc<dyn LifecycleStore>,
    /// This host process.
    pub host: HostId,
    /// Gets every event of every sandbox this root supervises.
    pub bus: Option<EventSink>,
    /// Starts every sandbox's agent.
    pub backend: Arc<dyn Backend>,
}

/// The root actor. See the module docs.
pub struct Root;

/// Its state.
pub struct RootState {
    store: Arc<dyn LifecycleStore>,
    host: HostId,
    bus: Option<EventSink>,
    by_name: HashMap<String, ActorRef<SupervisorMsg>>,
    by_id: HashMap<ActorId, String>,
    backend: Arc<dyn Backend>,
    /// Ends not yet recorded, oldest first, and the pause before the next
    /// try (`None`: no try is scheduled).
    unrecorded: Vec<(String, UnrecordedEnd)>,
    record_pause: Option<Duration>,
}

impl RootState {
    /// Keeps `end` of `name` to record later, and schedules a try.
    fn keep_unrecorded(&mut self, myself: &ActorRef<RootMsg>, name: String, end: UnrecordedEnd) {
        self.unrecorded.push((name, end));
        if self.record_pause.is_none() {
            self.record_pause = Some(FIRST_RECORD_PAUSE);
            myself.send_after(FIRST_RECORD_PAUSE, || RootMsg::RecordPending);
        }
    }

    /// Tries every kept end, in order; schedules the next try if some are
    /// still refused.
    async fn record_pending(&mut self, myself: &ActorRef<RootMsg>) {
        let mut still = Vec::new();
        for (name, end) in std::mem::take(&mut self.unrecorded) {
            match end.record(self.store.as_ref(), &name).await {
                Ok(()) => tracing::info!(sandbox = %name, "the end of its run is recorded now"),
                Err(err) => {
                    // The first refusal was a WARN (runtime.log and tracing).
                    tracing::debug!(sandbox = %name, %err, "the end of its run is still not recorded");
                    still.push((name, end));
                }
            }
        }
        self.unrecorded = still;
        self.record_pause = match (self.unrecorded.is_empty(), self.record_pause) {
            (true, _) => None,
            (false, pause) => {
                let pause = pause
                    .map_or(FIRST_RECORD_PAUSE, |p| p * 2)
                    .min(LONGEST_RECORD_PAUSE);
                myself.send_after(pause, || RootMsg::RecordPending);
                Some(pause)
            }
        };
    }
}

impl Actor for Root {
    type Msg = RootMsg;
    type State = RootState;
    type Arguments = RootArgs;

    async fn pre_start(
        &self,
        _: ActorRef<RootMsg>,
        args: RootArgs,
    ) -> Result<RootState, ActorProcessingErr> {
        Ok(RootState {
            store: args.store,
            host: args.host,
            bus: args.bus,
            by_name: HashMap::new(),
            by_id: HashMap::new(),
            backend: args.backend,
            unrecorded: Vec::new(),
            record_pause: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<RootMsg>,
        msg: RootMsg,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RootMsg::Launch {
                spec,
                started,
                adopt,
                reply,
            } => {
                let name = spec.name.clone();
                if state.by_name.contains_key(&name) {
                    let _ = reply.send(Err(LaunchRefused::AlreadyRunning(name)));
                    return Ok(());
                }
                let args = SupervisorArgs {
                    spec: *spec,
                    store: state.store.clone(),
                    host: state.host,
                    started: Some(started),
                    adopt: adopt.map(|adopt| *adopt),
                    ended: Some(myself.get_derived()),
                    events: state.bus.iter().cloned().collect(),
                    backend: state.backend.clone(),
                };
                match Actor::spawn_linked(None, SandboxSupervisor, args, myself.get_cell()).await {
                    Ok((supervisor, _)) => {
                        state.by_id.insert(supervisor.get_id(), name.clone());
                        state.by_name.insert(name, supervisor.clone());
                        let _ = reply.send(Ok(supervisor));
                    }
                    Err(err) => {
                        let _ = reply.send(Err(LaunchRefused::Spawn(err.to_string())));
                    }
                }
            }
            RootMsg::Lookup { name, reply } => {
                let _ = reply.send(state.by_name.get(&name).cloned());
            }
            RootMsg::Hosted(reply) => {
                let mut names: Vec<String> = state.by_name.keys().cloned().collect();
                names.sort();
                let _ = reply.send(names);
            }
            RootMsg::Ended(ended) => {
                if state.by_id.remove(&ended.supervisor).is_some() {
                    state.by_name.remove(&ended.name);
                }
                if let Some(end) = ended.unrecorded {
                    state.keep_unrecorded(&myself, ended.name, end);
                }
            }
            RootMsg::RecordPending => state.record_pending(&myself).await,
            RootMsg::Unrecorded(reply) => {
                let runs = state
                    .unrecorded
                    .iter()
                    .filter_map(|(name, end)| Some((name.clone(), end.run_id?)))
                    .collect();
                let _ = reply.send(runs);
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _: ActorRef<RootMsg>,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        // One last try: what is still refused is settled as Crashed by the
        // next runtime's reconciliation, not as it really ended.
        for (name, end) in std::mem::take(&mut state.unrecorded) {
            if let Err(err) = end.record(state.store.as_ref(), &name).await {
                tracing::warn!(sandbox = %name, %err, ?end, "the runtime stops with the end of this run unrecorded");
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<RootMsg>,
        event: SupervisionEvent,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, failure) = match event {
            SupervisionEvent::ActorTerminated(cell, _, _) => (cell, None),
            SupervisionEvent::ActorFailed(cell, err) => (cell, Some(err.to_string())),
            _ => return Ok(()),
        };
        let Some(name) = state.by_id.remove(&cell.get_id()) else {
            return Ok(());
        };
        state.by_name.remove(&name);
        if let Some(reason) = failure {
            tracing::error!(sandbox = %name, %reason, "sandbox supervisor failed; marking the sandbox crashed");
            let end = UnrecordedEnd {
                run_id: None,
                end: RunEnd {
                    status: SandboxStatus::Crashed,
                    exit_code: None,
                    signal: None,
                    reason: TerminationReason::InternalError,
                    at: Utc::now(),
                },
            };
            if let Err(err) = end.record(state.store.as_ref(), &name).await {
                tracing::error!(sandbox = %name, %err, "cannot record the crash yet; retrying");
                state.keep_unrecorded(&myself, name, end);
            }
        }
        Ok(())
    }
}
