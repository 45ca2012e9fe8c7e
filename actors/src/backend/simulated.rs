//! The simulated backend: a scripted agent that speaks real SAP over a
//! socketpair from a tokio task, so the real supervisor, agent link, relay
//! tap, store and events run without root, namespaces or KVM.
//!
//! Public as `sandvisor::testing::SimulatedBackend`: give it to
//! `SandvisorBuilder::backend` and script each sandbox by name with a
//! [`Script`] — its output, how it ends (exit code, signal, agent loss), a
//! boot failure, an agent that never reports ready, or a stubborn stop.
//!
//! # Contract
//! - Each start runs the sandbox's script (by name, else the default script)
//!   in a new task. The task waits for `Start`, then answers as the real
//!   agent would: `BootError` then close; or `Ready`, the scripted output as
//!   `Output` frames of session 1, and the scripted end.
//! - While it runs, the task acts on the host's frames: the stop signal ends
//!   the main command with that signal (unless the script ignores it);
//!   SIGKILL ends it with signal 9 (unless the script ignores that too);
//!   SIGSTOP / SIGCONT hold and release the script; an exec session starts
//!   and exits 0 at once; stdin is consumed at once.
//! - [`Agent::kill`] (the host kill) aborts the task, which closes the socket
//!   without an `Exited` — unless the script [survives](Script::survive_host_kill)
//!   even that. Closing the host's end of the socket ends the task, as it
//!   ends the real agent.
//! - The agent's pid is this process's pid: the run row names a live process
//!   that is not `sandvisor-agent`, which reconcile never kills, and metrics
//!   sample this process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use futures::future::BoxFuture;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::watch;

use super::{Agent, Backend, SpawnFailed, Started, VmSpec, BOOT_TIMEOUT};
use crate::protocol::{BootError, BootStage, ExitStatus, Frame, OutputStream, SignalTarget};

/// What a simulated sandbox does, built step by step. The default script
/// reports ready, writes nothing and runs until it is stopped.
#[derive(Debug, Clone)]
pub struct Script {
    boot: Boot,
    pid: u32,
    steps: Vec<Step>,
    end: End,
    stubborn: Stubborn,
}

#[derive(Debug, Clone)]
enum Boot {
    Ready,
    Fail {
        stage: BootStage,
        errno: i32,
        message: String,
    },
    Never,
}

#[derive(Debug, Clone)]
enum Step {
    Output {
        stream: OutputStream,
        data: bytes::Bytes,
    },
    Sleep(Duration),
}

#[derive(Debug, Clone, Copy)]
enum End {
    Exit(i32),
    Signal(i32),
    Lose,
    RunUntilStopped,
}

/// How much it takes to end the sandbox, in escalation order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stubborn {
    Obeys,
    IgnoresStop,
    IgnoresKill,
    SurvivesHostKill,
}

impl Default for Script {
    fn default() -> Self {
        Self {
            boot: Boot::Ready,
            pid: 1,
            steps: Vec::new(),
            end: End::RunUntilStopped,
            stubborn: Stubborn::Obeys,
        }
    }
}

impl Script {
    /// The default script: ready, no output, runs until stopped.
    pub fn new() -> Self {
        Self::default()
    }

    /// The main command's pid inside the sandbox, as `Ready` reports it
    /// (default 1).
    pub fn pid(mut self, pid: u32) -> Self {
        self.pid = pid;
        self
    }

    /// Writes `data` to stdout (one chunk, as is).
    pub fn stdout(mut self, data: impl Into<bytes::Bytes>) -> Self {
        self.steps.push(Step::Output {
            stream: OutputStream::Stdout,
            data: data.into(),
        });
        self
    }

    /// Writes `data` to stderr (one chunk, as is).
    pub fn stderr(mut self, data: impl Into<bytes::Bytes>) -> Self {
        self.steps.push(Step::Output {
            stream: OutputStream::Stderr,
            data: data.into(),
        });
        self
    }

    /// Waits `duration` before the next step (signals are acted on meanwhile).
    pub fn sleep(mut self, duration: Duration) -> Self {
        self.steps.push(Step::Sleep(duration));
        self
    }

    /// After its steps, the main command exits with `code`.
    pub fn exit(mut self, code: i32) -> Self {
        self.end = End::Exit(code);
        self
    }

    /// After its steps, the main command is killed by `signal`.
    pub fn killed_by(mut self, signal: i32) -> Self {
        self.end = End::Signal(signal);
        self
    }

