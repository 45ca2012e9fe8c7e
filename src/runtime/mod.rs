//! The runtime: open a home, create and start sandboxes, act on them.
//!
//! A [`Sandvisor`] owns the SQLite store and a root actor that supervises one
//! `SandboxSupervisor` per running sandbox. Opening it reconciles what a dead
//! host left behind. Dropping the last clone stops its root: every sandbox it
//! hosts loses its supervisor, whose socket closes, and the sandbox's agent
//! kills the sandbox (the next open records those runs as Crashed).
//!
//! # Files
//! - `builder.rs`: [`SandvisorBuilder`], opening a home.
//! - `spec.rs`: the SDK's configs turned into the engine's specs.
//! - `sandbox.rs`: [`Sandbox`], a sandbox running in this runtime.
//! - `handle.rs`: [`SandboxHandle`], a recorded sandbox wherever it runs.
//! - `route.rs`: the one control interface behind a handle (here, through a
//!   control socket, or nowhere).
//! - `outcome.rs`: [`SandboxStopResult`], how a run ended, and boot failures.

mod builder;
mod handle;
mod network;
mod outcome;
mod route;
mod sandbox;
mod spec;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ractor::ActorRef;
use sandvisor_actors::events::{EventEnvelope, EventSink};
use sandvisor_actors::lifecycle::{HostId, SandboxStatus};
use sandvisor_actors::root::RootMsg;
use tokio::sync::mpsc;

pub use builder::{SandvisorBuilder, AGENT_BINARY};
pub use handle::SandboxHandle;
pub use outcome::SandboxStopResult;
pub(crate) use route::End;
pub use sandbox::Sandbox;

use crate::config::SandboxConfig;
use crate::control::{ControlClient, ControlServer};
use crate::error::{Error, Result};
use crate::home;
use crate::logs::Logs;
use crate::store::{OrphanRun, RunRow, Store};
use sandvisor_actors::lifecycle::LifecycleStore;

struct Inner {
    bus: EventBus,
    home: PathBuf,
    store: Store,
    root: ActorRef<RootMsg>,
    /// How agents start: the root's for runs, and this runtime's own for
    /// file operations on sandboxes that do not run.
    backend: Arc<dyn sandvisor_actors::backend::Backend>,
    agent: PathBuf,
    host: HostId,
    logs: Logs,
    /// Dropped with the runtime (or by `close_control_socket`): the server
    /// stops, the socket file goes.
    control: std::sync::Mutex<Option<ControlServer>>,
    control_path: Option<PathBuf>,
    /// The limits of sandboxes that leave them at [`crate::config::Limit::Default`].
    defaults: spec::Defaults,
    /// The microVM backend's programs, kernel and accelerator.
    vm: Arc<crate::vm::VmHost>,
    /// Its sandboxes outlive it, and it re-adopts those of dead hosts (see
    /// [`SandvisorBuilder::readopt`]).
    readopt: bool,
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

    /// The memory limit of sandboxes that leave theirs at
    /// [`Limit::Default`](crate::config::Limit::Default).
    pub fn default_memory(&self) -> crate::config::Limit {
        self.inner.defaults.memory
    }

