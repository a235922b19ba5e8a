//! The app's Prometheus metrics (default registry), by route template, never
//! the raw path. `GET /metrics` renders them; `GET /performance/metrics` gives
//! the same figures as JSON.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus::{
    register_histogram, register_histogram_vec, register_int_counter_vec, register_int_gauge,
    Encoder, Histogram, HistogramVec, IntCounterVec, IntGauge, TextEncoder,
};

/// Buckets from 100 µs to 30 s.
const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "app_http_requests_total",
        "Requests by route template, method and status class.",
        &["route", "method", "status"]
    )
    .expect("registers once")
});

static DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "app_http_request_duration_seconds",
        "Request duration by route template.",
        &["route"],
        BUCKETS.to_vec()
    )
    .expect("registers once")
});

static POOL_WAIT: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "app_redis_pool_wait_seconds",
        "Time to get a pooled Redis connection.",
        BUCKETS.to_vec()
    )
    .expect("registers once")
});

static POOL_ERRORS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "app_redis_errors_total",
        "Redis failures by kind (timeout, connect, command, command_timeout).",
        &["kind"]
    )
    .expect("registers once")
});

macro_rules! gauge {
    ($name:ident, $metric:literal, $help:literal) => {
        static $name: LazyLock<IntGauge> =
            LazyLock::new(|| register_int_gauge!($metric, $help).expect("registers once"));
    };
}

gauge!(
    POOL_SIZE,
    "app_redis_pool_connections",
    "Open pooled Redis connections."
);
gauge!(
    POOL_IDLE,
    "app_redis_pool_idle_connections",
    "Idle pooled Redis connections."
);
gauge!(
    POOL_IN_USE,
    "app_redis_pool_in_use_connections",
    "Checked-out Redis connections."
);
gauge!(
    POOL_WAITERS,
    "app_redis_pool_waiters",
    "Requests waiting for a Redis connection."
);
gauge!(
    POOL_MAX,
    "app_redis_pool_max_connections",
    "Configured pool size."
);
gauge!(JOBS_QUEUED, "app_jobs_queued", "Jobs waiting in the queue.");
gauge!(JOBS_RUNNING, "app_jobs_running", "Jobs being worked on.");

static JOB_OUTCOMES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "app_jobs_total",
        "Jobs by outcome (done, failed, rejected).",
        &["outcome"]
    )
    .expect("registers once")
});

/// Registers everything, including the process collector (CPU, memory, fds).
pub fn init() {
    LazyLock::force(&REQUESTS);
    LazyLock::force(&DURATION);
    LazyLock::force(&POOL_WAIT);
    LazyLock::force(&POOL_ERRORS);
    for g in [
        &POOL_SIZE,
        &POOL_IDLE,
        &POOL_IN_USE,
        &POOL_WAITERS,
        &POOL_MAX,
        &JOBS_QUEUED,
        &JOBS_RUNNING,
    ] {
        LazyLock::force(g);
    }
    LazyLock::force(&JOB_OUTCOMES);
    static PROCESS: std::sync::Once = std::sync::Once::new();
    PROCESS.call_once(|| {
        let pc = prometheus::process_collector::ProcessCollector::for_self();
        let _ = prometheus::register(Box::new(pc));
    });
}

/// Records one finished request.
pub fn request(route: &str, method: &str, status: u16, elapsed: Duration) {
    let class = match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    REQUESTS.with_label_values(&[route, method, class]).inc();
    DURATION
        .with_label_values(&[route])
        .observe(elapsed.as_secs_f64());
}

/// Records a pool checkout wait.
pub fn pool_wait(d: Duration) {
    POOL_WAIT.observe(d.as_secs_f64());
}

/// Counts a Redis failure.
pub fn pool_error(kind: &str) {
    POOL_ERRORS.with_label_values(&[kind]).inc();
}

/// Publishes pool figures: configured maximum, open, idle and checked-out
/// connections, and requests waiting for one.
pub fn pool(max_size: u32, connections: u32, idle: u32, in_use: u32, waiters: u64) {
    POOL_SIZE.set(connections.into());
    POOL_IDLE.set(idle.into());
    POOL_IN_USE.set(in_use.into());
    POOL_WAITERS.set(waiters as i64);
    POOL_MAX.set(max_size.into());
}

/// Publishes job queue figures.
pub fn jobs(queued: usize, running: usize) {
    JOBS_QUEUED.set(queued as i64);
    JOBS_RUNNING.set(running as i64);
}

/// Counts a job outcome.
pub fn job(outcome: &str) {
    JOB_OUTCOMES.with_label_values(&[outcome]).inc();
}

/// Prometheus text format.
pub fn render() -> Vec<u8> {
    let mut buf = Vec::with_capacity(16 * 1024);
    let _ = TextEncoder::new().encode(&prometheus::gather(), &mut buf);
    buf
}

/// Requests and latency per route, for the JSON view.
pub fn requests_summary() -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for fam in prometheus::gather() {
        if fam.name() != "app_http_request_duration_seconds" {
            continue;
        }
        for m in fam.get_metric() {
            let route = m
                .get_label()
                .iter()
                .find(|l| l.name() == "route")
                .map(|l| l.value().to_owned())
                .unwrap_or_default();
            let h = m.get_histogram();
            let count = h.sample_count();
            let mean_ms = if count > 0 {
                h.sample_sum() / count as f64 * 1000.0
            } else {
                0.0
            };
            out.insert(
                route,
                serde_json::json!({ "count": count, "mean_ms": mean_ms }),
            );
        }
    }
    serde_json::Value::Object(out)
}
