//! SAP, the sandvisor agent protocol: what the host's `VmProcess` actor and
//! the in-sandbox agent (`sandvisor-agent`, PID 1) say to each other; and the
//! [`spawn`] channel, over which the host asks the agent binary's spawner
//! process for a new agent.
//!
//! # Transport
//! Any reliable byte stream: today a `socketpair(AF_UNIX, SOCK_STREAM)` whose
//! agent end the spawner hands to the agent it forks; later a virtio-serial
//! port of a microVM. No descriptors are passed, and nothing depends on
//! message boundaries of the transport.
//!
//! # Framing
//! `len: u32 (big-endian) | kind: u8 | payload: len - 1 bytes`, at most
//! [`MAX_FRAME`] bytes. `Output` carries raw bytes (`session: u64 BE | stream:
//! u8 | data`); every other frame carries JSON.
//!
//! # Conversation
//! 1. host → agent `Start(spec)`, first and once. The agent is already PID 1
//!    of its own pid namespace when the spec asks for one (the spawner
//!    created it there); its host pid is known to the host from the spawn
//!    reply.
//! 2. The agent unshares the other namespaces the spec asks for and sets them
//!    up.
//! 3. agent → host `Ready { pid }` once the main command runs (session 1), or
//!    `BootError { stage, errno, message }` and the agent exits.
//! 4. agent → host `Output` frames, in capture order per stream.
//! 5. host → agent `Signal { target, signo }` at any time.
//! 6. agent → host `Exited { session, code, signal }` when the main command
//!    has exited, every other process of the sandbox has been killed and
//!    reaped and all output has been sent; then the agent exits.
//!
//! If the host end closes, the agent kills every process of the sandbox and
//! exits: a sandbox never outlives its host.

use serde::{Deserialize, Serialize};

/// Largest frame accepted (output chunks are far smaller).
pub const MAX_FRAME: usize = 4 << 20;
/// The spawner's end of the spawn channel: its standard input.
pub const SPAWNER_FD: i32 = 0;

/// The spawn channel between the host's `Spawner` actor and the spawner
/// process (`sandvisor-agent` as the host starts it).
///
/// # Transport
/// A `socketpair(AF_UNIX, SOCK_SEQPACKET)`: one request or reply per message,
/// in order, and end of file when the other side is gone (the spawner then
/// exits). Descriptors travel as `SCM_RIGHTS`.
///
/// # Messages
/// - host → spawner, [`Request`] (`id: u64 BE | flags: u8`) with one
///   descriptor: the agent's end of a fresh SAP socket. The spawner forks an
///   agent (as PID 1 of a new pid namespace when the flags ask) that speaks
///   SAP on it.
/// - spawner → host, [`Reply`] (`id: u64 BE | pid: i32 BE | errno: i32 BE`),
///   in request order: the agent's host pid with a pidfd of it as the one
///   descriptor, or the errno of the failed fork and no descriptor. The
///   spawner reaps agents at once; the host watches each through its pidfd.
pub mod spawn {
    use std::io::{IoSlice, IoSliceMut};
    use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

    use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

    /// Bytes of a request.
    pub const REQUEST_LEN: usize = 9;
    /// Bytes of a reply.
    pub const REPLY_LEN: usize = 16;
    /// Request flag: make the agent PID 1 of a new pid namespace.
    pub const NEW_PID_NAMESPACE: u8 = 1;

    /// One message of the channel and the descriptor that came with it.
    #[derive(Debug)]
    pub struct Message {
        /// Its bytes (one more than asked for when it was longer).
        pub bytes: Vec<u8>,
        /// The descriptor it carried, if any (further ones are closed).
        pub fd: Option<OwnedFd>,
    }

