//! Forwarding headers, allow_from, client limits and request smuggling shapes.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn config(origin: &Origin, top: &str, routes: &str) -> String {
    format!(
        r#"
listen: "{{listen}}"
admin: {{ listen: "{{admin}}" }}
{top}
upstreams:
  app: {{ servers: ["{}"] }}
routes:
{routes}
  - {{ name: default, match: {{ path_prefix: / }}, upstream: app }}
"#,
        origin.addr
    )
}

fn header<'a>(seen: &'a Seen, name: &str) -> Vec<&'a str> {
    seen.headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect()
}

#[tokio::test]
async fn forwarding_headers_from_an_untrusted_peer_are_replaced() {
    let origin = Origin::start("a").await;
    let gw = Gateway::start(&config(&origin, r#"trusted_proxies: ["10.0.0.0/8"]"#, "")).await;
    client()
        .get(gw.url("/x"))
        .header("host", "shop.example")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "evil.example")
        .header("forwarded", "for=6.6.6.6")
        .send()
        .await
        .unwrap();
    let seen = &origin.seen().await[0];
    assert_eq!(header(seen, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(header(seen, "x-forwarded-proto"), ["http"]);
    assert_eq!(header(seen, "x-forwarded-host"), ["shop.example"]);
    assert_eq!(
        header(seen, "forwarded"),
        [r#"for=127.0.0.1;host="shop.example";proto=http"#]
    );
}

#[tokio::test]
async fn forwarding_headers_from_a_trusted_peer_are_extended() {
    let origin = Origin::start("a").await;
    let top = r#"trusted_proxies: ["127.0.0.1/32"]"#;
    let routes = r#"  - { name: office, match: { path_prefix: /office }, allow_from: ["198.51.100.0/24"], upstream: app }"#;
    let gw = Gateway::start(&config(&origin, top, routes)).await;
    let c = client();
    c.get(gw.url("/x"))
        .header("host", "shop.example")
        .header("x-forwarded-for", "198.51.100.7, 10.0.0.1")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "www.shop.example")
        .header("forwarded", "for=198.51.100.7;proto=https")
        .send()
        .await
        .unwrap();
    let seen = &origin.seen().await[0];
    assert_eq!(
        header(seen, "x-forwarded-for"),
        ["198.51.100.7, 10.0.0.1, 127.0.0.1"]
    );
    assert_eq!(header(seen, "x-forwarded-proto"), ["https"]);
    assert_eq!(header(seen, "x-forwarded-host"), ["www.shop.example"]);
    assert_eq!(
        header(seen, "forwarded"),
        [r#"for=198.51.100.7;proto=https, for=127.0.0.1;host="shop.example";proto=http"#]
    );

    // The derived client address (198.51.100.7; 10.0.0.1 is not trusted here,
    // so the walk stops there) is what allow_from sees.
    let r = c
        .get(gw.url("/office"))
        .header("x-forwarded-for", "198.51.100.7")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .get(gw.url("/office"))
        .header("x-forwarded-for", "198.51.100.7, 10.0.0.1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

#[tokio::test]
async fn allow_from_refuses_other_clients_with_json() {
    let origin = Origin::start("a").await;
    let routes = r#"  - { name: internal, match: { path_prefix: /performance }, allow_from: ["10.0.0.0/8"], upstream: app }
  - { name: local, match: { path_prefix: /local }, allow_from: ["127.0.0.0/8", "::1"], upstream: app }"#;
    // No trusted proxies: a forged X-Forwarded-For changes nothing.
    let gw = Gateway::start(&config(&origin, "", routes)).await;
    let c = client();
    let r = c
        .get(gw.url("/performance/stats"))
        .header("x-forwarded-for", "10.1.2.3")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(json_error(r).await.0.starts_with("forbidden"));
    let r = c.get(gw.url("/local/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(origin.hits(), 1);
    gw.wait_metrics(&[r#"gateway_errors_total{kind="forbidden",route="internal"} 1"#])
        .await;
}

#[tokio::test]
async fn header_limits_answer_431() {
    let origin = Origin::start("a").await;
    let top = "client: { max_headers: 20, max_header_bytes: 2KiB }";
    let gw = Gateway::start(&config(&origin, top, "")).await;
    let c = client();
    let mut req = c.get(gw.url("/x"));
    for i in 0..25 {
        req = req.header(format!("x-h{i}"), "v");
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 431);
    assert_eq!(json_error(r).await.0, "too many request header fields");

    let r = c
        .get(gw.url("/x"))
        .header("x-big", "a".repeat(3000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 431);
    assert_eq!(json_error(r).await.0, "request header too large");

    let r = c
        .get(gw.url("/x"))
        .header("x-ok", "a".repeat(1000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(origin.hits(), 1);
}

#[tokio::test]
async fn body_limit_answers_413_for_both_framings() {
    let origin = Origin::start("a").await;
    let gw = Gateway::start(&config(&origin, "client: { max_body_size: 1KiB }", "")).await;
    let c = client();

    // Declared length: refused before anything reaches the upstream.
    let r = c
        .post(gw.url("/cl"))
        .body(vec![b'x'; 2000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(json_error(r).await.0, "request body too large");
    assert_eq!(origin.hits(), 0);

    // Chunked: counted as it streams.
    let chunks = futures::stream::iter((0..8).map(|_| Ok::<_, std::io::Error>(vec![b'y'; 300])));
    let r = c
        .post(gw.url("/chunked"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(json_error(r).await.0, "request body too large");

    // Within the limit, both framings pass.
    let r = c
        .post(gw.url("/ok"))
        .body(vec![b'x'; 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let chunks = futures::stream::iter((0..3).map(|_| Ok::<_, std::io::Error>(vec![b'y'; 300])));
    let r = c
        .post(gw.url("/ok2"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "POST /ok2 900");
}

#[tokio::test]
async fn a_slow_header_is_cut_at_the_header_timeout() {
    let origin = Origin::start("a").await;
    let gw = Gateway::start(&config(&origin, "client: { header_timeout: 300ms }", "")).await;
    let mut s = tokio::net::TcpStream::connect(gw.listen).await.unwrap();
    let started = Instant::now();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    // Keep trickling bytes: per-read timeouts alone would never fire.
    let mut buf = Vec::new();
    for _ in 0..40 {
        if s.write_all(b"X-Slow: 1\r\n").await.is_err() {
            break;
        }
        let mut chunk = [0u8; 512];
        match tokio::time::timeout(Duration::from_millis(50), s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => {}
        }
    }
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("request header timeout"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "cut after ~300ms, not per read"
    );
    assert_eq!(origin.hits(), 0);

    // A request on a fresh connection is unaffected, and so is the next one on
    // a keep-alive connection after an idle pause longer than the header timeout.
    let c = client();
    assert_eq!(c.get(gw.url("/a")).send().await.unwrap().status(), 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(c.get(gw.url("/b")).send().await.unwrap().status(), 200);
    gw.wait_metrics(&["gateway_request_header_timeouts_total 1"])
        .await;
}

#[tokio::test]
async fn connections_beyond_the_cap_are_turned_away() {
    let origin = Origin::start("a").await;
    let gw = Gateway::start(&config(&origin, "client: { max_connections: 2 }", "")).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = tokio::net::TcpStream::connect(gw.listen).await.unwrap();
        s.write_all(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        held.push(s); // keep-alive: still open
    }
    gw.wait_metrics(&["gateway_downstream_connections 2"]).await;
    let mut s = tokio::net::TcpStream::connect(gw.listen).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("too many open connections"), "{text}");
    gw.wait_metrics(&["gateway_downstream_connections_rejected_total 1"])
        .await;

    drop(held);
    gw.wait_metrics(&["gateway_downstream_connections 0"]).await;
    assert_eq!(
        client()
            .get(gw.url("/again"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn idle_keepalive_connections_close_after_the_keepalive_timeout() {
    let origin = Origin::start("a").await;
    let gw = Gateway::start(&config(&origin, "client: { keepalive_timeout: 1s }", "")).await;
    let mut s = tokio::net::TcpStream::connect(gw.listen).await.unwrap();
    s.write_all(b"GET /k HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let r = tokio::time::timeout(WAIT, s.read_to_end(&mut buf)).await;
    assert!(r.is_ok(), "the gateway closed the idle connection");
    assert!(String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200"));
    let idle = started.elapsed();
    assert!(
        idle >= Duration::from_millis(900) && idle < Duration::from_secs(5),
        "{idle:?}"
    );
}

/// Sends raw bytes and returns everything the gateway answered until it closed.
async fn raw(gw: &Gateway, bytes: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(gw.listen).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test]
async fn smuggling_shapes_never_reach_the_upstream_as_two_requests() {
    let origin = Origin::start("a").await;
    let gw = Gateway::start(&config(&origin, "", "")).await;
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let cases = [
        // CL.TE: front reads Content-Length, back reads chunked.
        format!("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}", 5 + smuggled.len()),
        // TE.CL: front reads chunked, back reads Content-Length.
        format!("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{smuggled}\r\n0\r\n\r\n", smuggled.len()),
        // Duplicate, disagreeing Content-Length.
        format!("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: {}\r\n\r\n{smuggled}", smuggled.len()),
        // A list in one Content-Length.
        format!("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 0, {}\r\n\r\n{smuggled}", smuggled.len()),
        // Obfuscated Transfer-Encoding.
        format!("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nTransfer-Encoding: xchunked\r\n\r\n{smuggled}", smuggled.len()),
        format!("POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n{smuggled}"),
        format!("POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n{smuggled}"),
    ];
    for (i, case) in cases.iter().enumerate() {
        let answer = raw(&gw, case.as_bytes()).await;
        let responses = answer.matches("HTTP/1.1 ").count();
        if i < 2 {
            // Content-Length with Transfer-Encoding is normalised (RFC 9112 §6.1,
            // §6.3): the chunked body is read, the Content-Length dropped, and
            // the connection closed after one answer.
            assert_eq!(responses, 1, "case {i}: one answer, then close: {answer:?}");
            assert!(
                answer.to_ascii_lowercase().contains("connection: close"),
                "case {i}: {answer:?}"
            );
        } else {
            let first = answer.lines().next().unwrap_or("");
            assert!(
                first.starts_with("HTTP/1.1 400") || first.starts_with("HTTP/1.1 501"),
                "case {i}: refused, got {answer:?}"
            );
            assert_eq!(responses, 1, "case {i}: {answer:?}");
        }
    }
    let seen = origin.seen().await;
    assert_eq!(seen.len(), 2, "only the two normalised requests went up");
    for s in &seen {
        assert!(
            !s.headers.contains_key("content-length"),
            "CL dropped: {:?}",
            s.headers
        );
    }
    assert!(
        seen.iter().all(|s| s.uri != "/smuggled"),
        "a smuggled request reached the upstream: {:?}",
        seen.iter().map(|s| &s.uri).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn hop_by_hop_headers_are_stripped_both_ways() {
    let origin = Origin::start("a").await;
    let gw = Gateway::start(&config(&origin, "", "")).await;
    let answer = raw(
        &gw,
        b"GET /h HTTP/1.1\r\nHost: x\r\nConnection: close, X-Private\r\nX-Private: secret\r\n\
          Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\nX-Kept: 1\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = &origin.seen().await[0];
    for gone in [
        "x-private",
        "keep-alive",
        "proxy-connection",
        "te",
        "upgrade",
    ] {
        assert!(
            !seen.headers.contains_key(gone),
            "{gone} reached the upstream"
        );
    }
    assert_eq!(header(seen, "x-kept"), ["1"]);
}
