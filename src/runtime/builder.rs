//! Opening a runtime: [`SandvisorBuilder`].
//!
//! # Contract
//! `open` does, in this order: resolve the home (made absolute: paths are
//! stored and handed to other processes), open and migrate the store, bind
//! the control socket if asked for (before any sandbox is handed out, so its
//! path is recorded with every sandbox this runtime starts), reconcile what
//! dead hosts left behind, spawn the root actor, and only then serve the
//! socket. A step that fails ends `open` before the root actor exists and
//! before anything is served (a socket file bound by then stays behind, and
//! the next bind on that path replaces it).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ractor::Actor;
use sandvisor_actors::backend::{Backend, NamespaceBackend};
use sandvisor_actors::log::tap::DEFAULT_DISK_FULL_WAIT;
use sandvisor_actors::root::{Root, RootArgs};

use super::spec::Defaults;
use super::{unique_suffix, EventBus, Inner, Sandvisor, WeakSandvisor};
use crate::config::{check_limit, Limit, DEFAULT_MEMORY, DEFAULT_PIDS};
use crate::control;
use crate::error::{Error, Result};
use crate::home;
use crate::logs::Logs;
use crate::store::Store;

/// The agent binary's name.
pub const AGENT_BINARY: &str = "sandvisor-agent";

/// Opens a [`Sandvisor`].
#[derive(Debug, Default, Clone)]
pub struct SandvisorBuilder {
    home: Option<PathBuf>,
    agent: Option<PathBuf>,
    control: Option<ControlSocket>,
    backend: Option<Arc<dyn Backend>>,
    default_memory: Option<Limit>,
    default_pids: Option<Limit>,
    disk_full_wait: Option<Duration>,
    vm: crate::vm::VmSettings,
    /// `Some(false)`: see [`SandvisorBuilder::readopt`].
    readopt: Option<bool>,
}

/// Where a runtime's control socket goes.
#[derive(Debug, Clone)]
enum ControlSocket {
    /// `<home>/run/<pid>-<n>.sock`.
    Auto,
    /// This path.
    At(PathBuf),
}

impl SandvisorBuilder {
    /// Uses `home` instead of `SANDVISOR_HOME` / `~/.sandvisor`.
    pub fn home(mut self, home: impl Into<PathBuf>) -> Self {
        self.home = Some(home.into());
        self
    }

    /// Uses this `sandvisor-agent` binary instead of looking beside the
    /// current executable and on `PATH`.
    pub fn agent_path(mut self, agent: impl Into<PathBuf>) -> Self {
        self.agent = Some(agent.into());
        self
    }

    /// Starts every sandbox's agent through `backend` instead of forking
    /// `sandvisor-agent` into new namespaces — e.g. a
    /// [`SimulatedBackend`](crate::testing::SimulatedBackend) in tests.
    pub fn backend(mut self, backend: Arc<dyn Backend>) -> Self {
        self.backend = Some(backend);
        self
    }

    /// Listens on a control socket under the home (`run/<pid>-<n>.sock`,
    /// recorded with every sandbox this runtime starts), so that other
    /// processes — the `sandvisor` CLI among them — can stop, kill, exec in,
    /// pause, resume, drain and sample its sandboxes. Only the owner of the
    /// home may connect. Off by default.
    pub fn control_socket(mut self, enabled: bool) -> Self {
        self.control = enabled.then_some(ControlSocket::Auto);
        self
    }

    /// Listens on a control socket at `path` (see [`Self::control_socket`]).
    pub fn control_socket_at(mut self, path: impl Into<PathBuf>) -> Self {
        self.control = Some(ControlSocket::At(path.into()));
        self
    }

    /// The memory limit of sandboxes whose config leaves it at
    /// [`Limit::Default`]: 1 GiB unless set here ([`Limit::Unlimited`]
    /// lifts it; [`Limit::Default`] keeps 1 GiB).
    pub fn default_memory(mut self, limit: Limit) -> Self {
        self.default_memory = Some(limit);
        self
    }

    /// The pids limit of sandboxes whose config leaves it at
    /// [`Limit::Default`]: 1,024 unless set here (as
    /// [`Self::default_memory`]).
    pub fn default_pids(mut self, limit: Limit) -> Self {
        self.default_pids = Some(limit);
        self
    }

    /// How long a sandbox's output may wait for space when the home's disk
    /// is full: 60 s unless set here. Meanwhile its writer retries and the
    /// sandbox's pipes fill, so its processes block on writing; nothing is
    /// dropped. Past it the sandbox is killed and ends Crashed, the reason
    /// in its `runtime.log`.
    pub fn disk_full_wait(mut self, wait: Duration) -> Self {
        self.disk_full_wait = Some(wait);
        self
    }

    /// Where the microVM backend finds its guest kernel, qemu and virtiofsd,
    /// and which accelerator it uses (see [`crate::vm::VmSettings`]; by
    /// default found on the host, KVM when the boot probe passes).
    pub fn vm(mut self, settings: crate::vm::VmSettings) -> Self {
        self.vm = settings;
        self
    }

    /// Whether this runtime hosts sandboxes that outlive it (default: yes).
    ///
    /// With it, a sandbox this runtime starts (on the namespace backend,
    /// without a private network) keeps running if this process dies
    /// without dropping the runtime — a crash, SIGKILL — and the next
    /// runtime opened on the home with it re-adopts the sandbox: same run,
    /// its output resumed exactly where `exec.log` ends. Dropping the
    /// runtime still stops its sandboxes.
    ///
    /// Without it, this runtime's sandboxes end with its process, and
    /// opening it leaves running sandboxes of a dead host alone (still
    /// Running, for a runtime that re-adopts them): what a short-lived
    /// process that hosts nothing of its own (a CLI call) wants.
    pub fn readopt(mut self, readopt: bool) -> Self {
        self.readopt = Some(readopt);
        self
    }

