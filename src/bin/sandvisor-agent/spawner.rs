//! The spawner: forks an agent per request of the spawn channel.
//!
//! It is small and single-threaded, so a fork of it is cheap and may run any
//! code: each agent is created by `clone3` — as PID 1 of a new pid namespace
//! when asked — and goes straight on as the agent, without an exec. Agents are
//! reaped by the kernel at once (SIGCHLD is ignored here); the host watches
//! each through the pidfd sent with the reply. The spawner exits when the
//! host's end of the channel closes.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

use nix::errno::Errno;
use nix::sys::signal::{signal, SigHandler, Signal};
use nix::sys::socket::MsgFlags;
use sandvisor::engine::protocol::spawn::{self, Reply, Request, REQUEST_LEN};
use sandvisor::engine::protocol::SPAWNER_FD;

/// Serves the channel on standard input until the host closes it.
pub fn serve() -> ! {
    // Out of the host's session and process group: a terminal's ^C or hangup
    // meant for the host must not end the spawner.
    let _ = nix::unistd::setsid();
    // Agents start where this process is: in `/`, the documented default
    // working directory, and not pinning whatever directory the host was in.
    if let Err(err) = std::env::set_current_dir("/") {
        eprintln!("sandvisor-agent: cannot change to /: {err}");
        std::process::exit(2);
    }
    // SAFETY: SIG_IGN installs no handler; this process is single-threaded.
    if let Err(errno) = unsafe { signal(Signal::SIGCHLD, SigHandler::SigIgn) } {
        eprintln!("sandvisor-agent: cannot ignore SIGCHLD: {errno}");
        std::process::exit(2);
    }
    // SAFETY: standard input is the channel, owned by nothing else here.
    let channel = unsafe { BorrowedFd::borrow_raw(SPAWNER_FD) };
    loop {
        let (bytes, socket) = match spawn::receive(channel, REQUEST_LEN, MsgFlags::empty()) {
            Ok(Some(message)) => (message.bytes, message.fd),
            Ok(None) => std::process::exit(0),
            Err(Errno::EINTR) => continue,
            Err(errno) => {
                eprintln!("sandvisor-agent: reading the spawn channel: {errno}");
                std::process::exit(1);
            }
        };
        let (id, outcome) = match (Request::decode(&bytes), socket) {
            (Ok(request), Some(socket)) => (request.id, fork_agent(request, socket)),
            (Ok(request), None) => (request.id, Err(Errno::EBADF)),
            (Err(Some(id)), _) => (id, Err(Errno::EINVAL)),
            // Not even an id to answer to.
            (Err(None), _) => continue,
        };
        let (outcome, pidfd) = match outcome {
            Ok((pid, pidfd)) => (Ok(pid), Some(pidfd)),
            Err(errno) => (Err(errno as i32), None),
        };
        let reply = Reply { id, outcome }.encode();
        let pidfd = pidfd.as_ref().map(AsFd::as_fd);
        if let Err(errno) = spawn::send(channel, &reply, pidfd, MsgFlags::empty()) {
            // The host is gone: its agents see their sockets close and end.
            eprintln!("sandvisor-agent: answering on the spawn channel: {errno}");
            std::process::exit(0);
        }
    }
}

/// Forks the agent for `request`; in the parent, returns its pid and pidfd.
/// The child never returns from here: it runs the agent on `socket`.
fn fork_agent(request: Request, socket: OwnedFd) -> Result<(u32, OwnedFd), Errno> {
    let mut pidfd: libc::c_int = -1;
    let mut flags = libc::CLONE_PIDFD as u64;
    if request.new_pid_namespace {
        flags |= libc::CLONE_NEWPID as u64;
    }
    // SAFETY: clone_args is plain data; zero is "unset" for every field.
    let mut args: libc::clone_args = unsafe { std::mem::zeroed() };
    args.flags = flags;
    args.pidfd = std::ptr::addr_of_mut!(pidfd) as u64;
    args.exit_signal = libc::SIGCHLD as u64;
    // SAFETY: without CLONE_VM and with no stack given, clone3 is a fork: the
    // child gets a copy of this single-threaded process and returns here.
    let forked = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            std::ptr::addr_of_mut!(args),
            std::mem::size_of::<libc::clone_args>(),
        )
    };
    match forked {
        -1 => Err(Errno::last()),
        0 => become_agent(socket),
        pid => {
            // SAFETY: clone3 stored a new pidfd that nothing else owns.
            let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
            Ok((pid as u32, pidfd))
        }
    }
}

/// In a freshly forked child: drops what belongs to the spawner and runs the
/// agent.
fn become_agent(socket: OwnedFd) -> ! {
    // SAFETY: SIG_DFL installs no handler; this process is single-threaded.
    // The agent reaps its own children.
    let _ = unsafe { signal(Signal::SIGCHLD, SigHandler::SigDfl) };
    // The channel is the spawner's: the agent's standard input is /dev/null.
    match std::fs::File::open("/dev/null") {
        Ok(null) => {
            // SAFETY: replaces standard input, which the agent does not use.
            unsafe { libc::dup2(null.as_raw_fd(), SPAWNER_FD) };
        }
        Err(_) => {
            // SAFETY: closing standard input, which the agent does not use.
            unsafe { libc::close(SPAWNER_FD) };
        }
    }
    crate::agent::run(UnixStream::from(socket))
}
