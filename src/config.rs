//! Sandbox configuration: what users write, stored as JSON in the `sandbox` row.

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sandvisor_actors::duration_serde;
pub use sandvisor_actors::network::{Action, Network, PortRange, Protocol, Publish, Rule};
use sandvisor_actors::protocol::IdRange;
pub use sandvisor_actors::sandbox::health::{HealthCheck, OnUnhealthy};
pub use sandvisor_actors::sandbox::policy::{Restart, RestartBackoff, DEFAULT_RESTART_BACKOFF};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::home::validate_name;
use crate::isolation::caps;
use crate::isolation::seccomp::{self, Seccomp};

/// `PATH` given to the sandbox when its config sets none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Time between the stop signal and SIGKILL.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest `stop_timeout` and `kill_timeout` (and a stop or drain
/// timeout given over the control socket) may be: 365 days. Longer cannot be
/// meant, and would overflow the supervisor's clock arithmetic.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 60 * 60);
/// Time allowed after SIGKILL.
pub const DEFAULT_KILL_TIMEOUT: Duration = Duration::from_secs(5);
/// Metrics sampling period.
pub const DEFAULT_METRICS_INTERVAL: Duration = Duration::from_secs(1);
/// `exec.log` rotation size.
pub const DEFAULT_LOG_MAX_BYTES: u64 = 10 * 1024 * 1024;
/// Rotated `exec.log` files kept.
pub const DEFAULT_LOG_KEEP: usize = 4;
/// Most bytes of command, arguments and environment together (the kernel's
/// own limit is of the same order, and the agent protocol carries them).
pub const MAX_COMMAND_BYTES: usize = 1 << 20;

/// How a sandbox is isolated from the host. Everything on by default (SPEC §7).
///
/// The namespace flags choose the sandbox's own namespaces; `privileged`
/// turns off the confinement applied inside them (capabilities cut to
/// Docker's default set, `no_new_privs`, seccomp). [`Isolation::unconfined`]
/// is the one switch back to the host's root, `/` and namespaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Isolation {
    /// Own pid namespace: the agent is PID 1, `ps` shows only the sandbox.
    pub pid: bool,
    /// Own mount namespace: its own root filesystem, fresh `/proc`, `/sys`
    /// and `/dev`. Only a privileged sandbox may go without.
    pub mount: bool,
    /// Own network namespace: only `lo`.
    pub net: bool,
    /// Own hostname (the sandbox's name).
    pub uts: bool,
    /// Own System V IPC and POSIX message queues.
    pub ipc: bool,
    /// Own user namespace: root inside is an unprivileged host id of the
    /// sandbox's own range of 65,536 ids. Off keeps the host's ids.
    pub user: bool,
    /// Own cgroup namespace: the sandbox sees its cgroup as the root.
    pub cgroup: bool,
    /// No confinement: every capability, no seccomp filter, no
    /// `no_new_privs`; without a `rootfs`, the host's `/` itself.
    pub privileged: bool,
}

impl Default for Isolation {
    fn default() -> Self {
        Self {
            pid: true,
            mount: true,
            net: true,
            uts: true,
            ipc: true,
            user: true,
            cgroup: true,
            privileged: false,
        }
    }
}

impl Isolation {
    /// Today's behaviour before isolation by default, as an explicit choice:
    /// host root with every capability, the host's `/` and every host
    /// namespace (CLI `--privileged`).
    pub fn unconfined() -> Self {
        Self {
            pid: false,
            mount: false,
            net: false,
            uts: false,
            ipc: false,
            user: false,
            cgroup: false,
            privileged: true,
        }
    }
}

/// A host path made visible inside the sandbox (CLI `-v SRC:DST[:ro]`): the
/// only way host paths enter a sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// Absolute host path of an existing file or directory.
    pub source: PathBuf,
    /// Absolute path inside the sandbox (created when missing); resolved
    /// inside the sandbox's root, never outside it.
    pub target: String,
    /// Mounted read-only.
    #[serde(default)]
    pub read_only: bool,
}

/// A resource limit that has a runtime-wide default.
///
/// In JSON: a number (the value), `"default"` (or `null`) and
/// `"unlimited"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Limit {
    /// The runtime's default ([`crate::SandvisorBuilder::default_memory`],
    /// [`crate::SandvisorBuilder::default_pids`]).
    #[default]
    Default,
    /// This value.
    Value(u64),
    /// No limit.
    Unlimited,
}

impl Limit {
    /// The limit in force: `default` stands in for [`Limit::Default`];
    /// `None` is no limit.
    pub fn resolve(self, default: Limit) -> Option<u64> {
        match self {
            Self::Value(value) => Some(value),
            Self::Unlimited => None,
            Self::Default => match default {
                Self::Value(value) => Some(value),
                Self::Unlimited | Self::Default => None,
            },
        }
    }
}

impl Serialize for Limit {
    fn serialize<S: serde::Serializer>(&self, out: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Self::Default => out.serialize_str("default"),
            Self::Value(value) => out.serialize_u64(*value),
            Self::Unlimited => out.serialize_str("unlimited"),
        }
    }
}

