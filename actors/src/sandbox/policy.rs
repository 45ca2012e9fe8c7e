//! The restart policy: whether a run that ended is followed by another, and
//! after how long.
//!
//! # Contract
//! - [`RestartTracker::decide`] is a plain function of the policy, the
//!   backoff, how the run ended and what stopped it; the supervisor carries
//!   out its [`Decision`] (a timer message to itself, never a sleep).
//! - A run ended by a user's `stop`, `kill`, `drain` (or `rm -f`) or by the
//!   sandbox's own idle or lifetime limit is never restarted: those are
//!   stops asked for, as in docker. Under every policy but `No` the reason
//!   restarting ended is a [`RestartEnd`].
//! - Failure is any end but [`TerminationReason::Completed`] (exit 0): a
//!   non-zero exit, a signal, an OOM kill, a lost agent (Crashed), a restart
//!   that failed to boot.
//! - Delays double from [`RestartBackoff::initial`] up to
//!   [`RestartBackoff::max`]; a run that stayed up for
//!   [`RestartBackoff::reset_after`] starts the doubling — and the count of
//!   failures in a row that `OnFailure { max_retries }` limits — again.
//! - A run ended by its health check with `on_unhealthy: Restart` is
//!   restarted under every policy, `No` included, and regardless of
//!   `OnFailure`'s retry limit (the backoff still applies) — unless a user
//!   stopped it meanwhile. With `on_unhealthy: Stop` it is a stop asked for
//!   ([`RestartEnd::Unhealthy`]).
//! - `Always` and `UnlessStopped` behave the same: they differ in docker only
//!   when the host restarts, which matters once sandboxes are re-adopted.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::lifecycle::TerminationReason;

/// When a sandbox whose run ended is started again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Restart {
    /// Never (the default).
    #[default]
    No,
    /// After a failure (anything but exit 0), at most `max_retries` times in
    /// a row (`None`: without limit).
    OnFailure {
        /// Restarts in a row before giving up; at least 1.
        #[serde(default)]
        max_retries: Option<u32>,
    },
    /// After every end, success included, until stopped.
    Always,
    /// As `Always` (see the module docs).
    UnlessStopped,
}

impl fmt::Display for Restart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::No => f.write_str("no"),
            Self::OnFailure { max_retries: None } => f.write_str("on-failure"),
            Self::OnFailure {
                max_retries: Some(n),
            } => write!(f, "on-failure:{n}"),
            Self::Always => f.write_str("always"),
            Self::UnlessStopped => f.write_str("unless-stopped"),
        }
    }
}

impl FromStr for Restart {
    type Err = String;

    /// Docker's forms: `no`, `on-failure`, `on-failure:N` (N ≥ 1), `always`,
    /// `unless-stopped`.
    fn from_str(text: &str) -> Result<Self, String> {
        match text.split_once(':') {
            None => match text {
                "no" => Ok(Self::No),
                "on-failure" => Ok(Self::OnFailure { max_retries: None }),
                "always" => Ok(Self::Always),
                "unless-stopped" => Ok(Self::UnlessStopped),
                _ => Err(format!(
                    "{text:?} is not a restart policy: no, on-failure[:N], always or unless-stopped"
                )),
            },
            Some(("on-failure", count)) => match count.parse::<u32>() {
                Ok(0) => {
                    Err("on-failure:0 would never restart; leave the count out for no limit".into())
                }
                Ok(n) => Ok(Self::OnFailure {
                    max_retries: Some(n),
                }),
                Err(_) => Err(format!(
                    "{count:?} is not a retry count (a whole number from 1)"
                )),
            },
            Some(_) => Err(format!(
                "{text:?}: only on-failure takes a retry count (on-failure:N)"
            )),
        }
    }
}

/// The delay before restart `n` in a row is `initial × 2ⁿ⁻¹`, at most `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RestartBackoff {
    /// The delay before the first restart in a row (docker: 100 ms).
    #[serde(with = "crate::duration_serde")]
    pub initial: Duration,
    /// The longest delay (docker: 1 minute).
    #[serde(with = "crate::duration_serde")]
    pub max: Duration,
    /// A run that stayed up this long resets the doubling and the failures
    /// counted in a row (docker: 10 s).
    #[serde(with = "crate::duration_serde")]
    pub reset_after: Duration,
}

/// Docker's backoff: 100 ms, doubling, at most 1 minute, reset after 10 s up.
pub const DEFAULT_RESTART_BACKOFF: RestartBackoff = RestartBackoff {
    initial: Duration::from_millis(100),
    max: Duration::from_secs(60),
    reset_after: Duration::from_secs(10),
};

