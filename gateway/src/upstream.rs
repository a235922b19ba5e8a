//! Upstream server pools: round robin over healthy servers, active HTTP health
//! checks, and the peer options Pingora uses to reach a server.
//!
//! Health checks are driven by [`HealthChecker`], one background task for every
//! pool of the current snapshot, so that pools can be replaced on reload.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::http::RequestHeader;
use pingora::lb::health_check::{HealthObserve, HttpHealthCheck};
use pingora::lb::{selection::RoundRobin, Backend, LoadBalancer};
use pingora::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType};
use serde::Serialize;

use crate::breaker::CircuitBreaker;
use crate::config::{HealthCheck, Upstream};
use crate::error::{BREAKER_OPEN, NO_SERVER};
use crate::metrics;
use crate::state::Shared;

/// Time origin for the pools' "next check due" stamps.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// The running side of one configured upstream.
pub struct UpstreamPool {
    /// The configuration it was built from.
    pub config: Upstream,
    /// One circuit breaker per server (same order as `config.servers`).
    breakers: Vec<CircuitBreaker>,
    /// Upstream response-time histogram handle.
    pub duration: prometheus::Histogram,
    balancer: LoadBalancer<RoundRobin>,
    /// Milliseconds since [`EPOCH`] at which the next health check is due.
    next_check_ms: AtomicU64,
}

impl UpstreamPool {
    /// Builds the pool from already-resolved servers (nothing here blocks or resolves).
    pub fn new(config: Upstream) -> Arc<Self> {
        let addrs: Vec<_> = config.servers.iter().map(|s| s.addr).collect();
        let mut balancer = LoadBalancer::try_from_iter(addrs)
            .expect("socket addresses need no resolution and cannot fail");
        if let Some(hc) = &config.health_check {
            balancer.set_health_check(health_check(&config, hc));
        }
        Arc::new(Self {
            breakers: config
                .servers
                .iter()
                .map(|_| CircuitBreaker::default())
                .collect(),
            duration: metrics::upstream_duration(&config.name),
            config,
            balancer,
            next_check_ms: AtomicU64::new(0),
        })
    }

    /// The upstream's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// How many times a failed connect may be retried for one request.
    pub fn max_connect_retries(&self) -> usize {
        (self.config.retries as usize).min(self.config.servers.len().saturating_sub(1))
    }

    /// Next server in round-robin order that is healthy and not in `tried`.
    ///
    /// When every untried server is unhealthy, the health checks are not
    /// trusted over a total outage: an untried server is picked anyway.
    pub fn select(&self, tried: &[PeerAddr]) -> pingora::Result<Box<HttpPeer>> {
        let fresh = |b: &Backend| !tried.contains(&b.addr);
        // Checked last: in half-open state it hands out the one probe.
        let closed = |b: &Backend| self.breaker(&b.addr).is_none_or(|br| br.allows());
        let backend = self
            .balancer
            .select_with(b"", 256, |b, healthy| healthy && fresh(b) && closed(b))
            .or_else(|| {
                self.balancer
                    .select_with(b"", 256, |b, _| fresh(b) && closed(b))
            })
            .ok_or_else(|| {
                let any_open = self.config.breaker.is_some()
                    && self
                        .breakers
                        .iter()
                        .any(|b| b.state() != crate::breaker::State::Closed);
                let kind = if any_open { BREAKER_OPEN } else { NO_SERVER };
                Error::explain(ErrorType::Custom(kind), self.config.name.clone())
            })?;
        let mut peer = HttpPeer::new(backend.addr, false, String::new());
        let o = &mut peer.options;
        o.connection_timeout = Some(self.config.connect_timeout);
        o.read_timeout = Some(self.config.read_timeout);
        o.write_timeout = Some(self.config.read_timeout);
        o.idle_timeout = Some(self.config.idle_timeout);
        Ok(Box::new(peer))
    }

    /// The breaker of the server at `addr`, when the upstream has breakers.
    fn breaker(&self, addr: &PeerAddr) -> Option<&CircuitBreaker> {
        self.config.breaker.as_ref()?;
        let inet = addr.as_inet()?;
        let i = self.config.servers.iter().position(|s| s.addr == *inet)?;
        self.breakers.get(i)
    }

    /// Each server's breaker state (`None` without breakers).
    pub fn breaker_states(&self) -> Option<Vec<(String, &'static str)>> {
        self.config.breaker.as_ref()?;
        Some(
            self.config
                .servers
                .iter()
                .zip(&self.breakers)
                .map(|(s, b)| (s.addr.to_string(), b.state().as_str()))
                .collect(),
        )
    }

