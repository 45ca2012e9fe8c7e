//! The control server's connections: accepting, capping, timing out.
//!
//! # Contract
//! - At most [`connection_cap`] connections are served at once, sized from
//!   this process's open-file limit (a quarter of it, within
//!   [`MIN_CONNECTIONS`]..=[`MAX_CONNECTIONS`]): clients can never take the
//!   descriptors the sandboxes need.
//! - A full server makes room by closing its oldest *idle* connection (no
//!   request in flight: connected and silent, half a request head sent, or
//!   kept alive after an answer). A client that sends its request promptly
//!   is therefore served promptly however many idle connections there are.
//!   When every connection has a request in flight, a new one is answered
//!   `503` with a capacity error (at most [`MAX_REFUSING`] such answers at
//!   once; beyond that it is closed unanswered).
//! - A request's head must arrive within [`HEADER_TIMEOUT`], counted from
//!   when the connection is ready for it (accepted, or its last answer
//!   sent): this is both the slow-client and the keep-alive idle timeout.
//!   Its body must then arrive within [`BODY_TIMEOUT`] (`408` otherwise) and
//!   be at most `max_body` bytes (`413`). A request being answered has no
//!   time limit (a `stop` waits for its sandbox).
//! - Shutting down stops accepting at once; every connection then finishes
//!   the request it is answering and closes; the serving task ends when the
//!   last one has. An upgraded connection (an exec session) leaves the count
//!   once upgraded: it is the session's, not the server's.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::{service_fn, Service};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, watch};

use super::ErrorBody;

/// How long a request's head may take to arrive (see the module contract).
pub(crate) const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a request's body may take to arrive after its head.
pub(crate) const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// The fewest connections served at once, however low the fd limit.
pub(crate) const MIN_CONNECTIONS: usize = 16;
/// The most connections served at once, however high the fd limit.
pub(crate) const MAX_CONNECTIONS: usize = 4096;
/// Connections being answered "at capacity" at once.
pub(crate) const MAX_REFUSING: usize = 64;

/// How many connections to serve at once: a quarter of the soft open-file
/// limit, within [`MIN_CONNECTIONS`]..=[`MAX_CONNECTIONS`].
pub(crate) fn connection_cap() -> usize {
    let quarter = usize::try_from(open_file_limit() / 4).unwrap_or(MAX_CONNECTIONS);
    quarter.clamp(MIN_CONNECTIONS, MAX_CONNECTIONS)
}

/// This process's soft `RLIMIT_NOFILE` (1,024, the usual default, if it
/// cannot be read).
pub(crate) fn open_file_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only fills the rlimit it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur
    } else {
        1024
    }
}

/// Where connections come from: the listening socket and who may connect.
pub(crate) struct OwnerOnly {
    pub(crate) listener: UnixListener,
    pub(crate) owner: u32,
}

