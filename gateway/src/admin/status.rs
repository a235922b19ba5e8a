//! `GET /status`: a live status page for people (no Prometheus needed).
//!
//! One self-contained HTML file (`status.html`, compiled in): its inline
//! script reads the token endpoints (`/stats`, `/cache/stats`, `/limits`,
//! `/upstreams`) every 2 s with `Authorization: Bearer` and draws the last
//! 5 minutes as inline SVG. The page itself is open like `/health`: it holds
//! no data. The token comes from a form or the URL fragment
//! (`/status#token=...`, which browsers never send) and stays in the tab's
//! `sessionStorage`.
//!
//! The Content-Security-Policy allows exactly the page's own inline script
//! and style (by SHA-256, computed once from the embedded file), requests to
//! this listener only, and no framing.

use std::sync::LazyLock;

use base64::Engine as _;
use http::{header, HeaderValue, Response, StatusCode};
use sha2::{Digest, Sha256};

/// The page, as shipped in the binary.
pub const PAGE: &str = include_str!("status.html");

/// The text between the first `<tag>` and the following `</tag>` of the page.
fn inline(tag: &str) -> &'static str {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    PAGE.split_once(&open)
        .and_then(|(_, rest)| rest.split_once(&close))
        .map_or("", |(body, _)| body)
}

/// `'sha256-<base64>'` of a CSP source list.
fn hash_source(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

/// The page's Content-Security-Policy.
pub static CSP: LazyLock<String> = LazyLock::new(|| {
    format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; img-src data:; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        hash_source(inline("script")),
        hash_source(inline("style")),
    )
});

/// The `/status` answer with its security headers.
pub fn response() -> http::Result<Response<Vec<u8>>> {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
        .header(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_str(&CSP).unwrap_or(HeaderValue::from_static("default-src 'none'")),
        )
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(header::REFERRER_POLICY, "no-referrer")
        .header(header::X_FRAME_OPTIONS, "DENY")
        .body(PAGE.as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_inline_script_and_style_whose_hashes_the_policy_allows() {
        assert_eq!(PAGE.matches("<script").count(), 1, "one script element");
        assert_eq!(PAGE.matches("<style").count(), 1, "one style element");
        let (script, style) = (inline("script"), inline("style"));
        assert!(script.contains("sessionStorage") && style.contains("font"));
        assert!(CSP.contains(&hash_source(script)));
        assert!(CSP.contains(&hash_source(style)));
        assert!(!CSP.contains("unsafe"), "{}", *CSP);
        // Known answer: the hash of a known text (as browsers print it).
        assert_eq!(
            hash_source("abc"),
            "'sha256-ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0='"
        );
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        // The only absolute URL is the SVG namespace (a name, never fetched).
        let rest = PAGE.replace("\"http://www.w3.org/2000/svg\"", "");
        for needle in ["http://", "https://", "//cdn", "src=", "@import", "url("] {
            assert!(!rest.contains(needle), "status page contains {needle}");
        }
        // Style attributes would need 'unsafe-hashes'; the page has none.
        assert!(!PAGE.contains(" style="));
    }
}
