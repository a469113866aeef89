//! Runs the `coffer-load` binary briefly against its own in-process server, so that CI exercises
//! the load generator end to end (connect, create, get, update, report).

use std::process::Command;

#[test]
fn coffer_load_unary_spawn_runs_every_phase() {
    let output = Command::new(env!("CARGO_BIN_EXE_coffer-load"))
        .args([
            "unary",
            "--spawn",
            "--duration",
            "0.7",
            "--connections",
            "2",
            "--concurrency",
            "4",
            "--value-size",
            "256",
            "--json",
        ])
        .output()
        .expect("run coffer-load");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "coffer-load failed ({}):\nstdout: {stdout}\nstderr: {stderr}",
        output.status
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("JSON report");
    assert_eq!(report["connections"], 2);
    assert_eq!(report["concurrency"], 4);
    assert_eq!(report["spawned"]["durable"], true);
    let phases = report["phases"].as_array().expect("phases");
    let ops: Vec<&str> = phases.iter().filter_map(|p| p["op"].as_str()).collect();
    assert_eq!(ops, ["create", "get", "update"]);
    for phase in phases {
        assert!(phase["ok"].as_u64().unwrap_or(0) > 0, "{phase}");
        assert_eq!(phase["errors"], 0, "{phase}");
        assert!(
            phase["ops_per_sec"].as_f64().unwrap_or(0.0) > 0.0,
            "{phase}"
        );
        let p50 = phase["latency_us"]["p50"].as_u64().unwrap_or(0);
        let p99 = phase["latency_us"]["p99"].as_u64().unwrap_or(0);
        assert!(p50 > 0 && p50 <= p99, "{phase}");
    }
    // The temporary data directory is removed afterwards.
    let dir = report["spawned"]["data_dir"].as_str().expect("data_dir");
    assert!(!std::path::Path::new(dir).exists(), "{dir} was left behind");
}

#[test]
fn coffer_load_reports_an_unreachable_server() {
    let output = Command::new(env!("CARGO_BIN_EXE_coffer-load"))
        .args(["unary", "--server", "unix:///nonexistent/coffer.sock"])
        .output()
        .expect("run coffer-load");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot reach"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
