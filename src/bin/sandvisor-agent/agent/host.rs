//! The agent's end of the host's SAP socket: reading the `Start` that opens
//! the conversation, and writing frames.
//!
//! # Contract
//! Writes are blocking and whole (one `write_all` per frame): the agent is
//! single-threaded and frames from it must not interleave. A failed write
//! means the host is gone; each caller decides what that ends.

use std::fs::File;
use std::io::{Read, Write};

use bytes::BytesMut;
use sandvisor_actors::protocol::{Frame, StartSpec};

/// Reads the Start frame; returns it and whatever the host sent after it in
/// the same reads (a stop may follow right behind).
///
/// # Errors
/// Why there is no `Start` to run, as the line the agent prints before it
/// exits: the socket failed or closed first, a frame did not decode, or the
/// first frame was another one.
pub(crate) fn read_start(sock: &mut File) -> Result<(StartSpec, BytesMut), String> {
    let mut buf = BytesMut::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(frame) = Frame::decode(&mut buf).map_err(|e| e.to_string())? {
            return match frame {
                Frame::Start(spec) => Ok((spec, buf)),
                other => Err(format!("expected Start, got {other:?}")),
            };
        }
        let n = sock
            .read(&mut chunk)
            .map_err(|e| format!("reading Start: {e}"))?;
        if n == 0 {
            return Err("host closed the socket before Start".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Writes `frame` whole.
///
/// # Errors
/// The socket's write error: the host is gone (or no longer reads).
pub(crate) fn send(sock: &mut File, frame: &Frame) -> std::io::Result<()> {
    let mut buf = Vec::new();
    frame.encode(&mut buf);
    send_encoded(sock, &buf)
}

/// Writes an encoded frame whole.
///
/// # Errors
/// As [`send`].
pub(crate) fn send_encoded(sock: &mut File, encoded: &[u8]) -> std::io::Result<()> {
    sock.write_all(encoded)
}
