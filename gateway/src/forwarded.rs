//! Client address and forwarding headers.
//!
//! The client address is the socket peer, unless the peer is in
//! `trusted_proxies`: then `X-Forwarded-For` (or, without it, `Forwarded`) is
//! walked from the right, skipping trusted hops, and the first untrusted
//! address is the client. The same address feeds `allow_from`, logs and (later)
//! rate limits. Outgoing headers extend a trusted peer's chain and replace an
//! untrusted peer's.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use http::{HeaderMap, HeaderValue};
use ipnet::IpNet;
use pingora::http::RequestHeader;

/// `X-Forwarded-For`
pub const XFF: &str = "x-forwarded-for";
/// `X-Forwarded-Proto`
pub const XFP: &str = "x-forwarded-proto";
/// `X-Forwarded-Host`
pub const XFH: &str = "x-forwarded-host";
/// `Forwarded` (RFC 7239)
pub const FORWARDED: &str = "forwarded";

/// Who sent a request, as far as the gateway can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client {
    /// The socket peer.
    pub peer: IpAddr,
    /// Whether the peer is a trusted proxy (its forwarding headers are believed).
    pub peer_trusted: bool,
    /// The derived client address.
    pub ip: IpAddr,
}

impl Client {
    /// Derives the client from the socket peer and the request headers.
    pub fn derive(peer: Option<SocketAddr>, trusted: &[IpNet], headers: &HeaderMap) -> Client {
        let peer = peer.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |p| canonical(p.ip()));
        let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
        let peer_trusted = is_trusted(&peer);
        let mut ip = peer;
        if peer_trusted {
            let chain = if headers.contains_key(XFF) {
                xff_chain(headers)
            } else {
                forwarded_chain(headers)
            };
            // Right to left: every trusted hop passes the question on.
            for hop in chain.iter().rev() {
                match hop {
                    Some(addr) => {
                        ip = *addr;
                        if !is_trusted(addr) {
                            break;
                        }
                    }
                    None => break, // garbage or obfuscated: stop at the last known hop
                }
            }
        }
        Client {
            peer,
            peer_trusted,
            ip,
        }
    }

    /// Sets `X-Forwarded-For`, `-Proto`, `-Host` and `Forwarded` on the upstream request.
    pub fn set_headers(
        &self,
        req: &mut RequestHeader,
        scheme: &'static str,
    ) -> pingora::Result<()> {
        let keep = self.peer_trusted;
        let host = req.headers.get(http::header::HOST).cloned();
        let peer = self.peer;
        // Formatted once: both headers carry it (formatting an address is a
        // noticeable part of a pass-through request's own work).
        let peer_text = peer.to_string();

        let xff = match req.headers.get(XFF).filter(|_| keep) {
            Some(prev) => join(prev.as_bytes(), peer_text.as_bytes()),
            None => HeaderValue::from_str(&peer_text).expect("IP is a valid value"),
        };
        // Several incoming XFF lines are one list: fold them before appending.
        let xff = if keep && req.headers.get_all(XFF).iter().count() > 1 {
            let all: Vec<&[u8]> = req
                .headers
                .get_all(XFF)
                .iter()
                .map(|v| v.as_bytes())
                .collect();
            let mut v = all.join(&b", "[..]);
            v.extend_from_slice(b", ");
            v.extend_from_slice(peer_text.as_bytes());
            HeaderValue::from_bytes(&v).unwrap_or(xff)
        } else {
            xff
        };
        req.insert_header(XFF, xff)?;

        if !(keep && req.headers.contains_key(XFP)) {
            req.insert_header(XFP, scheme)?;
        }
        if !(keep && req.headers.contains_key(XFH)) {
            match &host {
                Some(h) => req.insert_header(XFH, h.clone())?,
                None => {
                    req.remove_header(XFH);
                }
            }
        }

        let mut element = String::with_capacity(64);
        element.push_str("for=");
        match peer {
            IpAddr::V4(_) => element.push_str(&peer_text),
            // IPv6 addresses are quoted and bracketed (RFC 7239 §6).
            IpAddr::V6(_) => {
                element.push_str("\"[");
                element.push_str(&peer_text);
                element.push_str("]\"");
            }
        }
        if let Some(h) = host.as_ref().and_then(|h| h.to_str().ok()) {
            if h.bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
            {
                element.push_str(";host=\"");
                element.push_str(h);
                element.push('"');
            }
        }
        element.push_str(";proto=");
        element.push_str(scheme);
        let fwd = match req.headers.get(FORWARDED).filter(|_| keep) {
            Some(prev) => join(prev.as_bytes(), element.as_bytes()),
            None => HeaderValue::from_str(&element).expect("ASCII element"),
        };
        req.insert_header(FORWARDED, fwd)?;
        Ok(())
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn join(prev: &[u8], next: &[u8]) -> HeaderValue {
    let mut v = Vec::with_capacity(prev.len() + 2 + next.len());
    v.extend_from_slice(prev);
    v.extend_from_slice(b", ");
    v.extend_from_slice(next);
    HeaderValue::from_bytes(&v).unwrap_or_else(|_| HeaderValue::from_bytes(next).expect("ASCII"))
}

/// Every `X-Forwarded-For` entry, left to right; `None` for an unparsable one.
fn xff_chain(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    headers
        .get_all(XFF)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("\u{0}").split(','))
        .map(|s| parse_node(s.trim()))
        .collect()
}

