//! The control socket: how one process acts on sandboxes hosted by another.
//!
//! Every runtime that opts in ([`crate::SandvisorBuilder::control_socket`];
//! `sandvisor serve` and a foreground `sandvisor run` always do) listens on a
//! unix socket under the home and records its path with each sandbox it
//! starts. A [`crate::SandboxHandle`] whose sandbox runs elsewhere reaches
//! that runtime through [`ControlClient`], so `stop`, `kill`, `exec`,
//! `pause`, `resume`, `metrics` and `drain` work from any process.
//!
//! The API is small JSON over HTTP/1.1 (see ARCHITECTURE.md for the table);
//! an exec session upgrades its connection to a stream of length-delimited
//! frames (`frame.rs`). Only the owner of the home may connect: the socket's
//! directory is `0700`, the socket `0600`, and the server drops connections
//! whose peer credentials name another user.

mod client;
mod connections;
pub(crate) mod frame;
mod server;

use std::path::{Path, PathBuf};

use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use crate::error::Error;

pub use client::{ControlClient, ControlTimeouts, WAIT_WINDOW};
pub(crate) use server::{Bound, ControlServer};

/// The daemon's socket, relative to the home (`sandvisor serve`).
pub const DAEMON_SOCKET: &str = "sandvisord.sock";
/// Where other runtimes put their sockets, relative to the home.
pub const SOCKET_DIR: &str = "run";
/// The `Upgrade` protocol of an exec session's connection.
pub const EXEC_PROTOCOL: &str = "sandvisor-exec/1";
/// The `Upgrade` protocol of a file operation's connection (the exec
/// session's frames, see `frame.rs`).
pub const FILES_PROTOCOL: &str = "sandvisor-files/1";

/// The daemon's socket under `home`.
pub fn daemon_socket(home: &Path) -> PathBuf {
    home.join(DAEMON_SOCKET)
}

/// What `GET /v1/host` answers: who is listening.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInfo {
    /// The hosting process.
    pub pid: u32,
    /// Its home.
    pub home: PathBuf,
    /// Its sandvisor version.
    pub version: String,
    /// The sandboxes it runs now.
    pub sandboxes: Vec<String>,
    /// Runs that ended here but whose end the store has not taken yet (a
    /// full disk): `[name, run id]`.
    #[serde(default)]
    pub unrecorded: Vec<(String, i64)>,
}

/// The body of `stop`, `drain` and `kill` requests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EndRequest {
    /// Grace period before SIGKILL in milliseconds (`None`: the sandbox's own).
    pub timeout_ms: Option<u64>,
    /// Answer once the sandbox has stopped (else at once, with 202).
    pub wait: bool,
    /// With `wait`: answer `202` if it has not stopped after this many
    /// milliseconds, so each call is bounded and the client asks again
    /// (`wait`); `None`: wait as long as it takes (older clients).
    #[serde(default)]
    pub window_ms: Option<u64>,
}

/// The body of `POST /v1/sandboxes/{name}/wait` (may be empty).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitRequest {
    /// Answer `202` if it has not stopped after this many milliseconds
    /// (`None`: wait as long as it takes).
    #[serde(default)]
    pub window_ms: Option<u64>,
}

/// The answer to `POST /v1/sandboxes` and `start`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Started {
    /// The sandbox.
    pub name: String,
}

/// An error as it crosses the socket: the [`Error`] variants a caller acts
/// on keep their shape, the rest travel as their message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "error", rename_all = "snake_case")]
pub enum ErrorBody {
    /// [`Error::InvalidName`].
    InvalidName { name: String },
    /// [`Error::SandboxNotFound`].
    SandboxNotFound { name: String },
    /// [`Error::SandboxExists`].
    SandboxExists { name: String },
    /// [`Error::SandboxStillRunning`].
    SandboxStillRunning { name: String },
    /// [`Error::SandboxNotRunning`].
    SandboxNotRunning { name: String },
    /// [`Error::SandboxNotHosted`].
    SandboxNotHosted { name: String },
    /// [`Error::SandboxDraining`].
    SandboxDraining { name: String },
    /// [`Error::MetricsDisabled`].
    MetricsDisabled { name: String },
    /// [`Error::InvalidConfig`].
    InvalidConfig { field: String, reason: String },
    /// [`Error::UpdateRefused`].
    UpdateRefused { name: String, reason: String },
    /// [`Error::PortInUse`].
    PortInUse {
        name: String,
        address: std::net::SocketAddr,
        protocol: String,
    },
    /// [`Error::ExecFailed`].
    ExecFailed {
        sandbox: String,
        errno: i32,
        message: String,
        #[serde(default)]
        exec_failed: bool,
    },
    /// [`Error::CommandNotFound`].
    CommandNotFound { command: String },
    /// [`Error::CommandNotExecutable`].
    CommandNotExecutable { command: String, reason: String },
    /// [`Error::BootFailed`].
    BootFailed {
        stage: String,
        errno: i32,
        message: String,
        hint: String,
        #[serde(default)]
        exec_failed: bool,
    },
    /// A request the server could not read.
    BadRequest { message: String },
    /// Anything else.
    Internal { message: String },
}

