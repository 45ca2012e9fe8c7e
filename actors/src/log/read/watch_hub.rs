//! The process-wide filesystem watcher.
//!
//! One inotify instance serves every reader in the process (the kernel allows
//! 128 per user). It watches directories, never files: a watch on a file
//! follows that file through a rename, which is exactly what rotation does.
//! Directories are reference-counted: the watch is added with the first reader
//! of a directory and removed with the last.
//!
//! # Messages
//! - [`WatchHubMsg::Watch`] from a tailer: register a waker for a directory.
//! - [`WatchHubMsg::Unwatch`] from a [`WatchGuard`] being dropped (with the
//!   tailer's state, however the tailer ended).
//! - [`WatchHubMsg::Writer`] from [`claim_writer`] (a RelayTap starting) and
//!   [`WatchHubMsg::WriterGone`] from its [`WriterGuard`] being dropped.
//!
//! Events are not messages: notify's thread wakes the readers of the
//! directory an event names itself, through the registry the hub keeps (a
//! read lock), so that an append reaches its readers with one thread hop,
//! not two; a writer in this process ([`wake_readers_of`]) wakes them itself
//! right after its write, with no thread hop at all. A rescan or overflow signal, or a watcher error, wakes every
//! reader, since events may have been lost.
//!
//! A directory whose only writer is in this process (a [`WriterGuard`] is
//! held for it) has no inotify watch at all, even with readers: the writer's
//! own wakes cover them, and a watched directory makes every `write(2)` into
//! it queue an event and wake notify's thread — on this kind of virtual
//! machine that doubled the writer's p50 and added tens of microseconds to
//! each follow. Anything else written there meanwhile (a CLI note in
//! `runtime.log`) is found by the readers' poll; when the writer goes the
//! watch comes back and its readers are woken once to re-check.
//!
//! Wakers are expected to coalesce (a reader woken twice before it ran reads
//! once), so a burst of writes costs a reader one read, not one per event.
//!
//! The hub runs on a thread of its own with its own tokio runtime, so that it
//! outlives any one caller's runtime (tests run many runtimes in one process).
//! Readers also poll at least every 250 ms, so a lost event delays them by at
//! most one poll interval.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

/// Called by the hub to wake a reader; must be cheap and must not block.
pub type Waker = Arc<dyn Fn() + Send + Sync>;

/// Registration id.
pub type WatchId = u64;

/// Why a directory cannot be watched. Readers of it then rely on polling.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WatchError {
    /// The directory's path could not be resolved (`canonicalize` failed:
    /// typically it does not exist).
    #[error("cannot resolve {dir}: {error}")]
    Resolve {
        /// The directory as the reader named it.
        dir: PathBuf,
        /// What the OS said.
        error: String,
    },
    /// The watcher refused to watch the directory (for example the inotify
    /// watch limit was reached).
    #[error("cannot watch {dir}: {error}")]
    AddWatch {
        /// The resolved directory.
        dir: PathBuf,
        /// What notify said.
        error: String,
    },
}

/// Messages of the [`WatchHub`].
pub enum WatchHubMsg {
    /// Wake `waker` on every change in `dir`. Replies with the registration id.
    Watch {
        /// The directory.
        dir: PathBuf,
        /// Called on changes.
        waker: Waker,
        /// The registration, or why the directory cannot be watched.
        reply: RpcReplyPort<Result<WatchId, WatchError>>,
    },
    /// Drop a registration.
    Unwatch(WatchId),
    /// A writer in this process is the only writer of the directory (a
    /// canonical path) until the matching [`WatchHubMsg::WriterGone`].
    Writer(PathBuf),
    /// That writer is gone.
    WriterGone(PathBuf),
    /// Counts, for tests and diagnostics.
    Stats(RpcReplyPort<HubStats>),
}