impl<'de> Deserialize<'de> for Limit {
    fn deserialize<D: serde::Deserializer<'de>>(input: D) -> std::result::Result<Self, D::Error> {
        // Configs stored before limits had defaults hold a number or null
        // (`memory_limit`, `pids_limit`): null was "none set", now the default.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Stored {
            Value(u64),
            Word(String),
            Null(()),
        }
        match Stored::deserialize(input)? {
            Stored::Value(value) => Ok(Self::Value(value)),
            Stored::Null(()) => Ok(Self::Default),
            Stored::Word(word) => match word.as_str() {
                "default" => Ok(Self::Default),
                "unlimited" => Ok(Self::Unlimited),
                _ => Err(serde::de::Error::custom(format!(
                    "{word:?} is not a limit: a number, \"default\" or \"unlimited\""
                ))),
            },
        }
    }
}

/// The default memory limit of a runtime's sandboxes: 1 GiB.
pub const DEFAULT_MEMORY: Limit = Limit::Value(1 << 30);
/// The default limit on a sandbox's processes: 1,024.
pub const DEFAULT_PIDS: Limit = Limit::Value(1024);
/// The smallest memory limit: 1 MiB.
pub const MIN_MEMORY: u64 = 1 << 20;
/// The largest memory limit: 1 PiB, more than any machine this runs on.
pub const MAX_MEMORY: u64 = 1 << 50;
/// The largest pids limit: the kernel's `PID_MAX_LIMIT` on 64-bit.
pub const MAX_PIDS: u64 = 1 << 22;
/// Ids in a sandbox's user namespace (uids and gids `0..65536`).
pub const USER_NAMESPACE_IDS: u32 = 65_536;
/// The host id root inside the sandbox of slot 0 maps to: far above the
/// ids of real users and of other tools' subordinate ranges.
pub const ID_RANGE_BASE: u32 = 0x4000_0000;
/// How many sandboxes can have a user namespace at once: the ranges fill
/// the host ids from [`ID_RANGE_BASE`] up to, not including, 4294967295.
pub const ID_RANGE_SLOTS: u32 = 49_151;

/// The host ids of id-range slot `slot` (`< ID_RANGE_SLOTS`, as the store
/// hands them out).
pub fn id_range(slot: u32) -> IdRange {
    IdRange {
        first: ID_RANGE_BASE + slot * USER_NAMESPACE_IDS,
        count: USER_NAMESPACE_IDS,
    }
}

/// `"uid[:gid]"` as numeric ids; the gid is the uid when left out (no
/// `/etc/passwd` lookup: the sandbox's files are not the host's to trust).
/// `None` if it does not parse or names the invalid id 4294967295.
pub fn parse_user(text: &str) -> Option<(u32, u32)> {
    let number = |part: &str| -> Option<u32> {
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        part.parse::<u32>().ok().filter(|&id| id != u32::MAX)
    };
    match text.split_once(':') {
        Some((uid, gid)) => Some((number(uid)?, number(gid)?)),
        None => number(text).map(|uid| (uid, uid)),
    }
}

/// Checks a `user` string: it parses, and with a user namespace its ids are
/// among the 65,536 mapped ones.
pub(crate) fn check_user(text: &str, user_namespace: bool) -> std::result::Result<(), String> {
    let (uid, gid) = parse_user(text).ok_or_else(|| {
        format!("{text:?} is not \"uid\" or \"uid:gid\" (numbers only, no names)")
    })?;
    if user_namespace && (uid >= USER_NAMESPACE_IDS || gid >= USER_NAMESPACE_IDS) {
        return Err(format!(
            "{text:?}: ids inside a user namespace are 0 to {}",
            USER_NAMESPACE_IDS - 1
        ));
    }
    Ok(())
}

/// `target` without `.` and `..`, or why it cannot be a mount target: it is
/// relative, holds a NUL, climbs above `/`, is `/` itself, or lies in
/// `/proc` or `/sys` (whose masks a mount would undo).
pub fn mount_target(target: &str) -> std::result::Result<String, String> {
    if !target.starts_with('/') {
        return Err(format!("{target:?} is not an absolute path"));
    }
    if target.contains('\0') {
        return Err(format!("{target:?} contains a NUL byte"));
    }
    let mut parts: Vec<&str> = Vec::new();
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(format!("{target:?} leaves the sandbox's root"));
                }
            }
            part => parts.push(part),
        }
    }
    match parts.first() {
        None => Err(format!("{target:?} is the root itself")),
        Some(&("proc" | "sys")) => Err(format!(
            "{target:?} is under /{}, whose masked paths a mount would undo",
            parts[0]
        )),
        Some(_) => Ok(format!("/{}", parts.join("/"))),
    }
}

/// How `exec.log` rotates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LogConfig {
    /// Rotate before `exec.log` would pass this many bytes.
    pub max_bytes: u64,
    /// Rotated files kept (`exec.log.1` … `exec.log.{keep}`).
    pub keep: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            max_bytes: DEFAULT_LOG_MAX_BYTES,
            keep: DEFAULT_LOG_KEEP,
        }
    }
}

/// Guest memory of a microVM whose config leaves it at zero.
pub const DEFAULT_VM_MEMORY: u64 = 512 << 20;
/// The least guest memory a microVM may be given (a smaller guest is
/// refused before anything starts; whether a guest that size boots is the
/// kernel's matter: a boot failure at stage `kernel`).
pub const MIN_VM_MEMORY: u64 = 16 << 20;
/// Most virtual CPUs of a microVM.
pub const MAX_VM_VCPUS: u32 = 64;

