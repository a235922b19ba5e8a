//! In-memory cache storage on `quick_cache`, bounded in bytes.
//!
//! Each entry weighs what it really holds on the heap: its body, its header
//! (the map slots, the names and values) and a fixed per-entry overhead
//! (measured: see `tests/cache_memory.rs`), so resident memory stays near
//! `cache.max_size`. A stored header owns one compact buffer for its names and
//! values: a header parsed by Pingora points into the connection's header read
//! buffer (4 KiB or more), which a stored slice of it would keep alive for as
//! long as the entry lives. The shard count is
//! chosen so that every object up to `cache.max_object_size` fits in a shard
//! (quick_cache silently refuses an item heavier than about 97 % of one
//! shard). Hits hand out the stored `Bytes` without copying the body.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::cache::key::{CacheHashKey, CacheKey, CompactCacheKey, HashBinary};
use pingora::cache::storage::{
    HandleHit, HandleMiss, HitHandler, MissFinishType, MissHandler, PurgeOutcome, PurgeTarget,
    PurgeType,
};
use pingora::cache::trace::SpanHandle;
use pingora::cache::{CacheMeta, Storage};
use pingora::http::ResponseHeader;
use pingora::{Error, ErrorType, OrErr, Result};
use quick_cache::sync::Cache;
use quick_cache::{Lifecycle, Weighter};

use crate::metrics;

/// Bytes charged per entry beyond its body, header, URI and tags: the
/// `Arc<Entry>`, quick_cache's slot and table index, the `Bytes` control
/// blocks, allocator rounding (measured by `tests/cache_memory.rs`).
pub const ENTRY_OVERHEAD: u64 = 512;

/// Heap bytes per header-map slot: a `HeaderMap` bucket (name, value, links,
/// hash, index) and the case-preserving map's bucket beside it.
const HEADER_SLOT: u64 = 224;

/// One stored response: the metadata kept parsed, so that a hit rebuilds its
/// `CacheMeta` from fields instead of decompressing and parsing the header.
struct Entry {
    /// Hash of the URI part of the key (all Vary variants share it).
    primary: HashBinary,
    /// The stored URI as host + path (for prefix purges).
    uri: Arc<str>,
    /// Purge tags from `Surrogate-Key` / `Cache-Tag` (space or comma separated).
    tags: Arc<[String]>,
    header: ResponseHeader,
    /// Heap bytes of everything but the body (header, URI, tags); see [`Entry::weight`].
    header_bytes: u64,
    fresh_until: SystemTime,
    created: SystemTime,
    /// When the response was new (its age counts from here: RFC 9111 §4.2.3,
    /// see `policy::decide`).
    epoch: SystemTime,
    swr: u32,
    sie: u32,
    variance: Option<HashBinary>,
    body: Bytes,
}

impl Entry {
    fn new(primary: HashBinary, uri: Arc<str>, meta: &CacheMeta, body: Bytes) -> Entry {
        let (header, compact_len) = compact_header(meta.response_header());
        let tags: Vec<String> = ["surrogate-key", "cache-tag"]
            .iter()
            .flat_map(|h| header.headers.get_all(*h))
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split([' ', ',']))
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect();
        let header_bytes = header_heap_bytes(&header, compact_len)
            + uri.len() as u64
            + tags.iter().map(|t| t.len() as u64 + 32).sum::<u64>();
        Entry {
            primary,
            uri,
            tags: tags.into(),
            header,
            header_bytes,
            fresh_until: meta.fresh_until(),
            created: meta.created(),
            epoch: meta.epoch(),
            swr: meta.stale_while_revalidate_sec(),
            sie: meta.stale_if_error_sec(),
            variance: meta.variance(),
            body,
        }
    }

    /// The metadata as Pingora wants it.
    fn meta(&self) -> CacheMeta {
        let mut meta = CacheMeta::new(
            self.fresh_until,
            self.created,
            self.swr,
            self.sie,
            self.header.clone(),
        );
        if let Some(v) = self.variance {
            meta.set_variance(v);
        }
        meta.set_epoch_override(self.epoch);
        meta
    }

    fn weight(&self) -> u64 {
        self.header_bytes + self.body.len() as u64 + ENTRY_OVERHEAD
    }
}

