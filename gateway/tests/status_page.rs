//! The admin status page (`GET /status`): its headers, the `/stats` fields it
//! reads, and the page itself in a real browser (Debian's chromium driven by
//! playwright-core from `gateway/tests/browser/`, see `status.mjs`).

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const TOKEN: &str = "status-page-test-token-0123456789";

/// Cached URLs the load reads (all hits once warmed: the cache's bytes stay put).
const CACHED: usize = 6;
/// Concurrent load loops.
const LOAD_TASKS: usize = 2;

fn config(a: &Origin, b: &Origin) -> String {
    format!(
        r#"
listen: "{{listen}}"
admin: {{ listen: "{{admin}}", token: "{TOKEN}" }}
access_log: {{ enabled: false }}
upstreams:
  app:
    servers: ["{}", "{}"]
    health_check: {{ path: /health, interval: 1s }}
    limits: {{ max_inflight: 32 }}
    breaker: {{ consecutive_failures: 50, open_for: 1s }}
cache: {{ max_size: 16MiB }}
routes:
  - name: pages
    match: {{ path_prefix: /resp/c }}
    upstream: app
    cache: {{ enabled: true, default_ttl: 600s }}
  - name: api
    match: {{ path_prefix: / }}
    upstream: app
    limits: {{ max_inflight: 16, queue: {{ max_len: 64, timeout: 2s }} }}
"#,
        a.addr, b.addr
    )
}

fn cached_path(i: usize) -> String {
    format!(
        "/resp/c/{i}?size={}&h=Cache-Control:max-age%3D600",
        1000 + 500 * i
    )
}

