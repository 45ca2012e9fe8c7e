//! The relay tap: the one writer of a sandbox's `exec.log`.
//!
//! # Contract
//! - Each chunk becomes one record, in the order the messages arrive, written
//!   on a descriptor opened with `O_APPEND`. A record is never split across
//!   writes or files: the records of one message are written whole, with one
//!   `write(2)` per message (or per rotation boundary inside it).
//! - Before a record that would take `exec.log` past `max_bytes`, the tap
//!   rotates: `.{keep-1}`→`.{keep}`, …, `.1`→`.2`, `exec.log`→`.1` (renames; the
//!   oldest is replaced), then opens a fresh `exec.log`, and tells its
//!   parent [`TapEvent::Rotated`]. A single record larger than `max_bytes` is
//!   written alone into a fresh file.
//! - Restart-safe: a new incarnation reopens `exec.log` in append mode and
//!   counts from its current size, so a crash costs at most the chunk being
//!   written, and a supervisor that replays unacknowledged chunks loses none.
//! - A torn last line (bytes after the last `\n`: a host that died mid-write,
//!   or anyone appending to the file) is ended with `\n` whenever the tap
//!   opens a file, so it stays one malformed line that readers skip, and the
//!   next record starts a line of its own instead of merging into it.
//! - A full disk (`ENOSPC`, `EDQUOT`) is waited out: the tap retries the
//!   records not yet written, pausing 10 ms, then twice as long each time
//!   up to 1 s, for at most [`TapConfig::disk_full_wait`]. Meanwhile it
//!   answers nothing, so the capture side waits and the sandbox's pipes fill
//!   (back-pressure, nothing dropped). Past that wait the tap fails with
//!   [`DiskFull`], which its supervisor does not retry.
//! - Any other write or rotation error fails the actor (its supervisor
//!   restarts it).
//! - [`RelayTapMsg::Flush`] answers once every earlier message is on disk
//!   (in the page cache: the tap does not fsync).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use ractor::{Actor, ActorProcessingErr, ActorRef, DerivedActorRef, RpcReplyPort};
use rayon::prelude::*;

use crate::log::format::{LogSource, RecordEncoder, StreamKey};
use crate::log::read::watch_hub;

/// Messages carrying at least this much data are encoded on several threads.
const PARALLEL_ENCODE_BYTES: usize = 64 << 10;

/// Default rotation size: 10 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 10 * 1024 * 1024;
/// Default number of rotated files kept.
pub const DEFAULT_KEEP: usize = 4;
/// Default longest wait for disk space before a tap gives up: 60 s.
pub const DEFAULT_DISK_FULL_WAIT: Duration = Duration::from_secs(60);
/// The first pause before a write is retried on a full disk; each next one
/// doubles, up to [`LONGEST_DISK_FULL_PAUSE`].
const FIRST_DISK_FULL_PAUSE: Duration = Duration::from_millis(10);
const LONGEST_DISK_FULL_PAUSE: Duration = Duration::from_secs(1);

/// Where and how a tap writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapConfig {
    /// The sandbox's log directory.
    pub dir: PathBuf,
    /// Rotate before `exec.log` would pass this size.
    pub max_bytes: u64,
    /// Rotated files kept (`exec.log.1` … `exec.log.{keep}`).
    pub keep: usize,
    /// How long a write may wait for space on a full disk before the tap
    /// gives up with [`DiskFull`].
    pub disk_full_wait: Duration,
    /// Nothing outside this process writes into `dir` while the tap runs
    /// (no VM console there). The tap then claims the directory with the
    /// watch hub ([`watch_hub::claim_writer`]): its readers in this process
    /// are woken by the tap alone and no inotify watch taxes its writes.
    pub sole_writer: bool,
}

impl TapConfig {
    /// A tap writing into `dir` with the default rotation (10 MiB × 4) and
    /// the default wait on a full disk (60 s).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            max_bytes: DEFAULT_MAX_BYTES,
            keep: DEFAULT_KEEP,
            disk_full_wait: DEFAULT_DISK_FULL_WAIT,
            sole_writer: false,
        }
    }
}

/// Why a tap failed for good: `exec.log` stayed unwritable for lack of
/// space for the whole [`TapConfig::disk_full_wait`]. Restarting it would
/// only wait again; the run cannot keep its output.
#[derive(Debug, thiserror::Error)]
#[error("{path}: the disk stayed full for {waited:?}: {source}")]
pub struct DiskFull {
    /// The log being written.
    pub path: PathBuf,
    /// How long the tap waited.
    pub waited: Duration,
    /// The last write's error.
    #[source]
    pub source: io::Error,
}

