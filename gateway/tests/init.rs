//! `gateway init`: its output is the shipped config, passes `-t`, and in front
//! of an app that knows nothing about the gateway caches what the app marks
//! cacheable on any host, keeps one user's responses from another, queues a
//! burst instead of shedding it, and answers the load balancer's readiness path.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;

const TOKEN: &str = "init-test-token-0123456789";

/// `gateway init` output for `origin`, with `{listen}` / `{admin}` placeholders.
fn init_config(upstream: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "init",
        "--upstream",
        upstream,
        "--listen",
        "127.0.0.1:1",
        "--admin",
        "127.0.0.1:2",
    ];
    args.extend_from_slice(extra);
    let (code, out, err) = run_gateway(&args, &[]);
    assert_eq!(code, 0, "{err}");
    out.replace("\"127.0.0.1:1\"", "\"{listen}\"")
        .replace("\"127.0.0.1:2\"", "\"{admin}\"")
}

async fn start(origin: &Origin) -> Gateway {
    let yaml = init_config(&origin.addr.to_string(), &[]);
    Gateway::start_with_env(&yaml, &[("GATEWAY_ADMIN__TOKEN", TOKEN)]).await
}

#[test]
fn the_shipped_config_is_init_output_for_port_5000() {
    let (code, out, err) = run_gateway(&["init", "--upstream", "127.0.0.1:5000"], &[]);
    assert_eq!(code, 0, "{err}");
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../conf/gateway.yaml"))
            .unwrap();
    assert!(
        shipped == out,
        "conf/gateway.yaml differs from `gateway init --upstream 127.0.0.1:5000`: regenerate it"
    );
}

#[test]
fn init_output_passes_the_check_and_bad_flags_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for extra in [&[][..], &["--health-path", "/healthz"][..]] {
        let text = init_config("localhost:8000", extra).replace("{listen}", "127.0.0.1:8080");
        let text = text.replace("{admin}", "127.0.0.1:9180");
        let path = dir.path().join("gw.yaml");
        std::fs::write(&path, &text).unwrap();
        let (code, _, err) = run_gateway(
            &["-t", "-c", path.to_str().unwrap()],
            &[
                ("GATEWAY_PID_FILE", dir.path().join("pid").to_str().unwrap()),
                (
                    "GATEWAY_UPGRADE_SOCK",
                    dir.path().join("sock").to_str().unwrap(),
                ),
            ],
        );
        assert_eq!(code, 0, "{err}\n{text}");
    }
    let (code, _, err) = run_gateway(&["init", "--upstream", "nowhere"], &[]);
    assert_eq!(code, 2);
    assert!(
        err.contains("--upstream \"nowhere\" is not host:port"),
        "{err}"
    );
}

#[tokio::test]
async fn caches_what_the_app_marks_cacheable_on_any_host() {
    let origin = Origin::start("app").await;
    let gw = start(&origin).await;
    let c = client();
    let get =
        |host: &'static str, path: &'static str| c.get(gw.url(path)).header("host", host).send();
    let page = "/resp/page?h=Cache-Control:max-age%3D60";
    let r = get("shop.example.net", page).await.unwrap();
    assert_eq!(r.headers()["x-cache"], "MISS");
    let r = get("shop.example.net", page).await.unwrap();
    assert_eq!(r.headers()["x-cache"], "HIT");
    assert_eq!(origin.hits(), 1);
    // Without freshness from the app, nothing is stored (no guessing on pages).
    for _ in 0..2 {
        get("shop.example.net", "/resp/plain").await.unwrap();
    }
    assert_eq!(origin.hits(), 3);
    // A static file without freshness of its own gets the heuristic TTL.
    for _ in 0..2 {
        let r = get("shop.example.net", "/resp/site.css").await.unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(origin.hits(), 4, "the stylesheet was stored");
}

#[tokio::test]
async fn a_request_with_a_cookie_is_shared_only_when_the_response_is_public() {
    let origin = Origin::start("app").await;
    let gw = start(&origin).await;
    let c = client();
    let with_cookie =
        |path: &'static str| c.get(gw.url(path)).header("cookie", "session=alice").send();
    // max-age alone: alice's page is never stored...
    let mine = "/resp/me?h=Cache-Control:max-age%3D60";
    for _ in 0..2 {
        let r = with_cookie(mine).await.unwrap();
        assert_ne!(r.headers()["x-cache"], "HIT");
    }
    assert_eq!(origin.hits(), 2);
    // ...nor answered from a copy stored for someone without cookies.
    client().get(gw.url(mine)).send().await.unwrap();
    assert_eq!(origin.hits(), 3);
    let r = with_cookie(mine).await.unwrap();
    assert_ne!(r.headers()["x-cache"], "HIT");
    assert_eq!(origin.hits(), 4);
    // `public` says it may be shared.
    let public = "/resp/news?h=Cache-Control:public,max-age%3D60";
    with_cookie(public).await.unwrap();
    let r = with_cookie(public).await.unwrap();
    assert_eq!(r.headers()["x-cache"], "HIT");
    let r = client().get(gw.url(public)).send().await.unwrap();
    assert_eq!(r.headers()["x-cache"], "HIT");
    assert_eq!(origin.hits(), 5);
}

#[tokio::test]
async fn a_burst_beyond_the_limit_waits_in_line_instead_of_being_shed() {
    let origin = Origin::start("app").await;
    let gw = std::sync::Arc::new(start(&origin).await);
    let burst: Vec<_> = (0..40)
        .map(|i| {
            let url = gw.url(&format!("/slow/200?n={i}"));
            tokio::spawn(async move { client().get(url).send().await.unwrap().status() })
        })
        .collect();
    for t in burst {
        assert_eq!(t.await.unwrap(), 200, "queued, not shed");
    }
    assert_eq!(origin.hits(), 40);
    let peak = origin.peak.load(Ordering::SeqCst);
    assert!(
        peak <= 8,
        "the app never saw more than max_inflight: {peak}"
    );
    gw.wait_metrics(&[r#"gateway_queue_wait_seconds_count{route="app"} "#])
        .await;
}

#[tokio::test]
async fn the_main_listener_answers_readiness_and_tcp_checks_find_a_dead_server() {
    let origin = Origin::start("app").await;
    let dead = format!("127.0.0.1:{}", free_port());
    let yaml = init_config(&origin.addr.to_string(), &[]).replace(
        &format!("servers: [\"{}\"]", origin.addr),
        &format!("servers: [\"{}\", \"{dead}\"]", origin.addr),
    );
    let gw = Gateway::start_with_env(&yaml, &[("GATEWAY_ADMIN__TOKEN", TOKEN)]).await;
    let r = client()
        .get(gw.url("/.gateway/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap().trim(), r#"{"status":"ready"}"#);
    assert_eq!(origin.hits(), 0, "answered by the gateway");
    gw.wait_health(TOKEN, dead.parse().unwrap(), false).await;
    let v = gw.admin_json("/upstreams", TOKEN).await;
    assert_eq!(
        v["upstreams"][0]["health_check"]["path"],
        serde_json::Value::Null
    );
    let m = gw.wait_metrics(&["gateway_build_info"]).await;
    assert!(
        !m.contains("gateway_requests_total{"),
        "the probe is no route's request:\n{m}"
    );
    // Stopping: 503 at once on the main listener too.
    gw.signal("TERM");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let r = client()
            .get(gw.url("/.gateway/ready"))
            .send()
            .await
            .unwrap();
        if r.status() == 503 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never 503 while draining"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
