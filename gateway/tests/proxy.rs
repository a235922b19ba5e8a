//! Proxying through the real gateway binary to real origins on loopback.

mod common;

use std::time::Duration;

use common::*;
use futures::StreamExt;

fn one_upstream(origin: &Origin, extra_routes: &str) -> String {
    format!(
        r#"
listen: "{{listen}}"
admin: {{ listen: "{{admin}}" }}
upstreams:
  app: {{ servers: ["{}"], read_timeout: 2s }}
routes:
{extra_routes}
  - {{ name: default, match: {{ path_prefix: / }}, upstream: app }}
"#,
        origin.addr
    )
}

#[tokio::test]
async fn get_and_post_are_proxied_with_bodies() {
    let origin = Origin::start("a").await;
    let gw = Gateway::start(&one_upstream(&origin, "")).await;
    let c = client();

    let r = c.get(gw.url("/hello?x=1")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-origin"], "a");
    assert_eq!(r.text().await.unwrap(), "GET /hello?x=1 0");

    let body = vec![b'z'; 300_000];
    let r = c.post(gw.url("/submit")).body(body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "POST /submit 300000");
}

#[tokio::test]
async fn response_body_streams_before_the_origin_finishes() {
    let origin = Origin::start("a").await;
    let gw = Gateway::start(&one_upstream(&origin, "")).await;
    let r = client().get(gw.url("/stream")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    // The origin holds back its last chunk until released: the first one must
    // already have come through the gateway.
    let first = tokio::time::timeout(WAIT, body.next())
        .await
        .expect("first chunk in time");
    assert_eq!(&first.unwrap().unwrap()[..], b"first\n");
    origin.release();
    let mut rest = Vec::new();
    while let Some(chunk) = tokio::time::timeout(WAIT, body.next())
        .await
        .expect("rest in time")
    {
        rest.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(rest, b"last\n");
}

#[tokio::test]
async fn request_body_streams_before_the_client_finishes() {
    let origin = Origin::start("a").await;
    let gw = Gateway::start(&one_upstream(&origin, "")).await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    let body = reqwest::Body::wrap_stream(tokio_stream(rx));
    let req = tokio::spawn(client().post(gw.url("/upload")).body(body).send());
    tx.send(Ok(vec![b'a'; 1000])).await.unwrap();
    // The rest of the body is only sent once the first chunk reached the origin.
    origin.first_chunk().await;
    tx.send(Ok(vec![b'b'; 5000])).await.unwrap();
    drop(tx);
    let r = tokio::time::timeout(WAIT, req)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "POST /upload 6000");
}

fn tokio_stream<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test]
async fn request_ids_are_kept_when_sane_and_generated_otherwise() {
    let origin = Origin::start("a").await;
    let gw = Gateway::start(&one_upstream(&origin, "")).await;
    let c = client();

    let r = c
        .get(gw.url("/a"))
        .header("x-request-id", "client-id-42")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "client-id-42");

    let r = c.get(gw.url("/b")).send().await.unwrap();
    let generated = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(generated.len(), 32);
    assert!(generated.bytes().all(|b| b.is_ascii_hexdigit()));

    let long = "x".repeat(200);
    let r = c
        .get(gw.url("/c"))
        .header("x-request-id", &long)
        .send()
        .await
        .unwrap();
    let replaced = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_ne!(replaced, long);
    assert_eq!(replaced.len(), 32);

    let r = c
        .get(gw.url("/d"))
        .header("x-request-id", "has space")
        .send()
        .await
        .unwrap();
    assert_ne!(r.headers()["x-request-id"], "has space");

    // The origin saw exactly one id per request, the same one the client got back.
    let seen = origin.seen().await;
    let ids: Vec<Vec<&str>> = seen
        .iter()
        .map(|s| {
            s.headers
                .get_all("x-request-id")
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect()
        })
        .collect();
    assert_eq!(ids[0], ["client-id-42"]);
    assert_eq!(ids[1], [generated.as_str()]);
    assert_eq!(ids[2], [replaced.as_str()]);
    assert_eq!(ids[3].len(), 1);
    assert_ne!(ids[3][0], "has space");
}

