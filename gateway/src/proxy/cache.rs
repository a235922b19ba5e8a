//! Cache phase: enabling the cache per route, key, variance, storability,
//! hit checks, and the `Cache-Status` / `X-Cache` headers.

use std::time::SystemTime;

use http::{header, HeaderName, Method};
use pingora::cache::key::{CacheHashKey, HashBinary};
use pingora::cache::{CacheKey, CacheMeta, CachePhase, ForcedFreshness, RespCacheable};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;

use super::Ctx;
use crate::cache::targeted::Directives;
use crate::cache::{self, policy, CacheOutcome};
use crate::config::RouteCache;

fn rule(ctx: &Ctx) -> Option<&RouteCache> {
    let (snap, route) = ctx.routed()?;
    snap.config.routes[route].cache.as_ref()
}

/// The gateway's own targeted cache-control field, if configured.
fn targeted_field(ctx: &Ctx) -> Option<&HeaderName> {
    ctx.snapshot
        .as_deref()?
        .config
        .cache
        .targeted_field
        .as_ref()
}

/// Turns the cache on for GET and HEAD on routes with a cache rule, unless a
/// bypass condition of the rule holds.
pub(super) fn enable(session: &mut Session, ctx: &mut Ctx) {
    let method = &session.req_header().method;
    let Some(rule) = rule(ctx) else { return };
    if !(method == Method::GET || method == Method::HEAD) {
        return;
    }
    let req = session.req_header();
    if rule
        .bypass_headers
        .iter()
        .any(|h| req.headers.contains_key(h))
        || rule
            .bypass_cookies
            .iter()
            .any(|c| policy::cookie(req, c).is_some())
    {
        ctx.cache.bypassed = true;
        return;
    }
    let (Some(store), Some((snap, _))) = (cache::store(), ctx.routed()) else {
        return;
    };
    let max_object = snap.config.cache.max_object_size as usize;
    let mut overrides = pingora::cache::CacheOptionOverrides::default();
    overrides.wait_timeout = Some(snap.config.cache.lock_timeout);
    ctx.cache.directives = crate::cache::request::RequestDirectives::parse(session.req_header());
    session
        .cache
        .enable(store, None, None, cache::lock(), Some(overrides));
    session.cache.set_max_file_size_bytes(max_object);
    ctx.cache.enabled = true;
}

/// The request's cache key.
pub(super) fn key(session: &Session, ctx: &Ctx) -> Result<CacheKey> {
    let rule = rule(ctx)
        .ok_or_else(|| Error::explain(ErrorType::InternalError, "cache key without a rule"))?;
    Ok(policy::key(session.req_header(), rule))
}

/// The variance of `req` against a stored response's `Vary` and the rule's key.
pub(super) fn variance(meta: &CacheMeta, req: &RequestHeader, ctx: &Ctx) -> Option<HashBinary> {
    policy::variance(meta, req, rule(ctx)?)
}

/// Keeps a 304 that answers a revalidation: its fields update the stored
/// header ([`storable`]) and the response served ([`apply_304`]). A 304
/// without `Date` gets the time it arrived (RFC 9110 §6.6.1), so that the
/// refreshed response's age counts from now, not from the stored `Date`.
pub(super) fn note_304(session: &Session, resp: &ResponseHeader, ctx: &mut Ctx) {
    if resp.status != http::StatusCode::NOT_MODIFIED
        || !ctx.cache.enabled
        || session.cache.maybe_cache_meta().is_none()
    {
        return;
    }
    let mut not_modified = resp.clone();
    if !not_modified.headers.contains_key(header::DATE) {
        let _ =
            not_modified.insert_header(header::DATE, httpdate::fmt_http_date(SystemTime::now()));
    }
    ctx.cache.not_modified = Some(Box::new(not_modified));
}

/// A response served after a 304 carries the 304's fields (RFC 9111 §4.3.4),
/// also when the refreshed response could not be stored again.
pub(super) fn apply_304(resp: &mut ResponseHeader, ctx: &Ctx) {
    if let Some(not_modified) = ctx.cache.not_modified.as_deref() {
        policy::update_from_304(resp, not_modified);
    }
}

