//! Per-client rate limits (GCRA: a sustained rate plus a burst), keyed by the
//! client address (after `trusted_proxies`) or by a request header, with a
//! bounded table of tracked clients.
//!
//! Over the limit: 429 with `Retry-After` and the `RateLimit-Policy` /
//! `RateLimit` fields of draft-ietf-httpapi-ratelimit-headers-09.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quick_cache::sync::Cache;

use crate::clock;
use crate::config::Rate;

/// One route's limiter; owned by the route's runtime state and kept across
/// reloads while the route's `limits.rate` stays the same.
pub struct RateLimiter {
    /// The settings it was built from.
    settings: Rate,
    /// Time between two requests at the sustained rate, in nanoseconds.
    interval: u64,
    /// How far ahead of now a client's schedule may run (the burst), in nanoseconds.
    tolerance: u64,
    /// The policy as the draft writes it, e.g. `"items";q=100;w=1`.
    pub policy: String,
    /// Client key hash → theoretical arrival time (ns since [`clock::epoch`]).
    clients: Cache<u64, Arc<AtomicU64>>,
    hasher: std::collections::hash_map::RandomState,
}

/// A refusal: how long until a request would pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    /// Wait before retrying.
    pub retry_after: Duration,
}

impl RateLimiter {
    /// The limiter of route `name`.
    pub fn new(name: &str, rate: &Rate) -> Arc<RateLimiter> {
        let interval = (rate.per_client.per.as_nanos() / u128::from(rate.per_client.count)) as u64;
        let tolerance = interval.saturating_mul(u64::from(rate.burst.saturating_sub(1)));
        let policy = format!(
            "\"{name}\";q={};w={}",
            rate.per_client.count,
            rate.per_client.per.as_secs().max(1)
        );
        Arc::new(RateLimiter {
            settings: rate.clone(),
            interval: interval.max(1),
            tolerance,
            policy,
            clients: Cache::new(rate.max_clients),
            hasher: Default::default(),
        })
    }

    /// Whether this limiter enforces `rate` (then a reload keeps it, and the
    /// clients it tracks).
    pub fn enforces(&self, rate: &Rate) -> bool {
        self.settings == *rate
    }

    /// Counts one request of `client` at `now`; `Err` when it is over the limit.
    pub fn check(&self, client: &[u8], now: Instant) -> Result<(), Limited> {
        let key = self.hasher.hash_one(client);
        let now = clock::nanos(now);
        let tat = self
            .clients
            .get_or_insert_with(&key, || Ok::<_, ()>(Arc::new(AtomicU64::new(now))))
            .unwrap_or_else(|_| Arc::new(AtomicU64::new(now)));
        let mut current = tat.load(Ordering::Acquire);
        loop {
            let start = current.max(now);
            if start - now > self.tolerance {
                return Err(Limited {
                    retry_after: Duration::from_nanos(start - now - self.tolerance),
                });
            }
            match tat.compare_exchange_weak(
                current,
                start + self.interval,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(()),
                Err(seen) => current = seen,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::raw::RateSpec;

    #[test]
    fn burst_then_sustained_rate_per_client() {
        let rate = Rate {
            per_client: RateSpec {
                count: 10,
                per: Duration::from_secs(1),
            },
            burst: 3,
            key_header: None,
            max_clients: 100,
        };
        let l = RateLimiter::new("test-gcra", &rate);
        let t0 = clock::epoch() + Duration::from_secs(1);
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        for _ in 0..3 {
            assert!(l.check(b"a", t0).is_ok());
        }
        let e = l.check(b"a", t0).unwrap_err();
        assert_eq!(e.retry_after, Duration::from_millis(100), "{e:?}");
        assert!(l.check(b"b", t0).is_ok(), "another client is not limited");
        assert!(l.check(b"a", at(99)).is_err());
        assert!(l.check(b"a", at(100)).is_ok(), "one more after 1/rate");
        assert!(l.check(b"a", at(100)).is_err());
        assert!(l.check(b"a", at(500)).is_ok());
        assert!(l.check(b"a", at(500)).is_ok());
        assert!(l.check(b"a", at(500)).is_ok(), "the burst refilled");
        assert!(l.check(b"a", at(500)).is_err());
        assert!(l.enforces(&rate));
        assert_eq!(l.policy, r#""test-gcra";q=10;w=1"#);
    }
}