#[tokio::test]
async fn routes_match_whole_segments_methods_and_host() {
    let a = Origin::start("a").await;
    let b = Origin::start("b").await;
    let c_ = Origin::start("c").await;
    let d = Origin::start("d").await;
    let yaml = format!(
        r#"
listen: "{{listen}}"
admin: {{ listen: "{{admin}}" }}
upstreams:
  a: {{ servers: ["{}"] }}
  b: {{ servers: ["{}"] }}
  c: {{ servers: ["{}"] }}
  d: {{ servers: ["{}"] }}
routes:
  - {{ name: api-read, match: {{ path_prefix: /items, methods: [GET, HEAD], host: api.example.com }}, upstream: a }}
  - {{ name: wild, match: {{ path_prefix: /items, host: "*.example.com" }}, upstream: b }}
  - {{ name: items, match: {{ path_prefix: /items/ }}, upstream: c }}
  - {{ name: default, match: {{ path_prefix: / }}, upstream: d }}
"#,
        a.addr, b.addr, c_.addr, d.addr
    );
    let gw = Gateway::start(&yaml).await;
    let c = client();
    let origin_of = |method: reqwest::Method, host: &'static str, path: &'static str| {
        let req = c.request(method, gw.url(path)).header("host", host);
        async move {
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 200, "{host}{path}");
            r.headers()["x-origin"].to_str().unwrap().to_owned()
        }
    };
    use reqwest::Method as M;
    assert_eq!(origin_of(M::GET, "api.example.com", "/items").await, "a");
    assert_eq!(
        origin_of(M::GET, "API.example.com:8080", "/items/42").await,
        "a"
    );
    assert_eq!(origin_of(M::HEAD, "api.example.com", "/items/").await, "a");
    assert_eq!(origin_of(M::POST, "api.example.com", "/items").await, "b");
    assert_eq!(origin_of(M::GET, "eu.example.com", "/items/1").await, "b");
    assert_eq!(origin_of(M::GET, "example.com", "/items/1").await, "c");
    assert_eq!(origin_of(M::GET, "example.com", "/items").await, "c");
    assert_eq!(origin_of(M::GET, "example.com", "/itemsX").await, "d");
    assert_eq!(origin_of(M::GET, "api.example.com", "/other").await, "d");
}

#[tokio::test]
async fn round_robin_spreads_requests_over_servers() {
    let a = Origin::start("a").await;
    let b = Origin::start("b").await;
    let yaml = format!(
        r#"
listen: "{{listen}}"
admin: {{ listen: "{{admin}}" }}
upstreams:
  app: {{ servers: ["{}", "{}"] }}
routes:
  - {{ name: default, match: {{ path_prefix: / }}, upstream: app }}
"#,
        a.addr, b.addr
    );
    let gw = Gateway::start(&yaml).await;
    let c = client();
    let mut order = Vec::new();
    for i in 0..10 {
        let r = c.get(gw.url(&format!("/{i}"))).send().await.unwrap();
        order.push(r.headers()["x-origin"].to_str().unwrap().to_owned());
    }
    assert_eq!((a.hits(), b.hits()), (5, 5), "{order:?}");
    assert!(
        order.windows(2).all(|w| w[0] != w[1]),
        "alternates: {order:?}"
    );
}

#[tokio::test]
async fn a_refused_connect_is_retried_on_the_next_server() {
    let live = Origin::start("live").await;
    let dead = format!("127.0.0.1:{}", free_port());
    let yaml = format!(
        r#"
listen: "{{listen}}"
admin: {{ listen: "{{admin}}" }}
upstreams:
  app: {{ servers: ["{dead}", "{}"] }}
routes:
  - {{ name: default, match: {{ path_prefix: / }}, upstream: app }}
"#,
        live.addr
    );
    let gw = Gateway::start(&yaml).await;
    let c = client();
    for i in 0..6 {
        let r = c
            .post(gw.url(&format!("/p{i}")))
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "request {i}");
    }
    assert_eq!(live.hits(), 6);
}

