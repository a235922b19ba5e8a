//! What a scenario runs: its own `redis-server`, the app (upstream-app or the
//! legacy Flask app), optionally the delaying proxy, and the gateway, each on
//! a free loopback port, and the faults done to them.
//!
//! Every process is started in its own process group and remembered by id;
//! [`Target`]'s `Drop` stops exactly those groups (never anything by name).
//! Logs go to files in the run's temporary directory.

use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::proxy::DelayProxy;

/// The three setups compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The Flask app alone.
    LegacyDirect,
    /// The Flask app behind the gateway.
    LegacyGateway,
    /// upstream-app behind the gateway.
    AppGateway,
}

impl Kind {
    /// All three, in the order scenarios run them.
    pub const ALL: [Kind; 3] = [Kind::LegacyDirect, Kind::LegacyGateway, Kind::AppGateway];

    /// The name in reports and `summary.json`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::LegacyDirect => "legacy-direct",
            Kind::LegacyGateway => "legacy-gateway",
            Kind::AppGateway => "app-gateway",
        }
    }

    fn legacy(self) -> bool {
        matches!(self, Kind::LegacyDirect | Kind::LegacyGateway)
    }

    fn gateway_conf(self) -> Option<&'static str> {
        match self {
            Kind::LegacyDirect => None,
            Kind::LegacyGateway => Some("loadtests/conf/legacy-gateway.yaml"),
            Kind::AppGateway => Some("loadtests/conf/app-gateway.yaml"),
        }
    }
}

/// Where things are.
#[derive(Debug, Clone)]
pub struct Paths {
    /// The workspace root.
    pub root: PathBuf,
    /// Directory with the `gateway` and `upstream-app` binaries.
    pub bin_dir: PathBuf,
}

/// A free loopback port (bound, read back, released).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Status of `GET path` on `addr`, within `timeout`.
pub async fn http_status(addr: SocketAddr, path: &str, timeout: Duration) -> Option<u16> {
    let get = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).await.ok()?;
        let line = std::str::from_utf8(&buf[..n]).ok()?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    tokio::time::timeout(timeout, get).await.ok().flatten()
}

/// Waits until `GET path` answers 2xx, at most `within`.
pub async fn wait_ready(addr: SocketAddr, path: &str, within: Duration, what: &str) -> Result<()> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(200..=299) = http_status(addr, path, Duration::from_secs(1)).await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{what} did not answer 2xx on http://{addr}{path} within {within:?}")
}

/// A started process: its own process group, the signal that stops it.
struct Proc {
    name: &'static str,
    child: Child,
    stop: i32,
}

impl Proc {
    fn signal(&self, sig: i32) {
        // The group of a process we started ourselves (process_group(0)).
        unsafe {
            libc::kill(-(self.child.id() as i32), sig);
        }
    }

    /// Signals the group and waits up to `within` for the leader to exit.
    fn stop_with(&mut self, sig: i32, within: Duration) -> bool {
        self.signal(sig);
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn stop(&mut self) {
        if !self.stop_with(self.stop, Duration::from_secs(5)) {
            self.stop_with(libc::SIGKILL, Duration::from_secs(2));
        }
        // Workers of a group whose leader is gone (gunicorn): make sure.
        self.signal(libc::SIGKILL);
    }
}

/// A target under test and everything it runs.
pub struct Target {
    /// Which setup.
    pub kind: Kind,
    /// Base URL the users hit.
    pub url: String,
    paths: Paths,
    dir: PathBuf,
    redis_port: u16,
    app_port: u16,
    gateway_port: u16,
    admin_port: u16,
    token: String,
    redis: Option<Proc>,
    app: Option<Proc>,
    gateway: Option<Proc>,
    /// Previous gateways still draining after an upgrade.
    old_gateways: Vec<Proc>,
    proxy: Option<DelayProxy>,
}

fn log_file(dir: &Path, name: &str) -> Result<(Stdio, Stdio)> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{name}.log")))?;
    Ok((Stdio::from(f.try_clone()?), Stdio::from(f)))
}

fn spawn(name: &'static str, mut cmd: Command, dir: &Path, stop: i32) -> Result<Proc> {
    let (out, err) = log_file(dir, name)?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {name} ({cmd:?})"))?;
    Ok(Proc { name, child, stop })
}

