//! The sandbox's sessions: the main command (session
//! [`MAIN_SESSION`]) and exec sessions (2, 3, …), each a process group led by
//! its command, on pipes or on a pseudo-terminal of its own.
//!
//! # Contract
//! - A session starts with [`spawn_session`] and joins the relay through
//!   `attach_session`: its output pipes (or terminal master) are read by the
//!   loop in [`relay`](super::relay), its stdin is written without blocking,
//!   as the pipe accepts it, and every byte taken is credited back to the
//!   host (`StdinConsumed`).
//! - A session ends with its leader: the rest of its group is killed, its
//!   output drained for at most `SESSION_DRAIN`, and only then is its
//!   `Exited` sent, so its output always comes first.
//! - The main session's exit is reported by the agent itself
//!   ([`init`](super::init)), after every other session.
//! - A session that cannot start says which step failed ([`SpawnFailure`]):
//!   its working directory, `exec(2)` of its command (not found, not
//!   executable), or anything before (terminal, confinement, the fork).

use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

use bytes::BytesMut;
use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use sandvisor_actors::protocol::{
    CommandSpec, Confinement, ExecSpec, ExitStatus, Frame, OutputStream, StartSpec,
    FILE_OUTPUT_WINDOW, MAIN_SESSION,
};

use super::link::Link;

/// How long a session's output may still flow after its leader exited (a
/// process that left its group may hold the pipe).
const SESSION_DRAIN: std::time::Duration = std::time::Duration::from_secs(2);
/// Most stdin bytes held for a session that does not read.
const STDIN_PENDING_MAX: usize = 16 << 20;

/// A started session's leader and the agent's ends of its streams.
pub(super) struct Spawned {
    pub(super) pid: Pid,
    pub(super) stdin: Option<OwnedFd>,
    pub(super) stdout: Option<OwnedFd>,
    pub(super) stderr: Option<OwnedFd>,
    /// The pseudo-terminal's master, for terminal sessions.
    pub(super) terminal: Option<OwnedFd>,
    /// A file session: its output is windowed (see
    /// `FILE_OUTPUT_WINDOW`).
    pub(super) windowed: bool,
}

impl Spawned {
    fn from_child(mut child: Child, terminal: Option<OwnedFd>) -> Self {
        Self {
            pid: Pid::from_raw(child.id() as i32),
            stdin: child.stdin.take().map(OwnedFd::from),
            stdout: child.stdout.take().map(OwnedFd::from),
            stderr: child.stderr.take().map(OwnedFd::from),
            terminal,
            windowed: false,
        }
    }
}

/// A session: its leader, its pipes and its stdin.
pub(super) struct Session {
    pub(super) pid: Pid,
    pub(super) open_pipes: u8,
    pub(super) status: Option<ExitStatus>,
    /// The pseudo-terminal's master, for terminal sessions (`stdin` is then a
    /// second handle on it).
    pub(super) terminal: Option<OwnedFd>,
    /// When the session's leader was reaped: its output is drained for at
    /// most `SESSION_DRAIN` more.
    pub(super) leader_gone: Option<std::time::Instant>,
    pub(super) stdin: Option<OwnedFd>,
    /// Bytes for stdin not yet accepted by the pipe (it is non-blocking, so
    /// a session that does not read cannot stall the agent).
    pub(super) stdin_pending: Vec<u8>,
    pub(super) close_stdin: bool,
    /// For a file session: output bytes sent that the host has not
    /// acknowledged yet (its pipes are not read while the window is full).
    pub(super) unacked: Option<u64>,
    /// Its output goes to `exec.log` (see `ExecSpec::logged`).
    pub(super) logged: bool,
}

/// The agent's running state: the host link, the main command, the exec
/// sessions and every pipe being relayed.
pub(super) struct Agent<'a> {
    pub(super) link: &'a mut Link,
    pub(super) spec: &'a StartSpec,
    pub(super) main_pid: Pid,
    pub(super) main_status: Option<ExitStatus>,
    pub(super) sessions: HashMap<u64, Session>,
    /// Output pipes: descriptor, stream tag, session.
    pub(super) pipes: Vec<(OwnedFd, OutputStream, u64)>,
    pub(super) inbox: BytesMut,
    /// The highest session id seen (told to a host that re-adopts the
    /// sandbox, so it numbers new sessions after it).
    pub(super) last_session: u64,
}

