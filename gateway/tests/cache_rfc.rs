//! Response cache, part 3: HTTP caching to the letter. Each test checks one
//! rule of RFC 9110 / 9111 / 9213 against a real origin and is named after
//! its section. Time is never waited for where the origin can say it: a
//! `Date` and an `Age` in the past stand in for a response that has aged.

mod common;

use std::time::{Duration, SystemTime};

use common::*;
use reqwest::header::HeaderMap;

fn config(origin: &Origin, cache_block: &str) -> String {
    format!(
        r#"
listen: "{{listen}}"
admin: {{ listen: "{{admin}}" }}
cache: {{ {cache_block} }}
upstreams:
  app: {{ servers: ["{}"] }}
routes:
  - {{ name: cached, match: {{ path_prefix: /resp }}, upstream: app, cache: {{ }} }}
"#,
        origin.addr
    )
}

/// `/resp/<id>?size=100&h=...` (`&h304=...` for fields only a 304 carries).
fn resp(id: &str, headers: &[&str], headers_304: &[&str]) -> String {
    let enc = |h: &str| {
        h.replace('%', "%25")
            .replace('=', "%3D")
            .replace(',', "%2C")
            .replace(' ', "%20")
            .replace('"', "%22")
    };
    let mut url = format!("/resp/{id}?size=100");
    for h in headers {
        url.push_str(&format!("&h={}", enc(h)));
    }
    if !headers_304.is_empty() {
        url.push_str("&inm304=1");
    }
    for h in headers_304 {
        url.push_str(&format!("&h304={}", enc(h)));
    }
    url
}

async fn get(gw: &Gateway, path: &str) -> (u16, HeaderMap, usize) {
    let r = client().get(gw.url(path)).send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let len = r.bytes().await.unwrap().len();
    (status, headers, len)
}

fn text<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
    h.get(name).map_or("-", |v| v.to_str().unwrap())
}

fn age(h: &HeaderMap) -> u64 {
    text(h, "age").parse().expect("an Age field")
}

/// An HTTP date `secs` seconds before now (negative: after).
fn date_ago(secs: i64) -> String {
    let now = SystemTime::now();
    let t = if secs >= 0 {
        now - Duration::from_secs(secs as u64)
    } else {
        now + Duration::from_secs(secs.unsigned_abs())
    };
    httpdate::fmt_http_date(t)
}

#[tokio::test]
async fn rfc9110_6_6_1_responses_keep_the_origins_date_also_from_the_cache() {
    let origin = Origin::start("a").await;
    let gw = Gateway::start(&config(&origin, "")).await;
    let date = date_ago(100);
    let path = resp(
        "date",
        &["Cache-Control:max-age=600", &format!("Date:{date}")],
        &[],
    );
    let (_, h, _) = get(&gw, &path).await;
    assert_eq!(text(&h, "x-cache"), "MISS");
    assert_eq!(text(&h, "date"), date, "forwarded with the origin's Date");
    let (_, h, len) = get(&gw, &path).await;
    assert_eq!((text(&h, "x-cache"), len), ("HIT", 100));
    assert_eq!(
        text(&h, "date"),
        date,
        "served from the cache with the stored Date"
    );
    assert!(age(&h) >= 100, "Age counts from Date: {}", age(&h));
    // A response the gateway makes itself carries the gateway's own Date.
    let r = client().get(gw.url("/nowhere")).send().await.unwrap();
    let own = httpdate::parse_http_date(text(r.headers(), "date")).unwrap();
    let skew = SystemTime::now()
        .duration_since(own)
        .unwrap_or_else(|e| e.duration());
    assert!(skew < Duration::from_secs(5), "{skew:?}");
    assert_eq!(origin.hits(), 1);
}

