//! The seccomp filter a sandbox's processes run under.
//!
//! # Contract
//! - [`Seccomp::Default`] has the semantics of Docker's default profile,
//!   written as our own lists below: an allowlist; the known-dangerous
//!   syscalls fail with `EPERM` unless a capability the sandbox holds opens
//!   them (`CAP_SYS_ADMIN` opens `mount`, `unshare`, `setns`, …); every
//!   other syscall, and every syscall of another ABI than the host's native
//!   one (32-bit `int 0x80`, x32), fails with `ENOSYS`, what a kernel without
//!   it answers, so that libc falls back.
//! - [`Seccomp::Profile`] is a file in Docker's JSON profile format; it is
//!   validated whole ([`check`]): unknown keys, actions, operators,
//!   architectures, capabilities and syscall names are errors naming what.
//! - Filters are built with libseccomp and exported as the classic BPF
//!   program the kernel loads (`struct sock_filter[]`, native byte order).
//!   Compiled programs are cached by capability mask (and by the profile
//!   file's contents), so starting many sandboxes compiles once.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};

use caps::Capability;
use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use serde::{Deserialize, Serialize};

use super::caps as capabilities;

/// Which seccomp filter a sandbox gets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Seccomp {
    /// Docker's default profile semantics (see the module docs).
    #[default]
    Default,
    /// No filter at all.
    Unconfined,
    /// A profile in Docker's JSON format, read from this file.
    Profile(PathBuf),
}

/// Validates `seccomp` at config time: a profile file is readable, is
/// Docker's JSON format, names known syscalls, actions, operators,
/// architectures and capabilities, and compiles to a program the kernel
/// loads (at most [`MAX_INSTRUCTIONS`]).
///
/// # Errors
/// The reason, naming what is wrong; the caller reports it as
/// `InvalidConfig { field: "seccomp" }`.
pub fn check(seccomp: &Seccomp) -> Result<(), String> {
    match seccomp {
        Seccomp::Default | Seccomp::Unconfined => Ok(()),
        Seccomp::Profile(path) => {
            let text = read_profile(path)?;
            let profile = Profile::parse(&text).map_err(|reason| in_file(path, &reason))?;
            profile
                .build(capabilities::DOCKER_DEFAULT)
                .and_then(|filter| export(&filter))
                .map(drop)
                .map_err(|reason| in_file(path, &reason))
        }
    }
}

/// The BPF program (bytes of `struct sock_filter[]`, native byte order)
/// for `seccomp` in a sandbox holding the capability mask `capabilities`;
/// `None` for [`Seccomp::Unconfined`].
///
/// # Errors
/// The reason: the profile cannot be read, parsed or compiled, or
/// libseccomp failed.
pub fn compile(seccomp: &Seccomp, capabilities: u64) -> Result<Option<Arc<Vec<u8>>>, String> {
    let key = match seccomp {
        Seccomp::Unconfined => return Ok(None),
        Seccomp::Default => CacheKey::Default(capabilities),
        Seccomp::Profile(path) => CacheKey::Profile(read_profile(path)?, capabilities),
    };
    if let Some(program) = cache().get(&key) {
        return Ok(Some(Arc::clone(program)));
    }
    let program = match &key {
        CacheKey::Default(capabilities) => export(&default_filter(*capabilities)?)?,
        CacheKey::Profile(text, capabilities) => {
            let Seccomp::Profile(path) = seccomp else {
                return Err("internal: a profile key without a profile".to_owned());
            };
            let profile = Profile::parse(text).map_err(|reason| in_file(path, &reason))?;
            export(&profile.build(*capabilities)?).map_err(|reason| in_file(path, &reason))?
        }
    };
    let program = Arc::new(program);
    let mut cache = cache();
    // Distinct masks and profiles are few; a runtime fed ever-new profile
    // files must not grow without bound, so start over past a few dozen.
    if cache.len() >= CACHE_ENTRIES {
        cache.clear();
    }
    cache.insert(key, Arc::clone(&program));
    Ok(Some(program))
}

