//! Property tests for every parser that sees client or origin bytes: no
//! panic on any input, and the equivalences the cache key relies on.
//! (`PROPTEST_CASES` raises the case count, e.g. for a longer local run.)

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue};
use pingora::cache::key::CacheHashKey;
use pingora::http::{RequestHeader, ResponseHeader};
use proptest::prelude::*;

use crate::cache::policy;
use crate::cache::request::RequestDirectives;
use crate::cache::targeted::Directives;
use crate::config::QueryKey;

/// Header values a client or origin could send (visible ASCII, spaces, tabs,
/// and some obs-text bytes).
fn header_value() -> impl Strategy<Value = HeaderValue> {
    proptest::collection::vec(
        prop_oneof![
            8 => 0x20u8..0x7f,
            1 => Just(b'\t'),
            1 => 0x80u8..=0xff,
        ],
        0..80,
    )
    .prop_map(|b| HeaderValue::from_bytes(&b).expect("visible bytes are a valid value"))
}

/// Directive-shaped text (more likely to reach the interesting branches).
fn directives() -> impl Strategy<Value = HeaderValue> {
    let word = prop_oneof![
        Just("no-cache".to_owned()),
        Just("no-store".to_owned()),
        Just("only-if-cached".to_owned()),
        "(max-age|max-stale|min-fresh|s-maxage)(=[0-9a-z\"-]{0,12})?",
        "[a-z-]{1,10}",
    ];
    proptest::collection::vec(word, 0..6)
        .prop_map(|ws| HeaderValue::from_str(&ws.join(", ")).expect("ASCII directives"))
}

fn request(headers: &[(&str, HeaderValue)]) -> RequestHeader {
    let mut r = RequestHeader::build("GET", b"/", None).unwrap();
    for (k, v) in headers {
        r.append_header(HeaderName::from_bytes(k.as_bytes()).unwrap(), v.clone())
            .unwrap();
    }
    r
}

fn response(headers: &[(&str, HeaderValue)]) -> ResponseHeader {
    let mut r = ResponseHeader::build(200, None).unwrap();
    for (k, v) in headers {
        r.append_header(HeaderName::from_bytes(k.as_bytes()).unwrap(), v.clone())
            .unwrap();
    }
    r
}

fn rule() -> crate::config::RouteCache {
    crate::config::from_yaml_str(
        "upstreams: { app: { servers: [\"127.0.0.1:1\"] } }\n\
         routes: [ { name: r, match: { path_prefix: / }, upstream: app, \
         cache: { default_ttl: 30s, key: { headers: [accept-language] } } } ]",
    )
    .unwrap()
    .routes[0]
        .cache
        .clone()
        .unwrap()
}

