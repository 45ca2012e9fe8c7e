//! `sandvisor-agent`: PID 1 inside a sandbox.
//!
//! The host starts it with its end of a socketpair as standard input and
//! speaks SAP (`sandvisor::engine::protocol`) over it. The agent:
//! - unshares the namespaces the host asks for, starts a new session, and
//!   forks PID 1 into the new pid namespace (a process that unshares a pid
//!   namespace is not in it; its first child is), and reports its host pid;
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
use nix::unistd::{fork, pipe, ForkResult, Pid};
use sandvisor::engine::protocol::{stream, BootStage, Frame, SignalTarget, StartSpec, AGENT_FD};

fn main() {
    let mut sock = match take_socket() {
        Ok(sock) => sock,
        Err(err) => {
            eprintln!("sandvisor-agent: standard input must be the host's socket: {err}");
            std::process::exit(2);
        }
    };
    let (spec, inbox) = match read_start(&mut sock) {
        Ok(started) => started,
        Err(message) => {
            eprintln!("sandvisor-agent: {message}");
            std::process::exit(2);
        }
    };
    // Being spawned without a pre-exec hook lets the host use a cheap
    // vfork-style spawn; the agent sets up its own session and namespaces.
    if let Err(errno) = nix::unistd::setsid() {
        boot_failed(&mut sock, BootStage::BuildVm, errno, "start a new session");
    }
    if let Err(errno) = nix::sched::unshare(clone_flags(&spec)) {
        boot_failed(&mut sock, BootStage::BuildVm, errno, "unshare namespaces");
    }
    if spec.pid_namespace {
        first_stage(sock, spec, inbox)
    } else {
        let hello = Frame::Hello {
            init_pid: std::process::id(),
        };
        if send(&mut sock, &hello).is_err() {
            std::process::exit(2);
        }
        init(sock, spec, inbox)
    }
}

