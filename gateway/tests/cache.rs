//! Response cache, part 1: storage, freshness, safety, Cache-Status.

mod common;

use std::time::Duration;

use common::*;
use reqwest::header::HeaderMap;

fn config(origin: &Origin, cache_rule: &str, cache_block: &str) -> String {
    format!(
        r#"
listen: "{{listen}}"
admin: {{ listen: "{{admin}}" }}
cache: {{ {cache_block} }}
upstreams:
  app: {{ servers: ["{}"] }}
routes:
  - {{ name: cached, match: {{ path_prefix: /resp }}, upstream: app, cache: {{ {cache_rule} }} }}
  - {{ name: other, match: {{ path_prefix: / }}, upstream: app }}
"#,
        origin.addr
    )
}

/// `/resp/<id>?h=...` with `%3D` for `=` and `%2C` for `,` in header values.
fn resp(id: &str, headers: &[&str]) -> String {
    let mut url = format!("/resp/{id}?size=100");
    for h in headers {
        url.push_str("&h=");
        url.push_str(
            &h.replace('=', "%3D")
                .replace(',', "%2C")
                .replace(' ', "%20"),
        );
    }
    url
}

async fn get(gw: &Gateway, path: &str, extra: &[(&str, &str)]) -> (u16, HeaderMap, usize) {
    let mut req = client().get(gw.url(path));
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let len = r.bytes().await.unwrap().len();
    (status, headers, len)
}

fn x_cache(h: &HeaderMap) -> &str {
    h.get("x-cache").map_or("-", |v| v.to_str().unwrap())
}

fn cache_status(h: &HeaderMap) -> &str {
    h.get("cache-status").map_or("-", |v| v.to_str().unwrap())
}

#[tokio::test]
async fn max_age_is_stored_and_served_with_age() {
    let origin = Origin::start("a").await;
    let gw = Gateway::start(&config(&origin, "", "")).await;
    let path = resp("max-age", &["Cache-Control:max-age=60"]);
    let (s, h, len) = get(&gw, &path, &[]).await;
    assert_eq!((s, len), (200, 100));
    assert_eq!(x_cache(&h), "MISS");
    assert_eq!(
        cache_status(&h),
        "gateway; fwd=uri-miss; fwd-status=200; stored"
    );
    let (s, h, len) = get(&gw, &path, &[]).await;
    assert_eq!((s, len), (200, 100));
    assert_eq!(x_cache(&h), "HIT");
    assert!(
        cache_status(&h).starts_with("gateway; hit; ttl="),
        "{}",
        cache_status(&h)
    );
    assert!(h.contains_key("age"), "Age on a response served from cache");
    assert_eq!(origin.hits(), 1);
    gw.wait_metrics(&[
        r#"gateway_cache_requests_total{cache="hit",route="cached"} 1"#,
        r#"gateway_cache_requests_total{cache="miss",route="cached"} 1"#,
        "gateway_cache_stores_total 1",
        "gateway_cache_entries 1",
    ])
    .await;
}

#[tokio::test]
async fn directives_that_forbid_storing_are_honoured() {
    let origin = Origin::start("a").await;
    let gw = Gateway::start(&config(&origin, "default_ttl: 60s", "")).await;
    for (id, cc, detail) in [
        ("ns", "Cache-Control:no-store", "no-store"),
        ("pv", "Cache-Control:private, max-age=60", "no-store"),
    ] {
        let path = resp(id, &[cc]);
        let (_, h, _) = get(&gw, &path, &[]).await;
        assert_eq!(x_cache(&h), "MISS");
        assert!(
            cache_status(&h).ends_with(&format!("detail={detail}")),
            "{}",
            cache_status(&h)
        );
        let (_, h, _) = get(&gw, &path, &[]).await;
        assert_eq!(x_cache(&h), "MISS", "{cc} never stored");
    }
    assert_eq!(origin.hits(), 4);
}

