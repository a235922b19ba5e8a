//! The YAML shape of `conf/gateway.yaml`, one struct per block.
//!
//! These types only mirror the file: every field has a default, unknown keys are
//! rejected, and durations and sizes are parsed by `humantime` and `bytesize`.
//! Semantic checks (addresses, CIDRs, references between blocks) happen in
//! validation (`super::validate`), which turns this into the internal [`super::Config`].

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The top-level keys of [`RawConfig`], in field order: what a `GATEWAY_<KEY>`
/// variable's first segment must name to be read as configuration. Kept in
/// step with the struct by a unit test against serde's own field list.
pub const TOP_LEVEL_KEYS: &[&str] = &[
    "listen",
    "threads",
    "pid_file",
    "upgrade_sock",
    "upstream_keepalive_pool_size",
    "shutdown",
    "trusted_proxies",
    "ready_path",
    "client",
    "admin",
    "access_log",
    "upstreams",
    "cache",
    "tls",
    "compression",
    "shared",
    "routes",
];

/// The whole file.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawConfig {
    /// Main (public) listener, `host:port`. Needs a restart to change.
    pub listen: String,
    /// Worker threads of the proxy service. Needs a restart to change.
    pub threads: usize,
    /// Where the daemon (`-d`) writes its pid. Needs a restart to change.
    pub pid_file: String,
    /// Unix socket over which listening sockets are handed to a new binary (`-u`).
    pub upgrade_sock: String,
    /// Idle upstream connections kept for reuse, all upstreams together. Needs a restart.
    pub upstream_keepalive_pool_size: usize,
    /// Graceful stop timings.
    pub shutdown: RawShutdown,
    /// Peers whose `X-Forwarded-For` / `Forwarded` headers are believed (CIDRs or addresses).
    pub trusted_proxies: Vec<String>,
    /// Path the main listener answers like the admin `/ready` (for a load
    /// balancer's health check); absent = none.
    pub ready_path: Option<String>,
    /// What the gateway accepts from clients.
    pub client: RawClient,
    /// The admin listener.
    pub admin: RawAdmin,
    /// The JSON-lines access log.
    pub access_log: RawAccessLog,
    /// Named groups of origin servers.
    pub upstreams: BTreeMap<String, RawUpstream>,
    /// The shared response cache.
    pub cache: RawCache,
    /// HTTPS listeners (rustls; HTTP/2 by ALPN); absent = plain HTTP only.
    pub tls: Option<RawTls>,
    /// Response compression on the way out (after the cache).
    pub compression: RawCompression,
    /// Redis shared by several gateway instances (second cache tier, purge
    /// fan-out, shared rate limits).
    pub shared: RawShared,
    /// Routes, first match wins.
    pub routes: Vec<RawRoute>,
}

impl Default for RawConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".into(),
            threads: 2,
            pid_file: "/run/gateway/gateway.pid".into(),
            upgrade_sock: "/run/gateway/upgrade.sock".into(),
            upstream_keepalive_pool_size: 128,
            shutdown: RawShutdown::default(),
            trusted_proxies: Vec::new(),
            ready_path: None,
            client: RawClient::default(),
            admin: RawAdmin::default(),
            access_log: RawAccessLog::default(),
            upstreams: BTreeMap::new(),
            cache: RawCache::default(),
            tls: None,
            compression: RawCompression::default(),
            shared: RawShared::default(),
            routes: Vec::new(),
        }
    }
}

/// `tls:`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawTls {
    /// HTTPS listeners, `host:port` each. Needs a restart to change.
    pub listen: Vec<String>,
    /// PEM certificate chains and keys; chosen by SNI from the names in each
    /// certificate (the first pair answers clients without a known name).
    pub certificates: Vec<RawCertificate>,
    /// Lowest TLS version accepted: `"1.2"` or `"1.3"`.
    pub min_version: String,
    /// Deadline for a client's TLS handshake.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// The plain listener answers `308` to the same URL on HTTPS (except ACME
    /// challenges and `ready_path`).
    pub redirect_http: bool,
    /// `Strict-Transport-Security` on HTTPS responses; absent = none.
    pub hsts: Option<RawHsts>,
    /// Certificates obtained and renewed from an ACME CA (RFC 8555), beside
    /// `certificates`; absent = none.
    pub acme: Option<RawAcme>,
}

