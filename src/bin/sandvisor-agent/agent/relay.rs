//! The agent's loop: one `poll(2)` over the host's socket, the signalfd,
//! every session's output pipe and every stdin pipe with bytes waiting.
//!
//! # Contract
//! - Output is read in chunks of up to 64 KiB and sent as one `Output` frame
//!   each, in the order read per pipe. A file session's pipes are read only
//!   while fewer than `FILE_OUTPUT_WINDOW` of its bytes await the host's
//!   `OutputConsumed`.
//! - Frames from the host are acted on in order: `Signal`, `Exec`, `Resize`,
//!   `Stdin`, `OutputConsumed`; anything else is ignored. A frame that does not decode means
//!   the host is gone.
//! - A signal sent to the agent itself goes to every process of the sandbox.
//! - When the main command has exited, everything left is killed; the loop
//!   ends once every pipe is drained (or quiet for 2 s), every session is
//!   reported, and returns the main command's status.
//! - If the host is gone, every process of the sandbox is killed and the
//!   agent exits at once — unless the agent is adoptable ([`Link`]): then
//!   its exec sessions are killed (their callers are gone), the main command
//!   goes on, logged output is kept (the pipes wait while the kept output is
//!   full) and the loop also polls the adoption socket; a host that connects
//!   gets the kept output and the loop goes on with it. A main command that
//!   ends meanwhile is reported to that host.

use std::collections::HashMap;
use std::io::Read;
use std::os::fd::AsFd;

use bytes::{Bytes, BytesMut};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::signalfd::SignalFd;
use nix::unistd::Pid;
use sandvisor_actors::protocol::{ExitStatus, Frame, SignalTarget, StartSpec, MAIN_SESSION};

use super::link::Link;
use super::session::{Agent, Spawned};

/// Relays output, signals, exec sessions and stdin until the main command has
/// exited and all output is drained; returns its status.
pub(super) fn supervise(
    link: &mut Link,
    inbox: BytesMut,
    spec: &StartSpec,
    spawned: Spawned,
    sigfd: &SignalFd,
) -> Option<ExitStatus> {
    let mut agent = Agent {
        link,
        spec,
        main_pid: spawned.pid,
        main_status: None,
        sessions: HashMap::new(),
        pipes: Vec::new(),
        inbox,
        last_session: MAIN_SESSION,
    };
    let main = agent.attach_session(MAIN_SESSION, spawned, true);
    agent.sessions.insert(MAIN_SESSION, main);
    // Frames that came in right behind Start.
    agent.handle_frames();
    agent.reap();
    if agent.main_status.is_some() {
        kill_all(spec, agent.main_pid);
    }
    agent.run(sigfd)
}

