//! The public face of a read: [`open_stream`] and [`collect`].

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use ractor::{Actor, ActorRef};
use tokio::sync::{mpsc, oneshot};

use crate::entry::LogEntry;
use crate::error::{Error, Result};
use crate::subscriber::{Collected, ReadPlan, Sink, StreamBatch, Subscriber, SubscriberMsg};

/// Batches buffered between a subscriber and its consumer.
const STREAM_BATCHES: usize = 4;

/// A live read of a sandbox's logs. Dropping it stops its actors and releases
/// their watches.
#[derive(Debug)]
pub struct LogStream {
    rx: mpsc::Receiver<StreamBatch>,
    batch: std::vec::IntoIter<LogEntry>,
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
pub async fn open_stream(plan: ReadPlan) -> Result<LogStream> {
    let (tx, rx) = mpsc::channel(STREAM_BATCHES);
    let (subscriber, _) = Actor::spawn(None, Subscriber, (plan, Sink::Stream(tx)))
        .await
        .map_err(spawn_error)?;
    Ok(LogStream {
        rx,
        batch: Vec::new().into_iter(),
        subscriber,
    })
}

/// Reads everything on disk once and returns it sorted by time.
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
