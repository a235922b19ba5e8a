//! Prometheus metrics of the gateway, registered once in the default registry.
//!
//! Labels are bounded: `route` is a configured route name (or `none`), `status`
//! a class (`1xx`..`5xx`), `kind` a [`crate::error::GatewayError::kind`]. Hot-path
//! recording goes through handles resolved when a config snapshot is built.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;

use crate::outcome::CacheOutcome;
use prometheus::{
    register_histogram_vec, register_int_counter, register_int_counter_vec, register_int_gauge,
    register_int_gauge_vec, Encoder, Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, TextEncoder,
};

/// Latency buckets for a proxy: 100 µs to 30 s.
pub const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

static REQUEST_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "gateway_request_duration_seconds",
        "Whole request duration, by route, status class and cache outcome.",
        &["route", "status", "cache"],
        BUCKETS.to_vec()
    )
    .expect("metric registers once")
});

static UPSTREAM_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "gateway_upstream_duration_seconds",
        "Time from sending a request upstream to its response header, by upstream.",
        &["upstream"],
        BUCKETS.to_vec()
    )
    .expect("metric registers once")
});

static QUEUE_WAIT: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "gateway_queue_wait_seconds",
        "Time spent waiting for a concurrency slot, by route.",
        &["route"],
        BUCKETS.to_vec()
    )
    .expect("metric registers once")
});

/// The upstream duration histogram of `upstream` (resolve once per pool).
pub fn upstream_duration(upstream: &str) -> Histogram {
    UPSTREAM_DURATION.with_label_values(&[upstream])
}

/// The `route` label of requests that matched no route.
pub const NO_ROUTE: &str = "none";

static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "gateway_requests_total",
        "Requests answered, by route, method, status class and cache outcome.",
        &["route", "method", "status", "cache"]
    )
    .expect("metric registers once")
});

/// The `method` label: a fixed set, anything else is `other`.
const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other",
];
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn method_index(m: &http::Method) -> usize {
    METHODS[..7]
        .iter()
        .position(|x| *x == m.as_str())
        .unwrap_or(7)
}

static ERRORS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "gateway_errors_total",
        "Responses the gateway made itself instead of the upstream's, by kind.",
        &["route", "kind"]
    )
    .expect("metric registers once")
});

static HEALTH_CHANGES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "gateway_upstream_health_changes_total",
        "Upstream servers that changed health state, by upstream and new state.",
        &["upstream", "state"]
    )
    .expect("metric registers once")
});

static UPSTREAM_ERRORS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "gateway_upstream_errors_total",
        "Failed attempts to reach an upstream, by upstream and kind (connect, ...).",
        &["upstream", "kind"]
    )
    .expect("metric registers once")
});

static CONNECTIONS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "gateway_downstream_connections",
        "Client connections open now."
    )
    .expect("metric registers once")
});

static CONNECTIONS_REJECTED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "gateway_downstream_connections_rejected_total",
        "Client connections closed at once because client.max_connections were open."
    )
    .expect("metric registers once")
});

static HEADER_TIMEOUTS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "gateway_request_header_timeouts_total",
        "Connections closed because a request header did not complete within client.header_timeout."
    )
    .expect("metric registers once")
});

static RELOADS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "gateway_config_reloads_total",
        "Configuration reloads (SIGHUP), by result (success, failure).",
        &["result"]
    )
    .expect("metric registers once")
});

static ACME_RENEWALS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "gateway_acme_renewals_total",
        "ACME certificate orders, by result (ok, unreachable, rate_limited, validation, storage, refused).",
        &["result"]
    )
    .expect("metric registers once")
});

static CERT_EXPIRY: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "gateway_tls_certificate_expiry_seconds",
        "Seconds until the certificate serving a name expires.",
        &["name"]
    )
    .expect("metric registers once")
});

static RELOAD_OK: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "gateway_config_last_reload_successful",
        "1 when the last reload was applied (or none happened yet), 0 when it was refused."
    )
    .expect("metric registers once")
});

static SHED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "gateway_shed_total",
        "Requests refused by a concurrency limit, by route and reason.",
        &["route", "reason"]
    )
    .expect("metric registers once")
});

static LIMIT_INFLIGHT: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "gateway_inflight_requests",
        "Requests holding a slot of a concurrency limit (route:<name> or upstream:<name>).",
        &["limiter"]
    )
    .expect("metric registers once")
});

