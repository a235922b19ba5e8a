//! Adaptive concurrency limit (opt-in per upstream): AIMD on latency, in the
//! spirit of Netflix's concurrency-limits and Envoy's adaptive concurrency.
//!
//! Latencies are averaged over short windows (100 ms or 50 responses). A
//! window whose average exceeds `tolerance` × the baseline (the best recent
//! window) cuts the limit by 20 %; a window within it, with the limit at least
//! half used, raises it by one. The baseline is re-measured every 100 windows
//! so that the limit follows lasting changes of the backend's capacity. The
//! limit stays within `min`..`max` and resizes the upstream's [`Limiter`].

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::Adaptive;
use crate::limits::Limiter;

/// Window length in time and in samples.
const WINDOW: Duration = Duration::from_millis(100);
const WINDOW_SAMPLES: u32 = 50;
/// Windows between two baseline re-measurements.
const REBASELINE: u32 = 100;

/// The adaptive limit of one upstream; owned by the upstream's runtime state
/// and kept across reloads while its settings stay the same (so a reload
/// during an incident keeps the limit it has learned).
pub struct AdaptiveLimit {
    settings: Adaptive,
    limiter: Arc<Limiter>,
    state: Mutex<State>,
}

struct State {
    limit: f64,
    baseline_ms: f64,
    started: Instant,
    sum_ms: f64,
    samples: u32,
    peak_in_flight: usize,
    windows: u32,
}

impl AdaptiveLimit {
    /// Drives `limiter` within `settings`, starting at `now` from its current
    /// limit (clamped to `min..=max`).
    pub fn new(settings: Adaptive, limiter: Arc<Limiter>, now: Instant) -> AdaptiveLimit {
        let start = (limiter.max() as f64).clamp(f64::from(settings.min), f64::from(settings.max));
        limiter.resize(start as usize);
        AdaptiveLimit {
            settings,
            limiter,
            state: Mutex::new(State {
                limit: start,
                baseline_ms: 0.0,
                started: now,
                sum_ms: 0.0,
                samples: 0,
                peak_in_flight: 0,
                windows: 0,
            }),
        }
    }

    /// The settings it enforces.
    pub fn settings(&self) -> &Adaptive {
        &self.settings
    }

    /// The limiter it drives.
    pub fn limiter(&self) -> &Arc<Limiter> {
        &self.limiter
    }

    /// Records one upstream response time, measured at `now`.
    pub fn observe(&self, rtt: Duration, now: Instant) {
        let Ok(mut s) = self.state.lock() else { return };
        s.sum_ms += rtt.as_secs_f64() * 1000.0;
        s.samples += 1;
        s.peak_in_flight = s.peak_in_flight.max(self.limiter.in_flight() + 1);
        if now.saturating_duration_since(s.started) < WINDOW && s.samples < WINDOW_SAMPLES {
            return;
        }
        let avg = s.sum_ms / f64::from(s.samples);
        let used = s.peak_in_flight as f64;
        s.started = now;
        s.sum_ms = 0.0;
        s.samples = 0;
        s.peak_in_flight = 0;
        s.windows += 1;
        if s.baseline_ms == 0.0 || avg < s.baseline_ms || s.windows % REBASELINE == 0 {
            s.baseline_ms = avg;
        }
        let (min, max) = (f64::from(self.settings.min), f64::from(self.settings.max));
        if avg > self.settings.tolerance * s.baseline_ms {
            s.limit = (s.limit * 0.8).floor().max(min);
        } else if used >= s.limit * 0.5 {
            s.limit = (s.limit + 1.0).min(max);
        }
        self.limiter.resize(s.limit as usize);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn slow_windows_cut_the_limit_and_fast_ones_raise_it() {
        let settings = Adaptive {
            min: 2,
            max: 20,
            tolerance: 2.0,
        };
        let limiter = Limiter::new(20);
        let t0 = crate::clock::epoch();
        let a = AdaptiveLimit::new(settings, limiter.clone(), t0);
        let window = |n: u64, rtt_ms: u64| {
            for i in 0..WINDOW_SAMPLES {
                let now = t0 + WINDOW * n as u32 + Duration::from_micros(u64::from(i));
                a.observe(Duration::from_millis(rtt_ms), now);
            }
        };
        window(0, 10); // the baseline
        assert_eq!(limiter.max(), 20);
        window(1, 50);
        assert_eq!(limiter.max(), 16, "20 % off");
        window(2, 50);
        assert_eq!(limiter.max(), 12);
        // Fast again but barely used (in-flight 1 < half of 12): no raise.
        window(3, 10);
        assert_eq!(limiter.max(), 12);
        // A window closes by time too, with few samples.
        a.observe(Duration::from_millis(60), t0 + WINDOW * 10);
        assert_eq!(limiter.max(), 9);
        for _ in 0..20 {
            window(0, 200);
        }
        assert_eq!(limiter.max(), 2, "never below min");
    }
}
