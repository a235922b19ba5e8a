//! Per-client rate limits (GCRA: a sustained rate plus a burst), keyed by the
//! client address (after `trusted_proxies`) or by a request header, with a
//! bounded table of tracked clients.
//!
//! Over the limit: 429 with `Retry-After` and the `RateLimit-Policy` /
//! `RateLimit` fields of draft-ietf-httpapi-ratelimit-headers-09.
//!
//! Shared limits (`rate.shared`, through `shared.redis`): Redis keeps one
//! token bucket per route and client (capacity `burst`, refilled at the
//! rate) for all instances. An instance does not ask Redis per request: it
//! leases a batch of tokens ([`lease_size`], a slice of the burst) with an
//! atomic script and spends them locally; leased tokens it has not spent
//! expire after the time the bucket takes to refill them. When Redis does not
//! answer within `shared.redis.timeout` (or its breaker is open), the local
//! limiter decides. A client Redis refused is refused locally until its
//! bucket has a token again (no round trip per refused request). Worst case across N instances, while Redis answers: the
//! bucket's own limit (burst, then the rate) plus up to N × (batch − 1)
//! tokens leased before and spent after a window starts; while it does not,
//! each instance limits alone (N × the rate).

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use pingora::cache::key::CacheHashKey;
use quick_cache::sync::Cache;

use crate::clock;
use crate::config::Rate;

/// Takes up to `want` tokens from a route's client bucket; returns
/// `{taken, ms until one token is back}`.
static LEASE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local cap = tonumber(ARGV[1])
local per_ms = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local s = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(s[1]) or cap
local at = tonumber(s[2]) or now
tokens = math.min(cap, tokens + math.max(0, now - at) * per_ms)
local got = math.min(want, math.floor(tokens))
tokens = tokens - got
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(cap / per_ms) + 1000)
local wait = 0
if got == 0 then wait = math.ceil((1 - tokens) / per_ms) end
return {got, wait}
",
    )
});

/// Tokens one lease asks for: a tenth of the burst (at least 1, at most 100).
pub fn lease_size(burst: u32) -> u32 {
    (burst / 10).clamp(1, 100)
}

/// Tokens of one client leased from Redis and not spent yet.
#[derive(Default)]
struct Lease {
    tokens: u32,
    /// When the unspent tokens expire ([`clock::nanos`]).
    expires: u64,
    /// Redis said the bucket is empty until then: refused here without asking.
    blocked_until: u64,
}

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
    /// Shared limits: tokens leased per client (same bound as `clients`).
    leases: Option<Cache<u64, Arc<Mutex<Lease>>>>,
    /// The route's name (the Redis key names it).
    route: String,
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
            leases: rate.shared.then(|| Cache::new(rate.max_clients)),
            route: name.to_owned(),
        })
    }

    /// Like [`RateLimiter::check`], for a shared limit through Redis (see
    /// the module doc): spends a leased token, or leases a batch; the local
    /// limiter decides when Redis does not answer in time.
    pub async fn check_shared(&self, client: &[u8], now: Instant) -> Result<(), Limited> {
        let (Some(leases), Some(redis)) = (&self.leases, crate::shared::get()) else {
            return self.check(client, now);
        };
        let key = self.hasher.hash_one(client);
        let lease = leases
            .get_or_insert_with(&key, || Ok::<_, ()>(Arc::default()))
            .unwrap_or_default();
        let t = clock::nanos(now);
        if let Ok(mut l) = lease.lock() {
            if l.tokens > 0 && t < l.expires {
                l.tokens -= 1;
                return Ok(());
            }
            if t < l.blocked_until {
                return Err(Limited {
                    retry_after: Duration::from_nanos(l.blocked_until - t),
                });
            }
        }
        let batch = lease_size(self.settings.burst);
        let per_ms = 1e6 / self.interval as f64;
        let bucket = redis.key(&format!("rl:{}:{}", self.route, client_id(client)));
        let cap = self.settings.burst;
        let mut inv = LEASE.key(bucket);
        inv.arg(cap).arg(per_ms).arg(batch);
        let answer = redis
            .run::<(u32, u64)>("lease", crate::shared::Request::Script(&inv))
            .await;
        match answer {
            Some((got, _)) if got > 0 => {
                if let Ok(mut l) = lease.lock() {
                    l.tokens = if t < l.expires { l.tokens } else { 0 } + got - 1;
                    // Unspent tokens last as long as the bucket takes to refill them.
                    l.expires = t + self.interval.saturating_mul(u64::from(got));
                }
                Ok(())
            }
            Some((_, wait_ms)) => {
                let retry_after = Duration::from_millis(wait_ms.max(1));
                if let Ok(mut l) = lease.lock() {
                    l.blocked_until = t + retry_after.as_nanos() as u64;
                }
                Err(Limited { retry_after })
            }
            None => self.check(client, now),
        }
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

/// A client key that is the same on every instance: its bytes in hex, or
/// for a long key (a header value) a 128-bit hash of it.
fn client_id(client: &[u8]) -> String {
    if client.len() <= 32 {
        crate::shared::hex(client)
    } else {
        let key = pingora::cache::CacheKey::new(client.to_vec(), "");
        crate::shared::hex(&key.primary_bin())
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
            shared: false,
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
