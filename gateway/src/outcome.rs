//! The one cache-outcome type: it feeds `Cache-Status` (RFC 9211), `X-Cache`,
//! the metrics label and (later) the access-log field.

use std::fmt::Write;

use pingora::cache::{CachePhase, NoCacheReason};

/// What the cache did for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Fresh stored response.
    Hit,
    /// Nothing usable stored: forwarded.
    Miss,
    /// A stale stored response served as is.
    Stale,
    /// Stale, revalidated upstream with 304: stored response served.
    Revalidated,
    /// Stale, revalidation brought a new response.
    Expired,
    /// The cache was skipped for this request (e.g. a bypass rule).
    Bypass,
    /// Looked up or forwarded, but the response may not be stored.
    Uncacheable,
}

impl CacheOutcome {
    /// Every outcome, in declaration order (the metrics handles are indexed by it).
    pub const ALL: [CacheOutcome; 7] = [
        Self::Hit,
        Self::Miss,
        Self::Stale,
        Self::Revalidated,
        Self::Expired,
        Self::Bypass,
        Self::Uncacheable,
    ];

    /// From Pingora's cache phase at response time.
    pub fn from_phase(phase: &CachePhase) -> Option<(CacheOutcome, Option<&'static str>)> {
        Some(match phase {
            CachePhase::Hit => (Self::Hit, None),
            CachePhase::Miss => (Self::Miss, None),
            CachePhase::Stale | CachePhase::StaleUpdating => (Self::Stale, None),
            CachePhase::Revalidated | CachePhase::RevalidatedNoCache(_) => {
                (Self::Revalidated, None)
            }
            CachePhase::Expired => (Self::Expired, None),
            CachePhase::Bypass => (Self::Bypass, None),
            CachePhase::Disabled(NoCacheReason::NeverEnabled) => return None,
            CachePhase::Disabled(reason) => (Self::Uncacheable, Some(reason_str(reason))),
            CachePhase::Uninit | CachePhase::CacheKey => return None,
        })
    }

    /// `X-Cache` value.
    pub fn x_cache(self) -> &'static str {
        match self {
            Self::Hit => "HIT",
            Self::Miss | Self::Uncacheable => "MISS",
            Self::Stale => "STALE",
            Self::Revalidated => "REVALIDATED",
            Self::Expired => "EXPIRED",
            Self::Bypass => "BYPASS",
        }
    }

    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
            Self::Stale => "stale",
            Self::Revalidated => "revalidated",
            Self::Expired => "expired",
            Self::Bypass => "bypass",
            Self::Uncacheable => "uncacheable",
        }
    }

    /// The `Cache-Status` member of this cache. `vary_miss`: on a miss, a
    /// response is stored for the URI, but not for this request's variant.
    #[allow(clippy::too_many_arguments)]
    pub fn cache_status(
        self,
        ttl: Option<i64>,
        stored: bool,
        fwd_status: Option<u16>,
        detail: Option<&str>,
        key: Option<&str>,
        by_request: bool,
        vary_miss: bool,
    ) -> String {
        // Room for the common values without growing.
        let mut s = String::with_capacity(64);
        s.push_str("gateway");
        match self {
            // The stored response could not be used because of the request's directives.
            Self::Revalidated | Self::Expired | Self::Miss | Self::Uncacheable if by_request => {
                s.push_str("; fwd=request")
            }
            Self::Hit => s.push_str("; hit"),
            Self::Stale => s.push_str("; hit; fwd=stale"),
            Self::Miss | Self::Uncacheable if vary_miss => s.push_str("; fwd=vary-miss"),
            Self::Miss | Self::Uncacheable => s.push_str("; fwd=uri-miss"),
            Self::Revalidated | Self::Expired => s.push_str("; fwd=stale"),
            Self::Bypass => s.push_str("; fwd=bypass"),
        }
        if let Some(code) = fwd_status {
            s.push_str("; fwd-status=");
            s.push_str(itoa::Buffer::new().format(code));
        }
        if stored {
            s.push_str("; stored");
        }
        if let Some(ttl) = ttl {
            s.push_str("; ttl=");
            s.push_str(itoa::Buffer::new().format(ttl));
        }
        if let Some(k) = key {
            let escaped = k.replace('\\', "\\\\").replace('"', "\\\"");
            let _ = write!(s, "; key=\"{escaped}\"");
        }
        if let Some(d) = detail {
            s.push_str("; detail=");
            s.push_str(d);
        }
        s
    }
}

fn reason_str(r: &NoCacheReason) -> &'static str {
    match r {
        NoCacheReason::Custom(why) => why,
        NoCacheReason::OriginNotCache => "origin-not-cache",
        NoCacheReason::ResponseTooLarge | NoCacheReason::PredictedResponseTooLarge => "too-large",
        NoCacheReason::StorageError => "storage-error",
        NoCacheReason::UpstreamError => "upstream-error",
        _ => "uncacheable",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_status_uses_rfc9211_vocabulary() {
        assert_eq!(
            CacheOutcome::Hit.cache_status(Some(42), false, None, None, None, false, false),
            "gateway; hit; ttl=42"
        );
        assert_eq!(
            CacheOutcome::Miss.cache_status(
                None,
                true,
                Some(200),
                None,
                Some("k\"1"),
                false,
                false
            ),
            "gateway; fwd=uri-miss; fwd-status=200; stored; key=\"k\\\"1\""
        );
        assert_eq!(
            CacheOutcome::Uncacheable.cache_status(
                None,
                false,
                Some(200),
                Some("no-store"),
                None,
                false,
                false
            ),
            "gateway; fwd=uri-miss; fwd-status=200; detail=no-store"
        );
        assert_eq!(
            CacheOutcome::Miss.cache_status(None, true, Some(200), None, None, false, true),
            "gateway; fwd=vary-miss; fwd-status=200; stored"
        );
    }
}
