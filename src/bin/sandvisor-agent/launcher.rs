//! The launcher of a sandbox's microVM (the microVM backend).
//!
//! The spawner's staging child creates this process exactly as it creates a
//! namespace sandbox's agent — in the sandbox's user, pid, mount and network
//! namespaces, with the sandbox's root staged at
//! [`STAGED_AT`] — but it is not the agent:
//! it runs the VM whose guest runs the agent (see [`crate::guest`]).
//!
//! # Contract
//! - A staging failure is reported as the agent would: the `Start` frame is
//!   read and answered with the `BootError`.
//! - Nothing starts before the host's `Start` frame is on the socket: the
//!   host sends it once this process is in the sandbox's cgroup, so qemu and
//!   virtiofsd are charged there. The frame is left on the socket for the
//!   guest's agent.
//! - `virtiofsd` shares the staged root (this mount namespace's view of it:
//!   layers, writable layer and volumes) over a vhost-user socket in this
//!   process's own network namespace (an abstract name nobody else sees);
//!   `qemu-system-x86_64 -M microvm` runs the guest with that file system,
//!   a virtio-serial port on the host's SAP socket, and the guest console
//!   (and both programs' own messages) appended to `kernel.log`. Both run
//!   with an empty environment; qemu under its own seccomp sandbox.
//! - The launcher is PID 1 of the VM's pid namespace: when qemu exits (the
//!   guest powered off, or it failed), it exits, and the kernel kills
//!   whatever else is left of the namespace (virtiofsd). The host's SIGKILL
//!   of this process ends the VM the same way.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{SocketAddr, UnixListener};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, Stdio};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use sandvisor_actors::protocol::{BootError, BootStage, Frame, VmLaunch, VM_ROOT_TAG, VM_SAP_PORT};

use crate::agent::host::{read_start, send};
use crate::agent::root::STAGED_AT;
use crate::agent::setup::boot_error;

/// The vhost-user socket's abstract name (private to the launcher's
/// network namespace).
const VFS_SOCKET: &str = "sandvisor-virtiofs";
/// Where the children find what they inherit: virtiofsd its listening
/// socket, qemu the SAP socket, the kernel and the initramfs.
const LISTENER_FD: RawFd = 3;
const LINK_FD: RawFd = 3;
const KERNEL_FD: RawFd = 4;
const INITRAMFS_FD: RawFd = 5;

/// The host files a VM needs, opened by the staging child with the host's
/// privileges.
#[derive(Debug)]
pub(crate) struct VmFiles {
    kernel: OwnedFd,
    initramfs: OwnedFd,
    console: OwnedFd,
}

impl VmFiles {
    /// Opens `vm`'s kernel and initramfs for reading and its console log
    /// for appending (created, 0640), none through a final symlink.
    ///
    /// # Errors
    /// Stage `build_vm`, naming the file that could not be opened.
    pub(crate) fn open(vm: &VmLaunch) -> Result<Self, BootError> {
        let open = |what: &str, path: &str, options: &mut std::fs::OpenOptions| {
            options
                .custom_flags(libc::O_NOFOLLOW)
                .open(path)
                .map(OwnedFd::from)
                .map_err(|e| {
                    boot_error(
                        BootStage::BuildVm,
                        crate::agent::stage::errno_of(&e),
                        &format!("open the {what} {path}"),
                    )
                })
        };
        Ok(Self {
            kernel: open("guest kernel", &vm.kernel, File::options().read(true))?,
            initramfs: open("initramfs", &vm.initramfs, File::options().read(true))?,
            console: open(
                "console log",
                &vm.console,
                File::options().append(true).create(true).mode(0o640),
            )?,
        })
    }
}

/// Runs the VM of `vm` on the host's SAP socket `link`; never returns.
pub(crate) fn run(
    link: File,
    vm: VmLaunch,
    staged: Result<(), BootError>,
    files: Option<VmFiles>,
) -> ! {
    let files = match (staged, files) {
        (Ok(()), Some(files)) => files,
        (Err(error), _) => refuse(link, error),
        (Ok(()), None) => refuse(
            link,
            boot_error(
                BootStage::BuildVm,
                Errno::EINVAL,
                "the VM's files were not opened",
            ),
        ),
    };
    if let Err(errno) = wait_for_start(&link) {
        eprintln!("sandvisor-agent: waiting for Start: {errno}");
        std::process::exit(2);
    }
    let mut virtiofsd = match start_virtiofsd(&vm, &files) {
        Ok(child) => child,
        Err(error) => refuse(link, error),
    };
    let qemu = start_qemu(&vm, &files, &link);
    let mut qemu = match qemu {
        Ok(child) => child,
        Err(error) => {
            let _ = virtiofsd.kill();
            refuse(link, error)
        }
    };
    let status = watch(&mut qemu, &link);
    let _ = virtiofsd.kill();
    let _ = virtiofsd.wait();
    std::process::exit(status.code().unwrap_or(128 + status.signal().unwrap_or(0)))
}