impl ErrorBody {
    /// The HTTP status it is sent with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidName { .. } | Self::InvalidConfig { .. } | Self::BadRequest { .. } => {
                StatusCode::BAD_REQUEST
            }
            Self::SandboxNotFound { .. } => StatusCode::NOT_FOUND,
            Self::SandboxExists { .. }
            | Self::SandboxStillRunning { .. }
            | Self::SandboxNotRunning { .. }
            | Self::SandboxNotHosted { .. }
            | Self::SandboxDraining { .. }
            | Self::PortInUse { .. }
            | Self::MetricsDisabled { .. } => StatusCode::CONFLICT,
            Self::ExecFailed { .. }
            | Self::UpdateRefused { .. }
            | Self::BootFailed { .. }
            | Self::CommandNotFound { .. }
            | Self::CommandNotExecutable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<Error> for ErrorBody {
    fn from(err: Error) -> Self {
        match err {
            Error::InvalidName(name) => Self::InvalidName { name },
            Error::SandboxNotFound(name) => Self::SandboxNotFound { name },
            Error::SandboxExists(name) => Self::SandboxExists { name },
            Error::SandboxStillRunning(name) => Self::SandboxStillRunning { name },
            Error::SandboxNotRunning(name) => Self::SandboxNotRunning { name },
            Error::SandboxNotHosted(name) => Self::SandboxNotHosted { name },
            Error::SandboxDraining(name) => Self::SandboxDraining { name },
            Error::MetricsDisabled(name) => Self::MetricsDisabled { name },
            Error::InvalidConfig { field, reason } => Self::InvalidConfig { field, reason },
            Error::UpdateRefused { name, reason } => Self::UpdateRefused { name, reason },
            Error::PortInUse {
                name,
                address,
                protocol,
            } => Self::PortInUse {
                name,
                address,
                protocol,
            },
            Error::ExecFailed {
                sandbox,
                errno,
                message,
                exec_failed,
            } => Self::ExecFailed {
                sandbox,
                errno,
                message,
                exec_failed,
            },
            Error::CommandNotFound { command } => Self::CommandNotFound { command },
            Error::CommandNotExecutable { command, reason } => {
                Self::CommandNotExecutable { command, reason }
            }
            Error::BootFailed {
                stage,
                errno,
                message,
                hint,
                exec_failed,
            } => Self::BootFailed {
                stage,
                errno,
                message,
                hint,
                exec_failed,
            },
            other => Self::Internal {
                message: other.to_string(),
            },
        }
    }
}

impl From<ErrorBody> for Error {
    fn from(body: ErrorBody) -> Self {
        match body {
            ErrorBody::InvalidName { name } => Self::InvalidName(name),
            ErrorBody::SandboxNotFound { name } => Self::SandboxNotFound(name),
            ErrorBody::SandboxExists { name } => Self::SandboxExists(name),
            ErrorBody::SandboxStillRunning { name } => Self::SandboxStillRunning(name),
            ErrorBody::SandboxNotRunning { name } => Self::SandboxNotRunning(name),
            ErrorBody::SandboxNotHosted { name } => Self::SandboxNotHosted(name),
            ErrorBody::SandboxDraining { name } => Self::SandboxDraining(name),
            ErrorBody::MetricsDisabled { name } => Self::MetricsDisabled(name),
            ErrorBody::InvalidConfig { field, reason } => Self::InvalidConfig { field, reason },
            ErrorBody::UpdateRefused { name, reason } => Self::UpdateRefused { name, reason },
            ErrorBody::PortInUse {
                name,
                address,
                protocol,
            } => Self::PortInUse {
                name,
                address,
                protocol,
            },
            ErrorBody::ExecFailed {
                sandbox,
                errno,
                message,
                exec_failed,
            } => Self::ExecFailed {
                sandbox,
                errno,
                message,
                exec_failed,
            },
            ErrorBody::CommandNotFound { command } => Self::CommandNotFound { command },
            ErrorBody::CommandNotExecutable { command, reason } => {
                Self::CommandNotExecutable { command, reason }
            }
            ErrorBody::BootFailed {
                stage,
                errno,
                message,
                hint,
                exec_failed,
            } => Self::BootFailed {
                stage,
                errno,
                message,
                hint,
                exec_failed,
            },
            ErrorBody::BadRequest { message } | ErrorBody::Internal { message } => {
                Self::Internal(message)
            }
        }
    }
}