/// One captured chunk of output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Exec session id (1 for the sandbox's main process).
    pub session_id: u64,
    /// Which stream it came from.
    pub source: LogSource,
    /// The bytes, unaltered.
    pub data: Bytes,
    /// Host wall-clock time at capture.
    pub captured_at: DateTime<Utc>,
}

impl Chunk {
    /// A `system` record (a lifecycle marker) stamped `at`; system records
    /// carry no session.
    pub fn system(text: impl Into<Bytes>, at: DateTime<Utc>) -> Self {
        Self {
            session_id: 0,
            source: LogSource::System,
            data: text.into(),
            captured_at: at,
        }
    }

    /// A chunk captured now.
    pub fn now(session_id: u64, source: LogSource, data: impl Into<Bytes>) -> Self {
        Self {
            session_id,
            source,
            data: data.into(),
            captured_at: Utc::now(),
        }
    }
}

/// What a tap tells its parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TapEvent {
    /// `exec.log` was rotated; `generation` counts rotations seen by this tap
    /// and the incarnations before it (see [`TapArgs::generation`]).
    Rotated {
        /// The rotation count after this one.
        generation: u64,
    },
}

/// Messages of the [`RelayTap`].
#[derive(Debug)]
pub enum RelayTapMsg {
    /// Write one record.
    Chunk(Chunk),
    /// Write one record per chunk, in order.
    Chunks(Vec<Chunk>),
    /// Write one record per chunk and answer once they are written, with
    /// where the last one ends. A capture
    /// side that waits for the answer knows exactly what reached the file: the
    /// tap writes and answers in one step that a kill cannot split, so chunks
    /// whose call failed were not written and can go to the next tap. A write
    /// error answers `Err(n)`: the first `n` chunks are on disk, whole, and
    /// the tap then fails.
    Append(Vec<Chunk>, RpcReplyPort<Result<LogPosition, usize>>),
    /// Write a `system` record (a lifecycle marker such as `--- sandbox started ---`).
    System {
        /// The marker text.
        text: String,
        /// When it happened.
        at: DateTime<Utc>,
    },
    /// Answer once every earlier message is written.
    Flush(RpcReplyPort<TapStats>),
}

impl RelayTapMsg {
    /// A system marker stamped now.
    pub fn system(text: impl Into<String>) -> Self {
        Self::System {
            text: text.into(),
            at: Utc::now(),
        }
    }
}

/// A place in the log: just past the last record written, in the file whose
/// inode is `inode` (a rotation renames the file; the inode stays).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogPosition {
    /// Inode of the file.
    pub inode: u64,
    /// Byte offset in it.
    pub offset: u64,
}

/// A tap's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TapStats {
    /// Records written by this incarnation.
    pub records: u64,
    /// Bytes written by this incarnation.
    pub bytes: u64,
    /// Current size of `exec.log`.
    pub size: u64,
    /// Rotation count (see [`TapEvent::Rotated`]).
    pub generation: u64,
}

/// Arguments to spawn a [`RelayTap`].
#[derive(Clone)]
pub struct TapArgs {
    /// Where and how to write.
    pub config: TapConfig,
    /// Rotation count to continue from (a restarted tap gets its predecessor's).
    pub generation: u64,
    /// Who hears about rotations.
    pub events: Option<DerivedActorRef<TapEvent>>,
}

/// What `file` needs before the next write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reopen {
    /// Nothing: it is `exec.log`, ending in a whole line.
    No,
    /// It is the file a rotation renamed: open the new `exec.log`.
    Rotated,
    /// Its torn tail could not be ended (a full disk): end it first.
    TornTail,
}

/// A failed write: how many chunks of the message are on disk, and why.
struct WriteFailure {
    written: usize,
    error: io::Error,
}

impl WriteFailure {
    /// What fails the tap: a [`DiskFull`] as itself (so the supervisor can
    /// tell it apart), any other error as the I/O error.
    fn into_error(self) -> ActorProcessingErr {
        match self.error.downcast::<DiskFull>() {
            Ok(full) => Box::new(full),
            Err(error) => Box::new(error),
        }
    }
}

