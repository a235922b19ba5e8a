//! Test harness: a real `redis-server` on a free port, and the app on `127.0.0.1:0`.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Upper bound for any wait in a test.
pub const WAIT: Duration = Duration::from_secs(10);

/// A free loopback port, released for the caller to bind.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A throwaway `redis-server` (no persistence); killed on drop.
pub struct RedisServer {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts one on a free port and waits until it answers PING.
    pub async fn start() -> RedisServer {
        Self::start_on(None).await
    }

    /// Starts one on `port` (or a free one), retrying on a port race.
    pub async fn start_on(port: Option<u16>) -> RedisServer {
        for _ in 0..5 {
            let port = port.unwrap_or_else(free_port);
            let dir = tempfile::tempdir().unwrap();
            let child = Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .arg("--dir")
                .arg(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server must be installed (the test command installs it)");
            let mut server = RedisServer {
                port,
                child,
                _dir: dir,
            };
            if server.wait_ping().await {
                return server;
            }
            let _ = server.child.kill();
        }
        panic!("redis-server did not start");
    }

    /// `redis://127.0.0.1:<port>/0`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    async fn wait_ping(&mut self) -> bool {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if let Ok(client) = redis::Client::open(self.url()) {
                if let Ok(mut c) = client.get_multiplexed_async_connection().await {
                    // This very process (its pid): a port reserved and released may
                    // be another test's Redis, and ours then exits after answering.
                    if let Ok(info) = redis::cmd("INFO")
                        .arg("server")
                        .query_async::<String>(&mut c)
                        .await
                    {
                        return redis_pid(&info) == Some(self.child.id());
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// Kills the server (for outage tests).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The app served in-process on an ephemeral port; stopped on drop.
pub struct App {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl App {
    /// Starts the app with `yaml` as its configuration.
    pub async fn start(yaml: &str) -> App {
        Self::start_with(yaml, true).await
    }

    /// Starts the app; without workers, jobs stay queued (to fill the queue).
    pub async fn start_with(yaml: &str, workers: bool) -> App {
        upstream_app::metrics::init();
        let config = upstream_app::config::from_yaml_str(yaml).expect("valid test config");
        let state = upstream_app::AppState::new(config).unwrap();
        if workers {
            upstream_app::jobs::spawn_workers(&state);
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let app = upstream_app::router(state);
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await
        });
        App {
            addr,
            stop: Some(tx),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

impl Drop for App {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// The `process_id` field of a Redis `INFO server` reply.
pub fn redis_pid(info: &str) -> Option<u32> {
    info.lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|v| v.trim().parse().ok())
}

/// A test configuration against `redis`, with cheap password hashing.
pub fn config(redis: &RedisServer, extra: &str) -> String {
    format!(
        "redis: {{ url: \"{}\", connection_timeout: 300ms, command_timeout: 300ms }}\n\
         auth: {{ argon2_memory_kib: 1024, argon2_iterations: 1 }}\n{extra}",
        redis.url()
    )
}

/// A JSON client for the app.
pub struct Api {
    pub http: reqwest::Client,
    pub base: String,
}

impl Api {
    pub fn new(app: &App) -> Api {
        Api {
            http: reqwest::Client::builder().timeout(WAIT).build().unwrap(),
            base: format!("http://{}", app.addr),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn post(
        &self,
        path: &str,
        body: serde_json::Value,
        token: Option<&str>,
    ) -> reqwest::Response {
        let mut r = self.http.post(self.url(path)).json(&body);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send().await.unwrap()
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut r = self.http.get(self.url(path));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send().await.unwrap()
    }

    /// Registers `name` (email `name@example.com`, password `password-<name>`) and logs in.
    pub async fn user(&self, name: &str) -> String {
        let r = self
            .post(
                "/auth/register",
                serde_json::json!({ "username": name, "email": format!("{name}@example.com"), "password": format!("password-{name}") }),
                None,
            )
            .await;
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
        let r = self
            .post(
                "/auth/login",
                serde_json::json!({ "username": name, "password": format!("password-{name}") }),
                None,
            )
            .await;
        assert_eq!(r.status(), 200);
        let v: serde_json::Value = r.json().await.unwrap();
        v["token"].as_str().unwrap().to_owned()
    }
}

/// Checks the JSON error shape and returns the body.
pub async fn error_body(r: reqwest::Response, status: u16) -> serde_json::Value {
    assert_eq!(r.status(), status);
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(v["error"].is_string(), "{v}");
    assert!(v["request_id"].is_string(), "{v}");
    v
}
