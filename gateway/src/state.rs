//! Shared state: the current configuration snapshot and process-wide flags.
//!
//! The snapshot is immutable and swapped atomically (a reload is a pointer swap);
//! each request pins the snapshot it started with, so it sees one consistent
//! configuration from routing to logging.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::metrics::RouteMetrics;
use crate::upstream::UpstreamPool;

/// One configuration and everything built from it.
pub struct Snapshot {
    /// The validated configuration.
    pub config: Config,
    /// One pool per `config.upstreams` entry, same order.
    pub upstreams: Vec<Arc<UpstreamPool>>,
    /// Pre-resolved metric handles per `config.routes` entry, same order.
    pub route_metrics: Vec<RouteMetrics>,
}

impl Snapshot {
    /// Builds pools and metric handles for a validated configuration.
    pub fn new(config: Config) -> Self {
        let upstreams = config
            .upstreams
            .iter()
            .cloned()
            .map(UpstreamPool::new)
            .collect();
        let route_metrics = config
            .routes
            .iter()
            .map(|r| RouteMetrics::new(&r.name))
            .collect();
        Self {
            config,
            upstreams,
            route_metrics,
        }
    }
}

/// State shared by the proxy and admin services.
pub struct Shared {
    snapshot: ArcSwap<Snapshot>,
    draining: AtomicBool,
}

impl Shared {
    /// Starts with `config` as the current snapshot.
    pub fn new(config: Config) -> Arc<Self> {
        Arc::new(Self {
            snapshot: ArcSwap::from_pointee(Snapshot::new(config)),
            draining: AtomicBool::new(false),
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

    /// Whether the process is stopping (then `/ready` answers 503).
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Marks the process as stopping.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }
}
