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
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::CloneFlags;
use sandvisor_actors::protocol::{BootError, BootStage, RootPlan, SpawnPlan, StartSpec};

/// Sets the sandbox up as `spec` and the spawner's `plan` ask, in order:
/// 1. fail with `staged` if the spawner's staging failed (see
///    [`super::stage`]);
/// 2. check the agent is PID 1 of a pid namespace exactly when `spec` asks
///    for one (the spawner created it there);
/// 3. make the agent non-dumpable (nothing in the sandbox may ptrace it or
///    read its memory, environment or descriptors), and start a new
///    session, out of the spawner's;
/// 4. unshare the mount, network (unless the spawner created it), UTS, IPC
///    and cgroup namespaces asked for
///    (owned by the sandbox's user namespace, if any; the cgroup namespace
///    is rooted at the sandbox's cgroup, which the host moved the agent into
///    before `Start`);
/// 5. with a staged root: enter it (see [`enter_root`]); with only a mount
///    namespace (unconfined sandboxes): mount a fresh `/proc` and `/sys`;
/// 6. with a UTS namespace: set the hostname to the sandbox's name;
/// 7. with a network namespace: bring `lo` up;
/// 8. without a pid namespace: become the subreaper of the sandbox's
///    orphans.
///
/// # Errors
/// The first step that fails, as the [`BootError`] to report: the staging
/// child's own, stage `build_vm` for steps 2–4, `mount` or `image` for 5,
/// `other` for 6, `network` for 7.
pub(super) fn enter(
    spec: &StartSpec,
    plan: &SpawnPlan,
    staged: Result<(), BootError>,
) -> Result<(), BootError> {
    staged?;
    if spec.pid_namespace != (std::process::id() == 1) {
        return Err(boot_error(
            BootStage::BuildVm,
            Errno::EINVAL,
            "the agent's pid namespace is not the one Start asks for",
        ));
    }
    // Read before the cgroup namespace hides the host's paths.
    let cgroups = if plan.root.is_some() {
        own_cgroups()
    } else {
        Vec::new()
    };
    // SAFETY: prctl with PR_SET_DUMPABLE takes no pointers.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        return Err(boot_error(
            BootStage::BuildVm,
            Errno::last(),
            "make the agent non-dumpable",
        ));
    }
    nix::unistd::setsid()
        .map_err(|errno| boot_error(BootStage::BuildVm, errno, "start a new session"))?;
    nix::sched::unshare(clone_flags(spec, plan))
        .map_err(|errno| boot_error(BootStage::BuildVm, errno, "unshare namespaces"))?;
    if let Some(root) = &plan.root {
        enter_root(spec, root, &cgroups)?;
    } else if spec.mount_namespace {
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

fn clone_flags(spec: &StartSpec, plan: &SpawnPlan) -> nix::sched::CloneFlags {
    let mut flags = CloneFlags::empty();
    for (wanted, flag) in [
        (spec.mount_namespace, CloneFlags::CLONE_NEWNS),
        // A network namespace created with the agent is already its own
        // (the host attached the sandbox's network to it).
        (
            spec.net_namespace && !plan.net_namespace,
            CloneFlags::CLONE_NEWNET,
        ),
        (spec.uts_namespace, CloneFlags::CLONE_NEWUTS),
        (spec.ipc_namespace, CloneFlags::CLONE_NEWIPC),
        (spec.cgroup_namespace, CloneFlags::CLONE_NEWCGROUP),
    ] {
        if wanted {
            flags |= flag;
        }
    }
    flags
}

/// `/proc` paths that show the host's kernel state: read as empty.
const MASKED_PROC_FILES: [&str; 7] = [
    "kcore",
    "keys",
    "latency_stats",
    "timer_list",
    "timer_stats",
    "sched_debug",
    "interrupts",
];
/// `/proc` directories that show the host's hardware: shown empty.
const MASKED_PROC_DIRS: [&str; 3] = ["acpi", "asound", "scsi"];
/// `/proc` paths that tune the host's kernel: read-only.
const READ_ONLY_PROC: [&str; 5] = ["bus", "fs", "irq", "sys", "sysrq-trigger"];
/// `/sys` directories that show the host's firmware and power: shown empty.
const MASKED_SYS_DIRS: [&str; 2] = ["firmware", "devices/virtual/powercap"];

/// Step 5 with a staged root (at [`STAGED_AT`](super::root::STAGED_AT), mounted by the staging child in
/// this mount namespace's parent, so its mounts are locked here): fresh
/// `/proc` (masked, parts read-only) and `/sys` (read-only, masked, with the
/// sandbox's own cgroups read-only at `/sys/fs/cgroup`), a new devpts
/// instance and mqueue in `/dev`, then `pivot_root` into it and detach the
/// host's root. The kernel lets a user namespace mount `proc` and `sysfs`
/// only while a full view of them is mounted in the namespace: the host's
/// root goes last.
fn enter_root(
    spec: &StartSpec,
    _root: &RootPlan,
    cgroups: &[(String, String)],
) -> Result<(), BootError> {
    let fail = |what: &str| {
        let what = what.to_string();
        move |e: Errno| boot_error(BootStage::Mount, e, &what)
    };
    let new_root = super::root::STAGED_AT;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(fail("make the mount tree private"))?;
    // A bind of the staged root is not locked: pivot_root needs that.
    mount(
        Some(new_root),
        new_root,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(fail("bind the root"))?;
    nix::unistd::chdir(new_root).map_err(fail("enter the root"))?;
    let kernel_fs = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    if spec.pid_namespace {
        mount(Some("proc"), "proc", Some("proc"), kernel_fs, None::<&str>)
            .map_err(fail("mount /proc"))?;
    } else {
        bind("/proc", "proc", true).map_err(fail("bind the host's /proc"))?;
    }
    for file in MASKED_PROC_FILES {
        let path = format!("proc/{file}");
        if std::path::Path::new(&path).exists() {
            bind("dev/null", &path, false).map_err(fail(&format!("mask /{path}")))?;
        }
    }
    let mut empty = super::root::EmptyMasks::new(c"555");
    for dir in MASKED_PROC_DIRS.iter().map(|d| format!("proc/{d}")) {
        if std::path::Path::new(&dir).is_dir() {
            let at = super::root::open_path(std::path::Path::new(&dir), true)?;
            empty.cover(&at).map_err(fail(&format!("mask /{dir}")))?;
        }
    }
    for path in READ_ONLY_PROC.iter().map(|p| format!("proc/{p}")) {
        if std::path::Path::new(&path).exists() {
            bind(&path, &path, true).map_err(fail(&format!("bind /{path}")))?;
            read_only(&path, kernel_fs).map_err(fail(&format!("make /{path} read-only")))?;
        }
    }
    if spec.net_namespace {
        // sysfs shows the network namespace of whoever mounts it.
        mount(
            Some("sysfs"),
            "sys",
            Some("sysfs"),
            kernel_fs | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(fail("mount /sys"))?;
    } else {
        // The host's network namespace is not the sandbox's to mount a
        // sysfs of: a read-only view of the host's.
        bind("/sys", "sys", true).map_err(fail("bind the host's /sys"))?;
        read_only("sys", kernel_fs).map_err(fail("make /sys read-only"))?;
    }
    for dir in MASKED_SYS_DIRS.iter().map(|d| format!("sys/{d}")) {
        if std::path::Path::new(&dir).is_dir() {
            let at = super::root::open_path(std::path::Path::new(&dir), true)?;
            empty.cover(&at).map_err(fail(&format!("mask /{dir}")))?;
        }
    }
    cgroup_view(cgroups).map_err(fail("show the sandbox's cgroups at /sys/fs/cgroup"))?;
    mount(
        Some("devpts"),
        "dev/pts",
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5,max=1024"),
    )
    .map_err(fail("mount /dev/pts"))?;
    if spec.ipc_namespace {
        mount(
            Some("mqueue"),
            "dev/mqueue",
            Some("mqueue"),
            kernel_fs,
            None::<&str>,
        )
        .map_err(fail("mount /dev/mqueue"))?;
    }
    nix::unistd::pivot_root(".", ".").map_err(fail("pivot_root"))?;
    // The old root is stacked under the new one at `/`: detach it.
    umount2(".", MntFlags::MNT_DETACH).map_err(fail("detach the host's root"))?;
    nix::unistd::chdir("/").map_err(fail("enter /"))?;
    Ok(())
}

/// The sandbox's own cgroup directories, by hierarchy, as host paths:
/// `(name under /sys/fs/cgroup, host directory)`. Hierarchies where the
/// agent is not in a sandbox's group (the host's own) are left out.
fn own_cgroups() -> Vec<(String, String)> {
    let Ok(text) = std::fs::read_to_string("/proc/self/cgroup") else {
        return Vec::new();
    };
    let unified = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    text.lines()
        .filter_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            if !path.starts_with("/sandvisor/") {
                return None;
            }
            let name = match controllers {
                "" if unified => String::new(),
                "" => "unified".to_string(),
                named => named.trim_start_matches("name=").to_string(),
            };
            let host = if name.is_empty() {
                format!("/sys/fs/cgroup{path}")
            } else {
                format!("/sys/fs/cgroup/{name}{path}")
            };
            Some((name, host))
        })
        .collect()
}

/// `/sys/fs/cgroup`: the sandbox's own groups, read-only.
fn cgroup_view(cgroups: &[(String, String)]) -> Result<(), Errno> {
    let base = "sys/fs/cgroup";
    if let [(name, host)] = cgroups {
        if name.is_empty() {
            bind(host, base, false)?;
            return read_only(
                base,
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            );
        }
    }
    mount(
        Some("tmpfs"),
        base,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=755,size=64k"),
    )?;
    for (name, host) in cgroups.iter().filter(|(name, _)| !name.is_empty()) {
        let at = format!("{base}/{name}");
        std::fs::create_dir_all(&at).map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(0)))?;
        bind(host, &at, false)?;
        read_only(
            &at,
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        )?;
    }
    read_only(
        base,
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
    )
}

fn bind(source: &str, target: &str, recursive: bool) -> Result<(), Errno> {
    let mut flags = MsFlags::MS_BIND;
    if recursive {
        flags |= MsFlags::MS_REC;
    }
    mount(Some(source), target, None::<&str>, flags, None::<&str>)
}

/// Makes the mount at `path` read-only, keeping `kept` flags (a remount may
/// not clear them inside a user namespace).
fn read_only(path: &str, kept: MsFlags) -> Result<(), Errno> {
    mount(
        None::<&str>,
        path,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | kept,
        None::<&str>,
    )
}

/// Step 5 without a staged root: the mount namespace's tree, in the agent's
/// new mount namespace.
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
pub(crate) fn boot_error(stage: BootStage, errno: Errno, what: &str) -> BootError {
    BootError {
        stage,
        errno: errno as i32,
        message: format!("{what}: {}", errno.desc()),
        exec_failed: false,
    }
}
