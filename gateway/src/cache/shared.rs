//! The second cache tier, in the Redis the instances share (`cache.shared`).
//!
//! - A memory miss is looked up in Redis (bounded by `shared.redis.timeout`,
//!   skipped while its breaker is open); a hit fills memory and is served
//!   with `Cache-Status: gateway; hit; detail=shared`.
//! - A response stored in memory is written to Redis in the background (never
//!   on the request's path), unless it is over `cache.shared.max_object_size`,
//!   with a Redis TTL of its remaining freshness plus its stale window (capped
//!   at [`MAX_TTL`]).
//! - Purges never scan keys. Each entry records, at store time, the
//!   generation of every selector a purge can name: the whole cache (`a`), its
//!   URL (`u:<hash>`, all Vary variants), each path prefix ending in `/`
//!   (`p:/`, `p:/items/`, ... up to [`PREFIX_DEPTH`] levels) and each tag
//!   (`t:<tag>`). A purge increments the matching generation (`g:` hard,
//!   `s:` soft); a lookup that finds a recorded generation older than the
//!   current one treats the entry as purged (soft: as stale). A prefix or glob
//!   pattern bumps its longest literal prefix cut back to a `/` (purging more
//!   than asked, never less).
//!
//! Entry encoding (Redis hash field `d`), version [`VERSION`]:
//! `[version u8][len u32][CacheMeta part 1][len u32][CacheMeta part 2][len u16][uri][body]`
//! (lengths big-endian; the `CacheMeta` parts are Pingora's own serialisation:
//! header, freshness, stale windows, Vary variance). Field `g` holds the
//! recorded generations as `selector\nhard\nsoft\n` triples. An entry of
//! another version is a miss (and is overwritten by the next store).

use std::sync::{Arc, LazyLock, OnceLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use pingora::cache::key::HashBinary;
use pingora::cache::CacheMeta;

use crate::metrics;
use crate::shared::{self, hex, Redis, Request};

/// Encoding version of a stored entry.
pub const VERSION: u8 = 1;

/// Longest Redis TTL of an entry; generation counters live longer
/// ([`GENERATION_TTL`]), so an entry never outlives the counters it recorded.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

/// Generation counters expire this long after their last bump. A counter
/// that expired reads 0, which every entry that recorded a bumped value
/// treats as a purge (more purged, never less); entries that recorded 0 are
/// older than [`MAX_TTL`] and gone by then.
pub const GENERATION_TTL: Duration = Duration::from_secs(2 * 24 * 3600);

/// Path prefixes recorded per entry at most (`/a/b/c/...` levels); a purge
/// under a deeper prefix bumps the prefix at this depth.
pub const PREFIX_DEPTH: usize = 8;

/// `cache.shared.max_object_size`, once the tier is on.
static MAX_OBJECT: OnceLock<u64> = OnceLock::new();

/// Turns the tier on (at start; `cache.shared` needs a restart to change).
pub fn configure(shared: Option<&crate::config::SharedCache>) {
    if let Some(s) = shared {
        let _ = MAX_OBJECT.set(s.max_object_size);
    }
}

/// The Redis of the tier, when the tier is on.
pub fn tier() -> Option<&'static Redis> {
    MAX_OBJECT.get()?;
    shared::get()
}

/// What Redis held for a key.
pub struct Found {
    /// The metadata (marked stale for a soft purge).
    pub meta: CacheMeta,
    /// `host/path` of the entry.
    pub uri: Arc<str>,
    /// The body.
    pub body: Bytes,
    /// A soft purge reached it: serve it as stale.
    pub stale: bool,
}

/// Reads an entry, its recorded generations against the current ones, in one
/// round trip; deletes an entry a hard purge has reached.
static LOOKUP: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local r = redis.call('HMGET', KEYS[1], 'g', 'd')
if not r[2] then return false end
local state = 'fresh'
for sel, h, s in string.gmatch(r[1] or '', '([^\n]*)\n([^\n]*)\n([^\n]*)\n') do
  if (redis.call('GET', ARGV[1] .. 'g:' .. sel) or '0') ~= h then
    redis.call('DEL', KEYS[1])
    return {'purged'}
  end
  if (redis.call('GET', ARGV[1] .. 's:' .. sel) or '0') ~= s then state = 'stale' end
end
return {state, r[2]}
",
    )
});

/// Stores an entry with the current generations of its selectors.
static STORE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local gens = {}
for i = 4, #ARGV do
  local h = redis.call('GET', ARGV[1] .. 'g:' .. ARGV[i]) or '0'
  local s = redis.call('GET', ARGV[1] .. 's:' .. ARGV[i]) or '0'
  gens[#gens + 1] = ARGV[i] .. '\n' .. h .. '\n' .. s .. '\n'
end
redis.call('HSET', KEYS[1], 'g', table.concat(gens), 'd', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
",
    )
});

