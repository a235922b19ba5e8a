//! Test harness: real origins (axum on `127.0.0.1:0`) and the real gateway binary
//! on reserved ports, with readiness checks and bounded waits.

#![allow(dead_code)]

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use futures::StreamExt;
use tokio::sync::{mpsc, Mutex, Notify};

/// Upper bound for any wait in a test.
pub const WAIT: Duration = Duration::from_secs(10);

/// Path of the gateway binary built for these tests.
pub fn gateway_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_gateway"))
}

/// A free loopback port, released for the caller to bind (retry on a race).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A plain HTTP client that never reuses connections between tests.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(WAIT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// What an origin saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: HeaderMap,
    pub body_len: usize,
}

/// A real HTTP origin for the gateway to proxy to.
///
/// - `/slow/<ms>`: answers after `ms` milliseconds.
/// - `/stream`: sends `first`, then waits for [`Origin::release`], then `last`.
/// - `/upload`: reads the body; signals [`Origin::first_chunk`] on its first chunk.
/// - `/resp...?status=&size=&h=Name:Value`: a scripted response (see [`percent_decode`]).
/// - `/health`: 200 or 503 as [`Origin::healthy`] says (not counted in `hits`).
/// - anything else: `200` with `x-origin: <name>` and the request line as body.
pub struct Origin {
    pub name: &'static str,
    pub addr: SocketAddr,
    /// Requests seen, health checks excluded.
    pub hits: Arc<AtomicUsize>,
    /// What `/health` answers: 200 when true, 503 otherwise.
    pub healthy: Arc<AtomicBool>,
    /// While true, a scripted `/resp...?holdable` response waits for
    /// [`Origin::release`] before it is sent (a refresh the test controls).
    pub holding: Arc<AtomicBool>,
    /// TCP connections accepted so far.
    pub connections: Arc<AtomicUsize>,
    /// Highest number of requests handled at once.
    pub peak: Arc<AtomicUsize>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    release: Arc<Notify>,
    first_chunk: Mutex<mpsc::Receiver<()>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct OriginState {
    name: &'static str,
    hits: Arc<AtomicUsize>,
    active: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    healthy: Arc<AtomicBool>,
    holding: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Seen>>>,
    release: Arc<Notify>,
    first_chunk: mpsc::Sender<()>,
}

impl Origin {
    /// Starts an origin on an ephemeral loopback port.
    pub async fn start(name: &'static str) -> Origin {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::channel(4);
        let state = OriginState {
            name,
            hits: Arc::default(),
            active: Arc::default(),
            peak: Arc::default(),
            healthy: Arc::new(AtomicBool::new(true)),
            holding: Arc::default(),
            seen: Arc::default(),
            release: Arc::new(Notify::new()),
            first_chunk: tx,
        };
        let app = Router::new()
            .fallback(any(handle))
            .with_state(state.clone());
        let connections = Arc::new(AtomicUsize::new(0));
        let counting = CountingListener {
            inner: listener,
            accepted: connections.clone(),
        };
        let task = tokio::spawn(async move {
            axum::serve(counting, app).await.unwrap();
        });
        Origin {
            name,
            addr,
            hits: state.hits,
            healthy: state.healthy,
            holding: state.holding,
            connections,
            peak: state.peak,
            seen: state.seen,
            release: state.release,
            first_chunk: Mutex::new(rx),
            task,
        }
    }

    /// Lets a `/stream` response finish.
    pub fn release(&self) {
        self.release.notify_one();
    }

    /// Waits until an `/upload` body's first chunk has reached the origin.
    pub async fn first_chunk(&self) {
        let mut rx = self.first_chunk.lock().await;
        tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("first upload chunk reached the origin in time");
    }

