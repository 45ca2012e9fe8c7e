//! The tailer: one actor per log being read (the `exec.log` chain,
//! `runtime.log` or `kernel.log`), child of a [`Subscriber`](super::subscriber::Subscriber). Its messages are
//! [`TailerMsg`] (in [`super`], shared with the subscriber).
//!
//! # Contract
//! - Reads with a [`Follower`] from the position it was spawned with, and
//!   sends entries to its subscriber in [`SubscriberMsg::Batch`]es, in file
//!   order. Each batch carries the position just past everything it covers,
//!   including lines filtered out, so cursors advance past them too.
//! - Where it reads: a backlog under 64 KiB (a followed append) at once, in
//!   its handler; a larger one on rayon's pool, in pieces read and parsed in
//!   parallel (the handler awaits it, so no tokio worker is blocked, and
//!   wakes meanwhile only mark the tailer dirty).
//! - Flow control: at most one batch is unacknowledged. The tailer reads the
//!   next batch only after [`TailerMsg::Ack`]; a slow consumer holds back its
//!   own tailers and nothing else.
//! - Wakes ([`TailerMsg::Wake`] from the [watch hub](super::watch_hub), and
//!   [`TailerMsg::Poll`] every 250 ms as a backstop) always run the cheap
//!   rotation look-ahead, even while a batch is unacknowledged, so a reader
//!   that is only briefly behind never loses track of the chain.
//! - Ends with one [`SubscriberMsg::End`]: `Done` (not following, everything
//!   on disk read), `Missed` (fell behind retention) or `DirGone`. It then
//!   idles until its subscriber stops it.
//! - Every message it sends carries its `epoch`, so that a subscriber can tell
//!   a restarted tailer's batches from a dead one's.
//! - An I/O error fails the actor; its subscriber restarts it from the last
//!   delivered position. The watch registration is released when the state
//!   drops, however the actor ended.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ractor::concurrency::JoinHandle;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::oneshot;

use super::entries::Entries;
use super::follower::{Follower, ReadStatus, Start};
use super::watch_hub::{self, WatchGuard};
use super::{SubscriberMsg, TailEnd, TailerMsg};
use crate::log::format::{LogCursor, Position, SourceSet, StreamKey};
use crate::log::Result;

/// The fallback stat poll's period.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// Bytes of log read per batch.
const BATCH_BYTES: usize = 1 << 20;
/// Bytes of log read per batch on the pool: larger, so that the hops
/// between batches cost little against the work.
const POOL_BATCH_BYTES: usize = 4 << 20;
/// A backlog at least this large is read on rayon's pool (all cores, and no
/// tokio worker blocked); a smaller one, such as a followed append, is read
/// at once, with no hop to another thread.
const POOL_READ_BYTES: u64 = 64 << 10;

/// What a read on the pool gives back: the follower, how the read ended and
/// the entries.
type PoolRead = (Follower, Result<ReadStatus>, Entries);

/// The error of a tailer whose follower did not come back from the pool (a
/// read there panicked, which failed the tailer's handler first).
fn lost_follower() -> ActorProcessingErr {
    ActorProcessingErr::from("the log reader was lost in a pool read")
}

/// Reads one batch with `follower` on rayon's pool.
///
/// # Errors
/// If the read panicked on the pool.
async fn read_on_pool(mut follower: Follower) -> Result<PoolRead, ActorProcessingErr> {
    let (tx, rx) = oneshot::channel();
    rayon::spawn(move || {
        let mut entries = Entries::new();
        let status = follower.read_in_pieces(POOL_BATCH_BYTES, &mut entries);
        // The tailer may have been stopped meanwhile; then nobody waits.
        let _ = tx.send((follower, status, entries));
    });
    rx.await
        .map_err(|_| ActorProcessingErr::from("a log read on the thread pool panicked"))
}

/// Arguments to spawn a [`Tailer`].
#[derive(Debug, Clone)]
pub struct TailerArgs {
    /// The log directory.
    pub dir: PathBuf,
    /// Which log.
    pub stream: StreamKey,
    /// Where to start.
    pub start: Start,
    /// Sources delivered.
    pub sources: SourceSet,
    /// Entries before this are not delivered (and whole older files are skipped).
    pub since: Option<DateTime<Utc>>,
    /// Keep reading as the log grows.
    pub follow: bool,
    /// Entries carry this cursor with their own position set; the subscriber
    /// merges in the other logs' positions.
    pub base: LogCursor,
    /// Who receives the entries.
    pub subscriber: ActorRef<SubscriberMsg>,
    /// This incarnation's number.
    pub epoch: u64,
}

/// The tailer actor. See the module docs.
pub struct Tailer;

