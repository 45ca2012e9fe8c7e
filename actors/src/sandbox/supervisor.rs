//! The sandbox supervisor: one actor per running sandbox, owning its
//! [`AgentLink`] and its [`RelayTap`].
//!
//! # Lifecycle as messages
//! ```text
//! spawn ─ Starting ─ Vm(Hello) ─ Vm(Ready) ─ Running ─ Vm(Exited) ─ Stopped
//!                └─ Vm(BootFailed) ─ Stopped (boot-error.json; no run row)
//! Running ─ Stop{timeout} ─ Draining ─ stop signal to the whole tree
//!            ├─ Vm(Exited) before the timer ─ Stopped (ShutdownRequested)
//!            └─ Escalate (send_after timeout) ─ AgentLink Kill (the agent SIGKILLs every process)
//!                 ─ Vm(Exited) ─ Stopped (Killed, signal 9)
//!                 └─ KillTimedOut ─ AgentLink KillFromHost (SIGKILL to PID 1 from the host)
//!                      ─ Vm(Lost) ─ Stopped (Killed, signal 9)
//!                      └─ KillTimedOut again ─ Crashed (InternalError)
//! Running ─ Kill ─ Draining ─ AgentLink Kill ─ … as above
//! Vm(Lost) ─ Crashed (InternalError)
//! ```
//! Which message does what is decided by the [phase machine](super::phase);
//! this actor turns messages into its inputs and executes the actions it
//! returns, in order, before it handles the next message.
//!
//! The runtime records `Starting` before it spawns the supervisor. Every
//! transition after that is persisted through the [`LifecycleStore`] before
//! the supervisor handles its next message; waiters are answered after the run
//! row is closed, so what they observe is durable.
//!
//! # Children
//! - The RelayTap is restarted when it fails or stops (at most 5 times in
//!   10 s; then the sandbox is killed and ends Crashed); the new tap is
//!   published on a `watch` channel the agent link's capture task follows, so
//!   no output is lost or duplicated. Each restart is noted in `runtime.log`.
//! - The AgentLink is not restarted: if it fails, the sandbox's socket closes,
//!   the agent kills the sandbox, and the run ends Crashed (InternalError).
//!
//! Once the run has ended, the supervisor writes the `--- sandbox stopped … ---`
//! marker, answers waiters and stops; its children stop with it.
//!
//! # Restarts, limits, deadlines
//! - Under a [restart policy](super::policy) the supervisor outlives the
//!   run: it records the end, stops the run's agent link and its timers
//!   (every timer of a run is aborted with it, so none reaches the next
//!   run), records `Starting` with the pending restart, publishes
//!   `RestartScheduled` and arms `RestartDue` after the backoff delay; then
//!   it spawns a new agent link (a new run row once Ready). The relay tap
//!   and the subscribers carry over; the events of the new run are numbered
//!   from 1 again and carry its run id once its row exists. A live limits
//!   update (`UpdateLimits`) also changes the limits later runs start with.
//!   Meanwhile its status
//!   is `Starting`, exec sessions are refused, and a `Stop`, `Kill` or
//!   `Drain` calls the restart off: the last run's status comes back and the
//!   supervisor ends as without a policy. Waiters are answered only when no
//!   restart follows.
//! - `idle_timeout`: `IdleCheck` timers (every quarter of the timeout) look
//!   at the agent link's output counter and the exec sessions; a quarter of
//!   the timeout is the precision. `max_lifetime`: one `LifetimeExceeded`
//!   timer from Ready. Either stops the run with its termination reason.
//! - Health checks (`supervisor/health.rs`) run as unlogged exec sessions on a run timer;
//!   turning unhealthy may stop the run (reason `Unhealthy`), and with
//!   `on_unhealthy: Restart` the restart policy restarts it whatever it is.
//! - An exec session with a `timeout` gets a `SessionDeadline` timer; if the
//!   session still runs then, `SessionTimedOut` is published and the agent
//!   link SIGKILLs its process group and reports its exit as timed out.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tokio::sync::{oneshot, watch};

