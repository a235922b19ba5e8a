//! Memory of the cache store (issue #17): what an entry really holds on the
//! heap against what `cache.max_size` counts, that a stored header does not
//! keep Pingora's header read buffer alive, and that the Vary index shrinks
//! back. Heap bytes are counted per thread by a counting allocator, and the
//! store is driven on the test's own thread (`block_on`), so tests running in
//! parallel do not disturb each other's figures.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use futures::executor::block_on;
use gateway::cache::storage::ENTRY_OVERHEAD;
use gateway::cache::{policy, MemStorage};
use pingora::cache::storage::Storage;
use pingora::cache::trace::Span;
use pingora::cache::{CacheKey, CacheMeta};
use pingora::http::ResponseHeader;

struct Counting;

thread_local! {
    static LIVE: Cell<i64> = const { Cell::new(0) };
}

fn count(delta: i64) {
    let _ = LIVE.try_with(|l| l.set(l.get() + delta));
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as i64);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(-(layout.size() as i64));
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size as i64 - layout.size() as i64);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> i64 {
    LIVE.with(|l| l.get())
}

fn leak_store(max_size: u64) -> &'static MemStorage {
    Box::leak(Box::new(MemStorage::new(max_size, 1 << 20)))
}

/// A response header as Pingora's HTTP/1 client builds it: names and values
/// are slices of the connection's header read buffer (4 KiB at least).
fn parsed_header(read_buf: &Bytes) -> ResponseHeader {
    let text = std::str::from_utf8(read_buf).unwrap();
    let mut header = ResponseHeader::build(200, None).unwrap();
    let base = read_buf.as_ptr() as usize;
    for line in text.split("\r\n").skip(1).take_while(|l| !l.is_empty()) {
        let (name, value) = line.split_once(": ").unwrap();
        let n = name.as_ptr() as usize - base;
        let v = value.as_ptr() as usize - base;
        let name = read_buf.slice(n..n + name.len());
        let value =
            http::HeaderValue::from_maybe_shared(read_buf.slice(v..v + value.len())).unwrap();
        header.append_header(name, value).unwrap();
    }
    header
}

fn read_buffer(i: usize) -> Bytes {
    let head = format!(
        "HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Wed, 02 Dec 2026 15:00:00 GMT\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: 2048\r\n\
         Last-Modified: Wed, 02 Dec 2026 14:00:00 GMT\r\nConnection: keep-alive\r\n\
         Accept-Ranges: bytes\r\nCache-Control: max-age=5\r\nX-Request-Id: {i:032x}\r\n\r\n"
    );
    let mut buf = BytesMut::with_capacity(4096);
    buf.extend_from_slice(head.as_bytes());
    buf.freeze()
}

/// Stores `/k{i}` (variant `variant`, if any) through the `Storage` API, as a miss does.
fn store_one(
    store: &'static MemStorage,
    i: usize,
    variant: Option<u8>,
    read_buf: &Bytes,
    body: &Bytes,
) {
    let mut key: CacheKey = policy::key_for("example.com", &format!("/k{i}"), "");
    let now = SystemTime::now();
    let mut meta = CacheMeta::new(
        now + Duration::from_secs(60),
        now,
        0,
        0,
        parsed_header(read_buf),
    );
    if let Some(v) = variant {
        key.set_variance_key([v; 16]);
        meta.set_variance_key([v; 16]);
    }
    let span = Span::inactive();
    block_on(async {
        let mut miss = store
            .get_miss_handler(&key, &meta, &span.handle())
            .await
            .unwrap();
        // A chunk that is a slice of a larger read buffer, as Pingora hands them.
        let chunk = Bytes::from(body.to_vec()).slice(..);
        miss.write_body(chunk, true).await.unwrap();
        miss.finish().await.unwrap();
    });
}

#[test]
fn a_stored_entry_does_not_keep_the_header_read_buffer_alive() {
    let store = leak_store(16 << 20);
    let body = Bytes::from(vec![b'a'; 2048]);
    let read_buf = read_buffer(1);
    store_one(store, 1, None, &read_buf, &body);
    assert_eq!(store.len(), 1);
    // Our handle is the only one left: the entry holds copies of its own.
    assert!(
        read_buf.is_unique(),
        "the stored header still points into the upstream read buffer"
    );
    // A hit hands out the stored header; still no reference to the buffer.
    let key = policy::key_for("example.com", "/k1", "");
    let span = Span::inactive();
    let (meta, _hit) = block_on(store.lookup(&key, &span.handle()))
        .unwrap()
        .unwrap();
    assert_eq!(meta.response_header().status, 200);
    assert_eq!(
        meta.response_header().headers["x-request-id"],
        format!("{:032x}", 1)
    );
    let case: Vec<&[u8]> = meta
        .response_header()
        .case_header_iter()
        .map(|(n, _)| n.as_slice())
        .collect();
    assert!(case.contains(&&b"Cache-Control"[..]), "header case kept");
    assert!(read_buf.is_unique());
}

#[test]
fn the_weight_counts_what_entries_really_hold() {
    const N: usize = 4000;
    let store = leak_store(256 << 20); // holds all of them
    let body = Bytes::from(vec![b'a'; 2048]);
    // Warm-up, so that one-off allocations (shards, tables) are not counted.
    for i in 0..N {
        store_one(store, N + i, None, &read_buffer(i), &body);
    }
    let before = live();
    let weight_before = store.weight();
    for i in 0..N {
        store_one(store, i, None, &read_buffer(i), &body);
    }
    let held = (live() - before) as f64 / N as f64;
    let charged = (store.weight() - weight_before) as f64 / N as f64;
    eprintln!(
        "per entry: {held:.0} heap bytes held, {charged:.0} charged (ENTRY_OVERHEAD {ENTRY_OVERHEAD})"
    );
    // The bound is honest: never less charged than held (allocator rounding
    // aside, which ENTRY_OVERHEAD's margin covers) ...
    assert!(charged >= held, "charged {charged:.0} < held {held:.0}");
    // ... and not so much more that the cache holds far fewer entries than it could.
    assert!(
        charged <= held * 1.25,
        "charged {charged:.0} > 1.25 × held {held:.0}"
    );
}

#[test]
fn the_variant_index_shrinks_back_after_eviction_and_purge() {
    // A small store: most of the 20,000 variants are evicted as they come.
    let store = leak_store(4 << 20);
    let body = Bytes::from(vec![b'a'; 2048]);
    let read_buf = read_buffer(0);
    for i in 0..20_000 {
        store_one(store, i, Some((i % 3) as u8 + 1), &read_buf, &body);
    }
    let (uris, _) = store.variant_index_size();
    assert!(
        uris <= store.len(),
        "{uris} URIs indexed for {} stored entries",
        store.len()
    );
    // Responses without Vary are not indexed at all.
    for i in 0..1000 {
        store_one(store, 100_000 + i, None, &read_buf, &body);
    }
    assert!(store.variant_index_size().0 <= store.len());
    store.purge_where(false, |_, _| true);
    assert_eq!(store.len(), 0);
    let (uris, capacity) = store.variant_index_size();
    assert_eq!(uris, 0);
    assert!(
        capacity <= 64,
        "index table kept {capacity} slots after the purge"
    );
}
