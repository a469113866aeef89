//! Figures for the mount agent (ignored by default; run it on purpose, in release mode):
//!
//! ```sh
//! cargo test --release --test mount_bench -- --ignored --nocapture
//! ```
//!
//! One `coffer serve` and one `coffer mount` process (both the built binary), 1,000 Secrets and
//! 1,000 mounts in that one agent (so one WatchMany stream with 1,000 watches), targets on
//! /dev/shm (tmpfs) when it exists. It reports:
//! - update propagation: from an Update's acknowledgement to the new `..data` link in place
//!   (polled with readlink), p50/p99/max, for sequential updates and for a burst of concurrent
//!   ones;
//! - agent memory per mount: (RSS with 1,000 mounts - RSS with 1 mount) / 999, after the
//!   initial sync.
//!
//! `MOUNT_BENCH_MOUNTS` and `MOUNT_BENCH_UPDATES` change the sizes; `MOUNT_BENCH_DIR` puts the
//! targets elsewhere (a disk, to see the cost of the fsyncs).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use coffer_testkit::server as server_common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use coffer_server::proto::v1::secrets_client::SecretsClient;
use futures::StreamExt;
use server_common::{create, secret, unix_channel, update};

use coffer_testkit::process::{Serve, coffer_bin, rss_kib};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The `coffer mount` agent, killed when dropped.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_agent(socket: &Path, config: &Path) -> Agent {
    Agent(
        Command::new(coffer_bin())
            .arg("--server")
            .arg(format!("unix://{}", socket.display()))
            .arg("mount")
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    )
}

fn write_config(path: &Path, targets: &[(String, PathBuf)]) {
    let mut text = String::from("mounts:\n");
    for (name, dir) in targets {
        text.push_str(&format!(
            "  - secret: bench/{name}\n    dir: {}\n",
            dir.display()
        ));
    }
    std::fs::write(path, text).unwrap();
}