#[tokio::test]
async fn no_cache_and_zero_freshness_are_revalidated_on_every_use() {
    let origin = Origin::start("a").await;
    let gw = Gateway::start(&config(&origin, "", "")).await;
    for (id, headers) in [
        ("nc", vec!["Cache-Control:no-cache", "ETag:\"v1\""]),
        ("sm", vec!["Cache-Control:s-maxage=0, max-age=600"]),
        ("aged", vec!["Cache-Control:max-age=60", "Age:100"]),
    ] {
        let path = resp(id, &headers);
        let before = origin.hits();
        get(&gw, &path, &[]).await;
        let (s, h, _) = get(&gw, &path, &[]).await;
        assert_eq!(s, 200);
        assert_ne!(
            x_cache(&h),
            "HIT",
            "{id}: stored but stale, so not a plain hit"
        );
        assert_eq!(
            origin.hits() - before,
            2,
            "{id}: the origin saw both requests"
        );
    }
}

#[tokio::test]
async fn freshness_from_expires_and_expiry() {
    let origin = Origin::start("a").await;
    let gw = Gateway::start(&config(&origin, "", "")).await;
    let future = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(600));
    let path = resp("exp", &[&format!("Expires:{future}")]);
    get(&gw, &path, &[]).await;
    let (_, h, _) = get(&gw, &path, &[]).await;
    assert_eq!(x_cache(&h), "HIT");

    let path = resp("short", &["Cache-Control:max-age=1"]);
    get(&gw, &path, &[]).await;
    assert_eq!(x_cache(&get(&gw, &path, &[]).await.1), "HIT");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (_, h, _) = get(&gw, &path, &[]).await;
    assert_eq!(x_cache(&h), "EXPIRED", "{}", cache_status(&h));
    assert_eq!(origin.hits(), 3);
}

#[tokio::test]
async fn heuristic_freshness_only_where_the_rule_and_rfc_allow() {
    let origin = Origin::start("a").await;
    let gw = Gateway::start(&config(&origin, "default_ttl: 60s", "")).await;
    let path = resp("heur", &[]);
    get(&gw, &path, &[]).await;
    assert_eq!(
        x_cache(&get(&gw, &path, &[]).await.1),
        "HIT",
        "200 is heuristically cacheable"
    );
    let path = format!("{}&status=302&h=Location:/x", resp("redir", &[]));
    get(&gw, &path, &[]).await;
    let (s, h, _) = get(&gw, &path, &[]).await;
    assert_eq!(s, 302);
    assert_eq!(x_cache(&h), "MISS", "302 has no heuristic freshness");
    assert!(cache_status(&h).ends_with("detail=no-freshness"));

    let origin2 = Origin::start("b").await;
    let gw2 = Gateway::start(&config(&origin2, "", "")).await;
    let path = resp("heur", &[]);
    get(&gw2, &path, &[]).await;
    assert_eq!(
        x_cache(&get(&gw2, &path, &[]).await.1),
        "MISS",
        "no default_ttl: not stored"
    );
}

#[tokio::test]
async fn authorization_and_set_cookie_rules() {
    let origin = Origin::start("a").await;
    let gw = Gateway::start(&config(&origin, "", "")).await;
    let auth = [("authorization", "Bearer secret")];

    let plain = resp("auth-plain", &["Cache-Control:max-age=60"]);
    let (_, h, _) = get(&gw, &plain, &auth).await;
    assert!(
        cache_status(&h).ends_with("detail=authorization"),
        "{}",
        cache_status(&h)
    );
    assert_eq!(x_cache(&get(&gw, &plain, &auth).await.1), "MISS");

    let public = resp("auth-public", &["Cache-Control:public, max-age=60"]);
    get(&gw, &public, &auth).await;
    assert_eq!(x_cache(&get(&gw, &public, &auth).await.1), "HIT");

    // Stored from an anonymous request, not handed to an authorized one.
    let anon = resp("anon", &["Cache-Control:max-age=60"]);
    get(&gw, &anon, &[]).await;
    assert_eq!(x_cache(&get(&gw, &anon, &[]).await.1), "HIT");
    let (_, h, _) = get(&gw, &anon, &auth).await;
    assert_ne!(x_cache(&h), "HIT");

    let cookie = resp("cookie", &["Cache-Control:max-age=60", "Set-Cookie:s=1"]);
    let (_, h, _) = get(&gw, &cookie, &[]).await;
    assert!(cache_status(&h).ends_with("detail=set-cookie"));
    assert_eq!(x_cache(&get(&gw, &cookie, &[]).await.1), "MISS");

    let origin2 = Origin::start("b").await;
    let gw2 = Gateway::start(&config(&origin2, "cache_set_cookie: true", "")).await;
    get(&gw2, &cookie, &[]).await;
    let (_, h, _) = get(&gw2, &cookie, &[]).await;
    assert_eq!(x_cache(&h), "HIT");
}