static LIMIT_QUEUE: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "gateway_queue_depth",
        "Requests waiting for a slot, by limiter.",
        &["limiter"]
    )
    .expect("metric registers once")
});

static LIMIT_MAX: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "gateway_concurrency_limit",
        "The current concurrency limit, by limiter.",
        &["limiter"]
    )
    .expect("metric registers once")
});

static RATE_LIMITED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "gateway_rate_limited_total",
        "Requests refused with 429 by a route's rate limit.",
        &["route"]
    )
    .expect("metric registers once")
});

static CACHE_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "gateway_cache_requests_total",
        "Requests on caching routes, by route and cache outcome.",
        &["route", "cache"]
    )
    .expect("metric registers once")
});

static CACHE_INVALID_TARGETED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "gateway_cache_invalid_targeted_total",
        "Targeted cache-control fields (CDN-Cache-Control, cache.targeted_field) ignored \
         because they are not valid (RFC 9213 §2.1), by route.",
        &["route"]
    )
    .expect("metric registers once")
});

static CACHE_STORES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "gateway_cache_stores_total",
        "Responses written to the cache."
    )
    .expect("metric registers once")
});

static CACHE_EVICTIONS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "gateway_cache_evictions_total",
        "Entries evicted to keep the cache under cache.max_size."
    )
    .expect("metric registers once")
});

static CACHE_INVALIDATIONS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "gateway_cache_invalidations_total",
        "Stored responses removed because an unsafe method succeeded on their URI."
    )
    .expect("metric registers once")
});

static CACHE_COLLAPSED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "gateway_cache_collapsed_total",
        "Requests answered from an entry another request filled while they waited."
    )
    .expect("metric registers once")
});

static CACHE_PURGES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "gateway_cache_purged_total",
        "Entries removed or expired by purges (admin or PURGE)."
    )
    .expect("metric registers once")
});

static CACHE_ENTRIES: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!("gateway_cache_entries", "Responses stored now.")
        .expect("metric registers once")
});

static CACHE_BYTES: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "gateway_cache_bytes",
        "Bytes accounted by the cache now (bodies, headers, per-entry overhead)."
    )
    .expect("metric registers once")
});

static CACHE_CAPACITY: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!("gateway_cache_capacity_bytes", "cache.max_size.")
        .expect("metric registers once")
});

static ACCESS_LOG_DROPPED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "gateway_access_log_dropped_total",
        "Access-log lines dropped because the writer fell behind."
    )
    .expect("metric registers once")
});

static SERVER_UP: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "gateway_upstream_server_up",
        "1 when the health checks see the server healthy, else 0.",
        &["upstream", "server"]
    )
    .expect("metric registers once")
});

static BREAKER_STATE: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "gateway_upstream_breaker_state",
        "1 for the breaker's current state (closed, open, half_open), 0 for the others.",
        &["upstream", "server", "state"]
    )
    .expect("metric registers once")
});

/// Gauges that mirror the running snapshot (limits, server health, breaker
/// states): cleared before each scrape publishes them again, so that removed
/// routes, upstreams and servers leave no series behind.
pub fn clear_published() {
    SERVER_UP.reset();
    BREAKER_STATE.reset();
    LIMIT_MAX.reset();
    LIMIT_INFLIGHT.reset();
    LIMIT_QUEUE.reset();
}

/// Publishes one server's health and breaker state (`closed`, `open`,
/// `half_open` or `overridden`).
pub fn publish_server(upstream: &str, server: &str, healthy: bool, breaker: Option<&str>) {
    SERVER_UP
        .with_label_values(&[upstream, server])
        .set(i64::from(healthy));
    if let Some(state) = breaker {
        for st in ["closed", "open", "half_open", "overridden"] {
            BREAKER_STATE
                .with_label_values(&[upstream, server, st])
                .set(i64::from(st == state));
        }
    }
}

/// Publishes one concurrency limiter's limit, in-flight count and queue depth.
pub fn publish_limiter(name: &str, limit: usize, in_flight: usize, queued: usize) {
    LIMIT_MAX.with_label_values(&[name]).set(limit as i64);
    LIMIT_INFLIGHT
        .with_label_values(&[name])
        .set(in_flight as i64);
    LIMIT_QUEUE.with_label_values(&[name]).set(queued as i64);
}

