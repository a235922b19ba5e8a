//! Circuit breaker per upstream server: opens after `consecutive_failures`
//! failures in a row (or an error ratio over a window), stays open for a
//! backoff that starts at [`FIRST_OPEN`] and doubles while probes keep failing
//! (capped at `open_for`), then lets one probe through (half-open): its
//! success closes the breaker and resets the backoff, its failure opens it
//! again for twice as long.
//!
//! Every method takes the current time, so that the behaviour is tested with
//! made-up instants (see [`crate::clock`]). Which open servers still get
//! traffic (an upstream never takes its last `min_available` servers out of
//! rotation) is the pool's decision, see [`crate::upstream`].

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::clock;
use crate::config::Breaker as Settings;

/// The first open period; each failed probe doubles it up to `open_for`.
pub const FIRST_OPEN: Duration = Duration::from_secs(1);

/// The state of one server's breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Requests flow.
    Closed,
    /// The server is skipped.
    Open,
    /// One probe may go through.
    HalfOpen,
}

impl State {
    /// The name used in `/upstreams` and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }
}

/// One server's breaker. Times are [`clock::millis`] values (0 = unset).
#[derive(Debug, Default)]
pub struct CircuitBreaker {
    failures: AtomicU32,
    /// Start of the error-ratio window.
    window_start: AtomicU64,
    window_total: AtomicU32,
    window_failed: AtomicU32,
    /// 0 when closed; else when the open period ends.
    open_until: AtomicU64,
    /// Length of the current (or last) open period in ms; 0 before the first.
    backoff_ms: AtomicU64,
    /// When the last failure was recorded (0: never).
    last_failure: AtomicU64,
    probing: AtomicBool,
}

impl CircuitBreaker {
    /// The state at `now`.
    pub fn state(&self, now: Instant) -> State {
        match self.open_until.load(Ordering::Acquire) {
            0 => State::Closed,
            until if clock::millis(now) < until => State::Open,
            _ => State::HalfOpen,
        }
    }

    /// Whether a request may go to this server at `now`; in half-open state
    /// only the first caller (the probe) is let through.
    pub fn allows(&self, now: Instant) -> bool {
        match self.state(now) {
            State::Closed => true,
            State::Open => false,
            State::HalfOpen => self
                .probing
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok(),
        }
    }

    /// When the last failure was recorded ([`clock::millis`]; 0 when never):
    /// of several open servers, the one that failed longest ago is the first
    /// put back into rotation.
    pub fn last_failure(&self) -> u64 {
        self.last_failure.load(Ordering::Acquire)
    }

    /// Counts a request in the error-ratio window; returns (total, failed).
    fn count(&self, failed: bool, settings: &Settings, now: u64) -> (u32, u32) {
        let start = self.window_start.load(Ordering::Acquire);
        if now.saturating_sub(start) > settings.window.as_millis() as u64
            && self
                .window_start
                .compare_exchange(start, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.window_total.store(0, Ordering::Release);
            self.window_failed.store(0, Ordering::Release);
        }
        let total = self.window_total.fetch_add(1, Ordering::AcqRel) + 1;
        let failed_n = if failed {
            self.window_failed.fetch_add(1, Ordering::AcqRel) + 1
        } else {
            self.window_failed.load(Ordering::Acquire)
        };
        (total, failed_n)
    }

    /// A request to this server succeeded at `now`: the breaker closes and
    /// its backoff starts over.
    pub fn success(&self, settings: &Settings, now: Instant) {
        if settings.error_ratio.is_some() {
            self.count(false, settings, clock::millis(now));
        }
        self.failures.store(0, Ordering::Release);
        if self.open_until.swap(0, Ordering::AcqRel) != 0 {
            tracing::warn!("circuit closed after a successful request");
        }
        self.backoff_ms.store(0, Ordering::Release);
        self.probing.store(false, Ordering::Release);
    }

    /// A request to this server failed at `now`.
    pub fn failure(&self, settings: &Settings, now: Instant) {
        let at = clock::millis(now);
        self.last_failure.store(at, Ordering::Release);
        let n = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        let cap = settings.open_for.as_millis() as u64;
        let backoff = match self.state(now) {
            // Already open: failures of requests sent before it opened (or
            // sent anyway to keep `min_available`) do not extend it.
            State::Open => return,
            // The probe (or any request in half-open state) failed: twice as long.
            State::HalfOpen => (self.backoff_ms.load(Ordering::Acquire) * 2).clamp(1, cap),
            State::Closed => {
                let ratio_tripped = settings.error_ratio.is_some_and(|ratio| {
                    let (total, failed) = self.count(true, settings, at);
                    total >= settings.min_requests && f64::from(failed) / f64::from(total) >= ratio
                });
                if !ratio_tripped && n < settings.consecutive_failures.get() {
                    return;
                }
                (FIRST_OPEN.as_millis() as u64).min(cap)
            }
        };
        self.backoff_ms.store(backoff, Ordering::Release);
        if self.open_until.swap(at + backoff, Ordering::AcqRel) == 0 {
            tracing::warn!(failures = n, "circuit opened");
        }
        self.probing.store(false, Ordering::Release);
        // A fresh window after the open period.
        self.window_total.store(0, Ordering::Release);
        self.window_failed.store(0, Ordering::Release);
    }

