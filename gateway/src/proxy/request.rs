//! Request phase: request id, client address, client limits, routing, `allow_from`.

use bytes::Bytes;
use http::header;
use pingora::prelude::*;

use super::{response, Ctx};
use crate::acme::Challenges;
use crate::error::GatewayError;
use crate::forwarded::Client;
use crate::request_id;
use crate::routes;
use crate::state::Shared;

/// Per-connection settings that must be in place before anything is read or written.
pub(super) fn prepare_session(shared: &Shared, session: &mut Session, ctx: &Ctx) {
    // Answer pipelined HTTP/1.1 requests in order (RFC 9112 §9.3.2) instead of
    // dropping the second one with the connection.
    session.as_downstream_mut().set_pipelining_enabled(true);
    // Pingora turns keep-alive off for requests that must close the connection
    // (e.g. Content-Length with Transfer-Encoding, RFC 9112 §6.1): keep it off.
    if let (Some(snap), Some(_)) = (&ctx.snapshot, session.as_downstream().get_keepalive()) {
        let idle = snap.config.client.keepalive_timeout.as_secs();
        session.set_keepalive((idle > 0).then_some(idle));
    }
    // Stopping or handing over: move clients off this process's connections.
    if shared.is_closing() {
        session.set_keepalive(None);
    }
    crate::client::header_complete(session);
}

/// Keeps the client's sane `X-Request-Id` or makes a new one.
pub(super) fn assign_request_id(session: &Session, ctx: &mut Ctx) {
    let values = session.req_header().headers.get_all(request_id::HEADER);
    ctx.request_id = request_id::from_client(values.iter()).unwrap_or_else(request_id::generate);
}

/// Pins the current snapshot and works out who the client is.
pub(super) fn identify(shared: &Shared, session: &Session, ctx: &mut Ctx) {
    let snap = shared.snapshot();
    let peer = session.client_addr().and_then(|a| a.as_inet()).copied();
    ctx.client = Client::derive(
        peer,
        &snap.config.trusted_proxies,
        &session.req_header().headers,
    );
    ctx.snapshot = Some(snap);
    ctx.tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
}

/// `GET ready_path` on the main listener: 200 while serving, 503 once
/// draining, like the admin `/ready` (a load balancer's health check cannot
/// reach the loopback admin port). Returns `Ok(true)` when it answered.
pub(super) async fn readiness(
    shared: &Shared,
    session: &mut Session,
    ctx: &mut Ctx,
) -> Result<bool> {
    let Some(snap) = ctx.snapshot.clone() else {
        return Ok(false);
    };
    let req = session.req_header();
    let is_probe = snap.config.ready_path.as_deref() == Some(req.uri.path())
        && (req.method == http::Method::GET || req.method == http::Method::HEAD);
    if !is_probe {
        return Ok(false);
    }
    ctx.probe = true;
    let (status, body): (u16, &'static [u8]) = if shared.is_draining() {
        (503, b"{\"status\":\"draining\"}\n")
    } else {
        (200, b"{\"status\":\"ready\"}\n")
    };
    let head_only = req.method == http::Method::HEAD;
    let header = crate::error::json_header(status, ctx.request_id(), body.len())?;
    let body = (!head_only).then(|| Bytes::from_static(body));
    response::write_answer(session, header, body).await?;
    Ok(true)
}

/// `GET /.well-known/acme-challenge/<token>` of a challenge in progress: the
/// key authorization (RFC 8555 §8.3), before routing, never cached. Other
/// paths under the prefix go to the routes (an app may run its own ACME
/// client). Returns `Ok(true)` when it answered.
pub(super) async fn acme_challenge(
    challenges: &Challenges,
    session: &mut Session,
    ctx: &mut Ctx,
) -> Result<bool> {
    let req = session.req_header();
    if req.method != http::Method::GET && req.method != http::Method::HEAD {
        return Ok(false);
    }
    let Some(answer) = challenges.answer(req.uri.path()) else {
        return Ok(false);
    };
    ctx.probe = true;
    let head_only = req.method == http::Method::HEAD;
    let mut header = pingora::http::ResponseHeader::build(200, Some(4))?;
    header.insert_header(header::CONTENT_TYPE, "application/octet-stream")?;
    header.insert_header(header::CONTENT_LENGTH, answer.len())?;
    header.insert_header(header::CACHE_CONTROL, "no-store")?;
    header.insert_header(crate::request_id::HEADER, ctx.request_id())?;
    let body = (!head_only).then(|| Bytes::from(answer));
    response::write_answer(session, header, body).await?;
    Ok(true)
}