/// Publishes the cache's size gauges.
pub fn publish_cache(entries: u64, bytes: u64, capacity: u64) {
    CACHE_ENTRIES.set(entries as i64);
    CACHE_BYTES.set(bytes as i64);
    CACHE_CAPACITY.set(capacity as i64);
}

/// Removes every series of `vec` whose `label` is `value`.
fn remove_series<T: prometheus::core::MetricVecBuilder>(
    vec: &prometheus::core::MetricVec<T>,
    label: &str,
    value: &str,
) {
    use prometheus::core::Collector;
    for fam in vec.collect() {
        for m in fam.get_metric() {
            let labels: std::collections::HashMap<&str, &str> = m
                .get_label()
                .iter()
                .map(|l| (l.name(), l.value()))
                .collect();
            if labels.get(label) == Some(&value) {
                let _ = vec.remove(&labels);
            }
        }
    }
}

/// Drops the series of an upstream that the configuration no longer names.
pub fn retire_upstream(name: &str) {
    remove_series(&UPSTREAM_DURATION, "upstream", name);
    remove_series(&UPSTREAM_ERRORS, "upstream", name);
    remove_series(&HEALTH_CHANGES, "upstream", name);
}

static BUILD_INFO: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    let g = register_int_gauge_vec!("gateway_build_info", "Build information.", &["version"])
        .expect("metric registers once");
    g.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
    g
});

/// Metric handles of one route, resolved once per snapshot.
pub struct RouteMetrics {
    name: String,
    /// Request counters by method × status class × cache outcome, each
    /// resolved on first use (so only seen combinations are exported) and
    /// then recorded without allocation.
    requests: Box<[std::sync::OnceLock<IntCounter>]>,
    by_cache: [std::sync::OnceLock<IntCounter>; 7],
    /// Duration histograms by status class (5) × cache outcome (7 + none),
    /// each resolved on first use.
    durations: Box<[std::sync::OnceLock<Histogram>]>,
    queue_wait: std::sync::OnceLock<Histogram>,
}

impl RouteMetrics {
    /// Resolves the handles for route `name`.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            requests: (0..METHODS.len() * CLASSES.len() * 8)
                .map(|_| std::sync::OnceLock::new())
                .collect(),
            by_cache: Default::default(),
            durations: (0..CLASSES.len() * 8)
                .map(|_| std::sync::OnceLock::new())
                .collect(),
            queue_wait: std::sync::OnceLock::new(),
        }
    }

    /// Drops every series of this route (it left the configuration).
    pub fn retire(&self) {
        remove_series(&REQUESTS, "route", &self.name);
        remove_series(&REQUEST_DURATION, "route", &self.name);
        remove_series(&QUEUE_WAIT, "route", &self.name);
        remove_series(&ERRORS, "route", &self.name);
        remove_series(&SHED, "route", &self.name);
        remove_series(&RATE_LIMITED, "route", &self.name);
        remove_series(&CACHE_REQUESTS, "route", &self.name);
        remove_series(&CACHE_INVALID_TARGETED, "route", &self.name);
    }

    /// Counts targeted cache-control fields ignored as invalid.
    pub fn invalid_targeted(&self, n: u8) {
        CACHE_INVALID_TARGETED
            .with_label_values(&[&self.name])
            .inc_by(u64::from(n));
    }

    /// Records a finished request's duration.
    pub fn duration(&self, status: u16, cache: Option<CacheOutcome>, seconds: f64) {
        ALL_DURATIONS.observe(seconds);
        let class = (status / 100).clamp(1, 5) as usize - 1;
        let outcome = cache.map_or(7, |c| c as usize);
        self.durations[class * 8 + outcome]
            .get_or_init(|| {
                let label = cache.map_or("none", |c| c.label());
                REQUEST_DURATION.with_label_values(&[&self.name, CLASSES[class], label])
            })
            .observe(seconds);
    }

    /// Records a wait for a concurrency slot.
    pub fn queue_wait(&self, seconds: f64) {
        self.queue_wait
            .get_or_init(|| QUEUE_WAIT.with_label_values(&[&self.name]))
            .observe(seconds);
    }

    /// Counts a rate-limited request.
    pub fn rate_limited(&self) {
        RATE_LIMITED.with_label_values(&[&self.name]).inc();
    }

    /// Counts a shed request.
    pub fn shed(&self, reason: &str) {
        SHED.with_label_values(&[&self.name, reason]).inc();
    }

    /// Counts one request's cache outcome.
    pub fn cache(&self, outcome: CacheOutcome) {
        OUTCOME_TOTALS[outcome as usize].fetch_add(1, Ordering::Relaxed);
        self.by_cache[outcome as usize]
            .get_or_init(|| CACHE_REQUESTS.with_label_values(&[&self.name, outcome.label()]))
            .inc();
    }

    /// Counts one answered request.
    pub fn request(&self, method: &http::Method, status: u16, cache: Option<CacheOutcome>) {
        let (m, c) = (
            method_index(method),
            (status / 100).clamp(1, 5) as usize - 1,
        );
        CLASS_TOTALS[c].fetch_add(1, Ordering::Relaxed);
        let o = cache.map_or(7, |o| o as usize);
        let i = (m * CLASSES.len() + c) * 8 + o;
        self.requests[i]
            .get_or_init(|| {
                let outcome = cache.map_or("none", |o| o.label());
                REQUESTS.with_label_values(&[&self.name, METHODS[m], CLASSES[c], outcome])
            })
            .inc();
    }

    /// Counts one response the gateway made itself.
    pub fn error(&self, kind: &str) {
        ERRORS.with_label_values(&[&self.name, kind]).inc();
    }
}

