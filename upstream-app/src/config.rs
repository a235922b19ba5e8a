//! Configuration: `conf/upstream-app.yaml` (or `-c FILE`) → figment (file, then
//! `APP_*` env with `__` nesting, then `PORT`) → [`RawConfig`] → [`Config`].

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Yaml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// The file's shape.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawConfig {
    /// Listen address, IP:port. `PORT` overrides the port.
    pub listen: String,
    /// Largest request body accepted (413 beyond): `64KiB`, `1MiB` or bytes.
    #[serde(deserialize_with = "size", serialize_with = "serialize_size")]
    pub max_body_size: usize,
    /// Redis connection and pool.
    pub redis: RawRedis,
    /// Sessions and password hashing.
    pub auth: RawAuth,
    /// Item routes.
    pub items: RawItems,
    /// Background job queue.
    pub jobs: RawJobs,
}

impl Default for RawConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:5000".into(),
            max_body_size: 64 * 1024,
            redis: RawRedis::default(),
            auth: RawAuth::default(),
            items: RawItems::default(),
            jobs: RawJobs::default(),
        }
    }
}

fn size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Bytes(usize),
        Text(String),
    }
    match Repr::deserialize(d)? {
        Repr::Bytes(n) => Ok(n),
        Repr::Text(s) => s
            .trim()
            .parse::<bytesize::ByteSize>()
            .map(|b| b.as_u64() as usize)
            .map_err(|_| {
                serde::de::Error::custom(format!(
                    "invalid size {s:?}: expected e.g. 64KiB, 1MiB or bytes"
                ))
            }),
    }
}

fn serialize_size<S: serde::Serializer>(v: &usize, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(*v as u64)
}

/// `auth:`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawAuth {
    /// Lifetime of a login token.
    #[serde(with = "humantime_serde")]
    pub token_ttl: Duration,
    /// Password hashes computed at the same time at most (each takes a blocking thread).
    pub hash_concurrency: usize,
    /// Longest wait for a hashing slot before 503.
    #[serde(with = "humantime_serde")]
    pub hash_wait: Duration,
    /// Argon2id memory cost in KiB.
    pub argon2_memory_kib: u32,
    /// Argon2id iterations.
    pub argon2_iterations: u32,
}

impl Default for RawAuth {
    fn default() -> Self {
        Self {
            token_ttl: Duration::from_secs(3600),
            hash_concurrency: 2,
            hash_wait: Duration::from_secs(5),
            argon2_memory_kib: 19 * 1024,
            argon2_iterations: 2,
        }
    }
}

/// `items:`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawItems {
    /// `max-age` of public item responses.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Page size when `limit` is not given.
    pub default_limit: usize,
    /// Largest `limit` accepted.
    pub max_limit: usize,
}

impl Default for RawItems {
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(30),
            default_limit: 20,
            max_limit: 100,
        }
    }
}

/// `jobs:`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawJobs {
    /// Worker tasks draining the queue.
    pub workers: usize,
    /// Jobs waiting at most (503 + Retry-After beyond).
    pub queue_size: usize,
    /// How long a finished job's result is kept.
    #[serde(with = "humantime_serde")]
    pub result_ttl: Duration,
}

impl Default for RawJobs {
    fn default() -> Self {
        Self {
            workers: 2,
            queue_size: 100,
            result_ttl: Duration::from_secs(3600),
        }
    }
}

/// `redis:`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawRedis {
    /// `redis://host:port/db`.
    pub url: String,
    /// Connections in the pool at most.
    pub max_size: u32,
    /// Idle connections kept ready.
    pub min_idle: Option<u32>,
    /// Longest wait for a pooled connection (also the connect deadline).
    #[serde(with = "humantime_serde")]
    pub connection_timeout: Duration,
    /// Deadline of every Redis command.
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
}