    /// Sends `bytes` and `fd` (if any) as one message; never raises SIGPIPE.
    pub fn send(
        channel: BorrowedFd<'_>,
        bytes: &[u8],
        fd: Option<BorrowedFd<'_>>,
        flags: MsgFlags,
    ) -> nix::Result<()> {
        let fds: Vec<RawFd> = fd.iter().map(AsRawFd::as_raw_fd).collect();
        let rights = [ControlMessage::ScmRights(&fds)];
        let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
        sendmsg::<()>(
            channel.as_raw_fd(),
            &[IoSlice::new(bytes)],
            cmsgs,
            flags | MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .map(|_| ())
    }

    /// Receives one message of up to `max` bytes; its descriptor is
    /// close-on-exec. `None` at end of file.
    pub fn receive(
        channel: BorrowedFd<'_>,
        max: usize,
        flags: MsgFlags,
    ) -> nix::Result<Option<Message>> {
        // One byte more, so a longer message shows as malformed.
        let mut buf = vec![0u8; max + 1];
        let mut space = nix::cmsg_space!([RawFd; 1]);
        let (len, truncated, fds) = {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = recvmsg::<()>(
                channel.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                flags | MsgFlags::MSG_CMSG_CLOEXEC,
            )?;
            let mut fds = Vec::new();
            for cmsg in msg.cmsgs()? {
                if let ControlMessageOwned::ScmRights(raw) = cmsg {
                    // SAFETY: descriptors received with SCM_RIGHTS are new and ours.
                    fds.extend(
                        raw.into_iter()
                            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                    );
                }
            }
            (msg.bytes, msg.flags.contains(MsgFlags::MSG_TRUNC), fds)
        };
        if len == 0 && fds.is_empty() {
            return Ok(None);
        }
        buf.truncate(if truncated { max + 1 } else { len });
        Ok(Some(Message {
            bytes: buf,
            fd: fds.into_iter().next(),
        }))
    }

    /// Fork an agent.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Request {
        /// Echoed in the reply.
        pub id: u64,
        /// Make it PID 1 of a new pid namespace.
        pub new_pid_namespace: bool,
    }

    impl Request {
        /// The request's bytes.
        pub fn encode(&self) -> [u8; REQUEST_LEN] {
            let mut out = [0u8; REQUEST_LEN];
            out[..8].copy_from_slice(&self.id.to_be_bytes());
            out[8] = if self.new_pid_namespace {
                NEW_PID_NAMESPACE
            } else {
                0
            };
            out
        }

        /// The request in `bytes`; `Err` with the id (when there is one)
        /// for anything but a whole request with known flags.
        pub fn decode(bytes: &[u8]) -> Result<Self, Option<u64>> {
            let id = bytes
                .get(..8)
                .and_then(|id| id.try_into().ok())
                .map(u64::from_be_bytes);
            match (id, bytes.len(), bytes.get(8)) {
                (Some(id), REQUEST_LEN, Some(&flags)) if flags & !NEW_PID_NAMESPACE == 0 => {
                    Ok(Self {
                        id,
                        new_pid_namespace: flags & NEW_PID_NAMESPACE != 0,
                    })
                }
                _ => Err(id),
            }
        }
    }

    /// The spawner's answer to the request with the same id.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Reply {
        /// The request's id.
        pub id: u64,
        /// The agent's host pid, or the errno of the failure.
        pub outcome: Result<u32, i32>,
    }

    impl Reply {
        /// The reply's bytes.
        pub fn encode(&self) -> [u8; REPLY_LEN] {
            let (pid, errno) = match self.outcome {
                Ok(pid) => (pid as i32, 0),
                Err(errno) => (0, errno),
            };
            let mut out = [0u8; REPLY_LEN];
            out[..8].copy_from_slice(&self.id.to_be_bytes());
            out[8..12].copy_from_slice(&pid.to_be_bytes());
            out[12..].copy_from_slice(&errno.to_be_bytes());
            out
        }

        /// The reply in `bytes`, if they are one.
        pub fn decode(bytes: &[u8]) -> Option<Self> {
            let bytes: &[u8; REPLY_LEN] = bytes.try_into().ok()?;
            let word = |at: usize| {
                let mut four = [0u8; 4];
                four.copy_from_slice(&bytes[at..at + 4]);
                i32::from_be_bytes(four)
            };
            let mut id = [0u8; 8];
            id.copy_from_slice(&bytes[..8]);
            let outcome = match (word(8), word(12)) {
                (pid, 0) if pid > 0 => Ok(pid as u32),
                (0, errno) if errno > 0 => Err(errno),
                _ => return None,
            };
            Some(Self {
                id: u64::from_be_bytes(id),
                outcome,
            })
        }
    }
}

