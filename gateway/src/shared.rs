//! Redis shared by several gateway instances (`shared.redis`): the client
//! the second cache tier ([`crate::cache::shared`]), the purge fan-out and the
//! shared rate limits ([`crate::ratelimit`]) go through.
//!
//! Redis is never an outage. Every call is bounded by `timeout` (pool
//! checkout, connect and TLS handshake included); a failed or late call is
//! "no answer" and the caller carries on with memory and the origin. After
//! `consecutive_failures` failures in a row a breaker (the upstream servers'
//! [`CircuitBreaker`]) skips Redis for a backoff that starts at 1 s and
//! doubles up to `open_for` while probes fail; the first call that succeeds
//! closes it, so the tier comes back without a restart. The state shows in
//! `/stats` (`shared_redis`) and `/metrics` (`gateway_shared_redis_*`).
//!
//! The pool is bb8 over redis-rs multiplexed connections, with a manager of
//! our own rather than bb8-redis's: it takes a client built with a custom CA
//! (`ca_file`, for `rediss://`), and it drops a connection whose command
//! failed on I/O (bb8-redis never reports one broken, and checking each
//! checkout with a PING would double every call).
//!
//! Keys all start with one hash tag, `{<key_prefix>}:`, so that the scripts
//! that read an entry and its generations together stay in one slot when
//! Redis Cluster support comes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use futures::StreamExt;
use pingora::server::ShutdownWatch;
use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, ErrorKind, FromRedisValue, IntoConnectionInfo, RedisError, RedisResult,
};

use crate::breaker::CircuitBreaker;
use crate::config;
use crate::metrics;

/// One pooled connection, with the verdict of its last command.
pub struct Conn {
    inner: MultiplexedConnection,
    broken: bool,
}

/// Opens connections for the pool.
pub struct Manager {
    client: redis::Client,
    config: AsyncConnectionConfig,
}

impl bb8::ManageConnection for Manager {
    type Connection = Conn;
    type Error = RedisError;

    async fn connect(&self) -> Result<Conn, RedisError> {
        let inner = self
            .client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?;
        Ok(Conn {
            inner,
            broken: false,
        })
    }

    async fn is_valid(&self, conn: &mut Conn) -> Result<(), RedisError> {
        redis::cmd("PING").query_async(&mut conn.inner).await
    }

    fn has_broken(&self, conn: &mut Conn) -> bool {
        conn.broken
    }
}

/// One request to Redis (run again on another connection if the first is dead).
#[derive(Clone, Copy)]
pub enum Request<'a> {
    /// A command.
    Cmd(&'a redis::Cmd),
    /// A pipeline.
    Pipe(&'a redis::Pipeline),
    /// A Lua script with its keys and arguments (EVALSHA, loaded on NOSCRIPT).
    Script(&'a redis::ScriptInvocation<'a>),
}

/// The process's shared Redis.
pub struct Redis {
    pool: bb8::Pool<Manager>,
    client: redis::Client,
    timeout: Duration,
    breaker: CircuitBreaker,
    breaker_settings: config::Breaker,
    /// `{<key_prefix>}:`
    prefix: String,
    /// A random id of this process: its own channel messages are skipped.
    instance: String,
    /// Whether [`Redis::listen`] runs (only with the cache tier on).
    listening: AtomicBool,
    channel_up: AtomicBool,
}

static CONFIG: OnceLock<config::Redis> = OnceLock::new();
static REDIS: OnceLock<Option<Redis>> = OnceLock::new();

/// Records the configuration at start (`shared.redis` needs a restart to
/// change); the pool itself is built on first use, inside a runtime (after a
/// daemon fork).
pub fn configure(redis: Option<&config::Redis>) {
    if let Some(r) = redis {
        let _ = CONFIG.set(r.clone());
    }
}

/// The shared Redis, when configured (built on first call).
pub fn get() -> Option<&'static Redis> {
    REDIS
        .get_or_init(|| {
            let cfg = CONFIG.get()?;
            match Redis::build(cfg) {
                Ok(r) => Some(r),
                Err(e) => {
                    // Validation checked the URL: not expected; run without it.
                    tracing::error!("shared.redis: cannot build the client: {e}");
                    None
                }
            }
        })
        .as_ref()
}