impl Default for RawTls {
    fn default() -> Self {
        Self {
            listen: vec!["0.0.0.0:443".into()],
            certificates: Vec::new(),
            min_version: "1.2".into(),
            handshake_timeout: Duration::from_secs(10),
            redirect_http: false,
            hsts: None,
            acme: None,
        }
    }
}

/// `compression:`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawCompression {
    /// Whether responses are compressed for clients that ask (off by default).
    pub enabled: bool,
    /// Codings offered, preferred first among equal `Accept-Encoding` q-values:
    /// `br`, `gzip`, `zstd`.
    pub algorithms: Vec<String>,
    /// Bodies shorter than this (by `Content-Length`) are sent as they are.
    pub min_size: Size,
}

impl Default for RawCompression {
    fn default() -> Self {
        Self {
            enabled: false,
            algorithms: vec!["br".into(), "gzip".into(), "zstd".into()],
            min_size: Size(1024),
        }
    }
}

/// `tls.certificates[i]:`
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawCertificate {
    /// PEM certificate chain, leaf first.
    pub cert: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: String,
}

/// `tls.hsts:`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawHsts {
    /// `max-age`, whole seconds.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Add `includeSubDomains`.
    pub include_subdomains: bool,
}

impl Default for RawHsts {
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(180 * 86_400),
            include_subdomains: false,
        }
    }
}

/// `shutdown:`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawShutdown {
    /// After SIGTERM, how long listeners keep accepting while `/ready` says 503.
    #[serde(with = "humantime_serde")]
    pub drain_delay: Duration,
    /// Upper bound for the whole stop, in whole seconds.
    #[serde(with = "humantime_serde")]
    pub grace_period: Duration,
}

impl Default for RawShutdown {
    fn default() -> Self {
        Self {
            drain_delay: Duration::from_secs(2),
            grace_period: Duration::from_secs(10),
        }
    }
}

/// `client:`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawClient {
    /// Open downstream connections at most.
    pub max_connections: usize,
    /// Size of the whole request header block at most (431 beyond).
    pub max_header_bytes: Size,
    /// Number of request header fields at most (431 beyond).
    pub max_headers: usize,
    /// Deadline for the whole request header block.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// Request body size at most (413 beyond).
    pub max_body_size: Size,
    /// How long an idle client connection is kept open.
    #[serde(with = "humantime_serde")]
    pub keepalive_timeout: Duration,
    /// Concurrent HTTP/2 streams (requests) per connection at most.
    pub h2_max_streams: u32,
}

impl Default for RawClient {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_header_bytes: Size(64 * 1024),
            max_headers: 100,
            header_timeout: Duration::from_secs(10),
            max_body_size: Size(10 << 20),
            keepalive_timeout: Duration::from_secs(60),
            h2_max_streams: 100,
        }
    }
}

/// `admin:`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawAdmin {
    /// Admin listener, `host:port` (loopback by default).
    pub listen: String,
    /// Bearer token for the protected admin endpoints.
    pub token: Option<String>,
    /// File holding the token (first line, surrounding whitespace trimmed).
    pub token_file: Option<String>,
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9180".into(),
            token: None,
            token_file: None,
        }
    }
}

/// `access_log:`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawAccessLog {
    /// Whether one JSON line per request is written.
    pub enabled: bool,
    /// `stdout`, `stderr` or a file path.
    pub path: String,
}

impl Default for RawAccessLog {
    fn default() -> Self {
        Self {
            enabled: true,
            path: "stdout".into(),
        }
    }
}

