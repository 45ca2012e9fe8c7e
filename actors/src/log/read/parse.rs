//! Turning complete lines into [`LogEntry`]s: decoding (`exec.log` records or
//! plain text lines), filtering by source and `since`, and setting each
//! entry's own position in its cursor.
//!
//! Pure: no file access. The [`Follower`](super::follower::Follower) hands in
//! chunks that end at a line boundary and keeps the torn tail itself.
//! Undecodable lines are not errors here: they are counted, and the follower
//! warns about them once per file.

use std::ops::Range;

use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::log::format::{
    FileId, LogCursor, LogSource, Position, RecordData, RecordDecoder, SourceSet, StreamKey,
    TextDecoder,
};
use crate::log::LogEntry;

/// Chunks at least this large are parsed on two threads.
const PARALLEL_PARSE_BYTES: usize = 256 << 10;

/// Per-thread parsing state (timestamp caches).
#[derive(Debug, Default)]
pub(super) struct Decoders {
    records: RecordDecoder,
    text: TextDecoder,
}

/// Entries parsed from part of a chunk, and the lines skipped there.
struct Parsed {
    entries: Vec<LogEntry>,
    skipped: u64,
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
        complete: &Bytes,
        offset: u64,
        out: &mut Vec<LogEntry>,
    ) -> u64 {
        // Large chunks are parsed in two halves on two threads: parsing is
        // most of a full read's cost.
        let split = (complete.len() >= PARALLEL_PARSE_BYTES)
            .then(|| memchr::memchr(b'\n', &complete[complete.len() / 2..]))
            .flatten()
            .map(|i| complete.len() / 2 + i + 1)
            .filter(|&at| at < complete.len());
        match split {
            Some(at) => {
                let mut second = Decoders::default();
                let (mut head, tail) = rayon::join(
                    || self.parse(decoders, complete, 0..at, offset),
                    || self.parse(&mut second, complete, at..complete.len(), offset),
                );
                head.entries.extend(tail.entries);
                head.skipped += tail.skipped;
                out.append(&mut head.entries);
                head.skipped
            }
            None => {
                let mut parsed = self.parse(decoders, complete, 0..complete.len(), offset);
                out.append(&mut parsed.entries);
                parsed.skipped
            }
        }
    }

    fn wanted(&self, source: LogSource, timestamp: DateTime<Utc>) -> bool {
        self.sources.contains(source) && self.since.is_none_or(|since| timestamp >= since)
    }

    /// Parses the complete lines of `chunk[range]`; `base` is the file offset
    /// of `chunk[0]`.
    fn parse(
        &self,
        decoders: &mut Decoders,
        chunk: &Bytes,
        range: Range<usize>,
        base: u64,
    ) -> Parsed {
        let mut parsed = Parsed {
            entries: Vec::with_capacity(range.len() / 96),
            skipped: 0,
        };
        // Unescaped and base64 bytes of the range share one allocation.
        let mut arena = Vec::new();
        let mut in_arena = Vec::new();
        let mut line_start = range.start;
        for newline in memchr::memchr_iter(b'\n', &chunk[range.clone()]).map(|i| i + range.start) {
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
            let entry = if self.stream.is_records() {
                match decoders.records.decode_into(chunk, line, &mut arena) {
                    Ok(rec) => self.wanted(rec.source, rec.timestamp).then(|| {
                        let data = match rec.data {
                            RecordData::Shared(bytes) => bytes,
                            RecordData::Arena(range) => {
                                in_arena.push((parsed.entries.len(), range));
                                Bytes::new()
                            }
                        };
                        LogEntry {
                            timestamp: rec.timestamp,
                            source: rec.source,
                            session_id: rec.session_id,
                            data,
                            cursor,
                        }
                    }),
                    Err(_) => {
                        parsed.skipped += 1;
                        None
                    }
                }
            } else {
                match decoders.text.decode(line, self.mtime) {
                    Some((timestamp, data)) => {
                        self.wanted(LogSource::System, timestamp)
                            .then_some(LogEntry {
                                timestamp,
                                source: LogSource::System,
                                session_id: None,
                                data,
                                cursor,
                            })
                    }
                    None => {
                        parsed.skipped += 1;
                        None
                    }
                }
            };
            parsed.entries.extend(entry);
        }
        if !in_arena.is_empty() {
            let arena = Bytes::from(arena);
            for (index, range) in in_arena {
                parsed.entries[index].data = arena.slice(range);
            }
        }
        parsed
    }
}
