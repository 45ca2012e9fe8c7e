//! Resumable read positions.
//!
//! A cursor records, for each log it has read (the `exec.log` chain,
//! `runtime.log`, `kernel.log`), the identity of the file it was in and the
//! byte offset just past the last line it consumed, plus the identity of the
//! log directory itself so that a cursor from another sandbox (or an earlier
//! sandbox of the same name) is recognised as foreign.
//!
//! The string form is opaque and shell-safe: URL-safe base64 of
//! `v1;d=INO.BTIME;e=INO.BTIME.OFFSET;r=…;k=…;x=CRC32`; the checksum makes a
//! truncated or mistyped cursor fail to parse instead of pointing elsewhere.

use std::fmt;
use std::io::Write;
use std::str::FromStr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::identity::FileId;

/// One of the logs a sandbox keeps, each read by its own tailer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StreamKey {
    /// `exec.log` and its rotated generations.
    Exec,
    /// `runtime.log`.
    Runtime,
    /// `kernel.log`.
    Kernel,
}

impl StreamKey {
    /// All logs, in cursor order.
    pub const ALL: [StreamKey; 3] = [Self::Exec, Self::Runtime, Self::Kernel];

    /// The live file's name in the log directory.
    pub fn file_name(self) -> &'static str {
        match self {
            Self::Exec => "exec.log",
            Self::Runtime => "runtime.log",
            Self::Kernel => "kernel.log",
        }
    }

    /// Whether this log is JSON Lines records (else plain text).
    pub fn is_records(self) -> bool {
        self == Self::Exec
    }

    /// Whether this log rotates into numbered generations.
    pub fn rotates(self) -> bool {
        self == Self::Exec
    }

    fn tag(self) -> &'static str {
        match self {
            Self::Exec => "e",
            Self::Runtime => "r",
            Self::Kernel => "k",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A byte offset in one identified file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Position {
    /// The file.
    pub file: FileId,
    /// Offset just past the last consumed line.
    pub offset: u64,
}

/// Where a reader stopped, for every log it read; resumes with no gap and no repeat.
///
/// Every entry carries one, so it is kept small: a log not read is stored as
/// inode 0, which no file has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LogCursor {
    dir: FileId,
    positions: [Position; 3],
}

/// The longest plain text form: `v1;d=` and `;x=` with their numbers, and
/// three logs' `;e=INO.BTIME.OFFSET` with every number at its widest.
const PLAIN_MAX: usize = 5 + 20 + 1 + 20 + 3 * (3 + 20 + 1 + 20 + 1 + 20) + 3 + 8;

const UNREAD: Position = Position {
    file: FileId {
        ino: 0,
        btime_ns: 0,
    },
    offset: 0,
};

impl LogCursor {
    /// A cursor for the log directory identified by `dir` that has read nothing.
    pub fn new(dir: FileId) -> Self {
        Self {
            dir,
            positions: [UNREAD; 3],
        }
    }

    /// The identity of the log directory this cursor belongs to.
    pub fn dir(&self) -> FileId {
        self.dir
    }

    /// Where reading of `stream` stopped, if it was read.
    pub fn position(&self, stream: StreamKey) -> Option<Position> {
        let position = self.positions[stream.index()];
        (position.file.ino != 0).then_some(position)
    }

    /// Records that `stream` has been read up to `position`.
    pub fn set_position(&mut self, stream: StreamKey, position: Position) {
        self.positions[stream.index()] = position;
    }

    /// The plain text form, `v1;d=…;x=CRC32`, written into `buf`; returns
    /// its length. `buf` holds the longest form (three logs, every number at
    /// its widest).
    fn write_plain(self, buf: &mut [u8; PLAIN_MAX]) -> usize {
        let mut w = std::io::Cursor::new(&mut buf[..]);
        // Writing into a buffer that holds the longest form cannot fail.
        let _ = write!(w, "v1;d={}.{}", self.dir.ino, self.dir.btime_ns);
        for stream in StreamKey::ALL {
            if let Some(p) = self.position(stream) {
                let _ = write!(
                    w,
                    ";{}={}.{}.{}",
                    stream.tag(),
                    p.file.ino,
                    p.file.btime_ns,
                    p.offset
                );
            }
        }
        let body = usize::try_from(w.position()).unwrap_or(0);
        let checksum = crc32fast::hash(&w.get_ref()[..body]);
        let _ = write!(w, ";x={checksum:08x}");
        usize::try_from(w.position()).unwrap_or(0)
    }

    /// Appends the cursor's string form (what `Display` writes) to `out`
    /// without allocating: for printers that write one per entry.
    pub fn write_text(&self, out: &mut Vec<u8>) {
        let mut plain = [0u8; PLAIN_MAX];
        let len = self.write_plain(&mut plain);
        let start = out.len();
        out.resize(start + base64::encoded_len(len, false).unwrap_or(0), 0);
        let written = URL_SAFE_NO_PAD
            .encode_slice(&plain[..len], &mut out[start..])
            .unwrap_or(0);
        out.truncate(start + written);
    }

