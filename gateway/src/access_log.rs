//! The access log: one JSON line per request, written by a background thread
//! so that the request path never blocks on I/O. When the writer falls behind,
//! lines are dropped and counted (`gateway_access_log_dropped_total`) rather
//! than slowing requests down. A file target is reopened on SIGUSR1
//! (logrotate). Headers are never logged, so no credential or cookie can leak.

use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use crate::config::LogTarget;
use crate::metrics;

/// Lines buffered between the request path and the writer.
const QUEUE: usize = 65_536;

static SENDER: OnceLock<SyncSender<Vec<u8>>> = OnceLock::new();
/// Line buffers the writer has emptied, for the request path to fill again.
static SPARE: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
/// Spare buffers kept at most (the rest are freed).
const SPARE_MAX: usize = 4096;
/// Capacity a line buffer starts with, and the most a kept one may have.
const SPARE_CAPACITY: usize = 512;
static REOPEN: AtomicBool = AtomicBool::new(false);
/// Lines queued so far, and lines the writer has written and flushed.
static QUEUED: AtomicU64 = AtomicU64::new(0);
static WRITTEN: AtomicU64 = AtomicU64::new(0);

/// One request, as logged. Formatting it allocates nothing: the time comes
/// from a per-thread cache, numbers and addresses are written straight into
/// the line, strings are copied as they are unless they need JSON escapes,
/// and the line's buffer is one the writer gave back. (A hand-written writer:
/// serde_json's derive spent about 5,000 instructions a line, most of them
/// escaping strings byte by byte; this one about a fifth of that.)
pub struct Line<'a> {
    /// RFC 3339 with milliseconds.
    pub time: Now,
    /// `X-Request-Id`.
    pub request_id: &'a str,
    /// Client address (after trusted proxies).
    pub client: std::net::IpAddr,
    /// Method.
    pub method: &'a str,
    /// Path, without the query (which may carry tokens).
    pub path: &'a str,
    /// Status sent (0: none).
    pub status: u16,
    /// Response body bytes sent.
    pub bytes: usize,
    /// Whole request, milliseconds.
    pub duration_ms: Millis,
    /// Route name, if one matched.
    pub route: Option<&'a str>,
    /// Upstream server, if one was used.
    pub upstream: Option<Shown<'a>>,
    /// Time to the upstream response header, milliseconds.
    pub upstream_ms: Option<Millis>,
    /// Wait for a concurrency slot, milliseconds.
    pub queue_ms: Option<Millis>,
    /// Cache outcome on caching routes.
    pub cache: Option<&'static str>,
    /// The gateway's own error kind, if it answered itself.
    pub error: Option<&'static str>,
}

/// A duration in milliseconds, written with microsecond precision (`12.345`,
/// never `12.345000000000001`).
#[derive(Debug, Clone, Copy)]
pub struct Millis(pub std::time::Duration);

impl Millis {
    /// `12.345`: whole milliseconds, then up to three decimals without
    /// trailing zeros (at least one), as the shortest float would print.
    fn write(self, out: &mut Vec<u8>) {
        let us = self.0.as_micros() as u64;
        let mut digits = itoa::Buffer::new();
        out.extend_from_slice(digits.format(us / 1000).as_bytes());
        out.push(b'.');
        let frac = us % 1000;
        let text = [
            b'0' + (frac / 100) as u8,
            b'0' + (frac / 10 % 10) as u8,
            b'0' + (frac % 10) as u8,
        ];
        let keep = text.iter().rposition(|&d| d != b'0').map_or(1, |i| i + 1);
        out.extend_from_slice(&text[..keep]);
    }
}

/// A value written with its `Display` form (an upstream address).
pub struct Shown<'a>(pub &'a dyn std::fmt::Display);

/// The time a line is written: RFC 3339 with milliseconds, formatted at most
/// once per millisecond per thread.
pub struct Now;

impl Now {
    fn write(&self, out: &mut Vec<u8>) {
        use std::cell::RefCell;
        use std::fmt::Write as _;
        use std::time::{SystemTime, UNIX_EPOCH};
        thread_local! {
            static CACHE: RefCell<(u128, String)> = const { RefCell::new((0, String::new())) };
        }
        let now = SystemTime::now();
        let ms = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
        CACHE.with(|c| {
            let mut c = c.borrow_mut();
            if c.0 != ms {
                c.0 = ms;
                c.1.clear();
                let _ = write!(c.1, "{}", humantime::format_rfc3339_millis(now));
            }
            json_str(out, &c.1);
        });
    }
}