#[tokio::test]
async fn head_is_answered_from_a_stored_get() {
    let origin = Origin::start("a").await;
    let gw = Gateway::start(&config(&origin, "", "")).await;
    let path = resp("head", &["Cache-Control:max-age=60"]);
    get(&gw, &path, &[]).await;
    let r = client().head(gw.url(&path)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-cache"], "HIT");
    assert_eq!(r.headers()["content-length"], "100");
    assert!(r.bytes().await.unwrap().is_empty());
    assert_eq!(origin.hits(), 1);
}

#[tokio::test]
async fn vary_keeps_variants_apart_and_star_is_never_stored() {
    let origin = Origin::start("a").await;
    let gw = Gateway::start(&config(&origin, "", "")).await;
    let path = resp(
        "vary",
        &["Cache-Control:max-age=60", "Vary:Accept-Language"],
    );
    get(&gw, &path, &[("accept-language", "en")]).await;
    get(&gw, &path, &[("accept-language", "fr")]).await;
    assert_eq!(
        x_cache(&get(&gw, &path, &[("accept-language", "en")]).await.1),
        "HIT"
    );
    assert_eq!(
        x_cache(&get(&gw, &path, &[("accept-language", "fr")]).await.1),
        "HIT"
    );
    assert_eq!(origin.hits(), 2);

    let star = resp("star", &["Cache-Control:max-age=60", "Vary:*"]);
    get(&gw, &star, &[]).await;
    let (_, h, _) = get(&gw, &star, &[]).await;
    assert!(cache_status(&h).ends_with("detail=vary-star"));
}

#[tokio::test]
async fn surrogate_keys_are_stripped_unless_kept() {
    let origin = Origin::start("a").await;
    let gw = Gateway::start(&config(&origin, "", "")).await;
    let path = resp(
        "tags",
        &[
            "Cache-Control:max-age=60",
            "Surrogate-Key:item-1 items",
            "Cache-Tag:t",
        ],
    );
    for _ in 0..2 {
        let (_, h, _) = get(&gw, &path, &[]).await;
        assert!(!h.contains_key("surrogate-key") && !h.contains_key("cache-tag"));
    }
    let origin2 = Origin::start("b").await;
    let gw2 = Gateway::start(&config(&origin2, "keep_surrogate_keys: true", "")).await;
    let (_, h, _) = get(&gw2, &path, &[]).await;
    assert_eq!(h["surrogate-key"], "item-1 items");
}

#[tokio::test]
async fn oversize_objects_stream_through_uncached() {
    let origin = Origin::start("a").await;
    let gw = Gateway::start(&config(
        &origin,
        "",
        "max_size: 1MiB, max_object_size: 1KiB",
    ))
    .await;
    let path = format!(
        "{}&size=4096",
        resp("big", &["Cache-Control:max-age=60"]).replace("size=100&", "")
    );
    for _ in 0..2 {
        let (s, h, len) = get(&gw, &path, &[]).await;
        assert_eq!((s, len), (200, 4096));
        assert_eq!(x_cache(&h), "MISS");
    }
    assert_eq!(origin.hits(), 2);
}

#[tokio::test]
async fn the_byte_bound_holds_and_evicts() {
    let origin = Origin::start("a").await;
    let gw = Gateway::start(&config(
        &origin,
        "",
        "max_size: 256KiB, max_object_size: 16KiB",
    ))
    .await;
    for i in 0..100 {
        let path = format!(
            "{}&size=8192",
            resp(&format!("fill{i}"), &["Cache-Control:max-age=600"]).replace("size=100&", "")
        );
        let (s, _, len) = get(&gw, &path, &[]).await;
        assert_eq!((s, len), (200, 8192));
    }
    let m = gw.wait_metrics(&["gateway_cache_stores_total 100"]).await;
    let value = |name: &str| -> f64 {
        m.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing:\n{m}"))
    };
    assert_eq!(value("gateway_cache_capacity_bytes"), 262144.0);
    assert!(
        value("gateway_cache_bytes") <= 262144.0,
        "{}",
        value("gateway_cache_bytes")
    );
    assert!(
        value("gateway_cache_evictions_total") > 50.0,
        "{}",
        value("gateway_cache_evictions_total")
    );
    assert!(value("gateway_cache_entries") < 40.0);
}

#[tokio::test]
async fn routes_without_a_cache_rule_say_nothing_about_caching() {
    let origin = Origin::start("a").await;
    let gw = Gateway::start(&config(&origin, "", "")).await;
    let (_, h, _) = get(&gw, "/plain", &[]).await;
    assert!(!h.contains_key("cache-status") && !h.contains_key("x-cache"));
}

#[tokio::test]
async fn the_key_shows_in_cache_status_only_when_asked() {
    let origin = Origin::start("a").await;
    let path = resp("k", &["Cache-Control:max-age=60"]);
    let gw = Gateway::start(&config(&origin, "", "")).await;
    assert!(!cache_status(&get(&gw, &path, &[]).await.1).contains("key="));
    let gw2 = Gateway::start(&config(&origin, "", "status_key: true")).await;
    let (_, h, _) = get(&gw2, &path, &[]).await;
    assert!(
        cache_status(&h).contains("; key=\""),
        "{}",
        cache_status(&h)
    );
    assert!(cache_status(&h).contains("/resp/k"), "{}", cache_status(&h));
}

#[tokio::test]
async fn request_no_cache_and_pragma_force_validation() {
    let origin = Origin::start("a").await;
    let gw = Gateway::start(&config(&origin, "", "")).await;
    let path = resp("rnc", &["Cache-Control:max-age=60", "ETag:\"e1\""]);
    get(&gw, &path, &[]).await;
    let (_, h, _) = get(&gw, &path, &[("cache-control", "no-cache")]).await;
    assert!(
        cache_status(&h).contains("fwd=request"),
        "{}",
        cache_status(&h)
    );
    assert_eq!(origin.hits(), 2, "validated upstream");
    get(&gw, &path, &[("pragma", "no-cache")]).await;
    assert_eq!(origin.hits(), 3, "Pragma: no-cache without Cache-Control");
    get(
        &gw,
        &path,
        &[("pragma", "no-cache"), ("cache-control", "max-stale")],
    )
    .await;
    assert_eq!(
        origin.hits(),
        3,
        "Pragma is ignored when Cache-Control is present"
    );
    assert_eq!(x_cache(&get(&gw, &path, &[]).await.1), "HIT");
}

#[tokio::test]
async fn request_max_age_and_min_fresh_limit_what_is_served() {
    let origin = Origin::start("a").await;
    let gw = Gateway::start(&config(&origin, "", "")).await;
    let path = resp("rma", &["Cache-Control:max-age=60"]);
    get(&gw, &path, &[]).await;
    tokio::time::sleep(Duration::from_millis(1100)).await; // the entry is now >= 1 s old
    assert_eq!(
        x_cache(&get(&gw, &path, &[("cache-control", "max-age=30")]).await.1),
        "HIT"
    );
    let (_, h, _) = get(&gw, &path, &[("cache-control", "max-age=0")]).await;
    assert_ne!(x_cache(&h), "HIT", "too old for the client");
    let before = origin.hits();
    let (_, h, _) = get(&gw, &path, &[("cache-control", "min-fresh=3600")]).await;
    assert_ne!(x_cache(&h), "HIT", "not fresh long enough for the client");
    assert_eq!(origin.hits(), before + 1);
    assert_eq!(
        x_cache(&get(&gw, &path, &[("cache-control", "min-fresh=5")]).await.1),
        "HIT"
    );
}

#[tokio::test]
async fn request_max_stale_accepts_stale_unless_the_response_forbids_it() {
    let origin = Origin::start("a").await;
    let gw = Gateway::start(&config(&origin, "", "")).await;
    let path = resp("rms", &["Cache-Control:max-age=1"]);
    let strict = resp("rms-mr", &["Cache-Control:max-age=1, must-revalidate"]);
    get(&gw, &path, &[]).await;
    get(&gw, &strict, &[]).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let before = origin.hits();
    let (_, h, _) = get(&gw, &path, &[("cache-control", "max-stale=60")]).await;
    assert_eq!(x_cache(&h), "HIT", "{}", cache_status(&h));
    assert_eq!(origin.hits(), before, "stale copy accepted by the client");
    let (_, h, _) = get(&gw, &path, &[("cache-control", "max-stale=0")]).await;
    assert_ne!(x_cache(&h), "HIT", "more stale than the client accepts");
    let before = origin.hits();
    let (_, h, _) = get(&gw, &strict, &[("cache-control", "max-stale")]).await;
    assert_ne!(x_cache(&h), "HIT", "must-revalidate wins over max-stale");
    assert_eq!(origin.hits(), before + 1);
}

#[tokio::test]
async fn request_no_store_and_only_if_cached() {
    let origin = Origin::start("a").await;
    let gw = Gateway::start(&config(&origin, "", "")).await;
    let path = resp("rns", &["Cache-Control:max-age=60"]);
    let (_, h, _) = get(&gw, &path, &[("cache-control", "no-store")]).await;
    assert!(
        cache_status(&h).ends_with("detail=request-no-store"),
        "{}",
        cache_status(&h)
    );
    let r = client()
        .get(gw.url(&path))
        .header("cache-control", "only-if-cached")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        504,
        "nothing stored, and the client forbids forwarding"
    );
    assert_eq!(json_error(r).await.0, "not in cache (only-if-cached)");
    assert_eq!(origin.hits(), 1);
    get(&gw, &path, &[]).await;
    let (s, h, _) = get(&gw, &path, &[("cache-control", "only-if-cached")]).await;
    assert_eq!((s, x_cache(&h)), (200, "HIT"));
    assert_eq!(origin.hits(), 2);
}