/// `upstreams.<name>:`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawUpstream {
    /// `host:port` of each server; names are resolved at load.
    pub servers: Vec<String>,
    /// Active HTTP health check; absent means every server counts as healthy.
    pub health_check: Option<RawHealthCheck>,
    /// Deadline for establishing a TCP connection to a server.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Deadline for each read from a server (also applied to writes).
    #[serde(with = "humantime_serde")]
    pub read_timeout: Duration,
    /// How long an idle pooled connection to a server is kept for reuse.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// How many other servers a failed connect is retried on.
    pub retries: u32,
    /// Upstream-wide concurrency cap.
    pub limits: RawUpstreamLimits,
    /// Circuit breaker.
    pub breaker: Option<RawBreaker>,
}

impl Default for RawUpstream {
    fn default() -> Self {
        Self {
            servers: Vec::new(),
            health_check: None,
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            retries: 2,
            limits: RawUpstreamLimits::default(),
            breaker: None,
        }
    }
}

/// `upstreams.<name>.health_check:`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawHealthCheck {
    /// Path requested with `GET`; a 2xx answer means healthy. Absent: a TCP
    /// connect is the check.
    pub path: Option<String>,
    /// Time between two checks of one server.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Deadline of one check.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Successful checks in a row that make an unhealthy server healthy again.
    pub healthy_threshold: u32,
    /// Failed checks in a row that make a healthy server unhealthy.
    pub unhealthy_threshold: u32,
}

impl Default for RawHealthCheck {
    fn default() -> Self {
        Self {
            path: None,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
        }
    }
}

/// `upstreams.<name>.limits:`
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawUpstreamLimits {
    /// Requests in flight to this upstream at most.
    pub max_inflight: Option<u32>,
    /// Let the limit follow the upstream's latency between `min` and `max`.
    pub adaptive: Option<RawAdaptive>,
}

/// `upstreams.<name>.limits.adaptive:`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawAdaptive {
    /// Lowest limit.
    pub min: u32,
    /// Highest limit.
    pub max: u32,
    /// Latency above this multiple of the best recent latency lowers the limit.
    pub tolerance: f64,
}

impl Default for RawAdaptive {
    fn default() -> Self {
        Self {
            min: 4,
            max: 64,
            tolerance: 2.0,
        }
    }
}

/// `upstreams.<name>.breaker:`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawBreaker {
    /// Failures in a row that open the breaker.
    pub consecutive_failures: u32,
    /// How long the breaker stays open before a trial request.
    #[serde(with = "humantime_serde")]
    pub open_for: Duration,
    /// Also open when this share of requests failed within `window` (0..1).
    pub error_ratio: Option<f64>,
    /// The window of `error_ratio`.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Requests needed in the window before `error_ratio` counts.
    pub min_requests: u32,
    /// Servers never taken out of rotation: when more would be open, the open
    /// ones that failed longest ago keep getting traffic (0: none).
    pub min_available: u32,
    /// Count a 503 or 429 with `Retry-After` (the upstream shedding load) as a failure.
    pub count_overload: bool,
}

impl Default for RawBreaker {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            open_for: Duration::from_secs(10),
            error_ratio: None,
            window: Duration::from_secs(10),
            min_requests: 20,
            min_available: 1,
            count_overload: false,
        }
    }
}