/// Client limits, framing, routing and `allow_from`; answers itself when one fails.
///
/// Returns `Ok(true)` when the response has already been written.
pub(super) async fn filter(session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
    let Some(snap) = ctx.snapshot.clone() else {
        return Error::e_explain(ErrorType::InternalError, "request_filter before identify");
    };
    if let Some(err) = check_request(session, &snap.config.client) {
        if matches!(
            err,
            GatewayError::BodyTooLarge | GatewayError::UnsupportedTransferCoding
        ) {
            // The body is not going to be read: the connection can't be reused.
            session.set_keepalive(None);
        }
        response::respond_error(session, ctx, err).await?;
        return Ok(true);
    }
    if session.req_header().method.as_str() == "PURGE" {
        purge(session, ctx, &snap).await?;
        return Ok(true);
    }
    let req = session.req_header();
    let path = req.uri.path();
    if !routes::path_is_canonical(path) {
        response::respond_error(session, ctx, GatewayError::BadPath).await?;
        return Ok(true);
    }
    if redirect_to_https(session, ctx, &snap).await? {
        return Ok(true);
    }
    let req = session.req_header();
    let path = req.uri.path();
    // RFC 9112 §3.2.2: the authority of an absolute-form target wins over Host.
    let host = req
        .uri
        .host()
        .or_else(|| req.headers.get(header::HOST).and_then(|h| h.to_str().ok()));
    let Some(i) = routes::find(&snap.config.routes, &req.method, host, path) else {
        response::respond_error(session, ctx, GatewayError::NoRoute).await?;
        return Ok(true);
    };
    ctx.route = Some(i);
    let compression = &snap.config.compression;
    if compression.enabled && snap.config.routes[i].compression {
        let req = session.downstream_session.req_header();
        if let Some(module) = session
            .downstream_modules_ctx
            .get_mut::<crate::compression::Compress>()
        {
            module.configure(req, &compression.algorithms, compression.min_size);
        }
    }
    if let Some(allowed) = &snap.config.routes[i].allow_from {
        if !allowed.iter().any(|n| n.contains(&ctx.client.ip)) {
            response::respond_error(session, ctx, GatewayError::Forbidden).await?;
            return Ok(true);
        }
    }
    if let (Some(limiter), Some(rate)) = (&snap.routes[i].rate, &snap.config.routes[i].limits.rate)
    {
        let ip = match ctx.client.ip {
            std::net::IpAddr::V4(v) => v.to_ipv6_mapped().octets(),
            std::net::IpAddr::V6(v) => v.octets(),
        };
        let now = std::time::Instant::now();
        let verdict = if rate.shared {
            // Owned: the lease may wait for Redis.
            let client = rate_key(session.req_header(), rate, &ip).to_vec();
            // Boxed: a Redis round trip, the rare configuration.
            Box::pin(limiter.check_shared(&client, now)).await
        } else {
            limiter.check(rate_key(session.req_header(), rate, &ip), now)
        };
        if let Err(limited) = verdict {
            snap.routes[i].metrics.rate_limited();
            response::respond_rate_limited(session, ctx, &limiter.policy, limited.retry_after)
                .await?;
            return Ok(true);
        }
    }
    Ok(false)
}

/// `tls.redirect_http`: a plain-HTTP request gets `308` to the same URL on
/// HTTPS (the port of `tls.listen[0]`, left out when 443). ACME challenges are
/// exempt (the readiness path is answered before this). A request without a
/// usable host is served as usual. Returns `Ok(true)` when it answered.
async fn redirect_to_https(
    session: &mut Session,
    ctx: &mut Ctx,
    snap: &crate::state::Snapshot,
) -> Result<bool> {
    let Some(tls) = snap.config.tls.as_ref().filter(|t| t.redirect_http) else {
        return Ok(false);
    };
    let req = session.req_header();
    if ctx.tls || req.uri.path().starts_with(crate::acme::CHALLENGE_PREFIX) {
        return Ok(false);
    }
    let host = req
        .uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers.get(header::HOST)?.to_str().ok())
        .and_then(|h| h.parse::<http::uri::Authority>().ok());
    let Some(host) = host else {
        return Ok(false);
    };
    let mut location = format!("https://{}", host.host());
    if tls.https_port != 443 {
        location.push_str(&format!(":{}", tls.https_port));
    }
    location.push_str(
        req.uri
            .path_and_query()
            .map_or(req.uri.path(), |pq| pq.as_str()),
    );
    let mut header = crate::error::json_header(308, ctx.request_id(), 0)?;
    header.remove_header(&header::CONTENT_TYPE);
    header.insert_header(header::LOCATION, location)?;
    crate::metrics::https_redirect();
    response::write_answer(session, header, None).await?;
    Ok(true)
}

