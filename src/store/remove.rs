//! Removing a sandbox so that it works on a full disk.
//!
//! Deleting a row needs WAL space; on a disk filled by the sandbox's own logs
//! that delete failed ("database or disk is full") and `rm` could not free the
//! disk. The files go first: under the write lock (`BEGIN IMMEDIATE`, which
//! writes nothing), the status is checked, the files are removed, then the
//! row. Holding the lock meanwhile keeps another process from starting the
//! sandbox between the check and the delete. If the delete still fails, the
//! row stays with its files gone, and removing it again succeeds.

use super::{db_err, status_in, Store};
use crate::error::Result;
use sandvisor_actors::lifecycle::SandboxStatus;

impl Store {
    /// Deletes a sandbox and its runs if it is Created, Stopped or Crashed
    /// — or if its newest run is `ended_run`, still open in the store: a run
    /// whose host said it ended but whose end the store could not take yet
    /// (a full disk) — running `free` (removing its files) first, under the
    /// write lock; returns the status that refused it otherwise (`free` not
    /// run). Comparing run ids under the lock keeps a newer run from being
    /// deleted in its place.
    ///
    /// # Errors
    /// [`crate::Error::SandboxNotFound`] without a row, what `free` returns,
    /// or [`crate::Error::Database`].
    pub async fn delete_sandbox_freeing(
        &self,
        name: &str,
        ended_run: Option<i64>,
        free: impl FnOnce() -> Result<()>,
    ) -> Result<Option<SandboxStatus>> {
        let mut tx = self.begin_immediate().await?;
        let status = status_in(&mut tx, name).await?;
        let removable = status.is_terminal()
            || status == SandboxStatus::Created
            || (ended_run.is_some() && open_run_in(&mut tx, name).await? == ended_run);
        if !removable {
            return Ok(Some(status));
        }
        free()?;
        sqlx::query("DELETE FROM sandbox WHERE name = ?")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(None)
    }
}

/// The id of `name`'s newest run if it has no end recorded.
async fn open_run_in(
    tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
    name: &str,
) -> Result<Option<i64>> {
    sqlx::query_scalar(
        "SELECT run.id FROM run JOIN sandbox ON sandbox.id = run.sandbox_id \
         WHERE sandbox.name = ? AND run.terminated_at IS NULL \
         AND run.id = (SELECT MAX(r.id) FROM run r WHERE r.sandbox_id = sandbox.id)",
    )
    .bind(name)
    .fetch_optional(&mut **tx)
    .await
    .map_err(db_err)
}
