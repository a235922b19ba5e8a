//! HTTPS to clients: the rustls acceptors of the `tls.listen` listeners.
//!
//! The handshake runs in [`crate::client::GuardedApp`] (after the connection
//! cap, under `tls.handshake_timeout`), not in Pingora's listener, so that the
//! certificate, the lowest version and the deadline all come from the current
//! configuration snapshot: the certificate resolver reads the snapshot on each
//! handshake, so a SIGHUP that loads new certificates swaps them for the next
//! handshake while established connections keep theirs. ALPN offers `h2` and
//! `http/1.1`; Pingora's HTTP server picks HTTP/2 from the negotiated protocol.

use std::sync::Arc;

use pingora::listeners::tls::Acceptor;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::Stream;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use crate::config::{Tls, TlsVersion};
use crate::metrics;
use crate::state::Shared;

/// Picks the certificate for each handshake from the running snapshot.
struct SnapshotResolver {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SnapshotResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SnapshotResolver")
    }
}

impl ResolvesServerCert for SnapshotResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let snap = self.shared.snapshot();
        let tls = snap.config.tls.as_ref()?;
        Some(tls.certificates.resolve(hello.server_name()))
    }
}

/// One acceptor per `tls.min_version`, both over the snapshot's certificates.
pub struct TlsAcceptors {
    tls12: Acceptor,
    tls13: Acceptor,
}

/// Why a handshake did not complete (a bounded metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// `tls.handshake_timeout` passed.
    Timeout,
    /// The client spoke something else, offered nothing we accept, or left.
    Failed,
}

impl TlsAcceptors {
    /// Acceptors whose certificates come from `shared`'s current snapshot.
    pub fn new(shared: Arc<Shared>) -> Arc<Self> {
        pingora::tls::install_default_crypto_provider();
        let resolver: Arc<dyn ResolvesServerCert> = Arc::new(SnapshotResolver { shared });
        let build = |versions: &[&'static rustls::SupportedProtocolVersion]| {
            let mut config = ServerConfig::builder_with_protocol_versions(versions)
                .with_no_client_auth()
                .with_cert_resolver(resolver.clone());
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            Acceptor::from_server_config(Arc::new(config))
        };
        Arc::new(Self {
            tls12: build(&[&rustls::version::TLS13, &rustls::version::TLS12]),
            tls13: build(&[&rustls::version::TLS13]),
        })
    }

    /// Runs the server handshake on a freshly accepted TCP connection.
    pub async fn accept(&self, stream: Stream, tls: &Tls) -> Result<Stream, HandshakeFailure> {
        let acceptor = match tls.min_version {
            TlsVersion::Tls12 => &self.tls12,
            TlsVersion::Tls13 => &self.tls13,
        };
        // The listener hands over plain TCP streams; TLS wraps the concrete one.
        let l4 = stream
            .into_any()
            .downcast::<L4Stream>()
            .map_err(|_| HandshakeFailure::Failed)?;
        let handshake = acceptor.tls_handshake(*l4);
        let result = match tokio::time::timeout(tls.handshake_timeout, handshake).await {
            Ok(Ok(s)) => Ok(Box::new(s) as Stream),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "TLS handshake failed");
                Err(HandshakeFailure::Failed)
            }
            Err(_) => Err(HandshakeFailure::Timeout),
        };
        metrics::tls_handshake(match result {
            Ok(_) => "ok",
            Err(HandshakeFailure::Timeout) => "timeout",
            Err(HandshakeFailure::Failed) => "failed",
        });
        result
    }
}
