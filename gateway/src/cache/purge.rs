//! Purges: one URL (all its Vary variants), a path prefix, a path pattern
//! (glob), a tag recorded from `Surrogate-Key` / `Cache-Tag`, or everything;
//! hard (dropped) or soft (marked stale, then revalidated or served stale as
//! the entry allows).
//!
//! With the shared tier on, a purge (and an invalidation by an unsafe
//! method) also bumps the matching generations in Redis (see
//! [`super::shared`]) and is published on the purge channel; every other
//! instance applies it to its memory ([`apply_remote`]).

use pingora::cache::key::{CacheHashKey, HashBinary};
use serde::{Deserialize, Serialize};

use super::{policy, store};
use crate::state::Snapshot;

/// `POST /cache/purge` body: exactly one of `url`, `prefix`, `pattern`, `tag`, `all`.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PurgeRequest {
    /// `http://host/path?query`: that URL, all its variants.
    pub url: Option<String>,
    /// `/items/` (any host) or `http://host/items/`: every URL under it.
    pub prefix: Option<String>,
    /// A glob over the path (the query is ignored): `*` within one segment,
    /// `**` across segments (`/items/*/comments`, `/static/**`).
    pub pattern: Option<String>,
    /// With `pattern`: only this host (default: any).
    pub host: Option<String>,
    /// A tag the origin sent in `Surrogate-Key` or `Cache-Tag`.
    pub tag: Option<String>,
    /// Everything.
    pub all: bool,
    /// Mark stale instead of dropping.
    pub soft: bool,
}

/// What a purge did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Purged {
    /// Entries of this instance's memory touched.
    pub local: usize,
    /// Whether Redis took it (generations bumped, other instances told);
    /// `None` when nothing is shared.
    pub shared: Option<bool>,
}

/// A purge as it travels on the channel.
#[derive(Debug, Deserialize, Serialize)]
struct Message {
    /// The sending instance (it skips its own messages).
    from: String,
    purge: PurgeRequest,
}

/// Purges what the request selects, here and (when the tier is on) in Redis
/// and on every other instance.
pub async fn execute(req: &PurgeRequest, snap: &Snapshot) -> Result<Purged, String> {
    let local = execute_local(req, snap)?;
    let shared = match super::shared::tier() {
        Some(redis) => Some(fan_out(redis, req, selector(req, snap)).await),
        None => None,
    };
    Ok(Purged { local, shared })
}

/// The generation selector `req` bumps in Redis; `None` for a URL that no
/// caching route serves (nothing of it is stored anywhere).
fn selector(req: &PurgeRequest, snap: &Snapshot) -> Option<String> {
    use super::shared::{pattern_selector, prefix_selector};
    Some(if let Some(url) = &req.url {
        let u = url.parse::<http::Uri>().ok()?;
        let host = u.authority()?.as_str().to_owned();
        let primary = url_primary(snap, &host, u.path(), u.query().unwrap_or(""))?;
        format!("u:{}", crate::shared::hex(&primary))
    } else if let Some(prefix) = &req.prefix {
        let path = match prefix.strip_prefix("http://") {
            Some(rest) => &rest[rest.find('/').unwrap_or(rest.len())..],
            None => prefix.as_str(),
        };
        prefix_selector(if path.is_empty() { "/" } else { path })
    } else if let Some(pattern) = &req.pattern {
        pattern_selector(pattern)
    } else if let Some(tag) = &req.tag {
        format!("t:{tag}")
    } else {
        "a".to_owned()
    })
}

/// Bumps the generation of `selector` and publishes `req`; `false` when
/// Redis did not take both.
async fn fan_out(
    redis: &crate::shared::Redis,
    req: &PurgeRequest,
    selector: Option<String>,
) -> bool {
    let Some(selector) = selector else {
        return true;
    };
    let bumped = super::shared::bump(redis, &[selector], req.soft).await;
    let msg = Message {
        from: redis.instance().to_owned(),
        purge: req.clone(),
    };
    let published = match serde_json::to_string(&msg) {
        Ok(payload) => redis.publish(payload).await,
        Err(_) => false,
    };
    bumped && published
}

