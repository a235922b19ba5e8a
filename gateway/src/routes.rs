//! The route table: which configured route takes a request.
//!
//! First match wins, in file order. A route matches when its whole-segment
//! `path_prefix`, its optional `methods`, `host` and `extensions` all match.
//! Matching allocates nothing: hosts compare case-insensitively in place.

use http::Method;

use crate::config::{HostMatch, Route, RouteMatch};

impl RouteMatch {
    /// Whether a request with this method, host (as sent, port allowed) and path matches.
    pub fn matches(&self, method: &Method, host: Option<&str>, path: &str) -> bool {
        path_matches(&self.path_prefix, path)
            && self
                .extensions
                .as_ref()
                .is_none_or(|exts| extension_matches(exts, path))
            && self.methods.as_ref().is_none_or(|ms| ms.contains(method))
            && self.host.as_ref().is_none_or(|h| {
                host.map(strip_port)
                    .is_some_and(|host| host_matches(h, host))
            })
    }
}

/// Index of the first route that takes the request.
pub fn find(routes: &[Route], method: &Method, host: Option<&str>, path: &str) -> Option<usize> {
    routes
        .iter()
        .position(|r| r.matcher.matches(method, host, path))
}

/// `/items` matches `/items`, `/items/` and `/items/42`, never `/itemsX`.
fn path_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return path.starts_with('/');
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// Whether the last path segment ends in `.<ext>` for one of `exts` (lowercase),
/// case-insensitively: `/a/site.CSS` matches `css`, `/css` and `/a.css/` do not.
fn extension_matches(exts: &[String], path: &str) -> bool {
    let last = path.rsplit('/').next().unwrap_or("");
    let Some((stem, ext)) = last.rsplit_once('.') else {
        return false;
    };
    !stem.is_empty() && exts.iter().any(|e| e.eq_ignore_ascii_case(ext))
}

/// `example.com:8080` → `example.com`, `[::1]:80` → `[::1]`; a trailing root dot goes too.
fn strip_port(host: &str) -> &str {
    let h = if host.starts_with('[') {
        match host.find(']') {
            Some(i) => &host[..=i],
            None => host,
        }
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    h.strip_suffix('.').unwrap_or(h)
}

fn host_matches(pattern: &HostMatch, host: &str) -> bool {
    match pattern {
        HostMatch::Exact(h) => host.eq_ignore_ascii_case(h),
        HostMatch::Suffix(s) => {
            host.len() > s.len()
                && host.is_char_boundary(host.len() - s.len())
                && host[host.len() - s.len()..].eq_ignore_ascii_case(s)
        }
    }
}

/// Whether a request path is in the one form every hop reads the same way.
///
/// Dot segments (`/./`, `/../`, also percent-encoded) and empty segments (`//`)
/// are refused so that a prefix rule (`allow_from`, cache rules) cannot be walked
/// around by a path the upstream normalises differently.
pub fn path_is_canonical(path: &str) -> bool {
    let b = path.as_bytes();
    if b.first() != Some(&b'/') {
        return false;
    }
    for seg in path[1..].split('/') {
        if seg.is_empty() {
            continue;
        }
        if is_dot_segment(seg) {
            return false;
        }
    }
    !path.contains("//")
}

fn is_dot_segment(seg: &str) -> bool {
    let mut rest = seg.as_bytes();
    let mut dots = 0;
    while !rest.is_empty() {
        if rest[0] == b'.' {
            rest = &rest[1..];
        } else if rest.len() >= 3
            && rest[0] == b'%'
            && rest[1] == b'2'
            && rest[2].eq_ignore_ascii_case(&b'e')
        {
            rest = &rest[3..];
        } else {
            return false;
        }
        dots += 1;
    }
    dots == 1 || dots == 2
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::from_yaml_str;

    fn table() -> Vec<Route> {
        from_yaml_str(
            r#"
upstreams: { app: { servers: ["127.0.0.1:1"] } }
routes:
  - { name: api, match: { path_prefix: /items/, methods: [GET, HEAD], host: api.example.com }, upstream: app }
  - { name: wild, match: { path_prefix: /items, host: "*.example.com" }, upstream: app }
  - { name: items, match: { path_prefix: /items }, upstream: app }
  - { name: default, match: { path_prefix: / }, upstream: app }
"#,
        )
        .unwrap()
        .routes
    }

    fn name(routes: &[Route], m: Method, host: Option<&str>, path: &str) -> Option<String> {
        find(routes, &m, host, path).map(|i| routes[i].name.clone())
    }

    #[test]
    fn first_match_wins_on_segments_methods_and_host() {
        let t = table();
        let n = |m, h, p| name(&t, m, h, p);
        assert_eq!(
            n(Method::GET, Some("api.example.com"), "/items").as_deref(),
            Some("api")
        );
        assert_eq!(
            n(Method::GET, Some("API.Example.COM:8080"), "/items/4").as_deref(),
            Some("api")
        );
        assert_eq!(
            n(Method::POST, Some("api.example.com"), "/items").as_deref(),
            Some("wild")
        );
        assert_eq!(
            n(Method::GET, Some("x.example.com"), "/items").as_deref(),
            Some("wild")
        );
        assert_eq!(
            n(Method::GET, Some("example.com"), "/items").as_deref(),
            Some("items")
        );
        assert_eq!(n(Method::GET, None, "/items/").as_deref(), Some("items"));
        assert_eq!(n(Method::GET, None, "/itemsX").as_deref(), Some("default"));
        assert_eq!(n(Method::GET, None, "/").as_deref(), Some("default"));
    }

    #[test]
    fn extensions_match_the_last_segment() {
        let exts = vec!["css".to_owned(), "js".to_owned()];
        for (path, want) in [
            ("/a/site.css", true),
            ("/site.CSS", true),
            ("/a/b.min.js", true),
            ("/css", false),
            ("/a.css/", false),
            ("/a.css/x", false),
            ("/.css", false),
            ("/a.png", false),
        ] {
            assert_eq!(extension_matches(&exts, path), want, "{path}");
        }
    }

    #[test]
    fn ports_and_ipv6_literals_are_stripped() {
        assert_eq!(strip_port("a.b:80"), "a.b");
        assert_eq!(strip_port("a.b."), "a.b");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
    }

    #[test]
    fn non_canonical_paths_are_recognised() {
        for ok in ["/", "/a", "/a/b/", "/a/.well-known", "/a/..b", "/%2e%2ex"] {
            assert!(path_is_canonical(ok), "{ok}");
        }
        for bad in [
            "",
            "a",
            "//a",
            "/a//b",
            "/a/../b",
            "/a/./b",
            "/a/..",
            "/%2e%2E/x",
            "/a/.%2e",
        ] {
            assert!(!path_is_canonical(bad), "{bad}");
        }
    }
}