/// Handles for requests that matched no route.
pub static UNROUTED: LazyLock<RouteMetrics> = LazyLock::new(|| RouteMetrics::new(NO_ROUTE));

/// Counts a server that became `healthy` or `unhealthy`.
pub fn health_change(upstream: &str, state: &str) {
    HEALTH_CHANGES.with_label_values(&[upstream, state]).inc();
}

/// Counts a failed attempt to reach `upstream` (`kind`: `connect`, ...).
pub fn upstream_error(upstream: &str, kind: &str) {
    UPSTREAM_ERRORS.with_label_values(&[upstream, kind]).inc();
}

/// Publishes the number of open client connections (owned by the server state).
pub fn publish_connections(open: usize) {
    CONNECTIONS.set(open as i64);
}

/// One ACME order finished with `result` (`ok` or a failure cause).
pub fn acme_renewal(result: &str) {
    ACME_RENEWALS.with_label_values(&[result]).inc();
}

/// The certificate for `names` has `left` before it expires.
pub fn tls_certificate_expiry(names: &[String], left: std::time::Duration) {
    for n in names {
        CERT_EXPIRY
            .with_label_values(&[n.as_str()])
            .set(left.as_secs() as i64);
    }
}

/// Counts a reload attempt.
pub fn reload(ok: bool) {
    RELOADS
        .with_label_values(&[if ok { "success" } else { "failure" }])
        .inc();
    RELOAD_OK.set(i64::from(ok));
}

/// Counts a connection turned away by `client.max_connections`.
pub fn connection_rejected() {
    CONNECTIONS_REJECTED.inc();
}

static REUSE_MISSED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "gateway_upstream_reuse_missed_total",
        "Idle pooled upstream connections that could not be reused at once (a new one was opened)."
    )
    .expect("metric registers once")
});

static CLIENT_GONE: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "gateway_client_gone_total",
        "Clients that closed the connection before the answer was complete, by phase.",
        &["phase"]
    )
    .expect("metric registers once")
});

/// Counts a pooled upstream connection that could not be reused.
pub fn upstream_reuse_missed() {
    REUSE_MISSED.inc();
}

/// Counts a client that left before its answer was complete.
pub fn client_gone(phase: &'static str) {
    CLIENT_GONE.with_label_values(&[phase]).inc();
}

/// Counts a request Pingora could not parse (answered with a JSON 400).
pub fn malformed_request() {
    ERRORS
        .with_label_values(&[NO_ROUTE, "malformed_request"])
        .inc();
}

/// Counts a request header that missed `client.header_timeout`.
pub fn header_timeout() {
    HEADER_TIMEOUTS.inc();
}

/// Counts a response written to the cache.
pub fn cache_store() {
    CACHE_STORES.inc();
}

/// Counts stored responses removed by an unsafe method.
pub fn cache_invalidated(n: usize) {
    CACHE_INVALIDATIONS.inc_by(n as u64);
}

/// Counts a request that waited for another to fill its entry.
pub fn cache_collapsed() {
    CACHE_COLLAPSED.inc();
}

