//! The VM process actor: the host side of one sandbox's process tree.
//!
//! # Contract
//! - Asks the runtime's [`Spawner`](crate::spawner) for an agent (PID 1 of a
//!   new pid namespace unless the sandbox shares the host's) with one end of
//!   a socketpair, keeps the other and a pidfd of the agent, and speaks
//!   [SAP](crate::protocol) with it. The agent unshares the other namespaces
//!   itself.
//! - A reader task owns the socket's read half. It writes each `Output` frame
//!   to the sandbox's relay tap with [`RelayTapMsg::Append`] and waits for the
//!   answer before reading on, so output is written exactly once and in
//!   order, and while a tap is being restarted the socket (then the agent's
//!   pipes, then the sandboxed process) buffers. The tap to use is read from a
//!   `watch` channel the supervisor updates when it restarts the tap.
//! - The reader writes the `--- sandbox started ---` marker when the agent
//!   reports `Ready`, so the marker precedes all output of the run.
//! - Control frames become [`VmEvent`]s for the supervisor, in wire order;
//!   `Exited` arrives after every output chunk of the run is written, and only
//!   once the agent's process has exited (its pidfd says so). With a pid
//!   namespace (the default) the agent is its PID 1, whose exit ends every
//!   process in it, so when the supervisor hears of the end, no process of
//!   the sandbox is left. Without one, the agent kills the main command's
//!   process group before it exits; a process that left the group (`setsid`)
//!   is not tracked.
//! - [`VmProcessMsg::Kill`] asks the agent to SIGKILL every process, so the
//!   main command's real status is still reported; [`VmProcessMsg::KillFromHost`]
//!   sends SIGKILL to the sandbox's PID 1 from the host (through its pidfd, so
//!   never to a process that reused the pid), which ends every process of its
//!   pid namespace at once, for an agent that does not answer.
//! - When this actor's state drops (however it ended) the socket closes, and
//!   the agent kills every process of the sandbox and exits.

use bytes::BytesMut;
use chrono::Utc;
use ractor::concurrency::JoinHandle;
use ractor::{Actor, ActorProcessingErr, ActorRef, DerivedActorRef, RpcReplyPort};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::watch;

use crate::cgroup::{Cgroup, Limits};
use crate::format::LogSource;
use crate::pidfd::Pidfd;
use crate::protocol::{stream, BootStage, ExecSpec, Frame, SignalTarget, StartSpec};
use crate::relay_tap::{Chunk, RelayTapMsg};
use crate::spawner::{SpawnFailed, Spawned, SpawnerMsg};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// The marker written when a run's main command has started.
pub const STARTED_MARKER: &str = "--- sandbox started ---";

/// What to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    /// What the agent runs, and in which namespaces.
    pub start: StartSpec,
    /// Resource limits of the whole tree.
    pub limits: Limits,
    /// The cgroup's name when there are limits (unique per run).
    pub cgroup_id: String,
}

/// What the VM process tells its supervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmEvent {
    /// The host pid of the sandbox's PID 1 (the agent), once it exists.
    Hello {
        /// Host pid.
        init_pid: u32,
    },
    /// The main command runs.
    Ready {
        /// Its pid inside the sandbox.
        pid: u32,
    },
    /// The sandbox could not start.
    BootFailed {
        /// Where.
        stage: BootStage,
        /// OS error number (0 if none).
        errno: i32,
        /// What happened.
        message: String,
    },
    /// The main command exited; every process is gone and all output written.
    Exited {
        /// Exit code, if it exited.
        code: Option<i32>,
        /// Signal, if one killed it.
        signal: Option<i32>,
    },
    /// An exec session's process started.
    SessionStarted {
        /// Session id.
        id: u64,
    },
    /// An exec session could not start.
    SessionFailed {
        /// Session id.
        id: u64,
    },
    /// An exec session's process exited (after all its output).
    SessionExited {
        /// Session id.
        id: u64,
        /// Exit code, if it exited.
        code: Option<i32>,
        /// Signal, if one killed it.
        signal: Option<i32>,
    },
    /// The agent went away without reporting an exit.
    Lost {
        /// What was seen.
        reason: String,
    },
}

