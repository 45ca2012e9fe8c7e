//! Log entries as readers deliver them.

use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::format::{LogCursor, LogSource};

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
