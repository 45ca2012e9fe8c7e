//! The agent link actor: the host side of one sandbox's agent.
//!
//! # Contract
//! - Asks the runtime's [`Backend`] for an agent (PID 1 of the sandbox) and
//!   gets the host end of its socket and an [`Agent`] handle, then speaks
//!   [SAP](crate::protocol) with it: `Start` first, then signals, exec
//!   sessions and stdin. It knows backends only through the trait.
//! - Output goes through the [capture task](super::capture), which owns the
//!   socket's read half and hands control frames back here in wire order.
//! - Control frames become [`VmEvent`]s for the supervisor, in wire order;
//!   `Exited` arrives after every output chunk of the run is written, and only
//!   once the agent has exited ([`Agent::exited`]). With a pid namespace (the
//!   default) the agent is its PID 1, whose exit ends every process in it, so
//!   when the supervisor hears of the end, no process of the sandbox is left.
//!   Without one, the agent kills the main command's process group before it
//!   exits; a process that left the group (`setsid`) is not tracked.
//! - A backend that cannot start the agent is reported as
//!   [`VmEvent::BootFailed`] at stage `build_vm`, at once.
//! - [`AgentLinkMsg::Kill`] asks the agent to SIGKILL every process, so the
//!   main command's real status is still reported;
//!   [`AgentLinkMsg::KillFromHost`] kills the agent from the host
//!   ([`Agent::kill`]), for an agent that does not answer.
//! - When this actor's state drops (however it ended) the socket closes, and
//!   the agent kills every process of the sandbox and exits. An adoptable
//!   agent (one that outlives a host that dies) is killed from here then,
//!   unless the run has ended: a runtime that is dropped stops its
//!   sandboxes; only a host that dies leaves them to the next one.
//! - A re-adopted agent ([`AgentLinkArgs::adopted`]) is already connected
//!   and running: no `Start` is sent; its `Adopted` frame stands for
//!   `Ready` ([`VmEvent::Adopted`]).

use std::collections::HashMap;
use std::sync::Arc;

use ractor::concurrency::JoinHandle;
use ractor::{Actor, ActorProcessingErr, ActorRef, DerivedActorRef, RpcReplyPort};
use tokio::io::AsyncWriteExt;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{mpsc, watch};

use super::capture::{read_frames, Marks};
use super::net_helper::NetHelperMsg;
use super::session::Routes;
use super::stdin::StdinFlow;
use super::{AgentLinkMsg, ExecItem, ExecRefused, ExecReply, SessionInput, UpdateRefused, VmEvent};
use crate::backend::{Agent, Backend, Started, VmSpec};
use crate::host::cgroup::LimitsUpdate;
use crate::log::tap::RelayTapMsg;
use crate::protocol::{BootError, BootStage, ExitStatus, Frame, SignalTarget};

/// The marker written when a run's main command has started.
pub const STARTED_MARKER: &str = "--- sandbox started ---";

/// The `system` record that ends a run in `exec.log`: `how` it ended (`exit
/// 3`, `signal 9`, a termination reason and why).
pub fn stopped_marker(how: &str) -> String {
    format!("--- sandbox stopped ({how}) ---")
}

/// Arguments to spawn an [`AgentLink`].
pub struct AgentLinkArgs {
    /// What to start.
    pub spec: VmSpec,
    /// The current relay tap.
    pub tap: watch::Receiver<ActorRef<RelayTapMsg>>,
    /// The supervisor.
    pub events: DerivedActorRef<VmEvent>,
    /// Starts the agent.
    pub backend: Arc<dyn Backend>,
    /// Counts output chunks read from the agent (the supervisor's idle
    /// timeout reads it).
    pub output_count: Arc<std::sync::atomic::AtomicU64>,
    /// The run's network helper: asked to attach the private network once
    /// the agent exists, before `Start`.
    pub network: Option<ActorRef<NetHelperMsg>>,
    /// A running agent whose host died, connected through its adoption
    /// socket: taken over instead of starting one.
    pub adopted: Option<Started>,
    /// The run's log directory and rotated files kept (where a re-adopted
    /// agent's replay is matched against `exec.log`).
    pub log: (std::path::PathBuf, usize),
}

