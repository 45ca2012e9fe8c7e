//! The run's phase as a value, and its transitions as plain functions.
//!
//! # Contract
//! - [`step`] and [`freeze`] take the current [`Phase`], one [`Input`] and a
//!   [`Context`] (configuration, the time, how many exec sessions run) and
//!   return the next phase and the [`Action`]s to take, in order. They do no
//!   I/O; the supervisor executes the actions (persist, signal, arm a timer,
//!   publish, answer) before it handles its next message.
//! - The persisted status is a function of the phase ([`Phase::status`]);
//!   every change of it is an [`Action::SetStatus`] (or part of
//!   [`Action::Started`] / [`Action::Finish`]), carrying the status it leaves
//!   so the supervisor publishes `StatusChanged` without a mirror of its own.
//! - [`Phase::Ended`] is final: every input is ignored there.
//!
//! ```text
//! Starting ─ Ready ─ Running ─ Stop ─ Stopping ─ Escalate ─ Killing ─ KillTimedOut ─ Killing(from host)
//!    │  └ Stop: remembered, carried out at Ready       │                        └ KillTimedOut ─ Ended(Crashed)
//!    └ BootFailed / BootTimedOut ─ Ended(Stopped, Failed)
//! Running ─ Drain (sessions) ─ Draining ─ last session / DrainTimedOut ─ Stopping
//! Running ─ Expired(IdleTimeout | LifetimeExceeded) ─ Stopping (with that reason)
//! any ─ Exited ─ Ended(Stopped) · Lost ─ Ended(Crashed, or Stopped/Killed after a host kill)
//! ```

mod step;
#[cfg(test)]
mod tests;

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::events::EscalationStep;
use super::lifecycle::{SandboxStatus, TerminationReason};
use super::BootFailure;

pub use step::{freeze, step, LONGEST_GRACE};

/// Where a run is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Spawned; the agent has not reported Ready.
    Starting {
        /// The timeout of a stop asked for meanwhile (the shortest asked),
        /// carried out once the sandbox runs.
        stop: Option<Duration>,
    },
    /// The main command runs.
    Running {
        /// Frozen (status Paused).
        paused: bool,
    },
    /// A drain waits for exec sessions to finish; no stop signal yet.
    Draining,
    /// The stop signal went to every process; SIGKILL at `deadline`.
    Stopping {
        /// The reason the run ends with unless it has to be killed.
        reason: TerminationReason,
        /// When the armed escalation fires.
        deadline: Instant,
        /// Which escalation timer is the live one.
        epoch: u64,
        /// A drain was asked for too (its timeout may stop again).
        drain: bool,
    },
    /// SIGKILL went to every process.
    Killing {
        /// The persisted status: `Starting` when killed before Ready (the run
        /// has not booted), else `Draining` (or `Running` / `Paused` when
        /// Ready came after the kill).
        status: SandboxStatus,
        /// SIGKILL went to PID 1 from the host too (the agent did not act).
        from_host: bool,
    },
    /// The run has ended and its outcome is persisted.
    Ended(Ending),
}

/// How a run ended, as the phase machine decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ending {
    /// The status before the end (for the `StatusChanged` event).
    pub from: SandboxStatus,
    /// `Stopped` or `Crashed`.
    pub status: SandboxStatus,
    /// Exit code of the main command.
    pub exit_code: Option<i32>,
    /// Signal that killed it.
    pub signal: Option<i32>,
    /// Why.
    pub reason: TerminationReason,
    /// Why it never ran, if it did not: no stopped marker, no session events.
    pub failure: Option<BootFailure>,
    /// When the supervisor saw it end.
    pub at: DateTime<Utc>,
}

/// What happened, as the supervisor tells the phase machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// `SupervisorMsg::Stop`.
    Stop(Option<Duration>),
    /// `SupervisorMsg::Kill`.
    Kill,
    /// `SupervisorMsg::Drain`.
    Drain(Option<Duration>),
    /// Timer: the grace period of escalation `epoch` ran out.
    Escalate(u64),
    /// Timer: SIGKILL was sent `kill_timeout` ago.
    KillTimedOut,
    /// Timer: the drain's sessions did not finish in time.
    DrainTimedOut,
    /// Timer: the boot timeout ran out.
    BootTimedOut,
    /// The agent reported the main command running (pid inside the sandbox).
    Ready(u32),
    /// The agent (or the backend) reported a boot failure.
    BootFailed(BootFailure),
    /// The main command exited and every process is gone.
    Exited {
        /// Exit code.
        code: Option<i32>,
        /// Signal.
        signal: Option<i32>,
        /// The OOM killer killed a process of the sandbox during the run.
        oom_killed: bool,
    },
    /// The agent went away without reporting an exit.
    Lost(String),
    /// An exec session ended or failed to start (already uncounted in
    /// [`Context::sessions`]).
    SessionEnded,
    /// The sandbox cannot be supervised any more (a child actor is gone for
    /// good): the run ends Crashed.
    Abandon,
    /// A limit of the sandbox ran out (`IdleTimeout`, `LifetimeExceeded`):
    /// stop it with that reason, as a user's stop with the default timeout.
    Expired(TerminationReason),
}

