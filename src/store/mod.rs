//! The SQLite store: sandboxes, their runs, and reconciliation on open.
//!
//! One file, `<home>/sandvisor.db`, in WAL mode with `synchronous=NORMAL` and a
//! 5 s busy timeout, so several processes (a daemon, CLI invocations) share
//! it. Read-then-write transactions start with `BEGIN IMMEDIATE`, so two
//! writers never both read a state and then both act on it.
//!
//! # Files
//! - `mod.rs`: the rows, opening, reads, and the transactions that read then
//!   write (`claim_start`, `delete_sandbox`).
//! - `group_commit.rs`: the per-run writes, committed in groups by one task.
//! - `host.rs`: host identity and liveness, and reconciling the runs of
//!   hosts that are gone.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use sandvisor_actors::lifecycle::{
    HostId, LifecycleStore, PendingRestart, RunEnd, SandboxStatus, TerminationReason,
};
use sandvisor_actors::sandbox::health::HealthReport;
use sandvisor_actors::sandbox::policy::RestartEnd;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use tokio::sync::{mpsc, oneshot};

pub(crate) mod checkpoint;
mod group_commit;
mod host;
pub(crate) mod images;
pub(crate) mod integrity;
mod liveness;
mod recovery;
mod remove;
mod rows;

use group_commit::Write;
pub(crate) use host::host_alive;
pub use host::{this_host, OrphanRun, Settled, SettledRun};

use crate::config::SandboxConfig;
use crate::error::{Error, Result};

/// The database file's name in the home.
pub const DB_FILE: &str = "sandvisor.db";

/// The lowest id-range slot no sandbox holds, as an SQL expression (a
/// literal, so that statements built with it stay `&'static str`). With
/// every slot taken it is one past the last, which the column's CHECK
/// refuses.
macro_rules! lowest_free_slot {
    () => {
        "(SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM sandbox WHERE id_slot = 0) THEN 0 \
         ELSE (SELECT MIN(a.id_slot) + 1 FROM sandbox a WHERE a.id_slot IS NOT NULL \
         AND NOT EXISTS (SELECT 1 FROM sandbox b WHERE b.id_slot = a.id_slot + 1)) END)"
    };
}
pub(crate) use lowest_free_slot;

/// A `sandbox` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxRow {
    /// Row id.
    pub id: i64,
    /// Name.
    pub name: String,
    /// Config as stored (JSON).
    pub config_json: String,
    /// Status.
    pub status: SandboxStatus,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
    /// The control socket of the runtime that last started it, if that
    /// runtime listens on one.
    pub control_socket: Option<PathBuf>,
    /// Its user-namespace id range's slot (see [`crate::config::id_range`]),
    /// if it has one.
    pub id_slot: Option<u32>,
    /// The restart its policy waits to make, recorded with status
    /// `Starting` (a stale one under another status means nothing).
    pub restart_pending: Option<PendingRestart>,
    /// The image it was created from (its id), if any.
    pub image_id: Option<String>,
}

/// A `run` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRow {
    /// Row id.
    pub id: i64,
    /// Host pid of the sandbox's PID 1.
    pub pid: u32,
    /// Status when it ended (or `Running`).
    pub status: SandboxStatus,
    /// Exit code.
    pub exit_code: Option<i32>,
    /// Signal.
    pub exit_signal: Option<i32>,
    /// Why it ended.
    pub termination_reason: Option<TerminationReason>,
    /// Started.
    pub started_at: DateTime<Utc>,
    /// Ended.
    pub terminated_at: Option<DateTime<Utc>>,
    /// The host process that ran it.
    pub host: HostId,
    /// Restarts by the policy before this run since a user started the
    /// sandbox (0: the run a user started).
    pub restart_count: u32,
    /// Why the restart policy did not follow this run with another (`None`:
    /// it did, the run is the current one, or there is no policy).
    pub restart_end: Option<RestartEnd>,
    /// Its health and latest check results (`None`: no health check).
    pub health: Option<HealthReport>,
}

/// The store. Cheap to clone.
///
/// Writes go through one connection (`writer`), so writers of this process
/// queue in sqlx instead of contending for SQLite's lock and sleeping in its
/// busy handler; reads use a small pool of their own.
#[derive(Debug, Clone)]
pub struct Store {
    writer: SqlitePool,
    pool: SqlitePool,
    /// Recorded with each sandbox this store's runtime inserts or starts.
    control_socket: Option<Arc<str>>,
    /// The per-run writes, committed in groups (see `group_commit`).
    writes: mpsc::UnboundedSender<Write>,
}