impl Default for RawRedis {
    fn default() -> Self {
        Self {
            // scripts/stack's own Redis, never a system one on 6379.
            url: "redis://127.0.0.1:6380/0".into(),
            max_size: 50,
            min_idle: None,
            connection_timeout: Duration::from_secs(1),
            command_timeout: Duration::from_secs(1),
        }
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listen address.
    pub listen: SocketAddr,
    /// Largest request body.
    pub max_body_size: usize,
    /// Redis settings.
    pub redis: Redis,
    /// Auth settings (checked).
    pub auth: RawAuth,
    /// Item settings (checked).
    pub items: RawItems,
    /// Job settings (checked).
    pub jobs: RawJobs,
}

/// Validated `redis:`.
#[derive(Debug, Clone)]
pub struct Redis {
    /// Parsed connection info.
    pub url: String,
    /// Pool size.
    pub max_size: u32,
    /// Idle connections kept.
    pub min_idle: Option<u32>,
    /// Pool wait / connect deadline.
    pub connection_timeout: Duration,
    /// Command deadline.
    pub command_timeout: Duration,
}

/// Why a configuration was refused; the message names the file and key.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Loads `path`, then `APP_*` and `PORT` from the environment, and validates.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    std::fs::metadata(path).map_err(|e| {
        ConfigError(format!(
            "{}: cannot read the configuration file: {e}",
            path.display()
        ))
    })?;
    let mut fig = Figment::new()
        .merge(Yaml::file_exact(path))
        .merge(env_provider());
    let file = path.display().to_string();
    if let Ok(port) = std::env::var("PORT") {
        let port: u16 = port.parse().map_err(|_| {
            ConfigError(format!(
                "environment variable PORT: {port:?} is not a port number"
            ))
        })?;
        let listen: RawConfig = extract(&fig, &file)?;
        let mut addr: SocketAddr = parse_listen(&listen.listen, &file)?;
        addr.set_port(port);
        fig = fig.merge(Serialized::default("listen", addr.to_string()));
    }
    validate(extract(&fig, &file)?, &file)
}

/// `APP_*` variables: `__` nests (`APP_REDIS__URL`), and `APP_REDIS_<KEY>`,
/// `APP_AUTH_<KEY>`, `APP_ITEMS_<KEY>`, `APP_JOBS_<KEY>` address a block's key
/// too (`APP_REDIS_URL`).
fn env_provider() -> Env {
    Env::prefixed("APP_").map(|key| {
        let k = key.as_str().to_ascii_lowercase().replace("__", ".");
        for block in ["redis_", "auth_", "items_", "jobs_"] {
            if let Some(rest) = k.strip_prefix(block) {
                return format!("{}.{rest}", &block[..block.len() - 1]).into();
            }
        }
        k.into()
    })
}

/// Builds a config from YAML text only (no environment): the seam tests use.
pub fn from_yaml_str(yaml: &str) -> Result<Config, ConfigError> {
    let fig = Figment::from(Yaml::string(yaml));
    validate(extract(&fig, "<yaml>")?, "<yaml>")
}

fn extract(fig: &Figment, file: &str) -> Result<RawConfig, ConfigError> {
    fig.extract().map_err(|e| {
        let lines: Vec<String> = e
            .into_iter()
            .map(|e| {
                let source = match &e.metadata {
                    Some(md) if md.name.contains("environment") => {
                        format!(
                            "environment variable APP_{}",
                            e.path.join("__").to_uppercase()
                        )
                    }
                    _ => file.to_owned(),
                };
                if e.path.is_empty() {
                    format!("{source}: {}", e.kind)
                } else {
                    format!("{source}: {}: {}", e.path.join("."), e.kind)
                }
            })
            .collect();
        ConfigError(lines.join("\n"))
    })
}

fn parse_listen(s: &str, file: &str) -> Result<SocketAddr, ConfigError> {
    s.parse().map_err(|_| {
        ConfigError(format!(
            "{file}: listen: {s:?} is not an IP:port address (e.g. 127.0.0.1:5000)"
        ))
    })
}