/// A copy of `src` whose names and values are slices of one exact-size buffer
/// of their own (not of Pingora's header read buffer); returns it with the
/// buffer's length.
fn compact_header(src: &ResponseHeader) -> (ResponseHeader, usize) {
    let pairs: Vec<(&[u8], &http::HeaderValue)> = if src.has_case() {
        src.case_header_iter()
            .map(|(n, v)| (n.as_slice(), v))
            .collect()
    } else {
        src.headers
            .iter()
            .map(|(n, v)| (n.as_str().as_bytes(), v))
            .collect()
    };
    let total = pairs.iter().map(|(n, v)| n.len() + v.len()).sum();
    let mut buf = Vec::with_capacity(total);
    for (n, v) in &pairs {
        buf.extend_from_slice(n);
        buf.extend_from_slice(v.as_bytes());
    }
    let buf = Bytes::from(buf);
    let copy = || -> Result<ResponseHeader> {
        let mut out = if src.has_case() {
            ResponseHeader::build(src.status, Some(pairs.len()))?
        } else {
            ResponseHeader::build_no_case(src.status, Some(pairs.len()))?
        };
        out.set_version(src.version);
        out.set_reason_phrase(src.get_reason_phrase())?;
        let mut at = 0;
        for (n, v) in &pairs {
            let name = buf.slice(at..at + n.len());
            at += n.len();
            let mut value = http::HeaderValue::from_maybe_shared(buf.slice(at..at + v.len()))
                .or_err(ErrorType::InternalError, "stored header value")?;
            at += v.len();
            value.set_sensitive(v.is_sensitive());
            out.append_header(name, value)?;
        }
        Ok(out)
    };
    match copy() {
        Ok(out) => (out, total),
        // Not reachable for a header Pingora parsed; keep the response cacheable.
        Err(_) => (src.clone(), total),
    }
}

/// Response header names that `http` keeps static (no allocation per map);
/// any other name is charged as if allocated (a slight overcharge for rarer
/// standard ones).
const COMMON_STANDARD: [http::HeaderName; 20] = [
    http::header::ACCEPT_RANGES,
    http::header::AGE,
    http::header::CACHE_CONTROL,
    http::header::CONNECTION,
    http::header::CONTENT_ENCODING,
    http::header::CONTENT_LANGUAGE,
    http::header::CONTENT_LENGTH,
    http::header::CONTENT_LOCATION,
    http::header::CONTENT_RANGE,
    http::header::CONTENT_TYPE,
    http::header::DATE,
    http::header::ETAG,
    http::header::EXPIRES,
    http::header::LAST_MODIFIED,
    http::header::LOCATION,
    http::header::SERVER,
    http::header::SET_COOKIE,
    http::header::TRANSFER_ENCODING,
    http::header::VARY,
    http::header::STRICT_TRANSPORT_SECURITY,
];

/// Heap bytes a compacted header holds: its map slots (both maps), the shared
/// name/value buffer, and the names `http` allocates itself (non-standard
/// ones, lower-cased).
fn header_heap_bytes(header: &ResponseHeader, compact_len: usize) -> u64 {
    let custom_names: usize = header
        .headers
        .keys()
        .filter(|k| !COMMON_STANDARD.contains(k))
        .map(|k| k.as_str().len() + 32)
        .sum();
    header.headers.capacity() as u64 * HEADER_SLOT + compact_len as u64 + custom_names as u64
}

#[derive(Clone)]
struct ByWeight;

impl Weighter<HashBinary, Arc<Entry>> for ByWeight {
    fn weight(&self, _key: &HashBinary, val: &Arc<Entry>) -> u64 {
        val.weight() // never 0: ENTRY_OVERHEAD
    }
}

/// Which Vary variants are stored for one URI. A response without variance is
/// stored under the URI's own hash (`combined_bin() == primary_bin()`) and is
/// not indexed, so the index grows only with stored variants, and shrinks as
/// they are evicted or purged.
type VariantIndex = Arc<Mutex<HashMap<HashBinary, Vec<HashBinary>>>>;

