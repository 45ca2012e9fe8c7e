//! SAP, the sandvisor agent protocol: what the host's `VmProcess` actor and
//! the in-sandbox agent (`sandvisor-agent`, PID 1) say to each other.
//!
//! # Transport
//! Any reliable byte stream: today a `socketpair(AF_UNIX, SOCK_STREAM)` whose
//! agent end the spawner hands to the agent it forks; later a virtio-serial
//! port of a microVM. No descriptors are passed, and nothing depends on
//! message boundaries of the transport.
//!
//! # Framing
//! `len: u32 (big-endian) | kind: u8 | payload: len - 1 bytes`, at most
//! [`MAX_FRAME`] bytes. `Output` carries raw bytes (`session: u64 BE |
//! stream: u8 | data`) and `Stdin` too (`session: u64 BE | data`); every
//! other frame carries JSON. [`Frame::decode`] takes a frame off the front of
//! a [`BytesMut`]; an `Output` frame's data is a view of those bytes, not a
//! copy, so output reaches the log as it was read.
//!
//! # Conversation
//! 1. host → agent `Start(spec)`, first and once. The agent is already PID 1
//!    of its own pid namespace when the spec asks for one (the spawner
//!    created it there); its host pid is known to the host from the spawn
//!    reply.
//! 2. The agent unshares the other namespaces the spec asks for and sets them
//!    up.
//! 3. agent → host `Ready { pid }` once the main command runs (session
//!    [`MAIN_SESSION`]), or `BootError` and the agent exits.
//! 4. agent → host `Output` frames, in capture order per stream.
//! 5. host → agent `Signal { target, signo }` at any time; `Exec`, `Stdin`
//!    and `Resize` once `Ready` came. An exec session is answered by
//!    `SessionStarted` or `SessionFailed`; `Stdin` bytes by
//!    `StdinConsumed` (the host keeps at most a window of them unanswered).
//!    A session may carry a file operation instead of a command (see
//!    [`files`](super::files)); its output is then windowed the other way:
//!    host → agent `OutputConsumed`.
//! 6. agent → host `Exited { session, status }` for an exec session once its
//!    process is reaped and its output sent, so its output always comes
//!    before its exit.
//! 7. agent → host `Exited` for the main session when the main command has
//!    exited, every other process of the sandbox has been killed and reaped
//!    and all output has been sent; then the agent exits.
//!
//! If the host end closes, the agent kills every process of the sandbox and
//! exits — unless its plan gave it a re-adoption socket
//! ([`SpawnPlan::adopt_socket`](super::SpawnPlan::adopt_socket)):
//!
//! # Re-adoption
//! 8. host → agent `Written { frames, file, offset }` after output reached
//!    `exec.log`: the first `frames` `Output` frames of *logged* sessions
//!    (the main command and exec sessions whose `ExecSpec::logged` is set)
//!    are written, the last of them ending at byte `offset` of the file
//!    whose inode is `file`. An adoptable agent keeps every logged `Output`
//!    frame until it is covered by a `Written`, and stops reading the
//!    sandbox's pipes while [`REPLAY_LIMIT`] bytes wait (back-pressure).
//! 9. If the host end closes, an adoptable agent kills its exec sessions
//!    (their callers are gone), keeps the main command running, buffers its
//!    output as above and waits for a connection on its adoption socket.
//! 10. On that connection it sends `Adopted` first, then every kept frame
//!     in order, then goes on as before. The new host skips the kept frames
//!     it finds in `exec.log` after the `Written` position the agent
//!     reports, so each reaches the log exactly once.

