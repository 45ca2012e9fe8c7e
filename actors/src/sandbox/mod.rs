//! One sandbox: its supervisor, the supervisor's link to the sandbox's agent,
//! and the events, metrics and lifecycle vocabulary they publish.
//!
//! This module holds the messages that cross between its files; each file
//! below holds one concern.
//!
//! | file | holds |
//! |------|-------|
//! | [`supervisor`] | the [`SandboxSupervisor`] actor: executes the phase machine's actions |
//! | [`phase`] | the run's [`Phase`] and its transitions, as plain functions returning [`Action`]s |
//! | [`agent_link`] | the [`AgentLink`] actor: starts the agent through a [`Backend`](crate::backend::Backend), frames in and out |
//! | [`capture`] | the output reader task: socket → relay tap, in wire order |
//! | [`stdin`] | stdin flow control per exec session |
//! | [`detached`] | one session (a file operation) on an agent started outside any run, for a sandbox that is not running |
//! | [`session`] | exec sessions' live output routes |
//! | [`net_helper`] | the NetHelper actor: a private network's helper process, restarted when it dies |
//! | [`health`] | health checks: their config and the state their results add up to |
//! | [`boot_error`] | `boot-error.json` |
//! | [`events`], [`metrics`], [`lifecycle`] | what a supervisor publishes and persists |
//!
//! # Messages (sender → receiver)
//! - [`SupervisorMsg`]: the runtime (`Sandbox`, the control server) → the
//!   supervisor; its own timers (`Escalate`, `KillTimedOut`, `BootTimedOut`,
//!   `DrainTimedOut`, `SampleMetrics`, `RestartDue`, `IdleCheck`,
//!   `LifetimeExceeded`, `SessionDeadline`, `HealthDue`, `HealthDeadline`)
//!   → itself; `HealthChecked` from a health check's collector task; `Vm` from the agent
//!   link, `Tap` from the relay tap, `Net` from the net helper.
//! - [`net_helper::NetHelperMsg`]: the agent link → the net helper
//!   (`Attach`); the helper's exit watcher → the net helper (`Exited`).
//! - [`AgentLinkMsg`]: the supervisor → the agent link (`Signal`, `Kill`,
//!   `KillFromHost`, `Exec`, `Session`); the capture task → the agent link
//!   (`Frame`, `ReaderDone`); the agent's exit watcher → the agent link
//!   (`AgentExited`).
//! - [`VmEvent`]: the agent link → the supervisor (wrapped in
//!   [`SupervisorMsg::Vm`]), in wire order.
//! - [`SandboxEnded`]: the supervisor → its parent (the root), once, before any
//!   waiter is answered.
//! - [`ExecItem`]: the agent link and the capture task → an exec session's
//!   caller, live (a detached session's relay task → its caller, too).
//! - [`SessionInput`]: a session's caller → the supervisor → the agent link
//!   (or → a detached session's relay task).

pub mod agent_link;
pub mod boot_error;
pub mod capture;
pub mod detached;
pub mod events;
pub mod health;
pub mod lifecycle;
pub mod metrics;
pub mod net_helper;
pub mod phase;
pub mod policy;
pub mod session;
pub mod stdin;
pub mod supervisor;

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ractor::RpcReplyPort;
use tokio::sync::mpsc;

use crate::host::cgroup::LimitsUpdate;
use crate::log::format::LogSource;
use crate::log::tap::{TapConfig, TapEvent};
use crate::protocol::{BootStage, ExecSpec, Frame, SignalTarget};

pub use crate::backend::VmSpec;
pub use agent_link::{stopped_marker, AgentLink, AgentLinkArgs, STARTED_MARKER};
pub use boot_error::BOOT_ERROR_FILE;
pub use lifecycle::{SandboxStatus, TerminationReason};
pub use phase::{Action, Phase};
pub use supervisor::{SandboxSupervisor, SupervisorArgs, SupervisorState};

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
    /// When a run that ended is followed by another.
    pub restart: policy::Restart,
    /// The delays between restarts.
    pub backoff: policy::RestartBackoff,
    /// Stop after this long without exec sessions and without output.
    pub idle_timeout: Option<Duration>,
    /// Stop this long after the run started.
    pub max_lifetime: Option<Duration>,
    /// The health check, if any.
    pub health: Option<health::HealthSpec>,
}