/// Counts entries touched by a purge.
pub fn cache_purged(n: usize) {
    CACHE_PURGES.inc_by(n as u64);
}

/// Requests by cache outcome, all routes together (indexed by `CacheOutcome as usize`).
static OUTCOME_TOTALS: [AtomicU64; 7] = [const { AtomicU64::new(0) }; 7];
/// Answered requests by status class (`1xx`..`5xx`), all routes together.
static CLASS_TOTALS: [AtomicU64; 5] = [const { AtomicU64::new(0) }; 5];
/// Request durations of all routes together, for `/stats` percentiles
/// (not exported: the per-route histograms are).
static ALL_DURATIONS: LazyLock<Histogram> = LazyLock::new(|| {
    Histogram::with_opts(
        prometheus::HistogramOpts::new("all_requests", "all request durations")
            .buckets(BUCKETS.to_vec()),
    )
    .expect("valid buckets")
});

/// The cache's counters since start, for `/cache/stats` and `/stats`.
#[derive(Debug, Clone, Copy, Default)]
pub struct CacheTotals {
    /// Requests by outcome (indexed by `CacheOutcome as usize`).
    pub outcomes: [u64; 7],
    /// Responses written to the cache.
    pub stores: u64,
    /// Entries evicted for space.
    pub evictions: u64,
    /// Requests answered from an entry another request filled.
    pub collapsed: u64,
    /// Entries removed or expired by purges.
    pub purged: u64,
    /// Entries removed by unsafe methods.
    pub invalidations: u64,
}

impl CacheTotals {
    /// The counters now.
    pub fn now() -> Self {
        Self {
            outcomes: std::array::from_fn(|i| OUTCOME_TOTALS[i].load(Ordering::Relaxed)),
            stores: CACHE_STORES.get(),
            evictions: CACHE_EVICTIONS.get(),
            collapsed: CACHE_COLLAPSED.get(),
            purged: CACHE_PURGES.get(),
            invalidations: CACHE_INVALIDATIONS.get(),
        }
    }

    /// Requests with this outcome.
    pub fn outcome(&self, o: CacheOutcome) -> u64 {
        self.outcomes[o as usize]
    }

    /// Hits over lookups (everything that consulted the cache but bypasses).
    pub fn hit_ratio(&self) -> f64 {
        let lookups: u64 = CacheOutcome::ALL
            .iter()
            .filter(|o| **o != CacheOutcome::Bypass)
            .map(|o| self.outcome(*o))
            .sum();
        if lookups > 0 {
            self.outcome(CacheOutcome::Hit) as f64 / lookups as f64
        } else {
            0.0
        }
    }
}

/// Counts a dropped access-log line.
pub fn access_log_dropped() {
    ACCESS_LOG_DROPPED.inc();
}

static STARTED: LazyLock<std::time::Instant> = LazyLock::new(std::time::Instant::now);

/// Traffic since start, for `GET /stats`.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Seconds since start (at least 1).
    pub uptime_seconds: f64,
    /// Requests answered.
    pub requests: u64,
    /// Requests answered by status class, classes seen only.
    pub by_status: std::collections::BTreeMap<&'static str, u64>,
    /// Median request duration in ms (interpolated in its histogram bucket).
    pub p50_ms: Option<f64>,
    /// 99th percentile request duration in ms.
    pub p99_ms: Option<f64>,
    /// Milliseconds since start (the clock a client derives rates from).
    pub uptime_ms: u64,
    /// The all-routes duration histogram: (upper bound in ms, cumulative count)
    /// per bucket of [`BUCKETS`]; requests above the last bound are only in
    /// `requests`. A client subtracts two of these to get the percentiles of
    /// the requests in between (the status page does).
    pub buckets_ms: Vec<(f64, u64)>,
    /// Requests in the duration histogram (the `+Inf` bucket).
    pub duration_count: u64,
}

