//! The sandbox supervisor: one actor per running sandbox, owning its
//! [`VmProcess`] and its [`RelayTap`].
//!
//! # Lifecycle as messages
//! ```text
//! spawn ─ Starting ─ Vm(Hello) ─ Vm(Ready) ─ Running ─ Vm(Exited) ─ Stopped
//!                └─ Vm(BootFailed) ─ Stopped (boot-error.json; no run row)
//! Running ─ Stop{timeout} ─ Draining ─ stop signal to the whole tree
//!            ├─ Vm(Exited) before the timer ─ Stopped (ShutdownRequested)
//!            └─ Escalate (send_after timeout) ─ Vm Kill (the agent SIGKILLs every process)
//!                 ─ Vm(Exited) ─ Stopped (Killed, signal 9)
//!                 └─ KillTimedOut ─ Vm KillFromHost (SIGKILL to PID 1 from the host)
//!                      ─ Vm(Lost) ─ Stopped (Killed, signal 9)
//!                      └─ KillTimedOut again ─ Crashed (InternalError)
//! Running ─ Kill ─ Draining ─ Vm Kill ─ … as above
//! Vm(Lost) ─ Crashed (InternalError)
//! ```
//! The runtime records `Starting` before it spawns the supervisor. Every
//! transition after that is persisted through the [`LifecycleStore`] before
//! the supervisor handles its next message; waiters are answered after the run
//! row is closed, so what they observe is durable.
//!
//! # Children
//! - The RelayTap is restarted when it fails or stops (at most 5 times in
//!   10 s; then the sandbox is killed and ends Crashed); the new tap is
//!   published on a `watch` channel the VmProcess's reader follows, so no
//!   output is lost or duplicated. Each restart is noted in `runtime.log`.
//! - The VmProcess is not restarted: if it fails, the sandbox's socket closes,
//!   the agent kills the sandbox, and the run ends Crashed (InternalError).
//!
//! Once the run has ended, the supervisor writes the `--- sandbox stopped … ---`
//! marker, answers waiters and stops; its children stop with it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use serde::Serialize;
use tokio::sync::{oneshot, watch};

use crate::events::{EscalationStep, EventSink, Publisher, SandboxEvent};
use crate::format::LogSource;
use crate::lifecycle::{HostId, LifecycleStore, RunEnd, SandboxStatus, TerminationReason};
use crate::metrics::{Sampler, SandboxMetrics};
use crate::protocol::ExecSpec;
use crate::protocol::{BootStage, SignalTarget};
use crate::relay_tap::{Chunk, RelayTap, RelayTapMsg, TapArgs, TapConfig, TapEvent};
use crate::restart::RestartBudget;
use crate::spawner::SpawnerMsg;
use crate::vm_process::{ExecItem, ExecRefused, ExecReply, SessionInput};
use crate::vm_process::{VmArgs, VmEvent, VmProcess, VmProcessMsg, VmSpec};
use tokio::sync::mpsc;

/// How long a sandbox may take from spawn to its main command running.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything a supervisor needs to run one sandbox.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    /// The sandbox's name.
    pub name: String,
    /// Its log directory.
    pub log_dir: PathBuf,
    /// The process to start.
    pub vm: VmSpec,
    /// How `exec.log` rotates.
    pub tap: TapConfig,
    /// Signal sent to the whole tree on stop.
    pub stop_signal: i32,
    /// Default time between the stop signal and SIGKILL.
    pub stop_timeout: Duration,
    /// Time allowed after SIGKILL before the run is declared lost.
    pub kill_timeout: Duration,
    /// Resource sampling period; `None` disables metrics.
    pub metrics_interval: Option<Duration>,
}

/// Why a sandbox did not start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BootFailure {
    /// Where.
    pub stage: BootStage,
    /// OS error number (0 if none).
    pub errno: i32,
    /// What happened.
    pub message: String,
}

