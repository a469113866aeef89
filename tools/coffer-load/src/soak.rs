//! `coffer-load soak`: a long mixed run against a `coffer serve` child process.
//!
//! Starts the `coffer-kms-local` plugin (a fresh key directory) and `coffer serve` with durable
//! writes and that plugin as its KMS, creates `--secrets` Secrets, opens `--watchers` Watch
//! streams (one Secret each, by `metadata.name`, spread over `--connections`), then for
//! `--duration` runs writers (unconditional Updates at `--writes-per-sec` in all) and readers
//! (Gets at `--reads-per-sec`), and at `--rotate-at` (default: half-way) rotates the KMS key
//! (`coffer-kms-local rotate`), which the server sees at its next Status poll and answers with a
//! new seed. Every `--sample-interval` it samples the server's RSS (`/proc/<pid>/status`) and
//! open file descriptors (`/proc/<pid>/fd`) with the counts so far, into `--csv`.
//!
//! A watch stream the server ends is counted by its status code and reopened from the last
//! resource_version it saw (what a mount agent does). At the end the server is stopped and
//! `coffer kms status` shows the seeds the records are under (the rotation's new seed among
//! them). The report gives errors by kind, the RSS after warm-up and at the end, its slope
//! after warm-up (least squares over the samples, KiB per minute), and the fd counts; the exit
//! code is 1 when any call failed, a watch ended with an error, or the RSS slope passed
//! `--max-rss-slope` (a leak; caches that fill to their bounds do so during the warm-up).
//!
//! ```sh
//! ulimit -n 65536
//! coffer-load soak --duration 600 --watchers 10000 --csv soak.csv
//! ```

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use coffer_server::proto::v1 as pb;
use coffer_server::proto::v1::secrets_client::SecretsClient;
use rand::Rng;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::watch::{connect, rss_kib, secret_name};

/// Flags of `coffer-load soak`.
#[derive(Debug, Clone, Args)]
pub(crate) struct SoakArgs {
    /// Seconds of mixed load.
    #[arg(long, default_value = "600", value_parser = crate::parse_seconds, value_name = "SECS")]
    duration: Duration,
    /// Watch streams held open throughout (each on one Secret).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    watchers: u32,
    /// HTTP/2 connections the watchers, writers and readers share.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    connections: u32,
    /// Secrets created, updated, read and watched.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    secrets: u32,
    /// Concurrent writer tasks.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(0..=10_000))]
    writers: u32,
    /// Updates per second, all writers together (0: as fast as they go).
    #[arg(long, default_value_t = 200.0)]
    writes_per_sec: f64,
    /// Concurrent reader tasks.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(0..=10_000))]
    readers: u32,
    /// Gets per second, all readers together (0: as fast as they go).
    #[arg(long, default_value_t = 1000.0)]
    reads_per_sec: f64,
    /// When to rotate the KMS key, in seconds from the start of the mixed load [default: half
    /// of --duration]; a value past --duration means no rotation.
    #[arg(long, value_parser = crate::parse_seconds_or_zero, value_name = "SECS")]
    rotate_at: Option<Duration>,
    /// Seconds between samples of the server's RSS and open fds.
    #[arg(long, default_value = "1", value_parser = crate::parse_seconds, value_name = "SECS")]
    sample_interval: Duration,
    /// Seconds at the start after which RSS and fds are expected to be flat [default: a tenth
    /// of --duration, at most 60].
    #[arg(long, value_parser = crate::parse_seconds_or_zero, value_name = "SECS")]
    warmup: Option<Duration>,
    /// The server's `--history-retention`, in seconds (0: no history) [default: the server's,
    /// 1 h]. Superseded versions kept for that long grow the store, and sled's page cache with
    /// it, for that long: a leak check wants 0 or a run well past the retention.
    #[arg(long, value_parser = crate::parse_seconds_or_zero, value_name = "SECS")]
    history_retention: Option<Duration>,
    /// Fail the run (exit code 1) when the server's RSS grows faster than this after the
    /// warm-up, in KiB per minute (least squares over the samples from the end of the warm-up
    /// to the end of the load).
    #[arg(long, value_name = "KIB_PER_MIN", value_parser = parse_slope)]
    max_rss_slope: Option<f64>,
    /// Write the samples here as CSV.
    #[arg(long, value_name = "FILE")]
    csv: Option<PathBuf>,
    /// Working directory (data dir, key dir, sockets, logs), kept afterwards [default: a
    /// temporary directory, removed afterwards].
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// The `coffer` binary [default: the one next to this executable].
    #[arg(long, value_name = "PATH")]
    coffer_bin: Option<PathBuf>,
    /// The `coffer-kms-local` binary [default: the one next to this executable].
    #[arg(long, value_name = "PATH")]
    kms_plugin_bin: Option<PathBuf>,
    /// Namespace of the Secrets.
    #[arg(long, short = 'n', default_value = crate::DEFAULT_NAMESPACE)]
    namespace: String,
    /// Print the summary as one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// `--max-rss-slope`: a finite number of KiB per minute, not negative.
fn parse_slope(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!(
            "{s:?} is not a slope: a number of KiB per minute, 0 or more"
        )),
    }
}