/// Answers `Start` with `error` and exits.
fn refuse(mut link: File, error: BootError) -> ! {
    if read_start(&mut link).is_ok() {
        let _ = send(&mut link, &Frame::BootError(error));
    }
    std::process::exit(1)
}

/// Waits for qemu to exit. If the host's end of the SAP socket closes
/// first (the host is gone), the guest's agent ends the sandbox and powers
/// off; a guest that does not within [`HANGUP_GRACE`] (it never booted, or
/// hangs) is killed with its qemu.
fn watch(qemu: &mut Child, link: &File) -> std::process::ExitStatus {
    let pidfd = pidfd_of(qemu.id()).ok();
    let mut deadline: Option<std::time::Instant> = None;
    loop {
        if let Ok(Some(status)) = qemu.try_wait() {
            return status;
        }
        // Only hang-ups of the socket wake this: its data is qemu's to read.
        let mut fds = vec![PollFd::new(
            std::os::fd::AsFd::as_fd(link),
            PollFlags::from_bits_retain(libc::POLLRDHUP),
        )];
        if let Some(pidfd) = &pidfd {
            fds.push(PollFd::new(
                std::os::fd::AsFd::as_fd(pidfd),
                PollFlags::POLLIN,
            ));
        }
        let timeout = match deadline {
            Some(at) => {
                let left = at.saturating_duration_since(std::time::Instant::now());
                PollTimeout::try_from(left).unwrap_or(PollTimeout::ZERO)
            }
            None if pidfd.is_none() => PollTimeout::from(100u8),
            None => PollTimeout::NONE,
        };
        match poll(&mut fds, timeout) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
        }
        let hung_up = fds[0].revents().is_some_and(|r| {
            r.intersects(PollFlags::from_bits_retain(libc::POLLRDHUP) | PollFlags::POLLHUP)
        });
        if hung_up && deadline.is_none() {
            deadline = Some(std::time::Instant::now() + HANGUP_GRACE);
        }
        if deadline.is_some_and(|at| std::time::Instant::now() >= at) {
            let _ = qemu.kill();
        }
    }
}

/// How long a guest whose host is gone may take to power off by itself.
const HANGUP_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

fn pidfd_of(pid: u32) -> Result<OwnedFd, Errno> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Waits until the host has written to the socket (its `Start`), without
/// reading it; exits if the host closed it first.
fn wait_for_start(link: &File) -> Result<(), Errno> {
    loop {
        let mut fds = [PollFd::new(
            std::os::fd::AsFd::as_fd(link),
            PollFlags::POLLIN,
        )];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {
                let events = fds[0].revents().unwrap_or(PollFlags::empty());
                if events.contains(PollFlags::POLLIN) {
                    return Ok(());
                }
                std::process::exit(0)
            }
            Err(Errno::EINTR) => continue,
            Err(errno) => return Err(errno),
        }
    }
}

/// A close-on-exec copy of `fd` numbered above what the children get, so
/// placing it at its number never collides with another.
fn high(fd: &impl AsRawFd) -> Result<OwnedFd, Errno> {
    // SAFETY: F_DUPFD_CLOEXEC takes an int and returns a new descriptor.
    let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 64) };
    if new < 0 {
        return Err(Errno::last());
    }
    // SAFETY: a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Has the child find `fds` at their numbers (without close-on-exec).