use super::events::{EventSink, Publisher, SandboxEvent};
use super::health::HealthTracker;
use super::lifecycle::{HostId, LifecycleStore, PendingRestart, SandboxStatus, TerminationReason};
use super::metrics::{Sampler, SandboxMetrics};
use super::net_helper::{NetEvent, NetHelper, NetHelperArgs, NetHelperMsg};
use super::phase::{self, Context, Input, Phase};
use super::policy::{RestartEnd, RestartTracker};
use super::{
    AgentLink, AgentLinkArgs, AgentLinkMsg, BootFailure, ExecRefused, FreezeRefused,
    MetricsUnavailable, Readoption, SandboxEnded, SandboxSpec, SessionInput, StopOutcome,
    SupervisorMsg, UpdateRefused, VmEvent,
};
use crate::backend::Backend;
use crate::host::cgroup::LimitsUpdate;
use crate::log::tap::{DiskFull, RelayTap, RelayTapMsg, TapArgs, TapEvent};
use crate::restart::RestartBudget;

mod actions;
mod health;

/// Arguments to spawn a [`SandboxSupervisor`].
pub struct SupervisorArgs {
    /// What to run.
    pub spec: SandboxSpec,
    /// Where transitions are persisted.
    pub store: Arc<dyn LifecycleStore>,
    /// The host process that owns the run.
    pub host: HostId,
    /// Told once the sandbox runs (the main command's pid inside it) or failed
    /// to boot. Given at spawn, so a run that ends at once cannot race it.
    pub started: Option<oneshot::Sender<Result<u32, BootFailure>>>,
    /// A running sandbox whose host died, to take over instead of starting
    /// one: its first run is that one.
    pub adopt: Option<Readoption>,
    /// Told when the run has ended (the parent forgets the supervisor).
    pub ended: Option<ractor::DerivedActorRef<SandboxEnded>>,
    /// Subscribers from the start (the runtime's event bus).
    pub events: Vec<EventSink>,
    /// Starts the sandbox's agent.
    pub backend: Arc<dyn Backend>,
}

/// The supervisor actor. See the module docs.
pub struct SandboxSupervisor;

/// Its state: the run's [`Phase`] and what the actions need.
pub struct SupervisorState {
    spec: SandboxSpec,
    store: Arc<dyn LifecycleStore>,
    host: HostId,
    phase: Phase,
    boot_timeout: Duration,
    tap: ActorRef<RelayTapMsg>,
    tap_tx: watch::Sender<ActorRef<RelayTapMsg>>,
    tap_budget: RestartBudget,
    generation: u64,
    link: Option<ActorRef<AgentLinkMsg>>,
    /// The current run's network helper (private networks).
    network: Option<ActorRef<NetHelperMsg>>,
    init_pid: Option<u32>,
    run_id: Option<i64>,
    started: Option<oneshot::Sender<Result<u32, BootFailure>>>,
    ended: Option<ractor::DerivedActorRef<SandboxEnded>>,
    events: Publisher,
    /// Exec sessions whose processes run.
    sessions: HashSet<u64>,
    next_session: u64,
    sampler: Option<Sampler>,
    metrics: Option<SandboxMetrics>,
    metrics_timer: Option<ractor::concurrency::JoinHandle<()>>,
    stop_waiters: Vec<RpcReplyPort<StopOutcome>>,
    /// Starts each run's agent.
    backend: Arc<dyn Backend>,
    /// Output chunks the agent links have read.
    output_count: Arc<AtomicU64>,
    /// Timers of the current run, aborted when it ends.
    run_timers: Vec<Timer>,
    /// When the current run became Ready.
    running_since: Option<Instant>,
    /// The output count and time of the last activity seen (idle timeout).
    idle: (u64, Instant),
    /// What asked for the current run's end (a user, a limit).
    stopped_by: Option<RestartEnd>,
    restarts: RestartTracker,
    /// The restart waiting for its delay, and its timer.
    pending_restart: Option<(PendingRestart, Timer)>,
    /// The current run's health.
    health: HealthTracker,
    /// The number of the health check that runs, if one does.
    health_check: Option<u64>,
    /// Health checks started (by every run).
    health_checks: u64,
    /// The current run ends because it turned unhealthy, to be restarted.
    unhealthy_restart: bool,
    /// The run taken over from a dead host, until its agent answers: its
    /// row id and start time.
    adopted: Option<(i64, chrono::DateTime<Utc>)>,
}

