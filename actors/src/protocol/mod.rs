//! The agent protocol: everything the host and the in-sandbox agent
//! (`sandvisor-agent`) say to each other, and nothing else.
//!
//! # Contract
//! - This module is a **leaf**: it imports nothing else of this crate, so the
//!   agent binary links it without the actors, and the wire format cannot
//!   drift with them. What the host makes of a frame (log sources, events) is
//!   decided by its readers, not here.
//! - [`sap`]: SAP, the sandvisor agent protocol, between the host's
//!   `VmProcess` actor and the agent (PID 1 of a sandbox): its framing and
//!   the order of its conversation.
//! - [`spawn`]: the spawn channel, over which the host's `Spawner` actor asks
//!   the agent binary's spawner process for a new agent.
//! - [`isolation`]: what isolates a sandbox — the [`SpawnPlan`] the spawner
//!   carries out and the [`Confinement`] the agent applies to every session.
//! - [`files`]: file operations an exec-like session carries out instead
//!   of a command (copy in and out, read, write, list, stat, remove, mkdir).
//! - [`spec`]: what the host asks the agent to run ([`StartSpec`],
//!   [`ExecSpec`], both built on [`CommandSpec`]) and whom a signal is for
//!   ([`SignalTarget`]).
//! - This file: the vocabulary those share and the host reuses —
//!   [`MAIN_SESSION`], [`ExitStatus`], [`BootError`] and its [`BootStage`],
//!   [`OutputStream`].

pub mod files;
pub mod isolation;
pub mod sap;
pub mod spawn;
pub mod spec;

use serde::{Deserialize, Serialize};

pub use files::{
    FileAnswer, FileFailure, FileFailureKind, FileKind, FileOp, FileResult, FileStat,
    FILE_OUTPUT_WINDOW,
};
pub use isolation::{
    BindMount, Confinement, IdRange, Ids, Rlimit, RootPlan, SpawnPlan, VmLaunch, HOST_BASE,
    VM_PROBE_ARG, VM_PROBE_OK, VM_ROOT_TAG, VM_SAP_PORT,
};
pub use sap::{Frame, FrameError, MAX_FRAME};
pub use spawn::SPAWNER_FD;
pub use spec::{CommandSpec, ExecSpec, SignalTarget, StartSpec};

/// The main command's session id; exec sessions count up from 2.
pub const MAIN_SESSION: u64 = 1;

/// How a session's process ended: exactly one of the two is set for a
/// process that was reaped; both are `None` when the status is unknown.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ExitStatus {
    /// Exit code, if it exited.
    pub code: Option<i32>,
    /// Signal, if it was killed by one.
    pub signal: Option<i32>,
}

/// Why a sandbox could not start: the agent's `BootError` frame, and the
/// fields of `boot-error.json` (SPEC §5) beside its time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootError {
    /// Where.
    pub stage: BootStage,
    /// The OS error number, 0 if none.
    pub errno: i32,
    /// What happened.
    pub message: String,
    /// `exec(2)` of the main command failed, and `errno` is its error: the
    /// command itself could not run (not found, not executable), as opposed
    /// to any step before it. Not part of `boot-error.json`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exec_failed: bool,
}

/// Where a boot failed (SPEC §5 `boot-error.json` stages).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BootStage {
    /// Mount namespace, `/proc`, rootfs pivot.
    Mount,
    /// Creating the sandbox's process (namespaces, agent start).
    BuildVm,
    /// The configuration: command not found, bad working directory.
    Config,
    /// Network setup.
    Network,
    /// The root filesystem image.
    Image,
    /// A microVM's guest kernel did not bring the agent up (it did not
    /// boot, or not in time).
    Kernel,
    /// Anything else.
    Other,
}

impl BootStage {
    /// The name written to `boot-error.json`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mount => "mount",
            Self::BuildVm => "build_vm",
            Self::Config => "config",
            Self::Network => "network",
            Self::Image => "image",
            Self::Kernel => "kernel",
            Self::Other => "other",
        }
    }
}

impl std::fmt::Display for BootStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which stream of a session an `Output` frame carries; its tag on the wire
/// is the discriminant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum OutputStream {
    /// Standard output.
    Stdout = 1,
    /// Standard error.
    Stderr = 2,
    /// A pseudo-terminal's output (stdout and stderr merged).
    Output = 3,
}

impl OutputStream {
    /// Its tag on the wire.
    pub fn tag(self) -> u8 {
        self as u8
    }

    /// The stream a wire tag names, if any.
    pub fn from_tag(tag: u8) -> Option<Self> {
        match tag {
            1 => Some(Self::Stdout),
            2 => Some(Self::Stderr),
            3 => Some(Self::Output),
            _ => None,
        }
    }
}
