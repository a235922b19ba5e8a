//! Reload, drain and binary upgrade under steady keep-alive load: nothing fails,
//! and every request that reached the upstream was answered.

mod common;

use std::time::{Duration, Instant};

use common::*;

const TOKEN: &str = "lifecycle-token-0123456789";

fn config(a: &Origin, b: &Origin, extra_routes: &str, shutdown: &str) -> String {
    format!(
        r#"
listen: "{{listen}}"
threads: 2
admin: {{ listen: "{{admin}}", token: {TOKEN} }}
shutdown: {shutdown}
upstreams:
  a: {{ servers: ["{}"] }}
  b: {{ servers: ["{}"] }}
routes:
{extra_routes}
  - {{ name: main, match: {{ path_prefix: / }}, upstream: a }}
"#,
        a.addr, b.addr
    )
}

const SHUTDOWN: &str = "{ drain_delay: 1s, grace_period: 6s }";

/// Polls `path` until it is answered by `origin` (a route that appeared on reload).
async fn wait_route(gw: &Gateway, path: &str, origin: &str) {
    let deadline = Instant::now() + WAIT;
    let c = client();
    loop {
        let r = c.get(gw.url(path)).send().await.unwrap();
        if r.status() == 200 && r.headers()["x-origin"] == origin {
            return;
        }
        assert!(Instant::now() < deadline, "{path} never reached {origin}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Requests of the load generator that reached `origin`.
async fn load_hits(origin: &Origin) -> usize {
    origin
        .seen()
        .await
        .iter()
        .filter(|s| s.uri.starts_with("/load/") || s.uri.starts_with("/slow/200"))
        .count()
}

fn assert_clean(stats: &LoadStats, upstream_hits: usize) {
    assert!(
        stats.failed.is_empty(),
        "failed requests: {:?}",
        stats.failed
    );
    assert!(stats.ok > 100, "the load ran: {stats:?}");
    assert_eq!(
        upstream_hits, stats.ok,
        "every request that reached the upstream was answered ({stats:?})"
    );
}

#[tokio::test]
async fn reloads_apply_atomically_under_load_and_a_broken_file_changes_nothing() {
    let a = Origin::start("a").await;
    let b = Origin::start("b").await;
    let gw = Gateway::start(&config(&a, &b, "", SHUTDOWN)).await;
    let load = Load::start(gw.url(""), 24, 10, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let one = r#"  - { name: first, match: { path_prefix: /first }, upstream: b }"#;
    gw.write_conf(&config(&a, &b, one, SHUTDOWN));
    gw.signal("HUP");
    wait_route(&gw, "/first/x", "b").await;

    let two =
        format!("{one}\n  - {{ name: second, match: {{ path_prefix: /second }}, upstream: b }}");
    gw.write_conf(&config(&a, &b, &two, SHUTDOWN));
    gw.signal("HUP");
    wait_route(&gw, "/second/x", "b").await;

    // A broken file: refused, counted, the running configuration keeps serving.
    gw.write_conf("routes: [\n  { name: broken");
    gw.signal("HUP");
    gw.wait_metrics(&[r#"gateway_config_reloads_total{result="failure"} 1"#])
        .await;
    let v = gw.admin_json("/config", TOKEN).await;
    assert_eq!(v["last_reload"]["ok"], false);
    assert!(
        v["last_reload"]["error"]
            .as_str()
            .unwrap()
            .contains("gateway.yaml"),
        "{v}"
    );
    let routes: Vec<_> = v["config"]["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].clone())
        .collect();
    assert_eq!(routes, ["first", "second", "main"]);
    wait_route(&gw, "/second/y", "b").await;

    // A restart-only key is reported, not applied.
    let moved = config(&a, &b, &two, SHUTDOWN).replace("threads: 2", "threads: 1");
    gw.write_conf(&moved);
    gw.signal("HUP");
    gw.wait_metrics(&[r#"gateway_config_reloads_total{result="success"} 3"#])
        .await;
    let v = gw.admin_json("/config", TOKEN).await;
    assert_eq!(
        v["last_reload"]["pending_restart"],
        serde_json::json!(["threads"])
    );

    tokio::time::sleep(Duration::from_millis(300)).await;
    let stats = load.stop().await;
    assert_clean(&stats, load_hits(&a).await);
}

#[tokio::test]
async fn sigterm_drains_then_finishes_in_flight_requests() {
    let a = Origin::start("a").await;
    let b = Origin::start("b").await;
    let mut gw = Gateway::start(&config(&a, &b, "", SHUTDOWN)).await;
    let load = Load::start(gw.url(""), 16, 10, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let slow = tokio::spawn(client().get(gw.url("/slow/1800")).send());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(gw.pid_file().exists());

    let sent = Instant::now();
    gw.signal("TERM");
    // /ready turns 503 (the load keeps being served: checked by assert_clean).
    let c = client();
    loop {
        let r = c.get(gw.admin_url("/ready")).send().await.unwrap();
        if r.status() == 503 {
            break;
        }
        assert!(sent.elapsed() < WAIT, "/ready never turned 503");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(400)).await; // load continues inside the drain delay
    let stats = load.stop().await;

    let r = slow.await.unwrap().expect("the slow request was answered");
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "slow done");
    let status = gw.wait_exit(WAIT).await;
    assert!(status.success(), "{status:?}");
    assert!(!gw.pid_file().exists(), "pid file removed");
    assert_clean(&stats, load_hits(&a).await);
}

#[tokio::test]
async fn binary_upgrade_hands_over_the_listeners_without_losing_a_request() {
    let a = Origin::start("a").await;
    let b = Origin::start("b").await;
    let mut old = Gateway::start(&config(&a, &b, "", SHUTDOWN)).await;
    let old_pid = old.child.id();
    let load = Load::start(old.url(""), 16, 10, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut new = old.spawn_upgrade();
    let deadline = Instant::now() + WAIT;
    while !old.upgrade_sock().exists() {
        assert!(
            Instant::now() < deadline,
            "the new process never opened the upgrade socket"
        );
        assert!(new.try_wait().unwrap().is_none(), "the new process exited");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let slow = tokio::spawn(client().get(old.url("/slow/1500")).send());
    tokio::time::sleep(Duration::from_millis(100)).await;
    old.signal("QUIT");

    // The new process now owns the listeners and the pid file.
    let deadline = Instant::now() + WAIT;
    loop {
        let pid = std::fs::read_to_string(old.pid_file()).unwrap_or_default();
        if pid.trim() == new.id().to_string() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new process never wrote its pid"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = slow
        .await
        .unwrap()
        .expect("the slow request on the old process was answered");
    assert_eq!(r.status(), 200);
    let status = old.wait_exit(Duration::from_secs(12)).await;
    assert!(status.success(), "old process {old_pid}: {status:?}");

    tokio::time::sleep(Duration::from_millis(300)).await; // load now served by the new process
    let stats = load.stop().await;
    let r = client().get(old.url("/after")).send().await.unwrap();
    assert_eq!(r.status(), 200, "the new process serves");
    assert_clean(&stats, load_hits(&a).await);

    signal_pid(new.id(), "TERM");
    let deadline = Instant::now() + WAIT;
    while new.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the new process did not stop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!old.pid_file().exists());
}