/// Why a sandbox did not start: the protocol's one definition of
/// `{stage, errno, message}`.
pub use crate::protocol::BootError as BootFailure;

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
    /// The run cannot go on (its record could not be written): SIGKILL
    /// from the host, end Crashed; the text (why) goes to `runtime.log`.
    Abandon(String),
    /// Stop: the stop signal to the whole tree, SIGKILL after `timeout`
    /// (`None`: the sandbox's default; zero: at once).
    Stop {
        /// Grace period.
        timeout: Option<Duration>,
    },
    /// SIGKILL the whole tree now.
    Kill,
    /// Freeze every process (SIGSTOP through the agent); status Paused.
    Pause(RpcReplyPort<Result<(), FreezeRefused>>),
    /// Thaw a paused sandbox; status Running.
    Resume(RpcReplyPort<Result<(), FreezeRefused>>),
    /// Timer: the stop grace period of escalation `epoch` ran out.
    Escalate {
        /// Which stop armed it.
        epoch: u64,
    },
    /// Timer: SIGKILL was sent `kill_timeout` ago.
    KillTimedOut,
    /// Timer: the backend's boot timeout
    /// ([`BOOT_TIMEOUT`](crate::backend::BOOT_TIMEOUT) by default) after spawn.
    BootTimedOut,
    /// From the agent link.
    Vm(VmEvent),
    /// From the RelayTap.
    Tap(TapEvent),
    /// From the NetHelper of a private network.
    Net(net_helper::NetEvent),
    /// The current status.
    Status(RpcReplyPort<SandboxStatus>),
    /// Answer when the run has ended.
    WaitStopped(RpcReplyPort<StopOutcome>),
    /// Deliver every event from now on to this sink.
    Subscribe(events::EventSink),
    /// Timer: sample resource use.
    SampleMetrics,
    /// Run an exec session (its `session` is assigned here).
    Exec {
        /// What to run.
        spec: ExecSpec,
        /// Kill its process group this long after it was asked for.
        timeout: Option<Duration>,
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
    Metrics(RpcReplyPort<Result<metrics::SandboxMetrics, MetricsUnavailable>>),
    /// Timer: the backoff delay of restart `attempt` ran out: start again.
    RestartDue {
        /// Which restart armed it.
        attempt: u32,
    },
    /// Timer: look whether the run has been idle for `idle_timeout`.
    IdleCheck,
    /// Timer: the run has been up for `max_lifetime`.
    LifetimeExceeded,
    /// Change the running sandbox's resource limits (its cgroup) and those
    /// of the runs a restart policy starts after it; all or none.
    UpdateLimits {
        /// The change.
        update: LimitsUpdate,
        /// Done, or why not.
        reply: RpcReplyPort<Result<(), UpdateRefused>>,
    },
    /// Itself: the agent link's answer to an `UpdateLimits` it forwarded.
    LimitsWritten {
        /// The change.
        update: LimitsUpdate,
        /// What the write came to.
        result: Result<(), UpdateRefused>,
        /// The caller's port.
        reply: RpcReplyPort<Result<(), UpdateRefused>>,
    },
    /// Timer: time for the next health check.
    HealthDue,
    /// Timer: the health check running as `session` reached its timeout.
    HealthDeadline {
        /// Which check (numbered across runs: session ids start again).
        check: u64,
        /// Its session id.
        session: u64,
    },
    /// From a health check's collector task: the check ended.
    HealthChecked {
        /// Which check.
        check: u64,
        /// How it went.
        result: health::HealthResult,
    },
    /// Timer: exec session `session` reached its timeout.
    SessionDeadline {
        /// Session id.
        session: u64,
        /// The timeout it had.
        timeout: Duration,
    },
}