/// What runs a sandbox (SPEC §9). Everything else in the config means the
/// same on both.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// The agent as PID 1 of new namespaces on the host's kernel.
    #[default]
    Namespaces,
    /// The agent as PID 1 of its own guest kernel in a qemu `microvm`
    /// (KVM where it runs guests, TCG otherwise); the sandbox's root is
    /// shared with the guest over virtio-fs.
    MicroVm {
        /// Virtual CPUs (1 ..= 64).
        vcpus: u32,
        /// Guest memory in bytes (0: [`DEFAULT_VM_MEMORY`]); the sandbox's
        /// memory limit on the host is raised to hold it and qemu.
        memory: u64,
    },
}

impl Backend {
    /// A microVM with `vcpus` CPUs and the default memory.
    pub fn micro_vm(vcpus: u32) -> Self {
        Self::MicroVm { vcpus, memory: 0 }
    }

    /// Whether this is the microVM backend.
    pub fn is_vm(&self) -> bool {
        matches!(self, Self::MicroVm { .. })
    }
}

/// Everything about one sandbox that outlives a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SandboxConfig {
    /// Unique name (SPEC §1 rules).
    pub name: String,
    /// The main command (session 1). A bare name is looked up in `PATH`.
    pub command: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its environment; nothing is inherited from the host. `PATH` defaults
    /// to [`DEFAULT_PATH`].
    pub env: BTreeMap<String, String>,
    /// Working directory inside the sandbox (absolute).
    pub working_dir: Option<String>,
    /// Namespaces and confinement.
    pub isolation: Isolation,
    /// The sandbox's network (SPEC §10): `None` (only `lo`, the default),
    /// `Host` (the host's own network, unsafe) or `Private` (its own
    /// namespace joined to the host by a user-mode stack, with published
    /// ports, an egress policy and DNS servers). `isolation.net == false`
    /// also means the host's network, as before this field
    /// ([`SandboxConfig::uses_host_network`]); `Private` needs
    /// `isolation.net` and an unprivileged sandbox.
    pub network: Network,
    /// A directory to use as the read-only lower layer of the sandbox's root
    /// filesystem (never written); `None`: the host base (the host's system
    /// directories, read-only, secrets masked).
    pub rootfs: Option<PathBuf>,
    /// An OCI image (a name such as `busybox`, `host:5000/app:v1`, or an
    /// id) stored in the home: its layers are the read-only lower layers
    /// of the root filesystem, and its config fills in what this config
    /// leaves out (command, environment, working directory, user: see
    /// [`crate::image::apply_image`]). Not with `rootfs`. The sandbox keeps
    /// the image it was created from even if the name moves later.
    pub image: Option<String>,
    /// Create the sandbox from a snapshot (a stored snapshot's name, or the
    /// path of a snapshot archive, told apart by a `/`): its writable layer
    /// becomes this sandbox's, and its image and run config (command,
    /// environment, working directory, user) fill in what this config
    /// leaves out. Used when the sandbox is created; kept for `inspect`.
    pub from_snapshot: Option<String>,
    /// No writable layer over the root: only the fresh tmpfs mounts (`/tmp`,
    /// `/run`, `/var/tmp`, `/dev/shm`) and read-write `mounts` can be written.
    pub read_only: bool,
    /// Host paths bound inside, in order.
    pub mounts: Vec<Mount>,
    /// Capabilities added to Docker's default set (names with or without
    /// `CAP_`, any case, or `ALL`); applied after `cap_drop`.
    pub cap_add: Vec<String>,
    /// Capabilities dropped from Docker's default set (or `ALL`).
    pub cap_drop: Vec<String>,
    /// The seccomp filter: Docker's default semantics, none, or a profile in
    /// Docker's JSON format.
    pub seccomp: Seccomp,
    /// The user and group of the main command (and of exec sessions that set
    /// none): `"uid"` or `"uid:gid"`, numbers only (the gid is the uid when
    /// left out); `None`: root (0:0) inside.
    pub user: Option<String>,
    /// Memory limit in bytes (at least 1 MiB).
    #[serde(alias = "memory_limit")]
    pub memory: Limit,
    /// Limit on the number of processes.
    #[serde(alias = "pids_limit")]
    pub pids: Limit,
    /// CPU limit in CPUs (`1.5`: 150 ms of CPU time every 100 ms); `None`:
    /// no limit.
    pub cpus: Option<f64>,
    /// Signal sent to every process on stop (default SIGTERM).
    pub stop_signal: i32,
    /// Time between the stop signal and SIGKILL (in JSON a humantime
    /// string, `"10s"`, as every duration here).
    #[serde(with = "duration_serde")]
    pub stop_timeout: Duration,
    /// Time allowed after SIGKILL before the run is declared lost.
    #[serde(with = "duration_serde")]
    pub kill_timeout: Duration,
    /// `exec.log` rotation.
    pub log: LogConfig,
    /// Metrics sampling period; `None` disables metrics.
    #[serde(with = "duration_serde::option")]
    pub metrics_interval: Option<Duration>,
    /// When a run that ended is followed by another (CLI `--restart`).
    pub restart: Restart,
    /// The delays between restarts: docker's by default (100 ms, doubling,
    /// at most 1 minute, reset after 10 s up).
    pub restart_backoff: RestartBackoff,
    /// Stop the sandbox (termination reason `IdleTimeout`) after this long
    /// without exec sessions and without output.
    #[serde(with = "duration_serde::option")]
    pub idle_timeout: Option<Duration>,
    /// Stop the sandbox (termination reason `LifetimeExceeded`) this long
    /// after its run started.
    #[serde(with = "duration_serde::option")]
    pub max_lifetime: Option<Duration>,
    /// A command run inside every `interval` to tell whether the sandbox is
    /// healthy (docker's HEALTHCHECK); `None`: no check.
    pub health: Option<HealthCheck>,
    /// What turning unhealthy does: nothing (the default), stop the
    /// sandbox, or restart it whatever its restart policy (termination
    /// reason `Unhealthy` either way).
    pub on_unhealthy: OnUnhealthy,
    /// Keep the main command's stdin open for [`crate::Sandbox::write_stdin`]
    /// (else it reads `/dev/null`).
    pub stdin: bool,
    /// Run the main command on a pseudo-terminal inside the sandbox (its
    /// output is then the merged `output` source; size it with
    /// [`crate::Sandbox::resize`]).
    pub tty: bool,
    /// What runs the sandbox: namespaces on the host's kernel (the
    /// default) or a microVM with its own kernel (CLI `--vm`).
    pub backend: Backend,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            command: String::new(),
            args: Vec::new(),
            env: BTreeMap::new(),
            working_dir: None,
            isolation: Isolation::default(),
            network: Network::None,
            rootfs: None,
            image: None,
            from_snapshot: None,
            read_only: false,
            mounts: Vec::new(),
            cap_add: Vec::new(),
            cap_drop: Vec::new(),
            seccomp: Seccomp::Default,
            user: None,
            memory: Limit::Default,
            pids: Limit::Default,
            cpus: None,
            stop_signal: libc::SIGTERM,
            stop_timeout: DEFAULT_STOP_TIMEOUT,
            kill_timeout: DEFAULT_KILL_TIMEOUT,
            log: LogConfig::default(),
            metrics_interval: Some(DEFAULT_METRICS_INTERVAL),
            restart: Restart::No,
            restart_backoff: DEFAULT_RESTART_BACKOFF,
            idle_timeout: None,
            max_lifetime: None,
            health: None,
            on_unhealthy: OnUnhealthy::None,
            stdin: false,
            tty: false,
            backend: Backend::Namespaces,
        }
    }
}