/// The most compiled programs kept.
const CACHE_ENTRIES: usize = 64;
/// The largest profile file read.
const MAX_PROFILE_BYTES: u64 = 1 << 20;

#[derive(Debug, PartialEq, Eq, Hash)]
enum CacheKey {
    Default(u64),
    Profile(String, u64),
}

fn cache() -> std::sync::MutexGuard<'static, HashMap<CacheKey, Arc<Vec<u8>>>> {
    static CACHE: LazyLock<Mutex<HashMap<CacheKey, Arc<Vec<u8>>>>> =
        LazyLock::new(|| Mutex::new(HashMap::new()));
    // A panic while holding the lock cannot leave a half-written entry.
    CACHE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn in_file(path: &Path, reason: &str) -> String {
    format!("profile {}: {reason}", path.display())
}

fn read_profile(path: &Path) -> Result<String, String> {
    let file = File::open(path).map_err(|e| in_file(path, &e.to_string()))?;
    let mut text = String::new();
    file.take(MAX_PROFILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| in_file(path, &e.to_string()))?;
    if text.len() as u64 > MAX_PROFILE_BYTES {
        return Err(in_file(
            path,
            &format!("larger than {MAX_PROFILE_BYTES} bytes"),
        ));
    }
    Ok(text)
}

