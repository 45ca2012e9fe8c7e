//! NetHelper: the supervisor's child that owns a private network's helper
//! process (`pasta`) for one run, and restarts it when it dies.
//!
//! # Contract
//! - Spawned by the supervisor with the run's agent link, linked to the
//!   supervisor; stopped by it when the run ends. The helper process dies
//!   with the actor (its handle kills it on drop) and with the host process
//!   (see [`crate::host::launcher`]).
//! - [`NetHelperMsg::Attach`] (from the agent link, once the agent exists
//!   and before `Start`): installs the egress rules in the agent's network
//!   namespace and starts `pasta` (both at once) and answers once the
//!   network is up, or
//!   with why not (the agent link reports that as a boot failure at stage
//!   `network`). Answered once; a second attach is refused.
//! - When `pasta` exits while the run goes on, it is started again on the
//!   same namespace (the rules stay there) and the supervisor hears
//!   [`NetEvent::Restarted`]; more than [`RestartBudget::DEFAULT_MAX`]
//!   failures within [`RestartBudget::DEFAULT_WINDOW`] leave the network down
//!   ([`NetEvent::GaveUp`]), the sandbox running.

use std::os::fd::AsFd;

use ractor::{Actor, ActorProcessingErr, ActorRef, DerivedActorRef, RpcReplyPort};

use crate::network::pasta::Pasta;
use crate::network::{egress, Namespaces, NetworkPlan};
use crate::restart::RestartBudget;

/// Messages to a [`NetHelper`].
#[derive(Debug)]
pub enum NetHelperMsg {
    /// Build the network of the agent `agent_pid` (see the module docs).
    Attach {
        /// The agent's host pid (it waits for `Start`).
        agent_pid: u32,
        /// `Err`: why the network could not be built.
        reply: RpcReplyPort<Result<(), String>>,
    },
    /// The helper process of `generation` exited (from its watcher task).
    Exited {
        /// Which start of the helper it was.
        generation: u64,
    },
}

/// What a [`NetHelper`] tells its supervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetEvent {
    /// The helper died and runs again.
    Restarted {
        /// How it ended.
        reason: String,
    },
    /// The helper keeps dying, or cannot be started again: the network is
    /// down for the rest of the run.
    GaveUp {
        /// Why.
        reason: String,
    },
}

/// Its arguments.
pub struct NetHelperArgs {
    /// The network to build.
    pub plan: NetworkPlan,
    /// The supervisor.
    pub events: DerivedActorRef<NetEvent>,
}

/// The actor. See the module docs.
pub struct NetHelper;

/// Its state.
pub struct NetHelperState {
    plan: NetworkPlan,
    events: DerivedActorRef<NetEvent>,
    namespaces: Option<Namespaces>,
    pasta: Option<Pasta>,
    generation: u64,
    budget: RestartBudget,
    watcher: Option<tokio::task::JoinHandle<()>>,
}

impl NetHelperState {
    /// Starts `pasta` and its watcher.
    async fn start(&mut self, myself: &ActorRef<NetHelperMsg>) -> Result<(), String> {
        let namespaces = self
            .namespaces
            .as_ref()
            .ok_or("the network is not attached")?;
        let pasta = Pasta::start(&self.plan, namespaces).await?;
        self.watch(myself, pasta);
        Ok(())
    }

    /// Keeps `pasta` and watches it for an exit.
    fn watch(&mut self, myself: &ActorRef<NetHelperMsg>, pasta: Pasta) {
        self.generation += 1;
        let generation = self.generation;
        let pidfd = pasta.pidfd();
        let me = myself.clone();
        if let Some(old) = self.watcher.take() {
            old.abort();
        }
        self.watcher = Some(tokio::spawn(async move {
            pidfd.exited().await;
            let _ = me.cast(NetHelperMsg::Exited { generation });
        }));
        self.pasta = Some(pasta);
    }

    /// The first build: the rules and `pasta` at once (no command of the
    /// sandbox runs before both are done, so their order does not matter).
    async fn attach(
        &mut self,
        myself: &ActorRef<NetHelperMsg>,
        agent_pid: u32,
    ) -> Result<(), String> {
        let namespaces = Namespaces::open(agent_pid)?;
        let rules = egress::ruleset(&self.plan, &egress::host_prefixes());
        let (applied, started) = tokio::join!(
            egress::apply(namespaces.net.as_fd(), &rules),
            Pasta::start(&self.plan, &namespaces)
        );
        self.namespaces = Some(namespaces);
        // A pasta started beside rules that failed dies with its handle.
        let pasta = started?;
        applied?;
        self.watch(myself, pasta);
        Ok(())
    }
}

impl Actor for NetHelper {
    type Msg = NetHelperMsg;
    type State = NetHelperState;
    type Arguments = NetHelperArgs;

    async fn pre_start(
        &self,
        _: ActorRef<Self::Msg>,
        args: NetHelperArgs,
    ) -> Result<NetHelperState, ActorProcessingErr> {
        Ok(NetHelperState {
            plan: args.plan,
            events: args.events,
            namespaces: None,
            pasta: None,
            generation: 0,
            budget: RestartBudget::default(),
            watcher: None,
        })
    }

    async fn post_stop(
        &self,
        _: ActorRef<Self::Msg>,
        state: &mut NetHelperState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(watcher) = state.watcher.take() {
            watcher.abort();
        }
        // Dropping the handle kills the process.
        state.pasta = None;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut NetHelperState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            NetHelperMsg::Attach { agent_pid, reply } => {
                if state.namespaces.is_some() {
                    let _ = reply.send(Err("the network is already attached".into()));
                    return Ok(());
                }
                let built = state.attach(&myself, agent_pid).await;
                let _ = reply.send(built);
            }
            NetHelperMsg::Exited { generation } => {
                if generation != state.generation || state.pasta.is_none() {
                    return Ok(());
                }
                let reason = format!(
                    "the network helper (pasta, pid {}) exited",
                    state.pasta.as_ref().map_or(0, Pasta::pid)
                );
                // Reap it before starting the next.
                state.pasta = None;
                if !state.budget.allow() {
                    let _ = state.events.send_message(NetEvent::GaveUp {
                        reason: format!("{reason} {} times in a row", state.budget.failures()),
                    });
                    return Ok(());
                }
                let event = match state.start(&myself).await {
                    Ok(()) => NetEvent::Restarted { reason },
                    Err(err) => NetEvent::GaveUp {
                        reason: format!("{reason} and cannot be started again: {err}"),
                    },
                };
                let _ = state.events.send_message(event);
            }
        }
        Ok(())
    }
}
