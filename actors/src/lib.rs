//! sandvisor's engine: every actor, its messages, and the on-disk log format
//! they share.
//!
//! Users reach all of this through the `sandvisor` crate, which re-exports
//! what they need.
//!
//! - [`log`]: the log wing — the `exec.log` writer ([`log::tap`]), the readers
//!   ([`log::read`]: subscriber, tailers, the process's one watcher) and the
//!   on-disk format ([`log::format`]). It knows nothing about sandboxes.
//! - [`root`], [`sandbox`], [`vm_process`], [`spawner`]: the runtime's
//!   actor tree, from the root to each sandbox's agent.

pub mod cgroup;
pub mod events;
pub mod lifecycle;
pub mod log;
pub mod metrics;
pub mod pidfd;
pub mod protocol;
pub mod restart;
pub mod root;
pub mod sandbox;
pub mod spawner;
pub mod vm_process;

pub use log::format::{
    FileId, LogCursor, LogCursorParseError, LogSource, Position, SourceSet, StreamKey,
};
pub use log::read::stream::{collect, open_stream, LogStream};
pub use log::{Error, LogEntry, Result};
