//! Response phase: headers every client sees and the gateway's own error answers.

use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::FailToProxy;

use super::Ctx;
use crate::error::GatewayError;
use crate::hop_by_hop;
use crate::request_id;

/// `Surrogate-Key` and `Cache-Tag`: purge tags meant for caches, not clients.
const TAG_HEADERS: [http::HeaderName; 2] = [
    http::HeaderName::from_static("surrogate-key"),
    http::HeaderName::from_static("cache-tag"),
];

/// Headers of every proxied (or cached) response: hop-by-hop ones gone, purge
/// tags gone (unless `keep_surrogate_keys`), the gateway's own targeted
/// cache-control field gone (unless `cache.forward_targeted`: it is meant for
/// this gateway; `CDN-Cache-Control` stays, for a CDN in front), request id set.
pub(super) fn prepare_response(
    _session: &Session,
    resp: &mut ResponseHeader,
    ctx: &Ctx,
) -> Result<()> {
    hop_by_hop::strip_response(resp);
    let keep_tags =
        ctx.routed()
            .is_some_and(|(snap, route)| match &snap.config.routes[route].cache {
                Some(rule) => rule.keep_surrogate_keys,
                None => snap.config.cache.keep_surrogate_keys,
            });
    if !keep_tags {
        for h in &TAG_HEADERS {
            if resp.headers.contains_key(h) {
                resp.remove_header(h);
            }
        }
    }
    if let Some(snap) = ctx.snapshot.as_deref() {
        let cache = &snap.config.cache;
        if let (Some(field), false) = (&cache.targeted_field, cache.forward_targeted) {
            resp.remove_header(field);
        }
    }
    resp.insert_header(request_id::HEADER, ctx.request_id.clone())?;
    add_hsts(resp, ctx)
}

/// `tls.hsts` on responses to HTTPS requests.
fn add_hsts(resp: &mut ResponseHeader, ctx: &Ctx) -> Result<()> {
    if !ctx.tls {
        return Ok(());
    }
    let hsts = ctx
        .snapshot
        .as_deref()
        .and_then(|s| s.config.tls.as_ref())
        .and_then(|t| t.hsts.clone());
    if let Some(v) = hsts {
        resp.insert_header(http::header::STRICT_TRANSPORT_SECURITY, v)?;
    }
    Ok(())
}

/// Writes a whole answer of the gateway's own: `header`, then `body` (`None`:
/// none, e.g. for HEAD). Boxed, because these answers are the rare paths of
/// hooks that run for every request: inlined, a session write (about 1 KiB of
/// future) sizes the hook's future, which is allocated and moved every time.
pub(super) fn write_answer(
    session: &mut Session,
    header: ResponseHeader,
    body: Option<bytes::Bytes>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send + '_>> {
    Box::pin(async move {
        session
            .write_response_header(Box::new(header), body.is_none())
            .await?;
        if let Some(body) = body {
            session.write_response_body(Some(body), true).await?;
        }
        Ok(())
    })
}

/// Writes the JSON error answer and remembers it for logging.
pub(super) async fn respond_error(
    session: &mut Session,
    ctx: &mut Ctx,
    err: GatewayError,
) -> Result<()> {
    respond_error_with(session, ctx, err, |_| Ok(())).await
}

/// 429 with `Retry-After` and the draft's `RateLimit-Policy` / `RateLimit` fields.
pub(super) async fn respond_rate_limited(
    session: &mut Session,
    ctx: &mut Ctx,
    policy: &str,
    retry_after: std::time::Duration,
) -> Result<()> {
    let secs = retry_secs(retry_after);
    let name = policy.split(';').next().unwrap_or("\"default\"");
    respond_error_with(session, ctx, GatewayError::RateLimited, |h| {
        h.insert_header(http::header::RETRY_AFTER, secs)?;
        h.insert_header("ratelimit-policy", policy)?;
        h.insert_header("ratelimit", format!("{name};r=0;t={secs}"))
    })
    .await
}

/// A `Retry-After` value: whole seconds, rounded up, at least 1.
fn retry_secs(d: std::time::Duration) -> u64 {
    d.as_secs_f64().ceil().max(1.0) as u64
}

