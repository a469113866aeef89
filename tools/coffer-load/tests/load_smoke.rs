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

/// `--server a,b` spreads the connections over the replicas in turn: with two independent
/// servers and two connections, each server receives its share of the creates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coffer_load_spreads_connections_over_a_server_list() {
    use coffer_server::proto::v1 as pb;
    use coffer_testkit::server::{TestServer, list};

    let a = TestServer::start().await;
    let b = TestServer::start().await;
    let servers = format!("{},{}", a.addr(), b.addr());
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_coffer-load"))
            .args([
                "unary",
                "--server",
                &servers,
                "--ops",
                "create",
                "--duration",
                "0.5",
                "--connections",
                "2",
                "--concurrency",
                "2",
                "--json",
            ])
            .output()
            .expect("run coffer-load")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "coffer-load failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("JSON report");
    let created = report["phases"][0]["ok"].as_u64().expect("ok count");
    let mut total = 0;
    for server in [&a, &b] {
        let listed = list(
            &mut server.client().await,
            pb::ListSecretsRequest {
                namespace: "coffer-load".into(),
                ..Default::default()
            },
        )
        .await
        .expect("list");
        assert!(!listed.items.is_empty(), "a replica got no connection");
        total += listed.items.len() as u64;
    }
    assert_eq!(total, created, "every create landed on one of the two");
}

#[test]
fn coffer_load_refuses_an_empty_address_in_a_server_list() {
    let output = Command::new(env!("CARGO_BIN_EXE_coffer-load"))
        .args(["unary", "--server", "127.0.0.1:1,,127.0.0.1:2"])
        .output()
        .expect("run coffer-load");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("empty address"), "{stderr}");
}