#[tokio::test]
async fn gateway_errors_are_json_with_specific_statuses() {
    let slow = Origin::start("slow").await;
    let dead = format!("127.0.0.1:{}", free_port());
    let yaml = format!(
        r#"
listen: "{{listen}}"
admin: {{ listen: "{{admin}}" }}
upstreams:
  dead: {{ servers: ["{dead}"] }}
  slow: {{ servers: ["{}"], read_timeout: 300ms }}
routes:
  - {{ name: dead, match: {{ path_prefix: /dead }}, upstream: dead }}
  - {{ name: slow, match: {{ path_prefix: /slow }}, upstream: slow }}
  - {{ name: only-get, match: {{ path_prefix: /ro, methods: [GET] }}, upstream: slow }}
"#,
        slow.addr
    );
    let gw = Gateway::start(&yaml).await;
    let c = client();

    let r = c
        .get(gw.url("/nowhere"))
        .header("x-request-id", "rid-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        json_error(r).await,
        ("no route for this request".into(), "rid-1".into())
    );

    let r = c.delete(gw.url("/ro")).send().await.unwrap();
    assert_eq!(
        r.status(),
        404,
        "a method the route does not list matches no route"
    );

    let r = c.get(gw.url("/dead/x")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(json_error(r).await.0, "upstream unavailable");

    let r = c.get(gw.url("/slow/3000")).send().await.unwrap();
    assert_eq!(r.status(), 504);
    assert_eq!(json_error(r).await.0, "upstream timed out");

    // A body-less HEAD error keeps the headers.
    let r = c.head(gw.url("/nowhere")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["content-type"], "application/json");
    assert!(r.bytes().await.unwrap().is_empty());

    // Counted in the metrics.
    gw.wait_metrics(&[
        r#"gateway_errors_total{kind="no_route",route="none"} 3"#,
        r#"gateway_errors_total{kind="upstream_unavailable",route="dead"} 1"#,
        r#"gateway_errors_total{kind="upstream_timeout",route="slow"} 1"#,
    ])
    .await;
}

#[tokio::test]
async fn non_canonical_paths_are_refused() {
    let origin = Origin::start("a").await;
    let gw = Gateway::start(&one_upstream(&origin, "")).await;
    for path in ["/a/../b", "/a/./b", "//a", "/a/%2e%2E/b"] {
        let (status, body) = raw_request(
            gw.listen,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains("non-canonical request path"), "{body}");
    }
    assert_eq!(origin.hits(), 0);
}

#[tokio::test]
async fn pipelined_requests_are_all_answered_in_order() {
    let origin = Origin::start("a").await;
    let yaml = one_upstream(&origin, "").replace("path_prefix: / }", "path_prefix: /ok }");
    let gw = Gateway::start(&yaml).await;
    let req = "GET /ok/1 HTTP/1.1\r\nHost: x\r\n\r\n\
               GET /nope HTTP/1.1\r\nHost: x\r\n\r\n\
               GET /ok/3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let (_, all) = raw_request(gw.listen, req).await;
    let statuses: Vec<&str> = all
        .match_indices("HTTP/1.1 ")
        .map(|(i, m)| &all[i + m.len()..i + m.len() + 3])
        .collect();
    assert_eq!(statuses, ["200", "404", "200"], "{all}");
    let first = all.find("GET /ok/1 0").expect("first body");
    let third = all.find("GET /ok/3 0").expect("third body");
    assert!(first < third, "{all}");
}

/// The client listener reads straight from the socket, without Pingora's L4
/// read buffer (issue #23): a request header several times the HTTP/1
/// session's first 4 KiB buffer, arriving in pieces, and a second request on
/// the same connection are both read whole and answered in order.
#[tokio::test]
async fn a_large_header_in_pieces_then_a_second_request_are_both_answered() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let origin = Origin::start("a").await;
    let gw = Gateway::start(&one_upstream(&origin, "")).await;
    let mut s = tokio::net::TcpStream::connect(gw.listen).await.unwrap();
    s.set_nodelay(true).unwrap();
    let big = "b".repeat(20_000);
    let first = format!("GET /big HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
    for piece in first.as_bytes().chunks(1500) {
        s.write_all(piece).await.unwrap();
        s.flush().await.unwrap();
    }
    s.write_all(b"GET /small HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .expect("both answers within 5 s")
        .unwrap();
    let all = String::from_utf8_lossy(&buf);
    assert_eq!(all.matches("HTTP/1.1 200").count(), 2, "{all}");
    assert!(
        all.find("GET /big").unwrap() < all.find("GET /small").unwrap(),
        "{all}"
    );
    let seen = origin.seen().await;
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen[0].headers.get("x-big").unwrap().as_bytes(),
        big.as_bytes()
    );
}

/// The client stream gathers small writes and sends a response's header with
/// its body in one vectored write (issue #23). A client that does not read
/// until the socket buffers are full makes those writes partial: pipelined
/// responses, from the origin and from the cache (a 2 MB body, then a small
/// one, then the large one as a hit), still arrive whole, in order, every
/// byte in place.
#[tokio::test]
async fn pipelined_large_and_small_responses_to_a_slow_reader_arrive_whole() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let origin = Origin::start("a").await;
    let routes = "  - { name: cached, match: { path_prefix: /resp }, upstream: app, cache: { enabled: true } }";
    let yaml = one_upstream(&origin, routes).replace(
        "routes:",
        "cache: { max_size: 64MiB, max_object_size: 8MiB }\nroutes:",
    );
    let gw = Gateway::start(&yaml).await;
    let large = "/resp?pattern&size=2000000&h=cache-control:max-age%3D600";
    let small = "/resp?pattern&size=700";
    let mut s = tokio::net::TcpStream::connect(gw.listen).await.unwrap();
    let mut reqs = String::new();
    for (path, close) in [(large, false), (small, false), (large, true)] {
        let conn = if close { "Connection: close\r\n" } else { "" };
        reqs.push_str(&format!("GET {path} HTTP/1.1\r\nHost: x\r\n{conn}\r\n"));
    }
    s.write_all(reqs.as_bytes()).await.unwrap();
    // Not reading yet: the gateway's writes stop half-way on a full socket.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("all answers within 10 s")
        .unwrap();
    let mut rest = &buf[..];
    for (size, cache) in [(2_000_000, "MISS"), (700, "MISS"), (2_000_000, "HIT")] {
        let end = rest
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a response header")
            + 4;
        let head = String::from_utf8_lossy(&rest[..end]).to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(
            head.contains(&format!("content-length: {size}\r\n")),
            "{head}"
        );
        let x_cache = head
            .lines()
            .find_map(|l| l.strip_prefix("x-cache: "))
            .unwrap_or("-");
        assert_eq!(x_cache, cache.to_ascii_lowercase(), "{head}");
        let body = &rest[end..end + size];
        assert!(
            body == pattern_body(size).as_slice(),
            "body of {size} bytes differs"
        );
        rest = &rest[end + size..];
    }
    assert!(
        rest.is_empty(),
        "{} bytes after the last answer",
        rest.len()
    );
}

