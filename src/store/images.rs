//! The image index: which images exist, their layers, the names pointing at
//! them, and which sandboxes use them (see `crate::image` for the files).
//!
//! # Contract
//! - An image row is written in one transaction with its layer rows and
//!   names, only after every layer is unpacked in place: a row never names
//!   a layer that is not on disk.
//! - Removing checks use under the write lock (`BEGIN IMMEDIATE`), as
//!   [`Store::insert_sandbox`] inserts under it: an image cannot be removed
//!   between a sandbox's lookup of it and its insert (which then fails on
//!   the foreign key with [`Error::ImageNotFound`]).

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{db_err, now_text, parse_time, Store};
use crate::error::{Error, Result};

/// An `image` row and the names pointing at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRow {
    /// The digest of its config (`sha256:…`).
    pub id: String,
    /// The digest of the manifest it came with (none for a `docker save`
    /// archive without one).
    pub manifest: Option<String>,
    /// Its config, as stored (verified JSON).
    pub config: String,
    /// Its layers' diff ids, base first.
    pub layers: Vec<String>,
    /// Bytes of its unpacked layers.
    pub size: u64,
    /// When it was stored in this home.
    pub created_at: DateTime<Utc>,
    /// The names pointing at it, sorted.
    pub references: Vec<String>,
}

/// An image to record.
#[derive(Debug, Clone)]
pub struct NewImage<'a> {
    /// The digest of its config.
    pub id: &'a str,
    /// The digest of its manifest, if it has one.
    pub manifest: Option<&'a str>,
    /// Its config JSON.
    pub config: &'a str,
    /// Its layers (diff id, unpacked bytes), base first, each unpacked in
    /// place.
    pub layers: &'a [(String, u64)],
    /// Names to point at it (moved from any image they pointed at).
    pub references: &'a [String],
}

/// What a removal did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Removed {
    /// Names removed.
    pub untagged: Vec<String>,
    /// Images deleted (no name and no sandbox left).
    pub deleted: Vec<String>,
}

/// The columns [`image_row`] reads, as a literal (statements stay
/// `&'static str`).
macro_rules! select_image {
    () => {
        "SELECT id, manifest, config, layers, size, created_at, \
         (SELECT json_group_array(reference) FROM (SELECT reference FROM image_ref WHERE image_id = image.id ORDER BY reference)) \
         FROM image"
    };
}

fn image_row(row: &sqlx::sqlite::SqliteRow) -> Result<ImageRow> {
    let layers: &str = row.get(3);
    let references: &str = row.get(6);
    Ok(ImageRow {
        id: row.get(0),
        manifest: row.get(1),
        config: row.get(2),
        layers: serde_json::from_str(layers)
            .map_err(|e| Error::Database(format!("bad image layers: {e}")))?,
        size: row.get::<i64, _>(4) as u64,
        created_at: parse_time(row.get(5))?,
        references: serde_json::from_str(references)
            .map_err(|e| Error::Database(format!("bad image references: {e}")))?,
    })
}

impl Store {
    /// Every image, by id.
    ///
    /// # Errors
    /// [`Error::Database`] if the store cannot be read or a row does not
    /// parse.
    pub async fn images(&self) -> Result<Vec<ImageRow>> {
        let rows = sqlx::query(concat!(select_image!(), " ORDER BY created_at, id"))
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        rows.iter().map(image_row).collect()
    }

    /// The image `reference` (a normalized name) points at.
    ///
    /// # Errors
    /// As [`Self::images`].
    pub async fn image_by_reference(&self, reference: &str) -> Result<Option<ImageRow>> {
        let row = sqlx::query(concat!(
            select_image!(),
            " WHERE id = (SELECT image_id FROM image_ref WHERE reference = ?)",
        ))
        .bind(reference)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?;
        row.as_ref().map(image_row).transpose()
    }

