//! Plain-text logs (`runtime.log`, `kernel.log`): one entry per line.
//!
//! If a line's first whitespace-separated token is an RFC 3339 timestamp, that
//! is the entry's time and the rest (leading spaces trimmed) is the body;
//! otherwise the whole line is the body and the file's mtime is the time.
//! ANSI escapes are stripped and invalid UTF-8 is replaced.

use bytes::Bytes;
use chrono::{DateTime, Utc};

use super::timestamp::TimestampParser;

/// Decodes text lines, reusing timestamp work across lines.
#[derive(Debug, Default)]
pub struct TextDecoder {
    timestamps: TimestampParser,
}

impl TextDecoder {
    /// Decodes one line (without its `\n`); `None` if nothing is left after
    /// stripping escapes and whitespace.
    pub fn decode(&mut self, line: &[u8], mtime: DateTime<Utc>) -> Option<(DateTime<Utc>, Bytes)> {
        let stripped = strip_ansi_escapes::strip(line);
        let text = String::from_utf8_lossy(&stripped);
        let text = text.trim_end_matches('\r');
        if text.trim().is_empty() {
            return None;
        }
        let trimmed = text.trim_start();
        let token_end = trimmed.find(char::is_whitespace).unwrap_or(trimmed.len());
        let (token, rest) = trimmed.split_at(token_end);
        match self.timestamps.parse(token) {
            Some(t) => Some((t, Bytes::copy_from_slice(rest.trim_start().as_bytes()))),
            None => Some((mtime, Bytes::copy_from_slice(text.as_bytes()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn timestamped_plain_and_escaped_lines() {
        let mtime = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
        let mut dec = TextDecoder::default();
        let (t, body) = dec
            .decode(
                b"\x1b[2m2026-05-01T10:00:00.123456Z\x1b[0m \x1b[32m INFO\x1b[0m started",
                mtime,
            )
            .unwrap();
        assert_eq!(t, Utc.timestamp_micros(1_777_629_600_123_456).unwrap());
        assert_eq!(body.as_ref(), b"INFO started");
        let (t, body) = dec.decode(b"[    0.000000] Linux version", mtime).unwrap();
        assert_eq!(t, mtime);
        assert_eq!(body.as_ref(), b"[    0.000000] Linux version");
        let (_, body) = dec.decode(b"bad \xff byte\r", mtime).unwrap();
        assert_eq!(body.as_ref(), "bad \u{fffd} byte".as_bytes());
        assert!(dec.decode(b"  \x1b[0m ", mtime).is_none());
    }
}
