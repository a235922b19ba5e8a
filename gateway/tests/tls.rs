//! HTTPS listeners with real clients: `openssl s_client` (SNI, ALPN),
//! `curl --http2` (cache, forwarding headers, limits), reqwest over TLS
//! (certificate swap under keep-alive load) and the `h2` crate (settings).
//! Certificates are made per test with the `openssl` CLI: a throwaway CA and
//! leaf certificates it signs, so every client verifies the chain for real.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{free_port, require_tool, run_gateway, Gateway, Origin, WAIT};

/// The `openssl` CLI answers `version`, not `--version`.
fn have_openssl() -> bool {
    require_tool("curl") && common::require_tool_with("openssl", "version")
}

/// A throwaway CA in a temp dir, and leaf certificates signed by it.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki { dir };
        pki.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=test-ca",
        ]);
        pki
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn ca(&self) -> PathBuf {
        self.path("ca.pem")
    }

    /// Writes `<file>.pem` and `<file>.key`: a leaf with common name `cn`
    /// for the DNS names `dns`. Returns the two paths.
    fn leaf(&self, file: &str, cn: &str, dns: &[&str]) -> (PathBuf, PathBuf) {
        let san: Vec<String> = dns.iter().map(|d| format!("DNS:{d}")).collect();
        let ext = format!(
            "subjectAltName={}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
            san.join(",")
        );
        std::fs::write(self.path(&format!("{file}.ext")), ext).unwrap();
        let (key, csr, pem, ext) = (
            format!("{file}.key"),
            format!("{file}.csr"),
            format!("{file}.pem"),
            format!("{file}.ext"),
        );
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={cn}"),
        ]);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &ext,
        ]);
        (self.path(&pem), self.path(&key))
    }
}

/// A gateway config with one HTTPS listener on `tls` and the given pairs.
fn config(origin: &Origin, tls: SocketAddr, pairs: &[(&Path, &Path)], extra: &str) -> String {
    let certs: Vec<String> = pairs
        .iter()
        .map(|(c, k)| format!("{{ cert: {}, key: {} }}", c.display(), k.display()))
        .collect();
    format!(
        r#"
listen: "{{listen}}"
admin: {{ listen: "{{admin}}", token: "0123456789abcdef0123" }}
access_log: {{ enabled: false }}
shutdown: {{ drain_delay: 0s, grace_period: 2s }}
tls:
  listen: ["{tls}"]
  certificates: [{certs}]
  handshake_timeout: 2s
{extra}
upstreams:
  app: {{ servers: ["{origin}"] }}
routes:
  - name: cached
    match: {{ path_prefix: /resp }}
    upstream: app
    cache: {{ enabled: true, default_ttl: 60s }}
  - {{ name: main, match: {{ path_prefix: / }}, upstream: app }}
"#,
        certs = certs.join(", "),
        origin = origin.addr,
    )
}

fn tls_addr() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().unwrap()
}

/// `openssl s_client` against `addr` with `sni`, offering h2 and http/1.1;
/// returns its output (the handshake summary).
async fn s_client(pki: &Pki, addr: SocketAddr, sni: &str) -> String {
    let out = tokio::process::Command::new("timeout")
        .args(["10", "openssl", "s_client", "-connect", &addr.to_string()])
        .args(["-servername", sni, "-alpn", "h2,http/1.1", "-CAfile"])
        .arg(pki.ca())
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("run openssl s_client");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The common name of the certificate `s_client` was served.
fn served_cn(out: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix("subject="))
        .map(|s| {
            s.trim()
                .trim_start_matches("CN = ")
                .trim_start_matches("CN=")
                .to_owned()
        })
        .unwrap_or_else(|| panic!("no subject in:\n{out}"))
}

