//! The agent: PID 1 of one sandbox, forked by the spawner with its end of
//! the host's SAP socket ([`sandvisor_actors::protocol::sap`]).
//!
//! # Contract
//! - Reads `Start`, then runs [`setup::enter`]: every step that shapes the
//!   sandbox (session, namespaces, mounts, rootfs, hostname, `lo`) in one
//!   ordered sequence, before any user code runs. A failed step is reported
//!   as one `BootError` frame and the agent exits.
//! - Runs the main command as session [`MAIN_SESSION`], sends `Ready`, then
//!   [`relay`] runs the agent's loop: it relays output, delivers the host's
//!   signals, runs exec sessions ([`session`]) and feeds their stdin.
//! - Reaps every process that ends in the sandbox, so no zombie stays.
//! - When the main command exits, kills what is left, drains the output,
//!   reports the exit status and exits. If the host goes away, it kills
//!   everything and exits.
//!
//! It is single-threaded and uses no async runtime: `poll(2)` over the socket,
//! the pipes and a signalfd.
//!
//! Files: [`host`] reads `Start` and writes frames; [`setup`] shapes the
//! sandbox; [`session`] holds the agent's state and its sessions; [`relay`]
//! is the loop over them. Imports go one way (`relay` → `session` → `host`;
//! `setup` stands alone): none of them uses this file.

mod confine;
mod files;
pub(crate) mod host;
pub(crate) mod link;
mod relay;
pub(crate) mod root;
mod session;
pub(crate) mod setup;
pub(crate) mod stage;

use std::fs::File;
use std::os::fd::OwnedFd;

use bytes::BytesMut;
use nix::errno::Errno;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use sandvisor_actors::protocol::{BootError, BootStage, Frame, SpawnPlan, StartSpec, MAIN_SESSION};

use host::{read_start, send};
use link::Link;
use relay::kill_all;
use setup::boot_error;

/// Runs the agent on `sock` (the host's SAP socket), adoptable by a later
/// host through `listener` if given; never returns.
pub fn run(
    mut sock: File,
    listener: Option<OwnedFd>,
    plan: SpawnPlan,
    staged: Result<(), BootError>,
) -> ! {
    let (spec, inbox) = match read_start(&mut sock) {
        Ok(started) => started,
        Err(message) => {
            eprintln!("sandvisor-agent: {message}");
            std::process::exit(2);
        }
    };
    run_started(sock, listener, spec, inbox, &plan, staged)
}

/// Runs the agent whose `Start` (`spec`, and the bytes that came after it,
/// `inbox`) was already read from `sock`; never returns.
pub(crate) fn run_started(
    mut sock: File,
    listener: Option<OwnedFd>,
    spec: StartSpec,
    inbox: BytesMut,
    plan: &SpawnPlan,
    staged: Result<(), BootError>,
) -> ! {
    if let Err(error) = setup::enter(&spec, plan, staged) {
        boot_failed(&mut sock, error);
    }
    init(Link::new(sock, listener), spec, inbox)
}

pub(crate) fn boot_failed(sock: &mut File, error: BootError) -> ! {
    let _ = send(sock, &Frame::BootError(error));
    std::process::exit(1)
}

fn link_boot_failed(link: &mut Link, error: BootError) -> ! {
    link.send(&Frame::BootError(error));
    std::process::exit(1)
}

/// Starts the main command in the set-up sandbox, relays until it has
/// ended, reports its exit and exits.
fn init(mut link: Link, spec: StartSpec, inbox: BytesMut) -> ! {
    let spawned = match session::spawn_session(&spec.run, spec.confine.as_ref()) {
        Ok(spawned) => spawned,
        Err(failure) => {
            let error = BootError {
                stage: BootStage::Config,
                errno: failure.errno(),
                message: failure.message(&spec.run.command),
                exec_failed: failure.exec_failed(),
            };
            link_boot_failed(&mut link, error)
        }
    };
    // Signals are blocked (and read from a signalfd) only once the main
    // command runs: it must not inherit a blocked mask, and spawning without
    // a pre-exec hook to unblock them lets the standard library use a
    // vfork-style spawn. A SIGCHLD lost before this is made up for by the
    // first reap in `supervise`.
    let signals = agent_signals();
    if signals.thread_block().is_err() {
        link_boot_failed(
            &mut link,
            boot_error(BootStage::Other, Errno::last(), "block signals"),
        );
    }
    let sigfd = match SignalFd::with_flags(&signals, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
    {
        Ok(fd) => fd,
        Err(errno) => link_boot_failed(&mut link, boot_error(BootStage::Other, errno, "signalfd")),
    };
    let main_pid = spawned.pid;
    link.send(&Frame::Ready {
        pid: main_pid.as_raw() as u32,
    });
    if link.lost() {
        // No host ever heard of this run: nobody would adopt it.
        kill_all(&spec, main_pid);
        std::process::exit(1);
    }
    let status = relay::supervise(&mut link, inbox, &spec, spawned, &sigfd);
    link.send(&Frame::Exited {
        session: MAIN_SESSION,
        status: status.unwrap_or_default(),
    });
    std::process::exit(0)
}

fn agent_signals() -> SigSet {
    let mut set = SigSet::empty();
    for signal in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        set.add(signal);
    }
    set
}
