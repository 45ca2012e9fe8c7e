//! One control interface for a recorded sandbox, wherever it runs.
//!
//! # Contract
//! A [`crate::SandboxHandle`] acts on its sandbox through [`SandboxControl`],
//! chosen once per call (`SandboxHandle::control`) by where the sandbox runs:
//! - hosted by this runtime: its [`Sandbox`] (messages to the supervisor);
//! - hosted by another runtime that listens on a control socket: [`Remote`],
//!   the [`ControlClient`] bound to the sandbox's name;
//! - running nowhere (never started, or ended): [`Ended`], which answers
//!   from the store.
//!
//! The three answer alike: ending a sandbox that is not running is `Ok` with
//! its stored end (`None` if it never ran); everything else a stopped
//! sandbox cannot do fails with [`Error::SandboxNotRunning`]. [`Remote`]
//! settles what only the store can know: a sandbox that ended on its own
//! while the request travelled, or a host that went away as its sandbox
//! ended (a foreground `sandvisor run` exits with its sandbox), answers with
//! the stored end.
//!
//! **Decision:** a trait object, not an enum matched in every method: each
//! `SandboxHandle` method is one line, and a new kind of host (a daemon
//! reached over the network, say) is one more implementation, not one more
//! arm in eight places.

use std::time::Duration;

use futures::future::BoxFuture;
use sandvisor_actors::metrics::SandboxMetrics;

use super::outcome::{self, SandboxStopResult};
use super::{Sandbox, Sandvisor};
use crate::config::Resources;
use crate::control::ControlClient;
use crate::error::{Error, Result};
use crate::exec::{ExecConfig, ExecHandle};
use crate::files::FileChannel;
use sandvisor_actors::protocol::FileOp;

/// How to end a sandbox.
#[derive(Debug, Clone, Copy)]
pub(crate) enum End {
    /// SIGTERM (or the sandbox's stop signal), SIGKILL after the grace
    /// period (`None`: the sandbox's own).
    Stop(Option<Duration>),
    /// SIGKILL at once.
    Kill,
    /// No new exec sessions; stop once the running ones finish, or after
    /// the grace period.
    Drain(Option<Duration>),
}

/// What a [`crate::SandboxHandle`] can ask of its sandbox, wherever it runs.
/// Every method fails as the same-named method of [`Sandbox`] does, plus
/// [`Error::ControlUnreachable`] for a sandbox reached through a socket.
pub(crate) trait SandboxControl: Send + Sync {
    /// Ends the sandbox and waits; `None` if it never ran.
    fn end(&self, how: End) -> BoxFuture<'_, Result<Option<SandboxStopResult>>>;
    /// Sends the end request without waiting.
    fn request_end(&self, how: End) -> BoxFuture<'_, Result<()>>;
    /// Waits for the current run to end (at once if it has).
    fn wait(&self) -> BoxFuture<'_, Result<SandboxStopResult>>;
    /// Freezes the sandbox.
    fn pause(&self) -> BoxFuture<'_, Result<()>>;
    /// Thaws the sandbox.
    fn resume(&self) -> BoxFuture<'_, Result<()>>;
    /// The latest resource sample.
    fn metrics(&self) -> BoxFuture<'_, Result<SandboxMetrics>>;
    /// Changes its resource limits (`resources` already validated).
    fn update(&self, resources: Resources) -> BoxFuture<'_, Result<()>>;
    /// Starts an exec session (`config` already validated).
    fn exec(&self, config: ExecConfig) -> BoxFuture<'_, Result<ExecHandle>>;
    /// Starts a file operation: through the sandbox's agent while it runs,
    /// else on an agent started for it alone (see [`crate::files`]).
    fn files(&self, op: FileOp) -> BoxFuture<'_, Result<FileChannel>>;
    /// The live handle, if the sandbox runs in this runtime.
    fn into_local(self: Box<Self>) -> Result<Sandbox>;
}

impl Sandbox {
    /// Sends an end request to the supervisor without waiting.
    pub(crate) fn request(&self, how: End) {
        match how {
            End::Stop(timeout) => self.request_stop(timeout),
            End::Kill => self.request_kill(),
            End::Drain(timeout) => self.request_drain(timeout),
        }
    }
}

impl SandboxControl for Sandbox {
    fn end(&self, how: End) -> BoxFuture<'_, Result<Option<SandboxStopResult>>> {
        Box::pin(async move {
            self.request(how);
            self.wait_until_stopped().await.map(Some)
        })
    }

    fn request_end(&self, how: End) -> BoxFuture<'_, Result<()>> {
        self.request(how);
        Box::pin(async { Ok(()) })
    }

    fn wait(&self) -> BoxFuture<'_, Result<SandboxStopResult>> {
        Box::pin(self.wait_until_stopped())
    }

    fn pause(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(Sandbox::pause(self))
    }

    fn resume(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(Sandbox::resume(self))
    }

    fn metrics(&self) -> BoxFuture<'_, Result<SandboxMetrics>> {
        Box::pin(Sandbox::metrics(self))
    }

    fn update(&self, resources: Resources) -> BoxFuture<'_, Result<()>> {
        Box::pin(Sandbox::update(self, resources))
    }

    fn exec(&self, config: ExecConfig) -> BoxFuture<'_, Result<ExecHandle>> {
        Box::pin(Sandbox::exec(self, config))
    }

    fn files(&self, op: FileOp) -> BoxFuture<'_, Result<FileChannel>> {
        Box::pin(self.open_files(op))
    }

    fn into_local(self: Box<Self>) -> Result<Sandbox> {
        Ok(*self)
    }
}