/// How a run ended, for waiters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopOutcome {
    /// The sandbox.
    pub name: String,
    /// `Stopped` or `Crashed`.
    pub status: SandboxStatus,
    /// Exit code of the main command.
    pub exit_code: Option<i32>,
    /// Signal that killed it.
    pub signal: Option<i32>,
    /// Why it ended.
    pub reason: TerminationReason,
    /// When the supervisor saw it end.
    pub observed_at: DateTime<Utc>,
}

/// Messages of the [`SandboxSupervisor`].
pub enum SupervisorMsg {
    /// Stop: the stop signal to the whole tree, SIGKILL after `timeout`
    /// (`None`: the sandbox's default; zero: at once).
    Stop {
        /// Grace period.
        timeout: Option<Duration>,
    },
    /// SIGKILL the whole tree now.
    Kill,
    /// Freeze every process (SIGSTOP through the agent); status Paused.
    Pause(RpcReplyPort<Result<(), String>>),
    /// Thaw a paused sandbox; status Running.
    Resume(RpcReplyPort<Result<(), String>>),
    /// Timer: the stop grace period of escalation `epoch` ran out.
    Escalate {
        /// Which stop armed it.
        epoch: u64,
    },
    /// Timer: SIGKILL was sent `kill_timeout` ago.
    KillTimedOut,
    /// Timer: [`BOOT_TIMEOUT`] after spawn.
    BootTimedOut,
    /// From the VmProcess.
    Vm(VmEvent),
    /// From the RelayTap.
    Tap(TapEvent),
    /// The current status.
    Status(RpcReplyPort<SandboxStatus>),
    /// Answer when the run has ended.
    WaitStopped(RpcReplyPort<StopOutcome>),
    /// Deliver every event from now on to this sink.
    Subscribe(EventSink),
    /// Timer: sample resource use.
    SampleMetrics,
    /// Run an exec session (its `session` is assigned here).
    Exec {
        /// What to run.
        spec: ExecSpec,
        /// Where its output and exit go, live.
        output: mpsc::UnboundedSender<ExecItem>,
        /// Session id and pid, or why not.
        reply: ExecReply,
    },
    /// Input for a running exec session (stdin, window size, a signal).
    Session {
        /// Session id.
        session: u64,
        /// What to deliver.
        input: SessionInput,
    },
    /// Drain: refuse new exec sessions, let running ones finish, then stop
    /// (termination reason DrainRequested); past `timeout` stop anyway.
    Drain {
        /// How long sessions may take (`None`: the stop timeout).
        timeout: Option<Duration>,
    },
    /// Timer: the drain's sessions did not finish in time.
    DrainTimedOut,
    /// The latest resource sample.
    Metrics(RpcReplyPort<Result<SandboxMetrics, MetricsUnavailable>>),
}

/// Why a sandbox has no metrics to give.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsUnavailable {
    /// Its `metrics_interval` is `None`.
    Disabled,
    /// It does not run (yet, or any more).
    NotRunning,
}

/// `From` / `TryFrom` between a child's event type and [`SupervisorMsg`], as a
/// `DerivedActorRef` handed to the child needs.
macro_rules! child_event {
    ($variant:ident, $event:ty) => {
        impl From<$event> for SupervisorMsg {
            fn from(event: $event) -> Self {
                Self::$variant(event)
            }
        }

        impl TryFrom<SupervisorMsg> for $event {
            type Error = ();
            fn try_from(msg: SupervisorMsg) -> Result<Self, ()> {
                match msg {
                    SupervisorMsg::$variant(event) => Ok(event),
                    _ => Err(()),
                }
            }
        }
    };
}

child_event!(Vm, VmEvent);
child_event!(Tap, TapEvent);

/// A supervisor tells its parent its run has ended, before it answers any
/// waiter: whoever hears of the end and looks the sandbox up again finds it
/// no longer hosted.
#[derive(Debug, Clone)]
pub struct SandboxEnded {
    /// The sandbox.
    pub name: String,
    /// The supervisor that ran it.
    pub supervisor: ractor::ActorId,
}

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
    /// Told when the run has ended (the parent forgets the supervisor).
    pub ended: Option<ractor::DerivedActorRef<SandboxEnded>>,
    /// Subscribers from the start (the runtime's event bus).
    pub events: Vec<EventSink>,
    /// Forks the sandbox's agent.
    pub spawner: ActorRef<SpawnerMsg>,
}

