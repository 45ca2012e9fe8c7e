//! How a sandbox's agent is started: one trait, one file per kind.
//!
//! A [`Backend`] starts the agent that is PID 1 of one sandbox and hands back
//! the host end of its [SAP](crate::protocol) socket and an [`Agent`] handle
//! to watch, identify and kill it from the host. Everything else — frames,
//! output, sessions, the run's phase — is the same for every backend and
//! lives in [`crate::sandbox`], which knows backends only through this trait
//! (an `Arc<dyn Backend>` handed down from the [`Root`](crate::root::Root)).
//!
//! - [`namespaces`]: forks `sandvisor-agent` as PID 1 of new namespaces,
//!   through one spawner process per runtime (the default).
//! - [`simulated`]: a scripted agent speaking SAP from a tokio task, for tests
//!   without root, namespaces or KVM.
//!
//! # Contract
//! - [`Backend::start`] answers once: a started agent waiting for the `Start`
//!   frame on `socket`, or why none was started ([`SpawnFailed`], reported as
//!   a boot failure at stage `build_vm`). On failure nothing is left running.
//! - The agent lives as long as the host end of its socket: dropping the
//!   socket ends it (and every process of its sandbox).
//! - [`Agent::exited`] resolves once the agent is gone for good; only then
//!   does the agent link report the run's end, so nothing of the sandbox is
//!   left when the supervisor hears of it.
//! - [`Agent::kill`] ends the agent from the host without its cooperation.
//! - [`Backend::adopt`] takes over an agent that outlived its host (see
//!   [`sap`](crate::protocol::sap), "Re-adoption"): it connects to the
//!   agent's adoption socket and gives the same handle as a start, watching
//!   the agent recorded with the run (never a process that reused its pid).
//! - [`Agent::pid`] is the host pid recorded in the run row; the store reads
//!   its start time from `/proc` (pid + start time identify the agent for
//!   reconcile) and only ever kills a process whose command is
//!   `sandvisor-agent`.

pub mod namespaces;
pub mod simulated;

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::host::cgroup::{Limits, LimitsUpdate};
use crate::protocol::{SpawnPlan, StartSpec};

pub use namespaces::NamespaceBackend;
pub use simulated::SimulatedBackend;

/// How long a sandbox may take from spawn to its main command running, unless
/// its backend says otherwise ([`Backend::boot_timeout`]).
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(30);

/// What to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    /// What the agent runs, and in which namespaces.
    pub start: StartSpec,
    /// What the spawner sets up before the agent runs (user namespace,
    /// root filesystem).
    pub plan: SpawnPlan,
    /// Resource limits of the whole tree.
    pub limits: Limits,
    /// The cgroup's name when there are limits (unique per run).
    pub cgroup_id: String,
    /// The private network to attach before `Start` (`plan.net_namespace`
    /// is then set); `None`: only `lo`, or the host's network.
    pub network: Option<crate::network::NetworkPlan>,
    /// How long this run may take to report Ready, when it needs longer
    /// than its backend gives ([`Backend::boot_timeout`]): a microVM boots
    /// a kernel first.
    pub boot_timeout: Option<Duration>,
}

/// Why no agent was started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpawnFailed {
    /// OS error number (0 if none).
    pub errno: i32,
    /// What failed, naming the agent binary where it matters.
    pub message: String,
}

impl SpawnFailed {
    /// A failure from an I/O error, with what was being done.
    pub fn io(what: &str, err: &std::io::Error) -> Self {
        Self {
            errno: err.raw_os_error().unwrap_or(0),
            message: format!("{what}: {err}"),
        }
    }
}

/// An agent a backend started.
pub struct Started {
    /// The host end of the agent's SAP socket.
    pub socket: tokio::net::UnixStream,
    /// The agent, as the host sees it.
    pub agent: Arc<dyn Agent>,
}

/// A started agent, from the host's side.
pub trait Agent: Debug + Send + Sync + 'static {
    /// The host pid of the sandbox's PID 1, recorded with the run.
    fn pid(&self) -> u32;

    /// Resolves once the agent has exited (and, as PID 1 of its sandbox,
    /// every process of it).
    ///
    /// # Cancel safety
    /// Cancel-safe: it only waits.
    fn exited(&self) -> BoxFuture<'_, ()>;

    /// Ends the sandbox from the host: SIGKILL to its PID 1 (never to a
    /// process that reused its pid), and to the main command's process group
    /// `main_pid` (as the agent reported it) when the agent is not PID 1 of a
    /// pid namespace.
    ///
    /// # Errors
    /// The OS error of the signal; an agent that has already exited is not
    /// an error.
    fn kill(&self, main_pid: Option<u32>) -> std::io::Result<()>;

    /// Whether the kernel's OOM killer killed any process of the sandbox
    /// during this run (read once the run has ended). Backends without
    /// memory accounting say `false`.
    fn oom_killed(&self) -> bool {
        false
    }

    /// Changes the resource limits of the running sandbox, all or none
    /// ([`Cgroup::update`](crate::host::cgroup::Cgroup::update)). May block
    /// (the kernel reclaims memory to meet a lower limit): call it off the
    /// runtime's threads.
    ///
    /// # Errors
    /// [`std::io::ErrorKind::Unsupported`] when the backend (or this run)
    /// has no such limits; the OS error of a refused write.
    fn update_limits(&self, update: &LimitsUpdate) -> std::io::Result<()> {
        let _ = update;
        Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "this backend has no resource limits",
        ))
    }
}

/// An agent to take over: the one a dead host's run recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdoptSpec {
    /// Its host pid.
    pub pid: u32,
    /// Its start time (field 22 of `/proc/PID/stat`), so a process that
    /// reused the pid is never taken for it.
    pub start_ticks: u64,
    /// Where it waits for a host.
    pub socket: std::path::PathBuf,
    /// It is PID 1 of a pid namespace of its own.
    pub pid_namespace: bool,
}

/// Starts sandboxes' agents. Object-safe: the runtime holds an
/// `Arc<dyn Backend>`.
pub trait Backend: Debug + Send + Sync + 'static {
    /// Takes over an agent that outlived its host: connected and answering
    /// (its first frame is `Adopted`).
    ///
    /// # Errors
    /// [`SpawnFailed`] when it cannot be taken over (it is gone, it is
    /// another process now, its socket does not answer, or the backend
    /// cannot re-adopt).
    fn adopt<'a>(&'a self, spec: &'a AdoptSpec) -> BoxFuture<'a, Result<Started, SpawnFailed>> {
        let _ = spec;
        Box::pin(async {
            Err(SpawnFailed {
                errno: libc::ENOTSUP,
                message: "this backend cannot re-adopt sandboxes".into(),
            })
        })
    }

    /// Starts an agent for `spec`; it waits for the `Start` frame on the
    /// returned socket.
    ///
    /// # Errors
    /// [`SpawnFailed`] when no agent could be started (nothing is left
    /// running then).
    ///
    /// # Cancel safety
    /// Not cancel-safe: dropping the future after the agent exists drops its
    /// socket, which ends it, but a backend may have resources (a cgroup)
    /// it releases only when the returned handle drops.
    fn start<'a>(&'a self, spec: &'a VmSpec) -> BoxFuture<'a, Result<Started, SpawnFailed>>;

    /// How long an agent may take to report Ready before the run fails
    /// with a boot timeout.
    fn boot_timeout(&self) -> Duration {
        BOOT_TIMEOUT
    }
}