/// What the hub is watching.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HubStats {
    /// Directories watched.
    pub dirs: usize,
    /// Registered readers.
    pub readers: usize,
    /// Directories with an inotify watch (those with readers and no writer
    /// in this process).
    pub watched: usize,
}

/// The watcher actor. See the module docs.
pub struct WatchHub;

/// The wakers of each watched directory (by canonical path): written by
/// the hub, read by notify's thread and by writers in this process.
type Registry = RwLock<HashMap<PathBuf, HashMap<WatchId, Waker>>>;

/// The process's registry.
fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Registry::default)
}

/// Wakes the readers of `dir` (a canonical path) in this process at once.
///
/// Called by a writer in this process right after it appended to a log in
/// `dir` (the RelayTap): its readers then run on the writer's worker next,
/// without waiting for inotify's event to cross notify's thread. Readers in
/// other processes still learn of it from inotify. Cheap when nobody reads
/// `dir`: one read lock and one lookup.
pub fn wake_readers_of(dir: &Path) {
    let dirs = registry().read().unwrap_or_else(PoisonError::into_inner);
    if let Some(readers) = dirs.get(dir) {
        readers.values().for_each(|wake| wake());
    }
}

/// The hub's state.
pub struct HubState {
    watcher: Option<RecommendedWatcher>,
    dirs: &'static Registry,
    ids: HashMap<WatchId, PathBuf>,
    next_id: WatchId,
    /// Writers in this process per directory.
    writers: HashMap<PathBuf, usize>,
    /// Directories notify watches.
    watched: HashSet<PathBuf>,
}

/// Wakes the readers an event concerns (all of them when events may have
/// been lost). Runs on notify's thread.
fn wake(dirs: &Registry, event: notify::Result<notify::Event>) {
    // A waker never panics while the lock is held; a poisoned lock still
    // holds a usable registry.
    let dirs = dirs.read().unwrap_or_else(PoisonError::into_inner);
    let wake_dir = |dir: &Path| {
        if let Some(readers) = dirs.get(dir) {
            readers.values().for_each(|wake| wake());
        }
    };
    match event {
        Ok(event) if !event.need_rescan() => {
            for path in &event.paths {
                if let Some(parent) = path.parent() {
                    wake_dir(parent);
                }
                wake_dir(path);
            }
        }
        Ok(_) => dirs
            .values()
            .flat_map(HashMap::values)
            .for_each(|wake| wake()),
        Err(err) => {
            tracing::debug!(%err, "watcher error; waking every reader");
            dirs.values()
                .flat_map(HashMap::values)
                .for_each(|wake| wake());
        }
    }
}

impl Actor for WatchHub {
    type Msg = WatchHubMsg;
    type State = HubState;
    type Arguments = ();

    async fn pre_start(
        &self,
        _: ActorRef<Self::Msg>,
        _: (),
    ) -> Result<HubState, ActorProcessingErr> {
        let dirs = registry();
        let watcher = notify::recommended_watcher(move |event| wake(dirs, event));
        let watcher = match watcher {
            Ok(watcher) => Some(watcher),
            Err(err) => {
                tracing::warn!(%err, "no filesystem notifications; log readers fall back to polling");
                None
            }
        };
        Ok(HubState {
            watcher,
            dirs,
            ids: HashMap::new(),
            next_id: 1,
            writers: HashMap::new(),
            watched: HashSet::new(),
        })
    }

