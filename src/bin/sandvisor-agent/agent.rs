//! The agent: PID 1 of one sandbox, forked by the spawner with its end of
//! the host's SAP socket (`sandvisor::engine::protocol`). It:
//! - reads `Start`, starts a new session and unshares the other namespaces
//!   the host asks for (it is already PID 1 of its pid namespace);
//! - sets up mounts (a private mount tree, a fresh `/proc`, the rootfs pivot),
//!   the hostname and `lo`;
//! - runs the main command as session 1, relays its stdout and stderr;
//! - reaps every process that ends in the sandbox, so no zombie stays;
//! - delivers the host's signals to the main command or to every process;
//! - when the main command exits, kills what is left, drains the output,
//!   reports the exit status and exits. If the host goes away, it kills
//!   everything and exits.
//!
//! It is single-threaded and uses no async runtime: `poll(2)` over the socket,
//! the two pipes and a signalfd.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, killpg, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use sandvisor::engine::protocol::{
    stream, BootStage, CommandSpec, ExecSpec, Frame, SignalTarget, StartSpec,
};
use std::collections::HashMap;

/// Runs the agent on `sock` (the host's SAP socket); never returns.
pub fn run(mut sock: UnixStream) -> ! {
    let (spec, inbox) = match read_start(&mut sock) {
        Ok(started) => started,
        Err(message) => {
            eprintln!("sandvisor-agent: {message}");
            std::process::exit(2);
        }
    };
    if spec.pid_namespace != (std::process::id() == 1) {
        boot_failed(
            &mut sock,
            BootStage::BuildVm,
            Errno::EINVAL,
            "the agent's pid namespace is not the one Start asks for",
        );
    }
    if let Err(errno) = nix::unistd::setsid() {
        boot_failed(&mut sock, BootStage::BuildVm, errno, "start a new session");
    }
    if let Err(errno) = nix::sched::unshare(clone_flags(&spec)) {
        boot_failed(&mut sock, BootStage::BuildVm, errno, "unshare namespaces");
    }
    init(sock, spec, inbox)
}

fn clone_flags(spec: &StartSpec) -> nix::sched::CloneFlags {
    use nix::sched::CloneFlags;
    let mut flags = CloneFlags::empty();
    for (wanted, flag) in [
        (spec.mount_namespace, CloneFlags::CLONE_NEWNS),
        (spec.net_namespace, CloneFlags::CLONE_NEWNET),
        (spec.uts_namespace, CloneFlags::CLONE_NEWUTS),
        (spec.ipc_namespace, CloneFlags::CLONE_NEWIPC),
    ] {
        if wanted {
            flags |= flag;
        }
    }
    flags
}

