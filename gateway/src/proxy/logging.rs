//! Logging phase: one metrics update per request.

use pingora::prelude::*;

use super::Ctx;
use crate::access_log;
use crate::metrics::UNROUTED;

/// Records the outcome of a finished request.
pub(super) fn log_request(session: &Session, e: Option<&Error>, ctx: &Ctx) {
    let status = session.response_written().map_or(0, |r| r.status.as_u16());
    let elapsed = ctx.started.elapsed();
    let metrics = match ctx.routed() {
        Some((snap, route)) => &*snap.routes[route].metrics,
        None => &*UNROUTED,
    };
    if status > 0 {
        crate::metrics::request_protocol(session.req_header().version, ctx.tls);
    }
    if status > 0 && !ctx.probe {
        metrics.request(&session.req_header().method, status, ctx.cache.outcome);
        metrics.duration(status, ctx.cache.outcome, elapsed.as_secs_f64());
    }
    if let Some(snap) = ctx.snapshot.as_deref() {
        if snap.config.access_log.enabled {
            let req = session.req_header();
            let ms = access_log::Millis;
            access_log::log(&access_log::Line {
                time: access_log::Now,
                request_id: ctx.request_id(),
                client: ctx.client.ip,
                method: req.method.as_str(),
                path: req.uri.path(),
                status,
                bytes: session.body_bytes_sent(),
                duration_ms: ms(elapsed),
                route: ctx.routed().map(|(s, r)| s.config.routes[r].name.as_str()),
                upstream: ctx.peer.as_ref().map(|p| access_log::Shown(p)),
                upstream_ms: ctx.upstream_elapsed.map(ms),
                queue_ms: ctx.queue_wait.map(ms),
                cache: ctx.cache.outcome.map(|o| o.label()),
                error: ctx.error.map(|e| e.kind()),
            });
        }
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
