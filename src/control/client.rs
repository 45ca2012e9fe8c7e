//! The control socket's client: one HTTP/1.1 connection per call.
//!
//! # Errors, for every call
//! - [`Error::ControlUnreachable`]: the socket does not accept within 5 s,
//!   the connection breaks, or (for calls that answer at once) no answer
//!   comes within 30 s.
//! - [`Error::ControlTimedOut`]: a call that waits got no answer in its
//!   bound. Every such call has one: `create` and `start` 2 minutes (the
//!   server's own boot timeout is 30 s), an exec session's start 30 s, and
//!   waiting for a sandbox's end (`stop`, `kill`, `drain`, `wait`) is a
//!   series of calls the server answers within [`WAIT_WINDOW`] (`202`:
//!   still running, asked again), each allowed [`REQUEST_TIMEOUT`] — so
//!   the wait lasts as long as the sandbox takes, yet a wedged host is
//!   noticed within 30 s.
//! - The [`Error`] the serving runtime answered with, shape kept for the
//!   variants of [`ErrorBody`] (e.g. [`Error::SandboxNotRunning`]); any other
//!   failure there, or an answer that does not parse, is [`Error::Internal`].
//! - [`Error::InvalidName`] for a sandbox name that is not valid (nothing is
//!   sent).
//!
//! # Cancel safety
//! Calls that act (all but `host`, `wait` and `metrics`) are not
//! cancel-safe: a request may have reached the server when the future is
//! dropped, and the server carries it out (a stop, a create, an exec) with
//! no one to hear the answer.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::header;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use sandvisor_actors::sandbox::{ExecItem, SessionInput};
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio_util::codec::Framed;

use super::frame::{self, ExecFrame};
use super::{EndRequest, ErrorBody, HostInfo, Started, WaitRequest, EXEC_PROTOCOL, FILES_PROTOCOL};
use crate::config::{Resources, SandboxConfig};
use crate::error::{Error, Result};
use crate::exec::{ExecConfig, ExecHandle, SessionLink};
use crate::runtime::SandboxStopResult;
use sandvisor_actors::metrics::SandboxMetrics;

/// How long connecting may take: a live server accepts at once.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a call that does not wait for a sandbox may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the server holds a call that waits for a sandbox's end before
/// answering "still running": well inside a call's 30 s bound.
pub const WAIT_WINDOW: Duration = Duration::from_secs(20);
/// How long `create` and `start` may take: the server answers once the
/// sandbox runs or failed to boot (a 30 s boot timeout), after validating
/// and recording it.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a [`ControlClient`]'s calls may take (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlTimeouts {
    /// Any one call but `create` and `start` (30 s).
    pub request: Duration,
    /// How long the server holds a call waiting for a sandbox's end before
    /// answering "still running" (20 s); below `request`.
    pub wait_window: Duration,
    /// `create` and `start` (2 minutes).
    pub startup: Duration,
}

impl Default for ControlTimeouts {
    fn default() -> Self {
        Self {
            request: REQUEST_TIMEOUT,
            wait_window: WAIT_WINDOW,
            startup: STARTUP_TIMEOUT,
        }
    }
}

