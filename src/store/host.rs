//! The hosts behind the store's rows: which process a runtime is, whether
//! the host of a run is still alive, and settling the runs of hosts that are
//! gone.
//!
//! # Contract
//! - A host is a process identified by its pid *and* its start time (field
//!   22 of `/proc/PID/stat`), so a recycled pid is never taken for the host
//!   that recorded a run.
//! - [`Store::reconcile`] runs when a runtime opens, inside one
//!   `BEGIN IMMEDIATE` transaction: two runtimes opening at once never both
//!   settle (or both keep) the same run.
//! - A process is only ever killed when its pid and start time match the
//!   run's record and its `argv[0]` ends in `sandvisor-agent`.

use chrono::{DateTime, Utc};
use sandvisor_actors::lifecycle::HostId;
use sandvisor_actors::sandbox::stopped_marker;
use sqlx::Row;

use super::{db_err, parse_time, time_text, Store};
use crate::error::Result;

/// A sandbox [`Store::reconcile`] settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    /// Its name.
    pub name: String,
    /// The run its host left open, now closed as Crashed; `None` for a
    /// sandbox whose claimer died before it had a run.
    pub run: Option<SettledRun>,
}

/// A run [`Store::reconcile`] closed as Crashed (InternalError).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SettledRun {
    /// The host process that ran it, found gone.
    pub host_pid: u32,
    /// Whether its PID 1 still ran and was killed.
    pub killed: bool,
    /// When it was closed (its `terminated_at`).
    pub at: DateTime<Utc>,
}

impl Settled {
    /// The `--- sandbox stopped … ---` marker its run's `exec.log` gets in
    /// place of the one its host could not write: the reason, and why.
    pub fn marker(&self) -> Option<String> {
        let run = self.run?;
        let what = if run.killed {
            "its processes were killed"
        } else {
            "its processes were gone"
        };
        Some(stopped_marker(&format!(
            "InternalError: host process {} is gone; {what}",
            run.host_pid
        )))
    }
}

/// A run left open by a host that is gone whose PID 1 still runs: a sandbox
/// a runtime may re-adopt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrphanRun {
    /// The sandbox.
    pub name: String,
    /// The run's row id.
    pub run_id: i64,
    /// Host pid of its PID 1 (the agent).
    pub pid: u32,
    /// The agent's start time (clock ticks since boot).
    pub pid_start: u64,
    /// The host that recorded it, found gone.
    pub host: HostId,
    /// When the run started.
    pub started_at: DateTime<Utc>,
}