/// A `send_after` timer of the supervisor.
type Timer = ractor::concurrency::JoinHandle<Result<(), ractor::MessagingErr<SupervisorMsg>>>;

impl Actor for SandboxSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SupervisorArgs,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        let spec = args.spec;
        // The runtime recorded Starting before spawning this supervisor; the
        // tap creates the log directory.
        let tap = spawn_tap(&myself, &spec, 0).await?;
        let (tap_tx, _) = watch::channel(tap.clone());
        let boot_timeout = spec
            .vm
            .boot_timeout
            .unwrap_or_else(|| args.backend.boot_timeout());
        let output_count = Arc::new(AtomicU64::new(0));
        let (adopted_agent, adopted) = match args.adopt {
            Some(adopt) => (Some(adopt.agent), Some((adopt.run_id, adopt.started_at))),
            None => (None, None),
        };
        let children = spawn_link(
            &myself,
            spec.vm.clone(),
            &tap_tx,
            &args.backend,
            &output_count,
            adopted_agent,
            &spec.tap,
        )
        .await?;
        let boot_timer = myself.send_after(boot_timeout, || SupervisorMsg::BootTimedOut);
        Ok(SupervisorState {
            spec,
            store: args.store,
            host: args.host,
            phase: Phase::Starting { stop: None },
            boot_timeout,
            tap,
            tap_tx,
            tap_budget: RestartBudget::default(),
            generation: 0,
            link: Some(children.link),
            network: children.network,
            init_pid: None,
            run_id: None,
            started: args.started,
            ended: args.ended,
            events: Publisher::new(args.events),
            sessions: HashSet::new(),
            next_session: 1,
            sampler: None,
            metrics: None,
            metrics_timer: None,
            stop_waiters: Vec::new(),
            backend: args.backend,
            output_count,
            run_timers: vec![boot_timer],
            running_since: None,
            idle: (0, Instant::now()),
            stopped_by: None,
            restarts: RestartTracker::default(),
            pending_restart: None,
            health: HealthTracker::default(),
            health_check: None,
            health_checks: 0,
            unhealthy_restart: false,
            adopted,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let input = match msg {
            SupervisorMsg::Status(reply) => {
                let _ = reply.send(state.status());
                return Ok(());
            }
            SupervisorMsg::WaitStopped(reply) => {
                match state.outcome() {
                    Some(outcome) => {
                        let _ = reply.send(outcome);
                    }
                    None => {
                        // Waiters that gave up (a control-socket wait ends
                        // its window and asks again) are not kept: under a
                        // restart policy the run may never end.
                        state.stop_waiters.retain(|waiter| !waiter.is_closed());
                        state.stop_waiters.push(reply);
                    }
                }
                return Ok(());
            }
            SupervisorMsg::Pause(reply) => return state.freeze(&myself, true, reply).await,
            SupervisorMsg::Resume(reply) => return state.freeze(&myself, false, reply).await,
            SupervisorMsg::Abandon(why) => return state.abandon(&myself, &why).await,
            SupervisorMsg::Stop { .. } | SupervisorMsg::Kill | SupervisorMsg::Drain { .. }
                if state.pending_restart.is_some() =>
            {
                return state.call_off_restart(&myself).await;
            }
            SupervisorMsg::Stop { timeout } => {
                state.stopped_by.get_or_insert(RestartEnd::StopRequested);
                Input::Stop(timeout)
            }
            SupervisorMsg::Kill => {
                state.stopped_by.get_or_insert(RestartEnd::StopRequested);
                Input::Kill
            }
            SupervisorMsg::Drain { timeout } => {
                state.stopped_by.get_or_insert(RestartEnd::StopRequested);
                Input::Drain(timeout)
            }
            SupervisorMsg::RestartDue { attempt } => {
                return state.restart_due(&myself, attempt).await;
            }
            SupervisorMsg::IdleCheck => match state.idle_check(&myself) {
                Some(input) => input,
                None => return Ok(()),
            },
            SupervisorMsg::LifetimeExceeded => {
                if !matches!(state.phase, Phase::Running { .. }) {
                    return Ok(());
                }
                state.stopped_by.get_or_insert(RestartEnd::LifetimeExceeded);
                Input::Expired(TerminationReason::LifetimeExceeded)
            }
            SupervisorMsg::HealthDue => return state.health_due(&myself),
            SupervisorMsg::HealthDeadline { check, session } => {
                return state.health_deadline(check, session)
            }
            SupervisorMsg::HealthChecked { check, result } => {
                match state.health_checked(&myself, check, result).await {
                    Some(input) => input,
                    None => return Ok(()),
                }
            }
            SupervisorMsg::SessionDeadline { session, timeout } => {
                if state.sessions.contains(&session) {
                    state.publish(SandboxEvent::SessionTimedOut {
                        id: session,
                        timeout,
                    });
                    state.note(
                        false,
                        &format!("exec session {session} timed out after {timeout:?}; killing its process group"),
                    );
                    state.to_link(AgentLinkMsg::Session {
                        session,
                        input: SessionInput::Expire,
                    })?;
                }
                return Ok(());
            }
            SupervisorMsg::Escalate { epoch } => Input::Escalate(epoch),
            SupervisorMsg::KillTimedOut => Input::KillTimedOut,
            SupervisorMsg::BootTimedOut => Input::BootTimedOut,
            SupervisorMsg::DrainTimedOut => Input::DrainTimedOut,
            SupervisorMsg::Vm(event) => match state.on_vm(event) {
                Some(input) => input,
                None => return Ok(()),
            },
            SupervisorMsg::Tap(TapEvent::Rotated { generation }) => {
                state.generation = generation;
                state.publish(SandboxEvent::Rotated { generation });
                return Ok(());
            }
            SupervisorMsg::Subscribe(sink) => {
                state.events.subscribe(sink);
                return Ok(());
            }
            SupervisorMsg::Net(event) => {
                match event {
                    NetEvent::Restarted { reason } => {
                        state.note(true, &format!("{reason}; restarted it"));
                        state.publish(SandboxEvent::ChildRestarted {
                            actor: "network_helper",
                            reason,
                        });
                    }
                    NetEvent::GaveUp { reason } => {
                        state.note(true, &format!("{reason}; the sandbox's network is down"));
                    }
                }
                return Ok(());
            }
            SupervisorMsg::UpdateLimits { update, reply } => {
                state.update_limits(&myself, update, reply);
                return Ok(());
            }
            SupervisorMsg::LimitsWritten {
                update,
                result,
                reply,
            } => {
                if result.is_ok() {
                    // Runs a restart policy starts later keep them.
                    state.spec.vm.limits = update.apply_to(state.spec.vm.limits);
                }
                let _ = reply.send(result);
                return Ok(());
            }
            SupervisorMsg::Exec {
                mut spec,
                timeout,
                output,
                reply,
            } => {
                // A file operation is no user session: it runs whenever the
                // agent does, writes nothing to exec.log, publishes no
                // session events and does not hold a drain.
                let file_op = spec.run.files.is_some();
                let refused = match state.phase.status() {
                    _ if state.phase.is_ended() => Some(ExecRefused::NotRunning),
                    SandboxStatus::Running => None,
                    SandboxStatus::Paused | SandboxStatus::Draining if file_op => None,
                    SandboxStatus::Draining => Some(ExecRefused::Draining),
                    _ => Some(ExecRefused::NotRunning),
                };
                match (refused, state.link.clone()) {
                    (None, Some(link)) if file_op => {
                        state.next_session += 1;
                        spec.session = state.next_session;
                        link.cast(AgentLinkMsg::Exec {
                            spec,
                            logged: false,
                            output,
                            reply,
                        })?;
                    }
                    (None, Some(link)) => {
                        state.next_session += 1;
                        spec.session = state.next_session;
                        // Counted from now: a drain must wait for it too.
                        state.sessions.insert(spec.session);
                        if let Some(timeout) = timeout {
                            let session = spec.session;
                            state.arm_run_timer(&myself, timeout, move || {
                                SupervisorMsg::SessionDeadline { session, timeout }
                            });
                        }
                        link.cast(AgentLinkMsg::Exec {
                            spec,
                            logged: true,
                            output,
                            reply,
                        })?;
                    }
                    (refused, _) => {
                        let _ = reply.send(Err(refused.unwrap_or(ExecRefused::NotRunning)));
                    }
                }
                return Ok(());
            }
            SupervisorMsg::Session { session, input } => {
                if let Some(link) = &state.link {
                    link.cast(AgentLinkMsg::Session { session, input })?;
                }
                return Ok(());
            }
            SupervisorMsg::SampleMetrics => {
                if let Some(metrics) = state.sample() {
                    state.publish(SandboxEvent::MetricsSampled(metrics));
                }
                return Ok(());
            }
            SupervisorMsg::Metrics(reply) => {
                let answer = if state.spec.metrics_interval.is_none() {
                    Err(MetricsUnavailable::Disabled)
                } else {
                    state
                        .metrics
                        .or_else(|| state.sample())
                        .ok_or(MetricsUnavailable::NotRunning)
                };
                let _ = reply.send(answer);
                return Ok(());
            }
        };
        state.apply(&myself, input).await
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, reason, failed, disk_full) = match event {
            SupervisionEvent::ActorFailed(cell, err) => {
                let disk_full = err.downcast_ref::<DiskFull>().is_some();
                (cell, err.to_string(), true, disk_full)
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => (
                cell,
                reason.unwrap_or_else(|| "stopped".into()),
                false,
                false,
            ),
            _ => return Ok(()),
        };
        // Between runs (a restart pending) the tap still matters: the next
        // run writes through it.
        if state.phase.is_ended() && state.pending_restart.is_none() {
            return Ok(());
        }
        if cell.get_id() == state.tap.get_id() {
            // A tap that waited out its whole patience for disk space would
            // only wait again: the run cannot keep its output.
            if disk_full {
                return state
                    .abandon(
                        &myself,
                        &format!("exec.log cannot be written ({reason}); killing the sandbox"),
                    )
                    .await;
            }
            // Only failures spend the budget: a tap stopped or killed from
            // outside is not crash-looping.
            if failed && !state.tap_budget.allow() {
                return state
                    .abandon(
                        &myself,
                        &format!("relay tap keeps failing ({reason}); killing the sandbox"),
                    )
                    .await;
            }
            state.note(true, &format!("relay tap ended ({reason}); restarting it"));
            state.publish(SandboxEvent::ChildRestarted {
                actor: "relay_tap",
                reason: reason.clone(),
            });
            let tap = spawn_tap(&myself, &state.spec, state.generation).await?;
            state.tap = tap.clone();
            // The capture task waits on this to resume writing.
            state.tap_tx.send_replace(tap);
        } else if state
            .network
            .as_ref()
            .is_some_and(|network| network.get_id() == cell.get_id())
        {
            // Its process died with it (its handle kills it on drop).
            state.network = None;
            state.note(
                true,
                &format!("network helper actor ended ({reason}); the sandbox's network is down"),
            );
        } else if state
            .link
            .as_ref()
            .is_some_and(|link| link.get_id() == cell.get_id())
        {
            state.link = None;
            state.note(
                true,
                &format!("agent link actor ended ({reason}); the sandbox is lost"),
            );
            state.apply(&myself, Input::Abandon).await?;
        }
        Ok(())
    }
}