/// The agent link actor. See the module docs.
pub struct AgentLink;

/// Its state: the write half of the socket and what the agent reported.
pub struct AgentLinkState {
    spec: VmSpec,
    /// Frames for the writer task; `None` when the agent could not be
    /// started (reported as a boot failure) or stopped reading.
    writer: Option<mpsc::Sender<Vec<u8>>>,
    events: DerivedActorRef<VmEvent>,
    /// The agent, once started.
    agent: Option<Arc<dyn Agent>>,
    main_pid: Option<u32>,
    /// The run's end as the agent reported it (or as its silence tells),
    /// held back until the agent's process has exited.
    ending: Option<VmEvent>,
    /// Set once the end was told to the supervisor.
    ended: bool,
    agent_gone: bool,
    reader: Option<JoinHandle<()>>,
    waiter: Option<JoinHandle<()>>,
    /// Writes queued frames to the socket, so that an agent that stops
    /// reading never blocks this actor (and its kill from the host).
    write_task: Option<JoinHandle<()>>,
    routes: Routes,
    pending_exec: HashMap<u64, ExecReply>,
    /// Sessions killed at their deadline: their exit says so.
    expired: std::collections::HashSet<u64>,
    /// Stdin on its way to each session, within the agent's window.
    stdin: HashMap<u64, StdinFlow>,
    /// What `post_start` needs to boot the agent.
    boot: Option<Boot>,
}

/// What `post_start` takes to boot the agent.
struct Boot {
    backend: Arc<dyn Backend>,
    tap: watch::Receiver<ActorRef<RelayTapMsg>>,
    output_count: Arc<std::sync::atomic::AtomicU64>,
    network: Option<ActorRef<NetHelperMsg>>,
    adopted: Option<Started>,
    log: (std::path::PathBuf, usize),
}

/// Frames queued for the agent at most: far more than a well-behaved agent
/// ever leaves unread (stdin is bounded by its window, the rest are small
/// control frames).
const WRITE_QUEUE: usize = 1024;

/// Writes each queued frame in order until the queue closes or the socket
/// breaks (the agent is gone; its exit is reported separately).
async fn write_frames(mut writer: OwnedWriteHalf, mut frames: mpsc::Receiver<Vec<u8>>) {
    while let Some(frame) = frames.recv().await {
        if let Err(err) = writer.write_all(&frame).await {
            tracing::debug!(%err, "frame not delivered to the agent");
            return;
        }
    }
}

impl Drop for AgentLinkState {
    fn drop(&mut self) {
        if self.spec.plan.adopt_socket.is_some() && !self.ended && !self.agent_gone {
            // Closing the socket would leave it waiting for a new host.
            self.kill_from_host();
        }
        for task in [
            self.reader.take(),
            self.waiter.take(),
            self.write_task.take(),
        ]
        .into_iter()
        .flatten()
        {
            task.abort();
        }
    }
}

impl AgentLinkState {
    /// Sends the queued stdin of `session` that fits in the window.
    async fn pump_stdin(&mut self, session: u64) {
        let ready = match self.stdin.get_mut(&session) {
            Some(flow) => flow.ready(),
            None => return,
        };
        for data in ready {
            self.send_frame(&Frame::Stdin { session, data }).await;
        }
    }

    fn emit(&self, event: VmEvent) {
        // A supervisor that is gone has nobody to tell.
        let _ = self.events.send_message(event);
    }

    /// Records how the run ended (the first word wins) and tells the
    /// supervisor once the agent's process is gone too, so that nothing of
    /// the sandbox is left when the supervisor hears of the end.
    fn end(&mut self, event: VmEvent) {
        if self.ending.is_none() {
            self.ending = Some(event);
        }
        self.end_if_gone();
    }

    fn end_if_gone(&mut self) {
        if self.agent_gone && !self.ended {
            if let Some(mut event) = self.ending.take() {
                // Read now: every process is gone, so the count is final.
                if let VmEvent::Exited { oom_killed, .. } = &mut event {
                    *oom_killed = self.agent.as_ref().is_some_and(|agent| agent.oom_killed());
                }
                self.ended = true;
                self.emit(event);
            }
        }
    }

