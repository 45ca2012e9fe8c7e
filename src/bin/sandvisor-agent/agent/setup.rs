//! Everything the agent does to the sandbox before any user code runs: its
//! session, namespaces, mounts, root filesystem, hostname and network.
//!
//! # Contract
//! [`enter`] is the one entry point; it runs the steps in the order they are
//! listed there, each at most once, on the agent itself (whose children
//! inherit the result). The first step that fails ends the sequence with the
//! [`BootError`] the agent reports; nothing is undone, since the agent exits
//! and the kernel drops its namespaces with it. A step added later (e.g.
//! isolation) goes into that list at the point where what it needs is
//! already in place.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use nix::sched::CloneFlags;
use sandvisor_actors::protocol::{BootError, BootStage, StartSpec};

/// Sets the sandbox up as `spec` asks, in order:
/// 1. check the agent is PID 1 of a pid namespace exactly when `spec` asks
///    for one (the spawner created it there);
/// 2. start a new session, out of the spawner's;
/// 3. unshare the mount, network, UTS and IPC namespaces asked for;
/// 4. with a mount namespace: make the mount tree private, pivot into the
///    rootfs if any, mount `/proc` (with a pid namespace) and `/sys` (with a
///    network namespace);
/// 5. with a UTS namespace: set the hostname to the sandbox's name;
/// 6. with a network namespace: bring `lo` up;
/// 7. without a pid namespace: become the subreaper of the sandbox's
///    orphans.
///
/// # Errors
/// The first step that fails, as the [`BootError`] to report: stage
/// `build_vm` for steps 1–3, `mount` or `image` for 4, `other` for 5,
/// `network` for 6.
pub(super) fn enter(spec: &StartSpec) -> Result<(), BootError> {
    if spec.pid_namespace != (std::process::id() == 1) {
        return Err(boot_error(
            BootStage::BuildVm,
            Errno::EINVAL,
            "the agent's pid namespace is not the one Start asks for",
        ));
    }
    nix::unistd::setsid()
        .map_err(|errno| boot_error(BootStage::BuildVm, errno, "start a new session"))?;
    nix::sched::unshare(clone_flags(spec))
        .map_err(|errno| boot_error(BootStage::BuildVm, errno, "unshare namespaces"))?;
    if spec.mount_namespace {
        mounts(spec)?;
    }
    if spec.uts_namespace {
        // Names may be 128 bytes; hostnames at most 64.
        nix::unistd::sethostname(&spec.name[..spec.name.len().min(64)])
            .map_err(|e| boot_error(BootStage::Other, e, "set the hostname"))?;
    }
    if spec.net_namespace {
        loopback_up().map_err(|e| boot_error(BootStage::Network, e, "bring lo up"))?;
    }
    if !spec.pid_namespace {
        // Without a pid namespace the agent is not init: adopt orphans anyway.
        // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes no pointers.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    }
    Ok(())
}

fn clone_flags(spec: &StartSpec) -> nix::sched::CloneFlags {
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

/// Step 4: the mount namespace's tree, in the agent's new mount namespace.
fn mounts(spec: &StartSpec) -> Result<(), BootError> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| boot_error(BootStage::Mount, e, "make the mount tree private"))?;
    let kernel_fs = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    if spec.pid_namespace {
        mount(Some("proc"), "/proc", Some("proc"), kernel_fs, None::<&str>)
            .map_err(|e| boot_error(BootStage::Mount, e, "mount /proc"))?;
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
        .map_err(|e| boot_error(BootStage::Mount, e, "mount /sys"))?;
    }
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

/// The boot error of a failed step: `what` it was doing and why it failed.
pub(super) fn boot_error(stage: BootStage, errno: Errno, what: &str) -> BootError {
    BootError {
        stage,
        errno: errno as i32,
        message: format!("{what}: {}", errno.desc()),
    }
}