/// Spawns the agent link of one run, linked to the supervisor.
async fn spawn_link(
    myself: &ActorRef<SupervisorMsg>,
    vm: super::VmSpec,
    tap: &watch::Sender<ActorRef<RelayTapMsg>>,
    backend: &Arc<dyn Backend>,
    output_count: &Arc<AtomicU64>,
    adopted: Option<crate::backend::Started>,
    log: &crate::log::tap::TapConfig,
) -> Result<RunChildren, ActorProcessingErr> {
    let network = match &vm.network {
        Some(plan) => {
            let args = NetHelperArgs {
                plan: plan.clone(),
                events: myself.get_derived(),
            };
            let (helper, _) = Actor::spawn_linked(None, NetHelper, args, myself.get_cell()).await?;
            Some(helper)
        }
        None => None,
    };
    let link_args = AgentLinkArgs {
        spec: vm,
        tap: tap.subscribe(),
        events: myself.get_derived(),
        backend: backend.clone(),
        output_count: output_count.clone(),
        network: network.clone(),
        adopted,
        log: (log.dir.clone(), log.keep),
    };
    let (link, _) = Actor::spawn_linked(None, AgentLink, link_args, myself.get_cell()).await?;
    Ok(RunChildren { link, network })
}

/// The children of one run.
pub(super) struct RunChildren {
    /// The agent link.
    pub link: ActorRef<AgentLinkMsg>,
    /// The private network's helper, if any.
    pub network: Option<ActorRef<NetHelperMsg>>,
}