/// The `exec.log` writer actor. See the module docs.
pub struct RelayTap;

/// The tap's state: the open file and its size.
pub struct TapState {
    config: TapConfig,
    live: PathBuf,
    file: File,
    /// `file`'s inode.
    inode: u64,
    stats: TapStats,
    encoder: RecordEncoder,
    /// Encoded records not yet written, and how many.
    batch: Vec<u8>,
    batch_records: usize,
    /// Chunks of the current message written so far.
    written: usize,
    /// What to do with `file` before the next write.
    reopen: Reopen,
    events: Option<DerivedActorRef<TapEvent>>,
    /// The log directory as the watch hub names it, for waking readers in
    /// this process after a write (`None` if it cannot be resolved: readers
    /// then rely on inotify and their poll).
    canonical_dir: Option<PathBuf>,
    /// The claim on the directory, for a sole writer.
    _writer: Option<watch_hub::WriterGuard>,
}

impl TapState {
    /// Encodes one record into the pending batch, first writing out the
    /// batch and rotating if the record would take `exec.log` past `max_bytes`.
    fn push_record(
        &mut self,
        at: DateTime<Utc>,
        source: LogSource,
        session: Option<u64>,
        data: &[u8],
    ) -> io::Result<()> {
        let before = self.batch.len();
        self.encoder
            .encode(&mut self.batch, at, source, session, data);
        self.settle_last(before)
    }

    /// Accounts for the record that starts at `before` in the batch: if it
    /// would take `exec.log` past `max_bytes`, the records before it are
    /// written out and the log rotated first.
    fn settle_last(&mut self, before: usize) -> io::Result<()> {
        let len = (self.batch.len() - before) as u64;
        let pending = before as u64;
        // Counted first: `write_out(before)` leaves out the last one pushed.
        self.batch_records += 1;
        if self.stats.size + pending > 0 && self.stats.size + pending + len > self.config.max_bytes
        {
            self.write_out(before)?;
            self.rotate()?;
        }
        Ok(())
    }

    /// Writes the pending records before byte `upto` (all of them, or all but
    /// the last one pushed) with one `write(2)`. On failure the file is cut
    /// back to its size before the write, so no torn record stays behind.
    fn write_out(&mut self, upto: usize) -> io::Result<()> {
        if upto == 0 {
            return Ok(());
        }
        if let Err(err) = self.file.write_all(&self.batch[..upto]) {
            // Best effort: the error that matters is the write's.
            let _ = self.file.set_len(self.stats.size);
            return Err(err);
        }
        let records = if upto == self.batch.len() {
            self.batch_records
        } else {
            self.batch_records - 1
        };
        self.written += records;
        self.stats.records += records as u64;
        self.batch_records -= records;
        self.stats.size += upto as u64;
        self.stats.bytes += upto as u64;
        self.batch.drain(..upto);
        Ok(())
    }

    /// Writes one record per chunk. On failure, says how many chunks (from
    /// the first) are on disk, whole: the rest can go to the next tap.
    fn write_chunks(&mut self, chunks: &[Chunk]) -> Result<(), WriteFailure> {
        self.batch.clear();
        self.batch_records = 0;
        self.written = 0;
        let result = self.reopen().and_then(|()| self.write_all_chunks(chunks));
        result.map_err(|error| WriteFailure {
            written: self.written,
            error,
        })
    }

    /// [`Self::write_chunks`], waiting out a full disk (see the module
    /// docs).
    ///
    /// # Errors
    /// How many chunks are on disk, whole, and why the rest are not; a
    /// [`DiskFull`] error once the wait is over.
    async fn write_patiently(&mut self, chunks: &[Chunk]) -> Result<(), WriteFailure> {
        let result = self.write_waiting_for_space(chunks).await;
        // Whatever landed, readers in this process see it now.
        if let Some(dir) = &self.canonical_dir {
            watch_hub::wake_readers_of(dir);
        }
        result
    }

