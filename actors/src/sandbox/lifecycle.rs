//! Lifecycle vocabulary shared by the supervisor actors and the store that
//! persists them: statuses, termination reasons, and the store interface.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

/// Where a sandbox is in its life. `Stopped` and `Crashed` are terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SandboxStatus {
    /// Recorded, never started.
    Created,
    /// Its process is being set up.
    Starting,
    /// Its main command runs.
    Running,
    /// Stopping: new work refused, the stop signal sent, the kill timer armed.
    Draining,
    /// Frozen.
    Paused,
    /// Ended; the run row says how.
    Stopped,
    /// Ended without sandvisor seeing how (its host died, or its agent vanished).
    Crashed,
}

impl SandboxStatus {
    /// `Stopped` or `Crashed`.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Stopped | Self::Crashed)
    }

    /// The name stored in SQLite.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "Created",
            Self::Starting => "Starting",
            Self::Running => "Running",
            Self::Draining => "Draining",
            Self::Paused => "Paused",
            Self::Stopped => "Stopped",
            Self::Crashed => "Crashed",
        }
    }
}

impl fmt::Display for SandboxStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SandboxStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            Self::Created,
            Self::Starting,
            Self::Running,
            Self::Draining,
            Self::Paused,
            Self::Stopped,
            Self::Crashed,
        ]
        .into_iter()
        .find(|status| status.as_str() == s)
        .ok_or_else(|| format!("unknown sandbox status {s:?}"))
    }
}

/// Why a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TerminationReason {
    /// The main command exited 0 on its own.
    Completed,
    /// The main command exited non-zero on its own.
    Failed,
    /// The main command was killed by a signal nobody in sandvisor sent.
    Signal,
    /// A stop: it exited after the stop signal, before the timeout.
    ShutdownRequested,
    /// A drain finished and the sandbox stopped.
    DrainRequested,
    /// It was killed with SIGKILL (a kill, or a stop that timed out).
    Killed,
    /// sandvisor lost track of it (host or agent died).
    InternalError,
    /// The kernel's OOM killer killed a process of the sandbox (its memory
    /// limit was reached) and the main command did not complete.
    OutOfMemory,
    /// Its `idle_timeout` passed without exec sessions or output: stopped.
    IdleTimeout,
    /// Its `max_lifetime` passed since the run started: stopped.
    LifetimeExceeded,
    /// Its health check turned it unhealthy and its `on_unhealthy` is
    /// `Stop` or `Restart`: stopped (and, for `Restart`, started again).
    Unhealthy,
}

impl TerminationReason {
    /// The name stored in SQLite.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "Completed",
            Self::Failed => "Failed",
            Self::Signal => "Signal",
            Self::ShutdownRequested => "ShutdownRequested",
            Self::DrainRequested => "DrainRequested",
            Self::Killed => "Killed",
            Self::InternalError => "InternalError",
            Self::OutOfMemory => "OutOfMemory",
            Self::IdleTimeout => "IdleTimeout",
            Self::LifetimeExceeded => "LifetimeExceeded",
            Self::Unhealthy => "Unhealthy",
        }
    }
}

impl fmt::Display for TerminationReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TerminationReason {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            Self::Completed,
            Self::Failed,
            Self::Signal,
            Self::ShutdownRequested,
            Self::DrainRequested,
            Self::Killed,
            Self::InternalError,
            Self::OutOfMemory,
            Self::IdleTimeout,
            Self::LifetimeExceeded,
            Self::Unhealthy,
        ]
        .into_iter()
        .find(|reason| reason.as_str() == s)
        .ok_or_else(|| format!("unknown termination reason {s:?}"))
    }
}

/// How a run ended, as the supervisor saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunEnd {
    /// `Stopped` or `Crashed`.
    pub status: SandboxStatus,
    /// Exit code, if the main command exited.
    pub exit_code: Option<i32>,
    /// Signal, if it was killed by one.
    pub signal: Option<i32>,
    /// Why.
    pub reason: TerminationReason,
    /// When the supervisor saw it.
    pub at: DateTime<Utc>,
}

/// A restart waiting for its backoff delay (see
/// [`policy`](super::policy)), as `ps` and `inspect` show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingRestart {
    /// Which restart since a user started the sandbox, from 1.
    pub attempt: u32,
    /// The delay it waits.
    #[serde(with = "crate::duration_serde")]
    pub delay: std::time::Duration,
    /// When it is due.
    pub at: DateTime<Utc>,
}

/// Identifies the host process that owns a run, so a later runtime can tell a
/// live owner from a dead one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostId {
    /// The host process's pid.
    pub pid: u32,
    /// Its start time in clock ticks since boot (`/proc/PID/stat` field 22).
    pub start_ticks: u64,
}

/// Where supervisors persist lifecycle transitions. Implemented over SQLite by
/// the `sandvisor` crate. Each call completes before the supervisor moves on,
/// so what a caller observes after a supervisor's reply is durable.
pub trait LifecycleStore: Send + Sync + 'static {
    /// Records the sandbox's status.
    fn set_status(&self, name: &str, status: SandboxStatus) -> BoxFuture<'_, Result<(), String>>;
    /// Opens a run row for a process that started and marks the sandbox
    /// Running; returns the run id. `restart_count`: restarts by the policy
    /// before this run since a user started the sandbox (0 for that start).
    fn run_started(
        &self,
        name: &str,
        pid: u32,
        host: HostId,
        at: DateTime<Utc>,
        restart_count: u32,
    ) -> BoxFuture<'_, Result<i64, String>>;
    /// Records the sandbox's status with the restart it waits for (`None`:
    /// none), in one statement: `Starting` and the pending restart when one
    /// is scheduled; the last run's end when a scheduled one is called off.
    fn set_restart(
        &self,
        name: &str,
        status: SandboxStatus,
        pending: Option<PendingRestart>,
    ) -> BoxFuture<'_, Result<(), String>>;
    /// Records on run `run_id` why the restart policy did not follow it
    /// with another.
    fn restart_ended(
        &self,
        run_id: i64,
        end: super::policy::RestartEnd,
    ) -> BoxFuture<'_, Result<(), String>>;
    /// Records on run `run_id` its health and latest check results.
    fn health_recorded(
        &self,
        run_id: i64,
        report: &super::health::HealthReport,
    ) -> BoxFuture<'_, Result<(), String>>;
    /// Closes a run row and sets the sandbox's terminal status.
    fn run_ended(&self, name: &str, run_id: i64, end: RunEnd) -> BoxFuture<'_, Result<(), String>>;
}