/// The traffic summary now.
pub fn summary() -> Summary {
    let by_status = CLASSES
        .iter()
        .zip(&CLASS_TOTALS)
        .map(|(c, n)| (*c, n.load(Ordering::Relaxed)))
        .filter(|(_, n)| *n > 0)
        .collect();
    let h = prometheus::core::Metric::metric(&*ALL_DURATIONS);
    let raw: Vec<(f64, u64)> = h
        .get_histogram()
        .get_bucket()
        .iter()
        .map(|b| (b.upper_bound(), b.cumulative_count()))
        .collect();
    let buckets: Vec<(f64, f64)> = raw.iter().map(|&(u, c)| (u, c as f64)).collect();
    let count = h.get_histogram().get_sample_count() as f64;
    let quantile = |q: f64| -> Option<f64> {
        if count == 0.0 {
            return None;
        }
        let rank = q * count;
        let (mut lower, mut below) = (0.0, 0.0);
        for &(upper, cum) in &buckets {
            if cum >= rank {
                let frac = if cum > below {
                    (rank - below) / (cum - below)
                } else {
                    1.0
                };
                return Some((lower + (upper - lower) * frac) * 1000.0);
            }
            lower = upper;
            below = cum;
        }
        Some(lower * 1000.0)
    };
    let uptime = STARTED.elapsed();
    Summary {
        uptime_seconds: uptime.as_secs_f64().max(1.0),
        uptime_ms: uptime.as_millis() as u64,
        buckets_ms: raw
            .iter()
            .map(|&(u, c)| ((u * 1e6).round() / 1e3, c))
            .collect(),
        duration_count: count as u64,
        requests: CLASS_TOTALS.iter().map(|n| n.load(Ordering::Relaxed)).sum(),
        by_status,
        p50_ms: quantile(0.5),
        p99_ms: quantile(0.99),
    }
}

/// Counts an eviction.
pub fn cache_eviction() {
    CACHE_EVICTIONS.inc();
}

/// Registers everything so that the first scrape already lists every family.
pub fn init() {
    LazyLock::force(&STARTED);
    LazyLock::force(&REQUESTS);
    LazyLock::force(&ERRORS);
    LazyLock::force(&HEALTH_CHANGES);
    LazyLock::force(&UPSTREAM_ERRORS);
    LazyLock::force(&CONNECTIONS);
    LazyLock::force(&CONNECTIONS_REJECTED);
    LazyLock::force(&HEADER_TIMEOUTS);
    LazyLock::force(&RELOADS);
    LazyLock::force(&CACHE_REQUESTS);
    LazyLock::force(&SHED);
    LazyLock::force(&RATE_LIMITED);
    LazyLock::force(&CACHE_STORES);
    LazyLock::force(&CACHE_EVICTIONS);
    LazyLock::force(&CACHE_INVALIDATIONS);
    LazyLock::force(&CACHE_COLLAPSED);
    LazyLock::force(&CACHE_PURGES);
    LazyLock::force(&ACCESS_LOG_DROPPED);
    LazyLock::force(&REUSE_MISSED);
    LazyLock::force(&CLIENT_GONE);
    LazyLock::force(&REQUEST_DURATION);
    LazyLock::force(&UPSTREAM_DURATION);
    LazyLock::force(&QUEUE_WAIT);
    LazyLock::force(&TLS_HANDSHAKES);
    LazyLock::force(&PROTOCOL_HANDLES);
    LazyLock::force(&HTTPS_REDIRECTS);
    LazyLock::force(&COMPRESSED);
    LazyLock::force(&COMPRESSION_BYTES);
    static PROCESS: std::sync::Once = std::sync::Once::new();
    PROCESS.call_once(|| {
        let pc = prometheus::process_collector::ProcessCollector::for_self();
        let _ = prometheus::register(Box::new(pc));
    });
    LazyLock::force(&CACHE_ENTRIES);
    LazyLock::force(&CACHE_BYTES);
    LazyLock::force(&CACHE_CAPACITY);
    RELOAD_OK.set(1);
    LazyLock::force(&BUILD_INFO);
    LazyLock::force(&UNROUTED);
}

static TLS_HANDSHAKES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "gateway_tls_handshakes_total",
        "TLS handshakes on the tls.listen listeners, by result (ok, timeout, failed).",
        &["result"]
    )
    .expect("metric registers once")
});

/// Counts a TLS handshake by result (`ok`, `timeout`, `failed`).
pub fn tls_handshake(result: &'static str) {
    TLS_HANDSHAKES.with_label_values(&[result]).inc();
}

static PROTOCOL_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "gateway_requests_by_protocol_total",
        "Requests answered, by client protocol (http/1.0, http/1.1, h2) and transport (tcp, tls).",
        &["protocol", "transport"]
    )
    .expect("metric registers once")
});

