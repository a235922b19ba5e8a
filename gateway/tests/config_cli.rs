//! `gateway -t` and startup with bad files: one message naming file and key,
//! non-zero exit, never a panic. Environment overrides.

mod common;

use common::*;

const GOOD: &str = r#"
listen: "127.0.0.1:18080"
admin: { listen: "127.0.0.1:19180" }
upstreams:
  app: { servers: ["127.0.0.1:5000"] }
routes:
  - { name: a, match: { path_prefix: /a }, upstream: app }
  - { name: b, match: { path_prefix: / }, upstream: app }
"#;

/// Writes `yaml` to a temp file and runs `gateway -t -c` on it.
fn check(yaml: &str, env: &[(&str, &str)]) -> (i32, String, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.yaml");
    std::fs::write(&path, yaml).unwrap();
    let p = path.to_str().unwrap().to_owned();
    let (code, out, err) = run_gateway(&["-t", "-c", &p], env);
    (code, out, err, p)
}

fn assert_refused(yaml: &str, env: &[(&str, &str)], key_and_message: &str) {
    let (code, _, err, path) = check(yaml, env);
    assert_ne!(code, 0, "must be refused: {yaml}");
    assert!(!err.contains("panicked"), "no panic: {err}");
    assert!(err.starts_with("invalid configuration: "), "{err}");
    let want = format!("{path}: {key_and_message}");
    assert!(err.contains(&want), "want {want:?} in:\n{err}");
}

#[test]
fn a_good_file_and_the_shipped_file_pass() {
    let (code, out, err, _) = check(GOOD, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("is valid"), "{out}");
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/../conf/gateway.yaml");
    let (code, _, err) = run_gateway(&["-t", "-c", shipped], &[]);
    assert_eq!(code, 0, "conf/gateway.yaml must be valid: {err}");
}

#[test]
fn a_missing_file_says_so() {
    let (code, _, err) = run_gateway(&["-t", "-c", "/nonexistent/gw.yaml"], &[]);
    assert_ne!(code, 0);
    assert!(
        err.contains("/nonexistent/gw.yaml: cannot read the configuration file"),
        "{err}"
    );
}

#[test]
fn yaml_syntax_errors_name_the_file_and_position() {
    assert_refused("routes: [\n  {name: a", &[], "");
    let (_, _, err, _) = check("routes: [\n  {name: a", &[]);
    assert!(err.contains("line"), "{err}");
}

#[test]
fn unknown_keys_are_refused() {
    assert_refused(
        &format!("{GOOD}\nlisten_port: 80"),
        &[],
        "listen_port: unknown field",
    );
    assert_refused(
        &GOOD.replace("path_prefix: /a }", "path_prefix: /a, hots: x }"),
        &[],
        "routes[0].match.hots: unknown field",
    );
}

#[test]
fn wrong_types_are_refused() {
    assert_refused(
        &format!("{GOOD}\nthreads: many"),
        &[],
        "threads: invalid type",
    );
    assert_refused(
        &GOOD.replace(
            r#"servers: ["127.0.0.1:5000"]"#,
            r#"servers: "127.0.0.1:5000""#,
        ),
        &[],
        "upstreams.app.servers: invalid type",
    );
}

#[test]
fn bad_durations_and_sizes_are_refused() {
    assert_refused(
        &GOOD.replace("servers:", "connect_timeout: soon, servers:"),
        &[],
        "upstreams.app.connect_timeout: invalid value",
    );
    assert_refused(
        &format!("{GOOD}\nclient: {{ max_body_size: 10 parsecs }}"),
        &[],
        "client.max_body_size: invalid size \"10 parsecs\"",
    );
    assert_refused(
        &format!("{GOOD}\nclient: {{ max_header_bytes: 2MiB }}"),
        &[],
        "client.max_header_bytes: must be between 1 byte and 1MiB",
    );
}

