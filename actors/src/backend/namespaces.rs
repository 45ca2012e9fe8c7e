//! The namespace backend: sandbox agents forked as PID 1 of new namespaces
//! by one spawner process per runtime, asked through the spawner actor.
//!
//! # Why a spawner process
//! The spawner is `sandvisor-agent` as the host starts it: a small,
//! single-threaded process. Each agent is a fork of it, created by `clone3`
//! directly as PID 1 of a new pid namespace, which speaks
//! [SAP](crate::protocol) on a socket the host passed along. Per sandbox
//! that saves an exec of the agent (and its dynamic loading), the
//! intermediate process that would otherwise fork PID 1 into the namespace,
//! and a spawn from the host's large, multi-threaded process.
//!
//! # Contract
//! - The spawner process is started by the first [`SpawnerMsg::Spawn`] (a
//!   runtime that never starts a sandbox starts none), and again by the first
//!   one after it went away; its channel is the
//!   [spawn channel](crate::protocol::spawn).
//! - Every `Spawn` is answered exactly once: with the agent's host pid and a
//!   pidfd of it, or with a [`SpawnFailed`] that says what failed. A request
//!   the channel refused because the spawner process is gone (`EPIPE`,
//!   `ECONNRESET`) is sent once more, to a new spawner process. A request
//!   that was sent is never sent again (the agent may exist): if its spawner
//!   process dies before answering, it fails; answers it wrote before dying
//!   are still read and delivered.
//! - When this actor's state drops, the channel closes: the spawner process
//!   exits once its agents have (each lives as long as the host end of its
//!   own SAP socket), and is then reaped by tokio.
//! - [`NamespaceBackend`] starts the spawner actor on first use, and again on
//!   the first use after it ended; sandboxes started after that use the new
//!   one (running sandboxes do not need it anymore). Dropping the backend
//!   stops the actor.
//! - Each agent's resource limits are a [`Cgroup`] the backend creates before
//!   the spawn and moves the agent into before `Start` (so the whole tree is
//!   in it); it is removed when the [`Agent`] handle drops, after the run.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;

use nix::sys::socket::{socketpair, AddressFamily, MsgFlags, SockFlag, SockType};
use ractor::concurrency::JoinHandle;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use futures::future::BoxFuture;

use super::{AdoptSpec, Agent, Backend, SpawnFailed, Started, VmSpec};
use crate::host::cgroup::{Cgroup, LimitsUpdate};
use crate::host::pidfd::Pidfd;
use crate::protocol::spawn;
use crate::protocol::SpawnPlan;

/// An agent the spawner process forked.
#[derive(Debug)]
pub struct Spawned {
    /// Its host pid.
    pub pid: u32,
    /// A pidfd of it.
    pub pidfd: OwnedFd,
}

/// Answers a [`SpawnerMsg::Spawn`].
pub type SpawnReply = RpcReplyPort<Result<Spawned, SpawnFailed>>;

/// Messages of the [`Spawner`].
#[derive(Debug)]
pub enum SpawnerMsg {
    /// Fork an agent that speaks SAP on `socket`.
    Spawn {
        /// Its namespaces and root filesystem.
        plan: SpawnPlan,
        /// The agent's end of its SAP socket (the host keeps the other).
        socket: OwnedFd,
        /// The agent, or why not.
        reply: SpawnReply,
    },
    /// From the reader task: a spawner process answered (ids are unique
    /// across spawner processes).
    Replied {
        /// The answer.
        reply: spawn::Reply,
        /// The pidfd that came with it.
        pidfd: Option<OwnedFd>,
    },
    /// From the reader task: the channel closed or broke.
    ChannelClosed {
        /// Which spawner process.
        generation: u64,
        /// What was seen.
        reason: String,
    },
}

/// The spawner actor. See the module docs.
pub struct Spawner;

/// Its state: the spawner process (once started) and the requests it has not
/// answered yet.
pub struct SpawnerState {
    agent: PathBuf,
    /// Spawner processes by generation: the current one, and any that went
    /// away whose channel has not been read to its end yet.
    processes: HashMap<u64, SpawnerProcess>,
    /// The generation new requests go to.
    current: Option<u64>,
    generation: u64,
    next_id: u64,
    /// Requests sent and not answered, with the generation they went to.
    pending: HashMap<u64, (u64, SpawnReply)>,
}