/// Whom a rate limit counts a request against: the key header's value, or
/// the client address.
fn rate_key<'a>(
    req: &'a pingora::http::RequestHeader,
    rate: &crate::config::Rate,
    ip: &'a [u8; 16],
) -> &'a [u8] {
    rate.key_header
        .as_ref()
        .and_then(|h| req.headers.get(h))
        .map_or(ip.as_slice(), |v| v.as_bytes())
}

/// Header count and size, transfer coding, and the declared body size.
fn check_request(session: &Session, limits: &crate::config::ClientLimits) -> Option<GatewayError> {
    let req = session.req_header();
    // RFC 9112 §3.2: exactly one Host in HTTP/1.1 (HTTP/1.0 may omit it).
    if req.version == http::Version::HTTP_11
        && req.headers.get_all(header::HOST).iter().count() != 1
    {
        return Some(GatewayError::BadHost);
    }
    if req.headers.len() > limits.max_headers {
        return Some(GatewayError::TooManyHeaders);
    }
    let mut bytes = req.method.as_str().len() + req.raw_path().len() + 12;
    for (name, value) in &req.headers {
        bytes += name.as_str().len() + value.len() + 4;
    }
    if bytes > limits.max_header_bytes {
        return Some(GatewayError::HeaderTooLarge);
    }
    // Anything but exactly `chunked` could be framed differently by the upstream.
    let mut codings = req.headers.get_all(header::TRANSFER_ENCODING).iter();
    if let Some(first) = codings.next() {
        if codings.next().is_some()
            || !first
                .as_bytes()
                .trim_ascii()
                .eq_ignore_ascii_case(b"chunked")
        {
            return Some(GatewayError::UnsupportedTransferCoding);
        }
    }
    // Content-Length with Transfer-Encoding never gets here: Pingora drops the
    // Content-Length, reads the chunked body and closes the connection after.
    let cl = req.headers.get(header::CONTENT_LENGTH);
    if let Some(len) = cl
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        if len > limits.max_body_size {
            return Some(GatewayError::BodyTooLarge);
        }
    }
    None
}

/// Counts body bytes as they stream and stops at `client.max_body_size` (413).
pub(super) fn count_body(body: &Option<Bytes>, ctx: &mut Ctx) -> Result<()> {
    let Some(chunk) = body else { return Ok(()) };
    ctx.body_bytes += chunk.len() as u64;
    let max = ctx
        .snapshot
        .as_ref()
        .map_or(u64::MAX, |s| s.config.client.max_body_size);
    if ctx.body_bytes > max {
        return Error::e_explain(
            ErrorType::HTTPStatus(413),
            "request body over client.max_body_size",
        );
    }
    Ok(())
}

/// `PURGE <url>`: drops that URL (all variants) from the cache, only for socket
/// peers in `cache.purge_allow` (forwarding headers are not believed here).
async fn purge(session: &mut Session, ctx: &mut Ctx, snap: &crate::state::Snapshot) -> Result<()> {
    let peer = ctx.client.peer;
    if !snap
        .config
        .cache
        .purge_allow
        .iter()
        .any(|n| n.contains(&peer))
    {
        session.set_keepalive(None);
        return response::respond_error(session, ctx, GatewayError::PurgeNotAllowed).await;
    }
    let req = session.req_header();
    let host = crate::cache::policy::request_host(req).to_owned();
    let (path, query) = (
        req.uri.path().to_owned(),
        req.uri.query().unwrap_or("").to_owned(),
    );
    let n = crate::cache::purge::invalidate_url(snap, &host, &path, &query);
    crate::metrics::cache_purged(n);
    let body = bytes::Bytes::from(format!("{{\"purged\":{n}}}\n"));
    let header = crate::error::json_header(200, ctx.request_id(), body.len())?;
    response::write_answer(session, header, Some(body)).await
}
