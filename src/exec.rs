//! Exec sessions: more commands in a running sandbox, each with its own
//! session id (2, 3, …), its output both in `exec.log` and live to the caller.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use ractor::ActorRef;
use sandvisor_actors::sandbox::SupervisorMsg;
use sandvisor_actors::sandbox::{ExecItem, SessionInput};
use tokio::sync::mpsc;

use crate::config::DEFAULT_PATH;
use crate::error::{Error, Result};
use crate::logs::LogSource;

/// A command to run in a running sandbox.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ExecConfig {
    /// Program; a bare name is looked up in the session's `PATH`.
    pub command: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its environment (nothing inherited; `PATH` defaults as for sandboxes).
    pub env: BTreeMap<String, String>,
    /// Working directory inside the sandbox.
    pub cwd: Option<String>,
    /// Run on a new pseudo-terminal inside the sandbox: stdin, stdout and
    /// stderr are the terminal, output is the merged `output` source.
    pub tty: bool,
    /// The terminal's rows (0: 24).
    pub rows: u16,
    /// The terminal's columns (0: 80).
    pub cols: u16,
    /// Give the session a stdin to write to ([`ExecHandle::write_stdin`]).
    pub stdin: bool,
    /// The session's user and group, `"uid"` or `"uid:gid"` (numbers only;
    /// see [`crate::SandboxConfig::user`]); `None`: the sandbox's `user`.
    pub user: Option<String>,
    /// Kill the session's whole process group this long after it was asked
    /// for; its [`ExecStatus::timed_out`] says so (in JSON a humantime
    /// string, `"1s"`).
    #[serde(with = "sandvisor_actors::duration_serde::option")]
    pub timeout: Option<std::time::Duration>,
}

impl ExecConfig {
    /// Runs `command` with `args`.
    pub fn new<I, S>(command: impl Into<String>, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            command: command.into(),
            args: args.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }

    /// Checks the fields, before anything is sent.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the first field that cannot work.
    pub(crate) fn validate(&self) -> Result<()> {
        let bad = |field: &str, reason: &str| Error::InvalidConfig {
            field: field.to_string(),
            reason: reason.to_string(),
        };
        if self.command.is_empty() {
            return Err(bad("command", "is empty"));
        }
        if self.command.contains('\0') || self.args.iter().any(|a| a.contains('\0')) {
            return Err(bad("command", "contains a NUL byte"));
        }
        if self
            .env
            .iter()
            .any(|(k, v)| k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0'))
        {
            return Err(bad(
                "env",
                "keys must be non-empty without '=' or NUL; values without NUL",
            ));
        }
        let size = self.command.len()
            + self.args.iter().map(String::len).sum::<usize>()
            + self
                .env
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>();
        if size > crate::config::MAX_COMMAND_BYTES {
            return Err(bad(
                "args",
                "command, arguments and environment exceed 1 MiB",
            ));
        }
        if self.cwd.as_ref().is_some_and(|c| !c.starts_with('/')) {
            return Err(bad("cwd", "must be absolute"));
        }
        crate::config::check_duration("timeout", self.timeout)?;
        if let Some(user) = &self.user {
            if crate::config::parse_user(user).is_none() {
                return Err(bad(
                    "user",
                    "is not \"uid\" or \"uid:gid\" (numbers only, no names)",
                ));
            }
        }
        Ok(())
    }

    pub(crate) fn env_list(&self) -> Vec<(String, String)> {
        let mut env = self.env.clone();
        env.entry("PATH".into())
            .or_insert_with(|| DEFAULT_PATH.into());
        env.into_iter().collect()
    }
}

/// A chunk of an exec session's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// `stdout` or `stderr`.
    pub source: LogSource,
    /// The bytes, exactly as written.
    pub data: Bytes,
}

/// How an exec session's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExecStatus {
    /// Exit code, if it exited.
    pub code: Option<i32>,
    /// Signal, if one killed it.
    pub signal: Option<i32>,
    /// Its [`ExecConfig::timeout`] killed it (then `signal` is SIGKILL).
    #[serde(default)]
    pub timed_out: bool,
}

/// A running exec session: a `Stream` of its output, its stdin, its exit.
#[derive(Debug)]
pub struct ExecHandle {
    tty: bool,
    id: u64,
    pid: u32,
    items: mpsc::UnboundedReceiver<ExecItem>,
    status: Option<ExecStatus>,
    link: SessionLink,
    sandbox: String,
    stdin_open: bool,
}

/// Where a session's input goes: the sandbox's supervisor in this process,
/// or the control connection to the process that hosts the sandbox.
#[derive(Debug)]
pub(crate) enum SessionLink {
    /// Hosted here.
    Local(ActorRef<SupervisorMsg>),
    /// Hosted by another runtime, reached through its control socket.
    Remote(mpsc::UnboundedSender<SessionInput>),
}

