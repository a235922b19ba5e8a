//! What may be stored, for how long, and under which key (RFC 9111 §3, §4.2).

use std::time::{Duration, SystemTime};

use http::header;
use pingora::cache::cache_control::{Cacheable as CcCacheable, InterpretCacheControl};
use pingora::cache::filters::{calculate_expires_header_time, calculate_serve_stale_durations};
use pingora::cache::key::HashBinary;
use pingora::cache::{
    CacheKey, CacheMeta, CacheMetaDefaults, NoCacheReason, RespCacheable, VarianceBuilder,
};
use pingora::http::{RequestHeader, ResponseHeader};

use super::targeted::Directives;
use crate::config::{CookieRequests, QueryKey, RouteCache};

/// The longest freshness lifetime kept (a lifetime past what the clock can
/// count is cut to this).
const MAX_LIFETIME: Duration = Duration::from_secs(100 * 365 * 86_400);

/// Statuses that are cacheable by default (RFC 9110 §15.1), where a heuristic
/// freshness lifetime may apply. 206 is left out: partial content is not stored.
const HEURISTIC: [u16; 11] = [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501];

/// The cache key: scheme, host, path and query, each length-prefixed so that no
/// two different requests frame to the same key. Vary variance is added by Pingora.
pub fn key(req: &RequestHeader, rule: &RouteCache) -> CacheKey {
    let query = normalize_query(req.uri.query().unwrap_or(""), &rule.query);
    key_for(request_host(req), req.uri.path(), &query)
}

/// The query as the rule counts it: parameters kept per the rule, sorted by
/// name (then value, keeping the original encoding), so that `?b=1&a=2` and
/// `?a=2&b=1` share an entry.
pub fn normalize_query(query: &str, rule: &QueryKey) -> String {
    if matches!(rule, QueryKey::None) || query.is_empty() {
        return String::new();
    }
    fn name(param: &str) -> &str {
        param.split_once('=').map_or(param, |(n, _)| n)
    }
    let mut params: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .filter(|p| match rule {
            QueryKey::Allow(allowed) => allowed.iter().any(|a| *a == name(p)),
            QueryKey::Ignore(ignored) => !ignored.iter().any(|i| *i == name(p)),
            QueryKey::All | QueryKey::None => true,
        })
        .collect();
    params.sort_by(|a, b| name(a).cmp(name(b)).then(a.cmp(b)));
    params.join("&")
}

/// The value of cookie `name` in the request, if any.
pub fn cookie<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a str> {
    req.headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
}

/// The host a request is for: the target's authority, else `Host`.
pub fn request_host(req: &RequestHeader) -> &str {
    req.uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers.get(header::HOST).and_then(|h| h.to_str().ok()))
        .unwrap_or("")
}

/// The key of `host` + `path` + `query` (see [`key`]).
pub fn key_for(host: &str, path: &str, query: &str) -> CacheKey {
    // One allocation and no formatting machinery: this runs on every cacheable request.
    let mut primary = Vec::with_capacity(32 + host.len() + path.len() + query.len());
    let mut digits = itoa::Buffer::new();
    for (i, part) in ["http", host, path, query].into_iter().enumerate() {
        primary.extend_from_slice(digits.format(part.len()).as_bytes());
        primary.push(b':');
        if i == 1 {
            primary.extend(part.bytes().map(|b| b.to_ascii_lowercase()));
        } else {
            primary.extend_from_slice(part.as_bytes());
        }
    }
    CacheKey::new(primary, "")
}