    /// The pids limit of sandboxes that leave theirs at
    /// [`Limit::Default`](crate::config::Limit::Default).
    pub fn default_pids(&self) -> crate::config::Limit {
        self.inner.defaults.pids
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
    ///
    /// # Errors
    /// - [`Error::InvalidName`] / [`Error::InvalidConfig`] for bad input
    ///   (nothing is written).
    /// - [`Error::SandboxExists`] if the name is taken.
    /// - [`Error::Io`] if its log directory cannot be created (the row is
    ///   removed again).
    /// - [`Error::BootFailed`] if the sandbox failed before it was ready
    ///   (also in `boot-error.json`); the sandbox stays recorded.
    /// - [`Error::Database`] if the store fails; [`Error::Internal`] if an
    ///   actor does.
    ///
    /// # Cancel safety
    /// Not cancel-safe: dropped once the supervisor is launched, the sandbox
    /// runs on in this runtime (reach it with [`Self::connect`]); dropped
    /// before, the sandbox may stay recorded as `Starting` until a runtime
    /// opened later reconciles it.
    pub async fn create(&self, mut config: SandboxConfig) -> Result<Sandbox> {
        let restore = match config.from_snapshot.clone() {
            Some(source) => {
                home::validate_name(&config.name)?;
                let restore = self.snapshots().unpack(&source).await?;
                restore.apply(&mut config)?;
                Some(restore)
            }
            None => None,
        };
        let (image, lowers) = self.apply_image(&mut config).await?;
        config.validate()?;
        config.canonicalize_mounts()?;
        let id_slot = self
            .inner
            .store
            .insert_sandbox(
                &config,
                SandboxStatus::Starting,
                self.inner.host,
                image.as_ref().map(|image| image.id.as_str()),
            )
            .await?;
        let log_dir = self.inner.logs.log_dir_for(&config.name)?;
        // A directory left without a row is not this sandbox's: set aside.
        let prepared = crate::store::integrity::set_aside_orphan(&self.inner.home, &config.name)
            .and_then(|()| {
                home::create_private_dir(&log_dir).map_err(|source| Error::Io {
                    path: log_dir.clone(),
                    source,
                })
            })
            .and_then(|()| match restore {
                Some(restore) => restore.install(
                    &home::sandbox_dir(&self.inner.home, &config.name)?,
                    id_slot.map(|slot| crate::config::id_range(slot).first),
                ),
                None => Ok(()),
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
        self.launch(&config, id_slot, lowers).await
    }

    /// The snapshots of this runtime's home.
    pub fn snapshots(&self) -> crate::snapshot::Snapshots {
        crate::snapshot::Snapshots::new(&self.inner.home)
    }

    /// The status of `name` and the id of its newest run, from the store.
    pub(crate) async fn run_state(&self, name: &str) -> Result<(SandboxStatus, Option<i64>)> {
        let status = self.get(name).await?.status_snapshot();
        let last = self.inner.store.runs(name).await?.pop().map(|run| run.id);
        Ok((status, last))
    }

    /// The images of this runtime's home.
    pub fn images(&self) -> crate::image::Images {
        crate::image::Images::new(&self.inner.home, self.inner.store.clone())
    }

    /// Fills `config` in from its image, if it names one; returns the image
    /// and its layers, top first.
    async fn apply_image(
        &self,
        config: &mut SandboxConfig,
    ) -> Result<(Option<crate::image::Image>, Vec<PathBuf>)> {
        let Some(reference) = config.image.clone() else {
            return Ok((None, Vec::new()));
        };
        config.validate_image()?;
        let images = self.images();
        let image = images.inspect(&reference).await?;
        let lowers = images.lowers(&image)?;
        crate::image::apply_image(config, &image, &lowers)?;
        Ok((Some(image), lowers))
    }

    /// The layers (top first) of image `id`, if any.
    async fn lowers_of(&self, id: Option<&str>) -> Result<Vec<PathBuf>> {
        let Some(id) = id else {
            return Ok(Vec::new());
        };
        let images = self.images();
        images.lowers(&images.inspect(id).await?)
    }

    /// Starts a stopped (or never started) sandbox; a sandbox already
    /// running here is answered as is.
    ///
    /// # Errors
    /// - [`Error::InvalidName`]; [`Error::SandboxNotFound`] if no such
    ///   sandbox is recorded.
    /// - [`Error::SandboxNotHosted`] if it is running (or starting) in
    ///   another runtime.
    /// - [`Error::BootFailed`] if it failed before it was ready.
    /// - [`Error::Database`] if the store fails or its stored config does
    ///   not parse; [`Error::Internal`] if an actor fails.
    ///
    /// # Cancel safety
    /// As [`Self::create`].
    pub async fn start(&self, name: &str) -> Result<Sandbox> {
        home::validate_name(name)?;
        if let Some(sandbox) = self.connect(name).await? {
            return Ok(sandbox);
        }
        let handle = self.get(name).await?;
        let config = handle.config()?;
        let lowers = self.lowers_of(handle.image_id()).await?;
        let claimed = self
            .inner
            .store
            .claim_start(name, self.inner.host, config.isolation.user)
            .await?;
        let id_slot = match claimed {
            Ok(slot) => slot,
            Err(status) => {
                tracing::debug!(sandbox = name, %status, "start refused");
                return Err(Error::SandboxNotHosted(name.to_string()));
            }
        };
        // A run no row recorded may still wait for a host on the socket
        // (and hold the writable layer): it ends before the next starts.
        dismiss(&home::adopt_socket(&self.inner.home, name)?).await;
        self.launch(&config, id_slot, lowers).await
    }

    /// Spawns the supervisor of a sandbox already marked Starting (with
    /// id-range slot `id_slot`) and waits for it to run.
    async fn launch(
        &self,
        config: &SandboxConfig,
        id_slot: Option<u32>,
        image_lowers: Vec<PathBuf>,
    ) -> Result<Sandbox> {
        let name = config.name.as_str();
        let prepared = match self.vm_launch(config).await {
            Ok(vm) => self.run_spec(config, id_slot, image_lowers, vm, Purpose::Run),
            Err(err) => Err(err),
        };
        let spec = match prepared {
            Ok(spec) => spec,
            Err(err) => {
                // Nothing was launched: the row must not stay Starting.
                self.inner
                    .store
                    .set_status(name, SandboxStatus::Stopped)
                    .await
                    .map_err(Error::Database)?;
                return Err(err);
            }
        };
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let launched = ractor::call!(self.inner.root, |reply| RootMsg::Launch {
            spec: Box::new(spec),
            started: started_tx,
            adopt: None,
            reply
        })
        .map_err(|e| Error::Internal(format!("root actor: {e}")))
        .and_then(|launched| launched.map_err(|refused| Error::Internal(refused.to_string())));
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
            Ok(_) => Ok(Sandbox::new(name, supervisor, self.clone())),
            Err(failure) => Err(outcome::boot_failed(failure)),
        }
    }

    /// The spec a run of `config` (with id-range slot `id_slot`) gets: the
    /// one function that decides a run's namespaces, root and confinement,
    /// so a file operation on a sandbox that does not run sees exactly what
    /// a run would. For [`Purpose::Files`] the sandbox gets no network
    /// beyond `lo` (its network files are still bound) and its ports are
    /// not checked.
    fn run_spec(
        &self,
        config: &SandboxConfig,
        id_slot: Option<u32>,
        image_lowers: Vec<PathBuf>,
        vm: Option<sandvisor_actors::protocol::VmLaunch>,
        purpose: Purpose,
    ) -> Result<sandvisor_actors::sandbox::SandboxSpec> {
        let name = config.name.as_str();
        let log_dir = self.inner.logs.log_dir_for(name)?;
        let network = network::plan(config, &self.inner.home)?;
        let mounts = match &network {
            Some(plan) => {
                if purpose == Purpose::Run {
                    network::check_ports(name, &plan.publish)?;
                }
                network::write_files(plan, name)?
            }
            None => Vec::new(),
        };
        // A run outlives its host and is re-adopted by the next one, unless
        // it needs what dies with the host: a microVM's launcher follows
        // its host, and a private network's pasta is the host's child.
        // Without a pid namespace the host could not end the whole tree
        // when it drops the run (PID 1's death would not take it along).
        let adoptable = self.inner.readopt
            && purpose == Purpose::Run
            && config.isolation.pid
            && vm.is_none()
            && network.is_none();
        let adopt_socket = adoptable
            .then(|| home::adopt_socket(&self.inner.home, name))
            .transpose()?;
        spec::sandbox_spec(
            config,
            spec::RunContext {
                home: &self.inner.home,
                log_dir,
                host: self.inner.host,
                run: unique_suffix(),
                id_slot,
                defaults: self.inner.defaults,
                network: network.filter(|_| purpose == Purpose::Run),
                network_mounts: mounts,
                image_lowers,
                vm,
                adopt_socket,
            },
        )
    }

    /// The microVM a run of `config` launches, for the microVM backend
    /// (its initramfs built and `/dev/kvm` probed on first use).
    ///
    /// # Errors
    /// As [`crate::vm::initramfs::ensure`]; [`Error::Internal`] if the
    /// blocking task fails.
    async fn vm_launch(
        &self,
        config: &SandboxConfig,
    ) -> Result<Option<sandvisor_actors::protocol::VmLaunch>> {
        let crate::config::Backend::MicroVm { vcpus, .. } = config.backend else {
            return Ok(None);
        };
        let memory_mib = config
            .vm_memory()
            .unwrap_or(crate::config::DEFAULT_VM_MEMORY)
            >> 20;
        let console = self
            .inner
            .logs
            .log_dir_for(&config.name)?
            .join(sandvisor_actors::log::runtime_log::KERNEL_LOG);
        let (host, home, agent) = (
            self.inner.vm.clone(),
            self.inner.home.clone(),
            self.inner.agent.clone(),
        );
        let launch = tokio::task::spawn_blocking(move || {
            host.launch(&home, &agent, &console, vcpus, memory_mib)
        })
        .await
        .map_err(|e| Error::Internal(format!("preparing the microVM: {e}")))??;
        tracing::info!(
            sandbox = %config.name,
            accel = if launch.kvm { "kvm" } else { "tcg" },
            kernel = %launch.kernel,
            "microVM"
        );
        Ok(Some(launch))
    }

    /// The accelerator this runtime's microVMs use, once one was launched.
    pub fn vm_accel(&self) -> Option<crate::vm::Accel> {
        self.inner.vm.chosen()
    }

    /// Starts a file session on `name`, which does not run: its agent
    /// alone, with the spec a run would get and the operation `op` as its
    /// main command (see `sandvisor_actors::sandbox::detached`).
    ///
    /// # Errors
    /// [`Error::SandboxNotFound`]; [`Error::BootFailed`] if the agent could
    /// not set the sandbox up (its layers in use by a run that started
    /// meanwhile, say); [`Error::InvalidConfig`] / [`Error::Internal`] as
    /// for a start.
    pub(crate) async fn detached_files(
        &self,
        name: &str,
        op: sandvisor_actors::protocol::FileOp,
    ) -> Result<crate::files::FileChannel> {
        let handle = self.get(name).await?;
        let config = handle.config()?;
        let id_slot = handle.id_slot();
        // One agent at a time on the sandbox's layers, across processes:
        // two overlays on one writable layer are undefined behaviour.
        let lock = home::sandbox_dir(&self.inner.home, name)?.join(FILES_LOCK);
        let turn = tokio::task::spawn_blocking(move || take_turn(&lock))
            .await
            .map_err(|e| Error::Internal(format!("file lock: {e}")))??;
        let lowers = self.lowers_of(handle.image_id()).await?;
        // A microVM's root is its host-side layers, shared with the guest:
        // a namespace agent reaches the same files without booting a VM.
        let mut spec = self.run_spec(&config, id_slot, lowers, None, Purpose::Files)?;
        let run = &mut spec.vm.start.run;
        run.files = Some(op);
        run.stdin = true;
        run.tty = false;
        let detached = sandvisor_actors::sandbox::detached::start(&*self.inner.backend, &spec.vm)
            .await
            .map_err(outcome::boot_failed)?;
        Ok(crate::files::FileChannel::detached(name, detached, turn))
    }

    /// A live handle on `name` if it runs in this runtime.
    ///
    /// # Errors
    /// [`Error::Internal`] if the root actor is gone.
    pub async fn connect(&self, name: &str) -> Result<Option<Sandbox>> {
        let supervisor = ractor::call!(self.inner.root, |reply| RootMsg::Lookup {
            name: name.to_string(),
            reply
        })
        .map_err(|e| Error::Internal(format!("root actor: {e}")))?;
        Ok(supervisor.map(|supervisor| Sandbox::new(name, supervisor, self.clone())))
    }

    /// The runs that ended in this runtime but whose ends the store has not
    /// taken yet (a full disk; the root retries): name and run id.
    ///
    /// # Errors
    /// [`Error::Internal`] if the root actor is gone.
    pub async fn unrecorded_runs(&self) -> Result<Vec<(String, i64)>> {
        ractor::call!(self.inner.root, RootMsg::Unrecorded)
            .map_err(|e| Error::Internal(format!("root actor: {e}")))
    }

    /// The names of the sandboxes running in this runtime, sorted.
    ///
    /// # Errors
    /// [`Error::Internal`] if the root actor is gone.
    pub async fn hosted(&self) -> Result<Vec<String>> {
        ractor::call!(self.inner.root, RootMsg::Hosted)
            .map_err(|e| Error::Internal(format!("root actor: {e}")))
    }

    /// The sandbox `name` as recorded.
    ///
    /// # Errors
    /// [`Error::InvalidName`]; [`Error::SandboxNotFound`] if no such sandbox
    /// is recorded; [`Error::Database`] if the store cannot be read.
    pub async fn get(&self, name: &str) -> Result<SandboxHandle> {
        home::validate_name(name)?;
        let row = self
            .inner
            .store
            .sandbox(name)
            .await?
            .ok_or_else(|| Error::SandboxNotFound(name.to_string()))?;
        Ok(SandboxHandle::new(row, self.clone()))
    }

    /// Every recorded sandbox, by name.
    ///
    /// # Errors
    /// [`Error::Database`] if the store cannot be read.
    pub async fn list(&self) -> Result<Vec<SandboxHandle>> {
        Ok(self
            .inner
            .store
            .sandboxes()
            .await?
            .into_iter()
            .map(|row| SandboxHandle::new(row, self.clone()))
            .collect())
    }

    /// Every recorded sandbox, by name, a row that does not parse as
    /// [`Error::BadRow`] in its place.
    ///
    /// # Errors
    /// [`Error::Database`] if the store cannot be read.
    pub async fn list_checked(&self) -> Result<Vec<Result<SandboxHandle>>> {
        Ok(self
            .inner
            .store
            .sandboxes_checked()
            .await?
            .into_iter()
            .map(|row| row.map(|row| SandboxHandle::new(row, self.clone())))
            .collect())
    }

    /// Settles sandboxes whose hosting process is gone, as opening a runtime
    /// does: each open run of a dead host is closed as Crashed
    /// (InternalError), its processes still running are killed, and its
    /// `exec.log` gets the `--- sandbox stopped (InternalError: …) ---`
    /// marker the host could not write. A follower of a sandbox hosted by
    /// another process calls it once [`SandboxHandle::host_gone`] says so.
    /// Returns the names settled.
    ///
    /// # Errors
    /// [`Error::Database`] if the store cannot be read or written.
    pub async fn reconcile(&self) -> Result<Vec<String>> {
        let orphans =
            adoptable_orphans(&self.inner.store, &self.inner.home, self.inner.host).await?;
        let spare: Vec<i64> = orphans.iter().map(|orphan| orphan.run_id).collect();
        reconcile(&self.inner.store, &self.inner.home, self.inner.host, &spare).await
    }

    /// The runs of `name`, oldest first (none for an unknown name).
    ///
    /// # Errors
    /// [`Error::InvalidName`]; [`Error::Database`] if the store cannot be
    /// read.
    pub async fn runs(&self, name: &str) -> Result<Vec<RunRow>> {
        home::validate_name(name)?;
        self.inner.store.runs(name).await
    }

    /// The open run of `name` that ended but whose end the store refused
    /// (a full disk), if its runtime says so: the runtime that started it
    /// keeps the end to record later (asked on its control socket, or this
    /// runtime's root when it has none). Positive evidence only: several
    /// runtimes may share a process, so "not hosted here" proves nothing.
    async fn ended_but_open(&self, name: &str) -> Result<Option<i64>> {
        let row = self.get(name).await?;
        let status = row.status_snapshot();
        if status.is_terminal() || status == SandboxStatus::Created {
            // Removable as it is: no need to ask anyone.
            return Ok(None);
        }
        let Some(run) = self.inner.store.runs(name).await?.pop() else {
            return Ok(None);
        };
        if run.terminated_at.is_some() {
            return Ok(None);
        }
        let kept = match row.control_socket() {
            // A host that does not answer is left to reconciliation.
            Some(socket) => ControlClient::new(socket)
                .host()
                .await
                .map(|host| host.unrecorded)
                .unwrap_or_default(),
            None if run.host == self.inner.host => self.unrecorded_runs().await?,
            None => Vec::new(),
        };
        let wanted = (name.to_string(), run.id);
        Ok(kept.contains(&wanted).then_some(run.id))
    }

    /// Deletes a Stopped, Crashed or never started sandbox: its rows and its
    /// directory. A running one is refused with [`Error::SandboxStillRunning`].
    ///
    /// # Errors
    /// - [`Error::InvalidName`]; [`Error::SandboxNotFound`] if no such
    ///   sandbox is recorded.
    /// - [`Error::SandboxStillRunning`] if it runs, here or elsewhere.
    /// - [`Error::Io`] if its directory cannot be deleted (its rows stay, so
    ///   removing again can finish the job).
    /// - [`Error::Database`] if the store fails; [`Error::Internal`] if the
    ///   root actor is gone.
    ///
    /// # Cancel safety
    /// Not cancel-safe: dropped after the files are deleted, the rows stay
    /// (removing again finishes).
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
        let ended_run = self.ended_but_open(name).await?;
        match self
            .inner
            .store
            .delete_sandbox_freeing(name, ended_run, free)
            .await?
        {
            Some(_) => Err(Error::SandboxStillRunning(name.to_string())),
            None => Ok(()),
        }
    }

    /// How the last run of `name` ended, as stored; `None` unless it is in a
    /// terminal status.
    ///
    /// # Errors
    /// [`Error::SandboxNotFound`] if no such sandbox is recorded;
    /// [`Error::Database`] if the store cannot be read.
    pub(crate) async fn stop_result_from_store(
        &self,
        name: &str,
    ) -> Result<Option<SandboxStopResult>> {
        outcome::from_store(&self.inner.store, name).await
    }
}

/// The lock file a file operation on a sandbox that does not run holds
/// (in its directory) while its agent has the layers mounted.
const FILES_LOCK: &str = "files.lock";

/// Waits for the exclusive lock on `path` (created 0600 if missing).
///
/// # Errors
/// [`Error::Io`] if the file cannot be opened or locked.
fn take_turn(path: &Path) -> Result<nix::fcntl::Flock<std::fs::File>> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, errno)| io(errno.into()))
}

