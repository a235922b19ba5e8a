//! Hop-by-hop header fields (RFC 9110 §7.6.1): meant for one connection, never
//! forwarded. Removed from requests going up and responses going down, except
//! `Upgrade`/`Connection` of a protocol upgrade.

use http::header::{self, HeaderMap, HeaderName};
use pingora::http::{RequestHeader, ResponseHeader};

/// Always hop-by-hop.
const FIXED: [HeaderName; 5] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::UPGRADE,
];

/// Never removed because `Connection` names them: they frame or route the message.
fn protected(name: &HeaderName) -> bool {
    name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING || name == header::HOST
}

/// Fields named in `Connection`, which are hop-by-hop for this message.
fn listed(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|n| !protected(n) && !FIXED.contains(n))
        .collect()
}

/// The fields a message's `Connection` lists (framing fields excepted).
pub fn connection_listed(headers: &HeaderMap) -> Vec<HeaderName> {
    if headers.contains_key(header::CONNECTION) {
        listed(headers)
    } else {
        Vec::new()
    }
}

/// Whether `name` is hop-by-hop whatever `Connection` says.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    FIXED.contains(name)
}

/// Strips a request that is not a protocol upgrade.
pub fn strip_request(req: &mut RequestHeader) {
    if !req.headers.contains_key(header::CONNECTION) && !has_fixed(&req.headers) {
        return; // the common case: nothing to do, nothing allocated
    }
    for name in listed(&req.headers) {
        req.remove_header(&name);
    }
    for name in &FIXED {
        req.remove_header(name);
    }
}

/// Strips a response that is not a `101 Switching Protocols`.
pub fn strip_response(resp: &mut ResponseHeader) {
    if resp.status == http::StatusCode::SWITCHING_PROTOCOLS {
        return;
    }
    if !resp.headers.contains_key(header::CONNECTION) && !has_fixed(&resp.headers) {
        return;
    }
    for name in listed(&resp.headers) {
        resp.remove_header(&name);
    }
    for name in &FIXED {
        resp.remove_header(name);
    }
}

fn has_fixed(headers: &HeaderMap) -> bool {
    FIXED.iter().any(|n| headers.contains_key(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_listed_fields_go_but_framing_stays() {
        let mut req = RequestHeader::build("POST", b"/", None).unwrap();
        req.insert_header("connection", "keep-alive, x-secret, content-length")
            .unwrap();
        req.insert_header("x-secret", "1").unwrap();
        req.insert_header("keep-alive", "timeout=5").unwrap();
        req.insert_header("te", "trailers").unwrap();
        req.insert_header("content-length", "3").unwrap();
        req.insert_header("x-kept", "1").unwrap();
        strip_request(&mut req);
        let names: Vec<_> = req.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["content-length", "x-kept"]);
    }
}