impl Default for RestartBackoff {
    fn default() -> Self {
        DEFAULT_RESTART_BACKOFF
    }
}

impl RestartBackoff {
    /// The delay before the restart that follows `streak` restarts in a row.
    pub fn delay(&self, streak: u32) -> Duration {
        let factor = 1u32.checked_shl(streak.min(31)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }
}

/// Why a sandbox under a restart policy was not started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RestartEnd {
    /// It exited 0 under `OnFailure`.
    Completed,
    /// `OnFailure { max_retries }` restarted it that many times in a row.
    RetriesExhausted,
    /// A user stopped, killed, drained or removed it (also while it waited
    /// for a restart).
    StopRequested,
    /// Its idle timeout stopped it.
    IdleTimeout,
    /// Its max lifetime stopped it.
    LifetimeExceeded,
    /// Its health check turned it unhealthy and `on_unhealthy` is `Stop`.
    Unhealthy,
    /// The store did not take the run's end (a full disk): a restart would
    /// leave the rows behind the truth.
    Unrecorded,
}

impl RestartEnd {
    /// The name stored in SQLite.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "Completed",
            Self::RetriesExhausted => "RetriesExhausted",
            Self::StopRequested => "StopRequested",
            Self::IdleTimeout => "IdleTimeout",
            Self::LifetimeExceeded => "LifetimeExceeded",
            Self::Unhealthy => "Unhealthy",
            Self::Unrecorded => "Unrecorded",
        }
    }
}

impl fmt::Display for RestartEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RestartEnd {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        [
            Self::Completed,
            Self::RetriesExhausted,
            Self::StopRequested,
            Self::IdleTimeout,
            Self::LifetimeExceeded,
            Self::Unhealthy,
            Self::Unrecorded,
        ]
        .into_iter()
        .find(|end| end.as_str() == s)
        .ok_or_else(|| format!("unknown restart end {s:?}"))
    }
}

/// How a run ended, as the policy needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunSummary {
    /// Why it ended.
    pub reason: TerminationReason,
    /// How long it was up (from Ready); `None` if it never booted.
    pub ran_for: Option<Duration>,
    /// What asked for the end, if something did (a user, a limit).
    pub stopped_by: Option<RestartEnd>,
    /// The store refused to record the end.
    pub unrecorded: bool,
    /// The run was ended because it turned unhealthy, with `on_unhealthy:
    /// Restart`: restarted whatever the policy.
    pub unhealthy_restart: bool,
}

/// What follows a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The policy is `No`: nothing to record.
    NoPolicy,
    /// Start again after `delay`; `attempt` counts restarts since the
    /// sandbox was started by a user, from 1.
    Restart {
        /// Which restart.
        attempt: u32,
        /// How long to wait.
        delay: Duration,
    },
    /// Restarting ends here.
    End(RestartEnd),
}

/// The restarts of one sandbox since a user started it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RestartTracker {
    /// Restarts in a row (reset by a run that stayed up).
    streak: u32,
    /// Restarts in all.
    attempts: u32,
}

impl RestartTracker {
    /// Restarts so far.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Decides what follows `run` under `policy`, counting the restart it
    /// decides on.
    pub fn decide(
        &mut self,
        policy: Restart,
        backoff: &RestartBackoff,
        run: RunSummary,
    ) -> Decision {
        if policy == Restart::No && !run.unhealthy_restart {
            return Decision::NoPolicy;
        }
        if let Some(cause) = run.stopped_by {
            return Decision::End(cause);
        }
        if run.unrecorded {
            return Decision::End(RestartEnd::Unrecorded);
        }
        if run.ran_for.is_some_and(|up| up >= backoff.reset_after) {
            self.streak = 0;
        }
        // Asked for by the health check: neither the policy nor its retry
        // limit has a say (docker-style autoheal), only the backoff.
        if run.unhealthy_restart {
            return self.restart(backoff);
        }
        let failed = run.reason != TerminationReason::Completed;
        if let Restart::OnFailure { max_retries } = policy {
            if !failed {
                return Decision::End(RestartEnd::Completed);
            }
            if max_retries.is_some_and(|most| self.streak >= most) {
                return Decision::End(RestartEnd::RetriesExhausted);
            }
        }
        self.restart(backoff)
    }