fn wait_all_written(dirs: &[PathBuf], timeout: Duration) -> Duration {
    let start = Instant::now();
    for d in dirs {
        while std::fs::read_link(d.join("..data")).is_err() {
            assert!(start.elapsed() < timeout, "{} never written", d.display());
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    start.elapsed()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn summary(label: &str, mut v: Vec<Duration>) {
    v.sort();
    println!(
        "{label}: n={} p50={:.2?} p99={:.2?} max={:.2?}",
        v.len(),
        percentile(&v, 0.50),
        percentile(&v, 0.99),
        v[v.len() - 1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: cargo test --release --test mount_bench -- --ignored --nocapture"]
async fn propagation_and_memory_with_1000_mounts() {
    let mounts = env_usize("MOUNT_BENCH_MOUNTS", 1000);
    let updates = env_usize("MOUNT_BENCH_UPDATES", 500).min(mounts);
    let tmp = tempfile::tempdir().unwrap();
    let base = if let Ok(dir) = std::env::var("MOUNT_BENCH_DIR") {
        tempfile::tempdir_in(dir).unwrap()
    } else if Path::new("/dev/shm").is_dir() {
        tempfile::tempdir_in("/dev/shm").unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let server = Serve::new(tmp.path()).env("RUST_LOG", "warn").start();
    let socket = server.socket.clone();
    let client = SecretsClient::new(unix_channel(&socket).await);

    let value = |i: usize, n: usize| format!("version {n} of secret {i}: {}", "x".repeat(64));
    let t = Instant::now();
    futures::stream::iter(0..mounts)
        .map(|i| {
            let mut c = client.clone();
            async move {
                let v = value(i, 0);
                create(
                    &mut c,
                    secret(
                        "bench",
                        &format!("s{i}"),
                        &[("user", "bench"), ("password", &v)],
                    ),
                )
                .await
                .unwrap();
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
    println!("created {mounts} Secrets in {:.2?}", t.elapsed());

    let targets: Vec<(String, PathBuf)> = (0..mounts)
        .map(|i| (format!("s{i}"), base.path().join(format!("m{i}"))))
        .collect();
    let dirs: Vec<PathBuf> = targets.iter().map(|(_, d)| d.clone()).collect();

    // Baseline: one mount.
    let one = tmp.path().join("one.yaml");
    write_config(&one, &[("s0".into(), base.path().join("single"))]);
    let agent = spawn_agent(&socket, &one);
    wait_all_written(&[base.path().join("single")], Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(500));
    let rss_one = rss_kib(agent.0.id());
    drop(agent);

    // All mounts in one agent.
    let all = tmp.path().join("all.yaml");
    write_config(&all, &targets);
    let agent = spawn_agent(&socket, &all);
    let initial = wait_all_written(&dirs, Duration::from_secs(120));
    std::thread::sleep(Duration::from_millis(500));
    let rss_all = rss_kib(agent.0.id());
    println!("initial sync of {mounts} mounts: {initial:.2?}");
    println!(
        "agent RSS: {rss_one} KiB with 1 mount, {rss_all} KiB with {mounts} mounts -> {:.1} KiB per mount",
        (rss_all.saturating_sub(rss_one)) as f64 / (mounts.max(2) - 1) as f64
    );

    // Sequential updates: ack -> new ..data.
    let mut c = client.clone();
    let mut seq = Vec::with_capacity(updates);
    for (i, dir) in dirs.iter().enumerate().take(updates) {
        let before = std::fs::read_link(dir.join("..data")).unwrap();
        let v = value(i, 1);
        update(
            &mut c,
            secret(
                "bench",
                &format!("s{i}"),
                &[("user", "bench"), ("password", &v)],
            ),
        )
        .await
        .unwrap();
        let acked = Instant::now();
        loop {
            if std::fs::read_link(dir.join("..data")).unwrap() != before {
                break;
            }
            assert!(
                acked.elapsed() < Duration::from_secs(30),
                "update {i} never arrived"
            );
            std::thread::sleep(Duration::from_micros(100));
        }
        seq.push(acked.elapsed());
    }
    summary("sequential updates, ack -> ..data", seq);

    // A burst: `updates` concurrent updates (32 in flight), each timed from its own ack.
    let befores: Vec<PathBuf> = (0..updates)
        .map(|i| std::fs::read_link(dirs[i].join("..data")).unwrap())
        .collect();
    let (tx, rx) = std::sync::mpsc::channel::<(usize, Instant)>();
    let watcher = {
        let dirs = dirs.clone();
        std::thread::spawn(move || {
            let mut acked: Vec<Option<Instant>> = vec![None; befores.len()];
            let mut done: Vec<Option<Duration>> = vec![None; befores.len()];
            let start = Instant::now();
            while done.iter().any(Option::is_none) {
                while let Ok((i, at)) = rx.try_recv() {
                    acked[i] = Some(at);
                }
                for i in 0..befores.len() {
                    if done[i].is_none()
                        && let Some(at) = acked[i]
                        && std::fs::read_link(dirs[i].join("..data")).unwrap() != befores[i]
                    {
                        done[i] = Some(at.elapsed());
                    }
                }
                assert!(
                    start.elapsed() < Duration::from_secs(60),
                    "burst never landed"
                );
            }
            done.into_iter().map(Option::unwrap).collect::<Vec<_>>()
        })
    };
    let t = Instant::now();
    futures::stream::iter(0..updates)
        .map(|i| {
            let mut c = client.clone();
            let tx = tx.clone();
            async move {
                let v = value(i, 2);
                update(
                    &mut c,
                    secret(
                        "bench",
                        &format!("s{i}"),
                        &[("user", "bench"), ("password", &v)],
                    ),
                )
                .await
                .unwrap();
                tx.send((i, Instant::now())).unwrap();
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
    let burst = watcher.join().unwrap();
    println!("burst of {updates} updates sent in {:.2?}", t.elapsed());
    summary("burst updates (32 in flight), ack -> ..data", burst);
    // The agent is still healthy and holds the last version.
    assert!(
        std::fs::read_to_string(dirs[0].join("password"))
            .unwrap()
            .starts_with("version 2 ")
    );
    drop(agent);
}
