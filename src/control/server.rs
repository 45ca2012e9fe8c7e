//! The control socket's server: one per runtime that opts in.
//!
//! # Contract
//! - The socket is bound before the runtime hands out any sandbox, with mode
//!   `0600`, in a directory of mode `0700` (`run/`) or the home; a lock file
//!   beside it (`<socket>.lock`, held for the server's life) makes two
//!   runtimes on the same path impossible, and a stale socket left by a dead
//!   process is replaced.
//! - A connection whose peer is not this process's user (the home's owner)
//!   is dropped before a byte is read.
//! - The server holds the runtime weakly: it never keeps a runtime alive.
//!   Dropping the runtime stops the server and removes the socket file.
//! - Handlers act only on sandboxes this runtime hosts; they never forward.
//! - Connections are capped, and idle or slow clients timed out, as
//!   [`connections`] says; `create` and `start` refuse with a capacity error
//!   while fewer than [`FD_RESERVE`] descriptors are left to this process.
//! - A stop or drain may wait at most [`MAX_TIMEOUT`]; a longer
//!   `timeout_ms` is refused as invalid, never truncated.

use std::fs::File;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use nix::fcntl::{Flock, FlockArg};
use tokio::net::UnixListener;
use tokio::sync::oneshot;
use tokio_util::codec::Framed;

use super::connections::{self, connection_cap, open_file_limit, Limits, OwnerOnly};
use super::frame::{self, ExecFrame};
use super::{EndRequest, ErrorBody, HostInfo, Started, WaitRequest, EXEC_PROTOCOL, FILES_PROTOCOL};
use crate::config::MAX_TIMEOUT;
use crate::error::{Error, Result};
use crate::exec::{ExecConfig, ExecHandle};
use crate::runtime::{End, Sandbox, SandboxStopResult, Sandvisor, WeakSandvisor};
use sandvisor_actors::protocol::FileOp;
use sandvisor_actors::sandbox::{ExecItem, SessionInput, SupervisorMsg};

/// Largest request body (a sandbox config with a large environment).
const MAX_BODY: usize = 4 << 20;
/// Descriptors kept free for a new sandbox (its pipes, pidfd, log files and
/// their watches in this process), and for the store and the socket.
const FD_RESERVE: u64 = 64;
/// `sun_path` holds 108 bytes with the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

/// A listening control socket; dropping it stops the server and removes the
/// socket file.
pub(crate) struct ControlServer {
    path: PathBuf,
    shutdown: Option<oneshot::Sender<()>>,
    /// The serving task: ends once shut down and every request in flight
    /// has been answered.
    task: Option<tokio::task::JoinHandle<()>>,
    /// Held (not read) for the server's life.
    _lock: Flock<File>,
    lock_path: PathBuf,
}

impl std::fmt::Debug for ControlServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlServer")
            .field("path", &self.path)
            .finish()
    }
}

/// The bound socket, before the runtime it serves exists.
pub(crate) struct Bound {
    path: PathBuf,
    listener: UnixListener,
    owner: u32,
    lock: Flock<File>,
    lock_path: PathBuf,
}