/// A running spawner process and the host end of its channel.
struct SpawnerProcess {
    channel: Arc<AsyncFd<OwnedFd>>,
    /// Reaped by tokio once it exits (see the module docs).
    _child: tokio::process::Child,
    reader: JoinHandle<()>,
}

impl Drop for SpawnerProcess {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl SpawnerState {
    /// The current spawner process, started unless one runs.
    fn ensure_process(
        &mut self,
        myself: &ActorRef<SpawnerMsg>,
    ) -> Result<(u64, Arc<AsyncFd<OwnedFd>>), SpawnFailed> {
        if let Some(generation) = self.current {
            if let Some(process) = self.processes.get(&generation) {
                return Ok((generation, process.channel.clone()));
            }
        }
        let (channel, child) =
            start_process(&self.agent).map_err(|err| self.start_failure(&err))?;
        let channel = Arc::new(channel);
        self.generation += 1;
        let reader = tokio::spawn(read_replies(
            channel.clone(),
            self.generation,
            myself.clone(),
        ));
        tracing::debug!(agent = %self.agent.display(), pid = child.id(), "spawner process started");
        self.processes.insert(
            self.generation,
            SpawnerProcess {
                channel: channel.clone(),
                _child: child,
                reader,
            },
        );
        self.current = Some(self.generation);
        Ok((self.generation, channel))
    }

    fn start_failure(&self, err: &std::io::Error) -> SpawnFailed {
        let message = if err.kind() == std::io::ErrorKind::NotFound {
            format!("agent binary not found at {}", self.agent.display())
        } else {
            format!("cannot start {}: {err}", self.agent.display())
        };
        SpawnFailed {
            errno: err.raw_os_error().unwrap_or(0),
            message,
        }
    }

    /// Sends a request for an agent on `socket` to the current spawner
    /// process; returns its id and the generation it went to. A second try
    /// goes to a new process, only after the first found the spawner gone.
    async fn send(
        &mut self,
        myself: &ActorRef<SpawnerMsg>,
        plan: &SpawnPlan,
        socket: BorrowedFd<'_>,
    ) -> Result<(u64, u64), SpawnFailed> {
        let mut refused = None;
        for _ in 0..2 {
            let (generation, channel) = self.ensure_process(myself)?;
            let id = self.next_id;
            self.next_id += 1;
            let request = spawn::Request {
                id,
                plan: plan.clone(),
            };
            // Waits while the channel is full: the spawner drains it.
            match send_request(&channel, &request.encode(), socket).await {
                Ok(()) => return Ok((id, generation)),
                Err(err)
                    if matches!(
                        err.raw_os_error(),
                        Some(libc::EPIPE) | Some(libc::ECONNRESET)
                    ) =>
                {
                    // Its reader still delivers what it answered before,
                    // then reports the end.
                    self.current = None;
                    tracing::warn!(%err, "the agent spawner is gone; starting a new one");
                    refused = Some(err);
                }
                Err(err) => {
                    return Err(SpawnFailed {
                        errno: err.raw_os_error().unwrap_or(0),
                        message: format!("cannot send a request to the agent spawner: {err}"),
                    })
                }
            }
        }
        let reason = refused.map_or_else(String::new, |err| format!("writing to it: {err}"));
        Err(self.gone(&reason))
    }

    /// Forgets the spawner process of `generation`, whose channel has
    /// closed (tokio reaps it), and fails every request it has not answered.
    fn lose_process(&mut self, generation: u64, reason: &str) {
        self.processes.remove(&generation);
        if self.current == Some(generation) {
            self.current = None;
            tracing::warn!(%reason, "the agent spawner went away; the next sandbox starts a new one");
        }
        let lost: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, (g, _))| *g == generation)
            .map(|(id, _)| *id)
            .collect();
        for id in lost {
            if let Some((_, reply)) = self.pending.remove(&id) {
                let _ = reply.send(Err(self.gone(reason)));
            }
        }
    }

    fn gone(&self, reason: &str) -> SpawnFailed {
        SpawnFailed {
            errno: libc::EPIPE,
            message: format!(
                "the agent spawner ({}) went away: {reason}",
                self.agent.display()
            ),
        }
    }
}

/// Arguments to spawn a [`Spawner`].
pub struct SpawnerArgs {
    /// The `sandvisor-agent` binary.
    pub agent: PathBuf,
}

