//! The runtime: open a home, create and start sandboxes, act on them.
//!
//! A [`Sandvisor`] owns the SQLite store and a root actor that supervises one
//! `SandboxSupervisor` per running sandbox. Opening it reconciles what a dead
//! host left behind. Dropping the last clone stops its root: every sandbox it
//! hosts loses its supervisor, whose socket closes, and the sandbox's agent
//! kills the sandbox (the next open records those runs as Crashed).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ractor::{Actor, ActorRef};
use sandvisor_actors::cgroup::Limits;
use sandvisor_actors::events::{EventEnvelope, EventSink};
use sandvisor_actors::lifecycle::{HostId, SandboxStatus};
use sandvisor_actors::metrics::SandboxMetrics;
use sandvisor_actors::protocol::{BootStage, CommandSpec, StartSpec};
use sandvisor_actors::relay_tap::TapConfig;
use sandvisor_actors::root::{Root, RootArgs, RootMsg};
use sandvisor_actors::sandbox::{
    BootFailure, MetricsUnavailable, SandboxSpec, StopOutcome, SupervisorMsg,
};
use sandvisor_actors::vm_process::VmSpec;
use tokio::sync::mpsc;

use crate::config::SandboxConfig;
use crate::control::{self, ControlClient, ControlServer};
use crate::error::{Error, Result};
use crate::exec::{ExecConfig, ExecHandle, SessionLink};
use crate::home;
use crate::logs::{LogEntry, LogOptions, LogStream, LogStreamOptions, Logs};
use crate::store::{RunRow, SandboxRow, Store};
use sandvisor_actors::lifecycle::LifecycleStore;
use sandvisor_actors::protocol::ExecSpec;
use sandvisor_actors::vm_process::{ExecRefused, SessionInput};

/// The agent binary's name.
pub const AGENT_BINARY: &str = "sandvisor-agent";

/// How a run ended, as `wait_until_stopped` reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SandboxStopResult {
    /// The sandbox.
    pub name: String,
    /// `Stopped` or `Crashed`.
    pub status: SandboxStatus,
    /// Exit code of the main command, if it exited.
    pub exit_code: Option<i32>,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// When the end was observed.
    pub observed_at: DateTime<Utc>,
}

impl From<StopOutcome> for SandboxStopResult {
    fn from(outcome: StopOutcome) -> Self {
        Self {
            name: outcome.name,
            status: outcome.status,
            exit_code: outcome.exit_code,
            signal: outcome.signal,
            observed_at: outcome.observed_at,
        }
    }
}

/// Opens a [`Sandvisor`].
#[derive(Debug, Default, Clone)]
pub struct SandvisorBuilder {
    home: Option<PathBuf>,
    agent: Option<PathBuf>,
    control: Option<ControlSocket>,
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

    /// Opens the home: store, migrations, reconciliation, root actor, and the
    /// control socket if asked for.
    pub async fn open(self) -> Result<Sandvisor> {
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
        let reconciled = store.reconcile(host).await?;
        if !reconciled.is_empty() {
            tracing::warn!(
                ?reconciled,
                "sandboxes of a host that is gone were marked Crashed"
            );
        }
        let agent = self.agent.unwrap_or_else(find_agent);
        let bus = EventBus::default();
        let args = RootArgs {
            store: Arc::new(store.clone()),
            host,
            bus: Some(bus.sink()),
            agent: agent.clone(),
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
            agent,
            host,
            control_path: bound.as_ref().map(|bound| bound.path().to_path_buf()),
            control: std::sync::Mutex::new(bound.map(|bound| {
                bound.serve(WeakSandvisor {
                    inner: weak.clone(),
                })
            })),
        });
        Ok(Sandvisor { inner })
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

struct Inner {
    bus: EventBus,
    home: PathBuf,
    store: Store,
    root: ActorRef<RootMsg>,
    agent: PathBuf,
    host: HostId,
    logs: Logs,
    /// Dropped with the runtime (or by `close_control_socket`): the server
    /// stops, the socket file goes.
    control: std::sync::Mutex<Option<ControlServer>>,
    control_path: Option<PathBuf>,
}

/// A runtime held without keeping it alive (the control server's hold).
#[derive(Clone)]
pub(crate) struct WeakSandvisor {
    inner: std::sync::Weak<Inner>,
}

impl WeakSandvisor {
    /// The runtime, unless it has been dropped.
    pub(crate) fn upgrade(&self) -> Option<Sandvisor> {
        self.inner.upgrade().map(|inner| Sandvisor { inner })
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.root.stop(None);
        // The process may exit right after: what this runtime committed goes
        // into the database file now, not only into its WAL.
        crate::store::checkpoint::checkpoint_blocking(&self.home.join(crate::store::DB_FILE));
    }
}

/// The subscribers of [`Sandvisor::events`].
#[derive(Clone, Default)]
struct EventBus {
    subscribers: Arc<std::sync::Mutex<Vec<mpsc::UnboundedSender<EventEnvelope>>>>,
}

impl EventBus {
    fn sink(&self) -> EventSink {
        let subscribers = self.subscribers.clone();
        Arc::new(move |event| {
            // A poisoned lock means a subscriber panicked mid-send; the
            // list itself is still sound.
            let mut subscribers = subscribers.lock().unwrap_or_else(|e| e.into_inner());
            subscribers.retain(|tx| tx.send(event.clone()).is_ok());
            true
        })
    }

