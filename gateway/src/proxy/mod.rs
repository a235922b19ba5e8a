//! The Pingora proxy: [`Gateway`] implements `ProxyHttp`, one method per phase.
//!
//! Phase logic lives in the files of this module, named after Pingora's phases:
//! [`request`] (request id, routing), [`upstream`] (peer selection, connect
//! retries), [`response`] (headers to the client, error responses) and
//! [`logging`] (metrics at the end of each request).

mod cache;
mod logging;
mod request;
mod response;
mod upstream;

use std::sync::Arc;

use async_trait::async_trait;
use http::HeaderValue;
use pingora::cache::key::HashBinary;
use pingora::cache::storage::HitHandler;
use pingora::cache::{CacheKey, CacheMeta, ForcedFreshness, RespCacheable};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::FailToProxy;
use pingora::upstreams::peer::HttpPeer;

use crate::acme::Challenges;
use crate::error::GatewayError;
use crate::forwarded::Client;
use crate::state::{Shared, Snapshot};

/// The proxy service's logic, shared by every connection.
pub struct Gateway {
    shared: Arc<Shared>,
    /// http-01 challenges in progress, answered before routing.
    challenges: Arc<Challenges>,
}

impl Gateway {
    /// A proxy that reads its configuration from `shared` and answers the
    /// ACME challenges in `challenges`.
    pub fn new(shared: Arc<Shared>, challenges: Arc<Challenges>) -> Self {
        Self { shared, challenges }
    }
}

/// Per-request state, from the first hook to logging.
pub struct Ctx {
    /// `X-Request-Id` of this request (the client's when sane, else generated).
    request_id: HeaderValue,
    /// The configuration snapshot pinned when the request was routed.
    snapshot: Option<Arc<Snapshot>>,
    /// Index of the matched route in `snapshot.config.routes`.
    route: Option<usize>,
    /// Who sent the request (socket peer, trusted-proxy headers).
    client: Client,
    /// The request came over TLS (a `tls.listen` listener).
    tls: bool,
    /// Request body bytes seen so far.
    body_bytes: u64,
    /// Concurrency slots, once admitted.
    slots: Option<upstream::Slots>,
    /// The server the request was sent to (last attempt).
    peer: Option<pingora::protocols::l4::socket::SocketAddr>,
    /// The attempt's outcome was reported to the server's circuit breaker.
    outcome_recorded: bool,
    /// When the current upstream attempt started (for the adaptive limit).
    upstream_started: Option<std::time::Instant>,
    /// Time to the upstream's response header.
    upstream_elapsed: Option<std::time::Duration>,
    /// Wait for concurrency slots.
    queue_wait: Option<std::time::Duration>,
    /// When the request began.
    started: std::time::Instant,
    /// Servers a connect failed on, in order (empty unless something failed).
    failed_servers: Vec<pingora::protocols::l4::socket::SocketAddr>,
    /// When an open breaker refused the request: until the first half-opens.
    retry_after: Option<std::time::Duration>,
    /// A `ready_path` probe (answered by the gateway, counted in no route).
    probe: bool,
    /// Set when the gateway answered with its own error.
    error: Option<GatewayError>,
    /// What the cache did.
    cache: CacheCtx,
}

/// Per-request cache state.
#[derive(Default)]
pub struct CacheCtx {
    /// The route caches and the request method may be served from cache.
    enabled: bool,
    /// The upstream response was judged storable.
    stored: bool,
    /// The outcome reported in the headers.
    outcome: Option<crate::cache::CacheOutcome>,
    /// The request's cache directives.
    directives: crate::cache::request::RequestDirectives,
    /// A fresh stored response was not used because of the request's directives.
    by_request: bool,
    /// A bypass condition of the rule held.
    bypassed: bool,
    /// The 304 that answered a revalidation (its fields update the stored response).
    not_modified: Option<Box<ResponseHeader>>,
    /// The hit came from the shared tier (memory had missed).
    shared_hit: bool,
}

impl Ctx {
    /// The request id as text (always visible ASCII).
    fn request_id(&self) -> &str {
        self.request_id.to_str().unwrap_or("-")
    }

