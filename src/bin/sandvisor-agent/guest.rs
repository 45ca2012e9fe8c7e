//! The agent's binary as `/init` of a microVM's initramfs: the guest's
//! PID 1.
//!
//! # Contract
//! In order, before any of the sandbox's code runs:
//! 1. mounts the guest's `/proc`, `/sys` and `/dev` (devtmpfs);
//! 2. with [`VM_PROBE_ARG`] on the kernel command line, prints
//!    [`VM_PROBE_OK`] and powers off (the host's boot probe);
//! 3. loads the kernel modules the initramfs carries, in the order of
//!    [`MODULE_ORDER`] (virtio-mmio, virtio-console, virtio-fs and what they
//!    need);
//! 4. opens the virtio-serial port named [`VM_SAP_PORT`]: the host's SAP
//!    socket, through qemu;
//! 5. moves a bind of the initramfs over `/` (`pivot_root` refuses the
//!    initramfs itself) and mounts the root the host shared (virtio-fs tag
//!    [`VM_ROOT_TAG`]: the staged root, writable layer and volumes
//!    included) where the agent expects a staged root, with the guest's own
//!    fresh `/tmp`, `/run`, `/var/tmp`, `/dev` and `/dev/shm` over it;
//! 6. reads `Start` and forks the agent — PID 1 of a new pid namespace when
//!    the spec asks for one — which sets the sandbox up exactly as in the
//!    namespace backend (namespaces, `/proc` masks, `pivot_root`,
//!    confinement of every session) and speaks SAP on the port;
//! 7. when the agent has exited, powers the guest off, which ends qemu.
//!
//! A step that fails is reported on the console and powers the guest off:
//! the host sees its VM end before `Ready` (a boot failure at stage
//! `kernel`, with the console's last lines).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use sandvisor_actors::protocol::{
    RootPlan, SpawnPlan, VM_PROBE_ARG, VM_PROBE_OK, VM_ROOT_TAG, VM_SAP_PORT,
};

use crate::agent::host::read_start;
use crate::agent::root::{fresh_mounts, open_path, STAGED_AT};
use crate::spawner::{clone3_fork, Forked};

/// The file in the initramfs listing its modules (paths), in load order.
pub(crate) const MODULE_ORDER: &str = "/modules.order";
/// Where the initramfs is bound before it is moved over `/`.
const REBOUND_AT: &str = "/rebound";
/// Size of each of the guest's fresh tmpfs mounts (as the host's).
const TMPFS_BYTES: u64 = 64 << 20;
/// How long the SAP port may take to appear once its driver is loaded.
const PORT_WAIT: Duration = Duration::from_secs(20);

/// Brings the guest up and runs the agent (see the module docs); never
/// returns.
pub fn boot() -> ! {
    if let Err(message) = run() {
        eprintln!("sandvisor-agent: guest: {message}");
    }
    power_off()
}