/// `cache:`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawCache {
    /// Memory bound of the whole cache (headers + bodies + overhead), or
    /// `auto`: a quarter of the memory the process may use.
    pub max_size: CacheSize,
    /// Responses bigger than this stream through uncached.
    pub max_object_size: Size,
    /// Peers allowed to send `PURGE` on the main listener (CIDRs or addresses).
    pub purge_allow: Vec<String>,
    /// Add the cache key to `Cache-Status` (`key=`), for debugging.
    pub status_key: bool,
    /// Concurrent misses for one key wait this long for the first one's
    /// response, then go upstream themselves.
    #[serde(with = "humantime_serde")]
    pub lock_timeout: Duration,
    /// Pass `Surrogate-Key` / `Cache-Tag` on to clients (on every route; a
    /// cache rule's own `keep_surrogate_keys` overrides it).
    pub keep_surrogate_keys: bool,
    /// The gateway's own targeted cache-control field (RFC 9213), which takes
    /// precedence over `CDN-Cache-Control`; empty: none.
    pub targeted_field: String,
    /// Pass the gateway's targeted field on to clients.
    pub forward_targeted: bool,
    /// The second cache tier, in `shared.redis`.
    pub shared: RawCacheShared,
}

/// `cache.shared:`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawCacheShared {
    /// Look memory misses up in Redis and write stored responses there.
    pub enabled: bool,
    /// Bigger responses stay in this instance's memory only.
    pub max_object_size: Size,
}

impl Default for RawCacheShared {
    fn default() -> Self {
        Self {
            enabled: false,
            max_object_size: Size(1 << 20),
        }
    }
}

/// `shared:`
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawShared {
    /// The Redis endpoint; absent = nothing is shared.
    pub redis: Option<RawRedis>,
}

/// `shared.redis:`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawRedis {
    /// `redis://[user@]host:port/db` or `rediss://` for TLS.
    pub url: String,
    /// File holding the password (first line); not in the URL, so that the
    /// file can stay readable by the service only.
    pub password_file: Option<String>,
    /// PEM file of the CA that signed the server's certificate (`rediss://`);
    /// default: the system's roots.
    pub ca_file: Option<String>,
    /// Connections in the pool at most.
    pub pool_size: u32,
    /// Bound on every Redis call (connect included).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Failed calls in a row that open the breaker (Redis is skipped).
    pub consecutive_failures: u32,
    /// Longest time the breaker stays open before one probe (it starts at
    /// 1 s and doubles while probes fail).
    #[serde(with = "humantime_serde")]
    pub open_for: Duration,
    /// First part of every key, inside a hash tag (`{gw}:...`), so that
    /// several deployments can share one Redis.
    pub key_prefix: String,
}

impl Default for RawRedis {
    fn default() -> Self {
        Self {
            url: String::new(),
            password_file: None,
            ca_file: None,
            pool_size: 16,
            timeout: Duration::from_millis(20),
            consecutive_failures: 3,
            open_for: Duration::from_secs(5),
            key_prefix: "gw".into(),
        }
    }
}

impl Default for RawCache {
    fn default() -> Self {
        Self {
            max_size: CacheSize::Bytes(Size(256 << 20)),
            max_object_size: Size(8 << 20),
            purge_allow: vec!["127.0.0.1/32".into(), "::1/128".into()],
            status_key: false,
            lock_timeout: Duration::from_secs(5),
            keep_surrogate_keys: false,
            targeted_field: "Gateway-Cache-Control".into(),
            forward_targeted: false,
            shared: RawCacheShared::default(),
        }
    }
}

/// `routes[i]:`
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawRoute {
    /// Unique name; it is the metrics label and the log field.
    pub name: String,
    /// What requests this route takes.
    #[serde(rename = "match")]
    pub matcher: RawMatch,
    /// Name of an entry of `upstreams`.
    pub upstream: String,
    /// Client addresses allowed to use the route (CIDRs or addresses); absent = everyone.
    pub allow_from: Option<Vec<String>>,
    /// Caching rule; absent = the route does not cache.
    pub cache: Option<RawRouteCache>,
    /// Concurrency, queue and rate limits.
    pub limits: RawRouteLimits,
    /// `false` turns response compression off on this route (default: on
    /// when `compression.enabled`).
    pub compression: Option<bool>,
}

