//! Reading a sandbox's logs: one [`Subscriber`](subscriber::Subscriber) per
//! read (`read_logs` call or `log_stream`), one [`Tailer`](tailer::Tailer) per
//! log it reads, and the process's one [watch hub](watch_hub).
//!
//! This module holds the messages that cross between those files, so that no
//! two of them import each other:
//!
//! | Message | Sender → receiver |
//! |---|---|
//! | [`SubscriberMsg::Batch`], [`SubscriberMsg::End`] | tailer → its subscriber |
//! | [`SubscriberMsg::Tailers`], [`SubscriberMsg::Cursor`] | probes and tests → subscriber |
//! | [`TailerMsg::Wake`] | watch hub (through the tailer's waker) → tailer |
//! | [`TailerMsg::Poll`] | the tailer's own 250 ms interval → tailer |
//! | [`TailerMsg::Ack`] | subscriber → tailer |
//! | [`StreamBatch`] | subscriber → [`LogStream`](stream::LogStream) (bounded channel) |
//! | [`Collected`] | subscriber → [`collect`](stream::collect) (oneshot) |
//!
//! Files, top down: [`stream`] (the public face), [`subscriber`], [`tailer`],
//! [`watch_hub`]; below the tailer, the synchronous reader: [`follower`]
//! (one log, by file identity), [`chain`] (the rotation walk), [`parse`]
//! (line filter and decoders).

pub mod chain;
pub mod entries;
pub mod follower;
pub mod parse;
pub mod stream;
pub mod subscriber;
pub mod tailer;
pub mod watch_hub;

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use ractor::{ActorCell, RpcReplyPort};
use tokio::sync::{mpsc, oneshot};

use self::entries::Entries;
use crate::log::format::{LogCursor, Position, SourceSet, StreamKey};
use crate::log::{LogEntry, Result};

/// What to read.
#[derive(Debug, Clone)]
pub struct ReadPlan {
    /// The log directory.
    pub dir: PathBuf,
    /// The logs to read.
    pub streams: Vec<StreamKey>,
    /// Sources delivered.
    pub sources: SourceSet,
    /// Resume point; logs it has no position for are read from the beginning.
    pub cursor: LogCursor,
    /// Entries before this are not delivered.
    pub since: Option<DateTime<Utc>>,
    /// The stream ends before the first entry at or after this.
    pub until: Option<DateTime<Utc>>,
    /// Keep reading as the logs grow.
    pub follow: bool,
}

/// How a tailer's reading ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TailEnd {
    /// Everything on disk was read (not following).
    Done,
    /// The file after the delivered position was rotated past retention.
    Missed {
        /// The oldest retained position of that log.
        resume_from: Position,
    },
    /// The log directory was removed.
    DirGone,
}

/// Batches sent to a stream's consumer.
pub type StreamBatch = Result<Entries>;

/// What `read_logs` collects.
#[derive(Debug)]
pub struct Collected {
    /// Entries in time order, each with the cursor just after it in that order.
    pub entries: Vec<LogEntry>,
    /// The cursor after everything read, filtered out or not.
    pub cursor: LogCursor,
}

/// Where entries go.
pub enum Sink {
    /// A bounded channel behind a [`LogStream`](crate::LogStream).
    Stream(mpsc::Sender<StreamBatch>),
    /// Collected and sent once, sorted, for a one-shot read.
    Collect(oneshot::Sender<Result<Collected>>),
}

/// Messages of the [`Subscriber`](subscriber::Subscriber).
pub enum SubscriberMsg {
    /// Entries from a tailer, and the position just past what they cover.
    Batch {
        /// Which log.
        stream: StreamKey,
        /// The sending tailer's epoch.
        epoch: u64,
        /// Entries (already filtered by source and `since`).
        entries: Entries,
        /// Position after the batch.
        end: Option<Position>,
        /// On a one-shot read's first batch: about how many entries are
        /// still to come, so that a collector can make room once.
        more: Option<usize>,
    },
    /// A tailer finished.
    End {
        /// Which log.
        stream: StreamKey,
        /// The sending tailer's epoch.
        epoch: u64,
        /// How.
        end: TailEnd,
    },
    /// The current tailers, for probes and fault tests.
    Tailers(RpcReplyPort<Vec<ActorCell>>),
    /// The cursor after everything delivered so far.
    Cursor(RpcReplyPort<LogCursor>),
}

/// Messages of the [`Tailer`](tailer::Tailer).
#[derive(Debug)]
pub enum TailerMsg {
    /// Something changed in the log directory.
    Wake,
    /// The backstop poll.
    Poll,
    /// The subscriber accepted the last batch.
    Ack,
}
