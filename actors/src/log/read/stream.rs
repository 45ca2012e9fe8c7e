//! The public face of a read: [`open_stream`] and [`collect`].

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use ractor::{Actor, ActorRef};
use tokio::sync::{mpsc, oneshot};

use super::entries::Entries;
use super::subscriber::Subscriber;
use super::{Collected, ReadPlan, Sink, StreamBatch, SubscriberMsg};
use crate::log::{Error, LogEntry, Result};

/// Batches buffered between a subscriber and its consumer.
const STREAM_BATCHES: usize = 4;

/// A live read of a sandbox's logs. Dropping it stops its actors and releases
/// their watches.
#[derive(Debug)]
pub struct LogStream {
    rx: mpsc::Receiver<StreamBatch>,
    batch: <Entries as IntoIterator>::IntoIter,
    subscriber: ActorRef<SubscriberMsg>,
}

impl LogStream {
    /// The subscriber actor behind this stream (for probes and fault tests).
    pub fn subscriber(&self) -> &ActorRef<SubscriberMsg> {
        &self.subscriber
    }
}

impl Stream for LogStream {
    type Item = Result<LogEntry>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(entry) = self.batch.next() {
                return Poll::Ready(Some(Ok(entry)));
            }
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(Ok(batch))) => self.batch = batch.into_iter(),
                Poll::Ready(Some(Err(err))) => return Poll::Ready(Some(Err(err))),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Drop for LogStream {
    fn drop(&mut self) {
        self.subscriber.stop(None);
    }
}

/// Starts a streaming read.
///
/// # Errors
/// The subscriber's spawn failing, as [`Error::Actor`]: this is how a log
/// that cannot be opened (its reader's [`Error::Io`], in text) reaches the
/// caller before the stream exists. Errors met later while reading come
/// through the stream.
///
/// # Cancel safety
/// Not cancel-safe: dropped after the subscriber was spawned but before the
/// [`LogStream`] was returned, the read runs on until it next hands over a
/// batch (finding the receiver gone, it stops), which for a followed log
/// that never grows is never.
pub async fn open_stream(plan: ReadPlan) -> Result<LogStream> {
    let (tx, rx) = mpsc::channel(STREAM_BATCHES);
    let (subscriber, _) = Actor::spawn(None, Subscriber, (plan, Sink::Stream(tx)))
        .await
        .map_err(spawn_error)?;
    Ok(LogStream {
        rx,
        batch: Entries::new().into_iter(),
        subscriber,
    })
}

/// Reads everything on disk once and returns it sorted by time.
///
/// # Errors
/// - [`Error::Actor`] if the subscriber cannot be spawned (a log cannot be
///   opened) or stops before answering.
/// - What ended the read: [`Error::MissedRotation`] (the reader fell behind
///   retention), [`Error::LogDirRemoved`], [`Error::ReaderGaveUp`].
///
/// # Cancel safety
/// Not cancel-safe: dropped while waiting, the read is not stopped; it runs
/// to the end of what it reads, finds nobody to answer, and stops.
pub async fn collect(plan: ReadPlan) -> Result<Collected> {
    let (tx, rx) = oneshot::channel();
    let (subscriber, _) = Actor::spawn(None, Subscriber, (plan, Sink::Collect(tx)))
        .await
        .map_err(spawn_error)?;
    let result = rx.await;
    subscriber.stop(None);
    result.map_err(|_| Error::Actor("log subscriber stopped before answering".into()))?
}

fn spawn_error(err: ractor::SpawnErr) -> Error {
    Error::Actor(err.to_string())
}
