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
    // -t also checks that this user can write the pid file and upgrade socket
    // (/run/gateway in the file): as the README says, a non-root user moves them.
    let dir = tempfile::tempdir().unwrap();
    let (pid, sock) = (dir.path().join("gw.pid"), dir.path().join("gw.sock"));
    let env = [
        ("GATEWAY_PID_FILE", pid.to_str().unwrap()),
        ("GATEWAY_UPGRADE_SOCK", sock.to_str().unwrap()),
    ];
    let (code, _, err) = run_gateway(&["-t", "-c", shipped], &env);
    assert_eq!(code, 0, "conf/gateway.yaml must be valid: {err}");
}

#[test]
fn the_shipped_file_trusts_no_proxy() {
    // A 10.x VPC trusted by default lets any host there spoof X-Forwarded-For.
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/../conf/gateway.yaml");
    let text = std::fs::read_to_string(shipped).unwrap();
    let c = gateway::config::from_yaml_str(&text).unwrap();
    assert!(c.trusted_proxies.is_empty(), "{:?}", c.trusted_proxies);
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
        "routes[0].cache.key.query: unknown variant: found `some`, expected ``all` or `none``",
    );
    assert_refused(
        &with("range_miss: later"),
        &[],
        "routes[0].cache.range_miss: unknown variant: found `later`, expected ``fill` or `forward``",
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
    let (code, _, err, _) = check(GOOD, &[("GATEWAY_ADMIN__TOKN", "0123456789abcdef-token")]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.starts_with(
            "invalid configuration: environment variable GATEWAY_ADMIN__TOKN: admin.tokn: unknown field"
        ),
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

/// A file, and a path through it: its directory can never be created, whoever runs.
fn path_through_a_file(dir: &std::path::Path) -> String {
    let file = dir.join("plain-file");
    std::fs::write(&file, "not a directory").unwrap();
    file.join("sub").join("x").to_str().unwrap().to_owned()
}

#[test]
fn t_checks_that_the_files_it_will_write_can_be_written() {
    let dir = tempfile::tempdir().unwrap();
    let bad = path_through_a_file(dir.path());
    let file = dir.path().join("plain-file");
    let ok = dir.path().join("run");
    let ok_pid = ok.join("gw.pid");
    let ok_sock = ok.join("gw.sock");
    let (ok_pid, ok_sock) = (ok_pid.to_str().unwrap(), ok_sock.to_str().unwrap());
    for (key, var) in [
        ("pid_file", "GATEWAY_PID_FILE"),
        ("upgrade_sock", "GATEWAY_UPGRADE_SOCK"),
        ("access_log.path", "GATEWAY_ACCESS_LOG__PATH"),
    ] {
        let mut env = vec![
            ("GATEWAY_PID_FILE", ok_pid),
            ("GATEWAY_UPGRADE_SOCK", ok_sock),
        ];
        env.retain(|(k, _)| *k != var);
        env.push((var, bad.as_str()));
        let want = format!(
            "{key}: \"{bad}\": directory {} cannot be created: {} is not a directory",
            std::path::Path::new(&bad).parent().unwrap().display(),
            file.display()
        );
        assert_refused(GOOD, &env, &want);
        let (code, _, err, _) = check(GOOD, &env);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains(&format!("set {key} (or {var})")), "{err}");
    }
    // The same paths in a writable place pass (and -t creates nothing).
    let log = ok.join("access.log");
    let env = [
        ("GATEWAY_PID_FILE", ok_pid),
        ("GATEWAY_UPGRADE_SOCK", ok_sock),
        ("GATEWAY_ACCESS_LOG__PATH", log.to_str().unwrap()),
    ];
    let (code, _, err, _) = check(GOOD, &env);
    assert_eq!(code, 0, "{err}");
    assert!(!ok.exists(), "-t must not create {}", ok.display());
}

#[test]
fn a_start_refuses_an_unwritable_pid_file_with_the_same_message() {
    let dir = tempfile::tempdir().unwrap();
    let bad = path_through_a_file(dir.path());
    let yaml = GOOD
        .replace("127.0.0.1:18080", &format!("127.0.0.1:{}", free_port()))
        .replace("127.0.0.1:19180", &format!("127.0.0.1:{}", free_port()));
    let path = dir.path().join("gw.yaml");
    std::fs::write(&path, yaml).unwrap();
    let p = path.to_str().unwrap();
    let sock = dir.path().join("upgrade.sock");
    let env = [
        ("GATEWAY_PID_FILE", bad.as_str()),
        ("GATEWAY_UPGRADE_SOCK", sock.to_str().unwrap()),
    ];
    let (code, _, err) = run_gateway(&["-c", p], &env);
    assert_eq!(code, 2, "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        err.starts_with(&format!("invalid configuration: {p}: pid_file: \"{bad}\"")),
        "{err}"
    );
}

/// Runs the gateway as an unprivileged user: `nobody` (uid 65534) through
/// setpriv when the tests run as root, else as the current user. `None` when
/// setpriv is missing outside CI (skipped).
fn run_unprivileged(args: &[&str], env: &[(&str, &str)]) -> Option<(i32, String, String)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some(run_gateway(args, env));
    }
    if !require_tool("setpriv") {
        return None;
    }
    Some(run_gateway_via(
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ],
        args,
        env,
    ))
}

#[test]
fn the_shipped_file_as_an_unprivileged_user_needs_writable_run_paths() {
    // The README's run command as a non-root user: the shipped /run/gateway
    // paths are refused by -t (they used to pass -t and fail at start) ...
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/../conf/gateway.yaml");
    let Some((code, _, err)) = run_unprivileged(&["-t", "-c", shipped], &[]) else {
        return;
    };
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("pid_file: \"/run/gateway/gateway.pid\": directory /run/gateway"),
        "{err}"
    );
    assert!(err.contains("is not writable by this user"), "{err}");
    // ... and pass with GATEWAY_PID_FILE / GATEWAY_UPGRADE_SOCK in a directory
    // the user owns, as the README says.
    let dir = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let pid = dir.path().join("gw.pid");
    let sock = dir.path().join("gw.sock");
    let env = [
        ("GATEWAY_PID_FILE", pid.to_str().unwrap()),
        ("GATEWAY_UPGRADE_SOCK", sock.to_str().unwrap()),
    ];
    let (code, out, err) = run_unprivileged(&["-t", "-c", shipped], &env).unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("is valid"), "{out}");

    // A directory that exists but is read-only for this user is refused too.
    let ro = tempfile::tempdir().unwrap();
    std::fs::set_permissions(ro.path(), std::fs::Permissions::from_mode(0o555)).unwrap();
    let ro_pid = ro.path().join("gw.pid");
    let env = [
        ("GATEWAY_PID_FILE", ro_pid.to_str().unwrap()),
        ("GATEWAY_UPGRADE_SOCK", sock.to_str().unwrap()),
    ];
    let (code, _, err) = run_unprivileged(&["-t", "-c", shipped], &env).unwrap();
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!(
            "pid_file: \"{}\": directory {} is not writable by this user",
            ro_pid.display(),
            ro.path().display()
        )),
        "{err}"
    );
}