impl Actor for Spawner {
    type Msg = SpawnerMsg;
    type State = SpawnerState;
    type Arguments = SpawnerArgs;

    async fn pre_start(
        &self,
        _: ActorRef<SpawnerMsg>,
        args: SpawnerArgs,
    ) -> Result<SpawnerState, ActorProcessingErr> {
        Ok(SpawnerState {
            agent: args.agent,
            processes: HashMap::new(),
            current: None,
            generation: 0,
            next_id: 0,
            pending: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<SpawnerMsg>,
        msg: SpawnerMsg,
        state: &mut SpawnerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SpawnerMsg::Spawn {
                plan,
                socket,
                reply,
            } => {
                match state.send(&myself, &plan, socket.as_fd()).await {
                    // Answered once the reply is read, which is handled after
                    // this message.
                    Ok((id, generation)) => {
                        state.pending.insert(id, (generation, reply));
                    }
                    Err(failed) => {
                        let _ = reply.send(Err(failed));
                    }
                }
            }
            SpawnerMsg::Replied { reply, pidfd } => {
                let Some((_, port)) = state.pending.remove(&reply.id) else {
                    tracing::warn!(
                        id = reply.id,
                        "the agent spawner answered a request it was not sent"
                    );
                    return Ok(());
                };
                let answer = match (reply.outcome, pidfd) {
                    (Ok(pid), Some(pidfd)) => Ok(Spawned { pid, pidfd }),
                    (Ok(pid), None) => Err(SpawnFailed {
                        errno: libc::EPROTO,
                        message: format!("the agent spawner sent no pidfd for agent {pid}"),
                    }),
                    (Err(errno), _) => Err(SpawnFailed {
                        errno,
                        message: format!(
                            "cannot fork a sandbox agent: {}",
                            nix::errno::Errno::from_raw(errno).desc()
                        ),
                    }),
                };
                // An agent link that is gone drops the agent's socket: it exits.
                let _ = port.send(answer);
            }
            SpawnerMsg::ChannelClosed { generation, reason } => {
                state.lose_process(generation, &reason);
            }
        }
        Ok(())
    }
}

/// Starts `agent` with its end of a new spawn channel as standard input.
fn start_process(
    agent: &std::path::Path,
) -> std::io::Result<(AsyncFd<OwnedFd>, tokio::process::Child)> {
    let (host, spawner) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    // Only the host's end: the spawner reads its own end blocking.
    nix::fcntl::fcntl(
        &host,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )?;
    // Nothing of the host's environment reaches PID 1 of a sandbox, where
    // the sandbox could read it.
    let child = tokio::process::Command::new(agent)
        .env_clear()
        .stdin(Stdio::from(spawner))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    // SAFETY: the OwnedFd is moved into the AsyncFd, which keeps it open and
    // unchanged until both are dropped together.
    let channel = unsafe { AsyncFd::register(host) }?;
    Ok((channel, child))
}

async fn send_request(
    channel: &AsyncFd<OwnedFd>,
    request: &[u8],
    socket: BorrowedFd<'_>,
) -> std::io::Result<()> {
    channel
        .async_io(Interest::WRITABLE, |fd| {
            spawn::send(fd.as_fd(), request, Some(socket), MsgFlags::MSG_DONTWAIT)
                .map_err(std::io::Error::from)
        })
        .await
}

/// Reads replies until the channel closes, and tells the actor each one.
async fn read_replies(
    channel: Arc<AsyncFd<OwnedFd>>,
    generation: u64,
    spawner: ActorRef<SpawnerMsg>,
) {
    let reason = loop {
        let received = channel.async_io(Interest::READABLE, |fd| {
            spawn::receive(fd.as_fd(), spawn::REPLY_LEN, MsgFlags::MSG_DONTWAIT)
                .map_err(std::io::Error::from)
        });
        match received.await {
            Ok(None) => break "its channel closed".to_string(),
            Ok(Some(spawn::Message { bytes, fd: pidfd })) => match spawn::Reply::decode(&bytes) {
                Some(reply) => {
                    let replied = SpawnerMsg::Replied { reply, pidfd };
                    if spawner.cast(replied).is_err() {
                        return;
                    }
                }
                None => break format!("it sent a malformed reply of {} bytes", bytes.len()),
            },
            Err(err) => break format!("reading from it: {err}"),
        }
    };
    let _ = spawner.cast(SpawnerMsg::ChannelClosed { generation, reason });
}

/// The default [`Backend`]: agents forked by the spawner process. See the
/// module docs.
#[derive(Debug)]
pub struct NamespaceBackend {
    agent: PathBuf,
    /// The spawner actor, once started.
    spawner: tokio::sync::Mutex<Option<ActorRef<SpawnerMsg>>>,
}

impl NamespaceBackend {
    /// A backend forking agents of the `sandvisor-agent` binary at `agent`.
    pub fn new(agent: PathBuf) -> Self {
        Self {
            agent,
            spawner: tokio::sync::Mutex::new(None),
        }
    }