fn db_err(err: sqlx::Error) -> Error {
    Error::Database(err.to_string())
}

/// [`db_err`], but the id-range slot's CHECK refusing a slot past the last
/// means every range is taken.
fn slot_err(err: sqlx::Error) -> Error {
    match &err {
        sqlx::Error::Database(e) if e.kind() == sqlx::error::ErrorKind::CheckViolation => {
            Error::InvalidConfig {
                field: "isolation.user".into(),
                reason: format!(
                    "all {} user id ranges are taken: remove a sandbox, or run without a user namespace",
                    crate::config::ID_RANGE_SLOTS
                ),
            }
        }
        _ => db_err(err),
    }
}

fn parse_time(text: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| Error::Database(format!("bad timestamp {text:?}: {e}")))
}

fn now_text() -> String {
    Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn time_text(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

impl Store {
    /// Opens (creating if needed) the database under `home` and migrates it.
    ///
    /// # Errors
    /// [`Error::Io`] if the home or its lock file cannot be created or
    /// locked; [`Error::Database`] if the database cannot be opened or
    /// migrated; [`Error::Internal`] if the lock's blocking task fails.
    pub async fn open(home: &Path) -> Result<Self> {
        crate::home::create_home(home)?;
        let db = home.join(DB_FILE);
        // SQLite gives the WAL and shared-memory files the database file's
        // mode: creating it 0600 here makes all three 0600.
        create_private_file(&db)?;
        let options = SqliteConnectOptions::new()
            .filename(home.join(DB_FILE))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        // Two processes opening a new home at once would both switch the new
        // file to WAL (one of them told "database is locked" at once: SQLite
        // does not wait where waiting could deadlock) and both apply the same
        // migrations: a lock file serializes creating, switching and migrating.
        let lock = open_lock(home).await?;
        integrity::check_before_open(home, &db)?;
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .before_acquire(recovery::outside_transaction)
            .connect_with(options.clone())
            .await
            .map_err(|e| integrity::open_error(&db, e))?;
        integrity::check_opened(&writer, home, &db).await?;
        sqlx::migrate!("./migrations")
            .run(&writer)
            .await
            .map_err(|e| {
                Error::Database(format!("migrating {}: {e}", home.join(DB_FILE).display()))
            })?;
        drop(lock);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.read_only(true))
            .await
            .map_err(db_err)?;
        Ok(Self {
            writes: group_commit::start(writer.clone()),
            writer,
            pool,
            control_socket: None,
        })
    }

    /// This store, recording `socket` as the control socket of every sandbox
    /// it inserts or starts from now on.
    pub fn with_control_socket(mut self, socket: &Path) -> Self {
        self.control_socket = Some(Arc::from(socket.to_string_lossy().as_ref()));
        self
    }

    /// Inserts a new sandbox with `status` (`Created`, or `Starting` when it
    /// is started right away), with the lowest free id-range slot if it has
    /// a user namespace, created from image `image_id` if any; returns that
    /// slot.
    ///
    /// # Errors
    /// [`Error::SandboxExists`] if the name is taken; [`Error::ImageNotFound`]
    /// if the image was removed meanwhile; [`Error::InvalidConfig`]
    /// (`isolation.user`) if every id range is taken; [`Error::Database`] if
    /// the write fails; [`Error::Internal`] if `config` does not serialize.
    ///
    /// # Cancel safety
    /// Once queued (on the first poll) the insert is committed whether or
    /// not the future is still there to hear it.
    pub async fn insert_sandbox(
        &self,
        config: &SandboxConfig,
        status: SandboxStatus,
        owner: HostId,
        image_id: Option<&str>,
    ) -> Result<Option<u32>> {
        let json = serde_json::to_string(config).map_err(|e| Error::Internal(e.to_string()))?;
        let now = now_text();
        let inserted = self
            .grouped(|reply| Write::InsertSandbox {
                name: config.name.clone(),
                config: json,
                status: status.as_str(),
                now,
                owner,
                control_socket: self.control_socket.clone(),
                id_slot: config.isolation.user,
                image_id: image_id.map(str::to_string),
                reply,
            })
            .await;
        match inserted {
            Ok(slot) => Ok(slot.map(|slot| slot as u32)),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                Err(Error::SandboxExists(config.name.clone()))
            }
            Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => Err(
                Error::ImageNotFound(image_id.unwrap_or_default().to_string()),
            ),
            Err(e) => Err(slot_err(e)),
        }
    }

    /// The sandbox row of `name`.
    ///
    /// # Errors
    /// [`Error::Database`] if the store cannot be read or a row does not
    /// parse.
    pub async fn sandbox(&self, name: &str) -> Result<Option<SandboxRow>> {
        let row = sqlx::query(
            "SELECT id, name, config, status, created_at, updated_at, control_socket, id_slot, restart_pending, image_id FROM sandbox WHERE name = ?",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?;
        row.map(|r| rows::sandbox(&r)).transpose()
    }

    /// Every sandbox whose row parses, by name (a WARN names each other
    /// one; see [`Self::sandboxes_checked`]).
    ///
    /// # Errors
    /// As [`Self::sandbox`].
    pub async fn sandboxes(&self) -> Result<Vec<SandboxRow>> {
        Ok(rows::reported(self.sandboxes_checked().await?))
    }

    /// The runs of `name` whose rows parse, oldest first (a WARN names each
    /// other one).
    ///
    /// # Errors
    /// As [`Self::sandbox`].
    pub async fn runs(&self, name: &str) -> Result<Vec<RunRow>> {
        let rows = sqlx::query(
            "SELECT run.id, run.pid, run.status, run.exit_code, run.exit_signal, run.termination_reason, \
             run.started_at, run.terminated_at, run.host_pid, run.host_start_ticks, run.restart_count, run.restart_end, run.health \
             FROM run JOIN sandbox ON sandbox.id = run.sandbox_id WHERE sandbox.name = ? ORDER BY run.id",
        )
        .bind(name)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(rows::good_runs(name, &rows))
    }

    /// Writes `resources` into the stored config of `name` (read and
    /// written in one transaction, so concurrent updates of other fields
    /// are not lost).
    ///
    /// # Errors
    /// [`Error::SandboxNotFound`] if no such sandbox is recorded;
    /// [`Error::BadRow`] if its config does not parse; [`Error::Database`]
    /// if the transaction fails (nothing is written).
    pub async fn update_resources(
        &self,
        name: &str,
        resources: &crate::config::Resources,
    ) -> Result<()> {
        let mut tx = self.begin_immediate().await?;
        let json: Option<String> = sqlx::query_scalar("SELECT config FROM sandbox WHERE name = ?")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?;
        let json = json.ok_or_else(|| Error::SandboxNotFound(name.to_string()))?;
        let mut config: SandboxConfig = serde_json::from_str(&json).map_err(|e| Error::BadRow {
            name: name.to_string(),
            reason: format!("its config does not parse: {e}"),
        })?;
        resources.apply_to(&mut config);
        let json = serde_json::to_string(&config).map_err(|e| Error::Internal(e.to_string()))?;
        sqlx::query("UPDATE sandbox SET config = ?, updated_at = ? WHERE name = ?")
            .bind(json)
            .bind(now_text())
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)
    }

    /// A write transaction that holds SQLite's write lock from its start, for
    /// read-then-write sequences.
    async fn begin_immediate(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
        self.writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db_err)
    }

    /// Deletes a sandbox and its runs, if it is Created, Stopped or Crashed.
    /// Returns the status that refused it otherwise.
    ///
    /// # Errors
    /// [`Error::SandboxNotFound`] if no such sandbox is recorded;
    /// [`Error::Database`] if the transaction fails (nothing is deleted).
    pub async fn delete_sandbox(&self, name: &str) -> Result<Option<SandboxStatus>> {
        self.delete_sandbox_freeing(name, None, || Ok(())).await
    }

    /// Moves a sandbox to `Starting` if it is not running; returns the status
    /// that refused it otherwise, else its id-range slot. A sandbox with a
    /// user namespace (`id_slot`) that has no slot yet (created before slots
    /// were kept) gets the lowest free one.
    ///
    /// # Errors
    /// As [`Self::delete_sandbox`] (nothing is changed), and
    /// [`Error::InvalidConfig`] (`isolation.user`) if it needs a slot and
    /// every one is taken.
    pub async fn claim_start(
        &self,
        name: &str,
        owner: HostId,
        id_slot: bool,
    ) -> Result<std::result::Result<Option<u32>, SandboxStatus>> {
        let mut tx = self.begin_immediate().await?;
        let status = status_in(&mut tx, name).await?;
        if !(status.is_terminal() || status == SandboxStatus::Created) {
            return Ok(Err(status));
        }
        let slot: Option<i64> = sqlx::query_scalar(concat!(
            "UPDATE sandbox SET status = 'Starting', updated_at = ?, owner_pid = ?, owner_start_ticks = ?, control_socket = ?, restart_pending = NULL, \
             id_slot = CASE WHEN ? AND id_slot IS NULL THEN ",
            lowest_free_slot!(),
            " ELSE id_slot END WHERE name = ? RETURNING id_slot",
        ))
        .bind(now_text())
        .bind(i64::from(owner.pid))
        .bind(owner.start_ticks as i64)
        .bind(self.control_socket.as_deref())
        .bind(id_slot)
        .bind(name)
        .fetch_one(&mut *tx)
        .await
        .map_err(slot_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(Ok(slot.map(|slot| slot as u32)))
    }

    async fn update_status(&self, name: &str, status: SandboxStatus) -> Result<()> {
        self.grouped(|reply| Write::SetStatus {
            name: name.to_string(),
            status: status.as_str(),
            now: now_text(),
            reply,
        })
        .await
        .map_err(db_err)
    }

    /// Queues a write for the next group commit and waits for its commit.
    async fn grouped<T>(
        &self,
        write: impl FnOnce(oneshot::Sender<std::result::Result<T, sqlx::Error>>) -> Write,
    ) -> std::result::Result<T, sqlx::Error> {
        let (reply, answer) = oneshot::channel();
        self.writes
            .send(write(reply))
            .map_err(|_| sqlx::Error::PoolClosed)?;
        answer.await.map_err(|_| sqlx::Error::PoolClosed)?
    }

    /// Opens a run row; the `run_opened` trigger marks the sandbox Running in
    /// the same statement.
    async fn insert_run(
        &self,
        name: &str,
        pid: u32,
        host: HostId,
        at: DateTime<Utc>,
        restart_count: u32,
    ) -> Result<i64> {
        self.grouped(|reply| Write::OpenRun {
            name: name.to_string(),
            pid,
            at: time_text(at),
            host,
            restart_count,
            pid_start_ticks: host::start_ticks(pid).map(|t| t as i64),
            reply,
        })
        .await
        .map_err(db_err)
    }

    /// Closes a run row; the `run_closed` trigger gives the sandbox the
    /// run's final status in the same statement.
    async fn close_run(&self, run_id: i64, end: RunEnd) -> Result<()> {
        self.grouped(|reply| Write::CloseRun {
            run_id,
            at: time_text(end.at),
            end,
            reply,
        })
        .await
        .map_err(db_err)
    }
}

