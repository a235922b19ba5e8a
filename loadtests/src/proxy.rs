//! A delaying TCP proxy for the `app-slow` fault: it sits between the gateway
//! and the app and, while slowed down by a factor N, holds each response back
//! until N times the app's own response time has passed (the app answers N
//! times slower, without touching the app).
//!
//! The app's response time is measured per connection, from the last request
//! bytes forwarded to the first response bytes read back (HTTP/1.1 keeps one
//! request in flight per connection).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A running proxy; dropping it stops accepting (open connections end with
/// their peers).
pub struct DelayProxy {
    /// Where the gateway connects.
    pub addr: SocketAddr,
    factor: Arc<AtomicU32>,
    task: JoinHandle<()>,
}

impl DelayProxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<DelayProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let factor = Arc::new(AtomicU32::new(1));
        let f = factor.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let f = f.clone();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        pipe(client, server, f).await;
                    }
                });
            }
        });
        Ok(DelayProxy { addr, factor, task })
    }

    /// Sets the slow-down factor: 1 is transparent, 10 is ten times slower.
    pub fn set_factor(&self, n: u32) {
        self.factor.store(n.max(1), Ordering::Relaxed);
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How long to hold a response back: `(factor - 1)` times the app's time.
pub fn extra_delay(app_time: std::time::Duration, factor: u32) -> std::time::Duration {
    app_time * factor.saturating_sub(1)
}

async fn pipe(client: TcpStream, server: TcpStream, factor: Arc<AtomicU32>) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let sent_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let s = sent_at.clone();
    let up = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if let Ok(mut t) = s.lock() {
                *t = Some(Instant::now());
            }
            if sw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = sw.shutdown().await;
    };
    let down = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match sr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let waited = sent_at.lock().ok().and_then(|mut t| t.take());
            let f = factor.load(Ordering::Relaxed);
            if let (Some(sent), true) = (waited, f > 1) {
                tokio::time::sleep(extra_delay(sent.elapsed(), f)).await;
            }
            if cw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = cw.shutdown().await;
    };
    tokio::join!(up, down);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn ten_times_slower_adds_nine_times_the_app_time() {
        assert_eq!(
            extra_delay(Duration::from_millis(100), 10),
            Duration::from_millis(900)
        );
        assert_eq!(extra_delay(Duration::from_millis(100), 1), Duration::ZERO);
        assert_eq!(extra_delay(Duration::from_millis(100), 0), Duration::ZERO);
    }

    #[tokio::test]
    async fn forwards_both_ways() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let echo_addr = echo.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = echo.accept().await.unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(&buf).await.unwrap();
        });
        let proxy = DelayProxy::start(echo_addr).await.unwrap();
        let mut c = TcpStream::connect(proxy.addr).await.unwrap();
        c.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
    }
}
