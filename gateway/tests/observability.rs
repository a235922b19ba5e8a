//! Access log and metrics.

mod common;

use std::time::{Duration, Instant};

use common::*;

#[tokio::test]
async fn access_log_lines_are_json_with_the_fields_and_no_secrets_and_reopen_on_usr1() {
    let origin = Origin::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let yaml = format!(
        r#"
listen: "{{listen}}"
admin: {{ listen: "{{admin}}" }}
access_log: {{ enabled: true, path: "{}" }}
upstreams: {{ app: {{ servers: ["{}"] }} }}
routes: [{{ name: all, match: {{ path_prefix: / }}, upstream: app, cache: {{ enabled: true }} }}]
"#,
        log.display(),
        origin.addr
    );
    let gw = Gateway::start(&yaml).await;
    let r = client()
        .get(gw.url("/resp/logged?size=7&token=secret-query"))
        .header("authorization", "Bearer secret-token")
        .header("cookie", "session=secret-cookie")
        .header("x-request-id", "log-rid-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let read_lines = |path: std::path::PathBuf| async move {
        let deadline = Instant::now() + WAIT;
        loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if !text.is_empty() {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "nothing logged to {}",
                path.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let text = read_lines(log.clone()).await;
    for secret in ["secret-token", "secret-cookie", "secret-query"] {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
    let line: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(line["request_id"], "log-rid-1");
    assert_eq!(line["client"], "127.0.0.1");
    assert_eq!(
        (line["method"].as_str(), line["path"].as_str()),
        (Some("GET"), Some("/resp/logged"))
    );
    assert_eq!(line["status"], 200);
    assert_eq!(line["bytes"], 7);
    assert_eq!(line["route"], "all");
    assert_eq!(line["upstream"], origin.addr.to_string());
    assert_eq!(line["cache"], "uncacheable");
    for f in ["time", "duration_ms", "upstream_ms"] {
        assert!(!line[f].is_null(), "{f}: {line}");
    }

    // logrotate: move the file away, SIGUSR1, new lines go to a new file.
    let rotated = dir.path().join("access.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    gw.signal("USR1");
    tokio::time::sleep(Duration::from_millis(500)).await;
    client().get(gw.url("/after-rotate")).send().await.unwrap();
    let text = read_lines(log.clone()).await;
    assert!(text.contains("/after-rotate"), "{text}");
}

#[tokio::test]
async fn request_and_upstream_histograms_and_process_metrics() {
    let origin = Origin::start("a").await;
    let yaml = format!(
        r#"
listen: "{{listen}}"
admin: {{ listen: "{{admin}}" }}
upstreams: {{ app: {{ servers: ["{}"] }} }}
routes: [{{ name: all, match: {{ path_prefix: / }}, upstream: app }}]
"#,
        origin.addr
    );
    let gw = Gateway::start(&yaml).await;
    client().get(gw.url("/x")).send().await.unwrap();
    gw.wait_metrics(&[
        r#"gateway_request_duration_seconds_count{cache="none",route="all",status="2xx"} 1"#,
        r#"gateway_upstream_duration_seconds_count{upstream="app"} 1"#,
        r#"gateway_request_duration_seconds_bucket{cache="none",route="all",status="2xx",le="0.0001"}"#,
        "process_resident_memory_bytes",
        "process_open_fds",
        "gateway_build_info",
    ])
    .await;
}

#[tokio::test]
async fn metrics_are_gzipped_only_when_asked_and_count_upstream_errors_by_kind() {
    let origin = Origin::start("a").await;
    let yaml = format!(
        r#"
listen: "{{listen}}"
admin: {{ listen: "{{admin}}" }}
upstreams:
  app: {{ servers: ["{}"], read_timeout: 200ms, health_check: {{ path: /health, interval: 100ms, timeout: 100ms }}, breaker: {{ consecutive_failures: 50, open_for: 1s }} }}
routes: [{{ name: all, match: {{ path_prefix: / }}, upstream: app }}]
"#,
        origin.addr
    );
    let gw = Gateway::start(&yaml).await;
    client()
        .get(gw.url("/resp/e?status=503"))
        .send()
        .await
        .unwrap();
    client().get(gw.url("/slow/1000")).send().await.unwrap();
    let m = gw
        .wait_metrics(&[
            r#"gateway_upstream_errors_total{kind="5xx",upstream="app"} 1"#,
            r#"gateway_upstream_errors_total{kind="timeout",upstream="app"} 1"#,
            &format!(
                r#"gateway_upstream_server_up{{server="{}",upstream="app"}} 1"#,
                origin.addr
            ),
            &format!(
                r#"gateway_upstream_breaker_state{{server="{}",state="closed",upstream="app"}} 1"#,
                origin.addr
            ),
        ])
        .await;
    assert!(m.contains(
        "gateway_requests_total{cache=\"none\",method=\"GET\",route=\"all\",status=\"5xx\"}"
    ));

    let plain = reqwest::Client::builder().no_gzip().build().unwrap();
    let r = plain.get(gw.admin_url("/metrics")).send().await.unwrap();
    assert!(r.headers().get("content-encoding").is_none());
    let r = plain
        .get(gw.admin_url("/metrics"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-encoding"], "gzip");
    let body = r.bytes().await.unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&body[..]), &mut text).unwrap();
    assert!(text.contains("gateway_build_info"));
}

#[tokio::test]
async fn stats_summary_and_bounded_labels_under_random_paths() {
    let origin = Origin::start("a").await;
    let yaml = format!(
        r#"
listen: "{{listen}}"
admin: {{ listen: "{{admin}}", token: stats-token-0123456789 }}
upstreams: {{ app: {{ servers: ["{}"] }} }}
routes: [{{ name: all, match: {{ path_prefix: / }}, upstream: app }}]
"#,
        origin.addr
    );
    let gw = Gateway::start(&yaml).await;
    for i in 0..40 {
        client()
            .get(gw.url(&format!("/random/{i}/{}", i * 7919)))
            .send()
            .await
            .unwrap();
    }
    let m = gw
        .wait_metrics(&[
            r#"gateway_requests_total{cache="none",method="GET",route="all",status="2xx"} 40"#,
        ])
        .await;
    let series = m
        .lines()
        .filter(|l| l.starts_with("gateway_requests_total{"))
        .count();
    assert_eq!(series, 1, "one series, whatever the paths");
    assert!(!m.contains("/random/"), "raw paths never become labels");
    let v = gw.admin_json("/stats", "stats-token-0123456789").await;
    assert_eq!(v["requests"], 40.0);
    assert!(v["latency_ms"]["p50"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["latency_ms"]["p99"].as_f64().unwrap() >= v["latency_ms"]["p50"].as_f64().unwrap());
    assert_eq!(v["upstreams"][0]["servers"][0]["healthy"], true);
}

#[tokio::test]
async fn every_answered_request_is_in_the_log_after_sigterm() {
    let origin = Origin::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let yaml = format!(
        r#"
listen: "{{listen}}"
admin: {{ listen: "{{admin}}" }}
shutdown: {{ drain_delay: 100ms, grace_period: 5s }}
access_log: {{ enabled: true, path: "{}" }}
upstreams: {{ app: {{ servers: ["{}"] }} }}
routes: [{{ name: all, match: {{ path_prefix: / }}, upstream: app }}]
"#,
        log.display(),
        origin.addr
    );
    let mut gw = Gateway::start(&yaml).await;
    let c = client();
    let n = 300;
    for i in 0..n {
        let r = c.get(gw.url(&format!("/r/{i}"))).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    // Straight to SIGTERM: the last lines are still in the writer's queue.
    gw.signal("TERM");
    assert!(gw.wait_exit(WAIT).await.success());
    let text = std::fs::read_to_string(&log).unwrap();
    let logged = text.lines().filter(|l| l.contains("\"/r/")).count();
    assert_eq!(logged, n, "every answered request is logged");
    for l in text.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        let ms = v["duration_ms"].as_f64().unwrap();
        assert_eq!(
            (ms * 1000.0).round() / 1000.0,
            ms,
            "microsecond precision: {l}"
        );
        let raw = l.split("\"duration_ms\":").nth(1).unwrap();
        let number: String = raw
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        let decimals = number.split('.').nth(1).map_or(0, str::len);
        assert!(decimals <= 3, "no float noise: {l}");
    }
}

#[tokio::test]
async fn an_idle_gateway_exposes_only_series_that_can_occur() {
    let origin = Origin::start("a").await;
    // The upstream-app example: six routes, caches, limits, a breaker, checks.
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../conf/examples/upstream-app-gateway.yaml"
    ))
    .unwrap();
    let yaml = example
        .replace("\"0.0.0.0:8080\"", "\"{listen}\"")
        .replace("\"127.0.0.1:9180\"", "\"{admin}\"")
        .replace("\"127.0.0.1:5000\"", &format!("\"{}\"", origin.addr));
    let gw = Gateway::start(&yaml).await;
    let m = gw.wait_metrics(&["gateway_build_info"]).await;
    assert!(m.len() < 50_000, "idle /metrics is {} bytes:\n{m}", m.len());
    for impossible in [
        r#"cache="hit",route="internal""#,
        "gateway_request_duration_seconds_bucket{",
    ] {
        assert!(
            !m.contains(impossible),
            "{impossible} before any request:\n{m}"
        );
    }
}

#[tokio::test]
async fn a_client_that_leaves_during_a_cache_hit_is_counted_not_logged_as_an_error() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let origin = Origin::start("a").await;
    let yaml = format!(
        r#"
listen: "{{listen}}"
admin: {{ listen: "{{admin}}" }}
cache: {{ max_size: 256MiB, max_object_size: 64MiB }}
upstreams: {{ app: {{ servers: ["{}"] }} }}
routes: [{{ name: all, match: {{ path_prefix: / }}, upstream: app, cache: {{ enabled: true }} }}]
"#,
        origin.addr
    );
    let gw = Gateway::start(&yaml).await;
    // 32 MiB: far more than the socket buffers take, so the gateway is still
    // writing when the client goes.
    let path = "/resp/big?size=33554432&h=Cache-Control:max-age%3D60";
    let r = client().get(gw.url(path)).send().await.unwrap();
    assert_eq!(r.bytes().await.unwrap().len(), 33_554_432);
    for _ in 0..3 {
        let mut s = tokio::net::TcpStream::connect(gw.listen).await.unwrap();
        let host = gw.listen;
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed early");
            head.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&head);
        assert!(text.to_ascii_lowercase().contains("x-cache: hit"), "{text}");
        drop(s); // gone mid-body
    }
    gw.wait_metrics(&[r#"gateway_client_gone_total{phase="cache_hit"} 3"#])
        .await;
    let log = gw.stderr();
    assert!(
        !log.contains("Fail to serve cache"),
        "logged as an error:\n{log}"
    );
}
