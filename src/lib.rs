//! sandvisor: supervise many sandboxes at once.
//!
//! - [`Sandvisor`]: open a home, create and start sandboxes, stop and kill
//!   them, wait for them; lifecycle state in SQLite ([`store`]).
//! - [`logs`]: read a sandbox's logs once or as a live, resumable stream.
//! - [`home`]: where state lives and which sandbox names are valid.
//! - [`isolation`]: capability sets and the seccomp filter ([`Seccomp`]).
//! - [`testing`]: actor message probes, to test code that drives sandvisor.
//! - [`engine`]: the actors themselves (relay tap, tailers, subscribers, the
//!   watch hub) and their messages, for embedding and for actor message probes.

pub mod attach;
pub mod config;
pub mod control;
pub mod error;
pub mod exec;
pub mod files;
pub mod home;
pub mod image;
pub mod isolation;
pub mod logs;
pub mod runtime;
pub mod snapshot;
pub mod store;
pub mod testing;
pub mod vm;
mod workdir;

pub use error::{Error, Result};
pub use logs::{
    LogCursor, LogCursorParseError, LogEntry, LogOptions, LogSnapshot, LogSource, LogStream,
    LogStreamOptions, LogStreamStart, Logs,
};

pub use config::{
    Action, Backend, Isolation, Limit, LogConfig, Mount, Network, PortRange, Protocol, Publish,
    Resources, Restart, RestartBackoff, Rule, SandboxConfig,
};
pub use exec::{ExecConfig, ExecHandle, ExecOutput, ExecStatus};
pub use files::{DirEntry, FileKind, TarStream};
pub use image::{Image, ImageConfig, Images, PullOptions, PullProgress};
pub use isolation::seccomp::Seccomp;
pub use runtime::{Sandbox, SandboxHandle, SandboxStopResult, Sandvisor, SandvisorBuilder};
pub use sandvisor_actors::events::{EscalationStep, EventEnvelope, SandboxEvent};
pub use sandvisor_actors::lifecycle::{PendingRestart, SandboxStatus, TerminationReason};
pub use sandvisor_actors::metrics::SandboxMetrics;
pub use sandvisor_actors::sandbox::health::{
    Health, HealthCheck, HealthReport, HealthResult, OnUnhealthy,
};
pub use sandvisor_actors::sandbox::policy::RestartEnd;
pub use snapshot::{Snapshot, SnapshotManifest, Snapshots};
pub use store::RunRow;

/// The actor engine (`sandvisor-actors`), re-exported so users never depend on it directly.
pub use sandvisor_actors as engine;