#[tokio::test]
async fn rfc9111_4_2_3_age_includes_received_age_and_resident_time() {
    let origin = Origin::start("a").await;
    let gw = Gateway::start(&config(&origin, "")).await;
    // Arrived with Age: 30 and a current Date: corrected initial age 30.
    let path = resp("age", &["Cache-Control:max-age=600", "Age:30"], &[]);
    let (_, h, _) = get(&gw, &path).await;
    assert_eq!((text(&h, "x-cache"), age(&h)), ("MISS", 30));
    let (_, h, _) = get(&gw, &path).await;
    assert_eq!(text(&h, "x-cache"), "HIT");
    let first = age(&h);
    assert!((30..60).contains(&first), "received Age kept: {first}");
    // Resident time adds to it: the Age grows with the clock (a bounded
    // wait for the next second, not a fixed sleep).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_, h, _) = get(&gw, &path).await;
        assert_eq!(text(&h, "x-cache"), "HIT");
        if age(&h) > first {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "Age never grew");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The apparent age (now - Date), when larger than the received Age.
    let old = resp(
        "apparent",
        &[
            "Cache-Control:max-age=600",
            "Age:30",
            &format!("Date:{}", date_ago(100)),
        ],
        &[],
    );
    get(&gw, &old).await;
    let (_, h, _) = get(&gw, &old).await;
    assert_eq!(text(&h, "x-cache"), "HIT");
    assert!((100..130).contains(&age(&h)), "{}", age(&h));
    assert_eq!(origin.hits(), 2);
}

#[tokio::test]
async fn rfc9111_4_2_3_age_counts_the_same_when_freshness_comes_from_expires() {
    let origin = Origin::start("a").await;
    let gw = Gateway::start(&config(&origin, "")).await;
    // Date 100 s ago, Expires 600 s after Date, arrived with Age: 30.
    let path = resp(
        "expires",
        &[
            &format!("Date:{}", date_ago(100)),
            &format!("Expires:{}", date_ago(-500)),
            "Age:30",
        ],
        &[],
    );
    get(&gw, &path).await;
    let (_, h, _) = get(&gw, &path).await;
    assert_eq!(text(&h, "x-cache"), "HIT", "{}", text(&h, "cache-status"));
    assert!((100..130).contains(&age(&h)), "{}", age(&h));
    // Fresh for Expires - Date - age = 500 s more.
    let status = text(&h, "cache-status");
    let ttl: i64 = status
        .split("ttl=")
        .nth(1)
        .and_then(|t| t.split(';').next())
        .unwrap()
        .parse()
        .unwrap();
    assert!((470..=500).contains(&ttl), "{status}");
    // Arrived with an Age beyond Expires - Date: stale on arrival.
    let aged = resp(
        "expires-aged",
        &[
            &format!("Date:{}", date_ago(0)),
            &format!("Expires:{}", date_ago(-60)),
            "Age:120",
        ],
        &[],
    );
    get(&gw, &aged).await;
    let (_, h, _) = get(&gw, &aged).await;
    assert_eq!(
        text(&h, "x-cache"),
        "EXPIRED",
        "{}",
        text(&h, "cache-status")
    );
    assert_eq!(origin.hits(), 3);
}

#[tokio::test]
async fn rfc9111_4_2_1_expires_at_or_before_date_is_stale_whatever_the_clock() {
    let origin = Origin::start("a").await;
    let gw = Gateway::start(&config(&origin, "")).await;
    // An origin clock an hour ahead: Expires is in this machine's future,
    // but equals Date, so the response was never fresh.
    let ahead = date_ago(-3600);
    let path = resp(
        "exp-date",
        &[&format!("Date:{ahead}"), &format!("Expires:{ahead}")],
        &[],
    );
    let (_, h, _) = get(&gw, &path).await;
    assert_eq!(text(&h, "x-cache"), "MISS");
    let (_, h, _) = get(&gw, &path).await;
    assert_eq!(
        text(&h, "x-cache"),
        "EXPIRED",
        "{}",
        text(&h, "cache-status")
    );
    // Expires before Date, both in the future by this clock.
    let before = resp(
        "exp-before",
        &[
            &format!("Date:{ahead}"),
            &format!("Expires:{}", date_ago(-1800)),
        ],
        &[],
    );
    get(&gw, &before).await;
    let (_, h, _) = get(&gw, &before).await;
    assert_eq!(
        text(&h, "x-cache"),
        "EXPIRED",
        "{}",
        text(&h, "cache-status")
    );
    assert_eq!(origin.hits(), 4);
}

