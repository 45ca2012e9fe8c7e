//! [`SandboxHandle`]: a recorded sandbox, running or not, hosted here or by
//! another runtime.
//!
//! # Contract
//! - The handle holds the sandbox's row as of its last refresh; reading it
//!   (`status_snapshot`, `config`, …) never touches the store.
//! - Each action looks up, at call time, where the sandbox runs and goes
//!   there through one [`SandboxControl`] (see `route`): this runtime's
//!   supervisor, another runtime's control socket, or the store for a
//!   sandbox that runs nowhere. A sandbox recorded as running by a runtime
//!   without a control socket (or by this runtime's own socket, after its
//!   supervisor is gone) cannot be reached: [`Error::SandboxNotHosted`].

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sandvisor_actors::lifecycle::SandboxStatus;
use sandvisor_actors::metrics::SandboxMetrics;

use super::outcome::SandboxStopResult;
use super::route::{End, Ended, Remote, SandboxControl};
use super::{Sandbox, Sandvisor};
use crate::config::SandboxConfig;
use crate::control::ControlClient;
use crate::error::{Error, Result};
use crate::exec::{ExecConfig, ExecHandle};
use crate::home;
use crate::logs::{LogEntry, LogOptions, LogStream, LogStreamOptions};
use crate::store::SandboxRow;

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
    /// The sandbox recorded as `row`, acted on from `runtime`.
    pub(super) fn new(row: SandboxRow, runtime: Sandvisor) -> Self {
        Self { row, runtime }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.row.name
    }

    /// The status as of the last refresh.
    pub fn status_snapshot(&self) -> SandboxStatus {
        self.row.status
    }

    /// Its configuration.
    ///
    /// # Errors
    /// [`Error::BadRow`] if the stored configuration does not parse.
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

    /// Its id-range slot, if it has one.
    pub(crate) fn id_slot(&self) -> Option<u32> {
        self.row.id_slot
    }

    /// The host ids its user namespace maps to (kept across runs, freed by
    /// `remove`); `None` without a user namespace (or before the first start
    /// of a sandbox created by an older sandvisor).
    pub fn id_range(&self) -> Option<sandvisor_actors::protocol::IdRange> {
        self.row.id_slot.map(crate::config::id_range)
    }

    /// The restart its policy waits to make (as of the last refresh):
    /// while it waits the status is `Starting`.
    pub fn pending_restart(&self) -> Option<sandvisor_actors::lifecycle::PendingRestart> {
        self.row
            .restart_pending
            .filter(|_| self.row.status == SandboxStatus::Starting)
    }

    /// The id of the image it was created from, if any.
    pub fn image_id(&self) -> Option<&str> {
        self.row.image_id.as_deref()
    }

    /// Snapshots it as `name` in the home (`snapshots/<name>/`): its
    /// writable layer, config and image (see [`crate::snapshot`]).
    ///
    /// # Errors
    /// [`Error::SnapshotSandboxRunning`] unless it is Created, Stopped or
    /// Crashed (also if it starts while the snapshot is written: nothing is
    /// stored); [`Error::SnapshotExists`]; [`Error::InvalidName`];
    /// [`Error::Io`]; [`Error::Database`].
    pub async fn snapshot(&self, name: &str) -> Result<crate::Snapshot> {
        home::validate_name(name)?;
        self.snapshot_into(name, None).await
    }

    /// As [`Self::snapshot`], written as one archive at `path` (replaced if
    /// it exists) instead of stored; its manifest names it after the
    /// sandbox.
    ///
    /// # Errors
    /// As [`Self::snapshot`].
    pub async fn snapshot_to(&self, path: impl AsRef<Path>) -> Result<crate::Snapshot> {
        self.snapshot_into(&self.row.name.clone(), Some(path.as_ref().to_path_buf()))
            .await
    }

    async fn snapshot_into(
        &self,
        name: &str,
        to: Option<std::path::PathBuf>,
    ) -> Result<crate::Snapshot> {
        let sandbox = self.row.name.as_str();
        // The state now, not as of this handle's last refresh.
        let (status, last_run) = self.runtime.run_state(sandbox).await?;
        if !(status.is_terminal() || status == SandboxStatus::Created) {
            return Err(Error::SnapshotSandboxRunning(sandbox.to_string()));
        }
        let config = self.config()?;
        let manifest = crate::snapshot::SnapshotManifest {
            version: 1,
            name: name.to_string(),
            sandbox: sandbox.to_string(),
            created_at: Utc::now(),
            image: self.image_id().map(|id| crate::snapshot::SnapshotImage {
                reference: config.image.clone(),
                id: id.to_string(),
            }),
            config,
            upper_digest: String::new(),
            upper_bytes: 0,
        };
        let upper = home::sandbox_dir(self.runtime.home(), sandbox)?
            .join(home::FS_DIR)
            .join("upper");
        let snapshots = self.runtime.snapshots();
        let staged = snapshots
            .stage(
                upper,
                self.id_range().map(|ids| ids.first),
                manifest,
                to.is_none(),
            )
            .await?;
        // Started meanwhile: what was written may be torn; it is dropped
        // before anyone sees it.
        let (status, run) = self.runtime.run_state(sandbox).await?;
        if run != last_run || !(status.is_terminal() || status == SandboxStatus::Created) {
            return Err(Error::SnapshotSandboxRunning(sandbox.to_string()));
        }
        staged.publish(&snapshots, to)
    }

    /// Bytes of the files in its writable layer (what it wrote over its
    /// image or base; docker's `SizeRw`): file sizes, links not followed,
    /// each hard-linked file once. 0 before its first run.
    ///
    /// # Errors
    /// [`Error::InvalidName`] never in practice (the name was checked);
    /// unreadable entries are skipped, not errors.
    pub fn writable_layer_bytes(&self) -> Result<u64> {
        let upper = crate::home::sandbox_dir(self.runtime.home(), &self.row.name)?
            .join(crate::home::FS_DIR)
            .join("upper");
        Ok(tree_bytes(&upper))
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
    ///
    /// # Errors
    /// [`Error::SandboxNotFound`] if the sandbox was removed;
    /// [`Error::Database`] if the store cannot be read.
    pub async fn refresh(&mut self) -> Result<()> {
        self.row = self.runtime.get(&self.row.name).await?.row;
        Ok(())
    }

    /// Whether, as of its last refresh, the store records it running but
    /// the process hosting its open run is gone (crashed, killed, or a
    /// zombie): it runs nowhere, and [`Sandvisor::reconcile`] settles it.
    /// `false` while that host lives, and for a sandbox that is not running
    /// or has no run yet.
    ///
    /// # Errors
    /// [`Error::Database`] if the store cannot be read.
    pub async fn host_gone(&self) -> Result<bool> {
        if self.row.status.is_terminal() || self.row.status == SandboxStatus::Created {
            return Ok(false);
        }
        let runs = self.runtime.runs(&self.row.name).await?;
        Ok(runs
            .iter()
            .rev()
            .find(|run| run.terminated_at.is_none())
            .is_some_and(|run| !crate::store::host_alive(run.host)))
    }

    /// Reads its logs.
    ///
    /// # Errors
    /// As [`crate::Logs::read_logs`].
    pub async fn logs(&self, options: &LogOptions) -> Result<Vec<LogEntry>> {
        self.runtime.logs().read_logs(&self.row.name, options).await
    }

    /// Streams its logs.
    ///
    /// # Errors
    /// As [`crate::Logs::log_stream`].
    pub async fn log_stream(&self, options: &LogStreamOptions) -> Result<LogStream> {
        self.runtime
            .logs()
            .log_stream(&self.row.name, options)
            .await
    }

    /// Starts it.
    ///
    /// # Errors
    /// As [`Sandvisor::start`].
    ///
    /// # Cancel safety
    /// As [`Sandvisor::start`].
    pub async fn start(&self) -> Result<Sandbox> {
        self.runtime.start(&self.row.name).await
    }

    /// Where the sandbox runs, as the interface to reach it there: this
    /// runtime, another runtime through its control socket, or nowhere
    /// (never started, or ended).
    async fn control(&self) -> Result<Box<dyn SandboxControl>> {
        let name = self.row.name.clone();
        if let Some(sandbox) = self.runtime.connect(&name).await? {
            return Ok(Box::new(sandbox));
        }
        let mut fresh = self.clone();
        fresh.refresh().await?;
        let status = fresh.row.status;
        if status.is_terminal() || status == SandboxStatus::Created {
            return Ok(Box::new(Ended {
                name,
                runtime: self.runtime.clone(),
            }));
        }
        match fresh.row.control_socket {
            Some(socket) if Some(socket.as_path()) != self.runtime.control_socket() => {
                Ok(Box::new(Remote {
                    client: ControlClient::new(socket),
                    name,
                    runtime: self.runtime.clone(),
                }))
            }
            _ => Err(Error::SandboxNotHosted(name)),
        }
    }

    /// Stops it (Ok if it is not running) and waits; `None` if it never ran.
    ///
    /// # Errors
    /// - [`Error::SandboxNotHosted`] if it runs in a runtime that cannot be
    ///   reached (no control socket).
    /// - [`Error::ControlUnreachable`] if its runtime's control socket does
    ///   not answer and the store records no end.
    /// - [`Error::SandboxNotFound`] if it was removed; [`Error::Database`]
    ///   if the store cannot be read; [`Error::Internal`] if the run ended
    ///   with no recorded result.
    ///
    /// # Cancel safety
    /// The stop is requested before the waiting starts; dropping the future
    /// then stops only the waiting, not the stop.
    pub async fn stop(&self) -> Result<Option<SandboxStopResult>> {
        self.control().await?.end(End::Stop(None)).await
    }

    /// Stops it with `timeout` before SIGKILL and waits.
    ///
    /// # Errors
    /// As [`Self::stop`].
    ///
    /// # Cancel safety
    /// As [`Self::stop`].
    pub async fn stop_with_timeout(&self, timeout: Duration) -> Result<Option<SandboxStopResult>> {
        self.control().await?.end(End::Stop(Some(timeout))).await
    }

    /// Sends a stop request without waiting (Ok if it is not running).
    ///
    /// # Errors
    /// [`Error::SandboxNotHosted`], [`Error::ControlUnreachable`],
    /// [`Error::SandboxNotFound`] and [`Error::Database`] as for
    /// [`Self::stop`].
    pub async fn request_stop(&self, timeout: Option<Duration>) -> Result<()> {
        self.control().await?.request_end(End::Stop(timeout)).await
    }

    /// Pauses it (see [`Sandbox::pause`]).
    ///
    /// # Errors
    /// [`Error::SandboxNotRunning`] if it is not running (or the
    /// supervisor refused); otherwise as [`Self::request_stop`].
    ///
    /// # Cancel safety
    /// As [`Sandbox::pause`].
    pub async fn pause(&self) -> Result<()> {
        self.control().await?.pause().await
    }

    /// A live handle, if the sandbox runs in this runtime.
    ///
    /// # Errors
    /// [`Error::SandboxNotHosted`] if it runs in another runtime;
    /// [`Error::SandboxNotRunning`] if it runs nowhere;
    /// [`Error::SandboxNotFound`] / [`Error::Database`] from the store.
    pub async fn connect(&self) -> Result<Sandbox> {
        self.control().await?.into_local()
    }

    /// Runs a command in it (see [`Sandbox::exec`]), wherever it runs.
    ///
    /// # Errors
    /// As [`Sandbox::exec`], and as [`Self::request_stop`] for reaching it.
    ///
    /// # Cancel safety
    /// Not cancel-safe, as [`Sandbox::exec`]: a session started when the
    /// future is dropped runs on unattended.
    /// Starts the file operation `op` wherever the sandbox is (see
    /// [`crate::files`]).
    pub(crate) async fn open_files(
        &self,
        op: sandvisor_actors::protocol::FileOp,
    ) -> Result<crate::files::FileChannel> {
        self.control().await?.files(op).await
    }

    pub async fn exec(&self, config: ExecConfig) -> Result<ExecHandle> {
        config.validate()?;
        self.control().await?.exec(config).await
    }

    /// Drains it (see [`Sandbox::drain`]); Ok with no result if it is not running.
    ///
    /// # Errors
    /// As [`Self::stop`].
    ///
    /// # Cancel safety
    /// As [`Self::stop`]: the drain goes on without the waiter.
    pub async fn drain(&self, timeout: Option<Duration>) -> Result<Option<SandboxStopResult>> {
        self.control().await?.end(End::Drain(timeout)).await
    }

    /// Sends a drain request without waiting.
    ///
    /// # Errors
    /// As [`Self::request_stop`].
    pub async fn request_drain(&self, timeout: Option<Duration>) -> Result<()> {
        self.control().await?.request_end(End::Drain(timeout)).await
    }

    /// Its latest resource sample (see [`Sandbox::metrics`]).
    ///
    /// # Errors
    /// [`Error::MetricsDisabled`] if its `metrics_interval` is `None`
    /// (decided from the stored config, before anything is asked);
    /// [`Error::SandboxNotRunning`] if it is not running; otherwise as
    /// [`Self::request_stop`].
    pub async fn metrics(&self) -> Result<SandboxMetrics> {
        if self.config()?.metrics_interval.is_none() {
            return Err(Error::MetricsDisabled(self.row.name.clone()));
        }
        self.control().await?.metrics().await
    }

    /// Changes its resource limits (see [`Sandbox::update`]), wherever it
    /// runs; the values are checked here first.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a bad value (nothing is asked);
    /// [`Error::SandboxNotRunning`] if it is not running (a stopped sandbox's
    /// limits are not changed: nothing is stored); otherwise as
    /// [`Sandbox::update`], and as [`Self::request_stop`] for reaching it.
    ///
    /// # Cancel safety
    /// As [`Sandbox::update`].
    pub async fn update(&self, resources: crate::config::Resources) -> Result<()> {
        resources.validate()?;
        self.control().await?.update(resources).await
    }

    /// Resumes it (see [`Sandbox::resume`]).
    ///
    /// # Errors
    /// As [`Self::pause`].
    ///
    /// # Cancel safety
    /// As [`Sandbox::pause`].
    pub async fn resume(&self) -> Result<()> {
        self.control().await?.resume().await
    }

    /// Kills it and waits.
    ///
    /// # Errors
    /// As [`Self::stop`].
    ///
    /// # Cancel safety
    /// As [`Self::stop`].
    pub async fn kill(&self) -> Result<Option<SandboxStopResult>> {
        self.control().await?.end(End::Kill).await
    }

    /// Kills it and waits at most `timeout` for the end.
    ///
    /// # Errors
    /// As [`Self::stop`], and [`Error::Internal`] if it has not ended within
    /// `timeout`.
    ///
    /// # Cancel safety
    /// As [`Self::stop`].
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
    ///
    /// # Errors
    /// As [`Self::request_stop`].
    pub async fn request_kill(&self) -> Result<()> {
        self.control().await?.request_end(End::Kill).await
    }

    /// Waits for the current run to end (returns at once if it has).
    ///
    /// # Errors
    /// [`Error::SandboxNotRunning`] if it never ran; otherwise as
    /// [`Self::stop`].
    pub async fn wait_until_stopped(&self) -> Result<SandboxStopResult> {
        self.control().await?.wait().await
    }

    /// The control socket of the runtime that last started it, if any.
    pub fn control_socket(&self) -> Option<&Path> {
        self.row.control_socket.as_deref()
    }

    /// Removes it.
    ///
    /// # Errors
    /// As [`Sandvisor::remove`].
    ///
    /// # Cancel safety
    /// As [`Sandvisor::remove`].
    pub async fn remove(self) -> Result<()> {
        self.runtime.remove(&self.row.name).await
    }
}

/// Bytes of the regular files under `dir` (links not followed, each inode
/// once).
pub(crate) fn tree_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::HashSet::new();
    let mut total = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                pending.push(entry.path());
            } else if meta.is_file() && seen.insert((meta.dev(), meta.ino())) {
                total += meta.len();
            }
        }
    }
    total
}