    /// After its steps, it runs until a signal ends it (the default).
    pub fn run_until_stopped(mut self) -> Self {
        self.end = End::RunUntilStopped;
        self
    }

    /// After its steps, the agent goes away without reporting an exit (its
    /// socket closes): the run ends Crashed.
    pub fn lose_agent(mut self) -> Self {
        self.end = End::Lose;
        self
    }

    /// The agent reports a boot failure instead of ready.
    pub fn boot_failure(mut self, stage: BootStage, errno: i32, message: &str) -> Self {
        self.boot = Boot::Fail {
            stage,
            errno,
            message: message.to_string(),
        };
        self
    }

    /// The agent never reports ready: the run ends at the boot timeout.
    pub fn never_ready(mut self) -> Self {
        self.boot = Boot::Never;
        self
    }

    /// The stop signal is ignored; SIGKILL through the agent ends it.
    pub fn ignore_stop(mut self) -> Self {
        self.stubborn = Stubborn::IgnoresStop;
        self
    }

    /// The stop signal and SIGKILL through the agent are ignored; only the
    /// host kill ends it.
    pub fn ignore_kill(mut self) -> Self {
        self.stubborn = Stubborn::IgnoresKill;
        self
    }

    /// Nothing ends it, not even the host kill: the run is given up as
    /// Crashed after the second kill timeout.
    pub fn survive_host_kill(mut self) -> Self {
        self.stubborn = Stubborn::SurvivesHostKill;
        self
    }
}

/// The simulated [`Backend`]. See the module docs.
#[derive(Debug)]
pub struct SimulatedBackend {
    scripts: Mutex<HashMap<String, Script>>,
    default: Mutex<Script>,
    boot_timeout: Duration,
}

impl Default for SimulatedBackend {
    fn default() -> Self {
        Self {
            scripts: Mutex::new(HashMap::new()),
            default: Mutex::new(Script::default()),
            boot_timeout: BOOT_TIMEOUT,
        }
    }
}

impl SimulatedBackend {
    /// A backend running the default [`Script`] for every sandbox.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fails a run whose agent does not report ready within `timeout`
    /// (default [`BOOT_TIMEOUT`]).
    pub fn with_boot_timeout(mut self, timeout: Duration) -> Self {
        self.boot_timeout = timeout;
        self
    }

    /// Runs `script` for every later start of `sandbox`.
    pub fn script(&self, sandbox: &str, script: Script) {
        lock(&self.scripts).insert(sandbox.to_string(), script);
    }

    /// Runs `script` for every later start of a sandbox without a script of
    /// its own.
    pub fn default_script(&self, script: Script) {
        *lock(&self.default) = script;
    }

