//! Log entries as readers deliver them.

use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::format::{LogCursor, LogSource, Position, StreamKey};

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

/// An entry as a tailer parsed it: where it ends in its file, no cursor yet.
#[derive(Debug, Clone)]
pub struct RawEntry {
    /// Capture time.
    pub timestamp: DateTime<Utc>,
    /// Which stream it came from.
    pub source: LogSource,
    /// Exec session id.
    pub session_id: Option<u64>,
    /// The bytes.
    pub data: Bytes,
    /// The position just past this entry's line.
    pub end: Position,
}

impl RawEntry {
    /// The entry with its cursor: `cursor` advanced past this entry in `stream`.
    pub fn into_entry(self, stream: StreamKey, cursor: &mut LogCursor) -> LogEntry {
        cursor.set_position(stream, self.end);
        LogEntry {
            timestamp: self.timestamp,
            source: self.source,
            session_id: self.session_id,
            data: self.data,
            cursor: *cursor,
        }
    }
}