/// Requests in a loop until `stop`: cache hits, uncached answers, 404s and a
/// slower one now and then (a spread for the percentiles), with a short
/// pause so the load stays small.
fn start_load(gw: &Gateway, stop: Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<u64>> {
    (0..LOAD_TASKS)
        .map(|t| {
            let stop = stop.clone();
            let base = gw.url("");
            tokio::spawn(async move {
                let c = client();
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let path = match (n + t as u64) % 10 {
                        0 => "/resp/u?size=300".to_owned(),
                        1 => "/resp/nf?status=404&size=20".to_owned(),
                        2 => "/slow/15".to_owned(),
                        i => cached_path(i as usize % CACHED),
                    };
                    let r = c.get(format!("{base}{path}")).send().await.unwrap();
                    assert!(
                        r.status() == 200 || r.status() == 404,
                        "{path}: {}",
                        r.status()
                    );
                    r.bytes().await.unwrap();
                    n += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                n
            })
        })
        .collect()
}

/// The gateway's `/stats` percentile interpolation, written again here: the
/// page's numbers must be this function of two `/stats` answers.
fn quantile(buckets: &[(f64, f64)], count: f64, q: f64) -> Option<f64> {
    if count <= 0.0 {
        return None;
    }
    let rank = q * count;
    let (mut lower, mut below) = (0.0, 0.0);
    for &(upper, cum) in buckets {
        if cum >= rank {
            let frac = if cum > below {
                (rank - below) / (cum - below)
            } else {
                1.0
            };
            return Some(lower + (upper - lower) * frac);
        }
        lower = upper;
        below = cum;
    }
    Some(lower)
}

/// `(le_ms, count)` of `/stats`' `latency_buckets` of `b` minus those of `a`
/// (`a` = null: since start), and the request count between.
fn buckets_between(a: Option<&Value>, b: &Value) -> (Vec<(f64, f64)>, f64) {
    let get = |v: &Value, i: usize| v["latency_buckets"]["counts"][i].as_f64().unwrap();
    let le = b["latency_buckets"]["le_ms"].as_array().unwrap();
    let buckets = le
        .iter()
        .enumerate()
        .map(|(i, l)| {
            (
                l.as_f64().unwrap(),
                get(b, i) - a.map_or(0.0, |a| get(a, i)),
            )
        })
        .collect();
    let count = b["latency_buckets"]["count"].as_f64().unwrap()
        - a.map_or(0.0, |a| a["latency_buckets"]["count"].as_f64().unwrap());
    (buckets, count)
}

fn num(v: &Value) -> Option<f64> {
    v.as_str()
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * b.abs().max(1.0)
}

#[tokio::test]
async fn the_page_is_open_and_locked_down_and_stats_carries_what_it_needs() {
    let (a, b) = (Origin::start("a").await, Origin::start("b").await);
    let gw = Gateway::start(&config(&a, &b)).await;
    let c = client();
    let r = c.get(gw.admin_url("/status")).send().await.unwrap();
    assert_eq!(r.status(), 200, "open without a token, like /health");
    let h = r.headers().clone();
    let get = |k: &str| h.get(k).map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(
        get("content-type").as_deref(),
        Some("text/html; charset=utf-8")
    );
    let csp = get("content-security-policy").expect("a CSP");
    for part in [
        "default-src 'none'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
        "script-src 'sha256-",
        "style-src 'sha256-",
    ] {
        assert!(csp.contains(part), "{part} in {csp}");
    }
    assert!(!csp.contains("unsafe"), "{csp}");
    assert_eq!(get("x-content-type-options").as_deref(), Some("nosniff"));
    assert_eq!(get("referrer-policy").as_deref(), Some("no-referrer"));
    assert_eq!(get("cache-control").as_deref(), Some("no-store"));
    let page = r.text().await.unwrap();
    assert!(page.contains(r#"data-metric="requests_per_second""#));
    assert!(!page.contains(TOKEN), "the page holds no secret");

    let r = c.post(gw.admin_url("/status")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "GET, HEAD");

    // What the page reads stays behind the token.
    let r = c.get(gw.admin_url("/stats")).send().await.unwrap();
    assert_eq!(r.status(), 401);

    // /stats' additions: a ms clock, the duration histogram (whose
    // percentiles are the ones /stats reports) and the last reload.
    for i in 0..3 {
        let r = c.get(gw.url(&cached_path(i))).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let deadline = Instant::now() + WAIT;
    let s = loop {
        let s = gw.admin_json("/stats", TOKEN).await;
        if s["requests"] == 3 {
            break s;
        }
        assert!(Instant::now() < deadline, "requests never counted: {s}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        (s["uptime_ms"].as_u64().unwrap() / 1000).max(1),
        s["uptime_seconds"].as_u64().unwrap()
    );
    assert_eq!(s["latency_buckets"]["count"], 3, "{s}");
    let le = s["latency_buckets"]["le_ms"].as_array().unwrap();
    let counts = s["latency_buckets"]["counts"].as_array().unwrap();
    assert_eq!(le.len(), counts.len());
    assert_eq!(le[0], 0.1, "bucket bounds in ms");
    assert!(
        counts.windows(2).all(|w| w[0].as_u64() <= w[1].as_u64()),
        "cumulative"
    );
    let (buckets, count) = buckets_between(None, &s);
    for (q, key) in [(0.5, "p50"), (0.99, "p99")] {
        let ours = quantile(&buckets, count, q).unwrap();
        let theirs = s["latency_ms"][key].as_f64().unwrap();
        assert!(close(ours, theirs, 1e-3), "{key}: {ours} vs {theirs}");
    }
    assert_eq!(
        s["last_reload"]["at_unix"],
        Value::Null,
        "no reload yet: {s}"
    );
    let s = reload_needing_restart(&gw, &a, &b).await;
    assert!(s["last_reload"]["at_unix"].as_u64().unwrap() > 0, "{s}");
}

/// Reloads with a new `cache.max_size` (applied later: needs a restart);
/// returns the `/stats` that shows the reload.
async fn reload_needing_restart(gw: &Gateway, a: &Origin, b: &Origin) -> Value {
    gw.write_conf(&config(a, b).replace("max_size: 16MiB", "max_size: 32MiB"));
    gw.signal("HUP");
    let deadline = Instant::now() + WAIT;
    loop {
        let s = gw.admin_json("/stats", TOKEN).await;
        if s["last_reload"]["ok"] == true {
            assert_eq!(
                s["last_reload"]["pending_restart"],
                serde_json::json!(["cache.max_size"]),
                "{s}"
            );
            return s;
        }
        assert!(Instant::now() < deadline, "the reload never showed: {s}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Where `node` finds playwright-core (`npm ci` in this folder; scripts/test
/// runs it).
fn browser_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// Node, chromium and playwright-core, or (outside CI) false: skipped.
fn browser_tools() -> bool {
    if !require_tool("node") || !require_tool("chromium") {
        return false;
    }
    let found = browser_dir()
        .join("node_modules/playwright-core/package.json")
        .exists();
    let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty());
    assert!(
        found || !ci,
        "playwright-core is not installed and CI is set: scripts/test runs npm ci in gateway/tests/browser"
    );
    if !found {
        eprintln!("playwright-core not installed: skipped (scripts/test runs npm ci in gateway/tests/browser)");
    }
    found
}

#[tokio::test]
async fn the_page_in_chromium_shows_stats_under_load_and_refuses_a_wrong_token() {
    if !browser_tools() {
        return;
    }
    let (a, b) = (Origin::start("a").await, Origin::start("b").await);
    let gw = Gateway::start(&config(&a, &b)).await;
    gw.wait_health(TOKEN, a.addr, true).await;
    gw.wait_health(TOKEN, b.addr, true).await;
    // Warm the cache: from here on the cached URLs are hits and its bytes stay put.
    let c = client();
    for i in 0..CACHED {
        let r = c.get(gw.url(&cached_path(i))).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let deadline = Instant::now() + WAIT;
    loop {
        let cs = gw.admin_json("/cache/stats", TOKEN).await;
        if cs["entries"] == CACHED {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cache never held the warm-up: {cs}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A reload for the page to report.
    reload_needing_restart(&gw, &a, &b).await;

    let stop = Arc::new(AtomicBool::new(false));
    let load = start_load(&gw, stop.clone());
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    let run = tokio::process::Command::new("node")
        .arg(browser_dir().join("status.mjs"))
        .arg(gw.admin_url(""))
        .arg(TOKEN)
        .arg(&shot)
        .kill_on_drop(true)
        .output();
    // STATUS_PAGE_ANSWERS (default 3) /stats answers, 2 s apart, then the read.
    let answers: u64 = std::env::var("STATUS_PAGE_ANSWERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let limit = Duration::from_secs(60 + 2 * answers);
    let out = tokio::time::timeout(limit, run)
        .await
        .expect("the browser run ended in time")
        .expect("node runs");
    stop.store(true, Ordering::SeqCst);
    let mut sent = 0;
    for l in load {
        sent += l.await.unwrap();
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let v: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("no JSON from status.mjs ({e}):\n{stdout}\n{stderr}"));
    assert!(out.status.success(), "status.mjs failed: {v:#}\n{stderr}");
    eprintln!(
        "browser run: {} ms, {sent} requests of load, screenshot {}",
        v["elapsed_ms"],
        shot.display()
    );

    // Nothing but the admin listener, nothing the policy refused, no script error.
    assert_eq!(v["foreign_requests"], serde_json::json!([]), "{v:#}");
    assert!(v["requests_seen"].as_u64().unwrap() > 0);
    assert_eq!(v["csp_violations"], serde_json::json!([]), "{v:#}");
    assert_eq!(v["page_errors"], serde_json::json!([]), "{v:#}");

    // No token: the form, labelled; no data.
    let m = &v["missing_token"];
    assert_eq!(m["status"], 200);
    assert_eq!(m["form_visible"], true, "{m}");
    assert_eq!(m["alert_visible"], false, "{m}");
    assert_eq!(m["dashboard_visible"], false, "{m}");
    assert_eq!(
        m["input_labelled"], true,
        "every input and meter has a label"
    );
    assert_eq!(
        m["metrics_labelled"], true,
        "every headline number has a name"
    );
    assert_eq!(m["lang"], "en");

    // A wrong token: a clear message, the form again, no numbers, and the
    // token neither kept nor left in the address bar.
    let w = &v["wrong_token"];
    let msg = w["message"].as_str().unwrap();
    assert!(
        msg.contains("Wrong or missing admin token") && msg.contains("401"),
        "{msg}"
    );
    assert_eq!(w["role"], "alert");
    assert!(!w["url"].as_str().unwrap().contains("token"), "{w}");
    assert_eq!(w["stored"], Value::Null);
    assert_eq!(w["form_visible"], true);
    assert_eq!(w["dashboard_visible"], false);
    assert_eq!(
        w["contrast_problems"],
        serde_json::json!([]),
        "WCAG contrast"
    );
    for (k, val) in w["metrics"].as_object().unwrap() {
        assert_eq!(val, "", "{k} shows no number without a token");
    }
    // The right one typed into the form.
    let f = &v["form_token"];
    assert_eq!(f["alert_visible"], false, "{f}");
    assert_eq!(f["dashboard_visible"], true, "{f}");

    // The right token in the fragment, under load.
    let l = &v["loaded"];
    assert!(
        !l["url"].as_str().unwrap().contains("token"),
        "{}",
        l["url"]
    );
    assert_eq!(l["stored"], TOKEN, "kept in sessionStorage");
    assert_eq!(
        l["contrast_problems"],
        serde_json::json!([]),
        "WCAG contrast"
    );
    let (sample, previous) = (&l["sample_stats"], &l["previous_stats"]);
    assert!(sample.is_object() && previous.is_object(), "{l:#}");
    let (fresh, fresh_cache) = (&l["fresh_stats"], &l["fresh_cache"]);
    let metric = |k: &str| num(&l["metrics"][k]);

    // (1) The numbers are those of the page's last two /stats answers: the
    // rate and percentiles of the requests between them.
    let dt =
        (sample["uptime_ms"].as_f64().unwrap() - previous["uptime_ms"].as_f64().unwrap()) / 1000.0;
    let rps = (sample["requests"].as_f64().unwrap() - previous["requests"].as_f64().unwrap()) / dt;
    let shown_rps = metric("requests_per_second").expect("a rate");
    assert!(close(shown_rps, rps, 1e-9), "rps {shown_rps} vs {rps}");
    assert!(shown_rps > 0.0, "under load");
    let (buckets, count) = buckets_between(Some(previous), sample);
    for (q, key) in [(0.5, "p50_ms"), (0.99, "p99_ms")] {
        let want = quantile(&buckets, count, q).expect("requests in the interval");
        let shown = metric(key).expect(key);
        assert!(close(shown, want, 1e-9), "{key}: {shown} vs {want}");
    }
    assert_eq!(
        l["metrics"]["open_connections"],
        sample["open_connections"].to_string()
    );

    // (2) It refreshes every 2 s: two answers at least 2 s apart (the next
    // round starts 2 s after the last one ended) and, when read, the latest
    // is at most one period plus a fetch round old. The round is four small
    // admin requests; 3 s covers them on a busy 2-core CI machine.
    assert!(dt >= 1.99, "answers {dt} s apart");
    let age = fresh["uptime_ms"].as_f64().unwrap() - sample["uptime_ms"].as_f64().unwrap();
    assert!(
        age <= 2000.0 + 3000.0,
        "the page showed an answer {age} ms old"
    );
    assert!(l["answers"].as_u64().unwrap() >= 3);

    // (3) Against /stats asked right after the read: the cache's bytes do not
    // move (only hits), and the hit ratio (since start) moved at most as much
    // as the requests since the page's previous answer can move it (plus the
    // requests in flight between two counters).
    assert_eq!(
        metric("cache_bytes").unwrap(),
        fresh_cache["bytes"].as_f64().unwrap(),
        "cache bytes"
    );
    let lookups: f64 = ["hits", "misses", "stale_served", "revalidations"]
        .iter()
        .map(|k| fresh_cache[k].as_f64().unwrap())
        .sum();
    let since = fresh["requests"].as_f64().unwrap() - previous["requests"].as_f64().unwrap()
        + LOAD_TASKS as f64;
    let ratio = metric("hit_ratio").unwrap();
    let want = fresh_cache["hit_ratio"].as_f64().unwrap();
    assert!(
        (ratio - want).abs() <= since / lookups,
        "hit ratio {ratio} vs {want}, allowed {}",
        since / lookups
    );
    assert!(ratio > 0.5, "most of the load is hits: {ratio}");

    // (4) The tables: every limiter of /limits, both servers healthy with a closed breaker.
    let limits = gw.admin_json("/limits", TOKEN).await;
    let rows = l["limits_rows"].as_array().unwrap();
    assert_eq!(
        rows.iter().map(|r| r[0].clone()).collect::<Vec<_>>(),
        limits["limiters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["name"].clone())
            .collect::<Vec<_>>()
    );
    let servers = l["server_rows"].as_array().unwrap();
    assert_eq!(servers.len(), 2, "{servers:?}");
    for s in servers {
        assert_eq!(
            (&s[3], &s[4]),
            (&Value::from("healthy"), &Value::from("closed")),
            "{s}"
        );
    }
    let reload = l["reload"].as_str().unwrap();
    assert!(
        reload.starts_with("Applied at ")
            && reload.ends_with("Needs a restart to apply: cache.max_size."),
        "{reload}"
    );
    let lines = l["chart_lines"].as_array().unwrap();
    assert_eq!(
        (&lines[0], &lines[1]),
        (&Value::from(1), &Value::from(2)),
        "rps, p50 + p99"
    );
    assert!(
        lines[2].as_u64().unwrap() >= 2,
        "2xx and 4xx at least: {lines:?}"
    );

    // (5) A phone's width needs no sideways scrolling.
    let p = &v["phone"];
    assert!(
        p["scroll_width"].as_u64().unwrap() <= p["viewport_width"].as_u64().unwrap(),
        "{p}"
    );
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
}
