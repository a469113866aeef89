//! `coffer-load --target etcd` against a real etcd member, when the test build has the `etcd`
//! feature (`cargo test --features etcd --test etcd_smoke`) and an `etcd` binary is on the
//! PATH (Debian: etcd-server); without etcd it prints why it is skipped (a failure under
//! `COFFER_TEST_NO_SKIP=1`). The default build checks that `--target etcd` is refused with the
//! way to get it; `.ci/run` runs both builds.

use std::process::Command;

#[cfg(not(feature = "etcd"))]
#[test]
fn etcd_target_needs_the_feature() {
    // The smoke itself runs in `.ci/run`'s `cargo test -p coffer-load --features etcd`.
    let output = Command::new(env!("CARGO_BIN_EXE_coffer-load"))
        .args(["unary", "--target", "etcd", "--duration", "0.2"])
        .output()
        .expect("run coffer-load");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--features etcd"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[cfg(feature = "etcd")]
#[test]
fn coffer_load_against_etcd() {
    use std::net::TcpListener;
    use std::time::{Duration, Instant};

    let Ok(found) = Command::new("etcd").arg("--version").output() else {
        coffer_testkit::require::skip("no etcd binary on the PATH (apt-get install etcd-server)");
        return;
    };
    assert!(found.status.success());
    let port = |_: u8| {
        TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port()
    };
    let (client, peer) = (port(0), port(1));
    let tmp = tempfile::tempdir().expect("tempdir");
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let mut etcd = Command::new("etcd")
        .arg("--name")
        .arg("smoke")
        .arg("--data-dir")
        .arg(tmp.path().join("etcd"))
        .args(["--listen-client-urls", &client_url])
        .args(["--advertise-client-urls", &client_url])
        .args(["--listen-peer-urls", &peer_url])
        .args(["--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("smoke={peer_url}")])
        .args(["--log-level", "error"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start etcd");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", client)).is_err() {
        assert!(Instant::now() < deadline, "etcd did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let server = format!("127.0.0.1:{client}");
    let unary = Command::new(env!("CARGO_BIN_EXE_coffer-load"))
        .args(["unary", "--target", "etcd", "--server", &server])
        .args([
            "--duration",
            "0.5",
            "--concurrency",
            "4",
            "--connections",
            "2",
        ])
        .arg("--json")
        .output()
        .expect("run coffer-load unary");
    let watch = Command::new(env!("CARGO_BIN_EXE_coffer-load"))
        .args(["watch", "--target", "etcd", "--server", &server])
        .args(["--streams", "50", "--connections", "2", "--secrets", "10"])
        .args(["--updates-per-sec", "20", "--duration", "1", "--json"])
        .arg("--server-pid")
        .arg(etcd.id().to_string())
        .output()
        .expect("run coffer-load watch");
    let _ = etcd.kill();
    let _ = etcd.wait();

    let stdout = String::from_utf8_lossy(&unary.stdout);
    assert!(
        unary.status.success(),
        "unary: {stdout}\n{}",
        String::from_utf8_lossy(&unary.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("JSON report");
    assert_eq!(report["target"], "etcd");
    let phases = report["phases"].as_array().expect("phases");
    assert_eq!(phases.len(), 3);
    for phase in phases {
        assert!(phase["ok"].as_u64().unwrap_or(0) > 0, "{phase}");
        assert_eq!(phase["errors"], 0, "{phase}");
    }

    let stdout = String::from_utf8_lossy(&watch.stdout);
    assert!(
        watch.status.success(),
        "watch: {stdout}\n{}",
        String::from_utf8_lossy(&watch.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("JSON report");
    assert_eq!(report["established"], 50, "{report}");
    assert!(report["delivered"].as_u64().unwrap_or(0) > 0, "{report}");
    assert_eq!(report["delivered"], report["expected"], "{report}");
}