async fn send(gw: &Gateway, method: &str, path: &str) -> u16 {
    let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    client()
        .request(m, gw.url(path))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn unsafe_methods_invalidate_the_target_uri_with_all_variants() {
    let origin = Origin::start("a").await;
    let gw = Gateway::start(&config(&origin, "", "")).await;
    let path = resp("inv", &["Cache-Control:max-age=60", "Vary:Accept-Language"]);
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        get(&gw, &path, &[("accept-language", "en")]).await;
        get(&gw, &path, &[("accept-language", "fr")]).await;
        assert_eq!(
            x_cache(&get(&gw, &path, &[("accept-language", "en")]).await.1),
            "HIT"
        );
        assert_eq!(send(&gw, method, &path).await, 200);
        assert_eq!(
            x_cache(&get(&gw, &path, &[("accept-language", "en")]).await.1),
            "MISS",
            "{method}"
        );
        assert_eq!(
            x_cache(&get(&gw, &path, &[("accept-language", "fr")]).await.1),
            "MISS",
            "{method}"
        );
    }
    // An error answer invalidates nothing.
    get(&gw, &path, &[]).await;
    let failing = format!("{path}&status=500");
    assert_eq!(send(&gw, "POST", &failing).await, 500);
    assert_eq!(x_cache(&get(&gw, &path, &[]).await.1), "HIT");
    gw.wait_metrics(&["gateway_cache_invalidations_total 8"])
        .await;
}