/// What the supervisor does, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Persist `to`, then publish `StatusChanged { from, to }`.
    SetStatus {
        /// The status left.
        from: SandboxStatus,
        /// The status entered.
        to: SandboxStatus,
    },
    /// Deliver `signo` to every process through the agent.
    SignalAll(i32),
    /// SIGKILL every process through the agent.
    KillThroughAgent,
    /// SIGKILL PID 1 from the host.
    KillFromHost,
    /// Arm `SupervisorMsg::Escalate { epoch }` after `after`.
    ArmEscalation {
        /// The epoch the timer carries.
        epoch: u64,
        /// Delay.
        after: Duration,
    },
    /// Arm `SupervisorMsg::KillTimedOut` after this long.
    ArmKillTimeout(Duration),
    /// Arm `SupervisorMsg::DrainTimedOut` after this long.
    ArmDrainTimeout(Duration),
    /// Publish `SandboxEvent::Escalated`.
    Escalated {
        /// The step that did not end the run.
        from: EscalationStep,
        /// The step taken now.
        to: EscalationStep,
    },
    /// Write a line to `runtime.log` (and `tracing`).
    Note {
        /// `true`: warning; `false`: info.
        warn: bool,
        /// The line.
        message: String,
    },
    /// The run started with the main command at `pid` (inside the sandbox):
    /// open the run row (which records Running), publish the change from
    /// Starting and session 1's start, start sampling, remove
    /// `boot-error.json`, answer the starter.
    Started(u32),
    /// Write `boot-error.json`.
    WriteBootError(BootFailure),
    /// End the run (marker, run row, session events, waiters) and stop.
    Finish(Ending),
}

/// What a transition needs besides the phase.
#[derive(Debug, Clone, Copy)]
pub struct Context {
    /// Signal sent to the whole tree on stop.
    pub stop_signal: i32,
    /// Default grace period of a stop (and a drain).
    pub stop_timeout: Duration,
    /// Time allowed after SIGKILL.
    pub kill_timeout: Duration,
    /// The backend's boot timeout (for the message).
    pub boot_timeout: Duration,
    /// The run is a microVM's: a boot that ends without a word from the
    /// agent is the guest kernel's failure (stage `kernel`), not `other`.
    pub vm: bool,
    /// Exec sessions still running.
    pub sessions: usize,
    /// Now, for deadlines.
    pub now: Instant,
    /// Now, for the record.
    pub at: DateTime<Utc>,
}

impl Phase {
    /// The status the store has for this phase.
    pub fn status(&self) -> SandboxStatus {
        match self {
            Self::Starting { .. } => SandboxStatus::Starting,
            Self::Running { paused: false } => SandboxStatus::Running,
            Self::Running { paused: true } => SandboxStatus::Paused,
            Self::Draining | Self::Stopping { .. } => SandboxStatus::Draining,
            Self::Killing { status, .. } => *status,
            Self::Ended(ending) => ending.status,
        }
    }

    /// Whether the run has ended.
    pub fn is_ended(&self) -> bool {
        matches!(self, Self::Ended(_))
    }

    /// Whether the agent has reported Ready (and not ended since).
    pub(crate) fn booted(&self) -> bool {
        !matches!(
            self,
            Self::Starting { .. }
                | Self::Killing {
                    status: SandboxStatus::Starting,
                    ..
                }
                | Self::Ended(_)
        )
    }

    /// The reason an exit ends the run with, when sandvisor asked for it.
    pub(crate) fn stop_reason(&self) -> Option<TerminationReason> {
        match self {
            Self::Starting { stop: Some(_) } => Some(TerminationReason::ShutdownRequested),
            Self::Draining => Some(TerminationReason::DrainRequested),
            Self::Stopping { reason, .. } => Some(*reason),
            Self::Killing { .. } => Some(TerminationReason::Killed),
            _ => None,
        }
    }
}
