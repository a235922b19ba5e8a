//! The admin listener (loopback by default): health, readiness and metrics.
//!
//! | endpoint | access |
//! |---|---|
//! | `GET /health` | open: the process is alive (with its pid: which process answers during an upgrade) |
//! | `GET /ready` | open: 200 while serving, 503 once draining; never depends on upstreams |
//! | `GET /metrics` | open: Prometheus text format |
//! | `GET /status` | open: a live HTML status page whose script reads the token endpoints ([`status`]) |
//! | `GET /upstreams` | token: servers of every upstream and their health |
//! | `GET /config` | token: the running configuration (secrets redacted), last reload |
//! | `GET /stats` | token: requests/s, p50/p99, status classes, hit ratio, in-flight, upstream health, duration histogram, last reload |
//! | `GET /limits` | token: each limiter's limit, in-flight count and queue depth; breaker states |
//! | `GET /cache/stats` | token: entries, bytes, capacity, outcomes, hit ratio |
//! | `POST /cache/purge` | token: `{"url"|"prefix"|"pattern"|"tag"|"all", "soft"}` → `{"purged": n}` |
//! | `GET /performance/cache/stats`, `POST /performance/cache/clear` | token: the guide's names; clear takes an optional `pattern` (else everything) |
//!
//! Token-protected endpoints (`/stats`, `/cache/*`, `/upstreams`, `/config`, ...)
//! answer with `Authorization: Bearer <token>` checked by [`authorize`].

use std::sync::Arc;

