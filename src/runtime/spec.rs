//! From the SDK's configs to the engine's specs.
//!
//! A [`SandboxConfig`] (validated, as stored) becomes the `SandboxSpec` the
//! root actor launches a supervisor with; an [`ExecConfig`] becomes the
//! `ExecSpec` of one exec session. These are the only places where the SDK's
//! names meet the engine's, so a field added to a config is wired here.

use std::path::PathBuf;

use sandvisor_actors::host::cgroup::Limits;
use sandvisor_actors::lifecycle::HostId;
use sandvisor_actors::log::tap::TapConfig;
use sandvisor_actors::protocol::{CommandSpec, ExecSpec, SpawnPlan, StartSpec};
use sandvisor_actors::sandbox::SandboxSpec;
use sandvisor_actors::sandbox::VmSpec;

use crate::config::SandboxConfig;
use crate::exec::ExecConfig;

/// The spec of a run of `config`, logging under `log_dir`, hosted by `host`.
/// `run` tells this run's cgroup apart from other runs of the same sandbox.
pub(super) fn sandbox_spec(
    config: &SandboxConfig,
    log_dir: PathBuf,
    host: HostId,
    run: u64,
) -> SandboxSpec {
    let iso = config.isolation;
    SandboxSpec {
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
                    user: None,
                },
                pid_namespace: iso.pid,
                mount_namespace: iso.mount,
                net_namespace: iso.net,
                uts_namespace: iso.uts,
                ipc_namespace: iso.ipc,
                cgroup_namespace: true,
                confine: Some(sandvisor_actors::protocol::Confinement {
                    capabilities: 0xa80425fb,
                    seccomp: None,
                    rlimits: vec![],
                }),
            },
            plan: SpawnPlan {
                pid_namespace: iso.pid,
                user_namespace: Some(sandvisor_actors::protocol::IdRange {
                    first: 0x4000_0000,
                    count: 65536,
                }),
                root: Some(sandvisor_actors::protocol::RootPlan {
                    dir: log_dir.parent().unwrap().join("fs").display().to_string(),
                    rootfs: config.rootfs.as_ref().map(|p| p.display().to_string()),
                    read_only: false,
                    mounts: vec![],
                    tmpfs_bytes: 64 << 20,
                }),
            },
            limits: Limits {
                memory_bytes: config.memory_limit,
                pids: config.pids_limit,
                cpu_quota_us: None,
            },
            cgroup_id: format!("{}-{}-{}", config.name, host.pid, run),
        },
        tap: TapConfig {
            dir: log_dir.clone(),
            max_bytes: config.log.max_bytes,
            keep: config.log.keep,
        },
        log_dir,
        stop_signal: config.stop_signal,
        stop_timeout: config.stop_timeout,
        kill_timeout: config.kill_timeout,
        metrics_interval: config.metrics_interval,
    }
}

/// The spec of an exec session running `config` (the supervisor numbers it).
pub(super) fn exec_spec(config: &ExecConfig) -> ExecSpec {
    ExecSpec {
        session: 0,
        run: CommandSpec {
            command: config.command.clone(),
            args: config.args.clone(),
            env: config.env_list(),
            cwd: config.cwd.clone(),
            stdin: config.stdin,
            tty: config.tty,
            rows: config.rows,
            cols: config.cols,
            user: None,
        },
    }
}