#[tokio::test]
async fn an_error_before_the_body_was_read_closes_the_connection_explicitly() {
    let origin = Origin::start("a").await;
    let yaml = one_upstream(&origin, "").replace("path_prefix: / }", "path_prefix: /ok }");
    let gw = Gateway::start(&yaml).await;
    // The unread body of the first request must never be parsed as a request:
    // either the next request is answered or the first answer says `close`.
    let req = "POST /nope HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
               GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let (status, all) = raw_request(gw.listen, req).await;
    assert_eq!(status, 404, "{all}");
    let answered = all.matches("HTTP/1.1 ").count();
    assert!(
        answered == 2 && all.contains("GET /ok 0")
            || answered == 1 && all.to_ascii_lowercase().contains("connection: close"),
        "{all}"
    );
    assert!(
        !all.contains("400"),
        "body bytes were parsed as a request: {all}"
    );
}

/// Writes raw bytes, reads until the server closes; returns the first status and all text.
async fn raw_request(addr: std::net::SocketAddr, req: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

#[tokio::test]
async fn admin_health_ready_and_metrics() {
    let origin = Origin::start("a").await;
    let gw = Gateway::start(&one_upstream(&origin, "")).await;
    let c = client();
    let r = c.get(gw.admin_url("/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = c.get(gw.admin_url("/ready")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), r#"{"status":"ready"}"#);
    c.get(gw.url("/x")).send().await.unwrap();
    let r = c.get(gw.admin_url("/metrics")).send().await.unwrap();
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    gw.wait_metrics(&[
        r#"gateway_requests_total{cache="none",method="GET",route="default",status="2xx"} 1"#,
    ])
    .await;
    let r = c.get(gw.admin_url("/nope")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    json_error(r).await;
    let r = c.post(gw.admin_url("/health")).send().await.unwrap();
    assert_eq!(r.status(), 405);
}

#[tokio::test]
async fn upstream_connections_are_kept_alive_and_reused() {
    let origin = Origin::start("a").await;
    let gw = Gateway::start(&one_upstream(&origin, "")).await;
    for i in 0..20 {
        // A new client connection each time: only the upstream side is pooled.
        let r = client()
            .get(gw.url(&format!("/k{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let n = origin.connections.load(std::sync::atomic::Ordering::SeqCst);
    // Without reuse this would be 20. A connection goes back to the pool just
    // after its response is sent, so on a busy machine the next request may
    // find it not yet returned (and each worker thread may keep one): a
    // handful, never one per request.
    assert!(
        n <= 6,
        "20 sequential requests used {n} upstream connections"
    );
}

#[tokio::test]
async fn host_must_be_there_once_in_http_1_1() {
    let origin = Origin::start("a").await;
    let gw = Gateway::start(&one_upstream(&origin, "")).await;
    let cases = [
        (
            "GET /x HTTP/1.1\r\nConnection: close\r\n\r\n",
            400,
            "missing or repeated Host header",
        ),
        // Pingora refuses two Host fields itself, before any hook.
        (
            "GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
            400,
            "malformed request",
        ),
        ("GET /x HTTP/1.0\r\n\r\n", 200, ""),
        (
            "GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            200,
            "",
        ),
    ];
    for (req, want, message) in cases {
        let (status, text) = raw_request(gw.listen, req).await;
        assert_eq!(status, want, "{req:?}\n{text}");
        if want == 400 {
            assert_json_error(&text, message);
        }
    }
    assert_eq!(origin.hits(), 2, "the 400s never reached the origin");
    gw.wait_metrics(&[
        r#"gateway_errors_total{kind="bad_host",route="none"} 1"#,
        r#"gateway_errors_total{kind="malformed_request",route="none"} 1"#,
    ])
    .await;
}

/// A raw answer is a JSON error with `message`, a request id in the body and
/// the same one in `x-request-id`, and closes the connection.
fn assert_json_error(text: &str, message: &str) {
    let (head, body) = text.split_once("\r\n\r\n").expect("a header block");
    let head = head.to_ascii_lowercase();
    assert!(head.contains("content-type: application/json"), "{text}");
    assert!(head.contains("connection: close"), "{text}");
    let v: serde_json::Value = serde_json::from_str(body).expect("a JSON body");
    assert!(v["error"].as_str().unwrap().contains(message), "{text}");
    let id = v["request_id"].as_str().unwrap();
    assert!(
        head.contains(&format!("x-request-id: {}", id.to_ascii_lowercase())),
        "{text}"
    );
}

#[tokio::test]
async fn requests_pingora_cannot_parse_get_a_json_400_too() {
    let origin = Origin::start("a").await;
    let gw = Gateway::start(&one_upstream(&origin, "")).await;
    for req in [
        "GET http://other.example/x HTTP/1.1\r\nHost: a.example\r\n\r\n",
        "GET /x HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n",
        "GET http://user@a.example/x HTTP/1.1\r\nHost: a.example\r\n\r\n",
    ] {
        let (status, text) = raw_request(gw.listen, req).await;
        assert_eq!(status, 400, "{req:?}\n{text}");
        assert_json_error(&text, "malformed request");
    }
    assert_eq!(origin.hits(), 0);
    gw.wait_metrics(&[r#"gateway_errors_total{kind="malformed_request",route="none"} 3"#])
        .await;
    // An absolute-form target that agrees with Host is fine (RFC 9112 §3.2.2).
    let (status, text) = raw_request(
        gw.listen,
        "GET http://a.example/x HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{text}");
}

#[tokio::test]
async fn purge_tags_are_stripped_on_every_route_unless_kept() {
    let origin = Origin::start("a").await;
    let tagged = "/resp/t?h=Surrogate-Key:item-1&h=Cache-Tag:t";
    let tags = |gw: &Gateway, path: &str| {
        let url = gw.url(path);
        async move {
            let r = client().get(url).send().await.unwrap();
            let h = r.headers();
            (h.contains_key("surrogate-key"), h.contains_key("cache-tag"))
        }
    };
    // No cache rule on the route: stripped by default.
    let gw = Gateway::start(&one_upstream(&origin, "")).await;
    assert_eq!(tags(&gw, tagged).await, (false, false));
    // The global switch keeps them; a rule's own setting overrides it.
    let yaml = one_upstream(
        &origin,
        "  - { name: strict, match: { path_prefix: /resp/strict }, upstream: app, cache: { keep_surrogate_keys: false } }",
    )
    .replace("upstreams:", "cache: { keep_surrogate_keys: true }\nupstreams:");
    let gw = Gateway::start(&yaml).await;
    assert_eq!(tags(&gw, tagged).await, (true, true));
    let strict = "/resp/strict/t?h=Surrogate-Key:item-1&h=Cache-Tag:t";
    assert_eq!(tags(&gw, strict).await, (false, false));
}