impl OwnerOnly {
    /// The next connection from the user this runtime runs as.
    ///
    /// # Cancel safety
    /// Cancel-safe: a connection accepted and refused is never half-handed.
    async fn accept(&mut self) -> UnixStream {
        loop {
            match self.listener.accept().await {
                Ok((stream, _)) => match stream.peer_cred() {
                    Ok(cred) if cred.uid() == self.owner => return stream,
                    Ok(cred) => tracing::warn!(
                        uid = cred.uid(),
                        pid = ?cred.pid(),
                        "refused a control connection from another user"
                    ),
                    Err(err) => {
                        tracing::warn!(%err, "refused a control connection without credentials")
                    }
                },
                Err(err) => {
                    // Out of descriptors or memory: back off instead of
                    // spinning; connections wait in the backlog meanwhile.
                    tracing::warn!(%err, "control socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// One served connection's entry.
struct Entry {
    /// Requests in flight (0 or 1 over HTTP/1.1 without pipelining).
    busy: usize,
    /// Closes the connection at once.
    evict: Option<oneshot::Sender<()>>,
}

/// The connections being served, oldest first (ids only grow).
#[derive(Default)]
struct Registry {
    next: u64,
    open: BTreeMap<u64, Entry>,
    refusing: usize,
}

/// What to do with a new connection.
enum Admit {
    /// Serve it as connection `id`, until told to close.
    Serve(u64, oneshot::Receiver<()>),
    /// Answer it "at capacity".
    Refuse,
    /// Close it unanswered.
    Drop,
}

type Shared = Arc<Mutex<Registry>>;

fn lock(registry: &Shared) -> std::sync::MutexGuard<'_, Registry> {
    // The registry holds counters only: a panic elsewhere leaves it usable.
    registry.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Registry {
    fn admit(&mut self, cap: usize) -> Admit {
        if self.open.len() >= cap {
            let idle = self
                .open
                .iter()
                .find(|(_, entry)| entry.busy == 0)
                .map(|(id, _)| *id);
            match idle.and_then(|id| self.open.remove(&id)) {
                Some(mut oldest) => {
                    if let Some(evict) = oldest.evict.take() {
                        let _ = evict.send(());
                    }
                }
                None if self.refusing < MAX_REFUSING => {
                    self.refusing += 1;
                    return Admit::Refuse;
                }
                None => return Admit::Drop,
            }
        }
        let id = self.next;
        self.next += 1;
        let (evict, evicted) = oneshot::channel();
        self.open.insert(
            id,
            Entry {
                busy: 0,
                evict: Some(evict),
            },
        );
        Admit::Serve(id, evicted)
    }
}

/// Removes its connection from the registry when the connection ends.
struct Slot {
    registry: Shared,
    id: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        lock(&self.registry).open.remove(&self.id);
    }
}

/// Marks its connection busy while a request is answered.
struct Busy {
    registry: Shared,
    id: u64,
}

impl Busy {
    fn new(registry: &Shared, id: u64) -> Self {
        if let Some(entry) = lock(registry).open.get_mut(&id) {
            entry.busy += 1;
        }
        Self {
            registry: registry.clone(),
            id,
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if let Some(entry) = lock(&self.registry).open.get_mut(&self.id) {
            entry.busy = entry.busy.saturating_sub(1);
        }
    }
}

/// Counts a refusing connection until it is answered.
struct Refusing(Shared);

impl Drop for Refusing {
    fn drop(&mut self) {
        let mut registry = lock(&self.0);
        registry.refusing = registry.refusing.saturating_sub(1);
    }
}

/// The server's limits.
#[derive(Clone, Copy)]
pub(crate) struct Limits {
    /// Connections served at once.
    pub(crate) cap: usize,
    /// The largest request body.
    pub(crate) max_body: usize,
}

/// Serves `router` on `listener` until `stop` fires (or its sender is
/// dropped), then until every connection has finished its request.
///
/// # Cancel safety
/// Not cancel-safe: dropping it mid-way drops the connections with it
/// (their sockets close).
pub(crate) async fn serve(
    mut listener: OwnerOnly,
    router: Router,
    mut stop: oneshot::Receiver<()>,
    limits: Limits,
) {
    let registry = Shared::default();
    // Dropped to tell every connection to finish.
    let (shutdown, shutting_down) = watch::channel(());
    // Every connection holds a clone; all gone means all closed.
    let (alive, mut all_closed) = mpsc::channel::<()>(1);
    let service = TowerToHyperService::new(router);
    loop {
        let stream = tokio::select! {
            stream = listener.accept() => stream,
            _ = &mut stop => break,
        };
        let admitted = lock(&registry).admit(limits.cap);
        match admitted {
            Admit::Serve(id, evicted) => {
                let connection = Connection {
                    registry: registry.clone(),
                    id,
                    service: service.clone(),
                    max_body: limits.max_body,
                };
                let shutting_down = shutting_down.clone();
                let alive = alive.clone();
                tokio::spawn(async move {
                    connection.run(stream, evicted, shutting_down).await;
                    drop(alive);
                });
            }
            Admit::Refuse => {
                tracing::warn!(
                    cap = limits.cap,
                    "control socket at capacity: every connection is busy; refusing one"
                );
                let refusing = Refusing(registry.clone());
                let alive = alive.clone();
                tokio::spawn(async move {
                    refuse(stream, limits.cap).await;
                    drop(refusing);
                    drop(alive);
                });
            }
            Admit::Drop => {
                tracing::warn!(
                    cap = limits.cap,
                    "control socket at capacity and refusing as many as it may; closing one unanswered"
                );
            }
        }
    }
    drop(listener);
    drop(shutdown);
    drop(alive);
    let _ = all_closed.recv().await;
}

/// A builder with the timeouts of the module contract.
fn builder() -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    builder
}

/// One admitted connection.
struct Connection {
    registry: Shared,
    id: u64,
    service: TowerToHyperService<Router>,
    max_body: usize,
}

impl Connection {
    /// Serves the connection until the client closes it, a timeout, an
    /// eviction, or (gracefully) shutdown.
    async fn run(
        self,
        stream: UnixStream,
        evicted: oneshot::Receiver<()>,
        mut shutting_down: watch::Receiver<()>,
    ) {
        let _slot = Slot {
            registry: self.registry.clone(),
            id: self.id,
        };
        let Self {
            registry,
            id,
            service,
            max_body,
        } = self;
        let handler = service_fn(move |request: Request<Incoming>| {
            let busy = Busy::new(&registry, id);
            let service = service.clone();
            async move {
                let response = answer(&service, request, max_body).await;
                drop(busy);
                Ok::<_, Infallible>(response)
            }
        });
        let connection = builder()
            .serve_connection(TokioIo::new(stream), handler)
            .with_upgrades();
        let mut connection = std::pin::pin!(connection);
        tokio::select! {
            // Ended by the client, a timeout or an upgrade; its errors are
            // the client's (a reset, a malformed or late head).
            served = connection.as_mut() => {
                if let Err(err) = served {
                    tracing::debug!(%err, "control connection ended");
                }
            }
            // Evicted while idle: dropping the connection closes it.
            _ = evicted => {}
            _ = shutting_down.changed() => {
                connection.as_mut().graceful_shutdown();
                let _ = connection.await;
            }
        }
    }
}

/// Reads the whole body (within [`BODY_TIMEOUT`] and `max_body`), then lets
/// the router answer.
async fn answer(
    service: &TowerToHyperService<Router>,
    request: Request<Incoming>,
    max_body: usize,
) -> Response {
    let (parts, body) = request.into_parts();
    let body =
        match tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, max_body).collect()).await {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(err)) => {
                let status = if err.is::<http_body_util::LengthLimitError>() {
                    StatusCode::PAYLOAD_TOO_LARGE
                } else {
                    StatusCode::BAD_REQUEST
                };
                return error(status, format!("request body: {err}"));
            }
            Err(_) => {
                return error(
                    StatusCode::REQUEST_TIMEOUT,
                    format!("the request body did not arrive within {BODY_TIMEOUT:?}"),
                )
            }
        };
    // The parts keep the upgrade an exec request needs.
    let request = Request::from_parts(parts, Body::from(body));
    match service.call(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(ErrorBody::BadRequest { message })).into_response()
}

/// Answers every request on `stream` "at capacity", then closes it.
async fn refuse(stream: UnixStream, cap: usize) {
    let handler = service_fn(move |_: Request<Incoming>| async move {
        let body = ErrorBody::Internal {
            message: format!(
                "the control socket is serving its maximum of {cap} connections, all busy; try again"
            ),
        };
        Ok::<_, Infallible>((StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response())
    });
    let mut builder = builder();
    builder.keep_alive(false);
    let _ = builder
        .serve_connection(TokioIo::new(stream), handler)
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve_id(admit: Admit) -> u64 {
        match admit {
            Admit::Serve(id, _) => id,
            _ => panic!("not admitted"),
        }
    }

    #[test]
    fn a_full_registry_evicts_its_oldest_idle_connection() {
        let mut registry = Registry::default();
        let first = registry.admit(2);
        let Admit::Serve(_, mut first_evicted) = first else {
            panic!("not admitted")
        };
        let second = serve_id(registry.admit(2));
        registry.open.get_mut(&second).unwrap().busy = 1;
        let third = serve_id(registry.admit(2));
        assert_eq!(first_evicted.try_recv(), Ok(()));
        assert_eq!(
            registry.open.keys().copied().collect::<Vec<_>>(),
            [second, third]
        );
    }

    #[test]
    fn a_registry_of_busy_connections_refuses_then_drops() {
        let mut registry = Registry::default();
        let only = serve_id(registry.admit(1));
        registry.open.get_mut(&only).unwrap().busy = 1;
        for _ in 0..MAX_REFUSING {
            assert!(matches!(registry.admit(1), Admit::Refuse));
        }
        assert!(matches!(registry.admit(1), Admit::Drop));
        registry.refusing -= 1;
        assert!(matches!(registry.admit(1), Admit::Refuse));
    }

    #[test]
    fn the_cap_follows_the_fd_limit_within_bounds() {
        let cap = connection_cap();
        assert!((MIN_CONNECTIONS..=MAX_CONNECTIONS).contains(&cap));
    }
}