/// The status of `name`, read inside `tx`.
async fn status_in(
    tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
    name: &str,
) -> Result<SandboxStatus> {
    let status: Option<String> = sqlx::query_scalar("SELECT status FROM sandbox WHERE name = ?")
        .bind(name)
        .fetch_optional(&mut **tx)
        .await
        .map_err(db_err)?;
    let status = status.ok_or_else(|| Error::SandboxNotFound(name.to_string()))?;
    SandboxStatus::from_str(&status).map_err(|reason| Error::BadRow {
        name: name.to_string(),
        reason,
    })
}

/// Creates `path` empty with mode 0600 unless it exists.
fn create_private_file(path: &Path) -> Result<()> {
    let created = std::fs::File::options()
        .create_new(true)
        .write(true)
        .mode(crate::home::PRIVATE_FILE_MODE)
        .open(path);
    match created {
        Err(err) if err.kind() != std::io::ErrorKind::AlreadyExists => Err(Error::Io {
            path: path.to_path_buf(),
            source: err,
        }),
        _ => Ok(()),
    }
}

/// Takes the home's open lock (`sandvisor.db.lock`), waiting for another
/// process (or runtime) that holds it.
async fn open_lock(home: &Path) -> Result<nix::fcntl::Flock<std::fs::File>> {
    let path = home.join(format!("{DB_FILE}.lock"));
    let file = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(crate::home::PRIVATE_FILE_MODE)
        .open(&path)
        .map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
    tokio::task::spawn_blocking(move || {
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, errno)| {
            Error::Io {
                path,
                source: errno.into(),
            }
        })
    })
    .await
    .map_err(|e| Error::Internal(format!("home lock: {e}")))?
}

