//! A polled device's health, once for every driver: failures in a row,
//! offline after N of them, a problem the user must fix reported once,
//! and the growing pause while the device is away. Pure bookkeeping: the
//! driver classifies its error, asks [`PollHealth::failed`] what it means
//! and carries that out (log, event, availability, sleep).

use std::time::Duration;

/// What kind of failure a driver's error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Unreachable, timed out, a bad answer: try again, back off when it
    /// goes on.
    Transient,
    /// The device asked us to slow down: wait at least this long (no
    /// growing backoff: it answered).
    RateLimited { wait: Duration },
    /// Retrying will not help until the user acts (wrong credentials, an
    /// unsupported model, the wrong serial). Reported once per distinct
    /// message. `offline_for`: the device is offline at once and retried
    /// only after this long; `None`: counted like a transient failure.
    NeedsUser { offline_for: Option<Duration> },
}

/// How loud a failure should be in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loudness {
    /// The first failure and the one that makes the device unavailable.
    Warn,
    /// Every other transient failure.
    Debug,
    /// A new problem for the user.
    Error,
    /// A problem already reported.
    Quiet,
}

/// What a failure means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AfterFailure {
    /// Failures in a row, this one included.
    pub failures: u32,
    pub log: Loudness,
    /// A problem to report (`DriverEvent::Problem`): new for the user.
    pub problem: Option<String>,
    /// The device is to be shown unavailable.
    pub offline: bool,
    /// Before the next poll.
    pub wait: Duration,
}

#[derive(Debug, Clone)]
pub struct PollHealth {
    interval: Duration,
    unavailable_after: u32,
    backoff_max: Duration,
    backoff: Duration,
    failures: u32,
    last_problem: Option<String>,
}

impl PollHealth {
    /// Polls every `interval`; unavailable after `unavailable_after`
    /// failures in a row (at least 1); the pause then doubles from the
    /// interval up to `backoff_max` (or the interval, if that is longer).
    pub fn new(interval: Duration, unavailable_after: u32, backoff_max: Duration) -> Self {
        Self {
            interval,
            unavailable_after: unavailable_after.max(1),
            backoff_max,
            backoff: interval,
            failures: 0,
            last_problem: None,
        }
    }

    /// A poll worked: everything starts afresh.
    pub fn succeeded(&mut self) {
        self.failures = 0;
        self.backoff = self.interval;
        self.last_problem = None;
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }

    pub fn failed(&mut self, kind: Failure, message: &str) -> AfterFailure {
        self.failures = self.failures.saturating_add(1);
        let failures = self.failures;
        let reached = failures >= self.unavailable_after;
        let (log, problem) = match kind {
            Failure::NeedsUser { .. } => {
                let new = self.last_problem.as_deref() != Some(message);
                self.last_problem = Some(message.to_owned());
                if new {
                    (Loudness::Error, Some(message.to_owned()))
                } else {
                    (Loudness::Quiet, None)
                }
            }
            _ if failures == 1 || failures == self.unavailable_after => (Loudness::Warn, None),
            _ => (Loudness::Debug, None),
        };
        let (offline, wait) = match kind {
            Failure::NeedsUser {
                offline_for: Some(wait),
            } => (true, wait),
            Failure::RateLimited { wait } => (reached, wait.max(self.interval)),
            Failure::Transient | Failure::NeedsUser { offline_for: None } => {
                let wait = if reached {
                    let d = self.backoff.max(self.interval);
                    self.backoff = (self.backoff * 2).min(self.backoff_max.max(self.interval));
                    d
                } else {
                    self.interval
                };
                (reached, wait)
            }
        };
        AfterFailure {
            failures,
            log,
            problem,
            offline,
            wait,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn transient_failures_go_offline_after_n_and_back_off() {
        let mut h = PollHealth::new(5 * S, 3, 60 * S);
        let seen: Vec<(Loudness, bool, u64)> = (0..7)
            .map(|_| {
                let a = h.failed(Failure::Transient, "timed out");
                (a.log, a.offline, a.wait.as_secs())
            })
            .collect();
        use Loudness::*;
        assert_eq!(
            seen,
            [
                (Warn, false, 5),
                (Debug, false, 5),
                (Warn, true, 5),
                (Debug, true, 10),
                (Debug, true, 20),
                (Debug, true, 40),
                (Debug, true, 60),
            ]
        );
        h.succeeded();
        let a = h.failed(Failure::Transient, "timed out");
        assert_eq!(
            (a.failures, a.log, a.offline, a.wait),
            (1, Warn, false, 5 * S)
        );
    }

    #[test]
    fn a_problem_for_the_user_is_reported_once_per_message() {
        let mut h = PollHealth::new(5 * S, 2, 60 * S);
        let wrong = Failure::NeedsUser {
            offline_for: Some(3600 * S),
        };
        let a = h.failed(wrong, "wrong credentials");
        assert_eq!(a.problem.as_deref(), Some("wrong credentials"));
        assert_eq!(
            (a.log, a.offline, a.wait),
            (Loudness::Error, true, 3600 * S)
        );
        let a = h.failed(wrong, "wrong credentials");
        assert_eq!((a.problem, a.log), (None, Loudness::Quiet));
        let a = h.failed(wrong, "KLAP disabled");
        assert_eq!(a.problem.as_deref(), Some("KLAP disabled"));
        // Fixed, then wrong again: reported again.
        h.succeeded();
        assert!(h.failed(wrong, "KLAP disabled").problem.is_some());
    }

    #[test]
    fn a_counted_problem_backs_off_and_a_rate_limit_waits_without_growing() {
        let mut h = PollHealth::new(10 * S, 1, 60 * S);
        let counted = Failure::NeedsUser { offline_for: None };
        let a = h.failed(counted, "unsupported model");
        assert_eq!((a.offline, a.wait), (true, 10 * S));
        assert_eq!(h.failed(counted, "unsupported model").wait, 20 * S);
        let limited = Failure::RateLimited { wait: 30 * S };
        assert_eq!(h.failed(limited, "429").wait, 30 * S);
        assert_eq!(h.failed(limited, "429").wait, 30 * S);
        // The backoff kept its place.
        assert_eq!(h.failed(Failure::Transient, "x").wait, 40 * S);
        // A rate limit shorter than the interval waits the interval.
        let mut h = PollHealth::new(10 * S, 1, 60 * S);
        assert_eq!(
            h.failed(Failure::RateLimited { wait: S }, "429").wait,
            10 * S
        );
    }
}