/// One handle per (protocol, transport) pair, resolved once.
static PROTOCOL_HANDLES: LazyLock<[[IntCounter; 2]; 3]> = LazyLock::new(|| {
    ["http/1.0", "http/1.1", "h2"]
        .map(|p| ["tcp", "tls"].map(|t| PROTOCOL_REQUESTS.with_label_values(&[p, t])))
});

/// Counts an answered request by its HTTP version and whether it came over TLS.
pub fn request_protocol(version: http::Version, tls: bool) {
    let p = match version {
        http::Version::HTTP_2 => 2,
        http::Version::HTTP_10 | http::Version::HTTP_09 => 0,
        _ => 1,
    };
    PROTOCOL_HANDLES[p][usize::from(tls)].inc();
}

static HTTPS_REDIRECTS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "gateway_https_redirects_total",
        "Plain-HTTP requests answered with a 308 to HTTPS (tls.redirect_http)."
    )
    .expect("metric registers once")
});

/// Counts a 308 to HTTPS.
pub fn https_redirect() {
    HTTPS_REDIRECTS.inc();
}

static COMPRESSED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "gateway_compressed_responses_total",
        "Responses compressed on the way out, by content coding (br, gzip, zstd).",
        &["encoding"]
    )
    .expect("metric registers once")
});

static COMPRESSION_BYTES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "gateway_compression_bytes_total",
        "Body bytes into (in) and out of (out) the compressors, by content coding.",
        &["encoding", "direction"]
    )
    .expect("metric registers once")
});

/// Counts a finished compressed response and its bytes before and after.
pub fn compressed(encoding: &'static str, bytes_in: usize, bytes_out: usize) {
    COMPRESSED.with_label_values(&[encoding]).inc();
    COMPRESSION_BYTES
        .with_label_values(&[encoding, "in"])
        .inc_by(bytes_in as u64);
    COMPRESSION_BYTES
        .with_label_values(&[encoding, "out"])
        .inc_by(bytes_out as u64);
}

/// The default registry in Prometheus text format.
pub fn render() -> Vec<u8> {
    let mut buf = Vec::with_capacity(16 * 1024);
    // Encoding into a Vec cannot fail on I/O; a metric family error would be a bug.
    let _ = TextEncoder::new().encode(&prometheus::gather(), &mut buf);
    buf
}

// The shared tier (Redis): see `crate::shared`.

static SHARED_CALLS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "gateway_shared_redis_calls_total",
        "Calls to the shared Redis, by operation (lookup, store, purge, publish, lease) \
         and result (ok, error, timeout, skipped: breaker open).",
        &["op", "result"]
    )
    .expect("metric registers once")
});

static SHARED_STATE: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "gateway_shared_redis_state",
        "1 for the shared Redis breaker's current state (closed, open, half_open), 0 for the others.",
        &["state"]
    )
    .expect("metric registers once")
});

static SHARED_CHANNEL_UP: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "gateway_shared_channel_up",
        "1 while this instance is subscribed to the shared purge channel."
    )
    .expect("metric registers once")
});

static SHARED_LOOKUPS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "gateway_shared_cache_lookups_total",
        "Memory misses looked up in the shared tier, by result (hit, stale: soft-purged, \
         miss, purged: an older generation).",
        &["result"]
    )
    .expect("metric registers once")
});

static SHARED_PURGES_APPLIED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "gateway_shared_purges_received_total",
        "Purges and invalidations received from other instances over the channel."
    )
    .expect("metric registers once")
});

/// One call to the shared Redis.
pub fn shared_call(op: &'static str, result: &'static str) {
    SHARED_CALLS.with_label_values(&[op, result]).inc();
}

/// One shared-tier lookup's result.
pub fn shared_lookup(result: &'static str) {
    SHARED_LOOKUPS.with_label_values(&[result]).inc();
}

/// A purge received from another instance.
pub fn shared_purge_received() {
    SHARED_PURGES_APPLIED.inc();
}

/// Publishes the shared Redis breaker state and the channel state (`None`:
/// no channel, the cache tier is off).
pub fn publish_shared(state: &str, channel_up: Option<bool>) {
    for st in ["closed", "open", "half_open"] {
        SHARED_STATE
            .with_label_values(&[st])
            .set(i64::from(st == state));
    }
    if let Some(up) = channel_up {
        SHARED_CHANNEL_UP.set(i64::from(up));
    }
}
