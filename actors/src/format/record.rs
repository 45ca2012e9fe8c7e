//! `exec.log` records: one JSON object per line, one line per captured chunk.
//!
//! `{"t":"2026-05-01T10:00:00.000Z","s":"stdout","d":"text","id":1}` then `\n`.
//! `d` holds the chunk as text when it is valid UTF-8, else standard base64 of
//! the raw bytes with `"e":"b64"`, so captured bytes come back exactly.
//! Field order, extra fields and other RFC 3339 offsets written by other tools
//! are accepted on read.

use std::borrow::Cow;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::source::LogSource;
use super::timestamp::{TimestampFormatter, TimestampParser};

/// Encodes records, reusing timestamp work across records.
#[derive(Debug, Default)]
pub struct RecordEncoder {
    timestamps: TimestampFormatter,
}

impl RecordEncoder {
    /// Replaces the contents of `buf` with one record, newline included.
    ///
    /// `session_id` is written for every source except [`LogSource::System`].
    pub fn encode(
        &mut self,
        buf: &mut Vec<u8>,
        t: DateTime<Utc>,
        source: LogSource,
        session_id: Option<u64>,
        data: &[u8],
    ) {
        buf.clear();
        buf.extend_from_slice(b"{\"t\":\"");
        self.timestamps.write(t, buf);
        buf.extend_from_slice(b"\",\"s\":\"");
        buf.extend_from_slice(source.as_str().as_bytes());
        buf.extend_from_slice(b"\",\"d\":");
        match std::str::from_utf8(data) {
            Ok(text) => write_json_string(buf, text),
            Err(_) => {
                buf.push(b'"');
                let start = buf.len();
                buf.resize(
                    start + base64::encoded_len(data.len(), true).unwrap_or(0),
                    0,
                );
                let written = BASE64
                    .encode_slice(data, &mut buf[start..])
                    .unwrap_or_default();
                buf.truncate(start + written);
                buf.extend_from_slice(b"\",\"e\":\"b64\"");
            }
        }
        if let (Some(id), false) = (session_id, source == LogSource::System) {
            buf.extend_from_slice(b",\"id\":");
            buf.extend_from_slice(id.to_string().as_bytes());
        }
        buf.extend_from_slice(b"}\n");
    }
}

fn write_json_string(buf: &mut Vec<u8>, text: &str) {
    // Writing a `str` into a `Vec` cannot fail: serde_json only reports the
    // writer's own errors here.
    if serde_json::to_writer(&mut *buf, text).is_err() {
        buf.extend_from_slice(b"\"\"");
    }
}

/// One decoded `exec.log` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Capture time.
    pub timestamp: DateTime<Utc>,
    /// Which stream it came from.
    pub source: LogSource,
    /// Exec session id (`None` on system records).
    pub session_id: Option<u64>,
    /// The captured bytes, exactly as written.
    pub data: Bytes,
}

/// Why a line was not a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// Nothing but whitespace.
    Empty,
    /// Not JSON, a missing field, a bad timestamp or bad base64.
    Malformed,
    /// A source name this version does not know.
    UnknownSource,
}

#[derive(Deserialize)]
struct RawRecord<'a> {
    #[serde(borrow)]
    t: Cow<'a, str>,
    #[serde(borrow)]
    s: Cow<'a, str>,
    #[serde(borrow)]
    d: Cow<'a, str>,
    #[serde(default)]
    id: Option<u64>,
    #[serde(default, borrow)]
    e: Option<Cow<'a, str>>,
}

/// Decodes records, reusing timestamp work across lines.
#[derive(Debug, Default)]
pub struct RecordDecoder {
    timestamps: TimestampParser,
}

