//! A bounded run of `coffer-load soak` (a few seconds, 200 watchers) so that CI exercises the
//! soak end to end: the KMS plugin and `coffer serve` as child processes, writers, readers,
//! watchers, a KMS rotation in the middle, RSS and fd samples, and the report.

use coffer_testkit::kms as kms_support;

use std::process::Command;

#[test]
fn coffer_load_soak_smoke() {
    let plugin = kms_support::workspace_bin("coffer-kms-local");
    let tmp = tempfile::tempdir().expect("tempdir");
    let csv = tmp.path().join("soak.csv");
    let work = tmp.path().join("work");
    let output = Command::new(env!("CARGO_BIN_EXE_coffer-load"))
        .args([
            "soak",
            "--duration",
            "5",
            "--watchers",
            "200",
            "--connections",
            "4",
            "--secrets",
            "50",
            "--writers",
            "2",
            "--writes-per-sec",
            "50",
            "--readers",
            "2",
            "--reads-per-sec",
            "200",
            "--rotate-at",
            "1",
            "--sample-interval",
            "0.5",
            "--json",
        ])
        .arg("--csv")
        .arg(&csv)
        .arg("--work-dir")
        .arg(&work)
        .arg("--coffer-bin")
        .arg(coffer_testkit::kms::coffer_bin())
        .arg("--kms-plugin-bin")
        .arg(&plugin)
        .output()
        .expect("run coffer-load soak");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "coffer-load soak failed ({}):\nstdout: {stdout}\nstderr: {stderr}",
        output.status
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("JSON report");
    assert_eq!(report["watchers_established"], 200, "{report}");
    assert_eq!(report["errors"], serde_json::json!({}), "{report}");
    for counter in ["writes", "reads", "events"] {
        assert!(
            report[counter].as_u64().unwrap_or(0) > 0,
            "{counter}: {report}"
        );
    }
    assert!(report["rotation"]["output"].is_string(), "{report}");
    assert!(
        report["rss_kib"]["end"].as_u64().unwrap_or(0) > 0,
        "{report}"
    );
    assert!(report["fds"]["end"].as_u64().unwrap_or(0) > 0, "{report}");
    // The rotation reached the server: records were written under a seed of the new KEK.
    let seeds = report["kms_status"]["seeds"].as_array().expect("seeds");
    assert!(seeds.len() >= 2, "{report}");
    assert!(
        seeds
            .iter()
            .any(|s| s["currentKeyId"] == true && s["records"].as_u64().unwrap_or(0) > 0),
        "no record under the rotated key: {report}"
    );
    // One CSV row per sample, after the header.
    let text = std::fs::read_to_string(&csv).expect("csv");
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("secs,rss_kib,fds,writes,reads,events,watchers,errors")
    );
    assert_eq!(
        lines.count() as u64,
        report["samples"].as_u64().unwrap_or(0),
        "{text}"
    );
}