    async fn handle(
        &self,
        _: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut HubState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            WatchHubMsg::Watch { dir, waker, reply } => {
                let result = watch(state, dir, waker);
                let registered = result.as_ref().ok().copied();
                if reply.send(result).is_err() {
                    // The caller stopped waiting: nobody holds a guard for it.
                    if let Some(id) = registered {
                        unwatch(state, id);
                    }
                }
            }
            WatchHubMsg::Unwatch(id) => unwatch(state, id),
            WatchHubMsg::Writer(dir) => {
                *state.writers.entry(dir.clone()).or_default() += 1;
                settle(state, &dir);
            }
            WatchHubMsg::WriterGone(dir) => {
                if let Some(count) = state.writers.get_mut(&dir) {
                    *count -= 1;
                    if *count == 0 {
                        state.writers.remove(&dir);
                    }
                }
                if settle(state, &dir) == Settled::Added {
                    // Another process may have written while nobody watched.
                    wake_readers_of(&dir);
                }
            }
            WatchHubMsg::Stats(reply) => {
                let dirs = state
                    .dirs
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .len();
                let _ = reply.send(HubStats {
                    dirs,
                    readers: state.ids.len(),
                    watched: state.watched.len(),
                });
            }
        }
        Ok(())
    }
}

// The registry's lock is never held while notify is called: notify's
// `watch` and `unwatch` wait for its own thread, which may be waiting for the
// lock in `wake`. The hub is the registry's only writer, so nothing changes
// it between a look and the write that follows.

fn unwatch(state: &mut HubState, id: WatchId) {
    let Some(dir) = state.ids.remove(&id) else {
        return;
    };
    {
        let mut dirs = state.dirs.write().unwrap_or_else(PoisonError::into_inner);
        let now_empty = dirs.get_mut(&dir).is_some_and(|readers| {
            readers.remove(&id);
            readers.is_empty()
        });
        if now_empty {
            dirs.remove(&dir);
        }
    }
    settle(state, &dir);
}

/// What [`settle`] did to a directory's watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settled {
    /// It added the watch.
    Added,
    /// Nothing, or it removed the watch.
    NotAdded,
}

/// Gives `dir` an inotify watch exactly when it has readers and no writer in
/// this process.
///
/// # Errors
/// Why the watch could not be added (the readers then poll).
fn try_settle(state: &mut HubState, dir: &Path) -> Result<Settled, WatchError> {
    let has_readers = state
        .dirs
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .contains_key(dir);
    let wanted = has_readers && !state.writers.contains_key(dir);
    let Some(watcher) = state.watcher.as_mut() else {
        return Ok(Settled::NotAdded);
    };
    match (wanted, state.watched.contains(dir)) {
        (true, false) => {
            watcher
                .watch(dir, RecursiveMode::NonRecursive)
                .map_err(|e| WatchError::AddWatch {
                    dir: dir.to_path_buf(),
                    error: e.to_string(),
                })?;
            state.watched.insert(dir.to_path_buf());
            Ok(Settled::Added)
        }
        (false, true) => {
            state.watched.remove(dir);
            // The directory may be gone already, which removed the watch.
            let _ = watcher.unwatch(dir);
            Ok(Settled::NotAdded)
        }
        _ => Ok(Settled::NotAdded),
    }
}

/// [`try_settle`], logging a watch that could not be added.
fn settle(state: &mut HubState, dir: &Path) -> Settled {
    try_settle(state, dir).unwrap_or_else(|err| {
        tracing::debug!(%err, "directory not watched; polling only");
        Settled::NotAdded
    })
}

fn watch(state: &mut HubState, dir: PathBuf, waker: Waker) -> Result<WatchId, WatchError> {
    let dir = std::fs::canonicalize(&dir).map_err(|e| WatchError::Resolve {
        error: e.to_string(),
        dir,
    })?;
    let id = state.next_id;
    state.next_id += 1;
    state
        .dirs
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(dir.clone())
        .or_default()
        .insert(id, waker);
    state.ids.insert(id, dir.clone());
    if let Err(err) = try_settle(state, &dir) {
        unwatch(state, id);
        return Err(err);
    }
    Ok(id)
}

/// The process's hub, started on first use.
pub fn hub() -> Option<ActorRef<WatchHubMsg>> {
    static HUB: OnceLock<Option<ActorRef<WatchHubMsg>>> = OnceLock::new();
    HUB.get_or_init(start_hub).clone()
}