/// The variance of a stored response for this request: the values of every
/// header its `Vary` lists (names lowercased, values with surrounding
/// whitespace trimmed and inner runs of spaces collapsed, RFC 9111 §4.1), and
/// of the headers and cookies the rule adds to the key. Variants share the
/// URI's primary key, so invalidation and purge reach all of them.
pub fn variance(meta: &CacheMeta, req: &RequestHeader, rule: &RouteCache) -> Option<HashBinary> {
    let mut vb = VarianceBuilder::new();
    for name in &rule.key_headers {
        let value: Vec<u8> = req
            .headers
            .get_all(name)
            .iter()
            .map(|v| normalize(v.as_bytes()))
            .collect::<Vec<_>>()
            .join(&b","[..]);
        vb.add_owned_name_value(format!("rule-header:{name}"), value);
    }
    for name in &rule.key_cookies {
        let value = cookie(req, name).unwrap_or("").as_bytes().to_vec();
        vb.add_owned_name_value(format!("rule-cookie:{name}"), value);
    }
    for v in meta.headers().get_all(header::VARY) {
        let Ok(list) = v.to_str() else { continue };
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let name = name.to_ascii_lowercase();
            let value: Vec<u8> = req
                .headers
                .get_all(name.as_str())
                .iter()
                .map(|v| normalize(v.as_bytes()))
                .collect::<Vec<_>>()
                .join(&b","[..]);
            vb.add_owned_name_value(name, value);
        }
    }
    vb.finalize()
}

fn normalize(v: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len());
    let mut space = false;
    for &b in v.trim_ascii() {
        if b == b' ' || b == b'\t' {
            space = true;
            continue;
        }
        if space && !out.is_empty() {
            out.push(b' ');
        }
        space = false;
        out.push(b);
    }
    out
}

/// Why a response is not stored, for `Cache-Status: detail` and metrics.
pub const NOT_FINAL: &str = "status-not-storable";
/// `Vary: *`.
pub const VARY_STAR: &str = "vary-star";
/// `Set-Cookie` without `cache_set_cookie: true`.
pub const SET_COOKIE: &str = "set-cookie";
/// A request with `Authorization` and no `public`, `s-maxage` or `must-revalidate`.
pub const AUTHORIZATION: &str = "authorization";
/// A request with a `Cookie` under `cookie_requests: private`, and no `public`,
/// `s-maxage` or `must-revalidate`.
pub const COOKIE: &str = "cookie";
/// `no-store` or `private`.
pub const NO_STORE: &str = "no-store";
/// No explicit freshness and no heuristic allowed.
pub const NO_FRESHNESS: &str = "no-freshness";

