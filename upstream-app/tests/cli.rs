//! The binary refuses bad configurations with the file and key; env overrides.

use std::process::Command;

fn run(yaml: &str, env: &[(&str, &str)]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.yaml");
    std::fs::write(&path, yaml).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_upstream-app"));
    cmd.arg("-c").arg(&path).envs(env.iter().copied());
    for (k, _) in std::env::vars() {
        if (k.starts_with("APP_") || k == "PORT") && !env.iter().any(|(e, _)| *e == k) {
            cmd.env_remove(k);
        }
    }
    // Valid configurations would start serving: give them a port that is taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    cmd.env("PORT", taken.local_addr().unwrap().port().to_string());
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_files_name_the_file_and_key_and_never_start() {
    for (yaml, want) in [
        ("redis: { max_size: 0 }", "redis.max_size: must be > 0"),
        ("redis: { pool: 1 }", "redis.pool: unknown field"),
        ("auth: { token_ttl: soon }", "auth.token_ttl: invalid value"),
        (
            "max_body_size: lots",
            "max_body_size: invalid size \"lots\"",
        ),
        (
            "listen: nowhere",
            "listen: \"nowhere\" is not an IP:port address",
        ),
        ("jobs: { workers: 0 }", "jobs.workers: must be > 0"),
        ("redis: [", "did not find expected node content"),
    ] {
        let (code, err) = run(yaml, &[]);
        assert_eq!(code, 2, "{yaml}: {err}");
        assert!(
            err.contains("app.yaml: ") && err.contains(want),
            "{yaml}: want {want:?} in {err}"
        );
    }
}

#[test]
fn environment_overrides_use_app_prefix() {
    let (code, err) = run("{}", &[("APP_REDIS_URL", "http://not-redis")]);
    assert_eq!(code, 2);
    assert!(err.contains("redis.url: must be a redis:// URL"), "{err}");
    let (code, err) = run("{}", &[("APP_REDIS__MAX_SIZE", "many")]);
    assert_eq!(code, 2);
    assert!(
        err.contains("environment variable APP_REDIS__MAX_SIZE"),
        "{err}"
    );
    // A valid configuration gets as far as binding the (taken) PORT.
    let (code, err) = run("{}", &[("APP_REDIS_URL", "redis://127.0.0.1:1/0")]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot listen on 127.0.0.1:"), "{err}");
}
