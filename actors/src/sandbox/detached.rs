//! One session on an agent started for it alone, outside any run: how a
//! file operation reaches a sandbox that is not running (created, stopped,
//! crashed).
//!
//! # Contract
//! - [`start`] starts the sandbox's agent through the backend with the spec
//!   a run would use — same user namespace range, same staged root, same
//!   confinement — whose main command the caller has replaced with the file
//!   operation ([`CommandSpec::files`](crate::protocol::CommandSpec)), sends
//!   `Start` and waits for `Ready`.
//! - It then relays the main session: [`SessionInput::Stdin`] (under the
//!   same window as exec sessions) and [`SessionInput::OutputConsumed`] go
//!   to the agent; its output, [`ExecItem::InputTaken`] and its exit come
//!   back as [`ExecItem`]s, as an exec session's do.
//! - Nothing of the sandbox's records changes: no run row, no status, no
//!   `exec.log` line, no event.
//! - Dropping the input sender closes the socket, which ends the agent
//!   (and the operation with it). [`Detached::done`] resolves once the
//!   agent has exited, so its mounts of the sandbox's layers are gone.

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::stdin::StdinFlow;
use super::{ExecItem, SessionInput};
use crate::backend::{Agent, Backend, VmSpec};
use crate::log::format::LogSource;
use crate::protocol::{BootError, BootStage, ExitStatus, Frame, OutputStream, MAIN_SESSION};

/// A started detached session.
#[derive(Debug)]
pub struct Detached {
    /// Stdin and acknowledgements for the session; dropping it ends the
    /// agent.
    pub input: mpsc::UnboundedSender<SessionInput>,
    /// The session's output, input credits and exit, in order.
    pub output: mpsc::UnboundedReceiver<ExecItem>,
    /// Resolves once the agent has exited.
    pub done: JoinHandle<()>,
}

fn boot_error(stage: BootStage, errno: i32, message: String) -> BootError {
    BootError {
        stage,
        errno,
        message,
        exec_failed: false,
    }
}

async fn send(write: &mut OwnedWriteHalf, frame: &Frame) -> std::io::Result<()> {
    let mut bytes = Vec::new();
    frame.encode(&mut bytes);
    write.write_all(&bytes).await
}

/// Starts the agent of `spec` and waits until its main session runs (see
/// the module docs).
///
/// # Errors
/// Why the agent did not start or set the sandbox up, as a boot error
/// (stage `build_vm` when the backend failed); nothing is left running.
pub async fn start(backend: &dyn Backend, spec: &VmSpec) -> Result<Detached, BootError> {
    let started = backend
        .start(spec)
        .await
        .map_err(|failed| boot_error(BootStage::BuildVm, failed.errno, failed.message))?;
    let agent = started.agent;
    let (mut read, mut write) = started.socket.into_split();
    let io = |err: std::io::Error| {
        boot_error(
            BootStage::BuildVm,
            err.raw_os_error().unwrap_or(0),
            format!("talking to the agent: {err}"),
        )
    };
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let ready = async {
        send(&mut write, &Frame::Start(spec.start.clone()))
            .await
            .map_err(io)?;
        loop {
            match Frame::decode(&mut buf) {
                Ok(Some(Frame::Ready { .. })) => return Ok(()),
                Ok(Some(Frame::BootError(error))) => return Err(error),
                Ok(Some(_)) => continue,
                Ok(None) => {}
                Err(err) => {
                    return Err(boot_error(
                        BootStage::BuildVm,
                        0,
                        format!("agent protocol error: {err}"),
                    ))
                }
            }
            if read.read_buf(&mut buf).await.map_err(io)? == 0 {
                return Err(boot_error(
                    BootStage::BuildVm,
                    0,
                    "the agent closed its socket before it was ready".into(),
                ));
            }
        }
    };
    if let Err(error) = ready.await {
        drop((read, write));
        let _ = agent.kill(None);
        agent.exited().await;
        return Err(error);
    }
    let (input, inputs) = mpsc::unbounded_channel();
    let (outputs, output) = mpsc::unbounded_channel();
    let done = tokio::spawn(relay(read, write, buf, inputs, outputs, agent));
    Ok(Detached {
        input,
        output,
        done,
    })
}