/// One `curl` request; returns (HTTP version, status, response headers, body).
/// Async: the origin runs on the test's own runtime.
async fn curl(pki: &Pki, addr: SocketAddr, host: &str, path: &str, args: &[&str]) -> Curl {
    let dir = tempfile::tempdir().unwrap();
    let headers = dir.path().join("headers");
    let body = dir.path().join("body");
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(pki.ca())
        .arg("--resolve")
        .arg(format!("{host}:{}:127.0.0.1", addr.port()))
        .arg("-D")
        .arg(&headers)
        .arg("-o")
        .arg(&body)
        .args(["-w", "%{http_version} %{response_code}"])
        .args(args)
        .arg(format!("https://{host}:{}{path}", addr.port()))
        .output()
        .await
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let w = String::from_utf8_lossy(&out.stdout).into_owned();
    let (version, status) = w.split_once(' ').unwrap();
    Curl {
        version: version.to_owned(),
        status: status.parse().unwrap(),
        headers: std::fs::read_to_string(headers)
            .unwrap()
            .to_ascii_lowercase(),
        body: std::fs::read(body).unwrap_or_default(),
    }
}

struct Curl {
    version: String,
    status: u16,
    /// Lowercased header block(s).
    headers: String,
    body: Vec<u8>,
}

impl Curl {
    fn header(&self, name: &str) -> Option<String> {
        let prefix = format!("{name}: ");
        self.headers
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map(|v| v.trim().to_owned())
    }
}

