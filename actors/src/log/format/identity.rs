//! File identity: which file a path or descriptor refers to, independent of its name.
//!
//! Rotation renames files, so a name says nothing about content. A file is
//! identified by its inode number plus its birth time (`statx` `btime`) where
//! the filesystem records one; the birth time tells a reused inode number from
//! the file that had it before.

use std::fs::{File, Metadata};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::UNIX_EPOCH;

/// The identity of one file on one filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileId {
    /// Inode number.
    pub ino: u64,
    /// Birth time in nanoseconds since the Unix epoch; 0 where the filesystem
    /// does not record one.
    pub btime_ns: i64,
}

impl FileId {
    /// The identity described by `meta`.
    pub fn from_metadata(meta: &Metadata) -> Self {
        let btime_ns = meta
            .created()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .and_then(|d| i64::try_from(d.as_nanos()).ok())
            .unwrap_or(0);
        Self {
            ino: meta.ino(),
            btime_ns,
        }
    }

    /// The identity of the file at `path` (following symlinks); `Ok(None)` if
    /// nothing is there.
    ///
    /// # Errors
    /// The `stat` error for anything but a missing file (permission denied,
    /// a path component that is not a directory, …).
    pub fn of_path(path: &Path) -> io::Result<Option<Self>> {
        match std::fs::metadata(path) {
            Ok(meta) => Ok(Some(Self::from_metadata(&meta))),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// The identity of an open file.
    ///
    /// # Errors
    /// The `fstat` error, if the descriptor cannot be queried.
    pub fn of_file(file: &File) -> io::Result<Self> {
        Ok(Self::from_metadata(&file.metadata()?))
    }

    /// Whether the filesystem recorded a birth time for this file.
    pub fn has_btime(&self) -> bool {
        self.btime_ns != 0
    }
}