impl Target {
    /// Starts Redis, the app and (for the gateway kinds) the gateway, with the
    /// delaying proxy between gateway and app when `with_proxy`; waits until
    /// each is ready.
    pub async fn start(kind: Kind, paths: &Paths, with_proxy: bool) -> Result<Target> {
        let dir = std::env::temp_dir().join(format!(
            "loadtest-{}-{}-{}",
            kind.name(),
            std::process::id(),
            crate::record::now_ms()
        ));
        std::fs::create_dir_all(dir.join("redis"))?;
        let mut raw = [0u8; 16];
        for b in raw.iter_mut() {
            *b = rand::random();
        }
        let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let mut t = Target {
            kind,
            url: String::new(),
            paths: paths.clone(),
            dir,
            redis_port: free_port()?,
            app_port: free_port()?,
            gateway_port: free_port()?,
            admin_port: free_port()?,
            token,
            redis: None,
            app: None,
            gateway: None,
            old_gateways: Vec::new(),
            proxy: None,
        };
        t.start_redis().await?;
        t.start_app().await?;
        if kind.gateway_conf().is_some() {
            let app: SocketAddr = ([127, 0, 0, 1], t.app_port).into();
            let upstream = if with_proxy {
                let p = DelayProxy::start(app).await?;
                let a = p.addr;
                t.proxy = Some(p);
                a
            } else {
                app
            };
            let g = t.spawn_gateway(upstream, false)?;
            t.gateway = Some(g);
            wait_ready(
                ([127, 0, 0, 1], t.admin_port).into(),
                "/ready",
                Duration::from_secs(30),
                "the gateway",
            )
            .await?;
            t.url = format!("http://127.0.0.1:{}", t.gateway_port);
            // The first health checks mark the app up.
            wait_ready(
                ([127, 0, 0, 1], t.gateway_port).into(),
                "/",
                Duration::from_secs(30),
                "the app through the gateway",
            )
            .await?;
        } else {
            t.url = format!("http://127.0.0.1:{}", t.app_port);
        }
        Ok(t)
    }

    /// Where the logs of this target's processes are.
    pub fn log_dir(&self) -> &Path {
        &self.dir
    }