/// Why a session's command did not start.
#[derive(Debug)]
pub(super) enum SpawnFailure {
    /// Its working directory could not be entered (`chdir(2)`).
    WorkingDir(String, std::io::Error),
    /// `exec(2)` of the command failed: the command itself cannot run.
    Exec(std::io::Error),
    /// A step before: the terminal, the confinement, the fork.
    Setup(std::io::Error),
}

impl SpawnFailure {
    /// The OS error number.
    pub(super) fn errno(&self) -> i32 {
        let (Self::WorkingDir(_, err) | Self::Exec(err) | Self::Setup(err)) = self;
        err.raw_os_error().unwrap_or(0)
    }

    /// Whether `exec(2)` itself failed.
    pub(super) fn exec_failed(&self) -> bool {
        matches!(self, Self::Exec(_))
    }

    /// What happened, as a shell would say it for `exec(2)`'s failures.
    pub(super) fn message(&self, command: &str) -> String {
        let errno = Errno::from_raw(self.errno());
        match self {
            Self::WorkingDir(dir, _) => {
                format!("cannot enter the working directory {dir} (to run {command}): {errno}")
            }
            Self::Exec(_) if errno == Errno::ENOENT => format!("command not found: {command}"),
            Self::Exec(_) if matches!(errno, Errno::EACCES | Errno::EPERM) => {
                format!("permission denied: {command}")
            }
            Self::Exec(_) => format!("cannot execute: {command}: {errno}"),
            Self::Setup(err) => format!("cannot start {command}: {err}"),
        }
    }
}

/// The steps between fork and exec that report themselves on a pipe (the
/// standard library hands back only an errno): a byte per step reached.
const STEP_WORKING_DIR: u8 = b'w';
const STEP_EXEC: u8 = b'x';

