//! Checkpointing the WAL into the database file.
//!
//! SQLite checkpoints by itself only once the WAL holds 1,000 pages, so a
//! small home kept its whole state in `sandvisor.db-wal` (the `.db` stayed at
//! 4 KiB after a clean stop) and a lost WAL lost everything. The store
//! checkpoints:
//! - from the group-commit task, once writes have been idle for
//!   [`IDLE`] and after every [`EVERY_COMMITS`] commits ([`Schedule`]);
//! - when the group-commit task ends (every store of the runtime dropped);
//! - when a runtime closes ([`checkpoint_blocking`], from its drop, which
//!   cannot await and may be followed at once by the process's exit).
//!
//! Always `PASSIVE`: it copies what no reader still needs and never waits
//! for readers or writers (of this or another process), so it cannot stall
//! the writes it follows. A checkpoint that fails is logged and retried at the
//! next occasion; it loses nothing, the WAL still holds the data.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection, SqlitePool};

/// Writes idle this long are followed by a checkpoint.
pub(super) const IDLE: Duration = Duration::from_secs(1);

/// A checkpoint at least every this many group commits under steady load.
pub(super) const EVERY_COMMITS: u32 = 64;

const STATEMENT: &str = "PRAGMA wal_checkpoint(PASSIVE)";

/// When the group-commit task checkpoints next.
#[derive(Debug, Default)]
pub(super) struct Schedule {
    /// Commits since the last checkpoint.
    commits: u32,
}

impl Schedule {
    /// How long to wait for writes before checkpointing, if anything was
    /// committed since the last checkpoint.
    pub(super) fn idle_wait(&self) -> Option<Duration> {
        (self.commits > 0).then_some(IDLE)
    }

    /// Counts a commit; true when a checkpoint is due.
    pub(super) fn committed(&mut self) -> bool {
        self.commits += 1;
        self.commits >= EVERY_COMMITS
    }

    /// Checkpoints on `writer` if anything was committed since the last one.
    pub(super) async fn checkpoint(&mut self, writer: &SqlitePool) {
        if self.commits == 0 {
            return;
        }
        self.commits = 0;
        if let Err(err) = sqlx::query(STATEMENT).execute(writer).await {
            tracing::warn!(%err, "cannot checkpoint the database's WAL; retrying after the next writes");
        }
    }
}

/// Checkpoints the database `db` on a connection of its own, blocking until
/// done: for a runtime's drop, which cannot await.
///
/// Runs on a thread of its own with a runtime of its own, so it needs nothing
/// from the caller's (possibly single-threaded, possibly shutting down) async
/// runtime.
pub(crate) fn checkpoint_blocking(db: &Path) {
    let db: PathBuf = db.to_path_buf();
    let done = std::thread::Builder::new()
        .name("sandvisor-checkpoint".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let mut conn = SqliteConnectOptions::new()
                    .filename(&db)
                    .busy_timeout(Duration::from_millis(200))
                    .connect()
                    .await
                    .map_err(std::io::Error::other)?;
                sqlx::query(STATEMENT)
                    .execute(&mut conn)
                    .await
                    .map_err(std::io::Error::other)?;
                conn.close().await.map_err(std::io::Error::other)
            })
        })
        .map(|thread| thread.join());
    match done {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(err))) | Err(err) => {
            tracing::warn!(%err, "cannot checkpoint the database's WAL on close");
        }
        Ok(Err(_)) => tracing::warn!("the checkpoint on close panicked"),
    }
}
