//! The performance gateway: a Pingora-based caching, load-shedding front proxy.
//!
//! Layout (one module per concern):
//! - [`config`]: the YAML contract, parsed and validated into an immutable [`config::Config`].
//! - [`routes`]: the route table (first match wins).
//! - [`upstream`]: server pools and peer selection.
//! - [`state`]: the atomically swappable snapshot shared by every service.
//! - [`proxy`]: the `ProxyHttp` implementation, one file per Pingora phase.
//! - [`client`]: connection cap, TLS handshake and whole-header deadline around the proxy.
//! - [`compression`]: gzip / brotli / zstd on the way out, after the cache.
//! - [`certs`]: TLS certificates loaded from PEM files, chosen by SNI.
//! - [`tls`]: the rustls acceptors of the HTTPS listeners (certificates from the snapshot).
//! - [`breaker`]: per-server circuit breakers.
//! - [`clock`]: time passed into the logic that depends on it.
//! - [`cache`]: the response cache (storage, policy, outcome).
//! - [`access_log`]: JSON lines from a background writer.
//! - [`adaptive`]: latency-driven concurrency limit per upstream.
//! - [`admin`]: the admin listener (`/health`, `/ready`, `/metrics`).
//! - [`init`]: `gateway init`, a configuration for any app.
//! - [`hop_by_hop`]: connection-only header fields, stripped both ways.
//! - [`forwarded`]: client address and forwarding headers (trusted proxies).
//! - [`error`]: the gateway's own error answers (JSON with a request id).
//! - [`outcome`]: the one cache-outcome type (Cache-Status, X-Cache, metrics, log).
//! - [`metrics`]: Prometheus metrics in the default registry.
//! - [`quiet_log`]: normal events Pingora logs as errors, counted instead.
//! - [`ratelimit`]: per-client rate limits (GCRA), bounded memory; shared ones lease tokens from Redis.
//! - [`shared`]: the Redis several instances share (bounded calls, breaker, purge channel).
//! - [`limits`]: concurrency limits and FIFO queues (per route, per upstream).
//! - [`lifecycle`]: signals (reload, drain, upgrade), pid file.
//! - [`preflight`]: can the running user write the pid file, upgrade socket, access log.
//! - [`server`]: wiring of the Pingora server from a config, and process start.
//! - [`alloc`]: allocator settings (memory back to the system), heap profiling.

pub(crate) mod access_log;
pub(crate) mod acme;
pub(crate) mod adaptive;
pub(crate) mod admin;
pub mod alloc;
pub(crate) mod breaker;
pub mod cache;
pub mod certs;
pub mod cli;
pub(crate) mod client;
pub(crate) mod clock;
pub mod compression;
pub mod config;
pub(crate) mod error;
pub(crate) mod forwarded;
pub(crate) mod hop_by_hop;
pub(crate) mod init;
pub(crate) mod lifecycle;
pub(crate) mod limits;
pub(crate) mod metrics;
pub(crate) mod outcome;
pub(crate) mod preflight;
#[cfg(test)]
mod proptests;
pub(crate) mod proxy;
pub(crate) mod quiet_log;
pub(crate) mod ratelimit;
pub(crate) mod request_id;
pub(crate) mod routes;
pub mod server;
pub(crate) mod shared;
pub(crate) mod state;
pub(crate) mod tls;
pub(crate) mod upstream;