    fn subscribe(&self) -> mpsc::UnboundedReceiver<EventEnvelope> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(tx);
        rx
    }
}

/// A sandvisor runtime over one home. Cheap to clone.
#[derive(Clone)]
pub struct Sandvisor {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Sandvisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandvisor")
            .field("home", &self.inner.home)
            .finish()
    }
}

impl Sandvisor {
    /// A builder; `Sandvisor::builder().home(path).open().await`.
    pub fn builder() -> SandvisorBuilder {
        SandvisorBuilder::default()
    }

    /// The home directory.
    pub fn home(&self) -> &Path {
        &self.inner.home
    }

    /// The control socket this runtime listens on (or listened on, before
    /// [`Self::close_control_socket`]), if it was opened with one.
    pub fn control_socket(&self) -> Option<&Path> {
        self.inner.control_path.as_deref()
    }

    /// Stops listening on the control socket and removes it, at once:
    /// nothing new reaches this runtime from outside (a daemon shutting down
    /// takes no more sandboxes). The returned future ends once every request
    /// already in flight has been answered — await it before the process
    /// exits, so that a `stop` from another process gets its answer.
    pub fn close_control_socket(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let server = self
            .inner
            .control
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let task = server.and_then(ControlServer::close);
        async move {
            if let Some(task) = task {
                // A server task that panicked has nothing left to answer.
                let _ = task.await;
            }
        }
    }

    /// This runtime's host identity (recorded with each run).
    pub fn host(&self) -> HostId {
        self.inner.host
    }

    /// The agent binary this runtime starts.
    pub fn agent_path(&self) -> &Path {
        &self.inner.agent
    }