impl SandboxConfig {
    /// A sandbox named `name` running `command` with the defaults.
    pub fn new(name: impl Into<String>, command: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            command: command.into(),
            ..Self::default()
        }
    }

    /// Adds arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    /// Runs on `backend` (see [`Self::backend`](field@Self::backend)).
    pub fn with_backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    /// Runs image `reference` (see [`Self::image`](field@Self::image)).
    pub fn image(mut self, reference: impl Into<String>) -> Self {
        self.image = Some(reference.into());
        self
    }

    /// A sandbox running `sh -c script`.
    pub fn shell(name: impl Into<String>, script: impl Into<String>) -> Self {
        Self::new(name, "sh").args(["-c".to_string(), script.into()])
    }

    /// Whether the sandbox runs in the host's network namespace:
    /// `network` is [`Network::Host`], or `isolation.net` is off (how
    /// `--net` was stored before `network` existed, and still is).
    pub fn uses_host_network(&self) -> bool {
        self.network == Network::Host || !self.isolation.net
    }

    /// The environment the main command gets.
    pub fn effective_env(&self) -> Vec<(String, String)> {
        let mut env = self.env.clone();
        env.entry("PATH".into())
            .or_insert_with(|| DEFAULT_PATH.into());
        env.into_iter().collect()
    }

    /// Replaces each mount's source by its canonical path, as it is now —
    /// before the sandbox ever ran. The spawner refuses a source that holds
    /// a symbolic link at start, so a link put there later (by a sandbox
    /// sharing a parent directory) is never followed.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming `mounts[i].source` if it cannot be
    /// resolved.
    pub fn canonicalize_mounts(&mut self) -> Result<()> {
        for (i, mount) in self.mounts.iter_mut().enumerate() {
            mount.source =
                std::fs::canonicalize(&mount.source).map_err(|err| Error::InvalidConfig {
                    field: format!("mounts[{i}].source"),
                    reason: format!("{}: {err}", mount.source.display()),
                })?;
        }
        Ok(())
    }

    /// Checks every field; the error names the first bad one.
    ///
    /// # Errors
    /// [`Error::InvalidName`] for a bad name; [`Error::InvalidConfig`]
    /// naming the first other field that cannot work;
    /// [`Error::CommandNotFound`] or [`Error::CommandNotExecutable`] if the
    /// command cannot run in the sandbox.
    pub fn validate(&self) -> Result<()> {
        validate_name(&self.name)?;
        // With an image, an empty command is the image's (filled in when the
        // sandbox is created).
        if self.command.is_empty() && self.image.is_none() && self.from_snapshot.is_none() {
            return Err(bad("command", "is empty".into()));
        }
        if self.command.contains('\0') {
            return Err(bad("command", "contains a NUL byte".into()));
        }
        if let Some(i) = self.args.iter().position(|a| a.contains('\0')) {
            return Err(bad(&format!("args[{i}]"), "contains a NUL byte".into()));
        }
        for (key, value) in &self.env {
            if key.is_empty() || key.contains('=') || key.contains('\0') || value.contains('\0') {
                return Err(bad(
                    &format!("env.{key}"),
                    "keys must be non-empty without '=' or NUL; values without NUL".into(),
                ));
            }
        }
        let size = self.command.len()
            + self.args.iter().map(String::len).sum::<usize>()
            + self
                .env
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>();
        if size > MAX_COMMAND_BYTES {
            return Err(bad("args", format!("command, arguments and environment take {size} bytes; at most {MAX_COMMAND_BYTES}")));
        }
        if let Some(dir) = &self.working_dir {
            if !dir.starts_with('/') || dir.contains('\0') {
                return Err(bad(
                    "working_dir",
                    format!("{dir:?} is not an absolute path"),
                ));
            }
        }
        self.validate_isolation()?;
        self.validate_network()?;
        self.validate_backend()?;
        if nix::sys::signal::Signal::try_from(self.stop_signal).is_err() {
            return Err(bad(
                "stop_signal",
                format!("{} is not a signal number", self.stop_signal),
            ));
        }
        if self.kill_timeout.is_zero() {
            return Err(bad("kill_timeout", "must be more than zero".into()));
        }
        for (field, timeout) in [
            ("stop_timeout", self.stop_timeout),
            ("kill_timeout", self.kill_timeout),
        ] {
            if timeout > MAX_TIMEOUT {
                return Err(bad(field, format!("{timeout:?} is longer than 365 days")));
            }
        }
        if self.log.max_bytes < 1024 {
            return Err(bad(
                "log.max_bytes",
                format!("{} is below the minimum of 1024", self.log.max_bytes),
            ));
        }
        if !(1..=64).contains(&self.log.keep) {
            return Err(bad(
                "log.keep",
                format!("{} is outside 1..=64", self.log.keep),
            ));
        }
        self.validate_limits()?;
        self.validate_policies()?;
        if self
            .metrics_interval
            .is_some_and(|i| i < Duration::from_millis(10))
        {
            return Err(bad("metrics_interval", "must be at least 10 ms".into()));
        }
        if self.image.is_some() || self.from_snapshot.is_some() {
            // Its command is in the image's (or the snapshot's) layers: the
            // agent finds it, or fails the start with `CommandNotFound`.
            return Ok(());
        }
        self.resolve_command().map(|_| ())
    }

    /// Checks `image`: a name or an id, with the mount namespace, without
    /// `rootfs`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] (`image`).
    pub(crate) fn validate_image(&self) -> Result<()> {
        let Some(image) = &self.image else {
            return Ok(());
        };
        if self.rootfs.is_some() {
            return Err(bad("image", "cannot be combined with rootfs".into()));
        }
        if !self.isolation.mount {
            return Err(bad(
                "image",
                "needs the mount namespace (isolation.mount)".into(),
            ));
        }
        if crate::image::id_prefix(image).is_none() {
            crate::image::normalize(image)?;
        }
        Ok(())
    }

    /// Checks the root filesystem, volumes, capabilities, seccomp and user.
    fn validate_isolation(&self) -> Result<()> {
        let iso = self.isolation;
        if !iso.mount && !iso.privileged {
            return Err(bad(
                "isolation.mount",
                "the sandbox's own root filesystem needs the mount namespace; only a privileged sandbox may share the host's".into(),
            ));
        }
        if let Some(rootfs) = &self.rootfs {
            if !iso.mount {
                return Err(bad(
                    "rootfs",
                    "needs the mount namespace (isolation.mount)".into(),
                ));
            }
            if !rootfs.is_absolute() || !rootfs.is_dir() {
                return Err(bad(
                    "rootfs",
                    format!("{} is not an existing absolute directory", rootfs.display()),
                ));
            }
        }
        self.validate_image()?;
        // A privileged sandbox without a rootfs or image runs in the host's
        // `/`: there is no root of its own to make read-only or to mount into.
        let own_root = !iso.privileged || self.rootfs.is_some() || self.image.is_some();
        if self.read_only && !own_root {
            return Err(bad(
                "read_only",
                "needs the sandbox's own root filesystem (a privileged sandbox has one only with a rootfs)".into(),
            ));
        }
        if !self.mounts.is_empty() && !own_root {
            return Err(bad(
                "mounts",
                "need the sandbox's own root filesystem (a privileged sandbox has one only with a rootfs)".into(),
            ));
        }
        let mut targets = Vec::with_capacity(self.mounts.len());
        for (i, mount) in self.mounts.iter().enumerate() {
            let source = &mount.source;
            if !source.is_absolute() || source.as_os_str().as_bytes().contains(&0) {
                return Err(bad(
                    &format!("mounts[{i}].source"),
                    format!("{} is not an absolute path", source.display()),
                ));
            }
            if let Err(err) = std::fs::metadata(source) {
                return Err(bad(
                    &format!("mounts[{i}].source"),
                    format!("{}: {err}", source.display()),
                ));
            }
            let target = mount_target(&mount.target)
                .map_err(|reason| bad(&format!("mounts[{i}].target"), reason))?;
            if let Some(j) = targets.iter().position(|t| *t == target) {
                return Err(bad(
                    &format!("mounts[{i}].target"),
                    format!("{target} is also the target of mounts[{j}]"),
                ));
            }
            targets.push(target);
        }
        caps::resolve(&self.cap_add, &self.cap_drop)
            .map_err(|(field, reason)| bad(&field, reason))?;
        seccomp::check(&self.seccomp).map_err(|reason| bad("seccomp", reason))?;
        if let Some(user) = &self.user {
            check_user(user, iso.user).map_err(|reason| bad("user", reason))?;
        }
        Ok(())
    }

    /// Checks the network, and that a private one can be kept to its
    /// egress policy.
    /// Checks a microVM's size and what a guest cannot have yet.
    fn validate_backend(&self) -> Result<()> {
        let Backend::MicroVm { vcpus, memory } = self.backend else {
            return Ok(());
        };
        if vcpus == 0 || vcpus > MAX_VM_VCPUS {
            return Err(bad(
                "backend.vcpus",
                format!("{vcpus} is not between 1 and {MAX_VM_VCPUS}"),
            ));
        }
        if memory != 0 && memory < MIN_VM_MEMORY {
            return Err(bad(
                "backend.memory",
                format!("{memory} bytes is less than {MIN_VM_MEMORY}"),
            ));
        }
        if self.isolation.privileged || !self.isolation.mount {
            return Err(bad(
                "backend",
                "a microVM runs its own kernel: there is no host root or host namespace to share (not with privileged)".into(),
            ));
        }
        // qemu and virtiofsd run as the sandbox's unprivileged ids, as PID 1's
        // children of its own pid namespace: never as host root, never able
        // to outlive a kill.
        if !self.isolation.user || !self.isolation.pid {
            return Err(bad(
                "backend",
                "a microVM's qemu runs in the sandbox's own user and pid namespaces (isolation.user, isolation.pid)".into(),
            ));
        }
        if !matches!(self.network, Network::None) || !self.isolation.net {
            return Err(bad(
                "network",
                "a microVM has no network device yet: only `none` (the guest's own lo)".into(),
            ));
        }
        Ok(())
    }

    /// The guest memory of a microVM sandbox, in bytes.
    pub fn vm_memory(&self) -> Option<u64> {
        match self.backend {
            Backend::MicroVm { memory: 0, .. } => Some(DEFAULT_VM_MEMORY),
            Backend::MicroVm { memory, .. } => Some(memory),
            Backend::Namespaces => None,
        }
    }

    fn validate_network(&self) -> Result<()> {
        self.network
            .validate()
            .map_err(|(field, reason)| bad(&field, reason))?;
        if !matches!(self.network, Network::Private { .. }) {
            return Ok(());
        }
        if !self.isolation.net || self.isolation.privileged {
            return Err(bad(
                "network",
                "a private network needs the sandbox's own network namespace (isolation.net, and not privileged)".into(),
            ));
        }
        // Without its own user namespace the helper would bind host ports
        // with host privileges; without its own pid namespace the sandbox
        // could signal the helper.
        if !self.isolation.user || !self.isolation.pid {
            return Err(bad(
                "network",
                "a private network needs the sandbox's own user and pid namespaces (isolation.user, isolation.pid)".into(),
            ));
        }
        // The capabilities in force, not the names listed: `ALL` less a
        // dropped NET_ADMIN leaves the policy safe. Unknown names were
        // refused by `validate_isolation`.
        let mask = caps::resolve(&self.cap_add, &self.cap_drop)
            .map_err(|(field, reason)| bad(&field, reason))?;
        if mask & ::caps::Capability::CAP_NET_ADMIN.bitmask() != 0 {
            return Err(bad(
                "cap_add",
                "NET_ADMIN would let the sandbox remove its egress policy; a private network cannot have it".into(),
            ));
        }
        // Raw and packet sockets write below the egress rules (forged
        // connection-tracking entries, frames straight to the interface): a
        // private network never has NET_RAW, and asking for it is refused.
        let named = |list: &[String], cap: &str| {
            list.iter().any(|name| {
                let name = name.to_ascii_uppercase();
                let name = name.strip_prefix("CAP_").unwrap_or(&name);
                name == cap || name == "ALL"
            })
        };
        if named(&self.cap_add, "NET_RAW") && !named(&self.cap_drop, "NET_RAW") {
            return Err(bad(
                "cap_add",
                "NET_RAW would let the sandbox send packets around its egress policy; a private network cannot have it".into(),
            ));
        }
        Ok(())
    }

    /// Checks the restart policy, its backoff, the idle timeout and the
    /// max lifetime.
    fn validate_policies(&self) -> Result<()> {
        if let Restart::OnFailure {
            max_retries: Some(0),
        } = self.restart
        {
            return Err(bad(
                "restart",
                "on-failure with 0 retries would never restart; leave max_retries out for no limit"
                    .into(),
            ));
        }
        let backoff = self.restart_backoff;
        for (field, duration) in [
            ("restart_backoff.initial", Some(backoff.initial)),
            ("restart_backoff.max", Some(backoff.max)),
            ("restart_backoff.reset_after", Some(backoff.reset_after)),
            ("idle_timeout", self.idle_timeout),
            ("max_lifetime", self.max_lifetime),
        ] {
            check_duration(field, duration)?;
        }
        if let Some(check) = &self.health {
            validate_health(check)?;
        }
        if backoff.max < backoff.initial {
            return Err(bad(
                "restart_backoff.max",
                format!(
                    "{} is shorter than restart_backoff.initial ({})",
                    humantime::format_duration(backoff.max),
                    humantime::format_duration(backoff.initial)
                ),
            ));
        }
        Ok(())
    }

    /// Checks memory, pids and cpus.
    fn validate_limits(&self) -> Result<()> {
        check_limit("memory", self.memory)?;
        check_limit("pids", self.pids)?;
        if let Some(cpus) = self.cpus {
            check_cpus(cpus)?;
        }
        Ok(())
    }

    /// Where the main command is, as seen from inside the sandbox, found as
    /// a shell finds it: a name with a `/` is that path (relative to the
    /// working directory), any other is the first executable file of that
    /// name in the sandbox's `PATH`.
    ///
    /// # Errors
    /// [`Error::CommandNotFound`] if there is no such file;
    /// [`Error::CommandNotExecutable`] if there is one but it cannot be
    /// executed (no execute bit, or a directory) and nothing executable of
    /// that name comes later in `PATH`.
    fn resolve_command(&self) -> Result<PathBuf> {
        let root = self.rootfs.as_deref().unwrap_or(Path::new("/"));
        // The host path of a path inside: through the deepest mount over it,
        // else in the root.
        let inside = |path: &Path| {
            let path = path.strip_prefix("/").unwrap_or(path);
            self.mounts
                .iter()
                .filter_map(|mount| {
                    let target = mount_target(&mount.target).ok()?;
                    let rest = path.strip_prefix(target.trim_start_matches('/')).ok()?;
                    Some((target.len(), mount.source.join(rest)))
                })
                .max_by_key(|(depth, _)| *depth)
                .map_or_else(|| root.join(path), |(_, host)| host)
        };
        let candidates: Vec<PathBuf> = if self.command.contains('/') {
            let path = Path::new(&self.command);
            let cwd = Path::new(self.working_dir.as_deref().unwrap_or("/"));
            vec![cwd.join(path)]
        } else {
            let env = self.effective_env();
            let path_var = env
                .iter()
                .find(|(k, _)| k == "PATH")
                .map(|(_, v)| v.as_str())
                .unwrap_or(DEFAULT_PATH);
            path_var
                .split(':')
                .filter(|dir| dir.starts_with('/'))
                .map(|dir| Path::new(dir).join(&self.command))
                .collect()
        };
        let mut unusable = None;
        for candidate in candidates {
            use std::os::unix::fs::PermissionsExt;
            let Ok(meta) = std::fs::metadata(inside(&candidate)) else {
                continue;
            };
            if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
                return Ok(if self.command.contains('/') {
                    PathBuf::from(&self.command)
                } else {
                    candidate
                });
            }
            // As a shell: a directory named like the command is skipped in
            // a PATH search, but is the command when named by its path.
            if meta.is_file() || self.command.contains('/') {
                unusable.get_or_insert(if meta.is_dir() {
                    "cannot execute"
                } else {
                    "permission denied"
                });
            }
        }
        Err(match unusable {
            Some(reason) => Error::CommandNotExecutable {
                command: self.command.clone(),
                reason: reason.to_string(),
            },
            None => Error::CommandNotFound {
                command: self.command.clone(),
            },
        })
    }
}