impl Bound {
    /// Binds `path` (see the module contract) for a runtime over `home`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] (`control_socket`) if `path` is too long for
    /// a unix socket or holds something that is not a socket;
    /// [`Error::ControlSocketInUse`] if a live server holds its lock;
    /// [`Error::Io`] if the directory, lock file or socket cannot be made.
    pub(crate) fn bind(path: &Path, home: &Path) -> Result<Self> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::Io { path, source }
        };
        if path.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(Error::InvalidConfig {
                field: "control_socket".into(),
                reason: format!(
                    "{} is longer than {MAX_SOCKET_PATH} bytes, the limit of a unix socket path; use a shorter home",
                    path.display()
                ),
            });
        }
        let dir = path.parent().unwrap_or(home);
        if !dir.exists() {
            crate::home::create_private_dir(dir).map_err(io(dir))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(io(dir))?;
        }
        let lock_path = path.with_extension("sock.lock");
        let lock_file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(crate::home::PRIVATE_FILE_MODE)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        let lock = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock).map_err(|_| {
            Error::ControlSocketInUse {
                socket: path.to_path_buf(),
            }
        })?;
        // Holding the lock, a socket file that is there was left by a
        // process that is gone; anything else there is not ours to delete.
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {
                std::fs::remove_file(path).map_err(io(path))?;
            }
            Ok(_) => {
                return Err(Error::InvalidConfig {
                    field: "control_socket".into(),
                    reason: format!("{} exists and is not a socket", path.display()),
                })
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(io(path)(err)),
        }
        let listener = std::os::unix::net::UnixListener::bind(path).map_err(io(path))?;
        // Another user who connects in the moment before the mode is
        // narrowed is still turned away by the peer-credential check.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io(path))?;
        listener.set_nonblocking(true).map_err(io(path))?;
        let listener = UnixListener::from_std(listener).map_err(io(path))?;
        let owner = nix::unistd::geteuid().as_raw();
        let home_owner = std::fs::metadata(home).map_err(io(home))?.uid();
        if home_owner != owner {
            // Only this process's user may connect: another user who owns
            // the home must not get this user's powers through the socket.
            tracing::warn!(home = %home.display(), home_owner, uid = owner, "the home belongs to another user; only uid {owner} may use the control socket");
        }
        Ok(Self {
            path: path.to_path_buf(),
            listener,
            owner,
            lock,
            lock_path,
        })
    }

    /// The socket's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Starts serving `runtime`.
    pub(crate) fn serve(self, runtime: WeakSandvisor) -> ControlServer {
        let (shutdown, stop) = oneshot::channel::<()>();
        let listener = OwnerOnly {
            listener: self.listener,
            owner: self.owner,
        };
        let limits = Limits {
            cap: connection_cap(),
            max_body: MAX_BODY,
        };
        tracing::debug!(socket = %self.path.display(), cap = limits.cap, "control socket serving");
        let task = tokio::spawn(connections::serve(listener, router(runtime), stop, limits));
        ControlServer {
            path: self.path,
            shutdown: Some(shutdown),
            task: Some(task),
            _lock: self.lock,
            lock_path: self.lock_path,
        }
    }
}

impl ControlServer {
    /// Stops accepting and removes the socket now; the task ends once the
    /// requests in flight are answered.
    pub(crate) fn close(mut self) -> Option<tokio::task::JoinHandle<()>> {
        self.task.take()
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        // Removed while the lock is still held, so no new server's socket is
        // removed by mistake.
        let _ = std::fs::remove_file(&self.path);
        // The lock file goes too where no other runtime can want the same
        // path (a per-process socket); a well-known path keeps its lock file,
        // so that two servers can never lock two different files for it.
        if self.path.parent().and_then(Path::file_name) == Some(super::SOCKET_DIR.as_ref()) {
            let _ = std::fs::remove_file(&self.lock_path);
        }
    }
}

fn router(runtime: WeakSandvisor) -> Router {
    Router::new()
        .route("/v1/host", get(host))
        .route("/v1/sandboxes", post(create))
        .route("/v1/sandboxes/{name}/start", post(start))
        .route("/v1/sandboxes/{name}/stop", post(stop))
        .route("/v1/sandboxes/{name}/kill", post(kill))
        .route("/v1/sandboxes/{name}/drain", post(drain))
        .route("/v1/sandboxes/{name}/wait", post(wait))
        .route("/v1/sandboxes/{name}/pause", post(pause))
        .route("/v1/sandboxes/{name}/resume", post(resume))
        .route("/v1/sandboxes/{name}/update", post(update))
        .route("/v1/sandboxes/{name}/metrics", get(metrics))
        .route("/v1/sandboxes/{name}/exec", post(exec))
        .route("/v1/sandboxes/{name}/files", post(files))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(runtime)
}

/// An error answer: the [`ErrorBody`] as JSON with its status.
struct ApiError(ErrorBody);

