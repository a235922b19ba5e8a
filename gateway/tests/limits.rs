//! Concurrency limits and queues: the origin never drowns, excess is refused fast.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;

fn config(origin: &Origin, limits: &str, upstream_limits: &str, cache: &str) -> String {
    format!(
        r#"
listen: "{{listen}}"
admin: {{ listen: "{{admin}}", token: {TOKEN} }}
upstreams:
  app: {{ servers: ["{}"], read_timeout: 10s, limits: {{ {upstream_limits} }} }}
routes:
  - {{ name: limited, match: {{ path_prefix: / }}, upstream: app, limits: {{ {limits} }} {cache} }}
"#,
        origin.addr
    )
}

const TOKEN: &str = "limits-token-0123456789";

/// Polls `/limits` until limiter `name` has `in_flight` requests holding a
/// slot and `queued` waiting (the state the test needs, instead of a sleep).
async fn wait_limiter(gw: &Gateway, name: &str, in_flight: u64, queued: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = gw.admin_json("/limits", TOKEN).await;
        let l = v["limiters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["name"] == name)
            .cloned()
            .unwrap_or_default();
        if l["in_flight"] == in_flight && l["queued"] == queued {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} never had {in_flight} in flight and {queued} queued: {v}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A request that holds its slot until [`Origin::release`]: `/stream` sends its
/// header and first chunk, then waits.
fn hold(gw: &Gateway) -> tokio::task::JoinHandle<u16> {
    let url = gw.url("/stream");
    tokio::spawn(async move {
        let r = client().get(url).send().await.unwrap();
        let status = r.status().as_u16();
        r.bytes().await.unwrap();
        status
    })
}

async fn burst(gw: &Gateway, n: usize, path: &str) -> Vec<(u16, Option<String>)> {
    let mut tasks = Vec::new();
    for _ in 0..n {
        let url = gw.url(path);
        tasks.push(tokio::spawn(async move {
            let r = client().get(url).send().await.unwrap();
            let retry = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            (r.status().as_u16(), retry)
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test]
async fn the_origin_never_sees_more_than_max_inflight() {
    let origin = Origin::start("a").await;
    let yaml = config(
        &origin,
        "max_inflight: 3, queue: { max_len: 100, timeout: 10s }",
        "",
        "",
    );
    let gw = Gateway::start(&yaml).await;
    let results = burst(&gw, 30, "/slow/100").await;
    assert!(results.iter().all(|(s, _)| *s == 200), "{results:?}");
    assert_eq!(
        origin.peak.load(Ordering::SeqCst),
        3,
        "peak concurrency at the origin"
    );
}

#[tokio::test]
async fn the_upstream_limit_applies_beside_the_route_limit() {
    let origin = Origin::start("a").await;
    let yaml = config(
        &origin,
        "max_inflight: 10, queue: { max_len: 100, timeout: 10s }",
        "max_inflight: 2",
        "",
    );
    let gw = Gateway::start(&yaml).await;
    let results = burst(&gw, 20, "/slow/100").await;
    assert!(results.iter().all(|(s, _)| *s == 200), "{results:?}");
    assert_eq!(origin.peak.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_full_queue_and_a_queue_timeout_answer_503_at_once() {
    let origin = Origin::start("a").await;
    let yaml = config(
        &origin,
        "max_inflight: 1, queue: { max_len: 1, timeout: 30s }",
        "",
        "",
    );
    let gw = Gateway::start(&yaml).await;
    let holder = hold(&gw);
    wait_limiter(&gw, "route:limited", 1, 0).await;
    let queued = tokio::spawn(client().get(gw.url("/queued")).send());
    wait_limiter(&gw, "route:limited", 1, 1).await;
    // The queue is full: refused at once (the holder is held until released,
    // so these answers cannot have waited for it).
    for _ in 0..4 {
        let r = client().get(gw.url("/x")).send().await.unwrap();
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["retry-after"], "1");
        assert!(json_error(r).await.0.contains("queue full"));
    }
    origin.release();
    assert_eq!(holder.await.unwrap(), 200);
    assert_eq!(queued.await.unwrap().unwrap().status(), 200);
    let r = client().get(gw.url("/x")).send().await.unwrap(); // the queue drained
    assert_eq!(r.status(), 200);
    assert_eq!(
        origin.hits(),
        3,
        "the shed requests never reached the origin"
    );

    let origin2 = Origin::start("b").await;
    let yaml = config(
        &origin2,
        "max_inflight: 1, queue: { max_len: 10, timeout: 200ms }",
        "",
        "",
    );
    let gw2 = Gateway::start(&yaml).await;
    let holder = hold(&gw2);
    wait_limiter(&gw2, "route:limited", 1, 0).await;
    // Shed at the queue timeout, while the holder still holds its slot.
    let r = client().get(gw2.url("/x")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    assert!(json_error(r).await.0.contains("queue timeout"));
    origin2.release();
    assert_eq!(holder.await.unwrap(), 200);
    assert_eq!(
        origin2.hits(),
        1,
        "the shed request never reached the origin"
    );
    gw2.wait_metrics(&[r#"gateway_shed_total{reason="queue_timeout",route="limited"} 1"#])
        .await;
}

#[tokio::test]
async fn queued_requests_are_served_in_order() {
    let origin = Origin::start("a").await;
    let yaml = config(
        &origin,
        "max_inflight: 1, queue: { max_len: 100, timeout: 30s }",
        "",
        "",
    );
    let gw = Gateway::start(&yaml).await;
    let holder = hold(&gw);
    wait_limiter(&gw, "route:limited", 1, 0).await;
    let mut tasks = Vec::new();
    for i in 0..6 {
        tasks.push(tokio::spawn(
            client().get(gw.url(&format!("/order/{i}"))).send(),
        ));
        // Enqueued in a known order: each waits in line before the next is sent.
        wait_limiter(&gw, "route:limited", 1, i + 1).await;
    }
    origin.release();
    assert_eq!(holder.await.unwrap(), 200);
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().status(), 200);
    }
    let order: Vec<String> = origin
        .seen()
        .await
        .iter()
        .filter(|s| s.uri.starts_with("/order/"))
        .map(|s| s.uri.clone())
        .collect();
    let want: Vec<String> = (0..6).map(|i| format!("/order/{i}")).collect();
    assert_eq!(order, want);
}

#[tokio::test]
async fn a_client_that_leaves_the_queue_never_reaches_the_origin() {
    use tokio::io::AsyncWriteExt;
    let origin = Origin::start("a").await;
    let yaml = config(
        &origin,
        "max_inflight: 1, queue: { max_len: 10, timeout: 30s }",
        "",
        "",
    );
    let gw = Gateway::start(&yaml).await;
    let holder = hold(&gw);
    wait_limiter(&gw, "route:limited", 1, 0).await;
    let mut s = tokio::net::TcpStream::connect(gw.listen).await.unwrap();
    s.write_all(b"GET /gone HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    wait_limiter(&gw, "route:limited", 1, 1).await;
    drop(s); // leaves while queued
    wait_limiter(&gw, "route:limited", 1, 0).await;
    origin.release();
    assert_eq!(holder.await.unwrap(), 200);
    let r = client().get(gw.url("/after")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let uris: Vec<String> = origin.seen().await.iter().map(|s| s.uri.clone()).collect();
    assert!(!uris.iter().any(|u| u == "/gone"), "{uris:?}");
}

#[tokio::test]
async fn cache_hits_pass_while_the_upstream_is_saturated() {
    let origin = Origin::start("a").await;
    let yaml = config(
        &origin,
        "max_inflight: 1, queue: { max_len: 10, timeout: 5s }",
        "",
        ", cache: { enabled: true }",
    );
    let gw = Gateway::start(&yaml).await;
    let cached = "/resp/hot?size=10&h=Cache-Control:max-age%3D60";
    client().get(gw.url(cached)).send().await.unwrap();
    let holder = hold(&gw);
    wait_limiter(&gw, "route:limited", 1, 0).await;
    // The only slot is held until released: these hits never waited for it.
    for _ in 0..5 {
        let r = client().get(gw.url(cached)).send().await.unwrap();
        assert_eq!(r.headers()["x-cache"], "HIT");
    }
    origin.release();
    assert_eq!(holder.await.unwrap(), 200);
}

#[tokio::test]
async fn stale_is_served_instead_of_shedding() {
    let origin = Origin::start("a").await;
    let yaml = config(
        &origin,
        "max_inflight: 1, queue: { max_len: 0, timeout: 1s }",
        "",
        ", cache: { enabled: true }",
    );
    let gw = Gateway::start(&yaml).await;
    let path = "/resp/soft?size=10&h=Cache-Control:max-age%3D1%2C%20stale-if-error%3D60";
    let strict = "/resp/strict?size=10&h=Cache-Control:max-age%3D1%2C%20must-revalidate";
    client().get(gw.url(path)).send().await.unwrap();
    client().get(gw.url(strict)).send().await.unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await; // both go stale (max-age=1)
    let holder = hold(&gw);
    wait_limiter(&gw, "route:limited", 1, 0).await;
    let r = client().get(gw.url(path)).send().await.unwrap();
    assert_eq!(r.status(), 200, "a stale copy instead of a 503");
    assert_eq!(r.headers()["x-cache"], "STALE");
    let r = client().get(gw.url(strict)).send().await.unwrap();
    assert_eq!(r.status(), 503, "must-revalidate: shed, not stale");
    origin.release();
    assert_eq!(holder.await.unwrap(), 200);
}

#[tokio::test]
async fn limits_endpoint_and_gauges_show_in_flight_and_queue() {
    let origin = Origin::start("a").await;
    let yaml = config(
        &origin,
        "max_inflight: 1, queue: { max_len: 10, timeout: 5s }",
        "max_inflight: 4",
        "",
    );
    let gw = Gateway::start(&yaml).await;
    let a = hold(&gw);
    wait_limiter(&gw, "route:limited", 1, 0).await;
    let b = tokio::spawn(client().get(gw.url("/slow/10")).send());
    wait_limiter(&gw, "route:limited", 1, 1).await;
    let v = gw.admin_json("/limits", TOKEN).await;
    let route = v["limiters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "route:limited")
        .unwrap()
        .clone();
    assert_eq!(
        (
            route["limit"].as_u64(),
            route["in_flight"].as_u64(),
            route["queued"].as_u64()
        ),
        (Some(1), Some(1), Some(1)),
        "{v}"
    );
    gw.wait_metrics(&[
        r#"gateway_queue_depth{limiter="route:limited"} 1"#,
        r#"gateway_concurrency_limit{limiter="upstream:app"} 4"#,
    ])
    .await;
    origin.release();
    assert_eq!(a.await.unwrap(), 200);
    b.await.unwrap().unwrap();
}

#[tokio::test]
async fn rate_limits_answer_429_with_draft_headers_per_client() {
    let origin = Origin::start("a").await;
    let yaml = config(
        &origin,
        "rate: { per_client: 2/s, burst: 3, key_header: X-Api-Key }",
        "",
        "",
    )
    .replace(
        "upstreams:",
        r#"trusted_proxies: ["127.0.0.1/32"]
upstreams:"#,
    );
    let gw = Gateway::start(&yaml).await;
    let send = |who: &'static str| {
        let req = client().get(gw.url("/r")).header("x-forwarded-for", who);
        async move { req.send().await.unwrap() }
    };
    for _ in 0..3 {
        assert_eq!(send("198.51.100.1").await.status(), 200, "the burst passes");
    }
    let r = send("198.51.100.1").await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(r.headers()["ratelimit-policy"], r#""limited";q=2;w=1"#);
    assert_eq!(r.headers()["ratelimit"], r#""limited";r=0;t=1"#);
    assert_eq!(json_error(r).await.0, "rate limit exceeded, retry later");
    // Another client (address derived through trusted_proxies) is not affected.
    assert_eq!(send("198.51.100.2").await.status(), 200);
    // A keyed client is limited by its key, not its address.
    for i in 0..3 {
        let r = client()
            .get(gw.url("/k"))
            .header("x-forwarded-for", "198.51.100.1")
            .header("x-api-key", "k1")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "request {i} with a key");
    }
    // After the interval, the client may send again.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(send("198.51.100.1").await.status(), 200);
    gw.wait_metrics(&[r#"gateway_rate_limited_total{route="limited"} 1"#])
        .await;
}

#[tokio::test]
async fn the_adaptive_limit_falls_when_the_origin_slows_and_rises_when_it_recovers() {
    let origin = Origin::start("a").await;
    let yaml = format!(
        r#"
listen: "{{listen}}"
admin: {{ listen: "{{admin}}", token: limits-token-0123456789 }}
upstreams:
  app: {{ servers: ["{}"], read_timeout: 10s, limits: {{ adaptive: {{ min: 2, max: 16, tolerance: 2.0 }} }} }}
routes:
  - {{ name: limited, match: {{ path_prefix: / }}, upstream: app, limits: {{ max_inflight: 100, queue: {{ max_len: 100, timeout: 30s }} }} }}
"#,
        origin.addr
    );
    let gw = std::sync::Arc::new(Gateway::start(&yaml).await);
    let delay = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(5));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..12 {
        let (gw, delay, stop) = (gw.clone(), delay.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let c = client();
            while !stop.load(Ordering::SeqCst) {
                let ms = delay.load(Ordering::SeqCst);
                let _ = c.get(gw.url(&format!("/slow/{ms}"))).send().await;
            }
        }));
    }
    let limit = |gw: std::sync::Arc<Gateway>| async move {
        let v = gw.admin_json("/limits", TOKEN).await;
        v["limiters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["name"] == "upstream:app")
            .and_then(|l| l["limit"].as_u64())
            .unwrap()
    };
    let wait_for = |gw: std::sync::Arc<Gateway>, pred: fn(u64) -> bool, what: &'static str| async move {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let l = limit(gw.clone()).await;
            if pred(l) {
                return l;
            }
            assert!(Instant::now() < deadline, "{what}: limit stayed at {l}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::sleep(Duration::from_millis(1500)).await; // baseline at 5 ms
    delay.store(150, Ordering::SeqCst); // the origin slows down 30x
    let low = wait_for(gw.clone(), |l| l <= 3, "falls").await;
    delay.store(5, Ordering::SeqCst); // and recovers
    let high = wait_for(gw.clone(), |l| l >= 8, "rises").await;
    assert!(high > low);
    stop.store(true, Ordering::SeqCst);
    for t in load {
        let _ = t.await;
    }
    gw.wait_metrics(&[r#"gateway_concurrency_limit{limiter="upstream:app"}"#])
        .await;
}

/// The limit `/limits` reports for limiter `name`, if listed.
async fn limiter(gw: &Gateway, name: &str) -> Option<u64> {
    let v = gw.admin_json("/limits", TOKEN).await;
    v["limiters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == name)
        .and_then(|l| l["limit"].as_u64())
}

#[tokio::test]
async fn a_reload_keeps_the_learned_adaptive_limit_and_drops_removed_routes() {
    let origin = Origin::start("a").await;
    let yaml = |read_timeout: &str, extra: &str| {
        format!(
            r#"
listen: "{{listen}}"
admin: {{ listen: "{{admin}}", token: limits-token-0123456789 }}
upstreams:
  app: {{ servers: ["{}"], read_timeout: {read_timeout}, limits: {{ adaptive: {{ min: 2, max: 16, tolerance: 2.0 }} }} }}
routes:
{extra}
  - {{ name: limited, match: {{ path_prefix: / }}, upstream: app, limits: {{ max_inflight: 100 }} }}
"#,
            origin.addr
        )
    };
    let extra = "  - { name: extra, match: { path_prefix: /extra }, upstream: app, limits: { max_inflight: 5 } }";
    let gw = Gateway::start(&yaml("10s", extra)).await;
    let c = client();
    // A fast baseline, then a slow origin: the adaptive limit falls (one
    // request at a time, so every response closes a 100 ms window).
    for _ in 0..60 {
        c.get(gw.url("/slow/2")).send().await.unwrap();
    }
    let mut learned = 16;
    for _ in 0..40 {
        c.get(gw.url("/slow/150")).send().await.unwrap();
        learned = limiter(&gw, "upstream:app").await.unwrap();
        if learned <= 4 {
            break;
        }
    }
    assert!(learned <= 4, "the limit fell: {learned}");
    assert_eq!(
        c.get(gw.url("/extra/x")).send().await.unwrap().status(),
        200
    );
    assert_eq!(limiter(&gw, "route:extra").await, Some(5));
    gw.wait_metrics(&[
        r#"gateway_requests_total{cache="none",method="GET",route="extra",status="2xx"} 1"#,
        r#"gateway_concurrency_limit{limiter="route:extra"} 5"#,
    ])
    .await;

    // No traffic from here on, so nothing but the reload can move the limit.
    // A changed read_timeout rebuilds the pool; the route `extra` is removed.
    gw.write_conf(&yaml("11s", ""));
    gw.signal("HUP");
    let m = gw
        .wait_metrics(&[r#"gateway_config_reloads_total{result="success"} 1"#])
        .await;
    assert_eq!(
        limiter(&gw, "upstream:app").await,
        Some(learned),
        "the reload kept the learned limit"
    );
    assert_eq!(
        limiter(&gw, "route:extra").await,
        None,
        "removed from /limits"
    );
    assert_eq!(limiter(&gw, "route:limited").await, Some(100));
    for gone in [r#"route="extra""#, r#"limiter="route:extra""#] {
        assert!(!m.contains(gone), "{gone} still in /metrics:\n{m}");
    }
    assert!(m.contains(r#"gateway_concurrency_limit{limiter="upstream:app"} "#));
}