    /// Every event of every sandbox this runtime hosts, from now on, in
    /// order per sandbox, none lost while the stream is held.
    pub fn events(&self) -> impl futures::Stream<Item = EventEnvelope> + Send + 'static {
        let mut rx = self.inner.bus.subscribe();
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }

    /// Log reading under this runtime's home.
    pub fn logs(&self) -> &Logs {
        &self.inner.logs
    }

    /// Validates `config`, records the sandbox and starts it. Bad input is
    /// refused before anything is written.
    pub async fn create(&self, config: SandboxConfig) -> Result<Sandbox> {
        config.validate()?;
        self.inner
            .store
            .insert_sandbox(&config, SandboxStatus::Starting, self.inner.host)
            .await?;
        let log_dir = self.inner.logs.log_dir_for(&config.name)?;
        // A directory left without a row is not this sandbox's: set aside.
        let prepared = crate::store::integrity::set_aside_orphan(&self.inner.home, &config.name)
            .and_then(|()| {
                std::fs::create_dir_all(&log_dir).map_err(|source| Error::Io {
                    path: log_dir.clone(),
                    source,
                })
            });
        if let Err(err) = prepared {
            // Leave nothing behind for a sandbox that cannot have a directory.
            let _ = self
                .inner
                .store
                .set_status(&config.name, SandboxStatus::Stopped)
                .await;
            let _ = self.inner.store.delete_sandbox(&config.name).await;
            return Err(err);
        }
        self.launch(&config).await
    }

    /// Starts a stopped (or never started) sandbox.
    pub async fn start(&self, name: &str) -> Result<Sandbox> {
        home::validate_name(name)?;
        if let Some(sandbox) = self.connect(name).await? {
            return Ok(sandbox);
        }
        let row = self
            .inner
            .store
            .sandbox(name)
            .await?
            .ok_or_else(|| Error::SandboxNotFound(name.to_string()))?;
        let config: SandboxConfig =
            serde_json::from_str(&row.config_json).map_err(|e| Error::BadRow {
                name: name.to_string(),
                reason: format!("its config does not parse: {e}"),
            })?;
        if let Err(status) = self.inner.store.claim_start(name, self.inner.host).await? {
            tracing::debug!(sandbox = name, %status, "start refused");
            return Err(Error::SandboxNotHosted(name.to_string()));
        }
        self.launch(&config).await
    }

    /// Spawns the supervisor of a sandbox already marked Starting and waits
    /// for it to run.
    async fn launch(&self, config: &SandboxConfig) -> Result<Sandbox> {
        let name = config.name.as_str();
        let spec = self.spec_for(config)?;
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let launched = ractor::call!(self.inner.root, |reply| RootMsg::Launch {
            spec: Box::new(spec),
            started: started_tx,
            reply
        })
        .map_err(|e| Error::Internal(format!("root actor: {e}")))
        .and_then(|launched| launched.map_err(Error::Internal));
        let supervisor = match launched {
            Ok(supervisor) => supervisor,
            Err(err) => {
                // No supervisor will ever settle the row: do it here, so the
                // sandbox can be started or removed again.
                self.inner
                    .store
                    .set_status(name, SandboxStatus::Stopped)
                    .await
                    .map_err(Error::Database)?;
                return Err(err);
            }
        };
        // A supervisor always answers (it is told at spawn and answers from
        // its end at the latest); a closed channel means it failed outright,
        // and the Root has recorded the sandbox as Crashed.
        let started = started_rx.await.map_err(|_| {
            Error::Internal(format!(
                "the supervisor of {name} ended before it reported the start"
            ))
        })?;
        match started {
            Ok(_) => Ok(Sandbox {
                name: name.to_string(),
                supervisor,
                runtime: self.clone(),
                main_io: Arc::default(),
            }),
            Err(failure) => Err(boot_failed(failure)),
        }
    }

    /// A live handle on `name` if it runs in this runtime.
    pub async fn connect(&self, name: &str) -> Result<Option<Sandbox>> {
        let supervisor = ractor::call!(self.inner.root, |reply| RootMsg::Lookup {
            name: name.to_string(),
            reply
        })
        .map_err(|e| Error::Internal(format!("root actor: {e}")))?;
        Ok(supervisor.map(|supervisor| Sandbox {
            name: name.to_string(),
            supervisor,
            runtime: self.clone(),
            main_io: Arc::default(),
        }))
    }

    /// The names of the sandboxes running in this runtime, sorted.
    pub async fn hosted(&self) -> Result<Vec<String>> {
        ractor::call!(self.inner.root, RootMsg::Hosted)
            .map_err(|e| Error::Internal(format!("root actor: {e}")))
    }

    /// The sandbox `name` as recorded.
    pub async fn get(&self, name: &str) -> Result<SandboxHandle> {
        home::validate_name(name)?;
        let row = self
            .inner
            .store
            .sandbox(name)
            .await?
            .ok_or_else(|| Error::SandboxNotFound(name.to_string()))?;
        Ok(SandboxHandle {
            row,
            runtime: self.clone(),
        })
    }

    /// Every recorded sandbox, by name.
    pub async fn list(&self) -> Result<Vec<SandboxHandle>> {
        Ok(self
            .inner
            .store
            .sandboxes()
            .await?
            .into_iter()
            .map(|row| SandboxHandle {
                row,
                runtime: self.clone(),
            })
            .collect())
    }

    /// Every recorded sandbox, by name, a row that does not parse as
    /// [`Error::BadRow`] in its place.
    ///
    /// # Errors
    /// The database cannot be read.
    pub async fn list_checked(&self) -> Result<Vec<Result<SandboxHandle>>> {
        Ok(self
            .inner
            .store
            .sandboxes_checked()
            .await?
            .into_iter()
            .map(|row| {
                row.map(|row| SandboxHandle {
                    row,
                    runtime: self.clone(),
                })
            })
            .collect())
    }

    /// The runs of `name`, oldest first.
    pub async fn runs(&self, name: &str) -> Result<Vec<RunRow>> {
        home::validate_name(name)?;
        self.inner.store.runs(name).await
    }

    /// Deletes a Stopped, Crashed or never started sandbox: its rows and its
    /// directory. A running one is refused with [`Error::SandboxStillRunning`].
    pub async fn remove(&self, name: &str) -> Result<()> {
        home::validate_name(name)?;
        if self.connect(name).await?.is_some() {
            return Err(Error::SandboxStillRunning(name.to_string()));
        }
        // The files go before the row: on a full disk, deleting the row
        // needs the space they free.
        let dir = home::sandbox_dir(&self.inner.home, name)?;
        let free = || match std::fs::remove_dir_all(&dir) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(Error::Io {
                path: dir.clone(),
                source: err,
            }),
            _ => Ok(()),
        };
        match self.inner.store.delete_sandbox_freeing(name, free).await? {
            Some(_) => Err(Error::SandboxStillRunning(name.to_string())),
            None => Ok(()),
        }
    }

    fn spec_for(&self, config: &SandboxConfig) -> Result<SandboxSpec> {
        let log_dir = self.inner.logs.log_dir_for(&config.name)?;
        let iso = config.isolation;
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
                    },
                    rootfs: config.rootfs.as_ref().map(|p| p.display().to_string()),
                    pid_namespace: iso.pid,
                    mount_namespace: iso.mount,
                    net_namespace: iso.net,
                    uts_namespace: iso.uts,
                    ipc_namespace: iso.ipc,
                },
                limits: Limits {
                    memory_bytes: config.memory_limit,
                    pids: config.pids_limit,
                },
                cgroup_id: format!(
                    "{}-{}-{}",
                    config.name,
                    self.inner.host.pid,
                    unique_suffix()
                ),
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
        })
    }

    pub(crate) async fn stop_result_from_store(
        &self,
        name: &str,
    ) -> Result<Option<SandboxStopResult>> {
        let row = self
            .inner
            .store
            .sandbox(name)
            .await?
            .ok_or_else(|| Error::SandboxNotFound(name.to_string()))?;
        if !row.status.is_terminal() {
            return Ok(None);
        }
        let last = self.inner.store.runs(name).await?.pop();
        Ok(Some(SandboxStopResult {
            name: name.to_string(),
            status: row.status,
            exit_code: last.as_ref().and_then(|r| r.exit_code),
            signal: last.as_ref().and_then(|r| r.exit_signal),
            observed_at: last.and_then(|r| r.terminated_at).unwrap_or(row.updated_at),
        }))
    }
}