impl From<Error> for ApiError {
    fn from(err: Error) -> Self {
        Self(err.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0.status(), Json(self.0)).into_response()
    }
}

type Reply<T> = std::result::Result<T, ApiError>;

fn live(runtime: &WeakSandvisor) -> Reply<Sandvisor> {
    runtime.upgrade().ok_or_else(|| {
        ApiError(ErrorBody::Internal {
            message: "the runtime is shutting down".into(),
        })
    })
}

fn parse<T: serde::de::DeserializeOwned + Default>(body: &Bytes) -> Reply<T> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    parse_required(body)
}

/// The JSON request body as `T`; an empty body is refused.
fn parse_required<T: serde::de::DeserializeOwned>(body: &Bytes) -> Reply<T> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError(ErrorBody::BadRequest {
            message: format!("request body: {e}"),
        })
    })
}

/// The `101` that hands the connection over to `protocol`.
fn switching(protocol: &'static str) -> Reply<Response> {
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, protocol)
        .body(Body::empty())
        .map_err(|e| ApiError(Error::Internal(e.to_string()).into()))
}

/// The sandbox `name` if it runs here; otherwise the error that says why not.
async fn hosted(runtime: &Sandvisor, name: &str) -> Reply<Sandbox> {
    crate::home::validate_name(name)?;
    if let Some(sandbox) = runtime.connect(name).await? {
        return Ok(sandbox);
    }
    let status = runtime.get(name).await?.status_snapshot();
    Err(
        if status.is_terminal() || status == crate::SandboxStatus::Created {
            Error::SandboxNotRunning(name.to_string())
        } else {
            Error::SandboxNotHosted(name.to_string())
        }
        .into(),
    )
}