fn sandbox_row(row: &sqlx::sqlite::SqliteRow) -> Result<SandboxRow> {
    Ok(SandboxRow {
        id: row.get(0),
        name: row.get(1),
        config_json: row.get(2),
        status: SandboxStatus::from_str(row.get::<&str, _>(3)).map_err(Error::Database)?,
        created_at: parse_time(row.get(4))?,
        updated_at: parse_time(row.get(5))?,
        control_socket: row.get::<Option<String>, _>(6).map(PathBuf::from),
        id_slot: row.get::<Option<i64>, _>(7).map(|slot| slot as u32),
        restart_pending: row
            .get::<Option<&str>, _>(8)
            .map(serde_json::from_str)
            .transpose()
            .map_err(|e| Error::Database(format!("bad restart_pending: {e}")))?,
        image_id: row.get(9),
    })
}

fn run_row(row: &sqlx::sqlite::SqliteRow) -> Result<RunRow> {
    let reason: Option<String> = row.get(5);
    let terminated: Option<String> = row.get(7);
    Ok(RunRow {
        id: row.get(0),
        pid: row.get::<i64, _>(1) as u32,
        status: SandboxStatus::from_str(row.get::<&str, _>(2)).map_err(Error::Database)?,
        exit_code: row.get(3),
        exit_signal: row.get(4),
        termination_reason: reason
            .map(|r| TerminationReason::from_str(&r))
            .transpose()
            .map_err(Error::Database)?,
        started_at: parse_time(row.get(6))?,
        terminated_at: terminated.as_deref().map(parse_time).transpose()?,
        host: HostId {
            pid: row.get::<i64, _>(8) as u32,
            start_ticks: row.get::<i64, _>(9) as u64,
        },
        restart_count: row.get::<i64, _>(10) as u32,
        restart_end: row
            .get::<Option<&str>, _>(11)
            .map(RestartEnd::from_str)
            .transpose()
            .map_err(Error::Database)?,
        health: row
            .get::<Option<&str>, _>(12)
            .map(serde_json::from_str)
            .transpose()
            .map_err(|e| Error::Database(format!("bad health: {e}")))?,
    })
}

