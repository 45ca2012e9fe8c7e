//! The fast path for `exec.log` records: the one shape sandvisor writes,
//! scanned with `memchr` instead of a JSON parser.
//!
//! [`RecordEncoder`](super::RecordEncoder) always writes
//! `{"t":"<24-byte timestamp>","s":"<source>","d":"<string>"[,"e":"b64"][,"id":<u64>]}`.
//! [`scan`] recognises exactly that shape and nothing else: any other field
//! order, extra field, whitespace, `\u` escape, number form or timestamp form
//! makes it answer [`Scan::Other`], and the caller decodes the line with
//! serde_json ([`RecordDecoder`](super::RecordDecoder)'s exact path). So the
//! two paths agree by construction on what the fast one accepts, and
//! everything else is decided by serde_json alone (`proptest`s in
//! `record.rs` and `tests/log_exactness.rs` hold them to that).
//!
//! What the fast path must still refuse, as serde_json would: a string with a
//! raw control character (below 0x20) or invalid UTF-8. It checks both on the
//! raw string; the escapes it decodes (`\" \\ \/ \b \f \n \r \t`) only produce
//! ASCII, so the raw string is valid UTF-8 exactly when the decoded one is.

use std::ops::Range;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use chrono::{DateTime, Utc};

use super::source::LogSource;
use super::timestamp::TimestampParser;

/// `{"t":"` — every record sandvisor writes starts so.
const HEAD: &[u8] = b"{\"t\":\"";
/// `YYYY-MM-DDTHH:MM:SS.mmmZ`
const TIMESTAMP_LEN: usize = 24;
const AFTER_T: &[u8] = b"\",\"s\":\"";
const AFTER_S: &[u8] = b"\",\"d\":\"";
const B64_FIELD: &[u8] = b",\"e\":\"b64\"";
const ID_FIELD: &[u8] = b",\"id\":";
/// Digits of `u64::MAX`.
const MAX_ID_DIGITS: usize = 20;

/// What [`scan`] made of a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scan {
    /// A canonical record; its bytes were appended to the arena.
    Record {
        /// Capture time.
        timestamp: DateTime<Utc>,
        /// Which stream it came from.
        source: LogSource,
        /// Exec session id (`None` on system records).
        session_id: Option<u64>,
        /// Where its bytes are in the arena.
        data: Range<usize>,
    },
    /// Not the canonical shape, or something only the exact path may judge:
    /// nothing was appended to the arena.
    Other,
}

/// Scans `line` (without its `\n`) as a canonical record, appending its
/// decoded bytes to `arena`. See the module docs.
pub fn scan(line: &[u8], timestamps: &mut TimestampParser, arena: &mut Vec<u8>) -> Scan {
    scan_parts(line, timestamps, arena).unwrap_or(Scan::Other)
}

fn scan_parts(line: &[u8], timestamps: &mut TimestampParser, arena: &mut Vec<u8>) -> Option<Scan> {
    let rest = line.strip_prefix(HEAD)?;
    let t = rest.get(..TIMESTAMP_LEN)?;
    if !canonical_shape(t) {
        return None;
    }
    let rest = rest[TIMESTAMP_LEN..].strip_prefix(AFTER_T)?;
    let name_len = memchr::memchr(b'"', rest)?;
    let source = source_named(&rest[..name_len])?;
    let rest = rest[name_len..].strip_prefix(AFTER_S)?;
    let (raw, escaped) = string_body(rest)?;
    let mut tail = &rest[raw.len() + 1..];
    let b64 = match tail.strip_prefix(B64_FIELD) {
        Some(after) => {
            tail = after;
            true
        }
        None => false,
    };
    let id = match tail.strip_prefix(ID_FIELD) {
        Some(after) => {
            let (id, after) = number(after)?;
            tail = after;
            Some(id)
        }
        None => None,
    };
    if tail != b"}" || !plain_text(raw) || (b64 && escaped) {
        return None;
    }
    let timestamp = timestamps.parse_canonical(t)?;
    let start = arena.len();
    if b64 {
        if BASE64.decode_vec(raw, arena).is_err() {
            arena.truncate(start);
            return None;
        }
    } else if escaped {
        if unescape(raw, arena).is_none() {
            arena.truncate(start);
            return None;
        }
    } else {
        arena.extend_from_slice(raw);
    }
    Some(Scan::Record {
        timestamp,
        source,
        session_id: id.filter(|_| source != LogSource::System),
        data: start..arena.len(),
    })
}

/// Whether `t` is digits and separators exactly where the canonical form
/// has them (the calendar is chrono's to judge).
fn canonical_shape(t: &[u8]) -> bool {
    t.iter().enumerate().all(|(i, &b)| match i {
        4 | 7 => b == b'-',
        10 => b == b'T',
        13 | 16 => b == b':',
        19 => b == b'.',
        23 => b == b'Z',
        _ => b.is_ascii_digit(),
    })
}

fn source_named(name: &[u8]) -> Option<LogSource> {
    match name {
        b"stdout" => Some(LogSource::Stdout),
        b"stderr" => Some(LogSource::Stderr),
        b"output" => Some(LogSource::Output),
        b"system" => Some(LogSource::System),
        _ => None,
    }
}