impl RecordDecoder {
    /// Decodes `line` (without its `\n`), a slice of `buf`.
    ///
    /// Text that needed no unescaping is returned as a slice of `buf`, not a copy.
    pub fn decode(&mut self, buf: &Bytes, line: &[u8]) -> Result<Record, SkipReason> {
        if line.iter().all(u8::is_ascii_whitespace) {
            return Err(SkipReason::Empty);
        }
        let raw: RawRecord<'_> = serde_json::from_slice(line).map_err(|_| SkipReason::Malformed)?;
        let source = LogSource::from_name(&raw.s).ok_or(SkipReason::UnknownSource)?;
        let timestamp = self.timestamps.parse(&raw.t).ok_or(SkipReason::Malformed)?;
        let data = match raw.e.as_deref() {
            None => match raw.d {
                Cow::Borrowed(text) => buf.slice_ref(text.as_bytes()),
                Cow::Owned(text) => Bytes::from(text.into_bytes()),
            },
            Some("b64") => Bytes::from(
                BASE64
                    .decode(raw.d.as_bytes())
                    .map_err(|_| SkipReason::Malformed)?,
            ),
            Some(_) => return Err(SkipReason::Malformed),
        };
        let session_id = if source == LogSource::System {
            None
        } else {
            raw.id
        };
        Ok(Record {
            timestamp,
            source,
            session_id,
            data,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn decode(line: &[u8]) -> Result<Record, SkipReason> {
        let buf = Bytes::copy_from_slice(line);
        RecordDecoder::default().decode(&buf, &buf)
    }

    #[test]
    fn spec_example_encodes_exactly() {
        let t = Utc.with_ymd_and_hms(2026, 5, 1, 10, 0, 0).unwrap();
        let mut enc = RecordEncoder::default();
        let mut line = Vec::new();
        enc.encode(&mut line, t, LogSource::Stdout, Some(1), b"text");
        assert_eq!(
            line,
            b"{\"t\":\"2026-05-01T10:00:00.000Z\",\"s\":\"stdout\",\"d\":\"text\",\"id\":1}\n"
        );
        enc.encode(
            &mut line,
            t,
            LogSource::System,
            Some(1),
            b"--- sandbox started ---",
        );
        assert_eq!(
            line,
            b"{\"t\":\"2026-05-01T10:00:00.000Z\",\"s\":\"system\",\"d\":\"--- sandbox started ---\"}\n"
        );
    }

    #[test]
    fn lossless_round_trip() {
        let t = Utc.timestamp_millis_opt(1_777_777_777_123).unwrap();
        let mut enc = RecordEncoder::default();
        let cases: [&[u8]; 6] = [
            b"plain",
            b"quote \" backslash \\ newline \n tab \t nul \0",
            "unicode ✓ é 🦀".as_bytes(),
            b"\xff\xfe not utf8 \x80",
            b"",
            b"\xe2\x9c",
        ];
        for (i, data) in cases.into_iter().enumerate() {
            let mut line = Vec::new();
            enc.encode(&mut line, t, LogSource::Stderr, Some(i as u64 + 2), data);
            assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
            let rec = decode(&line[..line.len() - 1]).unwrap();
            assert_eq!(rec.data.as_ref(), data);
            assert_eq!(rec.timestamp, t);
            assert_eq!(rec.session_id, Some(i as u64 + 2));
            assert_eq!(rec.source, LogSource::Stderr);
        }
    }

    #[test]
    fn foreign_shapes_read() {
        let rec = decode(br#" { "id": 7, "d": "x", "extra": [1,2], "s": "output", "t": "2026-05-01T12:00:00+02:00" } "#)
            .unwrap();
        assert_eq!(rec.session_id, Some(7));
        assert_eq!(rec.source, LogSource::Output);
        assert_eq!(
            rec.timestamp,
            Utc.with_ymd_and_hms(2026, 5, 1, 10, 0, 0).unwrap()
        );
        assert_eq!(rec.data.as_ref(), b"x");
    }

    #[test]
    fn bad_lines_are_classified() {
        assert_eq!(decode(b"").unwrap_err(), SkipReason::Empty);
        assert_eq!(decode(b"   \r").unwrap_err(), SkipReason::Empty);
        assert_eq!(decode(b"{not json").unwrap_err(), SkipReason::Malformed);
        assert_eq!(
            decode(br#"{"t":"2026-05-01T10:00:00.000Z","s":"stdout"}"#).unwrap_err(),
            SkipReason::Malformed
        );
        assert_eq!(
            decode(br#"{"t":"yesterday","s":"stdout","d":"x"}"#).unwrap_err(),
            SkipReason::Malformed
        );
        assert_eq!(
            decode(br#"{"t":"2026-05-01T10:00:00.000Z","s":"stdout","d":"!!","e":"b64"}"#)
                .unwrap_err(),
            SkipReason::Malformed
        );
        assert_eq!(
            decode(br#"{"t":"2026-05-01T10:00:00.000Z","s":"stdout","d":"x","e":"zip"}"#)
                .unwrap_err(),
            SkipReason::Malformed
        );
        assert_eq!(
            decode(br#"{"t":"2026-05-01T10:00:00.000Z","s":"video","d":"x"}"#).unwrap_err(),
            SkipReason::UnknownSource
        );
        assert_eq!(decode(b"\xff\xfe").unwrap_err(), SkipReason::Malformed);
    }

    #[test]
    fn unescaped_text_is_not_copied() {
        let buf = Bytes::from_static(
            br#"{"t":"2026-05-01T10:00:00.000Z","s":"stdout","d":"zero copy","id":1}"#,
        );
        let rec = RecordDecoder::default().decode(&buf, &buf).unwrap();
        let base = buf.as_ptr() as usize;
        let ptr = rec.data.as_ptr() as usize;
        assert!(ptr >= base && ptr < base + buf.len());
    }
}
