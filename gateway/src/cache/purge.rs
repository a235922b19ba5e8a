//! Purges: one URL (all its Vary variants), a path prefix, a tag recorded from
//! `Surrogate-Key` / `Cache-Tag`, or everything; hard (dropped) or soft
//! (marked stale, then revalidated or served stale as the entry allows).

use pingora::cache::key::CacheHashKey;
use serde::Deserialize;

use super::{policy, store};
use crate::state::Snapshot;

/// `POST /cache/purge` body: exactly one of `url`, `prefix`, `tag`, `all`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PurgeRequest {
    /// `http://host/path?query`: that URL, all its variants.
    pub url: Option<String>,
    /// `/items/` (any host) or `http://host/items/`: every URL under it.
    pub prefix: Option<String>,
    /// A tag the origin sent in `Surrogate-Key` or `Cache-Tag`.
    pub tag: Option<String>,
    /// Everything.
    pub all: bool,
    /// Mark stale instead of dropping.
    pub soft: bool,
}

/// Purges what the request selects; returns how many entries it touched.
pub fn execute(req: &PurgeRequest, snap: &Snapshot) -> Result<usize, String> {
    let selectors = [
        req.url.is_some(),
        req.prefix.is_some(),
        req.tag.is_some(),
        req.all,
    ];
    if selectors.iter().filter(|s| **s).count() != 1 {
        return Err("give exactly one of url, prefix, tag or all".into());
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
    } else if let Some(tag) = &req.tag {
        store.purge_where(req.soft, |_, tags| tags.iter().any(|t| t == tag))
    } else {
        store.purge_where(req.soft, |_, _| true)
    };
    crate::metrics::cache_purged(n);
    Ok(n)
}

/// Purges one URL under the key rule of the caching route that serves GET for it.
pub fn url_purge(snap: &Snapshot, host: &str, path: &str, query: &str, soft: bool) -> usize {
    let Some(store) = store() else { return 0 };
    let Some(i) = crate::routes::find(&snap.config.routes, &http::Method::GET, Some(host), path)
    else {
        return 0;
    };
    let Some(rule) = snap.config.routes[i].cache.as_ref() else {
        return 0;
    };
    let key = policy::key_for(host, path, &policy::normalize_query(query, &rule.query));
    store.purge_uri(&key.primary_bin(), soft)
}