use bytes::{Buf, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

#[cfg(doc)]
use super::MAIN_SESSION;
use super::{BootError, ExecSpec, ExitStatus, OutputStream, SignalTarget, StartSpec};

/// Largest frame accepted (output chunks are far smaller).
pub const MAX_FRAME: usize = 4 << 20;

/// One protocol message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// host → agent: run this.
    Start(StartSpec),
    /// host → agent: deliver a signal.
    Signal {
        /// To whom.
        target: SignalTarget,
        /// Signal number.
        signo: i32,
    },
    /// host → agent: run an exec session.
    Exec(ExecSpec),
    /// host → agent: bytes for a session's stdin; empty closes it.
    Stdin {
        /// Session id.
        session: u64,
        /// The bytes.
        data: Vec<u8>,
    },
    /// host → agent: a terminal session's window size changed.
    Resize {
        /// Session id.
        session: u64,
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
    /// host → agent: the host took this many bytes of a file session's
    /// output off its queue; the agent may send that much more (flow
    /// control, see [`FILE_OUTPUT_WINDOW`](super::FILE_OUTPUT_WINDOW)).
    OutputConsumed {
        /// Session id.
        session: u64,
        /// Bytes.
        bytes: u64,
    },
    /// agent → host: an exec session's process runs.
    SessionStarted {
        /// Session id.
        session: u64,
        /// Its pid inside the sandbox.
        pid: u32,
    },
    /// agent → host: this many bytes of a session's stdin were written to
    /// its pipe or terminal (or dropped because its reader is gone): the
    /// host may send that much more (flow control).
    StdinConsumed {
        /// Session id.
        session: u64,
        /// Bytes.
        bytes: u64,
    },
    /// agent → host: an exec session could not start.
    SessionFailed {
        /// Session id.
        session: u64,
        /// OS error number.
        errno: i32,
        /// What happened.
        message: String,
        /// `exec(2)` of the command failed (`errno` is its error), rather
        /// than a step before it (working directory, confinement).
        exec_failed: bool,
    },
    /// agent → host: the main command runs.
    Ready {
        /// Its pid inside the sandbox.
        pid: u32,
    },
    /// agent → host: output of a session.
    Output {
        /// Session id.
        session: u64,
        /// Which of its streams.
        stream: OutputStream,
        /// The bytes (when decoded, a view of the read buffer).
        data: Bytes,
    },
    /// agent → host: a session's process exited.
    Exited {
        /// Session id.
        session: u64,
        /// How.
        status: ExitStatus,
    },
    /// agent → host: the sandbox could not start.
    BootError(BootError),
    /// host → agent: output frames reached `exec.log` (see "Re-adoption").
    Written(WrittenMark),
    /// agent → host: the first frame on an adoption connection.
    Adopted(Adoption),
}

/// How far the host has written a logged output of an agent: the first
/// `frames` logged `Output` frames, the last one ending at `offset` of the
/// `exec.log` file whose inode is `file`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct WrittenMark {
    /// Logged output frames written, counted from the agent's start.
    pub frames: u64,
    /// Inode of the file the last of them went to (0: none yet).
    pub file: u64,
    /// Byte offset just past it in that file.
    pub offset: u64,
}

/// What an adoptable agent tells a host that connected to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Adoption {
    /// The main command's pid inside the sandbox.
    pub pid: u32,
    /// The last `Written` the agent received; frames after `written.frames`
    /// follow this frame.
    pub written: WrittenMark,
    /// The highest session id the agent has seen.
    pub last_session: u64,
}

/// Bytes of logged output an adoptable agent keeps unwritten at most before
/// it stops reading the sandbox's pipes.
pub const REPLAY_LIMIT: usize = 4 << 20;

/// A frame that could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// Longer than [`MAX_FRAME`] or empty.
    #[error("frame length {0} out of range")]
    Length(usize),
    /// A kind this version does not know.
    #[error("unknown frame kind {0:#x}")]
    Kind(u8),
    /// A payload that does not parse.
    #[error("bad {kind:#x} payload: {reason}")]
    Payload {
        /// The frame kind.
        kind: u8,
        /// Why.
        reason: String,
    },
}

const START: u8 = 1;
const SIGNAL: u8 = 2;
const EXEC: u8 = 3;
const STDIN: u8 = 4;
const RESIZE: u8 = 5;
const OUTPUT_CONSUMED: u8 = 6;
const WRITTEN: u8 = 7;
const READY: u8 = 0x82;
const OUTPUT: u8 = 0x83;
const EXITED: u8 = 0x84;
const BOOT_ERROR: u8 = 0x85;
const SESSION_STARTED: u8 = 0x86;
const SESSION_FAILED: u8 = 0x87;
const STDIN_CONSUMED: u8 = 0x88;
const ADOPTED: u8 = 0x89;

/// Bytes of the length prefix.
const LEN_BYTES: usize = 4;
/// Bytes of the session id heading `Stdin` and `Output` payloads.
const SESSION_BYTES: usize = 8;