/// Whether (and until when) the upstream response is stored. After a 304,
/// `resp` is Pingora's merge of it into the stored header (which takes only a
/// few fields): every field of the 304 is applied to it first.
pub(super) fn storable(session: &Session, resp: &ResponseHeader, ctx: &mut Ctx) -> RespCacheable {
    let Some(rule) = rule(ctx) else {
        return RespCacheable::Uncacheable(pingora::cache::NoCacheReason::NeverEnabled);
    };
    if ctx.cache.directives.no_store {
        ctx.cache.stored = false;
        return RespCacheable::Uncacheable(pingora::cache::NoCacheReason::Custom(
            "request-no-store",
        ));
    }
    let merged;
    let resp = match ctx.cache.not_modified.as_deref() {
        Some(not_modified) => {
            let mut m = resp.clone();
            policy::update_from_304(&mut m, not_modified);
            merged = m;
            &merged
        }
        None => resp,
    };
    // The response delay of RFC 9111 §4.2.3: request sent to header received.
    let delay = ctx.upstream_elapsed.unwrap_or_default();
    let directives = Directives::select(resp, targeted_field(ctx));
    if directives.invalid > 0 {
        if let Some((snap, route)) = ctx.routed() {
            snap.routes[route]
                .metrics
                .invalid_targeted(directives.invalid);
        }
    }
    let decision = policy::decide(
        session.req_header(),
        resp,
        rule,
        &directives,
        SystemTime::now(),
        delay,
    );
    ctx.cache.stored = matches!(decision, RespCacheable::Cacheable(_));
    decision
}

/// A stored response may answer a request with credentials (`Authorization`,
/// or a `Cookie` under `cookie_requests: private`) only if it says so; the
/// request's own directives may demand validation or accept staleness.
pub(super) fn on_hit(
    session: &Session,
    meta: &CacheMeta,
    hit: &pingora::cache::storage::HitHandler,
    is_fresh: bool,
    ctx: &mut Ctx,
) -> Option<ForcedFreshness> {
    ctx.cache.shared_hit = cache::storage::is_shared_hit(hit);
    let credentialed = rule(ctx).and_then(|r| policy::credentials(session.req_header(), r));
    let field = targeted_field(ctx);
    if credentialed.is_some() && !policy::may_serve_authorized(meta, field) {
        return Some(ForcedFreshness::ForceMiss);
    }
    let forced = ctx
        .cache
        .directives
        .on_hit(meta, is_fresh, SystemTime::now(), field);
    ctx.cache.by_request = forced == Some(ForcedFreshness::ForceExpired) && is_fresh;
    forced
}

/// At the end of a request, a miss that still holds the cache lock (its fill
/// ended some other way than Pingora's release paths) releases it. A permit
/// that is merely dropped leaves its stub in Pingora's lock table, keyed by the
/// cache key, until a request for the same key replaces it: under a churn of
/// distinct keys those stubs pile up. Releasing removes it.
pub(super) fn release_lock(session: &mut Session, ctx: &Ctx) {
    if ctx.cache.enabled {
        session
            .cache
            .release_write_lock(pingora::cache::NoCacheReason::InternalError);
    }
}

/// `only-if-cached` on a miss: 504 instead of forwarding. Returns `Ok(true)` when answered.
pub(super) async fn only_if_cached(session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
    if !(ctx.cache.enabled && ctx.cache.directives.only_if_cached) {
        return Ok(false);
    }
    super::response::respond_error(session, ctx, crate::error::GatewayError::NotCached).await?;
    Ok(true)
}

