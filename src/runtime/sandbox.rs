//! [`Sandbox`]: a running sandbox of this runtime, driven through its
//! supervisor actor.
//!
//! # Contract
//! - Every request is one message to the sandbox's `SandboxSupervisor`:
//!   requests that wait (`stop`, `kill`, `drain`, `wait_until_stopped`) are
//!   answered from the supervisor's exit message; the `request_*` methods
//!   cast and return.
//! - A supervisor that is gone means the run has ended: stop and kill
//!   requests are then no-ops, status and the end come from the store, and
//!   everything else fails with [`Error::SandboxNotRunning`].
//! - Input to the main command (session [`MAIN_SESSION`]) is checked against
//!   the sandbox's stored `stdin` / `tty`, read once per handle.

use std::sync::Arc;
use std::time::Duration;

use ractor::ActorRef;
use sandvisor_actors::events::EventSink;
use sandvisor_actors::host::cgroup::{self, LimitsUpdate};
use sandvisor_actors::lifecycle::SandboxStatus;
use sandvisor_actors::metrics::SandboxMetrics;
use sandvisor_actors::sandbox::{ExecItem, ExecRefused, SessionInput};
use sandvisor_actors::sandbox::{MetricsUnavailable, SupervisorMsg, UpdateRefused};
use tokio::sync::mpsc;

use sandvisor_actors::protocol::{CommandSpec, ExecSpec, FileOp, Ids};

use super::outcome::SandboxStopResult;
use super::{spec, Sandvisor};
use crate::config::{check_user, parse_user, Resources};
use crate::error::{Error, Result};
use crate::exec::{ExecConfig, ExecHandle, SessionLink};
use crate::files::FileChannel;
use crate::logs::{LogEntry, LogOptions, LogStream, LogStreamOptions};

/// The main command's session id (exec sessions count on from 2).
const MAIN_SESSION: u64 = 1;

/// Whether the main command reads stdin / runs on a terminal, and the
/// user exec sessions run as by default.
#[derive(Debug, Clone, Copy)]
struct MainIo {
    stdin: bool,
    tty: bool,
    /// The sandbox's `user`.
    user: Option<Ids>,
    /// Whether it has a user namespace (exec users must be mapped in it).
    user_namespace: bool,
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
    /// The sandbox `name` of `runtime`, supervised by `supervisor`.
    pub(super) fn new(name: &str, supervisor: ActorRef<SupervisorMsg>, runtime: Sandvisor) -> Self {
        Self {
            name: name.to_string(),
            supervisor,
            runtime,
            main_io: Arc::default(),
        }
    }

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
    ///
    /// # Errors
    /// [`Error::Internal`] if the supervisor has stopped (the run has ended:
    /// there are no more events).
    pub fn subscribe(&self, sink: EventSink) -> Result<()> {
        self.supervisor
            .cast(SupervisorMsg::Subscribe(sink))
            .map_err(|_| Error::Internal(format!("{} has stopped: no more events", self.name)))
    }

    /// The current status.
    ///
    /// # Errors
    /// Only once the supervisor is gone, when the status is read from the
    /// store: [`Error::SandboxNotFound`] if the sandbox was removed
    /// meanwhile, [`Error::Database`] if the store cannot be read.
    pub async fn status(&self) -> Result<SandboxStatus> {
        match ractor::call!(self.supervisor, SupervisorMsg::Status) {
            Ok(status) => Ok(status),
            // The supervisor is gone: the run ended and the store knows how.
            Err(_) => Ok(self.runtime.get(&self.name).await?.status_snapshot()),
        }
    }

    /// Stops with the sandbox's stop timeout and waits until it has stopped.
    ///
    /// # Errors
    /// As [`Self::wait_until_stopped`].
    ///
    /// # Cancel safety
    /// The stop is requested on the first poll; dropping the future then
    /// stops only the waiting, not the stop.
    pub async fn stop(&self) -> Result<SandboxStopResult> {
        self.request_stop(None);
        self.wait_until_stopped().await
    }

