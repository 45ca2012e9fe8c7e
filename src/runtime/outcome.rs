//! How a run ended, as callers see it.
//!
//! # Contract
//! - While the sandbox's supervisor lives, [`SandboxStopResult`] comes from
//!   its exit message (`SupervisorMsg::WaitStopped` answers once the run has
//!   ended), never from polling.
//! - Once the supervisor is gone, or the sandbox runs nowhere, the store is
//!   the truth: the sandbox row's terminal status and its last run's exit
//!   code, signal and end time ([`from_store`]).
//! - A sandbox that failed before it was ready ends its start with
//!   [`Error::BootFailed`], whose hint says what to check ([`boot_failed`]).

use chrono::{DateTime, Utc};
use sandvisor_actors::lifecycle::SandboxStatus;
use sandvisor_actors::protocol::BootStage;
use sandvisor_actors::sandbox::{BootFailure, StopOutcome};

use crate::error::{Error, Result};
use crate::store::Store;

/// How a run ended, as `wait_until_stopped` reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SandboxStopResult {
    /// The sandbox.
    pub name: String,
    /// `Stopped` or `Crashed`.
    pub status: SandboxStatus,
    /// Exit code of the main command, if it exited.
    pub exit_code: Option<i32>,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// When the end was observed.
    pub observed_at: DateTime<Utc>,
}

impl From<StopOutcome> for SandboxStopResult {
    fn from(outcome: StopOutcome) -> Self {
        Self {
            name: outcome.name,
            status: outcome.status,
            exit_code: outcome.exit_code,
            signal: outcome.signal,
            observed_at: outcome.observed_at,
        }
    }
}

/// How the last run of `name` ended, as stored; `None` unless the sandbox is
/// in a terminal status (it never ran, or it is still running).
///
/// # Errors
/// [`Error::SandboxNotFound`] if no such sandbox is recorded;
/// [`Error::Database`] if the store cannot be read.
pub(crate) async fn from_store(store: &Store, name: &str) -> Result<Option<SandboxStopResult>> {
    let row = store
        .sandbox(name)
        .await?
        .ok_or_else(|| Error::SandboxNotFound(name.to_string()))?;
    if !row.status.is_terminal() {
        return Ok(None);
    }
    let last = store.runs(name).await?.pop();
    Ok(Some(SandboxStopResult {
        name: name.to_string(),
        status: row.status,
        exit_code: last.as_ref().and_then(|r| r.exit_code),
        signal: last.as_ref().and_then(|r| r.exit_signal),
        observed_at: last.and_then(|r| r.terminated_at).unwrap_or(row.updated_at),
    }))
}

/// Like [`from_store`], for a caller that waits for an end: a sandbox with no
/// ended run is not running.
///
/// # Errors
/// As [`from_store`], and [`Error::SandboxNotRunning`] when there is no
/// stored end.
pub(crate) async fn stored_end(store: &Store, name: &str) -> Result<SandboxStopResult> {
    from_store(store, name)
        .await?
        .ok_or_else(|| Error::SandboxNotRunning(name.to_string()))
}

/// The error a start ends with when the sandbox failed before it was ready.
pub(super) fn boot_failed(failure: BootFailure) -> Error {
    let hint = match failure.stage {
        BootStage::Config => "check the command, its arguments and the working directory",
        BootStage::Mount => {
            "namespaces and mounts need root (CAP_SYS_ADMIN); check the rootfs layout"
        }
        BootStage::BuildVm => {
            "is sandvisor-agent beside the binary or on PATH, and may this user create namespaces?"
        }
        BootStage::Network => "the network namespace could not be set up",
        BootStage::Image => "check that the rootfs directory exists and holds the command",
        BootStage::Kernel => {
            "the guest kernel did not start the agent: see kernel.log (the kernel, its modules and the VM's memory size)"
        }
        BootStage::Other => "see runtime.log in the sandbox's log directory",
    };
    Error::BootFailed {
        stage: failure.stage.as_str().to_string(),
        errno: failure.errno,
        message: failure.message,
        hint: hint.to_string(),
        exec_failed: failure.exec_failed,
    }
}
