//! Stdin flow control for exec sessions: a window of bytes with the agent.
//!
//! # Contract
//! - At most [`STDIN_WINDOW`] bytes per session are with the agent (sent, not
//!   yet written to the session's pipe, as its `StdinConsumed` frames tell);
//!   the rest waits here, in order, so input a session reads slowly is never
//!   dropped. The agent buffers 16 MiB, well above the window.
//! - Frames carry at most [`STDIN_FRAME_BYTES`], far below the protocol's
//!   limit. An empty frame closes stdin; it waits behind the bytes queued
//!   before it.

use std::collections::VecDeque;

/// Stdin bytes per SAP frame.
pub const STDIN_FRAME_BYTES: usize = 1 << 20;
/// Most stdin bytes with the agent per session.
pub const STDIN_WINDOW: usize = 4 << 20;

/// Stdin flow control for one session. See the module docs.
#[derive(Debug, Default)]
pub struct StdinFlow {
    in_flight: usize,
    /// Frames' data not yet sent; an empty one closes stdin.
    queued: VecDeque<Vec<u8>>,
}

impl StdinFlow {
    /// Queues `data` (empty: close stdin) in frames of at most
    /// [`STDIN_FRAME_BYTES`].
    pub fn push(&mut self, data: &[u8]) {
        if data.is_empty() {
            self.queued.push_back(Vec::new());
        } else {
            self.queued
                .extend(data.chunks(STDIN_FRAME_BYTES).map(<[u8]>::to_vec));
        }
    }

    /// The agent wrote `bytes` to the session's pipe.
    pub fn consumed(&mut self, bytes: usize) {
        // The agent may count a byte of its own (a terminal's end-of-file
        // character).
        self.in_flight = self.in_flight.saturating_sub(bytes);
    }

    /// Takes the queued frames that fit in the window, in order.
    pub fn ready(&mut self) -> Vec<Vec<u8>> {
        let mut ready = Vec::new();
        while let Some(front) = self.queued.front() {
            if !front.is_empty() && self.in_flight + front.len() > STDIN_WINDOW {
                break;
            }
            self.in_flight += front.len();
            ready.extend(self.queued.pop_front());
        }
        ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_holds_back_until_consumed_and_close_waits_its_turn() {
        let mut flow = StdinFlow::default();
        flow.push(&vec![1; STDIN_WINDOW]);
        flow.push(b"x");
        flow.push(b"");
        let first = flow.ready();
        assert_eq!(first.iter().map(Vec::len).sum::<usize>(), STDIN_WINDOW);
        assert!(flow.ready().is_empty());
        flow.consumed(1);
        assert_eq!(flow.ready(), vec![b"x".to_vec(), Vec::new()]);
    }
}
