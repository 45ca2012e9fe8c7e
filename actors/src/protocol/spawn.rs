//! The spawn channel between the host's `Spawner` actor and the spawner
//! process (`sandvisor-agent` as the host starts it).
//!
//! # Transport
//! A `socketpair(AF_UNIX, SOCK_SEQPACKET)`: one request or reply per message,
//! in order, and end of file when the other side is gone (the spawner then
//! exits). Descriptors travel as `SCM_RIGHTS`. The spawner's end is its
//! standard input ([`SPAWNER_FD`]).
//!
//! # Messages
//! - host → spawner, [`Request`] (`id: u64 BE | plan: JSON`) with one
//!   descriptor: the agent's end of a fresh SAP socket. The spawner forks an
//!   agent set up as the [`SpawnPlan`] says (namespaces, user ids, root
//!   filesystem) that speaks SAP on it.
//! - spawner → host, [`Reply`] (`id: u64 BE | pid: i32 BE | errno: i32 BE`),
//!   in any order (each is answered as soon as its agent exists): the
//!   agent's host pid with a pidfd of it as the one descriptor, or the errno
//!   of the failed fork and no descriptor. The spawner reaps agents at once;
//!   the host watches each through its pidfd.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

use super::isolation::SpawnPlan;

/// The spawner's end of the spawn channel: its standard input.
pub const SPAWNER_FD: i32 = 0;

/// Most bytes of a request (its plan is JSON: mounts make it grow).
pub const MAX_REQUEST: usize = 64 * 1024;
/// Bytes of a reply.
pub const REPLY_LEN: usize = 16;

/// One message of the channel and the descriptor that came with it.
#[derive(Debug)]
pub struct Message {
    /// Its bytes (one more than asked for when it was longer).
    pub bytes: Vec<u8>,
    /// The descriptor it carried, if any (further ones are closed).
    pub fd: Option<OwnedFd>,
}

/// Sends `bytes` and `fd` (if any) as one message; never raises SIGPIPE.
///
/// # Errors
/// The errno of `sendmsg(2)`: `EAGAIN` when `flags` hold `MSG_DONTWAIT` and
/// the channel is full, `EPIPE` when the other end is gone, `EINTR`.
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
///
/// # Errors
/// The errno of `recvmsg(2)` (`EAGAIN` when `flags` hold `MSG_DONTWAIT` and
/// nothing is there, `EINTR`), or of reading its control messages.
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

/// Fork an agent set up as `plan` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Echoed in the reply.
    pub id: u64,
    /// Its namespaces and root filesystem.
    pub plan: SpawnPlan,
}

impl Request {
    /// The request's bytes: `id: u64 BE | plan: JSON`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.id.to_be_bytes().to_vec();
        // A plan is plain data: serializing it cannot fail.
        out.extend(serde_json::to_vec(&self.plan).unwrap_or_default());
        out
    }

    /// The request in `bytes`.
    ///
    /// # Errors
    /// The request's id (`None` when not even that is there) for anything
    /// but a whole request with a plan that parses, so the spawner can
    /// still answer it.
    pub fn decode(bytes: &[u8]) -> Result<Self, Option<u64>> {
        let id = bytes
            .get(..8)
            .and_then(|id| id.try_into().ok())
            .map(u64::from_be_bytes)
            .ok_or(None)?;
        if bytes.len() > MAX_REQUEST {
            return Err(Some(id));
        }
        let plan = serde_json::from_slice(&bytes[8..]).map_err(|_| Some(id))?;
        Ok(Self { id, plan })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spawn_messages_round_trip_and_bad_ones_are_refused() {
        let plan = SpawnPlan {
            pid_namespace: true,
            user_namespace: Some(super::super::IdRange {
                first: 1 << 30,
                count: 65536,
            }),
            root: None,
            net_namespace: true,
            vm: None,
            adopt_socket: None,
        };
        for request in [
            Request {
                id: 0,
                plan: plan.clone(),
            },
            Request {
                id: u64::MAX,
                plan: SpawnPlan::default(),
            },
        ] {
            assert_eq!(Request::decode(&request.encode()), Ok(request));
        }
        let whole = Request { id: 7, plan }.encode();
        assert_eq!(Request::decode(&whole[..whole.len() - 1]), Err(Some(7)));
        assert_eq!(Request::decode(&whole[..8]), Err(Some(7)));
        assert_eq!(Request::decode(&[1, 2]), Err(None));

        for reply in [
            Reply {
                id: 3,
                outcome: Ok(4_194_304),
            },
            Reply {
                id: 4,
                outcome: Err(libc::EAGAIN),
            },
        ] {
            assert_eq!(Reply::decode(&reply.encode()), Some(reply));
        }
        let mut both = Reply {
            id: 5,
            outcome: Ok(10),
        }
        .encode();
        both[15] = 1;
        assert_eq!(Reply::decode(&both), None);
        assert_eq!(Reply::decode(&[0; REPLY_LEN]), None);
        assert_eq!(Reply::decode(&[0; 3]), None);
    }
}