/// Decides whether `resp` (to `req`), received at `now` after `delay`
/// (request sent to response received), may be stored under `rule`, and until
/// when. `directives` are the response's, as the gateway reads them
/// ([`Directives::select`]: a targeted field, else `Cache-Control`).
///
/// The stored metadata's epoch is the moment the response was new, by this
/// machine's clock: `now` minus its corrected initial age (RFC 9111 §4.2.3).
/// So `CacheMeta::age()` (and the `Age` a hit carries) is the corrected
/// initial age plus the resident time, and `fresh_until` is that epoch plus
/// the freshness lifetime, whether that lifetime comes from `max-age` or from
/// `Expires`.
pub fn decide(
    req: &RequestHeader,
    resp: &ResponseHeader,
    rule: &RouteCache,
    directives: &Directives,
    now: SystemTime,
    delay: Duration,
) -> RespCacheable {
    let uncacheable = |why: &'static str| RespCacheable::Uncacheable(NoCacheReason::Custom(why));
    let status = resp.status.as_u16();
    if status < 200 || status == 206 || status == 304 {
        return uncacheable(NOT_FINAL);
    }
    let vary_star = resp.headers.get_all(header::VARY).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|n| n.trim() == "*"))
    });
    if vary_star {
        return uncacheable(VARY_STAR);
    }
    if resp.headers.contains_key(header::SET_COOKIE) && !rule.cache_set_cookie {
        return uncacheable(SET_COOKIE);
    }
    let cc = directives.cc.as_ref();
    if let Some(why) = credentials(req, rule) {
        if !cc.is_some_and(|cc| cc.allow_caching_authorized_req()) {
            return uncacheable(why);
        }
    }
    if cc.is_some_and(|cc| cc.is_cacheable() == CcCacheable::No) {
        return uncacheable(NO_STORE);
    }
    // Explicit freshness: s-maxage, max-age (no-cache = 0), then Expires,
    // which counts from the response's own Date (RFC 9111 §4.2.1), not from
    // this machine's clock: Expires at or before Date is stale on arrival. A
    // targeted field in use replaces Expires too (RFC 9213 §2.2).
    let date = header_date(resp, header::DATE);
    let explicit = cc.and_then(|cc| cc.fresh_duration()).or_else(|| {
        if directives.targeted {
            return None;
        }
        calculate_expires_header_time(resp)
            .map(|t| t.duration_since(date.unwrap_or(now)).unwrap_or_default())
    });
    let public = cc.is_some_and(|cc| cc.is_cacheable() == CcCacheable::Yes);
    let mut lifetime = match explicit {
        Some(d) => d,
        None if HEURISTIC.contains(&status) || public => match rule.default_ttl {
            Some(d) => d,
            None => return uncacheable(NO_FRESHNESS),
        },
        None => return uncacheable(NO_FRESHNESS),
    };
    // Rule clamps: a cap is always safe; a floor never makes no-cache or
    // must-revalidate content fresh that the origin wants validated.
    if let Some(max) = rule.max_ttl {
        lifetime = lifetime.min(max);
    }
    let validate_always =
        cc.is_some_and(|cc| cc.no_cache() || cc.must_revalidate() || cc.proxy_revalidate());
    if let (Some(min), false) = (rule.min_ttl, validate_always) {
        lifetime = lifetime.max(min);
    }
    // RFC 9111 §4.2.3: the response may already have aged on the way here.
    // An Age that is not one non-negative integer makes it stale (§5.1).
    let (initial_age, age_valid) = initial_age(resp, date, now, delay);
    let epoch = now
        .checked_sub(initial_age)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let fresh_until = if age_valid && lifetime > initial_age {
        epoch.checked_add(lifetime).unwrap_or(epoch + MAX_LIFETIME)
    } else {
        now - Duration::from_secs(1) // stored, but stale: revalidated on use
    };
    let defaults = CacheMetaDefaults::new(
        |_| None,
        rule.stale_while_revalidate
            .map_or(0, |d| d.as_secs() as u32),
        rule.stale_if_error.map_or(0, |d| d.as_secs() as u32),
    );
    // must-revalidate, proxy-revalidate and s-maxage close the stale windows
    // (Pingora's helper), and so does no-cache: validation before every use.
    let (swr, sie) = if cc.is_some_and(|cc| cc.no_cache()) {
        (0, 0)
    } else {
        calculate_serve_stale_durations(cc, &defaults)
    };
    let mut header = resp.clone();
    if let Some(cc) = cc {
        cc.strip_private_headers(&mut header);
    }
    // Per-connection and per-client fields never go into the shared store:
    // the fields Connection lists go with it (RFC 9111 §3.1).
    crate::hop_by_hop::strip_response(&mut header);
    if !rule.cache_set_cookie {
        header.remove_header(&header::SET_COOKIE);
    }
    let mut meta = CacheMeta::new(fresh_until, now, swr, sie, header);
    meta.set_epoch_override(epoch);
    RespCacheable::Cacheable(meta)
}

/// The corrected initial age of a response received at `response_time`
/// after `delay` (RFC 9111 §4.2.3): the larger of its apparent age
/// (`response_time - Date`, never negative) and the `Age` it arrived with
/// plus the response delay. The flag is false when the `Age` field is
/// invalid (§5.1): the response is then stale, and its age is the apparent one.
pub fn initial_age(
    resp: &ResponseHeader,
    date: Option<SystemTime>,
    response_time: SystemTime,
    delay: Duration,
) -> (Duration, bool) {
    let apparent = date
        .and_then(|d| response_time.duration_since(d).ok())
        .unwrap_or_default();
    match age_header(resp) {
        Ok(age) => (apparent.max(age.saturating_add(delay)), true),
        Err(()) => (apparent, false),
    }
}

/// The corrected initial age of `resp`, received at `now` after `delay`
/// (see [`initial_age`]).
pub fn age_on_arrival(resp: &ResponseHeader, now: SystemTime, delay: Duration) -> Duration {
    initial_age(resp, header_date(resp, header::DATE), now, delay).0
}

