//! Upstream phase: which server gets the request, and what it is sent.

use std::time::Instant;

use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::upstreams::peer::HttpPeer;

use super::Ctx;
use crate::error::{BREAKER_OPEN, NO_SERVER};
use crate::hop_by_hop;
use crate::limits::Shed;
use crate::request_id;
use crate::upstream::{NoPeer, Outcome};

/// The next server of the route's upstream, never one this request already failed on.
pub(super) fn select_peer(ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
    let (snap, route) = ctx
        .routed()
        .ok_or_else(|| Error::explain(ErrorType::InternalError, "upstream_peer before routing"))?;
    let pool = snap.upstream_of(route);
    let picked = pool.select(&ctx.failed_servers, Instant::now());
    // Upstream-sourced errors, so a stale copy may answer (stale-if-error).
    let peer = match picked {
        Ok(p) => p,
        Err(NoPeer::NoServer) => {
            let e = Error::explain(ErrorType::Custom(NO_SERVER), pool.name().to_owned());
            return Err(e.into_up());
        }
        Err(NoPeer::BreakerOpen { retry_in }) => {
            let e = Error::explain(ErrorType::Custom(BREAKER_OPEN), pool.name().to_owned());
            ctx.retry_after = Some(retry_in);
            return Err(e.into_up());
        }
    };
    ctx.peer = Some(peer._address.clone());
    ctx.outcome_recorded = false;
    ctx.upstream_started = Some(Instant::now());
    Ok(peer)
}

/// Feeds the upstream's adaptive limit with this attempt's response time.
pub(super) fn observe_latency(ctx: &mut Ctx) {
    let (Some((snap, route)), Some(started)) = (ctx.routed(), ctx.upstream_started) else {
        return;
    };
    let now = Instant::now();
    let elapsed = now.saturating_duration_since(started);
    snap.upstream_of(route).observe_latency(elapsed, now);
    ctx.upstream_elapsed = Some(elapsed);
}

/// Counts an upstream failure by kind (connect failures are counted per attempt
/// in `on_connect_failure`).
pub(super) fn count_error(ctx: &Ctx, e: &Error) {
    use ErrorType::*;
    let kind = match e.etype() {
        ConnectTimedout | ConnectRefused | ConnectNoRoute | ConnectError | ConnectProxyFailure => {
            return
        }
        ReadTimedout | WriteTimedout => "timeout",
        ConnectionClosed | ReadError | WriteError => "reset",
        _ => "other",
    };
    if let Some((snap, route)) = ctx.routed() {
        crate::metrics::upstream_error(snap.upstream_of(route).name(), kind);
    }
}

/// Reports how the request went to the server's circuit breaker, once.
pub(super) fn record_outcome(ctx: &mut Ctx, outcome: Outcome) {
    if ctx.outcome_recorded {
        return;
    }
    ctx.outcome_recorded = true;
    if let (Some((snap, route)), Some(peer)) = (ctx.routed(), ctx.peer.as_ref()) {
        snap.upstream_of(route)
            .record(peer, outcome, Instant::now());
    }
}

/// What an upstream response says about its server: a 5xx is a failure,
/// except a 503 with `Retry-After` (like a 429 with it): the server shedding load.
pub(super) fn classify(resp: &ResponseHeader) -> Outcome {
    let status = resp.status.as_u16();
    let retry_after = resp.headers.contains_key(http::header::RETRY_AFTER);
    match status {
        503 | 429 if retry_after => Outcome::Overloaded,
        500.. => Outcome::Failed,
        _ => Outcome::Ok,
    }
}

/// A failed connect sent nothing, so any method may try another server, up to
/// the upstream's `retries`.
pub(super) fn on_connect_failure(ctx: &mut Ctx, peer: &HttpPeer, mut e: Box<Error>) -> Box<Error> {
    record_outcome(ctx, Outcome::Failed);
    ctx.failed_servers.push(peer._address.clone());
    if let Some((snap, route)) = ctx.routed() {
        let pool = snap.upstream_of(route);
        crate::metrics::upstream_error(pool.name(), "connect");
        if ctx.failed_servers.len() <= pool.max_connect_retries() {
            e.set_retry(true);
        }
    }
    e
}