/// Applies a purge another instance published to this instance's memory.
pub fn apply_remote(payload: &[u8], snap: &Snapshot) {
    let Ok(msg) = serde_json::from_slice::<Message>(payload) else {
        tracing::warn!("shared purge channel: a message that is not a purge, ignored");
        return;
    };
    if crate::shared::get().is_some_and(|r| r.instance() == msg.from) {
        return;
    }
    crate::metrics::shared_purge_received();
    if let Err(e) = execute_local(&msg.purge, snap) {
        tracing::warn!("shared purge channel: {e}");
    }
}

/// An invalidation by an unsafe method (RFC 9111 §4.4) of one URL: here, in
/// Redis and on every other instance (the fan-out runs in the background).
pub fn invalidate_url(snap: &Snapshot, host: &str, path: &str, query: &str) -> usize {
    let n = url_purge(snap, host, path, query, false);
    if let (Some(redis), Ok(rt)) = (super::shared::tier(), tokio::runtime::Handle::try_current()) {
        let req = PurgeRequest {
            url: Some(if query.is_empty() {
                format!("http://{host}{path}")
            } else {
                format!("http://{host}{path}?{query}")
            }),
            ..PurgeRequest::default()
        };
        let selector = selector(&req, snap);
        rt.spawn(async move {
            fan_out(redis, &req, selector).await;
        });
    }
    n
}

/// Purges what the request selects in this instance's memory; returns how
/// many entries it touched.
pub fn execute_local(req: &PurgeRequest, snap: &Snapshot) -> Result<usize, String> {
    let selectors = [
        req.url.is_some(),
        req.prefix.is_some(),
        req.pattern.is_some(),
        req.tag.is_some(),
        req.all,
    ];
    if selectors.iter().filter(|s| **s).count() != 1 {
        return Err("give exactly one of url, prefix, pattern, tag or all".into());
    }
    if req.host.is_some() && req.pattern.is_none() {
        return Err("host goes with pattern".into());
    }
    let Some(store) = store() else { return Ok(0) };
    let n = if let Some(url) = &req.url {
        let uri: http::Uri = url.parse().map_err(|_| format!("{url:?} is not a URL"))?;
        let host = uri
            .authority()
            .map(|a| a.as_str())
            .ok_or("url must be absolute: http://host/path")?;
        url_purge(snap, host, uri.path(), uri.query().unwrap_or(""), req.soft)
    } else if let Some(prefix) = &req.prefix {
        let (host, path) = match prefix.strip_prefix("http://") {
            Some(rest) => {
                let slash = rest.find('/').unwrap_or(rest.len());
                (
                    Some(rest[..slash].to_ascii_lowercase()),
                    rest[slash..].to_owned(),
                )
            }
            None if prefix.starts_with('/') => (None, prefix.clone()),
            None => return Err("prefix is a path (/items/) or http://host/path".into()),
        };
        store.purge_where(req.soft, |uri, _| {
            let split = uri.find('/').unwrap_or(uri.len());
            host.as_deref().is_none_or(|h| h == &uri[..split])
                && uri[split..].starts_with(path.as_str())
        })
    } else if let Some(pattern) = &req.pattern {
        let glob = Glob::new(pattern)?;
        let host = req.host.as_ref().map(|h| h.to_ascii_lowercase());
        store.purge_where(req.soft, |uri, _| {
            let split = uri.find('/').unwrap_or(uri.len());
            host.as_deref().is_none_or(|h| h == &uri[..split]) && glob.matches(&uri[split..])
        })
    } else if let Some(tag) = &req.tag {
        store.purge_where(req.soft, |_, tags| tags.iter().any(|t| t == tag))
    } else {
        store.purge_where(req.soft, |_, _| true)
    };
    crate::metrics::cache_purged(n);
    if n > 0 && !req.soft {
        // The entries' memory is free now: give it back to the system at once.
        crate::alloc::release();
    }
    Ok(n)
}

/// Purges one URL under the key rule of the caching route that serves GET for it.
pub fn url_purge(snap: &Snapshot, host: &str, path: &str, query: &str, soft: bool) -> usize {
    let Some(store) = store() else { return 0 };
    match url_primary(snap, host, path, query) {
        Some(primary) => store.purge_uri(&primary, soft),
        None => 0,
    }
}

