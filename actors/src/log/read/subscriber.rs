//! The subscriber: one actor per read (`read_logs` call or `log_stream`),
//! supervising one [`Tailer`] per log it reads. Its messages are
//! [`SubscriberMsg`] (in [`super`], shared with the tailer).
//!
//! # Contract
//! - Spawns its tailers in `pre_start`; a tailer that cannot open its log makes
//!   the spawn fail, so such errors reach the caller, not the stream.
//! - Assigns cursors: every entry carries the cursor just after it. The
//!   subscriber's own cursor only moves when a batch has been delivered (put
//!   into the bounded channel behind the stream, or collected), so it is the
//!   resume point of everything delivered.
//! - Stream sink: entries go out in batches through a bounded channel; the
//!   subscriber acknowledges a tailer's batch only after the channel accepted
//!   it, which is what slows a slow consumer's tailers (and only those). The
//!   stream ends before the first entry at or after `until`, after a missed
//!   rotation (yielded once, as an error), when the log directory is removed,
//!   or, when not following, once every tailer reached the end of its log.
//! - Collect sink (`read_logs`): gathers everything up to the end of each log
//!   into one `Vec` (acknowledging each batch on receipt, so parsing and
//!   collecting overlap; room made once from the first batch's estimate),
//!   then, unless the batches say it is in time order already, sorts by time
//!   (stable) and assigns cursors in that order.
//! - Supervision: a tailer that fails is restarted from the last delivered
//!   position with a new epoch (batches of older epochs are dropped), at most
//!   [`RestartBudget::DEFAULT_MAX`] times within
//!   [`RestartBudget::DEFAULT_WINDOW`]; past that the read ends with
//!   [`Error::ReaderGaveUp`]. A tailer stopped or killed by someone else is
//!   restarted the same way but not counted: only failures exhaust the budget.
//! - When the subscriber stops, its tailers are stopped with it and their
//!   watches released.

use std::collections::HashMap;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};

use super::entries::Entries;
use super::follower::Start;
use super::tailer::{Tailer, TailerArgs};
use super::{Collected, ReadPlan, Sink, SubscriberMsg, TailEnd, TailerMsg};
use crate::log::format::{LogCursor, Position, StreamKey};
use crate::log::{Error, LogEntry};
use crate::restart::RestartBudget;

/// The subscriber actor. See the module docs.
pub struct Subscriber;

struct Slot {
    tailer: ActorRef<TailerMsg>,
    epoch: u64,
    ended: bool,
    budget: RestartBudget,
}

/// The subscriber's state.
pub struct SubscriberState {
    plan: ReadPlan,
    sink: Option<Sink>,
    cursor: LogCursor,
    slots: HashMap<StreamKey, Slot>,
    by_actor: HashMap<ActorId, StreamKey>,
    /// Collect sink: entries in arrival order, in one run.
    collected: Entries,
    /// Where each log's stretch of `collected` ends, in order.
    collected_from: Vec<(usize, StreamKey)>,
}

