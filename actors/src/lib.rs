//! sandvisor's engine: every actor, its messages, and the on-disk log format
//! they share.
//!
//! Users reach all of this through the `sandvisor` crate, which re-exports
//! what they need.
//!
//! - [`log`]: the log wing — the `exec.log` writer ([`log::tap`]), the readers
//!   ([`log::read`]: subscriber, tailers, the process's one watcher) and the
//!   on-disk format ([`log::format`]). It knows nothing about sandboxes.
//! - [`root`], [`sandbox`]: the runtime's actor tree, from the root to each
//!   sandbox's supervisor and its link to the sandbox's agent.
//! - [`backend`]: how a sandbox's agent is started (namespaces, simulated).
//! - [`host`]: OS plumbing under the actors (pidfds, cgroups).
//! - [`protocol`]: the agent protocol, a leaf shared with the agent binary.

pub mod backend;
pub mod duration_serde;
pub mod host;
pub mod log;
pub mod network;
pub mod protocol;
pub mod restart;
pub mod root;
pub mod sandbox;

// The sandbox wing's vocabulary keeps its crate-level paths
// (`sandvisor::engine::events::SandboxEvent`, …): users and the store name it.
pub use sandbox::{events, lifecycle, metrics};

pub use log::format::{
    FileId, LogCursor, LogCursorParseError, LogSource, Position, SourceSet, StreamKey,
};
pub use log::read::stream::{collect, open_stream, LogStream};
pub use log::{Error, LogEntry, Result};