impl Agent<'_> {
    fn run(&mut self, sigfd: &SignalFd) -> Option<ExitStatus> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // A main command's end waits for a host to report it to.
            if self.main_status.is_some() && self.pipes.is_empty() && self.link.listener().is_none()
            {
                self.reap_remaining();
                return self.main_status;
            }
            let stdin_ids: Vec<u64> = self
                .sessions
                .iter()
                .filter(|(_, s)| s.stdin.is_some() && !s.stdin_pending.is_empty())
                .map(|(id, _)| *id)
                .collect();
            let link_full = self.link.full();
            let (ready_sock, ready_sig, ready_pipes, ready_stdin) = {
                // The host's socket, or the adoption socket while no host is
                // connected.
                let Some(host_fd) = self.link.poll_fd() else {
                    return self.main_status;
                };
                let mut fds = vec![
                    PollFd::new(host_fd, PollFlags::POLLIN),
                    PollFd::new(sigfd.as_fd(), PollFlags::POLLIN),
                ];
                // A file session's pipes wait while its window is full, and
                // every pipe while the output kept for a host is.
                let polled: Vec<usize> = (0..self.pipes.len())
                    .filter(|&i| !link_full && !self.window_full(self.pipes[i].2))
                    .collect();
                fds.extend(
                    polled
                        .iter()
                        .map(|&i| PollFd::new(self.pipes[i].0.as_fd(), PollFlags::POLLIN)),
                );
                for id in &stdin_ids {
                    if let Some(fd) = self.sessions.get(id).and_then(|s| s.stdin.as_ref()) {
                        fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLOUT));
                    }
                }
                // Once the main command is gone, leftover writers were killed;
                // give the drain a bound in case one escaped (no pid namespace).
                let draining_session = self
                    .sessions
                    .values()
                    .any(|s| s.leader_gone.is_some() && s.open_pipes > 0);
                let timeout = if self.main_status.is_some() || draining_session {
                    PollTimeout::from(2000u16)
                } else {
                    PollTimeout::NONE
                };
                match poll(&mut fds, timeout) {
                    Ok(0) if self.main_status.is_some() => {
                        // Quiet pipes are given up; a file session's output
                        // waiting for the host's acknowledgements is not.
                        let pipes = std::mem::take(&mut self.pipes);
                        self.pipes = pipes
                            .into_iter()
                            .filter(|(_, _, session)| link_full || self.window_full(*session))
                            .collect();
                        continue;
                    }
                    Ok(0) => {
                        self.end_overdue_sessions();
                        continue;
                    }
                    Ok(_) => {}
                    Err(Errno::EINTR) => continue,
                    Err(_) => return self.main_status,
                }
                let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
                let pipes_end = 2 + polled.len();
                let mut ready_pipes = vec![false; self.pipes.len()];
                for (&i, fd) in polled.iter().zip(&fds[2..pipes_end]) {
                    ready_pipes[i] = ready(fd);
                }
                (
                    ready(&fds[0]),
                    ready(&fds[1]),
                    ready_pipes,
                    fds[pipes_end..].iter().map(ready).collect::<Vec<_>>(),
                )
            };
            for (i, is_ready) in ready_pipes.iter().enumerate().rev() {
                if *is_ready {
                    self.relay(i, &mut buf);
                }
            }
            for (id, is_ready) in stdin_ids.iter().zip(ready_stdin) {
                if is_ready {
                    self.flush_stdin(*id);
                }
            }
            if ready_sock && !self.link.lost() {
                if self.link.listener().is_some() {
                    let (pid, last) = (self.main_pid.as_raw() as u32, self.last_session);
                    self.link.accept(pid, last);
                } else if let Some(sock) = self.link.sock() {
                    match sock.read(&mut buf) {
                        Ok(0) | Err(_) => self.link.lose(),
                        Ok(n) => {
                            self.inbox.extend_from_slice(&buf[..n]);
                            self.handle_frames();
                        }
                    }
                }
            }
            if self.link.lost() {
                if !self.link.adoptable() {
                    // Nobody is left to report to: this sandbox does not
                    // outlive its host.
                    self.deliver(SignalTarget::All, Signal::SIGKILL);
                    std::process::exit(1);
                }
                self.host_left();
            }
            if ready_sig {
                while let Ok(Some(info)) = sigfd.read_signal() {
                    let signo = info.ssi_signo as i32;
                    if signo != libc::SIGCHLD {
                        // A signal sent to the agent itself is meant for the sandbox.
                        if let Ok(signal) = Signal::try_from(signo) {
                            self.deliver(SignalTarget::All, signal);
                        }
                    }
                }
                let had_exited = self.main_status.is_some();
                self.reap();
                if !had_exited && self.main_status.is_some() {
                    // The main command ended: the sandbox ends with it.
                    self.deliver(SignalTarget::All, Signal::SIGKILL);
                }
            }
        }
    }

    /// Reads one chunk from pipe `i` and sends it; closes the pipe at EOF.
    fn relay(&mut self, i: usize, buf: &mut [u8]) {
        let (fd, tag, session) = &self.pipes[i];
        let (tag, session) = (*tag, *session);
        match nix::unistd::read(fd, buf) {
            Ok(0) | Err(Errno::EBADF) => self.close_pipe(i),
            Ok(n) => {
                if let Some(unacked) = self
                    .sessions
                    .get_mut(&session)
                    .and_then(|s| s.unacked.as_mut())
                {
                    *unacked += n as u64;
                }
                let frame = Frame::Output {
                    session,
                    stream: tag,
                    data: Bytes::copy_from_slice(&buf[..n]),
                };
                let logged = self.sessions.get(&session).is_some_and(|s| s.logged);
                self.link.output(&frame, logged);
            }
            Err(Errno::EINTR | Errno::EAGAIN) => {}
            Err(_) => self.close_pipe(i),
        }
    }

    fn close_pipe(&mut self, i: usize) {
        let (_, _, session) = self.pipes.remove(i);
        if let Some(s) = self.sessions.get_mut(&session) {
            s.open_pipes = s.open_pipes.saturating_sub(1);
            self.report_if_done(session);
        }
    }

    /// Acts on every complete frame in the inbox; a protocol error means the
    /// host is gone.
    fn handle_frames(&mut self) {
        loop {
            match Frame::decode(&mut self.inbox) {
                Ok(Some(frame)) => match frame {
                    Frame::Signal { target, signo } => {
                        if let Ok(signal) = Signal::try_from(signo) {
                            self.deliver(target, signal);
                        }
                    }
                    Frame::Exec(exec) => self.exec(exec),
                    Frame::Resize {
                        session,
                        rows,
                        cols,
                    } => self.resize(session, rows, cols),
                    Frame::Stdin { session, data } => self.stdin(session, data),
                    Frame::OutputConsumed { session, bytes } => {
                        self.output_consumed(session, bytes)
                    }
                    Frame::Written(mark) => self.link.written(mark),
                    _ => {}
                },
                Ok(None) => return,
                Err(_) => {
                    self.link.lose();
                    return;
                }
            }
        }
    }

    /// The host went away from an adoptable agent: its exec sessions are
    /// killed (nobody can read their results), what only their callers
    /// would read (unlogged output, stdin) is dropped, and the main command
    /// goes on while the agent waits for a new host.
    fn host_left(&mut self) {
        self.link.hang_up();
        self.inbox.clear();
        let mut unlogged = Vec::new();
        for (&id, session) in &mut self.sessions {
            if id == MAIN_SESSION {
                continue;
            }
            let _ = killpg(session.pid, Signal::SIGKILL);
            session.stdin = None;
            session.stdin_pending.clear();
            if !session.logged {
                session.unacked = None;
                session.open_pipes = 0;
                unlogged.push(id);
            }
        }
        self.pipes
            .retain(|(_, _, session)| !unlogged.contains(session));
        for id in unlogged {
            self.report_if_done(id);
        }
    }

    fn deliver(&self, target: SignalTarget, signal: Signal) {
        // Failures mean the processes are gone already.
        match target {
            SignalTarget::Main => {
                let _ = kill(self.main_pid, signal);
            }
            SignalTarget::All if self.spec.pid_namespace => {
                let _ = kill(Pid::from_raw(-1), signal);
            }
            SignalTarget::All => {
                let _ = killpg(self.main_pid, signal);
                // Sessions run in groups of their own.
                for session in self.sessions.values() {
                    let _ = killpg(session.pid, signal);
                }
            }
            SignalTarget::Session(id) => {
                // The group may outlive its leader (a background child).
                if let Some(session) = self.sessions.get(&id) {
                    let _ = killpg(session.pid, signal);
                }
            }
        }
    }
}

/// Kills every process of the sandbox but the agent.
pub(super) fn kill_all(spec: &StartSpec, main_pid: Pid) {
    // Failures mean the processes are gone already.
    if spec.pid_namespace {
        // As PID 1, kill(-1) reaches every process of the namespace but the agent.
        let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    } else {
        let _ = killpg(main_pid, Signal::SIGKILL);
    }
}
