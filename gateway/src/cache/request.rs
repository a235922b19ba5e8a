//! Request cache directives (RFC 9111 §5.2.1): what the client lets the cache do.

use std::time::SystemTime;

use http::header::{self, HeaderName};
use pingora::cache::cache_control::{CacheControl, DirectiveKey};
use pingora::cache::{CacheMeta, ForcedFreshness};
use pingora::http::RequestHeader;

use super::targeted::Directives;

/// The request's `Cache-Control` (or `Pragma: no-cache` without one).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RequestDirectives {
    /// Validate before using a stored response.
    pub no_cache: bool,
    /// Store nothing of this exchange.
    pub no_store: bool,
    /// Accept a stored response at most this old.
    pub max_age: Option<u32>,
    /// Accept a stale response: `Some(None)` any staleness, `Some(Some(n))` up to n seconds.
    pub max_stale: Option<Option<u32>>,
    /// Require the response to stay fresh this much longer.
    pub min_fresh: Option<u32>,
    /// Answer from the cache or 504, never forward.
    pub only_if_cached: bool,
}

fn delta(cc: &CacheControl, name: &str) -> Option<Option<u32>> {
    cc.directives
        .get(&DirectiveKey::from_lowercase(name))
        .map(|v| v.as_ref().and_then(|v| v.parse_as_delta_seconds().ok()))
}

impl RequestDirectives {
    /// Parses the request; `Pragma: no-cache` counts only without `Cache-Control`.
    pub fn parse(req: &RequestHeader) -> RequestDirectives {
        let Some(cc) = CacheControl::from_req_headers(req) else {
            let pragma = req.headers.get_all(header::PRAGMA).iter().any(|v| {
                v.to_str().is_ok_and(|v| {
                    v.split(',')
                        .any(|t| t.trim().eq_ignore_ascii_case("no-cache"))
                })
            });
            return RequestDirectives {
                no_cache: pragma,
                ..Default::default()
            };
        };
        RequestDirectives {
            no_cache: cc.no_cache(),
            no_store: cc.no_store(),
            // An unparsable max-age is treated as 0 (RFC 9111 §1.2.2: be conservative).
            max_age: delta(&cc, "max-age").map(|v| v.unwrap_or(0)),
            max_stale: delta(&cc, "max-stale"),
            min_fresh: delta(&cc, "min-fresh").map(|v| v.unwrap_or(0)),
            only_if_cached: cc.only_if_cached(),
        }
    }

    /// How the request's directives change the use of a stored response.
    ///
    /// `ForceExpired` when the client wants validation (no-cache, max-age,
    /// min-fresh); `ForceFresh` when it accepts this much staleness (max-stale)
    /// and the response does not forbid serving stale. `now` is the time of
    /// the request; `targeted_field` the gateway's own targeted field (the
    /// response's directives are read as [`Directives::select`] does).
    pub fn on_hit(
        &self,
        meta: &CacheMeta,
        is_fresh: bool,
        now: SystemTime,
        targeted_field: Option<&HeaderName>,
    ) -> Option<ForcedFreshness> {
        if self.no_cache {
            return Some(ForcedFreshness::ForceExpired);
        }
        if let Some(max) = self.max_age {
            let age = now.duration_since(meta.epoch()).unwrap_or_default();
            if age.as_secs() > u64::from(max) {
                return Some(ForcedFreshness::ForceExpired);
            }
        }
        if let Some(min) = self.min_fresh {
            let left = meta
                .fresh_until()
                .duration_since(now)
                .map_or(0, |d| d.as_secs());
            if left < u64::from(min) {
                return Some(ForcedFreshness::ForceExpired);
            }
        }
        if let (false, Some(limit)) = (is_fresh, self.max_stale) {
            let stale_for = now
                .duration_since(meta.fresh_until())
                .map_or(0, |d| d.as_secs());
            if limit.is_none_or(|n| stale_for <= u64::from(n))
                && may_serve_stale(meta, targeted_field)
            {
                return Some(ForcedFreshness::ForceFresh);
            }
        }
        None
    }
}

/// must-revalidate, proxy-revalidate, s-maxage and no-cache forbid serving stale
/// whatever the client accepts (RFC 9111 §4.2.4, §5.2.2).
fn may_serve_stale(meta: &CacheMeta, targeted_field: Option<&HeaderName>) -> bool {
    let Some(cc) = Directives::select(meta.response_header(), targeted_field).cc else {
        return true;
    };
    !(cc.must_revalidate()
        || cc.proxy_revalidate()
        || cc.no_cache()
        || cc.has_directive(&DirectiveKey::SMaxAge))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> RequestDirectives {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        RequestDirectives::parse(&r)
    }

    #[test]
    fn parses_directives_and_pragma() {
        assert!(req(&[("pragma", "no-cache")]).no_cache);
        assert!(!req(&[("pragma", "no-cache"), ("cache-control", "max-age=5")]).no_cache);
        let d = req(&[(
            "cache-control",
            "max-age=5, max-stale, min-fresh=2, only-if-cached, no-store",
        )]);
        assert_eq!(d.max_age, Some(5));
        assert_eq!(d.max_stale, Some(None));
        assert_eq!(d.min_fresh, Some(2));
        assert!(d.only_if_cached && d.no_store);
        assert_eq!(
            req(&[("cache-control", "max-stale=30")]).max_stale,
            Some(Some(30))
        );
        assert_eq!(req(&[]), RequestDirectives::default());
    }
}
