//! Every request a simulated user makes, as one [`Sample`], and what counts as
//! an error.
//!
//! goose aggregates its own metrics (and the HTML report) per request name;
//! the windows this tool needs (recovery time, latency over time, the steady
//! phase only) need the individual requests, so the user scenarios record each
//! one here as well. Samples are kept in memory (about 24 bytes each) and
//! taken out by the scenario that ran the attack.

use std::sync::{Mutex, OnceLock};
use std::time::Instant;

/// One finished request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// When it was sent, milliseconds since [`epoch`].
    pub start_ms: u64,
    /// From sending to the whole body read, milliseconds.
    pub latency_ms: f32,
    /// HTTP status; 0 for a transport failure (refused, reset, timed out).
    pub status: u16,
    /// The gateway answered from a stale cache entry (`X-Cache: STALE`).
    pub stale: bool,
}

impl Sample {
    /// Whether this request failed from the client's point of view.
    pub fn is_error(&self) -> bool {
        is_error(self.status)
    }
}

/// An error is a transport failure (status 0), a 5xx or a 429. A 4xx other
/// than 429 is an answer the application meant (401, 404, 409...), and a 304
/// is a success.
pub fn is_error(status: u16) -> bool {
    status == 0 || status == 429 || status >= 500
}

static EPOCH: OnceLock<Instant> = OnceLock::new();
static SAMPLES: Mutex<Vec<Sample>> = Mutex::new(Vec::new());

/// The instant all sample times count from (set on first use).
pub fn epoch() -> Instant {
    *EPOCH.get_or_init(Instant::now)
}

/// Milliseconds since [`epoch`].
pub fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64
}

/// Records one request.
pub fn record(sample: Sample) {
    if let Ok(mut v) = SAMPLES.lock() {
        v.push(sample);
    }
}

/// Requests recorded so far (without taking them).
pub fn count() -> usize {
    SAMPLES.lock().map(|v| v.len()).unwrap_or(0)
}

/// A copy of the samples that started at or after `from_ms`, for progress lines.
pub fn since(from_ms: u64) -> Vec<Sample> {
    SAMPLES
        .lock()
        .map(|v| {
            v.iter()
                .filter(|s| s.start_ms >= from_ms)
                .copied()
                .collect()
        })
        .unwrap_or_default()
}

/// Takes every sample recorded so far, sorted by start time.
pub fn take() -> Vec<Sample> {
    let mut v = SAMPLES
        .lock()
        .map(|mut v| std::mem::take(&mut *v))
        .unwrap_or_default();
    v.sort_by_key(|s| s.start_ms);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_transport_failures_5xx_and_429() {
        for s in [0, 429, 500, 502, 503, 504] {
            assert!(is_error(s), "{s}");
        }
        for s in [200, 201, 202, 204, 304, 400, 401, 403, 404, 409, 413, 422] {
            assert!(!is_error(s), "{s}");
        }
    }
}
