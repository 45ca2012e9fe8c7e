//! Reading one log — the `exec.log` chain, `runtime.log` or `kernel.log` — by
//! file identity, across rotation. This is the synchronous core a
//! [`Tailer`](super::tailer::Tailer) drives; the rotation walk is in
//! [`chain`](super::chain), line decoding and filtering in [`parse`](super::parse).
//!
//! # Files held
//! The follower holds the descriptor of the file it is reading (`current`) and
//! of every newer file it has identified but not read yet (`queued`). Rotation
//! renames files; an open descriptor keeps reading the same file whatever its
//! name becomes, and even after it is unlinked. Newer files are identified by
//! [`Follower::look_ahead`], one [`Successor`] case at a time.
//!
//! # Retention
//! A reader may finish the file it is reading after that file was unlinked,
//! but a queued file that has been unlinked, or a newest held file that is gone
//! before its successor was identified, means the reader fell behind the
//! retention window: it drains what it holds, then reports a missed rotation.
//! Held descriptors are therefore bounded by the retention count, and a slow
//! reader never pins more disk than the chain itself.
//!
//! # Lines
//! Only complete lines (ending in `\n`) are consumed; a torn tail waits for the
//! rest of its line. A torn tail left in a file that has a successor is a
//! record cut short by a crash: it is skipped. Empty, malformed and
//! unknown-source lines are skipped and counted, with one warning per file. A
//! file that shrinks under the reader was truncated: it is read again from
//! offset 0 as a new generation, with a warning.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};

use super::chain::{unlinked, Chain, Held, Successor};
use super::parse::{Decoders, LineFilter};
use crate::log::format::{LogCursor, Position, SourceSet, StreamKey};
use crate::log::{Error, LogEntry, Result};

/// Bytes read from disk per step.
const READ_CHUNK: usize = 1 << 20;
/// How many times a successor search retries while a rotation is under way.
const SCAN_RETRIES: usize = 32;
/// Whole rotated files older than `since` by this much are skipped unread.
const SKIP_MARGIN: Duration = Duration::from_secs(1);

/// Where a follower starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The oldest retained file, offset 0.
    Beginning,
    /// A cursor position.
    At(Position),
}

/// What a read step ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadStatus {
    /// The step's byte budget ran out; more may be ready now.
    More,
    /// Everything on disk was read; new data will come with a wake.
    Idle,
    /// The next file was rotated past retention; everything before it was read.
    Missed {
        /// Continues with the oldest retained file.
        resume_from: Position,
    },
    /// The log directory is gone; everything held was read.
    DirGone,
}

/// Reads one log of one sandbox, following rotation. See the module docs.
#[derive(Debug)]
pub struct Follower {
    chain: Chain,
    sources: SourceSet,
    skip_before: Option<DateTime<Utc>>,
    /// Every entry's cursor is this one with the entry's own position set.
    base: LogCursor,
    current: Option<Held>,
    /// Consumed offset in `current`: just past the last complete line.
    offset: u64,
    /// Bytes after `offset` already read: the start of a line without its `\n`.
    partial: Vec<u8>,
    queued: VecDeque<Held>,
    missed: bool,
    dir_gone: bool,
    decoders: Decoders,
    skipped_in_file: u64,
    skipped_total: u64,
}

impl Follower {
    /// Opens the log `stream` in `dir` at `start`.
    ///
    /// A start position whose file is no longer retained makes the first read
    /// report [`ReadStatus::Missed`].
    ///
    /// # Errors
    /// [`Error::Io`] if the directory cannot be listed or a file of the log
    /// cannot be opened or identified. A log with no file yet is not an error:
    /// it is opened when it appears.
    pub fn open(
        dir: &Path,
        stream: StreamKey,
        start: Start,
        sources: SourceSet,
        skip_before: Option<DateTime<Utc>>,
        base: LogCursor,
    ) -> Result<Self> {
        let mut follower = Self {
            chain: Chain::new(dir, stream),
            sources,
            skip_before,
            base,
            current: None,
            offset: 0,
            partial: Vec::new(),
            queued: VecDeque::new(),
            missed: false,
            dir_gone: false,
            decoders: Decoders::default(),
            skipped_in_file: 0,
            skipped_total: 0,
        };
        match start {
            Start::Beginning => {
                if let Some(held) = follower.chain.open_oldest()? {
                    follower.start_file(held)?;
                }
            }
            Start::At(position) => follower.open_at(position)?,
        }
        Ok(follower)
    }

    /// Lines skipped so far (empty, malformed, unknown source, torn by a crash).
    pub fn skipped(&self) -> u64 {
        self.skipped_total
    }

    /// The position just past the last consumed line, once a file is open.
    pub fn position(&self) -> Option<Position> {
        self.current.as_ref().map(|held| Position {
            file: held.id,
            offset: self.offset,
        })
    }

