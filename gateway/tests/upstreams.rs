//! Upstream health checks, failover and bounded connect retries.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;

const TOKEN: &str = "test-admin-token-0123456789";

fn two_servers(a: &str, b: &str, extra: &str) -> String {
    format!(
        r#"
listen: "{{listen}}"
admin: {{ listen: "{{admin}}", token: {TOKEN} }}
upstreams:
  app:
    servers: ["{a}", "{b}"]
    {extra}
routes:
  - {{ name: default, match: {{ path_prefix: / }}, upstream: app }}
"#
    )
}

const FAST_CHECKS: &str = "health_check: { path: /health, interval: 50ms, timeout: 50ms, healthy_threshold: 2, unhealthy_threshold: 2 }";

async fn origins_of(gw: &Gateway, n: usize) -> Vec<String> {
    let c = client();
    let mut out = Vec::new();
    for i in 0..n {
        let r = c.get(gw.url(&format!("/r{i}"))).send().await.unwrap();
        assert_eq!(r.status(), 200);
        out.push(r.headers()["x-origin"].to_str().unwrap().to_owned());
    }
    out
}

#[tokio::test]
async fn health_checks_remove_and_restore_a_server() {
    let a = Origin::start("a").await;
    let b = Origin::start("b").await;
    let gw = Gateway::start(&two_servers(
        &a.addr.to_string(),
        &b.addr.to_string(),
        FAST_CHECKS,
    ))
    .await;

    let v = gw.admin_json("/upstreams", TOKEN).await;
    assert_eq!(v["upstreams"][0]["name"], "app");
    assert_eq!(v["upstreams"][0]["health_check"]["path"], "/health");

    b.healthy.store(false, Ordering::SeqCst);
    gw.wait_health(TOKEN, b.addr, false).await;
    let got = origins_of(&gw, 6).await;
    assert!(
        got.iter().all(|o| o == "a"),
        "unhealthy b gets nothing: {got:?}"
    );

    b.healthy.store(true, Ordering::SeqCst);
    gw.wait_health(TOKEN, b.addr, true).await;
    let got = origins_of(&gw, 6).await;
    assert_eq!(
        got.iter().filter(|o| *o == "b").count(),
        3,
        "b is back: {got:?}"
    );

    gw.wait_metrics(&[
        r#"gateway_upstream_health_changes_total{state="unhealthy",upstream="app"} 1"#,
        r#"gateway_upstream_health_changes_total{state="healthy",upstream="app"} 1"#,
    ])
    .await;
}

#[tokio::test]
async fn a_dead_server_fails_over_without_failed_requests() {
    let a = Origin::start("a").await;
    let b = Origin::start("b").await;
    let b_addr = b.addr;
    let gw = Gateway::start(&two_servers(
        &a.addr.to_string(),
        &b_addr.to_string(),
        FAST_CHECKS,
    ))
    .await;
    assert!(origins_of(&gw, 4).await.contains(&"b".to_string()));

    drop(b); // the server dies: connections are refused from now on
    let got = origins_of(&gw, 10).await;
    assert!(got.iter().all(|o| o == "a"), "{got:?}");
    gw.wait_health(TOKEN, b_addr, false).await;
}

#[tokio::test]
async fn when_every_server_is_unhealthy_requests_still_try_them() {
    let a = Origin::start("a").await;
    let b = Origin::start("b").await;
    let gw = Gateway::start(&two_servers(
        &a.addr.to_string(),
        &b.addr.to_string(),
        FAST_CHECKS,
    ))
    .await;
    a.healthy.store(false, Ordering::SeqCst);
    b.healthy.store(false, Ordering::SeqCst);
    gw.wait_health(TOKEN, a.addr, false).await;
    gw.wait_health(TOKEN, b.addr, false).await;
    // A broken health endpoint must not turn into a total outage.
    assert_eq!(origins_of(&gw, 2).await.len(), 2);
}