/// The JSON error answer with extra headers; no body for HEAD.
async fn respond_error_with(
    session: &mut Session,
    ctx: &mut Ctx,
    err: GatewayError,
    extra: impl FnOnce(&mut ResponseHeader) -> Result<()>,
) -> Result<()> {
    ctx.error = Some(err);
    let body = err.body(ctx.request_id());
    let mut header = err.header(ctx.request_id(), body.len())?;
    extra(&mut header)?;
    add_hsts(&mut header, ctx)?;
    let head_only = session.req_header().method == http::Method::HEAD;
    write_answer(session, header, (!head_only).then_some(body)).await
}

/// Answers a failed proxy attempt with the specific status and JSON body, unless
/// the client is gone or a response is already under way (then the connection closes).
pub(super) async fn fail_to_proxy(session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
    let code = match GatewayError::from_pingora(e) {
        None => 0,
        Some(err) => match session.response_written() {
            Some(written) => {
                ctx.error = Some(err);
                written.status.as_u16()
            }
            None => {
                // The connection closes after this answer: say so, so that no
                // client sends its next request into a closing socket.
                session.set_keepalive(None);
                // An open breaker says when it half-opens.
                let retry_after = ctx.retry_after.filter(|_| err == GatewayError::CircuitOpen);
                let written = respond_error_with(session, ctx, err, |h| match retry_after {
                    Some(d) => h.insert_header(http::header::RETRY_AFTER, retry_secs(d)),
                    None => Ok(()),
                });
                match written.await {
                    Ok(()) => err.status(),
                    Err(write_err) => {
                        tracing::debug!(error = %write_err, "could not write the error response");
                        0
                    }
                }
            }
        },
    };
    FailToProxy {
        error_code: code,
        can_reuse_downstream: false,
    }
}

/// A `Date` that is not a valid HTTP date is dropped, so that the server
/// writes its own; a valid one (the origin's, or the stored response's on a
/// hit) goes out as it is (RFC 9110 §6.6.1, RFC 9111 §4). The vendored
/// pingora-core writes its `Date` only when a header has none
/// (`vendor/pingora-core/PATCH.md`).
pub(super) fn drop_invalid_date(resp: &mut ResponseHeader) {
    let valid = resp
        .headers
        .get(http::header::DATE)
        .is_none_or(|d| valid_date(d.as_bytes()));
    if !valid {
        resp.remove_header(&http::header::DATE);
    }
}

/// Whether `date` is an HTTP date. The last valid value is remembered per
/// thread: an origin's `Date` changes once a second and a stored response's
/// never, so most checks are one comparison instead of a parse.
fn valid_date(date: &[u8]) -> bool {
    thread_local! {
        static LAST_VALID: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    LAST_VALID.with(|last| {
        let mut last = last.borrow_mut();
        if *last == date {
            return true;
        }
        let valid =
            std::str::from_utf8(date).is_ok_and(|d| httpdate::parse_http_date(d.trim()).is_ok());
        if valid {
            last.clear();
            last.extend_from_slice(date);
        }
        valid
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_dates_are_valid_whatever_was_seen_before() {
        let good = b"Thu, 03 Dec 2026 08:24:57 GMT";
        for _ in 0..2 {
            assert!(valid_date(good));
            assert!(!valid_date(b"Thu, 03 Dec 2026 08:24:57 GMX"));
            assert!(!valid_date(b"yesterday"));
            assert!(!valid_date(b""));
            assert!(!valid_date(&good[..20]));
        }
        assert!(valid_date(b"Thursday, 03-Dec-26 08:24:57 GMT"));
        assert!(valid_date(good));
    }

    #[test]
    fn an_invalid_date_is_dropped_and_a_valid_one_kept() {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("date", "Thu, 03 Dec 2026 08:24:57 GMT")
            .unwrap();
        drop_invalid_date(&mut resp);
        assert!(resp.headers.contains_key("date"));
        resp.insert_header("date", "soon").unwrap();
        drop_invalid_date(&mut resp);
        assert!(!resp.headers.contains_key("date"));
    }
}