#[test]
fn references_and_server_lists_are_checked() {
    assert_refused(
        &GOOD.replace(
            "upstream: app }\n  - { name: b",
            "upstream: nope }\n  - { name: b",
        ),
        &[],
        "routes[0].upstream: no upstream named \"nope\"",
    );
    assert_refused(
        &GOOD.replace(r#"servers: ["127.0.0.1:5000"]"#, "servers: []"),
        &[],
        "upstreams.app.servers: needs at least one server",
    );
    assert_refused(
        &GOOD.replace("127.0.0.1:5000", "no-such-host.invalid:5000"),
        &[],
        "upstreams.app.servers[0]: cannot resolve \"no-such-host.invalid:5000\"",
    );
    assert_refused(
        &GOOD.replace("127.0.0.1:5000", "127.0.0.1"),
        &[],
        "upstreams.app.servers[0]: \"127.0.0.1\" is not host:port",
    );
    assert_refused(
        &GOOD.replace("name: b", "name: a"),
        &[],
        "routes[1].name: duplicate route name \"a\"",
    );
}

#[test]
fn cache_rules_are_checked() {
    let with = |cache: &str| {
        GOOD.replace(
            "path_prefix: /a }",
            &format!("path_prefix: /a }}, cache: {{ {cache} }}"),
        )
    };
    assert_refused(
        &with("min_ttl: 60s, max_ttl: 1s"),
        &[],
        "routes[0].cache.min_ttl: must not exceed max_ttl",
    );
    assert_refused(
        &with("key: { query_allow: [a], query_ignore: [b] }"),
        &[],
        "routes[0].cache.key.query_allow: set query_allow or query_ignore, not both",
    );
    assert_refused(
        &with("key: { query: some }"),
        &[],
        "routes[0].cache.key.query: \"some\": expected all or none",
    );
    assert_refused(
        &with("bypass: { headers: [\"bad header\"] }"),
        &[],
        "routes[0].cache.bypass.headers[0]",
    );
    assert_refused(
        &with("keys: {}"),
        &[],
        "routes[0].cache.keys: unknown field",
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let yaml = GOOD
        .replace("name: b", "name: a")
        .replace(r#"listen: "127.0.0.1:18080""#, r#"listen: "nowhere""#);
    let (code, _, err, path) = check(&yaml, &[]);
    assert_ne!(code, 0);
    assert!(
        err.contains(&format!("{path}: listen: \"nowhere\"")),
        "{err}"
    );
    assert!(
        err.contains(&format!("{path}: routes[1].name: duplicate")),
        "{err}"
    );
}

#[test]
fn environment_overrides_the_file() {
    let (code, _, err, _) = check(GOOD, &[("GATEWAY_LISTEN", "not-an-address")]);
    assert_ne!(code, 0);
    assert!(err.contains("listen: \"not-an-address\""), "{err}");

    // Nested keys use `__`; a bad value names the variable.
    let (code, _, err, _) = check(GOOD, &[("GATEWAY_CLIENT__MAX_BODY_SIZE", "lots")]);
    assert_ne!(code, 0);
    assert!(
        err.contains("environment variable GATEWAY_CLIENT__MAX_BODY_SIZE: client.max_body_size: invalid size"),
        "{err}"
    );

    // An admin listener off loopback is accepted once the env gives it a token.
    let open = GOOD.replace("127.0.0.1:19180", "0.0.0.0:19180");
    let (code, _, err, _) = check(&open, &[]);
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains("admin.listen: 0.0.0.0:19180 is not a loopback address"),
        "{err}"
    );
    let (code, _, err, _) = check(&open, &[("GATEWAY_ADMIN__TOKEN", "0123456789abcdef-token")]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn stray_gateway_variables_are_ignored_with_a_warning() {
    // The README's `GATEWAY_PORT=8081 ./scripts/stack` used to reach the
    // gateway and stop it with "unknown field".
    let env = [
        ("GATEWAY_PORT", "8081"),
        ("GATEWAY_ADMIN_TOKEN", "single-underscore"),
        ("RUST_LOG", "warn"),
    ];
    let (code, out, err, _) = check(GOOD, &env);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("is valid"), "{out}");
    for name in ["GATEWAY_PORT", "GATEWAY_ADMIN_TOKEN"] {
        assert!(
            err.lines()
                .any(|l| l.contains("ignoring environment variable") && l.contains(name)),
            "no warning naming {name} in:\n{err}"
        );
    }
}

#[test]
fn a_variable_naming_a_top_level_key_is_still_strict() {
    assert_refused(
        GOOD,
        &[("GATEWAY_ADMIN__TOKN", "0123456789abcdef-token")],
        "",
    );
    let (_, _, err, _) = check(GOOD, &[("GATEWAY_ADMIN__TOKN", "0123456789abcdef-token")]);
    assert!(
        err.contains("environment variable GATEWAY_ADMIN__TOKN: admin.tokn: unknown field"),
        "{err}"
    );
}

#[tokio::test]
async fn a_stray_variable_does_not_stop_a_start() {
    let origin = Origin::start("a").await;
    let yaml = format!(
        r#"
listen: "{{listen}}"
admin: {{ listen: "{{admin}}" }}
upstreams: {{ app: {{ servers: ["{}"] }} }}
routes: [{{ name: all, match: {{ path_prefix: / }}, upstream: app }}]
"#,
        origin.addr
    );
    let gw = Gateway::start_with_env(&yaml, &[("GATEWAY_PORT", "8081")]).await;
    let r = client().get(gw.url("/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-origin"], "a");
    let err = gw.stderr();
    assert!(
        err.contains("ignoring environment variable GATEWAY_PORT"),
        "{err}"
    );
}

#[tokio::test]
async fn the_listen_address_can_come_from_the_environment() {
    let origin = Origin::start("a").await;
    let port = free_port();
    let yaml = format!(
        r#"
listen: "127.0.0.1:1"
admin: {{ listen: "{{admin}}" }}
upstreams: {{ app: {{ servers: ["{}"] }} }}
routes: [{{ name: all, match: {{ path_prefix: / }}, upstream: app }}]
"#,
        origin.addr
    );
    let listen = format!("127.0.0.1:{port}");
    let gw = Gateway::start_with_env(&yaml, &[("GATEWAY_LISTEN", &listen)]).await;
    let r = client()
        .get(format!("http://{listen}/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-origin"], "a");
    drop(gw);
}

#[test]
fn a_listener_that_cannot_bind_exits_with_a_message() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let yaml = GOOD.replace("127.0.0.1:18080", &addr.to_string());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.yaml");
    std::fs::write(&path, yaml).unwrap();
    let (code, _, err) = run_gateway(&["-c", path.to_str().unwrap()], &[]);
    assert_ne!(code, 0);
    assert!(
        err.contains(&format!("cannot listen on {addr} (listen in")),
        "{err}"
    );
}