async fn host(State(runtime): State<WeakSandvisor>) -> Reply<Json<HostInfo>> {
    let runtime = live(&runtime)?;
    Ok(Json(HostInfo {
        pid: std::process::id(),
        home: runtime.home().to_path_buf(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        sandboxes: runtime.hosted().await?,
        unrecorded: runtime.unrecorded_runs().await?,
    }))
}

/// Refuses a new sandbox while this process is short of descriptors: a
/// clear capacity error rather than a sandbox failing half-started.
fn room_for_a_sandbox() -> Result<()> {
    let limit = open_file_limit();
    let at_capacity = |open: String| {
        Err(Error::Internal(format!(
            "this sandvisor process is at capacity: {open} of its {limit} open files are in use; \
             stop some sandboxes, or raise its limit (ulimit -n, or LimitNOFILE= in its unit)"
        )))
    };
    match std::fs::read_dir("/proc/self/fd") {
        Ok(open) => {
            let open = open.count() as u64;
            if open.saturating_add(FD_RESERVE) > limit {
                return at_capacity(open.to_string());
            }
            Ok(())
        }
        Err(err) if err.raw_os_error() == Some(libc::EMFILE) => at_capacity("all".into()),
        // Without /proc the sandbox's own start reports any shortage.
        Err(_) => Ok(()),
    }
}

async fn create(State(runtime): State<WeakSandvisor>, body: Bytes) -> Reply<Response> {
    let runtime = live(&runtime)?;
    room_for_a_sandbox()?;
    let config: crate::SandboxConfig = serde_json::from_slice(&body).map_err(|e| {
        ApiError(ErrorBody::BadRequest {
            message: format!("sandbox config: {e}"),
        })
    })?;
    let sandbox = runtime.create(config).await?;
    let started = Started {
        name: sandbox.name().to_string(),
    };
    Ok((StatusCode::CREATED, Json(started)).into_response())
}

async fn start(
    State(runtime): State<WeakSandvisor>,
    UrlPath(name): UrlPath<String>,
) -> Reply<Json<Started>> {
    let runtime = live(&runtime)?;
    room_for_a_sandbox()?;
    let sandbox = runtime.start(&name).await?;
    Ok(Json(Started {
        name: sandbox.name().to_string(),
    }))
}

/// Ends `name` as `how` says, given the request's grace period.
async fn end(
    weak: &WeakSandvisor,
    name: &str,
    how: fn(Option<Duration>) -> End,
    body: &Bytes,
) -> Reply<Response> {
    let runtime = live(weak)?;
    let request: EndRequest = parse(body)?;
    let timeout = request.timeout_ms.map(Duration::from_millis);
    if let Some(timeout) = timeout.filter(|timeout| *timeout > MAX_TIMEOUT) {
        return Err(Error::InvalidConfig {
            field: "timeout_ms".into(),
            reason: format!(
                "{timeout:?} is longer than {MAX_TIMEOUT:?}, the longest a sandbox may be given to stop"
            ),
        }
        .into());
    }
    let how = how(timeout);
    let sandbox = match hosted(&runtime, name).await {
        Ok(sandbox) => sandbox,
        // Ending a sandbox that has ended is not an error (SPEC §5).
        Err(ApiError(ErrorBody::SandboxNotRunning { .. })) => return stored(&runtime, name).await,
        Err(err) => return Err(err),
    };
    sandbox.request(how);
    if !request.wait {
        return Ok(StatusCode::ACCEPTED.into_response());
    }
    drop(runtime);
    wait_detached(weak, sandbox, request.window_ms.map(Duration::from_millis)).await
}

/// How the last run of `name` ended, as stored (`204` if it never ran).
async fn stored(runtime: &Sandvisor, name: &str) -> Reply<Response> {
    Ok(match runtime.stop_result_from_store(name).await? {
        Some(result) => Json(result).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    })
}

/// Waits for the run's end holding only the supervisor: a waiting client
/// never keeps the runtime alive (dropping it stops the server). Past
/// `window`, answers `202`: still running, ask again.
/// The shortest window a waiting call is held for before `202`.
const MIN_WAIT_WINDOW: Duration = Duration::from_millis(100);

async fn wait_detached(
    weak: &WeakSandvisor,
    sandbox: Sandbox,
    window: Option<Duration>,
) -> Reply<Response> {
    let name = sandbox.name().to_string();
    let supervisor = sandbox.supervisor().clone();
    drop(sandbox);
    // A client asking again in a loop with a tiny window would only spin.
    let window = window.map(|window| window.max(MIN_WAIT_WINDOW));
    match supervisor.call(SupervisorMsg::WaitStopped, window).await {
        Ok(ractor::rpc::CallResult::Success(outcome)) => {
            Ok(Json(SandboxStopResult::from(outcome)).into_response())
        }
        Ok(ractor::rpc::CallResult::Timeout) => Ok(StatusCode::ACCEPTED.into_response()),
        // The supervisor ended first: the store has the outcome.
        Ok(ractor::rpc::CallResult::SenderError) | Err(_) => stored(&live(weak)?, &name).await,
    }
}

async fn stop(
    State(runtime): State<WeakSandvisor>,
    UrlPath(name): UrlPath<String>,
    body: Bytes,
) -> Reply<Response> {
    end(&runtime, &name, End::Stop, &body).await
}

async fn kill(
    State(runtime): State<WeakSandvisor>,
    UrlPath(name): UrlPath<String>,
    body: Bytes,
) -> Reply<Response> {
    end(&runtime, &name, |_| End::Kill, &body).await
}

async fn drain(
    State(runtime): State<WeakSandvisor>,
    UrlPath(name): UrlPath<String>,
    body: Bytes,
) -> Reply<Response> {
    end(&runtime, &name, End::Drain, &body).await
}

async fn wait(
    State(runtime): State<WeakSandvisor>,
    UrlPath(name): UrlPath<String>,
    body: Bytes,
) -> Reply<Response> {
    let weak = runtime;
    let request: WaitRequest = if body.is_empty() {
        WaitRequest::default()
    } else {
        parse(&body)?
    };
    let runtime = live(&weak)?;
    let sandbox = hosted(&runtime, &name).await?;
    drop(runtime);
    wait_detached(&weak, sandbox, request.window_ms.map(Duration::from_millis)).await
}

async fn pause(
    State(runtime): State<WeakSandvisor>,
    UrlPath(name): UrlPath<String>,
) -> Reply<StatusCode> {
    let runtime = live(&runtime)?;
    hosted(&runtime, &name).await?.pause().await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn resume(
    State(runtime): State<WeakSandvisor>,
    UrlPath(name): UrlPath<String>,
) -> Reply<StatusCode> {
    let runtime = live(&runtime)?;
    hosted(&runtime, &name).await?.resume().await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn update(
    State(runtime): State<WeakSandvisor>,
    UrlPath(name): UrlPath<String>,
    body: Bytes,
) -> Reply<StatusCode> {
    let resources: crate::config::Resources = serde_json::from_slice(&body).map_err(|e| {
        ApiError(ErrorBody::BadRequest {
            message: format!("resources: {e}"),
        })
    })?;
    let runtime = live(&runtime)?;
    hosted(&runtime, &name).await?.update(resources).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn metrics(
    State(runtime): State<WeakSandvisor>,
    UrlPath(name): UrlPath<String>,
) -> Reply<Response> {
    let runtime = live(&runtime)?;
    let metrics = hosted(&runtime, &name).await?.metrics().await?;
    Ok(Json(metrics).into_response())
}

/// Starts the session, then answers `101` and relays it over the upgraded
/// connection (see [`frame`]). A client that goes away closes the session's
/// stdin; the session runs on, its output still in `exec.log`.
async fn exec(
    State(runtime): State<WeakSandvisor>,
    UrlPath(name): UrlPath<String>,
    mut request: Request,
) -> Reply<Response> {
    let runtime = live(&runtime)?;
    let upgrade = hyper::upgrade::on(&mut request);
    let body = request_body(request).await?;
    let config: ExecConfig = parse(&body)?;
    let handle = hosted(&runtime, &name).await?.exec(config).await?;
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                relay(Framed::new(TokioIo::new(upgraded), frame::codec()), handle).await
            }
            Err(err) => {
                tracing::warn!(sandbox = %name, %err, "exec connection was not upgraded; killing the session");
                let _ = handle.kill();
            }
        }
    });
    switching(EXEC_PROTOCOL)
}