/// Relays the main session until it exited, the caller left or the
/// socket broke; then waits for the agent to be gone.
///
/// A write that fails only ends the writing: an agent that finished its
/// operation sends its output, its result and `Exited`, then closes its
/// socket, and an acknowledgement sent after that close must not cost the
/// frames still unread here (the caller would see no result).
async fn relay(
    mut read: OwnedReadHalf,
    mut write: OwnedWriteHalf,
    mut buf: BytesMut,
    mut inputs: mpsc::UnboundedReceiver<SessionInput>,
    outputs: mpsc::UnboundedSender<ExecItem>,
    agent: Arc<dyn Agent>,
) {
    let mut flow = StdinFlow::default();
    let mut writable = true;
    'relay: loop {
        // Frames already buffered first (some may have come with Ready).
        loop {
            match Frame::decode(&mut buf) {
                Ok(Some(Frame::Output { stream, data, .. })) => {
                    let source = match stream {
                        OutputStream::Stdout => LogSource::Stdout,
                        OutputStream::Stderr => LogSource::Stderr,
                        OutputStream::Output => LogSource::Output,
                    };
                    let _ = outputs.send(ExecItem::Output { source, data });
                }
                Ok(Some(Frame::StdinConsumed { bytes, .. })) => {
                    flow.consumed(bytes as usize);
                    let _ = outputs.send(ExecItem::InputTaken { bytes });
                    for data in flow.ready() {
                        let frame = Frame::Stdin {
                            session: MAIN_SESSION,
                            data,
                        };
                        if writable && send(&mut write, &frame).await.is_err() {
                            writable = false;
                        }
                    }
                }
                Ok(Some(Frame::Exited {
                    status: ExitStatus { code, signal },
                    ..
                })) => {
                    let _ = outputs.send(ExecItem::Exited {
                        code,
                        signal,
                        timed_out: false,
                    });
                    break 'relay;
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => break 'relay,
            }
        }
        tokio::select! {
            input = inputs.recv(), if writable => {
                let frames = match input {
                    Some(SessionInput::Stdin(data)) => {
                        flow.push(&data);
                        flow.ready()
                            .into_iter()
                            .map(|data| Frame::Stdin { session: MAIN_SESSION, data })
                            .collect()
                    }
                    Some(SessionInput::OutputConsumed(bytes)) => {
                        vec![Frame::OutputConsumed { session: MAIN_SESSION, bytes }]
                    }
                    Some(SessionInput::Signal(signo)) => vec![Frame::Signal {
                        target: crate::protocol::SignalTarget::Main,
                        signo,
                    }],
                    Some(SessionInput::Resize { .. } | SessionInput::Expire) => Vec::new(),
                    // The caller is gone: closing the socket ends the agent.
                    None => break 'relay,
                };
                for frame in frames {
                    if send(&mut write, &frame).await.is_err() {
                        writable = false;
                        break;
                    }
                }
            }
            read = read.read_buf(&mut buf) => {
                if !matches!(read, Ok(n) if n > 0) {
                    break 'relay;
                }
            }
        }
    }
    // Closed: an agent whose session still runs kills it and exits.
    drop((read, write));
    // The caller's stream ends now, not only once the agent is gone.
    drop(outputs);
    agent.exited().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An agent that has already exited.
    #[derive(Debug)]
    struct Gone;

    impl Agent for Gone {
        fn pid(&self) -> u32 {
            0
        }
        fn exited(&self) -> futures::future::BoxFuture<'_, ()> {
            Box::pin(async {})
        }
        fn kill(&self, _main_pid: Option<u32>) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The agent sent its result and `Exited`, then closed its socket;
    /// the caller's acknowledgement is waiting to go out. Whichever the
    /// relay takes first, the result and the exit reach the caller (the
    /// write to the closed socket failed and once ended the relay with the
    /// frames unread: `cp` said the sandbox was not running).
    #[tokio::test]
    async fn frames_sent_before_the_agent_closed_reach_the_caller() {
        for _ in 0..64 {
            let (host, agent) = tokio::net::UnixStream::pair().expect("pair");
            let mut frames = Vec::new();
            Frame::Output {
                session: MAIN_SESSION,
                stream: OutputStream::Stderr,
                data: bytes::Bytes::from_static(b"{\"Ok\":null}"),
            }
            .encode(&mut frames);
            Frame::Exited {
                session: MAIN_SESSION,
                status: ExitStatus {
                    code: Some(0),
                    signal: None,
                },
            }
            .encode(&mut frames);
            let mut agent = agent;
            agent.write_all(&frames).await.expect("frames");
            drop(agent);
            let (input, inputs) = mpsc::unbounded_channel();
            let (outputs, mut output) = mpsc::unbounded_channel();
            input
                .send(SessionInput::OutputConsumed(11))
                .expect("queued");
            let (read, write) = host.into_split();
            relay(
                read,
                write,
                BytesMut::new(),
                inputs,
                outputs,
                Arc::new(Gone),
            )
            .await;
            let mut items = Vec::new();
            while let Some(item) = output.recv().await {
                items.push(item);
            }
            assert!(
                matches!(
                    items.as_slice(),
                    [
                        ExecItem::Output { .. },
                        ExecItem::Exited { code: Some(0), .. }
                    ]
                ),
                "{items:?}"
            );
        }
    }
}