async fn spawn_tap(
    myself: &ActorRef<SupervisorMsg>,
    spec: &SandboxSpec,
    generation: u64,
) -> Result<ActorRef<RelayTapMsg>, ActorProcessingErr> {
    let args = TapArgs {
        config: spec.tap.clone(),
        generation,
        events: Some(myself.get_derived()),
    };
    let (tap, _) = Actor::spawn_linked(None, RelayTap, args, myself.get_cell()).await?;
    Ok(tap)
}

impl SupervisorState {
    fn context(&self) -> Context {
        Context {
            stop_signal: self.spec.stop_signal,
            stop_timeout: self.spec.stop_timeout,
            kill_timeout: self.spec.kill_timeout,
            boot_timeout: self.boot_timeout,
            vm: self.spec.vm.plan.vm.is_some(),
            sessions: self.sessions.len(),
            now: Instant::now(),
            at: Utc::now(),
        }
    }

    /// Feeds `input` to the phase machine and executes what it says.
    async fn apply(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        input: Input,
    ) -> Result<(), ActorProcessingErr> {
        let (phase, actions) = phase::step(&self.phase, input, &self.context());
        self.phase = phase;
        self.execute(myself, actions).await
    }

    /// Ends a run that cannot go on (its output or its record cannot be
    /// written): notes `why` in `runtime.log`, SIGKILLs PID 1 from the host
    /// and ends Crashed.
    async fn abandon(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        why: &str,
    ) -> Result<(), ActorProcessingErr> {
        self.note(true, why);
        if let Some(link) = &self.link {
            let _ = link.cast(AgentLinkMsg::KillFromHost);
        }
        self.apply(myself, Input::Abandon).await
    }