#[tokio::test]
async fn location_and_content_location_on_the_same_origin_are_invalidated() {
    let origin = Origin::start("a").await;
    let gw = Gateway::start(&config(&origin, "default_ttl: 60s", "")).await;
    for target in ["/resp/plain-a", "/resp/plain-b"] {
        get(&gw, target, &[]).await;
        assert_eq!(x_cache(&get(&gw, target, &[]).await.1), "HIT");
    }
    let host = gw.listen.to_string();
    let post = format!(
        "/responder?status=201&h=Location:/resp/plain-a&h=Content-Location:http%3A//{host}/resp/plain-b"
    );
    // The unsafe request matches a route without a cache: invalidation is global.
    assert_eq!(send(&gw, "POST", &post).await, 201);
    assert_eq!(x_cache(&get(&gw, "/resp/plain-a", &[]).await.1), "MISS");
    assert_eq!(x_cache(&get(&gw, "/resp/plain-b", &[]).await.1), "MISS");

    // Another origin's Location is left alone.
    get(&gw, "/resp/plain-a", &[]).await;
    let foreign = "/responder?status=201&h=Location:http%3A//elsewhere.example/resp/plain-a";
    assert_eq!(send(&gw, "POST", foreign).await, 201);
    assert_eq!(x_cache(&get(&gw, "/resp/plain-a", &[]).await.1), "HIT");
}