fn unindex(index: &VariantIndex, primary: &HashBinary, key: &HashBinary) {
    if key == primary {
        return; // never indexed
    }
    if let Ok(mut idx) = index.lock() {
        if let Some(keys) = idx.get_mut(primary) {
            keys.retain(|k| k != key);
            if keys.is_empty() {
                idx.remove(primary);
            }
        }
        shrink(&mut idx);
    }
}

/// Gives back a map's table once it is mostly empty (a `HashMap` keeps its
/// peak capacity otherwise).
fn shrink<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>) {
    if map.capacity() > 64 && map.len() < map.capacity() / 4 {
        map.shrink_to(map.len() * 2);
    }
}

#[derive(Clone)]
struct OnEvict {
    index: VariantIndex,
}

impl Lifecycle<HashBinary, Arc<Entry>> for OnEvict {
    type RequestState = ();
    fn begin_request(&self) {}
    fn on_evict(&self, _state: &mut (), key: HashBinary, val: Arc<Entry>) {
        metrics::cache_eviction();
        unindex(&self.index, &val.primary, &key);
    }
}

/// The production memory backend.
pub struct MemStorage {
    entries: Cache<HashBinary, Arc<Entry>, ByWeight, ahash_like::Build, OnEvict>,
    index: VariantIndex,
    max_object_size: usize,
}

/// quick_cache wants a `BuildHasher`; the keys are already 128-bit hashes.
mod ahash_like {
    use std::hash::{BuildHasher, Hasher};

    #[derive(Clone, Default)]
    pub struct Build;

    pub struct Passthrough(u64);

    impl Hasher for Passthrough {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, bytes: &[u8]) {
            // The key is a uniformly distributed hash: fold it.
            for chunk in bytes.chunks(8) {
                let mut b = [0u8; 8];
                b[..chunk.len()].copy_from_slice(chunk);
                self.0 ^= u64::from_le_bytes(b).rotate_left(17);
            }
        }
    }

    impl BuildHasher for Build {
        type Hasher = Passthrough;
        fn build_hasher(&self) -> Passthrough {
            Passthrough(0x9e37_79b9_7f4a_7c15)
        }
    }
}

impl MemStorage {
    /// A store of `max_size` bytes that can hold any object up to `max_object_size`.
    pub fn new(max_size: u64, max_object_size: u64) -> MemStorage {
        let largest = max_object_size + ENTRY_OVERHEAD + 64 * 1024; // header allowance
        let mut shards =
            (4 * std::thread::available_parallelism().map_or(2, |n| n.get())).next_power_of_two();
        // Each shard must hold the largest object with room to spare.
        while shards > 1 && (max_size / shards as u64) < largest + largest / 8 {
            shards /= 2;
        }
        let options = quick_cache::OptionsBuilder::new()
            .estimated_items_capacity((max_size / 16384).max(64) as usize)
            .weight_capacity(max_size)
            .shards(shards)
            .build()
            .expect("valid cache options");
        let index = VariantIndex::default();
        let on_evict = OnEvict {
            index: index.clone(),
        };
        MemStorage {
            entries: Cache::with_options(options, ByWeight, ahash_like::Build, on_evict),
            index,
            max_object_size: max_object_size as usize,
        }
    }

    /// Entries stored now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes accounted now (bodies, headers, overhead).
    pub fn weight(&self) -> u64 {
        self.entries.weight()
    }

    /// The byte bound.
    pub fn capacity(&self) -> u64 {
        self.entries.capacity()
    }

    /// URIs with Vary variants in the variant index, and the index's table
    /// capacity (it must shrink back as variants go).
    pub fn variant_index_size(&self) -> (usize, usize) {
        self.index
            .lock()
            .map(|idx| (idx.len(), idx.capacity()))
            .unwrap_or_default()
    }

    fn remove(&self, key: &CompactCacheKey) -> bool {
        let combined = key.combined_bin();
        match self.entries.remove(&combined) {
            Some((_, entry)) => {
                unindex(&self.index, &entry.primary, &combined);
                true
            }
            None => false,
        }
    }

