//! Rows that do not parse are reported one by one.
//!
//! A row with an unknown status or a bad timestamp (written by a newer
//! sandvisor, or edited by hand) used to fail every listing, so `ps -a`
//! showed nothing at all. Now a listing returns the rows that parse and
//! names each one that does not: a WARN per bad row, and
//! [`Store::sandboxes_checked`] gives it as [`Error::BadRow`] in its place.
//! Reading one sandbox by name gives its `BadRow` as the error.

use sqlx::sqlite::SqliteRow;
use sqlx::Row;

use super::{db_err, run_row, sandbox_row, RunRow, SandboxRow, Store};
use crate::error::{Error, Result};

/// `row` (a sandbox row) as a [`SandboxRow`], or [`Error::BadRow`] naming it.
pub(super) fn sandbox(row: &SqliteRow) -> Result<SandboxRow> {
    sandbox_row(row).map_err(|err| Error::BadRow {
        name: row.try_get::<String, _>(1).unwrap_or_default(),
        reason: reason(err),
    })
}

fn reason(err: Error) -> String {
    match err {
        Error::Database(why) => why,
        other => other.to_string(),
    }
}

/// The rows of `checked` that parse, with a WARN for each that does not.
pub(super) fn reported(checked: Vec<Result<SandboxRow>>) -> Vec<SandboxRow> {
    checked
        .into_iter()
        .filter_map(|row| match row {
            Ok(row) => Some(row),
            Err(err) => {
                tracing::warn!(%err, "leaving out a sandbox whose row does not parse");
                None
            }
        })
        .collect()
}

/// The run rows of `name` that parse, with a WARN for each that does not.
pub(super) fn good_runs(name: &str, rows: &[SqliteRow]) -> Vec<RunRow> {
    rows.iter()
        .filter_map(|row| match run_row(row) {
            Ok(run) => Some(run),
            Err(err) => {
                let run = row.try_get::<i64, _>(0).unwrap_or_default();
                tracing::warn!(sandbox = name, run, err = %reason(err), "leaving out a run whose row does not parse");
                None
            }
        })
        .collect()
}

impl Store {
    /// Every sandbox, by name; a row that does not parse is
    /// [`Error::BadRow`] in its place.
    ///
    /// # Errors
    /// [`Error::Database`] if the rows cannot be read at all.
    pub async fn sandboxes_checked(&self) -> Result<Vec<Result<SandboxRow>>> {
        let rows = sqlx::query(
            "SELECT id, name, config, status, created_at, updated_at, control_socket, id_slot, restart_pending, image_id FROM sandbox ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(rows.iter().map(sandbox).collect())
    }
}