/// The filter's BPF program, through a memory file (libseccomp 2.5 exports
/// only to a file descriptor).
fn export(filter: &ScmpFilterContext) -> Result<Vec<u8>, String> {
    let fd =
        nix::sys::memfd::memfd_create(c"sandvisor-seccomp", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
            .map_err(|e| format!("memfd_create: {e}"))?;
    filter
        .export_bpf(&fd)
        .map_err(|e| format!("exporting the filter: {e}"))?;
    let mut file = File::from(fd);
    let mut program = Vec::new();
    file.rewind()
        .and_then(|()| file.read_to_end(&mut program))
        .map_err(|e| format!("reading the exported filter: {e}"))?;
    // Refused here, at config time: the kernel would refuse it only when
    // the sandbox's agent installs it, after everything was created.
    let instructions = program.len() / std::mem::size_of::<libc::sock_filter>();
    if instructions > MAX_INSTRUCTIONS {
        return Err(format!(
            "the compiled filter has {instructions} instructions; the kernel loads at most {MAX_INSTRUCTIONS}"
        ));
    }
    Ok(program)
}

/// The most instructions the kernel loads in one filter.
pub const MAX_INSTRUCTIONS: usize = libc::BPF_MAXINSNS as usize;

// ---------------------------------------------------------------------------
// The default profile.

const EPERM: i32 = libc::EPERM;
const ENOSYS: i32 = libc::ENOSYS;

/// Allowed for everyone: what ordinary programs (shells, coreutils,
/// interpreters, `ps`, terminals, servers) use. Names the installed
/// libseccomp does not know (syscalls newer than it) are skipped: they get
/// `ENOSYS`, as on an older kernel.
#[rustfmt::skip]
const ALLOWED: &[&str] = &[
    // Files and descriptors.
    "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev", "preadv2",
    "pwritev2", "open", "openat", "openat2", "creat", "close", "close_range", "lseek", "dup",
    "dup2", "dup3", "pipe", "pipe2", "fcntl", "flock", "fsync", "fdatasync", "sync", "syncfs",
    "sync_file_range", "truncate", "ftruncate", "fallocate", "fadvise64", "readahead", "stat",
    "fstat", "lstat", "newfstatat", "statx", "statfs", "fstatfs", "access", "faccessat",
    "faccessat2", "getdents", "getdents64", "getcwd", "chdir", "fchdir", "rename", "renameat",
    "renameat2", "mkdir", "mkdirat", "rmdir", "link", "linkat", "unlink", "unlinkat", "symlink",
    "symlinkat", "readlink", "readlinkat", "chmod", "fchmod", "fchmodat", "fchmodat2", "chown",
    "fchown", "lchown", "fchownat", "umask", "utime", "utimes", "utimensat", "futimesat", "mknod",
    "mknodat", "sendfile", "splice", "tee", "vmsplice", "copy_file_range", "memfd_create",
    "getxattr", "lgetxattr", "fgetxattr", "setxattr", "lsetxattr", "fsetxattr", "listxattr",
    "llistxattr", "flistxattr", "removexattr", "lremovexattr", "fremovexattr", "ioctl",
    "inotify_init", "inotify_init1", "inotify_add_watch", "inotify_rm_watch", "fanotify_mark",
    "cachestat",
    // Waiting on descriptors, events, timers, asynchronous I/O.
    "select", "pselect6", "poll", "ppoll", "epoll_create", "epoll_create1", "epoll_ctl",
    "epoll_wait", "epoll_pwait", "epoll_pwait2", "eventfd", "eventfd2", "signalfd", "signalfd4",
    "timerfd_create", "timerfd_settime", "timerfd_gettime", "io_setup", "io_destroy",
    "io_getevents", "io_pgetevents", "io_submit", "io_cancel",
    // Memory.
    "brk", "mmap", "munmap", "mremap", "mprotect", "madvise", "mincore", "msync", "mlock",
    "mlock2", "munlock", "mlockall", "munlockall", "remap_file_pages", "membarrier", "pkey_alloc",
    "pkey_free", "pkey_mprotect", "map_shadow_stack", "mseal",
    // Processes and threads (clone is allowed below, without namespace flags).
    "execve", "execveat", "exit", "exit_group", "fork", "vfork", "wait4", "waitid", "kill",
    "tkill", "tgkill", "getpid", "getppid", "gettid", "getpgid", "setpgid", "getpgrp", "getsid",
    "setsid", "set_tid_address", "set_robust_list", "get_robust_list", "futex", "futex_waitv",
    "futex_wake", "futex_wait", "futex_requeue", "rseq", "arch_prctl", "prctl", "seccomp",
    "pidfd_open", "pidfd_send_signal", "ptrace", "kcmp", "getcpu", "process_mrelease",
    "set_thread_area", "get_thread_area", "restart_syscall", "landlock_create_ruleset",
    "landlock_add_rule", "landlock_restrict_self",
    // Identity: the user namespace and the capability set bound what these can do.
    "getuid", "geteuid", "getgid", "getegid", "setuid", "setgid", "setreuid", "setregid",
    "setresuid", "setresgid", "getresuid", "getresgid", "setfsuid", "setfsgid", "getgroups",
    "setgroups", "capget", "capset",
    // Scheduling and resources.
    "sched_yield", "sched_getaffinity", "sched_setaffinity", "sched_getparam", "sched_setparam",
    "sched_getscheduler", "sched_setscheduler", "sched_get_priority_max", "sched_get_priority_min",
    "sched_rr_get_interval", "sched_getattr", "sched_setattr", "getpriority", "setpriority",
    "ioprio_get", "ioprio_set", "getrlimit", "setrlimit", "prlimit64", "getrusage", "times",
    "sysinfo", "uname",
    // Time (setting the clock needs CAP_SYS_TIME, below; adjtimex only reads without it).
    "nanosleep", "clock_nanosleep", "clock_gettime", "clock_getres", "gettimeofday", "time",
    "adjtimex", "alarm", "getitimer", "setitimer", "timer_create", "timer_settime",
    "timer_gettime", "timer_getoverrun", "timer_delete", "pause",
    // Signals.
    "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigpending", "rt_sigtimedwait",
    "rt_sigqueueinfo", "rt_tgsigqueueinfo", "rt_sigsuspend", "sigaltstack",
    // System V and POSIX IPC (the sandbox's own IPC namespace).
    "shmget", "shmat", "shmdt", "shmctl", "semget", "semop", "semtimedop", "semctl", "msgget",
    "msgsnd", "msgrcv", "msgctl", "mq_open", "mq_unlink", "mq_timedsend", "mq_timedreceive",
    "mq_notify", "mq_getsetattr",
    // Sockets (socket itself is allowed below, except AF_VSOCK).
    "socketpair", "bind", "connect", "listen", "accept", "accept4", "getsockname", "getpeername",
    "sendto", "recvfrom", "sendmsg", "recvmsg", "sendmmsg", "recvmmsg", "shutdown", "setsockopt",
    "getsockopt",
    // Randomness.
    "getrandom",
];

/// Denied with `EPERM` whatever the capabilities: the kernel keyring is not
/// namespaced, io_uring operations bypass seccomp, the rest are obsolete
/// interfaces with a history of holes.
#[rustfmt::skip]
const DENIED: &[&str] = &[
    "keyctl", "add_key", "request_key", "io_uring_setup", "io_uring_enter", "io_uring_register",
    "vm86", "vm86old", "nfsservctl", "uselib", "_sysctl", "create_module", "get_kernel_syms",
    "query_module",
];

/// Denied with `EPERM` unless the sandbox holds one of the capabilities
/// listed with them, as in Docker's default profile.
const GATED: &[(&[Capability], &[&str])] = &[
    (
        &[Capability::CAP_SYS_ADMIN],
        &[
            "mount",
            "umount",
            "umount2",
            "pivot_root",
            "unshare",
            "setns",
            "fsopen",
            "fsconfig",
            "fsmount",
            "fspick",
            "move_mount",
            "open_tree",
            "mount_setattr",
            "swapon",
            "swapoff",
            "quotactl",
            "quotactl_fd",
            "lookup_dcookie",
            "fanotify_init",
            "sethostname",
            "setdomainname",
        ],
    ),
    (&[Capability::CAP_SYS_ADMIN, Capability::CAP_BPF], &["bpf"]),
    (
        &[Capability::CAP_SYS_ADMIN, Capability::CAP_PERFMON],
        &["perf_event_open"],
    ),
    (
        &[Capability::CAP_SYS_BOOT],
        &["reboot", "kexec_load", "kexec_file_load"],
    ),
    (
        &[Capability::CAP_SYS_MODULE],
        &["init_module", "finit_module", "delete_module"],
    ),
    (&[Capability::CAP_SYS_PACCT], &["acct"]),
    (
        &[Capability::CAP_SYS_PTRACE],
        &[
            "process_vm_readv",
            "process_vm_writev",
            "pidfd_getfd",
            "process_madvise",
            "userfaultfd",
        ],
    ),
    (&[Capability::CAP_SYS_RAWIO], &["iopl", "ioperm"]),
    (
        &[Capability::CAP_SYS_TIME],
        &["settimeofday", "stime", "clock_settime", "clock_adjtime"],
    ),
    (
        &[Capability::CAP_SYS_NICE],
        &[
            "get_mempolicy",
            "set_mempolicy",
            "set_mempolicy_home_node",
            "mbind",
            "move_pages",
            "migrate_pages",
        ],
    ),
    (&[Capability::CAP_SYSLOG], &["syslog"]),
    (
        &[Capability::CAP_DAC_READ_SEARCH],
        &["open_by_handle_at", "name_to_handle_at"],
    ),
    (&[Capability::CAP_SYS_CHROOT], &["chroot"]),
    (&[Capability::CAP_SYS_TTY_CONFIG], &["vhangup"]),
];

/// The namespace flags of `clone(2)`: `NEWNS | NEWCGROUP | NEWUTS | NEWIPC
/// | NEWUSER | NEWPID | NEWNET` (`CLONE_NEWTIME` shares its bit with the
/// exit signal there and exists only for `clone3` and `unshare`).
const CLONE_NAMESPACES: [u64; 7] = [
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
];

/// The argument holding `clone`'s flags (s390 swaps the first two).
const CLONE_FLAGS_ARG: u32 = if cfg!(target_arch = "s390x") { 1 } else { 0 };

/// `personality(2)` values a program may set: Linux, 32-bit address space,
/// the 2.6-style uname, both, and the query.
const PERSONALITIES: [u64; 5] = [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// `AF_VSOCK`: a way out to the hypervisor, never needed inside.
const AF_VSOCK: u64 = libc::AF_VSOCK as u64;

fn default_filter(capabilities: u64) -> Result<ScmpFilterContext, String> {
    let held = |caps: &[Capability]| caps.iter().any(|cap| capabilities & cap.bitmask() != 0);
    let mut filter = new_filter(ScmpAction::Errno(ENOSYS))?;
    // Only the native ABI: the filter's architecture list holds just it, and
    // libseccomp sends other ABIs (and x32 numbers on x86-64) here.
    filter
        .set_act_badarch(ScmpAction::Errno(ENOSYS))
        .map_err(|e| format!("setting the foreign-ABI action: {e}"))?;
    for name in ALLOWED {
        add(&mut filter, ScmpAction::Allow, name, &[])?;
    }
    for name in DENIED {
        add(&mut filter, ScmpAction::Errno(EPERM), name, &[])?;
    }
    for (caps, names) in GATED {
        let action = if held(caps) {
            ScmpAction::Allow
        } else {
            ScmpAction::Errno(EPERM)
        };
        for name in *names {
            add(&mut filter, action, name, &[])?;
        }
    }
    if held(&[Capability::CAP_SYS_ADMIN]) {
        add(&mut filter, ScmpAction::Allow, "clone", &[])?;
        add(&mut filter, ScmpAction::Allow, "clone3", &[])?;
    } else {
        let namespaces = CLONE_NAMESPACES.iter().fold(0, |all, flag| all | flag);
        let no_namespace =
            ScmpArgCompare::new(CLONE_FLAGS_ARG, ScmpCompareOp::MaskedEqual(namespaces), 0);
        add(&mut filter, ScmpAction::Allow, "clone", &[no_namespace])?;
        for flag in CLONE_NAMESPACES {
            let with = ScmpArgCompare::new(CLONE_FLAGS_ARG, ScmpCompareOp::MaskedEqual(flag), flag);
            add(&mut filter, ScmpAction::Errno(EPERM), "clone", &[with])?;
        }
        // clone3's flags are in memory, out of the filter's reach: ENOSYS
        // (the default) makes libc fall back to clone, which is checked.
    }
    for value in PERSONALITIES {
        let is = ScmpArgCompare::new(0, ScmpCompareOp::Equal, value);
        add(&mut filter, ScmpAction::Allow, "personality", &[is])?;
    }
    // The kernel reads the family as an int, the filter sees 64 bits: only
    // the low 32 may decide. "Low 32 bits are not AF_VSOCK" is "some low bit
    // differs from AF_VSOCK's": one allow rule per bit (rules are
    // alternatives; libseccomp has no masked not-equal).
    for bit in 0..32 {
        let mask = 1u64 << bit;
        let differs = ScmpArgCompare::new(0, ScmpCompareOp::MaskedEqual(mask), !AF_VSOCK & mask);
        add(&mut filter, ScmpAction::Allow, "socket", &[differs])?;
    }
    let vsock = ScmpArgCompare::new(0, ScmpCompareOp::MaskedEqual(0xffff_ffff), AF_VSOCK);
    add(&mut filter, ScmpAction::Errno(EPERM), "socket", &[vsock])?;
    Ok(filter)
}

fn new_filter(default: ScmpAction) -> Result<ScmpFilterContext, String> {
    let mut filter =
        ScmpFilterContext::new(default).map_err(|e| format!("creating the filter: {e}"))?;
    // A binary search over the syscall numbers instead of a linear chain:
    // every filtered syscall of the sandbox runs through it, and the kernel
    // emulates it for each syscall number when the filter is installed (its
    // action cache, under the installer's signal lock): ~0.5 ms of CPU per
    // sandbox with the chain, ~0.18 ms as a tree (ARCHITECTURE, Isolation).
    filter
        .set_ctl_optimize(2)
        .map_err(|e| format!("asking for a binary-tree filter: {e}"))?;
    Ok(filter)
}

/// Adds a rule for the syscall `name` of the built-in lists; a name the
/// installed libseccomp does not know is newer than it, and left out.
fn add(
    filter: &mut ScmpFilterContext,
    action: ScmpAction,
    name: &str,
    args: &[ScmpArgCompare],
) -> Result<(), String> {
    let Ok(syscall) = ScmpSyscall::from_name(name) else {
        return Ok(());
    };
    filter
        .add_rule_conditional(action, syscall, args)
        .map(drop)
        .map_err(|e| format!("adding a rule for {name}: {e}"))
}

// ---------------------------------------------------------------------------
// Docker's JSON profile format.

/// A profile file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ProfileFile {
    default_action: String,
    #[serde(default)]
    default_errno_ret: Option<i32>,
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default)]
    arch_map: Vec<ArchMapEntry>,
    #[serde(default)]
    syscalls: Vec<SyscallEntry>,
    /// Filter flags are the agent's to choose when it loads the filter.
    #[serde(default, rename = "flags")]
    _flags: Vec<String>,
    #[serde(default)]
    listener_path: Option<String>,
    #[serde(default, rename = "listenerMetadata")]
    _listener_metadata: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ArchMapEntry {
    architecture: String,
    #[serde(default)]
    sub_architectures: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SyscallEntry {
    #[serde(default)]
    names: Vec<String>,
    #[serde(default)]
    name: Option<String>,
    action: String,
    #[serde(default)]
    errno_ret: Option<i32>,
    #[serde(default)]
    args: Vec<ArgEntry>,
    #[serde(default)]
    includes: Filter,
    #[serde(default)]
    excludes: Filter,
    #[serde(default, rename = "comment")]
    _comment: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ArgEntry {
    index: u32,
    value: u64,
    #[serde(default)]
    value_two: u64,
    op: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Filter {
    #[serde(default)]
    caps: Vec<String>,
    #[serde(default)]
    arches: Vec<String>,
    #[serde(default)]
    min_kernel: Option<String>,
}

/// A profile, validated: everything resolved that can be before the
/// capability mask is known.
#[derive(Debug)]
struct Profile {
    default_action: ScmpAction,
    architectures: Vec<ScmpArch>,
    rules: Vec<Rule>,
}

#[derive(Debug)]
struct Rule {
    syscalls: Vec<(String, ScmpSyscall)>,
    action: ScmpAction,
    /// Each condition with the argument it tests.
    args: Vec<(u32, ScmpArgCompare)>,
    /// Every one of these must be held.
    include_caps: u64,
    /// None of these may be held.
    exclude_caps: u64,
    /// Whether the rule applies on this host (arches, kernel version).
    applies_here: bool,
}

impl Profile {
    fn parse(text: &str) -> Result<Self, String> {
        let file: ProfileFile =
            serde_json::from_str(text).map_err(|e| format!("not a seccomp profile: {e}"))?;
        if file.listener_path.is_some() {
            return Err(
                "listenerPath: sandvisor runs no seccomp agent to answer SCMP_ACT_NOTIFY"
                    .to_owned(),
            );
        }
        let default_action = action(
            &file.default_action,
            file.default_errno_ret,
            "defaultAction",
        )?;
        let mut architectures = Vec::new();
        for name in &file.architectures {
            architectures.push(arch(name, "architectures")?);
        }
        let native = native_arch();
        for entry in &file.arch_map {
            let main = arch(&entry.architecture, "archMap")?;
            let subs = entry
                .sub_architectures
                .iter()
                .map(|name| arch(name, "archMap"))
                .collect::<Result<Vec<_>, _>>()?;
            if main == native {
                architectures.push(main);
                architectures.extend(subs);
            }
        }
        let kernel = kernel_version();
        let mut rules = Vec::new();
        for (i, entry) in file.syscalls.iter().enumerate() {
            rules.push(rule(entry, i, file.default_errno_ret, kernel)?);
        }
        Ok(Self {
            default_action,
            architectures,
            rules,
        })
    }

    fn build(&self, capabilities: u64) -> Result<ScmpFilterContext, String> {
        let mut filter = new_filter(self.default_action)?;
        for arch in &self.architectures {
            if *arch != native_arch() {
                filter
                    .add_arch(*arch)
                    .map_err(|e| format!("adding architecture {arch:?}: {e}"))?;
            }
        }
        for rule in &self.rules {
            let applies = rule.applies_here
                && capabilities & rule.include_caps == rule.include_caps
                && capabilities & rule.exclude_caps == 0;
            // libseccomp refuses a rule that only repeats the default.
            if !applies || rule.action == self.default_action {
                continue;
            }
            for (name, syscall) in &rule.syscalls {
                add_profile_rule(&mut filter, rule, name, *syscall)?;
            }
        }
        Ok(filter)
    }
}

/// Adds one syscall's rule. Conditions on distinct arguments must all hold;
/// several on the same argument are alternatives, one rule each (libseccomp
/// takes one condition per argument in a rule), as runc reads them.
fn add_profile_rule(
    filter: &mut ScmpFilterContext,
    rule: &Rule,
    name: &str,
    syscall: ScmpSyscall,
) -> Result<(), String> {
    let mut seen = 0u8;
    let repeated = rule.args.iter().any(|(index, _)| {
        let bit = 1 << index;
        let again = seen & bit != 0;
        seen |= bit;
        again
    });
    let failed = |e: libseccomp::error::SeccompError| format!("syscall {name}: {e}");
    if repeated {
        for (_, arg) in &rule.args {
            filter
                .add_rule_conditional(rule.action, syscall, std::slice::from_ref(arg))
                .map_err(failed)?;
        }
    } else {
        let args: Vec<ScmpArgCompare> = rule.args.iter().map(|(_, arg)| *arg).collect();
        filter
            .add_rule_conditional(rule.action, syscall, &args)
            .map_err(failed)?;
    }
    Ok(())
}

fn rule(
    entry: &SyscallEntry,
    i: usize,
    default_errno: Option<i32>,
    kernel: Option<(u32, u32)>,
) -> Result<Rule, String> {
    let at = format!("syscalls[{i}]");
    let mut syscalls = Vec::new();
    for name in entry.names.iter().chain(&entry.name) {
        let syscall =
            ScmpSyscall::from_name(name).map_err(|_| format!("{at}: unknown syscall {name:?}"))?;
        syscalls.push((name.clone(), syscall));
    }
    if syscalls.is_empty() {
        return Err(format!("{at}: no syscall names"));
    }
    let errno = entry.errno_ret.or(default_errno);
    let action = action(&entry.action, errno, &format!("{at}.action"))?;
    let mut args = Vec::new();
    for (j, arg) in entry.args.iter().enumerate() {
        args.push((arg.index, compare(arg, &format!("{at}.args[{j}]"))?));
    }
    let include_caps = cap_mask(&entry.includes.caps, &format!("{at}.includes.caps"))?;
    let exclude_caps = cap_mask(&entry.excludes.caps, &format!("{at}.excludes.caps"))?;
    let go_arch = native_go_arch();
    let included_arch =
        entry.includes.arches.is_empty() || entry.includes.arches.iter().any(|a| a == go_arch);
    let excluded_arch = entry.excludes.arches.iter().any(|a| a == go_arch);
    let included_kernel = match &entry.includes.min_kernel {
        Some(min) => at_least(kernel, min, &format!("{at}.includes.minKernel"))?,
        None => true,
    };
    let excluded_kernel = match &entry.excludes.min_kernel {
        Some(min) => at_least(kernel, min, &format!("{at}.excludes.minKernel"))?,
        None => false,
    };
    Ok(Rule {
        syscalls,
        action,
        args,
        include_caps,
        exclude_caps,
        applies_here: included_arch && !excluded_arch && included_kernel && !excluded_kernel,
    })
}

fn action(name: &str, errno: Option<i32>, at: &str) -> Result<ScmpAction, String> {
    let value = match name {
        "SCMP_ACT_ERRNO" => Some(errno.unwrap_or(EPERM)),
        "SCMP_ACT_TRACE" => Some(errno.unwrap_or(EPERM)),
        "SCMP_ACT_NOTIFY" => {
            return Err(format!(
                "{at}: SCMP_ACT_NOTIFY needs a seccomp agent, which sandvisor does not run"
            ))
        }
        _ => None,
    };
    ScmpAction::from_str(name, value).map_err(|_| format!("{at}: unknown action {name:?}"))
}

fn arch(name: &str, at: &str) -> Result<ScmpArch, String> {
    name.parse()
        .map_err(|_| format!("{at}: unknown architecture {name:?}"))
}

fn compare(arg: &ArgEntry, at: &str) -> Result<ScmpArgCompare, String> {
    if arg.index > 5 {
        return Err(format!(
            "{at}: index {} (syscalls have 6 arguments, 0-5)",
            arg.index
        ));
    }
    let (op, datum) = match arg.op.as_str() {
        "SCMP_CMP_NE" => (ScmpCompareOp::NotEqual, arg.value),
        "SCMP_CMP_LT" => (ScmpCompareOp::Less, arg.value),
        "SCMP_CMP_LE" => (ScmpCompareOp::LessOrEqual, arg.value),
        "SCMP_CMP_EQ" => (ScmpCompareOp::Equal, arg.value),
        "SCMP_CMP_GE" => (ScmpCompareOp::GreaterEqual, arg.value),
        "SCMP_CMP_GT" => (ScmpCompareOp::Greater, arg.value),
        // Docker's format: `value` is the mask, `valueTwo` what the masked
        // argument must equal.
        "SCMP_CMP_MASKED_EQ" => (ScmpCompareOp::MaskedEqual(arg.value), arg.value_two),
        other => return Err(format!("{at}: unknown operator {other:?}")),
    };
    Ok(ScmpArgCompare::new(arg.index, op, datum))
}

fn cap_mask(names: &[String], at: &str) -> Result<u64, String> {
    names
        .iter()
        .try_fold(0, |mask, name| match capabilities::parse(name) {
            Some(n) => Ok(mask | 1 << n),
            None => Err(format!("{at}: unknown capability {name:?}")),
        })
}

fn native_arch() -> ScmpArch {
    ScmpArch::native()
}

/// The host's architecture as Docker's `arches` conditions name it (Go's
/// `GOARCH`).
fn native_go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "x86" => "386",
        "aarch64" => "arm64",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        "loongarch64" => "loong64",
        other => other,
    }
}

/// The running kernel's `(major, minor)`, if `uname` says.
fn kernel_version() -> Option<(u32, u32)> {
    parse_version(&std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?)
}

fn parse_version(text: &str) -> Option<(u32, u32)> {
    let mut parts = text.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts
        .next()
        .and_then(|minor| minor.parse().ok())
        .unwrap_or(0);
    Some((major, minor))
}

fn at_least(kernel: Option<(u32, u32)>, min: &str, at: &str) -> Result<bool, String> {
    let min = parse_version(min).ok_or_else(|| format!("{at}: not a kernel version: {min:?}"))?;
    // A kernel whose version cannot be read is taken as new enough.
    Ok(kernel.is_none_or(|kernel| kernel >= min))
}