#[tokio::test]
async fn sni_picks_the_certificate_and_alpn_negotiates_h2() {
    if !have_openssl() {
        return;
    }
    let pki = Pki::new();
    let (a_pem, a_key) = pki.leaf("a", "leaf-a", &["a.test"]);
    let (b_pem, b_key) = pki.leaf("b", "leaf-b", &["*.b.test", "b.test"]);
    let origin = Origin::start("o").await;
    let tls = tls_addr();
    let gw = Gateway::start(&config(
        &origin,
        tls,
        &[(&a_pem, &a_key), (&b_pem, &b_key)],
        "",
    ))
    .await;

    let a = s_client(&pki, tls, "a.test").await;
    assert_eq!(served_cn(&a), "leaf-a", "{a}");
    assert!(a.contains("ALPN protocol: h2"), "{a}");
    assert!(a.contains("Verify return code: 0 (ok)"), "{a}");
    let b = s_client(&pki, tls, "www.b.test").await;
    assert_eq!(served_cn(&b), "leaf-b", "a wildcard name: {b}");
    assert!(b.contains("Verify return code: 0 (ok)"), "{b}");
    let apex = s_client(&pki, tls, "B.TEST").await;
    assert_eq!(served_cn(&apex), "leaf-b", "names are case-insensitive");
    let deep = s_client(&pki, tls, "x.y.b.test").await;
    assert_eq!(
        served_cn(&deep),
        "leaf-a",
        "a wildcard covers one label; else the first pair"
    );
    gw.wait_metrics(&[r#"gateway_tls_handshakes_total{result="ok"}"#])
        .await;
}

#[tokio::test]
async fn curl_http2_is_served_from_the_cache_with_https_forwarded_proto() {
    if !have_openssl() {
        return;
    }
    let pki = Pki::new();
    let (pem, key) = pki.leaf("a", "leaf-a", &["a.test"]);
    let origin = Origin::start("o").await;
    let tls = tls_addr();
    let gw = Gateway::start(&config(&origin, tls, &[(&pem, &key)], "")).await;

    // The origin's Date, 100 s in the past: kept over HTTP/2 too (RFC 9110
    // §6.6.1), from the cache as well (RFC 9111 §4).
    let date = httpdate::fmt_http_date(std::time::SystemTime::now() - Duration::from_secs(100));
    let path = format!(
        "/resp?size=1024&h=cache-control:max-age%3D600&h=date:{}",
        date.replace(' ', "%20")
            .replace(',', "%2C")
            .replace(':', "%3A")
    );
    let path = path.as_str();
    let date = date.to_ascii_lowercase(); // the curl helper reads headers lower-cased
    let first = curl(&pki, tls, "a.test", path, &["--http2"]).await;
    assert_eq!(first.version, "2");
    assert_eq!(first.status, 200);
    assert_eq!(first.body.len(), 1024);
    assert_eq!(first.header("x-cache").as_deref(), Some("miss"));
    assert_eq!(first.header("date").as_deref(), Some(date.as_str()));
    let second = curl(&pki, tls, "a.test", path, &["--http2"]).await;
    assert_eq!(second.version, "2");
    assert_eq!(second.header("x-cache").as_deref(), Some("hit"));
    assert_eq!(second.body.len(), 1024);
    assert_eq!(
        second.header("date").as_deref(),
        Some(date.as_str()),
        "an HTTP/2 hit carries the stored Date"
    );
    let age: u64 = second.header("age").unwrap().parse().unwrap();
    assert!(age >= 100, "Age counts from the stored Date: {age}");
    // HTTP/1.1 over TLS shares the entry.
    let h1 = curl(&pki, tls, "a.test", path, &["--http1.1"]).await;
    assert_eq!(h1.version, "1.1");
    assert_eq!(h1.header("x-cache").as_deref(), Some("hit"));
    assert_eq!(origin.hits(), 1, "the origin was asked once");

    let seen = origin.seen().await;
    assert_eq!(seen[0].headers["x-forwarded-proto"], "https");
    assert!(
        seen[0].headers["forwarded"]
            .to_str()
            .unwrap()
            .contains("proto=https"),
        "{:?}",
        seen[0].headers
    );
    // The plain listener still says http.
    common::client().get(gw.url("/plain")).send().await.unwrap();
    let seen = origin.seen().await;
    assert_eq!(seen.last().unwrap().headers["x-forwarded-proto"], "http");

    // Errors the gateway makes are the same JSON over h2.
    let missing = curl(
        &pki,
        tls,
        "a.test",
        "/resp?x=1",
        &["--http2", "-H", "Cache-Control: only-if-cached"],
    )
    .await;
    assert_eq!(missing.version, "2");
    assert_eq!(missing.status, 504);
    assert!(missing.header("x-request-id").is_some());
    let v: serde_json::Value = serde_json::from_slice(&missing.body).unwrap();
    assert_eq!(
        v["request_id"].as_str(),
        missing.header("x-request-id").as_deref()
    );

    gw.wait_metrics(&[
        r#"gateway_requests_by_protocol_total{protocol="h2",transport="tls"} 3"#,
        r#"gateway_requests_by_protocol_total{protocol="http/1.1",transport="tls"} 1"#,
        r#"gateway_requests_by_protocol_total{protocol="http/1.1",transport="tcp"} 1"#,
    ])
    .await;
}

#[tokio::test]
async fn a_broken_certificate_is_refused_at_check_start_and_reload() {
    if !have_openssl() {
        return;
    }
    let pki = Pki::new();
    let (pem, key) = pki.leaf("a", "leaf-a", &["a.test"]);
    let (_, other_key) = pki.leaf("z", "leaf-z", &["z.test"]);
    let origin = Origin::start("o").await;
    let tls = tls_addr();

    // -t: a garbage certificate and a key of another certificate, each named.
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let conf = dir.path().join("gateway.yaml");
    let text = config(&origin, tls, &[(&garbage, &key), (&pem, &other_key)], "")
        .replace("{listen}", "127.0.0.1:1")
        .replace("{admin}", "127.0.0.1:2");
    std::fs::write(&conf, text).unwrap();
    let (code, _, err) = run_gateway(&["-t", "-c", conf.to_str().unwrap()], &[]);
    assert_ne!(code, 0);
    assert!(err.contains("tls.certificates[0]"), "{err}");
    assert!(err.contains(garbage.to_str().unwrap()), "{err}");
    assert!(err.contains("tls.certificates[1]"), "{err}");
    assert!(
        err.contains(other_key.to_str().unwrap()),
        "the mismatched key is named: {err}"
    );
    let missing = config(&origin, tls, &[(Path::new("/nonexistent/c.pem"), &key)], "")
        .replace("{listen}", "127.0.0.1:1")
        .replace("{admin}", "127.0.0.1:2");
    std::fs::write(&conf, missing).unwrap();
    let (code, _, err) = run_gateway(&["-t", "-c", conf.to_str().unwrap()], &[]);
    assert_ne!(code, 0);
    assert!(
        err.contains("tls.certificates[0].cert") && err.contains("/nonexistent/c.pem"),
        "{err}"
    );

    // Running: a broken file on SIGHUP is refused and the old certificate serves.
    let live = dir.path().join("live.pem");
    std::fs::copy(&pem, &live).unwrap();
    let yaml = config(&origin, tls, &[(&live, &key)], "");
    let gw = Gateway::start(&yaml).await;
    assert_eq!(served_cn(&s_client(&pki, tls, "a.test").await), "leaf-a");
    std::fs::write(&live, "garbage").unwrap();
    gw.signal("HUP");
    gw.wait_metrics(&[r#"gateway_config_reloads_total{result="failure"} 1"#])
        .await;
    let v = gw.admin_json("/config", "0123456789abcdef0123").await;
    let error = v["last_reload"]["error"].as_str().unwrap();
    assert!(
        error.contains(live.to_str().unwrap()) && error.contains("tls.certificates[0]"),
        "{v}"
    );
    let out = s_client(&pki, tls, "a.test").await;
    assert_eq!(
        served_cn(&out),
        "leaf-a",
        "the old certificate keeps serving"
    );
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");

    // A repaired file and a moved listener: applied, the listener reported as restart-only.
    std::fs::copy(&pem, &live).unwrap();
    gw.write_conf(&config(&origin, tls_addr(), &[(&live, &key)], ""));
    gw.signal("HUP");
    gw.wait_metrics(&[r#"gateway_config_reloads_total{result="success"} 1"#])
        .await;
    let v = gw.admin_json("/config", "0123456789abcdef0123").await;
    assert_eq!(
        v["last_reload"]["pending_restart"],
        serde_json::json!(["tls.listen"])
    );
    assert_eq!(served_cn(&s_client(&pki, tls, "a.test").await), "leaf-a");
}

/// A reqwest client for `a.test` on `tls` that trusts the test CA (HTTP/1.1
/// keep-alive: one connection reused for every request of a load task).
fn https_client(pki: &Pki, tls: SocketAddr) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(pki.ca()).unwrap()).unwrap();
    reqwest::Client::builder()
        .add_root_certificate(ca)
        .resolve("a.test", tls)
        .timeout(WAIT)
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_certificate_swapped_by_sighup_under_keepalive_load_drops_nothing() {
    if !have_openssl() {
        return;
    }
    let pki = Pki::new();
    let (old_pem, old_key) = pki.leaf("old", "leaf-old", &["a.test"]);
    let (new_pem, new_key) = pki.leaf("new", "leaf-new", &["a.test"]);
    let origin = Origin::start("o").await;
    let tls = tls_addr();
    let dir = tempfile::tempdir().unwrap();
    let (pem, key) = (dir.path().join("site.pem"), dir.path().join("site.key"));
    std::fs::copy(&old_pem, &pem).unwrap();
    std::fs::copy(&old_key, &key).unwrap();
    let gw = Gateway::start(&config(&origin, tls, &[(&pem, &key)], "")).await;
    assert_eq!(served_cn(&s_client(&pki, tls, "a.test").await), "leaf-old");

    let stop = Arc::new(AtomicBool::new(false));
    let url = format!("https://a.test:{}/load", tls.port());
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (client, stop, url) = (https_client(&pki, tls), stop.clone(), url.clone());
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0usize, Vec::new());
                while !stop.load(Ordering::SeqCst) {
                    match client.get(&url).send().await {
                        Ok(r) if r.status() == 200 => match r.bytes().await {
                            Ok(_) => ok += 1,
                            Err(e) => failed.push(format!("body: {e}")),
                        },
                        Ok(r) => failed.push(format!("status {}", r.status())),
                        Err(e) => failed.push(format!("{e:?}")),
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    // Load is flowing before the swap.
    let deadline = Instant::now() + WAIT;
    while origin.hits() < 50 {
        assert!(Instant::now() < deadline, "the load did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    std::fs::copy(&new_pem, &pem).unwrap();
    std::fs::copy(&new_key, &key).unwrap();
    gw.signal("HUP");
    let deadline = Instant::now() + WAIT;
    loop {
        if served_cn(&s_client(&pki, tls, "a.test").await) == "leaf-new" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = origin.hits();
    // Keep-alive connections opened before the swap carry on; new ones get the new certificate.
    let deadline = Instant::now() + WAIT;
    while origin.hits() < before + 50 {
        assert!(Instant::now() < deadline, "the load stalled after the swap");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A fresh client (new connection) verifies the new certificate.
    let r = https_client(&pki, tls).get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    stop.store(true, Ordering::SeqCst);
    let (mut ok, mut failed) = (0, Vec::new());
    for t in tasks {
        let (o, f) = tokio::time::timeout(WAIT, t).await.unwrap().unwrap();
        ok += o;
        failed.extend(f);
    }
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    assert!(ok > 100, "{ok}");
    gw.wait_metrics(&[r#"gateway_config_reloads_total{result="success"} 1"#])
        .await;
}

/// A TLS connection to `addr` (verified against the test CA) offering `alpn`.
async fn tls_connect(
    pki: &Pki,
    addr: SocketAddr,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(pki.ca()).unwrap();
    use rustls::pki_types::pem::PemObject;
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("a.test").unwrap();
    connector.connect(name, tcp).await
}

#[tokio::test]
async fn h2_limits_streams_header_size_header_deadline_and_connection_cap() {
    if !have_openssl() {
        return;
    }
    let pki = Pki::new();
    let (pem, key) = pki.leaf("a", "leaf-a", &["a.test"]);
    let origin = Origin::start("o").await;
    let tls = tls_addr();
    let extra = "client: { h2_max_streams: 7, header_timeout: 1s, max_header_bytes: 4KiB, max_connections: 3 }";
    let gw = Gateway::start(&config(&origin, tls, &[(&pem, &key)], extra)).await;

    // Concurrent streams: the server's SETTINGS say 7.
    let stream = tls_connect(&pki, tls, &[b"h2"]).await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (client, mut conn) = h2::client::handshake(stream).await.unwrap();
    let mut client = client.ready().await.unwrap();
    let req = http::Request::get(format!("https://a.test:{}/x", tls.port()))
        .body(())
        .unwrap();
    let (response, _) = client.send_request(req, true).unwrap();
    let response = tokio::select! {
        r = response => r.unwrap(),
        _ = &mut conn => panic!("connection ended"),
    };
    assert_eq!(response.status(), 200);
    assert_eq!(conn.max_concurrent_send_streams(), 7);
    drop(client);
    drop(conn);

    // Header list over client.max_header_bytes: the same 431 + JSON as HTTP/1.
    let big = format!("X-Big: {}", "y".repeat(5000));
    let r = curl(&pki, tls, "a.test", "/x", &["--http2", "-H", &big]).await;
    assert_eq!(r.version, "2");
    assert_eq!(r.status, 431);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert!(v["request_id"].is_string(), "{v}");

    // Header deadline: an h2 connection that never completes a request is closed.
    let mut silent = tls_connect(&pki, tls, &[b"h2"]).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    silent
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    silent
        .write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0])
        .await
        .unwrap(); // empty SETTINGS
    silent.flush().await.unwrap();
    let started = Instant::now();
    let mut buf = vec![0u8; 4096];
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            match silent.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue, // the server's SETTINGS and ACK
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the silent h2 connection was not closed");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed before the deadline"
    );
    gw.wait_metrics(&["gateway_request_header_timeouts_total 1"])
        .await;

    // Connection cap: with 3 open, a 4th TLS connection is closed before any handshake.
    drop(silent);
    gw.wait_metrics(&["gateway_downstream_connections 0"]).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(tls_connect(&pki, tls, &[b"http/1.1"]).await.unwrap());
    }
    let refused = tls_connect(&pki, tls, &[b"h2"]).await;
    assert!(
        refused.is_err(),
        "a connection over the cap got a handshake"
    );
    gw.wait_metrics(&["gateway_downstream_connections_rejected_total 1"])
        .await;
    drop(held);
}

#[tokio::test]
async fn a_client_that_never_finishes_its_handshake_is_cut_at_the_deadline() {
    if !have_openssl() {
        return;
    }
    let pki = Pki::new();
    let (pem, key) = pki.leaf("a", "leaf-a", &["a.test"]);
    let origin = Origin::start("o").await;
    let tls = tls_addr();
    let gw = Gateway::start(&config(&origin, tls, &[(&pem, &key)], "")).await;
    let mut tcp = tokio::net::TcpStream::connect(tls).await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    use tokio::io::AsyncReadExt;
    let n = tokio::time::timeout(WAIT, tcp.read(&mut buf))
        .await
        .expect("closed within the wait");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "tls.handshake_timeout is 2s"
    );
    gw.wait_metrics(&[r#"gateway_tls_handshakes_total{result="timeout"} 1"#])
        .await;
}

#[tokio::test]
async fn the_plain_listener_redirects_to_https_and_https_answers_carry_hsts() {
    if !have_openssl() {
        return;
    }
    let pki = Pki::new();
    let (pem, key) = pki.leaf("a", "leaf-a", &["a.test"]);
    let origin = Origin::start("o").await;
    let tls = tls_addr();
    let extra = "  redirect_http: true\n  hsts: { max_age: 180d, include_subdomains: true }\nready_path: /.gateway/ready";
    let gw = Gateway::start(&config(&origin, tls, &[(&pem, &key)], extra)).await;
    let plain = common::client();

    let r = plain
        .get(gw.url("/resp/page?a=1&b=2"))
        .header("host", "a.test:8080")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(
        r.headers()["location"],
        format!("https://a.test:{}/resp/page?a=1&b=2", tls.port()).as_str()
    );
    assert!(r.headers().contains_key("x-request-id"));
    assert!(
        !r.headers().contains_key("strict-transport-security"),
        "never over plain HTTP"
    );
    // ACME challenges and the readiness path stay on plain HTTP.
    let acme = plain
        .get(gw.url("/.well-known/acme-challenge/token123"))
        .send()
        .await
        .unwrap();
    assert_eq!(acme.status(), 200);
    assert_eq!(acme.headers()["x-origin"], "o");
    let ready = plain.get(gw.url("/.gateway/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    assert_eq!(origin.hits(), 1, "only the ACME request reached the origin");

    // Following the redirect: HTTPS answers (proxied, cached and the gateway's own) carry HSTS.
    for (path, status) in [("/resp/page?a=1&b=2", 200), ("/resp?x=9", 504)] {
        let args: &[&str] = if status == 504 {
            &["--http2", "-H", "Cache-Control: only-if-cached"]
        } else {
            &["--http2"]
        };
        let r = curl(&pki, tls, "a.test", path, args).await;
        assert_eq!(r.status, status, "{path}");
        assert_eq!(
            r.header("strict-transport-security").as_deref(),
            Some("max-age=15552000; includesubdomains"),
            "{path}: {}",
            r.headers
        );
    }
    gw.wait_metrics(&["gateway_https_redirects_total 1"]).await;
}

#[tokio::test]
async fn curl_http2_gets_compressed_answers_from_the_cache_and_the_origin_is_asked_once() {
    if !have_openssl() {
        return;
    }
    let pki = Pki::new();
    let (pem, key) = pki.leaf("a", "leaf-a", &["a.test"]);
    let origin = Origin::start("o").await;
    let tls = tls_addr();
    let extra = "compression: { enabled: true, min_size: 1KiB }";
    let _gw = Gateway::start(&config(&origin, tls, &[(&pem, &key)], extra)).await;

    let path = "/resp?size=20000&h=content-type:application/json&h=cache-control:max-age%3D60";
    let plain = curl(&pki, tls, "a.test", path, &["--http2"]).await;
    assert_eq!((plain.version.as_str(), plain.status), ("2", 200));
    assert_eq!(plain.header("content-encoding"), None);
    assert_eq!(plain.body.len(), 20000);
    for (accept, coding) in [("br", "br"), ("gzip", "gzip"), ("zstd", "zstd")] {
        // --compressed: curl decodes what it is sent (and checks the stream is whole).
        let got = curl(
            &pki,
            tls,
            "a.test",
            path,
            &[
                "--http2",
                "--compressed",
                "-H",
                &format!("Accept-Encoding: {accept}"),
            ],
        )
        .await;
        assert_eq!(got.version, "2");
        assert_eq!(got.header("content-encoding").as_deref(), Some(coding));
        assert_eq!(got.header("x-cache").as_deref(), Some("hit"), "{accept}");
        assert_eq!(got.body, vec![b'x'; 20000], "{accept}");
    }
    assert_eq!(origin.hits(), 1);
}