    /// Records the outcome of a request to the server at `addr`.
    pub fn record(&self, addr: &PeerAddr, ok: bool) {
        let (Some(br), Some(settings)) = (self.breaker(addr), self.config.breaker.as_ref()) else {
            return;
        };
        if ok {
            br.success(settings);
        } else {
            br.failure(settings);
        }
    }

    /// Servers with their current health, for `GET /upstreams`.
    pub fn status(&self) -> UpstreamStatus<'_> {
        let backends = self.balancer.backends();
        let servers = self
            .config
            .servers
            .iter()
            .map(|s| {
                let b = Backend::new(&s.addr.to_string()).expect("socket address");
                ServerStatus {
                    server: &s.spec,
                    address: s.addr.to_string(),
                    healthy: backends.ready(&b),
                    breaker: self.config.breaker.as_ref().map(|_| {
                        let i = self
                            .config
                            .servers
                            .iter()
                            .position(|x| x.addr == s.addr)
                            .unwrap_or(0);
                        self.breakers[i].state().as_str()
                    }),
                }
            })
            .collect();
        UpstreamStatus {
            name: &self.config.name,
            health_check: self
                .config
                .health_check
                .as_ref()
                .map(|h| HealthCheckStatus {
                    path: &h.path,
                    interval: humantime::format_duration(h.interval).to_string(),
                }),
            servers,
        }
    }

    /// Runs the health check when it is due; returns at once otherwise.
    async fn check_if_due(&self, now: Instant) {
        let Some(hc) = &self.config.health_check else {
            return;
        };
        let now_ms = now.duration_since(*EPOCH).as_millis() as u64;
        if now_ms < self.next_check_ms.load(Ordering::Relaxed) {
            return;
        }
        self.next_check_ms
            .store(now_ms + hc.interval.as_millis() as u64, Ordering::Relaxed);
        self.balancer.backends().run_health_check(true).await;
    }
}

fn health_check(up: &Upstream, hc: &HealthCheck) -> Box<HttpHealthCheck> {
    let host = up.servers.first().map_or("localhost", |s| {
        s.spec.rsplit_once(':').map_or(s.spec.as_str(), |(h, _)| h)
    });
    let mut check = HttpHealthCheck::new(host, false);
    let mut req = RequestHeader::build("GET", hc.path.as_bytes(), None)
        .expect("validated path is a valid request target");
    let _ = req.append_header("Host", host);
    let _ = req.append_header("User-Agent", "gateway-health-check");
    check.req = req;
    check.consecutive_success = hc.healthy_threshold.get() as usize;
    check.consecutive_failure = hc.unhealthy_threshold.get() as usize;
    check.peer_template.options.connection_timeout = Some(hc.timeout);
    check.peer_template.options.total_connection_timeout = Some(hc.timeout);
    check.peer_template.options.read_timeout = Some(hc.timeout);
    check.peer_template.options.write_timeout = Some(hc.timeout);
    check.validator = Some(Box::new(|resp| {
        if resp.status.is_success() {
            Ok(())
        } else {
            Error::e_explain(
                ErrorType::Custom("unhealthy"),
                format!("status {}", resp.status),
            )
        }
    }));
    check.health_changed_callback = Some(Box::new(HealthLog {
        upstream: up.name.clone(),
    }));
    Box::new(check)
}

/// Logs and counts server state changes.
struct HealthLog {
    upstream: String,
}

#[async_trait]
impl HealthObserve for HealthLog {
    async fn observe(&self, target: &Backend, healthy: bool) {
        let state = if healthy { "healthy" } else { "unhealthy" };
        tracing::warn!(upstream = %self.upstream, server = %target.addr, state, "upstream server changed state");
        metrics::health_change(&self.upstream, state);
    }
}

/// `GET /upstreams` view of one pool.
#[derive(Serialize)]
pub struct UpstreamStatus<'a> {
    name: &'a str,
    health_check: Option<HealthCheckStatus<'a>>,
    servers: Vec<ServerStatus<'a>>,
}

#[derive(Serialize)]
struct HealthCheckStatus<'a> {
    path: &'a str,
    interval: String,
}

#[derive(Serialize)]
struct ServerStatus<'a> {
    server: &'a str,
    address: String,
    healthy: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    breaker: Option<&'static str>,
}

/// Background service that runs the health checks of the current snapshot's pools.
pub struct HealthChecker {
    shared: Arc<Shared>,
}

impl HealthChecker {
    /// A checker over the shared snapshot.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

/// How often the checker looks for due checks.
const TICK: Duration = Duration::from_millis(50);

#[async_trait]
impl BackgroundService for HealthChecker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            let snap = self.shared.snapshot();
            let now = Instant::now();
            let checks = snap.upstreams.iter().map(|p| p.check_if_due(now));
            tokio::select! {
                _ = futures::future::join_all(checks) => {}
                _ = shutdown.changed() => return,
            }
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
