//! Lifecycle events a sandbox's supervisor publishes.
//!
//! # Contract
//! - Each event is published from inside the supervisor's message handler
//!   that caused it, so per sandbox the events are in the order the
//!   supervisor acted.
//! - Each event carries the run it belongs to (`run`, the run row's id) and
//!   is numbered by `seq` per (sandbox, run), from 1 without gaps: a
//!   restart policy's new run starts again at 1. A run's events begin when
//!   its supervisor starts it and end with the policy's word on it
//!   (`RestartScheduled` / `RestartEnded` after its end belong to it); the
//!   few a run publishes before its row exists (it has not reached Ready)
//!   carry `run: None`.
//! - Delivery goes through [`EventSink`]s that do not block and do not drop
//!   (unbounded channels, actor mailboxes): an event is never lost while its
//!   subscriber lives. Events are rare (transitions, not output), so the
//!   unbounded buffer is the price of never slowing a supervisor down.
//! - A sink that reports its subscriber gone is removed.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::health::Health;
use super::lifecycle::SandboxStatus;
use super::metrics::SandboxMetrics;
use super::policy::RestartEnd;

/// The steps of stop escalation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EscalationStep {
    /// The stop signal (SIGTERM by default) to every process.
    Term,
    /// SIGKILL to every process, through the agent.
    Kill,
    /// SIGKILL to PID 1 from the host (the agent did not answer).
    HostKill,
}

/// Something that happened to a sandbox.
#[derive(Debug, Clone, PartialEq)]
pub enum SandboxEvent {
    /// The status changed.
    StatusChanged {
        /// Before.
        from: SandboxStatus,
        /// After.
        to: SandboxStatus,
    },
    /// A session's process started (session 1 is the main command).
    SessionStarted {
        /// Session id.
        id: u64,
    },
    /// A session's process exited.
    SessionExited {
        /// Session id.
        id: u64,
        /// Exit code, if it exited.
        code: Option<i32>,
        /// Signal, if one killed it.
        signal: Option<i32>,
    },
    /// `exec.log` was rotated.
    Rotated {
        /// Rotation count.
        generation: u64,
    },
    /// A stop escalated.
    Escalated {
        /// The step that did not end the sandbox in time.
        from: EscalationStep,
        /// The step taken now.
        to: EscalationStep,
    },
    /// A child actor ended and was restarted.
    ChildRestarted {
        /// Which (`relay_tap`).
        actor: &'static str,
        /// Why it ended.
        reason: String,
    },
    /// Resource use was sampled (every `metrics_interval`).
    MetricsSampled(SandboxMetrics),
    /// The run ended and the restart policy starts the sandbox again after
    /// `delay` (the status is Starting meanwhile).
    RestartScheduled {
        /// Which restart since a user started the sandbox, from 1.
        attempt: u32,
        /// The backoff delay.
        delay: Duration,
    },
    /// The restart policy does not start the sandbox again, and why.
    RestartEnded {
        /// Why.
        reason: RestartEnd,
    },
    /// The health check's results changed the sandbox's health (health
    /// checks themselves publish no session events).
    HealthChanged {
        /// Before.
        from: Health,
        /// After.
        to: Health,
    },
    /// An exec session reached its `timeout`: its process group was killed
    /// (its `SessionExited` follows).
    SessionTimedOut {
        /// Session id.
        id: u64,
        /// The timeout it had.
        timeout: Duration,
    },
}

/// An event with where and when it happened.
#[derive(Debug, Clone, PartialEq)]
pub struct EventEnvelope {
    /// The sandbox.
    pub sandbox: String,
    /// The run it belongs to (the run row's id, as in
    /// `Sandvisor::runs`); `None` before the run's row exists.
    pub run: Option<i64>,
    /// Position in the events of this (sandbox, run), from 1, without
    /// gaps; each run of a restart policy starts again at 1.
    pub seq: u64,
    /// When the supervisor published it.
    pub at: DateTime<Utc>,
    /// What happened.
    pub event: SandboxEvent,
}

/// Receives events; returns `false` once its subscriber is gone.
pub type EventSink = Arc<dyn Fn(&EventEnvelope) -> bool + Send + Sync>;

/// A sink feeding an unbounded channel.
pub fn channel_sink(tx: tokio::sync::mpsc::UnboundedSender<EventEnvelope>) -> EventSink {
    Arc::new(move |event| tx.send(event.clone()).is_ok())
}

/// The subscribers of one sandbox, and the numbering of its current run's
/// events.
#[derive(Default)]
pub struct Publisher {
    sinks: Vec<EventSink>,
    run: Option<i64>,
    seq: u64,
}

impl Publisher {
    /// A publisher delivering to `sinks` (e.g. the runtime-wide bus).
    pub fn new(sinks: Vec<EventSink>) -> Self {
        Self {
            sinks,
            run: None,
            seq: 0,
        }
    }

    /// A new run begins: its events are numbered from 1, with no run id
    /// until [`Self::run_recorded`].
    pub fn new_run(&mut self) {
        self.run = None;
        self.seq = 0;
    }

    /// The current run's row exists: its events carry `run` from now on.
    pub fn run_recorded(&mut self, run: i64) {
        self.run = Some(run);
    }

    /// Adds a subscriber; it gets every event published from now on.
    pub fn subscribe(&mut self, sink: EventSink) {
        self.sinks.push(sink);
    }

    /// Publishes `event` of `sandbox` to every live subscriber.
    pub fn publish(&mut self, sandbox: &str, event: SandboxEvent) {
        self.seq += 1;
        let envelope = EventEnvelope {
            sandbox: sandbox.to_string(),
            run: self.run,
            seq: self.seq,
            at: Utc::now(),
            event,
        };
        self.sinks.retain(|sink| sink(&envelope));
    }
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("subscribers", &self.sinks.len())
            .field("run", &self.run)
            .field("seq", &self.seq)
            .finish()
    }
}
