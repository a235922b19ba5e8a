//! Automatic certificates against Pebble, the ACME test server (Debian's
//! `pebble`), with `pebble-challtestsrv` as its DNS (every name resolves to
//! 127.0.0.1). The http-01 challenge really goes through the gateway's plain
//! listener: it is Pebble's `httpPort`, and `PEBBLE_VA_ALWAYS_VALID` is off.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, require_tool, Gateway};

/// An ACME order through Pebble takes a few seconds.
const ISSUE_WAIT: Duration = Duration::from_secs(60);
const DOMAIN: &str = "gw.acme.test";

/// Pebble and its DNS server on free ports, validating http-01 on `http_port`.
struct Pebble {
    pebble: Child,
    challtestsrv: Child,
    dir: tempfile::TempDir,
    /// `https://127.0.0.1:<port>/dir`
    directory: String,
    management: u16,
}

impl Pebble {
    async fn start(http_port: u16) -> Pebble {
        let dir = tempfile::tempdir().unwrap();
        // The directory's own TLS: a CA and a leaf for 127.0.0.1 (tls.acme.directory_ca).
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "pebble test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf_params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
        let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("wfe.pem"), leaf.pem()).unwrap();
        std::fs::write(dir.path().join("wfe.key"), leaf_key.serialize_pem()).unwrap();