/// Messages of the [`VmProcess`].
#[derive(Debug)]
pub enum VmProcessMsg {
    /// Deliver a signal inside the sandbox (through the agent).
    Signal {
        /// To whom.
        target: SignalTarget,
        /// Signal number.
        signo: i32,
    },
    /// SIGKILL every process of the sandbox, through the agent (which then
    /// reports the main command's real exit status).
    Kill,
    /// SIGKILL the sandbox's PID 1 from the host, which ends its whole pid
    /// namespace; for an agent that does not answer.
    KillFromHost,
    /// From the reader task: a control frame, in wire order.
    Frame(Frame),
    /// From the reader task: the socket closed (or broke).
    ReaderDone(Option<String>),
    /// From the waiter task: the agent exited (and, as PID 1 of a pid
    /// namespace, every process of the sandbox with it).
    AgentExited,
    /// Run an exec session; answered once the agent started it (or not).
    Exec {
        /// What to run (with its session id).
        spec: ExecSpec,
        /// Where the session's output and exit go, live.
        output: mpsc::UnboundedSender<ExecItem>,
        /// Session id and pid inside the sandbox, or why not.
        reply: ExecReply,
    },
    /// Input for a running exec session.
    Session {
        /// Session id.
        session: u64,
        /// What to deliver.
        input: SessionInput,
    },
}

/// Input for a running exec session, as its caller sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionInput {
    /// Bytes for its stdin; empty closes it (end of file on a terminal).
    Stdin(Vec<u8>),
    /// Its terminal's new window size.
    Resize {
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
    /// A signal to its process group.
    Signal(i32),
}

/// What an exec session's caller receives, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecItem {
    /// A chunk of output (also written to `exec.log`).
    Output {
        /// `stdout` or `stderr`.
        source: LogSource,
        /// The bytes.
        data: bytes::Bytes,
    },
    /// The session's process exited; nothing follows.
    Exited {
        /// Exit code, if it exited.
        code: Option<i32>,
        /// Signal, if one killed it.
        signal: Option<i32>,
    },
}

/// Why an exec session did not start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecRefused {
    /// The sandbox does not run.
    NotRunning,
    /// The sandbox is draining (or stopping): no new sessions.
    Draining,
    /// The agent could not start the command.
    Failed {
        /// OS error number.
        errno: i32,
        /// What happened.
        message: String,
    },
}

/// Answers an exec request: session id and pid inside the sandbox, or why not.
pub type ExecReply = RpcReplyPort<Result<(u64, u32), ExecRefused>>;

/// Stdin bytes per SAP frame.
const STDIN_FRAME_BYTES: usize = 1 << 20;
/// Most stdin bytes with the agent per session; the agent buffers 16 MiB.
const STDIN_WINDOW: usize = 4 << 20;

/// Live routes of exec sessions' output, shared with the reader task.
type Routes = Arc<Mutex<HashMap<u64, mpsc::UnboundedSender<ExecItem>>>>;

/// Arguments to spawn a [`VmProcess`].
pub struct VmArgs {
    /// What to start.
    pub spec: VmSpec,
    /// The current relay tap.
    pub tap: watch::Receiver<ActorRef<RelayTapMsg>>,
    /// The supervisor.
    pub events: DerivedActorRef<VmEvent>,
    /// Forks the agent.
    pub spawner: ActorRef<SpawnerMsg>,
}

/// The VM process actor. See the module docs.
pub struct VmProcess;

/// Its state: the write half of the socket and what the agent reported.
pub struct VmState {
    spec: VmSpec,
    /// `None` when the agent could not be started (reported as a boot failure).
    writer: Option<OwnedWriteHalf>,
    events: DerivedActorRef<VmEvent>,
    /// The agent, once spawned.
    agent: Option<Arc<Pidfd>>,
    main_pid: Option<u32>,
    /// The run's end as the agent reported it (or as its silence tells),
    /// held back until the agent's process has exited.
    ending: Option<VmEvent>,
    /// Set once the end was told to the supervisor.
    ended: bool,
    agent_gone: bool,
    reader: Option<JoinHandle<()>>,
    waiter: Option<JoinHandle<()>>,
    routes: Routes,
    pending_exec: HashMap<u64, ExecReply>,
    /// Stdin on its way to each session, within the agent's window.
    stdin: HashMap<u64, StdinFlow>,
    /// Removed (dropped) with the state, after the run has ended.
    _cgroup: Option<Cgroup>,
    /// What `post_start` needs to boot the agent.
    boot: Option<Boot>,
}

/// What `post_start` takes to boot the agent.
struct Boot {
    spawner: ActorRef<SpawnerMsg>,
    tap: watch::Receiver<ActorRef<RelayTapMsg>>,
}

impl Drop for VmState {
    fn drop(&mut self) {
        for task in [self.reader.take(), self.waiter.take()]
            .into_iter()
            .flatten()
        {
            task.abort();
        }
    }
}

