//! Shared state: the current configuration snapshot and process-wide flags.
//!
//! The snapshot is immutable and swapped atomically (a reload is a pointer swap);
//! each request pins the snapshot it started with, so it sees one consistent
//! configuration from routing to logging.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::{ArcSwap, ArcSwapOption};
use serde::Serialize;

use crate::certs::CertStore;
use crate::config::{Config, Route};
use crate::limits::Limiter;
use crate::metrics::RouteMetrics;
use crate::ratelimit::RateLimiter;
use crate::upstream::UpstreamPool;

/// The runtime state of one route: what a request on it counts against.
pub struct RouteState {
    /// Concurrency limiter (when `limits.max_inflight` is set).
    pub limiter: Option<Arc<Limiter>>,
    /// Per-client rate limiter (when `limits.rate` is set).
    pub rate: Option<Arc<RateLimiter>>,
    /// Pre-resolved metric handles.
    pub metrics: Arc<RouteMetrics>,
}

impl RouteState {
    /// The state of `route`, taking over `previous` (the route of the same
    /// name in the running snapshot): its limiter keeps its in-flight requests
    /// and waiters (resized to a changed limit), its rate limiter and the
    /// clients it tracks are kept while the rate is unchanged, and its metric
    /// handles are kept.
    fn carrying_over(route: &Route, previous: Option<&RouteState>) -> Self {
        let limiter = route.limits.max_inflight.map(|max| {
            let max = max.get() as usize;
            match previous.and_then(|p| p.limiter.clone()) {
                Some(l) => {
                    l.resize(max);
                    l
                }
                None => Limiter::new(max),
            }
        });
        let rate = route.limits.rate.as_ref().map(|rate| {
            previous
                .and_then(|p| p.rate.clone())
                .filter(|l| l.enforces(rate))
                .unwrap_or_else(|| RateLimiter::new(&route.name, rate))
        });
        let metrics = previous
            .map(|p| p.metrics.clone())
            .unwrap_or_else(|| Arc::new(RouteMetrics::new(&route.name)));
        Self {
            limiter,
            rate,
            metrics,
        }
    }
}

/// One configuration and the runtime state built for it. Per-route and
/// per-upstream state belongs here, not to process-wide registries: a reload
/// builds the next snapshot from this one by name ([`Snapshot::carrying_over`]),
/// and what the new configuration no longer names is dropped with its metric
/// series ([`Snapshot::retire`]).
pub struct Snapshot {
    /// The validated configuration.
    pub config: Config,
    /// One pool per `config.upstreams` entry, same order.
    pub upstreams: Vec<Arc<UpstreamPool>>,
    /// Runtime state per `config.routes` entry, same order.
    pub routes: Vec<RouteState>,
}

/// One concurrency limiter as `/limits` and the metrics name it.
pub struct LimiterView<'a> {
    /// `route:<name>` or `upstream:<name>`.
    pub name: String,
    /// The limiter.
    pub limiter: &'a Limiter,
}

impl Snapshot {
    /// Builds pools, limiters and metric handles for a validated configuration.
    pub fn new(config: Config) -> Self {
        Self::carrying_over(config, None)
    }

    /// Like [`Snapshot::new`], taking over `previous`'s runtime state for the
    /// routes and upstreams that keep their names.
    pub fn carrying_over(config: Config, previous: Option<&Snapshot>) -> Self {
        let upstreams = config
            .upstreams
            .iter()
            .map(|u| {
                let old = previous.and_then(|p| p.upstreams.iter().find(|o| o.name() == u.name));
                UpstreamPool::carrying_over(u.clone(), old)
            })
            .collect();
        let routes = config
            .routes
            .iter()
            .map(|r| {
                let old = previous.and_then(|p| p.route_state(&r.name));
                RouteState::carrying_over(r, old)
            })
            .collect();
        Self {
            config,
            upstreams,
            routes,
        }
    }

    /// The runtime state of the route called `name`.
    fn route_state(&self, name: &str) -> Option<&RouteState> {
        let i = self.config.routes.iter().position(|r| r.name == name)?;
        self.routes.get(i)
    }

    /// The pool of route `route`'s upstream.
    pub fn upstream_of(&self, route: usize) -> &UpstreamPool {
        &self.upstreams[self.config.routes[route].upstream]
    }

    /// Every concurrency limiter, sorted by name.
    pub fn limiters(&self) -> Vec<LimiterView<'_>> {
        let routes = self
            .config
            .routes
            .iter()
            .zip(&self.routes)
            .filter_map(|(r, st)| {
                Some(LimiterView {
                    name: format!("route:{}", r.name),
                    limiter: st.limiter.as_deref()?,
                })
            });
        let upstreams = self.upstreams.iter().filter_map(|p| {
            Some(LimiterView {
                name: format!("upstream:{}", p.name()),
                limiter: p.limiter()?.as_ref(),
            })
        });
        let mut out: Vec<_> = routes.chain(upstreams).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Drops the metric series of the routes and upstreams that `next` no
    /// longer names (called when `next` replaces this snapshot).
    pub fn retire(&self, next: &Snapshot) {
        for r in &self.config.routes {
            if next.route_state(&r.name).is_none() {
                if let Some(st) = self.route_state(&r.name) {
                    st.metrics.retire();
                }
            }
        }
        for u in &self.config.upstreams {
            if !next.upstreams.iter().any(|p| p.name() == u.name) {
                crate::metrics::retire_upstream(&u.name);
            }
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
    /// Client connections open now (admission control reads it; the
    /// `gateway_downstream_connections` gauge reports it).
    connections: AtomicUsize,
    reload: Mutex<ReloadStatus>,
    /// The certificate `tls.acme` obtained, served beside the configured files.
    acme_certificates: ArcSwapOption<CertStore>,
}

impl Shared {
    /// Starts with `config`, read from `conf_path`, as the current snapshot.
    pub fn new(config: Config, conf_path: &Path) -> Arc<Self> {
        Arc::new(Self {
            snapshot: ArcSwap::from_pointee(Snapshot::new(config)),
            conf_path: conf_path.to_owned(),
            draining: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
            reload: Mutex::default(),
            acme_certificates: ArcSwapOption::empty(),
        })
    }

    /// The current snapshot; hold it for the whole request.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Replaces the snapshot; requests in flight keep the one they pinned.
    /// The metric series of removed routes and upstreams go with it.
    pub fn swap(&self, next: Snapshot) {
        let old = self.snapshot.swap(Arc::new(next));
        old.retire(&self.snapshot.load());
    }

    /// Builds the next snapshot from `config`, carrying the running one's
    /// state over by name, and swaps it in.
    pub fn apply(&self, config: Config) {
        let next = Snapshot::carrying_over(config, Some(&self.snapshot.load()));
        self.swap(next);
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

    /// Counts a new client connection; returns how many are open now.
    pub fn connection_opened(&self) -> usize {
        self.connections.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Counts a closed client connection.
    pub fn connection_closed(&self) {
        self.connections.fetch_sub(1, Ordering::AcqRel);
    }

    /// Client connections open now.
    pub fn open_connections(&self) -> usize {
        self.connections.load(Ordering::Acquire)
    }

    /// The ACME certificate in use, if one was obtained or loaded.
    pub fn acme_certificates(&self) -> Option<Arc<CertStore>> {
        self.acme_certificates.load_full()
    }

    /// Serves `certs` for their names from the next handshake on.
    pub fn set_acme_certificates(&self, certs: CertStore) {
        self.acme_certificates.store(Some(Arc::new(certs)));
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
