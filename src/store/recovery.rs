//! The writer connection after a failed write: never left inside a
//! transaction.
//!
//! SQLite may roll a transaction back by itself when a statement or the
//! COMMIT fails with `SQLITE_FULL`, `SQLITE_IOERR`, `SQLITE_NOMEM` or
//! `SQLITE_BUSY`. sqlx then still counts the transaction as open: the
//! `ROLLBACK` it queues when the `Transaction` is dropped fails ("no
//! transaction is active"), its depth stays at 1, and every later `BEGIN` on
//! that connection is refused ("attempted to call begin_with at non-zero
//! transaction depth") — the writer was wedged until the process restarted.
//!
//! Two rules keep it usable:
//! - The writer pool checks each connection before handing it out
//!   ([`outside_transaction`]): sqlx pings it first (the ping runs after any
//!   queued `ROLLBACK`), and one still inside a transaction is closed — which
//!   rolls back whatever SQLite kept — and replaced by a fresh connection.
//! - In a group commit, only a statement refused by a constraint (a name
//!   taken) or that matched no row fails alone; any other statement error may
//!   have ended the transaction, so the whole group fails ([`breaks_group`])
//!   instead of running its remaining statements outside any transaction.

use futures::future::BoxFuture;
use sqlx::pool::PoolConnectionMetadata;
use sqlx::{Connection, SqliteConnection};

/// The writer pool's `before_acquire` hook: `false` (close it, open a new
/// one) for a connection left inside a transaction.
pub(super) fn outside_transaction(
    conn: &mut SqliteConnection,
    _: PoolConnectionMetadata,
) -> BoxFuture<'_, Result<bool, sqlx::Error>> {
    let clean = !conn.is_in_transaction();
    if !clean {
        tracing::warn!(
            "the database writer was left inside a failed transaction: replacing its connection"
        );
    }
    Box::pin(std::future::ready(Ok(clean)))
}

/// Whether a statement's failure may have ended (or poisoned) the group's
/// transaction, so that the group must fail as a whole.
pub(super) fn breaks_group(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::RowNotFound => false,
        sqlx::Error::Database(db) => matches!(db.kind(), sqlx::error::ErrorKind::Other),
        _ => true,
    }
}