    /// Counts a restart and says when it is due.
    fn restart(&mut self, backoff: &RestartBackoff) -> Decision {
        let delay = backoff.delay(self.streak);
        self.streak += 1;
        self.attempts += 1;
        Decision::Restart {
            attempt: self.attempts,
            delay,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ended(reason: TerminationReason, up_ms: u64) -> RunSummary {
        RunSummary {
            reason,
            ran_for: Some(Duration::from_millis(up_ms)),
            stopped_by: None,
            unrecorded: false,
            unhealthy_restart: false,
        }
    }

    #[test]
    fn an_unhealthy_restart_happens_under_every_policy_unless_a_user_stopped() {
        let backoff = RestartBackoff::default();
        let mut unhealthy = ended(TerminationReason::Unhealthy, 5);
        unhealthy.unhealthy_restart = true;
        let mut tracker = RestartTracker::default();
        assert!(matches!(
            tracker.decide(Restart::No, &backoff, unhealthy),
            Decision::Restart { attempt: 1, .. }
        ));
        let once = Restart::OnFailure {
            max_retries: Some(1),
        };
        assert!(matches!(
            tracker.decide(once, &backoff, unhealthy),
            Decision::Restart { attempt: 2, .. }
        ));
        unhealthy.stopped_by = Some(RestartEnd::StopRequested);
        assert_eq!(
            tracker.decide(Restart::No, &backoff, unhealthy),
            Decision::End(RestartEnd::StopRequested)
        );
    }

    #[test]
    fn on_failure_five_restarts_five_times_with_doubling_delays_then_gives_up() {
        let backoff = RestartBackoff::default();
        let policy: Restart = "on-failure:5".parse().unwrap();
        let mut tracker = RestartTracker::default();
        let mut delays = Vec::new();
        loop {
            match tracker.decide(policy, &backoff, ended(TerminationReason::Failed, 5)) {
                Decision::Restart { attempt, delay } => {
                    assert_eq!(attempt as usize, delays.len() + 1);
                    delays.push(delay.as_millis());
                }
                other => {
                    assert_eq!(other, Decision::End(RestartEnd::RetriesExhausted));
                    break;
                }
            }
        }
        assert_eq!(delays, [100, 200, 400, 800, 1600]);
    }

    #[test]
    fn success_stop_and_stable_runs() {
        let backoff = RestartBackoff::default();
        let on_failure = Restart::OnFailure { max_retries: None };
        let mut tracker = RestartTracker::default();
        assert_eq!(
            tracker.decide(on_failure, &backoff, ended(TerminationReason::Completed, 5)),
            Decision::End(RestartEnd::Completed)
        );
        assert!(matches!(
            tracker.decide(
                Restart::Always,
                &backoff,
                ended(TerminationReason::Completed, 5)
            ),
            Decision::Restart { attempt: 1, .. }
        ));
        assert!(matches!(
            tracker.decide(Restart::Always, &backoff, ended(TerminationReason::Signal, 5)),
            Decision::Restart { attempt: 2, delay } if delay == Duration::from_millis(200)
        ));
        // A run up for longer than reset_after starts the doubling again.
        assert!(matches!(
            tracker.decide(Restart::Always, &backoff, ended(TerminationReason::Failed, 10_000)),
            Decision::Restart { attempt: 3, delay } if delay == Duration::from_millis(100)
        ));
        let mut stopped = ended(TerminationReason::ShutdownRequested, 5);
        stopped.stopped_by = Some(RestartEnd::StopRequested);
        assert_eq!(
            tracker.decide(Restart::UnlessStopped, &backoff, stopped),
            Decision::End(RestartEnd::StopRequested)
        );
        assert_eq!(
            tracker.decide(Restart::No, &backoff, ended(TerminationReason::Failed, 5)),
            Decision::NoPolicy
        );
    }

    #[test]
    fn the_delay_is_capped() {
        let backoff = RestartBackoff::default();
        assert_eq!(backoff.delay(9), Duration::from_millis(51_200));
        assert_eq!(backoff.delay(10), Duration::from_secs(60));
        assert_eq!(backoff.delay(u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn parses_docker_forms() {
        for text in [
            "no",
            "on-failure",
            "on-failure:3",
            "always",
            "unless-stopped",
        ] {
            assert_eq!(text.parse::<Restart>().unwrap().to_string(), text);
        }
        for bad in [
            "",
            "sometimes",
            "on-failure:0",
            "on-failure:-1",
            "always:3",
            "on-failure:x",
        ] {
            assert!(bad.parse::<Restart>().is_err(), "{bad}");
        }
        let json = serde_json::to_string(&Restart::OnFailure {
            max_retries: Some(5),
        })
        .unwrap();
        assert_eq!(json, r#"{"on_failure":{"max_retries":5}}"#);
        assert_eq!(
            serde_json::to_string(&Restart::Always).unwrap(),
            r#""always""#
        );
    }
}