impl Actor for Subscriber {
    type Msg = SubscriberMsg;
    type State = SubscriberState;
    type Arguments = (ReadPlan, Sink);

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        (plan, sink): (ReadPlan, Sink),
    ) -> Result<SubscriberState, ActorProcessingErr> {
        let mut state = SubscriberState {
            cursor: plan.cursor,
            collected: Entries::new(),
            collected_from: Vec::new(),
            plan,
            sink: Some(sink),
            slots: HashMap::new(),
            by_actor: HashMap::new(),
        };
        for stream in state.plan.streams.clone() {
            spawn_tailer(&myself, &mut state, stream, 1).await?;
        }
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut SubscriberState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SubscriberMsg::Batch {
                stream,
                epoch,
                entries,
                end,
                more,
            } => {
                if !state.is_current(stream, epoch) {
                    return Ok(());
                }
                if let (Some(more), Some(Sink::Collect(_))) = (more, &state.sink) {
                    state.collected.reserve(entries.len() + more);
                }
                // A collected batch is delivered on receipt, so the tailer may
                // parse the next one meanwhile; a streamed batch only once the
                // consumer's channel took it.
                let collecting = matches!(state.sink, Some(Sink::Collect(_)));
                if collecting {
                    state.ack(stream);
                }
                state.deliver(&myself, stream, entries, end).await;
                if !collecting {
                    state.ack(stream);
                }
            }
            SubscriberMsg::End { stream, epoch, end } => {
                if !state.is_current(stream, epoch) {
                    return Ok(());
                }
                match end {
                    TailEnd::Done => {
                        if let Some(slot) = state.slots.get_mut(&stream) {
                            slot.ended = true;
                        }
                        if state.slots.values().all(|slot| slot.ended) {
                            state.finish(&myself, None).await;
                        }
                    }
                    TailEnd::Missed { resume_from } => {
                        let mut resume = state.cursor;
                        resume.set_position(stream, resume_from);
                        let err = Error::MissedRotation {
                            stopped_at: Box::new(state.cursor),
                            resume_from: Box::new(resume),
                        };
                        state.finish(&myself, Some(err)).await;
                    }
                    TailEnd::DirGone => {
                        let err = Error::LogDirRemoved(state.plan.dir.clone());
                        state.finish(&myself, Some(err)).await;
                    }
                }
            }
            SubscriberMsg::Tailers(reply) => {
                let cells = state
                    .slots
                    .values()
                    .map(|slot| slot.tailer.get_cell())
                    .collect();
                let _ = reply.send(cells);
            }
            SubscriberMsg::Cursor(reply) => {
                let _ = reply.send(state.cursor);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut SubscriberState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, failure) = match event {
            SupervisionEvent::ActorFailed(cell, err) => (cell, Some(err.to_string())),
            SupervisionEvent::ActorTerminated(cell, _, _) => (cell, None),
            _ => return Ok(()),
        };
        let Some(stream) = state.by_actor.remove(&cell.get_id()) else {
            return Ok(());
        };
        if state.sink.is_none() {
            return Ok(());
        }
        let Some(slot) = state.slots.get_mut(&stream) else {
            return Ok(());
        };
        if slot.tailer.get_id() != cell.get_id() {
            return Ok(());
        }
        if let Some(reason) = &failure {
            tracing::warn!(dir = %state.plan.dir.display(), log = stream.file_name(), %reason, "log reader failed; restarting it from the last delivered position");
            if !slot.budget.allow() {
                let err = Error::ReaderGaveUp {
                    path: state.plan.dir.join(stream.file_name()),
                    failures: slot.budget.failures(),
                    reason: reason.clone(),
                };
                state.finish(&myself, Some(err)).await;
                return Ok(());
            }
        } else {
            tracing::info!(dir = %state.plan.dir.display(), log = stream.file_name(), "log reader stopped by someone else; restarting it");
        }
        let epoch = slot.epoch + 1;
        if let Err(err) = spawn_tailer(&myself, state, stream, epoch).await {
            let err = Error::ReaderGaveUp {
                path: state.plan.dir.join(stream.file_name()),
                failures: 1,
                reason: err.to_string(),
            };
            state.finish(&myself, Some(err)).await;
        }
        Ok(())
    }
}

async fn spawn_tailer(
    myself: &ActorRef<SubscriberMsg>,
    state: &mut SubscriberState,
    stream: StreamKey,
    epoch: u64,
) -> Result<(), ActorProcessingErr> {
    let start = state
        .cursor
        .position(stream)
        .map_or(Start::Beginning, Start::At);
    let args = TailerArgs {
        dir: state.plan.dir.clone(),
        stream,
        start,
        sources: state.plan.sources,
        since: state.plan.since,
        follow: state.plan.follow,
        base: state.plan.cursor,
        subscriber: myself.clone(),
        epoch,
    };
    let (tailer, _) = Actor::spawn_linked(None, Tailer, args, myself.get_cell()).await?;
    state.by_actor.insert(tailer.get_id(), stream);
    let budget = state
        .slots
        .remove(&stream)
        .map(|slot| slot.budget)
        .unwrap_or_default();
    state.slots.insert(
        stream,
        Slot {
            tailer,
            epoch,
            ended: false,
            budget,
        },
    );
    Ok(())
}

impl SubscriberState {
    fn ack(&self, stream: StreamKey) {
        if let Some(slot) = self.slots.get(&stream) {
            // A tailer that died since will be replaced; nothing to ack.
            let _ = slot.tailer.cast(TailerMsg::Ack);
        }
    }