#[tokio::test]
async fn client_conditionals_are_answered_from_a_fresh_stored_response() {
    let origin = Origin::start("a").await;
    let gw = Gateway::start(&config(&origin, "", "")).await;
    let lm = "Tue, 01 Sep 2026 10:00:00 GMT";
    let expires = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(60));
    let path = resp(
        "cond",
        &[
            "Cache-Control:max-age=60",
            "ETag:\"v1\"",
            &format!("Last-Modified:{lm}"),
            "Vary:Accept-Language",
            &format!("Expires:{expires}"),
        ],
    );
    get(&gw, &path, &[]).await;
    let (s, h, len) = get(&gw, &path, &[("if-none-match", "\"v1\"")]).await;
    assert_eq!((s, len), (304, 0));
    for k in ["etag", "cache-control", "vary", "date", "expires"] {
        assert!(h.contains_key(k), "{k} on the 304: {h:?}");
    }
    assert_eq!(get(&gw, &path, &[("if-modified-since", lm)]).await.0, 304);
    // If-None-Match takes precedence over If-Modified-Since.
    assert_eq!(
        get(
            &gw,
            &path,
            &[("if-none-match", "\"v0\""), ("if-modified-since", lm)]
        )
        .await
        .0,
        200
    );
    assert_eq!(origin.hits(), 1, "all answered from the cache");
}

#[tokio::test]
async fn stale_entries_are_revalidated_304_refreshes_and_200_replaces() {
    let origin = Origin::start("a").await;
    let gw = Gateway::start(&config(&origin, "", "")).await;
    let revalidated = format!(
        "{}&inm304=1",
        resp("rv304", &["Cache-Control:max-age=1", "ETag:\"r1\""])
    );
    let replaced = resp("rv200", &["Cache-Control:max-age=1", "ETag:\"r2\""]);
    get(&gw, &revalidated, &[]).await;
    get(&gw, &replaced, &[]).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;

    let (s, h, len) = get(&gw, &revalidated, &[]).await;
    assert_eq!(
        (s, len),
        (200, 100),
        "the stored body, after a 304 upstream"
    );
    assert_eq!(x_cache(&h), "REVALIDATED", "{}", cache_status(&h));
    let seen = origin.seen().await;
    let last = seen.iter().rev().find(|s| s.uri.contains("rv304")).unwrap();
    assert_eq!(
        last.headers["if-none-match"], "\"r1\"",
        "validated with the stored ETag"
    );
    assert_eq!(
        x_cache(&get(&gw, &revalidated, &[]).await.1),
        "HIT",
        "fresh again"
    );

    let (s, h, _) = get(&gw, &replaced, &[]).await;
    assert_eq!(s, 200);
    assert_eq!(x_cache(&h), "EXPIRED", "{}", cache_status(&h));
    assert_eq!(
        x_cache(&get(&gw, &replaced, &[]).await.1),
        "HIT",
        "the new 200 replaced the entry"
    );
    assert_eq!(origin.hits(), 4);
}

#[tokio::test]
async fn ranges_are_served_from_the_stored_response() {
    let origin = Origin::start("a").await;
    let gw = Gateway::start(&config(&origin, "", "")).await;
    let path = resp("range", &["Cache-Control:max-age=60"]);
    // A range request on a miss fetches (and stores) the whole object.
    let r = client()
        .get(gw.url(&path))
        .header("range", "bytes=0-9")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], "bytes 0-9/100");
    assert_eq!(r.bytes().await.unwrap().len(), 10);
    let seen = origin.seen().await;
    assert!(
        !seen[0].headers.contains_key("range"),
        "the whole object was fetched"
    );

    let r = client()
        .get(gw.url(&path))
        .header("range", "bytes=90-")
        .send()
        .await
        .unwrap();
    assert_eq!(
        (
            r.status().as_u16(),
            r.headers()["x-cache"].to_str().unwrap()
        ),
        (206, "HIT")
    );
    assert_eq!(r.headers()["content-range"], "bytes 90-99/100");
    assert_eq!(r.bytes().await.unwrap().len(), 10);

    let r = client()
        .get(gw.url(&path))
        .header("range", "bytes=0-1,10-11")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("multipart/byteranges"), "{ct}");

    let r = client()
        .get(gw.url(&path))
        .header("range", "bytes=500-600")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);
    assert_eq!(origin.hits(), 1);
}