    /// Reads up to about `budget` bytes of complete lines, following rotation,
    /// and returns the entries whose source is wanted.
    ///
    /// # Errors
    /// [`Error::Io`] if a held file cannot be read or `fstat`ed, or the chain
    /// cannot be walked. Entries appended to `out` before the error stand;
    /// the caller restarts from the last position it delivered.
    pub fn read(&mut self, budget: usize, out: &mut Vec<LogEntry>) -> Result<ReadStatus> {
        let mut consumed = 0usize;
        let mut looked_ahead = false;
        loop {
            if self.current.is_none() {
                if self.missed {
                    return self.missed_status();
                }
                if !self.open_live()? {
                    return Ok(if self.dir_gone {
                        ReadStatus::DirGone
                    } else {
                        ReadStatus::Idle
                    });
                }
            }
            let chunk = self.read_chunk()?;
            if let Some(chunk) = chunk {
                consumed += self.parse_chunk(chunk, out);
                if consumed >= budget {
                    return Ok(ReadStatus::More);
                }
                continue;
            }
            if let Some(next) = self.queued.pop_front() {
                if self.chain.stream().rotates() && unlinked(&next.file, self.chain.dir())? {
                    // Rotated past retention before the reader got to it.
                    self.mark_missed();
                    return self.missed_status();
                }
                self.switch_to(next)?;
                looked_ahead = false;
                continue;
            }
            if !looked_ahead {
                looked_ahead = true;
                self.look_ahead()?;
                if !self.queued.is_empty() {
                    // The live file has a successor now, so it is final: read
                    // whatever landed in it before switching.
                    continue;
                }
            }
            if self.missed {
                return self.missed_status();
            }
            if self.dir_gone {
                return Ok(ReadStatus::DirGone);
            }
            return Ok(ReadStatus::Idle);
        }
    }

    /// Identifies files newer than the newest held one, so that rotation cannot
    /// take them away unnoticed. Cheap when nothing rotated: one `stat`.
    ///
    /// # Errors
    /// [`Error::Io`] if a file of the chain cannot be identified or opened,
    /// or the directory listed.
    pub fn look_ahead(&mut self) -> Result<()> {
        if self.missed || self.current.is_none() {
            return Ok(());
        }
        if self.queued_file_unlinked()? {
            self.mark_missed();
            return Ok(());
        }
        let dir = self.chain.dir().display();
        let log = self.chain.stream().file_name();
        let mut retries = 0;
        loop {
            let Some(newest) = self.queued.back().or(self.current.as_ref()) else {
                return Ok(());
            };
            let successor = self.chain.successor(newest)?;
            let case = successor.name();
            match successor {
                Successor::Latest => return Ok(()),
                Successor::NoLiveFile => {
                    self.dir_gone = !self.chain.dir().is_dir();
                    tracing::trace!(%dir, log, case, dir_gone = self.dir_gone, "no live file");
                    return Ok(());
                }
                Successor::Replaced(held) => {
                    tracing::debug!(%dir, log, case, "the log was replaced by a new file; reading it next");
                    self.queued.push_back(held);
                    return Ok(());
                }
                Successor::Found(held) => {
                    tracing::debug!(%dir, log, case, "next file of the rotation chain identified");
                    self.queued.push_back(held);
                    retries = 0;
                }
                Successor::Gone => {
                    tracing::debug!(%dir, log, case, "the newest held file was rotated past retention before its successor was identified");
                    self.mark_missed();
                    return Ok(());
                }
                Successor::NotYet => {
                    tracing::trace!(%dir, log, case, "rotation half done; the successor comes with a later wake");
                    return Ok(());
                }
                Successor::Moved => {
                    retries += 1;
                    if retries > SCAN_RETRIES {
                        tracing::debug!(%dir, log, case, retries, "files kept moving during the search; trying again on the next wake");
                        return Ok(());
                    }
                    tracing::trace!(%dir, log, case, retries, "files moved during the search; searching again");
                }
            }
        }
    }

    fn missed_status(&mut self) -> Result<ReadStatus> {
        let resume_from = self.chain.oldest_position()?;
        Ok(ReadStatus::Missed { resume_from })
    }

    fn mark_missed(&mut self) {
        self.missed = true;
        self.queued.clear();
    }