/// What a run spec is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// A run of the sandbox.
    Run,
    /// A file operation on a sandbox that does not run.
    Files,
}

/// Distinguishes runs of the same sandbox from this host.
fn unique_suffix() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Open runs of dead hosts whose agent still runs and waits on its adoption
/// socket.
///
/// # Errors
/// [`Error::Database`] if the store cannot be read.
async fn adoptable_orphans(store: &Store, home: &Path, me: HostId) -> Result<Vec<OrphanRun>> {
    use std::os::unix::fs::FileTypeExt;
    let orphans = store.orphan_runs(me).await?;
    Ok(orphans
        .into_iter()
        .filter(|orphan| {
            home::adopt_socket(home, &orphan.name)
                .ok()
                .and_then(|path| std::fs::symlink_metadata(path).ok())
                .is_some_and(|meta| meta.file_type().is_socket())
        })
        .collect())
}

impl Sandvisor {
    /// Re-adopts `orphans` (see [`SandvisorBuilder::readopt`]); those that
    /// cannot be taken over are killed and settled as Crashed.
    ///
    /// # Errors
    /// [`Error::Database`] if settling the ones not taken over fails.
    async fn take_over(&self, orphans: Vec<OrphanRun>) -> Result<()> {
        // At once: an agent that does not answer costs its deadline, not
        // every other's.
        let outcomes =
            futures::future::join_all(orphans.iter().map(|orphan| self.take_over_one(orphan)))
                .await;
        let mut spare = Vec::new();
        let mut failed = false;
        for (orphan, outcome) in orphans.iter().zip(outcomes) {
            match outcome {
                Ok(()) => spare.push(orphan.run_id),
                Err(err) => {
                    tracing::warn!(sandbox = %orphan.name, %err, "cannot re-adopt the sandbox of a host that is gone");
                    failed = true;
                }
            }
        }
        if failed {
            // Only the runs that failed: another runtime may be taking over
            // the rest right now.
            reconcile(&self.inner.store, &self.inner.home, self.inner.host, &spare).await?;
        }
        Ok(())
    }