/// A JSON string: copied between quotes when nothing in it needs escaping
/// (the usual case), else escaped by serde_json.
fn json_str(out: &mut Vec<u8>, s: &str) {
    // No early exit: the loop vectorises (the strings are short and clean).
    let escapes = s
        .bytes()
        .fold(false, |any, b| any | (b < 0x20) | (b == b'"') | (b == b'\\'));
    if !escapes {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

/// A `Display` value as a JSON string, formatted into a per-thread buffer.
fn json_display(out: &mut Vec<u8>, v: &dyn std::fmt::Display) {
    use std::cell::RefCell;
    use std::fmt::Write as _;
    thread_local! {
        static TEXT: RefCell<String> = const { RefCell::new(String::new()) };
    }
    TEXT.with(|t| {
        let mut t = t.borrow_mut();
        t.clear();
        let _ = write!(t, "{v}");
        json_str(out, &t);
    });
}

impl Line<'_> {
    /// Appends the line as one JSON object (no newline).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let mut n = itoa::Buffer::new();
        out.extend_from_slice(b"{\"time\":");
        self.time.write(out);
        out.extend_from_slice(b",\"request_id\":");
        json_str(out, self.request_id);
        out.extend_from_slice(b",\"client\":");
        match self.client {
            // The common case without the formatting machinery.
            std::net::IpAddr::V4(v4) => {
                out.push(b'"');
                for (i, octet) in v4.octets().iter().enumerate() {
                    if i > 0 {
                        out.push(b'.');
                    }
                    out.extend_from_slice(n.format(*octet).as_bytes());
                }
                out.push(b'"');
            }
            v6 => json_display(out, &v6),
        }
        out.extend_from_slice(b",\"method\":");
        json_str(out, self.method);
        out.extend_from_slice(b",\"path\":");
        json_str(out, self.path);
        out.extend_from_slice(b",\"status\":");
        out.extend_from_slice(n.format(self.status).as_bytes());
        out.extend_from_slice(b",\"bytes\":");
        out.extend_from_slice(n.format(self.bytes).as_bytes());
        out.extend_from_slice(b",\"duration_ms\":");
        self.duration_ms.write(out);
        out.extend_from_slice(b",\"route\":");
        match self.route {
            Some(r) => json_str(out, r),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"upstream\":");
        match &self.upstream {
            Some(u) => json_display(out, u.0),
            None => out.extend_from_slice(b"null"),
        }
        for (key, ms) in [
            (&b",\"upstream_ms\":"[..], self.upstream_ms),
            (&b",\"queue_ms\":"[..], self.queue_ms),
        ] {
            out.extend_from_slice(key);
            match ms {
                Some(ms) => ms.write(out),
                None => out.extend_from_slice(b"null"),
            }
        }
        for (key, v) in [
            (&b",\"cache\":"[..], self.cache),
            (&b",\"error\":"[..], self.error),
        ] {
            out.extend_from_slice(key);
            match v {
                Some(v) => json_str(out, v),
                None => out.extend_from_slice(b"null"),
            }
        }
        out.push(b'}');
    }
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
    let mut bytes = spare();
    line.write_json(&mut bytes);
    bytes.push(b'\n');
    match tx.try_send(bytes) {
        Ok(()) => {
            QUEUED.fetch_add(1, Ordering::AcqRel);
        }
        Err(TrySendError::Full(_)) => metrics::access_log_dropped(),
        Err(TrySendError::Disconnected(_)) => {}
    }
}

/// An empty line buffer, reused when the writer has given one back.
fn spare() -> Vec<u8> {
    let reused = SPARE.lock().ok().and_then(|mut s| s.pop());
    reused.unwrap_or_else(|| Vec::with_capacity(SPARE_CAPACITY))
}

