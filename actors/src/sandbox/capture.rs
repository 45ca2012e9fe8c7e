//! The capture task: reads the agent's socket and writes its output to the
//! sandbox's relay tap.
//!
//! # Contract
//! - One task per agent link owns the socket's read half. It writes each
//!   `Output` frame to the relay tap with [`RelayTapMsg::Append`] and waits
//!   for the answer before reading on, so output is written exactly once and
//!   in order, and while a tap is being restarted the socket (then the
//!   agent's pipes, then the sandboxed process) buffers. The tap to use is
//!   read from a `watch` channel the supervisor updates when it restarts it.
//! - Output of exec sessions also goes, live, to the session's route; that
//!   of an unlogged route (a health check) goes only there, and is not
//!   counted.
//! - It writes the [`STARTED_MARKER`] when the agent reports `Ready`, so the
//!   marker precedes all output of the run.
//! - Control frames go to the agent link as [`AgentLinkMsg::Frame`], after
//!   every output chunk before them is written; `StdinConsumed` (flow control
//!   only) goes at once. When the socket closes or breaks, the task sends
//!   [`AgentLinkMsg::ReaderDone`] (with what broke, if anything) and ends.
//! - Each output chunk read bumps the link's output counter (relaxed: the
//!   supervisor only compares it with its last look, for the idle timeout).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::BytesMut;
use chrono::Utc;
use ractor::ActorRef;
use tokio::io::AsyncReadExt;
use tokio::net::unix::OwnedReadHalf;
use tokio::sync::watch;

use super::session::Routes;
use super::{AgentLinkMsg, ExecItem, STARTED_MARKER};
use crate::log::format::LogSource;
use crate::log::tap::{Chunk, RelayTapMsg};
use crate::protocol::{Frame, OutputStream};

/// Reads frames until the socket closes; see the module docs.
pub async fn read_frames(
    mut read: OwnedReadHalf,
    link: ActorRef<AgentLinkMsg>,
    mut tap: watch::Receiver<ActorRef<RelayTapMsg>>,
    routes: Routes,
    output_count: Arc<AtomicU64>,
) {
    const GONE: &str = "the sandbox's supervisor is gone";
    let mut buf = BytesMut::with_capacity(64 * 1024);
    // Output chunks decoded from what is buffered go to the tap together.
    let mut pending: Vec<Chunk> = Vec::new();
    let problem = loop {
        let frame = match Frame::decode(&mut buf) {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                if !append(&mut tap, std::mem::take(&mut pending)).await {
                    break Some(GONE.to_string());
                }
                match read.read_buf(&mut buf).await {
                    Ok(0) => break None,
                    Ok(_) => continue,
                    Err(err) => break Some(format!("reading from the agent: {err}")),
                }
            }
            Err(err) => break Some(format!("agent protocol error: {err}")),
        };
        match frame {
            Frame::Output {
                session,
                stream: tag,
                data,
            } => {
                let source = match tag {
                    OutputStream::Stdout => LogSource::Stdout,
                    OutputStream::Stderr => LogSource::Stderr,
                    OutputStream::Output => LogSource::Output,
                };
                if session != 1 {
                    let item = ExecItem::Output {
                        source,
                        data: data.clone(),
                    };
                    // The agent is not trusted to name sessions: output for
                    // one the host is not running is a protocol error.
                    match routes.send(session, item) {
                        Some(true) => {}
                        // A health check's: neither logged nor activity.
                        Some(false) => continue,
                        None => {
                            break Some(format!(
                                "agent protocol error: output for session {session}, which is not running"
                            ))
                        }
                    }
                }
                output_count.fetch_add(1, Ordering::Relaxed);
                pending.push(Chunk {
                    session_id: session,
                    source,
                    data,
                    captured_at: Utc::now(),
                });
            }
            consumed @ Frame::StdinConsumed { .. } => {
                // Flow control only: no output to order it behind.
                let _ = link.cast(AgentLinkMsg::Frame(consumed));
            }
            other => {
                // Control frames keep their place after the output before them.
                if !append(&mut tap, std::mem::take(&mut pending)).await {
                    break Some(GONE.to_string());
                }
                if let Frame::Ready { .. } = other {
                    let marker = Chunk::system(STARTED_MARKER, Utc::now());
                    if !append(&mut tap, vec![marker]).await {
                        break Some(GONE.to_string());
                    }
                }
                if link.cast(AgentLinkMsg::Frame(other)).is_err() {
                    break None;
                }
            }
        }
    };
    let _ = link.cast(AgentLinkMsg::ReaderDone(problem));
}

/// Writes `chunks` through the current tap, waiting for a new tap while the
/// current one is down. `false` once no tap will ever come (supervisor gone).
async fn append(tap: &mut watch::Receiver<ActorRef<RelayTapMsg>>, mut chunks: Vec<Chunk>) -> bool {
    loop {
        if chunks.is_empty() {
            return true;
        }
        let current = tap.borrow_and_update().clone();
        let written = current
            .call(|reply| RelayTapMsg::Append(chunks.clone(), reply), None)
            .await;
        match written {
            Ok(ractor::rpc::CallResult::Success(Ok(()))) => return true,
            // The tap failed after writing the first `n`: the rest go to the next one.
            Ok(ractor::rpc::CallResult::Success(Err(n))) => {
                chunks.drain(..n.min(chunks.len()));
            }
            // The tap died before answering: none of these were written.
            _ => {}
        }
        if tap.changed().await.is_err() {
            return false;
        }
    }
}
