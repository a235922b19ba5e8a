//! Upstream phase: which server gets the request, and what it is sent.

use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::upstreams::peer::HttpPeer;

use super::Ctx;
use crate::request_id;

/// The next server of the route's upstream.
pub(super) fn select_peer(ctx: &Ctx) -> Result<Box<HttpPeer>> {
    let (snap, route) = ctx
        .routed()
        .ok_or_else(|| Error::explain(ErrorType::InternalError, "upstream_peer before routing"))?;
    snap.upstreams[snap.config.routes[route].upstream].select()
}

/// A failed connect sent nothing, so any method may try the next server; each
/// server is tried at most once per request.
pub(super) fn on_connect_failure(ctx: &mut Ctx, mut e: Box<Error>) -> Box<Error> {
    ctx.connect_failures += 1;
    if let Some((snap, route)) = ctx.routed() {
        let servers = snap.upstreams[snap.config.routes[route].upstream].server_count();
        if ctx.connect_failures < servers {
            e.set_retry(true);
        }
    }
    e
}

/// Headers the upstream must see.
pub(super) fn prepare_request(req: &mut RequestHeader, ctx: &Ctx) -> Result<()> {
    req.insert_header(request_id::HEADER, ctx.request_id.clone())?;
    Ok(())
}