#[tokio::test]
async fn rule_ttl_clamps_never_override_validation() {
    let origin = Origin::start("a").await;
    let gw = Gateway::start(&config(&origin, "max_ttl: 1s", "")).await;
    // max_ttl caps a long max-age.
    let long = resp("cap", &["Cache-Control:max-age=3600"]);
    get(&gw, &long, &[]).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_ne!(
        x_cache(&get(&gw, &long, &[]).await.1),
        "HIT",
        "capped at 1s"
    );

    let origin2 = Origin::start("b").await;
    let gw2 = Gateway::start(&config(&origin2, "min_ttl: 60s", "")).await;
    // min_ttl lifts max-age=0 ...
    let zero = resp("floor", &["Cache-Control:max-age=0"]);
    get(&gw2, &zero, &[]).await;
    assert_eq!(x_cache(&get(&gw2, &zero, &[]).await.1), "HIT");
    // ... but never no-cache or must-revalidate content, nor no-store.
    for (id, cc) in [
        ("nc", "no-cache"),
        ("mr", "max-age=0, must-revalidate"),
        ("ns", "no-store"),
    ] {
        let p = resp(&format!("floor-{id}"), &[&format!("Cache-Control:{cc}")]);
        get(&gw2, &p, &[]).await;
        assert_ne!(x_cache(&get(&gw2, &p, &[]).await.1), "HIT", "{cc}");
    }
}

#[tokio::test]
async fn rule_query_composition() {
    let origin = Origin::start("a").await;
    let gw = Gateway::start(&config(&origin, "", "")).await;
    let base = resp("q", &["Cache-Control:max-age=60"]);
    get(&gw, &format!("{base}&b=1&a=2"), &[]).await;
    assert_eq!(
        x_cache(&get(&gw, &format!("{base}&a=2&b=1"), &[]).await.1),
        "HIT",
        "sorted"
    );
    assert_eq!(
        x_cache(&get(&gw, &format!("{base}&a=3&b=1"), &[]).await.1),
        "MISS"
    );

    let origin2 = Origin::start("b").await;
    let gw2 = Gateway::start(&config(&origin2, "key: { query_ignore: [utm] }", "")).await;
    get(&gw2, &format!("{base}&utm=x"), &[]).await;
    assert_eq!(
        x_cache(&get(&gw2, &format!("{base}&utm=y"), &[]).await.1),
        "HIT",
        "ignored param"
    );

    let origin3 = Origin::start("c").await;
    let allow = "key: { query_allow: [page, size, h] }";
    let gw3 = Gateway::start(&config(&origin3, allow, "")).await;
    get(&gw3, &format!("{base}&page=1&ref=a"), &[]).await;
    assert_eq!(
        x_cache(&get(&gw3, &format!("{base}&page=1&ref=b"), &[]).await.1),
        "HIT"
    );
    assert_eq!(
        x_cache(&get(&gw3, &format!("{base}&page=2"), &[]).await.1),
        "MISS"
    );

    let origin4 = Origin::start("d").await;
    let gw4 = Gateway::start(&config(
        &origin4,
        "default_ttl: 60s, key: { query: none }",
        "",
    ))
    .await;
    get(&gw4, "/resp/none?x=1", &[]).await;
    assert_eq!(
        x_cache(&get(&gw4, "/resp/none?x=2", &[]).await.1),
        "HIT",
        "query ignored"
    );
}

