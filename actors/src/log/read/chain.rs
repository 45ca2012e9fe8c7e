//! The rotation chain of one log, as a value: its file names, and the walk
//! from the newest file a reader holds to the file that follows it.
//!
//! # Finding the next file
//! Rotation shifts `.3`→`.4`, `.2`→`.3`, `.1`→`.2`, `exec.log`→`.1`, oldest first,
//! then creates a fresh `exec.log`. So a file only ever moves to a higher index,
//! and the file that follows the one at index `k` is the one at `k - 1`. The
//! walk finds the newest held file at `k` (scanning upward, the direction
//! files move, so a moving file cannot be passed over), opens `k - 1`, then
//! checks the newest held file is still at `k`: if it is, no shift happened in
//! between and the opened file is its true successor; if not, the files
//! [`Moved`](Successor::Moved) and the caller walks again.
//!
//! Every outcome is one [`Successor`] case; the
//! [`Follower`](super::follower::Follower) handles them in one match.
//!
//! # Identity
//! Files are known by [`FileId`] (inode, plus birth time where the filesystem
//! has it), never by name: names change under a reader, identities do not.
//! [`check_cursor`] uses the same identities to refuse, before any reader
//! starts, a cursor that never belonged to this directory.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::log::format::{FileId, LogCursor, Position, StreamKey};
use crate::log::{Error, Result};

/// One open file of the log.
#[derive(Debug)]
pub struct Held {
    /// The descriptor: it keeps reading the same file whatever its name
    /// becomes, and even after it is unlinked.
    pub(super) file: File,
    /// The file's identity.
    pub(super) id: FileId,
}

/// What follows the newest file a reader holds.
#[derive(Debug)]
pub enum Successor {
    /// The newest held file is still the live one: nothing rotated.
    Latest,
    /// There is no live file: not created yet, or the directory is gone.
    NoLiveFile,
    /// A plain (non-rotating) log whose live file was replaced by a new one:
    /// the new file follows.
    Replaced(Held),
    /// The file that follows, identified and opened.
    Found(Held),
    /// The newest held file was unlinked before its successor was identified:
    /// the reader fell behind retention.
    Gone,
    /// The successor's name is not there yet (a rotation is half done).
    NotYet,
    /// Files moved during the search; search again.
    Moved,
}

impl Successor {
    /// The case's name, for log lines.
    pub(super) fn name(&self) -> &'static str {
        match self {
            Self::Latest => "latest",
            Self::NoLiveFile => "no-live-file",
            Self::Replaced(_) => "replaced",
            Self::Found(_) => "found",
            Self::Gone => "gone",
            Self::NotYet => "not-yet",
            Self::Moved => "moved",
        }
    }
}

/// The files of one log in one directory: `exec.log`, `exec.log.1`, … for
/// the rotating `exec.log`, a single file for the others.
#[derive(Debug, Clone)]
pub struct Chain {
    dir: PathBuf,
    stream: StreamKey,
}

impl Chain {
    /// The chain of `stream` in `dir`.
    pub(super) fn new(dir: &Path, stream: StreamKey) -> Self {
        Self {
            dir: dir.to_path_buf(),
            stream,
        }
    }

    /// The log directory.
    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Which log.
    pub(super) fn stream(&self) -> StreamKey {
        self.stream
    }

    /// The file at `generation`: 0 is the live file, `N` is `<name>.N`.
    pub(super) fn path_at(&self, generation: usize) -> PathBuf {
        if generation == 0 {
            self.dir.join(self.stream.file_name())
        } else {
            self.dir
                .join(format!("{}.{generation}", self.stream.file_name()))
        }
    }

    /// Whether `id` is the live file's identity now.
    pub(super) fn is_live(&self, id: FileId) -> bool {
        FileId::of_path(&self.path_at(0)).ok().flatten() == Some(id)
    }

