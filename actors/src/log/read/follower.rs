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

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rayon::prelude::*;

use super::chain::{unlinked, Chain, Held, Successor};
use super::entries::Entries;
use super::parse::{Decoders, LineFilter, Parsed};
use crate::log::format::{LogCursor, Position, SourceSet, StreamKey};
use crate::log::{Error, Result};

/// Bytes read from disk per step.
const READ_CHUNK: usize = 1 << 20;
/// A backlog smaller than this is read in one piece even on the pool.
const PIECES_MIN_BYTES: usize = 256 << 10;
/// A read buffer larger than this is released when the reader is idle.
const IDLE_BUF_BYTES: usize = 64 << 10;
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
    /// The last step in pieces found no line end: read serially until one
    /// comes.
    long_line: bool,
    /// The read buffer, reused from chunk to chunk; released when the reader
    /// is idle, so that an idle follower holds no more than its torn tail.
    buf: Vec<u8>,
    queued: VecDeque<Held>,
    missed: bool,
    dir_gone: bool,
    decoders: Decoders,
    skipped_in_file: u64,
    skipped_total: u64,
    consumed: u64,
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
            long_line: false,
            buf: Vec::new(),
            queued: VecDeque::new(),
            missed: false,
            dir_gone: false,
            decoders: Decoders::default(),
            skipped_in_file: 0,
            skipped_total: 0,
            consumed: 0,
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
    pub fn read(&mut self, budget: usize, out: &mut Entries) -> Result<ReadStatus> {
        self.read_inner(budget, out, false)
    }

    /// Like [`read`](Self::read), for a caller on rayon's pool: a large
    /// backlog is cut into one piece per pool thread, each read from the file
    /// and parsed by its own thread, and the entries joined in file order.
    ///
    /// # Errors
    /// As [`read`](Self::read).
    pub fn read_in_pieces(&mut self, budget: usize, out: &mut Entries) -> Result<ReadStatus> {
        self.read_inner(budget, out, true)
    }

    fn read_inner(
        &mut self,
        budget: usize,
        out: &mut Entries,
        in_pieces: bool,
    ) -> Result<ReadStatus> {
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
            let step = if in_pieces {
                self.read_pieces(budget.saturating_sub(consumed), out)?
            } else {
                None
            };
            if let Some(step) = step {
                consumed += step;
                if consumed >= budget {
                    return Ok(ReadStatus::More);
                }
                continue;
            }
            if let Some((len, mtime)) = self.read_chunk()? {
                consumed += self.parse_chunk(len, mtime, out);
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
            if self.buf.len() > IDLE_BUF_BYTES {
                self.buf = Vec::new();
            }
            return Ok(ReadStatus::Idle);
        }
    }

    /// Bytes consumed so far (complete lines, across files).
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// An estimate of the bytes left to read in the log: the rest of the
    /// current file and every newer one.
    ///
    /// # Errors
    /// [`Error::Io`] if the chain cannot be walked.
    pub fn remaining(&self) -> Result<u64> {
        match self.position() {
            Some(position) => self.chain.bytes_after(position),
            None => Ok(0),
        }
    }

    /// About how much the next [`read`](Self::read) has waiting: the bytes
    /// of the current file past what was consumed (0 without a file), plus a
    /// full chunk for each newer file already identified. Enough to tell a
    /// followed append from a catch-up.
    ///
    /// # Errors
    /// [`Error::Io`] if the file cannot be `fstat`ed.
    pub fn backlog(&self) -> Result<u64> {
        let Some(held) = self.current.as_ref() else {
            return Ok(0);
        };
        let len = held
            .file
            .metadata()
            .map_err(|e| Error::io(self.chain.path_at(0), e))?
            .len();
        Ok(len.saturating_sub(self.offset) + self.queued.len() as u64 * READ_CHUNK as u64)
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
        self.long_line = false;
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
    /// Reads up to `budget` bytes of the current file from the consumed
    /// offset in pieces on the pool (see [`read_in_pieces`](Self::read_in_pieces));
    /// `None` if less than [`PIECES_MIN_BYTES`] is there, which the serial
    /// path reads. Returns the bytes consumed; a torn tail is kept as such.
    fn read_pieces(&mut self, budget: usize, out: &mut Entries) -> Result<Option<usize>> {
        let Some(held) = self.current.as_ref() else {
            return Ok(None);
        };
        if self.long_line {
            return Ok(None);
        }
        let path = self.chain.path_at(0);
        let meta = held.file.metadata().map_err(|e| Error::io(&path, e))?;
        let available = meta.len().saturating_sub(self.offset);
        let len = available.min(budget.max(PIECES_MIN_BYTES) as u64);
        if len < PIECES_MIN_BYTES as u64 {
            return Ok(None);
        }
        let start = self.offset;
        // The step ends at a line start where one is near, so that the next
        // step starts clean and only a tail torn at the end of the file is
        // left over.
        let mut end = start + len;
        if end < meta.len() {
            let limit = meta.len().min(end + READ_CHUNK as u64);
            if let Some(bound) =
                line_start_from(&held.file, end, limit).map_err(|e| Error::io(&path, e))?
            {
                end = bound;
            }
        }
        let len = end - start;
        let threads = rayon::current_num_threads().max(1) as u64;
        let mut bounds = vec![start];
        for i in 1..threads {
            let last = bounds[bounds.len() - 1];
            let from = (start + len * i / threads).max(last + 1);
            match line_start_from(&held.file, from, end).map_err(|e| Error::io(&path, e))? {
                Some(bound) if bound < end => bounds.push(bound),
                _ => break,
            }
        }
        bounds.push(end);
        let filter = LineFilter {
            stream: self.chain.stream(),
            sources: self.sources,
            since: self.skip_before,
            base: self.base,
            file: held.id,
            mtime: meta
                .modified()
                .map(DateTime::<Utc>::from)
                .unwrap_or_else(|_| Utc::now()),
        };
        let file = &held.file;
        let ranges: Vec<(u64, u64)> = bounds.windows(2).map(|w| (w[0], w[1])).collect();
        let pieces: Vec<io::Result<Piece>> = ranges
            .into_par_iter()
            .map(|(from, to)| read_piece(file, from, to, &filter))
            .collect();
        // Pieces join while each ends where the next begins; one that ends
        // short (its file shrank meanwhile, or its last line is torn) ends
        // the step, and its unterminated bytes are the torn tail.
        self.partial.clear();
        let mut consumed = 0;
        let mut skipped = 0;
        for (piece, (from, to)) in pieces
            .into_iter()
            .zip(bounds.windows(2).map(|w| (w[0], w[1])))
        {
            let piece = piece.map_err(|e| Error::io(&path, e))?;
            out.push_run(piece.parsed.entries, piece.parsed.in_order);
            skipped += piece.parsed.skipped;
            consumed += piece.complete;
            if from + piece.complete as u64 != to {
                self.partial = piece.tail;
                break;
            }
        }
        for _ in 0..skipped {
            self.skip_line();
        }
        self.offset += consumed as u64;
        self.consumed += consumed as u64;
        // Not one line ended in the whole step: a line longer than a step,
        // which the serial path gathers in the torn tail.
        self.long_line = consumed == 0;
        Ok(Some(consumed))
    }

    /// Reads the next bytes of the current file into `self.buf`, after the
    /// torn tail kept from the last read; returns how many bytes of `buf` are
    /// valid and the file's mtime, or `None` if nothing new is there.
    fn read_chunk(&mut self) -> Result<Option<(usize, DateTime<Utc>)>> {
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
            self.long_line = false;
            return self.read_chunk();
        }
        let available = meta.len() - read_pos;
        if available == 0 {
            return Ok(None);
        }
        let want = usize::try_from(available)
            .unwrap_or(usize::MAX)
            .min(READ_CHUNK.max(self.partial.len()));
        let kept = self.partial.len();
        // The buffer is reused from read to read, so its pages are touched
        // once, not once per chunk.
        if self.buf.len() < kept + want {
            self.buf.resize(kept + want, 0);
        }
        self.buf[..kept].copy_from_slice(&self.partial);
        let got = read_full_at(&held.file, &mut self.buf[kept..kept + want], read_pos)
            .map_err(|e| Error::io(self.chain.path_at(0), e))?;
        if got == 0 {
            return Ok(None);
        }
        let mtime = meta
            .modified()
            .map(DateTime::<Utc>::from)
            .unwrap_or_else(|_| Utc::now());
        self.partial.clear();
        Ok(Some((kept + got, mtime)))
    }

    /// Parses the complete lines of `self.buf[..len]`, keeps the torn tail,
    /// and returns the bytes consumed.
    fn parse_chunk(&mut self, len: usize, mtime: DateTime<Utc>, out: &mut Entries) -> usize {
        let buf = std::mem::take(&mut self.buf);
        let consumed = self.parse_lines(&buf[..len], mtime, out);
        self.buf = buf;
        consumed
    }

    fn parse_lines(&mut self, chunk: &[u8], mtime: DateTime<Utc>, out: &mut Entries) -> usize {
        let Some(last_newline) = memchr::memrchr(b'\n', chunk) else {
            self.partial.extend_from_slice(chunk);
            return 0;
        };
        let complete = &chunk[..=last_newline];
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
        let skipped = filter.parse_all(&mut self.decoders, complete, self.offset, out);
        for _ in 0..skipped {
            self.skip_line();
        }
        self.offset += complete.len() as u64;
        self.consumed += complete.len() as u64;
        self.long_line = false;
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

/// One piece of a [`Follower::read_pieces`] step.
struct Piece {
    parsed: Parsed,
    /// Bytes of complete lines in the piece.
    complete: usize,
    /// The bytes after its last `\n`.
    tail: Vec<u8>,
}

thread_local! {
    /// Each pool thread's read buffer for its pieces, reused across steps.
    static PIECE_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Reads `file[from..to]` and parses its complete lines.
fn read_piece(file: &File, from: u64, to: u64, filter: &LineFilter) -> io::Result<Piece> {
    PIECE_BUF.with_borrow_mut(|buf| {
        let len = usize::try_from(to - from).unwrap_or(usize::MAX);
        if buf.len() < len {
            buf.resize(len, 0);
        }
        let got = read_full_at(file, &mut buf[..len], from)?;
        let bytes = &buf[..got];
        let complete = memchr::memrchr(b'\n', bytes).map_or(0, |i| i + 1);
        let parsed = filter.parse(&mut Decoders::default(), &bytes[..complete], from);
        Ok(Piece {
            parsed,
            complete,
            tail: bytes[complete..].to_vec(),
        })
    })
}

/// The first line start in `[from, end]`: the position just after the first
/// `\n` at or after `from - 1`. `None` if none is before `end`.
fn line_start_from(file: &File, from: u64, end: u64) -> io::Result<Option<u64>> {
    let mut window = [0u8; 4096];
    let mut at = from.saturating_sub(1);
    while at < end {
        let want = usize::try_from(end - at)
            .unwrap_or(usize::MAX)
            .min(window.len());
        let got = read_full_at(file, &mut window[..want], at)?;
        if got == 0 {
            return Ok(None);
        }
        if let Some(i) = memchr::memchr(b'\n', &window[..got]) {
            return Ok(Some(at + i as u64 + 1));
        }
        at += got as u64;
    }
    Ok(None)
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
    use crate::log::LogEntry;
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
        let mut out = Entries::new();
        while follower.read(64 << 20, &mut out).unwrap() == ReadStatus::More {}
        out.into_vec()
    }

    /// Reads everything in steps of `budget` bytes, in pieces.
    fn read_all_in_pieces(follower: &mut Follower, budget: usize) -> Vec<LogEntry> {
        let mut out = Entries::new();
        while follower.read_in_pieces(budget, &mut out).unwrap() == ReadStatus::More {}
        out.into_vec()
    }

    #[test]
    fn large_reads_match_the_file_exactly_serially_and_in_pieces() {
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
        // A torn last line, which only a later write completes.
        let (torn, _) = record(20_000);
        file.extend_from_slice(&torn[..torn.len() / 2]);
        append(&path, &file);
        // Serially, then in pieces of small and of large steps.
        for (way, step) in [None, Some(300 << 10), Some(64 << 20)]
            .into_iter()
            .enumerate()
        {
            let mut follower = exec_follower(dir.path());
            let got = match step {
                None => read_all(&mut follower),
                Some(step) => read_all_in_pieces(&mut follower, step),
            };
            assert_eq!(got.len(), want.len(), "way {way}");
            for (entry, (i, data)) in got.iter().zip(&want) {
                assert_eq!(entry.session_id, Some(*i), "way {way}");
                assert_eq!(
                    entry.data.as_ref(),
                    data.as_slice(),
                    "record {i}, way {way}"
                );
            }
            let offset = |e: &LogEntry| e.cursor.position(StreamKey::Exec).unwrap().offset;
            assert!(got.windows(2).all(|w| offset(&w[0]) < offset(&w[1])));
            let complete = (file.len() - torn.len() / 2) as u64;
            assert_eq!(offset(got.last().unwrap()), complete, "way {way}");
            assert_eq!(follower.position().map(|p| p.offset), Some(complete));
            assert_eq!(follower.skipped(), 2 * (20_000 / 997 + 1), "way {way}");
        }
    }

    #[test]
    fn a_line_longer_than_a_step_is_read_whole_in_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("exec.log");
        let mut encoder = RecordEncoder::default();
        let t = Utc.timestamp_millis_opt(1_777_000_000_000).unwrap();
        let long = vec![b'x'; 3 << 20];
        let mut file = Vec::new();
        for (i, data) in [&b"before"[..], &long, b"after"].into_iter().enumerate() {
            encoder.encode(&mut file, t, LogSource::Stdout, Some(i as u64 + 1), data);
        }
        append(&path, &file);
        let mut follower = exec_follower(dir.path());
        let got = read_all_in_pieces(&mut follower, 300 << 10);
        let data: Vec<&[u8]> = got.iter().map(|e| e.data.as_ref()).collect();
        assert_eq!(data, [&b"before"[..], &long, b"after"]);
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
        let mut out = Entries::new();
        let status = follower.read(64 << 20, &mut out).unwrap();
        assert!(matches!(status, ReadStatus::Missed { .. }), "{status:?}");
        assert!(
            out.is_empty(),
            "nothing after the gap may be delivered before the miss is reported"
        );
    }
}