impl LifecycleStore for Store {
    fn set_status(
        &self,
        name: &str,
        status: SandboxStatus,
    ) -> BoxFuture<'_, std::result::Result<(), String>> {
        let name = name.to_string();
        Box::pin(async move {
            self.update_status(&name, status)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn run_started(
        &self,
        name: &str,
        pid: u32,
        host: HostId,
        at: DateTime<Utc>,
        restart_count: u32,
    ) -> BoxFuture<'_, std::result::Result<i64, String>> {
        let name = name.to_string();
        Box::pin(async move {
            self.insert_run(&name, pid, host, at, restart_count)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn set_restart(
        &self,
        name: &str,
        status: SandboxStatus,
        pending: Option<PendingRestart>,
    ) -> BoxFuture<'_, std::result::Result<(), String>> {
        let name = name.to_string();
        Box::pin(async move {
            let pending = pending
                .map(|p| serde_json::to_string(&p))
                .transpose()
                .map_err(|e| e.to_string())?;
            sqlx::query(
                "UPDATE sandbox SET status = ?, restart_pending = ?, updated_at = ? WHERE name = ?",
            )
            .bind(status.as_str())
            .bind(pending)
            .bind(now_text())
            .bind(name)
            .execute(&self.writer)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
        })
    }

    fn restart_ended(
        &self,
        run_id: i64,
        end: RestartEnd,
    ) -> BoxFuture<'_, std::result::Result<(), String>> {
        Box::pin(async move {
            sqlx::query("UPDATE run SET restart_end = ? WHERE id = ?")
                .bind(end.as_str())
                .bind(run_id)
                .execute(&self.writer)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        })
    }

    fn health_recorded(
        &self,
        run_id: i64,
        report: &HealthReport,
    ) -> BoxFuture<'_, std::result::Result<(), String>> {
        let report = serde_json::to_string(report);
        Box::pin(async move {
            let report = report.map_err(|e| e.to_string())?;
            sqlx::query("UPDATE run SET health = ? WHERE id = ?")
                .bind(report)
                .bind(run_id)
                .execute(&self.writer)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        })
    }

    fn run_ended(
        &self,
        _name: &str,
        run_id: i64,
        end: RunEnd,
    ) -> BoxFuture<'_, std::result::Result<(), String>> {
        Box::pin(async move { self.close_run(run_id, end).await.map_err(|e| e.to_string()) })
    }
}
