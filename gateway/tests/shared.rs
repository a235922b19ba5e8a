//! Several gateways, one Redis: the shared cache tier, purge fan-out, shared
//! rate limits, warm restarts, and Redis failures that are never an outage.
//! Every test runs real `redis-server` processes on free ports (one with TLS
//! and a password) and real gateways on one counting origin.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use reqwest::header::HeaderMap;

const TOKEN: &str = "0123456789abcdef0123";

/// A throwaway `redis-server` (no persistence) on a free port; killed on drop.
struct RedisServer {
    child: Option<Child>,
    port: u16,
    /// Its log, and the password file given to gateways.
    dir: tempfile::TempDir,
    /// TLS: the CA's PEM (beside the server's certificate and key).
    tls: Option<PathBuf>,
    password: Option<String>,
    _certs: Option<std::sync::Arc<tempfile::TempDir>>,
}

impl RedisServer {
    async fn start() -> RedisServer {
        Self::start_with(false).await
    }

    /// With TLS (a throwaway CA and server certificate) and a password.
    async fn start_tls() -> RedisServer {
        Self::start_with(true).await
    }

    async fn start_with(tls: bool) -> RedisServer {
        let certs = tls.then(|| std::sync::Arc::new(tempfile::tempdir().unwrap()));
        let ca = certs.as_ref().map(|d| write_certs(d.path()));
        let mut last = String::new();
        for _ in 0..5 {
            let mut server = RedisServer {
                child: None,
                port: free_port(),
                dir: tempfile::tempdir().unwrap(),
                tls: ca.clone(),
                password: tls.then(|| "s3cret-redis-pass".to_owned()),
                _certs: certs.clone(),
            };
            server.spawn();
            if server.wait_ready().await {
                return server;
            }
            last = server.log();
        }
        panic!("redis-server did not start:\n{last}");
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Starts the process on `self.port` (again, after [`RedisServer::kill`]).
    fn spawn(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--dir", &self.dir.path().display().to_string()])
            .args(["--logfile", &self.log_path().display().to_string()]);
        match &self.tls {
            Some(ca) => {
                let d = ca.parent().unwrap();
                cmd.args(["--port", "0", "--tls-port", &self.port.to_string()])
                    .args([
                        "--tls-cert-file",
                        &d.join("server.pem").display().to_string(),
                    ])
                    .args([
                        "--tls-key-file",
                        &d.join("server.key").display().to_string(),
                    ])
                    .args(["--tls-ca-cert-file", &ca.display().to_string()])
                    .args(["--tls-auth-clients", "no"]);
            }
            None => {
                cmd.args(["--port", &self.port.to_string()]);
            }
        }
        if let Some(p) = &self.password {
            cmd.args(["--requirepass", p]);
        }
        self.child = Some(
            cmd.stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn redis-server"),
        );
    }

    /// The URL the gateway is given (no password: that goes in a file).
    fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}/0", self.port)
    }

    fn client(&self) -> redis::Client {
        let mut info: redis::ConnectionInfo =
            redis::IntoConnectionInfo::into_connection_info(self.url().as_str()).unwrap();
        info.redis.password = self.password.clone();
        match &self.tls {
            Some(ca) => redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(std::fs::read(ca).unwrap()),
                },
            )
            .unwrap(),
            None => redis::Client::open(info).unwrap(),
        }
    }

    /// A command on a fresh connection, bounded.
    async fn cmd<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> redis::RedisResult<T> {
        let client = self.client();
        let fut = async move {
            let mut c = client.get_multiplexed_async_connection().await?;
            cmd.query_async::<T>(&mut c).await
        };
        tokio::time::timeout(Duration::from_secs(2), fut)
            .await
            .unwrap_or_else(|_| Err((redis::ErrorKind::IoError, "timeout").into()))
    }

    async fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                return false;
            }
            // This very process (its pid): a port reserved and released may be
            // another test's Redis, and ours then exits after the PING.
            let pid = self.child.as_ref().map(|c| c.id());
            if let Ok(info) = self.cmd::<String>(redis::cmd("INFO").arg("server")).await {
                return redis_pid(&info) == pid;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// SIGKILL (no goodbye to clients).
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same port.
    async fn restart(&mut self) {
        self.spawn();
        assert!(self.wait_ready().await, "redis restarted:\n{}", self.log());
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A throwaway CA and a server certificate for 127.0.0.1 it signed, in `dir`;
/// returns the CA's PEM path.
fn write_certs(dir: &Path) -> PathBuf {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "gateway test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
    dir.join("ca.pem")
}

/// A gateway on `origin` sharing `redis`; `route_extra` goes into the cached
/// route's block (e.g. a rate limit).
fn config(origin: &Origin, redis: &RedisServer, route_extra: &str) -> String {
    let mut redis_block = format!(r#"url: "{}", timeout: 200ms, open_for: 1s"#, redis.url());
    if let Some(p) = &redis.password {
        let file = redis.dir.path().join("password");
        std::fs::write(&file, format!("{p}\n")).unwrap();
        redis_block.push_str(&format!(", password_file: {}", file.display()));
    }
    if let Some(ca) = &redis.tls {
        redis_block.push_str(&format!(", ca_file: {}", ca.display()));
    }
    format!(
        r#"
listen: "{{listen}}"
admin: {{ listen: "{{admin}}", token: {TOKEN} }}
access_log: {{ enabled: false }}
shared:
  redis: {{ {redis_block} }}
cache:
  shared: {{ enabled: true, max_object_size: 64KiB }}
upstreams:
  app: {{ servers: ["{}"] }}
routes:
  - name: cached
    match: {{ path_prefix: / }}
    upstream: app
    cache: {{ enabled: true, default_ttl: 60s }}
    {route_extra}
"#,
        origin.addr
    )
}

/// The host clients ask for: behind a load balancer every instance sees the
/// same one (the cache key holds it), whatever port the test gave it.
const HOST: &str = "shared.test";

async fn get(gw: &Gateway, path: &str) -> (u16, HeaderMap) {
    let r = client()
        .get(gw.url(path))
        .header("host", HOST)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    r.bytes().await.unwrap();
    (status, headers)
}

/// The status of a request with `X-Api-Key: key`.
async fn get_keyed(gw: &Gateway, path: &str, key: &str) -> u16 {
    let r = client()
        .get(gw.url(path))
        .header("host", HOST)
        .header("x-api-key", key)
        .send()
        .await
        .unwrap();
    r.status().as_u16()
}

fn cache_status(h: &HeaderMap) -> String {
    h.get("cache-status")
        .map_or("-", |v| v.to_str().unwrap())
        .to_owned()
}

/// Waits until `gw` has written `n` entries to Redis (writes are in the background).
async fn wait_stored(gw: &Gateway, n: usize) {
    gw.wait_metrics(&[&format!(
        "gateway_shared_redis_calls_total{{op=\"store\",result=\"ok\"}} {n}"
    )])
    .await;
}

/// Waits until `/stats` shows the shared Redis in `state` with its channel `channel`.
async fn wait_shared_state(gw: &Gateway, state: &str, channel: &str) -> serde_json::Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let v = gw.admin_json("/stats", TOKEN).await;
        let s = &v["shared_redis"];
        if s["state"] == state && s["channel"] == channel {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "shared redis never became {state}/{channel}: {s}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_miss_on_one_instance_is_a_shared_hit_on_another_and_a_restart_starts_warm() {
    if !require_tool("redis-server") {
        return;
    }
    let redis = RedisServer::start().await;
    let origin = Origin::start("o").await;
    let conf = config(&origin, &redis, "");
    let a = Gateway::start(&conf).await;
    let b = Gateway::start(&conf).await;
    // Subscribing drops memory (purges may have been missed before): wait for it.
    wait_shared_state(&b, "closed", "up").await;
    let path = "/resp/one?size=300&h=Cache-Control:max-age%3D60";

    let (s, h) = get(&a, path).await;
    assert_eq!(s, 200);
    assert!(cache_status(&h).contains("fwd=uri-miss"), "{h:?}");
    wait_stored(&a, 1).await;

    let (s, h) = get(&b, path).await;
    assert_eq!(s, 200);
    // The entry keeps its freshness across instances: what is left of its
    // 60 s plus its age is 60 s, less the rounding down of both to seconds
    // (a second boundary may fall between the store and this request).
    let status = cache_status(&h);
    let ttl: u64 = status
        .strip_prefix("gateway; hit; ttl=")
        .and_then(|r| r.strip_suffix("; detail=shared"))
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("a shared hit with a ttl: {h:?}"));
    let age: u64 = h["age"].to_str().unwrap().parse().unwrap();
    assert!(ttl <= 59 && (59..=60).contains(&(ttl + age)), "{h:?}");
    let (_, h) = get(&b, path).await;
    assert!(
        cache_status(&h).starts_with("gateway; hit") && !cache_status(&h).contains("shared"),
        "the second request is a memory hit: {h:?}"
    );
    assert_eq!(origin.hits(), 1, "the origin saw one request");

    // A restart (a new process: empty memory) answers its first request from Redis.
    drop(b);
    let c = Gateway::start(&conf).await;
    wait_shared_state(&c, "closed", "up").await;
    let (s, h) = get(&c, path).await;
    assert_eq!(s, 200);
    assert!(cache_status(&h).contains("hit") && cache_status(&h).contains("detail=shared"));
    assert_eq!(origin.hits(), 1);
    let stats = c.admin_json("/stats", TOKEN).await;
    assert_eq!(stats["shared_redis"]["state"], "closed", "{stats}");
}

#[tokio::test]
async fn tls_and_a_password_as_elasticache_needs() {
    if !require_tool("redis-server") {
        return;
    }
    let redis = RedisServer::start_tls().await;
    // The password is enforced: a client without it is refused.
    let anonymous = RedisServer {
        child: None,
        port: redis.port,
        dir: tempfile::tempdir().unwrap(),
        tls: redis.tls.clone(),
        password: None,
        _certs: None,
    };
    let refused = anonymous
        .cmd::<Option<String>>(redis::cmd("GET").arg("x"))
        .await;
    assert!(refused.is_err(), "{refused:?}");
    let origin = Origin::start("o").await;
    let conf = config(&origin, &redis, "");
    assert!(conf.contains("rediss://"));
    let a = Gateway::start(&conf).await;
    let b = Gateway::start(&conf).await;
    wait_shared_state(&b, "closed", "up").await;
    let path = "/resp/tls?h=Cache-Control:max-age%3D60";
    let (_, h) = get(&a, path).await;
    assert!(cache_status(&h).contains("fwd=uri-miss"), "{h:?}");
    wait_stored(&a, 1).await;
    let (_, h) = get(&b, path).await;
    assert!(cache_status(&h).contains("detail=shared"), "{h:?}");
    assert_eq!(origin.hits(), 1);
}

#[tokio::test]
async fn a_purge_by_tag_on_one_instance_is_a_miss_on_every_instance() {
    if !require_tool("redis-server") {
        return;
    }
    let redis = RedisServer::start().await;
    let origin = Origin::start("o").await;
    let conf = config(&origin, &redis, "");
    let a = Gateway::start(&conf).await;
    let b = Gateway::start(&conf).await;
    wait_shared_state(&a, "closed", "up").await;
    wait_shared_state(&b, "closed", "up").await;
    let tagged =
        |n: u32| format!("/resp/t{n}?h=Cache-Control:max-age%3D60&h=Surrogate-Key:news%20t{n}");
    let untagged = "/resp/other?h=Cache-Control:max-age%3D60";
    for p in [tagged(1), tagged(2), untagged.to_owned()] {
        get(&a, &p).await;
    }
    wait_stored(&a, 3).await;
    for p in [tagged(1), tagged(2), untagged.to_owned()] {
        let (_, h) = get(&b, &p).await;
        assert!(cache_status(&h).contains("detail=shared"), "{p}: {h:?}");
    }
    assert_eq!(origin.hits(), 3);

    let r = client()
        .post(a.admin_url("/cache/purge"))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({ "tag": "news" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body, serde_json::json!({ "purged": 2, "shared": true }));
    b.wait_metrics(&["gateway_shared_purges_received_total 1"])
        .await;

    // Each purged URL is asked once, of a different instance: both go upstream.
    let (_, h) = get(&b, &tagged(1)).await;
    assert!(
        cache_status(&h).contains("fwd=uri-miss"),
        "B, memory: {h:?}"
    );
    let (_, h) = get(&a, &tagged(2)).await;
    assert!(cache_status(&h).contains("fwd=uri-miss"), "A: {h:?}");
    // A third instance, empty memory: Redis's copy of a purged URL is gone too.
    let c = Gateway::start(&conf).await;
    wait_shared_state(&c, "closed", "up").await;
    wait_stored(&b, 1).await;
    let (_, h) = get(&c, untagged).await;
    assert!(
        cache_status(&h).contains("detail=shared"),
        "untagged: {h:?}"
    );
    assert_eq!(origin.hits(), 5);
}

#[tokio::test]
async fn a_shared_rate_limit_holds_across_instances() {
    if !require_tool("redis-server") {
        return;
    }
    let redis = RedisServer::start().await;
    let origin = Origin::start("o").await;
    // 1/min: nothing refills during the test; a burst of 10 for everyone.
    let conf = config(
        &origin,
        &redis,
        "limits: { rate: { per_client: 1/m, burst: 10, shared: true, key_header: x-api-key } }",
    );
    let a = Gateway::start(&conf).await;
    let b = Gateway::start(&conf).await;
    let mut ok = 0;
    let mut limited = 0;
    for i in 0..30 {
        let gw = if i % 2 == 0 { &a } else { &b };
        match get_keyed(gw, &format!("/n/{i}"), "k1").await {
            200 => ok += 1,
            429 => limited += 1,
            s => panic!("status {s}"),
        }
    }
    assert_eq!((ok, limited), (10, 20), "one burst across both instances");
    a.wait_metrics(&["gateway_shared_redis_calls_total{op=\"lease\",result=\"ok\"}"])
        .await;

    // Redis gone: each instance limits alone (its own burst), nothing fails.
    // (A client Redis refused stays refused until its bucket refills: ask
    // for another one.)
    let mut redis = redis;
    redis.kill();
    let mut ok = 0;
    for i in 0..15 {
        match get_keyed(&a, &format!("/alone/{i}"), "k2").await {
            200 => ok += 1,
            429 => {}
            s => panic!("status {s}"),
        }
    }
    assert_eq!(ok, 10, "the local limiter's burst");
}

#[tokio::test]
async fn redis_killed_under_load_loses_no_request_and_the_tier_comes_back() {
    if !require_tool("redis-server") {
        return;
    }
    let mut redis = RedisServer::start().await;
    let origin = Origin::start("o").await;
    let conf = config(&origin, &redis, "");
    let a = Gateway::start(&conf).await;
    wait_shared_state(&a, "closed", "up").await;
    let load = Load::start(a.url(""), 4, 0, 0);
    a.wait_metrics(&["gateway_shared_redis_calls_total{op=\"store\",result=\"ok\"}"])
        .await;
    redis.kill();
    // Failed calls open the breaker; the channel is down.
    wait_shared_state(&a, "open", "down").await;
    redis.restart().await;
    // The breaker's probe succeeds, the channel comes back: no restart.
    wait_shared_state(&a, "closed", "up").await;
    let stats = load.stop().await;
    assert!(stats.failed.is_empty(), "failed: {:?}", stats.failed);
    assert!(stats.ok > 0);
    // The tier works again: a new entry reaches a fresh instance through Redis.
    let before = store_ok(&a).await;
    let (_, h) = get(&a, "/after/restart").await;
    assert!(cache_status(&h).contains("stored"), "{h:?}");
    let deadline = Instant::now() + WAIT;
    while store_ok(&a).await <= before {
        assert!(Instant::now() < deadline, "never written to Redis again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let b = Gateway::start(&conf).await;
    wait_shared_state(&b, "closed", "up").await;
    let (_, h) = get(&b, "/after/restart").await;
    assert!(cache_status(&h).contains("detail=shared"), "{h:?}");
}

/// Entries `gw` has written to Redis so far.
async fn store_ok(gw: &Gateway) -> u64 {
    let m = gw.wait_metrics(&["gateway_shared_redis_calls_total"]).await;
    m.lines()
        .find_map(|l| {
            l.strip_prefix("gateway_shared_redis_calls_total{op=\"store\",result=\"ok\"} ")
        })
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn a_paused_redis_still_answers() {
    if !require_tool("redis-server") {
        return;
    }
    let redis = RedisServer::start().await;
    let origin = Origin::start("o").await;
    let conf = config(&origin, &redis, "");
    let a = Gateway::start(&conf).await;
    wait_shared_state(&a, "closed", "up").await;
    let _: String = redis
        .cmd(redis::cmd("CLIENT").arg("PAUSE").arg(10_000).arg("ALL"))
        .await
        .unwrap();
    // Misses wait for Redis at most `timeout`, then go to the origin.
    for i in 0..5 {
        let (s, h) = get(&a, &format!("/paused/{i}")).await;
        assert_eq!(s, 200);
        assert!(cache_status(&h).contains("fwd=uri-miss"), "{h:?}");
    }
    let v = a.admin_json("/stats", TOKEN).await;
    assert_ne!(
        v["shared_redis"]["state"], "closed",
        "timeouts counted: {v}"
    );
    a.wait_metrics(&["gateway_shared_redis_calls_total{op=\"lookup\",result=\"timeout\"}"])
        .await;
}

#[tokio::test]
async fn an_unsafe_method_and_a_soft_purge_reach_every_instance() {
    if !require_tool("redis-server") {
        return;
    }
    let redis = RedisServer::start().await;
    let origin = Origin::start("o").await;
    let conf = config(&origin, &redis, "");
    let a = Gateway::start(&conf).await;
    let b = Gateway::start(&conf).await;
    wait_shared_state(&a, "closed", "up").await;
    wait_shared_state(&b, "closed", "up").await;
    let inv = "/resp/inv?h=Cache-Control:max-age%3D60";
    let soft = "/resp/soft/1?h=Cache-Control:max-age%3D60";
    get(&a, inv).await;
    get(&a, soft).await;
    wait_stored(&a, 2).await;
    let (_, h) = get(&b, inv).await;
    assert!(cache_status(&h).contains("detail=shared"), "{h:?}");

    // A POST through B invalidates the URL on A (memory) and in Redis.
    let r = client()
        .post(b.url(inv))
        .header("host", HOST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    a.wait_metrics(&["gateway_shared_purges_received_total 1"])
        .await;
    let (_, h) = get(&a, inv).await;
    assert!(
        cache_status(&h).contains("fwd=uri-miss"),
        "A after the POST: {h:?}"
    );

    // A soft purge of a prefix: a fresh instance finds Redis's copy stale
    // (it revalidates instead of serving it as fresh).
    let r = client()
        .post(a.admin_url("/cache/purge"))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({ "prefix": "/resp/soft/", "soft": true }))
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["shared"], true, "{body}");
    let c = Gateway::start(&conf).await;
    wait_shared_state(&c, "closed", "up").await;
    let (_, h) = get(&c, soft).await;
    assert!(cache_status(&h).contains("fwd=stale"), "{h:?}");
}