    /// Pauses (`true`) or resumes every process of the sandbox and answers
    /// `reply`.
    async fn freeze(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        pause: bool,
        reply: RpcReplyPort<Result<(), FreezeRefused>>,
    ) -> Result<(), ActorProcessingErr> {
        match phase::freeze(&self.phase, pause) {
            Ok((phase, actions)) => {
                self.phase = phase;
                self.execute(myself, actions).await?;
                let _ = reply.send(Ok(()));
            }
            Err(refused) => {
                let _ = reply.send(Err(refused));
            }
        }
        Ok(())
    }

    /// Changes the current run's cgroup through its agent link, then the
    /// limits later runs start with, so that a failed write changes neither.
    /// Hands a live limits update to the run's agent link, if a run is live,
    /// and is told the written result as [`SupervisorMsg::LimitsWritten`]:
    /// the supervisor never waits for the kernel, and it learns the real
    /// outcome however long the write takes (no timeout that could answer
    /// "failed" for a write that then lands).
    fn update_limits(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        update: LimitsUpdate,
        reply: RpcReplyPort<Result<(), UpdateRefused>>,
    ) {
        let live = self.pending_restart.is_none()
            && !self.phase.is_ended()
            && matches!(
                self.phase.status(),
                SandboxStatus::Running | SandboxStatus::Paused | SandboxStatus::Draining
            );
        let Some(link) = self.link.clone().filter(|_| live) else {
            let _ = reply.send(Err(UpdateRefused::NotRunning));
            return;
        };
        let (written, result) = oneshot::channel();
        if link
            .cast(AgentLinkMsg::UpdateLimits {
                update,
                reply: written.into(),
            })
            .is_err()
        {
            let _ = reply.send(Err(UpdateRefused::NotRunning));
            return;
        }
        let myself = myself.clone();
        tokio::spawn(async move {
            // The link ended meanwhile: so did the run.
            let result = result.await.unwrap_or(Err(UpdateRefused::NotRunning));
            // A supervisor that is gone has no spec to keep them in.
            let _ = myself.cast(SupervisorMsg::LimitsWritten {
                update,
                result,
                reply,
            });
        });
    }