    /// The highest rotated generation present (`exec.log.N`), 0 if none.
    ///
    /// # Errors
    /// [`Error::Io`] if the directory cannot be listed (a missing directory
    /// is not an error: it holds no generations).
    pub(super) fn max_generation(&self) -> Result<usize> {
        if !self.stream.rotates() {
            return Ok(0);
        }
        let prefix = format!("{}.", self.stream.file_name());
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(err) => return Err(Error::io(&self.dir, err)),
        };
        let mut max = 0;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(&self.dir, e))?;
            let name = entry.file_name();
            let generation = name
                .to_str()
                .and_then(|n| n.strip_prefix(&prefix))
                .and_then(|n| n.parse::<usize>().ok());
            if let Some(generation) = generation {
                max = max.max(generation);
            }
        }
        Ok(max)
    }

    /// Opens `path`; `None` if there is no such file.
    ///
    /// # Errors
    /// [`Error::Io`] if it exists but cannot be opened or identified.
    pub(super) fn open(&self, path: &Path) -> Result<Option<Held>> {
        match File::open(path) {
            Ok(file) => {
                let id = FileId::of_file(&file).map_err(|e| Error::io(path, e))?;
                Ok(Some(Held { file, id }))
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(Error::io(path, err)),
        }
    }

    /// Opens the oldest retained file; `None` if the log has no file yet.
    ///
    /// # Errors
    /// [`Error::Io`] if the directory cannot be listed or a file opened.
    pub(super) fn open_oldest(&self) -> Result<Option<Held>> {
        for generation in (0..=self.max_generation()?).rev() {
            if let Some(held) = self.open(&self.path_at(generation))? {
                return Ok(Some(held));
            }
        }
        Ok(None)
    }

    /// The name the file `id` has now, if it is still in the chain.
    ///
    /// # Errors
    /// [`Error::Io`] if the directory cannot be listed or a file identified.
    pub(super) fn locate(&self, id: FileId) -> Result<Option<PathBuf>> {
        for generation in 0..=self.max_generation()? {
            let path = self.path_at(generation);
            if FileId::of_path(&path).map_err(|e| Error::io(&path, e))? == Some(id) {
                return Ok(Some(path));
            }
        }
        Ok(None)
    }

    /// Bytes in the chain after `position`: the rest of its file and every
    /// newer file (0 if its file is no longer in the chain). An estimate of
    /// what is left to read: files may rotate or grow meanwhile.
    ///
    /// # Errors
    /// [`Error::Io`] if the directory cannot be listed or a file identified.
    pub(super) fn bytes_after(&self, position: Position) -> Result<u64> {
        let mut total = 0u64;
        for generation in 0..=self.max_generation()? {
            let path = self.path_at(generation);
            let meta = match std::fs::metadata(&path) {
                Ok(meta) => meta,
                Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                Err(err) => return Err(Error::io(&path, err)),
            };
            if FileId::from_metadata(&meta) == position.file {
                return Ok(total + meta.len().saturating_sub(position.offset));
            }
            total += meta.len();
        }
        Ok(0)
    }

    /// The start of the oldest retained file (a zero identity if the log has
    /// no file at all).
    ///
    /// # Errors
    /// [`Error::Io`] if the directory cannot be listed or a file identified.
    pub(super) fn oldest_position(&self) -> Result<Position> {
        for generation in (0..=self.max_generation()?).rev() {
            let path = self.path_at(generation);
            if let Some(file) = FileId::of_path(&path).map_err(|e| Error::io(&path, e))? {
                return Ok(Position { file, offset: 0 });
            }
        }
        Ok(Position {
            file: FileId {
                ino: 0,
                btime_ns: 0,
            },
            offset: 0,
        })
    }

    /// What follows `newest`, the newest file the reader holds. Cheap when
    /// nothing rotated: one `stat` of the live file.
    ///
    /// # Errors
    /// [`Error::Io`] if a file cannot be identified or opened, or the
    /// directory listed.
    pub(super) fn successor(&self, newest: &Held) -> Result<Successor> {
        let live_path = self.path_at(0);
        match FileId::of_path(&live_path).map_err(|e| Error::io(&live_path, e))? {
            None => return Ok(Successor::NoLiveFile),
            Some(live) if live == newest.id => return Ok(Successor::Latest),
            Some(_) => {}
        }
        if !self.stream.rotates() {
            return Ok(match self.open(&live_path)? {
                Some(held) if held.id != newest.id => Successor::Replaced(held),
                Some(_) => Successor::Latest,
                None => Successor::NotYet,
            });
        }
        if unlinked(&newest.file, &self.dir)? {
            return Ok(Successor::Gone);
        }
        let Some(k) = self.generation_of(newest.id)? else {
            return Ok(Successor::Moved);
        };
        let Some(held) = self.open(&self.path_at(k - 1))? else {
            return Ok(Successor::NotYet);
        };
        let at_k = self.path_at(k);
        if FileId::of_path(&at_k).map_err(|e| Error::io(&at_k, e))? != Some(newest.id) {
            return Ok(Successor::Moved);
        }
        Ok(Successor::Found(held))
    }

    /// The rotated generation (1 and up) that holds `id`, scanning upward.
    fn generation_of(&self, id: FileId) -> Result<Option<usize>> {
        for k in 1..=self.max_generation()? {
            let path = self.path_at(k);
            if FileId::of_path(&path).map_err(|e| Error::io(&path, e))? == Some(id) {
                return Ok(Some(k));
            }
        }
        Ok(None)
    }
}

