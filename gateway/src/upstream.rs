//! Upstream server pools: selection of a server and the peer options Pingora uses
//! to reach it (timeouts, keep-alive).

use std::sync::Arc;

use pingora::lb::{selection::RoundRobin, LoadBalancer};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType};

use crate::config::Upstream;
use crate::error::NO_SERVER;

/// The running side of one configured upstream.
pub struct UpstreamPool {
    /// The configuration it was built from.
    pub config: Upstream,
    balancer: LoadBalancer<RoundRobin>,
}

impl UpstreamPool {
    /// Builds the pool from already-resolved servers (nothing here blocks or resolves).
    pub fn new(config: Upstream) -> Arc<Self> {
        let addrs: Vec<_> = config.servers.iter().map(|s| s.addr).collect();
        let balancer = LoadBalancer::try_from_iter(addrs)
            .expect("socket addresses need no resolution and cannot fail");
        Arc::new(Self { config, balancer })
    }

    /// The upstream's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// How many distinct servers the pool has.
    pub fn server_count(&self) -> usize {
        self.config.servers.len()
    }

    /// Next server in round-robin order, as a peer with this upstream's timeouts.
    pub fn select(&self) -> pingora::Result<Box<HttpPeer>> {
        let backend = self.balancer.select(b"", 256).ok_or_else(|| {
            Error::explain(ErrorType::Custom(NO_SERVER), self.config.name.clone())
        })?;
        let mut peer = HttpPeer::new(backend.addr, false, String::new());
        let o = &mut peer.options;
        o.connection_timeout = Some(self.config.connect_timeout);
        o.read_timeout = Some(self.config.read_timeout);
        o.write_timeout = Some(self.config.read_timeout);
        o.idle_timeout = Some(self.config.idle_timeout);
        Ok(Box::new(peer))
    }
}
