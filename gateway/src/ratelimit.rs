//! Per-client rate limits (GCRA: a sustained rate plus a burst), keyed by the
//! client address (after `trusted_proxies`) or by a request header, with a
//! bounded table of tracked clients.
//!
//! Over the limit: 429 with `Retry-After` and the `RateLimit-Policy` /
//! `RateLimit` fields of draft-ietf-httpapi-ratelimit-headers-09.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use quick_cache::sync::Cache;

use crate::config::Rate;

/// Time origin of the theoretical arrival times.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// One route's limiter.
pub struct RateLimiter {
    /// Time between two requests at the sustained rate, in nanoseconds.
    interval: u64,
    /// How far ahead of now a client's schedule may run (the burst), in nanoseconds.
    tolerance: u64,
    /// The policy as the draft writes it, e.g. `"items";q=100;w=1`.
    pub policy: String,
    /// Client key hash → theoretical arrival time (ns since EPOCH).
    clients: Cache<u64, Arc<AtomicU64>>,
    hasher: std::collections::hash_map::RandomState,
}

/// A refusal: how long until a request would pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    /// Wait before retrying.
    pub retry_after: Duration,
}

static REGISTRY: LazyLock<Mutex<HashMap<String, Arc<RateLimiter>>>> = LazyLock::new(Mutex::default);

impl RateLimiter {
    /// The limiter of route `name`, kept across reloads while its settings stay the same.
    pub fn named(name: &str, rate: &Rate) -> Arc<RateLimiter> {
        let interval = (rate.per_client.per.as_nanos() / u128::from(rate.per_client.count)) as u64;
        let tolerance = interval.saturating_mul(u64::from(rate.burst.saturating_sub(1)));
        let policy = format!(
            "\"{name}\";q={};w={}",
            rate.per_client.count,
            rate.per_client.per.as_secs().max(1)
        );
        let mut reg = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = reg.get(name) {
            if l.interval == interval
                && l.tolerance == tolerance
                && l.clients.capacity() == rate.max_clients as u64
            {
                return l.clone();
            }
        }
        let l = Arc::new(RateLimiter {
            interval: interval.max(1),
            tolerance,
            policy,
            clients: Cache::new(rate.max_clients),
            hasher: Default::default(),
        });
        reg.insert(name.to_owned(), l.clone());
        l
    }

    /// Counts one request of `client`; `Err` when it is over the limit.
    pub fn check(&self, client: &[u8]) -> Result<(), Limited> {
        let key = self.hasher.hash_one(client);
        let now = EPOCH.elapsed().as_nanos() as u64;
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
        let l = RateLimiter::named("test-gcra", &rate);
        for _ in 0..3 {
            assert!(l.check(b"a").is_ok());
        }
        let e = l.check(b"a").unwrap_err();
        assert!(e.retry_after <= Duration::from_millis(100), "{e:?}");
        assert!(l.check(b"b").is_ok(), "another client is not limited");
        assert_eq!(l.policy, r#""test-gcra";q=10;w=1"#);
    }
}