/// Whether `file` has been unlinked (rotated past retention).
///
/// # Errors
/// [`Error::Io`] (naming `dir`) if the descriptor cannot be `fstat`ed.
pub(super) fn unlinked(file: &File, dir: &Path) -> Result<bool> {
    Ok(file.metadata().map_err(|e| Error::io(dir, e))?.nlink() == 0)
}

/// Checks, before any reader starts, that `cursor` can be resumed in `dir`.
///
/// A cursor is foreign if it names another directory, or if its file is not in
/// the chain and was born after the live file (so it never was in this chain).
/// A file that is merely gone (older than everything retained) is not an error
/// here: the stream reports the missed rotation.
///
/// # Errors
/// - [`Error::LogDirMissing`] if `dir` does not exist.
/// - [`Error::InvalidCursor`] if the cursor belongs to another directory, or
///   names a file that never was part of this directory's chain.
/// - [`Error::Io`] if `dir` or a live file cannot be identified.
pub fn check_cursor(dir: &Path, cursor: &LogCursor) -> Result<()> {
    let dir_id = FileId::of_path(dir)
        .map_err(|e| Error::io(dir, e))?
        .ok_or_else(|| Error::LogDirMissing(dir.to_path_buf()))?;
    if dir_id != cursor.dir() {
        return Err(Error::InvalidCursor(format!(
            "the cursor belongs to another log directory than {}",
            dir.display()
        )));
    }
    for stream in StreamKey::ALL {
        let Some(position) = cursor.position(stream) else {
            continue;
        };
        let live_path = dir.join(stream.file_name());
        let live = FileId::of_path(&live_path).map_err(|e| Error::io(&live_path, e))?;
        if let Some(live) = live {
            if live == position.file {
                continue;
            }
            if position.file.has_btime()
                && live.has_btime()
                && position.file.btime_ns > live.btime_ns
            {
                return Err(Error::InvalidCursor(format!(
                    "the cursor names a file that never was part of {}",
                    live_path.display()
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path) {
        std::fs::write(path, b"").unwrap();
    }

    /// A chain of `stream` in a fresh directory, holding its live file.
    fn holding(stream: StreamKey) -> (tempfile::TempDir, Chain, Held) {
        let dir = tempfile::tempdir().unwrap();
        let chain = Chain::new(dir.path(), stream);
        touch(&chain.path_at(0));
        let held = chain.open(&chain.path_at(0)).unwrap().unwrap();
        (dir, chain, held)
    }

    fn case(chain: &Chain, held: &Held) -> &'static str {
        chain.successor(held).unwrap().name()
    }

    #[test]
    fn every_successor_case_is_reached() {
        let (_dir, chain, held) = holding(StreamKey::Exec);
        assert_eq!(case(&chain, &held), "latest");

        std::fs::rename(chain.path_at(0), chain.path_at(1)).unwrap();
        assert_eq!(case(&chain, &held), "no-live-file");

        touch(&chain.path_at(0));
        let Successor::Found(next) = chain.successor(&held).unwrap() else {
            panic!("the new live file follows the rotated one");
        };
        assert_eq!(Some(next.id), FileId::of_path(&chain.path_at(0)).unwrap());

        // Half a rotation: the held file moved on to `.2`, the live file has
        // not reached `.1` yet.
        std::fs::rename(chain.path_at(1), chain.path_at(2)).unwrap();
        assert_eq!(case(&chain, &held), "not-yet");

        // The held file left the chain's names while the walk looked.
        std::fs::rename(chain.path_at(2), chain.dir().join("elsewhere")).unwrap();
        assert_eq!(case(&chain, &held), "moved");

        std::fs::remove_file(chain.dir().join("elsewhere")).unwrap();
        assert_eq!(case(&chain, &held), "gone");
    }

    #[test]
    fn a_plain_log_replaced_by_a_new_file_is_followed_by_it() {
        let (_dir, chain, held) = holding(StreamKey::Runtime);
        assert_eq!(case(&chain, &held), "latest");
        let new = chain.dir().join("runtime.log.new");
        touch(&new);
        std::fs::rename(&new, chain.path_at(0)).unwrap();
        assert_eq!(case(&chain, &held), "replaced");
    }
}