    /// Opens the home: store, migrations, reconciliation, root actor, and the
    /// control socket if asked for.
    ///
    /// # Errors
    /// - [`Error::InvalidConfig`] (`default_memory`, `default_pids`) for a
    ///   default limit out of range, before anything is opened.
    /// - [`Error::NoHome`] if no home was set and neither `SANDVISOR_HOME`
    ///   nor `HOME` is.
    /// - [`Error::Io`] if the home, its lock file or the control socket
    ///   cannot be created.
    /// - [`Error::Database`] if the store cannot be opened, migrated or
    ///   reconciled.
    /// - [`Error::ControlSocketInUse`] if another live runtime listens on the
    ///   control socket's path; [`Error::InvalidConfig`] (`control_socket`)
    ///   if the path is too long for a unix socket or holds something else.
    /// - [`Error::Internal`] if the root actor cannot start.
    ///
    /// # Cancel safety
    /// Not cancel-safe: dropped after reconciliation, the runs of dead hosts
    /// are settled (their orphans killed) but no runtime is returned.
    pub async fn open(self) -> Result<Sandvisor> {
        let defaults = Defaults {
            memory: pick(self.default_memory, DEFAULT_MEMORY),
            pids: pick(self.default_pids, DEFAULT_PIDS),
            disk_full_wait: self.disk_full_wait.unwrap_or(DEFAULT_DISK_FULL_WAIT),
        };
        check_limit("default_memory", defaults.memory)?;
        check_limit("default_pids", defaults.pids)?;
        let home = match self.home {
            Some(home) => home,
            None => home::home_from_env()?,
        };
        // Paths are stored and handed to other processes: never relative.
        let home = std::path::absolute(&home).map_err(|source| Error::Io {
            path: home.clone(),
            source,
        })?;
        let mut store = Store::open(&home).await?;
        let bound = match &self.control {
            None => None,
            Some(socket) => {
                let path = match socket {
                    ControlSocket::Auto => home.join(control::SOCKET_DIR).join(format!(
                        "{}-{}.sock",
                        std::process::id(),
                        unique_suffix()
                    )),
                    ControlSocket::At(path) => {
                        std::path::absolute(path).map_err(|source| Error::Io {
                            path: path.clone(),
                            source,
                        })?
                    }
                };
                let bound = control::Bound::bind(&path, &home)?;
                store = store.with_control_socket(&path);
                Some(bound)
            }
        };
        let host = crate::store::this_host();
        let readopt = self.readopt.unwrap_or(true);
        // Live sandboxes of dead hosts that wait to be re-adopted are not
        // settled: this runtime takes them over below, or leaves them for
        // one that does.
        let orphans = super::adoptable_orphans(&store, &home, host).await?;
        let spare: Vec<i64> = orphans.iter().map(|orphan| orphan.run_id).collect();
        let reconciled = super::reconcile(&store, &home, host, &spare).await?;
        if !reconciled.is_empty() {
            tracing::warn!(
                ?reconciled,
                "sandboxes of a host that is gone were marked Crashed"
            );
        }
        let agent = self.agent.unwrap_or_else(find_agent);
        let bus = EventBus::default();
        let backend = self
            .backend
            .unwrap_or_else(|| Arc::new(NamespaceBackend::new(agent.clone())));
        let args = RootArgs {
            store: Arc::new(store.clone()),
            host,
            bus: Some(bus.sink()),
            backend: backend.clone(),
        };
        let (root, _) = Actor::spawn(None, Root, args)
            .await
            .map_err(|e| Error::Internal(format!("cannot start the root actor: {e}")))?;
        let inner = Arc::new_cyclic(|weak| Inner {
            bus,
            logs: Logs::at(&home),
            home,
            store,
            root,
            backend,
            agent,
            host,
            control_path: bound.as_ref().map(|bound| bound.path().to_path_buf()),
            defaults,
            vm: crate::vm::VmHost::new(self.vm),
            readopt,
            control: std::sync::Mutex::new(bound.map(|bound| {
                bound.serve(WeakSandvisor {
                    inner: weak.clone(),
                })
            })),
        });
        let runtime = Sandvisor { inner };
        if readopt {
            runtime.take_over(orphans).await?;
        }
        Ok(runtime)
    }
}

/// The runtime default `set`, with `Limit::Default` (or nothing) meaning
/// sandvisor's own `builtin`.
fn pick(set: Option<Limit>, builtin: Limit) -> Limit {
    match set {
        None | Some(Limit::Default) => builtin,
        Some(limit) => limit,
    }
}

/// Where the agent is: beside the current executable (or one level up, where
/// cargo puts binaries for test executables in `deps/`), else on `PATH`.
fn find_agent() -> PathBuf {
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf));
    let candidates = exe_dir
        .iter()
        .flat_map(|dir| [dir.join(AGENT_BINARY), dir.join("..").join(AGENT_BINARY)])
        .chain(
            std::env::var_os("PATH")
                .iter()
                .flat_map(std::env::split_paths)
                .map(|dir| dir.join(AGENT_BINARY))
                .collect::<Vec<_>>(),
        )
        .collect::<Vec<_>>();
    candidates
        .iter()
        .find(|path| path.is_file())
        .cloned()
        .unwrap_or_else(|| PathBuf::from(AGENT_BINARY))
}