/// Reads the Start frame; returns it and whatever the host sent after it in
/// the same reads (a stop may follow right behind).
fn read_start(sock: &mut UnixStream) -> Result<(StartSpec, Vec<u8>), String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some((frame, used)) = Frame::decode(&buf).map_err(|e| e.to_string())? {
            buf.drain(..used);
            return match frame {
                Frame::Start(spec) => Ok((spec, buf)),
                other => Err(format!("expected Start, got {other:?}")),
            };
        }
        let n = sock
            .read(&mut chunk)
            .map_err(|e| format!("reading Start: {e}"))?;
        if n == 0 {
            return Err("host closed the socket before Start".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn send(sock: &mut UnixStream, frame: &Frame) -> std::io::Result<()> {
    let mut buf = Vec::new();
    frame.encode(&mut buf);
    sock.write_all(&buf)
}

fn boot_failed(sock: &mut UnixStream, stage: BootStage, errno: Errno, what: &str) -> ! {
    let frame = Frame::BootError {
        stage,
        errno: errno as i32,
        message: format!("{what}: {}", errno.desc()),
    };
    let _ = send(sock, &frame);
    std::process::exit(1)
}

fn init(mut sock: UnixStream, spec: StartSpec, inbox: Vec<u8>) -> ! {
    if let Err((stage, errno, what)) = prepare(&spec) {
        boot_failed(&mut sock, stage, errno, &what);
    }
    if !spec.pid_namespace {
        // Without a pid namespace the agent is not init: adopt orphans anyway.
        // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes no pointers.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    }
    let (mut child, terminal) = match spawn_session(&spec.run) {
        Ok(spawned) => spawned,
        Err(err) => {
            let errno = Errno::from_raw(err.raw_os_error().unwrap_or(0));
            let stage = BootStage::Config;
            let what = match err.kind() {
                std::io::ErrorKind::NotFound => format!("command not found: {}", spec.run.command),
                std::io::ErrorKind::PermissionDenied => {
                    format!("command not executable: {}", spec.run.command)
                }
                _ => format!("cannot start {}", spec.run.command),
            };
            boot_failed(&mut sock, stage, errno, &what)
        }
    };
    // Signals are blocked (and read from a signalfd) only once the main
    // command runs: it must not inherit a blocked mask, and spawning without
    // a pre-exec hook to unblock them lets the standard library use a
    // vfork-style spawn. A SIGCHLD lost before this is made up for by the
    // first reap in `supervise`.
    let signals = agent_signals();
    if signals.thread_block().is_err() {
        boot_failed(&mut sock, BootStage::Other, Errno::last(), "block signals");
    }
    let sigfd = match SignalFd::with_flags(&signals, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
    {
        Ok(fd) => fd,
        Err(errno) => boot_failed(&mut sock, BootStage::Other, errno, "signalfd"),
    };
    let main_pid = Pid::from_raw(child.id() as i32);
    if send(&mut sock, &Frame::Ready { pid: child.id() }).is_err() {
        kill_all(&spec, main_pid);
        std::process::exit(1);
    }
    let status = supervise(&mut sock, inbox, &spec, &mut child, terminal, &sigfd);
    let frame = Frame::Exited {
        session: 1,
        code: status.and_then(|s| s.code()),
        signal: status.and_then(|s| s.signal()),
    };
    let _ = send(&mut sock, &frame);
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

type BootFailure = (BootStage, Errno, String);

fn prepare(spec: &StartSpec) -> Result<(), BootFailure> {
    if spec.mount_namespace {
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .map_err(|e| {
            (
                BootStage::Mount,
                e,
                "make the mount tree private".to_string(),
            )
        })?;
        if let Some(rootfs) = &spec.rootfs {
            pivot_into(rootfs)?;
        }
        let kernel_fs = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        if spec.pid_namespace {
            mount(Some("proc"), "/proc", Some("proc"), kernel_fs, None::<&str>)
                .map_err(|e| (BootStage::Mount, e, "mount /proc".to_string()))?;
        }
        if spec.net_namespace {
            // sysfs shows the network namespace of whoever mounts it.
            mount(
                Some("sysfs"),
                "/sys",
                Some("sysfs"),
                kernel_fs | MsFlags::MS_RDONLY,
                None::<&str>,
            )
            .map_err(|e| (BootStage::Mount, e, "mount /sys".to_string()))?;
        }
    }
    if spec.uts_namespace {
        // Names may be 128 bytes; hostnames at most 64.
        nix::unistd::sethostname(&spec.name[..spec.name.len().min(64)])
            .map_err(|e| (BootStage::Other, e, "set the hostname".to_string()))?;
    }
    if spec.net_namespace {
        loopback_up().map_err(|e| (BootStage::Network, e, "bring lo up".to_string()))?;
    }
    Ok(())
}

fn pivot_into(rootfs: &str) -> Result<(), BootFailure> {
    let image = |e: Errno, what: &str| (BootStage::Image, e, format!("{what} {rootfs}"));
    let meta = std::fs::metadata(rootfs)
        .map_err(|e| image(Errno::from_raw(e.raw_os_error().unwrap_or(0)), "rootfs"))?;
    if !meta.is_dir() {
        return Err(image(Errno::ENOTDIR, "rootfs"));
    }
    mount(
        Some(rootfs),
        rootfs,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| (BootStage::Mount, e, format!("bind-mount {rootfs}")))?;
    std::env::set_current_dir(rootfs)
        .map_err(|e| image(Errno::from_raw(e.raw_os_error().unwrap_or(0)), "enter"))?;
    for dir in ["proc", "sys", "dev", "tmp"] {
        // An existing directory is fine; a read-only image just lacks the mount point.
        let _ = std::fs::create_dir_all(dir);
    }
    let dev_flags = MsFlags::MS_NOSUID;
    mount(
        Some("tmpfs"),
        "dev",
        Some("tmpfs"),
        dev_flags,
        Some("mode=755,size=64k"),
    )
    .map_err(|e| (BootStage::Mount, e, "mount /dev".to_string()))?;
    for node in ["null", "zero", "full", "random", "urandom", "tty"] {
        let target = format!("dev/{node}");
        if std::fs::File::create(&target).is_ok() {
            mount(
                Some(format!("/dev/{node}").as_str()),
                target.as_str(),
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| (BootStage::Mount, e, format!("bind /dev/{node}")))?;
        }
    }
    mount(
        Some("tmpfs"),
        "tmp",
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .map_err(|e| (BootStage::Mount, e, "mount /tmp".to_string()))?;
    nix::unistd::pivot_root(".", ".")
        .map_err(|e| (BootStage::Mount, e, "pivot_root".to_string()))?;
    // The old root is stacked under the new one at `/`: detach it.
    umount2(".", MntFlags::MNT_DETACH)
        .map_err(|e| (BootStage::Mount, e, "detach the old root".to_string()))?;
    std::env::set_current_dir("/")
        .map_err(|e| image(Errno::from_raw(e.raw_os_error().unwrap_or(0)), "chdir / in"))?;
    Ok(())
}

fn loopback_up() -> Result<(), Errno> {
    // SAFETY: plain socket/ioctl calls on a zeroed ifreq naming "lo".
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(Errno::last());
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let mut req: libc::ifreq = std::mem::zeroed();
        for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        if libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(Errno::last());
        }
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(fd.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(Errno::last());
        }
    }
    Ok(())
}

/// Starts a session's leader on a new terminal (whose master is returned)
/// or on pipes, in a process group of its own.
fn spawn_session(run: &CommandSpec) -> std::io::Result<(Child, Option<OwnedFd>)> {
    let mut command = Command::new(&run.command);
    command
        .args(&run.args)
        .env_clear()
        .envs(run.env.iter().map(|(k, v)| (k, v)));
    if let Some(cwd) = &run.cwd {
        command.current_dir(cwd);
    }
    let terminal = if run.tty {
        Some(open_terminal(&mut command, run.rows, run.cols)?)
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
    let spawned = command.spawn();
    // The terminal's slave ends, held by the command, close with it.
    drop(command);
    Ok((spawned?, terminal))
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

fn kill_all(spec: &StartSpec, main_pid: Pid) {
    // Failures mean the processes are gone already.
    if spec.pid_namespace {
        // As PID 1, kill(-1) reaches every process of the namespace but the agent.
        let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    } else {
        let _ = killpg(main_pid, Signal::SIGKILL);
    }
}

/// How long a session's output may still flow after its leader exited (a
/// process that left its group may hold the pipe).
/// The main command's session id.
const MAIN_SESSION: u64 = 1;
const SESSION_DRAIN: std::time::Duration = std::time::Duration::from_secs(2);
/// Most stdin bytes held for a session that does not read.
const STDIN_PENDING_MAX: usize = 16 << 20;

/// An exec session (2, 3, …): its process and its pipes.
struct Session {
    pid: Pid,
    open_pipes: u8,
    status: Option<ExitStatus>,
    /// The pseudo-terminal's master, for terminal sessions (`stdin` is then a
    /// second handle on it).
    terminal: Option<OwnedFd>,
    /// When the session's leader was reaped: its output is drained for at
    /// most `SESSION_DRAIN` more.
    leader_gone: Option<std::time::Instant>,
    stdin: Option<OwnedFd>,
    /// Bytes for stdin not yet accepted by the pipe (it is non-blocking, so
    /// a session that does not read cannot stall the agent).
    stdin_pending: Vec<u8>,
    close_stdin: bool,
}

/// The agent's running state: the host link, the main command, the exec
/// sessions and every pipe being relayed.
struct Agent<'a> {
    sock: &'a mut UnixStream,
    spec: &'a StartSpec,
    main_pid: Pid,
    main_status: Option<ExitStatus>,
    sessions: HashMap<u64, Session>,
    /// Output pipes: descriptor, stream tag, session.
    pipes: Vec<(OwnedFd, u8, u64)>,
    inbox: Vec<u8>,
    host_gone: bool,
}

/// Relays output, signals, exec sessions and stdin until the main command has
/// exited and all output is drained; returns its status.
fn supervise(
    sock: &mut UnixStream,
    inbox: Vec<u8>,
    spec: &StartSpec,
    child: &mut Child,
    terminal: Option<OwnedFd>,
    sigfd: &SignalFd,
) -> Option<ExitStatus> {
    let mut agent = Agent {
        sock,
        spec,
        main_pid: Pid::from_raw(child.id() as i32),
        main_status: None,
        sessions: HashMap::new(),
        pipes: Vec::new(),
        inbox,
        host_gone: false,
    };
    let main = agent.attach_session(MAIN_SESSION, agent.main_pid, child, terminal);
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
            if self.main_status.is_some() && self.pipes.is_empty() {
                self.reap_remaining();
                return self.main_status;
            }
            let stdin_ids: Vec<u64> = self
                .sessions
                .iter()
                .filter(|(_, s)| s.stdin.is_some() && !s.stdin_pending.is_empty())
                .map(|(id, _)| *id)
                .collect();
            let (ready_sock, ready_sig, ready_pipes, ready_stdin) = {
                let mut fds = vec![
                    PollFd::new(self.sock.as_fd(), PollFlags::POLLIN),
                    PollFd::new(sigfd.as_fd(), PollFlags::POLLIN),
                ];
                fds.extend(
                    self.pipes
                        .iter()
                        .map(|(fd, _, _)| PollFd::new(fd.as_fd(), PollFlags::POLLIN)),
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
                        self.pipes.clear();
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
                let pipes_end = 2 + self.pipes.len();
                (
                    ready(&fds[0]),
                    ready(&fds[1]),
                    fds[2..pipes_end].iter().map(ready).collect::<Vec<_>>(),
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
            if ready_sock && !self.host_gone {
                match self.sock.read(&mut buf) {
                    Ok(0) | Err(_) => self.host_gone = true,
                    Ok(n) => {
                        self.inbox.extend_from_slice(&buf[..n]);
                        self.handle_frames();
                    }
                }
            }
            if self.host_gone {
                // Nobody is left to report to: a sandbox never outlives its host.
                self.deliver(SignalTarget::All, Signal::SIGKILL);
                std::process::exit(1);
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
                let frame = Frame::Output {
                    session,
                    stream: tag,
                    data: buf[..n].to_vec(),
                };
                if send(self.sock, &frame).is_err() {
                    self.host_gone = true;
                }
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
            match Frame::decode(&self.inbox) {
                Ok(Some((frame, used))) => {
                    self.inbox.drain(..used);
                    match frame {
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
                        _ => {}
                    }
                }
                Ok(None) => return,
                Err(_) => {
                    self.host_gone = true;
                    return;
                }
            }
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

    fn exec(&mut self, exec: ExecSpec) {
        if self.main_status.is_some() {
            // The sandbox is ending: nothing new starts in it.
            let err = std::io::Error::from_raw_os_error(libc::ESRCH);
            self.exec_failed(&exec, &err);
            return;
        }
        let (mut child, terminal) = match spawn_session(&exec.run) {
            Ok(spawned) => spawned,
            Err(err) => {
                self.exec_failed(&exec, &err);
                return;
            }
        };
        let pid = Pid::from_raw(child.id() as i32);
        let session = self.attach_session(exec.session, pid, &mut child, terminal);
        self.sessions.insert(exec.session, session);
        let frame = Frame::SessionStarted {
            session: exec.session,
            pid: pid.as_raw() as u32,
        };
        if send(self.sock, &frame).is_err() {
            self.host_gone = true;
        }
    }

    /// Takes the standard streams of a session's leader (or its terminal's
    /// master): output pipes join the relay, stdin becomes non-blocking.
    fn attach_session(
        &mut self,
        id: u64,
        pid: Pid,
        child: &mut Child,
        terminal: Option<OwnedFd>,
    ) -> Session {
        let mut open_pipes = 0;
        let mut terminal_master = None;
        let stdin = match terminal {
            Some(master) => {
                // The terminal's master carries input and the merged output.
                let input = master.try_clone().ok();
                terminal_master = master.try_clone().ok();
                self.pipes.push((master, stream::OUTPUT, id));
                open_pipes += 1;
                input
            }
            None => child.stdin.take().map(OwnedFd::from),
        };
        if let Some(fd) = &stdin {
            // SAFETY: fcntl on a descriptor this process owns.
            unsafe {
                let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
                libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
            }
        }
        for (pipe, tag) in [
            (child.stdout.take().map(OwnedFd::from), stream::STDOUT),
            (child.stderr.take().map(OwnedFd::from), stream::STDERR),
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
        }
    }

    fn exec_failed(&mut self, exec: &ExecSpec, err: &std::io::Error) {
        let message = match err.kind() {
            std::io::ErrorKind::NotFound => format!("command not found: {}", exec.run.command),
            _ => format!("cannot start {}: {err}", exec.run.command),
        };
        let frame = Frame::SessionFailed {
            session: exec.session,
            errno: err.raw_os_error().unwrap_or(0),
            message,
        };
        if send(self.sock, &frame).is_err() {
            self.host_gone = true;
        }
    }

    fn resize(&mut self, id: u64, rows: u16, cols: u16) {
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

    fn stdin(&mut self, id: u64, data: Vec<u8>) {
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
    fn flush_stdin(&mut self, id: u64) {
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
        if send(self.sock, &frame).is_err() {
            self.host_gone = true;
        }
    }

    /// Reaps every exited process, recording the main command's and the
    /// sessions' statuses.
    fn reap(&mut self) {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(status) => self.record(status),
            }
        }
    }

    /// After the main command: every process was killed, so wait for each to
    /// be gone and report every session.
    fn reap_remaining(&mut self) {
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
                session
                    .status
                    .get_or_insert(ExitStatus::from_raw(libc::SIGKILL));
            }
            self.report_if_done(id);
        }
    }

    fn record(&mut self, status: WaitStatus) {
        let (pid, exit) = match status {
            WaitStatus::Exited(pid, code) => (pid, ExitStatus::from_raw((code & 0xff) << 8)),
            WaitStatus::Signaled(pid, signal, core) => (
                pid,
                ExitStatus::from_raw(signal as i32 | if core { 0x80 } else { 0 }),
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
    fn end_overdue_sessions(&mut self) {
        let overdue: Vec<u64> = self
            .sessions
            .iter()
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
    fn report_if_done(&mut self, id: u64) {
        let done = self
            .sessions
            .get(&id)
            .is_some_and(|s| s.status.is_some() && s.open_pipes == 0);
        if !done {
            return;
        }
        if let Some(session) = self.sessions.remove(&id) {
            let status = session.status;
            let frame = Frame::Exited {
                session: id,
                code: status.and_then(|s| s.code()),
                signal: status.and_then(|s| s.signal()),
            };
            if send(self.sock, &frame).is_err() {
                self.host_gone = true;
            }
        }
    }
}