#[tokio::test]
async fn rfc9111_5_1_an_invalid_age_makes_the_response_stale() {
    let origin = Origin::start("a").await;
    let gw = Gateway::start(&config(&origin, "")).await;
    for (id, bad) in [
        ("age-list", "old, 0"),
        ("age-neg", "-1"),
        ("age-frac", "1.5"),
    ] {
        let path = resp(
            id,
            &["Cache-Control:max-age=600", &format!("Age:{bad}")],
            &[],
        );
        get(&gw, &path).await;
        let (_, h, _) = get(&gw, &path).await;
        assert_eq!(
            text(&h, "x-cache"),
            "EXPIRED",
            "Age {bad:?} is never read as 0"
        );
    }
    // The control: a valid Age keeps it fresh.
    let path = resp("age-ok", &["Cache-Control:max-age=600", "Age:0"], &[]);
    get(&gw, &path).await;
    assert_eq!(text(&get(&gw, &path).await.1, "x-cache"), "HIT");
}

#[tokio::test]
async fn rfc9111_3_1_connection_listed_fields_are_neither_stored_nor_served() {
    let origin = Origin::start("a").await;
    let gw = Gateway::start(&config(&origin, "")).await;
    let path = resp(
        "conn",
        &[
            "Cache-Control:max-age=600",
            "Connection:x-hop",
            "X-Hop:secret",
            "X-Kept:1",
        ],
        &[],
    );
    let (_, h, _) = get(&gw, &path).await;
    assert_eq!(text(&h, "x-cache"), "MISS");
    assert!(!h.contains_key("x-hop"), "not forwarded");
    assert_eq!(text(&h, "x-kept"), "1");
    let (_, h, _) = get(&gw, &path).await;
    assert_eq!(text(&h, "x-cache"), "HIT");
    assert!(!h.contains_key("x-hop"), "not stored");
    assert_eq!(text(&h, "x-kept"), "1");
    // The origin did send it (the test would prove nothing otherwise).
    let raw = raw_get(&origin, &path).await;
    assert!(
        raw.to_ascii_lowercase().contains("\r\nx-hop: secret"),
        "{raw}"
    );
}