fn bad(field: &str, reason: String) -> Error {
    Error::InvalidConfig {
        field: field.to_string(),
        reason,
    }
}

/// A live change of a running sandbox's resource limits
/// ([`crate::Sandbox::update`], `sandvisor update`): each `None` leaves that
/// limit as it is. The change reaches the running sandbox's cgroup and its
/// stored config, so later runs start with it too.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Resources {
    /// The memory limit ([`SandboxConfig::memory`]).
    pub memory: Option<Limit>,
    /// The CPU limit, in CPUs ([`SandboxConfig::cpus`]).
    pub cpus: Option<f64>,
    /// The pids limit ([`SandboxConfig::pids`]).
    pub pids: Option<Limit>,
}

impl Resources {
    /// Checks every value as [`SandboxConfig::validate`] does.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] (`memory`, `cpus`, `pids`) for a value out of
    /// range, or (`resources`) when nothing is to change.
    pub fn validate(&self) -> Result<()> {
        if self.memory.is_none() && self.cpus.is_none() && self.pids.is_none() {
            return Err(bad(
                "resources",
                "nothing to change: give memory, cpus or pids".into(),
            ));
        }
        if let Some(memory) = self.memory {
            check_limit("memory", memory)?;
        }
        if let Some(pids) = self.pids {
            check_limit("pids", pids)?;
        }
        if let Some(cpus) = self.cpus {
            check_cpus(cpus)?;
        }
        Ok(())
    }