#[tokio::test]
async fn connect_retries_are_bounded() {
    let dead: Vec<String> = (0..4)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let yaml = format!(
        r#"
listen: "{{listen}}"
admin: {{ listen: "{{admin}}" }}
upstreams:
  app: {{ servers: {dead:?}, retries: 1 }}
routes:
  - {{ name: default, match: {{ path_prefix: / }}, upstream: app }}
"#
    );
    let gw = Gateway::start(&yaml).await;
    let r = client()
        .post(gw.url("/x"))
        .body("payload")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(json_error(r).await.0, "upstream unavailable");
    // One attempt plus one retry: exactly two connects failed.
    gw.wait_metrics(&[r#"gateway_upstream_errors_total{kind="connect",upstream="app"} 2"#])
        .await;
}

#[tokio::test]
async fn upstreams_endpoint_needs_the_token() {
    let a = Origin::start("a").await;
    let gw = Gateway::start(&two_servers(&a.addr.to_string(), &a.addr.to_string(), "")).await;
    let c = client();
    let r = c.get(gw.admin_url("/upstreams")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    json_error(r).await;
    let r = c
        .get(gw.admin_url("/upstreams"))
        .bearer_auth("wrong-token-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // Without a configured token: 403 saying how to set one.
    let yaml = two_servers(&a.addr.to_string(), &a.addr.to_string(), "")
        .replace(&format!(", token: {TOKEN}"), "");
    let gw = Gateway::start(&yaml).await;
    let r = c
        .get(gw.admin_url("/upstreams"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(json_error(r).await.0.contains("admin.token"));
}

fn breaker_config(servers: &[String], extra: &str) -> String {
    format!(
        r#"
listen: "{{listen}}"
admin: {{ listen: "{{admin}}", token: {TOKEN} }}
upstreams:
  app:
    servers: {servers:?}
    breaker: {{ consecutive_failures: 3, open_for: 1s {extra} }}
routes:
  - {{ name: default, match: {{ path_prefix: / }}, upstream: app }}
"#
    )
}

/// The breaker state `/upstreams` reports for the first server.
async fn breaker_state(gw: &Gateway) -> String {
    let v = gw.admin_json("/upstreams", TOKEN).await;
    v["upstreams"][0]["servers"][0]["breaker"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Polls `/upstreams` until the first server's breaker is in `state`.
async fn wait_breaker(gw: &Gateway, state: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = breaker_state(gw).await;
        if now == state {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "breaker stayed {now}, never {state}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn status_of(gw: &Gateway, path: &str) -> u16 {
    client()
        .get(gw.url(path))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn with_min_available_0_an_open_lone_server_is_spared() {
    let origin = Origin::start("a").await;
    let gw = Gateway::start(&breaker_config(
        &[origin.addr.to_string()],
        ", min_available: 0",
    ))
    .await;
    let flaky = "/resp/b?failable";
    origin.healthy.store(false, Ordering::SeqCst); // the origin answers 500
    for _ in 0..3 {
        assert_eq!(status_of(&gw, flaky).await, 500);
    }
    // Open: answered at once, the origin is spared.
    let r = client().get(gw.url(flaky)).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(
        json_error(r).await.0,
        "upstream unavailable (circuit open), retry later"
    );
    assert_eq!(origin.hits(), 3);
    assert_eq!(breaker_state(&gw).await, "open");
    let v = gw.admin_json("/limits", TOKEN).await;
    assert_eq!(v["breakers"]["app"][origin.addr.to_string()], "open", "{v}");

    // Half-open after the open period: one probe; it fails, so the breaker opens again.
    wait_breaker(&gw, "half_open").await;
    assert_eq!(status_of(&gw, flaky).await, 500);
    assert_eq!(status_of(&gw, flaky).await, 503);
    assert_eq!(origin.hits(), 4);

    // The next probe succeeds: closed, traffic flows.
    origin.healthy.store(true, Ordering::SeqCst);
    wait_breaker(&gw, "half_open").await;
    for _ in 0..3 {
        assert_eq!(status_of(&gw, flaky).await, 200);
    }
    assert_eq!(breaker_state(&gw).await, "closed");
    assert_eq!(origin.hits(), 7);
}

#[tokio::test]
async fn a_lone_server_stays_in_rotation_and_recovers_at_once() {
    let origin = Origin::start("a").await;
    // Defaults: min_available 1, count_overload false; open_for far away.
    let gw = Gateway::start(&breaker_config(
        &[origin.addr.to_string()],
        ", open_for: 60s",
    ))
    .await;
    // One path fails (503 without Retry-After: a broken dependency), another works.
    let failing = "/resp/db?status=503";
    for _ in 0..5 {
        assert_eq!(status_of(&gw, failing).await, 503);
    }
    assert_eq!(
        breaker_state(&gw).await,
        "overridden",
        "open but kept in rotation"
    );
    gw.wait_metrics(&[&format!(
        r#"gateway_upstream_breaker_state{{server="{}",state="overridden",upstream="app"}} 1"#,
        origin.addr
    )])
    .await;
    assert_eq!(
        status_of(&gw, failing).await,
        503,
        "still the origin's own answer"
    );
    assert_eq!(origin.hits(), 6, "every request reached the lone server");
    // The other path keeps working, and its success closes the breaker.
    assert_eq!(status_of(&gw, "/ok").await, 200);
    assert_eq!(breaker_state(&gw).await, "closed");

    // A real outage: everything fails, the breaker opens (kept in rotation).
    origin.healthy.store(false, Ordering::SeqCst);
    for _ in 0..5 {
        assert_eq!(status_of(&gw, "/resp/x?failable").await, 500);
    }
    assert_eq!(breaker_state(&gw).await, "overridden");
    // The outage ends: the very next request reaches the server, long before open_for.
    origin.healthy.store(true, Ordering::SeqCst);
    let before = origin.hits();
    assert_eq!(status_of(&gw, "/resp/x?failable").await, 200);
    assert_eq!(origin.hits(), before + 1);
    assert_eq!(breaker_state(&gw).await, "closed");
}

#[tokio::test]
async fn overload_answers_open_the_breaker_only_with_count_overload() {
    let shedding = "/resp/busy?status=503&h=Retry-After:1";
    let too_many = "/resp/busy?status=429&h=Retry-After:1";
    let origin = Origin::start("a").await;
    let gw = Gateway::start(&breaker_config(
        &[origin.addr.to_string()],
        ", min_available: 0",
    ))
    .await;
    for path in [shedding, too_many, shedding, too_many, shedding] {
        assert!(status_of(&gw, path).await >= 429);
    }
    assert_eq!(
        breaker_state(&gw).await,
        "closed",
        "the server is shedding, not broken"
    );
    assert_eq!(origin.hits(), 5);

    let origin = Origin::start("b").await;
    let gw = Gateway::start(&breaker_config(
        &[origin.addr.to_string()],
        ", min_available: 0, count_overload: true",
    ))
    .await;
    for path in [shedding, too_many, shedding] {
        assert!(status_of(&gw, path).await >= 429);
    }
    assert_eq!(breaker_state(&gw).await, "open");
    let r = client().get(gw.url("/ok")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(
        json_error(r).await.0,
        "upstream unavailable (circuit open), retry later"
    );
    assert_eq!(origin.hits(), 3);
}

#[tokio::test]
async fn an_open_server_is_skipped_while_others_serve() {
    let bad = Origin::start("bad").await;
    let good = Origin::start("good").await;
    let gw = Gateway::start(&breaker_config(
        &[bad.addr.to_string(), good.addr.to_string()],
        "",
    ))
    .await;
    bad.healthy.store(false, Ordering::SeqCst);
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(
            client()
                .get(gw.url("/resp/s?failable"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 500).count(),
        3,
        "{statuses:?}"
    );
    assert!(
        statuses[8..].iter().all(|s| *s == 200),
        "after opening, only the good server: {statuses:?}"
    );
    assert_eq!(bad.hits(), 3);
}