    /// Snapshot and route index, once routed.
    fn routed(&self) -> Option<(&Snapshot, usize)> {
        Some((self.snapshot.as_deref()?, self.route?))
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    /// Our compression module instead of Pingora's (q-values, no-transform,
    /// ranges, min_size; see [`crate::compression`]).
    fn init_downstream_modules(&self, modules: &mut pingora::modules::http::HttpModules) {
        modules.add_module(Box::new(crate::compression::CompressBuilder));
    }

    fn new_ctx(&self) -> Ctx {
        Ctx {
            request_id: HeaderValue::from_static(""),
            snapshot: None,
            route: None,
            client: Client {
                peer: std::net::Ipv4Addr::UNSPECIFIED.into(),
                peer_trusted: false,
                ip: std::net::Ipv4Addr::UNSPECIFIED.into(),
            },
            tls: false,
            body_bytes: 0,
            slots: None,
            peer: None,
            outcome_recorded: false,
            upstream_started: None,
            upstream_elapsed: None,
            queue_wait: None,
            started: std::time::Instant::now(),
            failed_servers: Vec::new(),
            retry_after: None,
            probe: false,
            error: None,
            cache: CacheCtx::default(),
        }
    }

    async fn early_request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        crate::alloc::register_worker();
        request::identify(&self.shared, session, ctx);
        request::prepare_session(&self.shared, session, ctx);
        request::assign_request_id(session, ctx);
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        if request::readiness(&self.shared, session, ctx).await?
            || request::acme_challenge(&self.challenges, session, ctx).await?
        {
            return Ok(true);
        }
        request::filter(session, ctx).await
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        request::count_body(body, ctx)
    }

    fn request_cache_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        cache::enable(session, ctx);
        Ok(())
    }

    fn cache_key_callback(&self, session: &Session, ctx: &mut Ctx) -> Result<CacheKey> {
        cache::key(session, ctx)
    }

    fn cache_vary_filter(
        &self,
        meta: &CacheMeta,
        ctx: &mut Ctx,
        req: &RequestHeader,
    ) -> Option<HashBinary> {
        cache::variance(meta, req, ctx)
    }

    fn response_cache_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<RespCacheable> {
        Ok(cache::storable(session, resp, ctx))
    }

    async fn cache_hit_filter(
        &self,
        session: &mut Session,
        meta: &CacheMeta,
        hit_handler: &mut HitHandler,
        is_fresh: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<ForcedFreshness>> {
        Ok(cache::on_hit(session, meta, hit_handler, is_fresh, ctx))
    }

    /// Stale-while-revalidate (no error: Pingora has already checked the entry's
    /// window and that this request holds or waits on the refresh) and
    /// stale-if-error for upstream failures and 5xx.
    fn should_serve_stale(
        &self,
        _session: &mut Session,
        _ctx: &mut Ctx,
        error: Option<&Error>,
    ) -> bool {
        error.is_none_or(|e| e.esource() == &pingora::ErrorSource::Upstream)
    }

    /// Runs on a cache miss only, before going upstream.
    async fn proxy_upstream_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        Ok(!cache::only_if_cached(session, ctx).await?)
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        upstream::admit(session, ctx).await?;
        upstream::select_peer(ctx)
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut Ctx,
        e: Box<Error>,
    ) -> Box<Error> {
        upstream::on_connect_failure(ctx, peer, e)
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        upstream::prepare_request(session, upstream_request, ctx)
    }

    /// The upstream answered: a 5xx counts as a failure for its breaker
    /// (see [`upstream::classify`] for overload answers).
    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        cache::note_304(session, upstream_response, ctx);
        let outcome = upstream::classify(upstream_response);
        upstream::record_outcome(ctx, outcome);
        if upstream_response.status.as_u16() >= 500 {
            if let Some((snap, route)) = ctx.routed() {
                crate::metrics::upstream_error(snap.upstream_of(route).name(), "5xx");
            }
        }
        upstream::observe_latency(ctx);
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        cache::apply_304(upstream_response, ctx);
        response::prepare_response(session, upstream_response, ctx)?;
        cache::invalidate(session, upstream_response, ctx);
        cache::annotate(session, upstream_response, ctx)?;
        response::drop_invalid_date(upstream_response);
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        if e.esource() == &pingora::ErrorSource::Upstream && ctx.peer.is_some() {
            upstream::record_outcome(ctx, crate::upstream::Outcome::Failed);
            upstream::count_error(ctx, e);
        }
        response::fail_to_proxy(session, e, ctx).await
    }

    /// A client that goes away mid-request is routine, not an error worth a log line.
    fn suppress_error_log(&self, _session: &Session, _ctx: &Ctx, error: &Error) -> bool {
        GatewayError::from_pingora(error).is_none()
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        crate::client::request_done(session);
        cache::release_lock(session, ctx);
        logging::log_request(session, e, ctx);
    }
}