/// A sandbox hosted by another runtime, reached through its control socket.
pub(crate) struct Remote {
    pub(crate) client: ControlClient,
    pub(crate) name: String,
    /// This runtime, for the store.
    pub(crate) runtime: Sandvisor,
}

impl SandboxControl for Remote {
    fn end(&self, how: End) -> BoxFuture<'_, Result<Option<SandboxStopResult>>> {
        Box::pin(async move {
            let name = self.name.as_str();
            let ended = match how {
                End::Stop(timeout) => self.client.stop(name, timeout).await,
                End::Kill => self.client.kill(name).await,
                End::Drain(timeout) => self.client.drain(name, timeout).await,
            };
            match ended {
                Ok(result) => Ok(Some(result)),
                // It ended on its own meanwhile.
                Err(Error::SandboxNotRunning(_)) => self.runtime.stop_result_from_store(name).await,
                // The host went away (a foreground run exits as its sandbox
                // ends): what the store says decides.
                Err(err @ Error::ControlUnreachable { .. }) => {
                    match self.runtime.stop_result_from_store(name).await? {
                        Some(result) => Ok(Some(result)),
                        None => Err(err),
                    }
                }
                Err(err) => Err(err),
            }
        })
    }

    fn request_end(&self, how: End) -> BoxFuture<'_, Result<()>> {
        let (what, timeout) = match how {
            End::Stop(timeout) => ("stop", timeout),
            End::Kill => ("kill", None),
            End::Drain(timeout) => ("drain", timeout),
        };
        Box::pin(self.client.request_end(&self.name, what, timeout))
    }

    fn wait(&self) -> BoxFuture<'_, Result<SandboxStopResult>> {
        Box::pin(async move {
            match self.client.wait(&self.name).await {
                Err(Error::SandboxNotRunning(_)) => {
                    outcome::stored_end(&self.runtime.inner.store, &self.name).await
                }
                other => other,
            }
        })
    }

    fn pause(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.client.pause(&self.name))
    }

    fn resume(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.client.resume(&self.name))
    }

    fn metrics(&self) -> BoxFuture<'_, Result<SandboxMetrics>> {
        Box::pin(self.client.metrics(&self.name))
    }

    fn update(&self, resources: Resources) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move { self.client.update(&self.name, &resources).await })
    }

    fn exec(&self, config: ExecConfig) -> BoxFuture<'_, Result<ExecHandle>> {
        Box::pin(async move { self.client.exec(&self.name, &config).await })
    }

    fn files(&self, op: FileOp) -> BoxFuture<'_, Result<FileChannel>> {
        Box::pin(async move { self.client.files(&self.name, &op).await })
    }

    fn into_local(self: Box<Self>) -> Result<Sandbox> {
        Err(Error::SandboxNotHosted(self.name))
    }
}

/// A sandbox that runs nowhere: never started, or its run has ended.
pub(crate) struct Ended {
    pub(crate) name: String,
    /// This runtime, for the store.
    pub(crate) runtime: Sandvisor,
}

impl Ended {
    fn not_running<T: Send + 'static>(&self) -> BoxFuture<'static, Result<T>> {
        let err = Error::SandboxNotRunning(self.name.clone());
        Box::pin(async move { Err(err) })
    }
}

impl SandboxControl for Ended {
    fn end(&self, _how: End) -> BoxFuture<'_, Result<Option<SandboxStopResult>>> {
        Box::pin(self.runtime.stop_result_from_store(&self.name))
    }

    fn request_end(&self, _how: End) -> BoxFuture<'_, Result<()>> {
        Box::pin(async { Ok(()) })
    }

    fn wait(&self) -> BoxFuture<'_, Result<SandboxStopResult>> {
        Box::pin(outcome::stored_end(&self.runtime.inner.store, &self.name))
    }

    fn pause(&self) -> BoxFuture<'_, Result<()>> {
        self.not_running()
    }

    fn resume(&self) -> BoxFuture<'_, Result<()>> {
        self.not_running()
    }

    fn metrics(&self) -> BoxFuture<'_, Result<SandboxMetrics>> {
        self.not_running()
    }

    fn update(&self, _resources: Resources) -> BoxFuture<'_, Result<()>> {
        self.not_running()
    }

    fn exec(&self, _config: ExecConfig) -> BoxFuture<'_, Result<ExecHandle>> {
        self.not_running()
    }

    fn files(&self, op: FileOp) -> BoxFuture<'_, Result<FileChannel>> {
        Box::pin(self.runtime.detached_files(&self.name, op))
    }

    fn into_local(self: Box<Self>) -> Result<Sandbox> {
        Err(Error::SandboxNotRunning(self.name))
    }
}