/// Distinguishes runs of the same sandbox from this host.
fn unique_suffix() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

fn boot_failed(failure: BootFailure) -> Error {
    let hint = match failure.stage {
        BootStage::Config => "check the command, its arguments and the working directory",
        BootStage::Mount => {
            "namespaces and mounts need root (CAP_SYS_ADMIN); check the rootfs layout"
        }
        BootStage::BuildVm => {
            "is sandvisor-agent beside the binary or on PATH, and may this user create namespaces?"
        }
        BootStage::Network => "the network namespace could not be set up",
        BootStage::Image => "check that the rootfs directory exists and holds the command",
        BootStage::Other => "see runtime.log in the sandbox's log directory",
    };
    Error::BootFailed {
        stage: failure.stage.as_str().to_string(),
        errno: failure.errno,
        message: failure.message,
        hint: hint.to_string(),
    }
}

/// The main command's session id (exec sessions count on from 2).
const MAIN_SESSION: u64 = 1;

/// Whether the main command reads stdin / runs on a terminal.
#[derive(Debug, Clone, Copy)]
struct MainIo {
    stdin: bool,
    tty: bool,
}

/// A running sandbox of this runtime.
#[derive(Clone)]
pub struct Sandbox {
    name: String,
    supervisor: ActorRef<SupervisorMsg>,
    runtime: Sandvisor,
    main_io: Arc<tokio::sync::OnceCell<MainIo>>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox").field("name", &self.name).finish()
    }
}

impl Sandbox {
    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The supervisor actor, for actor message probes.
    pub fn supervisor(&self) -> &ActorRef<SupervisorMsg> {
        &self.supervisor
    }

    /// Delivers every event of this sandbox from now on to `sink` (see
    /// [`crate::testing::Probe::sink`] to assert on them).
    pub fn subscribe(&self, sink: EventSink) -> Result<()> {
        self.supervisor
            .cast(SupervisorMsg::Subscribe(sink))
            .map_err(|_| Error::Internal(format!("{} has stopped: no more events", self.name)))
    }

    /// The current status.
    pub async fn status(&self) -> Result<SandboxStatus> {
        match ractor::call!(self.supervisor, SupervisorMsg::Status) {
            Ok(status) => Ok(status),
            // The supervisor is gone: the run ended and the store knows how.
            Err(_) => Ok(self.runtime.get(&self.name).await?.row.status),
        }
    }

