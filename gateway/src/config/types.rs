//! The internal, already-checked configuration: what the rest of the gateway
//! reads. Everything here is parsed: socket addresses, CIDRs, methods, host
//! patterns, non-zero limits. Code that holds a [`Config`] never re-checks it.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use http::Method;
use ipnet::IpNet;

pub use super::raw::CookieRequests;
use super::raw::{RateSpec, RawConfig};

/// Pingora's own hard cap on request header bytes (`MAX_HEADER_SIZE`).
pub const PINGORA_MAX_HEADER_BYTES: u64 = 1024 * 1024;
/// Pingora's own hard cap on request header fields (`MAX_HEADERS`).
pub const PINGORA_MAX_HEADERS: usize = 256;

/// The validated gateway configuration: one immutable snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Main listener.
    pub listen: SocketAddr,
    /// Proxy worker threads.
    pub threads: usize,
    /// Daemon pid file.
    pub pid_file: PathBuf,
    /// Binary-upgrade socket.
    pub upgrade_sock: PathBuf,
    /// Idle upstream connections kept, all upstreams together.
    pub upstream_keepalive_pool_size: usize,
    /// Stop timings.
    pub shutdown: Shutdown,
    /// Peers whose forwarding headers are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Path the main listener answers with readiness (200 serving, 503 draining).
    pub ready_path: Option<String>,
    /// Client-side limits.
    pub client: ClientLimits,
    /// Admin listener.
    pub admin: Admin,
    /// Access log.
    pub access_log: AccessLog,
    /// Upstreams in name order; routes refer to them by index.
    pub upstreams: Vec<Upstream>,
    /// Shared cache.
    pub cache: Cache,
    /// HTTPS listeners and certificates.
    pub tls: Option<Tls>,
    /// Response compression.
    pub compression: Compression,
    /// Redis shared by several instances (`None`: not configured).
    pub redis: Option<Redis>,
    /// Routes in file order (first match wins).
    pub routes: Vec<Route>,
    /// The file as parsed (defaults filled in, secrets redacted), for `GET /config`.
    pub source: RawConfig,
}

/// `tls.acme:` checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Acme {
    /// Contact address (without `mailto:`).
    pub email: String,
    /// Lower-case DNS names, the first naming the stored files.
    pub domains: Vec<String>,
    /// The CA's directory URL.
    pub directory: String,
    /// Trust roots for the directory's TLS.
    pub directory_ca: Option<PathBuf>,
    /// Account key and certificates.
    pub storage: PathBuf,
    /// Renew when less than this is left.
    pub renew_before: Duration,
}

/// `shutdown:` with whole-second durations where Pingora counts seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shutdown {
    /// Time `/ready` says 503 while listeners still accept.
    pub drain_delay: Duration,
    /// Upper bound on the whole stop.
    pub grace_period: Duration,
}

/// `client:`
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClientLimits {
    /// Open downstream connections at most.
    pub max_connections: usize,
    /// Header block bytes at most.
    pub max_header_bytes: usize,
    /// Header fields at most.
    pub max_headers: usize,
    /// Whole-header-block deadline.
    pub header_timeout: Duration,
    /// Body bytes at most.
    pub max_body_size: u64,
    /// Idle keep-alive time.
    pub keepalive_timeout: Duration,
    /// Concurrent HTTP/2 streams per connection.
    pub h2_max_streams: u32,
}

/// `compression:`
#[derive(Debug, Clone, PartialEq)]
pub struct Compression {
    /// On for routes that do not turn it off.
    pub enabled: bool,
    /// Codings offered, preferred first.
    pub algorithms: Vec<crate::compression::Encoding>,
    /// Smaller bodies (by `Content-Length`) stay as they are.
    pub min_size: u64,
}

/// Lowest TLS protocol version accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3.
    Tls12,
    /// TLS 1.3 only.
    Tls13,
}

/// `tls:`
#[derive(Debug, Clone, PartialEq)]
pub struct Tls {
    /// HTTPS listeners.
    pub listen: Vec<SocketAddr>,
    /// Loaded certificates, chosen by SNI.
    pub certificates: crate::certs::CertStore,
    /// Lowest version accepted.
    pub min_version: TlsVersion,
    /// TLS handshake deadline.
    pub handshake_timeout: Duration,
    /// The plain listener redirects to HTTPS.
    pub redirect_http: bool,
    /// The `Strict-Transport-Security` value, when configured.
    pub hsts: Option<http::HeaderValue>,
    /// Port of the first HTTPS listener (the redirect target's port).
    pub https_port: u16,
    /// Automatic certificates, if configured.
    pub acme: Option<Acme>,
}