/// Whether `shared.redis` is configured (without building anything).
pub fn configured() -> bool {
    CONFIG.get().is_some()
}

impl Redis {
    fn build(cfg: &config::Redis) -> RedisResult<Redis> {
        pingora::tls::install_default_crypto_provider();
        let mut info = cfg.url.as_str().into_connection_info()?;
        if let Some(p) = &cfg.password {
            info.redis.password = Some(p.clone());
        }
        let client = match &cfg.ca_pem {
            Some(pem) => redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.clone()),
                },
            )?,
            None => redis::Client::open(info)?,
        };
        let manager = Manager {
            client: client.clone(),
            config: AsyncConnectionConfig::new()
                .set_connection_timeout(cfg.timeout)
                .set_response_timeout(cfg.timeout),
        };
        let pool = bb8::Pool::builder()
            .max_size(cfg.pool_size)
            .connection_timeout(cfg.timeout)
            .test_on_check_out(false)
            .idle_timeout(None)
            .max_lifetime(None)
            .build_unchecked(manager);
        Ok(Redis {
            pool,
            client,
            timeout: cfg.timeout,
            breaker: CircuitBreaker::default(),
            breaker_settings: cfg.breaker,
            prefix: format!("{{{}}}:", cfg.key_prefix),
            instance: uuid::Uuid::new_v4().simple().to_string(),
            listening: AtomicBool::new(false),
            channel_up: AtomicBool::new(false),
        })
    }

    /// `{prefix}:<rest>`: every key of the gateway.
    pub fn key(&self, rest: &str) -> String {
        let mut k = String::with_capacity(self.prefix.len() + rest.len());
        k.push_str(&self.prefix);
        k.push_str(rest);
        k
    }

    /// The key prefix with its hash tag (`{gw}:`), for scripts that build keys.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// This process's id on the channel.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The bound on every call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Runs `req` on a pooled connection within `timeout`, through the
    /// breaker; `None` when it was skipped (breaker open), failed or came too
    /// late. `op` labels the metric. A connection that fails on I/O is
    /// dropped and the request tried on another one, within the same
    /// deadline: after Redis restarts, every idle connection of the pool is
    /// dead, and each would otherwise cost the breaker a failed probe.
    pub async fn run<T: FromRedisValue>(&self, op: &'static str, req: Request<'_>) -> Option<T> {
        if !self.breaker.allows(Instant::now()) {
            metrics::shared_call(op, "skipped");
            return None;
        }
        let work = async {
            let mut attempts = self.pool.state().connections + 1;
            loop {
                let mut conn = self.pool.get().await.map_err(|e| match e {
                    bb8::RunError::User(e) => e,
                    bb8::RunError::TimedOut => {
                        RedisError::from((ErrorKind::IoError, "pool checkout timed out"))
                    }
                })?;
                let c = &mut conn.inner;
                let result = match req {
                    Request::Cmd(cmd) => cmd.query_async(c).await,
                    Request::Pipe(pipe) => pipe.query_async(c).await,
                    Request::Script(inv) => inv.invoke_async(c).await,
                };
                match result {
                    Err(e) if e.is_io_error() || e.is_connection_dropped() => {
                        conn.broken = true;
                        attempts -= 1;
                        if attempts == 0 {
                            return Err(e);
                        }
                    }
                    Err(e) if e.is_unrecoverable_error() => {
                        conn.broken = true;
                        return Err(e);
                    }
                    other => return other,
                }
            }
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(Ok(v)) => {
                self.breaker.success(&self.breaker_settings, Instant::now());
                metrics::shared_call(op, "ok");
                Some(v)
            }
            Ok(Err(e))
                if e.kind() == ErrorKind::ResponseError || e.kind() == ErrorKind::TypeError =>
            {
                // Redis answered: it is up; the command itself was refused.
                self.breaker.success(&self.breaker_settings, Instant::now());
                metrics::shared_call(op, "error");
                tracing::warn!(op, "shared redis refused a command: {e}");
                None
            }
            Ok(Err(e)) => {
                self.breaker.failure(&self.breaker_settings, Instant::now());
                metrics::shared_call(op, "error");
                tracing::debug!(op, "shared redis call failed: {e}");
                None
            }
            Err(_) => {
                self.breaker.failure(&self.breaker_settings, Instant::now());
                metrics::shared_call(op, "timeout");
                None
            }
        }
    }

    /// `PUBLISH` on the purge channel, with this instance's id.
    pub async fn publish(&self, payload: String) -> bool {
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(self.key("purge")).arg(payload);
        self.run::<i64>("publish", Request::Cmd(&cmd))
            .await
            .is_some()
    }

    /// Breaker state: `closed`, `open` or `half_open`.
    pub fn state(&self) -> &'static str {
        self.breaker.state(Instant::now()).as_str()
    }

    /// Whether this instance is subscribed to the purge channel now; `None`
    /// when it does not listen (the cache tier is off).
    pub fn channel_up(&self) -> Option<bool> {
        self.listening
            .load(Ordering::Acquire)
            .then(|| self.channel_up.load(Ordering::Acquire))
    }

    /// `/stats` view.
    pub fn status(&self) -> serde_json::Value {
        let pool = self.pool.state();
        serde_json::json!({
            "state": self.state(),
            "retry_in_ms": self.breaker.retry_in(Instant::now()).as_millis() as u64,
            "channel": match self.channel_up() {
                Some(true) => "up",
                Some(false) => "down",
                None => "off",
            },
            "connections": pool.connections,
            "idle_connections": pool.idle_connections,
        })
    }

    /// Subscribes to the purge channel and hands every other instance's
    /// message to `on_message`, until `shutdown`. When the subscription is
    /// (re)established after it was down (or at first), `on_resync` runs
    /// first: purges published meanwhile were missed. Reconnects with a
    /// backoff (250 ms doubling to 5 s).
    pub async fn listen(
        &self,
        on_message: impl Fn(&[u8]),
        on_resync: impl Fn(),
        mut shutdown: ShutdownWatch,
    ) {
        self.listening.store(true, Ordering::Release);
        let channel = self.key("purge");
        let mut backoff = Duration::from_millis(250);
        // Subscribing may take a TLS handshake: off the request path, so a
        // looser bound than `timeout`.
        let bound = self.timeout.max(Duration::from_secs(1));
        loop {
            let subscribed = tokio::time::timeout(bound, async {
                let mut ps = self.client.get_async_pubsub().await?;
                ps.subscribe(&channel).await?;
                RedisResult::Ok(ps)
            })
            .await;
            match subscribed {
                Ok(Ok(ps)) => {
                    on_resync();
                    self.channel_up.store(true, Ordering::Release);
                    tracing::info!("shared redis: subscribed to the purge channel");
                    backoff = Duration::from_millis(250);
                    let mut stream = ps.into_on_message();
                    loop {
                        tokio::select! {
                            msg = stream.next() => match msg {
                                Some(m) => on_message(m.get_payload_bytes()),
                                None => break,
                            },
                            _ = shutdown.changed() => return,
                        }
                    }
                    self.channel_up.store(false, Ordering::Release);
                    tracing::warn!("shared redis: purge channel lost; reconnecting");
                }
                Ok(Err(e)) => tracing::debug!("shared redis: cannot subscribe: {e}"),
                Err(_) => tracing::debug!("shared redis: subscribing timed out"),
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.changed() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

/// Hex of `bytes` (hash keys in Redis key names).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}