    /// Stops with the sandbox's stop timeout and waits until it has stopped.
    pub async fn stop(&self) -> Result<SandboxStopResult> {
        self.request_stop(None);
        self.wait_until_stopped().await
    }

    /// Stops with `timeout` before SIGKILL (zero kills at once) and waits.
    pub async fn stop_with_timeout(&self, timeout: Duration) -> Result<SandboxStopResult> {
        self.request_stop(Some(timeout));
        self.wait_until_stopped().await
    }

    /// Sends the stop request without waiting.
    pub fn request_stop(&self, timeout: Option<Duration>) {
        // A supervisor that is gone has stopped already.
        let _ = self.supervisor.cast(SupervisorMsg::Stop { timeout });
    }

    /// Runs a command in the running sandbox as a new exec session.
    pub async fn exec(&self, config: ExecConfig) -> Result<ExecHandle> {
        config.validate()?;
        let (tx, rx) = mpsc::unbounded_channel();
        let spec = ExecSpec {
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
            },
        };
        let started = ractor::call!(self.supervisor, |reply| SupervisorMsg::Exec {
            spec,
            output: tx,
            reply
        })
        .map_err(|_| Error::SandboxNotRunning(self.name.clone()))?;
        match started {
            Ok((id, pid)) => Ok(ExecHandle::new(
                config.tty,
                id,
                pid,
                rx,
                SessionLink::Local(self.supervisor.clone()),
                self.name.clone(),
                config.stdin,
            )),
            Err(ExecRefused::Draining) => Err(Error::SandboxDraining(self.name.clone())),
            Err(ExecRefused::NotRunning) => Err(Error::SandboxNotRunning(self.name.clone())),
            Err(ExecRefused::Failed { errno, message }) => Err(Error::ExecFailed {
                sandbox: self.name.clone(),
                errno,
                message,
            }),
        }
    }

    /// Drains: refuses new exec sessions, lets running ones finish, then
    /// stops (reason DrainRequested); past `timeout` it stops anyway, with
    /// the usual escalation. Waits until the sandbox has stopped.
    pub async fn drain(&self, timeout: Option<Duration>) -> Result<SandboxStopResult> {
        self.request_drain(timeout);
        self.wait_until_stopped().await
    }

    /// Sends the drain request without waiting.
    pub fn request_drain(&self, timeout: Option<Duration>) {
        // A supervisor that is gone has stopped already.
        let _ = self.supervisor.cast(SupervisorMsg::Drain { timeout });
    }

    /// Writes to the main command's stdin (the sandbox needs `stdin` or
    /// `tty` in its config); an empty write does nothing (to close, use
    /// [`Sandbox::close_stdin`]).
    pub async fn write_stdin(&self, data: impl Into<Vec<u8>>) -> Result<()> {
        let data = data.into();
        if data.is_empty() {
            return Ok(());
        }
        self.to_main(SessionInput::Stdin(data)).await
    }

    /// Closes the main command's stdin (on a terminal: sends end-of-file).
    pub async fn close_stdin(&self) -> Result<()> {
        self.to_main(SessionInput::Stdin(Vec::new())).await
    }

    /// Changes the main command's terminal size (the sandbox needs `tty`).
    pub async fn resize(&self, rows: u16, cols: u16) -> Result<()> {
        self.to_main(SessionInput::Resize { rows, cols }).await
    }

    /// Delivers input to the main command, if its streams take it.
    async fn to_main(&self, input: SessionInput) -> Result<()> {
        let (session, sandbox) = (MAIN_SESSION, self.name.clone());
        let io = self.main_io().await?;
        match input {
            SessionInput::Resize { .. } if !io.tty => {
                return Err(Error::NotATerminal { sandbox, session })
            }
            SessionInput::Stdin(_) if !(io.stdin || io.tty) => {
                return Err(Error::SessionClosed { sandbox, session })
            }
            _ => {}
        }
        self.supervisor
            .cast(SupervisorMsg::Session { session, input })
            .map_err(|_| Error::SandboxNotRunning(sandbox))
    }

    /// How the main command's standard streams were set up (read once).
    async fn main_io(&self) -> Result<MainIo> {
        self.main_io
            .get_or_try_init(|| async {
                let config = self.runtime.get(&self.name).await?.config()?;
                Ok(MainIo {
                    stdin: config.stdin,
                    tty: config.tty,
                })
            })
            .await
            .copied()
    }

    /// Freezes every process of the sandbox (SIGSTOP); status Paused. Stop
    /// and kill work while paused.
    pub async fn pause(&self) -> Result<()> {
        let result = ractor::call!(self.supervisor, SupervisorMsg::Pause)
            .map_err(|_| Error::SandboxNotRunning(self.name.clone()))?;
        result.map_err(|_| Error::SandboxNotRunning(self.name.clone()))
    }

    /// The latest resource sample of the whole tree (taken every
    /// `metrics_interval` by the supervisor).
    pub async fn metrics(&self) -> Result<SandboxMetrics> {
        match ractor::call!(self.supervisor, SupervisorMsg::Metrics) {
            Ok(Ok(metrics)) => Ok(metrics),
            Ok(Err(MetricsUnavailable::Disabled)) => Err(Error::MetricsDisabled(self.name.clone())),
            Ok(Err(MetricsUnavailable::NotRunning)) | Err(_) => {
                Err(Error::SandboxNotRunning(self.name.clone()))
            }
        }
    }

    /// Thaws a paused sandbox (SIGCONT); status Running.
    pub async fn resume(&self) -> Result<()> {
        let result = ractor::call!(self.supervisor, SupervisorMsg::Resume)
            .map_err(|_| Error::SandboxNotRunning(self.name.clone()))?;
        result.map_err(|_| Error::SandboxNotRunning(self.name.clone()))
    }

    /// Kills at once (SIGKILL to every process) and waits.
    pub async fn kill(&self) -> Result<SandboxStopResult> {
        self.request_kill();
        self.wait_until_stopped().await
    }

    /// Sends the kill request without waiting.
    pub fn request_kill(&self) {
        let _ = self.supervisor.cast(SupervisorMsg::Kill);
    }

    /// Waits for the run to end; driven by the supervisor's exit message.
    pub async fn wait_until_stopped(&self) -> Result<SandboxStopResult> {
        match ractor::call!(self.supervisor, SupervisorMsg::WaitStopped) {
            Ok(outcome) => Ok(outcome.into()),
            Err(_) => self
                .runtime
                .stop_result_from_store(&self.name)
                .await?
                .ok_or_else(|| {
                    Error::Internal(format!(
                        "supervisor of {} ended without a result",
                        self.name
                    ))
                }),
        }
    }

    /// Reads its logs; see [`Logs::read_logs`].
    pub async fn logs(&self, options: &LogOptions) -> Result<Vec<LogEntry>> {
        self.runtime.inner.logs.read_logs(&self.name, options).await
    }

    /// Streams its logs; see [`Logs::log_stream`].
    pub async fn log_stream(&self, options: &LogStreamOptions) -> Result<LogStream> {
        self.runtime
            .inner
            .logs
            .log_stream(&self.name, options)
            .await
    }
}

