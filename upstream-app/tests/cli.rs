//! The binary's command line. (Also makes `cargo test -p upstream-app` build
//! the `upstream-app` binary, which `loadtests/run smoke` then runs in CI
//! without a second build.)

use std::process::Command;

#[test]
fn help_names_the_config_flag() {
    let out = Command::new(env!("CARGO_BIN_EXE_upstream-app"))
        .arg("--help")
        .output()
        .expect("run upstream-app --help");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("--config"), "{text}");
}