/// `routes[i].match:`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawMatch {
    /// Whole-segment path prefix, starting with `/`.
    pub path_prefix: String,
    /// Allowed methods; absent = all.
    pub methods: Option<Vec<String>>,
    /// Request host without port: `api.example.com` or `*.example.com`.
    pub host: Option<String>,
    /// File extensions (`css`, `js`) the path's last segment must end in; absent = any.
    pub extensions: Option<Vec<String>>,
}

impl Default for RawMatch {
    fn default() -> Self {
        Self {
            path_prefix: "/".into(),
            methods: None,
            host: None,
            extensions: None,
        }
    }
}

/// `routes[i].cache:`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawRouteCache {
    /// Whether responses of this route are stored.
    pub enabled: bool,
    /// Freshness lifetime where RFC 9111 allows a heuristic one.
    #[serde(with = "humantime_serde")]
    pub default_ttl: Option<Duration>,
    /// Default `stale-while-revalidate` window.
    #[serde(with = "humantime_serde")]
    pub stale_while_revalidate: Option<Duration>,
    /// Default `stale-if-error` window.
    #[serde(with = "humantime_serde")]
    pub stale_if_error: Option<Duration>,
    /// Store responses that carry `Set-Cookie` (and the cookie with them).
    pub cache_set_cookie: bool,
    /// Pass `Surrogate-Key` / `Cache-Tag` from the origin on to clients on
    /// this route; absent = `cache.keep_surrogate_keys`.
    pub keep_surrogate_keys: Option<bool>,
    /// Shortest freshness lifetime given to a storable response.
    #[serde(with = "humantime_serde")]
    pub min_ttl: Option<Duration>,
    /// Longest freshness lifetime given to a stored response.
    #[serde(with = "humantime_serde")]
    pub max_ttl: Option<Duration>,
    /// Use `default_ttl` for responses without explicit freshness.
    pub heuristic: bool,
    /// How the cache key is made.
    pub key: RawCacheKey,
    /// Requests that skip the cache (no lookup, no store).
    pub bypass: RawBypass,
    /// Requests with a `Cookie`: `shared` (default) cache like any other;
    /// `private` treats them like `Authorization` (RFC 9111 §3.5).
    pub cookie_requests: CookieRequests,
    /// A `Range` request on a miss: `fill` fetches and stores the whole object;
    /// `forward` passes the range upstream and stores nothing (large objects).
    pub range_miss: RangeMiss,
}

/// `routes[i].cache.key:`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawCacheKey {
    /// `all` (sorted) or `none`.
    pub query: QueryMode,
    /// Only these query parameters count (sorted).
    pub query_allow: Vec<String>,
    /// These query parameters do not count.
    pub query_ignore: Vec<String>,
    /// Request headers whose values vary the stored response.
    pub headers: Vec<String>,
    /// Cookies whose values vary the stored response.
    pub cookies: Vec<String>,
}

impl Default for RawCacheKey {
    fn default() -> Self {
        Self {
            query: QueryMode::All,
            query_allow: Vec::new(),
            query_ignore: Vec::new(),
            headers: Vec::new(),
            cookies: Vec::new(),
        }
    }
}

/// `routes[i].cache.bypass:`
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawBypass {
    /// Skip the cache when the request has any of these cookies.
    pub cookies: Vec<String>,
    /// Skip the cache when the request has any of these headers.
    pub headers: Vec<String>,
}

impl Default for RawRouteCache {
    fn default() -> Self {
        Self {
            enabled: true,
            default_ttl: None,
            stale_while_revalidate: None,
            stale_if_error: None,
            cache_set_cookie: false,
            keep_surrogate_keys: None,
            min_ttl: None,
            max_ttl: None,
            heuristic: true,
            key: RawCacheKey::default(),
            bypass: RawBypass::default(),
            cookie_requests: CookieRequests::Shared,
            range_miss: RangeMiss::Fill,
        }
    }
}