    /// Starts (or restarts) redis-server on its port; data persists in an
    /// append-only file, as on a server, so a restart keeps the accounts.
    pub async fn start_redis(&mut self) -> Result<()> {
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &self.redis_port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .args([
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
        ])
        .arg("--dir")
        .arg(self.dir.join("redis"));
        self.redis = Some(spawn("redis", cmd, &self.dir, libc::SIGTERM)?);
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.redis_port))
            .await
            .is_err()
        {
            if Instant::now() > deadline {
                bail!("redis-server did not listen on {}", self.redis_port);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Starts (or restarts) the app and waits for its health check.
    pub async fn start_app(&mut self) -> Result<()> {
        let redis_url = format!("redis://127.0.0.1:{}/0", self.redis_port);
        let p = if self.kind.legacy() {
            let mut cmd = Command::new(self.paths.root.join("loadtests/legacy-app/run"));
            cmd.env("PORT", self.app_port.to_string())
                .env("REDIS_URL", &redis_url)
                .env(
                    "WORKERS",
                    std::env::var("LEGACY_WORKERS").unwrap_or_else(|_| "4".into()),
                )
                .env(
                    "DB_DELAY_MS",
                    std::env::var("LEGACY_DB_DELAY_MS").unwrap_or_else(|_| "100".into()),
                );
            spawn("legacy-app", cmd, &self.dir, libc::SIGTERM)?
        } else {
            let mut cmd = Command::new(self.paths.bin_dir.join("upstream-app"));
            cmd.arg("-c")
                .arg(self.paths.root.join("conf/upstream-app.yaml"))
                .env("APP_REDIS__URL", &redis_url)
                .env("PORT", self.app_port.to_string())
                .env("RUST_LOG", "warn");
            spawn("upstream-app", cmd, &self.dir, libc::SIGTERM)?
        };
        self.app = Some(p);
        wait_ready(
            ([127, 0, 0, 1], self.app_port).into(),
            "/performance/health",
            Duration::from_secs(60),
            "the app",
        )
        .await
    }

    fn spawn_gateway(&self, upstream: SocketAddr, upgrade: bool) -> Result<Proc> {
        let conf = self
            .kind
            .gateway_conf()
            .ok_or_else(|| anyhow!("{} has no gateway", self.kind.name()))?;
        let mut cmd = Command::new(self.paths.bin_dir.join("gateway"));
        if upgrade {
            cmd.arg("-u");
        }
        cmd.arg("-c")
            .arg(self.paths.root.join(conf))
            .env("GATEWAY_LISTEN", format!("127.0.0.1:{}", self.gateway_port))
            .env(
                "GATEWAY_ADMIN__LISTEN",
                format!("127.0.0.1:{}", self.admin_port),
            )
            .env("GATEWAY_ADMIN__TOKEN", &self.token)
            .env("GATEWAY_PID_FILE", self.dir.join("gateway.pid"))
            .env("GATEWAY_UPGRADE_SOCK", self.dir.join("upgrade.sock"))
            .env(
                "GATEWAY_UPSTREAMS__APP__SERVERS",
                format!("[\"{upstream}\"]"),
            )
            .env("RUST_LOG", "warn");
        spawn("gateway", cmd, &self.dir, libc::SIGINT)
    }

    /// `app-kill`: SIGKILL to the app (its whole process group).
    pub fn kill_app(&mut self) {
        if let Some(mut p) = self.app.take() {
            p.stop_with(libc::SIGKILL, Duration::from_secs(5));
            p.signal(libc::SIGKILL);
        }
    }

    /// `redis-kill`: SIGKILL to redis-server.
    pub fn kill_redis(&mut self) {
        if let Some(mut p) = self.redis.take() {
            p.stop_with(libc::SIGKILL, Duration::from_secs(5));
        }
    }

    /// `app-slow`: the proxy makes the app `factor` times slower (1: normal).
    pub fn slow(&self, factor: u32) -> Result<()> {
        self.proxy
            .as_ref()
            .ok_or_else(|| anyhow!("no delaying proxy in this target"))?
            .set_factor(factor);
        Ok(())
    }

    /// `reload`: SIGHUP to the gateway.
    pub fn reload(&self) -> Result<()> {
        let g = self.gateway.as_ref().ok_or_else(|| anyhow!("no gateway"))?;
        unsafe {
            libc::kill(g.child.id() as i32, libc::SIGHUP);
        }
        Ok(())
    }

    /// `upgrade`: a new gateway process started with `-u` takes the listeners
    /// over from the running one on SIGQUIT; returns when the old one has exited
    /// (at most 30 s).
    pub async fn upgrade(&mut self) -> Result<()> {
        let upstream: SocketAddr = match &self.proxy {
            Some(p) => p.addr,
            None => ([127, 0, 0, 1], self.app_port).into(),
        };
        let sock = self.dir.join("upgrade.sock");
        let _ = std::fs::remove_file(&sock);
        let new = self.spawn_gateway(upstream, true)?;
        // The new process listens on the upgrade socket before the old one sends.
        let deadline = Instant::now() + Duration::from_secs(20);
        while !sock.exists() {
            if Instant::now() > deadline {
                bail!("the new gateway did not open {}", sock.display());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut old = self
            .gateway
            .replace(new)
            .ok_or_else(|| anyhow!("no gateway"))?;
        unsafe {
            libc::kill(old.child.id() as i32, libc::SIGQUIT);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = old.child.try_wait() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.old_gateways.push(old);
        bail!("the old gateway had not exited 30 s after SIGQUIT")
    }

    /// Whether every process that should run still runs (names of those that exited).
    pub fn exited(&mut self) -> Vec<&'static str> {
        let mut out = Vec::new();
        for p in [&mut self.redis, &mut self.app, &mut self.gateway]
            .into_iter()
            .flatten()
        {
            if let Ok(Some(_)) = p.child.try_wait() {
                out.push(p.name);
            }
        }
        out
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.proxy.take();
        let procs = [self.gateway.take(), self.app.take(), self.redis.take()];
        for mut p in procs
            .into_iter()
            .flatten()
            .chain(self.old_gateways.drain(..))
        {
            p.stop();
        }
        if std::env::var_os("KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("logs kept in {}", self.dir.display());
        }
    }
}