    fn insert(&self, key: HashBinary, entry: Entry) {
        let primary = entry.primary;
        // Index first, outside the cache's locks (an insert may evict, and
        // eviction takes the index lock).
        if key != primary {
            if let Ok(mut idx) = self.index.lock() {
                let keys = idx.entry(primary).or_default();
                if !keys.contains(&key) {
                    keys.push(key);
                }
            }
        }
        self.entries.insert(key, Arc::new(entry));
    }

    /// Marks an entry stale (a soft purge): it then revalidates or serves stale
    /// as its directives allow.
    fn expire_entry(&self, key: HashBinary, entry: &Entry) {
        let stale = Entry {
            fresh_until: SystemTime::now() - std::time::Duration::from_secs(1),
            header: entry.header.clone(),
            uri: entry.uri.clone(),
            tags: entry.tags.clone(),
            body: entry.body.clone(),
            ..*entry
        };
        self.entries.insert(key, Arc::new(stale));
    }

    /// Purges (or with `soft`, expires) every entry `pick` selects; returns how many.
    pub fn purge_where(&self, soft: bool, pick: impl Fn(&str, &[String]) -> bool) -> usize {
        let chosen: Vec<(HashBinary, Arc<Entry>)> = self
            .entries
            .iter()
            .filter(|(_, e)| pick(&e.uri, &e.tags))
            .collect();
        for (key, entry) in &chosen {
            if soft {
                self.expire_entry(*key, entry);
            } else if self.entries.remove(key).is_some() {
                unindex(&self.index, &entry.primary, key);
            }
        }
        chosen.len()
    }

    /// Purges (or expires) every variant of one URI; returns how many.
    pub fn purge_uri(&self, primary: &HashBinary, soft: bool) -> usize {
        if !soft {
            return self.remove_uri(primary);
        }
        let mut keys = self
            .index
            .lock()
            .ok()
            .and_then(|idx| idx.get(primary).cloned())
            .unwrap_or_default();
        keys.push(*primary);
        let mut n = 0;
        for k in keys {
            if let Some(e) = self.entries.get(&k) {
                self.expire_entry(k, &e);
                n += 1;
            }
        }
        n
    }

    /// Removes every stored response of a URI, all Vary variants; returns how many.
    pub fn remove_uri(&self, primary: &HashBinary) -> usize {
        let mut keys = self
            .index
            .lock()
            .ok()
            .and_then(|mut idx| {
                let keys = idx.remove(primary);
                shrink(&mut idx);
                keys
            })
            .unwrap_or_default();
        keys.push(*primary);
        keys.iter()
            .filter(|k| self.entries.remove(*k).is_some())
            .count()
    }
}

/// A hit: the whole body, or a range of it (for `Range` requests).
struct Hit {
    body: Bytes,
    range: (usize, usize),
    done: bool,
    /// Memory missed; the shared tier (Redis) had it.
    shared: bool,
}

/// Whether `hit` came from the shared tier (memory had missed).
pub fn is_shared_hit(hit: &HitHandler) -> bool {
    hit.as_any().downcast_ref::<Hit>().is_some_and(|h| h.shared)
}

#[async_trait]
impl HandleHit for Hit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.done {
            return Ok(None);
        }
        self.done = true;
        Ok(Some(self.body.slice(self.range.0..self.range.1)))
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        true
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        let len = self.body.len();
        let end = end.unwrap_or(len).min(len);
        if start > end {
            return Error::e_explain(ErrorType::InternalError, "seek beyond the body");
        }
        self.range = (start, end);
        self.done = false;
        Ok(())
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

/// A miss being filled: chunks are kept until the body is complete.
struct Miss {
    store: &'static MemStorage,
    key: HashBinary,
    primary: HashBinary,
    uri: Arc<str>,
    meta: CacheMeta,
    chunks: Vec<Bytes>,
    size: usize,
}

#[async_trait]
impl HandleMiss for Miss {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        self.size += data.len();
        if self.size > self.store.max_object_size {
            return Error::e_explain(
                ErrorType::InternalError,
                "object over cache.max_object_size",
            );
        }
        if !data.is_empty() {
            self.chunks.push(data);
        }
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<MissFinishType> {
        // One exact-size copy: a chunk may be a slice of a larger read buffer,
        // which would otherwise stay alive (and unaccounted) with the entry.
        let mut all = Vec::with_capacity(self.size);
        for c in &self.chunks {
            all.extend_from_slice(c);
        }
        let body = Bytes::from(all);
        let size = body.len();
        let entry = Entry::new(self.primary, self.uri.clone(), &self.meta, body);
        super::shared::write_behind(
            self.key,
            self.primary,
            entry.uri.clone(),
            entry.tags.clone(),
            &self.meta,
            entry.body.clone(),
        );
        self.store.insert(self.key, entry);
        metrics::cache_store();
        Ok(MissFinishType::Created(size))
    }
}