    /// `config` with these limits.
    pub fn apply_to(&self, config: &mut SandboxConfig) {
        if let Some(memory) = self.memory {
            config.memory = memory;
        }
        if let Some(pids) = self.pids {
            config.pids = pids;
        }
        if let Some(cpus) = self.cpus {
            config.cpus = Some(cpus);
        }
    }
}

/// Checks a memory (`memory`) or pids (`pids`) limit, or a runtime default
/// of one (`default_memory`, `default_pids`).
pub(crate) fn check_limit(field: &str, limit: Limit) -> Result<()> {
    let Limit::Value(value) = limit else {
        return Ok(());
    };
    let memory = field.ends_with("memory");
    if memory && !(MIN_MEMORY..=MAX_MEMORY).contains(&value) {
        return Err(bad(
            field,
            format!("{value} bytes is outside 1 MiB..=1 PiB"),
        ));
    }
    if !memory && !(1..=MAX_PIDS).contains(&value) {
        return Err(bad(field, format!("{value} is outside 1..={MAX_PIDS}")));
    }
    Ok(())
}

/// Checks a health check: a command, intervals and timeouts above zero,
/// at least one retry.
fn validate_health(check: &HealthCheck) -> Result<()> {
    if check.command.first().is_none_or(String::is_empty) {
        return Err(bad("health.command", "names no program".into()));
    }
    check_duration("health.interval", Some(check.interval))?;
    check_duration("health.timeout", Some(check.timeout))?;
    if check.start_period > MAX_TIMEOUT {
        return Err(bad("health.start_period", "is longer than 365 days".into()));
    }
    if check.retries == 0 {
        return Err(bad(
            "health.retries",
            "must be at least 1 (the failures in a row that make it unhealthy)".into(),
        ));
    }
    Ok(())
}