/// Starts a session's leader on a new terminal (whose master is returned)
/// or on pipes, in a process group of its own, confined by `confine` (see
/// [`confine`](super::confine)), in its working directory. A session that
/// carries a file operation runs it in a forked process confined the same
/// way (see [`files`](super::files)).
pub(super) fn spawn_session(
    run: &CommandSpec,
    confine: Option<&Confinement>,
) -> Result<Spawned, SpawnFailure> {
    if let Some(op) = &run.files {
        return super::files::spawn(op, confine, run.user).map_err(SpawnFailure::Setup);
    }
    let mut command = Command::new(&run.command);
    command
        .args(&run.args)
        .env_clear()
        .envs(run.env.iter().map(|(k, v)| (k, v)));
    let terminal = if run.tty {
        Some(open_terminal(&mut command, run.rows, run.cols).map_err(SpawnFailure::Setup)?)
    } else {
        command
            .stdin(if run.stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        None
    };
    if let (None, Some(ids)) = (confine, run.user) {
        command.uid(ids.uid).gid(ids.gid);
    }
    // Hooks between fork and exec make the standard library fork instead of
    // posix_spawn; without any, its errno is exec's (or the spawn's own).
    let hooked = run.tty || run.cwd.is_some() || confine.is_some();
    let steps = if hooked {
        Some(
            // Non-blocking: PID 1 reads it only after the child is gone,
            // and must never wait on it whoever else held the write end.
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
                .map_err(|e| SpawnFailure::Setup(e.into()))?,
        )
    } else {
        None
    };
    let step_fd = steps.as_ref().map(|(_, write)| write.as_raw_fd());
    if let (Some(cwd), Some(fd)) = (&run.cwd, step_fd) {
        // chdir here rather than through `current_dir`, whose failure comes
        // back as the same errno as exec's (ENOENT: "command not found").
        let dir = CString::new(cwd.as_str())
            .map_err(|e| SpawnFailure::WorkingDir(cwd.clone(), std::io::Error::other(e)))?;
        // SAFETY: chdir and write are async-signal-safe; `dir` is owned by
        // the closure.
        unsafe {
            command.pre_exec(move || {
                if libc::chdir(dir.as_ptr()) < 0 {
                    let err = std::io::Error::last_os_error();
                    step_reached(fd, STEP_WORKING_DIR);
                    return Err(err);
                }
                Ok(())
            });
        }
    }
    if let Some(confine) = confine {
        let prepared = super::confine::prepare(confine).map_err(SpawnFailure::Setup)?;
        let user = run.user;
        // SAFETY: the agent is single-threaded, so the forked child may run
        // this; it only makes system calls on its own process.
        unsafe {
            command.pre_exec(move || super::confine::apply(&prepared, user));
        }
    }
    if let Some(fd) = step_fd {
        // SAFETY: write is async-signal-safe.
        unsafe {
            command.pre_exec(move || {
                step_reached(fd, STEP_EXEC);
                Ok(())
            });
        }
    }
    let spawned = command.spawn();
    // The terminal's slave ends, held by the command, close with it.
    drop(command);
    match spawned {
        Ok(child) => Ok(Spawned::from_child(child, terminal)),
        Err(err) => Err(match steps {
            None if matches!(err.raw_os_error(), Some(libc::EAGAIN | libc::ENOMEM)) => {
                SpawnFailure::Setup(err)
            }
            None => SpawnFailure::Exec(err),
            Some((read, write)) => {
                // The child is gone (the standard library reaped it after its
                // report): with our end closed, the pipe ends after its bytes.
                drop(write);
                let mut reached = [0u8; 4];
                let n = nix::unistd::read(&read, &mut reached).unwrap_or(0);
                match reached[..n].last() {
                    Some(&STEP_EXEC) => SpawnFailure::Exec(err),
                    Some(&STEP_WORKING_DIR) => {
                        SpawnFailure::WorkingDir(run.cwd.clone().unwrap_or_default(), err)
                    }
                    _ => SpawnFailure::Setup(err),
                }
            }
        }),
    }
}

/// Between fork and exec: tells the parent that step `step` was reached.
fn step_reached(fd: RawFd, step: u8) {
    // SAFETY: write of one byte from a local; async-signal-safe. A pipe
    // that cannot take it only costs the precision of the report.
    unsafe { libc::write(fd, (&step as *const u8).cast(), 1) };
}

/// Gives `command` a new pseudo-terminal of `rows` x `cols` as its
/// controlling terminal and standard streams; returns the master.
fn open_terminal(command: &mut Command, rows: u16, cols: u16) -> std::io::Result<OwnedFd> {
    let size = nix::pty::Winsize {
        ws_row: if rows == 0 { 24 } else { rows },
        ws_col: if cols == 0 { 80 } else { cols },
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(&size, None).map_err(std::io::Error::from)?;
    // Neither end may leak into the session beyond its standard streams.
    for fd in [&pty.master, &pty.slave] {
        // SAFETY: fcntl on a descriptor this process owns.
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    command
        .stdin(Stdio::from(pty.slave.try_clone()?))
        .stdout(Stdio::from(pty.slave.try_clone()?))
        .stderr(Stdio::from(pty.slave));
    // SAFETY: setsid and ioctl are async-signal-safe; they make the terminal
    // on stdin the new session's controlling terminal.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(pty.master)
}

impl Agent<'_> {
    pub(super) fn exec(&mut self, exec: ExecSpec) {
        if self.main_status.is_some() {
            // The sandbox is ending: nothing new starts in it.
            let err = std::io::Error::from_raw_os_error(libc::ESRCH);
            self.exec_failed(&exec, &SpawnFailure::Setup(err));
            return;
        }
        let spawned = match spawn_session(&exec.run, self.spec.confine.as_ref()) {
            Ok(spawned) => spawned,
            Err(err) => {
                self.exec_failed(&exec, &err);
                return;
            }
        };
        let pid = spawned.pid;
        self.last_session = self.last_session.max(exec.session);
        let session = self.attach_session(exec.session, spawned, exec.logged);
        self.sessions.insert(exec.session, session);
        let frame = Frame::SessionStarted {
            session: exec.session,
            pid: pid.as_raw() as u32,
        };
        self.link.send(&frame);
    }

    /// Takes the standard streams of a session's leader (or its terminal's
    /// master): output pipes join the relay, stdin becomes non-blocking.
    pub(super) fn attach_session(&mut self, id: u64, spawned: Spawned, logged: bool) -> Session {
        let Spawned {
            pid,
            stdin,
            stdout,
            stderr,
            terminal,
            windowed,
        } = spawned;
        let mut open_pipes = 0;
        let mut terminal_master = None;
        let stdin = match terminal {
            Some(master) => {
                // The terminal's master carries input and the merged output.
                let input = master.try_clone().ok();
                terminal_master = master.try_clone().ok();
                self.pipes.push((master, OutputStream::Output, id));
                open_pipes += 1;
                input
            }
            None => stdin,
        };
        if let Some(fd) = &stdin {
            // SAFETY: fcntl on a descriptor this process owns.
            unsafe {
                let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
                libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
            }
        }
        for (pipe, tag) in [
            (stdout, OutputStream::Stdout),
            (stderr, OutputStream::Stderr),
        ] {
            if let Some(fd) = pipe {
                self.pipes.push((fd, tag, id));
                open_pipes += 1;
            }
        }
        Session {
            pid,
            open_pipes,
            status: None,
            terminal: terminal_master,
            leader_gone: None,
            stdin,
            stdin_pending: Vec::new(),
            close_stdin: false,
            unacked: windowed.then_some(0),
            logged,
        }
    }

    /// The host took `bytes` of a file session's output: its pipes may be
    /// read again while the window has room.
    pub(super) fn output_consumed(&mut self, id: u64, bytes: u64) {
        if let Some(unacked) = self.sessions.get_mut(&id).and_then(|s| s.unacked.as_mut()) {
            *unacked = unacked.saturating_sub(bytes);
        }
    }

    /// Whether the pipes of session `id` wait for the host's
    /// acknowledgements (a file session with a full window).
    pub(super) fn window_full(&self, id: u64) -> bool {
        self.sessions
            .get(&id)
            .and_then(|s| s.unacked)
            .is_some_and(|unacked| unacked >= FILE_OUTPUT_WINDOW)
    }

    fn exec_failed(&mut self, exec: &ExecSpec, failure: &SpawnFailure) {
        let frame = Frame::SessionFailed {
            session: exec.session,
            errno: failure.errno(),
            message: failure.message(&exec.run.command),
            exec_failed: failure.exec_failed(),
        };
        self.link.send(&frame);
    }

    pub(super) fn resize(&mut self, id: u64, rows: u16, cols: u16) {
        let Some(session) = self.sessions.get(&id) else {
            return;
        };
        if let Some(master) = &session.terminal {
            let size = libc::winsize {
                ws_row: rows,
                ws_col: cols,
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            // SAFETY: TIOCSWINSZ reads a winsize the call does not keep.
            unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
        }
    }

    pub(super) fn stdin(&mut self, id: u64, data: Vec<u8>) {
        let Some(session) = self.sessions.get_mut(&id).filter(|s| s.stdin.is_some()) else {
            // Nobody reads it any more: the bytes are done with.
            self.consumed(id, data.len());
            return;
        };
        if data.is_empty() && session.terminal.is_some() {
            // A terminal is not closed: end of input is its EOF character.
            session.stdin_pending.push(0x04);
        } else if data.is_empty() {
            session.close_stdin = true;
        } else if session.stdin_pending.len() + data.len() <= STDIN_PENDING_MAX {
            session.stdin_pending.extend_from_slice(&data);
        } else {
            // The host keeps its window below this; only a host that does
            // not follow the protocol gets here.
            eprintln!("sandvisor-agent: session {id} does not read its stdin; input dropped");
            self.consumed(id, data.len());
        }
        self.flush_stdin(id);
    }

    /// Writes what the session's stdin pipe accepts now; closes it once
    /// asked to and drained. Tells the host how much was taken.
    pub(super) fn flush_stdin(&mut self, id: u64) {
        let Some(session) = self.sessions.get_mut(&id) else {
            return;
        };
        let mut taken = 0;
        if let Some(fd) = &session.stdin {
            while !session.stdin_pending.is_empty() {
                match nix::unistd::write(fd, &session.stdin_pending) {
                    Ok(n) => {
                        session.stdin_pending.drain(..n);
                        taken += n;
                    }
                    Err(Errno::EINTR) => continue,
                    Err(Errno::EAGAIN) => break,
                    Err(_) => {
                        // The reader is gone: nothing more can be written.
                        taken += session.stdin_pending.len();
                        session.stdin_pending.clear();
                        session.stdin = None;
                        break;
                    }
                }
            }
        }
        if session.close_stdin && session.stdin_pending.is_empty() {
            session.stdin = None;
        }
        self.consumed(id, taken);
    }

    /// Returns `bytes` of stdin credit to the host.
    fn consumed(&mut self, session: u64, bytes: usize) {
        if bytes == 0 {
            return;
        }
        let frame = Frame::StdinConsumed {
            session,
            bytes: bytes as u64,
        };
        self.link.send(&frame);
    }

    /// Reaps every exited process, recording the main command's and the
    /// sessions' statuses.
    pub(super) fn reap(&mut self) {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(status) => self.record(status),
            }
        }
    }

    /// After the main command: every process was killed, so wait for each to
    /// be gone and report every session.
    pub(super) fn reap_remaining(&mut self) {
        // The main command's end is reported by `init`, after everything else.
        self.sessions.remove(&MAIN_SESSION);
        // Every session leader was sent SIGKILL with the rest of the
        // sandbox, so waiting for each cannot last.
        let leaders: Vec<Pid> = self
            .sessions
            .values()
            .filter(|s| s.status.is_none())
            .map(|s| s.pid)
            .collect();
        for pid in leaders {
            loop {
                match waitpid(pid, None) {
                    Err(Errno::EINTR) => continue,
                    Ok(status) => self.record(status),
                    Err(_) => {}
                }
                break;
            }
        }
        self.reap();
        let ids: Vec<u64> = self.sessions.keys().copied().collect();
        for id in ids {
            if let Some(session) = self.sessions.get_mut(&id) {
                session.open_pipes = 0;
                session.status.get_or_insert(ExitStatus {
                    code: None,
                    signal: Some(libc::SIGKILL),
                });
            }
            self.report_if_done(id);
        }
    }

    fn record(&mut self, status: WaitStatus) {
        let (pid, exit) = match status {
            WaitStatus::Exited(pid, code) => (
                pid,
                ExitStatus {
                    code: Some(code),
                    signal: None,
                },
            ),
            WaitStatus::Signaled(pid, signal, _core) => (
                pid,
                ExitStatus {
                    code: None,
                    signal: Some(signal as i32),
                },
            ),
            _ => return,
        };
        if pid == self.main_pid {
            self.main_status = Some(exit);
            return;
        }
        let id = self
            .sessions
            .iter()
            .find(|(_, s)| s.pid == pid && s.status.is_none())
            .map(|(id, _)| *id);
        if let Some(id) = id {
            if let Some(session) = self.sessions.get_mut(&id) {
                session.status = Some(exit);
                session.leader_gone = Some(std::time::Instant::now());
                // A session ends with its leader: what it left running in its
                // group would otherwise hold the output open forever.
                let _ = killpg(session.pid, Signal::SIGKILL);
            }
            self.report_if_done(id);
        }
    }

    /// Stops waiting for output of sessions whose leader exited more than
    /// `SESSION_DRAIN` ago (a process that left the group holds the pipe).
    pub(super) fn end_overdue_sessions(&mut self) {
        let overdue: Vec<u64> = self
            .sessions
            .iter()
            // A file session's output waits for the host, not for a
            // straggler: it is never cut short.
            .filter(|(_, s)| s.unacked.is_none())
            .filter(|(_, s)| s.leader_gone.is_some_and(|t| t.elapsed() >= SESSION_DRAIN))
            .map(|(id, _)| *id)
            .collect();
        for id in overdue {
            self.pipes.retain(|(_, _, session)| *session != id);
            if let Some(session) = self.sessions.get_mut(&id) {
                session.open_pipes = 0;
            }
            self.report_if_done(id);
        }
    }

    /// Reports a session's exit once its process is reaped and its output
    /// drained, so its output always comes before its exit.
    pub(super) fn report_if_done(&mut self, id: u64) {
        let done = self
            .sessions
            .get(&id)
            .is_some_and(|s| s.status.is_some() && s.open_pipes == 0);
        if !done {
            return;
        }
        if let Some(session) = self.sessions.remove(&id) {
            let frame = Frame::Exited {
                session: id,
                status: session.status.unwrap_or_default(),
            };
            self.link.send(&frame);
        }
    }
}