/// Stdin flow control for one session: at most [`STDIN_WINDOW`] bytes are
/// with the agent (sent, not yet written to the session's pipe); the rest
/// waits here, in order, so input a session reads slowly is never dropped.
#[derive(Debug, Default)]
struct StdinFlow {
    in_flight: usize,
    /// Frames' data not yet sent; an empty one closes stdin.
    queued: std::collections::VecDeque<Vec<u8>>,
}

impl VmState {
    /// Sends the queued stdin of `session` that fits in the window.
    async fn pump_stdin(&mut self, session: u64) {
        let mut ready = Vec::new();
        if let Some(flow) = self.stdin.get_mut(&session) {
            while let Some(front) = flow.queued.front() {
                if !front.is_empty() && flow.in_flight + front.len() > STDIN_WINDOW {
                    break;
                }
                flow.in_flight += front.len();
                ready.extend(flow.queued.pop_front());
            }
        }
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
            if let Some(event) = self.ending.take() {
                self.ended = true;
                self.emit(event);
            }
        }
    }

    async fn signal(&mut self, target: SignalTarget, signo: i32) {
        self.send_frame(&Frame::Signal { target, signo }).await;
    }

    async fn send_frame(&mut self, frame: &Frame) {
        let mut buf = Vec::new();
        frame.encode(&mut buf);
        if let Some(writer) = self.writer.as_mut() {
            if let Err(err) = writer.write_all(&buf).await {
                // The agent is gone or going; its exit is reported separately.
                tracing::debug!(%err, "frame not delivered to the agent");
            }
        }
    }

    fn kill_tree(&self) {
        let sigkill = nix::sys::signal::Signal::SIGKILL;
        if !self.spec.start.pid_namespace {
            if let Some(main) = self.main_pid {
                let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(main as i32), sigkill);
            }
        }
        // Killing PID 1 of a pid namespace kills every process in it.
        if let Some(agent) = &self.agent {
            if let Err(err) = agent.signal(sigkill) {
                tracing::warn!(pid = agent.pid(), %err, "cannot kill the agent");
            }
        }
    }
}

/// Asks the spawner for an agent speaking SAP on a new socketpair; returns
/// the agent and the host's end.
async fn spawn_agent(
    spawner: &ActorRef<SpawnerMsg>,
    new_pid_namespace: bool,
) -> Result<(Spawned, tokio::net::UnixStream), SpawnFailed> {
    let io_failed = |what: &str, err: std::io::Error| SpawnFailed {
        errno: err.raw_os_error().unwrap_or(0),
        message: format!("{what}: {err}"),
    };
    let (host, agent) =
        std::os::unix::net::UnixStream::pair().map_err(|e| io_failed("socketpair", e))?;
    let asked = spawner
        .call(
            |reply| SpawnerMsg::Spawn {
                new_pid_namespace,
                socket: agent.into(),
                reply,
            },
            None,
        )
        .await;
    let spawned = match asked {
        Ok(ractor::rpc::CallResult::Success(answer)) => answer?,
        _ => {
            return Err(SpawnFailed {
                errno: 0,
                message: "the runtime's agent spawner is gone".into(),
            })
        }
    };
    host.set_nonblocking(true)
        .map_err(|e| io_failed("socket", e))?;
    let host = tokio::net::UnixStream::from_std(host).map_err(|e| io_failed("socket", e))?;
    Ok((spawned, host))
}

impl Actor for VmProcess {
    type Msg = VmProcessMsg;
    type State = VmState;
    type Arguments = VmArgs;

    async fn pre_start(
        &self,
        _: ActorRef<Self::Msg>,
        args: VmArgs,
    ) -> Result<VmState, ActorProcessingErr> {
        let mut state = VmState {
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
            routes: Routes::default(),
            pending_exec: HashMap::new(),
            stdin: HashMap::new(),
            _cgroup: None,
            boot: None,
        };
        if state.spec.limits.any() {
            match Cgroup::create(&state.spec.cgroup_id, state.spec.limits) {
                Ok(group) => state._cgroup = Some(group),
                Err(err) => {
                    state.ended = true;
                    state.emit(VmEvent::BootFailed {
                        stage: BootStage::BuildVm,
                        errno: err.raw_os_error().unwrap_or(0),
                        message: format!("cannot set up resource limits (cgroup): {err}"),
                    });
                    return Ok(state);
                }
            }
        }
        state.boot = Some(Boot {
            spawner: args.spawner,
            tap: args.tap,
        });
        Ok(state)
    }