fn start_hub() -> Option<ActorRef<WatchHubMsg>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("sandvisor-watch".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(err) => {
                    tracing::warn!(%err, "cannot start the watch hub's runtime");
                    let _ = tx.send(None);
                    return;
                }
            };
            runtime.block_on(async move {
                match Actor::spawn(None, WatchHub, ()).await {
                    Ok((hub, handle)) => {
                        let _ = tx.send(Some(hub));
                        // Runs for the life of the process.
                        let _ = handle.await;
                    }
                    Err(err) => {
                        tracing::warn!(%err, "cannot start the watch hub");
                        let _ = tx.send(None);
                    }
                }
            });
        });
    match spawned {
        Ok(_) => rx.recv().ok().flatten(),
        Err(err) => {
            tracing::warn!(%err, "cannot start the watch hub thread");
            None
        }
    }
}

/// Registers `waker` for `dir` with the process's hub; dropping the guard
/// unregisters it.
///
/// Never fails: `None` if the directory cannot be watched (a
/// [`WatchError`], logged at debug), or if the hub is not running or does not
/// answer within 5 s (logged at warn); readers then rely on polling.
///
/// # Cancel safety
/// Not fully cancel-safe. Cancelled before the hub answered, the hub drops
/// the registration itself; cancelled after it answered but before the
/// answer was read, the registration stays until the process ends (its
/// waker then wakes nobody, but the directory stays watched).
pub async fn watch_dir(dir: &Path, waker: Waker) -> Option<WatchGuard> {
    let hub = hub()?;
    let dir = dir.to_path_buf();
    let reply = ractor::call_t!(hub, |reply| WatchHubMsg::Watch { dir, waker, reply }, 5_000);
    match reply {
        Ok(Ok(id)) => Some(WatchGuard { hub, id }),
        Ok(Err(err)) => {
            tracing::debug!(%err, "directory not watched; polling only");
            None
        }
        Err(err) => {
            tracing::warn!(%err, "watch hub did not answer; polling only");
            None
        }
    }
}

/// Counts from the process's hub; `None` if the hub is not running or does
/// not answer within 5 s.
pub async fn stats() -> Option<HubStats> {
    let hub = hub()?;
    ractor::call_t!(hub, WatchHubMsg::Stats, 5_000).ok()
}

/// Declares the writer about to append to `dir` (a canonical path) the
/// only writer of it: while the guard lives, the hub keeps no inotify watch
/// on `dir` and its readers in this process rely on the writer's
/// [`wake_readers_of`] after each write (and on their poll for anything
/// else). Only for a directory no other process writes into.
///
/// `None` if the hub is not running: readers then poll, and nothing needs
/// undoing.
pub fn claim_writer(dir: &Path) -> Option<WriterGuard> {
    let hub = hub()?;
    let dir = dir.to_path_buf();
    hub.cast(WatchHubMsg::Writer(dir.clone())).ok()?;
    Some(WriterGuard { hub, dir })
}

/// A writer's claim on a directory (see [`claim_writer`]); released on drop.
pub struct WriterGuard {
    hub: ActorRef<WatchHubMsg>,
    dir: PathBuf,
}

impl Drop for WriterGuard {
    fn drop(&mut self) {
        let dir = std::mem::take(&mut self.dir);
        // The hub lives as long as the process.
        let _ = self.hub.cast(WatchHubMsg::WriterGone(dir));
    }
}

impl std::fmt::Debug for WriterGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriterGuard")
            .field("dir", &self.dir)
            .finish()
    }
}

/// A registration with the hub; unregisters on drop.
pub struct WatchGuard {
    hub: ActorRef<WatchHubMsg>,
    id: WatchId,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        // The hub lives as long as the process; if it is gone, so is the watch.
        let _ = self.hub.cast(WatchHubMsg::Unwatch(self.id));
    }
}

impl std::fmt::Debug for WatchGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchGuard").field("id", &self.id).finish()
    }
}