/// Headers the upstream must see: hop-by-hop ones gone, forwarding ones set.
pub(super) fn prepare_request(session: &Session, req: &mut RequestHeader, ctx: &Ctx) -> Result<()> {
    if !session.is_upgrade_req() {
        hop_by_hop::strip_request(req);
    }
    req.insert_header(request_id::HEADER, ctx.request_id.clone())?;
    ctx.client
        .set_headers(req, if ctx.tls { "https" } else { "http" })?;
    forward_range(session, req, ctx)?;
    Ok(())
}

/// Pingora drops `Range` on a cache miss to fill the whole object; a rule with
/// `range_miss: forward` puts it back (the 206 is then passed on, not stored).
fn forward_range(session: &Session, req: &mut RequestHeader, ctx: &Ctx) -> Result<()> {
    let Some((snap, route)) = ctx.routed() else {
        return Ok(());
    };
    let forward = snap.config.routes[route]
        .cache
        .as_ref()
        .is_some_and(|c| c.forward_range_misses);
    if !forward {
        return Ok(());
    }
    let downstream = &session.req_header().headers;
    for name in [http::header::RANGE, http::header::IF_RANGE] {
        if let Some(v) = downstream.get(&name) {
            req.insert_header(name, v.clone())?;
        }
    }
    Ok(())
}

/// Takes the route slot, then the upstream slot, under one deadline
/// (`queue.timeout`); once per request (retries keep the slots).
///
/// A shed request fails with an upstream-sourced error, so that a stale cached
/// copy may answer instead (stale-if-error) and otherwise a 503 + Retry-After.
/// A client that leaves while queued never reaches the upstream.
pub(super) async fn admit(session: &mut Session, ctx: &mut Ctx) -> Result<()> {
    if ctx.slots.is_some() {
        return Ok(());
    }
    let Some((snap, route)) = ctx.routed() else {
        return Ok(());
    };
    let r = &snap.config.routes[route];
    let route_limiter = snap.routes[route].limiter.clone();
    let upstream_limiter = snap.upstream_of(route).limiter().cloned();
    if route_limiter.is_none() && upstream_limiter.is_none() {
        ctx.slots = Some(Slots::default());
        return Ok(());
    }
    let (max_waiting, timeout) = r.limits.queue.map_or((0, std::time::Duration::ZERO), |q| {
        (q.max_len as usize, q.timeout)
    });
    let queued_at = std::time::Instant::now();
    let deadline = tokio::time::Instant::now() + timeout;
    let wait = async move {
        let route_slot = match &route_limiter {
            Some(l) => Some(l.acquire(max_waiting, deadline).await?),
            None => None,
        };
        let upstream_slot = match &upstream_limiter {
            Some(l) => Some(l.acquire(max_waiting, deadline).await?),
            None => None,
        };
        Ok::<_, Shed>(Slots {
            _route: route_slot,
            _upstream: upstream_slot,
        })
    };
    // Watch the client while queued, unless that would consume its body.
    let outcome = if session.as_downstream_mut().is_body_empty() {
        tokio::select! {
            got = wait => Some(got),
            _ = session.as_downstream_mut().read_body_or_idle(true) => None,
        }
    } else {
        Some(wait.await)
    };
    let waited = queued_at.elapsed();
    ctx.queue_wait = Some(waited);
    if let Some((snap, route)) = ctx.routed() {
        snap.routes[route].metrics.queue_wait(waited.as_secs_f64());
    }
    match outcome {
        Some(Ok(slots)) => {
            ctx.slots = Some(slots);
            Ok(())
        }
        Some(Err(shed)) => {
            if let Some((snap, route)) = ctx.routed() {
                snap.routes[route].metrics.shed(shed.reason());
            }
            let kind = match shed {
                Shed::QueueFull => crate::error::SHED_QUEUE_FULL,
                Shed::QueueTimeout => crate::error::SHED_QUEUE_TIMEOUT,
            };
            Err(Error::new_up(ErrorType::Custom(kind)))
        }
        None => Err(Error::new_down(ErrorType::ConnectionClosed)),
    }
}

/// Slots held for the whole request (released when the context drops).
#[derive(Default)]
pub struct Slots {
    _route: Option<tokio::sync::OwnedSemaphorePermit>,
    _upstream: Option<tokio::sync::OwnedSemaphorePermit>,
}