/// Where a recorded sandbox runs.
enum Host {
    Here(Sandbox),
    There(ControlClient),
    Nowhere,
}

/// How to end a sandbox.
#[derive(Clone, Copy)]
enum EndHow {
    Stop(Option<Duration>),
    Kill,
    Drain(Option<Duration>),
}

/// A recorded sandbox (running or not), as of its last refresh.
#[derive(Clone)]
pub struct SandboxHandle {
    row: SandboxRow,
    runtime: Sandvisor,
}

impl std::fmt::Debug for SandboxHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxHandle")
            .field("name", &self.row.name)
            .field("status", &self.row.status)
            .finish()
    }
}

impl SandboxHandle {
    /// Its name.
    pub fn name(&self) -> &str {
        &self.row.name
    }

    /// The status as of the last refresh.
    pub fn status_snapshot(&self) -> SandboxStatus {
        self.row.status
    }

    /// Its configuration.
    pub fn config(&self) -> Result<SandboxConfig> {
        serde_json::from_str(&self.row.config_json).map_err(|e| Error::BadRow {
            name: self.row.name.clone(),
            reason: format!("its config does not parse: {e}"),
        })
    }

    /// Its configuration as stored (JSON).
    pub fn config_json(&self) -> &str {
        &self.row.config_json
    }

    /// When it was created.
    pub fn created_at(&self) -> DateTime<Utc> {
        self.row.created_at
    }

    /// When its row last changed.
    pub fn updated_at(&self) -> DateTime<Utc> {
        self.row.updated_at
    }