    /// Requests seen so far.
    pub async fn seen(&self) -> Vec<Seen> {
        self.seen.lock().await.clone()
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `/resp...?status=200&size=10&h=Name:Value&...`: a response built from the query
/// (percent-decoded), its body `size` bytes of `x`; with `inm304`, a request whose
/// `If-None-Match` equals the scripted `ETag` gets 304, whose `h304=Name:Value`
/// fields replace the scripted ones of that name; `delay=ms` answers late;
/// `failable` answers 500 while [`Origin::healthy`] is false.
/// The body `/resp?pattern&size=N` answers: byte `i` is `i % 251`, so a lost,
/// repeated or reordered piece shows.
pub fn pattern_body(size: usize) -> Vec<u8> {
    (0..size).map(|i| (i % 251) as u8).collect()
}

async fn scripted(query: &str, s: &OriginState, seen: Seen) -> Response {
    let mut status = 200u16;
    let mut size = 5usize;
    let mut headers = Vec::new();
    let mut headers_304: Vec<(String, String)> = Vec::new();
    let mut honour_inm = false;
    let mut delay_ms = 0u64;
    let mut hold = false;
    let mut pattern = false;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v);
        match k {
            "status" => status = v.parse().unwrap(),
            "size" => size = v.parse().unwrap(),
            "inm304" => honour_inm = true,
            // A body whose every byte depends on its offset (see `pattern_body`).
            "pattern" => pattern = true,
            "delay" => delay_ms = v.parse().unwrap(),
            // Answers 500 while the origin is marked unhealthy.
            "failable" if !s.healthy.load(Ordering::SeqCst) => status = 500,
            // Waits for `Origin::release` while the origin is holding.
            "holdable" if s.holding.load(Ordering::SeqCst) => hold = true,
            "h" => {
                let (name, value) = v.split_once(':').unwrap();
                headers.push((name.trim().to_owned(), value.trim().to_owned()));
            }
            "h304" => {
                let (name, value) = v.split_once(':').unwrap();
                headers_304.push((name.trim().to_owned(), value.trim().to_owned()));
            }
            _ => {}
        }
    }
    // With inm304, a matching If-None-Match gets 304 (a revalidation).
    let etag = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("etag"))
        .map(|(_, v)| v.clone());
    let inm = seen
        .headers
        .get("if-none-match")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if honour_inm && etag.is_some() && inm == etag {
        status = 304;
        size = 0;
        headers.retain(|(k, _)| !headers_304.iter().any(|(n, _)| n.eq_ignore_ascii_case(k)));
        headers.extend(headers_304);
    }
    // A `bytes=a-b` Range gets a 206 of that slice.
    let range = seen
        .headers
        .get("range")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.split_once('-'))
        .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)));
    s.seen.lock().await.push(seen);
    if let (Some((a, b)), 200) = (range, status) {
        let end = b.min(size.saturating_sub(1));
        let mut resp = Response::new(Body::from(vec![b'x'; end + 1 - a]));
        *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
        resp.headers_mut().insert(
            "content-range",
            format!("bytes {a}-{end}/{size}").parse().unwrap(),
        );
        for (k, v) in headers {
            resp.headers_mut().append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        return resp;
    }
    if delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
    }
    if hold {
        s.release.notified().await;
    }
    let body = if pattern {
        pattern_body(size)
    } else {
        vec![b'x'; size]
    };
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap();
    for (k, v) in headers {
        resp.headers_mut().append(
            axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    resp.headers_mut()
        .insert("x-origin", s.name.parse().unwrap());
    resp
}

/// `%XX` decoding for test URLs.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap();
            out.push(u8::from_str_radix(hex, 16).unwrap());
            i += 3;
        } else {
            out.push(if b[i] == b'+' { b' ' } else { b[i] });
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

/// A listener that counts accepted connections.
struct CountingListener {
    inner: tokio::net::TcpListener,
    accepted: Arc<AtomicUsize>,
}

impl axum::serve::Listener for CountingListener {
    type Io = tokio::net::TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let pair = axum::serve::Listener::accept(&mut self.inner).await;
        self.accepted.fetch_add(1, Ordering::SeqCst);
        pair
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

async fn handle(State(s): State<OriginState>, req: Request) -> Response {
    if req.uri().path() == "/health" {
        return if s.healthy.load(Ordering::SeqCst) {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        }
        .into_response();
    }
    s.hits.fetch_add(1, Ordering::SeqCst);
    let now = s.active.fetch_add(1, Ordering::SeqCst) + 1;
    s.peak.fetch_max(now, Ordering::SeqCst);
    struct Leave(Arc<AtomicUsize>);
    impl Drop for Leave {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }
    let _leave = Leave(s.active.clone());
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    let mut seen = Seen {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        headers: parts.headers.clone(),
        body_len: 0,
    };
    if let Some(ms) = path.strip_prefix("/slow/") {
        let ms: u64 = ms.parse().unwrap_or(0);
        s.seen.lock().await.push(seen);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        return (StatusCode::OK, "slow done").into_response();
    }
    if path.starts_with("/resp") {
        return scripted(parts.uri.query().unwrap_or(""), &s, seen).await;
    }
    if path == "/stream" {
        s.seen.lock().await.push(seen);
        let release = s.release.clone();
        let chunks =
            futures::stream::once(async { Ok::<_, std::io::Error>(Bytes::from("first\n")) }).chain(
                futures::stream::once(async move {
                    release.notified().await;
                    Ok(Bytes::from("last\n"))
                }),
            );
        return Response::new(Body::from_stream(chunks));
    }
    let mut stream = body.into_data_stream();
    let mut signalled = false;
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else { break };
        seen.body_len += chunk.len();
        if path == "/upload" && !signalled && !chunk.is_empty() {
            signalled = true;
            let _ = s.first_chunk.send(()).await;
        }
    }
    let line = format!("{} {} {}", seen.method, seen.uri, seen.body_len);
    s.seen.lock().await.push(seen);
    ([("x-origin", s.name)], line).into_response()
}

/// A running gateway process; killed on drop.
pub struct Gateway {
    pub child: Child,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl Gateway {
    /// Starts the gateway with `yaml`, in which `{listen}` and `{admin}` are
    /// replaced by reserved loopback addresses. Retries on a port race.
    pub async fn start(yaml: &str) -> Gateway {
        Self::start_with_env(yaml, &[]).await
    }

    /// Like [`Gateway::start`], with extra environment variables.
    pub async fn start_with_env(yaml: &str, env: &[(&str, &str)]) -> Gateway {
        let mut last_err = String::new();
        for _ in 0..5 {
            // An environment override of the listener is where the gateway listens.
            let listen: SocketAddr = env
                .iter()
                .find(|(k, _)| *k == "GATEWAY_LISTEN")
                .map(|(_, v)| v.to_string())
                .unwrap_or_else(|| format!("127.0.0.1:{}", free_port()))
                .parse()
                .unwrap();
            let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let text = yaml
                .replace("{listen}", &listen.to_string())
                .replace("{admin}", &admin.to_string());
            let dir = tempfile::tempdir().unwrap();
            let conf = dir.path().join("gateway.yaml");
            std::fs::write(&conf, text).unwrap();
            let log = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
            let mut child = Command::new(gateway_bin())
                .arg("-c")
                .arg(&conf)
                .env("GATEWAY_PID_FILE", dir.path().join("gateway.pid"))
                .env("GATEWAY_UPGRADE_SOCK", dir.path().join("upgrade.sock"))
                .envs(env.iter().copied())
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn gateway");
            match wait_ready(&mut child, admin, listen).await {
                Ok(()) => {
                    return Gateway {
                        child,
                        listen,
                        admin,
                        dir,
                        env: env
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect(),
                    }
                }
                Err(()) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_err =
                        std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default();
                }
            }
        }
        panic!("gateway did not become ready:\n{last_err}");
    }

    /// `http://<listen><path>`
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.listen, path)
    }

    /// `http://<admin><path>`
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// The gateway's stderr so far.
    pub fn stderr(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(self.dir.path().join("stderr.log")) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `GET /health` on the admin port until this very process answers (its
/// pid: a port reserved and released may be taken by another test's gateway)
/// and its main listener is a listening socket of this process (an accepted
/// connection alone could be another test's gateway that took the port first);
/// fails when the process exits or `WAIT` passes.
async fn wait_ready(child: &mut Child, admin: SocketAddr, listen: SocketAddr) -> Result<(), ()> {
    let deadline = Instant::now() + WAIT;
    let c = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let url = format!("http://{admin}/health");
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return Err(());
        }
        if let Ok(r) = c.get(&url).send().await {
            let ours = r.status() == 200
                && r.json::<serde_json::Value>()
                    .await
                    .is_ok_and(|v| v["pid"] == child.id());
            if ours && listens_on(child.id(), listen) {
                tokio::time::sleep(Duration::from_millis(30)).await;
                if let Ok(None) = child.try_wait() {
                    return Ok(());
                }
                return Err(());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(())
}

/// Whether process `pid` holds a TCP socket listening on `addr` (Linux: the
/// socket inodes of `/proc/net/tcp{,6}` in state LISTEN against `/proc/<pid>/fd`).
pub fn listens_on(pid: u32, addr: SocketAddr) -> bool {
    let table = if addr.is_ipv4() { "tcp" } else { "tcp6" };
    let Ok(text) = std::fs::read_to_string(format!("/proc/net/{table}")) else {
        return false;
    };
    let port = format!("{:04X}", addr.port());
    let inodes: Vec<String> = text
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local_port = f.get(1)?.rsplit(':').next()?;
            let inode = f.get(9)?;
            (local_port == port && *f.get(3)? == "0A").then(|| format!("socket:[{inode}]"))
        })
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .is_ok_and(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str()))
    })
}