impl Store {
    /// Open runs whose host is gone (and is not `me`) while their PID 1, a
    /// sandvisor agent with the recorded start time, still runs.
    ///
    /// # Errors
    /// [`crate::Error::Database`] if the store cannot be read.
    pub async fn orphan_runs(&self, me: HostId) -> Result<Vec<OrphanRun>> {
        let rows = sqlx::query(
            "SELECT sandbox.name, run.id, run.pid, run.host_pid, run.host_start_ticks, run.pid_start_ticks, run.started_at \
             FROM run JOIN sandbox ON sandbox.id = run.sandbox_id WHERE run.terminated_at IS NULL",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        let mut orphans = Vec::new();
        for row in rows {
            let host = HostId {
                pid: row.get::<i64, _>(3) as u32,
                start_ticks: row.get::<i64, _>(4) as u64,
            };
            let pid = row.get::<i64, _>(2) as u32;
            let Some(pid_start) = row.get::<Option<i64>, _>(5).map(|t| t as u64) else {
                continue;
            };
            if host == me || host_alive(host) || !is_agent(pid, Some(pid_start)) {
                continue;
            }
            orphans.push(OrphanRun {
                name: row.get(0),
                run_id: row.get(1),
                pid,
                pid_start,
                host,
                started_at: parse_time(row.get(6))?,
            });
        }
        Ok(orphans)
    }

    /// Moves run `run_id` (and its sandbox) from the dead host `from` to
    /// `to`, with `to`'s control socket; `false` if the run is no longer
    /// `from`'s (another runtime took it first, or it was closed).
    ///
    /// # Errors
    /// [`crate::Error::Database`] if the store cannot be written.
    pub async fn move_run(&self, run_id: i64, from: HostId, to: HostId) -> Result<bool> {
        let mut tx = self.begin_immediate().await?;
        let moved = sqlx::query(
            "UPDATE run SET host_pid = ?, host_start_ticks = ? \
             WHERE id = ? AND terminated_at IS NULL AND host_pid = ? AND host_start_ticks = ?",
        )
        .bind(to.pid as i64)
        .bind(to.start_ticks as i64)
        .bind(run_id)
        .bind(from.pid as i64)
        .bind(from.start_ticks as i64)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?
        .rows_affected()
            == 1;
        if moved {
            sqlx::query(
                "UPDATE sandbox SET owner_pid = ?, owner_start_ticks = ?, control_socket = ? \
                 WHERE id = (SELECT sandbox_id FROM run WHERE id = ?)",
            )
            .bind(to.pid as i64)
            .bind(to.start_ticks as i64)
            .bind(self.control_socket.as_deref())
            .bind(run_id)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)?;
        Ok(moved)
    }

    /// Settles sandboxes left running by hosts that are gone: open runs whose
    /// host process is dead are closed as Crashed (InternalError) and any of
    /// their processes still alive are killed. Runs of live hosts other than
    /// `me` are left alone. Returns what was settled (the caller writes the
    /// runs' stopped markers: the store knows no log directories).
    ///
    /// # Errors
    /// [`crate::Error::Database`] if the store cannot be read or written;
    /// nothing is then recorded (orphans found so far may have been killed:
    /// the next reconcile finds their runs again and settles them).
    ///
    /// # Cancel safety
    /// As for an error: the transaction is rolled back, kills already made
    /// stay made.
    pub async fn reconcile(&self, me: HostId, spare: &[i64]) -> Result<Vec<Settled>> {
        let mut tx = self.begin_immediate().await?;
        let rows = sqlx::query(
            "SELECT sandbox.name, run.id, run.pid, run.host_pid, run.host_start_ticks, run.pid_start_ticks \
             FROM run JOIN sandbox ON sandbox.id = run.sandbox_id WHERE run.terminated_at IS NULL",
        )
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
        let mut settled = Vec::new();
        let at = Utc::now();
        let now = time_text(at);
        for row in rows {
            let name: String = row.get(0);
            let run_id: i64 = row.get(1);
            let pid: i64 = row.get(2);
            let host = HostId {
                pid: row.get::<i64, _>(3) as u32,
                start_ticks: row.get::<i64, _>(4) as u64,
            };
            // A live host owns its runs; so does this process while the run's
            // PID 1 lives (another runtime here may host it). A run of this
            // process whose PID 1 is gone belongs to a runtime dropped earlier.
            if host_alive(host) && (host != me || process_alive(pid as u32)) {
                continue;
            }
            if spare.contains(&run_id) {
                continue;
            }
            let pid_start: Option<i64> = row.get(5);
            let killed = kill_orphan(pid as u32, pid_start.map(|t| t as u64));
            tracing::info!(sandbox = %name, pid, killed, "reconciling a run left open by a host that is gone");
            sqlx::query(
                "UPDATE run SET status = 'Crashed', termination_reason = 'InternalError', terminated_at = ?, \
                 exit_signal = CASE WHEN ? THEN 9 ELSE NULL END WHERE id = ?",
            )
            .bind(&now)
            .bind(killed)
            .bind(run_id)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
            sqlx::query("UPDATE sandbox SET status = 'Crashed', restart_pending = NULL, updated_at = ? WHERE name = ?")
                .bind(&now)
                .bind(&name)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            settled.push(Settled {
                name,
                run: Some(SettledRun {
                    host_pid: host.pid,
                    killed,
                    at,
                }),
            });
        }
        // A sandbox caught between states with no open run cannot be running
        // once the host that claimed it is gone.
        let stuck = sqlx::query(
            "SELECT name, owner_pid, owner_start_ticks FROM sandbox WHERE status IN ('Starting', 'Running', 'Draining', 'Paused') \
             AND NOT EXISTS (SELECT 1 FROM run WHERE run.sandbox_id = sandbox.id AND run.terminated_at IS NULL)",
        )
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
        for row in stuck {
            let name: String = row.get(0);
            let owner = HostId {
                pid: row.get::<Option<i64>, _>(1).unwrap_or(0) as u32,
                start_ticks: row.get::<Option<i64>, _>(2).unwrap_or(0) as u64,
            };
            if host_alive(owner) {
                continue;
            }
            sqlx::query("UPDATE sandbox SET status = 'Crashed', restart_pending = NULL, updated_at = ? WHERE name = ?")
                .bind(&now)
                .bind(&name)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            settled.push(Settled { name, run: None });
        }
        tx.commit().await.map_err(db_err)?;
        Ok(settled)
    }
}

/// Whether `pid` is the sandvisor agent that started at `started` (not a
/// recycled pid).
pub(crate) fn is_agent(pid: u32, started: Option<u64>) -> bool {
    if started.is_none() || start_ticks(pid) != started {
        return false;
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    cmdline
        .split(|&b| b == 0)
        .next()
        .is_some_and(|argv0| argv0.ends_with(b"sandvisor-agent"))
}

/// This process's identity as a host.
pub fn this_host() -> HostId {
    let pid = std::process::id();
    HostId {
        pid,
        start_ticks: start_ticks(pid).unwrap_or(0),
    }
}

/// Field 22 of `/proc/PID/stat`: start time in clock ticks since boot;
/// `None` for a process that is gone or has exited (a zombie).
pub(super) fn start_ticks(pid: u32) -> Option<u64> {
    super::liveness::live_start_ticks(pid)
}

/// Whether the host process `host` still runs (same pid, same start time,
/// not a zombie).
pub(crate) fn host_alive(host: HostId) -> bool {
    host.pid != 0 && start_ticks(host.pid) == Some(host.start_ticks)
}

fn process_alive(pid: u32) -> bool {
    super::liveness::is_live(pid)
}

/// Kills the sandbox whose PID 1 had host pid `pid` and started at
/// `start_ticks`, if that process still is a sandvisor agent (and not a
/// recycled pid). Returns whether it was killed.
fn kill_orphan(pid: u32, started: Option<u64>) -> bool {
    is_agent(pid, started)
        && nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .is_ok()
}
