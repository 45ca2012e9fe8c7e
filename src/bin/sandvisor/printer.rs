//! How `sandvisor logs` prints entries: the captured bytes as they were
//! written (optionally with a timestamp at the start of each line), or one
//! JSON object per entry (`--json`).
//!
//! Entries are formatted straight into one buffer, which goes out in large
//! writes: no allocation per entry or line. Ordering: stderr entries go to
//! stderr and everything else to stdout, and the two keep their relative
//! order — a change of destination writes out what is pending first. The
//! caller calls [`Printer::flush`] whenever it is about to wait for more
//! entries, so a follower shows each entry as soon as it is read.

use std::io::Write;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use sandvisor::engine::log::format::timestamp::TimestampFormatter;
use sandvisor::logs::LogSource;
use sandvisor::{Error, LogEntry, Result};

use crate::out::write_output;

/// Pending output at least this large is written out at once.
const FLUSH_BYTES: usize = 64 << 10;

/// Prints entries; see the module docs.
pub(crate) struct Printer {
    json: bool,
    timestamps: bool,
    /// Per source: the next byte starts a line (for timestamp prefixes).
    at_line_start: [bool; 4],
    /// What went to stdout last ended a line (every source but stderr goes
    /// there).
    stdout_at_line_start: bool,
    /// Bytes not yet written, all for `target`.
    pending: Vec<u8>,
    /// Where `pending` goes: [`LogSource::Stderr`] for stderr, anything
    /// else for stdout.
    target: LogSource,
    time: TimestampFormatter,
    /// The current entry's timestamp prefix.
    prefix: Vec<u8>,
}

impl Printer {
    /// A printer of JSON lines, or of the bytes with or without timestamps.
    pub(crate) fn new(json: bool, timestamps: bool) -> Self {
        Self {
            json,
            timestamps,
            at_line_start: [true; 4],
            stdout_at_line_start: true,
            pending: Vec::with_capacity(FLUSH_BYTES),
            target: LogSource::Stdout,
            time: TimestampFormatter::default(),
            prefix: Vec::new(),
        }
    }

    /// Formats `entry` into the pending output, writing out first what is
    /// pending for the other destination, and after it when a lot is pending.
    ///
    /// # Errors
    /// A failed write, as [`Error::Io`] on `stdout` (a closed stdout is one
    /// `main` ends quietly).
    pub(crate) fn print(&mut self, entry: &LogEntry) -> Result<()> {
        let target = if entry.source == LogSource::Stderr && !self.json {
            LogSource::Stderr
        } else {
            LogSource::Stdout
        };
        if target != self.target {
            self.flush()?;
            self.target = target;
        }
        if self.json {
            self.json_line(entry);
        } else {
            self.text(entry);
        }
        if self.pending.len() >= FLUSH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes out what is pending.
    ///
    /// # Errors
    /// As [`print`](Self::print).
    pub(crate) fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let written = write_output(self.target, &self.pending);
        self.pending.clear();
        written.map_err(|source| Error::Io {
            path: "stdout".into(),
            source,
        })
    }

    /// `{"cursor":…,"d":…,["e":"b64",]["id":…,]"s":…,"t":…}` and a newline:
    /// the keys in the order earlier versions printed them.
    fn json_line(&mut self, entry: &LogEntry) {
        let out = &mut self.pending;
        out.extend_from_slice(b"{\"cursor\":\"");
        entry.cursor.write_text(out);
        out.extend_from_slice(b"\",\"d\":");
        let b64 = match std::str::from_utf8(&entry.data) {
            Ok(text) => {
                // Writing a `str` into a `Vec` cannot fail.
                let _ = serde_json::to_writer(&mut *out, text);
                false
            }
            Err(_) => {
                out.push(b'"');
                let start = out.len();
                out.resize(
                    start + base64::encoded_len(entry.data.len(), true).unwrap_or(0),
                    0,
                );
                let written = BASE64
                    .encode_slice(&entry.data, &mut out[start..])
                    .unwrap_or(0);
                out.truncate(start + written);
                out.push(b'"');
                true
            }
        };
        if b64 {
            out.extend_from_slice(b",\"e\":\"b64\"");
        }
        if let Some(id) = entry.session_id {
            // Writing into a `Vec` cannot fail.
            let _ = write!(out, ",\"id\":{id}");
        }
        out.extend_from_slice(b",\"s\":\"");
        out.extend_from_slice(entry.source.as_str().as_bytes());
        out.extend_from_slice(b"\",\"t\":\"");
        self.time.write(entry.timestamp, out);
        out.extend_from_slice(b"\"}\n");
    }