/// Looks `key` (a combined cache key hash) up in the tier. `None`: not there,
/// purged, undecodable, or Redis did not answer in time.
pub async fn lookup(redis: &Redis, key: &HashBinary) -> Option<Found> {
    let entry = redis.key(&format!("e:{}", hex(key)));
    let prefix = redis.prefix().to_owned();
    let mut inv = LOOKUP.key(entry);
    inv.arg(prefix);
    let reply: Option<Vec<Vec<u8>>> = redis.run("lookup", Request::Script(&inv)).await?;
    let Some(mut parts) = reply else {
        metrics::shared_lookup("miss");
        return None;
    };
    let stale = match parts.first().map(Vec::as_slice) {
        Some(b"fresh") => false,
        Some(b"stale") => true,
        _ => {
            metrics::shared_lookup("purged");
            return None;
        }
    };
    let data = parts.pop().filter(|_| parts.len() == 1)?;
    let Some((meta, uri, body)) = decode(Bytes::from(data)) else {
        metrics::shared_lookup("undecodable");
        return None;
    };
    metrics::shared_lookup(if stale { "stale" } else { "hit" });
    Some(Found {
        meta,
        uri,
        body,
        stale,
    })
}

/// Writes an entry in the background: `meta` and `body` as memory stored
/// them, `primary` its URL hash, `uri` its `host/path`, `tags` its purge tags.
pub fn write_behind(
    key: HashBinary,
    primary: HashBinary,
    uri: Arc<str>,
    tags: Arc<[String]>,
    meta: &CacheMeta,
    body: Bytes,
) {
    let Some(redis) = tier() else { return };
    let max = MAX_OBJECT.get().copied().unwrap_or(0);
    if body.len() as u64 > max {
        metrics::shared_call("store", "too_large");
        return;
    }
    let Some(ttl) = ttl(meta, SystemTime::now()) else {
        return;
    };
    let Some(data) = encode(meta, &uri, &body) else {
        return;
    };
    let selectors = selectors(&primary, &uri, &tags);
    let entry = redis.key(&format!("e:{}", hex(&key)));
    let prefix = redis.prefix().to_owned();
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    rt.spawn(async move {
        let mut inv = STORE.key(entry);
        inv.arg(prefix).arg(data).arg(ttl.as_millis() as u64);
        for s in &selectors {
            inv.arg(s.as_str());
        }
        redis.run::<i64>("store", Request::Script(&inv)).await;
    });
}

/// Increments the generations of `selectors` (hard: `g:`, soft: `s:`) in
/// one round trip. `false` when Redis did not answer.
pub async fn bump(redis: &Redis, selectors: &[String], soft: bool) -> bool {
    let kind = if soft { "s:" } else { "g:" };
    let mut pipe = redis::pipe();
    for s in selectors {
        let k = redis.key(&format!("{kind}{s}"));
        pipe.incr(&k, 1)
            .ignore()
            .pexpire(&k, GENERATION_TTL.as_millis() as i64)
            .ignore();
    }
    redis
        .run::<()>("purge", Request::Pipe(&pipe))
        .await
        .is_some()
}

/// Redis TTL of a response: its remaining freshness plus its longer stale
/// window, at most [`MAX_TTL`]; `None` when that is nothing.
pub fn ttl(meta: &CacheMeta, now: SystemTime) -> Option<Duration> {
    let fresh = meta.fresh_until().duration_since(now).unwrap_or_default();
    let stale = meta
        .stale_while_revalidate_sec()
        .max(meta.stale_if_error_sec());
    let ttl = (fresh + Duration::from_secs(u64::from(stale))).min(MAX_TTL);
    (ttl >= Duration::from_millis(100)).then_some(ttl)
}

/// Selectors of an entry: `a`, `u:<url hash>`, `p:<prefix>` per level, `t:<tag>`.
pub fn selectors(primary: &HashBinary, uri: &str, tags: &[String]) -> Vec<String> {
    let path = &uri[uri.find('/').unwrap_or(uri.len())..];
    let mut out = Vec::with_capacity(2 + PREFIX_DEPTH + tags.len());
    out.push("a".to_owned());
    out.push(format!("u:{}", hex(primary)));
    for (depth, (i, _)) in path.match_indices('/').enumerate() {
        if depth >= PREFIX_DEPTH {
            break;
        }
        out.push(format!("p:{}", &path[..=i]));
    }
    for t in tags {
        out.push(format!("t:{t}"));
    }
    out
}

