//! Restart intensity: how many failures a supervisor absorbs before giving up.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// At most `max` restarts within any `window`; one more means give up.
#[derive(Debug, Clone)]
pub struct RestartBudget {
    max: usize,
    window: Duration,
    recent: VecDeque<Instant>,
}

impl RestartBudget {
    /// Failures a tailer may have within [`Self::DEFAULT_WINDOW`].
    pub const DEFAULT_MAX: usize = 5;
    /// The window failures are counted in.
    pub const DEFAULT_WINDOW: Duration = Duration::from_secs(10);

    /// A budget of `max` restarts per `window`.
    pub fn new(max: usize, window: Duration) -> Self {
        Self {
            max,
            window,
            recent: VecDeque::new(),
        }
    }

    /// Records a failure now; `true` if a restart is still allowed.
    pub fn allow(&mut self) -> bool {
        self.allow_at(Instant::now())
    }

    fn allow_at(&mut self, now: Instant) -> bool {
        while let Some(&oldest) = self.recent.front() {
            if now.duration_since(oldest) > self.window {
                self.recent.pop_front();
            } else {
                break;
            }
        }
        self.recent.push_back(now);
        self.recent.len() <= self.max
    }

    /// Failures counted in the current window.
    pub fn failures(&self) -> usize {
        self.recent.len()
    }
}

impl Default for RestartBudget {
    fn default() -> Self {
        Self::new(Self::DEFAULT_MAX, Self::DEFAULT_WINDOW)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_refills_after_window() {
        let mut budget = RestartBudget::new(2, Duration::from_secs(10));
        let t0 = Instant::now();
        assert!(budget.allow_at(t0));
        assert!(budget.allow_at(t0 + Duration::from_secs(1)));
        assert!(!budget.allow_at(t0 + Duration::from_secs(2)));
        assert!(budget.allow_at(t0 + Duration::from_secs(13)));
    }
}
