//! The root actor of a runtime: supervises one [`SandboxSupervisor`] per
//! running sandbox and finds them by name, and the runtime's [`Spawner`].
//!
//! # Contract
//! - Unnamed: several runtimes in one process do not collide (ractor names
//!   are process-global).
//! - [`RootMsg::Launch`] spawns a supervisor linked to the root; a name that
//!   is already running is refused.
//! - A supervisor that ends normally has persisted its outcome; the root only
//!   forgets it. One that fails (panics) left its run open: the root marks the
//!   sandbox Crashed. Its VmProcess died with it, which closed the agent's
//!   socket, so the agent killed the sandbox.
//! - The [`Spawner`] is spawned with the root and restarted by it whenever it
//!   ends while the root runs; supervisors launched after that use the new
//!   one (running sandboxes do not need it anymore).

use std::collections::HashMap;
use std::sync::Arc;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use crate::events::EventSink;
use crate::lifecycle::{HostId, LifecycleStore, SandboxStatus};
use crate::sandbox::{
    BootFailure, SandboxEnded, SandboxSpec, SandboxSupervisor, SupervisorArgs, SupervisorMsg,
};
use crate::spawner::{Spawner, SpawnerArgs, SpawnerMsg};
use std::path::PathBuf;
use tokio::sync::oneshot;

/// Messages of the [`Root`].
pub enum RootMsg {
    /// Start supervising a sandbox.
    Launch {
        /// What to run.
        spec: Box<SandboxSpec>,
        /// Told once the sandbox runs or failed to boot.
        started: oneshot::Sender<Result<u32, BootFailure>>,
        /// Its supervisor, or why none was started.
        reply: RpcReplyPort<Result<ActorRef<SupervisorMsg>, String>>,
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
    /// The `sandvisor-agent` binary.
    pub agent: PathBuf,
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
    agent: PathBuf,
    spawner: ActorRef<SpawnerMsg>,
}

async fn spawn_spawner(
    root: &ActorRef<RootMsg>,
    agent: &std::path::Path,
) -> Result<ActorRef<SpawnerMsg>, ActorProcessingErr> {
    let args = SpawnerArgs {
        agent: agent.to_path_buf(),
    };
    let (spawner, _) = Actor::spawn_linked(None, Spawner, args, root.get_cell()).await?;
    Ok(spawner)
}

impl Actor for Root {
    type Msg = RootMsg;
    type State = RootState;
    type Arguments = RootArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<RootMsg>,
        args: RootArgs,
    ) -> Result<RootState, ActorProcessingErr> {
        let spawner = spawn_spawner(&myself, &args.agent).await?;
        Ok(RootState {
            store: args.store,
            host: args.host,
            bus: args.bus,
            by_name: HashMap::new(),
            by_id: HashMap::new(),
            agent: args.agent,
            spawner,
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
                reply,
            } => {
                let name = spec.name.clone();
                if state.by_name.contains_key(&name) {
                    let _ = reply.send(Err(format!("sandbox {name} is already running")));
                    return Ok(());
                }
                let args = SupervisorArgs {
                    spec: *spec,
                    store: state.store.clone(),
                    host: state.host,
                    started: Some(started),
                    ended: Some(myself.get_derived()),
                    events: state.bus.iter().cloned().collect(),
                    spawner: state.spawner.clone(),
                };
                match Actor::spawn_linked(None, SandboxSupervisor, args, myself.get_cell()).await {
                    Ok((supervisor, _)) => {
                        state.by_id.insert(supervisor.get_id(), name.clone());
                        state.by_name.insert(name, supervisor.clone());
                        let _ = reply.send(Ok(supervisor));
                    }
                    Err(err) => {
                        let _ = reply.send(Err(err.to_string()));
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
        if cell.get_id() == state.spawner.get_id() {
            tracing::warn!(reason = ?failure, "the spawner actor ended; restarting it");
            state.spawner = spawn_spawner(&myself, &state.agent).await?;
            return Ok(());
        }
        let Some(name) = state.by_id.remove(&cell.get_id()) else {
            return Ok(());
        };
        state.by_name.remove(&name);
        if let Some(reason) = failure {
            tracing::error!(sandbox = %name, %reason, "sandbox supervisor failed; marking the sandbox crashed");
            if let Err(err) = state.store.set_status(&name, SandboxStatus::Crashed).await {
                tracing::error!(sandbox = %name, %err, "cannot record the crash");
            }
        }
        Ok(())
    }
}