/// The origin's response header, as sent.
async fn raw_get(origin: &Origin, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(origin.addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: o\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    text.split("\r\n\r\n").next().unwrap().to_owned()
}

#[tokio::test]
async fn rfc9111_4_3_4_every_field_of_a_304_updates_the_stored_response() {
    let origin = Origin::start("a").await;
    let gw = Gateway::start(&config(&origin, "")).await;
    let date_304 = date_ago(50);
    // Stored stale (max-age=0); the 304 brings new values and freshness.
    let path = resp(
        "upd",
        &[
            "Cache-Control:max-age=0",
            "ETag:\"v1\"",
            "Test-Header:old",
            "X-Content-Foo:old",
            "Content-Foo:old",
            "X-Kept:same",
        ],
        &[
            "Cache-Control:max-age=600",
            "Test-Header:new",
            "X-Content-Foo:new",
            "Content-Foo:new",
            &format!("Date:{date_304}"),
        ],
    );
    let (_, h, _) = get(&gw, &path).await;
    assert_eq!(
        (text(&h, "x-cache"), text(&h, "test-header")),
        ("MISS", "old")
    );
    for round in ["REVALIDATED", "HIT"] {
        let (s, h, len) = get(&gw, &path).await;
        assert_eq!((s, len), (200, 100), "{round}: the stored body");
        assert_eq!(text(&h, "x-cache"), round, "{}", text(&h, "cache-status"));
        for name in ["test-header", "x-content-foo", "content-foo"] {
            assert_eq!(text(&h, name), "new", "{round}: {name}");
        }
        assert_eq!(text(&h, "x-kept"), "same");
        assert_eq!(text(&h, "cache-control"), "max-age=600");
        assert_eq!(text(&h, "content-length"), "100", "never the 304's");
        assert_eq!(text(&h, "date"), date_304, "{round}: the 304's Date");
        assert!(
            age(&h) >= 50,
            "{round}: Age from the 304's Date: {}",
            age(&h)
        );
    }
    assert_eq!(origin.hits(), 2);

    // A 304 that makes the response unstorable (no-store): the stored one is
    // still served this time, with the 304's fields and age, and not updated.
    let date_304 = date_ago(40);
    let path = resp(
        "upd-nostore",
        &["Cache-Control:max-age=0", "ETag:\"v1\"", "Test-Header:old"],
        &[
            "Cache-Control:no-store",
            "Test-Header:new",
            &format!("Date:{date_304}"),
        ],
    );
    get(&gw, &path).await;
    for _ in 0..2 {
        let (_, h, len) = get(&gw, &path).await;
        assert_eq!((text(&h, "x-cache"), len), ("REVALIDATED", 100));
        assert_eq!(text(&h, "test-header"), "new");
        assert_eq!(text(&h, "cache-control"), "no-store");
        assert_eq!(text(&h, "date"), date_304);
        assert!((40..70).contains(&age(&h)), "the 304's age: {}", age(&h));
    }
    assert_eq!(origin.hits(), 5);
}

#[tokio::test]
async fn rfc9211_2_4_a_variant_miss_is_fwd_vary_miss() {
    let origin = Origin::start("a").await;
    let gw = Gateway::start(&config(&origin, "")).await;
    let path = resp(
        "vm",
        &["Cache-Control:max-age=600", "Vary:Accept-Language"],
        &[],
    );
    let lang = |l: &'static str| {
        let c = client();
        let url = gw.url(&path);
        async move {
            let r = c
                .get(url)
                .header("accept-language", l)
                .send()
                .await
                .unwrap();
            text(r.headers(), "cache-status").to_owned()
        }
    };
    assert_eq!(
        lang("en").await,
        "gateway; fwd=uri-miss; fwd-status=200; stored"
    );
    assert_eq!(
        lang("fr").await,
        "gateway; fwd=vary-miss; fwd-status=200; stored"
    );
    assert!(lang("fr").await.starts_with("gateway; hit"));
    assert!(lang("en").await.starts_with("gateway; hit"));
    assert_eq!(origin.hits(), 2);
}

/// Cache-Status of one request and the response's header.
async fn status_of(gw: &Gateway, path: &str) -> (String, HeaderMap) {
    let (_, h, _) = get(gw, path).await;
    (text(&h, "x-cache").to_owned(), h)
}

