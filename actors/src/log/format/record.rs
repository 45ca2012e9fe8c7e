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
use std::ops::Range;

use serde::de::{Deserialize, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};

use super::scan::{scan, Scan};
use super::source::LogSource;
use super::timestamp::{TimestampFormatter, TimestampParser};

/// Encodes records, reusing timestamp work across records.
#[derive(Debug, Default)]
pub struct RecordEncoder {
    timestamps: TimestampFormatter,
}

impl RecordEncoder {
    /// Appends one record, newline included, to `buf`.
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

/// One decoded record whose bytes sit in the caller's arena.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArenaRecord {
    /// Capture time.
    pub timestamp: DateTime<Utc>,
    /// Which stream it came from.
    pub source: LogSource,
    /// Exec session id (`None` on system records).
    pub session_id: Option<u64>,
    /// Where its bytes are in the arena.
    pub data: Range<usize>,
}

/// Decodes records, reusing timestamp work across lines.
///
/// Lines in the shape sandvisor writes take the [fast path](super::scan);
/// every other line is decoded by serde_json (the exact path). Both give the
/// same record or the same [`SkipReason`] for every line.
#[derive(Debug, Default)]
pub struct RecordDecoder {
    timestamps: TimestampParser,
}

impl RecordDecoder {
    /// Decodes `line` (without its `\n`) into a record that owns its bytes.
    ///
    /// # Errors
    /// A [`SkipReason`] for a line that is not a record: empty, malformed, or
    /// of an unknown source. Readers skip such lines.
    pub fn decode(&mut self, line: &[u8]) -> Result<Record, SkipReason> {
        let mut arena = Vec::new();
        let rec = self.decode_into(line, &mut arena)?;
        arena.truncate(rec.data.end);
        let data = Bytes::from(arena).slice(rec.data.start..);
        Ok(Record {
            timestamp: rec.timestamp,
            source: rec.source,
            session_id: rec.session_id,
            data,
        })
    }

    /// Decodes `line` (without its `\n`), appending its bytes to `arena`: a
    /// reader decodes a whole batch into one arena and freezes it once, so
    /// entries cost no allocation each.
    ///
    /// # Errors
    /// As [`decode`](Self::decode); nothing is left in `arena` for a skipped
    /// line.
    pub fn decode_into(
        &mut self,
        line: &[u8],
        arena: &mut Vec<u8>,
    ) -> Result<ArenaRecord, SkipReason> {
        match scan(line, &mut self.timestamps, arena) {
            Scan::Record {
                timestamp,
                source,
                session_id,
                data,
            } => Ok(ArenaRecord {
                timestamp,
                source,
                session_id,
                data,
            }),
            Scan::Other => self.decode_exact_into(line, arena),
        }
    }

    /// Like [`decode_into`](Self::decode_into), through serde_json only: the
    /// reference the fast path is held to.
    ///
    /// # Errors
    /// As [`decode`](Self::decode).
    pub fn decode_exact_into(
        &mut self,
        line: &[u8],
        arena: &mut Vec<u8>,
    ) -> Result<ArenaRecord, SkipReason> {
        if line.iter().all(u8::is_ascii_whitespace) {
            return Err(SkipReason::Empty);
        }
        let mark = arena.len();
        let mut de = serde_json::Deserializer::from_slice(line);
        let raw = RecordSeed { arena: &mut *arena }
            .deserialize(&mut de)
            .and_then(|raw| de.end().map(|()| raw));
        let raw = match raw {
            Ok(raw) => raw,
            Err(_) => {
                arena.truncate(mark);
                return Err(SkipReason::Malformed);
            }
        };
        let fail = |arena: &mut Vec<u8>, reason| {
            arena.truncate(mark);
            Err(reason)
        };
        let (Some(t), Some(s), Some(d)) = (raw.t, raw.s, raw.d) else {
            return fail(arena, SkipReason::Malformed);
        };
        let Some(source) = LogSource::from_name(&s) else {
            return fail(arena, SkipReason::UnknownSource);
        };
        let Some(timestamp) = self.timestamps.parse(&t) else {
            return fail(arena, SkipReason::Malformed);
        };
        let data = match raw.e.as_deref() {
            None => match d {
                Text::Borrowed(text) => {
                    let start = arena.len();
                    arena.extend_from_slice(text.as_bytes());
                    start..arena.len()
                }
                Text::Arena(range) => range,
            },
            Some("b64") => {
                let encoded = match &d {
                    Text::Borrowed(text) => text.as_bytes().to_vec(),
                    Text::Arena(range) => arena[range.clone()].to_vec(),
                };
                // Only the decoded bytes stay: the encoded text goes.
                arena.truncate(mark);
                if BASE64.decode_vec(&encoded, arena).is_err() {
                    return fail(arena, SkipReason::Malformed);
                }
                mark..arena.len()
            }
            Some(_) => return fail(arena, SkipReason::Malformed),
        };
        let session_id = if source == LogSource::System {
            None
        } else {
            raw.id
        };
        Ok(ArenaRecord {
            timestamp,
            source,
            session_id,
            data,
        })
    }
}