use async_trait::async_trait;
use http::{header, Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::error::json_error;
use crate::metrics;
use crate::request_id;
use crate::state::{Shared, Snapshot};

mod status;

/// The admin application.
pub struct AdminApp {
    shared: Arc<Shared>,
}

impl AdminApp {
    /// An admin app over the shared state.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let id = request_id::from_client(req.headers.get_all(request_id::HEADER).iter())
            .unwrap_or_else(request_id::generate);
        let id = id.to_str().unwrap_or("-").to_owned();
        let get = req.method == Method::GET || req.method == Method::HEAD;
        let resp = match req.uri.path() {
            "/health" if get => Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "application/json")
                .body(format!(r#"{{"status":"ok","pid":{}}}"#, std::process::id()).into_bytes()),
            "/ready" if get => {
                if self.shared.is_draining() {
                    json(StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"draining"}"#)
                } else {
                    json(StatusCode::OK, r#"{"status":"ready"}"#)
                }
            }
            "/status" if get => status::response(),
            "/metrics" if get => {
                publish(&self.shared.snapshot());
                metrics::publish_connections(self.shared.open_connections());
                let text = metrics::render();
                // Compressed only for clients that ask (Prometheus does).
                let gzip = req
                    .headers
                    .get_all(header::ACCEPT_ENCODING)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .any(|v| {
                        v.split(',')
                            .any(|e| e.trim().split(';').next() == Some("gzip"))
                    });
                let b = Response::builder()
                    .status(StatusCode::OK)
                    .header(
                        header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )
                    .header(header::VARY, "Accept-Encoding");
                if gzip {
                    use std::io::Write;
                    let mut enc =
                        flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                    let _ = enc.write_all(&text);
                    b.header(header::CONTENT_ENCODING, "gzip")
                        .body(enc.finish().unwrap_or_default())
                } else {
                    b.body(text)
                }
            }
            "/upstreams" if get => match self.check_token(session) {
                Ok(()) => {
                    let snap = self.shared.snapshot();
                    let ups: Vec<_> = snap.upstreams.iter().map(|p| p.status()).collect();
                    Response::builder()
                        .status(StatusCode::OK)
                        .header(header::CONTENT_TYPE, "application/json")
                        .body(
                            serde_json::to_vec(&serde_json::json!({ "upstreams": ups }))
                                .unwrap_or_default(),
                        )
                }
                Err(denied) => denied.response(&id),
            },
            "/config" if get => match self.check_token(session) {
                Ok(()) => {
                    let snap = self.shared.snapshot();
                    let body = serde_json::json!({
                        "file": self.shared.conf_path().display().to_string(),
                        "config": &snap.config.source,
                        "last_reload": self.shared.reload_status(),
                    });
                    Response::builder()
                        .status(StatusCode::OK)
                        .header(header::CONTENT_TYPE, "application/json")
                        .body(serde_json::to_vec(&body).unwrap_or_default())
                }
                Err(denied) => denied.response(&id),
            },
            "/stats" if get => match self.check_token(session) {
                Ok(()) => {
                    let sum = metrics::summary();
                    let rps = sum.requests as f64 / sum.uptime_seconds;
                    let mut v = serde_json::json!({
                        "uptime_seconds": sum.uptime_seconds as u64,
                        "requests": sum.requests,
                        "requests_per_second": (rps * 100.0).round() / 100.0,
                        "by_status": sum.by_status,
                        "latency_ms": {
                            "p50": sum.p50_ms.map(micro_round),
                            "p99": sum.p99_ms.map(micro_round),
                        },
                        "cache_hit_ratio": metrics::CacheTotals::now().hit_ratio(),
                        "open_connections": self.shared.open_connections(),
                        // Added for the status page (a client derives rates and
                        // recent percentiles from two answers):
                        "uptime_ms": sum.uptime_ms,
                        "latency_buckets": {
                            "le_ms": sum.buckets_ms.iter().map(|b| b.0).collect::<Vec<_>>(),
                            "counts": sum.buckets_ms.iter().map(|b| b.1).collect::<Vec<_>>(),
                            "count": sum.duration_count,
                        },
                        "last_reload": self.shared.reload_status(),
                    });
                    let snap = self.shared.snapshot();
                    let in_flight: serde_json::Map<_, _> = snap
                        .limiters()
                        .into_iter()
                        .map(|l| {
                            let (f, q) = (l.limiter.in_flight(), l.limiter.waiting());
                            (l.name, serde_json::json!({ "in_flight": f, "queued": q }))
                        })
                        .collect();
                    v["in_flight"] = serde_json::Value::Object(in_flight);
                    let ups: Vec<_> = snap.upstreams.iter().map(|p| p.status()).collect();
                    v["upstreams"] = serde_json::to_value(ups).unwrap_or_default();
                    if let Some(redis) = crate::shared::get() {
                        v["shared_redis"] = redis.status();
                    }
                    json_value(StatusCode::OK, &v)
                }
                Err(denied) => denied.response(&id),
            },
            "/limits" if get => match self.check_token(session) {
                Ok(()) => {
                    let snap = self.shared.snapshot();
                    let limiters: Vec<_> = snap
                        .limiters()
                        .into_iter()
                        .map(|l| {
                            let l2 = l.limiter;
                            serde_json::json!({ "name": l.name, "limit": l2.max(), "in_flight": l2.in_flight(), "queued": l2.waiting() })
                        })
                        .collect();
                    let breakers: serde_json::Map<String, serde_json::Value> = snap
                        .upstreams
                        .iter()
                        .filter_map(|p| {
                            let states = p.breaker_states()?;
                            let servers: serde_json::Map<_, _> = states
                                .into_iter()
                                .map(|(a, s)| (a, serde_json::json!(s)))
                                .collect();
                            Some((p.name().to_owned(), serde_json::Value::Object(servers)))
                        })
                        .collect();
                    json_value(
                        StatusCode::OK,
                        &serde_json::json!({ "limiters": limiters, "breakers": breakers }),
                    )
                }
                Err(denied) => denied.response(&id),
            },
            "/cache/stats" | "/performance/cache/stats" if get => match self.check_token(session) {
                Ok(()) => json_value(StatusCode::OK, &cache_stats()),
                Err(denied) => denied.response(&id),
            },
            "/cache/purge" if req.method == Method::POST => match self.check_token(session) {
                Ok(()) => self.purge(session, &id, false).await,
                Err(denied) => denied.response(&id),
            },
            "/performance/cache/clear" if req.method == Method::POST => {
                match self.check_token(session) {
                    Ok(()) => self.purge(session, &id, true).await,
                    Err(denied) => denied.response(&id),
                }
            }
            path if allowed_methods(path).is_some() => Response::builder()
                .status(StatusCode::METHOD_NOT_ALLOWED)
                .header(header::ALLOW, allowed_methods(path).unwrap_or_default())
                .header(header::CONTENT_TYPE, "application/json")
                .body(json_error("method not allowed", &id).to_vec()),
            _ => Response::builder()
                .status(StatusCode::NOT_FOUND)
                .header(header::CONTENT_TYPE, "application/json")
                .body(json_error("no such admin endpoint", &id).to_vec()),
        };
        let mut resp = resp.unwrap_or_else(|_| {
            let mut r = Response::new(json_error("internal error", &id).to_vec());
            *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            r
        });
        let len = resp.body().len();
        let h = resp.headers_mut();
        h.insert(header::CONTENT_LENGTH, len.into());
        h.insert(
            header::CACHE_CONTROL,
            http::HeaderValue::from_static("no-store"),
        );
        if let Ok(v) = http::HeaderValue::from_str(&id) {
            h.insert(request_id::HEADER, v);
        }
        if session.req_header().method == Method::HEAD {
            resp.body_mut().clear();
        }
        resp
    }
}

/// The methods an admin endpoint takes (its `Allow` on a 405); `None` for no endpoint.
fn allowed_methods(path: &str) -> Option<&'static str> {
    match path {
        "/health"
        | "/ready"
        | "/status"
        | "/metrics"
        | "/upstreams"
        | "/config"
        | "/cache/stats"
        | "/performance/cache/stats"
        | "/limits"
        | "/stats" => Some("GET, HEAD"),
        "/cache/purge" | "/performance/cache/clear" => Some("POST"),
        _ => None,
    }
}

/// Milliseconds rounded to whole microseconds (no float noise in JSON).
fn micro_round(ms: f64) -> f64 {
    (ms * 1000.0).round() / 1000.0
}

/// Sets the gauges that mirror the running state, before a scrape.
fn publish(snap: &Snapshot) {
    metrics::clear_published();
    for l in snap.limiters() {
        let l2 = l.limiter;
        metrics::publish_limiter(&l.name, l2.max(), l2.in_flight(), l2.waiting());
    }
    for pool in &snap.upstreams {
        for server in pool.status().servers {
            metrics::publish_server(pool.name(), &server.address, server.healthy, server.breaker);
        }
    }
    if let Some(store) = crate::cache::store() {
        metrics::publish_cache(store.len() as u64, store.weight(), store.capacity());
    }
    if let Some(redis) = crate::shared::get() {
        metrics::publish_shared(redis.state(), redis.channel_up());
    }
}

/// `GET /cache/stats`.
fn cache_stats() -> serde_json::Value {
    use crate::outcome::CacheOutcome::*;
    let t = metrics::CacheTotals::now();
    let (entries, bytes, capacity) =
        crate::cache::store().map_or((0, 0, 0), |s| (s.len() as u64, s.weight(), s.capacity()));
    serde_json::json!({
        "entries": entries,
        "bytes": bytes,
        "capacity": capacity,
        "hits": t.outcome(Hit),
        "misses": t.outcome(Miss) + t.outcome(Uncacheable),
        "stale_served": t.outcome(Stale),
        "revalidations": t.outcome(Revalidated) + t.outcome(Expired),
        "bypasses": t.outcome(Bypass),
        "collapsed_waits": t.collapsed,
        "stores": t.stores,
        "evictions": t.evictions,
        "purged": t.purged,
        "invalidations": t.invalidations,
        "hit_ratio": t.hit_ratio(),
    })
}

fn json_value(status: StatusCode, v: &serde_json::Value) -> http::Result<Response<Vec<u8>>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(serde_json::to_vec(v).unwrap_or_default())
}

