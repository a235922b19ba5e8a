//! Upstream server pools: round robin over healthy servers, active HTTP health
//! checks, and the peer options Pingora uses to reach a server.
//!
//! Health checks are driven by [`HealthChecker`], one background task for every
//! pool of the current snapshot, so that pools can be replaced on reload.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::http::RequestHeader;
use pingora::lb::health_check::{HealthObserve, HttpHealthCheck, TcpHealthCheck};
use pingora::lb::{selection::RoundRobin, Backend, LoadBalancer};
use pingora::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType};
use serde::Serialize;

use crate::adaptive::AdaptiveLimit;
use crate::breaker::{CircuitBreaker, State};
use crate::clock;
use crate::config::{HealthCheck, Upstream};
use crate::limits::Limiter;
use crate::metrics;

/// The running side of one configured upstream: its balancer and health
/// state, its servers' breakers, its concurrency limit (static or adaptive)
/// and its metric handles. Owned by the configuration snapshot; a reload
/// builds the next pool with [`UpstreamPool::carrying_over`].
pub struct UpstreamPool {
    /// The configuration it was built from.
    pub config: Upstream,
    /// One circuit breaker per server (same order as `config.servers`).
    breakers: Vec<Arc<CircuitBreaker>>,
    /// Upstream-wide concurrency limit (`limits.max_inflight` or `adaptive`).
    limiter: Option<Arc<Limiter>>,
    /// The latency-driven controller of `limiter`.
    adaptive: Option<Arc<AdaptiveLimit>>,
    /// Upstream response-time histogram handle.
    pub duration: prometheus::Histogram,
    balancer: LoadBalancer<RoundRobin>,
    /// [`clock::millis`] at which the next health check is due.
    next_check_ms: AtomicU64,
}

/// How a request to a server went, as its breaker sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response below 500 (or an overload answer not counted as a failure).
    Ok,
    /// Connect error, timeout, reset or 5xx.
    Failed,
    /// A 503 or 429 with `Retry-After`: the server shedding load. A failure
    /// only with `breaker.count_overload`.
    Overloaded,
}

impl UpstreamPool {
    /// Builds the pool from already-resolved servers (nothing here blocks or resolves).
    pub fn new(config: Upstream) -> Arc<Self> {
        Self::carrying_over(config, None)
    }

