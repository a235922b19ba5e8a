//! Logging phase: one metrics update per request.

use pingora::prelude::*;

use super::Ctx;
use crate::metrics::UNROUTED;

/// Records the outcome of a finished request.
pub(super) fn log_request(session: &Session, e: Option<&Error>, ctx: &Ctx) {
    let status = session.response_written().map_or(0, |r| r.status.as_u16());
    let metrics = match ctx.routed() {
        Some((snap, route)) => &snap.route_metrics[route],
        None => &*UNROUTED,
    };
    if status > 0 {
        metrics.request(status);
    }
    if let Some(outcome) = ctx.cache.outcome {
        metrics.cache(outcome);
    }
    if let Some(err) = ctx.error {
        metrics.error(err.kind());
    }
    if let Some(e) = e {
        tracing::debug!(request_id = ctx.request_id(), error = %e, status, "request failed");
    }
}
