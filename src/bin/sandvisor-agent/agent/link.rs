//! The agent's link to its host: the SAP socket, and for an adoptable agent
//! the socket a new host connects to and the logged output kept for it.
//!
//! # Contract
//! - Frames are written whole and blocking (see [`super::host`]). A failed
//!   write or read marks the link *lost*; the relay loop then ends the
//!   sandbox (not adoptable) or [`Link::hang_up`]s and waits for a new host.
//! - Output of logged sessions gets a sequence number (1, 2, … from the
//!   agent's start). An adoptable link keeps each such frame until a
//!   `Written` mark covers it, and says [`Link::full`] while
//!   [`REPLAY_LIMIT`] bytes wait: the relay then stops reading the
//!   sandbox's pipes, so nothing is dropped.
//! - While no host is connected, control frames are dropped (their readers
//!   are gone) and logged output is only kept.
//! - [`Link::accept`] takes a new host: it sends `Adopted` with the last mark
//!   and then every kept frame, in order.

use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use sandvisor_actors::protocol::sap::{Adoption, WrittenMark, REPLAY_LIMIT};
use sandvisor_actors::protocol::Frame;

use super::host::{send, send_encoded};

/// See the module docs.
pub(crate) struct Link {
    sock: Option<File>,
    /// Present on an adoptable agent.
    listener: Option<OwnedFd>,
    /// Encoded logged output frames after `written.frames`, in order.
    kept: VecDeque<Vec<u8>>,
    kept_bytes: usize,
    /// Logged output frames produced so far.
    produced: u64,
    written: WrittenMark,
    lost: bool,
}

impl Link {
    /// A link on `sock`; adoptable when `listener` is given.
    pub(crate) fn new(sock: File, listener: Option<OwnedFd>) -> Self {
        Self {
            sock: Some(sock),
            listener,
            kept: VecDeque::new(),
            kept_bytes: 0,
            produced: 0,
            written: WrittenMark::default(),
            lost: false,
        }
    }

    /// Whether the agent outlives its host.
    pub(crate) fn adoptable(&self) -> bool {
        self.listener.is_some()
    }

    /// The host's socket, while one is connected.
    pub(crate) fn sock(&mut self) -> Option<&mut File> {
        self.sock.as_mut()
    }

    /// What to poll for a new host: the listener, while none is connected.
    pub(crate) fn listener(&self) -> Option<BorrowedFd<'_>> {
        match self.sock {
            None => self.listener.as_ref().map(AsFd::as_fd),
            Some(_) => None,
        }
    }

    /// What to poll for the host: its socket, or the listener while none is
    /// connected.
    pub(crate) fn poll_fd(&self) -> Option<BorrowedFd<'_>> {
        match &self.sock {
            Some(sock) => Some(sock.as_fd()),
            None => self.listener.as_ref().map(AsFd::as_fd),
        }
    }

    /// Whether the host's socket failed or closed.
    pub(crate) fn lost(&self) -> bool {
        self.lost
    }

    /// Marks the host gone (end of file, a read error, a frame that does not
    /// decode).
    pub(crate) fn lose(&mut self) {
        self.lost = true;
    }

    /// Drops the lost host's socket; the agent then waits for a new one.
    pub(crate) fn hang_up(&mut self) {
        self.sock = None;
        self.lost = false;
    }

    /// Whether the kept output has reached [`REPLAY_LIMIT`].
    pub(crate) fn full(&self) -> bool {
        self.kept_bytes >= REPLAY_LIMIT
    }

    /// Sends a control frame to the host, if one is connected.
    pub(crate) fn send(&mut self, frame: &Frame) {
        if let Some(sock) = self.sock.as_mut() {
            if send(sock, frame).is_err() {
                self.lost = true;
            }
        }
    }

    /// Sends an output frame; a logged one is numbered and, on an
    /// adoptable link, kept until the host has written it.
    pub(crate) fn output(&mut self, frame: &Frame, logged: bool) {
        let mut encoded = Vec::new();
        frame.encode(&mut encoded);
        if let Some(sock) = self.sock.as_mut() {
            if send_encoded(sock, &encoded).is_err() {
                self.lost = true;
            }
        }
        if logged {
            self.produced += 1;
            if self.adoptable() {
                self.kept_bytes += encoded.len();
                self.kept.push_back(encoded);
            }
        }
    }

    /// The host wrote output up to `mark`: frames it covers are no longer
    /// kept. A mark behind the last one, or ahead of what was produced (a
    /// host that does not follow the protocol), changes nothing.
    pub(crate) fn written(&mut self, mark: WrittenMark) {
        if mark.frames < self.written.frames || mark.frames > self.produced {
            return;
        }
        let covered = (mark.frames - self.written.frames) as usize;
        for encoded in self.kept.drain(..covered.min(self.kept.len())) {
            self.kept_bytes -= encoded.len();
        }
        self.written = mark;
    }

    /// Accepts a host waiting on the listener and brings it up to date:
    /// `Adopted`, then every kept frame. `false` if none could be taken
    /// (nobody is waiting any more, or it left during the replay).
    pub(crate) fn accept(&mut self, pid: u32, last_session: u64) -> bool {
        let Some(listener) = self.listener.as_ref() else {
            return false;
        };
        let accepted =
            match nix::sys::socket::accept4(listener, nix::sys::socket::SockFlag::SOCK_CLOEXEC) {
                Ok(fd) => fd,
                Err(Errno::EINTR | Errno::EAGAIN | Errno::ECONNABORTED) => return false,
                Err(errno) => {
                    eprintln!("sandvisor-agent: accepting a host: {errno}");
                    return false;
                }
            };
        let mut sock = File::from(accepted);
        let hello = Frame::Adopted(Adoption {
            pid,
            written: self.written,
            last_session,
        });
        let replayed = send(&mut sock, &hello).and_then(|()| {
            self.kept
                .iter()
                .try_for_each(|f| send_encoded(&mut sock, f))
        });
        if replayed.is_err() {
            return false;
        }
        self.sock = Some(sock);
        self.lost = false;
        true
    }
}