/// `Cache-Status` and `X-Cache` on responses of caching routes.
pub(super) fn annotate(session: &Session, resp: &mut ResponseHeader, ctx: &mut Ctx) -> Result<()> {
    if rule(ctx).is_none() {
        return Ok(());
    }
    let phase = CacheOutcome::from_phase(&session.cache.phase());
    let Some((outcome, detail)) = phase.or(ctx
        .cache
        .bypassed
        .then_some((CacheOutcome::Bypass, Some("rule"))))
    else {
        return Ok(());
    };
    // A response that was not stored is a plain miss only if storing was tried.
    let outcome = if outcome == CacheOutcome::Miss && !ctx.cache.stored {
        CacheOutcome::Uncacheable
    } else {
        outcome
    };
    ctx.cache.outcome = Some(outcome);
    let ttl = match outcome {
        CacheOutcome::Hit | CacheOutcome::Revalidated | CacheOutcome::Stale => {
            let meta = session.cache.cache_meta();
            let now = SystemTime::now();
            // RFC 9111 §4.2.3: corrected initial age + resident time (the
            // epoch is set by `policy::decide`). Pingora writes it on hits
            // only; a revalidated response gets it here too. One revalidated
            // but not stored again (the 304 made it uncacheable) is as old
            // as that 304.
            // A response served without the upstream already has this Age
            // from Pingora (`cache_hit_header`: now minus the same epoch).
            if session.cache.upstream_used() {
                let age = match (session.cache.phase(), ctx.cache.not_modified.as_deref()) {
                    (CachePhase::RevalidatedNoCache(_), Some(not_modified)) => {
                        let delay = ctx.upstream_elapsed.unwrap_or_default();
                        policy::age_on_arrival(not_modified, now, delay)
                    }
                    _ => now.duration_since(meta.epoch()).unwrap_or_default(),
                };
                resp.insert_header(header::AGE, age.as_secs())?;
            }
            Some(match meta.fresh_until().duration_since(now) {
                Ok(left) => left.as_secs() as i64,
                Err(past) => -(past.duration().as_secs() as i64),
            })
        }
        _ => None,
    };
    let forwarded = !matches!(outcome, CacheOutcome::Hit | CacheOutcome::Stale);
    let fwd_status = forwarded.then(|| resp.status.as_u16());
    let stored = ctx.cache.stored && matches!(outcome, CacheOutcome::Miss | CacheOutcome::Expired);
    let detail = match outcome {
        CacheOutcome::Uncacheable => detail.or(Some("uncacheable")),
        CacheOutcome::Bypass => detail,
        CacheOutcome::Hit if ctx.cache.shared_hit => Some("shared"),
        _ => None,
    };
    let show_key = ctx
        .routed()
        .is_some_and(|(snap, _)| snap.config.cache.status_key);
    let key = show_key
        .then(|| String::from_utf8_lossy(session.cache.cache_key().primary_key()).into_owned());
    // Pingora gives a key a variance only after it found a response stored
    // for the URI whose variance differs: a miss then is a Vary miss.
    let vary_miss = matches!(outcome, CacheOutcome::Miss | CacheOutcome::Uncacheable)
        && session
            .cache
            .maybe_cache_key()
            .is_some_and(|k| k.variance_bin().is_some());
    let mut value = outcome.cache_status(
        ttl,
        stored,
        fwd_status,
        detail,
        key.as_deref(),
        ctx.cache.by_request,
        vary_miss,
    );
    if session.cache.lock_duration().is_some() && outcome == CacheOutcome::Hit {
        // Waited for another request to fill the entry (RFC 9211 `collapsed`).
        value.push_str("; collapsed");
        crate::metrics::cache_collapsed();
    }
    resp.append_header("cache-status", value)?;
    resp.insert_header("x-cache", outcome.x_cache())?;
    Ok(())
}

/// RFC 9111 §4.4: a non-error response to an unsafe (or unknown) method
/// invalidates what is stored for the target URI and for a same-origin
/// `Location` / `Content-Location`, all Vary variants, whatever route matched.
pub(super) fn invalidate(session: &Session, resp: &ResponseHeader, ctx: &Ctx) {
    let req = session.req_header();
    let safe = matches!(
        req.method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    );
    if safe || !(200..400).contains(&resp.status.as_u16()) {
        return;
    }
    let Some(snap) = ctx.snapshot.as_deref() else {
        return;
    };
    let host = policy::request_host(req);
    // Stored under the key of the caching route that serves GET for the URI.
    let remove = |path: &str, query: &str| cache::purge::invalidate_url(snap, host, path, query);
    let mut removed = remove(req.uri.path(), req.uri.query().unwrap_or(""));
    for name in [header::LOCATION, header::CONTENT_LOCATION] {
        let Some(target) = resp.headers.get(&name).and_then(|v| v.to_str().ok()) else {
            continue;
        };
        let Ok(uri) = target.parse::<http::Uri>() else {
            continue;
        };
        let same_origin = match uri.authority() {
            None => target.starts_with('/') && !target.starts_with("//"),
            Some(a) => a.as_str().eq_ignore_ascii_case(host) && uri.scheme_str() == Some("http"),
        };
        if same_origin {
            removed += remove(uri.path(), uri.query().unwrap_or(""));
        }
    }
    if removed > 0 {
        crate::metrics::cache_invalidated(removed);
    }
}