    fn script_for(&self, sandbox: &str) -> Script {
        match lock(&self.scripts).get(sandbox) {
            Some(script) => script.clone(),
            None => lock(&self.default).clone(),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Holders only read or replace whole values.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Backend for SimulatedBackend {
    fn start<'a>(&'a self, spec: &'a VmSpec) -> BoxFuture<'a, Result<Started, SpawnFailed>> {
        Box::pin(async move {
            let script = self.script_for(&spec.start.name);
            let (host, agent) =
                tokio::net::UnixStream::pair().map_err(|e| SpawnFailed::io("socketpair", &e))?;
            let (alive, done) = watch::channel(());
            let survives = script.stubborn == Stubborn::SurvivesHostKill;
            let task = tokio::spawn(run(agent, script, alive));
            Ok(Started {
                socket: host,
                agent: Arc::new(SimulatedAgent {
                    task: task.abort_handle(),
                    done,
                    survives,
                }),
            })
        })
    }

    fn boot_timeout(&self) -> Duration {
        self.boot_timeout
    }
}

/// The host's view of a simulated agent: its task.
#[derive(Debug)]
struct SimulatedAgent {
    task: tokio::task::AbortHandle,
    /// Closed when the task ends (its sender is dropped with the task).
    done: watch::Receiver<()>,
    survives: bool,
}

impl Agent for SimulatedAgent {
    fn pid(&self) -> u32 {
        std::process::id()
    }

    fn exited(&self) -> BoxFuture<'_, ()> {
        let mut done = self.done.clone();
        Box::pin(async move { while done.changed().await.is_ok() {} })
    }

    fn kill(&self, _main_pid: Option<u32>) -> std::io::Result<()> {
        if !self.survives {
            self.task.abort();
        }
        Ok(())
    }
}

impl Drop for SimulatedAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The agent's end of the socket.
struct Wire {
    read: OwnedReadHalf,
    write: OwnedWriteHalf,
    buf: BytesMut,
}

impl Wire {
    /// The next frame from the host; `None` once the socket closed or broke.
    async fn next(&mut self) -> Option<Frame> {
        loop {
            match Frame::decode(&mut self.buf) {
                Ok(Some(frame)) => return Some(frame),
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!(%err, "simulated agent: bad frame from the host");
                    return None;
                }
            }
            match self.read.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Sends `frame`; `false` once the host is gone.
    async fn send(&mut self, frame: Frame) -> bool {
        let mut out = Vec::new();
        frame.encode(&mut out);
        self.write.write_all(&out).await.is_ok()
    }
}

/// The simulated agent: see the module docs. `_alive` is dropped when it
/// ends, however it ends (an abort included).
async fn run(socket: tokio::net::UnixStream, script: Script, _alive: watch::Sender<()>) {
    let (read, write) = socket.into_split();
    let mut wire = Wire {
        read,
        write,
        buf: BytesMut::new(),
    };
    loop {
        match wire.next().await {
            Some(Frame::Start(_)) => break,
            Some(_) => {}
            None => return,
        }
    }
    match script.boot {
        Boot::Ready => {}
        Boot::Fail {
            stage,
            errno,
            message,
        } => {
            wire.send(Frame::BootError(BootError {
                stage,
                errno,
                message,
                exec_failed: false,
            }))
            .await;
            return;
        }
        Boot::Never => {
            while wire.next().await.is_some() {}
            return;
        }
    }
    if !wire.send(Frame::Ready { pid: script.pid }).await {
        return;
    }
    let mut steps = script.steps.into_iter();
    // SIGSTOP holds the script; SIGCONT releases it.
    let mut frozen = false;
    // Past its steps, running until a signal ends it.
    let mut idle = false;
    let mut sleeping: Option<tokio::time::Instant> = None;
    loop {
        if !frozen && !idle && sleeping.is_none() {
            match steps.next() {
                Some(Step::Output { stream, data }) => {
                    let output = Frame::Output {
                        session: 1,
                        stream,
                        data,
                    };
                    if !wire.send(output).await {
                        return;
                    }
                    continue;
                }
                Some(Step::Sleep(duration)) => {
                    sleeping = Some(tokio::time::Instant::now() + duration);
                }
                None => match script.end {
                    End::Exit(code) => return exited(&mut wire, Some(code), None).await,
                    End::Signal(signal) => return exited(&mut wire, None, Some(signal)).await,
                    End::Lose => return,
                    End::RunUntilStopped => idle = true,
                },
            }
        }
        let wake = async {
            match sleeping {
                Some(at) if !frozen => tokio::time::sleep_until(at).await,
                _ => std::future::pending().await,
            }
        };
        let frame = tokio::select! {
            () = wake => {
                sleeping = None;
                continue;
            }
            frame = wire.next() => frame,
        };
        let Some(frame) = frame else {
            // The host closed its end: the real agent kills everything and exits.
            return;
        };
        match frame {
            Frame::Signal {
                target: SignalTarget::All,
                signo,
            } => match signo {
                libc::SIGSTOP => frozen = true,
                libc::SIGCONT => frozen = false,
                libc::SIGKILL if script.stubborn < Stubborn::IgnoresKill => {
                    return exited(&mut wire, None, Some(libc::SIGKILL)).await;
                }
                libc::SIGKILL => {}
                signo if script.stubborn == Stubborn::Obeys => {
                    return exited(&mut wire, None, Some(signo)).await;
                }
                _ => {}
            },
            Frame::Exec(spec) => {
                let session = spec.session;
                let started = Frame::SessionStarted {
                    session,
                    pid: script.pid + session as u32,
                };
                let done = Frame::Exited {
                    session,
                    status: ExitStatus {
                        code: Some(0),
                        signal: None,
                    },
                };
                if !wire.send(started).await || !wire.send(done).await {
                    return;
                }
            }
            Frame::Stdin { session, data } => {
                let consumed = Frame::StdinConsumed {
                    session,
                    bytes: data.len() as u64,
                };
                if !wire.send(consumed).await {
                    return;
                }
            }
            _ => {}
        }
    }
}

/// Reports the main command's end; the agent then exits.
async fn exited(wire: &mut Wire, code: Option<i32>, signal: Option<i32>) {
    wire.send(Frame::Exited {
        session: 1,
        status: ExitStatus { code, signal },
    })
    .await;
}