/// `routes[i].limits:`
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawRouteLimits {
    /// Requests of this route in flight to the upstream at most.
    pub max_inflight: Option<u32>,
    /// Where requests wait when `max_inflight` is reached.
    pub queue: Option<RawQueue>,
    /// Request rate limit.
    pub rate: Option<RawRate>,
}

/// `routes[i].limits.queue:`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawQueue {
    /// Waiting requests at most.
    pub max_len: u32,
    /// Longest wait for a slot (route and upstream together).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for RawQueue {
    fn default() -> Self {
        Self {
            max_len: 100,
            timeout: Duration::from_secs(2),
        }
    }
}

/// `routes[i].limits.rate:`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawRate {
    /// Sustained rate per client address, `N/s`, `N/m` or `N/h`.
    pub per_client: Option<RateSpec>,
    /// Requests allowed in a burst above the sustained rate.
    pub burst: Option<u32>,
    /// Key clients by this request header (e.g. an API key) instead of their
    /// address; requests without it are keyed by address.
    pub key_header: Option<String>,
    /// Distinct clients tracked at most (least recently seen are forgotten).
    pub max_clients: usize,
    /// Keep the limit across instances through `shared.redis` (tokens leased
    /// in batches; local limiting when Redis does not answer in time).
    pub shared: bool,
}

impl Default for RawRate {
    fn default() -> Self {
        Self {
            per_client: None,
            burst: None,
            key_header: None,
            max_clients: 100_000,
            shared: false,
        }
    }
}

/// A byte size written `64KiB`, `256MiB`, `1GB` or as a plain number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(try_from = "SizeRepr", into = "String")]
pub struct Size(pub u64);

#[derive(Deserialize)]
#[serde(untagged)]
enum SizeRepr {
    Bytes(u64),
    Text(String),
}

impl TryFrom<SizeRepr> for Size {
    type Error = String;
    fn try_from(r: SizeRepr) -> Result<Self, Self::Error> {
        match r {
            SizeRepr::Bytes(n) => Ok(Size(n)),
            SizeRepr::Text(s) => s
                .trim()
                .parse::<bytesize::ByteSize>()
                .map(|b| Size(b.as_u64()))
                .map_err(|_| {
                    format!("invalid size {s:?}: expected e.g. 64KiB, 256MiB, 1GiB or bytes")
                }),
        }
    }
}

impl From<Size> for String {
    fn from(s: Size) -> String {
        bytesize::ByteSize(s.0).display().iec().to_string()
    }
}

impl Size {
    /// The size in bytes.
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

/// `cache.max_size`: a size, or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "SizeRepr", into = "String")]
pub enum CacheSize {
    /// A quarter of the memory the process may use (its cgroup's limit, else
    /// the machine's memory), resolved at load.
    Auto,
    /// This many bytes.
    Bytes(Size),
}

impl TryFrom<SizeRepr> for CacheSize {
    type Error = String;
    fn try_from(r: SizeRepr) -> Result<Self, Self::Error> {
        match r {
            SizeRepr::Text(s) if s.trim() == "auto" => Ok(CacheSize::Auto),
            r => Size::try_from(r)
                .map(CacheSize::Bytes)
                .map_err(|e| format!("{e}, or auto")),
        }
    }
}

impl From<CacheSize> for String {
    fn from(s: CacheSize) -> String {
        match s {
            CacheSize::Auto => "auto".into(),
            CacheSize::Bytes(b) => b.into(),
        }
    }
}

/// `routes[i].cache.key.query`: whether the query string is part of the key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QueryMode {
    /// Every parameter (or those `query_allow` / `query_ignore` leave), sorted.
    #[default]
    All,
    /// None.
    None,
}

/// `routes[i].cache.range_miss`: what a `Range` request does on a miss.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RangeMiss {
    /// Fetch and store the whole object, answer the range from it.
    #[default]
    Fill,
    /// Pass the range upstream and store nothing (large objects).
    Forward,
}

