//! sandvisor's engine: every actor, its messages, and the on-disk log format
//! they share.
//!
//! Users reach all of this through the `sandvisor` crate, which re-exports
//! what they need.
//!
//! - [`relay_tap`]: the `exec.log` writer, rotating at a size limit.
//! - [`tailer`]: one reader per log, following rotation by file identity.
//! - [`subscriber`]: one per read, merging its tailers and assigning cursors.
//! - [`watch_hub`]: the one filesystem watcher of the process.
//! - [`format`]: records, text lines, file identity, cursors.
//! - [`root`], [`sandbox`]: the runtime's actor tree, from the root to each
//!   sandbox's supervisor and its link to the sandbox's agent.
//! - [`backend`]: how a sandbox's agent is started (namespaces, simulated).
//! - [`host`]: OS plumbing under the actors (pidfds, cgroups).

pub mod backend;
pub mod entry;
pub mod error;
pub mod follower;
pub mod format;
pub mod host;
pub mod protocol;
pub mod relay_tap;
pub mod restart;
pub mod root;
pub mod runtime_log;
pub mod sandbox;
pub mod stream;
pub mod subscriber;
pub mod tailer;
pub mod watch_hub;

// The sandbox wing's vocabulary keeps its crate-level paths
// (`sandvisor::engine::events::SandboxEvent`, …): users and the store name it.
pub use sandbox::{events, lifecycle, metrics};

pub use entry::LogEntry;
pub use error::{Error, Result};
pub use format::{
    FileId, LogCursor, LogCursorParseError, LogSource, Position, SourceSet, StreamKey,
};
pub use stream::{collect, open_stream, LogStream};