    /// Changes the running agent's limits, off the runtime's threads (a
    /// lower memory limit makes the kernel reclaim first).
    /// Writes the run's new limits on a blocking thread and answers `reply`
    /// from there: lowering a memory limit makes the kernel reclaim, which
    /// the sandbox can make slow, and the link must go on draining the
    /// agent's frames meanwhile.
    fn update_limits(&self, update: LimitsUpdate, reply: RpcReplyPort<Result<(), UpdateRefused>>) {
        let Some(agent) = self
            .agent
            .clone()
            .filter(|_| !self.ended && !self.agent_gone)
        else {
            let _ = reply.send(Err(UpdateRefused::NotRunning));
            return;
        };
        tokio::spawn(async move {
            let written = tokio::task::spawn_blocking(move || agent.update_limits(&update)).await;
            let result = match written {
                Ok(Ok(())) => Ok(()),
                Ok(Err(err)) if err.kind() == std::io::ErrorKind::Unsupported => {
                    Err(UpdateRefused::Unsupported(err.to_string()))
                }
                Ok(Err(err)) => Err(UpdateRefused::Failed(err.to_string())),
                Err(join) => Err(UpdateRefused::Failed(join.to_string())),
            };
            let _ = reply.send(result);
        });
    }

    async fn signal(&mut self, target: SignalTarget, signo: i32) {
        self.send_frame(&Frame::Signal { target, signo }).await;
    }

    /// Queues `frame` for the agent. The agent is untrusted: one that lets
    /// [`WRITE_QUEUE`] frames pile up has stopped reading, and is ended from
    /// the host.
    async fn send_frame(&mut self, frame: &Frame) {
        let Some(queue) = &self.writer else {
            return;
        };
        let mut buf = Vec::new();
        frame.encode(&mut buf);
        match queue.try_send(buf) {
            // Closed: the agent is gone or going; its exit is reported
            // separately.
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.writer = None;
                self.kill_from_host();
                self.end(VmEvent::Lost {
                    reason: format!(
                        "the agent stopped reading from the host ({WRITE_QUEUE} frames unsent)"
                    ),
                });
            }
        }
    }

    fn kill_from_host(&self) {
        if let Some(agent) = &self.agent {
            if let Err(err) = agent.kill(self.main_pid) {
                tracing::warn!(pid = agent.pid(), %err, "cannot kill the agent");
            }
        }
    }

    /// Handles a control frame from the capture task.
    async fn on_frame(&mut self, frame: Frame) {
        match frame {
            Frame::SessionStarted { session, pid } => {
                if let Some(reply) = self.pending_exec.remove(&session) {
                    let _ = reply.send(Ok((session, pid)));
                }
                self.emit(VmEvent::SessionStarted { id: session });
            }
            Frame::SessionFailed {
                session,
                errno,
                message,
                exec_failed,
            } => {
                self.routes.remove(session);
                if let Some(reply) = self.pending_exec.remove(&session) {
                    let _ = reply.send(Err(ExecRefused::Failed {
                        errno,
                        message,
                        exec_failed,
                    }));
                }
                self.emit(VmEvent::SessionFailed { id: session });
            }
            Frame::Exited {
                session,
                status: ExitStatus { code, signal },
            } if session != 1 => {
                self.stdin.remove(&session);
                let timed_out = self.expired.remove(&session);
                if let Some(route) = self.routes.remove(session) {
                    // A caller that dropped its handle needs no exit.
                    let _ = route.send(ExecItem::Exited {
                        code,
                        signal,
                        timed_out,
                    });
                }
                self.emit(VmEvent::SessionExited {
                    id: session,
                    code,
                    signal,
                });
            }
            Frame::StdinConsumed { session, bytes } => {
                if let Some(flow) = self.stdin.get_mut(&session) {
                    flow.consumed(bytes as usize);
                }
                self.routes.send(session, ExecItem::InputTaken { bytes });
                self.pump_stdin(session).await;
            }
            Frame::Ready { pid } => {
                self.main_pid = Some(pid);
                self.emit(VmEvent::Ready { pid });
            }
            Frame::Adopted(adoption) => {
                self.main_pid = Some(adoption.pid);
                self.emit(VmEvent::Adopted {
                    pid: adoption.pid,
                    last_session: adoption.last_session,
                });
            }
            Frame::BootError(BootError {
                stage,
                errno,
                message,
                exec_failed,
            }) => self.end(VmEvent::BootFailed {
                stage,
                errno,
                message,
                exec_failed,
            }),
            Frame::Exited {
                session: 1,
                status: ExitStatus { code, signal },
            } => self.end(VmEvent::Exited {
                code,
                signal,
                oom_killed: false,
            }),
            other => tracing::debug!(?other, "unexpected frame from the agent"),
        }
    }

    /// Handles input for a running exec session.
    async fn on_session(&mut self, session: u64, input: SessionInput) {
        match input {
            SessionInput::Stdin(data) => {
                self.stdin.entry(session).or_default().push(&data);
                self.pump_stdin(session).await;
            }
            SessionInput::Resize { rows, cols } => {
                let frame = Frame::Resize {
                    session,
                    rows,
                    cols,
                };
                self.send_frame(&frame).await;
            }
            SessionInput::Signal(signo) => {
                self.signal(SignalTarget::Session(session), signo).await;
            }
            SessionInput::OutputConsumed(bytes) => {
                self.send_frame(&Frame::OutputConsumed { session, bytes })
                    .await;
            }
            SessionInput::Expire => {
                if self.routes.contains(session) {
                    self.expired.insert(session);
                    self.signal(SignalTarget::Session(session), libc::SIGKILL)
                        .await;
                }
            }
        }
    }

    /// Reports that no agent runs (nothing to wait for).
    fn boot_failed(&mut self, errno: i32, message: String) {
        self.ended = true;
        self.emit(VmEvent::BootFailed {
            stage: BootStage::BuildVm,
            errno,
            message,
            exec_failed: false,
        });
    }
}

