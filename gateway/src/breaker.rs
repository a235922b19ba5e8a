//! Circuit breaker per upstream server: opens after `consecutive_failures`
//! failures in a row (connect errors, timeouts, 5xx), stays open for
//! `open_for` (the balancer skips the server), then lets one probe through
//! (half-open): its success closes the breaker, its failure opens it again.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use crate::config::Breaker as Settings;

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn now_ms() -> u64 {
    EPOCH.elapsed().as_millis() as u64 + 1 // never 0: 0 means closed
}

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

/// One server's breaker.
#[derive(Debug, Default)]
pub struct CircuitBreaker {
    failures: AtomicU32,
    /// Start of the error-ratio window (ms since EPOCH).
    window_start: AtomicU64,
    window_total: AtomicU32,
    window_failed: AtomicU32,
    /// 0 when closed; else when the open period ends (ms since EPOCH).
    open_until: AtomicU64,
    probing: AtomicBool,
}

impl CircuitBreaker {
    /// The state now.
    pub fn state(&self) -> State {
        match self.open_until.load(Ordering::Acquire) {
            0 => State::Closed,
            until if now_ms() < until => State::Open,
            _ => State::HalfOpen,
        }
    }

    /// Whether a request may go to this server now; in half-open state only
    /// the first caller (the probe) is let through.
    pub fn allows(&self) -> bool {
        match self.state() {
            State::Closed => true,
            State::Open => false,
            State::HalfOpen => self
                .probing
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok(),
        }
    }

    /// Counts a request in the error-ratio window; returns (total, failed).
    fn count(&self, failed: bool, settings: &Settings) -> (u32, u32) {
        let now = now_ms();
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

    /// A request to this server succeeded.
    pub fn success(&self, settings: &Settings) {
        if settings.error_ratio.is_some() {
            self.count(false, settings);
        }
        self.failures.store(0, Ordering::Release);
        if self.open_until.swap(0, Ordering::AcqRel) != 0 {
            tracing::warn!("circuit closed after a successful probe");
        }
        self.probing.store(false, Ordering::Release);
    }

    /// A request to this server failed.
    pub fn failure(&self, settings: &Settings) {
        let n = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        let half_open = self.state() == State::HalfOpen;
        let ratio_tripped = settings.error_ratio.is_some_and(|ratio| {
            let (total, failed) = self.count(true, settings);
            total >= settings.min_requests && f64::from(failed) / f64::from(total) >= ratio
        });
        if half_open || ratio_tripped || n >= settings.consecutive_failures.get() {
            let until = now_ms() + settings.open_for.as_millis() as u64;
            if self.open_until.swap(until, Ordering::AcqRel) == 0 {
                tracing::warn!(failures = n, "circuit opened");
            }
            self.probing.store(false, Ordering::Release);
            // A fresh window after the open period.
            self.window_total.store(0, Ordering::Release);
            self.window_failed.store(0, Ordering::Release);
        }
    }

    /// Time until the breaker half-opens (0 when not open).
    pub fn retry_in(&self) -> Duration {
        let until = self.open_until.load(Ordering::Acquire);
        Duration::from_millis(until.saturating_sub(now_ms()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;

    #[test]
    fn opens_half_opens_and_closes() {
        let s = Settings {
            consecutive_failures: NonZeroU32::new(2).unwrap(),
            open_for: Duration::from_millis(30),
            error_ratio: None,
            window: Duration::from_secs(10),
            min_requests: 1,
        };
        let b = CircuitBreaker::default();
        b.failure(&s);
        assert_eq!(b.state(), State::Closed);
        b.failure(&s);
        assert_eq!(b.state(), State::Open);
        assert!(!b.allows());
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(b.state(), State::HalfOpen);
        assert!(b.allows(), "the probe");
        assert!(!b.allows(), "only one probe");
        b.failure(&s);
        assert_eq!(b.state(), State::Open, "a failed probe opens again");
        std::thread::sleep(Duration::from_millis(40));
        assert!(b.allows());
        b.success(&s);
        assert_eq!(b.state(), State::Closed);
        assert!(b.allows() && b.allows());
    }

    #[test]
    fn an_error_ratio_opens_without_consecutive_failures() {
        let s = Settings {
            consecutive_failures: NonZeroU32::new(100).unwrap(),
            open_for: Duration::from_secs(10),
            error_ratio: Some(0.5),
            window: Duration::from_secs(10),
            min_requests: 10,
        };
        let b = CircuitBreaker::default();
        for _ in 0..4 {
            b.success(&s);
            b.failure(&s);
        }
        assert_eq!(b.state(), State::Closed, "8 requests: under min_requests");
        b.success(&s);
        b.failure(&s);
        assert_eq!(b.state(), State::Open, "5 of 10 failed");
    }
}
