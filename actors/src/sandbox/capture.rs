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
//!   [`AgentLinkMsg::ReaderDone`] (with what broke, if anything) and ends;
//!   a task that panics or is aborted sends it too, from a guard.
//! - Each output chunk read bumps the link's output counter (relaxed: the
//!   supervisor only compares it with its last look, for the idle timeout).
//! - For an adoptable agent (one given a queue for marks), every append of
//!   logged output — and the started marker — is followed by a `Written`
//!   mark: how many logged output frames are in `exec.log`, and where the
//!   last one ends. On a re-adopted agent's connection the first frame is
//!   `Adopted`: the frames it then replays that `exec.log` already holds
//!   after its last mark (counted by [`output_records_after`]) are skipped,
//!   so each reaches the log once; output and exits of sessions the dead
//!   host ran (ids up to the agent's `last_session`) are logged without a
//!   route, and their control frames dropped.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::BytesMut;
use chrono::Utc;
use ractor::ActorRef;
use tokio::io::AsyncReadExt;
use tokio::net::unix::OwnedReadHalf;
use tokio::sync::{mpsc, watch};

use super::session::Routes;
use super::{AgentLinkMsg, ExecItem, STARTED_MARKER};
use crate::log::format::LogSource;
use crate::log::resume::{output_records_after, ResumeFrom};
use crate::log::tap::{Chunk, LogPosition, RelayTapMsg};
use crate::protocol::sap::{Adoption, WrittenMark};
use crate::protocol::{Frame, OutputStream, MAIN_SESSION};

/// Where the capture task tells an adoptable agent what is written, and the
/// log it counts in when the agent is re-adopted.
pub struct Marks {
    /// The agent link's queue of encoded frames for the agent.
    pub queue: mpsc::Sender<Vec<u8>>,
    /// The sandbox's log directory.
    pub dir: PathBuf,
    /// Rotated files kept.
    pub keep: usize,
    /// The agent is re-adopted: its first frame is `Adopted` (and only
    /// then is one accepted).
    pub readopted: bool,
}

/// The highest session id of a dead host's that a re-adopted run honours;
/// new sessions are numbered after the agent's `last_session`, capped here.
pub const LAST_ADOPTED_SESSION: u64 = u64::MAX >> 1;

/// The capture task's count of logged output, and what it still skips.
#[derive(Default)]
struct Progress {
    /// Logged output frames of the agent so far (written or skipped).
    frames: u64,
    /// Replayed frames still to skip: already in `exec.log`.
    skip: u64,
    /// Sessions of a dead host: ids up to this one (0: none).
    adopted_last: u64,
}

/// Reads frames until the socket closes; see the module docs.
pub async fn read_frames(
    mut read: OwnedReadHalf,
    link: ActorRef<AgentLinkMsg>,
    mut tap: watch::Receiver<ActorRef<RelayTapMsg>>,
    routes: Routes,
    output_count: Arc<AtomicU64>,
    marks: Option<Marks>,
) {
    const GONE: &str = "the sandbox's supervisor is gone";
    let mut done = ReaderDone {
        link: link.clone(),
        problem: None,
    };
    let mut buf = BytesMut::with_capacity(64 * 1024);
    // Output chunks decoded from what is buffered go to the tap together.
    let mut pending: Vec<Chunk> = Vec::new();
    let mut progress = Progress::default();
    let mut awaiting_adoption = marks.as_ref().is_some_and(|marks| marks.readopted);
    let problem = loop {
        let frame = match Frame::decode(&mut buf) {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                match append(&mut tap, std::mem::take(&mut pending)).await {
                    Err(()) => break Some(GONE.to_string()),
                    Ok(written) => mark(marks.as_ref(), &progress, written),
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
                if session != MAIN_SESSION {
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
                        // A session of the dead host's: logged only.
                        None if session <= progress.adopted_last => {}
                        None => {
                            break Some(format!(
                                "agent protocol error: output for session {session}, which is not running"
                            ))
                        }
                    }
                }
                output_count.fetch_add(1, Ordering::Relaxed);
                progress.frames = progress.frames.saturating_add(1);
                if progress.skip > 0 {
                    progress.skip -= 1;
                    continue;
                }
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
            Frame::Adopted(adoption) => {
                match &marks {
                    Some(marks) if awaiting_adoption => {
                        awaiting_adoption = false;
                        progress = resume(marks, &adoption).await;
                    }
                    _ => break Some("agent protocol error: an unexpected Adopted".into()),
                }
                if link
                    .cast(AgentLinkMsg::Frame(Frame::Adopted(adoption)))
                    .is_err()
                {
                    break None;
                }
            }
            Frame::Exited { session, .. }
            | Frame::SessionStarted { session, .. }
            | Frame::SessionFailed { session, .. }
                if session != MAIN_SESSION
                    && session <= progress.adopted_last
                    && !routes.contains(session) => {}
            other => {
                // Control frames keep their place after the output before them.
                match append(&mut tap, std::mem::take(&mut pending)).await {
                    Err(()) => break Some(GONE.to_string()),
                    Ok(written) => mark(marks.as_ref(), &progress, written),
                }
                if let Frame::Ready { .. } = other {
                    let marker = Chunk::system(STARTED_MARKER, Utc::now());
                    match append(&mut tap, vec![marker]).await {
                        Err(()) => break Some(GONE.to_string()),
                        Ok(written) => mark(marks.as_ref(), &progress, written),
                    }
                }
                if link.cast(AgentLinkMsg::Frame(other)).is_err() {
                    break None;
                }
            }
        }
    };
    done.problem = Some(problem);
}

