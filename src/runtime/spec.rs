//! From the SDK's configs to the engine's specs.
//!
//! A [`SandboxConfig`] (validated, as stored) becomes the `SandboxSpec` the
//! root actor launches a supervisor with; an [`ExecConfig`] becomes the
//! `ExecSpec` of one exec session. These are the only places where the SDK's
//! names meet the engine's, so a field added to a config is wired here.
//!
//! # Contract
//! - The isolation settings become the run's [`SpawnPlan`] (user namespace
//!   with the sandbox's id range, the root filesystem to stage) and the
//!   [`Confinement`] every session gets; a privileged sandbox gets no
//!   confinement, and without a rootfs no root of its own.
//! - Limits left at [`Limit::Default`] take the runtime's defaults.
//! - Anything that cannot be carried out (a seccomp profile that no longer
//!   compiles, a path the wire cannot carry) is an [`Error::InvalidConfig`]
//!   naming the field; nothing has been started then.

use std::path::{Path, PathBuf};

use sandvisor_actors::host::cgroup::{Limits, CPU_PERIOD_US};
use sandvisor_actors::lifecycle::HostId;
use sandvisor_actors::log::tap::TapConfig;
use sandvisor_actors::network::NetworkPlan;
use sandvisor_actors::protocol::{
    BindMount, CommandSpec, Confinement, ExecSpec, Ids, Rlimit, RootPlan, SpawnPlan, StartSpec,
    VmLaunch,
};
use sandvisor_actors::sandbox::health::HealthSpec;
use sandvisor_actors::sandbox::SandboxSpec;
use sandvisor_actors::sandbox::VmSpec;

use crate::config::{id_range, mount_target, parse_user, Limit, Network, SandboxConfig};
use crate::error::{Error, Result};
use crate::exec::ExecConfig;
use crate::home;
use crate::isolation::{caps, seccomp};

/// Size of each fresh tmpfs (`/tmp`, `/run`, `/var/tmp`, `/dev/shm`): it
/// counts against the sandbox's memory limit, so it is kept small.
pub const TMPFS_BYTES: u64 = 64 << 20;
/// The open-files limit of every session: Docker's (what programs written
/// for containers expect).
pub const NOFILE: u64 = 1 << 20;

/// The limits a runtime gives sandboxes that leave theirs at
/// [`Limit::Default`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Defaults {
    /// Memory, in bytes.
    pub memory: Limit,
    /// Processes.
    pub pids: Limit,
    /// How long a sandbox's output may wait for space on a full disk.
    pub disk_full_wait: std::time::Duration,
}

/// Where and how one run happens.
pub(super) struct RunContext<'a> {
    /// The runtime's home.
    pub home: &'a Path,
    /// The sandbox's log directory.
    pub log_dir: PathBuf,
    /// The hosting process.
    pub host: HostId,
    /// Tells this run's cgroup apart from other runs of the same sandbox.
    pub run: u64,
    /// The sandbox's id-range slot, if it has a user namespace.
    pub id_slot: Option<u32>,
    /// The runtime's default limits.
    pub defaults: Defaults,
    /// The private network to attach, if any.
    pub network: Option<NetworkPlan>,
    /// Its files bound inside (`/etc/resolv.conf`, `/etc/hosts`), before
    /// the config's own mounts (which may replace them).
    pub network_mounts: Vec<BindMount>,
    /// The layers of the sandbox's image, top first (none without one).
    pub image_lowers: Vec<PathBuf>,
    /// The microVM to launch, for the microVM backend.
    pub vm: Option<VmLaunch>,
    /// Where the agent waits for a host that re-adopts it; `None`: the run
    /// ends with its host.
    pub adopt_socket: Option<PathBuf>,
}