/// A JSON string: borrowed from the line, or unescaped into the arena.
enum Text<'a> {
    Borrowed(&'a str),
    Arena(Range<usize>),
}

struct RawRecord<'a> {
    t: Option<Cow<'a, str>>,
    s: Option<Cow<'a, str>>,
    d: Option<Text<'a>>,
    id: Option<u64>,
    e: Option<Cow<'a, str>>,
}

/// Deserializes a record with `d` going to the arena when it cannot be borrowed.
struct RecordSeed<'r> {
    arena: &'r mut Vec<u8>,
}

impl<'de> DeserializeSeed<'de> for RecordSeed<'_> {
    type Value = RawRecord<'de>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RecordSeed<'_> {
    type Value = RawRecord<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an exec.log record object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut raw = RawRecord {
            t: None,
            s: None,
            d: None,
            id: None,
            e: None,
        };
        while let Some(key) = map.next_key::<BorrowedStr<'de>>()? {
            match key.0.as_ref() {
                "t" => raw.t = Some(map.next_value::<BorrowedStr<'de>>()?.0),
                "s" => raw.s = Some(map.next_value::<BorrowedStr<'de>>()?.0),
                "d" => {
                    raw.d = Some(map.next_value_seed(TextSeed {
                        arena: &mut *self.arena,
                    })?)
                }
                "id" => raw.id = map.next_value::<Option<u64>>()?,
                "e" => raw.e = map.next_value::<Option<BorrowedStr<'de>>>()?.map(|e| e.0),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(raw)
    }
}

/// A string borrowed from the input when it has no escapes (serde's own
/// `Cow<str>` always allocates).
struct BorrowedStr<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for BorrowedStr<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CowVisitor;

        impl<'de> Visitor<'de> for CowVisitor {
            type Value = BorrowedStr<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                text: &'de str,
            ) -> Result<Self::Value, E> {
                Ok(BorrowedStr(Cow::Borrowed(text)))
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Self::Value, E> {
                Ok(BorrowedStr(Cow::Owned(text.to_string())))
            }
        }

        deserializer.deserialize_str(CowVisitor)
    }
}

struct TextSeed<'r> {
    arena: &'r mut Vec<u8>,
}