/// RFC 9111 §3.2 and §4.3.4: a 304 updates the stored header. Every field of
/// the 304 replaces the stored field of that name (all its lines), whatever
/// the name, except the ones the stored response depends on or that belong to
/// one message: `Content-Length` and the other framing fields, hop-by-hop
/// fields and those the 304's `Connection` lists (§3.1), and `Vary` (the
/// stored variance stays as it is).
pub fn update_from_304(stored: &mut ResponseHeader, not_modified: &ResponseHeader) {
    let listed = crate::hop_by_hop::connection_listed(&not_modified.headers);
    let mut done: Vec<&header::HeaderName> = Vec::new();
    for name in not_modified.headers.keys() {
        if done.contains(&name)
            || !updates_stored(name)
            || crate::hop_by_hop::is_hop_by_hop(name)
            || listed.contains(name)
        {
            continue;
        }
        done.push(name);
        stored.remove_header(name);
        for value in not_modified.headers.get_all(name) {
            // A name and value from a parsed header are always valid.
            let _ = stored.append_header(name.clone(), value.clone());
        }
    }
}

/// Whether a 304's field of this name replaces the stored one (see [`update_from_304`]).
fn updates_stored(name: &header::HeaderName) -> bool {
    !(name == header::CONTENT_LENGTH
        || name == header::TRANSFER_ENCODING
        || name == header::CONTENT_RANGE
        || name == header::VARY)
}

/// A date field (`Date`, `Expires`) as a time, if it is a valid HTTP date.
fn header_date(resp: &ResponseHeader, name: header::HeaderName) -> Option<SystemTime> {
    let v = resp.headers.get(name)?.to_str().ok()?;
    httpdate::parse_http_date(v.trim()).ok()
}

/// The `Age` the response arrived with: zero when absent, `Err` when it is
/// not a single non-negative integer (`old, 0`, `-1`, two fields).
fn age_header(resp: &ResponseHeader) -> Result<Duration, ()> {
    let mut values = resp.headers.get_all(header::AGE).iter();
    let Some(v) = values.next() else {
        return Ok(Duration::ZERO);
    };
    if values.next().is_some() {
        return Err(());
    }
    let text = v.to_str().map_err(|_| ())?.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(());
    }
    // Larger than any real age: saturate (RFC 9111 §1.2.2).
    Ok(Duration::from_secs(text.parse::<u64>().unwrap_or(u64::MAX)))
}

/// What makes `req` a request for someone in particular: `Authorization`
/// (RFC 9111 §3.5), or under `cookie_requests: private` a `Cookie`. Its
/// response is shared only where the response says it may be.
pub fn credentials(req: &RequestHeader, rule: &RouteCache) -> Option<&'static str> {
    if req.headers.contains_key(header::AUTHORIZATION) {
        Some(AUTHORIZATION)
    } else if rule.cookie_requests == CookieRequests::Private
        && req.headers.contains_key(header::COOKIE)
    {
        Some(COOKIE)
    } else {
        None
    }
}