    /// Time from `now` until the breaker half-opens (zero when it is not open).
    pub fn retry_in(&self, now: Instant) -> Duration {
        let until = self.open_until.load(Ordering::Acquire);
        Duration::from_millis(until.saturating_sub(clock::millis(now)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;

    fn settings(consecutive: u32, open_for: Duration) -> Settings {
        Settings {
            consecutive_failures: NonZeroU32::new(consecutive).unwrap(),
            open_for,
            error_ratio: None,
            window: Duration::from_secs(10),
            min_requests: 1,
            min_available: 0,
            count_overload: false,
        }
    }

    fn at(ms: u64) -> Instant {
        clock::epoch() + Duration::from_millis(ms)
    }

    #[test]
    fn opens_half_opens_and_closes() {
        let s = settings(2, Duration::from_secs(10));
        let b = CircuitBreaker::default();
        b.failure(&s, at(0));
        assert_eq!(b.state(at(0)), State::Closed);
        b.failure(&s, at(0));
        assert_eq!(b.state(at(0)), State::Open);
        assert!(!b.allows(at(500)));
        assert_eq!(b.retry_in(at(400)), Duration::from_millis(600));
        assert_eq!(b.state(at(1000)), State::HalfOpen, "first open period: 1 s");
        assert!(b.allows(at(1000)), "the probe");
        assert!(!b.allows(at(1000)), "only one probe");
        b.failure(&s, at(1000));
        assert_eq!(b.state(at(1000)), State::Open, "a failed probe opens again");
        assert_eq!(b.state(at(2999)), State::Open, "for twice as long");
        assert!(b.allows(at(3000)));
        b.success(&s, at(3000));
        assert_eq!(b.state(at(3000)), State::Closed);
        assert!(b.allows(at(3000)) && b.allows(at(3000)));
    }

    #[test]
    fn backoff_doubles_up_to_open_for_and_resets_on_success() {
        let s = settings(1, Duration::from_secs(5));
        let b = CircuitBreaker::default();
        let mut t = 0;
        let mut periods = Vec::new();
        b.failure(&s, at(t));
        for _ in 0..5 {
            let open = b.retry_in(at(t)).as_millis() as u64;
            periods.push(open);
            t += open;
            assert_eq!(b.state(at(t)), State::HalfOpen);
            assert!(b.allows(at(t)));
            b.failure(&s, at(t));
        }
        assert_eq!(periods, [1000, 2000, 4000, 5000, 5000]);
        t += b.retry_in(at(t)).as_millis() as u64;
        b.success(&s, at(t));
        b.failure(&s, at(t));
        assert_eq!(b.retry_in(at(t)), FIRST_OPEN, "backoff starts over");
    }

    #[test]
    fn failures_while_open_do_not_extend_it() {
        let s = settings(1, Duration::from_secs(10));
        let b = CircuitBreaker::default();
        b.failure(&s, at(0));
        b.failure(&s, at(900));
        assert_eq!(b.state(at(1000)), State::HalfOpen);
        assert_eq!(b.last_failure(), clock::millis(at(900)));
    }

    #[test]
    fn open_for_below_one_second_caps_the_first_period() {
        let s = settings(1, Duration::from_millis(200));
        let b = CircuitBreaker::default();
        b.failure(&s, at(0));
        assert_eq!(b.retry_in(at(0)), Duration::from_millis(200));
    }

    #[test]
    fn an_error_ratio_opens_without_consecutive_failures() {
        let s = Settings {
            error_ratio: Some(0.5),
            min_requests: 10,
            ..settings(100, Duration::from_secs(10))
        };
        let b = CircuitBreaker::default();
        for _ in 0..4 {
            b.success(&s, at(0));
            b.failure(&s, at(0));
        }
        assert_eq!(
            b.state(at(0)),
            State::Closed,
            "8 requests: under min_requests"
        );
        b.success(&s, at(0));
        b.failure(&s, at(0));
        assert_eq!(b.state(at(0)), State::Open, "5 of 10 failed");
    }
}
