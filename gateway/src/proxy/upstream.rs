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
    Ok(())
}