/// Starts the file operation, then answers `101` and relays its frames
/// (see [`frame`]) as they are: output and input credits out, input and
/// output acknowledgements in. A client that goes away ends the operation.
async fn files(
    State(runtime): State<WeakSandvisor>,
    UrlPath(name): UrlPath<String>,
    mut request: Request,
) -> Reply<Response> {
    let runtime = live(&runtime)?;
    let upgrade = hyper::upgrade::on(&mut request);
    let body = request_body(request).await?;
    // No default: an empty body names no operation.
    let op: FileOp = parse_required(&body)?;
    let (input, items) = hosted(&runtime, &name).await?.file_session(op).await?;
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                relay_files(
                    Framed::new(TokioIo::new(upgraded), frame::codec()),
                    input,
                    items,
                )
                .await
            }
            Err(err) => {
                tracing::warn!(sandbox = %name, %err, "file connection was not upgraded; ending the operation");
                let _ = input.send(SessionInput::Signal(libc::SIGKILL));
            }
        }
    });
    switching(FILES_PROTOCOL)
}

async fn relay_files<T>(
    framed: Framed<T, tokio_util::codec::LengthDelimitedCodec>,
    input: tokio::sync::mpsc::UnboundedSender<SessionInput>,
    mut items: tokio::sync::mpsc::UnboundedReceiver<ExecItem>,
) where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut inbound) = framed.split();
    // The client is read on a task of its own, as an exec session's is.
    let reader = tokio::spawn(async move {
        while let Some(Ok(bytes)) = inbound.next().await {
            let next = match ExecFrame::decode(bytes.freeze()) {
                Ok(ExecFrame::Stdin(data)) => SessionInput::Stdin(data.to_vec()),
                Ok(ExecFrame::OutputConsumed(bytes)) => SessionInput::OutputConsumed(bytes),
                Ok(ExecFrame::Signal(signo)) => SessionInput::Signal(signo),
                Ok(other) => {
                    tracing::warn!(?other, "a frame a file session does not take ignored");
                    continue;
                }
                Err(why) => {
                    tracing::warn!(%why, "bad file session frame ignored");
                    continue;
                }
            };
            if input.send(next).is_err() {
                return;
            }
        }
        // The client is gone mid-way: the operation would wait for it.
        let _ = input.send(SessionInput::Signal(libc::SIGKILL));
    });
    while let Some(item) = items.recv().await {
        let frame = match item {
            ExecItem::Output { source, data } => ExecFrame::Output { source, data },
            ExecItem::InputTaken { bytes } => ExecFrame::InputTaken(bytes),
            ExecItem::Exited {
                code,
                signal,
                timed_out,
            } => ExecFrame::Exited {
                code,
                signal,
                timed_out,
            },
        };
        if sink.send(frame.encode()).await.is_err() {
            break;
        }
    }
    let _ = sink.close().await;
    reader.abort();
}