/// The prefix selector a purge of paths starting with `path` bumps: `path`
/// cut back to its last `/` (and to [`PREFIX_DEPTH`] levels). Every path under
/// `path` records it.
pub fn prefix_selector(path: &str) -> String {
    let mut cut = path.rfind('/').map_or(0, |i| i + 1);
    if let Some((i, _)) = path.match_indices('/').nth(PREFIX_DEPTH - 1) {
        cut = cut.min(i + 1);
    }
    format!("p:{}", &path[..cut.max(1)])
}

/// The prefix selector of a glob pattern: its literal part before the first `*`.
pub fn pattern_selector(pattern: &str) -> String {
    let literal = &pattern[..pattern.find('*').unwrap_or(pattern.len())];
    prefix_selector(literal)
}

fn encode(meta: &CacheMeta, uri: &str, body: &[u8]) -> Option<Vec<u8>> {
    let (m1, m2) = meta.serialize().ok()?;
    let uri = uri.as_bytes();
    if uri.len() > usize::from(u16::MAX) {
        return None;
    }
    let mut out = Vec::with_capacity(1 + 4 + m1.len() + 4 + m2.len() + 2 + uri.len() + body.len());
    out.push(VERSION);
    out.extend_from_slice(&(m1.len() as u32).to_be_bytes());
    out.extend_from_slice(&m1);
    out.extend_from_slice(&(m2.len() as u32).to_be_bytes());
    out.extend_from_slice(&m2);
    out.extend_from_slice(&(uri.len() as u16).to_be_bytes());
    out.extend_from_slice(uri);
    out.extend_from_slice(body);
    Some(out)
}

fn decode(data: Bytes) -> Option<(CacheMeta, Arc<str>, Bytes)> {
    let mut at = 0usize;
    let take = |at: &mut usize, n: usize| -> Option<Bytes> {
        let end = at.checked_add(n).filter(|e| *e <= data.len())?;
        let b = data.slice(*at..end);
        *at = end;
        Some(b)
    };
    if take(&mut at, 1)?[0] != VERSION {
        return None;
    }
    let n = u32::from_be_bytes(take(&mut at, 4)?.as_ref().try_into().ok()?) as usize;
    let m1 = take(&mut at, n)?;
    let n = u32::from_be_bytes(take(&mut at, 4)?.as_ref().try_into().ok()?) as usize;
    let m2 = take(&mut at, n)?;
    let n = u16::from_be_bytes(take(&mut at, 2)?.as_ref().try_into().ok()?) as usize;
    let uri = std::str::from_utf8(&take(&mut at, n)?).ok()?.into();
    let body = data.slice(at..);
    let meta = CacheMeta::deserialize(&m1, &m2).ok()?;
    Some((meta, uri, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_cover_every_purge_that_reaches_the_entry() {
        let sel = selectors(&[7; 16], "h.example/items/42/comments", &["t1".into()]);
        assert_eq!(sel[0], "a");
        assert!(sel[1].starts_with("u:0707"));
        assert_eq!(&sel[2..5], ["p:/", "p:/items/", "p:/items/42/"]);
        assert_eq!(sel[5], "t:t1");
        // Every purge prefix the path starts with maps to a recorded selector.
        for prefix in ["/", "/it", "/items", "/items/", "/items/4", "/items/42/c"] {
            assert!(sel.contains(&prefix_selector(prefix)), "{prefix}");
        }
        assert!(sel.contains(&pattern_selector("/items/*/comments")));
        assert!(sel.contains(&pattern_selector("/**")));
        // Deep paths: the purge is cut to the recorded depth.
        let deep = "/1/2/3/4/5/6/7/8/9/10/x";
        let sel = selectors(&[0; 16], &format!("h{deep}"), &[]);
        assert_eq!(sel.len(), 2 + PREFIX_DEPTH);
        assert!(sel.contains(&prefix_selector("/1/2/3/4/5/6/7/8/9/10/")));
    }

    #[test]
    fn entries_round_trip_and_other_versions_are_refused() {
        let header = pingora::http::ResponseHeader::build(200, None).unwrap();
        let now = SystemTime::now();
        let meta = CacheMeta::new(now + Duration::from_secs(60), now, 10, 300, header);
        let data = encode(&meta, "h/x", b"body").unwrap();
        let (back, uri, body) = decode(Bytes::from(data.clone())).unwrap();
        assert_eq!((&*uri, &body[..]), ("h/x", &b"body"[..]));
        assert_eq!(back.stale_if_error_sec(), 300);
        let ttl = ttl(&back, now).unwrap();
        assert_eq!(
            ttl,
            Duration::from_secs(360),
            "freshness + the longer stale window"
        );
        let mut other = data.clone();
        other[0] = VERSION + 1;
        assert!(decode(Bytes::from(other)).is_none());
        assert!(
            decode(Bytes::from(data[..10].to_vec())).is_none(),
            "truncated"
        );
    }
}
