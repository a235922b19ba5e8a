//! Client connection protection that Pingora has no knob for: a cap on open
//! connections and a deadline for the whole request header block (slowloris).
//!
//! [`GuardedApp`] wraps the proxy's `ServerApp`: it counts connections, turns
//! away those beyond `client.max_connections` with a 503, and hands the rest to
//! the proxy inside a [`GuardedStream`]. The stream enforces `header_timeout`
//! from the first byte of a request until the proxy reports the header
//! complete ([`header_complete`]); after each request ([`request_done`]) the
//! deadline re-arms on the next request's first byte.
//!
//! On a `tls.listen` listener the TLS handshake runs here too, after the cap
//! and under `tls.handshake_timeout` ([`crate::tls`]). HTTP/2 equivalents of
//! the HTTP/1 protections: the same connection cap; the header deadline runs
//! from the end of the handshake until the connection's first request header
//! is complete (a connection that never sends one is closed); after that an
//! HTTP/2 connection with no request in progress — including one whose
//! streams never complete their headers — is closed after
//! `client.keepalive_timeout` (Pingora's h2 idle timeout). Header-list size and
//! concurrent streams per connection are HTTP/2 settings (see `server.rs`).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, Stream, UniqueID,
    UniqueIDType,
};
use pingora::protocols::{TimingDigest, ALPN};
use pingora::proxy::Session;
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::metrics;
use crate::state::Shared;
use crate::tls::TlsAcceptors;

const ARMED: u8 = 0;
const DONE: u8 = 1;
const NEXT: u8 = 2;

/// HTTP/2 connections still waiting for their first complete request
/// header, by the address of their socket digest (the one connection-wide
/// object an HTTP/2 session exposes): the first request disarms the deadline.
static H2_ARMED: LazyLock<Mutex<HashMap<usize, Arc<AtomicU8>>>> = LazyLock::new(Mutex::default);
/// Entries in [`H2_ARMED`]: lets requests skip the lock when none is armed.
static H2_ARMED_COUNT: AtomicUsize = AtomicUsize::new(0);

fn h2_register(key: usize, phase: Arc<AtomicU8>) {
    if let Ok(mut m) = H2_ARMED.lock() {
        if m.insert(key, phase).is_none() {
            H2_ARMED_COUNT.fetch_add(1, Ordering::AcqRel);
        }
    }
}

fn h2_remove(key: usize) -> Option<Arc<AtomicU8>> {
    let removed = H2_ARMED.lock().ok()?.remove(&key);
    if removed.is_some() {
        H2_ARMED_COUNT.fetch_sub(1, Ordering::AcqRel);
    }
    removed
}

/// The HTTP/2 registry key of a session's connection.
fn h2_key(session: &Session) -> Option<usize> {
    let digest = session.as_downstream().digest()?;
    digest
        .socket_digest
        .as_ref()
        .map(|d| Arc::as_ptr(d) as usize)
}

/// A downstream connection with a whole-header deadline.
pub struct GuardedStream {
    inner: Stream,
    phase: Arc<AtomicU8>,
    /// Set on an HTTP/2 connection: its key in [`H2_ARMED`] until the first request.
    h2_key: Option<usize>,
    header_timeout: Duration,
    deadline: Pin<Box<Sleep>>,
    /// Our JSON answer in place of Pingora's bare 400, and how much of it is written.
    replacing: Option<(Vec<u8>, usize)>,
    /// Small writes not yet sent: see [`WRITE_GATHER`].
    pending: Vec<u8>,
    _open: OpenConnection,
}

/// Writes are gathered up to this many bytes and leave with the next write
/// that does not fit, a flush, or the shutdown. The gateway's plain TCP
/// listener has no write buffer below this stream (`CLIENT_L4_BUFFERS` in
/// `server.rs`): gathering here, above the TLS layer, lets a small response's
/// header and body leave in one `write` (one TLS record on HTTPS), and a larger
/// body leave with the header already gathered in one vectored `write`
/// (`writev`) instead of two sends, the first of them a header-only segment.
/// The size is Pingora's default write buffer, one Ethernet segment's payload.
const WRITE_GATHER: usize = pingora::listeners::DEFAULT_L4_WRITE_BUFFER_SIZE;

impl fmt::Debug for GuardedStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardedStream")
            .field("inner", &self.inner)
            .finish()
    }
}

impl GuardedStream {
    fn new(inner: Stream, header_timeout: Duration, open: OpenConnection) -> Self {
        let phase = Arc::new(AtomicU8::new(ARMED));
        let h2 = matches!(inner.selected_alpn_proto(), Some(ALPN::H2));
        let h2_key = h2
            .then(|| inner.get_socket_digest())
            .flatten()
            .map(|d| Arc::as_ptr(&d) as usize);
        if let Some(key) = h2_key {
            h2_register(key, phase.clone());
        }
        Self {
            inner,
            phase,
            h2_key,
            header_timeout,
            deadline: Box::pin(tokio::time::sleep(header_timeout)),
            replacing: None,
            pending: Vec::new(),
            _open: open,
        }
    }