impl AdminApp {
    /// `POST /cache/purge`: body at most 64 KiB of JSON. `clear` is the
    /// guide's `POST /performance/cache/clear`: the body is optional (`{}` or
    /// none clears everything) and takes `pattern` (and `host`).
    async fn purge(
        &self,
        session: &mut ServerSession,
        id: &str,
        clear: bool,
    ) -> http::Result<Response<Vec<u8>>> {
        let mut body = Vec::new();
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    body.extend_from_slice(&chunk);
                    if body.len() > 64 * 1024 {
                        return error(StatusCode::PAYLOAD_TOO_LARGE, "purge request too large", id);
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    return error(StatusCode::BAD_REQUEST, "cannot read the request body", id)
                }
            }
        }
        let parsed = if clear && body.iter().all(u8::is_ascii_whitespace) {
            Ok(crate::cache::purge::PurgeRequest::default())
        } else {
            serde_json::from_slice::<crate::cache::purge::PurgeRequest>(&body)
        };
        let req = match parsed {
            Ok(mut r) if clear => {
                if r.url.is_some() || r.prefix.is_some() || r.tag.is_some() || r.all {
                    return error(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "/performance/cache/clear takes pattern (and host) or nothing; \
                         use /cache/purge for url, prefix, tag or all",
                        id,
                    );
                }
                r.all = r.pattern.is_none();
                r
            }
            Ok(r) => r,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("invalid purge request: {e}"),
                    id,
                )
            }
        };
        match crate::cache::purge::execute(&req, &self.shared.snapshot()).await {
            Ok(p) => {
                let mut v = serde_json::json!({ "purged": p.local });
                if let Some(shared) = p.shared {
                    // false: Redis did not take it (other instances and the
                    // shared tier still hold what was purged here).
                    v["shared"] = serde_json::Value::Bool(shared);
                }
                json_value(StatusCode::OK, &v)
            }
            Err(msg) => error(StatusCode::UNPROCESSABLE_ENTITY, &msg, id),
        }
    }

    fn check_token(&self, session: &ServerSession) -> Result<(), Denied> {
        let snap = self.shared.snapshot();
        let auth = session.req_header().headers.get(header::AUTHORIZATION);
        authorize(
            snap.config.admin.token.as_deref(),
            auth.map(|v| v.as_bytes()),
        )
    }
}

