//! Targeted cache control (RFC 9213): which cache directives govern this
//! gateway's own caching.
//!
//! The target list is, in order, the gateway's own field (`cache.targeted_field`,
//! `Gateway-Cache-Control` by default) and `CDN-Cache-Control`. The first of
//! them that is present, valid and not empty replaces `Cache-Control` (and
//! `Expires`, §2.2) for freshness and storability; `Cache-Control` still
//! governs the caches and browsers after the gateway. Targeted fields are
//! RFC 8941 Dictionaries: a field that does not parse as one, or whose
//! known directives have values of the wrong type (`max-age="60"`,
//! `max-age=-1`), is ignored as a whole (§2.1) and counted.

use http::header::HeaderName;
use pingora::cache::cache_control::{CacheControl, DirectiveKey, DirectiveMap, DirectiveValue};
use pingora::http::ResponseHeader;
use sfv::{BareItem, ListEntry, Parser};

/// The standard field for CDNs (RFC 9213 §3).
pub const CDN_CACHE_CONTROL: HeaderName = HeaderName::from_static("cdn-cache-control");

/// The directives that govern the gateway's caching of one response.
#[derive(Debug, Default)]
pub struct Directives {
    /// The directives: from the targeted field in use, else `Cache-Control`.
    pub cc: Option<CacheControl>,
    /// A targeted field is in use: `Cache-Control` and `Expires` do not count.
    pub targeted: bool,
    /// Targeted fields present but invalid (ignored).
    pub invalid: u8,
}

impl Directives {
    /// Picks the directives of `resp` for a gateway whose own targeted field
    /// is `own` (`None`: only `CDN-Cache-Control`).
    pub fn select(resp: &ResponseHeader, own: Option<&HeaderName>) -> Directives {
        let mut invalid = 0;
        for name in own.into_iter().chain(std::iter::once(&CDN_CACHE_CONTROL)) {
            match parse(resp, name) {
                Field::Absent => {}
                Field::Invalid => invalid += 1,
                Field::Valid(cc) => {
                    return Directives {
                        cc: Some(cc),
                        targeted: true,
                        invalid,
                    }
                }
            }
        }
        Directives {
            cc: CacheControl::from_resp_headers(resp),
            targeted: false,
            invalid,
        }
    }
}

enum Field {
    /// Not there, or empty (RFC 9213 §2.2: then the next one counts).
    Absent,
    Invalid,
    Valid(CacheControl),
}

/// Directives whose value is a number of seconds (an sf-integer ≥ 0).
const DELTA: [&str; 4] = [
    "max-age",
    "s-maxage",
    "stale-while-revalidate",
    "stale-if-error",
];

/// Directives that may carry a list of field names (an sf-string).
const FIELD_LISTS: [&str; 2] = ["private", "no-cache"];