fn invalid(field: &str, reason: impl Into<String>) -> Error {
    Error::InvalidConfig {
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// `path` as the wire carries it (UTF-8).
fn wire_path(field: &str, path: &Path) -> Result<String> {
    path.to_str()
        .map(str::to_string)
        .ok_or_else(|| invalid(field, format!("{} is not UTF-8", path.display())))
}

/// `"uid[:gid]"` as ids (validated already; checked again, as stored
/// configs are read back).
fn user_ids(field: &str, user: Option<&str>) -> Result<Option<Ids>> {
    user.map(|text| {
        parse_user(text)
            .map(|(uid, gid)| Ids { uid, gid })
            .ok_or_else(|| invalid(field, format!("{text:?} is not \"uid\" or \"uid:gid\"")))
    })
    .transpose()
}

/// The spec of a run of `config` in `context`.
///
/// # Errors
/// [`Error::InvalidConfig`] if a setting cannot be carried out (the seccomp
/// profile does not compile, a path is not UTF-8); [`Error::Internal`] if a
/// sandbox with a user namespace has no id range.
pub(super) fn sandbox_spec(config: &SandboxConfig, context: RunContext<'_>) -> Result<SandboxSpec> {
    let iso = config.isolation;
    let user_namespace = match (iso.user, context.id_slot) {
        (false, _) => None,
        (true, Some(slot)) => Some(id_range(slot)),
        (true, None) => {
            return Err(Error::Internal(format!(
                "{} has a user namespace but no id range",
                config.name
            )))
        }
    };
    let log_dir = context.log_dir;
    let mut memory_bytes = config.memory.resolve(context.defaults.memory);
    if let Some(guest) = config.vm_memory() {
        // The guest's RAM is qemu's memory on the host: the limit holds it
        // and qemu's own.
        let needed = guest.saturating_add(crate::vm::VM_OVERHEAD);
        memory_bytes = memory_bytes.map(|limit| limit.max(needed));
    }
    let boot_timeout = context.vm.is_some().then_some(crate::vm::VM_BOOT_TIMEOUT);
    // A microVM's launcher writes its console into the log directory too.
    let sole_writer = context.vm.is_none();
    Ok(SandboxSpec {
        name: config.name.clone(),
        vm: VmSpec {
            start: StartSpec {
                name: config.name.clone(),
                run: CommandSpec {
                    command: config.command.clone(),
                    args: config.args.clone(),
                    env: config.effective_env(),
                    cwd: config.working_dir.clone(),
                    stdin: config.stdin,
                    tty: config.tty,
                    // Sized by `Sandbox::resize` once attached.
                    rows: 0,
                    cols: 0,
                    user: user_ids("user", config.user.as_deref())?,
                    files: None,
                },
                pid_namespace: iso.pid,
                mount_namespace: iso.mount,
                net_namespace: !config.uses_host_network(),
                uts_namespace: iso.uts,
                ipc_namespace: iso.ipc,
                cgroup_namespace: iso.cgroup,
                confine: confinement(config)?,
            },
            plan: SpawnPlan {
                pid_namespace: iso.pid,
                user_namespace,
                root: root_plan(
                    config,
                    context.home,
                    context.network_mounts,
                    &context.image_lowers,
                )?,
                net_namespace: context.network.is_some(),
                vm: context.vm.map(Box::new),
                adopt_socket: context.adopt_socket,
            },
            limits: Limits {
                memory_bytes,
                pids: config.pids.resolve(context.defaults.pids),
                cpu_quota_us: config.cpus.map(cpu_quota_us),
            },
            cgroup_id: format!("{}-{}-{}", config.name, context.host.pid, context.run),
            network: context.network,
            boot_timeout,
        },
        tap: TapConfig {
            dir: log_dir.clone(),
            max_bytes: config.log.max_bytes,
            keep: config.log.keep,
            disk_full_wait: context.defaults.disk_full_wait,
            sole_writer,
        },
        log_dir,
        stop_signal: config.stop_signal,
        stop_timeout: config.stop_timeout,
        kill_timeout: config.kill_timeout,
        metrics_interval: config.metrics_interval,
        restart: config.restart,
        backoff: config.restart_backoff,
        idle_timeout: config.idle_timeout,
        max_lifetime: config.max_lifetime,
        health: health_spec(config)?,
    })
}

/// The health check of `config` as the supervisor runs it: its argv with
/// the main command's environment, directory and user.
///
/// # Errors
/// [`Error::InvalidConfig`] (`user`) if the sandbox's user does not parse.
fn health_spec(config: &SandboxConfig) -> Result<Option<HealthSpec>> {
    let Some(check) = &config.health else {
        return Ok(None);
    };
    let (command, args) = check
        .command
        .split_first()
        .ok_or_else(|| invalid("health.command", "names no program"))?;
    Ok(Some(HealthSpec {
        run: CommandSpec {
            command: command.clone(),
            args: args.to_vec(),
            env: config.effective_env(),
            cwd: config.working_dir.clone(),
            stdin: false,
            tty: false,
            rows: 0,
            cols: 0,
            user: user_ids("user", config.user.as_deref())?,
            files: None,
        },
        interval: check.interval,
        timeout: check.timeout,
        retries: check.retries,
        start_period: check.start_period,
        on_unhealthy: config.on_unhealthy,
    }))
}

/// The CFS quota of `cpus` CPUs per [`CPU_PERIOD_US`] (validated: at least
/// 1,000 µs, far below `u64::MAX`).
fn cpu_quota_us(cpus: f64) -> u64 {
    (cpus * CPU_PERIOD_US as f64).round() as u64
}

/// The root filesystem to stage: none for a privileged sandbox without a
/// rootfs (it runs in the host's `/`).
fn root_plan(
    config: &SandboxConfig,
    home: &Path,
    network_mounts: Vec<BindMount>,
    image_lowers: &[PathBuf],
) -> Result<Option<RootPlan>> {
    if config.isolation.privileged && config.rootfs.is_none() && image_lowers.is_empty() {
        return Ok(None);
    }
    let dir = home::sandbox_dir(home, &config.name)?.join(home::FS_DIR);
    let mut mounts = network_mounts;
    for (i, mount) in config.mounts.iter().enumerate() {
        mounts.push(BindMount {
            source: wire_path(&format!("mounts[{i}].source"), &mount.source)?,
            target: mount_target(&mount.target)
                .map_err(|reason| invalid(&format!("mounts[{i}].target"), reason))?,
            read_only: mount.read_only,
        });
    }
    Ok(Some(RootPlan {
        dir: wire_path("home", &dir)?,
        lowers: match &config.rootfs {
            Some(rootfs) => vec![wire_path("rootfs", rootfs)?],
            None => image_lowers
                .iter()
                .map(|layer| wire_path("image", layer))
                .collect::<Result<_>>()?,
        },
        read_only: config.read_only,
        mounts,
        tmpfs_bytes: TMPFS_BYTES,
    }))
}

/// What every session of `config` gets: none when privileged.
fn confinement(config: &SandboxConfig) -> Result<Option<Confinement>> {
    if config.isolation.privileged {
        return Ok(None);
    }
    let mut capabilities = caps::resolve(&config.cap_add, &config.cap_drop)
        .map_err(|(field, reason)| invalid(&field, reason))?;
    if matches!(config.network, Network::Private { .. }) {
        // Raw sockets reach below a private network's egress rules (see
        // `SandboxConfig::validate`).
        capabilities &= !::caps::Capability::CAP_NET_RAW.bitmask();
    }
    let seccomp = seccomp::compile(&config.seccomp, capabilities)
        .map_err(|reason| invalid("seccomp", reason))?;
    Ok(Some(Confinement {
        capabilities,
        seccomp,
        rlimits: vec![
            Rlimit {
                resource: libc::RLIMIT_CORE,
                soft: 0,
                hard: 0,
            },
            Rlimit {
                resource: libc::RLIMIT_NOFILE,
                soft: NOFILE,
                hard: NOFILE,
            },
        ],
    }))
}

/// The spec of an exec session running `config` (the supervisor numbers
/// it); a session that names no user runs as the sandbox's `user`.
///
/// # Errors
/// [`Error::InvalidConfig`] (`user`) if the session's user does not parse.
pub(super) fn exec_spec(config: &ExecConfig, sandbox_user: Option<Ids>) -> Result<ExecSpec> {
    let user = match user_ids("user", config.user.as_deref())? {
        Some(ids) => Some(ids),
        None => sandbox_user,
    };
    Ok(ExecSpec {
        session: 0,
        logged: true,
        run: CommandSpec {
            command: config.command.clone(),
            args: config.args.clone(),
            env: config.env_list(),
            cwd: config.cwd.clone(),
            stdin: config.stdin,
            tty: config.tty,
            rows: config.rows,
            cols: config.cols,
            user,
            files: None,
        },
    })
}
