//! Pure figures from samples: a phase's summary, what clients got during a
//! fault, the recovery time after it, and per-second series for the plots.
//! Times are milliseconds since the recorder's epoch; nothing here reads a
//! clock.

use serde::Serialize;

use crate::record::Sample;

/// A recovered window: error rate below this fraction...
pub const HEALTHY_ERROR_RATE: f64 = 0.001;
/// ...and p99 below this many milliseconds...
pub const HEALTHY_P99_MS: f64 = 500.0;
/// ...over a window this long.
pub const WINDOW_MS: u64 = 10_000;
/// Windows are tried at this step after the end of a fault.
pub const STEP_MS: u64 = 1_000;

/// Latency and errors of a phase.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Stats {
    /// Requests started in the phase.
    pub requests: u64,
    /// Requests per second over the phase.
    pub rps: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 95th percentile, ms.
    pub p95_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Transport failures, 5xx and 429.
    pub errors: u64,
    /// `errors / requests` (0 with no request).
    pub error_rate: f64,
}

/// What clients got during a fault.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct During {
    /// Requests started during the fault.
    pub requests: u64,
    /// Of those, errors.
    pub errors: u64,
    /// Of those, stale answers from the gateway's cache.
    pub stale: u64,
}

/// The slice of `samples` (sorted by start) that started in `[from, to)`.
pub fn window(samples: &[Sample], from_ms: u64, to_ms: u64) -> &[Sample] {
    let a = samples.partition_point(|s| s.start_ms < from_ms);
    let b = samples.partition_point(|s| s.start_ms < to_ms).max(a);
    &samples[a..b]
}