    /// Best effort: tell the client why the connection closes. Nothing has been
    /// written during a header phase, so the socket buffer takes it at once.
    fn write_timeout_answer(&mut self, cx: &mut Context<'_>) {
        if self.h2_key.is_some() {
            return; // HTTP/2 frames, not text: the connection just closes.
        }
        let msg = closing_answer("408 Request Timeout", "request header timeout");
        let _ = Pin::new(&mut self.inner).poll_write(cx, &msg);
        let _ = Pin::new(&mut self.inner).poll_flush(cx);
    }

    /// Sends the gathered bytes, all of them or an error.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            match Pin::new(&mut self.inner).poll_write(cx, &self.pending) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.consumed(n),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }

    /// `n` gathered bytes have been sent.
    fn consumed(&mut self, n: usize) {
        if n >= self.pending.len() {
            self.pending.clear();
        } else {
            self.pending.drain(..n);
        }
    }

    /// A write through the gathering buffer (see [`WRITE_GATHER`]).
    fn poll_gathered(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            if self.pending.len() + buf.len() <= WRITE_GATHER {
                if self.pending.capacity() == 0 {
                    // Allocated on the first write, once, at its full size.
                    self.pending.reserve_exact(WRITE_GATHER);
                }
                self.pending.extend_from_slice(buf);
                return Poll::Ready(Ok(buf.len()));
            }
            if self.pending.is_empty() {
                return Pin::new(&mut self.inner).poll_write(cx, buf);
            }
            if !self.inner.is_write_vectored() {
                // TLS: the gathered bytes go first, as their own record.
                ready!(self.poll_drain(cx))?;
                continue;
            }
            let gathered = self.pending.len();
            let bufs = [io::IoSlice::new(&self.pending), io::IoSlice::new(buf)];
            match ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, &bufs)) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) if n > gathered => {
                    self.pending.clear();
                    return Poll::Ready(Ok(n - gathered));
                }
                // Only (some of) the gathered bytes left: try again.
                Ok(n) => self.consumed(n),
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Writes what is left of the replacement answer.
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((msg, done)) = &mut self.replacing {
            if *done == msg.len() {
                break;
            }
            match Pin::new(&mut self.inner).poll_write(cx, &msg[*done..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *done += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// A complete JSON error answer that closes the connection, with a new request id.
fn closing_answer(status_line: &str, message: &str) -> Vec<u8> {
    let id = crate::request_id::generate();
    let id = id.to_str().unwrap_or("-");
    let body = crate::error::json_error(message, id);
    let mut msg = format!(
        "HTTP/1.1 {status_line}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nCache-Control: no-store\r\nx-request-id: {id}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    msg.extend_from_slice(&body);
    msg
}

/// Pingora answers a request it cannot parse (a malformed request line or
/// header, two `Host` fields, an absolute-form target whose authority differs
/// from `Host`) with a bare 400 before any proxy hook runs. Such a write, while
/// no request header has completed, is that answer: the gateway sends its own
/// JSON 400 with a request id instead, and counts it.
const PINGORA_400: &[u8] = b"HTTP/1.1 400 ";

fn guarded(session: &Session) -> Option<&GuardedStream> {
    session
        .as_downstream()
        .stream()?
        .as_any()
        .downcast_ref::<GuardedStream>()
}

/// Called once a request header has been parsed: the deadline stops.
pub fn header_complete(session: &Session) {
    if let Some(g) = guarded(session) {
        g.phase.store(DONE, Ordering::Release);
    } else if H2_ARMED_COUNT.load(Ordering::Acquire) > 0 {
        if let Some(phase) = h2_key(session).and_then(h2_remove) {
            phase.store(DONE, Ordering::Release);
        }
    }
}

/// Called when a request is finished: the next request's first byte re-arms the deadline.
pub fn request_done(session: &Session) {
    if let Some(g) = guarded(session) {
        g.phase.store(NEXT, Ordering::Release);
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match this.phase.load(Ordering::Acquire) {
            DONE => Pin::new(&mut this.inner).poll_read(cx, buf),
            NEXT => {
                let before = buf.filled().len();
                let r = Pin::new(&mut this.inner).poll_read(cx, buf);
                if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
                    this.phase.store(ARMED, Ordering::Release);
                    let at = Instant::now() + this.header_timeout;
                    this.deadline.as_mut().reset(at);
                }
                r
            }
            _ => {
                if this.deadline.as_mut().poll(cx).is_ready() {
                    metrics::header_timeout();
                    this.write_timeout_answer(cx);
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "client.header_timeout: request header not complete in time",
                    )));
                }
                Pin::new(&mut this.inner).poll_read(cx, buf)
            }
        }
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.replacing.is_none()
            && this.h2_key.is_none()
            && this.phase.load(Ordering::Acquire) == ARMED
            && buf.starts_with(PINGORA_400)
        {
            metrics::malformed_request();
            let msg = closing_answer("400 Bad Request", crate::error::MALFORMED);
            this.replacing = Some((msg, 0));
        }
        if this.replacing.is_some() {
            // Pingora's own answer is swallowed whole; ours goes out instead.
            return match this.poll_replacement(cx) {
                Poll::Ready(Ok(())) => Poll::Ready(Ok(buf.len())),
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            };
        }
        this.poll_gathered(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let armed = self.h2_key.is_none() && self.phase.load(Ordering::Acquire) == ARMED;
        if self.replacing.is_some()
            || (armed && bufs.first().is_some_and(|b| b.starts_with(PINGORA_400)))
        {
            let first = bufs.first().map_or(&[][..], |b| &b[..]);
            return self.poll_write(cx, first);
        }
        // Rare (Pingora writes with `write_all`): the gathered bytes go first.
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for GuardedStream {
    async fn shutdown(&mut self) {
        let _ = std::future::poll_fn(|cx| self.poll_drain(cx)).await;
        Shutdown::shutdown(self.inner.as_mut()).await
    }
}

impl UniqueID for GuardedStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for GuardedStream {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for GuardedStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for GuardedStream {
    fn get_proxy_digest(&self) -> Option<Arc<pingora::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
    fn set_proxy_digest(&mut self, digest: pingora::protocols::raw_connect::ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for GuardedStream {
    fn get_socket_digest(&self) -> Option<Arc<pingora::protocols::SocketDigest>> {
        self.inner.get_socket_digest()
    }
    fn set_socket_digest(&mut self, digest: pingora::protocols::SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for GuardedStream {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

impl Drop for GuardedStream {
    fn drop(&mut self) {
        if let Some(key) = self.h2_key {
            h2_remove(key);
        }
    }
}

/// One open downstream connection, counted while it lives.
struct OpenConnection(Arc<Shared>);

impl OpenConnection {
    /// Counts a new connection; returns it with the number now open.
    fn open(shared: &Arc<Shared>) -> (Self, usize) {
        (Self(shared.clone()), shared.connection_opened())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connection_closed();
    }
}

/// The proxy's `ServerApp` behind the connection cap and the header deadline.
pub struct GuardedApp<A> {
    inner: Arc<A>,
    shared: Arc<Shared>,
    /// Set on the HTTPS listeners: the handshake runs before the proxy sees the stream.
    tls: Option<Arc<TlsAcceptors>>,
}

impl<A> GuardedApp<A> {
    /// Wraps `inner`; limits come from the current snapshot of `shared`.
    pub fn new(inner: A, shared: Arc<Shared>) -> Self {
        Self {
            inner: Arc::new(inner),
            shared,
            tls: None,
        }
    }

    /// Like [`GuardedApp::new`], for a listener whose connections speak TLS.
    pub fn with_tls(inner: A, shared: Arc<Shared>, tls: Arc<TlsAcceptors>) -> Self {
        Self {
            inner: Arc::new(inner),
            shared,
            tls: Some(tls),
        }
    }
}

/// Answer to a connection beyond `client.max_connections`.
const TOO_MANY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n\
Content-Length: 55\r\nRetry-After: 1\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n\
{\"error\":\"too many open connections\",\"request_id\":\"-\"}\n";

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for GuardedApp<A> {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let snap = self.shared.snapshot();
        let limits = snap.config.client;
        let (open, count) = OpenConnection::open(&self.shared);
        if count > limits.max_connections {
            metrics::connection_rejected();
            if self.tls.is_some() {
                // No handshake spent on a connection that is turned away.
                return None;
            }
            let _ =
                tokio::time::timeout(Duration::from_millis(200), stream.write_all(TOO_MANY)).await;
            let _ = tokio::time::timeout(
                Duration::from_millis(200),
                Shutdown::shutdown(stream.as_mut()),
            )
            .await;
            drop(open);
            return None;
        }
        let stream = match (&self.tls, snap.config.tls.as_ref()) {
            (None, _) => stream,
            // Boxed: inlined, the TLS handshake's state (about 7 KiB) would
            // stay in this future, which lives as long as the connection,
            // plain TCP ones included (dhat, `loadtests/conn_memory.sh`).
            (Some(acceptors), Some(tls)) => Box::pin(acceptors.accept(stream, tls)).await.ok()?,
            (Some(_), None) => return None,
        };
        drop(snap);
        let guarded: Stream = Box::new(GuardedStream::new(stream, limits.header_timeout, open));
        self.inner.process_new(guarded, shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canned_answer_declares_its_length() {
        let text = std::str::from_utf8(TOO_MANY).unwrap();
        let (_, body) = text.split_once("\r\n\r\n").unwrap();
        assert_eq!(body.len(), 55);
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"], "too many open connections");
    }
}