/// Talks to the runtime listening on one control socket.
#[derive(Debug, Clone)]
pub struct ControlClient {
    socket: PathBuf,
    timeouts: ControlTimeouts,
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

impl ControlClient {
    /// A client of the runtime listening on `socket` (nothing is connected yet).
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            timeouts: ControlTimeouts::default(),
        }
    }

    /// This client with other bounds (tests, slow hosts).
    pub fn with_timeouts(mut self, timeouts: ControlTimeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// The socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Who listens, and which sandboxes it runs.
    ///
    /// # Errors
    /// As every call (see the module docs).
    pub async fn host(&self) -> Result<HostInfo> {
        self.quick(self.call(Method::GET, "/v1/host".into(), None))
            .await
    }

    /// Creates and starts a sandbox in that runtime; answers its name.
    ///
    /// # Errors
    /// As every call; the runtime's [`crate::Sandvisor::create`] errors (e.g.
    /// [`Error::SandboxExists`], [`Error::InvalidConfig`], [`Error::BootFailed`]).
    ///
    /// # Cancel safety
    /// Not cancel-safe: see the module docs.
    pub async fn create(&self, config: &SandboxConfig) -> Result<String> {
        let body = to_json(config)?;
        let path = "/v1/sandboxes".to_string();
        let started: Started = self
            .bounded(
                self.timeouts.startup,
                &path,
                self.call(Method::POST, path.clone(), Some(body)),
            )
            .await?;
        Ok(started.name)
    }

    /// Starts a stopped sandbox in that runtime.
    ///
    /// # Errors
    /// As every call; the runtime's [`crate::Sandvisor::start`] errors.
    ///
    /// # Cancel safety
    /// Not cancel-safe: see the module docs.
    pub async fn start(&self, name: &str) -> Result<()> {
        let path = sandbox_path(name, "start")?;
        let _: Started = self
            .bounded(
                self.timeouts.startup,
                &path,
                self.call(Method::POST, path.clone(), None),
            )
            .await?;
        Ok(())
    }

    /// Stops `name` (grace period `timeout`, else its own) and waits.
    ///
    /// # Errors
    /// As every call; [`Error::SandboxNotRunning`] if it never ran;
    /// [`Error::SandboxNotHosted`] if that runtime does not host it.
    ///
    /// # Cancel safety
    /// Not cancel-safe: see the module docs.
    pub async fn stop(&self, name: &str, timeout: Option<Duration>) -> Result<SandboxStopResult> {
        self.end(name, "stop", timeout).await
    }

    /// Kills `name` and waits.
    ///
    /// # Errors
    /// As [`Self::stop`].
    ///
    /// # Cancel safety
    /// Not cancel-safe: see the module docs.
    pub async fn kill(&self, name: &str) -> Result<SandboxStopResult> {
        self.end(name, "kill", None).await
    }

    /// Drains `name` and waits.
    ///
    /// # Errors
    /// As [`Self::stop`].
    ///
    /// # Cancel safety
    /// Not cancel-safe: see the module docs.
    pub async fn drain(&self, name: &str, timeout: Option<Duration>) -> Result<SandboxStopResult> {
        self.end(name, "drain", timeout).await
    }

    /// Sends a stop, kill or drain request (`what`) without waiting.
    ///
    /// # Errors
    /// As every call; [`Error::SandboxNotHosted`] if that runtime does not
    /// host it.
    ///
    /// # Cancel safety
    /// Not cancel-safe: see the module docs.
    pub async fn request_end(
        &self,
        name: &str,
        what: &'static str,
        timeout: Option<Duration>,
    ) -> Result<()> {
        let request = EndRequest {
            timeout_ms: timeout.map(millis),
            wait: false,
            window_ms: None,
        };
        self.quick(self.send(
            Method::POST,
            sandbox_path(name, what)?,
            Some(to_json(&request)?),
        ))
        .await
        .and_then(expect_success)
    }

    /// Waits until `name` has stopped.
    ///
    /// # Errors
    /// As every call; [`Error::SandboxNotRunning`] if it is not running there.
    pub async fn wait(&self, name: &str) -> Result<SandboxStopResult> {
        let path = sandbox_path(name, "wait")?;
        let request = to_json(&WaitRequest {
            window_ms: Some(millis(self.timeouts.wait_window)),
        })?;
        loop {
            let (status, body) = self
                .bounded(
                    self.timeouts.request,
                    &path,
                    self.send(Method::POST, path.clone(), Some(request.clone())),
                )
                .await?;
            match status {
                StatusCode::OK => return parse(&body),
                // Still running: ask again.
                StatusCode::ACCEPTED => continue,
                _ => return Err(error_from(status, &body)),
            }
        }
    }

    /// Freezes `name`.
    ///
    /// # Errors
    /// As every call; [`Error::SandboxNotRunning`] if it is not running there.
    ///
    /// # Cancel safety
    /// Not cancel-safe: see the module docs.
    pub async fn pause(&self, name: &str) -> Result<()> {
        self.quick(self.send(Method::POST, sandbox_path(name, "pause")?, None))
            .await
            .and_then(expect_success)
    }

    /// Thaws `name`.
    ///
    /// # Errors
    /// As every call; [`Error::SandboxNotRunning`] if it is not paused there.
    ///
    /// # Cancel safety
    /// Not cancel-safe: see the module docs.
    pub async fn resume(&self, name: &str) -> Result<()> {
        self.quick(self.send(Method::POST, sandbox_path(name, "resume")?, None))
            .await
            .and_then(expect_success)
    }

    /// Changes the resource limits of `name` (see [`crate::Sandbox::update`]).
    ///
    /// # Errors
    /// As every call; as [`crate::Sandbox::update`] there.
    ///
    /// # Cancel safety
    /// Not cancel-safe: see the module docs.
    pub async fn update(&self, name: &str, resources: &Resources) -> Result<()> {
        let body = serde_json::to_vec(resources).map_err(|e| Error::Internal(e.to_string()))?;
        self.quick(self.send(
            Method::POST,
            sandbox_path(name, "update")?,
            Some(Bytes::from(body)),
        ))
        .await
        .and_then(expect_success)
    }

    /// The latest resource sample of `name`.
    ///
    /// # Errors
    /// As every call; [`Error::MetricsDisabled`], [`Error::SandboxNotRunning`].
    pub async fn metrics(&self, name: &str) -> Result<SandboxMetrics> {
        self.quick(self.call(Method::GET, sandbox_path(name, "metrics")?, None))
            .await
    }

    /// Runs an exec session in `name`; the handle works as a local one.
    ///
    /// # Errors
    /// As every call; as [`crate::Sandbox::exec`] there.
    ///
    /// # Cancel safety
    /// Not cancel-safe: see the module docs.
    pub async fn exec(&self, name: &str, config: &ExecConfig) -> Result<ExecHandle> {
        let path = sandbox_path(name, "exec")?;
        self.bounded(self.timeouts.request, &path, self.exec_start(name, config))
            .await
    }

    /// Starts a file operation on `name` in the hosting process; its
    /// frames are relayed as an exec session's, windowed end to end.
    ///
    /// # Errors
    /// As [`Self::exec`]; the hosting process's errors for the sandbox.
    pub(crate) async fn files(
        &self,
        name: &str,
        op: &sandvisor_actors::protocol::FileOp,
    ) -> Result<crate::files::FileChannel> {
        let path = sandbox_path(name, "files")?;
        self.bounded(self.timeouts.request, &path, self.files_start(name, op))
            .await
    }

    /// Posts `body` to the sandbox's `action` asking for `protocol`; the
    /// upgraded connection once the server answers `101`.
    async fn upgrade(
        &self,
        name: &str,
        action: &str,
        body: Bytes,
        protocol: &'static str,
    ) -> Result<hyper::upgrade::Upgraded> {
        let mut sender = self.connect(true).await?;
        let request = self.request(
            Method::POST,
            sandbox_path(name, action)?,
            Some(body),
            Some(protocol),
        )?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| self.unreachable(e))?;
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            let (status, body) = self.read(response).await?;
            return Err(error_from(status, &body));
        }
        hyper::upgrade::on(response)
            .await
            .map_err(|e| self.unreachable(e))
    }

    /// [`Self::files`] without its bound.
    async fn files_start(
        &self,
        name: &str,
        op: &sandvisor_actors::protocol::FileOp,
    ) -> Result<crate::files::FileChannel> {
        let upgraded = self
            .upgrade(name, "files", to_json(op)?, FILES_PROTOCOL)
            .await?;
        let framed = Framed::new(TokioIo::new(upgraded), frame::codec());
        let (items, items_rx) = mpsc::unbounded_channel();
        let (input, input_rx) = mpsc::unbounded_channel();
        tokio::spawn(bridge(framed, items, input_rx));
        Ok(crate::files::FileChannel::running(name, input, items_rx))
    }

    /// [`Self::exec`] without its bound.
    async fn exec_start(&self, name: &str, config: &ExecConfig) -> Result<ExecHandle> {
        let upgraded = self
            .upgrade(name, "exec", to_json(config)?, EXEC_PROTOCOL)
            .await?;
        let mut framed = Framed::new(TokioIo::new(upgraded), frame::codec());
        let (id, pid) = match framed.next().await {
            Some(Ok(bytes)) => match ExecFrame::decode(bytes.freeze()) {
                Ok(ExecFrame::Started { id, pid }) => (id, pid),
                other => {
                    return Err(Error::Internal(format!(
                        "exec over {}: expected the session's start, got {other:?}",
                        self.socket.display()
                    )))
                }
            },
            _ => {
                return Err(Error::ControlUnreachable {
                    socket: self.socket.clone(),
                    reason: "the exec connection closed before the session started".into(),
                })
            }
        };
        let (items, items_rx) = mpsc::unbounded_channel();
        let (input, input_rx) = mpsc::unbounded_channel();
        tokio::spawn(bridge(framed, items, input_rx));
        Ok(ExecHandle::new(
            config.tty,
            id,
            pid,
            items_rx,
            SessionLink::Remote(input),
            name.to_string(),
            config.stdin,
        ))
    }

    async fn end(
        &self,
        name: &str,
        what: &'static str,
        timeout: Option<Duration>,
    ) -> Result<SandboxStopResult> {
        let request = EndRequest {
            timeout_ms: timeout.map(millis),
            wait: true,
            window_ms: Some(millis(self.timeouts.wait_window)),
        };
        let path = sandbox_path(name, what)?;
        let (status, body) = self
            .bounded(
                self.timeouts.request,
                &path,
                self.send(Method::POST, path.clone(), Some(to_json(&request)?)),
            )
            .await?;
        match status {
            StatusCode::OK => parse(&body),
            // Asked, and still ending (a long grace period, a drain): wait
            // for the end in bounded calls.
            StatusCode::ACCEPTED => self.wait(name).await,
            // It never ran: nothing to report.
            StatusCode::NO_CONTENT => Err(Error::SandboxNotRunning(name.to_string())),
            _ => Err(error_from(status, &body)),
        }
    }

    /// `request`, a call that waits, failed with [`Error::ControlTimedOut`]
    /// after `after`.
    async fn bounded<T>(
        &self,
        after: Duration,
        call: &str,
        request: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        tokio::time::timeout(after, request)
            .await
            .unwrap_or_else(|_| {
                Err(Error::ControlTimedOut {
                    socket: self.socket.clone(),
                    call: format!("POST {call}"),
                    after,
                })
            })
    }

    /// `request` for a call that answers at once: a host that does not
    /// answer within [`REQUEST_TIMEOUT`] (stopped, wedged) is unreachable.
    async fn quick<T>(&self, request: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        let after = self.timeouts.request;
        tokio::time::timeout(after, request)
            .await
            .unwrap_or_else(|_| Err(self.unreachable(format!("no answer within {after:?}"))))
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: String,
        body: Option<Bytes>,
    ) -> Result<T> {
        let (status, body) = self.send(method, path, body).await?;
        if status.is_success() {
            parse(&body)
        } else {
            Err(error_from(status, &body))
        }
    }

    async fn send(
        &self,
        method: Method,
        path: String,
        body: Option<Bytes>,
    ) -> Result<(StatusCode, Bytes)> {
        let mut sender = self.connect(false).await?;
        let request = self.request(method, path, body, None)?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| self.unreachable(e))?;
        self.read(response).await
    }

    /// A response's status and whole body.
    async fn read(
        &self,
        response: hyper::Response<hyper::body::Incoming>,
    ) -> Result<(StatusCode, Bytes)> {
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| self.unreachable(e))?
            .to_bytes();
        Ok((status, body))
    }

    async fn connect(&self, upgrades: bool) -> Result<Sender> {
        let stream =
            match tokio::time::timeout(CONNECT_TIMEOUT, UnixStream::connect(&self.socket)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(err)) => return Err(self.unreachable(err)),
                Err(_) => return Err(self.unreachable("connecting timed out")),
            };
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.unreachable(e))?;
        tokio::spawn(async move {
            // Errors surface on the request that the connection carried.
            if upgrades {
                let _ = connection.with_upgrades().await;
            } else {
                let _ = connection.await;
            }
        });
        Ok(sender)
    }

    fn request(
        &self,
        method: Method,
        path: String,
        body: Option<Bytes>,
        upgrade: Option<&'static str>,
    ) -> Result<Request<Full<Bytes>>> {
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "sandvisor")
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(protocol) = upgrade {
            builder = builder
                .header(header::CONNECTION, "upgrade")
                .header(header::UPGRADE, protocol);
        }
        builder
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|e| Error::Internal(format!("control request: {e}")))
    }

    fn unreachable(&self, err: impl std::fmt::Display) -> Error {
        Error::ControlUnreachable {
            socket: self.socket.clone(),
            reason: err.to_string(),
        }
    }
}