/// Whether a stored response may answer a request with credentials (see
/// [`credentials`]): only with `public`, `s-maxage` or `must-revalidate` (in
/// the directives the gateway follows, see [`Directives::select`]).
pub fn may_serve_authorized(meta: &CacheMeta, targeted_field: Option<&header::HeaderName>) -> bool {
    Directives::select(meta.response_header(), targeted_field)
        .cc
        .is_some_and(|cc| cc.allow_caching_authorized_req())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(cache: &str) -> RouteCache {
        let yaml = format!(
            "upstreams: {{ app: {{ servers: [\"127.0.0.1:1\"] }} }}\n\
             routes: [ {{ name: r, match: {{ path_prefix: / }}, upstream: app, cache: {cache} }} ]"
        );
        crate::config::from_yaml_str(&yaml).unwrap().routes[0]
            .cache
            .clone()
            .unwrap()
    }

    fn response(headers: &[(&str, String)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(200, None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), v.as_str()).unwrap();
        }
        r
    }

    fn decide_plain(
        req: &RequestHeader,
        resp: &ResponseHeader,
        rule: &RouteCache,
        now: SystemTime,
    ) -> RespCacheable {
        decide(
            req,
            resp,
            rule,
            &Directives::select(resp, None),
            now,
            Duration::ZERO,
        )
    }

    fn fresh_for(decision: RespCacheable, now: SystemTime) -> Option<i64> {
        match decision {
            RespCacheable::Cacheable(meta) => Some(match meta.fresh_until().duration_since(now) {
                Ok(d) => d.as_secs() as i64,
                Err(e) => -(e.duration().as_secs_f64().ceil() as i64),
            }),
            RespCacheable::Uncacheable(_) => None,
        }
    }

    #[test]
    fn rfc9111_3_1_connection_listed_fields_are_not_stored() {
        let req = RequestHeader::build("GET", b"/", None).unwrap();
        let resp = response(&[
            ("cache-control", "max-age=60".into()),
            ("connection", "x-hop".into()),
            ("x-hop", "per-connection".into()),
            ("x-kept", "1".into()),
        ]);
        let RespCacheable::Cacheable(meta) = decide(
            &req,
            &resp,
            &rule("{ enabled: true }"),
            &Directives::select(&resp, None),
            SystemTime::now(),
            Duration::ZERO,
        ) else {
            panic!("storable");
        };
        let stored = &meta.response_header().headers;
        assert!(!stored.contains_key("x-hop") && !stored.contains_key("connection"));
        assert_eq!(stored["x-kept"], "1");
    }

    #[test]
    fn freshness_is_computed_against_the_given_time() {
        let req = RequestHeader::build("GET", b"/", None).unwrap();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let r = rule("{ enabled: true, default_ttl: 30s }");
        let cc = |v: &str| response(&[("cache-control", v.to_owned())]);
        assert_eq!(
            fresh_for(decide_plain(&req, &cc("max-age=60"), &r, now), now),
            Some(60)
        );
        assert_eq!(
            fresh_for(
                decide_plain(&req, &cc("max-age=60, s-maxage=10"), &r, now),
                now
            ),
            Some(10)
        );
        // Expires is read against `now`, not the machine's clock.
        let expires = httpdate::fmt_http_date(now + Duration::from_secs(120));
        let resp = response(&[("expires", expires)]);
        assert_eq!(
            fresh_for(decide_plain(&req, &resp, &r, now), now),
            Some(120)
        );
        // An Age the response arrived with is used up already.
        let resp = response(&[("cache-control", "max-age=60".into()), ("age", "45".into())]);
        assert_eq!(fresh_for(decide_plain(&req, &resp, &r, now), now), Some(15));
        // RFC 9111 §4.2.1: Expires counts from the response's Date; the
        // response is 100 s old on arrival (§4.2.3, apparent age).
        let date = httpdate::fmt_http_date(now - Duration::from_secs(100));
        let resp = response(&[
            ("date", date.clone()),
            (
                "expires",
                httpdate::fmt_http_date(now + Duration::from_secs(20)),
            ),
        ]);
        assert_eq!(fresh_for(decide_plain(&req, &resp, &r, now), now), Some(20));
        let resp = response(&[("date", date.clone()), ("expires", date.clone())]);
        assert!(
            fresh_for(decide_plain(&req, &resp, &r, now), now).unwrap() < 0,
            "Expires = Date: stale"
        );
        // RFC 9111 §5.1: an Age that is not one non-negative integer makes it stale.
        for bad in ["old, 0", "-1", "1.5", ""] {
            let resp = response(&[("cache-control", "max-age=60".into()), ("age", bad.into())]);
            assert!(
                fresh_for(decide_plain(&req, &resp, &r, now), now).unwrap() < 0,
                "Age {bad:?}"
            );
        }
        // No explicit freshness: the rule's heuristic TTL (200 is heuristically cacheable).
        assert_eq!(
            fresh_for(decide_plain(&req, &response(&[]), &r, now), now),
            Some(30)
        );
        assert_eq!(
            fresh_for(decide_plain(&req, &cc("no-store"), &r, now), now),
            None
        );
    }

    #[test]
    fn rfc9111_4_2_3_age_is_corrected_initial_age_plus_resident_time() {
        let req = RequestHeader::build("GET", b"/", None).unwrap();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let r = rule("{ enabled: true }");
        let at = |secs: u64| httpdate::fmt_http_date(now - Duration::from_secs(secs));
        let age_at = |resp: ResponseHeader, delay: u64, later: u64| match decide(
            &req,
            &resp,
            &r,
            &Directives::select(&resp, None),
            now,
            Duration::from_secs(delay),
        ) {
            RespCacheable::Cacheable(meta) => (now + Duration::from_secs(later))
                .duration_since(meta.epoch())
                .unwrap()
                .as_secs(),
            RespCacheable::Uncacheable(_) => panic!("storable"),
        };
        let cc = ("cache-control", "max-age=600".to_owned());
        // Received Age + response delay, when larger than the apparent age.
        let resp = response(&[cc.clone(), ("date", at(2)), ("age", "30".into())]);
        assert_eq!(age_at(resp, 1, 0), 31);
        // The apparent age (now - Date), when larger; plus resident time.
        let resp = response(&[cc.clone(), ("date", at(100)), ("age", "30".into())]);
        assert_eq!(age_at(resp, 1, 3), 103);
        // A Date in the future counts as no apparent age.
        let resp = response(&[
            cc.clone(),
            (
                "date",
                httpdate::fmt_http_date(now + Duration::from_secs(50)),
            ),
        ]);
        assert_eq!(age_at(resp, 0, 3), 3);
        // Freshness from Expires ages the same way.
        let resp = response(&[
            ("date", at(2)),
            (
                "expires",
                httpdate::fmt_http_date(now + Duration::from_secs(598)),
            ),
            ("age", "30".into()),
        ]);
        assert_eq!(age_at(resp, 0, 3), 33);
    }

    #[test]
    fn rfc9111_4_3_4_a_304_replaces_every_stored_field_but_framing() {
        let mut stored = response(&[
            ("content-length", "100".into()),
            ("test-header", "old".into()),
            ("x-content-foo", "old".into()),
            ("content-foo", "old".into()),
            ("vary", "accept".into()),
            ("x-kept", "1".into()),
        ]);
        let mut nm = ResponseHeader::build(304, None).unwrap();
        for (k, v) in [
            ("content-length", "0"),
            ("test-header", "new"),
            ("x-content-foo", "new"),
            ("content-foo", "new1"),
            ("content-foo", "new2"),
            ("vary", "cookie"),
            ("connection", "x-hop"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
        ] {
            nm.append_header(k, v).unwrap();
        }
        update_from_304(&mut stored, &nm);
        let h = &stored.headers;
        assert_eq!(h["content-length"], "100");
        assert_eq!(h["test-header"], "new");
        assert_eq!(h["x-content-foo"], "new");
        let foo: Vec<_> = h.get_all("content-foo").iter().collect();
        assert_eq!(foo, ["new1", "new2"]);
        assert_eq!(h["vary"], "accept");
        assert_eq!(h["x-kept"], "1");
        for gone in ["connection", "x-hop", "keep-alive", "transfer-encoding"] {
            assert!(!h.contains_key(gone), "{gone}");
        }
    }

    #[test]
    fn queries_are_sorted_and_filtered_by_rule() {
        let all = QueryKey::All;
        assert_eq!(normalize_query("b=1&a=2&a=1", &all), "a=1&a=2&b=1");
        assert_eq!(
            normalize_query("b=1&utm=x&a", &QueryKey::Ignore(vec!["utm".into()])),
            "a&b=1"
        );
        assert_eq!(
            normalize_query("b=1&page=2&x=3", &QueryKey::Allow(vec!["page".into()])),
            "page=2"
        );
        assert_eq!(normalize_query("b=1", &QueryKey::None), "");
    }

    #[test]
    fn keys_frame_their_parts() {
        let rule = crate::config::from_yaml_str(
            "upstreams: { a: { servers: [\"127.0.0.1:1\"] } }\nroutes: [{ name: r, upstream: a, cache: {} }]",
        )
        .unwrap()
        .routes[0]
            .cache
            .clone()
            .unwrap();
        let k = |p: &str, host: &str| {
            let mut r = RequestHeader::build("GET", p.as_bytes(), None).unwrap();
            r.insert_header("host", host).unwrap();
            key(&r, &rule).primary_key().to_vec()
        };
        assert_ne!(k("/a?b", "x"), k("/a%3Fb", "x"));
        assert_eq!(k("/a", "X.example"), k("/a", "x.example"));
        assert_ne!(k("/a", "x"), k("/a", "y"));
    }

    #[test]
    fn whitespace_is_normalised_for_vary() {
        assert_eq!(normalize(b"  gzip,   br "), b"gzip, br".to_vec());
    }
}