impl Denied {
    fn response(&self, id: &str) -> http::Result<Response<Vec<u8>>> {
        match self {
            Denied::NoTokenConfigured => Response::builder()
                .status(StatusCode::FORBIDDEN)
                .header(header::CONTENT_TYPE, "application/json")
                .body(
                    json_error(
                        "no admin token configured: set admin.token or admin.token_file \
                         (or GATEWAY_ADMIN__TOKEN) to use this endpoint",
                        id,
                    )
                    .to_vec(),
                ),
            Denied::BadToken => Response::builder()
                .status(StatusCode::UNAUTHORIZED)
                .header(header::WWW_AUTHENTICATE, "Bearer")
                .header(header::CONTENT_TYPE, "application/json")
                .body(json_error("missing or wrong bearer token", id).to_vec()),
        }
    }
}

fn error(status: StatusCode, message: &str, id: &str) -> http::Result<Response<Vec<u8>>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(json_error(message, id).to_vec())
}

fn json(status: StatusCode, body: &'static str) -> http::Result<Response<Vec<u8>>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.as_bytes().to_vec())
}

/// Why a token-protected request was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Denied {
    /// No token is configured: 403 saying how to set one.
    NoTokenConfigured,
    /// Missing or wrong bearer token: 401 with `WWW-Authenticate: Bearer`.
    BadToken,
}

/// Checks `Authorization: Bearer <token>` in constant time.
pub fn authorize(configured: Option<&str>, authorization: Option<&[u8]>) -> Result<(), Denied> {
    let Some(expected) = configured else {
        return Err(Denied::NoTokenConfigured);
    };
    let given = authorization
        .and_then(|v| v.strip_prefix(b"Bearer "))
        .unwrap_or_default();
    if constant_time_eq(given, expected.as_bytes()) {
        Ok(())
    } else {
        Err(Denied::BadToken)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // Length leaks, content does not.
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_token_is_checked() {
        let t = Some("0123456789abcdef");
        assert_eq!(authorize(t, Some(b"Bearer 0123456789abcdef")), Ok(()));
        assert_eq!(
            authorize(t, Some(b"Bearer 0123456789abcdeX")),
            Err(Denied::BadToken)
        );
        assert_eq!(
            authorize(t, Some(b"0123456789abcdef")),
            Err(Denied::BadToken)
        );
        assert_eq!(authorize(t, None), Err(Denied::BadToken));
        assert_eq!(
            authorize(None, Some(b"Bearer x")),
            Err(Denied::NoTokenConfigured)
        );
    }
}
