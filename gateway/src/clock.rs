//! Time as the gateway's logic sees it.
//!
//! Logic that depends on time (breakers, rate limits, adaptive limits, cache
//! freshness) takes the current [`Instant`] as an argument instead of reading
//! the clock itself, so that its behaviour is unit-tested with made-up times
//! (`clock::epoch() + Duration::from_secs(3)`) instead of sleeps. Atomics that
//! store a time store it as a count since [`epoch`].

use std::sync::LazyLock;
use std::time::{Duration, Instant};

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// The process's time origin (fixed on first use): tests build instants from it.
#[cfg(test)]
pub fn epoch() -> Instant {
    *EPOCH
}

/// Time from [`epoch`] to `at` (zero for instants before it).
pub fn since_epoch(at: Instant) -> Duration {
    at.saturating_duration_since(*EPOCH)
}

/// Milliseconds from [`epoch`] to `at`, plus one: never 0, so that 0 can mean "unset".
pub fn millis(at: Instant) -> u64 {
    since_epoch(at).as_millis() as u64 + 1
}

/// Nanoseconds from [`epoch`] to `at`.
pub fn nanos(at: Instant) -> u64 {
    since_epoch(at).as_nanos() as u64
}