/// Tells the agent link the capture task has ended, however it ended: a
/// task that panicked reports that, so the run still ends (`Lost`).
struct ReaderDone {
    link: ActorRef<AgentLinkMsg>,
    /// What broke, once the task ended on its own (`Some(None)`: nothing).
    problem: Option<Option<String>>,
}

impl Drop for ReaderDone {
    fn drop(&mut self) {
        let problem = self
            .problem
            .take()
            .unwrap_or_else(|| Some("the capture task failed".into()));
        // A link that is gone has nobody to tell.
        let _ = self.link.cast(AgentLinkMsg::ReaderDone(problem));
    }
}

/// Tells the agent (if adoptable) that its logged output up to
/// `progress.frames` is written, ending at `written` (nothing if no append
/// was made). A full queue drops the mark: the next one covers it.
fn mark(marks: Option<&Marks>, progress: &Progress, written: Option<LogPosition>) {
    let (Some(marks), Some(position)) = (marks, written) else {
        return;
    };
    let mut frame = Vec::new();
    Frame::Written(WrittenMark {
        frames: progress.frames,
        file: position.inode,
        offset: position.offset,
    })
    .encode(&mut frame);
    let _ = marks.queue.try_send(frame);
}

/// How a re-adopted agent's replay resumes: counting from its last mark
/// (or from the run's start marker, if it never got one), the replayed
/// frames already in `exec.log` are skipped.
async fn resume(marks: &Marks, adoption: &Adoption) -> Progress {
    let written = adoption.written;
    let (dir, keep) = (marks.dir.clone(), marks.keep);
    let counted = tokio::task::spawn_blocking(move || {
        let from = if written.file == 0 {
            ResumeFrom::Marker(STARTED_MARKER)
        } else {
            ResumeFrom::Position(LogPosition {
                inode: written.file,
                offset: written.offset,
            })
        };
        output_records_after(&dir, keep, from)
    })
    .await;
    let skip = match counted {
        // From the start marker, the count includes what the mark covers.
        Ok(Ok(Some(after))) if written.file == 0 => after.saturating_sub(written.frames),
        Ok(Ok(Some(after))) => after,
        other => {
            tracing::warn!(dir = %marks.dir.display(), ?other, "where the re-adopted output resumes is unknown; none of it is skipped");
            0
        }
    };
    Progress {
        frames: written.frames,
        skip,
        // As the supervisor numbers new sessions: after this, never wrapping.
        adopted_last: adoption.last_session.min(LAST_ADOPTED_SESSION),
    }
}

