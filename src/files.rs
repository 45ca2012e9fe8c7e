//! Files in and out of a sandbox: `copy_in` / `copy_out` (tar streams) and a
//! small file API (`read_file`, `write_file`, `list`, `stat`, `remove`,
//! `mkdir`), on [`Sandbox`] and [`SandboxHandle`].
//!
//! # Contract
//! - Every operation is carried out by a process the sandbox's agent forks
//!   inside the sandbox's mount namespace and root, confined exactly as a
//!   session is (the sandbox's user, capabilities, `no_new_privs`,
//!   seccomp): an operation can do nothing the sandbox's own code could
//!   not. On a running sandbox that is its agent (the operation writes
//!   nothing to `exec.log` and is no session: no events, no idle or drain
//!   effect); on one that does not run (created, stopped, crashed) an agent
//!   is started for the operation alone, with the spec a run would get (its
//!   layers, its id range), and ends with it — no run, no status change.
//! - Paths are absolute paths inside the sandbox, resolved as the sandbox's
//!   processes resolve them (its symlinks are followed inside its root).
//! - `copy_in` unpacks below the destination as if it were `/`: no entry
//!   lands outside it (`..` is refused with [`Error::PathEscapes`], a
//!   leading `/` dropped, links resolved with the destination as root).
//!   Modes and mtimes are kept; the files belong to the sandbox's user.
//! - Data is streamed under flow control both ways (a window of 4 MiB):
//!   a copy of any size holds a few MiB of memory.
//! - Failures are typed and name the path: [`Error::FileNotFound`],
//!   [`Error::NotADirectory`], [`Error::IsADirectory`],
//!   [`Error::FileExists`], [`Error::PathEscapes`], [`Error::BadArchive`],
//!   [`Error::FileOperationFailed`].
//!
//! **Decision:** a file operation is an exec-like session whose
//! `CommandSpec` names the operation instead of a program (SAP carries it
//! in `Exec`, or in `Start` for a sandbox that does not run), so stdin
//! windows, output, exit and confinement are the sessions' own code.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use sandvisor_actors::log::format::LogSource;
use sandvisor_actors::protocol::{
    FileAnswer, FileFailure, FileFailureKind, FileOp, FileResult, FileStat, FILE_OUTPUT_WINDOW,
};
use sandvisor_actors::sandbox::detached::Detached;
use sandvisor_actors::sandbox::{ExecItem, SessionInput};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub use sandvisor_actors::protocol::FileKind;

use crate::error::{Error, Result};
use crate::runtime::{Sandbox, SandboxHandle};

/// Bytes read from a caller's input per `Stdin` frame.
const INPUT_CHUNK: usize = 256 * 1024;

/// One entry of a directory, or what `stat` says of a path (a link is not
/// followed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// Its name (the last component of its path).
    pub name: String,
    /// What it is.
    pub kind: FileKind,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits (with setuid, setgid and sticky).
    pub mode: u32,
    /// Last modification.
    pub mtime: DateTime<Utc>,
}

impl From<FileStat> for DirEntry {
    fn from(stat: FileStat) -> Self {
        Self {
            name: stat.name,
            kind: stat.kind,
            size: stat.size,
            mode: stat.mode,
            mtime: DateTime::from_timestamp(stat.mtime, 0).unwrap_or_default(),
        }
    }
}

/// The typed error of a failed operation on `sandbox`.
fn file_error(sandbox: &str, failure: FileFailure) -> Error {
    let sandbox = sandbox.to_string();
    let FileFailure {
        kind,
        path,
        message,
    } = failure;
    match kind {
        FileFailureKind::NotFound => Error::FileNotFound { sandbox, path },
        FileFailureKind::NotADirectory => Error::NotADirectory { sandbox, path },
        FileFailureKind::IsADirectory => Error::IsADirectory { sandbox, path },
        FileFailureKind::Exists => Error::FileExists { sandbox, path },
        FileFailureKind::Escapes => Error::PathEscapes {
            sandbox,
            path,
            reason: message,
        },
        FileFailureKind::BadArchive => Error::BadArchive { sandbox, message },
        FileFailureKind::Other => Error::FileOperationFailed {
            sandbox,
            path,
            message,
        },
    }
}