    /// Spawns the agent and sends `Start`. Here rather than in `pre_start`:
    /// the supervisor (and the root above it) does not wait for the spawner;
    /// messages still wait until this is done.
    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut VmState,
    ) -> Result<(), ActorProcessingErr> {
        let Some(Boot { spawner, tap }) = state.boot.take() else {
            return Ok(());
        };
        if state.ended {
            return Ok(());
        }
        let spawned = spawn_agent(&spawner, state.spec.start.pid_namespace).await;
        let (spawned, socket) = match spawned {
            Ok(spawned) => spawned,
            Err(failed) => {
                state.ended = true;
                state.emit(VmEvent::BootFailed {
                    stage: BootStage::BuildVm,
                    errno: failed.errno,
                    message: failed.message,
                });
                return Ok(());
            }
        };
        let agent = match Pidfd::new(spawned.pidfd, spawned.pid) {
            Ok(agent) => Arc::new(agent),
            Err(err) => {
                // Dropping the socket ends the agent.
                state.ended = true;
                state.emit(VmEvent::BootFailed {
                    stage: BootStage::BuildVm,
                    errno: err.raw_os_error().unwrap_or(0),
                    message: format!("cannot watch the agent: {err}"),
                });
                return Ok(());
            }
        };
        state.agent = Some(agent.clone());
        state.emit(VmEvent::Hello {
            init_pid: spawned.pid,
        });
        // The agent waits for Start before it forks anything, so moving it
        // now puts the whole tree in the group.
        if let Some(group) = &state._cgroup {
            if let Err(err) = group.add(spawned.pid) {
                state.kill_tree();
                state.ended = true;
                state.emit(VmEvent::BootFailed {
                    stage: BootStage::BuildVm,
                    errno: err.raw_os_error().unwrap_or(0),
                    message: format!("cannot move the sandbox into its cgroup: {err}"),
                });
                return Ok(());
            }
        }
        let vm = myself.clone();
        state.waiter = Some(tokio::spawn(async move {
            // The agent reports the main command's own status over the socket.
            agent.exited().await;
            let _ = vm.cast(VmProcessMsg::AgentExited);
        }));
        let (read, mut writer) = socket.into_split();
        let mut start = Vec::new();
        Frame::Start(state.spec.start.clone()).encode(&mut start);
        if let Err(err) = writer.write_all(&start).await {
            state.kill_tree();
            state.end(VmEvent::BootFailed {
                stage: BootStage::BuildVm,
                errno: err.raw_os_error().unwrap_or(0),
                message: format!("cannot send Start to the agent: {err}"),
            });
            return Ok(());
        }
        state.writer = Some(writer);
        state.reader = Some(tokio::spawn(read_frames(
            read,
            myself.clone(),
            tap,
            state.routes.clone(),
        )));
        Ok(())
    }

    async fn handle(
        &self,
        _: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut VmState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            VmProcessMsg::Signal { target, signo } => state.signal(target, signo).await,
            VmProcessMsg::Kill => state.signal(SignalTarget::All, libc::SIGKILL).await,
            VmProcessMsg::KillFromHost => state.kill_tree(),
            VmProcessMsg::Exec {
                spec,
                output,
                reply,
            } => {
                let session = spec.session;
                if state.writer.is_none() || state.ended {
                    let _ = reply.send(Err(ExecRefused::NotRunning));
                    return Ok(());
                }
                lock(&state.routes).insert(session, output);
                state.pending_exec.insert(session, reply);
                state.send_frame(&Frame::Exec(spec)).await;
            }
            VmProcessMsg::Session { session, input } => match input {
                SessionInput::Stdin(data) => {
                    let flow = state.stdin.entry(session).or_default();
                    if data.is_empty() {
                        // Closing waits behind the bytes queued before it.
                        flow.queued.push_back(Vec::new());
                    } else {
                        // Frames stay far below the protocol's limit.
                        flow.queued
                            .extend(data.chunks(STDIN_FRAME_BYTES).map(<[u8]>::to_vec));
                    }
                    state.pump_stdin(session).await;
                }
                SessionInput::Resize { rows, cols } => {
                    let frame = Frame::Resize {
                        session,
                        rows,
                        cols,
                    };
                    state.send_frame(&frame).await;
                }
                SessionInput::Signal(signo) => {
                    state.signal(SignalTarget::Session(session), signo).await;
                }
            },
            VmProcessMsg::Frame(frame) => match frame {
                Frame::SessionStarted { session, pid } => {
                    if let Some(reply) = state.pending_exec.remove(&session) {
                        let _ = reply.send(Ok((session, pid)));
                    }
                    state.emit(VmEvent::SessionStarted { id: session });
                }
                Frame::SessionFailed {
                    session,
                    errno,
                    message,
                } => {
                    lock(&state.routes).remove(&session);
                    if let Some(reply) = state.pending_exec.remove(&session) {
                        let _ = reply.send(Err(ExecRefused::Failed { errno, message }));
                    }
                    state.emit(VmEvent::SessionFailed { id: session });
                }
                Frame::Exited {
                    session,
                    code,
                    signal,
                } if session != 1 => {
                    state.stdin.remove(&session);
                    if let Some(route) = lock(&state.routes).remove(&session) {
                        // A caller that dropped its handle needs no exit.
                        let _ = route.send(ExecItem::Exited { code, signal });
                    }
                    state.emit(VmEvent::SessionExited {
                        id: session,
                        code,
                        signal,
                    });
                }
                Frame::StdinConsumed { session, bytes } => {
                    if let Some(flow) = state.stdin.get_mut(&session) {
                        // The agent may count a byte of its own (a terminal's
                        // end-of-file character).
                        flow.in_flight = flow.in_flight.saturating_sub(bytes as usize);
                    }
                    state.pump_stdin(session).await;
                }
                Frame::Ready { pid } => {
                    state.main_pid = Some(pid);
                    state.emit(VmEvent::Ready { pid });
                }
                Frame::BootError {
                    stage,
                    errno,
                    message,
                } => state.end(VmEvent::BootFailed {
                    stage,
                    errno,
                    message,
                }),
                Frame::Exited {
                    session: 1,
                    code,
                    signal,
                } => state.end(VmEvent::Exited { code, signal }),
                other => tracing::debug!(?other, "unexpected frame from the agent"),
            },
            VmProcessMsg::ReaderDone(problem) => {
                let reason = match problem {
                    Some(problem) => {
                        // The agent may still run but can no longer be heard
                        // (a protocol error, a broken socket): end it from
                        // here, since its output can no longer be captured.
                        state.writer = None;
                        state.kill_tree();
                        problem
                    }
                    None => "the agent closed its socket without reporting an exit".into(),
                };
                state.end(VmEvent::Lost { reason });
            }
            VmProcessMsg::AgentExited => {
                state.agent_gone = true;
                state.end_if_gone();
            }
        }
        Ok(())
    }
}

