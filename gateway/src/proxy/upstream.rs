//! Upstream phase: which server gets the request, and what it is sent.

use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::upstreams::peer::HttpPeer;

use super::Ctx;
use crate::hop_by_hop;
use crate::limits::Shed;
use crate::request_id;

/// The next server of the route's upstream, never one this request already failed on.
pub(super) fn select_peer(ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
    let (snap, route) = ctx
        .routed()
        .ok_or_else(|| Error::explain(ErrorType::InternalError, "upstream_peer before routing"))?;
    let peer = snap.upstreams[snap.config.routes[route].upstream].select(&ctx.failed_servers);
    let peer = match peer {
        Ok(p) => p,
        // Upstream-sourced, so a stale copy may answer (stale-if-error).
        Err(mut e) => {
            e.as_up();
            return Err(e);
        }
    };
    ctx.peer = Some(peer._address.clone());
    ctx.outcome_recorded = false;
    ctx.upstream_started = Some(std::time::Instant::now());
    Ok(peer)
}

/// Feeds the upstream's adaptive limit with this attempt's response time.
pub(super) fn observe_latency(ctx: &mut Ctx) {
    let (Some((snap, route)), Some(started)) = (ctx.routed(), ctx.upstream_started) else {
        return;
    };
    let elapsed = started.elapsed();
    let upstream = snap.config.routes[route].upstream;
    snap.upstreams[upstream]
        .duration
        .observe(elapsed.as_secs_f64());
    if let Some(adaptive) = &snap.adaptive[upstream] {
        adaptive.observe(elapsed);
    }
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
        crate::metrics::upstream_error(
            snap.upstreams[snap.config.routes[route].upstream].name(),
            kind,
        );
    }
}

/// Reports how the request went to the server's circuit breaker, once.
pub(super) fn record_outcome(ctx: &mut Ctx, ok: bool) {
    if ctx.outcome_recorded {
        return;
    }
    ctx.outcome_recorded = true;
    if let (Some((snap, route)), Some(peer)) = (ctx.routed(), ctx.peer.as_ref()) {
        snap.upstreams[snap.config.routes[route].upstream].record(peer, ok);
    }
}

/// A failed connect sent nothing, so any method may try another server, up to
/// the upstream's `retries`.
pub(super) fn on_connect_failure(ctx: &mut Ctx, peer: &HttpPeer, mut e: Box<Error>) -> Box<Error> {
    record_outcome(ctx, false);
    ctx.failed_servers.push(peer._address.clone());
    if let Some((snap, route)) = ctx.routed() {
        let pool = &snap.upstreams[snap.config.routes[route].upstream];
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
    ctx.client.set_headers(req, "http")?;
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
    let route_limiter = snap.route_limiters[route].clone();
    let upstream_limiter = snap.upstream_limiters[r.upstream].clone();
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
        snap.route_metrics[route].queue_wait(waited.as_secs_f64());
    }
    match outcome {
        Some(Ok(slots)) => {
            ctx.slots = Some(slots);
            Ok(())
        }
        Some(Err(shed)) => {
            if let Some((snap, route)) = ctx.routed() {
                snap.route_metrics[route].shed(shed.reason());
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