    /// Whether a queued (not yet started) file was unlinked by rotation.
    fn queued_file_unlinked(&self) -> Result<bool> {
        for held in &self.queued {
            if unlinked(&held.file, self.chain.dir())? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn open_at(&mut self, position: Position) -> Result<()> {
        for _ in 0..SCAN_RETRIES {
            let Some(path) = self.chain.locate(position.file)? else {
                break;
            };
            if let Some(held) = self.chain.open(&path)? {
                if held.id == position.file {
                    let len = held.file.metadata().map_err(|e| Error::io(&path, e))?.len();
                    self.offset = if position.offset > len {
                        tracing::warn!(path = %path.display(), offset = position.offset, len, "file is shorter than the cursor: truncated, reading it from the start");
                        0
                    } else {
                        position.offset
                    };
                    self.current = Some(held);
                    return Ok(());
                }
            }
        }
        self.missed = true;
        Ok(())
    }

    /// Opens the live file when nothing is open yet (it did not exist before).
    fn open_live(&mut self) -> Result<bool> {
        match self.chain.open(&self.chain.path_at(0))? {
            Some(held) => {
                self.start_file(held)?;
                Ok(true)
            }
            None => {
                self.dir_gone = !self.chain.dir().is_dir();
                Ok(false)
            }
        }
    }

    fn switch_to(&mut self, next: Held) -> Result<()> {
        if !self.partial.is_empty() {
            self.partial.clear();
            self.skip_line();
        }
        self.start_file(next)
    }

    fn start_file(&mut self, held: Held) -> Result<()> {
        let dir = self.chain.dir();
        if self.skipped_in_file > 1 {
            tracing::debug!(dir = %dir.display(), skipped = self.skipped_in_file, "lines skipped in previous file");
        }
        self.skipped_in_file = 0;
        self.offset = 0;
        self.partial.clear();
        if let Some(since) = self.skip_before {
            let meta = held.file.metadata().map_err(|e| Error::io(dir, e))?;
            let is_live = self.chain.is_live(held.id);
            let mtime: DateTime<Utc> = meta.modified().map_err(|e| Error::io(dir, e))?.into();
            if !is_live && mtime + SKIP_MARGIN < since {
                self.offset = meta.len();
            }
        }
        self.current = Some(held);
        Ok(())
    }

    /// Reads the next bytes after what is consumed and pending; `None` at end of file.
    fn read_chunk(&mut self) -> Result<Option<(Bytes, DateTime<Utc>)>> {
        let Some(held) = self.current.as_ref() else {
            return Ok(None);
        };
        let meta = held
            .file
            .metadata()
            .map_err(|e| Error::io(self.chain.path_at(0), e))?;
        let read_pos = self.offset + self.partial.len() as u64;
        if meta.len() < read_pos {
            tracing::warn!(dir = %self.chain.dir().display(), log = self.chain.stream().file_name(), len = meta.len(), offset = read_pos, "file shrank under the reader: truncated, reading it again from the start");
            self.offset = 0;
            self.partial.clear();
            return self.read_chunk();
        }
        let available = meta.len() - read_pos;
        if available == 0 {
            return Ok(None);
        }
        let want = usize::try_from(available)
            .unwrap_or(usize::MAX)
            .min(READ_CHUNK.max(self.partial.len()));
        let mut buf = BytesMut::with_capacity(self.partial.len() + want);
        buf.extend_from_slice(&self.partial);
        let start = buf.len();
        buf.resize(start + want, 0);
        let got = read_full_at(&held.file, &mut buf[start..], read_pos)
            .map_err(|e| Error::io(self.chain.path_at(0), e))?;
        buf.truncate(start + got);
        if got == 0 {
            return Ok(None);
        }
        let mtime = meta
            .modified()
            .map(DateTime::<Utc>::from)
            .unwrap_or_else(|_| Utc::now());
        self.partial.clear();
        Ok(Some((buf.freeze(), mtime)))
    }

    /// Parses the complete lines of `chunk` (which starts at `self.offset`),
    /// keeps the torn tail, and returns the bytes consumed.
    fn parse_chunk(
        &mut self,
        (chunk, mtime): (Bytes, DateTime<Utc>),
        out: &mut Vec<LogEntry>,
    ) -> usize {
        let Some(last_newline) = memchr::memrchr(b'\n', &chunk) else {
            self.partial.extend_from_slice(&chunk);
            return 0;
        };
        let complete = chunk.slice(..=last_newline);
        self.partial.extend_from_slice(&chunk[last_newline + 1..]);
        let Some(file) = self.current.as_ref().map(|held| held.id) else {
            return 0;
        };
        let filter = LineFilter {
            stream: self.chain.stream(),
            sources: self.sources,
            since: self.skip_before,
            base: self.base,
            file,
            mtime,
        };
        let skipped = filter.parse_all(&mut self.decoders, &complete, self.offset, out);
        for _ in 0..skipped {
            self.skip_line();
        }
        self.offset += complete.len() as u64;
        complete.len()
    }

    fn skip_line(&mut self) {
        self.skipped_in_file += 1;
        self.skipped_total += 1;
        if self.skipped_in_file == 1 {
            tracing::warn!(dir = %self.chain.dir().display(), log = self.chain.stream().file_name(), "skipping empty, malformed or unknown-source lines in this file; further ones are only counted");
        }
    }
}

fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::format::{FileId, LogSource, RecordEncoder};
    use chrono::TimeZone;
    use std::io::Write;

    fn record(i: u64) -> (Vec<u8>, Vec<u8>) {
        let data: Vec<u8> = match i % 4 {
            0 => format!("plain {i}").into_bytes(),
            1 => format!("escaped \"{i}\"\n\t").into_bytes(),
            2 => vec![0xff, (i % 251) as u8, 0x80],
            _ => format!("unicode ✓ {i}").into_bytes(),
        };
        let mut line = Vec::new();
        let t = Utc
            .timestamp_millis_opt(1_777_000_000_000 + i as i64)
            .unwrap();
        RecordEncoder::default().encode(&mut line, t, LogSource::Stdout, Some(i), &data);
        (line, data)
    }

    fn append(path: &Path, bytes: &[u8]) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(bytes).unwrap();
    }