    /// The images whose id (`sha256:<hex>`) starts with `prefix`.
    ///
    /// # Errors
    /// As [`Self::images`].
    pub async fn images_by_id_prefix(&self, prefix: &str) -> Result<Vec<ImageRow>> {
        let rows = sqlx::query(concat!(
            select_image!(),
            " WHERE substr(id, 1, length(?1)) = ?1",
        ))
        .bind(prefix)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter().map(image_row).collect()
    }

    /// The unpacked size of layer `diff_id`, if it is recorded.
    ///
    /// # Errors
    /// [`Error::Database`] if the store cannot be read.
    pub async fn layer_size(&self, diff_id: &str) -> Result<Option<u64>> {
        let size: Option<i64> = sqlx::query_scalar("SELECT size FROM layer WHERE diff_id = ?")
            .bind(diff_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(size.map(|size| size as u64))
    }

    /// The names of the sandboxes created from image `id`.
    ///
    /// # Errors
    /// [`Error::Database`] if the store cannot be read.
    pub async fn image_users(&self, id: &str) -> Result<Vec<String>> {
        sqlx::query_scalar("SELECT name FROM sandbox WHERE image_id = ? ORDER BY name")
            .bind(id)
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)
    }

    /// Records `image`, its layers and its names in one transaction.
    ///
    /// # Errors
    /// [`Error::Database`] if the transaction fails (nothing is recorded).
    pub async fn record_image(&self, image: &NewImage<'_>) -> Result<()> {
        let layers: Vec<&str> = image.layers.iter().map(|(id, _)| id.as_str()).collect();
        let layers = serde_json::to_string(&layers).map_err(|e| Error::Internal(e.to_string()))?;
        let size: u64 = image.layers.iter().map(|(_, size)| size).sum();
        let mut tx = self.begin_immediate().await?;
        for (diff_id, size) in image.layers {
            sqlx::query("INSERT OR IGNORE INTO layer (diff_id, size) VALUES (?, ?)")
                .bind(diff_id)
                .bind(*size as i64)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
        }
        sqlx::query(
            "INSERT INTO image (id, manifest, config, layers, size, created_at) VALUES (?, ?, ?, ?, ?, ?) \
             ON CONFLICT (id) DO UPDATE SET manifest = COALESCE(image.manifest, excluded.manifest)",
        )
        .bind(image.id)
        .bind(image.manifest)
        .bind(image.config)
        .bind(layers)
        .bind(size as i64)
        .bind(now_text())
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        for reference in image.references {
            sqlx::query("INSERT OR REPLACE INTO image_ref (reference, image_id) VALUES (?, ?)")
                .bind(reference)
                .bind(image.id)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)
    }

    /// Removes the name `reference`; the image it pointed at goes too if no
    /// other name and no sandbox points at it. Refused (nothing changes) if
    /// it is the image's last name and a sandbox uses the image.
    ///
    /// # Errors
    /// [`Error::ImageNotFound`] if no image has that name;
    /// [`Error::ImageInUse`] as said; [`Error::Database`].
    pub async fn untag_image(&self, reference: &str) -> Result<Removed> {
        let mut tx = self.begin_immediate().await?;
        let image_id: Option<String> =
            sqlx::query_scalar("SELECT image_id FROM image_ref WHERE reference = ?")
                .bind(reference)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?;
        let Some(image_id) = image_id else {
            return Err(Error::ImageNotFound(reference.to_string()));
        };
        let (names, users) = image_ties(&mut tx, &image_id).await?;
        let last = names <= 1;
        if last && users > 0 {
            return Err(Error::ImageInUse(reference.to_string()));
        }
        sqlx::query("DELETE FROM image_ref WHERE reference = ?")
            .bind(reference)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        let mut removed = Removed {
            untagged: vec![reference.to_string()],
            deleted: Vec::new(),
        };
        if last {
            delete_image(&mut tx, &image_id).await?;
            removed.deleted.push(image_id);
        }
        tx.commit().await.map_err(db_err)?;
        Ok(removed)
    }