#[async_trait]
impl Storage for MemStorage {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let combined = key.combined_bin();
        let Some(entry) = self.entries.get(&combined) else {
            // Boxed: this future is allocated and moved for every lookup, and
            // the shared tier's (a Redis round trip) would make it ten times
            // the size a memory hit needs.
            return Ok(Box::pin(self.lookup_shared(key, combined)).await);
        };
        let meta = entry.meta();
        let len = entry.body.len();
        let hit = Hit {
            body: entry.body.clone(),
            range: (0, len),
            done: false,
            shared: false,
        };
        Ok(Some((meta, Box::new(hit))))
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        Ok(Box::new(Miss {
            store: self,
            key: key.combined_bin(),
            primary: key.primary_bin(),
            uri: uri_of(key),
            meta: entry_meta(meta),
            chunks: Vec::new(),
            size: 0,
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        _type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        if self.remove(target.key()) {
            Ok(PurgeOutcome::Purged(None))
        } else {
            Ok(PurgeOutcome::NotFound)
        }
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        let k = key.combined_bin();
        let Some(old) = self.entries.get(&k) else {
            return Ok(false);
        };
        // Revalidated: the shared copy gets the new freshness too.
        super::shared::write_behind(
            k,
            old.primary,
            old.uri.clone(),
            old.tags.clone(),
            meta,
            old.body.clone(),
        );
        self.insert(
            k,
            Entry::new(old.primary, old.uri.clone(), meta, old.body.clone()),
        );
        Ok(true)
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

impl MemStorage {
    /// A memory miss: the shared tier's copy, filled into memory (a soft
    /// purge's copy as stale). `None` when the tier is off, has nothing, or
    /// does not answer within `shared.redis.timeout`.
    async fn lookup_shared(
        &'static self,
        key: &CacheKey,
        combined: HashBinary,
    ) -> Option<(CacheMeta, HitHandler)> {
        let redis = super::shared::tier()?;
        let found = super::shared::lookup(redis, &combined).await?;
        let mut entry = Entry::new(key.primary_bin(), found.uri, &found.meta, found.body);
        if found.stale {
            entry.fresh_until = SystemTime::now() - std::time::Duration::from_secs(1);
        }
        let meta = entry.meta();
        let body = entry.body.clone();
        self.insert(combined, entry);
        let len = body.len();
        let hit = Hit {
            body,
            range: (0, len),
            done: false,
            shared: true,
        };
        Some((meta, Box::new(hit)))
    }
}

/// An owned copy of `meta` for a miss handler (`CacheMeta` is not `Clone`).
fn entry_meta(meta: &CacheMeta) -> CacheMeta {
    let e = Entry::new([0; 16], Arc::from(""), meta, Bytes::new());
    e.meta()
}

/// `host` + `path` of a key built by [`super::policy::key_for`] (its framed
/// parts are scheme, host, path, query).
fn uri_of(key: &CacheKey) -> Arc<str> {
    let mut rest = key.primary_key();
    let mut parts = Vec::with_capacity(4);
    while let Some(colon) = rest.iter().position(|b| *b == b':') {
        let Some(len) = std::str::from_utf8(&rest[..colon])
            .ok()
            .and_then(|l| l.parse::<usize>().ok())
        else {
            break;
        };
        let start = colon + 1;
        if start + len > rest.len() {
            break;
        }
        parts.push(&rest[start..start + len]);
        rest = &rest[start + len..];
    }
    match (parts.get(1), parts.get(2)) {
        (Some(host), Some(path)) => Arc::from(format!(
            "{}{}",
            String::from_utf8_lossy(host),
            String::from_utf8_lossy(path)
        )),
        _ => Arc::from(""),
    }
}