    /// Reloads the row.
    pub async fn refresh(&mut self) -> Result<()> {
        self.row = self.runtime.get(&self.row.name).await?.row;
        Ok(())
    }

    /// Reads its logs.
    pub async fn logs(&self, options: &LogOptions) -> Result<Vec<LogEntry>> {
        self.runtime
            .inner
            .logs
            .read_logs(&self.row.name, options)
            .await
    }

    /// Streams its logs.
    pub async fn log_stream(&self, options: &LogStreamOptions) -> Result<LogStream> {
        self.runtime
            .inner
            .logs
            .log_stream(&self.row.name, options)
            .await
    }

    /// Starts it.
    pub async fn start(&self) -> Result<Sandbox> {
        self.runtime.start(&self.row.name).await
    }

    /// Where the sandbox runs: here, in another runtime reached through its
    /// control socket, or nowhere (never started, or ended).
    async fn host(&self) -> Result<Host> {
        if let Some(sandbox) = self.runtime.connect(&self.row.name).await? {
            return Ok(Host::Here(sandbox));
        }
        let mut fresh = self.clone();
        fresh.refresh().await?;
        let status = fresh.row.status;
        if status.is_terminal() || status == SandboxStatus::Created {
            return Ok(Host::Nowhere);
        }
        match fresh.row.control_socket {
            Some(socket) if Some(socket.as_path()) != self.runtime.control_socket() => {
                Ok(Host::There(ControlClient::new(socket)))
            }
            _ => Err(Error::SandboxNotHosted(self.row.name.clone())),
        }
    }

    /// Ends the sandbox (`how`: stop, kill or drain with an optional grace
    /// period) wherever it runs and waits; a sandbox that is not running
    /// answers how its last run ended (`None` if it never ran).
    async fn end(&self, how: EndHow) -> Result<Option<SandboxStopResult>> {
        let name = self.row.name.as_str();
        match self.host().await? {
            Host::Here(sandbox) => match how {
                EndHow::Stop(None) => sandbox.stop().await,
                EndHow::Stop(Some(timeout)) => sandbox.stop_with_timeout(timeout).await,
                EndHow::Kill => sandbox.kill().await,
                EndHow::Drain(timeout) => sandbox.drain(timeout).await,
            }
            .map(Some),
            Host::There(control) => {
                let ended = match how {
                    EndHow::Stop(timeout) => control.stop(name, timeout).await,
                    EndHow::Kill => control.kill(name).await,
                    EndHow::Drain(timeout) => control.drain(name, timeout).await,
                };
                match ended {
                    Ok(result) => Ok(Some(result)),
                    // It ended on its own meanwhile.
                    Err(Error::SandboxNotRunning(_)) => {
                        self.runtime.stop_result_from_store(name).await
                    }
                    // The host went away (a foreground run exits as its
                    // sandbox ends): what the store says decides.
                    Err(err @ Error::ControlUnreachable { .. }) => {
                        match self.runtime.stop_result_from_store(name).await? {
                            Some(result) => Ok(Some(result)),
                            None => Err(err),
                        }
                    }
                    Err(err) => Err(err),
                }
            }
            Host::Nowhere => self.runtime.stop_result_from_store(name).await,
        }
    }

    /// Sends an end request without waiting.
    async fn request_end(&self, how: EndHow) -> Result<()> {
        match self.host().await? {
            Host::Here(sandbox) => match how {
                EndHow::Stop(timeout) => sandbox.request_stop(timeout),
                EndHow::Kill => sandbox.request_kill(),
                EndHow::Drain(timeout) => sandbox.request_drain(timeout),
            },
            Host::There(control) => {
                let (what, timeout) = match how {
                    EndHow::Stop(timeout) => ("stop", timeout),
                    EndHow::Kill => ("kill", None),
                    EndHow::Drain(timeout) => ("drain", timeout),
                };
                control.request_end(&self.row.name, what, timeout).await?;
            }
            Host::Nowhere => {}
        }
        Ok(())
    }

    /// Stops it (Ok if it is not running) and waits.
    pub async fn stop(&self) -> Result<Option<SandboxStopResult>> {
        self.end(EndHow::Stop(None)).await
    }

    /// Stops it with `timeout` before SIGKILL and waits.
    pub async fn stop_with_timeout(&self, timeout: Duration) -> Result<Option<SandboxStopResult>> {
        self.end(EndHow::Stop(Some(timeout))).await
    }

