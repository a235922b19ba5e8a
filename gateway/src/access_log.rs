//! The access log: one JSON line per request, written by a background thread
//! so that the request path never blocks on I/O. When the writer falls behind,
//! lines are dropped and counted (`gateway_access_log_dropped_total`) rather
//! than slowing requests down. A file target is reopened on SIGUSR1
//! (logrotate). Headers are never logged, so no credential or cookie can leak.

use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::OnceLock;
use std::time::Duration;

use serde::Serialize;

use crate::config::LogTarget;
use crate::metrics;

/// Lines buffered between the request path and the writer.
const QUEUE: usize = 65_536;

static SENDER: OnceLock<SyncSender<Vec<u8>>> = OnceLock::new();
static REOPEN: AtomicBool = AtomicBool::new(false);

/// One request, as logged.
#[derive(Serialize)]
pub struct Line<'a> {
    /// RFC 3339 with milliseconds.
    pub time: String,
    /// `X-Request-Id`.
    pub request_id: &'a str,
    /// Client address (after trusted proxies).
    pub client: String,
    /// Method.
    pub method: &'a str,
    /// Path, without the query (which may carry tokens).
    pub path: &'a str,
    /// Status sent (0: none).
    pub status: u16,
    /// Response body bytes sent.
    pub bytes: usize,
    /// Whole request, milliseconds.
    pub duration_ms: f64,
    /// Route name, if one matched.
    pub route: Option<&'a str>,
    /// Upstream server, if one was used.
    pub upstream: Option<String>,
    /// Time to the upstream response header, milliseconds.
    pub upstream_ms: Option<f64>,
    /// Wait for a concurrency slot, milliseconds.
    pub queue_ms: Option<f64>,
    /// Cache outcome on caching routes.
    pub cache: Option<&'static str>,
    /// The gateway's own error kind, if it answered itself.
    pub error: Option<&'static str>,
}

/// The current time as RFC 3339 with milliseconds, formatted at most once per
/// millisecond per thread.
pub fn now_rfc3339() -> String {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};
    thread_local! {
        static CACHE: RefCell<(u128, String)> = const { RefCell::new((0, String::new())) };
    }
    let now = SystemTime::now();
    let ms = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != ms {
            *c = (ms, humantime::format_rfc3339_millis(now).to_string());
        }
        c.1.clone()
    })
}

/// Starts the writer for `target` (once; later calls are ignored).
pub fn start(target: &LogTarget) {
    SENDER.get_or_init(|| {
        let target = target.clone();
        let (tx, rx) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_loop(target, rx))
            .expect("spawn the access-log writer");
        tx
    });
}

/// Asks a file writer to reopen its file (after logrotate moved it).
pub fn reopen() {
    REOPEN.store(true, Ordering::Release);
}

/// Queues one line; never blocks.
pub fn log(line: &Line<'_>) {
    let Some(tx) = SENDER.get() else { return };
    let Ok(mut bytes) = serde_json::to_vec(line) else {
        return;
    };
    bytes.push(b'\n');
    if let Err(TrySendError::Full(_)) = tx.try_send(bytes) {
        metrics::access_log_dropped();
    }
}

fn open(target: &LogTarget) -> Box<dyn Write + Send> {
    match target {
        LogTarget::Stdout => Box::new(std::io::stdout()),
        LogTarget::Stderr => Box::new(std::io::stderr()),
        LogTarget::File(path) => match open_file(path) {
            Ok(f) => Box::new(f),
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "cannot open the access log; writing to stderr");
                Box::new(std::io::stderr())
            }
        },
    }
}

fn open_file(path: &PathBuf) -> std::io::Result<std::fs::File> {
    OpenOptions::new().create(true).append(true).open(path)
}

fn write_loop(target: LogTarget, rx: Receiver<Vec<u8>>) {
    let mut out = BufWriter::with_capacity(64 * 1024, open(&target));
    // Wake on a timer and drain in batches: the writer is never parked in
    // recv(), so a request never pays for waking it.
    loop {
        std::thread::sleep(Duration::from_millis(20));
        let mut wrote = false;
        loop {
            match rx.try_recv() {
                Ok(line) => {
                    let _ = out.write_all(&line);
                    wrote = true;
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    let _ = out.flush();
                    return;
                }
            }
        }
        if wrote {
            let _ = out.flush();
        }
        if REOPEN.swap(false, Ordering::AcqRel) {
            let _ = out.flush();
            out = BufWriter::with_capacity(64 * 1024, open(&target));
            tracing::info!("access log reopened");
        }
    }
}