    fn from_text(text: &str) -> Result<Self, LogCursorParseError> {
        let (body, checksum) = text
            .rsplit_once(";x=")
            .ok_or_else(|| LogCursorParseError::new("no checksum"))?;
        if u32::from_str_radix(checksum, 16).ok() != Some(crc32fast::hash(body.as_bytes()))
            || checksum.len() != 8
        {
            return Err(LogCursorParseError::new(
                "checksum mismatch (truncated or altered)",
            ));
        }
        let mut fields = body.split(';');
        if fields.next() != Some("v1") {
            return Err(LogCursorParseError::new("unknown version"));
        }
        let mut dir = None;
        let mut positions = [UNREAD; 3];
        for field in fields {
            let (tag, value) = field
                .split_once('=')
                .ok_or_else(|| LogCursorParseError::new(format!("field `{field}` has no `=`")))?;
            let numbers: Vec<&str> = value.split('.').collect();
            let number = |i: usize| -> Result<u64, LogCursorParseError> {
                numbers
                    .get(i)
                    .and_then(|n| n.parse::<u64>().ok())
                    .ok_or_else(|| {
                        LogCursorParseError::new(format!("field `{tag}` is not numeric"))
                    })
            };
            let btime = |i: usize| -> Result<i64, LogCursorParseError> {
                numbers
                    .get(i)
                    .and_then(|n| n.parse::<i64>().ok())
                    .ok_or_else(|| {
                        LogCursorParseError::new(format!("field `{tag}` is not numeric"))
                    })
            };
            if tag == "d" {
                if numbers.len() != 2 || dir.is_some() {
                    return Err(LogCursorParseError::new("bad directory field"));
                }
                dir = Some(FileId {
                    ino: number(0)?,
                    btime_ns: btime(1)?,
                });
                continue;
            }
            let stream = StreamKey::ALL
                .into_iter()
                .find(|s| s.tag() == tag)
                .ok_or_else(|| LogCursorParseError::new(format!("unknown field `{tag}`")))?;
            let ino = number(0)?;
            if numbers.len() != 3 || ino == 0 || positions[stream.index()] != UNREAD {
                return Err(LogCursorParseError::new(format!("bad field `{tag}`")));
            }
            positions[stream.index()] = Position {
                file: FileId {
                    ino,
                    btime_ns: btime(1)?,
                },
                offset: number(2)?,
            };
        }
        let dir = dir.ok_or_else(|| LogCursorParseError::new("no directory field"))?;
        Ok(Self { dir, positions })
    }
}

impl fmt::Display for LogCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = Vec::new();
        self.write_text(&mut text);
        f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)
    }
}

impl FromStr for LogCursor {
    type Err = LogCursorParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let raw = URL_SAFE_NO_PAD
            .decode(s.trim())
            .map_err(|_| LogCursorParseError::new("not a cursor (bad encoding)"))?;
        let text = std::str::from_utf8(&raw)
            .map_err(|_| LogCursorParseError::new("not a cursor (bad encoding)"))?;
        Self::from_text(text)
    }
}

impl Serialize for LogCursor {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for LogCursor {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A string that is not a [`LogCursor`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid log cursor: {reason}")]
pub struct LogCursorParseError {
    reason: String,
}

impl LogCursorParseError {
    fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
        }
    }

    /// Why the string was refused.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> LogCursor {
        let mut c = LogCursor::new(FileId {
            ino: 42,
            btime_ns: 1_700_000_000_123_456_789,
        });
        c.set_position(
            StreamKey::Exec,
            Position {
                file: FileId {
                    ino: 7,
                    btime_ns: 0,
                },
                offset: 12345,
            },
        );
        c.set_position(
            StreamKey::Kernel,
            Position {
                file: FileId {
                    ino: 9,
                    btime_ns: -5,
                },
                offset: 0,
            },
        );
        c
    }

    #[test]
    fn string_round_trip() {
        let c = sample();
        let text = c.to_string();
        assert!(text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(text.parse::<LogCursor>().unwrap(), c);
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<LogCursor>(&json).unwrap(), c);
    }

    #[test]
    fn garbage_and_truncation_are_refused() {
        let text = sample().to_string();
        for bad in [
            "",
            "garbage!",
            "djE",
            &text[..text.len() / 2],
            &text[..text.len() - 3],
        ] {
            assert!(bad.parse::<LogCursor>().is_err(), "{bad:?} parsed");
        }
        for body in [
            "v2;d=1.2",
            "v1",
            "v1;d=1",
            "v1;d=1.2;e=1.2",
            "v1;d=1.2;q=1.2.3",
            "v1;d=1.2;e=a.2.3",
            "v1;d=1.2;d=1.2",
            "v1;d=1.2;e=1.2.3;e=1.2.3",
        ] {
            let raw = format!("{body};x={:08x}", crc32fast::hash(body.as_bytes()));
            let encoded = URL_SAFE_NO_PAD.encode(&raw);
            assert!(encoded.parse::<LogCursor>().is_err(), "{raw:?} parsed");
        }
        let good =
            String::from_utf8(URL_SAFE_NO_PAD.decode(sample().to_string()).unwrap()).unwrap();
        let altered = good.replacen("12345", "12346", 1);
        assert!(URL_SAFE_NO_PAD
            .encode(&altered)
            .parse::<LogCursor>()
            .is_err());
    }

    #[test]
    fn the_widest_cursor_fits_and_round_trips() {
        let widest = FileId {
            ino: u64::MAX,
            btime_ns: i64::MIN,
        };
        let mut cursor = LogCursor::new(widest);
        for stream in StreamKey::ALL {
            cursor.set_position(
                stream,
                Position {
                    file: widest,
                    offset: u64::MAX,
                },
            );
        }
        let text = cursor.to_string();
        assert_eq!(text.parse::<LogCursor>().unwrap(), cursor);
        let mut out = b"prefix".to_vec();
        cursor.write_text(&mut out);
        assert_eq!(&out[6..], text.as_bytes());
    }
}
