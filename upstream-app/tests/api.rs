//! Every route's success and failure paths, against a real redis-server.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

async fn setup(extra: &str) -> (RedisServer, App, Api) {
    let redis = RedisServer::start().await;
    let app = App::start(&config(&redis, extra)).await;
    let api = Api::new(&app);
    (redis, app, api)
}

#[tokio::test]
async fn registration_validates_and_refuses_duplicates() {
    let (_r, _app, api) = setup("").await;
    let ok =
        json!({ "username": "alice", "email": "alice@example.com", "password": "correct horse" });
    let r = api.post("/auth/register", ok.clone(), None).await;
    assert_eq!(r.status(), 201);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["username"], "alice");
    assert!(v["created_at"].as_str().unwrap().ends_with('Z'));

    let v = error_body(api.post("/auth/register", ok.clone(), None).await, 409).await;
    assert_eq!(v["error"], "username is taken");
    let other =
        json!({ "username": "alice2", "email": "ALICE@example.com", "password": "correct horse" });
    let v = error_body(api.post("/auth/register", other, None).await, 409).await;
    assert_eq!(v["error"], "email is taken");

    let bad = json!({ "username": "a b", "email": "nope", "password": "short" });
    let v = error_body(api.post("/auth/register", bad, None).await, 422).await;
    for f in ["username", "email", "password"] {
        assert!(v["fields"][f].is_string(), "{v}");
    }
    let missing = json!({ "username": "bob" });
    error_body(api.post("/auth/register", missing, None).await, 422).await;
    let r = api
        .http
        .post(api.url("/auth/register"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    error_body(r, 400).await;
}

#[tokio::test]
async fn racing_registrations_of_one_name_cannot_both_succeed() {
    let (_r, _app, api) = setup("").await;
    let api = std::sync::Arc::new(api);
    let mut tasks = Vec::new();
    for i in 0..12 {
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            let body = json!({ "username": "racer", "email": format!("r{i}@example.com"), "password": "password123" });
            api.post("/auth/register", body, None).await.status().as_u16()
        }));
    }
    let mut codes = Vec::new();
    for t in tasks {
        codes.push(t.await.unwrap());
    }
    assert_eq!(codes.iter().filter(|c| **c == 201).count(), 1, "{codes:?}");
    assert!(codes.iter().all(|c| *c == 201 || *c == 409), "{codes:?}");
}