/// Writes `chunks` through the current tap, waiting for a new tap while the
/// current one is down; where the last ends (`None` if there were none).
/// `Err` once no tap will ever come (supervisor gone).
async fn append(
    tap: &mut watch::Receiver<ActorRef<RelayTapMsg>>,
    mut chunks: Vec<Chunk>,
) -> Result<Option<LogPosition>, ()> {
    loop {
        if chunks.is_empty() {
            return Ok(None);
        }
        let current = tap.borrow_and_update().clone();
        let written = current
            .call(|reply| RelayTapMsg::Append(chunks.clone(), reply), None)
            .await;
        match written {
            Ok(ractor::rpc::CallResult::Success(Ok(position))) => return Ok(Some(position)),
            // The tap failed after writing the first `n`: the rest go to the next one.
            Ok(ractor::rpc::CallResult::Success(Err(n))) => {
                chunks.drain(..n.min(chunks.len()));
            }
            // The tap died before answering: none of these were written.
            _ => {}
        }
        if tap.changed().await.is_err() {
            return Err(());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use bytes::Bytes;
    use ractor::{Actor, ActorProcessingErr, ActorRef};
    use tokio::io::AsyncWriteExt;
    use tokio::sync::mpsc;

    use super::*;
    use crate::log::tap::{RelayTap, TapArgs, TapConfig};

    /// Stands in for the agent link: forwards the control frames it is told.
    struct FakeLink;

    impl Actor for FakeLink {
        type Msg = AgentLinkMsg;
        type State = mpsc::UnboundedSender<String>;
        type Arguments = mpsc::UnboundedSender<String>;

        async fn pre_start(
            &self,
            _: ActorRef<Self::Msg>,
            told: Self::Arguments,
        ) -> Result<Self::State, ActorProcessingErr> {
            Ok(told)
        }

        async fn handle(
            &self,
            _: ActorRef<Self::Msg>,
            msg: Self::Msg,
            told: &mut Self::State,
        ) -> Result<(), ActorProcessingErr> {
            let line = match msg {
                AgentLinkMsg::Frame(frame) => format!("{frame:?}"),
                AgentLinkMsg::ReaderDone(problem) => format!("done {problem:?}"),
                _ => "other".into(),
            };
            let _ = told.send(line);
            Ok(())
        }
    }

    fn output(session: u64, n: u32) -> Frame {
        Frame::Output {
            session,
            stream: OutputStream::Stdout,
            data: Bytes::from(format!("{n}\n")),
        }
    }

    fn chunk(n: u32) -> Chunk {
        Chunk::now(MAIN_SESSION, LogSource::Stdout, format!("{n}\n"))
    }

    /// A real tap in a temp log directory, and a capture task reading what a
    /// test writes as the agent (`agent`), telling `told` what it hands the
    /// link and `marks` the marks it sends.
    struct Harness {
        dir: tempfile::TempDir,
        tap: ActorRef<RelayTapMsg>,
        link: ActorRef<AgentLinkMsg>,
        told: mpsc::UnboundedReceiver<String>,
        marks: mpsc::Receiver<Vec<u8>>,
        agent: Option<tokio::net::UnixStream>,
        /// The host's write half, open while the capture task reads.
        host_write: Option<tokio::net::unix::OwnedWriteHalf>,
        reader: Option<tokio::task::JoinHandle<()>>,
    }

    impl Harness {
        async fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let args = TapArgs {
                config: TapConfig::new(dir.path()),
                generation: 0,
                events: None,
            };
            let (tap, _) = Actor::spawn(None, RelayTap, args).await.unwrap();
            let (told_tx, told) = mpsc::unbounded_channel();
            let (link, _) = Actor::spawn(None, FakeLink, told_tx).await.unwrap();
            let (_, marks) = mpsc::channel(1);
            Self {
                dir,
                tap,
                link,
                told,
                marks,
                agent: None,
                host_write: None,
                reader: None,
            }
        }

        async fn append(&self, chunks: Vec<Chunk>) -> LogPosition {
            ractor::call!(self.tap, RelayTapMsg::Append, chunks)
                .unwrap()
                .unwrap()
        }

        /// Starts the capture task on a fresh socket.
        fn capture(&mut self, readopted: bool) {
            let (host, agent) = tokio::net::UnixStream::pair().unwrap();
            let (read, write) = host.into_split();
            self.host_write = Some(write);
            let (marks_tx, marks) = mpsc::channel(64);
            self.marks = marks;
            let (_, tap_rx) = watch::channel(self.tap.clone());
            self.reader = Some(tokio::spawn(read_frames(
                read,
                self.link.clone(),
                tap_rx,
                Routes::default(),
                Arc::new(AtomicU64::new(0)),
                Some(Marks {
                    queue: marks_tx,
                    dir: self.dir.path().to_path_buf(),
                    keep: 4,
                    readopted,
                }),
            )));
            self.agent = Some(agent);
        }

        /// Writes `frames` as the agent, closes its end and waits for the
        /// capture task to end.
        async fn agent_says(&mut self, frames: &[Frame]) {
            let mut wire = Vec::new();
            for frame in frames {
                frame.encode(&mut wire);
            }
            let mut agent = self.agent.take().unwrap();
            agent.write_all(&wire).await.unwrap();
            drop(agent);
            self.reader.take().unwrap().await.unwrap();
        }
    }

    impl Drop for Harness {
        fn drop(&mut self) {
            self.tap.stop(None);
            self.link.stop(None);
        }
    }

    fn adopted(written: WrittenMark) -> Frame {
        Frame::Adopted(Adoption {
            pid: 2,
            written,
            last_session: 1,
        })
    }

    /// A re-adopted agent replays frames 3…7 of which the dead host wrote
    /// 3…5 after the agent's last mark (frame 2): exec.log ends with 1…7,
    /// each once, and the agent is told all 7 are written. The same from
    /// the run's start marker when the agent never got a mark.
    #[tokio::test]
    async fn replayed_frames_already_in_the_log_are_skipped() {
        for with_mark in [true, false] {
            let mut harness = Harness::new().await;
            harness
                .append(vec![Chunk::system(STARTED_MARKER, Utc::now())])
                .await;
            let mark = harness.append(vec![chunk(1), chunk(2)]).await;
            // Written by the host that died before its mark reached the agent.
            harness.append(vec![chunk(3), chunk(4), chunk(5)]).await;
            let live = harness.dir.path().join("exec.log");
            assert_eq!(std::fs::metadata(&live).unwrap().ino(), mark.inode);
            let written = if with_mark {
                WrittenMark {
                    frames: 2,
                    file: mark.inode,
                    offset: mark.offset,
                }
            } else {
                WrittenMark::default()
            };
            harness.capture(true);
            let mut frames = vec![adopted(written)];
            frames.extend((written.frames as u32 + 1..=7).map(|n| output(MAIN_SESSION, n)));
            harness.agent_says(&frames).await;
            assert!(harness.told.recv().await.unwrap().starts_with("Adopted"));
            assert_eq!(harness.told.recv().await.unwrap(), "done None");

            let text = std::fs::read_to_string(&live).unwrap();
            let printed: Vec<String> = text
                .lines()
                .filter(|line| line.contains("\"stdout\""))
                .map(|line| {
                    let record: serde_json::Value = serde_json::from_str(line).unwrap();
                    record["d"].as_str().unwrap().trim().to_string()
                })
                .collect();
            assert_eq!(printed, ["1", "2", "3", "4", "5", "6", "7"], "{with_mark}");
            let mut last = None;
            while let Ok(frame) = harness.marks.try_recv() {
                last = Some(frame);
            }
            let mut last = BytesMut::from(&last.unwrap()[..]);
            match Frame::decode(&mut last).unwrap().unwrap() {
                Frame::Written(mark) => {
                    assert_eq!(mark.frames, 7);
                    assert_eq!(mark.offset, std::fs::metadata(&live).unwrap().len());
                }
                other => panic!("{other:?}"),
            }
        }
    }

    /// An `Adopted` on a run that was not re-adopted is a protocol error.
    #[tokio::test]
    async fn an_unexpected_adoption_is_a_protocol_error() {
        let mut harness = Harness::new().await;
        harness.capture(false);
        harness.agent_says(&[adopted(WrittenMark::default())]).await;
        let told = harness.told.recv().await.unwrap();
        assert!(told.contains("unexpected Adopted"), "{told}");
    }
}
