//! A process watched and signalled through a pidfd: safe against pid reuse,
//! and usable for processes that are not this process's children (agents
//! are children of the spawner process).

use std::os::fd::{AsRawFd, OwnedFd};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// A pidfd registered with the tokio reactor.
#[derive(Debug)]
pub struct Pidfd {
    fd: AsyncFd<OwnedFd>,
    pid: u32,
}

impl Pidfd {
    /// Watches the process `fd` refers to (host pid `pid`, for messages).
    /// Must be called within a tokio runtime.
    pub fn new(fd: OwnedFd, pid: u32) -> std::io::Result<Self> {
        // SAFETY: the OwnedFd is moved into the AsyncFd, which keeps it open
        // and unchanged until both are dropped together.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }?;
        Ok(Self { fd, pid })
    }

    /// Watches the process `pid` (`pidfd_open(2)`): only safe for a child
    /// of this process not yet waited for, whose pid cannot be reused.
    /// Must be called within a tokio runtime.
    ///
    /// # Errors
    /// The OS error of `pidfd_open` (`ESRCH`: no such process).
    pub fn open(pid: u32) -> std::io::Result<Self> {
        // SAFETY: pidfd_open takes a pid and no flags and returns a new
        // descriptor that nothing else owns.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: see above.
        let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
        Self::new(fd, pid)
    }

    /// The process's host pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Resolves once the process has exited (a pidfd becomes readable then),
    /// and reaps it if it has become this process's child: an agent whose
    /// spawner died is reparented to its nearest subreaper, which is this
    /// process when it is PID 1 of a container or a subreaper itself.
    pub async fn exited(&self) {
        if let Err(err) = self.fd.readable().await {
            // Only when the reactor goes away with the runtime, and then
            // nobody waits for the answer anymore.
            tracing::debug!(pid = self.pid, %err, "cannot watch the process");
            return;
        }
        // SAFETY: siginfo_t is plain data, written by waitid.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid on a pidfd we own; WNOHANG, and ECHILD (not our
        // child: its parent reaps it) is the usual answer.
        unsafe {
            libc::waitid(
                libc::P_PIDFD,
                self.fd.get_ref().as_raw_fd() as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG,
            )
        };
    }

    /// Sends `signal` to the process; a process that has exited is not an
    /// error (the pidfd never reaches another process that got its pid).
    pub fn signal(&self, signal: nix::sys::signal::Signal) -> std::io::Result<()> {
        // SAFETY: pidfd_send_signal takes a descriptor we own, a signal
        // number, a null siginfo and no flags.
        let sent = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.get_ref().as_raw_fd(),
                signal as libc::c_int,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        match sent {
            0 => Ok(()),
            _ => match std::io::Error::last_os_error() {
                err if err.raw_os_error() == Some(libc::ESRCH) => Ok(()),
                err => Err(err),
            },
        }
    }
}