fn place(command: &mut Command, fds: Vec<(OwnedFd, RawFd)>) {
    // SAFETY: between fork and exec only dup2, which is async-signal-safe;
    // the sources are above every target (see `high`).
    unsafe {
        command.pre_exec(move || {
            for (fd, at) in &fds {
                if libc::dup2(fd.as_raw_fd(), *at) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

fn console(files: &VmFiles) -> Result<(Stdio, Stdio), Errno> {
    let out = files
        .console
        .try_clone()
        .map_err(|e| crate::agent::stage::errno_of(&e))?;
    let err = files
        .console
        .try_clone()
        .map_err(|e| crate::agent::stage::errno_of(&e))?;
    Ok((Stdio::from(out), Stdio::from(err)))
}

fn start_virtiofsd(vm: &VmLaunch, files: &VmFiles) -> Result<Child, BootError> {
    let fail = |what: &str| {
        let what = what.to_string();
        move |e: Errno| boot_error(BootStage::BuildVm, e, &what)
    };
    let address = SocketAddr::from_abstract_name(VFS_SOCKET)
        .map_err(|e| fail("name the virtiofs socket")(crate::agent::stage::errno_of(&e)))?;
    let listener = UnixListener::bind_addr(&address)
        .map_err(|e| fail("listen on the virtiofs socket")(crate::agent::stage::errno_of(&e)))?;
    let listener = high(&listener).map_err(fail("copy the virtiofs socket"))?;
    let (stdout, stderr) = console(files).map_err(fail("copy the console log"))?;
    let mut command = Command::new(&vm.virtiofsd);
    command
        .env_clear()
        .arg(format!("--fd={LISTENER_FD}"))
        .arg(format!("--shared-dir={STAGED_AT}"))
        .args([
            "--sandbox=chroot",
            "--announce-submounts",
            "--cache=auto",
            "--log-level=error",
        ])
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr);
    place(&mut command, vec![(listener, LISTENER_FD)]);
    command.spawn().map_err(|e| {
        boot_error(
            BootStage::BuildVm,
            crate::agent::stage::errno_of(&e),
            &format!("start {}", vm.virtiofsd),
        )
    })
}

fn start_qemu(vm: &VmLaunch, files: &VmFiles, link: &File) -> Result<Child, BootError> {
    let fail = |what: &str| {
        let what = what.to_string();
        move |e: Errno| boot_error(BootStage::BuildVm, e, &what)
    };
    let fds = vec![
        (high(link).map_err(fail("copy the SAP socket"))?, LINK_FD),
        (
            high(&files.kernel).map_err(fail("copy the kernel"))?,
            KERNEL_FD,
        ),
        (
            high(&files.initramfs).map_err(fail("copy the initramfs"))?,
            INITRAMFS_FD,
        ),
    ];
    let (stdout, stderr) = console(files).map_err(fail("copy the console log"))?;
    let mut command = Command::new(&vm.qemu);
    command
        .env_clear()
        .args(qemu_args(vm))
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr);
    place(&mut command, fds);
    command.spawn().map_err(|e| {
        boot_error(
            BootStage::BuildVm,
            crate::agent::stage::errno_of(&e),
            &format!("start {}", vm.qemu),
        )
    })
}

/// qemu's arguments: a `microvm` machine with only virtio-mmio devices (no
/// network, no default devices), guest memory shared with virtiofsd.
fn qemu_args(vm: &VmLaunch) -> Vec<String> {
    // qemu 7.2 gives TCG a 1 GiB translation cache, and an idle guest has
    // filled 48 MiB of it by the time it booted; 32 MiB (qemu's default
    // before 5.2) holds a boot without slowing it measurably here and saves
    // about 17 MiB of host memory per VM.
    let (accel, cpu) = if vm.kvm {
        ("kvm", "host")
    } else {
        ("tcg,tb-size=32", "max")
    };
    let mib = vm.memory_mib;
    [
        "-M",
        "microvm,pit=on,pic=on,rtc=on,isa-serial=on,memory-backend=mem",
        "-accel",
        accel,
        "-cpu",
        cpu,
        "-smp",
        &vm.vcpus.to_string(),
        "-m",
        &format!("{mib}M"),
        "-object",
        &format!("memory-backend-memfd,id=mem,size={mib}M,share=on"),
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-chardev",
        "stdio,id=console,signal=off",
        "-serial",
        "chardev:console",
        "-kernel",
        &format!("/proc/self/fd/{KERNEL_FD}"),
        "-initrd",
        &format!("/proc/self/fd/{INITRAMFS_FD}"),
        "-append",
        &format!("console=ttyS0 panic=-1 {}", vm.kernel_args),
        "-no-reboot",
        "-chardev",
        &format!("socket,id=virtiofs,path={VFS_SOCKET},abstract=on"),
        "-device",
        &format!("vhost-user-fs-device,chardev=virtiofs,tag={VM_ROOT_TAG}"),
        "-device",
        "virtio-serial-device,max_ports=2",
        "-chardev",
        &format!("socket,id=sap,fd={LINK_FD}"),
        "-device",
        &format!("virtserialport,chardev=sap,name={VM_SAP_PORT}"),
        "-sandbox",
        "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
    ]
    .into_iter()
    .map(str::to_string)
    .collect()
}
