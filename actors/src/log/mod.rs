//! The engine's error type.

use std::path::PathBuf;

use crate::format::LogCursor;

/// Everything the engine's actors can fail with.
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

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
