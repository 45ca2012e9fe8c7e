//! The spawner: forks an agent per request of the spawn channel.
//!
//! It is small and single-threaded, so a fork of it is cheap and may run any
//! code: each agent is created by `clone3` — as PID 1 of a new pid namespace
//! when asked — and goes straight on as the agent, without an exec. Agents are
//! reaped by the kernel at once (SIGCHLD is ignored here); the host watches
//! each through the pidfd sent with the reply. When the host's end of the
//! channel closes, the spawner waits until its agents have exited (each ends
//! when its own socket closes) and exits: an agent never outlives it, so none
//! is reparented to a host that would not reap it.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::signal::{signal, SigHandler, Signal};
use nix::sys::socket::MsgFlags;
use sandvisor_actors::protocol::spawn::{self, Reply, Request, MAX_REQUEST, SPAWNER_FD};
use sandvisor_actors::protocol::{BootError, SpawnPlan};

use crate::agent::stage;
use crate::launcher::VmFiles;

/// Serves the channel on standard input until the host closes it.
pub fn serve() -> ! {
    clean_inheritance();
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
    // Once, before any fork: every staging child inherits it.
    crate::agent::root::private_etc();
    // SAFETY: standard input is the channel, owned by nothing else here.
    let channel = unsafe { BorrowedFd::borrow_raw(SPAWNER_FD) };
    loop {
        let (bytes, socket) = match spawn::receive(channel, MAX_REQUEST, MsgFlags::empty()) {
            Ok(Some(message)) => (message.bytes, message.fd),
            Ok(None) => exit_after_agents(0),
            Err(Errno::EINTR) => continue,
            Err(errno) => {
                eprintln!("sandvisor-agent: reading the spawn channel: {errno}");
                exit_after_agents(1)
            }
        };
        let (id, outcome) = match (Request::decode(&bytes), socket) {
            (Ok(request), Some(socket)) => match adoption_listener(&request) {
                Err(errno) => (request.id, Err(errno)),
                // A staging child answers for itself, once the agent exists.
                Ok(listener) if stage::needed(&request.plan) => {
                    match stage::fork(request, (socket, listener), channel) {
                        Ok(()) => continue,
                        Err((id, errno)) => (id, Err(errno)),
                    }
                }
                Ok(listener) => (request.id, fork_agent(request, (socket, listener))),
            },
            (Ok(request), None) => (request.id, Err(Errno::EBADF)),
            (Err(Some(id)), _) => (id, Err(Errno::EINVAL)),
            // Not even an id to answer to.
            (Err(None), _) => continue,
        };
        if let Err(errno) = answer(channel, id, outcome) {
            // The host is gone: its agents see their sockets close and end.
            eprintln!("sandvisor-agent: answering on the spawn channel: {errno}");
            exit_after_agents(0)
        }
    }
}

/// Answers request `id` with the agent's pid and pidfd, or the errno of the
/// failure.
///
/// # Errors
/// The errno of sending it: the host is gone.
pub(crate) fn answer(
    channel: BorrowedFd<'_>,
    id: u64,
    outcome: Result<(u32, OwnedFd), Errno>,
) -> Result<(), Errno> {
    let (outcome, pidfd) = match outcome {
        Ok((pid, pidfd)) => (Ok(pid), Some(pidfd)),
        Err(errno) => (Err(errno as i32), None),
    };
    let reply = Reply { id, outcome }.encode();
    let pidfd = pidfd.as_ref().map(AsFd::as_fd);
    spawn::send(channel, &reply, pidfd, MsgFlags::empty())
}

/// Leaves nothing of the host's to the agents and their commands: descriptors
/// it let this process inherit (all but the standard three) are closed, and
/// signals it ignored (a `nohup`, a shell's background job) are taken by
/// default again. SIGPIPE stays ignored, as the Rust runtime set it: the agent
/// wants EPIPE, and the commands it starts get the default back from the
/// standard library.
fn clean_inheritance() {
    // SAFETY: close_range takes no pointers; an old kernel's ENOSYS leaves
    // the descriptors, which is what happened before.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    for signo in 1..=libc::SIGRTMAX() {
        if [libc::SIGKILL, libc::SIGSTOP, libc::SIGPIPE].contains(&signo) {
            continue;
        }
        // SAFETY: sigaction is plain data; the calls only read and reset a
        // disposition of this single-threaded process.
        unsafe {
            let mut current: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(signo, std::ptr::null(), &mut current) == 0
                && current.sa_sigaction == libc::SIG_IGN
            {
                libc::signal(signo, libc::SIG_DFL);
            }
        }
    }
}

/// Waits until every agent has exited, then exits with `code`.
fn exit_after_agents(code: i32) -> ! {
    // With SIGCHLD ignored, wait returns ECHILD once no child is left.
    loop {
        match nix::sys::wait::wait() {
            Err(Errno::ECHILD) => std::process::exit(code),
            Err(Errno::EINTR) | Ok(_) => continue,
            Err(_) => std::process::exit(code),
        }
    }
}

/// The listening socket of an adoptable agent, bound here with the host's
/// rights (the agent later lives in namespaces that cannot reach the home).
///
/// # Errors
/// The errno of making it.
fn adoption_listener(request: &Request) -> Result<Option<OwnedFd>, Errno> {
    let Some(path) = &request.plan.adopt_socket else {
        return Ok(None);
    };
    crate::agent::link::listen(path)
        .map(Some)
        .inspect_err(|errno| {
            eprintln!(
                "sandvisor-agent: cannot listen on {}: {errno}",
                path.display()
            );
        })
}