/// A session's command and its standard streams: the same for the main
/// command (session 1) and for exec sessions. Flattened into [`StartSpec`]
/// and [`ExecSpec`], so its fields sit directly in their JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandSpec {
    /// Program (a bare name is looked up in `PATH` of `env`).
    pub command: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its environment (nothing else is inherited).
    pub env: Vec<(String, String)>,
    /// Working directory inside the sandbox.
    pub cwd: Option<String>,
    /// Give it a stdin pipe fed by `Stdin` frames (else `/dev/null`).
    #[serde(default)]
    pub stdin: bool,
    /// Run it on a new pseudo-terminal (its output is then stream 3, merged).
    #[serde(default)]
    pub tty: bool,
    /// The terminal's size (0: 24 rows).
    #[serde(default)]
    pub rows: u16,
    /// The terminal's size (0: 80 columns).
    #[serde(default)]
    pub cols: u16,
}

/// What the host asks the agent to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartSpec {
    /// The sandbox's name (also its hostname with a UTS namespace).
    pub name: String,
    /// The main command (session 1).
    #[serde(flatten)]
    pub run: CommandSpec,
    /// Directory to pivot into as `/`.
    pub rootfs: Option<String>,
    /// The agent is PID 1 of its own pid namespace (the host asked the
    /// spawner for one with the same setting).
    pub pid_namespace: bool,
    /// Unshare a mount namespace (the agent then mounts a fresh `/proc`).
    pub mount_namespace: bool,
    /// Unshare a network namespace (the agent brings `lo` up).
    pub net_namespace: bool,
    /// Unshare a UTS namespace (the agent sets the hostname).
    pub uts_namespace: bool,
    /// Unshare an IPC namespace.
    #[serde(default)]
    pub ipc_namespace: bool,
}

/// Which processes a signal goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignalTarget {
    /// The main command only.
    Main,
    /// Every process of the sandbox but the agent.
    All,
    /// An exec session's process group.
    Session(u64),
}

/// A command to run in the running sandbox as an exec session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecSpec {
    /// Session id (2, 3, …; 1 is the main command).
    pub session: u64,
    /// What it runs.
    #[serde(flatten)]
    pub run: CommandSpec,
}

/// Where a boot failed (SPEC §5 `boot-error.json` stages).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BootStage {
    /// Mount namespace, `/proc`, rootfs pivot.
    Mount,
    /// Creating the sandbox's process (namespaces, agent start).
    BuildVm,
    /// The configuration: command not found, bad working directory.
    Config,
    /// Network setup.
    Network,
    /// The root filesystem image.
    Image,
    /// Anything else.
    Other,
}

impl BootStage {
    /// The name written to `boot-error.json`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mount => "mount",
            Self::BuildVm => "build_vm",
            Self::Config => "config",
            Self::Network => "network",
            Self::Image => "image",
            Self::Other => "other",
        }
    }
}

impl std::fmt::Display for BootStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Output stream tags in `Output` frames.
pub mod stream {
    /// Standard output.
    pub const STDOUT: u8 = 1;
    /// Standard error.
    pub const STDERR: u8 = 2;
    /// A pty's merged output.
    pub const OUTPUT: u8 = 3;
}

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
        /// [`stream`] tag.
        stream: u8,
        /// The bytes.
        data: Vec<u8>,
    },
    /// agent → host: a session's process exited.
    Exited {
        /// Session id.
        session: u64,
        /// Exit code, if it exited.
        code: Option<i32>,
        /// Signal, if it was killed by one.
        signal: Option<i32>,
    },
    /// agent → host: the sandbox could not start.
    BootError {
        /// Where.
        stage: BootStage,
        /// The OS error number, 0 if none.
        errno: i32,
        /// What happened.
        message: String,
    },
}

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
    code: Option<i32>,
    signal: Option<i32>,
}

#[derive(Serialize, Deserialize)]
struct BootErrorBody {
    stage: BootStage,
    errno: i32,
    message: String,
}

const START: u8 = 1;
const SIGNAL: u8 = 2;
const READY: u8 = 0x82;
const OUTPUT: u8 = 0x83;
const EXITED: u8 = 0x84;
const BOOT_ERROR: u8 = 0x85;
const EXEC: u8 = 3;
const STDIN: u8 = 4;
const RESIZE: u8 = 5;
const SESSION_STARTED: u8 = 0x86;