impl ExecHandle {
    pub(crate) fn new(
        tty: bool,
        id: u64,
        pid: u32,
        items: mpsc::UnboundedReceiver<ExecItem>,
        link: SessionLink,
        sandbox: String,
        stdin: bool,
    ) -> Self {
        Self {
            tty,
            id,
            pid,
            items,
            status: None,
            link,
            sandbox,
            // A terminal always takes input.
            stdin_open: stdin || tty,
        }
    }

    /// The session id (as in `exec.log`).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The process's pid inside the sandbox.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Writes to the session's stdin; an empty write does nothing.
    ///
    /// # Errors
    /// [`Error::SessionClosed`] if the session has no stdin, closed it, or
    /// has exited (or its sandbox is gone).
    pub fn write_stdin(&mut self, data: impl Into<Vec<u8>>) -> Result<()> {
        let data = data.into();
        if data.is_empty() {
            return Ok(());
        }
        self.send_stdin(data)
    }

    /// Closes the session's stdin (the process sees end of file).
    ///
    /// # Errors
    /// As [`Self::write_stdin`].
    pub fn close_stdin(&mut self) -> Result<()> {
        self.send_stdin(Vec::new())?;
        self.stdin_open = false;
        Ok(())
    }

    fn send_stdin(&mut self, data: Vec<u8>) -> Result<()> {
        if !self.stdin_open || self.status.is_some() {
            return Err(Error::SessionClosed {
                sandbox: self.sandbox.clone(),
                session: self.id,
            });
        }
        self.send(SessionInput::Stdin(data))
            .map_err(|_| Error::SessionClosed {
                sandbox: self.sandbox.clone(),
                session: self.id,
            })
    }

    /// Changes a terminal session's window size.
    ///
    /// # Errors
    /// [`Error::NotATerminal`] if the session has no terminal;
    /// [`Error::SandboxNotRunning`] if its sandbox (or, remote, the control
    /// connection) is gone.
    pub fn resize(&self, rows: u16, cols: u16) -> Result<()> {
        if !self.tty {
            return Err(Error::NotATerminal {
                sandbox: self.sandbox.clone(),
                session: self.id,
            });
        }
        self.send(SessionInput::Resize { rows, cols })
    }

    /// Whether the session runs on a terminal.
    pub fn is_tty(&self) -> bool {
        self.tty
    }

    /// Sends SIGKILL to the session's processes.
    ///
    /// # Errors
    /// As [`Self::signal`].
    pub fn kill(&self) -> Result<()> {
        self.signal(libc::SIGKILL)
    }

    /// Sends `signo` to the session's processes (its process group).
    ///
    /// # Errors
    /// [`Error::SandboxNotRunning`] if its sandbox (or, remote, the control
    /// connection) is gone.
    pub fn signal(&self, signo: i32) -> Result<()> {
        self.send(SessionInput::Signal(signo))
    }

    fn send(&self, input: SessionInput) -> Result<()> {
        let session = self.id;
        let sent = match &self.link {
            SessionLink::Local(supervisor) => supervisor
                .cast(SupervisorMsg::Session { session, input })
                .is_ok(),
            SessionLink::Remote(control) => control.send(input).is_ok(),
        };
        if sent {
            Ok(())
        } else {
            Err(Error::SandboxNotRunning(self.sandbox.clone()))
        }
    }

    /// Waits for the process to exit (output not yet read is discarded).
    ///
    /// # Errors
    /// [`Error::SandboxNotRunning`] if the sandbox (or the control
    /// connection) went away before the session's exit was reported.
    ///
    /// # Cancel safety
    /// Dropping the future drops the handle: the session runs on, and its
    /// exit status can no longer be observed here.
    pub async fn wait(mut self) -> Result<ExecStatus> {
        loop {
            if let Some(status) = self.status {
                return Ok(status);
            }
            match self.items.recv().await {
                Some(ExecItem::Output { .. } | ExecItem::InputTaken { .. }) => {}
                Some(ExecItem::Exited {
                    code,
                    signal,
                    timed_out,
                }) => {
                    self.status = Some(ExecStatus {
                        code,
                        signal,
                        timed_out,
                    })
                }
                None => return Err(Error::SandboxNotRunning(self.sandbox.clone())),
            }
        }
    }
}

impl Stream for ExecHandle {
    type Item = ExecOutput;

    /// The session's output in order; ends when the process has exited.
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ExecOutput>> {
        loop {
            if self.status.is_some() {
                return Poll::Ready(None);
            }
            return match self.items.poll_recv(cx) {
                Poll::Ready(Some(ExecItem::Output { source, data })) => {
                    Poll::Ready(Some(ExecOutput { source, data }))
                }
                // Flow control only: stdin here is not windowed by the caller.
                Poll::Ready(Some(ExecItem::InputTaken { .. })) => continue,
                Poll::Ready(Some(ExecItem::Exited {
                    code,
                    signal,
                    timed_out,
                })) => {
                    self.status = Some(ExecStatus {
                        code,
                        signal,
                        timed_out,
                    });
                    Poll::Ready(None)
                }
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            };
        }
    }
}

impl ExecHandle {
    /// The exit status, once the output stream has ended.
    pub fn status(&self) -> Option<ExecStatus> {
        self.status
    }
}