async fn relay<T>(
    framed: Framed<T, tokio_util::codec::LengthDelimitedCodec>,
    mut handle: ExecHandle,
) where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut inbound) = framed.split();
    let started = ExecFrame::Started {
        id: handle.id(),
        pid: handle.pid(),
    };
    if sink.send(started.encode()).await.is_err() {
        let _ = handle.close_stdin();
        return;
    }
    // The client's frames are read on a task of their own, so that a client
    // blocked writing stdin is always read even while its output waits to
    // be sent: neither side can wait on the other forever.
    let (frames, mut input) = tokio::sync::mpsc::unbounded_channel();
    let session = handle.id();
    tokio::spawn(async move {
        while let Some(Ok(bytes)) = inbound.next().await {
            match ExecFrame::decode(bytes.freeze()) {
                Ok(frame) => {
                    if frames.send(frame).is_err() {
                        return;
                    }
                }
                Err(why) => tracing::warn!(session, %why, "bad exec frame ignored"),
            }
        }
    });
    loop {
        tokio::select! {
            output = handle.next() => match output {
                Some(output) => {
                    let frame = ExecFrame::Output { source: output.source, data: output.data };
                    if sink.send(frame.encode()).await.is_err() {
                        break;
                    }
                }
                None => {
                    // No status means the sandbox went away: the connection
                    // closes without an exit, as a local handle would end.
                    if let Some(status) = handle.status() {
                        let exited = ExecFrame::Exited {
                            code: status.code,
                            signal: status.signal,
                            timed_out: status.timed_out,
                        };
                        let _ = sink.send(exited.encode()).await;
                    }
                    let _ = sink.close().await;
                    return;
                }
            },
            frame = input.recv() => match frame {
                Some(frame) => deliver(&mut handle, frame),
                None => break,
            },
        }
    }
    // The client is gone.
    let _ = handle.close_stdin();
}

fn deliver(handle: &mut ExecHandle, frame: ExecFrame) {
    // A session that has ended takes no input; that is not the client's error.
    let _ = match frame {
        ExecFrame::Stdin(data) if data.is_empty() => handle.close_stdin(),
        ExecFrame::Stdin(data) => handle.write_stdin(data.to_vec()),
        ExecFrame::Resize { rows, cols } => handle.resize(rows, cols),
        ExecFrame::Signal(signo) => handle.signal(signo),
        other => {
            tracing::warn!(?other, "a server frame from the client ignored");
            Ok(())
        }
    };
}

/// The body of `request`, at most `MAX_BODY` bytes.
async fn request_body(request: Request) -> Reply<bytes::Bytes> {
    axum::body::to_bytes(request.into_body(), MAX_BODY)
        .await
        .map_err(|e| {
            ApiError(ErrorBody::BadRequest {
                message: format!("request body: {e}"),
            })
        })
}