    fn is_current(&self, stream: StreamKey, epoch: u64) -> bool {
        self.sink.is_some()
            && self
                .slots
                .get(&stream)
                .is_some_and(|slot| slot.epoch == epoch)
    }

    async fn deliver(
        &mut self,
        myself: &ActorRef<SubscriberMsg>,
        stream: StreamKey,
        mut entries: Entries,
        end: Option<Position>,
    ) {
        match &self.sink {
            Some(Sink::Stream(tx)) => {
                let tx = tx.clone();
                let mut reached_until = false;
                if let Some(until) = self.plan.until {
                    let cut = entries.iter().position(|entry| entry.timestamp >= until);
                    if let Some(at) = cut {
                        entries.truncate(at);
                        reached_until = true;
                    }
                }
                let mut cursor = self.cursor;
                if self.plan.streams.len() == 1 {
                    // One log: the tailer's cursors already are the whole
                    // cursor (its base plus its own position).
                    if let Some(last) = entries.last() {
                        cursor = last.cursor;
                    }
                } else {
                    for entry in entries.runs_mut().iter_mut().flatten() {
                        if let Some(own) = entry.cursor.position(stream) {
                            cursor.set_position(stream, own);
                        }
                        entry.cursor = cursor;
                    }
                }
                if !reached_until {
                    if let Some(end) = end {
                        cursor.set_position(stream, end);
                    }
                }
                if !entries.is_empty() && tx.send(Ok(entries)).await.is_err() {
                    // The consumer dropped the stream.
                    self.sink = None;
                    myself.stop(None);
                    return;
                }
                self.cursor = cursor;
                if reached_until {
                    self.finish(myself, None).await;
                }
            }
            Some(Sink::Collect(_)) => {
                // Appended as batches arrive, so the work overlaps the
                // tailers' parsing; `sorted` only reorders if it must.
                if !entries.is_empty() {
                    self.collected.append_contiguous(entries);
                    match self.collected_from.last_mut() {
                        Some((end, last)) if *last == stream => *end = self.collected.len(),
                        _ => self.collected_from.push((self.collected.len(), stream)),
                    }
                }
                if let Some(end) = end {
                    self.cursor.set_position(stream, end);
                }
            }
            None => {}
        }
    }

    /// Ends the read: the error (if any) goes out last, then tailers stop.
    async fn finish(&mut self, myself: &ActorRef<SubscriberMsg>, error: Option<Error>) {
        match self.sink.take() {
            Some(Sink::Stream(tx)) => {
                if let Some(err) = error {
                    // A consumer that is gone needs no error.
                    let _ = tx.send(Err(err)).await;
                }
            }
            Some(Sink::Collect(reply)) => {
                let result = match error {
                    Some(err) => Err(err),
                    None => Ok(self.sorted()),
                };
                let _ = reply.send(result);
            }
            None => {}
        }
        for slot in self.slots.values() {
            slot.tailer.stop(None);
        }
        myself.stop(None);
    }

    /// The collected entries in time order (stable), each with the cursor
    /// just after it in that order.
    fn sorted(&mut self) -> Collected {
        let collected = std::mem::take(&mut self.collected);
        let from = std::mem::take(&mut self.collected_from);
        // Tailers give each entry only its own log's position; with one log
        // that is already the whole cursor, and in time order the entries
        // are done.
        if from.len() <= 1 && collected.in_order() {
            return Collected {
                entries: collected.into_vec(),
                cursor: self.cursor,
            };
        }
        let mut entries = collected.into_vec();
        let mut order: Vec<(usize, StreamKey)> = Vec::with_capacity(entries.len());
        let mut start = 0;
        for (end, stream) in from {
            order.extend((start..end).map(|i| (i, stream)));
            start = end;
        }
        order.sort_by_key(|&(i, _)| entries[i].timestamp);
        let mut slots: Vec<Option<LogEntry>> = entries.drain(..).map(Some).collect();
        let mut cursor = self.plan.cursor;
        let entries = order
            .into_iter()
            .filter_map(|(i, stream)| {
                let mut entry = slots[i].take()?;
                if let Some(own) = entry.cursor.position(stream) {
                    cursor.set_position(stream, own);
                }
                entry.cursor = cursor;
                Some(entry)
            })
            .collect();
        Collected {
            entries,
            cursor: self.cursor,
        }
    }
}
