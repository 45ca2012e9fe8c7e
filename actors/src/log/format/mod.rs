//! The on-disk log format every actor shares: `exec.log` records, plain-text
//! logs, file identity and cursors.

pub mod cursor;
pub mod identity;
pub mod record;
pub mod scan;
pub mod source;
pub mod text;
pub mod timestamp;

pub use cursor::{LogCursor, LogCursorParseError, Position, StreamKey};
pub use identity::FileId;
pub use record::{ArenaRecord, Record, RecordDecoder, RecordEncoder, SkipReason};
pub use source::{LogSource, SourceSet};
pub use text::TextDecoder;