/// The supervisor actor. See the module docs.
pub struct SandboxSupervisor;

/// Its state.
pub struct SupervisorState {
    spec: SandboxSpec,
    store: Arc<dyn LifecycleStore>,
    host: HostId,
    status: SandboxStatus,
    tap: ActorRef<RelayTapMsg>,
    tap_tx: watch::Sender<ActorRef<RelayTapMsg>>,
    tap_budget: RestartBudget,
    generation: u64,
    vm: Option<ActorRef<VmProcessMsg>>,
    init_pid: Option<u32>,
    run_id: Option<i64>,
    started: Option<oneshot::Sender<Result<u32, BootFailure>>>,
    ended: Option<ractor::DerivedActorRef<SandboxEnded>>,
    events: Publisher,
    /// Exec sessions whose processes run.
    sessions: std::collections::HashSet<u64>,
    next_session: u64,
    draining: bool,
    sampler: Option<Sampler>,
    metrics: Option<SandboxMetrics>,
    metrics_timer: Option<ractor::concurrency::JoinHandle<()>>,
    boot: Option<Result<u32, BootFailure>>,
    stop_waiters: Vec<RpcReplyPort<StopOutcome>>,
    /// Set once a stop was asked for: the reason the run ends with unless it
    /// has to be killed.
    stop_reason: Option<TerminationReason>,
    escalation: u64,
    /// When the armed escalation fires.
    kill_deadline: Option<Instant>,
    /// The timeout of a stop asked for while starting.
    pending_stop: Option<Duration>,
    killed: bool,
    /// SIGKILL went to PID 1 from the host (the agent did not act on the kill).
    host_killed: bool,
    outcome: Option<StopOutcome>,
}

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
        let (tap_tx, tap_rx) = watch::channel(tap.clone());
        let vm_args = VmArgs {
            spec: spec.vm.clone(),
            tap: tap_rx,
            events: myself.get_derived(),
            spawner: args.spawner,
        };
        let (vm, _) = Actor::spawn_linked(None, VmProcess, vm_args, myself.get_cell()).await?;
        myself.send_after(BOOT_TIMEOUT, || SupervisorMsg::BootTimedOut);
        Ok(SupervisorState {
            spec,
            store: args.store,
            host: args.host,
            status: SandboxStatus::Starting,
            tap,
            tap_tx,
            tap_budget: RestartBudget::default(),
            generation: 0,
            vm: Some(vm),
            init_pid: None,
            run_id: None,
            started: args.started,
            ended: args.ended,
            events: Publisher::new(args.events),
            sessions: std::collections::HashSet::new(),
            next_session: 1,
            draining: false,
            sampler: None,
            metrics: None,
            metrics_timer: None,
            boot: None,
            stop_waiters: Vec::new(),
            stop_reason: None,
            escalation: 0,
            kill_deadline: None,
            pending_stop: None,
            killed: false,
            host_killed: false,
            outcome: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Status(reply) => {
                let _ = reply.send(state.status);
            }
            SupervisorMsg::WaitStopped(reply) => match &state.outcome {
                Some(outcome) => {
                    let _ = reply.send(outcome.clone());
                }
                None => state.stop_waiters.push(reply),
            },
            SupervisorMsg::Stop { timeout } => state.stop(&myself, timeout).await?,
            SupervisorMsg::Pause(reply) => {
                let result = state.freeze(true).await?;
                let _ = reply.send(result);
            }
            SupervisorMsg::Resume(reply) => {
                let result = state.freeze(false).await?;
                let _ = reply.send(result);
            }
            SupervisorMsg::Kill => state.kill(&myself).await?,
            SupervisorMsg::Escalate { epoch } => {
                if state.outcome.is_none() && epoch == state.escalation && !state.killed {
                    state.note_warn("did not stop within the timeout; escalating to SIGKILL");
                    state.publish(SandboxEvent::Escalated {
                        from: EscalationStep::Term,
                        to: EscalationStep::Kill,
                    });
                    state.kill(&myself).await?;
                }
            }
            SupervisorMsg::KillTimedOut => {
                if state.outcome.is_none() {
                    if state.host_killed {
                        state.note_warn(
                            "still not gone after SIGKILL from the host; giving it up as crashed",
                        );
                        state.crashed(&myself).await?;
                    } else {
                        // The agent did not report the kill: kill PID 1 from the
                        // host, which ends the whole pid namespace.
                        state.note_warn("the agent did not report the kill in time; killing PID 1 from the host");
                        state.host_killed = true;
                        state.publish(SandboxEvent::Escalated {
                            from: EscalationStep::Kill,
                            to: EscalationStep::HostKill,
                        });
                        if let Some(vm) = &state.vm {
                            vm.cast(VmProcessMsg::KillFromHost)?;
                        }
                        myself.send_after(state.spec.kill_timeout, || SupervisorMsg::KillTimedOut);
                    }
                }
            }
            SupervisorMsg::BootTimedOut => {
                if state.boot.is_none() && state.outcome.is_none() {
                    let failure = BootFailure {
                        stage: BootStage::Other,
                        errno: libc::ETIMEDOUT,
                        message: format!("the agent did not report ready within {BOOT_TIMEOUT:?}"),
                    };
                    write_boot_error(&state.spec.log_dir, &failure);
                    state.note_warn(&failure.message);
                    if let Some(vm) = &state.vm {
                        vm.cast(VmProcessMsg::KillFromHost)?;
                    }
                    state.boot = Some(Err(failure));
                    state
                        .finish(
                            &myself,
                            SandboxStatus::Stopped,
                            None,
                            None,
                            TerminationReason::Failed,
                        )
                        .await?;
                }
            }
            SupervisorMsg::Tap(TapEvent::Rotated { generation }) => {
                state.generation = generation;
                state.publish(SandboxEvent::Rotated { generation });
            }
            SupervisorMsg::Subscribe(sink) => state.events.subscribe(sink),
            SupervisorMsg::Exec {
                mut spec,
                output,
                reply,
            } => {
                let refused = match state.status {
                    _ if state.outcome.is_some() => Some(ExecRefused::NotRunning),
                    SandboxStatus::Running => None,
                    SandboxStatus::Draining => Some(ExecRefused::Draining),
                    _ => Some(ExecRefused::NotRunning),
                };
                match (refused, &state.vm) {
                    (None, Some(vm)) => {
                        state.next_session += 1;
                        spec.session = state.next_session;
                        // Counted from now: a drain must wait for it too.
                        state.sessions.insert(spec.session);
                        vm.cast(VmProcessMsg::Exec {
                            spec,
                            output,
                            reply,
                        })?;
                    }
                    (refused, _) => {
                        let _ = reply.send(Err(refused.unwrap_or(ExecRefused::NotRunning)));
                    }
                }
            }
            SupervisorMsg::Session { session, input } => {
                if let Some(vm) = &state.vm {
                    vm.cast(VmProcessMsg::Session { session, input })?;
                }
            }
            SupervisorMsg::Drain { timeout } => state.drain(&myself, timeout).await?,
            SupervisorMsg::DrainTimedOut => {
                if state.outcome.is_none() && state.draining {
                    state.note_warn(
                        "exec sessions did not finish within the drain timeout; stopping",
                    );
                    state.stop(&myself, None).await?;
                }
            }
            SupervisorMsg::SampleMetrics => {
                if let Some(metrics) = state.sample() {
                    state.publish(SandboxEvent::MetricsSampled(metrics));
                }
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
            }
            SupervisorMsg::Vm(event) => state.on_vm(&myself, event).await?,
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, reason, failed) = match event {
            SupervisionEvent::ActorFailed(cell, err) => (cell, err.to_string(), true),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, reason.unwrap_or_else(|| "stopped".into()), false)
            }
            _ => return Ok(()),
        };
        if state.outcome.is_some() {
            return Ok(());
        }
        if cell.get_id() == state.tap.get_id() {
            // Only failures spend the budget: a tap stopped or killed from
            // outside is not crash-looping.
            if failed && !state.tap_budget.allow() {
                state.note_warn(&format!(
                    "relay tap keeps failing ({reason}); killing the sandbox"
                ));
                if let Some(vm) = &state.vm {
                    let _ = vm.cast(VmProcessMsg::KillFromHost);
                }
                return state.crashed(&myself).await;
            }
            state.note_warn(&format!("relay tap ended ({reason}); restarting it"));
            state.publish(SandboxEvent::ChildRestarted {
                actor: "relay_tap",
                reason: reason.clone(),
            });
            let tap = spawn_tap(&myself, &state.spec, state.generation).await?;
            state.tap = tap.clone();
            // The VmProcess's reader waits on this to resume writing.
            let _ = state.tap_tx.send(tap);
        } else if state
            .vm
            .as_ref()
            .is_some_and(|vm| vm.get_id() == cell.get_id())
        {
            state.vm = None;
            state.note_warn(&format!(
                "VM process actor ended ({reason}); the sandbox is lost"
            ));
            state.crashed(&myself).await?;
        }
        Ok(())
    }
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
    /// Pauses (`true`) or resumes every process of the sandbox. `Err` (for the
    /// caller) when the sandbox is not in a state that allows it.
    async fn freeze(&mut self, pause: bool) -> Result<Result<(), String>, ActorProcessingErr> {
        let (from, to, signo) = if pause {
            (SandboxStatus::Running, SandboxStatus::Paused, libc::SIGSTOP)
        } else {
            (SandboxStatus::Paused, SandboxStatus::Running, libc::SIGCONT)
        };
        if self.status == to {
            return Ok(Ok(()));
        }
        if self.status != from {
            return Ok(Err(format!("{} is {}", self.spec.name, self.status)));
        }
        if let Some(vm) = &self.vm {
            vm.cast(VmProcessMsg::Signal {
                target: SignalTarget::All,
                signo,
            })?;
        }
        self.set_status(to).await?;
        self.note_info(if pause {
            "paused: SIGSTOP to every process"
        } else {
            "resumed: SIGCONT to every process"
        });
        Ok(Ok(()))
    }

    async fn set_status(&mut self, status: SandboxStatus) -> Result<(), ActorProcessingErr> {
        self.store.set_status(&self.spec.name, status).await?;
        self.status_is(status);
        Ok(())
    }

    /// Records a status the store already has, and publishes the change.
    fn status_is(&mut self, status: SandboxStatus) {
        let from = std::mem::replace(&mut self.status, status);
        if from != status {
            self.publish(SandboxEvent::StatusChanged { from, to: status });
        }
    }

    /// Samples the tree while the sandbox runs.
    fn sample(&mut self) -> Option<SandboxMetrics> {
        if self.outcome.is_some() {
            return None;
        }
        let metrics = self.sampler.as_mut()?.sample().ok()?;
        self.metrics = Some(metrics);
        Some(metrics)
    }

    fn publish(&mut self, event: SandboxEvent) {
        self.events.publish(&self.spec.name, event);
    }

    async fn on_vm(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        event: VmEvent,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            VmEvent::Hello { init_pid } => self.init_pid = Some(init_pid),
            VmEvent::SessionStarted { id } => self.publish(SandboxEvent::SessionStarted { id }),
            VmEvent::SessionFailed { id } => {
                self.sessions.remove(&id);
                self.stop_if_drained(myself).await?;
            }
            VmEvent::SessionExited { id, code, signal } => {
                self.sessions.remove(&id);
                self.publish(SandboxEvent::SessionExited { id, code, signal });
                self.stop_if_drained(myself).await?;
            }
            VmEvent::Ready { pid } => {
                let host_pid = self.init_pid.unwrap_or(pid);
                self.run_id = Some(
                    self.store
                        .run_started(&self.spec.name, host_pid, self.host, Utc::now())
                        .await?,
                );
                // `run_started` recorded Running with the run row.
                self.status_is(SandboxStatus::Running);
                self.publish(SandboxEvent::SessionStarted { id: 1 });
                if let Some(interval) = self.spec.metrics_interval {
                    self.sampler = Some(Sampler::new(host_pid));
                    self.metrics_timer =
                        Some(myself.send_interval(interval, || SupervisorMsg::SampleMetrics));
                }
                remove_boot_error(&self.spec.log_dir);
                // Routine: the embedding service's log, not the sandbox's file.
                tracing::info!(sandbox = %self.spec.name, pid, host_pid, "started");
                self.answer_start(Ok(pid));
                if let Some(timeout) = self.pending_stop_timeout() {
                    self.stop(myself, Some(timeout)).await?;
                }
            }
            VmEvent::BootFailed {
                stage,
                errno,
                message,
            } => {
                let failure = BootFailure {
                    stage,
                    errno,
                    message,
                };
                write_boot_error(&self.spec.log_dir, &failure);
                self.note_warn(&format!("failed to start ({stage}): {}", failure.message));
                // Answered by `finish`, once the outcome is persisted.
                self.boot = Some(Err(failure));
                self.finish(
                    myself,
                    SandboxStatus::Stopped,
                    None,
                    None,
                    TerminationReason::Failed,
                )
                .await?;
            }
            VmEvent::Exited { code, signal } => {
                let reason = if self.killed {
                    TerminationReason::Killed
                } else if let Some(reason) = self.stop_reason {
                    reason
                } else if signal.is_some() {
                    TerminationReason::Signal
                } else if code == Some(0) {
                    TerminationReason::Completed
                } else {
                    TerminationReason::Failed
                };
                self.finish(myself, SandboxStatus::Stopped, code, signal, reason)
                    .await?;
            }
            VmEvent::Lost { reason } if self.host_killed => {
                self.note_info(&format!("killed from the host: {reason}"));
                self.finish(
                    myself,
                    SandboxStatus::Stopped,
                    None,
                    Some(libc::SIGKILL),
                    TerminationReason::Killed,
                )
                .await?;
            }
            VmEvent::Lost { reason } => {
                self.note_warn(&format!("lost the sandbox process: {reason}"));
                self.crashed(myself).await?;
            }
        }
        Ok(())
    }

    /// A stop asked for while still starting is carried out once running,
    /// with the timeout it was asked with.
    fn pending_stop_timeout(&self) -> Option<Duration> {
        self.pending_stop
    }

    fn answer_start(&mut self, result: Result<u32, BootFailure>) {
        if let Some(started) = self.started.take() {
            let _ = started.send(result.clone());
        }
        self.boot = Some(result);
    }

    /// Once a drain has no session left, the stop begins (once, with the
    /// sandbox's stop timeout).
    async fn stop_if_drained(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
    ) -> Result<(), ActorProcessingErr> {
        if !self.draining
            || !self.sessions.is_empty()
            || self.kill_deadline.is_some()
            || self.killed
        {
            return Ok(());
        }
        self.note_info("drained: no exec session left; stopping");
        self.stop(myself, None).await
    }

    async fn drain(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        timeout: Option<Duration>,
    ) -> Result<(), ActorProcessingErr> {
        if self.outcome.is_some() || self.killed || self.draining {
            return Ok(());
        }
        self.draining = true;
        self.stop_reason
            .get_or_insert(TerminationReason::DrainRequested);
        if self.status == SandboxStatus::Paused {
            // Frozen sessions could not finish.
            if let Some(vm) = &self.vm {
                vm.cast(VmProcessMsg::Signal {
                    target: SignalTarget::All,
                    signo: libc::SIGCONT,
                })?;
            }
        }
        if matches!(self.status, SandboxStatus::Running | SandboxStatus::Paused) {
            self.set_status(SandboxStatus::Draining).await?;
        }
        if self.sessions.is_empty() {
            return self.stop_if_drained(myself).await;
        }
        self.note_info(&format!(
            "draining: waiting for {} exec sessions",
            self.sessions.len()
        ));
        myself.send_after(timeout.unwrap_or(self.spec.stop_timeout), || {
            SupervisorMsg::DrainTimedOut
        });
        Ok(())
    }

    async fn stop(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        timeout: Option<Duration>,
    ) -> Result<(), ActorProcessingErr> {
        if self.outcome.is_some() || self.killed {
            return Ok(());
        }
        let timeout = timeout.unwrap_or(self.spec.stop_timeout);
        if self.status == SandboxStatus::Starting {
            // Nothing to signal yet: stop as soon as it runs (or kill at once).
            self.stop_reason = Some(TerminationReason::ShutdownRequested);
            if timeout.is_zero() {
                return self.kill(myself).await;
            }
            self.pending_stop = Some(self.pending_stop.map_or(timeout, |t| t.min(timeout)));
            return Ok(());
        }
        self.pending_stop = None;
        if self.stop_reason.is_none() {
            self.stop_reason = Some(TerminationReason::ShutdownRequested);
        }
        if self.status != SandboxStatus::Draining {
            self.set_status(SandboxStatus::Draining).await?;
        }
        if timeout.is_zero() {
            return self.kill(myself).await;
        }
        if let Some(vm) = &self.vm {
            vm.cast(VmProcessMsg::Signal {
                target: SignalTarget::All,
                signo: self.spec.stop_signal,
            })?;
            // A paused tree must run to act on the stop signal.
            vm.cast(VmProcessMsg::Signal {
                target: SignalTarget::All,
                signo: libc::SIGCONT,
            })?;
        }
        // A repeated stop may bring SIGKILL closer, never push it back.
        let deadline = Instant::now() + timeout;
        if self.kill_deadline.is_some_and(|armed| armed <= deadline) {
            return Ok(());
        }
        self.kill_deadline = Some(deadline);
        self.escalation += 1;
        let epoch = self.escalation;
        myself.send_after(timeout, move || SupervisorMsg::Escalate { epoch });
        self.note_info(&format!(
            "stopping: signal {} to every process, SIGKILL in {timeout:?}",
            self.spec.stop_signal
        ));
        Ok(())
    }

    async fn kill(&mut self, myself: &ActorRef<SupervisorMsg>) -> Result<(), ActorProcessingErr> {
        if self.outcome.is_some() || self.killed {
            return Ok(());
        }
        self.killed = true;
        if !matches!(
            self.status,
            SandboxStatus::Draining | SandboxStatus::Starting
        ) {
            self.set_status(SandboxStatus::Draining).await?;
        }
        if let Some(vm) = &self.vm {
            vm.cast(VmProcessMsg::Kill)?;
        }
        myself.send_after(self.spec.kill_timeout, || SupervisorMsg::KillTimedOut);
        self.note_info("killing every process with SIGKILL");
        Ok(())
    }

    /// Ends the run as lost: Crashed, InternalError.
    async fn crashed(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
    ) -> Result<(), ActorProcessingErr> {
        self.finish(
            myself,
            SandboxStatus::Crashed,
            None,
            None,
            TerminationReason::InternalError,
        )
        .await
    }

    async fn finish(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        status: SandboxStatus,
        exit_code: Option<i32>,
        signal: Option<i32>,
        reason: TerminationReason,
    ) -> Result<(), ActorProcessingErr> {
        if self.outcome.is_some() {
            return Ok(());
        }
        let at = Utc::now();
        if self.boot.as_ref().is_some_and(|b| b.is_ok()) {
            let marker = match (exit_code, signal) {
                (_, Some(signal)) => format!("--- sandbox stopped (signal {signal}) ---"),
                (Some(code), None) => format!("--- sandbox stopped (exit {code}) ---"),
                (None, None) => format!("--- sandbox stopped ({reason}) ---"),
            };
            // The marker goes after every chunk of the run: the VmProcess
            // reports the exit only once all output is written. Waiting for
            // it makes the marker visible to whoever hears of the end.
            let marker = Chunk {
                session_id: 0,
                source: LogSource::System,
                data: marker.into(),
                captured_at: at,
            };
            let written = ractor::call_t!(self.tap, RelayTapMsg::Append, 5_000, vec![marker]);
            if !matches!(written, Ok(Ok(()))) {
                self.note_warn("could not write the stopped marker to exec.log");
            }
        } else if self.boot.is_none() {
            self.boot = Some(Err(BootFailure {
                stage: BootStage::Other,
                errno: 0,
                message: format!("the sandbox ended before it was ready ({reason})"),
            }));
        }
        let end = RunEnd {
            status,
            exit_code,
            signal,
            reason,
            at,
        };
        match self.run_id {
            Some(run_id) => self.store.run_ended(&self.spec.name, run_id, end).await?,
            None => self.store.set_status(&self.spec.name, status).await?,
        }
        if let (Some(_), Some(_)) = (
            self.run_id,
            self.boot.as_ref().and_then(|b| b.as_ref().ok()),
        ) {
            // Sessions still counted here were not reported by the agent
            // (it was lost or killed from the host): they ended with it.
            let mut orphaned: Vec<u64> = self.sessions.drain().collect();
            orphaned.sort_unstable();
            for id in orphaned {
                self.publish(SandboxEvent::SessionExited {
                    id,
                    code: None,
                    signal: None,
                });
            }
            self.publish(SandboxEvent::SessionExited {
                id: 1,
                code: exit_code,
                signal,
            });
        }
        if let Some(timer) = self.metrics_timer.take() {
            timer.abort();
        }
        self.sampler = None;
        self.status_is(status);
        tracing::info!(sandbox = %self.spec.name, %status, %reason, ?exit_code, ?signal, "ended");
        let outcome = StopOutcome {
            name: self.spec.name.clone(),
            status,
            exit_code,
            signal,
            reason,
            observed_at: at,
        };
        if let Some(ended) = &self.ended {
            // A parent that is gone has nothing to forget.
            let _ = ended.send_message(SandboxEnded {
                name: self.spec.name.clone(),
                supervisor: myself.get_id(),
            });
        }
        for waiter in self.stop_waiters.drain(..) {
            let _ = waiter.send(outcome.clone());
        }
        if let Some(Err(failure)) = self.boot.clone() {
            self.answer_start(Err(failure));
        }
        self.outcome = Some(outcome);
        myself.stop(None);
        Ok(())
    }

    fn note_info(&self, message: &str) {
        tracing::info!(sandbox = %self.spec.name, "{message}");
        crate::runtime_log::append(
            &self.spec.log_dir,
            tracing::Level::INFO,
            &self.spec.name,
            message,
        );
    }

    fn note_warn(&self, message: &str) {
        tracing::warn!(sandbox = %self.spec.name, "{message}");
        crate::runtime_log::append(
            &self.spec.log_dir,
            tracing::Level::WARN,
            &self.spec.name,
            message,
        );
    }
}