#[derive(Serialize, Deserialize)]
struct ResizeBody {
    session: u64,
    rows: u16,
    cols: u16,
}
const SESSION_FAILED: u8 = 0x87;
const STDIN_CONSUMED: u8 = 0x88;

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
}

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

impl Frame {
    /// Appends the encoded frame to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
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
            } => json(
                out,
                SESSION_FAILED,
                &SessionFailedBody {
                    session: *session,
                    errno: *errno,
                    message: message.clone(),
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
                out.push(*stream);
                out.extend_from_slice(data);
            }
            Frame::Exited {
                session,
                code,
                signal,
            } => json(
                out,
                EXITED,
                &ExitedBody {
                    session: *session,
                    code: *code,
                    signal: *signal,
                },
            ),
            Frame::BootError {
                stage,
                errno,
                message,
            } => json(
                out,
                BOOT_ERROR,
                &BootErrorBody {
                    stage: *stage,
                    errno: *errno,
                    message: message.clone(),
                },
            ),
        }
        let len = (out.len() - start - 4) as u32;
        out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    }

    /// Decodes one frame from the front of `buf`: `Ok(None)` if `buf` does not
    /// hold a whole frame yet, else the frame and the bytes it took.
    pub fn decode(buf: &[u8]) -> Result<Option<(Frame, usize)>, FrameError> {
        if buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len == 0 || len > MAX_FRAME {
            return Err(FrameError::Length(len));
        }
        if buf.len() < 4 + len {
            return Ok(None);
        }
        let kind = buf[4];
        let body = &buf[5..4 + len];
        let bad = |reason: String| FrameError::Payload { kind, reason };
        let frame = match kind {
            START => Frame::Start(json_body(kind, body)?),
            EXEC => Frame::Exec(json_body(kind, body)?),
            RESIZE => {
                let b: ResizeBody = json_body(kind, body)?;
                Frame::Resize {
                    session: b.session,
                    rows: b.rows,
                    cols: b.cols,
                }
            }
            STDIN => {
                if body.len() < 8 {
                    return Err(bad("stdin frame shorter than its header".into()));
                }
                let mut session = [0u8; 8];
                session.copy_from_slice(&body[..8]);
                Frame::Stdin {
                    session: u64::from_be_bytes(session),
                    data: body[8..].to_vec(),
                }
            }
            STDIN_CONSUMED => {
                let b: StdinConsumedBody = json_body(kind, body)?;
                Frame::StdinConsumed {
                    session: b.session,
                    bytes: b.bytes,
                }
            }
            SESSION_STARTED => {
                let b: SessionStartedBody = json_body(kind, body)?;
                Frame::SessionStarted {
                    session: b.session,
                    pid: b.pid,
                }
            }
            SESSION_FAILED => {
                let b: SessionFailedBody = json_body(kind, body)?;
                Frame::SessionFailed {
                    session: b.session,
                    errno: b.errno,
                    message: b.message,
                }
            }
            SIGNAL => {
                let b: SignalBody = json_body(kind, body)?;
                Frame::Signal {
                    target: b.target,
                    signo: b.signo,
                }
            }
            READY => {
                let b: ReadyBody = json_body(kind, body)?;
                Frame::Ready { pid: b.pid }
            }
            OUTPUT => {
                if body.len() < 9 {
                    return Err(bad("output frame shorter than its header".into()));
                }
                let mut session = [0u8; 8];
                session.copy_from_slice(&body[..8]);
                Frame::Output {
                    session: u64::from_be_bytes(session),
                    stream: body[8],
                    data: body[9..].to_vec(),
                }
            }
            EXITED => {
                let b: ExitedBody = json_body(kind, body)?;
                Frame::Exited {
                    session: b.session,
                    code: b.code,
                    signal: b.signal,
                }
            }
            BOOT_ERROR => {
                let b: BootErrorBody = json_body(kind, body)?;
                Frame::BootError {
                    stage: b.stage,
                    errno: b.errno,
                    message: b.message,
                }
            }
            other => return Err(FrameError::Kind(other)),
        };
        Ok(Some((frame, 4 + len)))
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
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_split_anywhere() {
        let frames = vec![
            Frame::Start(StartSpec {
                name: "n".into(),
                run: CommandSpec {
                    command: "sh".into(),
                    args: vec!["-c".into(), "echo hi".into()],
                    env: vec![("A".into(), "1".into())],
                    cwd: None,
                    stdin: true,
                    ..CommandSpec::default()
                },
                rootfs: Some("/r".into()),
                pid_namespace: true,
                mount_namespace: true,
                net_namespace: false,
                uts_namespace: true,
                ipc_namespace: false,
            }),
            Frame::Signal {
                target: SignalTarget::All,
                signo: 15,
            },
            Frame::Signal {
                target: SignalTarget::Session(3),
                signo: 9,
            },
            Frame::Exec(ExecSpec {
                session: 2,
                run: CommandSpec {
                    command: "cat".into(),
                    args: vec![],
                    env: vec![("PATH".into(), "/bin".into())],
                    cwd: Some("/tmp".into()),
                    stdin: true,
                    tty: true,
                    rows: 24,
                    cols: 80,
                },
            }),
            Frame::Resize {
                session: 2,
                rows: 50,
                cols: 132,
            },
            Frame::Stdin {
                session: 2,
                data: b"in\xff".to_vec(),
            },
            Frame::Stdin {
                session: 2,
                data: Vec::new(),
            },
            Frame::SessionStarted { session: 2, pid: 7 },
            Frame::StdinConsumed {
                session: 2,
                bytes: 1 << 40,
            },
            Frame::SessionFailed {
                session: 3,
                errno: 2,
                message: "nope".into(),
            },
            Frame::Ready { pid: 2 },
            Frame::Output {
                session: 1,
                stream: stream::STDERR,
                data: b"\xff\x00bytes".to_vec(),
            },
            Frame::Output {
                session: 7,
                stream: stream::STDOUT,
                data: Vec::new(),
            },
            Frame::Exited {
                session: 1,
                code: None,
                signal: Some(9),
            },
            Frame::BootError {
                stage: BootStage::Config,
                errno: 2,
                message: "no such file".into(),
            },
        ];
        let mut wire = Vec::new();
        for f in &frames {
            f.encode(&mut wire);
        }
        for split in [1, 3, 4, 5, 17, wire.len() - 1] {
            let mut buf = wire[..split].to_vec();
            let mut rest = &wire[split..];
            let mut got = Vec::new();
            loop {
                while let Some((frame, used)) = Frame::decode(&buf).unwrap() {
                    got.push(frame);
                    buf.drain(..used);
                }
                if rest.is_empty() {
                    break;
                }
                let take = rest.len().min(split);
                buf.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
            }
            assert_eq!(got, frames);
            assert!(buf.is_empty());
        }
    }

    /// A frame's exact bytes: length prefix, kind, payload.
    fn framed(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = ((payload.len() + 1) as u32).to_be_bytes().to_vec();
        out.push(kind);
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn frames_have_pinned_bytes() {
        let pinned: Vec<(Frame, Vec<u8>)> = vec![
            (
                Frame::Start(StartSpec {
                    name: "n".into(),
                    run: CommandSpec {
                        command: "sh".into(),
                        args: vec!["-c".into(), "echo hi".into()],
                        env: vec![("A".into(), "1".into())],
                        cwd: None,
                        stdin: true,
                        ..CommandSpec::default()
                    },
                    rootfs: Some("/r".into()),
                    pid_namespace: true,
                    mount_namespace: true,
                    net_namespace: false,
                    uts_namespace: true,
                    ipc_namespace: false,
                }),
                framed(
                    1,
                    br#"{"name":"n","command":"sh","args":["-c","echo hi"],"env":[["A","1"]],"cwd":null,"stdin":true,"tty":false,"rows":0,"cols":0,"rootfs":"/r","pid_namespace":true,"mount_namespace":true,"net_namespace":false,"uts_namespace":true,"ipc_namespace":false}"#,
                ),
            ),
            (
                Frame::Signal {
                    target: SignalTarget::Session(3),
                    signo: 9,
                },
                framed(2, br#"{"target":{"session":3},"signo":9}"#),
            ),
            (
                Frame::Stdin {
                    session: 2,
                    data: b"in".to_vec(),
                },
                vec![0, 0, 0, 11, 4, 0, 0, 0, 0, 0, 0, 0, 2, b'i', b'n'],
            ),
            (
                Frame::Output {
                    session: 1,
                    stream: stream::STDERR,
                    data: b"\xff\x00".to_vec(),
                },
                vec![0, 0, 0, 12, 0x83, 0, 0, 0, 0, 0, 0, 0, 1, 2, 0xff, 0],
            ),
            (
                Frame::Exited {
                    session: 1,
                    code: None,
                    signal: Some(9),
                },
                framed(0x84, br#"{"session":1,"code":null,"signal":9}"#),
            ),
            (
                Frame::Exited {
                    session: 2,
                    code: Some(3),
                    signal: None,
                },
                framed(0x84, br#"{"session":2,"code":3,"signal":null}"#),
            ),
            (
                Frame::BootError {
                    stage: BootStage::BuildVm,
                    errno: 2,
                    message: "no such file".into(),
                },
                framed(
                    0x85,
                    br#"{"stage":"build_vm","errno":2,"message":"no such file"}"#,
                ),
            ),
            (
                Frame::SessionFailed {
                    session: 3,
                    errno: 2,
                    message: "nope".into(),
                },
                framed(0x87, br#"{"session":3,"errno":2,"message":"nope"}"#),
            ),
        ];
        for (frame, bytes) in pinned {
            let mut wire = Vec::new();
            frame.encode(&mut wire);
            assert_eq!(wire, bytes, "{frame:?}");
            assert_eq!(decode_one(&bytes), frame);
        }
    }

    /// The one frame `bytes` hold, all of them.
    fn decode_one(bytes: &[u8]) -> Frame {
        let (frame, used) = Frame::decode(bytes).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        frame
    }

    #[test]
    fn spawn_messages_round_trip_and_bad_ones_are_refused() {
        for request in [
            spawn::Request {
                id: 0,
                new_pid_namespace: true,
            },
            spawn::Request {
                id: u64::MAX,
                new_pid_namespace: false,
            },
        ] {
            assert_eq!(spawn::Request::decode(&request.encode()), Ok(request));
        }
        let mut unknown_flag = spawn::Request {
            id: 7,
            new_pid_namespace: true,
        }
        .encode();
        unknown_flag[8] |= 0x80;
        assert_eq!(spawn::Request::decode(&unknown_flag), Err(Some(7)));
        assert_eq!(spawn::Request::decode(&unknown_flag[..8]), Err(Some(7)));
        assert_eq!(spawn::Request::decode(&[1, 2]), Err(None));

        for reply in [
            spawn::Reply {
                id: 3,
                outcome: Ok(4_194_304),
            },
            spawn::Reply {
                id: 4,
                outcome: Err(libc::EAGAIN),
            },
        ] {
            assert_eq!(spawn::Reply::decode(&reply.encode()), Some(reply));
        }
        let mut both = spawn::Reply {
            id: 5,
            outcome: Ok(10),
        }
        .encode();
        both[15] = 1;
        assert_eq!(spawn::Reply::decode(&both), None);
        assert_eq!(spawn::Reply::decode(&[0; spawn::REPLY_LEN]), None);
        assert_eq!(spawn::Reply::decode(&[0; 3]), None);
    }

    #[test]
    fn bad_frames_are_errors() {
        assert!(matches!(
            Frame::decode(&[0, 0, 0, 0]),
            Err(FrameError::Length(0))
        ));
        assert!(matches!(
            Frame::decode(&[0xff, 0, 0, 0, 1]),
            Err(FrameError::Length(_))
        ));
        assert!(matches!(
            Frame::decode(&[0, 0, 0, 1, 0x7f]),
            Err(FrameError::Kind(0x7f))
        ));
        assert!(matches!(
            Frame::decode(&[0, 0, 0, 2, SIGNAL, b'{']),
            Err(FrameError::Payload { .. })
        ));
        assert!(matches!(
            Frame::decode(&[0, 0, 0, 3, OUTPUT, 0, 0]),
            Err(FrameError::Payload { .. })
        ));
    }
}
