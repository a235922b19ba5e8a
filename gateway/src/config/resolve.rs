//! Resolution: what validation needs from outside the file (DNS for server
//! names, secret files, the memory the process may use), behind one trait so
//! that validation itself stays pure and is tested with a fake.

use std::net::{SocketAddr, ToSocketAddrs};

/// What validation asks of the world.
pub trait Resolve {
    /// Every address `host:port` names (like nginx's `server` lines).
    fn addresses(&self, spec: &str) -> Result<Vec<SocketAddr>, String>;
    /// The contents of a secret file (the admin token).
    fn read_secret(&self, path: &str) -> std::io::Result<String>;
    /// The memory this process may use, in bytes.
    fn memory_limit(&self) -> Option<u64>;
    /// The contents of a file the configuration names (TLS certificates and keys).
    fn read_file(&self, path: &str) -> std::io::Result<Vec<u8>>;
}

/// The running system: DNS, the file system, cgroups and `/proc/meminfo`.
#[derive(Debug, Clone, Copy, Default)]
pub struct System;

impl Resolve for System {
    fn addresses(&self, spec: &str) -> Result<Vec<SocketAddr>, String> {
        resolve(spec)
    }
    fn read_secret(&self, path: &str) -> std::io::Result<String> {
        std::fs::read_to_string(path)
    }
    fn memory_limit(&self) -> Option<u64> {
        memory_limit()
    }
    fn read_file(&self, path: &str) -> std::io::Result<Vec<u8>> {
        std::fs::read(path)
    }
}

/// `cache.max_size: auto`: a quarter of `memory` (the process's cgroup limit,
/// v2 `memory.max` or v1 `memory.limit_in_bytes`, when there is one, else the
/// machine's `MemTotal`); 64 MiB when neither is known.
pub fn auto_cache_size(memory: Option<u64>) -> u64 {
    memory.map_or(64 << 20, |m| m / 4)
}

/// The memory this process may use, in bytes.
pub fn memory_limit() -> Option<u64> {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let cgroup = read("/sys/fs/cgroup/memory.max")
        .or_else(|| read("/sys/fs/cgroup/memory/memory.limit_in_bytes"))
        .and_then(|s| s.trim().parse::<u64>().ok());
    let total = read("/proc/meminfo").and_then(|m| {
        let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    });
    // An unlimited cgroup reads "max" (v2) or a huge number (v1).
    match (cgroup, total) {
        (Some(c), Some(t)) => Some(c.min(t)),
        (c, t) => c.or(t),
    }
}

/// Resolves `host:port` to every address it names (like nginx's `server` lines).
fn resolve(spec: &str) -> Result<Vec<SocketAddr>, String> {
    if let Ok(a) = spec.parse::<SocketAddr>() {
        return Ok(vec![a]);
    }
    let Some((host, port)) = spec.rsplit_once(':') else {
        return Err(format!("{spec:?} is not host:port"));
    };
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(format!("{spec:?} is not host:port"));
    }
    match spec.to_socket_addrs() {
        Ok(it) => {
            let v: Vec<_> = it.collect();
            if v.is_empty() {
                Err(format!("{spec:?} resolves to no address"))
            } else {
                Ok(v)
            }
        }
        Err(e) => Err(format!("cannot resolve {spec:?}: {e}")),
    }
}