/// Nearest-rank percentile of sorted values (`p` in 0..=100); 0 when empty.
pub fn percentile(sorted: &[f32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    f64::from(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn sorted_latencies(samples: &[Sample]) -> Vec<f32> {
    let mut v: Vec<f32> = samples.iter().map(|s| s.latency_ms).collect();
    v.sort_by(f32::total_cmp);
    v
}

/// Summary of the requests (sorted by start) that started in `[from, to)`.
pub fn summarize(samples: &[Sample], from_ms: u64, to_ms: u64) -> Stats {
    let w = window(samples, from_ms, to_ms);
    let lat = sorted_latencies(w);
    let requests = w.len() as u64;
    let errors = w.iter().filter(|s| s.is_error()).count() as u64;
    let secs = to_ms.saturating_sub(from_ms) as f64 / 1000.0;
    Stats {
        requests,
        rps: if secs > 0.0 {
            requests as f64 / secs
        } else {
            0.0
        },
        p50_ms: percentile(&lat, 50.0),
        p95_ms: percentile(&lat, 95.0),
        p99_ms: percentile(&lat, 99.0),
        errors,
        error_rate: if requests > 0 {
            errors as f64 / requests as f64
        } else {
            0.0
        },
    }
}

/// Requests, errors and stale answers that started in `[from, to)`.
pub fn during(samples: &[Sample], from_ms: u64, to_ms: u64) -> During {
    let w = window(samples, from_ms, to_ms);
    During {
        requests: w.len() as u64,
        errors: w.iter().filter(|s| s.is_error()).count() as u64,
        stale: w.iter().filter(|s| s.stale).count() as u64,
    }
}

/// Whether a window counts as recovered: some requests, error rate below
/// 0.1 % and p99 below 0.5 s.
pub fn healthy(w: &[Sample]) -> bool {
    if w.is_empty() {
        return false;
    }
    let errors = w.iter().filter(|s| s.is_error()).count();
    let lat = sorted_latencies(w);
    (errors as f64) < HEALTHY_ERROR_RATE * w.len() as f64 && percentile(&lat, 99.0) < HEALTHY_P99_MS
}

/// Seconds from the end of a fault to the start of the first 10 s window
/// (tried every second) with error rate < 0.1 % and p99 < 0.5 s. Windows must
/// end by `horizon_ms` (the next fault or the end of the run); `None` when no
/// such window came.
pub fn recovery_s(samples: &[Sample], fault_end_ms: u64, horizon_ms: u64) -> Option<f64> {
    let mut start = fault_end_ms;
    while start + WINDOW_MS <= horizon_ms {
        if healthy(window(samples, start, start + WINDOW_MS)) {
            return Some((start - fault_end_ms) as f64 / 1000.0);
        }
        start += STEP_MS;
    }
    None
}

/// One point of a latency-over-time series.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    /// Seconds since the start of the series.
    pub t_s: f64,
    /// Requests started in the bucket, per second.
    pub rps: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Errors / requests.
    pub error_rate: f64,
}

/// Buckets of `bucket_ms` from `from_ms` to `to_ms`.
pub fn series(samples: &[Sample], from_ms: u64, to_ms: u64, bucket_ms: u64) -> Vec<Point> {
    let mut out = Vec::new();
    let mut t = from_ms;
    while t < to_ms {
        let end = (t + bucket_ms).min(to_ms);
        let s = summarize(samples, t, end);
        out.push(Point {
            t_s: (t - from_ms) as f64 / 1000.0,
            rps: s.rps,
            p50_ms: s.p50_ms,
            p99_ms: s.p99_ms,
            error_rate: s.error_rate,
        });
        t = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(start_ms: u64, latency_ms: f32, status: u16) -> Sample {
        Sample {
            start_ms,
            latency_ms,
            status,
            stale: false,
        }
    }

    /// `per_s` requests per second from `from` to `to`, each `lat` ms, status `st`.
    fn steady(from: u64, to: u64, per_s: u64, lat: f32, st: u16) -> Vec<Sample> {
        let step = 1000 / per_s;
        (from..to)
            .step_by(step as usize)
            .map(|t| s(t, lat, st))
            .collect()
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f32> = (1..=100).map(|x| x as f32).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert_eq!(percentile(&[], 99.0), 0.0);
    }

    #[test]
    fn summary_counts_only_the_phase_and_classifies_errors() {
        let mut v = steady(0, 10_000, 10, 20.0, 200); // ramp, left out
        v.extend(steady(10_000, 20_000, 10, 50.0, 200));
        v.push(s(15_000, 3000.0, 503));
        v.push(s(15_001, 10_000.0, 0));
        v.push(s(15_002, 1.0, 429));
        v.push(s(15_003, 1.0, 404));
        v.sort_by_key(|s| s.start_ms);
        let st = summarize(&v, 10_000, 20_000);
        assert_eq!(st.requests, 104);
        assert_eq!(st.errors, 3);
        assert!((st.error_rate - 3.0 / 104.0).abs() < 1e-12);
        assert!((st.rps - 10.4).abs() < 1e-9);
        assert_eq!(st.p50_ms, 50.0);
        assert_eq!(st.p99_ms, 3000.0);
        assert_eq!(summarize(&v, 30_000, 30_000), Stats::default());
    }

    #[test]
    fn during_counts_stale_answers() {
        let mut v = steady(0, 1000, 10, 5.0, 200);
        v[3].stale = true;
        v[4].status = 502;
        assert_eq!(
            during(&v, 0, 1000),
            During {
                requests: 10,
                errors: 1,
                stale: 1
            }
        );
        assert_eq!(during(&v, 0, 300).requests, 3);
    }

    #[test]
    fn recovery_is_the_first_clean_window_after_the_fault() {
        // Fault 10..20 s: errors. Slow answers until 23.5 s, then clean.
        let mut v = steady(0, 10_000, 100, 10.0, 200);
        v.extend(steady(10_000, 20_000, 100, 1.0, 502));
        v.extend(steady(20_000, 23_500, 100, 900.0, 200));
        v.extend(steady(23_500, 60_000, 100, 10.0, 200));
        assert_eq!(recovery_s(&v, 20_000, 60_000), Some(4.0));
        // Clean at once: 0.
        let v = steady(0, 60_000, 100, 10.0, 200);
        assert_eq!(recovery_s(&v, 20_000, 60_000), Some(0.0));
    }

    #[test]
    fn one_error_in_a_thousand_is_not_recovered() {
        // 100 req/s, 10 s windows = 1000 requests: one error is 0.1 %, not < 0.1 %.
        let mut v = steady(0, 40_000, 100, 10.0, 200);
        let i = v.iter().position(|x| x.start_ms == 25_000).unwrap();
        v[i].status = 0;
        // After a fault ending at 15 s, [15, 25) is clean. After one ending at
        // 16 s, the windows starting at 16..=25 s all hold the error: 26 s is first.
        assert_eq!(recovery_s(&v, 15_000, 40_000), Some(0.0));
        assert_eq!(recovery_s(&v, 16_000, 40_000), Some(10.0));
    }

    #[test]
    fn no_recovery_within_the_horizon_is_none() {
        let v = steady(0, 30_000, 100, 800.0, 200);
        assert_eq!(recovery_s(&v, 10_000, 30_000), None);
        // An empty window is not a recovery either.
        assert_eq!(recovery_s(&[], 0, 30_000), None);
        // A horizon shorter than one window: None.
        let v = steady(0, 30_000, 100, 1.0, 200);
        assert_eq!(recovery_s(&v, 25_000, 30_000), None);
    }

    #[test]
    fn series_buckets_per_second() {
        let mut v = steady(0, 2000, 10, 5.0, 200);
        v[12].status = 500;
        let p = series(&v, 0, 2000, 1000);
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].rps, 10.0);
        assert_eq!(p[0].error_rate, 0.0);
        assert!((p[1].error_rate - 0.1).abs() < 1e-12);
        assert_eq!(p[1].t_s, 1.0);
    }
}
