//! Health checks: a command the supervisor runs inside the sandbox every
//! `interval`, and the state its results add up to.
//!
//! # Contract
//! - [`HealthTracker::record`] is a plain function of the results so far;
//!   the supervisor runs the checks (a `send_after` timer, never a sleep)
//!   and carries out what a change of state asks for.
//! - The state is [`Health::Starting`] until the first passing check;
//!   failures during `start_period` (counted from the run's start) do not
//!   count. A pass makes it [`Health::Healthy`]; `retries` failures in a row
//!   (outside the start period) make it [`Health::Unhealthy`]. A pass ends
//!   a streak of failures.
//! - A check passes when its command exits 0 within `timeout`; a check that
//!   could not start, was killed at its timeout, or exited otherwise fails.
//! - [`HealthReport`] keeps the last [`KEPT_RESULTS`] results, each with at
//!   most [`MAX_OUTPUT`] bytes of output (docker keeps 5 and 4 KiB).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::protocol::CommandSpec;

/// Results a [`HealthReport`] keeps.
pub const KEPT_RESULTS: usize = 5;
/// Bytes of a check's output kept (stdout and stderr as they came).
pub const MAX_OUTPUT: usize = 4096;

/// A sandbox's health check, as users write it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HealthCheck {
    /// The command and its arguments (argv; the CLI's `--health-cmd` makes
    /// it `["sh", "-c", STRING]`, as docker's `CMD-SHELL`).
    pub command: Vec<String>,
    /// Time between the end of one check and the start of the next (and
    /// from the run's start to the first).
    #[serde(with = "crate::duration_serde")]
    pub interval: Duration,
    /// A check still running after this long is killed and fails.
    #[serde(with = "crate::duration_serde")]
    pub timeout: Duration,
    /// Failures in a row that make the sandbox unhealthy; at least 1.
    pub retries: u32,
    /// Failures this soon after the run started do not count.
    #[serde(with = "crate::duration_serde")]
    pub start_period: Duration,
}

/// Docker's defaults: every 30 s, 30 s timeout, 3 retries, no start period.
impl Default for HealthCheck {
    fn default() -> Self {
        Self {
            command: Vec::new(),
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(30),
            retries: 3,
            start_period: Duration::ZERO,
        }
    }
}

/// What the supervisor does when the sandbox turns unhealthy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnUnhealthy {
    /// Nothing: the state is only reported (the default, as docker).
    #[default]
    None,
    /// End the run (reason `Unhealthy`) and start it again with the restart
    /// backoff, whatever the restart policy (`No` included).
    Restart,
    /// Stop it (reason `Unhealthy`); no restart policy restarts it.
    Stop,
}

impl fmt::Display for OnUnhealthy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::None => "none",
            Self::Restart => "restart",
            Self::Stop => "stop",
        })
    }
}

impl FromStr for OnUnhealthy {
    type Err = String;

    /// `none`, `restart` or `stop`.
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "none" => Ok(Self::None),
            "restart" => Ok(Self::Restart),
            "stop" => Ok(Self::Stop),
            _ => Err(format!("{text:?} is not none, restart or stop")),
        }
    }
}

/// A sandbox's health, from its checks' results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// No check has passed yet.
    Starting,
    /// The last check passed.
    Healthy,
    /// `retries` checks in a row failed.
    Unhealthy,
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Starting => "starting",
            Self::Healthy => "healthy",
            Self::Unhealthy => "unhealthy",
        })
    }
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthResult {
    /// When it started.
    pub start: DateTime<Utc>,
    /// When it ended.
    pub end: DateTime<Utc>,
    /// Its exit code, if it exited.
    pub exit_code: Option<i32>,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// Its timeout killed it.
    pub timed_out: bool,
    /// The first [`MAX_OUTPUT`] bytes of its output (lossy UTF-8), or why it
    /// could not start.
    pub output: String,
}

impl HealthResult {
    /// Exit 0 within the timeout.
    pub fn passed(&self) -> bool {
        self.exit_code == Some(0) && !self.timed_out
    }
}

/// The health state with its latest results, as stored and shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthReport {
    /// The state.
    pub status: Health,
    /// Failures in a row that counted.
    pub failing_streak: u32,
    /// The last [`KEPT_RESULTS`] results, oldest first.
    pub log: Vec<HealthResult>,
}

/// A change of state: from, to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthChange {
    /// Before.
    pub from: Health,
    /// After.
    pub to: Health,
}

/// The health of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthTracker {
    report: HealthReport,
}