/// `admin:`
#[derive(Clone, PartialEq)]
pub struct Admin {
    /// Admin listener.
    pub listen: SocketAddr,
    /// Bearer token, if one is configured.
    pub token: Option<String>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Where access-log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
    /// A file, appended to.
    File(PathBuf),
}

/// `access_log:`
#[derive(Debug, Clone, PartialEq)]
pub struct AccessLog {
    /// Whether lines are written.
    pub enabled: bool,
    /// Where.
    pub target: LogTarget,
}

/// One server of an upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    /// As written in the file (`app.internal:5000`).
    pub spec: String,
    /// Resolved at load.
    pub addr: SocketAddr,
}

/// `upstreams.<name>:`
#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    /// The key in `upstreams`.
    pub name: String,
    /// Resolved servers; never empty.
    pub servers: Vec<Server>,
    /// Active health check.
    pub health_check: Option<HealthCheck>,
    /// TCP connect deadline.
    pub connect_timeout: Duration,
    /// Per-read (and per-write) deadline.
    pub read_timeout: Duration,
    /// Idle pooled connection lifetime.
    pub idle_timeout: Duration,
    /// Other servers a failed connect is retried on.
    pub retries: u32,
    /// Upstream-wide in-flight cap (the starting point of an adaptive limit).
    pub max_inflight: Option<NonZeroU32>,
    /// Adaptive limit bounds.
    pub adaptive: Option<Adaptive>,
    /// Circuit breaker.
    pub breaker: Option<Breaker>,
}

/// `health_check:`
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    /// Path requested; `None`: a TCP connect is the check.
    pub path: Option<String>,
    /// Time between checks.
    pub interval: Duration,
    /// Deadline of one check.
    pub timeout: Duration,
    /// Successes in a row to become healthy.
    pub healthy_threshold: NonZeroU32,
    /// Failures in a row to become unhealthy.
    pub unhealthy_threshold: NonZeroU32,
}

/// `breaker:`
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Breaker {
    /// Failures in a row that open it.
    pub consecutive_failures: NonZeroU32,
    /// Open time before a trial.
    pub open_for: Duration,
    /// Failed share within `window` that opens it.
    pub error_ratio: Option<f64>,
    /// Window of `error_ratio`.
    pub window: Duration,
    /// Requests needed in the window before the ratio counts.
    pub min_requests: u32,
    /// Servers the balancer never takes out of rotation.
    pub min_available: u32,
    /// Whether a 503 or 429 with `Retry-After` counts as a failure.
    pub count_overload: bool,
}

/// `upstreams.<name>.limits.adaptive:`
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Adaptive {
    /// Lowest limit.
    pub min: u32,
    /// Highest limit.
    pub max: u32,
    /// Latency multiple of the baseline that lowers the limit.
    pub tolerance: f64,
}

/// `cache:`
#[derive(Debug, Clone, PartialEq)]
pub struct Cache {
    /// Byte bound of the whole cache.
    pub max_size: u64,
    /// Largest storable response.
    pub max_object_size: u64,
    /// Who may send `PURGE`.
    pub purge_allow: Vec<IpNet>,
    /// Show the cache key in `Cache-Status`.
    pub status_key: bool,
    /// Longest wait behind another request filling the same key.
    pub lock_timeout: Duration,
    /// Pass `Surrogate-Key` / `Cache-Tag` on to clients on routes without a
    /// cache rule of their own saying otherwise.
    pub keep_surrogate_keys: bool,
    /// The gateway's own targeted cache-control field (RFC 9213), first in
    /// its target list before `CDN-Cache-Control`; `None`: disabled.
    pub targeted_field: Option<http::HeaderName>,
    /// Pass the gateway's targeted field on to clients (else it is removed).
    pub forward_targeted: bool,
    /// The second tier in Redis (`None`: off).
    pub shared: Option<SharedCache>,
}

/// `cache.shared:` when enabled (it needs `shared.redis`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SharedCache {
    /// Larger responses stay local.
    pub max_object_size: u64,
}