/// Why a pause or resume was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FreezeRefused {
    /// The sandbox has not started yet.
    #[error("the sandbox is starting")]
    Starting,
    /// It is draining, stopping or being killed.
    #[error("the sandbox is stopping")]
    Stopping,
    /// Its run has ended.
    #[error("the sandbox has ended")]
    Ended,
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
child_event!(Net, net_helper::NetEvent);

/// A supervisor tells its parent its run has ended, before it answers any
/// waiter: whoever hears of the end and looks the sandbox up again finds it
/// no longer hosted.
#[derive(Debug, Clone)]
pub struct SandboxEnded {
    /// The sandbox.
    pub name: String,
    /// The supervisor that ran it.
    pub supervisor: ractor::ActorId,
    /// The end, if the store refused it (a full disk): the parent records
    /// it once the store takes writes again.
    pub unrecorded: Option<UnrecordedEnd>,
}

/// A run's end the store did not take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnrecordedEnd {
    /// The run row to close; `None` when the run never got one (only the
    /// sandbox's status is set).
    pub run_id: Option<i64>,
    /// How it ended.
    pub end: lifecycle::RunEnd,
}

impl UnrecordedEnd {
    /// Writes it to `store`.
    ///
    /// # Errors
    /// The store's, when it still refuses.
    pub async fn record(
        &self,
        store: &dyn lifecycle::LifecycleStore,
        name: &str,
    ) -> Result<(), String> {
        match self.run_id {
            Some(run_id) => store.run_ended(name, run_id, self.end).await,
            None => store.set_status(name, self.end.status).await,
        }
    }
}

/// What the agent link tells its supervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmEvent {
    /// The host pid of the sandbox's PID 1 (the agent), once it exists.
    Hello {
        /// Host pid.
        init_pid: u32,
    },
    /// A re-adopted agent answered: its main command runs (in place of
    /// `Ready`, for a run that already has its row).
    Adopted {
        /// The main command's pid inside the sandbox.
        pid: u32,
        /// The highest session id the agent has seen.
        last_session: u64,
    },
    /// The main command runs.
    Ready {
        /// Its pid inside the sandbox.
        pid: u32,
    },
    /// The sandbox could not start.
    BootFailed {
        /// Where.
        stage: BootStage,
        /// OS error number (0 if none).
        errno: i32,
        /// What happened.
        message: String,
        /// `exec(2)` of the main command failed (see [`BootFailure`]).
        exec_failed: bool,
    },
    /// The main command exited; every process is gone and all output written.
    Exited {
        /// Exit code, if it exited.
        code: Option<i32>,
        /// Signal, if one killed it.
        signal: Option<i32>,
        /// The OOM killer killed a process of the sandbox during the run
        /// ([`Agent::oom_killed`](crate::backend::Agent::oom_killed)).
        oom_killed: bool,
    },
    /// An exec session's process started.
    SessionStarted {
        /// Session id.
        id: u64,
    },
    /// An exec session could not start.
    SessionFailed {
        /// Session id.
        id: u64,
    },
    /// An exec session's process exited (after all its output).
    SessionExited {
        /// Session id.
        id: u64,
        /// Exit code, if it exited.
        code: Option<i32>,
        /// Signal, if one killed it.
        signal: Option<i32>,
    },
    /// The agent went away without reporting an exit.
    Lost {
        /// What was seen.
        reason: String,
    },
}

