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
    /// Deletes a sandbox and its runs if it is Created, Stopped or Crashed,
    /// running `free` (removing its files) first, under the write lock;
    /// returns the status that refused it otherwise (`free` not run).
    ///
    /// # Errors
    /// [`crate::Error::SandboxNotFound`] without a row, what `free` returns,
    /// or [`crate::Error::Database`].
    pub async fn delete_sandbox_freeing(
        &self,
        name: &str,
        free: impl FnOnce() -> Result<()>,
    ) -> Result<Option<SandboxStatus>> {
        let mut tx = self.begin_immediate().await?;
        let status = status_in(&mut tx, name).await?;
        if !(status.is_terminal() || status == SandboxStatus::Created) {
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