    /// Sends a stop request without waiting.
    pub async fn request_stop(&self, timeout: Option<Duration>) -> Result<()> {
        self.request_end(EndHow::Stop(timeout)).await
    }

    /// Pauses it (see [`Sandbox::pause`]).
    pub async fn pause(&self) -> Result<()> {
        match self.host().await? {
            Host::Here(sandbox) => sandbox.pause().await,
            Host::There(control) => control.pause(&self.row.name).await,
            Host::Nowhere => Err(Error::SandboxNotRunning(self.row.name.clone())),
        }
    }

    /// A live handle, if the sandbox runs in this runtime.
    pub async fn connect(&self) -> Result<Sandbox> {
        match self.host().await? {
            Host::Here(sandbox) => Ok(sandbox),
            Host::There(_) => Err(Error::SandboxNotHosted(self.row.name.clone())),
            Host::Nowhere => Err(Error::SandboxNotRunning(self.row.name.clone())),
        }
    }

    /// Runs a command in it (see [`Sandbox::exec`]), wherever it runs.
    pub async fn exec(&self, config: ExecConfig) -> Result<ExecHandle> {
        config.validate()?;
        match self.host().await? {
            Host::Here(sandbox) => sandbox.exec(config).await,
            Host::There(control) => control.exec(&self.row.name, &config).await,
            Host::Nowhere => Err(Error::SandboxNotRunning(self.row.name.clone())),
        }
    }

    /// Drains it (see [`Sandbox::drain`]); Ok with no result if it is not running.
    pub async fn drain(&self, timeout: Option<Duration>) -> Result<Option<SandboxStopResult>> {
        self.end(EndHow::Drain(timeout)).await
    }

    /// Sends a drain request without waiting.
    pub async fn request_drain(&self, timeout: Option<Duration>) -> Result<()> {
        self.request_end(EndHow::Drain(timeout)).await
    }

    /// Its latest resource sample (see [`Sandbox::metrics`]).
    pub async fn metrics(&self) -> Result<SandboxMetrics> {
        if self.config()?.metrics_interval.is_none() {
            return Err(Error::MetricsDisabled(self.row.name.clone()));
        }
        match self.host().await? {
            Host::Here(sandbox) => sandbox.metrics().await,
            Host::There(control) => control.metrics(&self.row.name).await,
            Host::Nowhere => Err(Error::SandboxNotRunning(self.row.name.clone())),
        }
    }

    /// Resumes it (see [`Sandbox::resume`]).
    pub async fn resume(&self) -> Result<()> {
        match self.host().await? {
            Host::Here(sandbox) => sandbox.resume().await,
            Host::There(control) => control.resume(&self.row.name).await,
            Host::Nowhere => Err(Error::SandboxNotRunning(self.row.name.clone())),
        }
    }

    /// Kills it and waits.
    pub async fn kill(&self) -> Result<Option<SandboxStopResult>> {
        self.end(EndHow::Kill).await
    }

    /// Kills it and waits at most `timeout` for the end.
    pub async fn kill_with_timeout(&self, timeout: Duration) -> Result<Option<SandboxStopResult>> {
        match tokio::time::timeout(timeout, self.kill()).await {
            Ok(result) => result,
            Err(_) => Err(Error::Internal(format!(
                "{} did not end within {timeout:?} of SIGKILL",
                self.row.name
            ))),
        }
    }

    /// Sends a kill request without waiting.
    pub async fn request_kill(&self) -> Result<()> {
        self.request_end(EndHow::Kill).await
    }

    /// Waits for the current run to end (returns at once if it has).
    pub async fn wait_until_stopped(&self) -> Result<SandboxStopResult> {
        let name = &self.row.name;
        match self.host().await? {
            Host::Here(sandbox) => sandbox.wait_until_stopped().await,
            Host::There(control) => match control.wait(name).await {
                Err(Error::SandboxNotRunning(_)) => self.stored_result().await,
                other => other,
            },
            Host::Nowhere => self.stored_result().await,
        }
    }

    async fn stored_result(&self) -> Result<SandboxStopResult> {
        self.runtime
            .stop_result_from_store(&self.row.name)
            .await?
            .ok_or_else(|| Error::SandboxNotRunning(self.row.name.clone()))
    }

    /// The control socket of the runtime that last started it, if any.
    pub fn control_socket(&self) -> Option<&Path> {
        self.row.control_socket.as_deref()
    }

    /// Removes it.
    pub async fn remove(self) -> Result<()> {
        self.runtime.remove(&self.row.name).await
    }
}