    /// Builds the pool for `config`, taking over `previous` (the pool of the
    /// same name in the running snapshot): unchanged, it is kept whole
    /// (health state, connection pool); otherwise its breakers carry over by
    /// server address, its limiter keeps its in-flight requests and waiters
    /// (resized to a changed static limit; an adaptive limit keeps the value
    /// it has learned, within the new bounds).
    pub fn carrying_over(config: Upstream, previous: Option<&Arc<UpstreamPool>>) -> Arc<Self> {
        if let Some(prev) = previous.filter(|p| p.config == config) {
            return prev.clone();
        }
        let now = Instant::now();
        let addrs: Vec<_> = config.servers.iter().map(|s| s.addr).collect();
        let mut balancer = LoadBalancer::try_from_iter(addrs)
            .expect("socket addresses need no resolution and cannot fail");
        if let Some(hc) = &config.health_check {
            balancer.set_health_check(health_check(&config, hc));
        }
        let breakers = config
            .servers
            .iter()
            .map(|s| {
                previous
                    .and_then(|p| p.server_index(&s.addr).map(|i| p.breakers[i].clone()))
                    .unwrap_or_default()
            })
            .collect();
        let start = config
            .max_inflight
            .map(|m| m.get())
            .or(config.adaptive.map(|a| a.max));
        let limiter = start.map(|start| match previous.and_then(|p| p.limiter.clone()) {
            Some(l) => {
                if config.adaptive.is_none() {
                    l.resize(start as usize);
                }
                l
            }
            None => Limiter::new(start as usize),
        });
        let adaptive = config.adaptive.zip(limiter.as_ref()).map(|(settings, l)| {
            match previous.and_then(|p| p.adaptive.clone()) {
                Some(a) if *a.settings() == settings && Arc::ptr_eq(a.limiter(), l) => a,
                _ => Arc::new(AdaptiveLimit::new(settings, l.clone(), now)),
            }
        });
        Arc::new(Self {
            breakers,
            limiter,
            adaptive,
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

    /// The upstream-wide concurrency limiter.
    pub fn limiter(&self) -> Option<&Arc<Limiter>> {
        self.limiter.as_ref()
    }

    /// Records one response time (histogram and adaptive limit).
    pub fn observe_latency(&self, elapsed: Duration, now: Instant) {
        self.duration.observe(elapsed.as_secs_f64());
        if let Some(a) = &self.adaptive {
            a.observe(elapsed, now);
        }
    }

    /// How many times a failed connect may be retried for one request.
    pub fn max_connect_retries(&self) -> usize {
        (self.config.retries as usize).min(self.config.servers.len().saturating_sub(1))
    }

    fn server_index(&self, addr: &std::net::SocketAddr) -> Option<usize> {
        self.config.servers.iter().position(|s| s.addr == *addr)
    }

    /// Which servers stay in rotation although their breaker is not closed,
    /// so that `breaker.min_available` servers always are: the open ones that
    /// failed longest ago. Empty (no allocation) while enough are closed.
    fn overridden(&self, now: Instant) -> Vec<bool> {
        let Some(settings) = &self.config.breaker else {
            return Vec::new();
        };
        let want = (settings.min_available as usize).min(self.breakers.len());
        let closed = self
            .breakers
            .iter()
            .filter(|b| b.state(now) == State::Closed)
            .count();
        if closed >= want {
            return Vec::new();
        }
        let mut not_closed: Vec<usize> = (0..self.breakers.len())
            .filter(|&i| self.breakers[i].state(now) != State::Closed)
            .collect();
        not_closed.sort_by_key(|&i| self.breakers[i].last_failure());
        let mut out = vec![false; self.breakers.len()];
        for i in not_closed.into_iter().take(want - closed) {
            out[i] = true;
        }
        out
    }

    /// Next server in round-robin order that is healthy and not in `tried`.
    ///
    /// When every untried server is unhealthy, the health checks are not
    /// trusted over a total outage: an untried server is picked anyway.
    /// A server whose breaker is open is skipped unless it is needed to keep
    /// `breaker.min_available` servers in rotation. When nothing is left,
    /// the error says why; `retry_in` is when the first breaker half-opens.
    pub fn select(&self, tried: &[PeerAddr], now: Instant) -> Result<Box<HttpPeer>, NoPeer> {
        let overridden = self.overridden(now);
        let fresh = |b: &Backend| !tried.contains(&b.addr);
        // Checked last: in half-open state it hands out the one probe.
        let closed = |b: &Backend| {
            let Some(i) = self.breaker_index(&b.addr) else {
                return true;
            };
            overridden.get(i).copied().unwrap_or(false) || self.breakers[i].allows(now)
        };
        let backend = self
            .balancer
            .select_with(b"", 256, |b, healthy| healthy && fresh(b) && closed(b))
            .or_else(|| {
                self.balancer
                    .select_with(b"", 256, |b, _| fresh(b) && closed(b))
            })
            .ok_or_else(|| {
                let open: Vec<_> = if self.config.breaker.is_some() {
                    self.breakers
                        .iter()
                        .filter(|b| b.state(now) != State::Closed)
                        .collect()
                } else {
                    Vec::new()
                };
                if open.is_empty() {
                    NoPeer::NoServer
                } else {
                    NoPeer::BreakerOpen {
                        retry_in: open
                            .iter()
                            .map(|b| b.retry_in(now))
                            .min()
                            .unwrap_or_default(),
                    }
                }
            })?;
        let mut peer = HttpPeer::new(backend.addr, false, String::new());
        let o = &mut peer.options;
        o.connection_timeout = Some(self.config.connect_timeout);
        o.read_timeout = Some(self.config.read_timeout);
        o.write_timeout = Some(self.config.read_timeout);
        o.idle_timeout = Some(self.config.idle_timeout);
        Ok(Box::new(peer))
    }

    /// Index of the breaker of the server at `addr`, when the upstream has breakers.
    fn breaker_index(&self, addr: &PeerAddr) -> Option<usize> {
        self.config.breaker.as_ref()?;
        self.server_index(addr.as_inet()?)
    }

    /// Each server's breaker state (`None` without breakers); `overridden`
    /// for an open server kept in rotation by `min_available`.
    pub fn breaker_states(&self) -> Option<Vec<(String, &'static str)>> {
        self.config.breaker.as_ref()?;
        let now = Instant::now();
        let overridden = self.overridden(now);
        Some(
            self.config
                .servers
                .iter()
                .zip(&self.breakers)
                .enumerate()
                .map(|(i, (s, b))| {
                    let state = if overridden.get(i).copied().unwrap_or(false) {
                        "overridden"
                    } else {
                        b.state(now).as_str()
                    };
                    (s.addr.to_string(), state)
                })
                .collect(),
        )
    }

    /// Records the outcome of a request to the server at `addr`, finished at `now`.
    pub fn record(&self, addr: &PeerAddr, outcome: Outcome, now: Instant) {
        let (Some(i), Some(settings)) = (self.breaker_index(addr), self.config.breaker.as_ref())
        else {
            return;
        };
        let br = &self.breakers[i];
        match outcome {
            Outcome::Ok => br.success(settings, now),
            Outcome::Overloaded if !settings.count_overload => br.success(settings, now),
            Outcome::Failed | Outcome::Overloaded => br.failure(settings, now),
        }
    }

    /// Servers with their current health, for `GET /upstreams`.
    pub fn status(&self) -> UpstreamStatus<'_> {
        let backends = self.balancer.backends();
        let states = self.breaker_states();
        let servers = self
            .config
            .servers
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let b = Backend::new(&s.addr.to_string()).expect("socket address");
                ServerStatus {
                    server: &s.spec,
                    address: s.addr.to_string(),
                    healthy: backends.ready(&b),
                    breaker: states.as_ref().map(|st| st[i].1),
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
                    path: h.path.as_deref(),
                    interval: humantime::format_duration(h.interval).to_string(),
                }),
            servers,
        }
    }

