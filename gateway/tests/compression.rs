//! Response compression after the cache: negotiation by `Accept-Encoding`
//! (q-values, `*`, `identity`), one stored response for every encoding, and
//! what is never compressed. reqwest here decodes nothing: bodies are decoded
//! by the tests with flate2, brotli and zstd.

mod common;

use std::io::Read;

use common::{client, Gateway, Origin};

fn config(origin: &Origin, extra_route: &str) -> String {
    format!(
        r#"
listen: "{{listen}}"
admin: {{ listen: "{{admin}}" }}
access_log: {{ enabled: false }}
compression: {{ enabled: true, algorithms: [br, gzip, zstd], min_size: 1KiB }}
upstreams:
  app: {{ servers: ["{}"] }}
routes:
{extra_route}
  - name: cached
    match: {{ path_prefix: /resp }}
    upstream: app
    cache: {{ enabled: true }}
  - {{ name: main, match: {{ path_prefix: / }}, upstream: app }}
"#,
        origin.addr
    )
}

/// A cacheable, compressible 5000-byte page with a strong ETag.
const PAGE: &str =
    "/resp?size=5000&h=content-type:text/html&h=cache-control:max-age%3D60&h=etag:%22v1%22";

fn decode(encoding: Option<&str>, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match encoding {
        None => out.extend_from_slice(body),
        Some("gzip") => {
            flate2::read::GzDecoder::new(body)
                .read_to_end(&mut out)
                .expect("a complete gzip stream");
        }
        Some("br") => {
            brotli::Decompressor::new(body, 4096)
                .read_to_end(&mut out)
                .expect("a complete brotli stream");
        }
        Some("zstd") => {
            out = zstd::stream::decode_all(body).expect("a complete zstd stream");
        }
        Some(other) => panic!("unexpected encoding {other}"),
    }
    out
}

