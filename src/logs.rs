//! Reading a sandbox's logs: one-shot reads and live streams with resumable cursors.
//!
//! The free functions resolve the home from the environment at each call
//! (`SANDVISOR_HOME`, else `$HOME/.sandvisor`); [`Logs::at`] reads under an
//! explicit home.
//!
//! # Sources and files
//! `stdout`, `stderr` and `output` entries come from the `exec.log` chain; the
//! `system` source adds the chain's system markers, `runtime.log` and
//! `kernel.log`. An empty source list means `[Stdout, Stderr, Output]`.
//!
//! # Cursors
//! Every entry carries the cursor just after it. A cursor holds a position
//! for each log that was read; a stream started from a cursor reads the logs
//! the cursor has no position for from their beginning.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use chrono::{DateTime, Utc};
use futures::Stream;
use sandvisor_actors::log::read::chain::check_cursor;
use sandvisor_actors::log::read::ReadPlan;
use sandvisor_actors::{FileId, SourceSet, StreamKey};

pub use sandvisor_actors::{LogCursor, LogCursorParseError, LogEntry, LogSource};

use crate::error::{Error, Result};
use crate::home;

/// What [`read_logs`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// Sources to read; empty means `[Stdout, Stderr, Output]`.
    pub sources: Vec<LogSource>,
    /// Only entries at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only entries before this time.
    pub until: Option<DateTime<Utc>>,
    /// Only the last `n` entries (after `since` and `until`).
    pub tail: Option<usize>,
}

/// Entries read once, and where a stream should continue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSnapshot {
    /// The entries, in time order.
    pub entries: Vec<LogEntry>,
    /// Just after everything read, including entries filtered out: a stream
    /// started `From` it continues with no gap and no repeat.
    pub cursor: LogCursor,
}

/// Where a [`log_stream`] starts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum LogStreamStart {
    /// The oldest retained entry.
    #[default]
    Beginning,
    /// The first entry at or after this time.
    Since(DateTime<Utc>),
    /// Just after the entry (or snapshot) this cursor came from.
    From(LogCursor),
}

/// What [`log_stream`] yields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogStreamOptions {
    /// Sources to read; empty means `[Stdout, Stderr, Output]`.
    pub sources: Vec<LogSource>,
    /// Where to start.
    pub start: LogStreamStart,
    /// The stream ends before the first entry at or after this time.
    pub until: Option<DateTime<Utc>>,
    /// Keep going as the logs grow (else end at the end of what is on disk).
    pub follow: bool,
}

/// A stream of log entries. Chronological within each source; across sources,
/// in the order parsed. Dropping it stops its readers and releases their watches.
#[derive(Debug)]
pub struct LogStream {
    inner: sandvisor_actors::LogStream,
    name: String,
}

impl LogStream {
    /// The subscriber actor behind this stream, for actor message probes.
    pub fn subscriber(&self) -> &ractor::ActorRef<sandvisor_actors::log::read::SubscriberMsg> {
        self.inner.subscriber()
    }
}

impl Stream for LogStream {
    type Item = Result<LogEntry>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        Pin::new(&mut this.inner)
            .poll_next(cx)
            .map(|item| item.map(|r| r.map_err(|e| Error::from_engine(&this.name, e))))
    }
}

/// Log reading under one home.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logs {
    home: PathBuf,
}

impl Logs {
    /// Reads under `home`.
    pub fn at(home: impl Into<PathBuf>) -> Self {
        Self { home: home.into() }
    }

    /// Reads under the home the environment names.
    ///
    /// # Errors
    /// [`Error::NoHome`] if neither `SANDVISOR_HOME` nor `HOME` is set.
    pub fn from_env() -> Result<Self> {
        Ok(Self::at(home::home_from_env()?))
    }

    /// The home this reads under.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// The sandbox's log directory (whether or not it exists).
    ///
    /// # Errors
    /// [`Error::InvalidName`] if `name` breaks the naming rules.
    pub fn log_dir_for(&self, name: &str) -> Result<PathBuf> {
        home::log_dir(&self.home, name)
    }

    /// Everything on disk, in strict time order; see [`read_logs`].
    ///
    /// # Errors
    /// As [`Self::read_logs_snapshot`].
    pub async fn read_logs(&self, name: &str, options: &LogOptions) -> Result<Vec<LogEntry>> {
        Ok(self.read_logs_snapshot(name, options).await?.entries)
    }

