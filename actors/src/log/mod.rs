//! The log wing: a sandbox's log files, their writer and their readers. It
//! knows nothing about sandboxes: the sandbox wing reaches it only through
//! [`tap`] (the `exec.log` writer), [`format`](mod@format) (the record shapes) and
//! [`runtime_log`] (sandvisor's own diagnostics).
//!
//! - [`format`](mod@format): records, text lines, file identity, cursors (the on-disk format).
//! - [`tap`]: the [`RelayTap`](tap::RelayTap), the one writer of `exec.log`,
//!   rotating at a size limit.
//! - [`runtime_log`]: appends to `runtime.log`.
//! - [`read`]: one [`Subscriber`](read::subscriber::Subscriber) per read,
//!   one [`Tailer`](read::tailer::Tailer) per log it reads, the process's one
//!   [watch hub](read::watch_hub); [`open_stream`](read::stream::open_stream)
//!   and [`collect`](read::stream::collect) are the entry points.
//!
//! This module holds what every part shares: [`LogEntry`] (what readers
//! deliver) and the wing's [`Error`].
//!
//! # Decision: blocking file I/O runs inline, in the actor that owns the file
//! The tap's writes, the followers' reads and `runtime.log` appends are plain
//! blocking `std::fs` calls made inside the owning actor's handler (the
//! [`RelayTap`](tap::RelayTap), each [`Tailer`](read::tailer::Tailer), the
//! sandbox supervisor), on the tokio worker that runs it; neither
//! `spawn_blocking` nor `block_in_place` is used. Why:
//! - Every call is bounded per message: one `write(2)` of a message's records
//!   into the page cache (the tap never fsyncs), at most one 1 MiB read step
//!   per tailer batch (large chunks are parsed on rayon's pool, not the
//!   worker), and `runtime.log` notes are rare (start, stop, restarts). A
//!   handler holds its worker for microseconds to a few milliseconds, which
//!   `bench_logs` measures end to end (write throughput, full-chain read,
//!   follow latency).
//! - The tap's `Append` contract needs it: the tap writes and answers in one
//!   step that a kill cannot split. Handing the write to `spawn_blocking` and
//!   awaiting it would open a window where the actor is killed after the
//!   write and before the answer, and the capture side would replay chunks
//!   that are already on disk.
//! - `spawn_blocking` would also cost a thread hand-off and a move of the
//!   file and state per message on the hot path; `block_in_place` panics on
//!   a current-thread runtime, which embedders may run us on.
//!
//! The cost accepted: a log directory on a stalled filesystem (a hung network
//! mount) stalls the worker running that actor. The home is expected on a
//! local disk; revisit (a dedicated I/O thread per tap) if that changes.

pub mod format;
pub mod read;
pub mod resume;
pub mod runtime_log;
pub mod tap;

use std::path::PathBuf;

use bytes::Bytes;
use chrono::{DateTime, Utc};

use self::format::{LogCursor, LogSource};

/// One entry read from a sandbox's logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Capture time (host wall clock).
    pub timestamp: DateTime<Utc>,
    /// Which stream it came from.
    pub source: LogSource,
    /// Exec session id; `None` for system entries.
    pub session_id: Option<u64>,
    /// The captured bytes, exactly as written.
    pub data: Bytes,
    /// Resuming from here yields exactly the entries after this one.
    pub cursor: LogCursor,
}

/// Everything the log wing can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory operation failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The log directory does not exist.
    #[error("log directory {0} does not exist")]
    LogDirMissing(PathBuf),
    /// The log directory was removed while a reader followed it.
    #[error("log directory {0} was removed while being read")]
    LogDirRemoved(PathBuf),
    /// A cursor that cannot be resumed in this directory.
    #[error("invalid cursor: {0}")]
    InvalidCursor(String),
    /// The reader fell behind the retention window: the file it needed next was
    /// rotated away before it could be read.
    #[error("missed rotation: the log was rotated past retention while reading; resume from {resume_from} to continue with the oldest retained entry")]
    MissedRotation {
        /// Everything up to here was delivered.
        stopped_at: Box<LogCursor>,
        /// Continues with the oldest entry still on disk.
        resume_from: Box<LogCursor>,
    },
    /// A tailer kept failing and its restart budget ran out.
    #[error("reader of {path} failed {failures} times within the restart window; last failure: {reason}")]
    ReaderGaveUp {
        /// The log being read.
        path: PathBuf,
        /// Failures counted in the window.
        failures: usize,
        /// The last failure.
        reason: String,
    },
    /// An actor could not be spawned or answered no more.
    #[error("actor error: {0}")]
    Actor(String),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

/// The log wing's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
