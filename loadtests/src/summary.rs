//! `summary.json`: the fixed, documented result of a scenario run (see the
//! README, "Load tests"). Field names are the contract; add, never rename.

use serde::{Deserialize, Serialize};

/// One scenario run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    /// Scenario name (`smoke`, `seed-200`, `ramp`, `faults`, `attack`).
    pub scenario: String,
    /// RFC 3339 start time (UTC).
    pub started: String,
    /// One entry per target and user count measured.
    pub targets: Vec<TargetSummary>,
    /// One entry per fault and target (`faults` only; empty otherwise).
    pub faults: Vec<FaultSummary>,
}

/// A target's steady phase at one user count.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TargetSummary {
    /// `legacy-direct`, `legacy-gateway`, `app-gateway` or `target`.
    pub name: String,
    /// Simulated users during the phase.
    pub users: usize,
    /// Length of the measured (steady) phase, seconds.
    pub duration_s: f64,
    /// Requests started in the phase.
    pub requests: u64,
    /// Requests per second.
    pub rps: f64,
    /// Latency percentiles, milliseconds (request sent to body read).
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    /// Transport failures, 5xx and 429.
    pub errors: u64,
    /// `errors / requests`, a fraction.
    pub error_rate: f64,
}

/// What clients got during one fault and how long recovery took.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FaultSummary {
    /// `app-kill`, `redis-kill`, `app-slow`, `reload` or `upgrade`.
    pub name: String,
    /// The target it was injected into.
    pub target: String,
    /// Requests that started while the fault lasted.
    pub during: DuringSummary,
    /// Seconds from the end of the fault to the start of the first 10 s window
    /// with error rate < 0.1 % and p99 < 0.5 s; `null` when none came in the run.
    pub recovery_s: Option<f64>,
}

/// Requests, errors and stale cached answers during a fault.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DuringSummary {
    pub requests: u64,
    pub errors: u64,
    pub stale: u64,
}

impl TargetSummary {
    /// From a phase's [`crate::stats::Stats`].
    pub fn new(name: &str, users: usize, duration_s: f64, s: &crate::stats::Stats) -> Self {
        TargetSummary {
            name: name.to_owned(),
            users,
            duration_s,
            requests: s.requests,
            rps: round(s.rps, 2),
            p50_ms: round(s.p50_ms, 2),
            p95_ms: round(s.p95_ms, 2),
            p99_ms: round(s.p99_ms, 2),
            errors: s.errors,
            error_rate: round(s.error_rate, 6),
        }
    }
}

/// Rounds to `digits` decimals (for readable JSON).
pub fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_json_shape_is_the_documented_one() {
        let s = Summary {
            scenario: "faults".into(),
            started: "2026-12-02T14:00:00Z".into(),
            targets: vec![TargetSummary::new(
                "app-gateway",
                200,
                120.0,
                &crate::stats::Stats {
                    requests: 10,
                    rps: 1.0 / 3.0,
                    p50_ms: 1.0,
                    p95_ms: 2.0,
                    p99_ms: 3.0,
                    errors: 1,
                    error_rate: 0.1,
                },
            )],
            faults: vec![FaultSummary {
                name: "app-kill".into(),
                target: "app-gateway".into(),
                during: DuringSummary {
                    requests: 5,
                    errors: 0,
                    stale: 3,
                },
                recovery_s: None,
            }],
        };
        let v = serde_json::to_value(&s).unwrap();
        let keys = |v: &serde_json::Value| {
            let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
            k.sort();
            k
        };
        assert_eq!(keys(&v), ["faults", "scenario", "started", "targets"]);
        assert_eq!(
            keys(&v["targets"][0]),
            [
                "duration_s",
                "error_rate",
                "errors",
                "name",
                "p50_ms",
                "p95_ms",
                "p99_ms",
                "requests",
                "rps",
                "users"
            ]
        );
        assert_eq!(v["targets"][0]["rps"], 0.33);
        assert_eq!(
            keys(&v["faults"][0]),
            ["during", "name", "recovery_s", "target"]
        );
        assert!(v["faults"][0]["recovery_s"].is_null());
        assert_eq!(
            keys(&v["faults"][0]["during"]),
            ["errors", "requests", "stale"]
        );
    }
}
