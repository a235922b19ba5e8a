//! The Redis pool (bb8) and bounded Redis calls: every call gets a pooled
//! connection within `redis.connection_timeout` and an answer within
//! `redis.command_timeout`, or fails with [`AppError::DatabaseUnavailable`].

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicU64, Ordering};

use bb8::{ManageConnection, Pool, PooledConnection};
use bb8_redis::RedisConnectionManager;
use redis::aio::MultiplexedConnection;

use crate::config::Redis;
use crate::error::AppError;
use crate::metrics;

/// A connection checked out of the pool.
pub type Conn<'a> = PooledConnection<'a, Manager>;

/// A pooled Redis connection and the pool generation it belongs to.
pub struct RedisConn {
    /// The connection (multiplexed: one socket, pipelined commands).
    pub conn: MultiplexedConnection,
    generation: u64,
}

/// bb8-redis's manager, plus cheap detection of dead connections: when a
/// command fails at the connection level (Redis restarted, socket gone), the
/// pool generation moves on and every older connection is replaced on its next
/// checkout, without a PING per checkout.
pub struct Manager {
    inner: RedisConnectionManager,
    generation: Arc<AtomicU64>,
}

impl ManageConnection for Manager {
    type Connection = RedisConn;
    type Error = redis::RedisError;

    async fn connect(&self) -> Result<RedisConn, redis::RedisError> {
        let generation = self.generation.load(Ordering::Acquire);
        Ok(RedisConn {
            conn: self.inner.connect().await?,
            generation,
        })
    }

    async fn is_valid(&self, conn: &mut RedisConn) -> Result<(), redis::RedisError> {
        if self.has_broken(conn) {
            Err(redis::RedisError::from((
                redis::ErrorKind::IoError,
                "connection of an older generation",
            )))
        } else {
            Ok(())
        }
    }

    fn has_broken(&self, conn: &mut RedisConn) -> bool {
        conn.generation != self.generation.load(Ordering::Acquire)
    }
}

/// The pool plus the per-command deadline.
#[derive(Clone)]
pub struct Db {
    pool: Pool<Manager>,
    generation: Arc<AtomicU64>,
    command_timeout: Duration,
    max_size: u32,
    waiters: Arc<std::sync::atomic::AtomicI64>,
}

impl Db {
    /// Builds the pool without connecting: the app starts even when Redis is down,
    /// and serves again as soon as Redis is back.
    pub fn new(cfg: &Redis) -> Result<Db, redis::RedisError> {
        let generation = Arc::new(AtomicU64::new(0));
        let manager = Manager {
            inner: RedisConnectionManager::new(cfg.url.as_str())?,
            generation: generation.clone(),
        };
        let pool = Pool::builder()
            .max_size(cfg.max_size)
            .min_idle(cfg.min_idle)
            .connection_timeout(cfg.connection_timeout)
            // The check on checkout is the generation compare above: no I/O.
            .test_on_check_out(true)
            .build_unchecked(manager);
        Ok(Db {
            pool,
            generation,
            command_timeout: cfg.command_timeout,
            max_size: cfg.max_size,
            waiters: Arc::default(),
        })
    }

    /// A pooled connection, waiting at most `redis.connection_timeout`.
    pub async fn conn(&self) -> Result<Conn<'_>, AppError> {
        let started = Instant::now();
        self.waiters.fetch_add(1, Ordering::Relaxed);
        let got = self.pool.get().await;
        self.waiters.fetch_sub(1, Ordering::Relaxed);
        metrics::pool_wait(started.elapsed());
        got.map_err(|e| {
            metrics::pool_error(match e {
                bb8::RunError::TimedOut => "timeout",
                bb8::RunError::User(_) => "connect",
            });
            AppError::DatabaseUnavailable
        })
    }

    /// Runs `f` on a pooled connection under the command deadline.
    pub async fn run<'a, T, F, Fut>(&'a self, f: F) -> Result<T, AppError>
    where
        F: FnOnce(Conn<'a>) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>> + 'a,
    {
        let conn = self.conn().await?;
        match tokio::time::timeout(self.command_timeout, f(conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "redis command failed");
                if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
                    self.generation.fetch_add(1, Ordering::AcqRel);
                }
                metrics::pool_error("command");
                Err(AppError::DatabaseUnavailable)
            }
            Err(_) => {
                // A hung server: start over with fresh connections.
                self.generation.fetch_add(1, Ordering::AcqRel);
                metrics::pool_error("command_timeout");
                Err(AppError::DatabaseUnavailable)
            }
        }
    }

    /// `PING` under the deadlines.
    pub async fn ping(&self) -> Result<(), AppError> {
        self.run(|mut c| async move { redis::cmd("PING").query_async::<String>(&mut c.conn).await })
            .await
            .map(|_| ())
    }

    /// Pool figures for metrics.
    pub fn pool_state(&self) -> PoolState {
        let s = self.pool.state();
        PoolState {
            max_size: self.max_size,
            connections: s.connections,
            idle: s.idle_connections,
            in_use: s.connections.saturating_sub(s.idle_connections),
            waiters: self.waiters.load(Ordering::Relaxed).max(0) as u64,
        }
    }
}

/// Pool figures.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct PoolState {
    /// Configured maximum.
    pub max_size: u32,
    /// Open connections.
    pub connections: u32,
    /// Idle connections.
    pub idle: u32,
    /// Checked-out connections.
    pub in_use: u32,
    /// Requests waiting for a connection.
    pub waiters: u64,
}