impl<'de> DeserializeSeed<'de> for TextSeed<'_> {
    type Value = Text<'de>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for TextSeed<'_> {
    type Value = Text<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E: serde::de::Error>(self, text: &'de str) -> Result<Self::Value, E> {
        Ok(Text::Borrowed(text))
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Self::Value, E> {
        let start = self.arena.len();
        self.arena.extend_from_slice(text.as_bytes());
        Ok(Text::Arena(start..self.arena.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn decode(line: &[u8]) -> Result<Record, SkipReason> {
        RecordDecoder::default().decode(line)
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
        line.clear();
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

    mod fast_and_exact {
        //! The fast path and the exact (serde_json) path give the same record,
        //! or the same reason to skip, for every line: records as sandvisor
        //! writes them (any bytes, escapes, base64), the same records written
        //! by other tools (field order, `\u` escapes, extra fields, spaces),
        //! and any of them torn or with a byte changed.

        use super::*;
        use chrono::TimeZone;
        use proptest::prelude::*;

        fn both(line: &[u8]) -> (Result<Record, SkipReason>, Result<Record, SkipReason>) {
            let owned = |arena: Vec<u8>, rec: ArenaRecord| Record {
                timestamp: rec.timestamp,
                source: rec.source,
                session_id: rec.session_id,
                data: Bytes::copy_from_slice(&arena[rec.data]),
            };
            let mut decoder = RecordDecoder::default();
            let mut arena = Vec::new();
            let fast = decoder
                .decode_into(line, &mut arena)
                .map(|rec| owned(arena.clone(), rec));
            let mut arena = Vec::new();
            let exact = RecordDecoder::default()
                .decode_exact_into(line, &mut arena)
                .map(|rec| owned(arena.clone(), rec));
            (fast, exact)
        }

        fn data() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..96),
                // Text heavy in what needs escaping.
                proptest::collection::vec(
                    prop_oneof![
                        Just('"'),
                        Just('\\'),
                        Just('\n'),
                        Just('\t'),
                        Just('\u{1}'),
                        Just('/'),
                        Just('\u{7f}'),
                        Just('é'),
                        Just('🦀'),
                        any::<char>(),
                        proptest::char::range('a', 'z'),
                    ],
                    0..48
                )
                .prop_map(|chars| chars.into_iter().collect::<String>().into_bytes()),
            ]
        }

        fn source() -> impl Strategy<Value = LogSource> {
            prop_oneof![
                Just(LogSource::Stdout),
                Just(LogSource::Stderr),
                Just(LogSource::Output),
                Just(LogSource::System),
            ]
        }

        /// A record as sandvisor writes it, without its newline.
        fn canonical() -> impl Strategy<Value = Vec<u8>> {
            (
                0i64..4_000_000_000_000,
                source(),
                proptest::option::of(any::<u64>()),
                data(),
            )
                .prop_map(|(millis, source, id, data)| {
                    let mut line = Vec::new();
                    let t = Utc.timestamp_millis_opt(millis).unwrap();
                    RecordEncoder::default().encode(&mut line, t, source, id, &data);
                    line.pop();
                    line
                })
        }

        /// The same fields as another tool might write them.
        fn foreign() -> impl Strategy<Value = Vec<u8>> {
            (
                canonical(),
                any::<bool>(),
                any::<bool>(),
                any::<bool>(),
                proptest::sample::select(vec!["t", "s", "d", "id", "e"]),
            )
                .prop_map(|(line, reverse, ascii, spaced, drop)| {
                    let value: serde_json::Value = serde_json::from_slice(&line).unwrap();
                    let mut fields: Vec<(String, serde_json::Value)> =
                        value.as_object().unwrap().clone().into_iter().collect();
                    if reverse {
                        fields.reverse();
                        fields.push(("extra".into(), serde_json::json!([1, {"x": null}])));
                    }
                    if spaced {
                        fields.retain(|(key, _)| key != drop);
                    }
                    let mut out = String::from(if spaced { "{ " } else { "{" });
                    for (i, (key, value)) in fields.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        let mut text = serde_json::to_string(value).unwrap();
                        if ascii {
                            text = text
                                .chars()
                                .map(|c| {
                                    if c.is_ascii() {
                                        c.to_string()
                                    } else {
                                        format!("\\u{:04x}", c as u32)
                                    }
                                })
                                .collect();
                            if text.contains("\\u") && text.chars().any(|c| (c as u32) > 0xffff) {
                                text = serde_json::to_string(value).unwrap();
                            }
                        }
                        out.push_str(&format!("\"{key}\":{text}"));
                    }
                    out.push('}');
                    out.into_bytes()
                })
        }

        /// A line torn, cut or with one byte changed.
        fn damaged() -> impl Strategy<Value = Vec<u8>> {
            (
                prop_oneof![canonical(), foreign()],
                any::<prop::sample::Index>(),
                any::<u8>(),
                0u8..3,
            )
                .prop_map(|(mut line, at, byte, how)| {
                    if line.is_empty() {
                        return line;
                    }
                    let at = at.index(line.len());
                    match how {
                        0 => line.truncate(at),
                        1 => line[at] = byte,
                        _ => line.insert(at, byte),
                    }
                    line
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2_000))]

            #[test]
            fn canonical_records_agree(line in canonical()) {
                let (fast, exact) = both(&line);
                prop_assert!(exact.is_ok());
                prop_assert_eq!(fast, exact);
            }

            #[test]
            fn foreign_records_agree(line in foreign()) {
                let (fast, exact) = both(&line);
                prop_assert_eq!(fast, exact);
            }

            #[test]
            fn damaged_lines_agree(line in damaged()) {
                let (fast, exact) = both(&line);
                prop_assert_eq!(fast, exact);
            }
        }
    }
}
