//! The Redis pool (bb8) and bounded Redis calls.

use std::time::Duration;

use bb8::Pool;
use bb8_redis::RedisConnectionManager;

use crate::config::Redis;
use crate::error::AppError;

/// The pool plus the per-command deadline.
#[derive(Clone)]
pub struct Db {
    pool: Pool<RedisConnectionManager>,
    command_timeout: Duration,
}

impl Db {
    /// Builds the pool without connecting: the app starts even when Redis is down,
    /// and serves again as soon as Redis is back.
    pub fn new(cfg: &Redis) -> Result<Db, redis::RedisError> {
        let manager = RedisConnectionManager::new(cfg.url.as_str())?;
        let pool = Pool::builder()
            .max_size(cfg.max_size)
            .min_idle(cfg.min_idle)
            .connection_timeout(cfg.connection_timeout)
            .build_unchecked(manager);
        Ok(Db {
            pool,
            command_timeout: cfg.command_timeout,
        })
    }

    /// `PING` under the command deadline.
    pub async fn ping(&self) -> Result<(), AppError> {
        let mut conn = self
            .pool
            .get()
            .await
            .map_err(|_| AppError::DatabaseUnavailable)?;
        let cmd = redis::cmd("PING");
        let fut = cmd.query_async::<String>(&mut *conn);
        match tokio::time::timeout(self.command_timeout, fut).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(AppError::DatabaseUnavailable),
        }
    }

    /// Pool state: (connections, idle).
    pub fn pool_state(&self) -> (u32, u32) {
        let s = self.pool.state();
        (s.connections, s.idle_connections)
    }
}