    /// The running spawner actor, started unless one runs.
    async fn spawner(&self) -> Result<ActorRef<SpawnerMsg>, SpawnFailed> {
        let mut current = self.spawner.lock().await;
        if let Some(spawner) = current.as_ref() {
            match spawner.get_status() {
                ractor::ActorStatus::Stopping | ractor::ActorStatus::Stopped => {
                    tracing::warn!("the spawner actor ended; restarting it");
                }
                _ => return Ok(spawner.clone()),
            }
        }
        let args = SpawnerArgs {
            agent: self.agent.clone(),
        };
        let (spawner, _) = Actor::spawn(None, Spawner, args)
            .await
            .map_err(|err| SpawnFailed {
                errno: 0,
                message: format!("cannot start the agent spawner actor: {err}"),
            })?;
        *current = Some(spawner.clone());
        Ok(spawner)
    }

    /// Asks the spawner for an agent speaking SAP on a new socketpair;
    /// returns the agent and the host's end.
    async fn spawn_agent(
        &self,
        plan: &SpawnPlan,
    ) -> Result<(Spawned, tokio::net::UnixStream), SpawnFailed> {
        let (host, agent) = std::os::unix::net::UnixStream::pair()
            .map_err(|e| SpawnFailed::io("socketpair", &e))?;
        let spawner = self.spawner().await?;
        let asked = spawner
            .call(
                |reply| SpawnerMsg::Spawn {
                    plan: plan.clone(),
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
            .map_err(|e| SpawnFailed::io("socket", &e))?;
        let host =
            tokio::net::UnixStream::from_std(host).map_err(|e| SpawnFailed::io("socket", &e))?;
        Ok((spawned, host))
    }
}

impl Drop for NamespaceBackend {
    fn drop(&mut self) {
        if let Some(spawner) = self.spawner.get_mut().take() {
            spawner.stop(None);
        }
    }
}

impl Backend for NamespaceBackend {
    fn adopt<'a>(&'a self, spec: &'a AdoptSpec) -> BoxFuture<'a, Result<Started, SpawnFailed>> {
        Box::pin(async move {
            // The pidfd first, then the check: it then refers to the
            // recorded agent, whatever happens to the pid later.
            let pidfd =
                Pidfd::open(spec.pid).map_err(|e| SpawnFailed::io("the agent is gone", &e))?;
            if start_ticks(spec.pid) != Some(spec.start_ticks) {
                return Err(SpawnFailed {
                    errno: libc::ESRCH,
                    message: format!("process {} is no longer the sandbox's agent", spec.pid),
                });
            }
            let socket = crate::host::socket::connect(&spec.socket, ADOPT_CONNECT_TIMEOUT)
                .await
                .map_err(|e| {
                    SpawnFailed::io(
                        &format!("cannot reach the agent at {}", spec.socket.display()),
                        &e,
                    )
                })?;
            let cgroup = Cgroup::of_process(spec.pid)
                .map_err(|e| SpawnFailed::io("cannot read the agent's cgroup", &e))?;
            Ok(Started {
                socket,
                agent: Arc::new(NamespaceAgent {
                    pidfd,
                    pid_namespace: spec.pid_namespace,
                    _cgroup: cgroup,
                }),
            })
        })
    }

    fn start<'a>(&'a self, spec: &'a VmSpec) -> BoxFuture<'a, Result<Started, SpawnFailed>> {
        Box::pin(async move {
            let cgroup = if spec.limits.any() {
                let group = Cgroup::create(&spec.cgroup_id, spec.limits)
                    .map_err(|e| SpawnFailed::io("cannot set up resource limits (cgroup)", &e))?;
                Some(group)
            } else {
                None
            };
            let (spawned, socket) = self.spawn_agent(&spec.plan).await?;
            // Dropping the socket on failure ends the agent.
            let pidfd = Pidfd::new(spawned.pidfd, spawned.pid)
                .map_err(|e| SpawnFailed::io("cannot watch the agent", &e))?;
            let agent = NamespaceAgent {
                pidfd,
                pid_namespace: spec.start.pid_namespace,
                _cgroup: cgroup,
            };
            // The agent waits for Start before it forks anything, so moving
            // it now puts the whole tree in the group.
            if let Some(group) = &agent._cgroup {
                if let Err(err) = group.add(spawned.pid) {
                    if let Err(kill) = agent.kill(None) {
                        tracing::warn!(pid = spawned.pid, %kill, "cannot kill the agent");
                    }
                    return Err(SpawnFailed::io(
                        "cannot move the sandbox into its cgroup",
                        &err,
                    ));
                }
            }
            Ok(Started {
                socket,
                agent: Arc::new(agent),
            })
        })
    }
}

/// Field 22 of `/proc/PID/stat` (start time in clock ticks since boot).
fn start_ticks(pid: u32) -> Option<u64> {
    stat_field(pid, 22)
}

/// Field `n` (1-based, `n` ≥ 3) of `/proc/PID/stat`.
fn stat_field(pid: u32, n: usize) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields resume after its ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(n - 3)?.parse().ok()
}

/// How long connecting to an agent to re-adopt may take (its backlog holds
/// at most a few hosts).
const ADOPT_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// An agent forked by the spawner process, watched through a pidfd.
#[derive(Debug)]
struct NamespaceAgent {
    pidfd: Pidfd,
    pid_namespace: bool,
    /// Removed (dropped) with the handle, after the run has ended.
    _cgroup: Option<Cgroup>,
}

/// Whether `pid` is a child of `parent` that leads its own process group
/// (fields 4 and 5 of `/proc/PID/stat`).
fn leads_group_under(parent: u32, pid: u32) -> bool {
    pid > 1
        && stat_field(pid, 4) == Some(u64::from(parent))
        && stat_field(pid, 5) == Some(u64::from(pid))
}

impl Agent for NamespaceAgent {
    fn pid(&self) -> u32 {
        self.pidfd.pid()
    }