fn validate(raw: RawConfig, file: &str) -> Result<Config, ConfigError> {
    let listen = parse_listen(&raw.listen, file)?;
    let r = raw.redis.clone();
    let bad = |key: &str, msg: &str| ConfigError(format!("{file}: redis.{key}: {msg}"));
    if redis::parse_redis_url(&r.url).is_none() {
        return Err(bad(
            "url",
            "must be a redis:// URL, e.g. redis://127.0.0.1:6380/0",
        ));
    }
    if r.max_size == 0 {
        return Err(bad("max_size", "must be > 0"));
    }
    if r.min_idle.is_some_and(|m| m > r.max_size) {
        return Err(bad("min_idle", "must be at most redis.max_size"));
    }
    if r.connection_timeout.is_zero() {
        return Err(bad("connection_timeout", "must be > 0"));
    }
    if r.command_timeout.is_zero() {
        return Err(bad("command_timeout", "must be > 0"));
    }
    let bad_at = |key: &str, msg: &str| ConfigError(format!("{file}: {key}: {msg}"));
    if raw.max_body_size == 0 {
        return Err(bad_at("max_body_size", "must be > 0"));
    }
    let a = &raw.auth;
    if a.token_ttl.is_zero() {
        return Err(bad_at("auth.token_ttl", "must be > 0"));
    }
    if a.hash_concurrency == 0 {
        return Err(bad_at("auth.hash_concurrency", "must be > 0"));
    }
    if a.argon2_memory_kib < 8 || a.argon2_iterations == 0 {
        return Err(bad_at(
            "auth.argon2_memory_kib",
            "argon2 needs at least 8 KiB and 1 iteration",
        ));
    }
    let i = &raw.items;
    if i.default_limit == 0 || i.default_limit > i.max_limit {
        return Err(bad_at(
            "items.default_limit",
            "must be between 1 and items.max_limit",
        ));
    }
    let j = &raw.jobs;
    if j.workers == 0 {
        return Err(bad_at("jobs.workers", "must be > 0"));
    }
    if j.queue_size == 0 {
        return Err(bad_at("jobs.queue_size", "must be > 0"));
    }
    Ok(Config {
        listen,
        max_body_size: raw.max_body_size,
        auth: raw.auth,
        items: raw.items,
        jobs: raw.jobs,
        redis: Redis {
            url: r.url,
            max_size: r.max_size,
            min_idle: r.min_idle,
            connection_timeout: r.connection_timeout,
            command_timeout: r.command_timeout,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors() {
        let c = from_yaml_str("{}").unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:5000");
        assert_eq!(c.redis.max_size, 50);
        let e = from_yaml_str("redis: { max_size: 0 }")
            .unwrap_err()
            .to_string();
        assert_eq!(e, "<yaml>: redis.max_size: must be > 0");
        let e = from_yaml_str("redis: { pool: 3 }").unwrap_err().to_string();
        assert!(e.starts_with("<yaml>: redis.pool: unknown field"), "{e}");
        let e = from_yaml_str("redis: { url: http://x }")
            .unwrap_err()
            .to_string();
        assert!(e.contains("redis.url: must be a redis:// URL"), "{e}");
    }

    /// Following the README must never write into a Redis the machine already
    /// runs on the standard port: both the built-in default and the shipped
    /// file use 6380, the stack's own Redis.
    #[test]
    fn the_default_and_the_shipped_file_use_the_stacks_redis() {
        let c = from_yaml_str("{}").unwrap();
        assert_eq!(c.redis.url, "redis://127.0.0.1:6380/0");
        let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/../conf/upstream-app.yaml");
        let c = from_yaml_str(&std::fs::read_to_string(shipped).unwrap()).unwrap();
        assert_eq!(c.redis.url, "redis://127.0.0.1:6380/0");
    }
}