/// Moves frames between the upgraded connection and the [`ExecHandle`]'s
/// channels until the session exits or either side goes away. Reading and
/// writing are separate tasks, so output is always read while stdin waits
/// to be sent.
async fn bridge<T>(
    framed: Framed<T, tokio_util::codec::LengthDelimitedCodec>,
    items: mpsc::UnboundedSender<ExecItem>,
    mut input: mpsc::UnboundedReceiver<SessionInput>,
) where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut frames) = framed.split();
    tokio::spawn(async move {
        while let Some(next) = input.recv().await {
            let frame = match next {
                SessionInput::Stdin(data) => ExecFrame::Stdin(Bytes::from(data)),
                SessionInput::Resize { rows, cols } => ExecFrame::Resize { rows, cols },
                SessionInput::Signal(signo) => ExecFrame::Signal(signo),
                SessionInput::OutputConsumed(bytes) => ExecFrame::OutputConsumed(bytes),
                // The hosting supervisor keeps the deadline; a caller never
                // sends this.
                SessionInput::Expire => continue,
            };
            if sink.send(frame.encode()).await.is_err() {
                return;
            }
        }
        // The handle was dropped: nothing more to send.
    });
    while let Some(frame) = frames.next().await {
        let item = match frame.map(|bytes| ExecFrame::decode(bytes.freeze())) {
            Ok(Ok(ExecFrame::Output { source, data })) => ExecItem::Output { source, data },
            Ok(Ok(ExecFrame::InputTaken(bytes))) => ExecItem::InputTaken { bytes },
            Ok(Ok(ExecFrame::Exited {
                code,
                signal,
                timed_out,
            })) => {
                let _ = items.send(ExecItem::Exited {
                    code,
                    signal,
                    timed_out,
                });
                return;
            }
            Ok(Ok(other)) => {
                tracing::warn!(?other, "unexpected exec frame from the server ignored");
                continue;
            }
            // A broken connection ends the handle's stream with no status,
            // as when a sandbox is lost.
            Ok(Err(_)) | Err(_) => return,
        };
        if items.send(item).is_err() {
            return;
        }
    }
}

/// `timeout` in whole milliseconds; one too long for a `u64` saturates (the
/// server refuses it) rather than wrapping to a short one.
fn millis(timeout: Duration) -> u64 {
    u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX)
}

fn sandbox_path(name: &str, action: &str) -> Result<String> {
    // A valid name needs no escaping in a URL path.
    crate::home::validate_name(name)?;
    Ok(format!("/v1/sandboxes/{name}/{action}"))
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<Bytes> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| Error::Internal(format!("control request: {e}")))
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T> {
    serde_json::from_slice(body)
        .map_err(|e| Error::Internal(format!("control answer does not parse: {e}")))
}

fn expect_success((status, body): (StatusCode, Bytes)) -> Result<()> {
    if status.is_success() {
        Ok(())
    } else {
        Err(error_from(status, &body))
    }
}

fn error_from(status: StatusCode, body: &[u8]) -> Error {
    serde_json::from_slice::<ErrorBody>(body)
        .map(Error::from)
        .unwrap_or_else(|_| {
            Error::Internal(format!(
                "control socket answered {status}: {}",
                String::from_utf8_lossy(body)
            ))
        })
}