    /// Stops with `timeout` before SIGKILL (zero kills at once) and waits.
    ///
    /// # Errors
    /// As [`Self::wait_until_stopped`].
    ///
    /// # Cancel safety
    /// As [`Self::stop`].
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
    ///
    /// # Errors
    /// - [`Error::InvalidConfig`] if `config` cannot work (nothing is sent).
    /// - [`Error::SandboxDraining`] if the sandbox is draining.
    /// - [`Error::SandboxNotRunning`] if it is not running (starting,
    ///   stopping, or ended).
    /// - [`Error::ExecFailed`] if the command could not start inside it.
    ///
    /// # Cancel safety
    /// Not cancel-safe: dropped after the supervisor has started the
    /// session, the session runs on with nobody holding its stdin or reading
    /// its live output (which still goes to `exec.log`).
    pub async fn exec(&self, config: ExecConfig) -> Result<ExecHandle> {
        config.validate()?;
        let main = self.main_io().await?;
        if let Some(user) = &config.user {
            check_user(user, main.user_namespace).map_err(|reason| Error::InvalidConfig {
                field: "user".into(),
                reason,
            })?;
        }
        let spec = spec::exec_spec(&config, main.user)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let started = ractor::call!(self.supervisor, |reply| SupervisorMsg::Exec {
            spec,
            timeout: config.timeout,
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
            Err(ExecRefused::Failed {
                errno,
                message,
                exec_failed,
            }) => Err(Error::ExecFailed {
                sandbox: self.name.clone(),
                errno,
                message,
                exec_failed,
            }),
        }
    }

    /// Drains: refuses new exec sessions, lets running ones finish, then
    /// stops (reason DrainRequested); past `timeout` it stops anyway, with
    /// the usual escalation. Waits until the sandbox has stopped.
    ///
    /// # Errors
    /// As [`Self::wait_until_stopped`].
    ///
    /// # Cancel safety
    /// As [`Self::stop`]: the drain goes on without the waiter.
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
    ///
    /// # Errors
    /// - [`Error::SessionClosed`] if the main command has no stdin.
    /// - [`Error::SandboxNotRunning`] if the run has ended.
    /// - [`Error::SandboxNotFound`] / [`Error::Database`] if the sandbox's
    ///   config cannot be read (first input of this handle only).
    pub async fn write_stdin(&self, data: impl Into<Vec<u8>>) -> Result<()> {
        let data = data.into();
        if data.is_empty() {
            return Ok(());
        }
        self.to_main(SessionInput::Stdin(data)).await
    }

    /// Closes the main command's stdin (on a terminal: sends end-of-file).
    ///
    /// # Errors
    /// As [`Self::write_stdin`].
    pub async fn close_stdin(&self) -> Result<()> {
        self.to_main(SessionInput::Stdin(Vec::new())).await
    }

    /// Changes the main command's terminal size (the sandbox needs `tty`).
    ///
    /// # Errors
    /// [`Error::NotATerminal`] if the main command has no terminal;
    /// otherwise as [`Self::write_stdin`].
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
    /// Starts the file operation `op` through the agent, as the sandbox's
    /// user (see [`crate::files`]).
    ///
    /// # Errors
    /// [`Error::SandboxNotRunning`] if the sandbox's run has ended;
    /// [`Error::FileOperationFailed`] if the agent could not start it.
    pub(crate) async fn open_files(&self, op: FileOp) -> Result<FileChannel> {
        let (input, items) = self.file_session(op).await?;
        Ok(FileChannel::running(&self.name, input, items))
    }

    /// [`Self::open_files`] as its two channels: input to the session, its
    /// items back (the control server relays them as they are).
    ///
    /// # Errors
    /// As [`Self::open_files`].
    pub(crate) async fn file_session(
        &self,
        op: FileOp,
    ) -> Result<(
        mpsc::UnboundedSender<SessionInput>,
        mpsc::UnboundedReceiver<ExecItem>,
    )> {
        let main = self.main_io().await?;
        let spec = ExecSpec {
            session: 0,
            logged: false,
            run: CommandSpec {
                stdin: true,
                user: main.user,
                files: Some(op),
                ..CommandSpec::default()
            },
        };
        let (output, items) = mpsc::unbounded_channel();
        let started = ractor::call!(self.supervisor, |reply| SupervisorMsg::Exec {
            spec,
            timeout: None,
            output,
            reply
        })
        .map_err(|_| Error::SandboxNotRunning(self.name.clone()))?;
        let session = match started {
            Ok((id, _pid)) => id,
            Err(ExecRefused::Draining | ExecRefused::NotRunning) => {
                return Err(Error::SandboxNotRunning(self.name.clone()))
            }
            Err(ExecRefused::Failed { message, .. }) => {
                return Err(Error::FileOperationFailed {
                    sandbox: self.name.clone(),
                    path: "/".into(),
                    message,
                })
            }
        };
        let (input, mut inputs) = mpsc::unbounded_channel();
        let supervisor = self.supervisor.clone();
        tokio::spawn(async move {
            while let Some(input) = inputs.recv().await {
                if supervisor
                    .cast(SupervisorMsg::Session { session, input })
                    .is_err()
                {
                    return;
                }
            }
        });
        Ok((input, items))
    }

    async fn main_io(&self) -> Result<MainIo> {
        self.main_io
            .get_or_try_init(|| async {
                let config = self.runtime.get(&self.name).await?.config()?;
                let user = config
                    .user
                    .as_deref()
                    .and_then(parse_user)
                    .map(|(uid, gid)| Ids { uid, gid });
                Ok(MainIo {
                    stdin: config.stdin,
                    tty: config.tty,
                    user,
                    user_namespace: config.isolation.user,
                })
            })
            .await
            .copied()
    }

    /// Freezes every process of the sandbox (SIGSTOP); status Paused. Stop
    /// and kill work while paused.
    ///
    /// # Errors
    /// [`Error::SandboxNotRunning`] if the supervisor refused (the sandbox is
    /// not running: still starting, stopping, or ended).
    ///
    /// # Cancel safety
    /// The request is sent on the first poll; dropped then, the sandbox is
    /// paused all the same.
    pub async fn pause(&self) -> Result<()> {
        let result = ractor::call!(self.supervisor, SupervisorMsg::Pause)
            .map_err(|_| Error::SandboxNotRunning(self.name.clone()))?;
        result.map_err(|_| Error::SandboxNotRunning(self.name.clone()))
    }

    /// The latest resource sample of the whole tree (taken every
    /// `metrics_interval` by the supervisor).
    ///
    /// # Errors
    /// [`Error::MetricsDisabled`] if the sandbox's `metrics_interval` is
    /// `None`; [`Error::SandboxNotRunning`] if it is not running.
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
    ///
    /// # Errors
    /// [`Error::SandboxNotRunning`] if the sandbox is not paused.
    ///
    /// # Cancel safety
    /// As [`Self::pause`].
    pub async fn resume(&self) -> Result<()> {
        let result = ractor::call!(self.supervisor, SupervisorMsg::Resume)
            .map_err(|_| Error::SandboxNotRunning(self.name.clone()))?;
        result.map_err(|_| Error::SandboxNotRunning(self.name.clone()))
    }

    /// Changes the resource limits of the running sandbox: first its cgroup
    /// (through the supervisor, all limits or none), then its stored config,
    /// so later runs (a restart policy's, a `start`) use them too. A limit
    /// set to [`Limit::Default`](crate::Limit::Default) takes this runtime's
    /// default.
    ///
    /// # Errors
    /// - [`Error::InvalidConfig`] for a bad value (see
    ///   [`Resources::validate`]); nothing is changed.
    /// - [`Error::SandboxNotRunning`] if no run is live (starting, waiting
    ///   to restart, ended).
    /// - [`Error::UpdateRefused`] if the run has no cgroup for a limit (it
    ///   started without any limit, or cgroup v1 cannot add a controller)
    ///   or the kernel refused a value; the cgroup is as it was and nothing
    ///   is stored.
    /// - [`Error::Database`] (or another store error) if the config cannot
    ///   be stored; the cgroup's previous limits are put back then.
    ///
    /// # Cancel safety
    /// Not cancel-safe: dropped between the cgroup write and the store
    /// write, the running sandbox has the new limits and the store the old.
    pub async fn update(&self, resources: Resources) -> Result<()> {
        resources.validate()?;
        let store = &self.runtime.inner.store;
        let row = store
            .sandbox(&self.name)
            .await?
            .ok_or_else(|| Error::SandboxNotFound(self.name.clone()))?;
        let old: crate::SandboxConfig =
            serde_json::from_str(&row.config_json).map_err(|e| Error::BadRow {
                name: self.name.clone(),
                reason: format!("its config does not parse: {e}"),
            })?;
        let mut new = old.clone();
        resources.apply_to(&mut new);
        let change = |config: &crate::SandboxConfig| LimitsUpdate {
            memory_bytes: resources
                .memory
                .map(|_| config.memory.resolve(self.runtime.default_memory())),
            pids: resources
                .pids
                .map(|_| config.pids.resolve(self.runtime.default_pids())),
            cpu_quota_us: resources
                .cpus
                .map(|_| config.cpus.and_then(cgroup::cpu_quota_us)),
        };
        self.update_limits(change(&new)).await?;
        if let Err(err) = store.update_resources(&self.name, &resources).await {
            // All or none: the run goes back to the limits the store keeps.
            if let Err(undo) = self.update_limits(change(&old)).await {
                tracing::warn!(sandbox = %self.name, %undo, "limits not put back after the store refused them");
            }
            return Err(err);
        }
        Ok(())
    }

    /// Asks the supervisor to change the running sandbox's limits.
    async fn update_limits(&self, update: LimitsUpdate) -> Result<()> {
        let answer = ractor::call!(self.supervisor, |reply| SupervisorMsg::UpdateLimits {
            update,
            reply
        });
        match answer {
            Ok(Ok(())) => Ok(()),
            Ok(Err(UpdateRefused::Unsupported(reason) | UpdateRefused::Failed(reason))) => {
                Err(Error::UpdateRefused {
                    name: self.name.clone(),
                    reason,
                })
            }
            Ok(Err(UpdateRefused::NotRunning)) | Err(_) => {
                Err(Error::SandboxNotRunning(self.name.clone()))
            }
        }
    }

    /// Kills at once (SIGKILL to every process) and waits.
    ///
    /// # Errors
    /// As [`Self::wait_until_stopped`].
    ///
    /// # Cancel safety
    /// As [`Self::stop`].
    pub async fn kill(&self) -> Result<SandboxStopResult> {
        self.request_kill();
        self.wait_until_stopped().await
    }

    /// Sends the kill request without waiting.
    pub fn request_kill(&self) {
        let _ = self.supervisor.cast(SupervisorMsg::Kill);
    }

    /// Waits for the run to end; driven by the supervisor's exit message.
    ///
    /// # Errors
    /// Only once the supervisor is gone, when the end is read from the
    /// store: [`Error::SandboxNotFound`] if the sandbox was removed,
    /// [`Error::Database`] if the store cannot be read, [`Error::Internal`]
    /// if the store records no end.
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

    /// Reads its logs; see [`crate::Logs::read_logs`].
    ///
    /// # Errors
    /// As [`crate::Logs::read_logs`].
    pub async fn logs(&self, options: &LogOptions) -> Result<Vec<LogEntry>> {
        self.runtime.logs().read_logs(&self.name, options).await
    }

    /// Streams its logs; see [`crate::Logs::log_stream`].
    ///
    /// # Errors
    /// As [`crate::Logs::log_stream`].
    pub async fn log_stream(&self, options: &LogStreamOptions) -> Result<LogStream> {
        self.runtime.logs().log_stream(&self.name, options).await
    }
}