#[derive(Serialize)]
struct BootErrorRecord<'a> {
    t: String,
    stage: BootStage,
    errno: i32,
    message: &'a str,
}

/// Writes `boot-error.json` atomically (temp file, then rename).
fn write_boot_error(log_dir: &Path, failure: &BootFailure) {
    let record = BootErrorRecord {
        t: Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        stage: failure.stage,
        errno: failure.errno,
        message: &failure.message,
    };
    let result = serde_json::to_vec_pretty(&record)
        .map_err(std::io::Error::other)
        .and_then(|json| {
            let tmp = log_dir.join(".boot-error.json.tmp");
            std::fs::write(&tmp, json)?;
            std::fs::rename(&tmp, log_dir.join(BOOT_ERROR_FILE))
        });
    if let Err(err) = result {
        tracing::warn!(dir = %log_dir.display(), %err, "cannot write boot-error.json");
    }
}

fn remove_boot_error(log_dir: &Path) {
    match std::fs::remove_file(log_dir.join(BOOT_ERROR_FILE)) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            tracing::warn!(dir = %log_dir.display(), %err, "cannot remove boot-error.json");
        }
        _ => {}
    }
}

/// The boot error record's file name in the log directory.
pub const BOOT_ERROR_FILE: &str = "boot-error.json";