    /// The status as the store has it: `Starting` while a restart waits.
    fn status(&self) -> SandboxStatus {
        if self.pending_restart.is_some() {
            SandboxStatus::Starting
        } else {
            self.phase.status()
        }
    }

    /// How the run ended, once it has and no restart follows.
    fn outcome(&self) -> Option<StopOutcome> {
        let Phase::Ended(ending) = &self.phase else {
            return None;
        };
        if self.pending_restart.is_some() {
            return None;
        }
        Some(StopOutcome {
            name: self.spec.name.clone(),
            status: ending.status,
            exit_code: ending.exit_code,
            signal: ending.signal,
            reason: ending.reason,
            observed_at: ending.at,
        })
    }

    /// Samples the tree while the sandbox runs.
    fn sample(&mut self) -> Option<SandboxMetrics> {
        if self.phase.is_ended() {
            return None;
        }
        let metrics = self.sampler.as_mut()?.sample().ok()?;
        self.metrics = Some(metrics);
        Some(metrics)
    }

    fn publish(&mut self, event: SandboxEvent) {
        self.events.publish(&self.spec.name, event);
    }

    /// `IdleCheck`: the input that stops an idle run, or `None` (and the
    /// next check armed) while it is not idle for `idle_timeout`.
    fn idle_check(&mut self, myself: &ActorRef<SupervisorMsg>) -> Option<Input> {
        let limit = self.spec.idle_timeout?;
        if !matches!(self.phase, Phase::Running { .. }) {
            // Ending, or between runs: the next run arms its own checks.
            return None;
        }
        let now = Instant::now();
        let count = self.output_count.load(Ordering::Relaxed);
        if count != self.idle.0 || !self.sessions.is_empty() {
            self.idle = (count, now);
        }
        let idle_for = now.saturating_duration_since(self.idle.1);
        if idle_for >= limit {
            self.stopped_by.get_or_insert(RestartEnd::IdleTimeout);
            return Some(Input::Expired(TerminationReason::IdleTimeout));
        }
        let next = (limit / 4)
            .min(limit - idle_for)
            .max(Duration::from_millis(1));
        self.arm_run_timer(myself, next, || SupervisorMsg::IdleCheck);
        None
    }

    /// Handles what needs no phase transition; returns the input for the
    /// rest.
    fn on_vm(&mut self, event: VmEvent) -> Option<Input> {
        match event {
            VmEvent::Hello { init_pid } => {
                self.init_pid = Some(init_pid);
                None
            }
            // Only user sessions are counted and published: a health
            // check's session is not in `sessions`.
            VmEvent::SessionStarted { id } => {
                if self.sessions.contains(&id) {
                    self.publish(SandboxEvent::SessionStarted { id });
                }
                None
            }
            VmEvent::SessionFailed { id } => {
                if !self.sessions.remove(&id) {
                    return None;
                }
                self.idle.1 = Instant::now();
                Some(Input::SessionEnded)
            }
            VmEvent::SessionExited { id, code, signal } => {
                if !self.sessions.remove(&id) {
                    return None;
                }
                // A session's end is activity: the idle time starts now.
                self.idle.1 = Instant::now();
                self.publish(SandboxEvent::SessionExited { id, code, signal });
                Some(Input::SessionEnded)
            }
            VmEvent::Ready { pid } => Some(Input::Ready(pid)),
            VmEvent::Adopted { pid, last_session } => {
                // New sessions are numbered after the dead host's (an
                // absurd number from the agent must not wrap the count).
                self.next_session = self
                    .next_session
                    .max(last_session.min(super::capture::LAST_ADOPTED_SESSION));
                Some(Input::Ready(pid))
            }
            VmEvent::BootFailed {
                stage,
                errno,
                message,
                exec_failed,
            } => Some(Input::BootFailed(BootFailure {
                stage,
                errno,
                message,
                exec_failed,
            })),
            VmEvent::Exited {
                code,
                signal,
                oom_killed,
            } => Some(Input::Exited {
                code,
                signal,
                oom_killed,
            }),
            VmEvent::Lost { reason } => Some(Input::Lost(reason)),
        }
    }
}
