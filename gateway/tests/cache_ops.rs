//! Response cache, part 3: coalescing and stale serving.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn config(origin_addr: &str, cache_block: &str) -> String {
    format!(
        r#"
listen: "{{listen}}"
admin: {{ listen: "{{admin}}" }}
cache: {{ {cache_block} }}
upstreams:
  app: {{ servers: ["{origin_addr}"], read_timeout: 5s }}
routes:
  - {{ name: cached, match: {{ path_prefix: /resp }}, upstream: app, cache: {{ enabled: true }} }}
"#
    )
}

fn resp(id: &str, query: &str) -> String {
    format!("/resp/{id}?size=100&{query}")
}

async fn get(gw: &Gateway, path: &str) -> (u16, String, String) {
    let r = client().get(gw.url(path)).send().await.unwrap();
    let status = r.status().as_u16();
    let x = r
        .headers()
        .get("x-cache")
        .map_or("-".into(), |v| v.to_str().unwrap().to_owned());
    let cs = r
        .headers()
        .get("cache-status")
        .map_or("-".into(), |v| v.to_str().unwrap().to_owned());
    r.bytes().await.unwrap();
    (status, x, cs)
}

#[tokio::test]
async fn concurrent_misses_send_one_request_upstream() {
    let origin = Origin::start("a").await;
    let gw = Gateway::start(&config(&origin.addr.to_string(), "")).await;
    let path = resp("coalesce", "h=Cache-Control:max-age%3D60&delay=500");
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let url = gw.url(&path);
        tasks.push(tokio::spawn(async move {
            let r = client().get(url).send().await.unwrap();
            let cs = r.headers()["cache-status"].to_str().unwrap().to_owned();
            (r.status().as_u16(), cs)
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    assert!(results.iter().all(|(s, _)| *s == 200), "{results:?}");
    assert_eq!(origin.hits(), 1, "exactly one origin request: {results:?}");
    let collapsed = results
        .iter()
        .filter(|(_, cs)| cs.contains("collapsed"))
        .count();
    assert!(collapsed >= 8, "the waiters say collapsed: {results:?}");
    gw.wait_metrics(&[&format!("gateway_cache_collapsed_total {collapsed}")])
        .await;
}

/// Polls until the origin has seen `n` requests.
async fn wait_hits(origin: &Origin, n: usize) {
    let deadline = Instant::now() + WAIT;
    while origin.hits() < n {
        assert!(
            Instant::now() < deadline,
            "origin saw {} of {n} requests",
            origin.hits()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn waiters_go_upstream_themselves_after_the_lock_timeout() {
    let origin = Origin::start("a").await;
    let gw = Gateway::start(&config(&origin.addr.to_string(), "lock_timeout: 300ms")).await;
    let path = resp("slowfill", "h=Cache-Control:max-age%3D60&holdable");
    origin
        .holding
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let first = tokio::spawn(client().get(gw.url(&path)).send());
    wait_hits(&origin, 1).await;
    // The first fill is held at the origin until released: the waiter can
    // only reach the origin by giving up on the lock.
    let second = tokio::spawn(client().get(gw.url(&path)).send());
    wait_hits(&origin, 2).await;
    origin.release();
    origin.release();
    assert_eq!(first.await.unwrap().unwrap().status(), 200);
    assert_eq!(second.await.unwrap().unwrap().status(), 200);
    assert_eq!(origin.hits(), 2);
}

#[tokio::test]
async fn stale_while_revalidate_answers_at_once_and_refreshes_once() {
    let origin = Origin::start("a").await;
    let gw = Gateway::start(&config(&origin.addr.to_string(), "")).await;
    let path = resp(
        "swr",
        "h=Cache-Control:max-age%3D1%2C%20stale-while-revalidate%3D60&holdable",
    );
    get(&gw, &path).await;
    tokio::time::sleep(Duration::from_millis(2100)).await; // stale (max-age=1)
                                                           // The refresh is held at the origin until released: these answers did not wait for it.
    origin
        .holding
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let mut xs = Vec::new();
    for _ in 0..3 {
        xs.push(get(&gw, &path).await.1);
    }
    assert!(xs.iter().all(|x| x == "STALE"), "{xs:?}");
    wait_hits(&origin, 2).await;
    assert_eq!(origin.hits(), 2, "one background refresh for the key");
    origin.release();
    // Then fresh hits, without another origin request.
    let deadline = Instant::now() + WAIT;
    while get(&gw, &path).await.1 != "HIT" {
        assert!(Instant::now() < deadline, "the refresh was never stored");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(origin.hits(), 2);
}

#[tokio::test]
async fn stale_if_error_covers_a_dead_origin_and_5xx_but_not_must_revalidate() {
    // The upstream is an origin we can stop; the 5xx case uses a second one.
    let origin = Origin::start("a").await;
    let addr = origin.addr.to_string();
    let gw = Gateway::start(&config(&addr, "")).await;
    let sie = resp(
        "sie",
        "h=Cache-Control:max-age%3D1%2C%20stale-if-error%3D60",
    );
    let strict = resp(
        "sie-mr",
        "h=Cache-Control:max-age%3D1%2C%20stale-if-error%3D60%2C%20must-revalidate",
    );
    assert_eq!(get(&gw, &sie).await.0, 200);
    assert_eq!(get(&gw, &strict).await.0, 200);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    drop(origin); // the origin is gone: connections are refused
    let (s, x, cs) = get(&gw, &sie).await;
    assert_eq!((s, x.as_str()), (200, "STALE"), "{cs}");
    let (s, _, _) = get(&gw, &strict).await;
    assert_eq!(s, 502, "must-revalidate: no stale copy on error");

    let origin2 = Origin::start("b").await;
    let gw2 = Gateway::start(&config(&origin2.addr.to_string(), "")).await;
    let flaky = resp(
        "sie5",
        "h=Cache-Control:max-age%3D1%2C%20stale-if-error%3D60&failable",
    );
    assert_eq!(get(&gw2, &flaky).await.0, 200);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    origin2
        .healthy
        .store(false, std::sync::atomic::Ordering::SeqCst); // now it answers 500
    let (s, x, cs) = get(&gw2, &flaky).await;
    assert_eq!(
        (s, x.as_str()),
        (200, "STALE"),
        "a 5xx is covered by stale-if-error: {cs}"
    );
    origin2
        .healthy
        .store(true, std::sync::atomic::Ordering::SeqCst);
}

const TOKEN: &str = "cache-admin-token-0123456789";

fn admin_config(origin_addr: &str, cache_block: &str) -> String {
    config(origin_addr, cache_block).replace(
        r#"admin: { listen: "{admin}" }"#,
        &format!(r#"admin: {{ listen: "{{admin}}", token: {TOKEN} }}"#),
    )
}

async fn purge(gw: &Gateway, body: serde_json::Value) -> (u16, serde_json::Value) {
    let r = client()
        .post(gw.admin_url("/cache/purge"))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn purge_by_url_prefix_tag_all_and_soft() {
    let origin = Origin::start("a").await;
    let gw = Gateway::start(&admin_config(&origin.addr.to_string(), "")).await;
    let host = gw.listen.to_string();
    let v = resp(
        "p/one",
        "h=Cache-Control:max-age%3D60&h=Vary:Accept-Language&h=Surrogate-Key:item-1%20items",
    );
    let two = resp(
        "p/two",
        "h=Cache-Control:max-age%3D60&h=Surrogate-Key:item-2%20items",
    );
    let other = resp("q/three", "h=Cache-Control:max-age%3D60&h=Cache-Tag:misc");
    let fill = |gw: &Gateway| {
        let (v, two, other) = (v.clone(), two.clone(), other.clone());
        let urls = [gw.url(&v), gw.url(&two), gw.url(&other)];
        async move {
            for (i, u) in urls.iter().enumerate() {
                let mut langs = vec!["en"];
                if i == 0 {
                    langs.push("fr");
                }
                for l in langs {
                    client()
                        .get(u)
                        .header("accept-language", l)
                        .send()
                        .await
                        .unwrap();
                }
            }
        }
    };
    let x = |path: String, lang: &'static str| {
        let url = gw.url(&path);
        async move {
            let r = client()
                .get(url)
                .header("accept-language", lang)
                .send()
                .await
                .unwrap();
            r.headers()["x-cache"].to_str().unwrap().to_owned()
        }
    };

    fill(&gw).await;
    let (s, body) = purge(
        &gw,
        serde_json::json!({ "url": format!("http://{host}{v}") }),
    )
    .await;
    assert_eq!(
        (s, body["purged"].as_u64()),
        (200, Some(2)),
        "both variants"
    );
    assert_eq!(x(v.clone(), "fr").await, "MISS");
    assert_eq!(x(two.clone(), "en").await, "HIT");

    fill(&gw).await;
    let (_, body) = purge(&gw, serde_json::json!({ "prefix": "/resp/p/" })).await;
    assert_eq!(body["purged"], 3);
    assert_eq!(x(two.clone(), "en").await, "MISS");
    assert_eq!(x(other.clone(), "en").await, "HIT");

    fill(&gw).await;
    let (_, body) = purge(&gw, serde_json::json!({ "tag": "item-2" })).await;
    assert_eq!(body["purged"], 1);
    assert_eq!(x(two.clone(), "en").await, "MISS");
    let (_, body) = purge(&gw, serde_json::json!({ "tag": "misc" })).await;
    assert_eq!(body["purged"], 1, "Cache-Tag counts too");

    fill(&gw).await;
    let (_, body) = purge(&gw, serde_json::json!({ "all": true, "soft": true })).await;
    assert_eq!(body["purged"], 4);
    // Soft: still stored, but stale, so the next use goes to the origin.
    let before = origin.hits();
    assert_ne!(x(two.clone(), "en").await, "HIT");
    assert_eq!(origin.hits(), before + 1);
    let (_, body) = purge(&gw, serde_json::json!({ "all": true })).await;
    assert_eq!(body["purged"], 4);

    let (s, body) = purge(&gw, serde_json::json!({ "tag": "a", "all": true })).await;
    assert_eq!(s, 422, "{body}");
    let r = client()
        .post(gw.admin_url("/cache/purge"))
        .json(&serde_json::json!({"all": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");

    let stats = gw.admin_json("/cache/stats", TOKEN).await;
    assert!(stats["purged"].as_u64().unwrap() >= 11, "{stats}");
    assert!(stats["hits"].as_u64().unwrap() >= 2, "{stats}");
    assert!(stats["capacity"].as_u64().unwrap() > 0);
    assert!(stats["hit_ratio"].as_f64().unwrap() > 0.0);
}

#[tokio::test]
async fn purge_by_pattern_and_the_guides_endpoints() {
    let origin = Origin::start("a").await;
    let gw = Gateway::start(&admin_config(&origin.addr.to_string(), "")).await;
    let cached = "h=Cache-Control:max-age%3D60";
    let paths = [
        resp("items/1/comments", cached),
        resp("items/2/comments", cached),
        resp("items/2/likes", cached),
        resp("items/3/comments/9", cached),
        resp("other", cached),
    ];
    let fill = || async {
        for p in &paths {
            get(&gw, p).await;
        }
    };
    fill().await;
    let (s, body) = purge(
        &gw,
        serde_json::json!({ "pattern": "/resp/items/*/comments" }),
    )
    .await;
    assert_eq!(
        (s, body["purged"].as_u64()),
        (200, Some(2)),
        "* stays in its segment"
    );
    assert_eq!(get(&gw, &paths[0]).await.1, "MISS", "the query is ignored");
    assert_eq!(get(&gw, &paths[2]).await.1, "HIT");
    assert_eq!(get(&gw, &paths[3]).await.1, "HIT");
    let (_, body) = purge(&gw, serde_json::json!({ "pattern": "/resp/items/**" })).await;
    assert_eq!(
        body["purged"], 3,
        "** crosses segments (items/2/comments is gone)"
    );
    let (_, body) = purge(
        &gw,
        serde_json::json!({ "pattern": "/resp/**", "host": "elsewhere.example" }),
    )
    .await;
    assert_eq!(body["purged"], 0, "another host");
    let (s, _) = purge(&gw, serde_json::json!({ "pattern": "resp/*" })).await;
    assert_eq!(s, 422);

    // The guide's names answer like /cache/stats and /cache/purge.
    let clear = |body: Option<serde_json::Value>| {
        let mut r = client()
            .post(gw.admin_url("/performance/cache/clear"))
            .bearer_auth(TOKEN);
        if let Some(b) = body {
            r = r.json(&b);
        }
        async move {
            let r = r.send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<serde_json::Value>().await.unwrap(),
            )
        }
    };
    fill().await;
    let (s, body) = clear(Some(serde_json::json!({ "pattern": "/resp/items/2/*" }))).await;
    assert_eq!((s, body["purged"].as_u64()), (200, Some(2)), "{body}");
    let (s, body) = clear(None).await;
    assert_eq!(
        (s, body["purged"].as_u64()),
        (200, Some(3)),
        "no body: everything"
    );
    let (s, _) = clear(Some(serde_json::json!({ "all": true }))).await;
    assert_eq!(s, 422);
    let a = gw.admin_json("/cache/stats", TOKEN).await;
    let b = gw.admin_json("/performance/cache/stats", TOKEN).await;
    assert_eq!(a["purged"], b["purged"]);
    assert_eq!(a["entries"], 0);

    // Every 405 names the methods its endpoint takes.
    for (path, method, allow) in [
        ("/cache/purge", reqwest::Method::GET, "POST"),
        ("/performance/cache/clear", reqwest::Method::GET, "POST"),
        ("/cache/stats", reqwest::Method::POST, "GET, HEAD"),
        ("/metrics", reqwest::Method::DELETE, "GET, HEAD"),
    ] {
        let r = client()
            .request(method, gw.admin_url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 405, "{path}");
        assert_eq!(r.headers()["allow"], allow, "{path}");
    }
}

#[tokio::test]
async fn purge_method_only_from_allowed_peers() {
    let origin = Origin::start("a").await;
    let path = resp("pm", "h=Cache-Control:max-age%3D60");
    let gw = Gateway::start(&config(&origin.addr.to_string(), "")).await;
    get(&gw, &path).await;
    let purge = reqwest::Method::from_bytes(b"PURGE").unwrap();
    let r = client()
        .request(purge.clone(), gw.url(&path))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["purged"], 1);
    assert_eq!(get(&gw, &path).await.1, "MISS");

    let gw2 = Gateway::start(&config(
        &origin.addr.to_string(),
        r#"purge_allow: ["10.0.0.0/8"]"#,
    ))
    .await;
    get(&gw2, &path).await;
    let r = client()
        .request(purge, gw2.url(&path))
        .header("x-forwarded-for", "10.1.1.1")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        405,
        "the socket peer decides, not forwarding headers"
    );
    assert_eq!(
        json_error(r).await.0,
        "PURGE is not allowed from this address"
    );
    assert_eq!(get(&gw2, &path).await.1, "HIT");
}

#[tokio::test]
async fn the_rule_supplies_stale_windows_the_response_lacks() {
    let origin = Origin::start("a").await;
    let yaml = config(&origin.addr.to_string(), "").replace(
        "cache: { enabled: true }",
        "cache: { enabled: true, stale_while_revalidate: 60s }",
    );
    let gw = Gateway::start(&yaml).await;
    let path = resp("rule-swr", "h=Cache-Control:max-age%3D1&holdable");
    get(&gw, &path).await;
    tokio::time::sleep(Duration::from_millis(2100)).await; // stale (max-age=1)
                                                           // The refresh is held at the origin: the stale answer did not wait for it.
    origin
        .holding
        .store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(get(&gw, &path).await.1, "STALE");
    wait_hits(&origin, 2).await;
    origin.release();
}