    async fn write_waiting_for_space(&mut self, chunks: &[Chunk]) -> Result<(), WriteFailure> {
        let mut done = 0;
        let mut waited = Duration::ZERO;
        let mut pause = FIRST_DISK_FULL_PAUSE;
        loop {
            let failure = match self.write_chunks(&chunks[done..]) {
                Ok(()) => {
                    if !waited.is_zero() {
                        tracing::info!(dir = %self.config.dir.display(), ?waited, "disk space is back; exec.log written");
                    }
                    return Ok(());
                }
                Err(failure) => failure,
            };
            done += failure.written;
            if !is_disk_full(&failure.error) {
                return Err(WriteFailure {
                    written: done,
                    error: failure.error,
                });
            }
            if waited >= self.config.disk_full_wait {
                return Err(WriteFailure {
                    written: done,
                    error: io::Error::other(DiskFull {
                        path: self.live.clone(),
                        waited,
                        source: failure.error,
                    }),
                });
            }
            if waited.is_zero() {
                tracing::warn!(dir = %self.config.dir.display(), "disk full: exec.log writes wait for space");
            }
            let nap = pause.min(self.config.disk_full_wait - waited);
            // No event tells of freed space: poll, backing off.
            tokio::time::sleep(nap).await;
            waited += nap;
            pause = (pause * 2).min(LONGEST_DISK_FULL_PAUSE);
        }
    }

    /// Opens `exec.log` (again) if [`Self::reopen`] says so: finishing a
    /// rotation (counted and told once the new file is open), or ending a
    /// torn tail the first open could not end (a full disk).
    fn reopen(&mut self) -> io::Result<()> {
        match self.reopen {
            Reopen::No => return Ok(()),
            Reopen::Rotated => {
                self.file = open_append(&self.live)?;
                self.inode = self.file.metadata()?.ino();
                self.stats.size = 0;
                self.stats.generation += 1;
                tracing::debug!(dir = %self.config.dir.display(), generation = self.stats.generation, "exec.log rotated");
                if let Some(events) = &self.events {
                    // A parent that stopped listening does not stop the writing.
                    let _ = events.send_message(TapEvent::Rotated {
                        generation: self.stats.generation,
                    });
                }
            }
            Reopen::TornTail => {
                end_torn_line(&mut self.file)?;
                self.stats.size = self.file.metadata()?.len();
            }
        }
        self.reopen = Reopen::No;
        Ok(())
    }

    fn write_all_chunks(&mut self, chunks: &[Chunk]) -> io::Result<()> {
        let data_bytes: usize = chunks.iter().map(|c| c.data.len()).sum();
        if data_bytes >= PARALLEL_ENCODE_BYTES {
            // Escaping large chunks costs as much as writing them: encode on
            // every core, then lay the records out in order.
            let encoded: Vec<Vec<u8>> = chunks
                .par_iter()
                .map_init(RecordEncoder::default, |encoder, chunk| {
                    let mut record = Vec::with_capacity(chunk.data.len() + 96);
                    encoder.encode(
                        &mut record,
                        chunk.captured_at,
                        chunk.source,
                        Some(chunk.session_id),
                        &chunk.data,
                    );
                    record
                })
                .collect();
            for record in &encoded {
                let before = self.batch.len();
                self.batch.extend_from_slice(record);
                self.settle_last(before)?;
            }
        } else {
            for chunk in chunks {
                self.push_record(
                    chunk.captured_at,
                    chunk.source,
                    Some(chunk.session_id),
                    &chunk.data,
                )?;
            }
        }
        self.write_out(self.batch.len())
    }

    fn rotate(&mut self) -> io::Result<()> {
        let dir = &self.config.dir;
        let name = StreamKey::Exec.file_name();
        for generation in (1..self.config.keep).rev() {
            rename_if_present(
                &dir.join(format!("{name}.{generation}")),
                &dir.join(format!("{name}.{}", generation + 1)),
            )?;
        }
        // From here until the new file is open, `file` is the rotated one:
        // the next write must not land in it.
        self.reopen = Reopen::Rotated;
        if self.config.keep == 0 {
            std::fs::remove_file(&self.live)?;
        } else {
            rename_if_present(&self.live, &dir.join(format!("{name}.1")))?;
        }
        self.reopen()
    }
}

/// Out of space or quota: a condition that may pass.
fn is_disk_full(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
}

