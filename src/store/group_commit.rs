//! Group commit for the writes every run makes (insert the sandbox, open the
//! run, close the run, set a status).
//!
//! A commit costs far more than a statement (≈ 0.18 ms against ≈ 0.03 ms
//! here), and hundreds of sandboxes starting at once each make three. One
//! task owns these writes: it takes every write queued while the previous
//! transaction was being written, runs them in one `BEGIN IMMEDIATE`
//! transaction and answers each after the commit — so an answer still means
//! the write is durable, in the order each caller made its writes.
//!
//! A statement that fails (a name already taken) fails alone: SQLite undoes
//! that statement, not the transaction. If the transaction cannot begin or
//! commit, or a statement fails in a way that may have ended it (a full
//! disk), every write in it gets that error (see `recovery`). The task also
//! checkpoints the WAL (see `checkpoint`).

use std::sync::Arc;

use sandvisor_actors::lifecycle::{HostId, RunEnd};
use sqlx::{Sqlite, SqlitePool, Transaction};
use tokio::sync::{mpsc, oneshot};

/// Most writes in one transaction.
const MAX_GROUP: usize = 256;

type Reply<T> = oneshot::Sender<Result<T, sqlx::Error>>;

/// One queued write.
pub(super) enum Write {
    InsertSandbox {
        name: String,
        config: String,
        status: &'static str,
        now: String,
        owner: HostId,
        control_socket: Option<Arc<str>>,
        /// Allocate an id range (the sandbox has a user namespace).
        id_slot: bool,
        /// The image it is created from.
        image_id: Option<String>,
        reply: Reply<Option<i64>>,
    },
    OpenRun {
        name: String,
        pid: u32,
        at: String,
        host: HostId,
        pid_start_ticks: Option<i64>,
        restart_count: u32,
        reply: Reply<i64>,
    },
    CloseRun {
        run_id: i64,
        end: RunEnd,
        at: String,
        reply: Reply<()>,
    },
    SetStatus {
        name: String,
        status: &'static str,
        now: String,
        reply: Reply<()>,
    },
}

/// A write done inside the transaction, waiting for the commit.
enum Done {
    Unit(Reply<()>, Result<(), sqlx::Error>),
    Id(Reply<i64>, Result<i64, sqlx::Error>),
    Slot(Reply<Option<i64>>, Result<Option<i64>, sqlx::Error>),
}

impl Done {
    /// The error of a write that broke its group's transaction, if it did.
    fn broken(&self) -> Option<String> {
        let err = match self {
            Self::Unit(_, Err(err)) => err,
            Self::Id(_, Err(err)) => err,
            Self::Slot(_, Err(err)) => err,
            _ => return None,
        };
        super::recovery::breaks_group(err).then(|| err.to_string())
    }

    fn answer(self, failed: Option<&str>) {
        let failure = || sqlx::Error::Protocol(failed.unwrap_or_default().to_string());
        // A caller that stopped waiting needs no answer.
        match self {
            Self::Unit(reply, result) => {
                let _ = reply.send(if failed.is_some() {
                    Err(failure())
                } else {
                    result
                });
            }
            Self::Id(reply, result) => {
                let _ = reply.send(if failed.is_some() {
                    Err(failure())
                } else {
                    result
                });
            }
            Self::Slot(reply, result) => {
                let _ = reply.send(if failed.is_some() {
                    Err(failure())
                } else {
                    result
                });
            }
        }
    }
}

/// Starts the task that owns grouped writes on `writer`; it ends when every
/// sender is dropped.
pub(super) fn start(writer: SqlitePool) -> mpsc::UnboundedSender<Write> {
    let (queue, mut writes) = mpsc::unbounded_channel::<Write>();
    tokio::spawn(async move {
        let mut group = Vec::with_capacity(MAX_GROUP);
        let mut checkpoints = super::checkpoint::Schedule::default();
        loop {
            let received = writes.recv_many(&mut group, MAX_GROUP);
            let received = match checkpoints.idle_wait() {
                None => received.await,
                // `recv_many` is cancel safe: nothing is lost on timeout.
                Some(idle) => match tokio::time::timeout(idle, received).await {
                    Ok(received) => received,
                    Err(_) => {
                        checkpoints.checkpoint(&writer).await;
                        continue;
                    }
                },
            };
            if received == 0 {
                break;
            }
            commit(&writer, std::mem::take(&mut group)).await;
            if checkpoints.committed() {
                checkpoints.checkpoint(&writer).await;
            }
        }
        checkpoints.checkpoint(&writer).await;
    });
    queue
}

async fn commit(writer: &SqlitePool, group: Vec<Write>) {
    let mut tx = match writer.begin_with("BEGIN IMMEDIATE").await {
        Ok(tx) => tx,
        Err(err) => {
            let why = format!("cannot begin a transaction: {err}");
            for write in group {
                done_without_running(write).answer(Some(&why));
            }
            return;
        }
    };
    let mut done = Vec::with_capacity(group.len());
    let mut group = group.into_iter();
    while let Some(write) = group.next() {
        let result = run(&mut tx, write).await;
        if let Some(why) = result.broken() {
            // The transaction may be gone: fail the whole group, the writes
            // not run yet too (dropping `tx` rolls back what is left of it).
            let why = format!("a write failed: {why}");
            done.push(result);
            done.extend(group.map(done_without_running));
            done.into_iter().for_each(|d| d.answer(Some(&why)));
            return;
        }
        done.push(result);
    }
    match tx.commit().await {
        Ok(()) => done.into_iter().for_each(|d| d.answer(None)),
        Err(err) => {
            let why = format!("commit failed: {err}");
            done.into_iter().for_each(|d| d.answer(Some(&why)));
        }
    }
}

