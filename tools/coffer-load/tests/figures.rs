//! The README's memory and delivery figures ("Watching at scale"), bounded in CI with a margin:
//! `coffer-load watch --spawn` at a few thousand streams and tens of thousands of multiplexed
//! watches, checking server bytes per idle stream and per WatchMany watch, and that every event
//! is delivered to every watch. Memory, never speed: a doubled footprint fails; a slow machine
//! does not.
//!
//! Measured on the 2-core development VM (debug build): 6.2 KB per stream at 4,000 streams
//! (README: 6.1 KB at 100,000, release), 195-210 B per watch at 20,000 watches over 20 streams
//! (README: 167 B at 1,000,000; the fixed cost of each stream weighs more at this scale).

use std::process::Command;
use std::time::Duration;

use coffer_testkit::require::Watchdog;

/// Bytes of server RSS per idle Watch stream allowed (measured 6.2 KB; README target 8 KiB).
const MAX_BYTES_PER_STREAM: f64 = 9000.0;
/// Bytes per watch on WatchMany streams allowed (measured 195-210 B; README target 350 B).
const MAX_BYTES_PER_WATCH: f64 = 320.0;

fn watch(args: &[&str]) -> serde_json::Value {
    let output = Command::new(env!("CARGO_BIN_EXE_coffer-load"))
        .args(["watch", "--spawn", "--json", "--duration", "1"])
        .args(["--updates-per-sec", "100"])
        .args(args)
        .output()
        .expect("run coffer-load");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "coffer-load watch failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("JSON report");
    // Delivery: every watch established, every event delivered, none ended early.
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["established"], report["streams"], "{report}");
    assert_eq!(report["events"], report["expected"], "{report}");
    assert!(report["events"].as_u64().unwrap_or(0) > 0, "{report}");
    assert_eq!(report["ended_early"], 0, "{report}");
    report
}

#[test]
fn bytes_per_idle_watch_stream_at_4000_streams() {
    let _watchdog = Watchdog::arm("bytes_per_idle_watch_stream", Duration::from_secs(300));
    let report = watch(&[
        "--streams",
        "4000",
        "--connections",
        "8",
        "--secrets",
        "100",
    ]);
    let per_stream = report["rss_bytes_per_stream"].as_f64().expect("rss");
    println!("{per_stream:.0} bytes of server RSS per stream at 4,000 streams");
    assert!(
        per_stream > 0.0 && per_stream <= MAX_BYTES_PER_STREAM,
        "{per_stream:.0} bytes per stream (bound {MAX_BYTES_PER_STREAM}): {report}"
    );
}

#[test]
fn bytes_per_multiplexed_watch_at_20000_watches() {
    let _watchdog = Watchdog::arm("bytes_per_multiplexed_watch", Duration::from_secs(300));
    let report = watch(&[
        "--streams",
        "20",
        "--watches-per-stream",
        "1000",
        "--connections",
        "2",
        "--secrets",
        "1000",
    ]);
    assert_eq!(report["watches"], 20_000, "{report}");
    let per_watch = report["rss_bytes_per_stream"].as_f64().expect("rss") / 1000.0;
    println!("{per_watch:.0} bytes of server RSS per watch at 20,000 watches");
    assert!(
        per_watch > 0.0 && per_watch <= MAX_BYTES_PER_WATCH,
        "{per_watch:.0} bytes per watch (bound {MAX_BYTES_PER_WATCH}): {report}"
    );
}