/// The tailer's state.
pub struct TailerState {
    args: TailerArgs,
    /// `None` only while a read runs on the pool.
    follower: Option<Follower>,
    awaiting_ack: bool,
    /// Data may be ready: read again once the pending batch is acknowledged.
    dirty: bool,
    finished: bool,
    last_sent: Option<Position>,
    /// Whether the first batch's estimate of what follows was made.
    estimated: bool,
    woken: Arc<AtomicBool>,
    _watch: Option<WatchGuard>,
    poll: Option<JoinHandle<()>>,
}

impl Drop for TailerState {
    fn drop(&mut self) {
        if let Some(poll) = self.poll.take() {
            poll.abort();
        }
    }
}

impl TailerState {
    fn follower(&mut self) -> Result<&mut Follower, ActorProcessingErr> {
        self.follower.as_mut().ok_or_else(lost_follower)
    }

    async fn pump(&mut self) -> Result<(), ActorProcessingErr> {
        if self.finished || self.awaiting_ack {
            return Ok(());
        }
        self.dirty = false;
        let mut entries = Entries::new();
        let status = if self.follower()?.backlog()? >= POOL_READ_BYTES {
            let follower = self.follower.take().ok_or_else(lost_follower)?;
            let (follower, status, read) = read_on_pool(follower).await?;
            self.follower = Some(follower);
            entries = read;
            status?
        } else {
            self.follower()?.read(BATCH_BYTES, &mut entries)?
        };
        let end = self.follower()?.position();
        let more = self.estimate_more(&entries, &status)?;
        if !entries.is_empty() || end != self.last_sent {
            self.last_sent = end;
            self.awaiting_ack = true;
            self.dirty = status == ReadStatus::More;
            self.send(SubscriberMsg::Batch {
                stream: self.args.stream,
                epoch: self.args.epoch,
                entries,
                end,
                more,
            })?;
        }
        let end = match status {
            ReadStatus::More => return Ok(()),
            ReadStatus::Idle if self.args.follow => return Ok(()),
            ReadStatus::Idle => TailEnd::Done,
            ReadStatus::Missed { resume_from } => TailEnd::Missed { resume_from },
            ReadStatus::DirGone => TailEnd::DirGone,
        };
        self.finished = true;
        self.send(SubscriberMsg::End {
            stream: self.args.stream,
            epoch: self.args.epoch,
            end,
        })
    }

    /// On a one-shot read's first batch with more to come, the entries
    /// still expected, from this batch's entries per byte and the bytes left.
    fn estimate_more(
        &mut self,
        entries: &Entries,
        status: &ReadStatus,
    ) -> Result<Option<usize>, ActorProcessingErr> {
        if self.args.follow || self.estimated || *status != ReadStatus::More {
            return Ok(None);
        }
        self.estimated = true;
        let follower = self.follower()?;
        let consumed = follower.consumed();
        if consumed == 0 {
            return Ok(None);
        }
        let remaining = follower.remaining()?;
        let per_byte = entries.len() as f64 / consumed as f64;
        Ok(Some((remaining as f64 * per_byte) as usize))
    }

    fn send(&self, msg: SubscriberMsg) -> Result<(), ActorProcessingErr> {
        self.args
            .subscriber
            .cast(msg)
            .map_err(|_| ActorProcessingErr::from("subscriber is gone"))
    }
}

impl Actor for Tailer {
    type Msg = TailerMsg;
    type State = TailerState;
    type Arguments = TailerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: TailerArgs,
    ) -> Result<TailerState, ActorProcessingErr> {
        let follower = Follower::open(
            &args.dir,
            args.stream,
            args.start,
            args.sources,
            args.since,
            args.base,
        )?;
        let woken = Arc::new(AtomicBool::new(false));
        let (watch, poll) = if args.follow {
            let flag = woken.clone();
            let me = myself.clone();
            let waker: watch_hub::Waker = Arc::new(move || {
                if !flag.swap(true, Ordering::AcqRel) {
                    // A stopped tailer needs no waking.
                    let _ = me.cast(TailerMsg::Wake);
                }
            });
            let watch = watch_hub::watch_dir(&args.dir, waker).await;
            let poll = myself.send_interval(POLL_INTERVAL, || TailerMsg::Poll);
            (watch, Some(poll))
        } else {
            (None, None)
        };
        myself.cast(TailerMsg::Wake)?;
        Ok(TailerState {
            args,
            follower: Some(follower),
            awaiting_ack: false,
            dirty: false,
            finished: false,
            last_sent: None,
            estimated: false,
            woken,
            _watch: watch,
            poll,
        })
    }

    async fn handle(
        &self,
        _: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut TailerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            TailerMsg::Wake | TailerMsg::Poll => {
                state.woken.store(false, Ordering::Release);
                if state.finished {
                    return Ok(());
                }
                if state.awaiting_ack {
                    state.follower()?.look_ahead()?;
                    state.dirty = true;
                    return Ok(());
                }
                state.pump().await
            }
            TailerMsg::Ack => {
                state.awaiting_ack = false;
                if state.dirty {
                    state.pump().await?;
                }
                Ok(())
            }
        }
    }
}
