//! The shipped systemd unit: valid for `systemd-analyze verify`, and its stop
//! timeout covers the shipped grace period.

mod common;

use std::path::Path;
use std::process::Command;

const UNIT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/systemd/gateway.service"
);
const CONF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../conf/gateway.yaml");

#[test]
fn systemd_unit_verifies_when_systemd_analyze_exists() {
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("systemd-analyze not installed: skipped");
        return;
    };
    assert!(out.status.success());
    let dir = tempfile::tempdir().unwrap();
    // verify checks that ExecStart's binary exists: point it at the one under test.
    let unit = std::fs::read_to_string(UNIT).unwrap().replace(
        "/usr/local/bin/gateway",
        common::gateway_bin().to_str().unwrap(),
    );
    let path = dir.path().join("gateway.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        !stderr.contains("gateway.service"),
        "warnings about the unit: {stderr}"
    );
}

#[test]
fn stop_timeout_covers_the_grace_period() {
    let unit = std::fs::read_to_string(UNIT).unwrap();
    let stop = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .expect("TimeoutStopSec in the unit");
    let stop = humantime::parse_duration(stop.trim()).unwrap();
    let conf = gateway::config::load(Path::new(CONF)).unwrap();
    assert!(
        stop > conf.shutdown.grace_period,
        "TimeoutStopSec {stop:?} must exceed shutdown.grace_period {:?}",
        conf.shutdown.grace_period
    );
    for needed in [
        "ExecReload=",
        "LimitNOFILE=",
        "NoNewPrivileges=yes",
        "PIDFile=/run/gateway/gateway.pid",
    ] {
        assert!(unit.contains(needed), "{needed} missing");
    }
}
