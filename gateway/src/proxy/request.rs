//! Request phase: request id and routing.

use pingora::prelude::*;

use super::{response, Ctx};
use crate::error::GatewayError;
use crate::request_id;
use crate::routes;
use crate::state::Shared;

/// Per-connection settings that must be in place before anything is read or written.
pub(super) fn prepare_session(session: &mut Session) {
    // Answer pipelined HTTP/1.1 requests in order (RFC 9112 §9.3.2) instead of
    // dropping the second one with the connection.
    session.as_downstream_mut().set_pipelining_enabled(true);
}

/// Keeps the client's sane `X-Request-Id` or makes a new one.
pub(super) fn assign_request_id(session: &Session, ctx: &mut Ctx) {
    let values = session.req_header().headers.get_all(request_id::HEADER);
    ctx.request_id = request_id::from_client(values.iter()).unwrap_or_else(request_id::generate);
}

/// Pins the current snapshot and finds the route; answers 400/404 itself.
///
/// Returns `Ok(true)` when the response has already been written.
pub(super) async fn route(shared: &Shared, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
    let snapshot = shared.snapshot();
    let req = session.req_header();
    let path = req.uri.path();
    if !routes::path_is_canonical(path) {
        response::respond_error(session, ctx, GatewayError::BadPath).await?;
        return Ok(true);
    }
    // RFC 9112 §3.2.2: the authority of an absolute-form target wins over Host.
    let host = req.uri.host().or_else(|| {
        req.headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
    });
    match routes::find(&snapshot.config.routes, &req.method, host, path) {
        Some(i) => {
            ctx.route = Some(i);
            ctx.snapshot = Some(snapshot);
            Ok(false)
        }
        None => {
            response::respond_error(session, ctx, GatewayError::NoRoute).await?;
            Ok(true)
        }
    }
}
