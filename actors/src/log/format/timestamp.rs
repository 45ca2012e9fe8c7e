//! Capture timestamps: RFC 3339, UTC, millisecond precision, `Z`.
//!
//! Both directions keep a one-second cache: records arrive thousands per
//! second, and all of them within one second share their first 19 bytes, so
//! the calendar arithmetic (done by chrono) runs once per second, not per record.

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Timelike, Utc};

/// `YYYY-MM-DDTHH:MM:SS` — the part of a canonical timestamp shared within a second.
const SECOND_PREFIX_LEN: usize = 19;
/// `YYYY-MM-DDTHH:MM:SS.mmmZ`
const CANONICAL_LEN: usize = 24;

/// Formats capture times as `exec.log` writes them.
#[derive(Debug, Default)]
pub struct TimestampFormatter {
    second: Option<i64>,
    prefix: String,
}

impl TimestampFormatter {
    /// Appends the canonical form of `t` (no quotes) to `out`.
    pub fn write(&mut self, t: DateTime<Utc>, out: &mut Vec<u8>) {
        let secs = t.timestamp();
        if self.second != Some(secs) {
            let full = t.to_rfc3339_opts(SecondsFormat::Secs, true);
            self.prefix.clear();
            self.prefix.push_str(full.trim_end_matches('Z'));
            self.second = Some(secs);
        }
        let millis = t.timestamp_subsec_millis().min(999);
        out.extend_from_slice(self.prefix.as_bytes());
        out.push(b'.');
        out.push(b'0' + (millis / 100) as u8);
        out.push(b'0' + (millis / 10 % 10) as u8);
        out.push(b'0' + (millis % 10) as u8);
        out.push(b'Z');
    }
}

/// Parses timestamps, fast for the canonical form and correct for any RFC 3339 one.
#[derive(Debug, Default)]
pub struct TimestampParser {
    prefix: [u8; SECOND_PREFIX_LEN],
    /// The second `prefix` names, when it has been parsed.
    second: Option<NaiveDateTime>,
}

impl TimestampParser {
    /// Parses `text` as RFC 3339; `None` if it is not one.
    pub fn parse(&mut self, text: &str) -> Option<DateTime<Utc>> {
        self.parse_canonical(text.as_bytes())
            .or_else(|| parse_rfc3339(text))
    }

    /// Parses the canonical form (`YYYY-MM-DDTHH:MM:SS.mmmZ`) only; `None`
    /// for anything else. Within one second it only reads the milliseconds.
    pub fn parse_canonical(&mut self, b: &[u8]) -> Option<DateTime<Utc>> {
        if b.len() != CANONICAL_LEN || b[SECOND_PREFIX_LEN] != b'.' || b[CANONICAL_LEN - 1] != b'Z'
        {
            return None;
        }
        let mut millis = 0u32;
        for &digit in &b[SECOND_PREFIX_LEN + 1..CANONICAL_LEN - 1] {
            if !digit.is_ascii_digit() {
                return None;
            }
            millis = millis * 10 + u32::from(digit - b'0');
        }
        let prefix = &b[..SECOND_PREFIX_LEN];
        let second = match self.second {
            Some(second) if self.prefix == prefix => second,
            _ => {
                let text = std::str::from_utf8(prefix).ok()?;
                let naive = NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S").ok()?;
                // A leap second (`:60`) counts as the second before it, with
                // its milliseconds: the time a reader can compare and print.
                let second = DateTime::from_timestamp(naive.and_utc().timestamp(), 0)?.naive_utc();
                self.prefix.copy_from_slice(prefix);
                self.second = Some(second);
                second
            }
        };
        Some(second.with_nanosecond(millis * 1_000_000)?.and_utc())
    }
}

/// Parses any RFC 3339 timestamp into UTC.
pub fn parse_rfc3339(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn canonical_round_trip_and_cache() {
        let mut fmt = TimestampFormatter::default();
        let mut parser = TimestampParser::default();
        for ms in [0i64, 1, 999, 1000, 1001, 59_999, 86_400_000] {
            let t = Utc.timestamp_millis_opt(1_777_000_000_000 + ms).unwrap();
            let mut out = Vec::new();
            fmt.write(t, &mut out);
            let text = String::from_utf8(out).unwrap();
            assert_eq!(text, t.to_rfc3339_opts(SecondsFormat::Millis, true));
            assert_eq!(parser.parse(&text), Some(t));
        }
    }

    #[test]
    fn other_rfc3339_forms() {
        let mut parser = TimestampParser::default();
        let t = parser.parse("2026-05-01T12:00:00.5+02:00").unwrap();
        assert_eq!(
            t.to_rfc3339_opts(SecondsFormat::Millis, true),
            "2026-05-01T10:00:00.500Z"
        );
        assert!(parser.parse("2026-05-01 10:00:00").is_none());
        assert!(parser.parse("2026-13-01T10:00:00.000Z").is_none());
        assert!(parser.parse("2026-05-01T10:00:00.0a0Z").is_none());
    }
}