/// The URL hash a URL is stored under (all its variants share it), by the
/// key rule of the caching route that serves GET for it.
fn url_primary(snap: &Snapshot, host: &str, path: &str, query: &str) -> Option<HashBinary> {
    let i = crate::routes::find(&snap.config.routes, &http::Method::GET, Some(host), path)?;
    let rule = snap.config.routes[i].cache.as_ref()?;
    let key = policy::key_for(host, path, &policy::normalize_query(query, &rule.query));
    Some(key.primary_bin())
}

/// A path glob: `*` matches within one segment, `**` across segments, and
/// `/**/` also matches a single `/` (so `/a/**/b` matches `/a/b`).
#[derive(Debug)]
pub struct Glob(Vec<Token>);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Token {
    Byte(u8),
    /// `*`: any run of bytes without `/`.
    Star,
    /// `**`: any run of bytes.
    Any,
    /// `**/`: nothing, or any run of bytes that ends with `/`.
    AnyDir,
}

impl Glob {
    /// Compiles `pattern`, which must start with `/`.
    pub fn new(pattern: &str) -> Result<Glob, String> {
        if !pattern.starts_with('/') || pattern.len() > 1024 {
            return Err(format!(
                "pattern {pattern:?} must be a path starting with '/' (at most 1024 bytes)"
            ));
        }
        let b = pattern.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            match (b[i], b.get(i + 1), b.get(i + 2)) {
                (b'*', Some(b'*'), Some(b'/')) => {
                    out.push(Token::AnyDir);
                    i += 3;
                }
                (b'*', Some(b'*'), _) => {
                    out.push(Token::Any);
                    i += 2;
                }
                (b'*', _, _) => {
                    out.push(Token::Star);
                    i += 1;
                }
                (c, _, _) => {
                    out.push(Token::Byte(c));
                    i += 1;
                }
            }
        }
        Ok(Glob(out))
    }

    /// Whether `path` matches; O(pattern × path), whatever the stars.
    pub fn matches(&self, path: &str) -> bool {
        let t = path.as_bytes();
        // ok[j]: the tokens so far match t[..j].
        let mut ok = vec![false; t.len() + 1];
        ok[0] = true;
        for tok in &self.0 {
            let mut next = vec![false; t.len() + 1];
            match tok {
                Token::Byte(c) => {
                    for j in 0..t.len() {
                        next[j + 1] = ok[j] && t[j] == *c;
                    }
                }
                Token::Star => {
                    for j in 0..=t.len() {
                        next[j] = ok[j] || (j > 0 && next[j - 1] && t[j - 1] != b'/');
                    }
                }
                Token::Any => {
                    for j in 0..=t.len() {
                        next[j] = ok[j] || (j > 0 && next[j - 1]);
                    }
                }
                Token::AnyDir => {
                    // Any run ending in '/', or nothing.
                    let mut reach = false;
                    for j in 0..=t.len() {
                        next[j] = ok[j] || (reach && j > 0 && t[j - 1] == b'/');
                        reach = reach || ok[j];
                    }
                }
            }
            ok = next;
        }
        ok[t.len()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_segments_and_across() {
        let cases = [
            ("/items/*/comments", "/items/42/comments", true),
            ("/items/*/comments", "/items/4/2/comments", false),
            ("/items/*/comments", "/items//comments", true),
            ("/items/**", "/items/4/2/comments", true),
            ("/items/**", "/items", false),
            ("/a/**/b", "/a/b", true),
            ("/a/**/b", "/a/x/y/b", true),
            ("/a/**/b", "/a/xb", false),
            ("/img/*.png", "/img/cat.png", true),
            ("/img/*.png", "/img/x/cat.png", false),
            ("/**", "/", true),
            ("/exact", "/exact", true),
            ("/exact", "/exact/", false),
            (
                "/*/*/*/*/*/*/*/*/*/*/*/*x",
                "/a/a/a/a/a/a/a/a/a/a/a/a",
                false,
            ),
        ];
        for (pattern, path, want) in cases {
            assert_eq!(
                Glob::new(pattern).unwrap().matches(path),
                want,
                "{pattern} {path}"
            );
        }
        assert!(Glob::new("items/*").is_err());
    }
}