/// The `for=` of every `Forwarded` element, left to right.
fn forwarded_chain(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    headers
        .get_all(FORWARDED)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("\u{0}").split(','))
        .map(|element| {
            element
                .split(';')
                .filter_map(|pair| pair.split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("for"))
                .and_then(|(_, v)| parse_node(v.trim().trim_matches('"')))
        })
        .collect()
}

/// `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`, `[2001:db8::1]`, `[2001:db8::1]:80`.
fn parse_node(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(canonical(sa.ip()));
    }
    s.strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .and_then(|r| r.parse::<IpAddr>().ok())
        .map(canonical)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(v: &[&str]) -> Vec<IpNet> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    fn client(peer: &str, trusted: &[&str], h: &[(&'static str, &str)]) -> Client {
        Client::derive(Some(peer.parse().unwrap()), &nets(trusted), &headers(h))
    }

    #[test]
    fn untrusted_peers_are_the_client_whatever_they_claim() {
        let c = client("203.0.113.9:5555", &["10.0.0.0/8"], &[(XFF, "1.1.1.1")]);
        assert_eq!(c.ip.to_string(), "203.0.113.9");
        assert!(!c.peer_trusted);
    }

    #[test]
    fn trusted_chains_are_walked_from_the_right() {
        let t = &["10.0.0.0/8"];
        let c = client("10.0.0.2:1", t, &[(XFF, "6.6.6.6, 198.51.100.7, 10.1.1.1")]);
        assert_eq!(c.ip.to_string(), "198.51.100.7");
        let c = client("10.0.0.2:1", t, &[(XFF, "6.6.6.6"), (XFF, "10.9.9.9")]);
        assert_eq!(c.ip.to_string(), "6.6.6.6", "several lines are one list");
        let c = client("10.0.0.2:1", t, &[(XFF, "10.0.0.7, 10.0.0.8")]);
        assert_eq!(c.ip.to_string(), "10.0.0.7", "all trusted: the leftmost");
        let c = client("10.0.0.2:1", t, &[(XFF, "1.2.3.4, garbage, 10.0.0.8")]);
        assert_eq!(c.ip.to_string(), "10.0.0.8", "stops at garbage");
        let c = client("10.0.0.2:1", t, &[]);
        assert_eq!(c.ip.to_string(), "10.0.0.2");
    }

    #[test]
    fn forwarded_is_used_without_xff() {
        let t = &["10.0.0.0/8"];
        let c = client(
            "10.0.0.2:1",
            t,
            &[(
                FORWARDED,
                r#"for="[2001:db8::17]:4711";proto=https, for=10.0.0.3"#,
            )],
        );
        assert_eq!(c.ip.to_string(), "2001:db8::17");
        let c = client("10.0.0.2:1", t, &[(FORWARDED, "for=_hidden, for=10.0.0.3")]);
        assert_eq!(c.ip.to_string(), "10.0.0.3");
    }

    #[test]
    fn mapped_ipv4_is_ipv4() {
        let c = client(
            "[::ffff:10.0.0.2]:1",
            &["10.0.0.0/8"],
            &[(XFF, "::ffff:1.2.3.4")],
        );
        assert_eq!(c.ip.to_string(), "1.2.3.4");
    }

    #[test]
    fn outgoing_headers_name_the_peer_ipv6_bracketed_in_forwarded() {
        let outgoing = |peer: &str, h: &[(&'static str, &str)]| {
            let c = client(peer, &["10.0.0.0/8"], h);
            let mut req = RequestHeader::build("GET", b"/", None).unwrap();
            req.insert_header("host", "example.com").unwrap();
            for (k, v) in h {
                req.append_header(*k, *v).unwrap();
            }
            c.set_headers(&mut req, "http").unwrap();
            let get = |name: &str| req.headers.get(name).unwrap().to_str().unwrap().to_owned();
            (get(XFF), get(FORWARDED))
        };
        let (xff, fwd) = outgoing("[2001:db8::1]:9", &[]);
        assert_eq!(xff, "2001:db8::1");
        assert_eq!(fwd, r#"for="[2001:db8::1]";host="example.com";proto=http"#);
        let (xff, fwd) = outgoing("203.0.113.9:9", &[]);
        assert_eq!(xff, "203.0.113.9");
        assert_eq!(fwd, r#"for=203.0.113.9;host="example.com";proto=http"#);
        let (xff, fwd) = outgoing(
            "10.0.0.2:9",
            &[(XFF, "198.51.100.7"), (FORWARDED, "for=198.51.100.7")],
        );
        assert_eq!(
            xff, "198.51.100.7, 10.0.0.2",
            "a trusted peer's chain is extended"
        );
        assert_eq!(
            fwd,
            r#"for=198.51.100.7, for=10.0.0.2;host="example.com";proto=http"#
        );
    }
}