fn parse(resp: &ResponseHeader, name: &HeaderName) -> Field {
    let mut lines = resp.headers.get_all(name).iter().peekable();
    if lines.peek().is_none() {
        return Field::Absent;
    }
    // Several field lines are one field, joined by commas (RFC 9110 §5.3).
    let mut value = Vec::new();
    for (i, line) in lines.enumerate() {
        if i > 0 {
            value.extend_from_slice(b", ");
        }
        value.extend_from_slice(line.as_bytes());
    }
    if value.trim_ascii().is_empty() {
        return Field::Absent;
    }
    let Ok(dict) = Parser::parse_dictionary(&value) else {
        return Field::Invalid;
    };
    let mut directives = DirectiveMap::with_capacity(dict.len());
    for (key, entry) in dict {
        let ListEntry::Item(item) = entry else {
            if DELTA.contains(&key.as_str()) || FIELD_LISTS.contains(&key.as_str()) {
                return Field::Invalid;
            }
            continue; // an unknown directive with a list value: ignored
        };
        let value = match item.bare_item {
            BareItem::Boolean(true) => None,
            // `?0` is the directive's absence.
            BareItem::Boolean(false) => continue,
            BareItem::Integer(n) if n >= 0 && DELTA.contains(&key.as_str()) => {
                Some(DirectiveValue(n.to_string().into_bytes()))
            }
            BareItem::String(s) if FIELD_LISTS.contains(&key.as_str()) => {
                Some(DirectiveValue(s.into_bytes()))
            }
            _ if DELTA.contains(&key.as_str()) || FIELD_LISTS.contains(&key.as_str()) => {
                return Field::Invalid;
            }
            _ => continue, // an unknown directive: ignored, as in Cache-Control
        };
        directives.insert(DirectiveKey::from_lowercase_owned(key), value);
    }
    if directives.is_empty() {
        return Field::Absent;
    }
    Field::Valid(CacheControl {
        directives,
        allow_float_seconds: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::cache::cache_control::InterpretCacheControl;
    use std::time::Duration;

    fn resp(headers: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(200, None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn own() -> HeaderName {
        HeaderName::from_static("gateway-cache-control")
    }

    fn fresh(d: &Directives) -> Option<Duration> {
        d.cc.as_ref().and_then(|cc| cc.fresh_duration())
    }

    #[test]
    fn rfc9213_2_2_the_first_valid_targeted_field_wins() {
        let r = resp(&[
            ("cache-control", "max-age=10"),
            ("cdn-cache-control", "max-age=20"),
            ("gateway-cache-control", "max-age=30"),
        ]);
        let d = Directives::select(&r, Some(&own()));
        assert_eq!(
            (fresh(&d), d.targeted),
            (Some(Duration::from_secs(30)), true)
        );
        // Without the gateway's own field: CDN-Cache-Control.
        let d = Directives::select(&r, None);
        assert_eq!(fresh(&d), Some(Duration::from_secs(20)));
        // Neither: Cache-Control.
        let d = Directives::select(&resp(&[("cache-control", "max-age=10")]), Some(&own()));
        assert_eq!(
            (fresh(&d), d.targeted),
            (Some(Duration::from_secs(10)), false)
        );
        // Empty counts as absent.
        let r = resp(&[("cache-control", "max-age=10"), ("cdn-cache-control", "")]);
        assert_eq!(
            fresh(&Directives::select(&r, None)),
            Some(Duration::from_secs(10))
        );
    }

    #[test]
    fn rfc9213_2_1_an_invalid_field_is_ignored_as_a_whole() {
        for bad in [
            "max-age=60, private=",
            "max-age=\"60\"",
            "max-age=-1",
            "max-age=6.5",
            "max-age=(1 2)",
            "no-store, max-age=60;",
            "max-age=60,,",
        ] {
            let r = resp(&[
                ("cache-control", "max-age=10"),
                ("gateway-cache-control", bad),
                ("cdn-cache-control", "max-age=20, stale-if-error=30"),
            ]);
            let d = Directives::select(&r, Some(&own()));
            assert_eq!(d.invalid, 1, "{bad}");
            assert_eq!(fresh(&d), Some(Duration::from_secs(20)), "{bad}");
        }
    }

    #[test]
    fn directives_map_to_their_cache_control_meaning() {
        let r = resp(&[(
            "cdn-cache-control",
            "private=\"set-cookie\", must-revalidate, stale-while-revalidate=5, x-ext=token, public=?0",
        )]);
        let d = Directives::select(&r, None);
        let cc = d.cc.unwrap();
        assert!(cc.must_revalidate() && !cc.public());
        // `private` with field names: those fields only, not the response.
        assert!(!cc.private());
        let names: Vec<&[u8]> = cc.private_field_names().unwrap().collect();
        assert_eq!(names, [&b"set-cookie"[..]]);
        assert_eq!(cc.stale_while_revalidate().unwrap(), Some(5));
        let r = resp(&[
            ("cdn-cache-control", "no-store"),
            ("cdn-cache-control", "max-age=5"),
        ]);
        let cc = Directives::select(&r, None).cc.unwrap();
        assert!(
            cc.no_store() && cc.max_age().unwrap() == Some(5),
            "lines joined"
        );
    }
}