struct Got {
    status: u16,
    encoding: Option<String>,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

async fn get(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> Got {
    let mut req = client().get(gw.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let encoding = headers
        .get("content-encoding")
        .map(|v| v.to_str().unwrap().to_owned());
    let raw = r.bytes().await.unwrap();
    let body = decode(encoding.as_deref(), &raw);
    Got {
        status,
        encoding,
        headers,
        body,
    }
}

#[tokio::test]
async fn each_client_gets_the_coding_it_prefers_from_one_stored_response() {
    let origin = Origin::start("o").await;
    let gw = Gateway::start(&config(&origin, "")).await;
    let expected = vec![b'x'; 5000];

    let plain = get(&gw, PAGE, &[]).await;
    assert_eq!(plain.status, 200);
    assert_eq!(plain.encoding, None, "no Accept-Encoding: identity");
    assert_eq!(plain.body, expected);
    assert_eq!(plain.headers["x-cache"], "MISS");
    assert_eq!(plain.headers["vary"], "Accept-Encoding");
    assert_eq!(plain.headers["etag"], "\"v1\"");
    assert_eq!(plain.headers["content-length"], "5000");

    let cases: &[(&str, Option<&str>)] = &[
        ("br", Some("br")),
        ("gzip", Some("gzip")),
        ("zstd", Some("zstd")),
        ("gzip;q=0.5, zstd", Some("zstd")),
        ("gzip, deflate, br", Some("br")),
        ("gzip, br;q=0", Some("gzip")),
        ("*", Some("br")),
        ("br;q=0, *", Some("gzip")),
        ("identity", None),
        ("gzip;q=0", None),
        ("br;q=0.5, identity", None),
        ("deflate", None),
    ];
    for (accept, want) in cases {
        let got = get(&gw, PAGE, &[("accept-encoding", accept)]).await;
        assert_eq!(got.status, 200, "{accept}");
        assert_eq!(got.encoding.as_deref(), *want, "Accept-Encoding: {accept}");
        assert_eq!(got.body, expected, "{accept}: the decoded body is the page");
        assert_eq!(
            got.headers["x-cache"], "HIT",
            "{accept}: served from the cache"
        );
        assert_eq!(got.headers["vary"], "Accept-Encoding", "{accept}");
        if want.is_some() {
            assert_eq!(
                got.headers["etag"], "W/\"v1\"",
                "{accept}: a transformed body's ETag is weak"
            );
            assert!(!got.headers.contains_key("content-length"), "{accept}");
            assert!(!got.headers.contains_key("accept-ranges"), "{accept}");
        } else {
            assert_eq!(got.headers["etag"], "\"v1\"", "{accept}");
        }
    }
    assert_eq!(
        origin.hits(),
        1,
        "one origin request for every representation"
    );

    // A revalidation of the compressed representation by its weak ETag.
    let r = client()
        .get(gw.url(PAGE))
        .header("accept-encoding", "gzip")
        .header("if-none-match", "W/\"v1\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    gw.wait_metrics(&[
        r#"gateway_compressed_responses_total{encoding="br"} 3"#,
        r#"gateway_compressed_responses_total{encoding="gzip"} 3"#,
        r#"gateway_compressed_responses_total{encoding="zstd"} 2"#,
        r#"gateway_compression_bytes_total{direction="in",encoding="gzip"} 15000"#,
    ])
    .await;
}

#[tokio::test]
async fn ranges_no_transform_small_encoded_binary_and_head_are_left_alone() {
    let origin = Origin::start("o").await;
    let off = r#"  - name: raw
    match: { path_prefix: /resp/raw }
    upstream: app
    compression: false"#;
    let gw = Gateway::start(&config(&origin, off)).await;
    let br = [("accept-encoding", "br, gzip")];

    let not_compressed = |got: &Got, what: &str| {
        assert_eq!(got.status / 100, 2, "{what}");
        assert_eq!(got.encoding, None, "{what}: not compressed");
    };
    let nt = get(
        &gw,
        "/resp/a?size=5000&h=content-type:text/plain&h=cache-control:no-transform",
        &br,
    )
    .await;
    not_compressed(&nt, "no-transform");
    assert!(
        !nt.headers.contains_key("vary"),
        "not compressible, so no Vary"
    );
    let small = get(&gw, "/resp/b?size=1000&h=content-type:text/plain", &br).await;
    not_compressed(&small, "below min_size");
    let png = get(&gw, "/resp/c?size=5000&h=content-type:image/png", &br).await;
    not_compressed(&png, "image/png");
    let raw = get(&gw, "/resp/raw?size=5000&h=content-type:text/plain", &br).await;
    not_compressed(&raw, "route compression: false");
    let req_nt = get(
        &gw,
        "/resp/d?size=5000&h=content-type:text/plain",
        &[
            ("accept-encoding", "gzip"),
            ("cache-control", "no-transform"),
        ],
    )
    .await;
    not_compressed(&req_nt, "request no-transform");
    assert_eq!(req_nt.headers["vary"], "Accept-Encoding");

    // Already encoded by the origin: passed through as is, never twice.
    let r = client()
        .get(gw.url("/resp/e?size=5000&h=content-type:text/plain&h=content-encoding:gzip"))
        .header("accept-encoding", "gzip, br")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-encoding"], "gzip");
    assert_eq!(r.bytes().await.unwrap().len(), 5000);

    // A range of a stored page: a 206 of identity bytes.
    let page = "/resp/f?size=5000&h=content-type:text/plain&h=cache-control:max-age%3D60";
    get(&gw, page, &[]).await;
    let range = client()
        .get(gw.url(page))
        .header("accept-encoding", "gzip")
        .header("range", "bytes=0-99")
        .send()
        .await
        .unwrap();
    assert_eq!(range.status(), 206);
    assert!(!range.headers().contains_key("content-encoding"));
    assert_eq!(range.bytes().await.unwrap().len(), 100);

    // HEAD: no body to encode; the headers still say what a GET varies on.
    let head = client()
        .head(gw.url(page))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    assert!(!head.headers().contains_key("content-encoding"));
    assert_eq!(head.headers()["vary"], "Accept-Encoding");

    // And the same pages compress for a client that asks, without those conditions.
    let yes = get(&gw, "/resp/g?size=5000&h=content-type:text/plain", &br).await;
    assert_eq!(yes.encoding.as_deref(), Some("br"));
    assert_eq!(yes.body.len(), 5000);
}