/// The `process_id` field of a Redis `INFO server` reply.
pub fn redis_pid(info: &str) -> Option<u32> {
    info.lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Runs the gateway binary to completion (e.g. `-t`), returning code, stdout and stderr.
pub fn run_gateway(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    run_gateway_via(&[], args, env)
}

/// Like [`run_gateway`], started through `wrapper` (a command and its
/// arguments that end by running the next ones, e.g. `setpriv --reuid=...`).
pub fn run_gateway_via(
    wrapper: &[&str],
    args: &[&str],
    env: &[(&str, &str)],
) -> (i32, String, String) {
    let bin = gateway_bin();
    let mut cmd = match wrapper.split_first() {
        Some((program, rest)) => {
            let mut c = Command::new(program);
            c.args(rest).arg(&bin);
            c
        }
        None => Command::new(&bin),
    };
    cmd.args(args).envs(env.iter().copied());
    // Never inherit overrides from the developer's shell.
    for (k, _) in std::env::vars() {
        if k.starts_with("GATEWAY_") && !env.iter().any(|(e, _)| *e == k) {
            cmd.env_remove(k);
        }
    }
    let out = cmd.output().expect("run gateway");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Parses a JSON error body and checks its shape; returns (error, request_id).
pub async fn json_error(resp: reqwest::Response) -> (String, String) {
    assert_eq!(
        resp.headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap()),
        Some("application/json")
    );
    let header_id = resp
        .headers()
        .get("x-request-id")
        .expect("x-request-id on an error")
        .to_str()
        .unwrap()
        .to_owned();
    let v: serde_json::Value = resp.json().await.expect("JSON body");
    let id = v["request_id"].as_str().expect("request_id").to_owned();
    assert_eq!(id, header_id, "body and header carry the same request id");
    (v["error"].as_str().expect("error").to_owned(), id)
}

impl Gateway {
    /// Scrapes `/metrics` until every line in `needles` shows (metrics are
    /// recorded in the logging phase, just after the response went out).
    pub async fn wait_metrics(&self, needles: &[&str]) -> String {
        let deadline = Instant::now() + WAIT;
        let c = client();
        loop {
            let m = c
                .get(self.admin_url("/metrics"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            if needles.iter().all(|n| m.contains(n)) {
                return m;
            }
            if Instant::now() > deadline {
                panic!("metrics never showed {needles:?}:\n{m}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Gateway {
    /// `GET` an admin endpoint with the bearer token, as JSON.
    pub async fn admin_json(&self, path: &str, token: &str) -> serde_json::Value {
        let r = client()
            .get(self.admin_url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        r.json().await.unwrap()
    }

    /// Polls `/upstreams` until `server` (an address) has health `healthy`.
    pub async fn wait_health(&self, token: &str, server: SocketAddr, healthy: bool) {
        let deadline = Instant::now() + WAIT;
        loop {
            let v = self.admin_json("/upstreams", token).await;
            let found = v["upstreams"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|u| u["servers"].as_array().unwrap())
                .any(|s| s["address"] == server.to_string() && s["healthy"] == healthy);
            if found {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{server} never became healthy={healthy}: {v}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Gateway {
    /// The configuration file the gateway was started with (rewrite it, then SIGHUP).
    pub fn conf_path(&self) -> PathBuf {
        self.dir.path().join("gateway.yaml")
    }

    /// Replaces the configuration file atomically (`{listen}`/`{admin}` filled in).
    pub fn write_conf(&self, yaml: &str) {
        let text = yaml
            .replace("{listen}", &self.listen.to_string())
            .replace("{admin}", &self.admin.to_string());
        let tmp = self.dir.path().join("gateway.yaml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(tmp, self.conf_path()).unwrap();
    }

    /// The pid file the gateway writes.
    pub fn pid_file(&self) -> PathBuf {
        self.dir.path().join("gateway.pid")
    }

    /// The upgrade socket path.
    pub fn upgrade_sock(&self) -> PathBuf {
        self.dir.path().join("upgrade.sock")
    }

    /// Sends `sig` (e.g. `HUP`) to the gateway process.
    pub fn signal(&self, sig: &str) {
        signal_pid(self.child.id(), sig);
    }

    /// Waits for the process to exit; panics after `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "gateway did not exit within {within:?}:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts a second gateway with `-u` on the same configuration, pid file and
    /// upgrade socket: it takes the listeners over once the first gets SIGQUIT.
    pub fn spawn_upgrade(&self) -> Child {
        let log = std::fs::File::create(self.dir.path().join("stderr-new.log")).unwrap();
        Command::new(gateway_bin())
            .arg("-u")
            .arg("-c")
            .arg(self.conf_path())
            .env("GATEWAY_PID_FILE", self.pid_file())
            .env("GATEWAY_UPGRADE_SOCK", self.upgrade_sock())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn the new gateway")
    }
}

/// `kill -SIG pid`
pub fn signal_pid(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "kill -{sig} {pid} failed");
}

/// Steady keep-alive load: `clients` connections each sending requests back to
/// back, every `slow_every`-th one to `/slow/<slow_ms>`.
pub struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<LoadStats>>,
}

/// What a load run saw.
#[derive(Debug, Default)]
pub struct LoadStats {
    /// Requests answered 200.
    pub ok: usize,
    /// Requests that failed: a non-200 answer, or no answer at all.
    pub failed: Vec<String>,
}

impl Load {
    pub fn start(base: String, clients: usize, slow_every: usize, slow_ms: u64) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..clients)
            .map(|c| {
                let stop = stop.clone();
                let base = base.clone();
                tokio::spawn(async move {
                    let http = client();
                    let mut stats = LoadStats::default();
                    let mut i = 0usize;
                    while !stop.load(Ordering::SeqCst) {
                        i += 1;
                        let path = if slow_every > 0 && i % slow_every == 0 {
                            format!("/slow/{slow_ms}")
                        } else {
                            format!("/load/{c}/{i}")
                        };
                        match http.get(format!("{base}{path}")).send().await {
                            Ok(r) if r.status() == 200 => match r.bytes().await {
                                Ok(_) => stats.ok += 1,
                                Err(e) => stats.failed.push(format!("{path}: body: {e}")),
                            },
                            Ok(r) => stats.failed.push(format!("{path}: status {}", r.status())),
                            Err(e) => stats.failed.push(format!("{path}: {e:?}")),
                        }
                    }
                    stats
                })
            })
            .collect();
        Load { stop, tasks }
    }

    /// Stops sending and returns the totals once every in-flight request is done.
    pub async fn stop(self) -> LoadStats {
        self.stop.store(true, Ordering::SeqCst);
        let mut total = LoadStats::default();
        for t in self.tasks {
            let s = tokio::time::timeout(WAIT, t)
                .await
                .expect("load stopped in time")
                .unwrap();
            total.ok += s.ok;
            total.failed.extend(s.failed);
        }
        total
    }
}

/// Whether the external tool `name` is installed (an executable of that name
/// on `PATH`; some, like `pebble`, have no `--version`).
/// Missing: under CI (a non-empty `CI` variable, where `scripts/test` installs
/// every tool) the test fails; elsewhere it says it was skipped and the caller
/// returns early. The one place where a tool-dependent test decides that.
pub fn require_tool(name: &str) -> bool {
    require_tool_under(name, ci())
}

/// [`require_tool`], and `name version_arg` must succeed (`openssl version`):
/// the tool is installed and runs.
pub fn require_tool_with(name: &str, version_arg: &str) -> bool {
    let runs = || {
        Command::new(name)
            .arg(version_arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    tool_found(name, ci(), on_path(name) && runs())
}

/// [`require_tool`] with the CI decision made by the caller (for its own test).
pub fn require_tool_under(name: &str, ci: bool) -> bool {
    tool_found(name, ci, on_path(name))
}

fn ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
}

fn on_path(name: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|dir| {
        std::fs::metadata(dir.join(name))
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

fn tool_found(name: &str, ci: bool, found: bool) -> bool {
    if found {
        return true;
    }
    assert!(
        !ci,
        "{name} is not installed and CI is set: scripts/test installs it (as root with apt-get)"
    );
    eprintln!("{name} not installed: skipped (scripts/test installs it as root)");
    false
}