/// The raw body of the JSON string starting at `s[0]` (just after its opening
/// quote), and whether it holds a backslash. `None` if it never closes.
fn string_body(s: &[u8]) -> Option<(&[u8], bool)> {
    let mut at = 0;
    let mut escaped = false;
    loop {
        let hit = at + memchr::memchr2(b'"', b'\\', &s[at..])?;
        if s[hit] == b'"' {
            return Some((&s[..hit], escaped));
        }
        escaped = true;
        // The escaped byte may itself be a quote or a backslash.
        at = hit + 2;
        if at > s.len() {
            return None;
        }
    }
}

/// Whether the raw string has neither control characters nor invalid UTF-8
/// (both make serde_json refuse the line).
fn plain_text(raw: &[u8]) -> bool {
    // One pass for both questions (a fold, not `any`: it vectorises, and
    // records are short); UTF-8 is only validated when a byte is not ASCII.
    let (control, high) = raw.iter().fold((false, false), |(control, high), &b| {
        (control | (b < 0x20), high | (b >= 0x80))
    });
    !control && (!high || std::str::from_utf8(raw).is_ok())
}

/// Decodes the short escapes; `None` for `\u` (and anything invalid), which
/// the exact path decides.
fn unescape(raw: &[u8], out: &mut Vec<u8>) -> Option<()> {
    let mut rest = raw;
    while let Some(at) = memchr::memchr(b'\\', rest) {
        out.extend_from_slice(&rest[..at]);
        let byte = match rest.get(at + 1)? {
            b'"' => b'"',
            b'\\' => b'\\',
            b'/' => b'/',
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            _ => return None,
        };
        out.push(byte);
        rest = &rest[at + 2..];
    }
    out.extend_from_slice(rest);
    Some(())
}

/// A JSON unsigned integer as serde_json accepts it (no leading zeros, no
/// sign, fraction or exponent), and what follows it.
fn number(s: &[u8]) -> Option<(u64, &[u8])> {
    let digits = s.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > MAX_ID_DIGITS || (digits > 1 && s[0] == b'0') {
        return None;
    }
    let mut value = 0u64;
    for &digit in &s[..digits] {
        value = value
            .checked_mul(10)?
            .checked_add(u64::from(digit - b'0'))?;
    }
    Some((value, &s[digits..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scanned(line: &[u8]) -> Option<(LogSource, Option<u64>, Vec<u8>)> {
        let mut arena = Vec::new();
        match scan(line, &mut TimestampParser::default(), &mut arena) {
            Scan::Record {
                source,
                session_id,
                data,
                ..
            } => Some((source, session_id, arena[data].to_vec())),
            Scan::Other => {
                assert!(arena.is_empty(), "nothing is left in the arena");
                None
            }
        }
    }

    #[test]
    fn canonical_lines_are_scanned() {
        let got =
            scanned(br#"{"t":"2026-05-01T10:00:00.000Z","s":"stdout","d":"a\"b\\c\n","id":12}"#);
        assert_eq!(
            got,
            Some((LogSource::Stdout, Some(12), b"a\"b\\c\n".to_vec()))
        );
        let got = scanned(br#"{"t":"2026-05-01T10:00:00.000Z","s":"system","d":"x","id":3}"#);
        assert_eq!(got, Some((LogSource::System, None, b"x".to_vec())));
        let got = scanned(
            br#"{"t":"2026-05-01T10:00:00.000Z","s":"output","d":"/w==","e":"b64","id":0}"#,
        );
        assert_eq!(got, Some((LogSource::Output, Some(0), vec![0xff])));
    }

    #[test]
    fn anything_unusual_goes_to_the_exact_path() {
        for line in [
            &br#"{"t":"2026-05-01T10:00:00.000Z","s":"stdout","d":"\u00e9","id":1}"#[..],
            br#"{"t":"2026-05-01T10:00:00.000Z","s":"stdout","d":"x","id":01}"#,
            br#"{"t":"2026-05-01T10:00:00.000Z","s":"stdout","d":"x","id":18446744073709551616}"#,
            br#"{"t":"2026-05-01T10:00:00.000Z","s":"stdout","d":"x","id":1} "#,
            br#"{"t":"2026-05-01T10:00:00.000Z","s":"stdout","d":"x","id":1,"z":0}"#,
            br#"{"t":"2026-05-01T10:00:00.000Z","s":"video","d":"x"}"#,
            br#"{"t":"2026-05-01T10:00:00.000+00:00","s":"stdout","d":"x"}"#,
            br#"{"t":"2026-05-01T10:00:00.000Z","s":"stdout","d":"x"#,
            br#"{"t":"2026-05-01T10:00:00.000Z","s":"stdout","d":"\/w==","e":"b64"}"#,
            b"{\"t\":\"2026-05-01T10:00:00.000Z\",\"s\":\"stdout\",\"d\":\"tab\there\"}",
            b"{\"t\":\"2026-05-01T10:00:00.000Z\",\"s\":\"stdout\",\"d\":\"\xff\"}",
            br#"{"t":"2026-05-01T10:00:00.000Z","s":"stdout","d":"x\"}"#,
        ] {
            assert_eq!(scanned(line), None, "{}", String::from_utf8_lossy(line));
        }
    }
}