/// Moves the socket off standard input (to a close-on-exec descriptor) and
/// puts `/dev/null` there instead.
fn take_socket() -> std::io::Result<UnixStream> {
    // SAFETY: plain descriptor calls; the duplicate is owned by nothing else.
    let fd = unsafe { libc::fcntl(AGENT_FD, libc::F_DUPFD_CLOEXEC, 3) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just duplicated and is owned by nothing else.
    let sock = unsafe { UnixStream::from_raw_fd(fd) };
    let null = std::fs::File::open("/dev/null")?;
    // SAFETY: replaces fd 0, which the agent no longer uses.
    if unsafe { libc::dup2(null.as_raw_fd(), AGENT_FD) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(sock)
}

fn clone_flags(spec: &StartSpec) -> nix::sched::CloneFlags {
    use nix::sched::CloneFlags;
    let mut flags = CloneFlags::empty();
    for (wanted, flag) in [
        (spec.pid_namespace, CloneFlags::CLONE_NEWPID),
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

/// Forks PID 1 into the pid namespace just unshared, reports its host pid,
/// and waits for it, exiting with its status.
fn first_stage(mut sock: UnixStream, spec: StartSpec, inbox: Vec<u8>) -> ! {
    let (go_read, go_write) = match pipe() {
        Ok(pair) => pair,
        Err(errno) => boot_failed(&mut sock, BootStage::BuildVm, errno, "pipe"),
    };
    // SAFETY: the agent is single-threaded, so the child may run anything.
    match unsafe { fork() } {
        Err(errno) => boot_failed(
            &mut sock,
            BootStage::BuildVm,
            errno,
            "fork into the pid namespace",
        ),
        Ok(ForkResult::Child) => {
            drop(go_write);
            // Wait until the first stage has sent Hello, so frames never interleave.
            let mut byte = [0u8; 1];
            let _ = std::fs::File::from(go_read).read(&mut byte);
            init(sock, spec, inbox)
        }
        Ok(ForkResult::Parent { child }) => {
            drop(go_read);
            let hello = Frame::Hello {
                init_pid: child.as_raw() as u32,
            };
            if send(&mut sock, &hello).is_err() {
                let _ = kill(child, Signal::SIGKILL);
            }
            let _ = std::fs::File::from(go_write).write_all(b"g");
            drop(sock);
            loop {
                match waitpid(child, None) {
                    Ok(WaitStatus::Exited(_, code)) => std::process::exit(code),
                    Ok(WaitStatus::Signaled(_, signal, _)) => {
                        std::process::exit(128 + signal as i32)
                    }
                    Err(Errno::EINTR) | Ok(_) => continue,
                    Err(_) => std::process::exit(1),
                }
            }
        }
    }
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
    let mut child = match spawn_main(&spec) {
        Ok(child) => child,
        Err(err) => {
            let errno = Errno::from_raw(err.raw_os_error().unwrap_or(0));
            let stage = BootStage::Config;
            let what = match err.kind() {
                std::io::ErrorKind::NotFound => format!("command not found: {}", spec.command),
                std::io::ErrorKind::PermissionDenied => {
                    format!("command not executable: {}", spec.command)
                }
                _ => format!("cannot start {}", spec.command),
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
    let stdout = child.stdout.take().map(OwnedFd::from);
    let stderr = child.stderr.take().map(OwnedFd::from);
    let status = supervise(
        &mut sock,
        inbox,
        &spec,
        &mut child,
        (stdout, stderr),
        &sigfd,
    );
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

fn spawn_main(spec: &StartSpec) -> std::io::Result<Child> {
    let mut command = Command::new(&spec.command);
    command
        .args(&spec.args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if let Some(cwd) = &spec.cwd {
        command.current_dir(cwd);
    }
    command.spawn()
}

fn kill_all(spec: &StartSpec, main_pid: Pid) {
    deliver(spec, main_pid, SignalTarget::All, Signal::SIGKILL);
}

fn deliver(spec: &StartSpec, main_pid: Pid, target: SignalTarget, signal: Signal) {
    // Failures mean the processes are gone already.
    match target {
        SignalTarget::Main => {
            let _ = kill(main_pid, signal);
        }
        // As PID 1, kill(-1) reaches every process of the namespace but the agent.
        SignalTarget::All if spec.pid_namespace => {
            let _ = kill(Pid::from_raw(-1), signal);
        }
        SignalTarget::All => {
            let _ = killpg(main_pid, signal);
        }
    }
}

/// Relays output and signals until the main command has exited and its
/// output is drained; returns its status.
fn supervise(
    sock: &mut UnixStream,
    mut inbox: Vec<u8>,
    spec: &StartSpec,
    child: &mut Child,
    (stdout, stderr): (Option<OwnedFd>, Option<OwnedFd>),
    sigfd: &SignalFd,
) -> Option<ExitStatus> {
    let main_pid = Pid::from_raw(child.id() as i32);
    // Frames that came in right behind Start.
    let mut host_gone = handle_frames(&mut inbox, spec, main_pid).is_err();
    let mut pipes: Vec<(OwnedFd, u8)> = Vec::new();
    pipes.extend(stdout.map(|fd| (fd, stream::STDOUT)));
    pipes.extend(stderr.map(|fd| (fd, stream::STDERR)));
    let mut main_status: Option<ExitStatus> = None;
    reap(child, &mut main_status);
    if main_status.is_some() {
        kill_all(spec, main_pid);
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if main_status.is_some() && pipes.is_empty() {
            reap(child, &mut main_status);
            return main_status;
        }
        let (ready_sock, ready_sig, ready_pipes) = {
            let mut fds = vec![
                PollFd::new(sock.as_fd(), PollFlags::POLLIN),
                PollFd::new(sigfd.as_fd(), PollFlags::POLLIN),
            ];
            fds.extend(
                pipes
                    .iter()
                    .map(|(fd, _)| PollFd::new(fd.as_fd(), PollFlags::POLLIN)),
            );
            // Once the main command is gone, leftover writers were killed; give
            // the drain a bound in case one escaped (no pid namespace).
            let timeout = if main_status.is_some() {
                PollTimeout::from(2000u16)
            } else {
                PollTimeout::NONE
            };
            match poll(&mut fds, timeout) {
                Ok(0) => {
                    pipes.clear();
                    continue;
                }
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(_) => return main_status,
            }
            let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
            (
                ready(&fds[0]),
                ready(&fds[1]),
                fds[2..].iter().map(ready).collect::<Vec<_>>(),
            )
        };
        for (i, is_ready) in ready_pipes.iter().enumerate().rev() {
            if !is_ready {
                continue;
            }
            let (fd, tag) = &pipes[i];
            match nix::unistd::read(fd, &mut buf) {
                Ok(0) | Err(Errno::EBADF) => {
                    pipes.remove(i);
                }
                Ok(n) => {
                    let frame = Frame::Output {
                        session: 1,
                        stream: *tag,
                        data: buf[..n].to_vec(),
                    };
                    if send(sock, &frame).is_err() {
                        host_gone = true;
                    }
                }
                Err(Errno::EINTR | Errno::EAGAIN) => {}
                Err(_) => {
                    pipes.remove(i);
                }
            }
        }
        if ready_sock && !host_gone {
            match sock.read(&mut buf) {
                Ok(0) | Err(_) => host_gone = true,
                Ok(n) => {
                    inbox.extend_from_slice(&buf[..n]);
                    host_gone = handle_frames(&mut inbox, spec, main_pid).is_err();
                }
            }
        }
        if host_gone {
            // Nobody is left to report to: a sandbox never outlives its host.
            kill_all(spec, main_pid);
            std::process::exit(1);
        }
        if ready_sig {
            while let Ok(Some(info)) = sigfd.read_signal() {
                let signo = info.ssi_signo as i32;
                if signo != libc::SIGCHLD {
                    // A signal sent to the agent itself is meant for the sandbox.
                    if let Ok(signal) = Signal::try_from(signo) {
                        deliver(spec, main_pid, SignalTarget::All, signal);
                    }
                }
            }
            let had_exited = main_status.is_some();
            reap(child, &mut main_status);
            if !had_exited && main_status.is_some() {
                // The main command ended: the sandbox ends with it.
                kill_all(spec, main_pid);
            }
        }
    }
}

/// Acts on every complete frame in `inbox`; `Err` on a protocol error (the
/// host is then treated as gone).
fn handle_frames(inbox: &mut Vec<u8>, spec: &StartSpec, main_pid: Pid) -> Result<(), ()> {
    loop {
        match Frame::decode(inbox) {
            Ok(Some((frame, used))) => {
                inbox.drain(..used);
                if let Frame::Signal { target, signo } = frame {
                    if let Ok(signal) = Signal::try_from(signo) {
                        deliver(spec, main_pid, target, signal);
                    }
                }
            }
            Ok(None) => return Ok(()),
            Err(_) => return Err(()),
        }
    }
}

/// Reaps every exited process; records the main command's status.
fn reap(child: &mut Child, main_status: &mut Option<ExitStatus>) {
    let main_pid = child.id() as i32;
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) if pid.as_raw() == main_pid => {
                *main_status = Some(ExitStatus::from_raw((code & 0xff) << 8));
            }
            Ok(WaitStatus::Signaled(pid, signal, core)) if pid.as_raw() == main_pid => {
                *main_status = Some(ExitStatus::from_raw(
                    signal as i32 | if core { 0x80 } else { 0 },
                ));
            }
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => {}
        }
    }
}