    /// Everything on disk and the cursor after it; see [`read_logs_snapshot`].
    ///
    /// # Errors
    /// - [`Error::InvalidName`]; [`Error::SandboxNotFound`] if the sandbox
    ///   has no log directory.
    /// - [`Error::Io`] if a log file cannot be read.
    /// - [`Error::MissedRotation`] if a file was rotated past retention
    ///   while being read; [`Error::SandboxRemoved`] if the log directory
    ///   went away meanwhile.
    /// - [`Error::LogReaderFailed`] / [`Error::Internal`] if a reader actor
    ///   failed.
    pub async fn read_logs_snapshot(
        &self,
        name: &str,
        options: &LogOptions,
    ) -> Result<LogSnapshot> {
        let (dir, dir_id) = self.existing_dir(name)?;
        let plan = ReadPlan {
            streams: streams_for(&options.sources),
            sources: SourceSet::from_requested(&options.sources),
            cursor: LogCursor::new(dir_id),
            since: options.since,
            until: None,
            follow: false,
            dir,
        };
        let collected = sandvisor_actors::collect(plan)
            .await
            .map_err(|e| Error::from_engine(name, e))?;
        let mut entries = collected.entries;
        if let Some(until) = options.until {
            entries.retain(|entry| entry.timestamp < until);
        }
        if let Some(tail) = options.tail {
            let skip = entries.len().saturating_sub(tail);
            entries.drain(..skip);
        }
        Ok(LogSnapshot {
            entries,
            cursor: collected.cursor,
        })
    }

    /// A stream of entries; see [`log_stream`].
    ///
    /// # Errors
    /// Those known up front: [`Error::InvalidName`],
    /// [`Error::SandboxNotFound`] (no log directory),
    /// [`Error::InvalidCursor`] (a cursor from another sandbox or a file
    /// never in this rotation chain), [`Error::Io`], and [`Error::Internal`]
    /// if the reader actors cannot start. Later failures end the stream:
    /// [`Error::MissedRotation`], [`Error::SandboxRemoved`],
    /// [`Error::LogReaderFailed`].
    pub async fn log_stream(&self, name: &str, options: &LogStreamOptions) -> Result<LogStream> {
        let (dir, dir_id) = self.existing_dir(name)?;
        let (cursor, since) = match &options.start {
            LogStreamStart::Beginning => (LogCursor::new(dir_id), None),
            LogStreamStart::Since(t) => (LogCursor::new(dir_id), Some(*t)),
            LogStreamStart::From(cursor) => {
                check_cursor(&dir, cursor).map_err(|e| Error::from_engine(name, e))?;
                (*cursor, None)
            }
        };
        let plan = ReadPlan {
            streams: streams_for(&options.sources),
            sources: SourceSet::from_requested(&options.sources),
            cursor,
            since,
            until: options.until,
            follow: options.follow,
            dir,
        };
        let inner = sandvisor_actors::open_stream(plan)
            .await
            .map_err(|e| Error::from_engine(name, e))?;
        Ok(LogStream {
            inner,
            name: name.to_string(),
        })
    }

    fn existing_dir(&self, name: &str) -> Result<(PathBuf, FileId)> {
        let dir = self.log_dir_for(name)?;
        match FileId::of_path(&dir) {
            Ok(Some(id)) if dir.is_dir() => Ok((dir, id)),
            Ok(_) => Err(Error::SandboxNotFound(name.to_string())),
            Err(source) => Err(Error::Io { path: dir, source }),
        }
    }
}

fn streams_for(sources: &[LogSource]) -> Vec<StreamKey> {
    if SourceSet::from_requested(sources).contains(LogSource::System) {
        StreamKey::ALL.to_vec()
    } else {
        vec![StreamKey::Exec]
    }
}

/// The log directory of sandbox `name`: `<home>/sandboxes/<name>/logs`.
///
/// # Errors
/// [`Error::NoHome`]; [`Error::InvalidName`].
pub fn log_dir_for(name: &str) -> Result<PathBuf> {
    Logs::from_env()?.log_dir_for(name)
}

/// Reads everything on disk for `name`, sorted by time across sources, then
/// filtered by `since` (inclusive), `until` (exclusive) and `tail`.
///
/// # Errors
/// [`Error::NoHome`]; otherwise as [`Logs::read_logs_snapshot`].
pub async fn read_logs(name: &str, options: &LogOptions) -> Result<Vec<LogEntry>> {
    Logs::from_env()?.read_logs(name, options).await
}

/// Like [`read_logs`], plus the cursor after everything read (including
/// entries filtered out), for [`LogStreamStart::From`].
///
/// # Errors
/// [`Error::NoHome`]; otherwise as [`Logs::read_logs_snapshot`].
pub async fn read_logs_snapshot(name: &str, options: &LogOptions) -> Result<LogSnapshot> {
    Logs::from_env()?.read_logs_snapshot(name, options).await
}

/// Streams the logs of `name`. Errors known up front (bad name, no such
/// sandbox, a cursor from elsewhere) are returned here; the stream itself may
/// end with [`Error::MissedRotation`] or [`Error::SandboxRemoved`].
///
/// # Errors
/// [`Error::NoHome`]; otherwise as [`Logs::log_stream`].
pub async fn log_stream(name: &str, options: &LogStreamOptions) -> Result<LogStream> {
    Logs::from_env()?.log_stream(name, options).await
}