    /// Removes image `id` and every name pointing at it, unless a sandbox
    /// uses it.
    ///
    /// # Errors
    /// [`Error::ImageNotFound`] without such an image; [`Error::ImageInUse`]
    /// (naming `shown`) if a sandbox uses it; [`Error::Database`].
    pub async fn remove_image(&self, id: &str, shown: &str) -> Result<Removed> {
        let mut tx = self.begin_immediate().await?;
        let exists: Option<i64> = sqlx::query_scalar("SELECT 1 FROM image WHERE id = ?")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?;
        if exists.is_none() {
            return Err(Error::ImageNotFound(shown.to_string()));
        }
        if image_ties(&mut tx, id).await?.1 > 0 {
            return Err(Error::ImageInUse(shown.to_string()));
        }
        let untagged: Vec<String> = sqlx::query_scalar(
            "SELECT reference FROM image_ref WHERE image_id = ? ORDER BY reference",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
        delete_image(&mut tx, id).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(Removed {
            untagged,
            deleted: vec![id.to_string()],
        })
    }

    /// Deletes the images no sandbox uses: those without a name, or every
    /// one when `all`.
    ///
    /// # Errors
    /// [`Error::Database`] (nothing is deleted).
    pub async fn prune_images(&self, all: bool) -> Result<Removed> {
        let mut tx = self.begin_immediate().await?;
        let unused: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM image WHERE NOT EXISTS (SELECT 1 FROM sandbox WHERE sandbox.image_id = image.id) \
             AND (? OR NOT EXISTS (SELECT 1 FROM image_ref WHERE image_ref.image_id = image.id)) ORDER BY id",
        )
        .bind(all)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
        let mut removed = Removed::default();
        for id in unused {
            let names: Vec<String> = sqlx::query_scalar(
                "SELECT reference FROM image_ref WHERE image_id = ? ORDER BY reference",
            )
            .bind(&id)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err)?;
            removed.untagged.extend(names);
            delete_image(&mut tx, &id).await?;
            removed.deleted.push(id);
        }
        tx.commit().await.map_err(db_err)?;
        Ok(removed)
    }

    /// The diff ids of the layers some image uses.
    ///
    /// # Errors
    /// [`Error::Database`] if the store cannot be read or a row does not
    /// parse.
    pub async fn used_layers(&self) -> Result<BTreeSet<String>> {
        let rows: Vec<String> = sqlx::query_scalar("SELECT layers FROM image")
            .fetch_all(&self.writer)
            .await
            .map_err(db_err)?;
        let mut used = BTreeSet::new();
        for layers in rows {
            let layers: Vec<String> = serde_json::from_str(&layers)
                .map_err(|e| Error::Database(format!("bad image layers: {e}")))?;
            used.extend(layers);
        }
        Ok(used)
    }

    /// Forgets layer `diff_id` (its files are gone).
    ///
    /// # Errors
    /// [`Error::Database`] if the write fails.
    pub async fn forget_layer(&self, diff_id: &str) -> Result<()> {
        sqlx::query("DELETE FROM layer WHERE diff_id = ?")
            .bind(diff_id)
            .execute(&self.writer)
            .await
            .map_err(db_err)?;
        Ok(())
    }
}

/// How many names and sandboxes point at image `id`.
async fn image_ties(
    tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
    id: &str,
) -> Result<(i64, i64)> {
    let row = sqlx::query(
        "SELECT (SELECT COUNT(*) FROM image_ref WHERE image_id = ?1), \
         (SELECT COUNT(*) FROM sandbox WHERE image_id = ?1)",
    )
    .bind(id)
    .fetch_one(&mut **tx)
    .await
    .map_err(db_err)?;
    Ok((row.get(0), row.get(1)))
}

async fn delete_image(tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>, id: &str) -> Result<()> {
    sqlx::query("DELETE FROM image WHERE id = ?")
        .bind(id)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
    Ok(())
}
