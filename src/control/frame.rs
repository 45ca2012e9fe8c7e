//! Frames of an exec session's upgraded connection.
//!
//! After `101 Switching Protocols` ([`super::EXEC_PROTOCOL`]) both sides send
//! frames of a `u32` big-endian length, then one tag byte, then the payload:
//!
//! | tag | direction | payload |
//! |-----|-----------|---------|
//! | 1 / 2 / 3 | server → client | stdout / stderr / terminal output bytes |
//! | 4 | server → client | `Started` JSON `{"id","pid"}`, always first |
//! | 5 | server → client | `Exited` JSON `{"code","signal","timed_out"}`, always last |
//! | 16 | client → server | stdin bytes; empty closes stdin |
//! | 17 | client → server | window size: rows, cols as `u16` big-endian |
//! | 18 | client → server | a signal number, `i32` big-endian |
//! | 6 | server → client | file sessions: stdin bytes the agent took, `u64` big-endian |
//! | 19 | client → server | file sessions: output bytes the client took, `u64` big-endian |
//!
//! A file session's connection ([`super::FILES_PROTOCOL`]) uses the same
//! frames; its output and input are windowed end to end by 6 and 19.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use tokio_util::codec::LengthDelimitedCodec;

use crate::logs::LogSource;

/// Largest frame either side accepts.
const MAX_FRAME: usize = 8 << 20;

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ExecFrame {
    Started {
        id: u64,
        pid: u32,
    },
    Output {
        source: LogSource,
        data: Bytes,
    },
    Exited {
        code: Option<i32>,
        signal: Option<i32>,
        timed_out: bool,
    },
    Stdin(Bytes),
    Resize {
        rows: u16,
        cols: u16,
    },
    Signal(i32),
    InputTaken(u64),
    OutputConsumed(u64),
}

#[derive(Serialize, Deserialize)]
struct StartedBody {
    id: u64,
    pid: u32,
}

#[derive(Serialize, Deserialize)]
struct ExitedBody {
    code: Option<i32>,
    signal: Option<i32>,
    /// Absent from servers that predate exec timeouts.
    #[serde(default)]
    timed_out: bool,
}

/// The length-delimited codec both sides frame with.
pub(crate) fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(MAX_FRAME)
        .new_codec()
}

impl ExecFrame {
    /// The frame's bytes (tag and payload).
    pub(crate) fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        match self {
            Self::Output { source, data } => {
                out.put_u8(match source {
                    LogSource::Stdout => 1,
                    LogSource::Stderr => 2,
                    _ => 3,
                });
                out.put_slice(data);
            }
            Self::Started { id, pid } => {
                out.put_u8(4);
                json_into(&mut out, &StartedBody { id: *id, pid: *pid });
            }
            Self::Exited {
                code,
                signal,
                timed_out,
            } => {
                out.put_u8(5);
                json_into(
                    &mut out,
                    &ExitedBody {
                        code: *code,
                        signal: *signal,
                        timed_out: *timed_out,
                    },
                );
            }
            Self::Stdin(data) => {
                out.put_u8(16);
                out.put_slice(data);
            }
            Self::Resize { rows, cols } => {
                out.put_u8(17);
                out.put_u16(*rows);
                out.put_u16(*cols);
            }
            Self::Signal(signo) => {
                out.put_u8(18);
                out.put_i32(*signo);
            }
            Self::InputTaken(bytes) => {
                out.put_u8(6);
                out.put_u64(*bytes);
            }
            Self::OutputConsumed(bytes) => {
                out.put_u8(19);
                out.put_u64(*bytes);
            }
        }
        out.freeze()
    }

    /// Parses one frame.
    ///
    /// # Errors
    /// What was wrong with it: empty, an unknown tag, or a payload that does
    /// not fit its tag.
    pub(crate) fn decode(mut frame: Bytes) -> Result<Self, String> {
        if frame.is_empty() {
            return Err("empty frame".into());
        }
        let tag = frame[0];
        let payload = frame.split_off(1);
        let json_err = |e: serde_json::Error| format!("frame {tag}: {e}");
        Ok(match tag {
            1..=3 => Self::Output {
                source: match tag {
                    1 => LogSource::Stdout,
                    2 => LogSource::Stderr,
                    _ => LogSource::Output,
                },
                data: payload,
            },
            4 => {
                let body: StartedBody = serde_json::from_slice(&payload).map_err(json_err)?;
                Self::Started {
                    id: body.id,
                    pid: body.pid,
                }
            }
            5 => {
                let body: ExitedBody = serde_json::from_slice(&payload).map_err(json_err)?;
                Self::Exited {
                    code: body.code,
                    signal: body.signal,
                    timed_out: body.timed_out,
                }
            }
            16 => Self::Stdin(payload),
            17 if payload.len() == 4 => Self::Resize {
                rows: u16::from_be_bytes([payload[0], payload[1]]),
                cols: u16::from_be_bytes([payload[2], payload[3]]),
            },
            18 if payload.len() == 4 => Self::Signal(i32::from_be_bytes([
                payload[0], payload[1], payload[2], payload[3],
            ])),
            6 | 19 if payload.len() == 8 => {
                let mut bytes = [0u8; 8];
                bytes.copy_from_slice(&payload);
                let bytes = u64::from_be_bytes(bytes);
                if tag == 6 {
                    Self::InputTaken(bytes)
                } else {
                    Self::OutputConsumed(bytes)
                }
            }
            other => {
                return Err(format!(
                    "unknown frame tag {other} ({} bytes)",
                    payload.len()
                ))
            }
        })
    }
}

fn json_into<T: Serialize>(out: &mut BytesMut, value: &T) {
    // These plain structs always serialize.
    let _ = serde_json::to_writer(out.writer(), value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_frame_round_trips() {
        let frames = [
            ExecFrame::Started { id: 7, pid: 42 },
            ExecFrame::Output {
                source: LogSource::Stdout,
                data: Bytes::from_static(b"out"),
            },
            ExecFrame::Output {
                source: LogSource::Stderr,
                data: Bytes::from_static(b"\xff\x00"),
            },
            ExecFrame::Output {
                source: LogSource::Output,
                data: Bytes::new(),
            },
            ExecFrame::Exited {
                code: None,
                signal: Some(9),
                timed_out: true,
            },
            ExecFrame::Stdin(Bytes::from_static(b"in")),
            ExecFrame::Resize {
                rows: 50,
                cols: 132,
            },
            ExecFrame::Signal(-3),
            ExecFrame::InputTaken(1 << 40),
            ExecFrame::OutputConsumed(65536),
        ];
        for frame in frames {
            assert_eq!(ExecFrame::decode(frame.encode()), Ok(frame));
        }
    }

    #[test]
    fn bad_frames_are_errors() {
        assert!(ExecFrame::decode(Bytes::new()).is_err());
        assert!(ExecFrame::decode(Bytes::from_static(&[99, 1])).is_err());
        assert!(ExecFrame::decode(Bytes::from_static(&[17, 1])).is_err());
        assert!(ExecFrame::decode(Bytes::from_static(&[4, b'{'])).is_err());
    }
}
