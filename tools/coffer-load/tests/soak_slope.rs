//! The soak's RSS slope, bounded in CI (README, "Soak"): a short `coffer-load soak` (50 s: a
//! 20 s warm-up in which the watch window and the allocator fill, then 30 s of steady mixed
//! load) must keep the server's RSS slope after the warm-up under [`MAX_SLOPE_KIB_PER_MIN`],
//! or the soak itself fails (`--max-rss-slope`, exit code 1). No history
//! (`--history-retention 0`): kept versions grow the store, and sled's page cache with it,
//! for the whole retention, which is growth by design, not a leak. The 10-minute run is
//! `scripts/soak.sh`.
//!
//! Measured on the 2-core development VM (debug build): see the README's "Soak".

use coffer_testkit::kms as kms_support;
use coffer_testkit::require::Watchdog;

use std::process::Command;
use std::time::Duration;

/// The most the server's RSS may grow after the warm-up, in KiB per minute: a leak of a
/// kilobyte per write (at the 40-60 writes per second a debug build manages here) grows it
/// by 2-4 MiB a minute.
const MAX_SLOPE_KIB_PER_MIN: f64 = 1536.0;

#[test]
fn soak_rss_slope_after_warm_up_is_bounded() {
    let _watchdog = Watchdog::arm("soak_rss_slope", Duration::from_secs(300));
    let plugin = kms_support::workspace_bin("coffer-kms-local");
    let tmp = tempfile::tempdir().expect("tempdir");
    let started = std::time::Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_coffer-load"))
        .args([
            "soak",
            "--duration",
            "50",
            "--warmup",
            "20",
            "--watchers",
            "200",
            "--connections",
            "4",
            "--secrets",
            "50",
            "--writers",
            "2",
            "--writes-per-sec",
            "100",
            "--readers",
            "2",
            "--reads-per-sec",
            "100",
            "--rotate-at",
            "1000",
            "--history-retention",
            "0",
            "--sample-interval",
            "0.5",
            "--max-rss-slope",
            &MAX_SLOPE_KIB_PER_MIN.to_string(),
            "--json",
        ])
        .arg("--work-dir")
        .arg(tmp.path().join("work"))
        .arg("--coffer-bin")
        .arg(coffer_testkit::kms::coffer_bin())
        .arg("--kms-plugin-bin")
        .arg(&plugin)
        .output()
        .expect("run coffer-load soak");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let report: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("no JSON report ({e}): {stdout}\n{stderr}"));
    let slope = report["rss_slope_kib_per_min"].as_f64().expect("a slope");
    println!(
        "server RSS slope after the warm-up: {slope:.0} KiB/min (bound {MAX_SLOPE_KIB_PER_MIN}); \
         RSS {} -> {} KiB; {} writes; {:.1?}",
        report["rss_kib"]["after_warmup"],
        report["rss_kib"]["end"],
        report["writes"],
        started.elapsed()
    );
    assert_eq!(report["errors"], serde_json::json!({}), "{report}");
    assert!(report["writes"].as_u64().unwrap_or(0) > 0, "{report}");
    assert!(
        slope <= MAX_SLOPE_KIB_PER_MIN,
        "the server's RSS grew by {slope:.0} KiB/min after the warm-up (bound \
         {MAX_SLOPE_KIB_PER_MIN}): a leak? {report}"
    );
    assert_eq!(report["rss_slope_exceeded"], false, "{report}");
    assert!(
        output.status.success(),
        "coffer-load soak failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
}