proptest! {
    #[test]
    fn request_cache_control_and_pragma_never_panic(
        cc in prop_oneof![header_value(), directives()],
        pragma in header_value(),
    ) {
        let d = RequestDirectives::parse(&request(&[("cache-control", cc.clone()), ("pragma", pragma.clone())]));
        // Pragma counts only without Cache-Control.
        let only_pragma = RequestDirectives::parse(&request(&[("pragma", pragma)]));
        let _ = (d, only_pragma);
    }

    #[test]
    fn origin_headers_never_panic_the_storability_decision(
        cc in prop_oneof![header_value(), directives()],
        age in prop_oneof![header_value(), "[0-9]{1,25}".prop_map(|s| HeaderValue::from_str(&s).unwrap())],
        expires in header_value(),
        vary in header_value(),
        secs in 0u64..4_000_000_000,
    ) {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        let resp = response(&[("cache-control", cc), ("age", age), ("expires", expires), ("vary", vary)]);
        let _ = policy::decide(&request(&[]), &resp, &rule(), &Directives::select(&resp, None), now, Duration::ZERO);
    }

    #[test]
    fn targeted_fields_never_panic_the_storability_decision(
        own in prop_oneof![header_value(), directives()],
        cdn in prop_oneof![header_value(), directives()],
        date in header_value(),
        secs in 0u64..4_000_000_000,
    ) {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        let resp = response(&[("gateway-cache-control", own), ("cdn-cache-control", cdn), ("date", date)]);
        let field = HeaderName::from_static("gateway-cache-control");
        let directives = Directives::select(&resp, Some(&field));
        let _ = policy::decide(&request(&[]), &resp, &rule(), &directives, now, Duration::from_secs(secs % 100));
    }

    #[test]
    fn variance_never_panics(vary in header_value(), lang in header_value(), cookie in header_value()) {
        let resp = response(&[("vary", vary), ("cache-control", HeaderValue::from_static("max-age=60"))]);
        let req = request(&[("accept-language", lang), ("cookie", cookie)]);
        if let pingora::cache::RespCacheable::Cacheable(meta) =
            policy::decide(&req, &resp, &rule(), &Directives::select(&resp, None), SystemTime::now(), Duration::ZERO)
        {
            let _ = policy::variance(&meta, &req, &rule());
        }
    }

    #[test]
    fn a_normalised_query_keys_the_same_entry(params in proptest::collection::vec("[a-z]{1,3}(=[a-z0-9%]{0,3})?", 0..8)) {
        let q = params.join("&");
        let once = policy::normalize_query(&q, &QueryKey::All);
        prop_assert_eq!(&policy::normalize_query(&once, &QueryKey::All), &once, "idempotent");
        let mut reversed = params.clone();
        reversed.reverse();
        prop_assert_eq!(&policy::normalize_query(&reversed.join("&"), &QueryKey::All), &once, "order-free");
        let a = policy::key_for("h", "/p", &once);
        let b = policy::key_for("h", "/p", &policy::normalize_query(&reversed.join("&"), &QueryKey::All));
        prop_assert_eq!(a.primary_bin(), b.primary_bin());
    }

    #[test]
    fn key_framing_is_unambiguous(
        a in ("[a-z.:]{0,8}", "/[a-z/:0-9]{0,8}", "[a-z=&:0-9]{0,8}"),
        b in ("[a-z.:]{0,8}", "/[a-z/:0-9]{0,8}", "[a-z=&:0-9]{0,8}"),
    ) {
        let ka = policy::key_for(&a.0, &a.1, &a.2);
        let kb = policy::key_for(&b.0, &b.1, &b.2);
        prop_assert_eq!(ka.primary_bin() == kb.primary_bin(), a == b, "{:?} {:?}", a, b);
    }

    #[test]
    fn forwarding_headers_never_panic_and_name_a_real_hop(
        xff in header_value(),
        fwd in header_value(),
        chain in proptest::collection::vec(any::<[u8; 4]>(), 0..5),
        trusted_peer in any::<bool>(),
    ) {
        let peer: SocketAddr = "10.0.0.2:1234".parse().unwrap();
        let trusted: Vec<ipnet::IpNet> = if trusted_peer { vec!["10.0.0.0/8".parse().unwrap()] } else { vec![] };
        let mut headers = HeaderMap::new();
        headers.append("x-forwarded-for", xff);
        headers.append("forwarded", fwd);
        let c = crate::forwarded::Client::derive(Some(peer), &trusted, &headers);
        if !trusted_peer {
            prop_assert_eq!(c.ip, peer.ip(), "an untrusted peer is the client");
        }
        // A well-formed chain: the client is one of its hops or the peer.
        let list: Vec<String> = chain.iter().map(|o| std::net::Ipv4Addr::from(*o).to_string()).collect();
        let mut headers = HeaderMap::new();
        if !list.is_empty() {
            headers.insert("x-forwarded-for", HeaderValue::from_str(&list.join(", ")).unwrap());
        }
        let c = crate::forwarded::Client::derive(Some(peer), &trusted, &headers);
        prop_assert!(c.ip == peer.ip() || list.contains(&c.ip.to_string()), "{:?} from {:?}", c.ip, list);
    }

    #[test]
    fn the_config_loader_never_panics_on_any_yaml(text in "\\PC{0,200}") {
        let _ = crate::config::from_yaml_str(&text);
    }

    #[test]
    fn the_config_loader_never_panics_on_any_value_at_any_key(
        value in prop_oneof![
            "\\PC{0,30}".prop_map(|s| format!("{s:?}")),
            "[0-9a-zA-Z:./*_-]{0,20}",
            "-?[0-9]{1,25}(\\.[0-9]{1,5})?",
        ],
        slot in 0usize..12,
    ) {
        let slots = [
            "listen: @",
            "threads: @",
            "client: { max_body_size: @ }",
            "client: { header_timeout: @ }",
            "cache: { max_size: @ }",
            "trusted_proxies: [@]",
            "ready_path: @",
            "upstreams: { app: { servers: [@] } }",
            "routes: [ { name: @, match: { path_prefix: / }, upstream: app } ]",
            "routes: [ { name: a, match: { path_prefix: @ }, upstream: app } ]",
            "routes: [ { name: a, match: { path_prefix: /, host: @ }, upstream: app } ]",
            "routes: [ { name: a, match: { path_prefix: / }, upstream: app, limits: { rate: { per_client: @ } } } ]",
        ];
        let base = "upstreams: { app: { servers: [\"127.0.0.1:1\"] } }\nroutes: [ { name: z, match: { path_prefix: / }, upstream: app } ]\n";
        let text = format!("{base}{}", slots[slot].replace('@', &value));
        let _ = crate::config::from_yaml_str(&text);
    }
}
