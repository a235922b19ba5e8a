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
    /// Redis connection and pool.
    pub redis: RawRedis,
}

impl Default for RawConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:5000".into(),
            redis: RawRedis::default(),
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
            url: "redis://127.0.0.1:6379/0".into(),
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
    /// Redis settings.
    pub redis: Redis,
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
        .merge(Env::prefixed("APP_").split("__"));
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
    let r = raw.redis;
    let bad = |key: &str, msg: &str| ConfigError(format!("{file}: redis.{key}: {msg}"));
    if redis::parse_redis_url(&r.url).is_none() {
        return Err(bad(
            "url",
            "must be a redis:// URL, e.g. redis://127.0.0.1:6379/0",
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
    Ok(Config {
        listen,
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
}