    fn exited(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.pidfd.exited())
    }

    fn oom_killed(&self) -> bool {
        self._cgroup
            .as_ref()
            .is_some_and(|group| group.oom_kills() > 0)
    }

    fn update_limits(&self, update: &LimitsUpdate) -> std::io::Result<()> {
        match &self._cgroup {
            Some(group) => group.update(update),
            // Without any limit at its start the run has no cgroup, and
            // moving a live tree into one would race its forks.
            None => Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "the sandbox started without resource limits, so it has no cgroup to change",
            )),
        }
    }

    fn kill(&self, main_pid: Option<u32>) -> std::io::Result<()> {
        let sigkill = nix::sys::signal::Signal::SIGKILL;
        if !self.pid_namespace {
            // The main pid comes from the agent, which the sandbox may control:
            // only a group led by a child of the agent is signalled, never
            // whatever group a forged `Ready` names (0 would be our own).
            if let Some(main) = main_pid.filter(|&main| leads_group_under(self.pid(), main)) {
                let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(main as i32), sigkill);
            }
        }
        // Killing PID 1 of a pid namespace kills every process in it.
        self.pidfd.signal(sigkill)
    }
}

#[cfg(test)]
mod group_tests {
    use std::os::unix::process::CommandExt;

    use super::leads_group_under;

    #[test]
    fn only_a_group_led_by_a_child_of_the_agent_is_killed_from_the_host() {
        let me = std::process::id();
        let mut leader = std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap();
        let mut member = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        assert!(leads_group_under(me, leader.id()));
        // Forged pids from a `Ready` frame: ours, init, 0, not a group leader,
        // and a real leader whose parent is not the agent.
        assert!(!leads_group_under(me, me));
        assert!(!leads_group_under(me, 1));
        assert!(!leads_group_under(me, 0));
        assert!(!leads_group_under(me, member.id()));
        assert!(!leads_group_under(me + 1, leader.id()));
        for child in [&mut leader, &mut member] {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}