    /// A follower of the `exec.log` chain in `dir`, from the beginning.
    fn exec_follower(dir: &Path) -> Follower {
        let base = LogCursor::new(FileId {
            ino: 1,
            btime_ns: 0,
        });
        Follower::open(
            dir,
            StreamKey::Exec,
            Start::Beginning,
            SourceSet::from_requested(&[]),
            None,
            base,
        )
        .unwrap()
    }

    fn read_all(follower: &mut Follower) -> Vec<LogEntry> {
        let mut out = Vec::new();
        while follower.read(64 << 20, &mut out).unwrap() == ReadStatus::More {}
        out
    }

    #[test]
    fn large_chunks_parsed_in_halves_match_the_file_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("exec.log");
        let mut want = Vec::new();
        let mut file = Vec::new();
        for i in 0..20_000 {
            let (line, data) = record(i);
            file.extend_from_slice(&line);
            want.push((i, data));
            if i % 997 == 0 {
                file.extend_from_slice(b"{malformed\n\n");
            }
        }
        append(&path, &file);
        let mut follower = exec_follower(dir.path());
        let got = read_all(&mut follower);
        assert_eq!(got.len(), want.len());
        for (entry, (i, data)) in got.iter().zip(&want) {
            assert_eq!(entry.session_id, Some(*i));
            assert_eq!(entry.data.as_ref(), data.as_slice(), "record {i}");
        }
        let offset = |e: &LogEntry| e.cursor.position(StreamKey::Exec).unwrap().offset;
        assert!(got.windows(2).all(|w| offset(&w[0]) < offset(&w[1])));
        assert_eq!(offset(got.last().unwrap()), file.len() as u64);
        assert_eq!(follower.skipped(), 2 * (20_000 / 997 + 1));
    }

    #[test]
    fn a_rotated_file_is_drained_before_its_successor() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("exec.log");
        append(&live, &record(0).0);
        let mut follower = exec_follower(dir.path());
        assert_eq!(read_all(&mut follower).len(), 1);
        // A last record lands in the live file, then it is rotated and a new
        // live file gets the next record, all before the reader looks again.
        append(&live, &record(1).0);
        std::fs::rename(&live, dir.path().join("exec.log.1")).unwrap();
        append(&live, &record(2).0);
        let ids: Vec<_> = read_all(&mut follower)
            .iter()
            .map(|e| e.session_id.unwrap())
            .collect();
        assert_eq!(ids, [1, 2]);
        // Two more rotations while the reader holds the newest file: it still
        // reads everything, in order.
        append(&live, &record(3).0);
        std::fs::rename(dir.path().join("exec.log.1"), dir.path().join("exec.log.2")).unwrap();
        std::fs::rename(&live, dir.path().join("exec.log.1")).unwrap();
        append(&live, &record(4).0);
        let ids: Vec<_> = read_all(&mut follower)
            .iter()
            .map(|e| e.session_id.unwrap())
            .collect();
        assert_eq!(ids, [3, 4]);
    }

    #[test]
    fn a_queued_file_rotated_away_is_a_missed_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("exec.log");
        append(&live, &record(0).0);
        let mut follower = exec_follower(dir.path());
        read_all(&mut follower);
        // Rotate once and let the follower queue the new live file.
        std::fs::rename(&live, dir.path().join("exec.log.1")).unwrap();
        append(&live, &record(1).0);
        follower.look_ahead().unwrap();
        // Then two more rotations of a one-deep chain unlink it too.
        for i in [2, 3] {
            std::fs::rename(&live, dir.path().join("exec.log.1")).unwrap();
            append(&live, &record(i).0);
        }
        let mut out = Vec::new();
        let status = follower.read(64 << 20, &mut out).unwrap();
        assert!(matches!(status, ReadStatus::Missed { .. }), "{status:?}");
        assert!(
            out.is_empty(),
            "nothing after the gap may be delivered before the miss is reported"
        );
    }
}
