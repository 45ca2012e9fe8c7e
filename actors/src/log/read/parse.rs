//! Turning complete lines into [`LogEntry`]s: decoding (`exec.log` records or
//! plain text lines), filtering by source and `since`, and setting each
//! entry's own position in its cursor.
//!
//! Pure: no file access. The [`Follower`](super::follower::Follower) hands in
//! chunks that end at a line boundary and keeps the torn tail itself.
//! Undecodable lines are not errors here: they are counted, and the follower
//! warns about them once per file.

use bytes::Bytes;
use chrono::{DateTime, Utc};

use super::entries::Entries;
use crate::log::format::{
    FileId, LogCursor, LogSource, Position, RecordDecoder, SourceSet, StreamKey, TextDecoder,
};
use crate::log::LogEntry;

/// Per-thread parsing state (timestamp caches).
#[derive(Debug, Default)]
pub(super) struct Decoders {
    records: RecordDecoder,
    text: TextDecoder,
}

/// Entries parsed from a run of lines, and the lines skipped there.
pub(super) struct Parsed {
    /// The entries wanted, in file order.
    pub(super) entries: Vec<LogEntry>,
    /// Lines skipped (empty, malformed, unknown source).
    pub(super) skipped: u64,
    /// Whether the entries are in time order.
    pub(super) in_order: bool,
}

/// What a chunk's lines are parsed as and filtered by.
pub(super) struct LineFilter {
    /// Which log: records for `exec.log`, text lines otherwise.
    pub(super) stream: StreamKey,
    /// Sources delivered.
    pub(super) sources: SourceSet,
    /// Entries before this are dropped.
    pub(super) since: Option<DateTime<Utc>>,
    /// Every entry's cursor is this one with the entry's own position set.
    pub(super) base: LogCursor,
    /// The file the chunk comes from.
    pub(super) file: FileId,
    /// The file's modification time: the time of text lines without their own.
    pub(super) mtime: DateTime<Utc>,
}

impl LineFilter {
    /// Parses every line of `complete` (which ends with `\n` and starts at
    /// file offset `offset`) into `out`, in order, and returns how many lines
    /// were skipped (empty, malformed, unknown source).
    pub(super) fn parse_all(
        &self,
        decoders: &mut Decoders,
        complete: &[u8],
        offset: u64,
        out: &mut Entries,
    ) -> u64 {
        let parsed = self.parse(decoders, complete, offset);
        out.push_run(parsed.entries, parsed.in_order);
        parsed.skipped
    }

    fn wanted(&self, source: LogSource, timestamp: DateTime<Utc>) -> bool {
        self.sources.contains(source) && self.since.is_none_or(|since| timestamp >= since)
    }

    /// Parses the complete lines of `chunk` (which ends with `\n`); `base`
    /// is the file offset of `chunk[0]`. The entries' bytes share one buffer.
    pub(super) fn parse(&self, decoders: &mut Decoders, chunk: &[u8], base: u64) -> Parsed {
        let mut parsed = Parsed {
            entries: Vec::with_capacity(chunk.len() / 96),
            skipped: 0,
            in_order: true,
        };
        let mut last = None;
        // Decoded bytes are never longer than the lines they come from.
        let mut arena = Vec::with_capacity(if self.stream.is_records() {
            chunk.len()
        } else {
            0
        });
        let mut spans = Vec::with_capacity(parsed.entries.capacity());
        let mut line_start = 0;
        for newline in memchr::memchr_iter(b'\n', chunk) {
            let line = &chunk[line_start..newline];
            line_start = newline + 1;
            let mut cursor = self.base;
            cursor.set_position(
                self.stream,
                Position {
                    file: self.file,
                    offset: base + newline as u64 + 1,
                },
            );
            if self.stream.is_records() {
                let mark = arena.len();
                match decoders.records.decode_into(line, &mut arena) {
                    Ok(rec) if self.wanted(rec.source, rec.timestamp) => {
                        parsed.in_order &= last.is_none_or(|last| last <= rec.timestamp);
                        last = Some(rec.timestamp);
                        spans.push(rec.data);
                        parsed.entries.push(LogEntry {
                            timestamp: rec.timestamp,
                            source: rec.source,
                            session_id: rec.session_id,
                            data: Bytes::new(),
                            cursor,
                        });
                    }
                    Ok(_) => arena.truncate(mark),
                    Err(_) => parsed.skipped += 1,
                }
            } else {
                match decoders.text.decode(line, self.mtime) {
                    Some((timestamp, data)) => {
                        if self.wanted(LogSource::System, timestamp) {
                            parsed.in_order &= last.is_none_or(|last| last <= timestamp);
                            last = Some(timestamp);
                            parsed.entries.push(LogEntry {
                                timestamp,
                                source: LogSource::System,
                                session_id: None,
                                data,
                                cursor,
                            });
                        }
                    }
                    None => parsed.skipped += 1,
                }
            }
        }
        if !spans.is_empty() {
            arena.shrink_to_fit();
            let arena = Bytes::from(arena);
            for (entry, span) in parsed.entries.iter_mut().zip(spans) {
                entry.data = arena.slice(span);
            }
        }
        parsed
    }
}