async fn read_frames(
    mut read: OwnedReadHalf,
    vm: ActorRef<VmProcessMsg>,
    mut tap: watch::Receiver<ActorRef<RelayTapMsg>>,
    routes: Routes,
) {
    const GONE: &str = "the sandbox's supervisor is gone";
    let mut buf = BytesMut::with_capacity(64 * 1024);
    // Output chunks decoded from what is buffered go to the tap together.
    let mut pending: Vec<Chunk> = Vec::new();
    let problem = loop {
        let frame = match Frame::decode(&buf) {
            Ok(Some((frame, used))) => {
                let _ = buf.split_to(used);
                frame
            }
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
                    stream::STDERR => LogSource::Stderr,
                    stream::OUTPUT => LogSource::Output,
                    _ => LogSource::Stdout,
                };
                let data = bytes::Bytes::from(data);
                if session != 1 {
                    if let Some(route) = lock(&routes).get(&session) {
                        // The caller may have dropped its handle; the log keeps it.
                        let _ = route.send(ExecItem::Output {
                            source,
                            data: data.clone(),
                        });
                    }
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
                let _ = vm.cast(VmProcessMsg::Frame(consumed));
            }
            other => {
                // Control frames keep their place after the output before them.
                if !append(&mut tap, std::mem::take(&mut pending)).await {
                    break Some(GONE.to_string());
                }
                if let Frame::Ready { .. } = other {
                    let marker = Chunk {
                        session_id: 0,
                        source: LogSource::System,
                        data: STARTED_MARKER.into(),
                        captured_at: Utc::now(),
                    };
                    if !append(&mut tap, vec![marker]).await {
                        break Some(GONE.to_string());
                    }
                }
                if vm.cast(VmProcessMsg::Frame(other)).is_err() {
                    break None;
                }
            }
        }
    };
    let _ = vm.cast(VmProcessMsg::ReaderDone(problem));
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

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Holders only insert and remove; a panic mid-way leaves a usable map.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