fn rename_if_present(from: &Path, to: &Path) -> io::Result<()> {
    match std::fs::rename(from, to) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Opens a log for appending, creating it 0600 (only the home's owner may
/// read what sandboxes print), and ends a torn last line first (see
/// [`end_torn_line`]).
fn open_append(path: &Path) -> io::Result<File> {
    let mut file = open_log(path)?;
    end_torn_line(&mut file)?;
    Ok(file)
}

/// Opens a log for appending as it is, creating it 0600.
fn open_log(path: &Path) -> io::Result<File> {
    // Read access only to look at the last byte.
    OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// Writes `\n` after the file's last byte unless the file is empty or
/// already ends in one: bytes after the last `\n` are a record whose writer
/// died mid-write (or someone else's), and whatever is appended next must
/// not merge into that line and be skipped with it as malformed. A write
/// that fails leaves the file as it was (one byte cannot be torn).
fn end_torn_line(file: &mut File) -> io::Result<()> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(());
    }
    let mut last = [0u8; 1];
    file.read_exact_at(&mut last, len - 1)?;
    if last[0] != b'\n' {
        file.write_all(b"\n")?;
    }
    Ok(())
}

/// Appends one `system` record (a lifecycle marker) to the `exec.log` in
/// `dir`, ending a torn last line first, for a run whose tap is gone with its
/// host process (the run is settled by whoever finds the host dead). It does
/// not rotate: the record may take `exec.log` past `max_bytes` by its size,
/// and the next tap rotates before its first record as usual. Only call it
/// when no tap writes this log.
///
/// # Errors
/// The I/O error opening or writing `exec.log` (the record is then absent,
/// never torn: a failed write is cut back).
pub fn append_system_record(dir: &Path, text: &str, at: DateTime<Utc>) -> io::Result<()> {
    let mut file = open_append(&dir.join(StreamKey::Exec.file_name()))?;
    let size = file.metadata()?.len();
    let mut record = Vec::with_capacity(text.len() + 64);
    RecordEncoder::default().encode(&mut record, at, LogSource::System, None, text.as_bytes());
    if let Err(err) = file.write_all(&record) {
        // Best effort: the error that matters is the write's.
        let _ = file.set_len(size);
        return Err(err);
    }
    Ok(())
}

impl Actor for RelayTap {
    type Msg = RelayTapMsg;
    type State = TapState;
    type Arguments = TapArgs;

    async fn pre_start(
        &self,
        _: ActorRef<Self::Msg>,
        args: TapArgs,
    ) -> Result<TapState, ActorProcessingErr> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&args.config.dir)?;
        let live = args.config.dir.join(StreamKey::Exec.file_name());
        // On a full disk the torn tail is ended by the first write, which
        // waits for space; failing here would fail the supervisor.
        let (file, reopen) = match open_append(&live) {
            Err(err) if is_disk_full(&err) => (open_log(&live)?, Reopen::TornTail),
            opened => (opened?, Reopen::No),
        };
        let metadata = file.metadata()?;
        let (size, inode) = (metadata.len(), metadata.ino());
        let canonical_dir = std::fs::canonicalize(&args.config.dir).ok();
        let writer = canonical_dir
            .as_deref()
            .filter(|_| args.config.sole_writer)
            .and_then(watch_hub::claim_writer);
        Ok(TapState {
            config: args.config,
            live,
            file,
            inode,
            stats: TapStats {
                size,
                generation: args.generation,
                ..TapStats::default()
            },
            encoder: RecordEncoder::default(),
            batch: Vec::new(),
            batch_records: 0,
            written: 0,
            reopen,
            events: args.events,
            canonical_dir,
            _writer: writer,
        })
    }

    async fn handle(
        &self,
        _: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut TapState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RelayTapMsg::Chunk(chunk) => state
                .write_patiently(std::slice::from_ref(&chunk))
                .await
                .map_err(WriteFailure::into_error)?,
            RelayTapMsg::Chunks(chunks) => state
                .write_patiently(&chunks)
                .await
                .map_err(WriteFailure::into_error)?,
            RelayTapMsg::Append(chunks, reply) => {
                let result = state.write_patiently(&chunks).await;
                // A caller that stopped waiting still got its chunks written.
                let position = LogPosition {
                    inode: state.inode,
                    offset: state.stats.size,
                };
                let _ = reply.send(result.as_ref().map(|_| position).map_err(|f| f.written));
                result.map_err(WriteFailure::into_error)?;
            }
            RelayTapMsg::System { text, at } => {
                let marker = Chunk::system(text, at);
                state
                    .write_patiently(std::slice::from_ref(&marker))
                    .await
                    .map_err(WriteFailure::into_error)?;
            }
            RelayTapMsg::Flush(reply) => {
                // The caller may have stopped waiting; the writes stand either way.
                let _ = reply.send(state.stats);
            }
        }
        Ok(())
    }
}