/// One running file operation: its input, its output and its end.
pub(crate) struct FileChannel {
    sandbox: String,
    input: mpsc::UnboundedSender<SessionInput>,
    output: mpsc::UnboundedReceiver<ExecItem>,
    /// An agent started for this operation alone: resolves once it is gone.
    done: Option<JoinHandle<()>>,
    /// The operation's stderr: its result.
    result: Vec<u8>,
    /// Input bytes with the agent, not yet taken by the operation.
    in_flight: u64,
    /// The operation ended (its exit came, or the sandbox went away).
    ended: bool,
    /// The lock on a stopped sandbox's layers, held until the agent is gone.
    _turn: Option<nix::fcntl::Flock<std::fs::File>>,
}

impl Drop for FileChannel {
    fn drop(&mut self) {
        if !self.ended {
            // Left mid-way (a dropped stream): the operation would wait for
            // the caller's window forever.
            self.send(SessionInput::Signal(libc::SIGKILL));
        }
    }
}

impl FileChannel {
    /// A session of the running sandbox `sandbox`: input through `input`,
    /// output from `output`.
    pub(crate) fn running(
        sandbox: &str,
        input: mpsc::UnboundedSender<SessionInput>,
        output: mpsc::UnboundedReceiver<ExecItem>,
    ) -> Self {
        Self {
            sandbox: sandbox.to_string(),
            input,
            output,
            done: None,
            result: Vec::new(),
            in_flight: 0,
            ended: false,
            _turn: None,
        }
    }

    /// A session on an agent started for it alone, holding `turn` (the
    /// lock on the sandbox's layers) until dropped.
    pub(crate) fn detached(
        sandbox: &str,
        detached: Detached,
        turn: nix::fcntl::Flock<std::fs::File>,
    ) -> Self {
        let mut channel = Self::running(sandbox, detached.input, detached.output);
        channel.done = Some(detached.done);
        channel._turn = Some(turn);
        channel
    }

    fn send(&self, input: SessionInput) {
        // A session that ended needs no more input; its end says why.
        let _ = self.input.send(input);
    }

    /// The next chunk of the operation's stdout (acknowledged as taken; an
    /// empty one when input credit came back instead), `None` once it
    /// ended; the result is kept.
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        loop {
            if self.ended {
                return Poll::Ready(None);
            }
            match self.output.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(ExecItem::Output { source, data })) => {
                    self.send(SessionInput::OutputConsumed(data.len() as u64));
                    if source == LogSource::Stdout {
                        return Poll::Ready(Some(data));
                    }
                    self.result.extend_from_slice(&data);
                }
                Poll::Ready(Some(ExecItem::InputTaken { bytes })) => {
                    self.in_flight = self.in_flight.saturating_sub(bytes);
                    // A feeder waiting for room goes on now.
                    return Poll::Ready(Some(Bytes::new()));
                }
                Poll::Ready(Some(ExecItem::Exited { .. }) | None) => self.ended = true,
            }
        }
    }

    async fn next_data(&mut self) -> Option<Bytes> {
        std::future::poll_fn(|cx| self.poll_data(cx)).await
    }

    /// Feeds `input` to the operation's stdin, at most a window ahead of
    /// what it took, then closes it. Stops early if the operation ended
    /// (its result says why).
    async fn feed(&mut self, mut input: impl AsyncRead + Unpin) -> Result<()> {
        let mut buf = vec![0u8; INPUT_CHUNK];
        loop {
            while self.in_flight >= FILE_OUTPUT_WINDOW && !self.ended {
                // Output is not expected while feeding; it is drained.
                let _ = self.next_data().await;
            }
            if self.ended {
                return Ok(());
            }
            let n = match input.read(&mut buf).await {
                Ok(n) => n,
                Err(source) => {
                    // Closed, so the operation ends (its archive cut short).
                    self.send(SessionInput::Stdin(Vec::new()));
                    return Err(Error::Io {
                        path: "<input>".into(),
                        source,
                    });
                }
            };
            self.send(SessionInput::Stdin(buf[..n].to_vec()));
            if n == 0 {
                return Ok(());
            }
            self.in_flight += n as u64;
        }
    }

    /// Waits for the operation's end (its stdout, if any, is dropped) and
    /// returns its answer.
    async fn finish(mut self) -> Result<FileAnswer> {
        while self.next_data().await.is_some() {}
        if let Some(done) = self.done.take() {
            // A relay task that panicked has left nothing behind to wait for.
            let _ = done.await;
        }
        self.answer()
    }

    /// The operation's answer, from its result (once ended).
    fn answer(&self) -> Result<FileAnswer> {
        match serde_json::from_slice::<FileResult>(&self.result) {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(failure)) => Err(file_error(&self.sandbox, failure)),
            // No result: the sandbox (or its agent) ended during the
            // operation.
            Err(_) => Err(Error::SandboxNotRunning(self.sandbox.clone())),
        }
    }
}