    /// Takes over one orphaned run: connects to its agent, moves the run to
    /// this host and starts its supervisor on it. An agent connected but not
    /// taken over is killed, so reconciliation settles its run.
    ///
    /// # Errors
    /// Why it was not taken over.
    async fn take_over_one(&self, orphan: &OrphanRun) -> Result<()> {
        let handle = self.get(&orphan.name).await?;
        let config = handle.config()?;
        let lowers = self.lowers_of(handle.image_id()).await?;
        let spec = self.run_spec(&config, handle.id_slot(), lowers, None, Purpose::Run)?;
        let Some(socket) = spec.vm.plan.adopt_socket.clone() else {
            return Err(Error::Internal(format!(
                "{} cannot be re-adopted (a microVM or a private network)",
                orphan.name
            )));
        };
        let adopt = sandvisor_actors::backend::AdoptSpec {
            pid: orphan.pid,
            start_ticks: orphan.pid_start,
            socket,
            pid_namespace: spec.vm.start.pid_namespace,
        };
        let agent = self
            .inner
            .backend
            .adopt(&adopt)
            .await
            .map_err(|failed| Error::Internal(failed.message))?;
        let kill = |agent: &sandvisor_actors::backend::Started| {
            if let Err(err) = agent.agent.kill(None) {
                tracing::warn!(pid = orphan.pid, %err, "cannot kill the agent");
            }
        };
        match self
            .inner
            .store
            .move_run(orphan.run_id, orphan.host, self.inner.host)
            .await
        {
            Ok(true) => {}
            // Another runtime took it first: ours closes, the agent stays its.
            Ok(false) => return Ok(()),
            Err(err) => {
                kill(&agent);
                return Err(err);
            }
        }
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let readoption = sandvisor_actors::sandbox::Readoption {
            agent,
            run_id: orphan.run_id,
            started_at: orphan.started_at,
        };
        let launched = ractor::call!(self.inner.root, |reply| RootMsg::Launch {
            spec: Box::new(spec),
            started: started_tx,
            adopt: Some(Box::new(readoption)),
            reply
        })
        .map_err(|e| Error::Internal(format!("root actor: {e}")))
        .and_then(|launched| launched.map_err(|refused| Error::Internal(refused.to_string())))?;
        let failure = match tokio::time::timeout(ADOPT_DEADLINE, started_rx).await {
            Ok(Ok(Ok(_))) => {
                tracing::info!(sandbox = %orphan.name, run = orphan.run_id, "re-adopted");
                return Ok(());
            }
            Ok(Ok(Err(failure))) => outcome::boot_failed(failure),
            Ok(Err(_)) => Error::Internal(format!(
                "the supervisor of {} ended before it took the sandbox over",
                orphan.name
            )),
            Err(_) => Error::Internal(format!(
                "the agent of {} did not answer within {ADOPT_DEADLINE:?}",
                orphan.name
            )),
        };
        // Its link kills the agent as it stops; the run goes back to the
        // dead host, whose runs reconciliation settles.
        launched.stop(None);
        self.inner
            .store
            .move_run(orphan.run_id, self.inner.host, orphan.host)
            .await?;
        Err(failure)
    }
}