/// Binds and listens on `path` (mode 0600, replacing a socket a previous run
/// left), for the host's spawner: the path may be longer than a socket
/// address holds, so it is reached through a descriptor of its directory.
///
/// # Errors
/// The errno of opening the directory or of `socket`, `bind`, `listen`.
pub(crate) fn listen(path: &Path) -> Result<OwnedFd, Errno> {
    use nix::fcntl::OFlag;
    use nix::sys::socket::{AddressFamily, Backlog, SockFlag, SockType, UnixAddr};
    use nix::sys::stat::{FchmodatFlags, Mode};
    use nix::unistd::UnlinkatFlags;
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(Errno::EINVAL);
    };
    let dir = nix::fcntl::open(
        dir,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    match nix::unistd::unlinkat(&dir, name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => {}
        Err(errno) => return Err(errno),
    }
    let listener = nix::sys::socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let through = Path::new("/proc/self/fd")
        .join(dir.as_raw_fd().to_string())
        .join(name);
    nix::sys::socket::bind(listener.as_raw_fd(), &UnixAddr::new(&through)?)?;
    // Just made in a directory only the host writes: nothing to follow.
    nix::sys::stat::fchmodat(
        &dir,
        name,
        Mode::S_IRUSR | Mode::S_IWUSR,
        FchmodatFlags::FollowSymlink,
    )?;
    nix::sys::socket::listen(&listener, Backlog::new(4)?)?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use sandvisor_actors::protocol::OutputStream;

    use super::*;

    fn output(n: u8) -> Frame {
        Frame::Output {
            session: 1,
            stream: OutputStream::Stdout,
            data: Bytes::from(vec![n; 10]),
        }
    }

    fn detached(adoptable: bool) -> Link {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let (l, _) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut link = Link::new(File::from(OwnedFd::from(a)), adoptable.then(|| l.into()));
        link.hang_up();
        link
    }

    #[test]
    fn marks_release_exactly_the_frames_they_cover() {
        let mut link = detached(true);
        for n in 0..5 {
            link.output(&output(n), true);
        }
        link.output(&output(9), false);
        assert_eq!(link.kept.len(), 5);
        link.written(WrittenMark {
            frames: 3,
            file: 7,
            offset: 300,
        });
        assert_eq!(link.kept.len(), 2);
        // Behind the last mark, or ahead of what was produced: ignored.
        link.written(WrittenMark {
            frames: 2,
            ..WrittenMark::default()
        });
        link.written(WrittenMark {
            frames: 6,
            ..WrittenMark::default()
        });
        assert_eq!((link.kept.len(), link.written.frames), (2, 3));
        link.written(WrittenMark {
            frames: 5,
            file: 7,
            offset: 500,
        });
        assert_eq!((link.kept.len(), link.kept_bytes), (0, 0));
    }

    #[test]
    fn a_link_that_is_not_adoptable_keeps_nothing() {
        let mut link = detached(false);
        link.output(&output(1), true);
        assert!(link.kept.is_empty() && !link.full());
    }

    #[test]
    fn kept_output_fills_up_to_the_limit() {
        let mut link = detached(true);
        let big = Frame::Output {
            session: 1,
            stream: OutputStream::Stdout,
            data: Bytes::from(vec![0u8; 64 << 10]),
        };
        let mut frames = 0;
        while !link.full() {
            link.output(&big, true);
            frames += 1;
        }
        // 64 frames of 64 KiB and their headers pass 4 MiB.
        assert_eq!(frames, 64);
    }
}