/// Waits until every line queued so far is written and flushed, at most
/// `within` (called before the process exits).
pub fn flush(within: Duration) {
    let target = QUEUED.load(Ordering::Acquire);
    let deadline = std::time::Instant::now() + within;
    while WRITTEN.load(Ordering::Acquire) < target && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
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
    let mut emptied = Vec::new();
    // Wake on a timer and drain in batches: the writer is never parked in
    // recv(), so a request never pays for waking it.
    loop {
        std::thread::sleep(Duration::from_millis(20));
        let mut wrote = 0;
        loop {
            match rx.try_recv() {
                Ok(mut line) => {
                    let _ = out.write_all(&line);
                    wrote += 1;
                    line.clear();
                    emptied.push(line);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    let _ = out.flush();
                    return;
                }
            }
        }
        if wrote > 0 {
            let _ = out.flush();
            WRITTEN.fetch_add(wrote, Ordering::AcqRel);
            if let Ok(mut spare) = SPARE.lock() {
                let room = SPARE_MAX.saturating_sub(spare.len());
                // A buffer grown by an unusually long line is freed, not kept.
                let small = emptied.drain(..).filter(|b| b.capacity() <= SPARE_CAPACITY);
                spare.extend(small.take(room));
            }
            emptied.clear();
        }
        if REOPEN.swap(false, Ordering::AcqRel) {
            let _ = out.flush();
            out = BufWriter::with_capacity(64 * 1024, open(&target));
            tracing::info!("access log reopened");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_one_json_object_with_addresses_and_time_as_strings() {
        let peer: std::net::SocketAddr = "10.0.0.7:8080".parse().unwrap();
        let line = Line {
            time: Now,
            request_id: "abc",
            client: "2001:db8::1".parse().unwrap(),
            method: "GET",
            path: "/p",
            status: 200,
            bytes: 5,
            duration_ms: Millis(Duration::from_micros(1500)),
            route: Some("r"),
            upstream: Some(Shown(&peer)),
            upstream_ms: None,
            queue_ms: None,
            cache: Some("hit"),
            error: None,
        };
        let mut buf = Vec::new();
        line.write_json(&mut buf);
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["client"], "2001:db8::1");
        assert_eq!(v["upstream"], "10.0.0.7:8080");
        assert_eq!(v["duration_ms"], 1.5);
        let time = v["time"].as_str().unwrap();
        assert!(humantime::parse_rfc3339(time).is_ok(), "{time}");
        assert!(time.len() == "2026-01-01T00:00:00.000Z".len(), "{time}");
    }

    #[test]
    fn durations_have_no_float_noise() {
        let text = |d: Duration| {
            let mut out = Vec::new();
            Millis(d).write(&mut out);
            String::from_utf8(out).unwrap()
        };
        for (us, want) in [
            (936_687, "936.687"),
            (1, "0.001"),
            (20_000, "20.0"),
            (1_500, "1.5"),
            (1_230, "1.23"),
            (123_456_789, "123456.789"),
        ] {
            let d = Duration::from_micros(us);
            assert_eq!(text(d), want);
            // What a float would print (the shortest form that reads back).
            assert_eq!(serde_json::to_string(&(us as f64 / 1000.0)).unwrap(), want);
        }
        assert_eq!(
            text(Duration::from_nanos(936_686_999)),
            "936.686",
            "truncated to microseconds"
        );
    }

    #[test]
    fn strings_that_need_escapes_are_escaped_and_the_line_reads_back() {
        let line = Line {
            time: Now,
            request_id: "id-1",
            client: "10.0.0.1".parse().unwrap(),
            method: "GET",
            path: "/a\"b\\c\u{1}d/é",
            status: 404,
            bytes: 0,
            duration_ms: Millis(Duration::ZERO),
            route: None,
            upstream: None,
            upstream_ms: Some(Millis(Duration::from_micros(250))),
            queue_ms: None,
            cache: None,
            error: Some("no_route"),
        };
        let mut buf = Vec::new();
        line.write_json(&mut buf);
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["path"], "/a\"b\\c\u{1}d/é");
        assert_eq!(v["status"], 404);
        assert_eq!(v["duration_ms"], 0.0);
        assert_eq!(v["upstream_ms"], 0.25);
        assert!(v["route"].is_null() && v["upstream"].is_null() && v["queue_ms"].is_null());
        assert_eq!(v["error"], "no_route");
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys.len(), 14, "{keys:?}");
    }
}
