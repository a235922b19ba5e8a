//! Shared state: the current configuration snapshot and process-wide flags.
//!
//! The snapshot is immutable and swapped atomically (a reload is a pointer swap);
//! each request pins the snapshot it started with, so it sees one consistent
//! configuration from routing to logging.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use serde::Serialize;

use crate::adaptive::AdaptiveLimit;
use crate::config::Config;
use crate::limits::Limiter;
use crate::metrics::RouteMetrics;
use crate::ratelimit::RateLimiter;
use crate::upstream::UpstreamPool;

/// One configuration and everything built from it.
pub struct Snapshot {
    /// The validated configuration.
    pub config: Config,
    /// One pool per `config.upstreams` entry, same order.
    pub upstreams: Vec<Arc<UpstreamPool>>,
    /// Pre-resolved metric handles per `config.routes` entry, same order.
    pub route_metrics: Vec<RouteMetrics>,
    /// Concurrency limiter per route (when `limits.max_inflight` is set).
    pub route_limiters: Vec<Option<Arc<Limiter>>>,
    /// Concurrency limiter per upstream (when `limits.max_inflight` is set).
    pub upstream_limiters: Vec<Option<Arc<Limiter>>>,
    /// Rate limiter per route (when `limits.rate` is set).
    pub rate_limiters: Vec<Option<Arc<RateLimiter>>>,
    /// Adaptive limit per upstream (when `limits.adaptive` is set).
    pub adaptive: Vec<Option<Arc<AdaptiveLimit>>>,
}

impl Snapshot {
    /// Builds pools and metric handles for a validated configuration.
    pub fn new(config: Config) -> Self {
        Self::carrying_over(config, None)
    }

    /// Like [`Snapshot::new`], reusing `previous`'s pools (and so their health
    /// state and connection pools) for upstreams whose configuration is unchanged.
    pub fn carrying_over(config: Config, previous: Option<&Snapshot>) -> Self {
        let upstreams = config
            .upstreams
            .iter()
            .map(|u| {
                previous
                    .and_then(|p| p.upstreams.iter().find(|old| old.config == *u))
                    .cloned()
                    .unwrap_or_else(|| UpstreamPool::new(u.clone()))
            })
            .collect();
        let route_metrics = config
            .routes
            .iter()
            .map(|r| RouteMetrics::new(&r.name))
            .collect();
        // Limiters are found by name, so in-flight counts and queues carry over a reload.
        let route_limiters = config
            .routes
            .iter()
            .map(|r| {
                r.limits
                    .max_inflight
                    .map(|m| Limiter::named(&format!("route:{}", r.name), m.get() as usize))
            })
            .collect();
        let upstream_limiters: Vec<Option<Arc<Limiter>>> = config
            .upstreams
            .iter()
            .map(|u| {
                let start = u
                    .max_inflight
                    .map(|m| m.get())
                    .or(u.adaptive.map(|a| a.max))?;
                Some(Limiter::named(
                    &format!("upstream:{}", u.name),
                    start as usize,
                ))
            })
            .collect();
        let adaptive = config
            .upstreams
            .iter()
            .zip(&upstream_limiters)
            .map(|(u, l)| Some(Arc::new(AdaptiveLimit::new(u.adaptive?, l.clone()?))))
            .collect();
        let rate_limiters = config
            .routes
            .iter()
            .map(|r| {
                r.limits
                    .rate
                    .as_ref()
                    .map(|rate| RateLimiter::named(&r.name, rate))
            })
            .collect();
        Self {
            config,
            upstreams,
            route_metrics,
            route_limiters,
            upstream_limiters,
            rate_limiters,
            adaptive,
        }
    }
}

/// What the last `SIGHUP` did, for `GET /config`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReloadStatus {
    /// Seconds since the epoch of the last attempt.
    pub at_unix: Option<u64>,
    /// Whether it was applied.
    pub ok: Option<bool>,
    /// Why it was refused.
    pub error: Option<String>,
    /// Keys whose new value needs a restart (or binary upgrade) to apply.
    pub pending_restart: Vec<String>,
}

impl ReloadStatus {
    /// Records an attempt now.
    pub fn record(ok: bool, error: Option<String>, pending_restart: Vec<String>) -> Self {
        let at = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .ok();
        Self {
            at_unix: at,
            ok: Some(ok),
            error,
            pending_restart,
        }
    }
}

/// State shared by the proxy, admin and lifecycle code.
pub struct Shared {
    snapshot: ArcSwap<Snapshot>,
    conf_path: PathBuf,
    draining: AtomicBool,
    closing: AtomicBool,
    reload: Mutex<ReloadStatus>,
}

impl Shared {
    /// Starts with `config`, read from `conf_path`, as the current snapshot.
    pub fn new(config: Config, conf_path: &Path) -> Arc<Self> {
        Arc::new(Self {
            snapshot: ArcSwap::from_pointee(Snapshot::new(config)),
            conf_path: conf_path.to_owned(),
            draining: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            reload: Mutex::default(),
        })
    }

    /// The current snapshot; hold it for the whole request.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Replaces the snapshot; requests in flight keep the one they pinned.
    pub fn swap(&self, next: Snapshot) {
        self.snapshot.store(Arc::new(next));
    }

    /// The configuration file this process reads on `SIGHUP`.
    pub fn conf_path(&self) -> &Path {
        &self.conf_path
    }

    /// Whether the process is stopping (then `/ready` answers 503).
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Marks the process as stopping: `/ready` answers 503 from now on.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Whether responses should end their connection (`Connection: close`) so
    /// that clients move to a fresh connection before the listeners close.
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Relaxed)
    }

    /// From now on every response closes its connection.
    pub fn start_closing(&self) {
        self.closing.store(true, Ordering::Relaxed);
    }

    /// The last reload's outcome.
    pub fn reload_status(&self) -> ReloadStatus {
        self.reload.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Records a reload's outcome.
    pub fn set_reload_status(&self, status: ReloadStatus) {
        if let Ok(mut r) = self.reload.lock() {
            *r = status;
        }
    }
}