/// Checks a duration a policy waits for: more than zero, at most
/// [`MAX_TIMEOUT`].
pub(crate) fn check_duration(field: &str, duration: Option<Duration>) -> Result<()> {
    match duration {
        Some(d) if d.is_zero() => Err(bad(field, "must be more than zero".into())),
        Some(d) if d > MAX_TIMEOUT => Err(bad(
            field,
            format!("{} is longer than 365 days", humantime::format_duration(d)),
        )),
        _ => Ok(()),
    }
}

/// The smallest CPU limit: the kernel takes a CFS quota of at least 1 ms
/// per 100 ms period.
const MIN_CPUS: f64 = 0.01;

fn check_cpus(cpus: f64) -> Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    // Far above any real need, yet it keeps the quota in microseconds
    // (cpus × 100,000) well inside the cgroup files' range.
    let most = cores as f64 * 1000.0;
    if cpus.is_nan() || cpus < MIN_CPUS || cpus > most {
        return Err(bad(
            "cpus",
            format!("{cpus} is outside {MIN_CPUS}..={most} ({cores} host cores × 1000)"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A valid config (`true` is on every host) with `network`.
    fn with_network(network: Network) -> SandboxConfig {
        SandboxConfig {
            network,
            ..SandboxConfig::new("net", "true")
        }
    }

    fn private() -> Network {
        Network::Private {
            publish: vec!["8080:80".parse().unwrap()],
            egress: vec!["allow:127.0.0.1:5432/tcp".parse().unwrap()],
            dns: vec![],
        }
    }

    /// The field and reason `config.validate()` refuses it with.
    fn refusal(config: &SandboxConfig) -> (String, String) {
        match config.validate() {
            Err(Error::InvalidConfig { field, reason }) => (field, reason),
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
    }

    #[test]
    fn every_network_mode_is_valid_by_itself() {
        for network in [Network::None, Network::Host, private()] {
            with_network(network.clone()).validate().unwrap();
        }
    }

    #[test]
    fn network_errors_name_the_network_field() {
        let config = with_network(Network::Private {
            publish: vec![],
            egress: vec![],
            dns: vec!["224.0.0.1".parse().unwrap()],
        });
        let (field, reason) = refusal(&config);
        assert_eq!(field, "network.dns[0]");
        assert!(reason.contains("224.0.0.1"), "{reason}");
    }

    #[test]
    fn a_private_network_needs_the_sandboxs_own_namespace() {
        let mut shared = with_network(private());
        shared.isolation.net = false;
        let mut privileged = with_network(private());
        privileged.isolation = Isolation::unconfined();
        privileged.isolation.net = true;
        for config in [shared, privileged] {
            let (field, reason) = refusal(&config);
            assert_eq!(field, "network");
            assert!(reason.contains("own network namespace"), "{reason}");
        }
    }

    #[test]
    fn a_private_network_refuses_net_admin() {
        for added in ["NET_ADMIN", "cap_net_admin", "Net_Admin", "ALL", "all"] {
            let mut config = with_network(private());
            config.cap_add = vec!["CHOWN".into(), added.into()];
            let (field, reason) = refusal(&config);
            assert_eq!(field, "cap_add", "{added}");
            assert!(reason.contains("NET_ADMIN"), "{reason}");
            // Without a private network there is no policy to remove.
            config.network = Network::None;
            config.validate().unwrap();
        }
        // ALL but NET_ADMIN and NET_RAW leaves the policy in force.
        let mut config = with_network(private());
        config.cap_add = vec!["ALL".into()];
        config.cap_drop = vec!["NET_ADMIN".into(), "NET_RAW".into()];
        config.validate().unwrap();
    }

    #[test]
    fn a_private_network_refuses_net_raw_and_shared_user_or_pid_namespaces() {
        for added in ["NET_RAW", "cap_net_raw", "ALL"] {
            let mut config = with_network(private());
            config.cap_add = vec![added.into()];
            config.cap_drop = vec!["NET_ADMIN".into()];
            let (field, reason) = refusal(&config);
            assert_eq!(field, "cap_add", "{added}");
            assert!(reason.contains("NET_RAW"), "{reason}");
        }
        for shared in ["user", "pid"] {
            let mut config = with_network(private());
            match shared {
                "user" => config.isolation.user = false,
                _ => config.isolation.pid = false,
            }
            let (field, reason) = refusal(&config);
            assert_eq!(field, "network", "{shared}");
            assert!(reason.contains("user and pid"), "{reason}");
        }
    }

    #[test]
    fn host_network_is_the_host_mode_or_no_net_namespace() {
        assert!(!with_network(Network::None).uses_host_network());
        assert!(!with_network(private()).uses_host_network());
        assert!(with_network(Network::Host).uses_host_network());
        let mut legacy = with_network(Network::None);
        legacy.isolation.net = false;
        assert!(legacy.uses_host_network());
    }

    #[test]
    fn configs_without_a_network_read_as_none() {
        let json = r#"{"name":"old","command":"true"}"#;
        let config: SandboxConfig = serde_json::from_str(json).unwrap();
        assert_eq!(config.network, Network::None);
        let config = with_network(private());
        let json = serde_json::to_string(&config).unwrap();
        assert_eq!(
            serde_json::from_str::<SandboxConfig>(&json).unwrap(),
            config
        );
    }
}