#[tokio::test]
async fn rfc9213_2_2_cdn_cache_control_governs_the_gateway_and_is_passed_on() {
    let origin = Origin::start("a").await;
    let gw = Gateway::start(&config(&origin, "")).await;
    // Browsers must not store it; the gateway may, for 10 minutes.
    let path = resp(
        "cdn-store",
        &["Cache-Control:no-store", "CDN-Cache-Control:max-age=600"],
        &[],
    );
    assert_eq!(status_of(&gw, &path).await.0, "MISS");
    let (x, h) = status_of(&gw, &path).await;
    assert_eq!(x, "HIT", "{}", text(&h, "cache-status"));
    assert_eq!(
        text(&h, "cache-control"),
        "no-store",
        "for the caches after the gateway"
    );
    assert_eq!(
        text(&h, "cdn-cache-control"),
        "max-age=600",
        "for a CDN in front"
    );
    // The other way round: browsers may, the gateway must not.
    let path = resp(
        "cdn-nostore",
        &["Cache-Control:max-age=600", "CDN-Cache-Control:no-store"],
        &[],
    );
    status_of(&gw, &path).await;
    assert_eq!(status_of(&gw, &path).await.0, "MISS");
    // A targeted field in use replaces Expires too (RFC 9213 §2.2): no
    // freshness is left, and the route gives no heuristic one.
    let path = resp(
        "cdn-expires",
        &[
            &format!("Expires:{}", date_ago(-600)),
            "CDN-Cache-Control:must-revalidate",
        ],
        &[],
    );
    status_of(&gw, &path).await;
    let (x, h) = status_of(&gw, &path).await;
    assert_eq!(x, "MISS", "{}", text(&h, "cache-status"));
    assert_eq!(origin.hits(), 5);
}

#[tokio::test]
async fn rfc9213_2_2_the_gateway_field_comes_first_and_stays_with_the_gateway() {
    let origin = Origin::start("a").await;
    let path = resp(
        "own",
        &[
            "Cache-Control:no-store",
            "CDN-Cache-Control:no-store",
            "Gateway-Cache-Control:max-age=600",
        ],
        &[],
    );
    let gw = Gateway::start(&config(&origin, "")).await;
    assert_eq!(status_of(&gw, &path).await.0, "MISS");
    let (x, h) = status_of(&gw, &path).await;
    assert_eq!(x, "HIT", "{}", text(&h, "cache-status"));
    assert!(
        !h.contains_key("gateway-cache-control"),
        "meant for the gateway only"
    );
    assert_eq!(text(&h, "cdn-cache-control"), "no-store");
    drop(gw);
    // Forwarded when asked; a field of another name when configured so.
    let gw = Gateway::start(&config(&origin, "forward_targeted: true")).await;
    get(&gw, &path).await;
    let (x, h) = status_of(&gw, &path).await;
    assert_eq!(
        (x.as_str(), text(&h, "gateway-cache-control")),
        ("HIT", "max-age=600")
    );
    drop(gw);
    // Disabled: the field means nothing to the gateway and passes through.
    let gw = Gateway::start(&config(&origin, "targeted_field: \"\"")).await;
    get(&gw, &path).await;
    let (x, h) = status_of(&gw, &path).await;
    assert_eq!(x, "MISS", "CDN-Cache-Control: no-store rules");
    assert_eq!(text(&h, "gateway-cache-control"), "max-age=600");
}

#[tokio::test]
async fn rfc9213_2_1_an_invalid_targeted_field_is_ignored_as_a_whole_and_counted() {
    let origin = Origin::start("a").await;
    let gw = Gateway::start(&config(&origin, "")).await;
    // The gateway's field is not a valid Dictionary member (a quoted
    // max-age): CDN-Cache-Control, next in the list, rules.
    let path = resp(
        "invalid",
        &[
            "Cache-Control:max-age=600",
            "CDN-Cache-Control:no-store",
            "Gateway-Cache-Control:max-age=\"600\"",
        ],
        &[],
    );
    status_of(&gw, &path).await;
    let (x, h) = status_of(&gw, &path).await;
    assert_eq!(x, "MISS", "{}", text(&h, "cache-status"));
    // Both invalid: Cache-Control rules.
    let path = resp(
        "invalid-both",
        &[
            "Cache-Control:max-age=600",
            "CDN-Cache-Control:max-age=60, private=",
            "Gateway-Cache-Control:no-store;",
        ],
        &[],
    );
    status_of(&gw, &path).await;
    assert_eq!(status_of(&gw, &path).await.0, "HIT");
    gw.wait_metrics(&[r#"gateway_cache_invalid_targeted_total{route="cached"} 4"#])
        .await;
}