    fn text(&mut self, entry: &LogEntry) {
        let system = entry.source == LogSource::System;
        let start = self.pending.len();
        // A system record is a line of its own: it ends the line output
        // left open, and ends with a newline of its own.
        if system && !self.stdout_at_line_start {
            self.pending.push(b'\n');
            self.at_line_start[slot(LogSource::Stdout)] = true;
            self.at_line_start[slot(LogSource::Output)] = true;
        }
        let at_line_start = &mut self.at_line_start[slot(entry.source)];
        if self.timestamps {
            self.prefix.clear();
            self.time.write(entry.timestamp, &mut self.prefix);
            self.prefix.push(b' ');
            for line in entry.data.split_inclusive(|&b| b == b'\n') {
                if *at_line_start {
                    self.pending.extend_from_slice(&self.prefix);
                }
                self.pending.extend_from_slice(line);
                *at_line_start = line.last() == Some(&b'\n');
            }
        } else if let Some(&last) = entry.data.last() {
            self.pending.extend_from_slice(&entry.data);
            *at_line_start = last == b'\n';
        }
        if system && !*at_line_start {
            self.pending.push(b'\n');
            *at_line_start = true;
        }
        if entry.source != LogSource::Stderr && self.pending.len() > start {
            self.stdout_at_line_start = self.pending.last() == Some(&b'\n');
        }
    }
}

/// The index of `source` in [`Printer::at_line_start`].
fn slot(source: LogSource) -> usize {
    source as usize % 4
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use chrono::{SecondsFormat, TimeZone, Utc};
    use sandvisor::engine::log::format::{FileId, Position, StreamKey};
    use sandvisor::LogCursor;
    use serde_json::json;

    fn entry(source: LogSource, id: Option<u64>, data: &[u8]) -> LogEntry {
        let file = FileId {
            ino: 42,
            btime_ns: 7,
        };
        let mut cursor = LogCursor::new(file);
        cursor.set_position(StreamKey::Exec, Position { file, offset: 99 });
        LogEntry {
            timestamp: Utc.timestamp_millis_opt(1_777_000_000_123).unwrap(),
            source,
            session_id: id,
            data: Bytes::copy_from_slice(data),
            cursor,
        }
    }

    #[test]
    fn json_lines_are_what_serde_json_prints() {
        for entry in [
            entry(
                LogSource::Stdout,
                Some(3),
                b"quote \" tab \t nul \0 \xe2\x9c\x93\n",
            ),
            entry(LogSource::Stderr, Some(u64::MAX), b"\xff\xfe"),
            entry(LogSource::System, None, b"--- sandbox started ---"),
        ] {
            let mut printer = Printer::new(true, false);
            printer.json_line(&entry);
            let (data, b64) = match std::str::from_utf8(&entry.data) {
                Ok(text) => (text.to_string(), false),
                Err(_) => (BASE64.encode(&entry.data), true),
            };
            let mut want = json!({
                "t": entry.timestamp.to_rfc3339_opts(SecondsFormat::Millis, true),
                "s": entry.source,
                "d": data,
                "cursor": entry.cursor.to_string(),
            });
            if let Some(id) = entry.session_id {
                want["id"] = json!(id);
            }
            if b64 {
                want["e"] = json!("b64");
            }
            assert_eq!(
                String::from_utf8(printer.pending).unwrap(),
                format!("{want}\n")
            );
        }
    }

    #[test]
    fn timestamps_start_every_line_of_each_source() {
        let mut printer = Printer::new(false, true);
        printer.text(&entry(LogSource::Stdout, Some(1), b"a\nb"));
        printer.text(&entry(LogSource::Stdout, Some(1), b"c\n"));
        printer.text(&entry(LogSource::System, None, b"marker"));
        let stamp = "2026-04-24T03:06:40.123Z ";
        assert_eq!(
            String::from_utf8(printer.pending).unwrap(),
            format!("{stamp}a\n{stamp}bc\n{stamp}marker\n")
        );
    }
}
