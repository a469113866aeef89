//! The kill-9 crash harness (`src/bin/coffer-crash`) against the real `coffer serve` binary:
//! 25 SIGKILL cycles in CI, 500 in the ignored long run (see the README's "Crash harness").

use std::process::Command;

fn run(cycles: u32, seed: u64, max_run_ms: u64, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_coffer-crash"))
        .arg("--coffer")
        .arg(coffer_testkit::kms::coffer_bin())
        .args(["--cycles", &cycles.to_string()])
        .args(["--seed", &seed.to_string()])
        .args(["--max-run-ms", &max_run_ms.to_string()])
        .args(extra)
        .output()
        .expect("run coffer-crash")
}

fn harness(cycles: u32, seed: u64, max_run_ms: u64) {
    let output = run(cycles, seed, max_run_ms, &[]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        output.status.success(),
        "coffer-crash failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(stdout.contains("violations: 0"), "{stdout}");
    // The run did something: writes were acknowledged and checked after restarts.
    let acked: u64 = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("acknowledged writes: "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("acknowledged count");
    assert!(
        acked > u64::from(cycles),
        "only {acked} acknowledged writes"
    );
}

/// 25 kill cycles, each short (the kill within 150 ms of the load starting).
#[test]
fn crash_harness_25_kill_cycles() {
    harness(25, 25, 150);
}

/// The documented long run: 500 kill cycles.
#[test]
#[ignore = "long run (~15 min, release): cargo test --release -p coffer-crash --test crash_harness -- --ignored --nocapture"]
fn crash_harness_500_kill_cycles() {
    harness(500, 500, 300);
}

/// The harness is not vacuous: with relaxed durability (writes acknowledged before the log is
/// synced, which a kill can take back) it must report lost acknowledged writes.
#[test]
fn crash_harness_catches_writes_lost_under_relaxed_durability() {
    // A failing run keeps its work directory: give it one that is removed afterwards.
    let work = tempfile::tempdir().expect("tempdir");
    let work_dir = work.path().join("work");
    let output = run(
        8,
        8,
        300,
        &[
            "--server-arg=--relaxed-durability",
            "--work-dir",
            work_dir.to_str().expect("utf-8 temp path"),
        ],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("expected the acknowledged") || stdout.contains("went backwards"),
        "{stdout}"
    );
}