impl Default for HealthTracker {
    fn default() -> Self {
        Self {
            report: HealthReport {
                status: Health::Starting,
                failing_streak: 0,
                log: Vec::new(),
            },
        }
    }
}

impl HealthTracker {
    /// The state and the latest results.
    pub fn report(&self) -> &HealthReport {
        &self.report
    }

    /// Adds `result`; `in_start_period`: the run is younger than its start
    /// period (a failure then does not count). Returns the change of state,
    /// if any.
    pub fn record(
        &mut self,
        result: HealthResult,
        retries: u32,
        in_start_period: bool,
    ) -> Option<HealthChange> {
        let from = self.report.status;
        if result.passed() {
            self.report.failing_streak = 0;
            self.report.status = Health::Healthy;
        } else if !in_start_period {
            self.report.failing_streak = self.report.failing_streak.saturating_add(1);
            if self.report.failing_streak >= retries.max(1) {
                self.report.status = Health::Unhealthy;
            }
        }
        self.report.log.push(result);
        if self.report.log.len() > KEPT_RESULTS {
            self.report.log.remove(0);
        }
        let to = self.report.status;
        (from != to).then_some(HealthChange { from, to })
    }
}

/// What a supervisor needs to run a sandbox's health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSpec {
    /// The check's process (environment, directory and user of the main
    /// command).
    pub run: CommandSpec,
    /// Time between checks.
    pub interval: Duration,
    /// A check's time limit.
    pub timeout: Duration,
    /// Failures in a row that make the sandbox unhealthy.
    pub retries: u32,
    /// Failures this soon after the run started do not count.
    pub start_period: Duration,
    /// What an unhealthy sandbox's supervisor does.
    pub on_unhealthy: OnUnhealthy,
}

/// Keeps the first [`MAX_OUTPUT`] bytes of a check's output.
#[derive(Debug, Default)]
pub struct OutputCap(Vec<u8>);

impl OutputCap {
    /// Appends what still fits of `data`.
    pub fn push(&mut self, data: &[u8]) {
        let room = MAX_OUTPUT.saturating_sub(self.0.len());
        self.0.extend_from_slice(&data[..room.min(data.len())]);
    }

    /// The output kept, as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(code: i32) -> HealthResult {
        HealthResult {
            start: Utc::now(),
            end: Utc::now(),
            exit_code: Some(code),
            signal: None,
            timed_out: false,
            output: String::new(),
        }
    }

    #[test]
    fn starting_then_healthy_then_unhealthy_after_retries() {
        let mut tracker = HealthTracker::default();
        assert_eq!(tracker.record(result(1), 2, false), None);
        assert_eq!(tracker.report().failing_streak, 1);
        assert_eq!(
            tracker.record(result(0), 2, false),
            Some(HealthChange {
                from: Health::Starting,
                to: Health::Healthy
            })
        );
        assert_eq!(tracker.report().failing_streak, 0);
        assert_eq!(tracker.record(result(1), 2, false), None);
        assert_eq!(
            tracker.record(result(1), 2, false),
            Some(HealthChange {
                from: Health::Healthy,
                to: Health::Unhealthy
            })
        );
        assert_eq!(tracker.record(result(1), 2, false), None);
        assert_eq!(
            tracker.record(result(0), 2, false),
            Some(HealthChange {
                from: Health::Unhealthy,
                to: Health::Healthy
            })
        );
    }

    #[test]
    fn failures_in_the_start_period_do_not_count() {
        let mut tracker = HealthTracker::default();
        for _ in 0..10 {
            assert_eq!(tracker.record(result(1), 1, true), None);
        }
        assert_eq!(tracker.report().status, Health::Starting);
        assert_eq!(tracker.report().failing_streak, 0);
        assert_eq!(tracker.report().log.len(), KEPT_RESULTS);
        assert!(tracker.record(result(1), 1, false).is_some());
        assert_eq!(tracker.report().status, Health::Unhealthy);
    }

    #[test]
    fn a_timed_out_check_fails_and_output_is_capped() {
        let mut timed_out = result(0);
        timed_out.timed_out = true;
        assert!(!timed_out.passed());
        let mut cap = OutputCap::default();
        cap.push(&[b'a'; 3000]);
        cap.push(&[b'b'; 3000]);
        assert_eq!(cap.text().len(), MAX_OUTPUT);
        assert_eq!("restart".parse::<OnUnhealthy>(), Ok(OnUnhealthy::Restart));
        assert!("sometimes".parse::<OnUnhealthy>().is_err());
    }
}