/// The agent's ends: its SAP socket and, when adoptable, its listener.
pub(crate) type AgentEnds = (OwnedFd, Option<OwnedFd>);

/// Forks the agent for `request`; in the parent, returns its pid and pidfd.
/// The child never returns from here: it runs the agent on `ends`.
fn fork_agent(request: Request, ends: AgentEnds) -> Result<(u32, OwnedFd), Errno> {
    let mut flags = libc::CLONE_PIDFD as u64;
    if request.plan.pid_namespace {
        flags |= libc::CLONE_NEWPID as u64;
    }
    let forked = match clone3_fork(flags) {
        // Kernels before 5.3, and seccomp profiles that hide clone3.
        Err(Errno::ENOSYS) => clone_fork(flags),
        other => other,
    };
    match forked? {
        Forked::Child => become_agent(ends, request.plan, Ok(()), None),
        Forked::Parent { pid, pidfd } => Ok((pid, pidfd)),
    }
}

/// Which side of a fork this is.
#[derive(Debug)]
pub(crate) enum Forked {
    Child,
    Parent { pid: u32, pidfd: OwnedFd },
}

/// A fork by clone3 with `flags` (which hold CLONE_PIDFD).
pub(crate) fn clone3_fork(flags: u64) -> Result<Forked, Errno> {
    let mut pidfd: libc::c_int = -1;
    // SAFETY: clone_args is plain data; zero is "unset" for every field.
    let mut args: libc::clone_args = unsafe { std::mem::zeroed() };
    args.flags = flags;
    args.pidfd = std::ptr::addr_of_mut!(pidfd) as u64;
    // A sibling (CLONE_PARENT) signals its parent as the caller does; clone3
    // wants no exit signal of its own then.
    if flags & libc::CLONE_PARENT as u64 == 0 {
        args.exit_signal = libc::SIGCHLD as u64;
    }
    // SAFETY: without CLONE_VM and with no stack given, clone3 is a fork: the
    // child gets a copy of this single-threaded process and returns here.
    let forked = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            std::ptr::addr_of_mut!(args),
            std::mem::size_of::<libc::clone_args>(),
        )
    };
    forked_from(forked, pidfd)
}

/// The same fork by clone(2), which returns the pidfd where a parent tid
/// would go.
fn clone_fork(flags: u64) -> Result<Forked, Errno> {
    let mut pidfd: libc::c_int = -1;
    // SAFETY: as for clone3: no CLONE_VM and no stack make it a fork. The
    // argument order (flags, stack, parent tid, child tid, tls) is x86_64's;
    // the last two are unused, so aarch64's order (tls, child tid) is the same.
    let forked = unsafe {
        libc::syscall(
            libc::SYS_clone,
            flags | libc::SIGCHLD as u64,
            0usize,
            std::ptr::addr_of_mut!(pidfd),
            0usize,
            0usize,
        )
    };
    forked_from(forked, pidfd)
}

fn forked_from(returned: libc::c_long, pidfd: libc::c_int) -> Result<Forked, Errno> {
    match returned {
        -1 => Err(Errno::last()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent {
            pid: pid as u32,
            // SAFETY: the kernel stored a new pidfd that nothing else owns.
            pidfd: unsafe { OwnedFd::from_raw_fd(pidfd) },
        }),
    }
}

/// In a freshly forked child: drops what belongs to the spawner and runs the
/// agent, which reports `staged` (how the spawner's setup went) at `Start` —
/// or, for a microVM, the launcher of the VM whose guest runs the agent.
pub(crate) fn become_agent(
    (socket, listener): AgentEnds,
    plan: SpawnPlan,
    staged: Result<(), BootError>,
    vm_files: Option<VmFiles>,
) -> ! {
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
    let link = std::fs::File::from(socket);
    match plan.vm.clone() {
        Some(vm) => crate::launcher::run(link, *vm, staged, vm_files),
        None => crate::agent::run(link, listener, plan, staged),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Forks with `fork`; the child exits with 7 at once (this test process
    /// has threads, so it does nothing else); returns the status its pidfd
    /// reports.
    fn exit_status_through_pidfd(fork: fn(u64) -> Result<Forked, Errno>) -> i32 {
        match fork(libc::CLONE_PIDFD as u64).unwrap() {
            // SAFETY: _exit is async-signal-safe.
            Forked::Child => unsafe { libc::_exit(7) },
            Forked::Parent { pid, pidfd } => {
                assert!(pid > 0);
                // SAFETY: plain data, written by waitid on a pidfd we own.
                let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
                let waited = unsafe {
                    libc::waitid(
                        libc::P_PIDFD,
                        pidfd.as_raw_fd() as libc::id_t,
                        &mut info,
                        libc::WEXITED,
                    )
                };
                assert_eq!(waited, 0);
                // SAFETY: waitid filled in a child's exit.
                unsafe { info.si_status() }
            }
        }
    }

    #[test]
    fn both_forks_give_a_pidfd_of_the_child() {
        assert_eq!(exit_status_through_pidfd(clone3_fork), 7);
        assert_eq!(exit_status_through_pidfd(clone_fork), 7);
    }
}