/// How long a re-adopted agent may take to answer.
const ADOPT_DEADLINE: std::time::Duration = std::time::Duration::from_secs(15);

/// Ends an agent that waits on `socket` for a host although no open run
/// names it (its host died after the agent's `Ready`, before the run's row
/// was written): it is told to kill its sandbox, and its frames are read
/// until it exits. Nothing there: nothing done.
async fn dismiss(socket: &Path) {
    use std::os::unix::fs::FileTypeExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let is_socket = std::fs::symlink_metadata(socket).is_ok_and(|m| m.file_type().is_socket());
    if !is_socket {
        return;
    }
    let limit = std::time::Duration::from_secs(2);
    let Ok(mut agent) = sandvisor_actors::host::socket::connect(socket, limit).await else {
        return;
    };
    let mut frame = Vec::new();
    sandvisor_actors::protocol::Frame::Signal {
        target: sandvisor_actors::protocol::SignalTarget::All,
        signo: libc::SIGKILL,
    }
    .encode(&mut frame);
    if agent.write_all(&frame).await.is_err() {
        return;
    }
    let drained = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        let mut buf = vec![0u8; 64 << 10];
        while agent.read(&mut buf).await.is_ok_and(|n| n > 0) {}
    })
    .await;
    tracing::warn!(socket = %socket.display(), ended = drained.is_ok(), "ended a sandbox whose run was never recorded");
}

/// [`Sandvisor::reconcile`] on `store` and `home` as `me`, leaving the runs
/// in `spare` alone. A marker that cannot be written is a warning: the row
/// is settled either way.
async fn reconcile(store: &Store, home: &Path, me: HostId, spare: &[i64]) -> Result<Vec<String>> {
    let settled = store.reconcile(me, spare).await?;
    for sandbox in settled.iter().filter(|sandbox| sandbox.run.is_none()) {
        if let Ok(socket) = home::adopt_socket(home, &sandbox.name) {
            dismiss(&socket).await;
        }
    }
    for sandbox in &settled {
        let (Some(marker), Some(run)) = (sandbox.marker(), sandbox.run) else {
            continue;
        };
        // The dead host's tap is gone with it: nothing else writes this log.
        let written = home::log_dir(home, &sandbox.name).and_then(|dir| {
            sandvisor_actors::log::tap::append_system_record(&dir, &marker, run.at).map_err(
                |source| Error::Io {
                    path: dir.join("exec.log"),
                    source,
                },
            )
        });
        if let Err(err) = written {
            tracing::warn!(sandbox = %sandbox.name, %err, "cannot write the stopped marker");
        }
    }
    Ok(settled.into_iter().map(|sandbox| sandbox.name).collect())
}