/// Has the run's network helper build the agent's private network; why
/// not, in words for a boot error.
async fn attach_network(
    network: &ActorRef<NetHelperMsg>,
    agent: Option<&dyn Agent>,
) -> Result<(), String> {
    let agent_pid = agent.map(Agent::pid).ok_or("the agent is gone")?;
    // Past the helper's own deadlines (nft, pasta's readiness) with room.
    let asked = network
        .call(
            |reply| NetHelperMsg::Attach { agent_pid, reply },
            Some(NETWORK_ATTACH_TIMEOUT),
        )
        .await;
    match asked {
        Ok(ractor::rpc::CallResult::Success(built)) => built,
        Ok(ractor::rpc::CallResult::Timeout) => Err(format!(
            "the private network was not built within {NETWORK_ATTACH_TIMEOUT:?}"
        )),
        _ => Err("the network helper actor is gone".into()),
    }
}

/// How long building a private network may take.
const NETWORK_ATTACH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(25);

impl Actor for AgentLink {
    type Msg = AgentLinkMsg;
    type State = AgentLinkState;
    type Arguments = AgentLinkArgs;

    async fn pre_start(
        &self,
        _: ActorRef<Self::Msg>,
        args: AgentLinkArgs,
    ) -> Result<AgentLinkState, ActorProcessingErr> {
        Ok(AgentLinkState {
            spec: args.spec,
            writer: None,
            events: args.events,
            agent: None,
            main_pid: None,
            ending: None,
            ended: false,
            agent_gone: false,
            reader: None,
            waiter: None,
            write_task: None,
            routes: Routes::default(),
            pending_exec: HashMap::new(),
            expired: std::collections::HashSet::new(),
            stdin: HashMap::new(),
            boot: Some(Boot {
                backend: args.backend,
                tap: args.tap,
                output_count: args.output_count,
                network: args.network,
                adopted: args.adopted,
                log: args.log,
            }),
        })
    }