#[tokio::test]
async fn rule_key_headers_and_cookies_and_bypass() {
    let origin = Origin::start("a").await;
    let rule = "key: { headers: [X-Tenant], cookies: [lang] }, bypass: { cookies: [session], headers: [X-Debug] }";
    let gw = Gateway::start(&config(&origin, rule, "")).await;
    let path = resp("kh", &["Cache-Control:max-age=60"]);
    get(&gw, &path, &[("x-tenant", "a"), ("cookie", "lang=en")]).await;
    assert_eq!(
        x_cache(
            &get(
                &gw,
                &path,
                &[("x-tenant", "a"), ("cookie", "lang=en; other=1")]
            )
            .await
            .1
        ),
        "HIT"
    );
    assert_eq!(
        x_cache(
            &get(&gw, &path, &[("x-tenant", "b"), ("cookie", "lang=en")])
                .await
                .1
        ),
        "MISS"
    );
    assert_eq!(
        x_cache(
            &get(&gw, &path, &[("x-tenant", "a"), ("cookie", "lang=fr")])
                .await
                .1
        ),
        "MISS"
    );

    let before = origin.hits();
    let (_, h, _) = get(
        &gw,
        &path,
        &[("x-tenant", "a"), ("cookie", "lang=en; session=s1")],
    )
    .await;
    assert_eq!(x_cache(&h), "BYPASS");
    assert_eq!(
        cache_status(&h),
        "gateway; fwd=bypass; fwd-status=200; detail=rule"
    );
    let (_, h, _) = get(
        &gw,
        &path,
        &[("x-tenant", "a"), ("cookie", "lang=en"), ("x-debug", "1")],
    )
    .await;
    assert_eq!(x_cache(&h), "BYPASS");
    assert_eq!(origin.hits(), before + 2, "bypassed requests go upstream");
    // All variants of a URI go together on invalidation.
    assert_eq!(send(&gw, "POST", &path).await, 200);
    assert_eq!(
        x_cache(
            &get(&gw, &path, &[("x-tenant", "a"), ("cookie", "lang=en")])
                .await
                .1
        ),
        "MISS"
    );
    assert_eq!(
        x_cache(
            &get(&gw, &path, &[("x-tenant", "b"), ("cookie", "lang=en")])
                .await
                .1
        ),
        "MISS"
    );
}

#[tokio::test]
async fn rule_heuristic_off_ignores_default_ttl() {
    let origin = Origin::start("a").await;
    let gw = Gateway::start(&config(&origin, "default_ttl: 60s, heuristic: false", "")).await;
    let path = resp("hoff", &[]);
    get(&gw, &path, &[]).await;
    let (_, h, _) = get(&gw, &path, &[]).await;
    assert_eq!(x_cache(&h), "MISS");
    assert!(cache_status(&h).ends_with("detail=no-freshness"));
}

#[tokio::test]
async fn vary_on_several_headers_with_normalised_values() {
    let origin = Origin::start("a").await;
    let gw = Gateway::start(&config(&origin, "", "")).await;
    let path = resp(
        "vary2",
        &["Cache-Control:max-age=60", "Vary:Accept-Language, X-Format"],
    );
    get(
        &gw,
        &path,
        &[("accept-language", "en"), ("x-format", "a  b")],
    )
    .await;
    // Same values modulo whitespace: the same variant.
    let (_, h, _) = get(
        &gw,
        &path,
        &[("accept-language", " en "), ("x-format", "a b")],
    )
    .await;
    assert_eq!(x_cache(&h), "HIT");
    assert_eq!(
        x_cache(
            &get(&gw, &path, &[("accept-language", "en"), ("x-format", "c")])
                .await
                .1
        ),
        "MISS"
    );
    assert_eq!(
        x_cache(&get(&gw, &path, &[("accept-language", "en")]).await.1),
        "MISS",
        "absent is a value too"
    );
    assert_eq!(origin.hits(), 3);
}

#[tokio::test]
async fn a_rule_can_forward_range_misses_instead_of_filling() {
    let origin = Origin::start("a").await;
    let gw = Gateway::start(&config(&origin, "range_miss: forward", "")).await;
    let path = resp("fwdrange", &["Cache-Control:max-age=60"]);
    let r = client()
        .get(gw.url(&path))
        .header("range", "bytes=0-9")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], "bytes 0-9/100");
    assert_eq!(r.bytes().await.unwrap().len(), 10);
    let seen = origin.seen().await;
    assert_eq!(
        seen[0].headers["range"], "bytes=0-9",
        "the range went upstream"
    );
    let (_, h, _) = get(&gw, &path, &[]).await;
    assert_eq!(x_cache(&h), "MISS", "the 206 was not stored");
    assert_eq!(x_cache(&get(&gw, &path, &[]).await.1), "HIT");
    // A range on a hit is still served from the stored object.
    let r = client()
        .get(gw.url(&path))
        .header("range", "bytes=5-9")
        .send()
        .await
        .unwrap();
    assert_eq!(
        (
            r.status().as_u16(),
            r.headers()["x-cache"].to_str().unwrap()
        ),
        (206, "HIT")
    );
    assert_eq!(origin.hits(), 2);
}