/// The tar stream of [`Sandbox::copy_out`]: read it to the end; an error
/// found on the way (a file unreadable mid-copy) is its last read, as an
/// [`std::io::Error`] wrapping the typed [`Error`].
pub struct TarStream {
    channel: FileChannel,
    current: Bytes,
}

impl std::fmt::Debug for TarStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TarStream")
            .field("sandbox", &self.channel.sandbox)
            .finish()
    }
}

impl AsyncRead for TarStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        while this.current.is_empty() {
            match this.channel.poll_data(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(data)) => this.current = data,
                Poll::Ready(None) => {
                    // A stopped sandbox's agent is gone (and its lock free
                    // for the next operation) before the stream ends.
                    if let Some(done) = this.channel.done.as_mut() {
                        // A relay task that panicked has nothing left to wait for.
                        let _ = std::task::ready!(Pin::new(done).poll(cx));
                        this.channel.done = None;
                    }
                    return Poll::Ready(
                        this.channel
                            .answer()
                            .map(drop)
                            .map_err(std::io::Error::other),
                    );
                }
            }
        }
        let n = this.current.len().min(buf.remaining());
        buf.put_slice(&this.current.split_to(n));
        Poll::Ready(Ok(()))
    }
}

/// Where file operations are opened: a running sandbox here, or any
/// recorded one.
pub(crate) trait OpenFiles {
    /// Starts `op` on the sandbox.
    fn open(&self, op: FileOp) -> futures::future::BoxFuture<'_, Result<FileChannel>>;
}

/// Runs `op`, which takes no input, to its answer.
async fn simple(sandbox: &impl OpenFiles, op: FileOp) -> Result<FileAnswer> {
    let channel = sandbox.open(op).await?;
    channel.send(SessionInput::Stdin(Vec::new()));
    channel.finish().await
}

fn unexpected(answer: FileAnswer) -> Error {
    Error::Internal(format!("unexpected answer to a file operation: {answer:?}"))
}

async fn copy_in(sandbox: &impl OpenFiles, tar: impl AsyncRead + Unpin, dest: &str) -> Result<()> {
    let mut channel = sandbox
        .open(FileOp::CopyIn {
            dest: dest.to_string(),
        })
        .await?;
    let fed = channel.feed(tar).await;
    let answer = channel.finish().await;
    // The operation's own failure says more than the cut-short input.
    answer?;
    fed
}

async fn copy_out(sandbox: &impl OpenFiles, path: &str) -> Result<TarStream> {
    let mut channel = sandbox
        .open(FileOp::CopyOut {
            path: path.to_string(),
        })
        .await?;
    channel.send(SessionInput::Stdin(Vec::new()));
    // A path that cannot be copied fails here, before any stream.
    let current = match channel.next_data().await {
        Some(data) => data,
        None => {
            channel.answer()?;
            Bytes::new()
        }
    };
    Ok(TarStream { channel, current })
}

async fn read_file(sandbox: &impl OpenFiles, path: &str) -> Result<Vec<u8>> {
    let mut channel = sandbox
        .open(FileOp::Read {
            path: path.to_string(),
        })
        .await?;
    channel.send(SessionInput::Stdin(Vec::new()));
    let mut bytes = Vec::new();
    while let Some(data) = channel.next_data().await {
        bytes.extend_from_slice(&data);
    }
    channel.finish().await?;
    Ok(bytes)
}

async fn write_file(sandbox: &impl OpenFiles, path: &str, bytes: &[u8], mode: u32) -> Result<()> {
    let mut channel = sandbox
        .open(FileOp::Write {
            path: path.to_string(),
            mode,
        })
        .await?;
    let fed = channel.feed(bytes).await;
    channel.finish().await?;
    fed
}

async fn list(sandbox: &impl OpenFiles, dir: &str) -> Result<Vec<DirEntry>> {
    let op = FileOp::List {
        path: dir.to_string(),
    };
    match simple(sandbox, op).await? {
        FileAnswer::List(entries) => Ok(entries.into_iter().map(DirEntry::from).collect()),
        other => Err(unexpected(other)),
    }
}