    /// Runs the health check when it is due; returns at once otherwise.
    pub async fn check_if_due(&self, now: Instant) {
        let Some(hc) = &self.config.health_check else {
            return;
        };
        let now_ms = clock::millis(now);
        if now_ms < self.next_check_ms.load(Ordering::Relaxed) {
            return;
        }
        self.next_check_ms
            .store(now_ms + hc.interval.as_millis() as u64, Ordering::Relaxed);
        self.balancer.backends().run_health_check(true).await;
    }
}

/// Why no server could be picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoPeer {
    /// Every server is out (unhealthy or already tried).
    NoServer,
    /// Every server left has an open breaker; the first half-opens in `retry_in`.
    BreakerOpen {
        /// Time until the first breaker half-opens.
        retry_in: Duration,
    },
}

/// The active check of `up`: `GET path` expecting a 2xx, or without a path a
/// TCP connect.
fn health_check(
    up: &Upstream,
    hc: &HealthCheck,
) -> Box<dyn pingora::lb::health_check::HealthCheck + Send + Sync> {
    let observer = Box::new(HealthLog {
        upstream: up.name.clone(),
    });
    let Some(path) = &hc.path else {
        let mut check = TcpHealthCheck::new();
        check.consecutive_success = hc.healthy_threshold.get() as usize;
        check.consecutive_failure = hc.unhealthy_threshold.get() as usize;
        check.peer_template.options.connection_timeout = Some(hc.timeout);
        check.peer_template.options.total_connection_timeout = Some(hc.timeout);
        check.health_changed_callback = Some(observer);
        return check;
    };
    let host = up.servers.first().map_or("localhost", |s| {
        s.spec.rsplit_once(':').map_or(s.spec.as_str(), |(h, _)| h)
    });
    let mut check = HttpHealthCheck::new(host, false);
    let mut req = RequestHeader::build("GET", path.as_bytes(), None)
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
    check.health_changed_callback = Some(observer);
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
    /// Each server's health and breaker state.
    pub servers: Vec<ServerStatus<'a>>,
}

#[derive(Serialize)]
struct HealthCheckStatus<'a> {
    /// `None` for a TCP connect check.
    path: Option<&'a str>,
    interval: String,
}

/// `GET /upstreams` view of one server.
#[derive(Serialize)]
pub struct ServerStatus<'a> {
    server: &'a str,
    /// Resolved address.
    pub address: String,
    /// As the health checks see it.
    pub healthy: bool,
    /// Breaker state, when the upstream has breakers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breaker: Option<&'static str>,
}