    /// Starts the agent and sends `Start`. Here rather than in `pre_start`:
    /// the supervisor (and the root above it) does not wait for the backend;
    /// messages still wait until this is done.
    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut AgentLinkState,
    ) -> Result<(), ActorProcessingErr> {
        let Some(Boot {
            backend,
            tap,
            output_count,
            network,
            adopted,
            log,
        }) = state.boot.take()
        else {
            return Ok(());
        };
        let readopted = adopted.is_some();
        let started = match adopted {
            Some(started) => started,
            None => match backend.start(&state.spec).await {
                Ok(started) => started,
                Err(failed) => {
                    state.boot_failed(failed.errno, failed.message);
                    return Ok(());
                }
            },
        };
        let agent = started.agent;
        state.agent = Some(agent.clone());
        state.emit(VmEvent::Hello {
            init_pid: agent.pid(),
        });
        let link = myself.clone();
        state.waiter = Some(tokio::spawn(async move {
            // The agent reports the main command's own status over the socket.
            agent.exited().await;
            let _ = link.cast(AgentLinkMsg::AgentExited);
        }));
        if let Some(network) = network.filter(|_| !readopted) {
            if let Err(message) = attach_network(&network, state.agent.as_deref()).await {
                state.kill_from_host();
                state.end(VmEvent::BootFailed {
                    stage: BootStage::Network,
                    errno: 0,
                    message,
                    exec_failed: false,
                });
                return Ok(());
            }
        }
        let (read, mut writer) = started.socket.into_split();
        let mut start = Vec::new();
        if !readopted {
            Frame::Start(state.spec.start.clone()).encode(&mut start);
        }
        if let Err(err) = writer.write_all(&start).await {
            state.kill_from_host();
            state.end(VmEvent::BootFailed {
                stage: BootStage::BuildVm,
                errno: err.raw_os_error().unwrap_or(0),
                message: format!("cannot send Start to the agent: {err}"),
                exec_failed: false,
            });
            return Ok(());
        }
        let (queue, frames) = mpsc::channel(WRITE_QUEUE);
        state.writer = Some(queue.clone());
        state.write_task = Some(tokio::spawn(write_frames(writer, frames)));
        let marks = state.spec.plan.adopt_socket.is_some().then(|| Marks {
            queue: queue.clone(),
            dir: log.0,
            keep: log.1,
            readopted,
        });
        state.reader = Some(tokio::spawn(read_frames(
            read,
            myself.clone(),
            tap,
            state.routes.clone(),
            output_count,
            marks,
        )));
        Ok(())
    }

    async fn handle(
        &self,
        _: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut AgentLinkState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            AgentLinkMsg::Signal { target, signo } => state.signal(target, signo).await,
            AgentLinkMsg::Kill => state.signal(SignalTarget::All, libc::SIGKILL).await,
            AgentLinkMsg::KillFromHost => state.kill_from_host(),
            AgentLinkMsg::Exec {
                mut spec,
                logged,
                output,
                reply,
            } => {
                let session = spec.session;
                if state.writer.is_none() || state.ended {
                    let _ = reply.send(Err(ExecRefused::NotRunning));
                    return Ok(());
                }
                state.routes.insert(session, output, logged);
                state.pending_exec.insert(session, reply);
                spec.logged = logged;
                state.send_frame(&Frame::Exec(spec)).await;
            }
            AgentLinkMsg::Session { session, input } => state.on_session(session, input).await,
            AgentLinkMsg::UpdateLimits { update, reply } => state.update_limits(update, reply),
            AgentLinkMsg::Frame(frame) => state.on_frame(frame).await,
            AgentLinkMsg::ReaderDone(problem) => {
                let reason = match problem {
                    Some(problem) => {
                        // The agent may still run but can no longer be heard
                        // (a protocol error, a broken socket): end it from
                        // here, since its output can no longer be captured.
                        state.writer = None;
                        state.kill_from_host();
                        problem
                    }
                    None => "the agent closed its socket without reporting an exit".into(),
                };
                state.end(VmEvent::Lost { reason });
            }
            AgentLinkMsg::AgentExited => {
                state.agent_gone = true;
                state.end_if_gone();
            }
        }
        Ok(())
    }
}