#[tokio::test]
async fn login_me_logout_and_uniform_401s() {
    let (_r, _app, api) = setup("").await;
    let token = api.user("carol").await;
    let r = api
        .post(
            "/auth/login",
            json!({ "username": "carol", "password": "password-carol" }),
            None,
        )
        .await;
    assert_eq!(r.headers()["cache-control"], "no-store");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["token"].as_str().unwrap().len(), 64);
    assert_eq!(v["expires_in"], 3600);

    let wrong = api
        .post(
            "/auth/login",
            json!({ "username": "carol", "password": "nope-nope" }),
            None,
        )
        .await;
    assert_eq!(wrong.headers()["www-authenticate"], "Bearer");
    let wrong = error_body(wrong, 401).await;
    let unknown = api
        .post(
            "/auth/login",
            json!({ "username": "nobody", "password": "nope-nope" }),
            None,
        )
        .await;
    assert_eq!(unknown.headers()["www-authenticate"], "Bearer");
    let unknown = error_body(unknown, 401).await;
    assert_eq!(wrong["error"], unknown["error"], "the same answer for both");

    let r = api.get("/auth/me", Some(&token)).await;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        (v["username"].as_str(), v["email"].as_str()),
        (Some("carol"), Some("carol@example.com"))
    );
    let r = api.get("/auth/me", None).await;
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    error_body(r, 401).await;
    error_body(api.get("/auth/me", Some(&"0".repeat(64))).await, 401).await;

    let r = api
        .http
        .post(api.url("/auth/logout"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    error_body(api.get("/auth/me", Some(&token)).await, 401).await;
}

#[tokio::test]
async fn tokens_expire() {
    let (_r, _app, api) =
        setup("auth: { token_ttl: 1s, argon2_memory_kib: 1024, argon2_iterations: 1 }").await;
    let token = api.user("dave").await;
    assert_eq!(api.get("/auth/me", Some(&token)).await.status(), 200);
    let deadline = Instant::now() + WAIT;
    loop {
        let s = api.get("/auth/me", Some(&token)).await.status();
        if s == 401 {
            break;
        }
        assert!(Instant::now() < deadline, "token never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn items_crud_with_owner_checks() {
    let (_r, _app, api) = setup("").await;
    let erin = api.user("erin").await;
    let frank = api.user("frank").await;

    error_body(api.post("/items", json!({ "name": "x" }), None).await, 401).await;
    error_body(
        api.post("/items", json!({ "name": "" }), Some(&erin)).await,
        422,
    )
    .await;
    let r = api
        .post(
            "/items",
            json!({ "name": "lamp", "description": "bright" }),
            Some(&erin),
        )
        .await;
    assert_eq!(r.status(), 201);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let item: serde_json::Value = r.json().await.unwrap();
    assert_eq!(location, format!("/items/{}", item["id"]));
    let second: serde_json::Value = api
        .post("/items", json!({ "name": "desk" }), Some(&erin))
        .await
        .json()
        .await
        .unwrap();
    assert_ne!(item["id"], second["id"], "ids are unique");

    let r = api.get(&location, None).await;
    assert_eq!(r.status(), 200);
    let got: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        (got["name"].as_str(), got["owner"].as_str()),
        (Some("lamp"), Some("erin"))
    );

    let put = |token: String, body: serde_json::Value| {
        let req = api
            .http
            .put(api.url(&location))
            .bearer_auth(token)
            .json(&body);
        async move { req.send().await.unwrap() }
    };
    error_body(put(frank.clone(), json!({ "name": "mine now" })).await, 403).await;
    let r = put(erin.clone(), json!({ "name": "lamp v2" })).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["name"],
        "lamp v2"
    );

    let r = api
        .http
        .delete(api.url(&location))
        .bearer_auth(&frank)
        .send()
        .await
        .unwrap();
    error_body(r, 403).await;
    let r = api
        .http
        .delete(api.url(&location))
        .bearer_auth(&erin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    error_body(api.get(&location, None).await, 404).await;
    let r = api
        .http
        .delete(api.url(&location))
        .bearer_auth(&erin)
        .send()
        .await
        .unwrap();
    error_body(r, 404).await;
    error_body(api.get("/items/abc", None).await, 400).await;
}

#[tokio::test]
async fn public_reads_are_cacheable_and_answer_conditional_requests() {
    let (_r, _app, api) = setup("items: { max_age: 45s }").await;
    let gina = api.user("gina").await;
    let item: serde_json::Value = api
        .post("/items", json!({ "name": "chair" }), Some(&gina))
        .await
        .json()
        .await
        .unwrap();
    let path = format!("/items/{}", item["id"]);

    let r = api.get(&path, None).await;
    let h = r.headers().clone();
    assert_eq!(h["cache-control"], "public, max-age=45");
    assert_eq!(h["vary"], "Authorization");
    assert_eq!(
        h["surrogate-key"],
        format!("item-{} items", item["id"]).as_str()
    );
    let etag = h["etag"].to_str().unwrap().to_owned();
    assert!(
        etag.starts_with('"') && !etag.starts_with("W/"),
        "strong: {etag}"
    );
    let last_modified = h["last-modified"].to_str().unwrap().to_owned();

    let cond = |inm: Option<&str>, ims: Option<&str>| {
        let mut req = api.http.get(api.url(&path));
        if let Some(v) = inm {
            req = req.header("if-none-match", v);
        }
        if let Some(v) = ims {
            req = req.header("if-modified-since", v);
        }
        async move { req.send().await.unwrap() }
    };
    let r = cond(Some(&etag), None).await;
    assert_eq!(r.status(), 304);
    for k in ["etag", "cache-control", "vary"] {
        assert_eq!(r.headers()[k], h[k], "{k} on the 304");
    }
    assert!(r.bytes().await.unwrap().is_empty());
    assert_eq!(
        cond(Some(&format!("\"other\", W/{etag}")), None)
            .await
            .status(),
        304
    );
    assert_eq!(cond(None, Some(&last_modified)).await.status(), 304);
    // If-None-Match takes precedence: a mismatch means 200 whatever the date says.
    assert_eq!(
        cond(Some("\"other\""), Some(&last_modified)).await.status(),
        200
    );
    assert_eq!(
        cond(None, Some("Thu, 01 Jan 1970 00:00:00 GMT"))
            .await
            .status(),
        200
    );

    // A change gives a new validator.
    let r = api
        .http
        .put(api.url(&path))
        .bearer_auth(&gina)
        .json(&json!({ "name": "armchair" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(cond(Some(&etag), None).await.status(), 200);

    // With credentials the same read is private.
    let r = api.get(&path, Some(&gina)).await;
    assert!(r.headers()["cache-control"]
        .to_str()
        .unwrap()
        .starts_with("private"));
}

#[tokio::test]
async fn pagination_walks_every_item_once_in_order() {
    let (_r, _app, api) = setup("").await;
    let hal = api.user("hal").await;
    for i in 0..25 {
        let r = api
            .post("/items", json!({ "name": format!("n{i}") }), Some(&hal))
            .await;
        assert_eq!(r.status(), 201);
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = Vec::new();
    loop {
        let path = match &cursor {
            Some(c) => format!("/items?limit=10&cursor={c}"),
            None => "/items?limit=10".to_string(),
        };
        let r = api.get(&path, None).await;
        assert_eq!(r.status(), 200);
        assert!(r.headers()["surrogate-key"]
            .to_str()
            .unwrap()
            .starts_with("items"));
        let v: serde_json::Value = r.json().await.unwrap();
        let items = v["items"].as_array().unwrap();
        pages.push(items.len());
        seen.extend(items.iter().map(|i| i["id"].as_u64().unwrap()));
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, [10, 10, 5]);
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(seen, sorted, "stable ascending order, no repeats");
    assert_eq!(seen.len(), 25);
    error_body(api.get("/items?limit=0", None).await, 422).await;
    error_body(api.get("/items?limit=1000", None).await, 422).await;
    error_body(api.get("/items?cursor=zzz", None).await, 422).await;
}

#[tokio::test]
async fn export_jobs_run_in_the_background() {
    let (_r, _app, api) = setup("").await;
    let ivy = api.user("ivy").await;
    let jack = api.user("jack").await;
    for i in 0..3 {
        api.post("/items", json!({ "name": format!("ivy{i}") }), Some(&ivy))
            .await;
    }
    api.post("/items", json!({ "name": "jack's" }), Some(&jack))
        .await;
    error_body(api.post("/items/export", json!({}), None).await, 401).await;
    let r = api
        .http
        .post(api.url("/items/export"))
        .bearer_auth(&ivy)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<serde_json::Value>().await.unwrap()["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let deadline = Instant::now() + WAIT;
    let job = loop {
        let v: serde_json::Value = api
            .get(&format!("/jobs/{id}"), Some(&ivy))
            .await
            .json()
            .await
            .unwrap();
        if v["status"] == "done" {
            break v;
        }
        assert_ne!(v["status"], "failed", "{v}");
        assert!(Instant::now() < deadline, "job never finished: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(job["result"]["count"], 3);
    error_body(api.get(&format!("/jobs/{id}"), Some(&jack)).await, 404).await;
    error_body(api.get("/jobs/nope", Some(&ivy)).await, 404).await;
}

#[tokio::test]
async fn a_full_job_queue_answers_503_with_retry_after() {
    let redis = RedisServer::start().await;
    let app = App::start_with(&config(&redis, "jobs: { queue_size: 2 }"), false).await;
    let api = Api::new(&app);
    let kim = api.user("kim").await;
    let export = || {
        api.http
            .post(api.url("/items/export"))
            .bearer_auth(&kim)
            .send()
    };
    assert_eq!(export().await.unwrap().status(), 202);
    assert_eq!(export().await.unwrap().status(), 202);
    let r = export().await.unwrap();
    assert_eq!(r.headers()["retry-after"], "1");
    let v = error_body(r, 503).await;
    assert_eq!(v["error"], "job queue is full, retry later");
    let tasks: serde_json::Value = api
        .get("/performance/tasks", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(tasks["queued"], 2);
    assert_eq!(tasks["jobs"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn errors_are_json_with_the_request_id() {
    let (_r, _app, api) = setup("max_body_size: 1KiB").await;
    let r = api
        .http
        .get(api.url("/nope"))
        .header("x-request-id", "rid-42")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "rid-42");
    let v = error_body(r, 404).await;
    assert_eq!(v["request_id"], "rid-42");
    error_body(
        api.http.delete(api.url("/auth/me")).send().await.unwrap(),
        405,
    )
    .await;
    let big = json!({ "username": "x".repeat(2000), "email": "a@b.c", "password": "p" });
    error_body(api.post("/auth/register", big, None).await, 413).await;
    let r = api.get("/performance/health", None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["x-request-id"].len(),
        32,
        "generated when absent"
    );
}

#[tokio::test]
async fn metrics_use_route_templates() {
    let (_r, _app, api) = setup("").await;
    let lee = api.user("lee").await;
    let item: serde_json::Value = api
        .post("/items", json!({ "name": "m" }), Some(&lee))
        .await
        .json()
        .await
        .unwrap();
    api.get(&format!("/items/{}", item["id"]), None).await;
    let text = api.get("/metrics", None).await.text().await.unwrap();
    assert!(
        text.contains(r#"app_http_requests_total{method="GET",route="/items/{id}",status="2xx"}"#),
        "{text}"
    );
    assert!(
        !text.contains(&format!("/items/{}\"", item["id"])),
        "raw paths never become labels"
    );
    for name in [
        "app_redis_pool_connections",
        "app_redis_pool_wait_seconds_bucket",
        "app_jobs_queued",
        "process_resident_memory_bytes",
    ] {
        assert!(text.contains(name), "{name} missing");
    }
    let v: serde_json::Value = api
        .get("/performance/metrics", None)
        .await
        .json()
        .await
        .unwrap();
    assert!(v["pool"]["max_size"].as_u64().unwrap() == 50);
    assert!(v["requests"]["/items/{id}"]["count"].as_u64().unwrap() >= 1);
    assert!(v["process"]["resident_memory_bytes"].as_f64().unwrap() > 0.0);
}

#[tokio::test]
async fn redis_outage_gives_503_within_the_deadline_and_recovers() {
    let (mut redis, _app, api) = setup("").await;
    let mo = api.user("moe").await;
    let item: serde_json::Value = api
        .post("/items", json!({ "name": "x" }), Some(&mo))
        .await
        .json()
        .await
        .unwrap();
    let path = format!("/items/{}", item["id"]);
    let port = redis.port;
    redis.stop();
    let v = error_body(api.get(&path, None).await, 503).await;
    assert_eq!(v["error"], "database unavailable");
    // Data is gone with this throwaway Redis; the route works again without a restart.
    let _redis = RedisServer::start_on(Some(port)).await;
    let back = Instant::now();
    loop {
        let s = api.get(&path, None).await.status();
        if s == 404 {
            break;
        }
        assert!(back.elapsed() < WAIT, "never recovered (status {s})");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_exhausted_pool_gives_a_bounded_wait_then_503() {
    let redis = RedisServer::start().await;
    let yaml = format!(
        "redis: {{ url: \"{}\", max_size: 1, connection_timeout: 200ms, command_timeout: 1s }}\n\
         auth: {{ argon2_memory_kib: 1024, argon2_iterations: 1 }}",
        redis.url()
    );
    let app = App::start(&yaml).await;
    let api = std::sync::Arc::new(Api::new(&app));
    assert_eq!(api.get("/items", None).await.status(), 200);
    // Freeze Redis for far longer than any configured wait: the one pooled
    // connection waits for its command, the rest for the pool. An unbounded
    // wait would end in a 200 once the pause is over; a bounded one is a 503.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut admin = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(20_000)
        .arg("ALL")
        .query_async::<()>(&mut admin)
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            api.get("/items", None).await.status().as_u16()
        }));
    }
    let mut codes = Vec::new();
    for t in tasks {
        codes.push(t.await.unwrap());
    }
    assert!(
        codes.iter().all(|c| *c == 503),
        "every wait bounded: {codes:?}"
    );
}