/// Messages of the [`AgentLink`].
#[derive(Debug)]
pub enum AgentLinkMsg {
    /// Deliver a signal inside the sandbox (through the agent).
    Signal {
        /// To whom.
        target: SignalTarget,
        /// Signal number.
        signo: i32,
    },
    /// SIGKILL every process of the sandbox, through the agent (which then
    /// reports the main command's real exit status).
    Kill,
    /// SIGKILL the sandbox's PID 1 from the host (through the backend), which
    /// ends its whole pid namespace; for an agent that does not answer.
    KillFromHost,
    /// From the capture task: a control frame, in wire order.
    Frame(Frame),
    /// From the capture task: the socket closed (or broke).
    ReaderDone(Option<String>),
    /// From the exit watcher: the agent exited (and, as PID 1 of a pid
    /// namespace, every process of the sandbox with it).
    AgentExited,
    /// Run an exec session; answered once the agent started it (or not).
    Exec {
        /// What to run (with its session id).
        spec: ExecSpec,
        /// Its output goes to `exec.log` and counts as activity (`false`
        /// for a health check: only `output` gets it).
        logged: bool,
        /// Where the session's output and exit go, live.
        output: mpsc::UnboundedSender<ExecItem>,
        /// Session id and pid inside the sandbox, or why not.
        reply: ExecReply,
    },
    /// Input for a running exec session.
    Session {
        /// Session id.
        session: u64,
        /// What to deliver.
        input: SessionInput,
    },
    /// Change the running sandbox's resource limits (its cgroup), all or
    /// none; answers why not.
    UpdateLimits {
        /// The change.
        update: LimitsUpdate,
        /// Done, or why not.
        reply: RpcReplyPort<Result<(), UpdateRefused>>,
    },
}

/// Why a live change of resource limits was refused (nothing changed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateRefused {
    /// The sandbox has no running agent (starting, waiting to restart,
    /// ending or ended).
    NotRunning,
    /// The change cannot be made to this run.
    Unsupported(String),
    /// The kernel refused a write (the values written were put back).
    Failed(String),
}

/// Input for a running exec session, as its caller sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionInput {
    /// Bytes for its stdin; empty closes it (end of file on a terminal).
    Stdin(Vec<u8>),
    /// Its terminal's new window size.
    Resize {
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
    /// A signal to its process group.
    Signal(i32),
    /// Its deadline passed: SIGKILL to its process group, and its exit is
    /// reported as timed out.
    Expire,
    /// The caller took this many bytes of a file session's output: the
    /// agent may send that much more (SAP `OutputConsumed`).
    OutputConsumed(u64),
}

/// What an exec session's caller receives, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecItem {
    /// A chunk of output (also written to `exec.log`).
    Output {
        /// `stdout` or `stderr`.
        source: LogSource,
        /// The bytes.
        data: bytes::Bytes,
    },
    /// The agent took this many bytes of the session's stdin off the host's
    /// window: a caller feeding a large input waits for these (a file
    /// session's copy in), so nothing large waits in memory.
    InputTaken {
        /// Bytes.
        bytes: u64,
    },
    /// The session's process exited; nothing follows.
    Exited {
        /// Exit code, if it exited.
        code: Option<i32>,
        /// Signal, if one killed it.
        signal: Option<i32>,
        /// Its timeout killed it.
        timed_out: bool,
    },
}

/// Why an exec session did not start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecRefused {
    /// The sandbox does not run.
    NotRunning,
    /// The sandbox is draining (or stopping): no new sessions.
    Draining,
    /// The agent could not start the command.
    Failed {
        /// OS error number.
        errno: i32,
        /// What happened.
        message: String,
        /// `exec(2)` of the command failed (`errno` is its error), rather
        /// than a step before it (working directory, confinement).
        exec_failed: bool,
    },
}

/// Answers an exec request: session id and pid inside the sandbox, or why not.
pub type ExecReply = RpcReplyPort<Result<(u64, u32), ExecRefused>>;

/// A running sandbox whose host died, taken over by this runtime: its agent
/// (reached through its adoption socket) and the run it carries on.
pub struct Readoption {
    /// The agent, connected.
    pub agent: crate::backend::Started,
    /// The open run's row id (moved to this host already).
    pub run_id: i64,
    /// When the run started (a lifetime limit counts from there).
    pub started_at: chrono::DateTime<chrono::Utc>,
}

impl std::fmt::Debug for Readoption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readoption")
            .field("agent_pid", &self.agent.agent.pid())
            .field("run_id", &self.run_id)
            .field("started_at", &self.started_at)
            .finish()
    }
}