/// How a cache rule treats requests that carry a `Cookie`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CookieRequests {
    /// Like any request (cookies matter only through `key.cookies` and `bypass.cookies`).
    #[default]
    Shared,
    /// Like a request with `Authorization`: its response is stored, and a
    /// stored response is served to it, only where `public`, `s-maxage` or
    /// `must-revalidate` says the response may be shared.
    Private,
}

/// A rate written `100/s`, `6000/m` or `10/h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct RateSpec {
    /// Requests per `per`.
    pub count: u32,
    /// The window the count applies to.
    pub per: Duration,
}

impl FromStr for RateSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("invalid rate {s:?}: expected N/s, N/m or N/h, e.g. 100/s");
        let (count, unit) = s.trim().split_once('/').ok_or_else(bad)?;
        let count: u32 = count.trim().parse().map_err(|_| bad())?;
        let per = match unit.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        if count == 0 {
            return Err(format!("invalid rate {s:?}: the count must be > 0"));
        }
        Ok(Self { count, per })
    }
}

impl TryFrom<String> for RateSpec {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<RateSpec> for String {
    fn from(r: RateSpec) -> String {
        r.to_string()
    }
}

impl fmt::Display for RateSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.per.as_secs() {
            60 => "m",
            3600 => "h",
            _ => "s",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_spec_parses_units_and_rejects_junk() {
        assert_eq!(
            "100/s".parse::<RateSpec>().unwrap(),
            RateSpec {
                count: 100,
                per: Duration::from_secs(1)
            }
        );
        assert_eq!(
            "6000/m".parse::<RateSpec>().unwrap().per,
            Duration::from_secs(60)
        );
        assert_eq!("10/h".parse::<RateSpec>().unwrap().to_string(), "10/h");
        for bad in ["", "100", "100/d", "x/s", "0/s", "-1/s"] {
            assert!(bad.parse::<RateSpec>().is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn top_level_keys_are_serdes_field_list() {
        use figment::providers::{Format, Yaml};
        let err = figment::Figment::from(Yaml::string("no_such_key: 1"))
            .extract::<RawConfig>()
            .unwrap_err();
        match err.kind {
            figment::error::Kind::UnknownField(_, expected) => {
                assert_eq!(expected, TOP_LEVEL_KEYS)
            }
            other => panic!("expected an unknown-field error, got {other:?}"),
        }
    }

    #[test]
    fn sizes_parse_binary_and_decimal_units() {
        let p = |s: &str| Size::try_from(SizeRepr::Text(s.into()));
        assert_eq!(p("64KiB").unwrap(), Size(65536));
        assert_eq!(p("256MiB").unwrap(), Size(256 << 20));
        assert_eq!(p("1 KB").unwrap(), Size(1000));
        assert_eq!(Size::try_from(SizeRepr::Bytes(7)).unwrap(), Size(7));
        assert!(p("10 zb").unwrap_err().contains("invalid size"));
    }
}

/// The Let's Encrypt production directory, `tls.acme.directory`'s default.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// `tls.acme:`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawAcme {
    /// Contact address given to the CA (expiry notices).
    pub email: String,
    /// The names of the one certificate ordered (http-01: no wildcards).
    pub domains: Vec<String>,
    /// The CA's directory URL.
    pub directory: String,
    /// Trust roots for the directory's own TLS (a private CA, tests); absent = the web PKI.
    pub directory_ca: Option<String>,
    /// Account key and certificates (created 0700, files 0600).
    pub storage: String,
    /// Renew when less than this is left.
    #[serde(with = "humantime_serde")]
    pub renew_before: Duration,
}

impl Default for RawAcme {
    fn default() -> Self {
        Self {
            email: String::new(),
            domains: Vec::new(),
            directory: LETS_ENCRYPT.into(),
            directory_ca: None,
            storage: "/var/lib/gateway/acme".into(),
            renew_before: Duration::from_secs(30 * 86_400),
        }
    }
}
