//! The shipped systemd unit: valid for `systemd-analyze verify`, and its stop
//! timeout covers the shipped grace period. The Prometheus files and /metrics
//! pass promtool. A missing tool fails the test under CI, and is reported as
//! skipped elsewhere (`common::require_tool`).

mod common;

use std::path::Path;
use std::process::Command;

const UNIT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/systemd/gateway.service"
);
const CONF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../conf/gateway.yaml");

#[test]
fn systemd_unit_verifies_with_systemd_analyze() {
    if !common::require_tool("systemd-analyze") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // verify checks that ExecStart's binary exists: point it at the one under test.
    let unit = std::fs::read_to_string(UNIT)
        .unwrap()
        .replace("/usr/bin/gateway", common::gateway_bin().to_str().unwrap());
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
fn a_missing_tool_fails_under_ci_and_is_skipped_elsewhere() {
    let tool = "no-such-tool-for-gateway-tests";
    assert!(!common::require_tool_under(tool, false));
    let under_ci = std::panic::catch_unwind(|| common::require_tool_under(tool, true));
    let msg = under_ci.expect_err("a missing tool must fail under CI");
    let msg = msg.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        msg.contains(&format!("{tool} is not installed and CI is set")),
        "{msg}"
    );
    assert!(common::require_tool_under("bash", true));
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

const PROMETHEUS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/prometheus");
const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/grafana/gateway.json"
);

#[test]
fn prometheus_config_and_alert_rules_pass_promtool() {
    if !common::require_tool("promtool") {
        return;
    }
    for args in [
        ["check", "config", "scrape.yml"],
        ["check", "rules", "alerts.yml"],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(PROMETHEUS_DIR)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test]
async fn the_metrics_endpoint_passes_promtool_check_metrics() {
    if !common::require_tool("promtool") {
        return;
    }
    let origin = common::Origin::start("a").await;
    let yaml = format!(
        "listen: \"{{listen}}\"\nadmin: {{ listen: \"{{admin}}\" }}\nupstreams: {{ app: {{ servers: [\"{}\"] }} }}\nroutes: [{{ name: all, upstream: app, cache: {{ enabled: true }} }}]\n",
        origin.addr
    );
    let gw = common::Gateway::start(&yaml).await;
    common::client()
        .get(gw.url("/resp/x?h=Cache-Control:max-age%3D60"))
        .send()
        .await
        .unwrap();
    let text = gw
        .wait_metrics(&["gateway_request_duration_seconds_count"])
        .await;
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_dashboard_is_valid_json_over_exported_metrics() {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(DASHBOARD).unwrap()).unwrap();
    let panels = v["panels"].as_array().unwrap();
    assert!(panels.len() >= 10);
    let exprs: Vec<&str> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap())
        .map(|t| t["expr"].as_str().unwrap())
        .collect();
    for metric in [
        "gateway_requests_total",
        "gateway_request_duration_seconds_bucket",
        "gateway_cache_requests_total",
        "gateway_queue_depth",
        "gateway_shed_total",
        "gateway_upstream_server_up",
        "app_redis_pool_waiters",
    ] {
        assert!(
            exprs.iter().any(|e| e.contains(metric)),
            "no panel uses {metric}"
        );
    }
}