fn run() -> Result<(), String> {
    let kernel_fs = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    for (fs, at, flags) in [
        ("proc", "/proc", kernel_fs),
        ("sysfs", "/sys", kernel_fs),
        ("devtmpfs", "/dev", MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC),
    ] {
        mount(Some(fs), at, Some(fs), flags, None::<&str>)
            .map_err(|e| format!("mount {at}: {e}"))?;
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    if cmdline.split_whitespace().any(|word| word == VM_PROBE_ARG) {
        println!("{VM_PROBE_OK}");
        return Ok(());
    }
    load_modules()?;
    let mut link = open_port()?;
    leave_initramfs()?;
    mount(
        Some(VM_ROOT_TAG),
        STAGED_AT,
        Some("virtiofs"),
        MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| format!("mount the shared root: {e}"))?;
    let root = open_path(Path::new(STAGED_AT), true).map_err(|e| e.message)?;
    fresh_mounts(&root, TMPFS_BYTES, 0).map_err(|e| e.message)?;
    drop(root);
    let (spec, inbox) = read_start(&mut link)?;
    let mut flags = libc::CLONE_PIDFD as u64;
    if spec.pid_namespace {
        flags |= libc::CLONE_NEWPID as u64;
    }
    let plan = SpawnPlan {
        pid_namespace: spec.pid_namespace,
        user_namespace: None,
        root: Some(RootPlan {
            dir: String::new(),
            lowers: Vec::new(),
            read_only: false,
            mounts: Vec::new(),
            tmpfs_bytes: TMPFS_BYTES,
        }),
        net_namespace: false,
        vm: None,
        adopt_socket: None,
    };
    let agent = match clone3_fork(flags).map_err(|e| format!("fork the agent: {e}"))? {
        Forked::Child => crate::agent::run_started(link, None, spec, inbox, &plan, Ok(())),
        Forked::Parent { pid, .. } => pid,
    };
    drop(link);
    // PID 1 reaps everything; the guest ends with the agent.
    loop {
        match nix::sys::wait::wait() {
            Ok(status) if status.pid().is_some_and(|pid| pid.as_raw() as u32 == agent) => {
                return Ok(())
            }
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(errno) => return Err(format!("wait for the agent: {errno}")),
        }
    }
}

/// Loads the modules [`MODULE_ORDER`] lists; one already loaded (or built
/// in) is not an error.
fn load_modules() -> Result<(), String> {
    let order = std::fs::read_to_string(MODULE_ORDER).unwrap_or_default();
    for module in order.lines().filter(|line| !line.is_empty()) {
        let file = File::open(module).map_err(|e| format!("open {module}: {e}"))?;
        // SAFETY: finit_module reads the module from the descriptor; the
        // parameters are an empty C string.
        let loaded =
            unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), c"".as_ptr(), 0) };
        if loaded != 0 && Errno::last() != Errno::EEXIST {
            return Err(format!("load {module}: {}", Errno::last()));
        }
    }
    Ok(())
}

/// Opens the SAP port once its device exists.
fn open_port() -> Result<File, String> {
    let deadline = Instant::now() + PORT_WAIT;
    loop {
        if let Some(device) = find_port() {
            return File::options()
                .read(true)
                .write(true)
                .open(&device)
                .map_err(|e| format!("open {}: {e}", device.display()));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "no virtio port named {VM_SAP_PORT} within {PORT_WAIT:?}"
            ));
        }
        // There is no udev in the guest to wait on: the port's device node
        // appears asynchronously after its driver is loaded.
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn find_port() -> Option<std::path::PathBuf> {
    let ports = std::fs::read_dir("/sys/class/virtio-ports").ok()?;
    for port in ports.flatten() {
        let name = std::fs::read_to_string(port.path().join("name")).unwrap_or_default();
        if name.trim_end() == VM_SAP_PORT {
            let device = Path::new("/dev").join(port.file_name());
            if device.exists() {
                return Some(device);
            }
        }
    }
    None
}

/// Makes a bind of the initramfs the root (with its `/proc`, `/sys` and
/// `/dev`), so that the agent's `pivot_root` later has a root it may leave.
fn leave_initramfs() -> Result<(), String> {
    let fail = |what: &'static str| move |e: Errno| format!("{what}: {e}");
    std::fs::create_dir_all(REBOUND_AT).map_err(|e| format!("create {REBOUND_AT}: {e}"))?;
    mount(
        Some("/"),
        REBOUND_AT,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(fail("bind the initramfs"))?;
    nix::unistd::chdir(REBOUND_AT).map_err(fail("enter the bound initramfs"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(fail("move the initramfs over /"))?;
    nix::unistd::chroot(".").map_err(fail("chroot"))?;
    nix::unistd::chdir("/").map_err(fail("enter /"))
}

fn power_off() -> ! {
    nix::unistd::sync();
    // SAFETY: reboot with a command and no argument; PID 1 of the guest
    // may power it off.
    unsafe { libc::reboot(libc::LINUX_REBOOT_CMD_POWER_OFF) };
    // Only if the kernel refused: PID 1 exiting panics it, which with
    // `panic=-1` and qemu's `-no-reboot` ends the VM too.
    std::process::exit(1)
}