#[derive(Serialize, Deserialize)]
struct SignalBody {
    target: SignalTarget,
    signo: i32,
}

#[derive(Serialize, Deserialize)]
struct ReadyBody {
    pid: u32,
}

#[derive(Serialize, Deserialize)]
struct ExitedBody {
    session: u64,
    #[serde(flatten)]
    status: ExitStatus,
}

#[derive(Serialize, Deserialize)]
struct ResizeBody {
    session: u64,
    rows: u16,
    cols: u16,
}

#[derive(Serialize, Deserialize)]
struct StdinConsumedBody {
    session: u64,
    bytes: u64,
}

#[derive(Serialize, Deserialize)]
struct SessionStartedBody {
    session: u64,
    pid: u32,
}

#[derive(Serialize, Deserialize)]
struct SessionFailedBody {
    session: u64,
    errno: i32,
    message: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    exec_failed: bool,
}

impl Frame {
    /// Appends the encoded frame to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; LEN_BYTES]);
        let json = |out: &mut Vec<u8>, kind: u8, body: &dyn erased::Json| {
            out.push(kind);
            body.write(out);
        };
        match self {
            Frame::Start(spec) => json(out, START, spec),
            Frame::Exec(spec) => json(out, EXEC, spec),
            Frame::Resize {
                session,
                rows,
                cols,
            } => json(
                out,
                RESIZE,
                &ResizeBody {
                    session: *session,
                    rows: *rows,
                    cols: *cols,
                },
            ),
            Frame::Stdin { session, data } => {
                out.push(STDIN);
                out.extend_from_slice(&session.to_be_bytes());
                out.extend_from_slice(data);
            }
            Frame::OutputConsumed { session, bytes } => json(
                out,
                OUTPUT_CONSUMED,
                &StdinConsumedBody {
                    session: *session,
                    bytes: *bytes,
                },
            ),
            Frame::StdinConsumed { session, bytes } => json(
                out,
                STDIN_CONSUMED,
                &StdinConsumedBody {
                    session: *session,
                    bytes: *bytes,
                },
            ),
            Frame::SessionStarted { session, pid } => json(
                out,
                SESSION_STARTED,
                &SessionStartedBody {
                    session: *session,
                    pid: *pid,
                },
            ),
            Frame::SessionFailed {
                session,
                errno,
                message,
                exec_failed,
            } => json(
                out,
                SESSION_FAILED,
                &SessionFailedBody {
                    session: *session,
                    errno: *errno,
                    message: message.clone(),
                    exec_failed: *exec_failed,
                },
            ),
            Frame::Signal { target, signo } => json(
                out,
                SIGNAL,
                &SignalBody {
                    target: *target,
                    signo: *signo,
                },
            ),
            Frame::Ready { pid } => json(out, READY, &ReadyBody { pid: *pid }),
            Frame::Output {
                session,
                stream,
                data,
            } => {
                out.push(OUTPUT);
                out.extend_from_slice(&session.to_be_bytes());
                out.push(stream.tag());
                out.extend_from_slice(data);
            }
            Frame::Exited { session, status } => json(
                out,
                EXITED,
                &ExitedBody {
                    session: *session,
                    status: *status,
                },
            ),
            Frame::BootError(error) => json(out, BOOT_ERROR, error),
            Frame::Written(mark) => json(out, WRITTEN, mark),
            Frame::Adopted(adoption) => json(out, ADOPTED, adoption),
        }
        let len = (out.len() - start - LEN_BYTES) as u32;
        out[start..start + LEN_BYTES].copy_from_slice(&len.to_be_bytes());
    }

    /// Takes one frame off the front of `buf`: `Ok(None)` (and `buf`
    /// untouched) if it does not hold a whole frame yet. An `Output` frame's
    /// data shares `buf`'s storage instead of being copied.
    ///
    /// # Errors
    /// [`FrameError::Length`] for a length prefix of 0 or over
    /// [`MAX_FRAME`] (nothing is taken off `buf`), [`FrameError::Kind`] for
    /// a kind this version does not know, [`FrameError::Payload`] for a
    /// payload that does not parse (those two take the bad frame off `buf`).
    /// The stream cannot be resynchronized after any of them.
    pub fn decode(buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let Some(prefix) = buf.get(..LEN_BYTES) else {
            return Ok(None);
        };
        let mut len = [0u8; LEN_BYTES];
        len.copy_from_slice(prefix);
        let len = u32::from_be_bytes(len) as usize;
        if len == 0 || len > MAX_FRAME {
            return Err(FrameError::Length(len));
        }
        if buf.len() < LEN_BYTES + len {
            return Ok(None);
        }
        let mut frame = buf.split_to(LEN_BYTES + len).freeze();
        frame.advance(LEN_BYTES);
        let kind = frame.get_u8();
        Self::parse(kind, frame).map(Some)
    }

    /// The frame of `kind` whose payload is `body`.
    fn parse(kind: u8, mut body: Bytes) -> Result<Frame, FrameError> {
        let bad = |reason: &str| FrameError::Payload {
            kind,
            reason: reason.to_string(),
        };
        Ok(match kind {
            START => Frame::Start(json_body(kind, &body)?),
            EXEC => Frame::Exec(json_body(kind, &body)?),
            RESIZE => {
                let b: ResizeBody = json_body(kind, &body)?;
                Frame::Resize {
                    session: b.session,
                    rows: b.rows,
                    cols: b.cols,
                }
            }
            STDIN => {
                if body.len() < SESSION_BYTES {
                    return Err(bad("stdin frame shorter than its header"));
                }
                Frame::Stdin {
                    session: body.get_u64(),
                    data: body.to_vec(),
                }
            }
            STDIN_CONSUMED => {
                let b: StdinConsumedBody = json_body(kind, &body)?;
                Frame::StdinConsumed {
                    session: b.session,
                    bytes: b.bytes,
                }
            }
            OUTPUT_CONSUMED => {
                let b: StdinConsumedBody = json_body(kind, &body)?;
                Frame::OutputConsumed {
                    session: b.session,
                    bytes: b.bytes,
                }
            }
            SESSION_STARTED => {
                let b: SessionStartedBody = json_body(kind, &body)?;
                Frame::SessionStarted {
                    session: b.session,
                    pid: b.pid,
                }
            }
            SESSION_FAILED => {
                let b: SessionFailedBody = json_body(kind, &body)?;
                Frame::SessionFailed {
                    session: b.session,
                    errno: b.errno,
                    message: b.message,
                    exec_failed: b.exec_failed,
                }
            }
            SIGNAL => {
                let b: SignalBody = json_body(kind, &body)?;
                Frame::Signal {
                    target: b.target,
                    signo: b.signo,
                }
            }
            READY => {
                let b: ReadyBody = json_body(kind, &body)?;
                Frame::Ready { pid: b.pid }
            }
            OUTPUT => {
                if body.len() < SESSION_BYTES + 1 {
                    return Err(bad("output frame shorter than its header"));
                }
                let session = body.get_u64();
                let tag = body.get_u8();
                let stream =
                    OutputStream::from_tag(tag).ok_or_else(|| bad("unknown output stream"))?;
                Frame::Output {
                    session,
                    stream,
                    data: body,
                }
            }
            EXITED => {
                let b: ExitedBody = json_body(kind, &body)?;
                Frame::Exited {
                    session: b.session,
                    status: b.status,
                }
            }
            BOOT_ERROR => Frame::BootError(json_body(kind, &body)?),
            WRITTEN => Frame::Written(json_body(kind, &body)?),
            ADOPTED => Frame::Adopted(json_body(kind, &body)?),
            other => return Err(FrameError::Kind(other)),
        })
    }
}

fn json_body<T: serde::de::DeserializeOwned>(kind: u8, body: &[u8]) -> Result<T, FrameError> {
    serde_json::from_slice(body).map_err(|e| FrameError::Payload {
        kind,
        reason: e.to_string(),
    })
}

mod erased {
    /// A serializable body, without making `encode` generic per variant.
    pub trait Json {
        fn write(&self, out: &mut Vec<u8>);
    }

    impl<T: serde::Serialize> Json for T {
        fn write(&self, out: &mut Vec<u8>) {
            // Serializing these plain structs into a Vec cannot fail.
            let _ = serde_json::to_writer(out, self);
        }
    }
}

#[cfg(test)]
mod tests;
