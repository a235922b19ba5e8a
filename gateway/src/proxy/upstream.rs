//! Upstream phase: which server gets the request, and what it is sent.

use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::upstreams::peer::HttpPeer;

use super::Ctx;
use crate::hop_by_hop;
use crate::request_id;

/// The next server of the route's upstream, never one this request already failed on.
pub(super) fn select_peer(ctx: &Ctx) -> Result<Box<HttpPeer>> {
    let (snap, route) = ctx
        .routed()
        .ok_or_else(|| Error::explain(ErrorType::InternalError, "upstream_peer before routing"))?;
    snap.upstreams[snap.config.routes[route].upstream].select(&ctx.failed_servers)
}

/// A failed connect sent nothing, so any method may try another server, up to
/// the upstream's `retries`.
pub(super) fn on_connect_failure(ctx: &mut Ctx, peer: &HttpPeer, mut e: Box<Error>) -> Box<Error> {
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