        let dns = free_port();
        let challtestsrv = Command::new("pebble-challtestsrv")
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-dns01", &format!("127.0.0.1:{dns}")])
            .args(["-management", &format!("127.0.0.1:{}", free_port())])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn pebble-challtestsrv");
        let (port, management) = (free_port(), free_port());
        let config = serde_json::json!({ "pebble": {
            "listenAddress": format!("127.0.0.1:{port}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": dir.path().join("wfe.pem"),
            "privateKey": dir.path().join("wfe.key"),
            "httpPort": http_port,
            "tlsPort": free_port(),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        std::fs::write(dir.path().join("pebble.json"), config.to_string()).unwrap();
        let log = std::fs::File::create(dir.path().join("pebble.log")).unwrap();
        let pebble = Command::new("pebble")
            .arg("-config")
            .arg(dir.path().join("pebble.json"))
            .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env_remove("PEBBLE_VA_ALWAYS_VALID")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn pebble");
        let p = Pebble {
            pebble,
            challtestsrv,
            directory: format!("https://127.0.0.1:{port}/dir"),
            management,
            dir,
        };
        p.wait_up().await;
        p
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn client(&self) -> reqwest::Client {
        let ca = std::fs::read(self.ca()).unwrap();
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap()
    }

    async fn wait_up(&self) {
        let c = self.client();
        let deadline = Instant::now() + Duration::from_secs(15);
        while !c
            .get(&self.directory)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            assert!(
                Instant::now() < deadline,
                "pebble did not come up:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The root Pebble issues under (generated at its start).
    async fn issuing_root(&self) -> String {
        self.client()
            .get(format!("https://127.0.0.1:{}/roots/0", self.management))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
    }

    fn stop(&mut self) {
        let _ = self.pebble.kill();
        let _ = self.pebble.wait();
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop();
        let _ = self.challtestsrv.kill();
        let _ = self.challtestsrv.wait();
    }
}

fn config(pebble: &Pebble, storage: &Path, renew_before: &str, https: u16) -> String {
    format!(
        r#"
listen: "{{listen}}"
admin: {{ listen: "{{admin}}" }}
access_log: {{ enabled: false }}
ready_path: /ready
upstreams: {{ app: {{ servers: ["127.0.0.1:9"] }} }}
routes: [{{ name: all, match: {{ path_prefix: / }}, upstream: app }}]
tls:
  listen: ["127.0.0.1:{https}"]
  redirect_http: true          # the challenge is exempt
  acme:
    email: ops@acme.test
    domains: [{DOMAIN}, www.{DOMAIN}]
    directory: "{dir}"
    directory_ca: {ca}
    storage: {storage}
    renew_before: {renew_before}
"#,
        dir = pebble.directory,
        ca = pebble.ca().display(),
        storage = storage.display(),
    )
}

/// The stored certificate's serial (`openssl x509 -serial`).
fn serial(storage: &Path) -> Option<String> {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(storage.join(format!("{DOMAIN}.crt")))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The serial of the certificate the HTTPS listener serves for `name`.
fn served_serial(https: u16, name: &str) -> String {
    let mut s_client = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{https}"),
            "-servername",
            name,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let x509 = Command::new("openssl")
        .args(["x509", "-noout", "-serial"])
        .stdin(s_client.stdout.take().unwrap())
        .output()
        .unwrap();
    let _ = s_client.wait();
    String::from_utf8_lossy(&x509.stdout).trim().to_owned()
}

/// Waits until the HTTPS listener serves the certificate with `serial`.
async fn wait_served(https: u16, serial: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let served = tokio::task::spawn_blocking(move || served_serial(https, DOMAIN))
            .await
            .unwrap();
        if served == serial {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "served {served:?}, not {serial:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the stored certificate's serial differs from `old`.
async fn wait_new_serial(
    storage: &Path,
    old: Option<&str>,
    gw: &Gateway,
    pebble: &Pebble,
) -> String {
    let deadline = Instant::now() + ISSUE_WAIT;
    loop {
        if let Some(s) = serial(storage) {
            if Some(s.as_str()) != old {
                return s;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no new certificate within {ISSUE_WAIT:?}\ngateway:\n{}\npebble:\n{}",
            gw.stderr(),
            pebble.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn metric(m: &str, line: &str) -> u64 {
    m.lines()
        .find_map(|l| l.strip_prefix(line).map(|v| v.trim().parse().unwrap()))
        .unwrap_or(0)
}

async fn metrics(gw: &Gateway) -> String {
    common::client()
        .get(gw.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn certificates_are_issued_renewed_kept_on_failure_and_reloaded_from_storage() {
    if !require_tool("pebble") || !require_tool("openssl") || !require_tool("curl") {
        return;
    }
    let http_port = free_port();
    let mut pebble = Pebble::start(http_port).await;
    let state = tempfile::tempdir().unwrap();
    let storage = state.path().join("acme");
    let listen = format!("127.0.0.1:{http_port}");
    let https = free_port();
    let env = [("GATEWAY_LISTEN", listen.as_str())];

    // First issuance: the challenge is answered on the plain listener.
    let gw = Gateway::start_with_env(&config(&pebble, &storage, "30d", https), &env).await;
    let first = wait_new_serial(&storage, None, &gw, &pebble).await;
    let m = gw
        .wait_metrics(&["gateway_acme_renewals_total{result=\"ok\"} 1"])
        .await;
    let left = metric(
        &m,
        &format!("gateway_tls_certificate_expiry_seconds{{name=\"www.{DOMAIN}\"}}"),
    );
    assert!(left > 30 * 86_400, "seconds left: {left}");
    // The chain verifies against Pebble's root and names both domains.
    let root = state.path().join("root.pem");
    std::fs::write(&root, pebble.issuing_root().await).unwrap();
    let crt = storage.join(format!("{DOMAIN}.crt"));
    let verify = Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(&root)
        .arg("-untrusted")
        .arg(&crt)
        .arg(&crt)
        .output()
        .unwrap();
    assert!(verify.status.success(), "{verify:?}");
    let text = Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(&crt)
        .output()
        .unwrap();
    let sans = String::from_utf8_lossy(&text.stdout);
    assert!(
        sans.contains(&format!("DNS:{DOMAIN}")) && sans.contains(&format!("DNS:www.{DOMAIN}")),
        "{sans}"
    );
    // A real client reaches the gateway over TLS with the certificate it obtained.
    wait_served(https, &first).await;
    let curl = Command::new("curl")
        .args(["-fsS", "--cacert"])
        .arg(&root)
        .args(["--resolve", &format!("www.{DOMAIN}:{https}:127.0.0.1")])
        .arg(format!("https://www.{DOMAIN}:{https}/ready"))
        .output()
        .unwrap();
    assert!(curl.status.success(), "{curl:?}");
    assert!(String::from_utf8_lossy(&curl.stdout).contains("ready"));
    // Storage: 0700, files 0600.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&storage), 0o700);
    for f in std::fs::read_dir(&storage).unwrap() {
        let p = f.unwrap().path();
        assert_eq!(mode(&p), 0o600, "{}", p.display());
    }

    // A renew_before longer than the certificate's lifetime forces a renewal,
    // without a restart (SIGHUP).
    gw.write_conf(&config(&pebble, &storage, "100000d", https));
    gw.signal("HUP");
    let second = wait_new_serial(&storage, Some(&first), &gw, &pebble).await;
    gw.wait_metrics(&["gateway_acme_renewals_total{result=\"ok\"} 2"])
        .await;
    wait_served(https, &second).await;

    // Pebble gone: the renewal fails, is counted with its cause, and the
    // current certificate stays.
    pebble.stop();
    gw.write_conf(&config(&pebble, &storage, "200000d", https));
    gw.signal("HUP");
    gw.wait_metrics(&["gateway_acme_renewals_total{result=\"unreachable\"} 1"])
        .await;
    assert_eq!(serial(&storage).as_deref(), Some(second.as_str()));
    assert!(gw.stderr().contains("ACME order failed"), "{}", gw.stderr());
    wait_served(https, &second).await;
    drop(gw);

    // A restart loads the stored certificate and orders nothing (Pebble is
    // still down: an order would fail and be counted).
    let gw = Gateway::start_with_env(&config(&pebble, &storage, "30d", https), &env).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let m = loop {
        let m = metrics(&gw).await;
        if m.contains("gateway_tls_certificate_expiry_seconds{") || Instant::now() > deadline {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        m.contains(&format!(
            "gateway_tls_certificate_expiry_seconds{{name=\"{DOMAIN}\"}}"
        )),
        "{m}"
    );
    assert!(
        !m.contains("gateway_acme_renewals_total{"),
        "no order after a restart:\n{m}"
    );
    assert_eq!(serial(&storage).as_deref(), Some(second.as_str()));
}