/// `shared.redis:`, checked: the URL parsed, the password read.
#[derive(Clone, PartialEq)]
pub struct Redis {
    /// The URL as written (no password in it).
    pub url: String,
    /// Whether the URL is `rediss://`.
    pub tls: bool,
    /// The password read from `password_file`.
    pub password: Option<String>,
    /// PEM of the CA to trust for TLS (read from `ca_file`).
    pub ca_pem: Option<Vec<u8>>,
    /// Pool size.
    pub pool_size: u32,
    /// Bound on every call.
    pub timeout: Duration,
    /// Breaker: failures in a row that open it, and its longest open period.
    pub breaker: Breaker,
    /// Key prefix (inside the hash tag).
    pub key_prefix: String,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("url", &self.url)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("pool_size", &self.pool_size)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// How a route matches the request host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    /// Exactly this host (lowercase, no port).
    Exact(String),
    /// Any host ending in this suffix, which starts with a dot (`*.example.com` → `.example.com`).
    Suffix(String),
}

/// `routes[i].match:`, compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteMatch {
    /// Prefix without trailing slash (`/` stays `/`).
    pub path_prefix: String,
    /// Allowed methods; `None` = all.
    pub methods: Option<Vec<Method>>,
    /// Host pattern; `None` = any host.
    pub host: Option<HostMatch>,
    /// Extensions (lowercase, no dot) the last path segment must end in; `None` = any.
    pub extensions: Option<Vec<String>>,
}

/// `routes[i].cache:`
#[derive(Debug, Clone, PartialEq)]
pub struct RouteCache {
    /// Heuristic freshness lifetime where RFC 9111 allows one.
    pub default_ttl: Option<Duration>,
    /// Default SWR window.
    pub stale_while_revalidate: Option<Duration>,
    /// Default SIE window.
    pub stale_if_error: Option<Duration>,
    /// Store responses with `Set-Cookie`.
    pub cache_set_cookie: bool,
    /// Pass `Surrogate-Key` / `Cache-Tag` on to clients.
    pub keep_surrogate_keys: bool,
    /// Freshness lifetime floor (never applied to no-cache or must-revalidate).
    pub min_ttl: Option<Duration>,
    /// Freshness lifetime cap.
    pub max_ttl: Option<Duration>,
    /// How the query counts in the key.
    pub query: QueryKey,
    /// Request headers (lowercase) that vary the stored response.
    pub key_headers: Vec<http::HeaderName>,
    /// Cookies that vary the stored response.
    pub key_cookies: Vec<String>,
    /// Cookies whose presence bypasses the cache.
    pub bypass_cookies: Vec<String>,
    /// Headers whose presence bypasses the cache.
    pub bypass_headers: Vec<http::HeaderName>,
    /// On a miss, forward a client's `Range` upstream instead of filling.
    pub forward_range_misses: bool,
    /// How requests with a `Cookie` are treated.
    pub cookie_requests: CookieRequests,
}

/// How the query string counts in the cache key (always sorted by name).
#[derive(Debug, Clone, PartialEq)]
pub enum QueryKey {
    /// Every parameter.
    All,
    /// No parameter.
    None,
    /// Only these.
    Allow(Vec<String>),
    /// All but these.
    Ignore(Vec<String>),
}

/// `routes[i].limits.queue:`
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Queue {
    /// Waiting requests at most.
    pub max_len: u32,
    /// Longest wait.
    pub timeout: Duration,
}

/// `routes[i].limits.rate:`
#[derive(Debug, Clone, PartialEq)]
pub struct Rate {
    /// Sustained rate per client.
    pub per_client: RateSpec,
    /// Burst allowance.
    pub burst: u32,
    /// Header that keys clients instead of their address.
    pub key_header: Option<http::HeaderName>,
    /// Clients tracked at most.
    pub max_clients: usize,
    /// Kept across instances through Redis.
    pub shared: bool,
}

/// `routes[i].limits:`
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteLimits {
    /// Route-wide in-flight cap.
    pub max_inflight: Option<NonZeroU32>,
    /// Wait queue.
    pub queue: Option<Queue>,
    /// Rate limit.
    pub rate: Option<Rate>,
}

/// `routes[i]:`
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// Unique name (metrics label).
    pub name: String,
    /// Compiled matcher.
    pub matcher: RouteMatch,
    /// Index into [`Config::upstreams`].
    pub upstream: usize,
    /// Allowed client networks; `None` = everyone.
    pub allow_from: Option<Vec<IpNet>>,
    /// Caching rule; `None` = no caching.
    pub cache: Option<RouteCache>,
    /// Limits.
    pub limits: RouteLimits,
    /// Responses may be compressed (with `compression.enabled`).
    pub compression: bool,
}
