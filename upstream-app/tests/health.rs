//! Health and Redis outage behaviour against a real redis-server.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn config(url: &str) -> String {
    format!("redis: {{ url: \"{url}\", connection_timeout: 300ms, command_timeout: 300ms }}")
}

#[tokio::test]
async fn health_reports_redis_and_survives_an_outage() {
    let mut redis = RedisServer::start().await;
    let app = App::start(&config(&redis.url())).await;
    let c = reqwest::Client::builder().timeout(WAIT).build().unwrap();

    let r = c.get(app.url("/performance/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["redis"], "up");

    // Redis down: 503 with the JSON error.
    redis.stop();
    let r = c
        .get(app.url("/performance/health"))
        .header("x-request-id", "rid-7")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"], "database unavailable");
    assert_eq!(v["request_id"], "rid-7");

    // Redis back on the same port: served again without a restart.
    let _redis = RedisServer::start_on(Some(redis.port)).await;
    let back = Instant::now();
    loop {
        let r = c.get(app.url("/performance/health")).send().await.unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(back.elapsed() < WAIT, "app did not recover");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