fn done_without_running(write: Write) -> Done {
    // The answer is replaced by the group's failure.
    match write {
        Write::OpenRun { reply, .. } => Done::Id(reply, Err(sqlx::Error::PoolClosed)),
        Write::InsertSandbox { reply, .. } => Done::Slot(reply, Err(sqlx::Error::PoolClosed)),
        Write::CloseRun { reply, .. } | Write::SetStatus { reply, .. } => {
            Done::Unit(reply, Err(sqlx::Error::PoolClosed))
        }
    }
}

async fn run(tx: &mut Transaction<'static, Sqlite>, write: Write) -> Done {
    match write {
        Write::InsertSandbox {
            name,
            config,
            status,
            now,
            owner,
            control_socket,
            id_slot,
            image_id,
            reply,
        } => {
            let result = sqlx::query_scalar(concat!(
                "INSERT INTO sandbox (name, config, status, created_at, updated_at, owner_pid, owner_start_ticks, control_socket, image_id, id_slot) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, CASE WHEN ? THEN ",
                super::lowest_free_slot!(),
                " END) RETURNING id_slot",
            ))
            .bind(name)
            .bind(config)
            .bind(status)
            .bind(&now)
            .bind(&now)
            .bind(i64::from(owner.pid))
            .bind(owner.start_ticks as i64)
            .bind(control_socket.as_deref())
            .bind(image_id)
            .bind(id_slot)
            .fetch_one(&mut **tx)
            .await;
            Done::Slot(reply, result)
        }
        Write::OpenRun {
            name,
            pid,
            at,
            host,
            pid_start_ticks,
            restart_count,
            reply,
        } => {
            // The `run_opened` trigger marks the sandbox Running in the same
            // statement.
            let result = sqlx::query_scalar(
                "INSERT INTO run (sandbox_id, pid, status, started_at, host_pid, host_start_ticks, pid_start_ticks, restart_count) \
                 SELECT id, ?, 'Running', ?, ?, ?, ?, ? FROM sandbox WHERE name = ? RETURNING id",
            )
            .bind(i64::from(pid))
            .bind(at)
            .bind(i64::from(host.pid))
            .bind(host.start_ticks as i64)
            .bind(pid_start_ticks)
            .bind(i64::from(restart_count))
            .bind(name)
            .fetch_one(&mut **tx)
            .await;
            Done::Id(reply, result)
        }
        Write::CloseRun {
            run_id,
            end,
            at,
            reply,
        } => {
            // The `run_closed` trigger gives the sandbox the run's final
            // status in the same statement.
            let result = sqlx::query(
                "UPDATE run SET status = ?, exit_code = ?, exit_signal = ?, termination_reason = ?, terminated_at = ? \
                 WHERE id = ? AND terminated_at IS NULL",
            )
            .bind(end.status.as_str())
            .bind(end.exit_code)
            .bind(end.signal)
            .bind(end.reason.as_str())
            .bind(at)
            .bind(run_id)
            .execute(&mut **tx)
            .await
            .map(drop);
            Done::Unit(reply, result)
        }
        Write::SetStatus {
            name,
            status,
            now,
            reply,
        } => {
            let result =
                sqlx::query("UPDATE sandbox SET status = ?, updated_at = ? WHERE name = ?")
                    .bind(status)
                    .bind(now)
                    .bind(name)
                    .execute(&mut **tx)
                    .await
                    .map(drop);
            Done::Unit(reply, result)
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::store::{this_host, Store};
    use crate::{Error, SandboxConfig, SandboxStatus};

    #[tokio::test]
    async fn a_failing_write_fails_alone_and_the_rest_of_its_group_commits() {
        let home = tempfile::tempdir().unwrap();
        let store = Store::open(home.path()).await.unwrap();
        let host = this_host();
        // 50 inserts queued at once, every name twice: one of each pair is
        // refused, the other lands, whatever group they share.
        let inserts = (0..50).map(|i| {
            let store = store.clone();
            async move {
                let config = SandboxConfig::new(format!("s{}", i % 25), "true");
                store
                    .insert_sandbox(&config, SandboxStatus::Starting, host, None)
                    .await
            }
        });
        let results = futures::future::join_all(inserts).await;
        let landed = results.iter().filter(|r| r.is_ok()).count();
        let taken = results
            .iter()
            .filter(|r| matches!(r, Err(Error::SandboxExists(_))))
            .count();
        assert_eq!((landed, taken), (25, 25), "{results:?}");
        assert_eq!(store.sandboxes().await.unwrap().len(), 25);
        // Runs opened and closed in groups carry their own ids and statuses.
        let runs = (0..25).map(|i| {
            let store = store.clone();
            async move {
                let name = format!("s{i}");
                let id = store
                    .insert_run(&name, 1, host, chrono::Utc::now(), 0)
                    .await
                    .unwrap();
                (name, id)
            }
        });
        let runs = futures::future::join_all(runs).await;
        let mut ids: Vec<i64> = runs.iter().map(|(_, id)| *id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 25);
        for row in store.sandboxes().await.unwrap() {
            assert_eq!(row.status, SandboxStatus::Running, "{}", row.name);
        }
    }
}
