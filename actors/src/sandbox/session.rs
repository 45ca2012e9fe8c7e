//! Exec sessions' live output routes, shared by the agent link (which adds
//! and removes them) and the capture task (which sends output along them).
//!
//! # Contract
//! - A route exists from the `Exec` request until the session's exit (or its
//!   failure to start); its `ExecItem::Exited` is the last item sent on it.
//! - A caller that dropped its receiver loses nothing of the log: output is
//!   written to `exec.log` regardless — unless the route is unlogged (a
//!   health check's), whose output only its caller gets.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc;

use super::ExecItem;

/// Live routes of exec sessions' output, by session id.
#[derive(Debug, Clone, Default)]
pub struct Routes(Arc<Mutex<HashMap<u64, Route>>>);

/// A session's caller, and whether its output goes to `exec.log`.
#[derive(Debug)]
struct Route {
    output: mpsc::UnboundedSender<ExecItem>,
    logged: bool,
}

impl Routes {
    /// Routes `session`'s output to `output` from now on; `logged`: it
    /// also goes to `exec.log`.
    pub fn insert(&self, session: u64, output: mpsc::UnboundedSender<ExecItem>, logged: bool) {
        self.lock().insert(session, Route { output, logged });
    }

    /// Forgets `session`'s route; returns it.
    pub fn remove(&self, session: u64) -> Option<mpsc::UnboundedSender<ExecItem>> {
        self.lock().remove(&session).map(|route| route.output)
    }

    /// Whether `session` has a route (it runs, as far as the host knows).
    pub fn contains(&self, session: u64) -> bool {
        self.lock().contains_key(&session)
    }

    /// Sends `item` to `session`'s caller; whether its output goes to
    /// `exec.log`, or `None` if `session` has no route (a session the host
    /// never started, or that ended, has none).
    pub fn send(&self, session: u64, item: ExecItem) -> Option<bool> {
        let routes = self.lock();
        let route = routes.get(&session)?;
        // The caller may have dropped its handle; the log keeps it.
        let _ = route.output.send(item);
        Some(route.logged)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Route>> {
        // Holders only insert and remove; a panic mid-way leaves a usable map.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}
