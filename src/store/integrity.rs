//! The database and the home's sandbox directories agree.
//!
//! The database is the source of truth for which sandboxes exist; the
//! directories under `sandboxes/` hold their files. Two ways they disagree,
//! and what the store does about each:
//!
//! - **A home with sandbox directories whose database is missing, empty,
//!   truncated or garbage** (or whose `-wal`, holding everything not yet
//!   checkpointed, was lost): opening it is [`Error::DatabaseDamaged`],
//!   naming the file. Creating a fresh database there would show an empty
//!   home that is not empty, and let new sandboxes take over old names.
//! - **A sandbox directory without a row** (left by a lost database, or by a
//!   crash between a row and its directory): creating a sandbox of that name
//!   moves the directory aside to `sandboxes/.orphaned/<name>-<time>`, with a
//!   WARN, before making its own ([`set_aside_orphan`]).
//!
//! **Decision: set an orphaned directory aside rather than refuse the name.**
//! For docker and containerd the metadata store decides what exists: a name
//! free there is free. Refusing would leave a name no command can free (`rm`
//! finds no row), and deleting would destroy logs someone may want;
//! setting aside keeps them, out of every listing, and the new sandbox starts
//! empty. `.orphaned` is no valid sandbox name, so it never collides.

use std::path::{Path, PathBuf};

use sqlx::SqlitePool;

use crate::error::{Error, Result};
use crate::home;

/// Where orphaned sandbox directories are set aside, under `sandboxes/`.
pub const ORPHANED_DIR: &str = ".orphaned";

/// How many directories under `<home>/sandboxes` are named like sandboxes.
fn sandbox_dirs(home: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(home.join("sandboxes")) else {
        return 0;
    };
    entries
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.file_type().is_ok_and(|t| t.is_dir()))
        .filter(|entry| {
            entry
                .file_name()
                .to_str()
                .is_some_and(|name| home::validate_name(name).is_ok())
        })
        .count()
}

fn damaged(db: &Path, reason: String) -> Error {
    Error::DatabaseDamaged {
        path: db.to_path_buf(),
        reason,
    }
}

/// Before the database is opened: a missing database in a home that has
/// sandboxes is an error (and is not created).
///
/// # Errors
/// [`Error::DatabaseDamaged`] if `db` does not exist but sandbox directories do.
pub(super) fn check_before_open(home: &Path, db: &Path) -> Result<()> {
    if db.exists() {
        return Ok(());
    }
    match sandbox_dirs(home) {
        0 => Ok(()),
        n => Err(damaged(
            db,
            format!("it does not exist, but {n} sandbox directories do"),
        )),
    }
}

/// After the first connection, before migrating: a database holding no
/// sandvisor tables (new, emptied, truncated, or its WAL lost) in a home that
/// has sandboxes is an error.
///
/// # Errors
/// [`Error::DatabaseDamaged`] as above, or if the database cannot be read.
pub(super) async fn check_opened(writer: &SqlitePool, home: &Path, db: &Path) -> Result<()> {
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'sandbox'",
    )
    .fetch_one(writer)
    .await
    .map_err(|err| open_error(db, err))?;
    match (tables, sandbox_dirs(home)) {
        (0, n) if n > 0 => Err(damaged(
            db,
            format!(
                "it holds no sandvisor tables (truncated, or its -wal file was lost), but {n} sandbox directories exist"
            ),
        )),
        _ => Ok(()),
    }
}

/// An error opening or first reading `db`: [`Error::DatabaseDamaged`] if
/// SQLite says the file is not a database or is corrupt.
pub(super) fn open_error(db: &Path, err: sqlx::Error) -> Error {
    // SQLITE_CORRUPT (11) and SQLITE_NOTADB (26), with any extended code.
    let code = err
        .as_database_error()
        .and_then(|e| e.code())
        .and_then(|code| code.parse::<i32>().ok());
    match code.map(|code| code & 0xff) {
        Some(11 | 26) => damaged(db, err.to_string()),
        _ => Error::Database(format!("opening {}: {err}", db.display())),
    }
}

/// Moves `<home>/sandboxes/<name>` aside if it exists: called by a creator
/// that has just inserted the row of `name`, so the directory has no row.
///
/// # Errors
/// [`Error::Io`] if the directory cannot be moved.
pub(crate) fn set_aside_orphan(home: &Path, name: &str) -> Result<()> {
    let dir = home::sandbox_dir(home, name)?;
    match std::fs::symlink_metadata(&dir) {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(Error::Io { path: dir, source }),
        Ok(_) => {}
    }
    let aside_root = home.join("sandboxes").join(ORPHANED_DIR);
    home::create_private_dir(&aside_root).map_err(|source| Error::Io {
        path: aside_root.clone(),
        source,
    })?;
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.6fZ");
    let aside: PathBuf = aside_root.join(format!("{name}-{stamp}"));
    std::fs::rename(&dir, &aside).map_err(|source| Error::Io {
        path: dir.clone(),
        source,
    })?;
    tracing::warn!(
        sandbox = name,
        from = %dir.display(),
        to = %aside.display(),
        "a sandbox directory without a database row was set aside; the new sandbox starts empty"
    );
    Ok(())
}