/// A child process killed when dropped.
struct ChildProc {
    child: tokio::process::Child,
    name: &'static str,
}

impl ChildProc {
    fn pid(&self) -> Result<u32, String> {
        self.child
            .id()
            .ok_or_else(|| format!("{} exited at once", self.name))
    }

    /// SIGTERM (through `kill`), then up to `grace` for it to exit, then SIGKILL.
    async fn stop(mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        if let Some(pid) = self.child.id() {
            let _ = tokio::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status()
                .await;
        }
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(Ok(status)) => Some(status),
            _ => {
                let _ = self.child.start_kill();
                self.child.wait().await.ok()
            }
        }
    }
}

/// The binary `name` next to this executable, unless given.
fn sibling(given: Option<&Path>, name: &str) -> Result<PathBuf, String> {
    if let Some(p) = given {
        return Ok(p.to_path_buf());
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot locate this executable: {e}"))?;
    let p = exe.with_file_name(name);
    if !p.exists() {
        return Err(format!(
            "{} not found: build it (cargo build --release --workspace --bins) or give its path",
            p.display()
        ));
    }
    Ok(p)
}

fn spawn(exe: &Path, args: &[String], log: &Path, name: &'static str) -> Result<ChildProc, String> {
    let log_file =
        std::fs::File::create(log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
    let err_file = log_file
        .try_clone()
        .map_err(|e| format!("cannot create {}: {e}", log.display()))?;
    let child = tokio::process::Command::new(exe)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(log_file)
        .stderr(err_file)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    Ok(ChildProc { child, name })
}

/// Runs `exe args` to completion; its stdout, or an error with its stderr.
async fn run_tool(exe: &Path, args: &[String]) -> Result<String, String> {
    let out = tokio::process::Command::new(exe)
        .args(args)
        .output()
        .await
        .map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} {} failed ({}): {}",
            exe.display(),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

async fn wait_until<F: Fn() -> bool>(what: &str, timeout: Duration, ok: F) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    while !ok() {
        if Instant::now() > deadline {
            return Err(format!("{what} did not come up within {timeout:?}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

fn open_fds(pid: u32) -> Option<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|d| d.count() as u64)
}

/// Counts shared by the load tasks.
#[derive(Debug, Default)]
struct Stats {
    writes: AtomicU64,
    reads: AtomicU64,
    events: AtomicU64,
    watchers_open: AtomicU64,
    reopened: AtomicU64,
    /// Failures by kind (`update: Unavailable`, `watch ended: OutOfRange`, ...).
    errors: Mutex<BTreeMap<String, u64>>,
    /// One message per kind.
    samples: Mutex<BTreeMap<String, String>>,
}

impl Stats {
    fn error(&self, kind: String, message: String) {
        *self
            .errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(kind.clone())
            .or_default() += 1;
        self.samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(kind)
            .or_insert(message);
    }

    fn error_count(&self) -> u64 {
        self.errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .sum()
    }
}

/// One sample of the server.
#[derive(Debug, Clone, Copy)]
struct Sample {
    secs: f64,
    rss_kib: u64,
    fds: u64,
    writes: u64,
    reads: u64,
    events: u64,
    watchers: u64,
    errors: u64,
}

/// Runs `coffer-load soak`.
pub(crate) async fn run(args: SoakArgs) -> Result<ExitCode, String> {
    let coffer = sibling(args.coffer_bin.as_deref(), "coffer")?;
    let plugin = sibling(args.kms_plugin_bin.as_deref(), "coffer-kms-local")?;
    let (dir, temporary) = match &args.work_dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("coffer-soak-{}", std::process::id())),
            true,
        ),
    };
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let result = soak(&args, &dir, &coffer, &plugin).await;
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

async fn soak(
    args: &SoakArgs,
    dir: &Path,
    coffer: &Path,
    plugin: &Path,
) -> Result<ExitCode, String> {
    let keys = dir.join("keys").display().to_string();
    let kms_sock = dir.join("kms.sock");
    let kms_uri = format!("unix://{}", kms_sock.display());
    let data = dir.join("data").display().to_string();
    let _ = std::fs::remove_file(&kms_sock);
    let init = run_tool(plugin, &["init".into(), "--key-dir".into(), keys.clone()]).await?;
    eprintln!("kms: {init}");
    let kms = spawn(
        plugin,
        &[
            "serve".into(),
            "--key-dir".into(),
            keys.clone(),
            "--listen".into(),
            kms_uri.clone(),
        ],
        &dir.join("kms.log"),
        "coffer-kms-local",
    )?;
    wait_until("the KMS plugin", Duration::from_secs(30), || {
        kms_sock.exists()
    })
    .await?;

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("cannot pick a port: {e}"))?
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut serve_args: Vec<String> = vec![
        "serve".into(),
        "--data-dir".into(),
        data.clone(),
        "--listen".into(),
        addr.clone(),
        "--kms".into(),
        kms_uri.clone(),
        "--kms-poll-interval".into(),
        "2s".into(),
        "--shutdown-grace".into(),
        "5s".into(),
        "--token-cleaner-interval".into(),
        "0".into(),
    ];
    if let Some(d) = args.history_retention {
        serve_args.extend(["--history-retention".into(), format!("{}ms", d.as_millis())]);
    }
    let server = spawn(coffer, &serve_args, &dir.join("coffer.log"), "coffer serve")?;
    let pid = server.pid()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while tokio::net::TcpStream::connect(&addr).await.is_err() {
        if Instant::now() > deadline {
            return Err(format!(
                "coffer serve did not listen on {addr}; see {}",
                dir.join("coffer.log").display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let outcome = drive(args, &addr, pid, &keys, plugin).await;
    let stopped = server.stop(Duration::from_secs(15)).await;
    // Which seeds the records are under now (the server is stopped: sled's lock is free).
    let kms_status = run_tool(
        coffer,
        &[
            "kms".into(),
            "status".into(),
            "--data-dir".into(),
            data,
            "--kms".into(),
            kms_uri,
            "--output".into(),
            "json".into(),
        ],
    )
    .await
    .and_then(|out| {
        serde_json::from_str::<serde_json::Value>(&out)
            .map_err(|e| format!("coffer kms status: not JSON: {e}"))
    })
    .unwrap_or_else(|e| serde_json::json!({ "error": e }));
    let _ = kms.stop(Duration::from_secs(5)).await;
    let mut report = outcome?;
    report.server_exit = stopped.map(|s| s.to_string());
    report.kms_status = kms_status;
    if args.json {
        println!("{}", report.json());
    } else {
        report.print();
    }
    Ok(if report.clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The numbers of a soak.
#[derive(Debug)]
struct Report {
    duration: Duration,
    watchers: u32,
    watchers_established: u64,
    open_time: Duration,
    writes: u64,
    reads: u64,
    events: u64,
    reopened: u64,
    errors: BTreeMap<String, u64>,
    error_samples: BTreeMap<String, String>,
    rotation: Option<(f64, String)>,
    warmup: Duration,
    /// Seconds from the start to the end of the mixed load (later samples are after it).
    load_end_secs: f64,
    samples: Vec<Sample>,
    server_exit: Option<String>,
    /// `coffer kms status -o json` after the run.
    kms_status: serde_json::Value,
    /// The bound on the RSS slope (`--max-rss-slope`), KiB per minute.
    max_rss_slope: Option<f64>,
}

/// The least-squares slope of `(seconds, KiB)` points, in KiB per minute; `None` for fewer
/// than two distinct times.
fn slope_per_min(points: impl Iterator<Item = (f64, f64)> + Clone) -> Option<f64> {
    let (n, sx, sy) = points.clone().fold((0.0, 0.0, 0.0), |(n, sx, sy), (x, y)| {
        (n + 1.0, sx + x, sy + y)
    });
    if n < 2.0 {
        return None;
    }
    let (mx, my) = (sx / n, sy / n);
    let (sxy, sxx) = points.fold((0.0, 0.0), |(sxy, sxx), (x, y)| {
        (sxy + (x - mx) * (y - my), sxx + (x - mx) * (x - mx))
    });
    (sxx > 0.0).then(|| sxy / sxx * 60.0)
}

impl Report {
    fn clean(&self) -> bool {
        self.errors.is_empty()
            && self.watchers_established == u64::from(self.watchers)
            && !self.rss_slope_exceeded()
    }

    /// The server's RSS slope after the warm-up, KiB per minute.
    fn rss_slope(&self) -> Option<f64> {
        slope_per_min(self.steady().iter().map(|s| (s.secs, s.rss_kib as f64)))
    }

    /// Whether the RSS grew faster than `--max-rss-slope` allows.
    fn rss_slope_exceeded(&self) -> bool {
        match (self.max_rss_slope, self.rss_slope()) {
            (Some(max), Some(slope)) => slope > max,
            _ => false,
        }
    }

    /// Samples from the end of the warm-up to the end of the load (all of them if none).
    fn steady(&self) -> &[Sample] {
        let w = self.warmup.as_secs_f64();
        let first = self.samples.iter().position(|s| s.secs >= w).unwrap_or(0);
        let end = self
            .samples
            .iter()
            .rposition(|s| s.secs <= self.load_end_secs)
            .map_or(self.samples.len(), |i| i + 1)
            .max(first);
        if first == end {
            return &self.samples;
        }
        &self.samples[first..end]
    }

    fn json(&self) -> serde_json::Value {
        let steady = self.steady();
        let stat = |f: fn(&Sample) -> u64| {
            let first = steady.first().map(f);
            let last = steady.last().map(f);
            let min = steady.iter().map(f).min();
            let max = steady.iter().map(f).max();
            let growth = match (first, last) {
                (Some(a), Some(b)) => Some(b as i64 - a as i64),
                _ => None,
            };
            serde_json::json!({
                "after_warmup": first, "end": last, "min": min, "max": max, "growth": growth,
            })
        };
        let secs = self.duration.as_secs_f64().max(1e-9);
        serde_json::json!({
            "duration_secs": self.duration.as_secs_f64(),
            "warmup_secs": self.warmup.as_secs_f64(),
            "watchers": self.watchers,
            "watchers_established": self.watchers_established,
            "open_secs": self.open_time.as_secs_f64(),
            "writes": self.writes,
            "writes_per_sec": self.writes as f64 / secs,
            "reads": self.reads,
            "reads_per_sec": self.reads as f64 / secs,
            "events": self.events,
            "events_per_sec": self.events as f64 / secs,
            "watch_reopened": self.reopened,
            "errors": self.errors,
            "error_samples": self.error_samples,
            "rotation": self.rotation.as_ref().map(|(at, out)| serde_json::json!({"at_secs": at, "output": out})),
            "samples": self.samples.len(),
            "load_end_secs": self.load_end_secs,
            "fds_first_sample": self.samples.first().map(|s| s.fds),
            "fds_after_load": self.samples.last().map(|s| s.fds),
            "rss_kib": stat(|s| s.rss_kib),
            "rss_slope_kib_per_min": self.rss_slope(),
            "max_rss_slope_kib_per_min": self.max_rss_slope,
            "rss_slope_exceeded": self.rss_slope_exceeded(),
            "fds": stat(|s| s.fds),
            "server_exit": self.server_exit,
            "kms_status": self.kms_status,
            "clean": self.clean(),
        })
    }

    fn print(&self) {
        let steady = self.steady();
        let secs = self.duration.as_secs_f64().max(1e-9);
        println!(
            "coffer-load soak: {:.0} s, {}/{} watchers (opened in {:.1?})",
            secs, self.watchers_established, self.watchers, self.open_time
        );
        println!(
            "  writes {} ({:.0}/s), reads {} ({:.0}/s), watch events {} ({:.0}/s), watches reopened {}",
            self.writes,
            self.writes as f64 / secs,
            self.reads,
            self.reads as f64 / secs,
            self.events,
            self.events as f64 / secs,
            self.reopened
        );
        match &self.rotation {
            Some((at, out)) => println!("  KMS rotation at {at:.1} s: {out}"),
            None => println!("  no KMS rotation"),
        }
        if let (Some(first), Some(last)) = (steady.first(), steady.last()) {
            let max_rss = steady.iter().map(|s| s.rss_kib).max().unwrap_or(0);
            let (min_fd, max_fd) = (
                steady.iter().map(|s| s.fds).min().unwrap_or(0),
                steady.iter().map(|s| s.fds).max().unwrap_or(0),
            );
            println!(
                "  server RSS after {:.0} s warm-up {:.1} MiB, at the end of the load {:.1} MiB, max {:.1} MiB",
                self.warmup.as_secs_f64(),
                first.rss_kib as f64 / 1024.0,
                last.rss_kib as f64 / 1024.0,
                max_rss as f64 / 1024.0
            );
            if let Some(slope) = self.rss_slope() {
                let bound = match self.max_rss_slope {
                    Some(max) if slope > max => format!(" (over the bound of {max:.0}: a leak?)"),
                    Some(max) => format!(" (bound {max:.0})"),
                    None => String::new(),
                };
                println!("  server RSS slope after warm-up: {slope:.0} KiB/min{bound}");
            }
            println!(
                "  server open fds after warm-up {}, at the end of the load {}, min {min_fd}, max {max_fd}; \
                 {} at the first sample, {} after the load",
                first.fds,
                last.fds,
                self.samples.first().map_or(0, |s| s.fds),
                self.samples.last().map_or(0, |s| s.fds)
            );
        }
        if self.errors.is_empty() {
            println!("  errors: none");
        }
        for (kind, n) in &self.errors {
            let sample = self.error_samples.get(kind).map_or("", String::as_str);
            println!("  error {kind}: {n} (e.g. {sample})");
        }
        if let Some(exit) = &self.server_exit {
            println!("  server stopped: {exit}");
        }
        if let Some(seeds) = self.kms_status["seeds"].as_array() {
            println!(
                "  after the run: KMS key_id {}; {} records; seeds:",
                self.kms_status["keyId"], self.kms_status["records"]
            );
            for s in seeds {
                println!(
                    "    seed {} under key_id {} (current key: {}): {} records",
                    s["id"], s["keyId"], s["currentKeyId"], s["records"]
                );
            }
        } else {
            println!("  kms status: {}", self.kms_status);
        }
    }
}

fn code_name(status: &tonic::Status) -> String {
    format!("{:?}", status.code())
}

/// A watch on Secret `secret` that reopens itself (from the last resource_version seen) when
/// the server ends it, until `stop`.
async fn watcher(
    mut client: SecretsClient<Channel>,
    ns: String,
    secret: u64,
    stats: Arc<Stats>,
    stop: CancellationToken,
    opened: tokio::sync::OwnedSemaphorePermit,
) {
    let mut opened = Some(opened);
    let mut last_rv = 0u64;
    while !stop.is_cancelled() {
        let req = pb::WatchSecretsRequest {
            namespace: ns.clone(),
            field_selector: format!("metadata.name={}", secret_name(secret)),
            resource_version: last_rv,
            ..Default::default()
        };
        let mut s = match client.watch(req).await {
            Ok(r) => r.into_inner(),
            Err(e) => {
                stats.error(format!("watch open: {}", code_name(&e)), e.to_string());
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        if opened.take().is_some() {
            stats.watchers_open.fetch_add(1, Ordering::Relaxed);
        } else {
            stats.reopened.fetch_add(1, Ordering::Relaxed);
        }
        loop {
            let msg = tokio::select! {
                _ = stop.cancelled() => return,
                m = s.message() => m,
            };
            match msg {
                Ok(Some(ev)) => {
                    if let Some(rv) = ev
                        .object
                        .as_ref()
                        .and_then(|o| o.metadata.as_ref())
                        .map(|m| m.resource_version)
                    {
                        last_rv = last_rv.max(rv);
                    }
                    stats.events.fetch_add(1, Ordering::Relaxed);
                }
                Ok(None) => {
                    stats.error("watch ended by the server".into(), String::new());
                    break;
                }
                Err(e) => {
                    stats.error(format!("watch ended: {}", code_name(&e)), e.to_string());
                    break;
                }
            }
        }
    }
}

/// Runs `n` tasks calling `f` at `rate` per second in all (0: unpaced) until `stop`.
fn paced<F, Fut>(
    n: u32,
    rate: f64,
    stop: &CancellationToken,
    tasks: &mut tokio::task::JoinSet<()>,
    f: F,
) where
    F: Fn(u32) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let f = Arc::new(f);
    for i in 0..n {
        let f = f.clone();
        let stop = stop.clone();
        let period = (rate > 0.0).then(|| Duration::from_secs_f64(f64::from(n) / rate));
        tasks.spawn(async move {
            let mut ticker = period.map(|p| {
                let mut t = tokio::time::interval(p);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                t
            });
            while !stop.is_cancelled() {
                if let Some(t) = ticker.as_mut() {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = t.tick() => {}
                    }
                }
                f(i).await;
            }
        });
    }
}

async fn drive(
    args: &SoakArgs,
    addr: &str,
    pid: u32,
    key_dir: &str,
    plugin: &Path,
) -> Result<Report, String> {
    let ns = args.namespace.clone();
    let secrets = u64::from(args.secrets);
    let mut channels = Vec::new();
    for _ in 0..args.connections {
        channels.push(connect(addr).await?);
    }
    let channels: Arc<[Channel]> = channels.into();
    let client = {
        let channels = channels.clone();
        move |i: u64| {
            SecretsClient::new(channels[(i % channels.len() as u64) as usize].clone())
                .max_decoding_message_size(16 << 20)
        }
    };
    let client = Arc::new(client);
    let value = |v: u64| -> Vec<u8> {
        let mut b = vec![0u8; 1024];
        b[..8].copy_from_slice(&v.to_le_bytes());
        b
    };
    let secret = move |ns: &str, i: u64, v: u64| pb::Secret {
        metadata: Some(pb::ObjectMeta {
            name: secret_name(i),
            namespace: ns.to_owned(),
            ..Default::default()
        }),
        r#type: "Opaque".into(),
        data: [("value".to_owned(), value(v))].into(),
        ..Default::default()
    };

    // The Secrets.
    let sem = Arc::new(Semaphore::new(64));
    let mut creates = tokio::task::JoinSet::new();
    for i in 0..secrets {
        let mut c = client(i);
        let s = secret(&ns, i, 0);
        let permit = sem
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        creates.spawn(async move {
            let _permit = permit;
            match c.create(pb::CreateSecretRequest { secret: Some(s) }).await {
                Ok(_) => Ok(()),
                Err(e) if e.code() == tonic::Code::AlreadyExists => Ok(()),
                Err(e) => Err(format!("create: {e}")),
            }
        });
    }
    while let Some(r) = creates.join_next().await {
        r.map_err(|e| e.to_string())??;
    }

    let stats = Arc::new(Stats::default());
    let start = Instant::now();
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let mut csv = match &args.csv {
        Some(p) => {
            let mut f = std::fs::File::create(p)
                .map_err(|e| format!("cannot create {}: {e}", p.display()))?;
            writeln!(f, "secs,rss_kib,fds,writes,reads,events,watchers,errors")
                .map_err(|e| e.to_string())?;
            Some(f)
        }
        None => None,
    };
    // The sampler runs from the start, so the curve shows the watchers being opened.
    let sampler_stop = CancellationToken::new();
    let sampler = {
        let stats = stats.clone();
        let samples = samples.clone();
        let stop = sampler_stop.clone();
        let interval = args.sample_interval;
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = ticker.tick() => {}
                }
                let s = Sample {
                    secs: start.elapsed().as_secs_f64(),
                    rss_kib: rss_kib(pid).unwrap_or(0),
                    fds: open_fds(pid).unwrap_or(0),
                    writes: stats.writes.load(Ordering::Relaxed),
                    reads: stats.reads.load(Ordering::Relaxed),
                    events: stats.events.load(Ordering::Relaxed),
                    watchers: stats.watchers_open.load(Ordering::Relaxed),
                    errors: stats.error_count(),
                };
                samples.lock().unwrap_or_else(|p| p.into_inner()).push(s);
            }
        })
    };

    // The watchers.
    let stop = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    let open_sem = Arc::new(Semaphore::new(512));
    let t = Instant::now();
    for i in 0..u64::from(args.watchers) {
        let permit = open_sem
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        tasks.spawn(watcher(
            client(i),
            ns.clone(),
            i % secrets,
            stats.clone(),
            stop.clone(),
            permit,
        ));
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    while stats.watchers_open.load(Ordering::Relaxed) < u64::from(args.watchers)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let open_time = t.elapsed();
    let watchers_established = stats.watchers_open.load(Ordering::Relaxed);
    eprintln!(
        "{watchers_established} watchers open in {open_time:.1?}; mixed load for {:.0?}",
        args.duration
    );

    // Writers and readers.
    let load_start = Instant::now();
    let counter = Arc::new(AtomicU64::new(1));
    {
        let stats = stats.clone();
        let ns = ns.clone();
        let client = client.clone();
        let counter = counter.clone();
        paced(
            args.writers,
            args.writes_per_sec,
            &stop,
            &mut tasks,
            move |i| {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let target = rand::thread_rng().gen_range(0..secrets);
                let mut c = client(u64::from(i) + n);
                let s = secret(&ns, target, n);
                let stats = stats.clone();
                async move {
                    let call = c.update(pb::UpdateSecretRequest { secret: Some(s) });
                    match tokio::time::timeout(Duration::from_secs(30), call).await {
                        Ok(Ok(_)) => {
                            stats.writes.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(Err(e)) => {
                            stats.error(format!("update: {}", code_name(&e)), e.to_string())
                        }
                        Err(_) => stats.error("update: timeout".into(), "no answer in 30 s".into()),
                    }
                }
            },
        );
    }
    {
        let stats = stats.clone();
        let ns = ns.clone();
        let client = client.clone();
        paced(
            args.readers,
            args.reads_per_sec,
            &stop,
            &mut tasks,
            move |i| {
                let target = rand::thread_rng().gen_range(0..secrets);
                let mut c = client(u64::from(i) * 7 + target);
                let req = pb::GetSecretRequest {
                    namespace: ns.clone(),
                    name: secret_name(target),
                    resource_version: 0,
                };
                let stats = stats.clone();
                async move {
                    match tokio::time::timeout(Duration::from_secs(30), c.get(req)).await {
                        Ok(Ok(r)) => {
                            if r.into_inner().data.get("value").map(Vec::len) == Some(1024) {
                                stats.reads.fetch_add(1, Ordering::Relaxed);
                            } else {
                                stats.error("get: wrong value".into(), String::new());
                            }
                        }
                        Ok(Err(e)) => stats.error(format!("get: {}", code_name(&e)), e.to_string()),
                        Err(_) => stats.error("get: timeout".into(), "no answer in 30 s".into()),
                    }
                }
            },
        );
    }

    // The rotation, in the middle.
    let rotate_at = args.rotate_at.unwrap_or(args.duration / 2);
    let mut rotation = None;
    let end = load_start + args.duration;
    if rotate_at < args.duration {
        tokio::time::sleep_until((load_start + rotate_at).into()).await;
        let at = start.elapsed().as_secs_f64();
        let out = run_tool(
            plugin,
            &["rotate".into(), "--key-dir".into(), key_dir.into()],
        )
        .await;
        match out {
            Ok(out) => {
                eprintln!("KMS key rotated at {at:.1} s: {out}");
                rotation = Some((at, out));
            }
            Err(e) => stats.error("kms rotate".into(), e),
        }
    }
    tokio::time::sleep_until(end.into()).await;
    let duration = load_start.elapsed();
    let load_end_secs = start.elapsed().as_secs_f64();
    stop.cancel();
    let drained = tokio::time::timeout(Duration::from_secs(60), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tasks.abort_all();
        stats.error("load tasks did not stop within 60 s".into(), String::new());
    }
    // One last sample after the load.
    tokio::time::sleep(args.sample_interval).await;
    sampler_stop.cancel();
    let _ = sampler.await;
    let samples = std::mem::take(&mut *samples.lock().unwrap_or_else(|p| p.into_inner()));
    if let Some(f) = csv.as_mut() {
        for s in &samples {
            writeln!(
                f,
                "{:.1},{},{},{},{},{},{},{}",
                s.secs, s.rss_kib, s.fds, s.writes, s.reads, s.events, s.watchers, s.errors
            )
            .map_err(|e| format!("cannot write the CSV: {e}"))?;
        }
    }
    let warmup = args
        .warmup
        .unwrap_or_else(|| (args.duration / 10).min(Duration::from_secs(60)))
        + load_start.saturating_duration_since(start);
    let errors = stats
        .errors
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let error_samples = stats
        .samples
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Ok(Report {
        duration,
        watchers: args.watchers,
        watchers_established,
        open_time,
        writes: stats.writes.load(Ordering::Relaxed),
        reads: stats.reads.load(Ordering::Relaxed),
        events: stats.events.load(Ordering::Relaxed),
        reopened: stats.reopened.load(Ordering::Relaxed),
        errors,
        error_samples,
        rotation,
        warmup,
        load_end_secs,
        samples,
        server_exit: None,
        kms_status: serde_json::Value::Null,
        max_rss_slope: args.max_rss_slope,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_is_least_squares_in_kib_per_minute() {
        // 1 KiB a second, with noise that cancels out: 60 KiB a minute.
        let pts = [
            (0.0, 100.0),
            (1.0, 101.5),
            (2.0, 102.0),
            (3.0, 103.5),
            (4.0, 104.0),
        ];
        let slope = slope_per_min(pts.iter().copied()).expect("slope");
        assert!((slope - 60.0).abs() < 1e-9, "{slope}");
        // Flat, and too few points or one instant only.
        let flat = [(0.0, 5.0), (10.0, 5.0), (20.0, 5.0)];
        assert_eq!(slope_per_min(flat.iter().copied()), Some(0.0));
        assert_eq!(slope_per_min([(1.0, 1.0)].into_iter()), None);
        assert_eq!(slope_per_min([(1.0, 1.0), (1.0, 9.0)].into_iter()), None);
    }

    #[test]
    fn max_rss_slope_must_be_a_number_of_kib_per_minute() {
        assert_eq!(parse_slope("512"), Ok(512.0));
        assert_eq!(parse_slope("0"), Ok(0.0));
        for bad in ["-1", "NaN", "inf", "fast"] {
            let e = parse_slope(bad).expect_err(bad);
            assert!(e.contains("KiB per minute"), "{e}");
        }
    }
}