async fn stat(sandbox: &impl OpenFiles, path: &str) -> Result<DirEntry> {
    let op = FileOp::Stat {
        path: path.to_string(),
    };
    match simple(sandbox, op).await? {
        FileAnswer::Stat(stat) => Ok(stat.into()),
        other => Err(unexpected(other)),
    }
}

async fn remove(sandbox: &impl OpenFiles, path: &str, recursive: bool) -> Result<()> {
    let op = FileOp::Remove {
        path: path.to_string(),
        recursive,
    };
    simple(sandbox, op).await.map(drop)
}

async fn mkdir(sandbox: &impl OpenFiles, path: &str, parents: bool) -> Result<()> {
    let op = FileOp::Mkdir {
        path: path.to_string(),
        parents,
    };
    simple(sandbox, op).await.map(drop)
}

/// The file API, once for both kinds of handle: each method is documented
/// here and fails as the module docs say, plus [`Error::SandboxNotRunning`]
/// if the sandbox ended during the operation.
macro_rules! file_api {
    ($type:ty, $remove:ident) => {
        impl $type {
            /// Unpacks the tar stream `tar` at `dest`, an existing directory
            /// inside the sandbox (see the [module docs](crate::files)).
            ///
            /// # Errors
            /// [`Error::FileNotFound`] / [`Error::NotADirectory`] for `dest`;
            /// [`Error::PathEscapes`] for an entry with `..`;
            /// [`Error::BadArchive`]; [`Error::Io`] if reading `tar` failed.
            /// Entries before a failure stay unpacked.
            pub async fn copy_in(&self, tar: impl AsyncRead + Unpin, dest: &str) -> Result<()> {
                copy_in(self, tar, dest).await
            }

            /// `path` as a tar stream: a file as one entry named by its
            /// basename, a directory as its top entry (docker cp's
            /// semantics); a link is copied as a link.
            ///
            /// # Errors
            /// [`Error::FileNotFound`] and the like for `path`, before any
            /// byte; a failure later ends the stream with an error.
            pub async fn copy_out(&self, path: &str) -> Result<TarStream> {
                copy_out(self, path).await
            }

            /// The contents of the file `path`.
            ///
            /// # Errors
            /// [`Error::FileNotFound`], [`Error::IsADirectory`], …
            pub async fn read_file(&self, path: &str) -> Result<Vec<u8>> {
                read_file(self, path).await
            }

            /// Replaces (or creates) the file `path` with `bytes` and
            /// permission bits `mode`.
            ///
            /// # Errors
            /// [`Error::FileNotFound`] (no parent), [`Error::IsADirectory`], …
            pub async fn write_file(&self, path: &str, bytes: &[u8], mode: u32) -> Result<()> {
                write_file(self, path, bytes, mode).await
            }

            /// The entries of the directory `dir`, by name.
            ///
            /// # Errors
            /// [`Error::FileNotFound`], [`Error::NotADirectory`], …
            pub async fn list(&self, dir: &str) -> Result<Vec<DirEntry>> {
                list(self, dir).await
            }

            /// What `path` is (a link itself, not its target).
            ///
            /// # Errors
            /// [`Error::FileNotFound`], …
            pub async fn stat(&self, path: &str) -> Result<DirEntry> {
                stat(self, path).await
            }

            /// Removes `path`; a directory only when empty, unless
            /// `recursive`.
            ///
            /// # Errors
            /// [`Error::FileNotFound`]; [`Error::IsADirectory`] for a
            /// non-empty directory without `recursive`, …
            pub async fn $remove(&self, path: &str, recursive: bool) -> Result<()> {
                remove(self, path, recursive).await
            }

            /// Creates the directory `path`; with `parents`, its missing
            /// parents too, and an existing directory is no error.
            ///
            /// # Errors
            /// [`Error::FileExists`], [`Error::FileNotFound`] (no parent), …
            pub async fn mkdir(&self, path: &str, parents: bool) -> Result<()> {
                mkdir(self, path, parents).await
            }
        }
    };
}

impl OpenFiles for Sandbox {
    fn open(&self, op: FileOp) -> futures::future::BoxFuture<'_, Result<FileChannel>> {
        Box::pin(self.open_files(op))
    }
}

impl OpenFiles for SandboxHandle {
    fn open(&self, op: FileOp) -> futures::future::BoxFuture<'_, Result<FileChannel>> {
        Box::pin(self.open_files(op))
    }
}

file_api!(Sandbox, remove);
// `SandboxHandle::remove` removes the sandbox itself.
file_api!(SandboxHandle, remove_path);
