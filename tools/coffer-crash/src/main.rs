//! `coffer-crash`: a kill-9 crash harness for `coffer serve`.
//!
//! Each cycle starts the real `coffer serve` process on a data directory that lives across
//! cycles (in some cycles killing it once first while it recovers), checks what the previous
//! cycle left, drives concurrent creates, updates and deletes from several gRPC clients (each
//! owning its own keys, so every key's history is linear) plus one watch on everything, and
//! SIGKILLs the server at a random moment. Then it starts the next cycle on the same directory.
//! The server's log is checkpointed every 64 KiB (`--wal-checkpoint-bytes`), so kills also land
//! in checkpoints under load.
//!
//! What a restart is checked against (every violation is printed; the exit code is 1 if any):
//!
//! - every acknowledged write is there with exactly its content and resource_version, unless a
//!   later write to that key was in doubt (sent, but its answer lost to the kill): then the key
//!   holds exactly one of the two states, never anything else (no half-written record, no
//!   DATA_LOSS); a write whose watch event was delivered counts as acknowledged (events are
//!   published only once durable);
//! - List shows exactly the keys that exist, with the same content as Get;
//! - every acknowledged version is in the key's History (with its revision, content, or as a
//!   delete), as is every in-doubt write found applied;
//! - revisions never go backwards: the revision after a restart is at least every acknowledged
//!   or watched revision and the previous restart's;
//! - the watch of each cycle sees consecutive revisions (no gap, no duplicate), each event equal
//!   to the acknowledged write of that revision;
//! - resuming after a restart: the event window is in memory, so after a restart it starts empty
//!   at the recovered revision R, and a watch resumed from the last revision seen before the
//!   kill, W < R, is replayed from the store's history: it must see every revision in (W, R]
//!   once, in order, each equal to the version the harness knows was written there, then go on
//!   live without a gap (never silently served with a gap).
//!
//! ```sh
//! cargo build --release --bin coffer --bin coffer-crash
//! target/release/coffer-crash --cycles 500 --seed 1
//! ```
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use coffer::cli::ServerAddr;
use coffer::credentials::Client;
use coffer_server::proto::v1 as pb;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use tonic::Code;

mod etcd;
mod lazyfs;
mod rpc;

use rpc::RPC_TIMEOUT;
/// How long the server may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// `coffer-crash`: SIGKILL `coffer serve` at random moments and check what survives.
#[derive(Debug, Parser)]
#[command(name = "coffer-crash", version, about)]
struct Args {
    /// Kill cycles to run.
    #[arg(long, default_value_t = 25)]
    cycles: u32,
    /// Seed of the random choices (operations, contents, kill moments).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Concurrent writer clients (each on its own connection and its own keys).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    clients: u32,
    /// Keys per client.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1000))]
    keys: u32,
    /// The kill comes uniformly within this many milliseconds after the load starts.
    #[arg(long, default_value_t = 300)]
    max_run_ms: u64,
    /// The `coffer` binary [default: `coffer` next to this binary].
    #[arg(long)]
    coffer: Option<PathBuf>,
    /// Work directory (data dir, socket, server log) [default: a fresh temporary directory,
    /// removed on success].
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// The server's --watch-window (changes kept for resumes).
    #[arg(long, default_value_t = 1000)]
    watch_window: usize,
    /// In this percentage of cycles the server is also killed once while it starts (during
    /// recovery: log replay, checkpoint), before the checked start.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(0..=100))]
    startup_kill_percent: u32,
    /// The server's write-ahead log is checkpointed once it passes this many bytes (through
    /// `coffer serve --wal-checkpoint-bytes`), so that kills also land in checkpoints under load; 0 keeps
    /// the server's default (64 MiB: a checkpoint only at each start).
    #[arg(long, default_value_t = 64 * 1024)]
    wal_checkpoint_bytes: u64,
    /// An extra argument for `coffer serve` (repeatable), e.g. `--server-arg=--relaxed-durability`
    /// to see the harness catch the writes that mode loses on a kill.
    #[arg(long, allow_hyphen_values = true)]
    server_arg: Vec<String>,
    /// Power loss: mount LazyFS (this binary, a FUSE file system that keeps written data in its
    /// own cache until it is fsynced; `scripts/build-lazyfs.sh` builds it) in the work
    /// directory, keep the data directory on it, and after every SIGKILL drop every byte not
    /// yet fsynced (`lazyfs::clear-cache`), as a power failure would. A kill alone leaves the
    /// page cache intact, so only this proves that an acknowledged write was synced.
    #[arg(long)]
    lazyfs: Option<PathBuf>,
    /// Writers through the etcd v3 door (`coffer serve --etcd-listen`), each on its own keys,
    /// besides the gRPC writers; their writes share the store's revision and are checked the
    /// same way (acknowledged value and mod_revision, or the one write in doubt).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=64))]
    etcd_writers: u32,
    /// Stop the server under load with SIGTERM (a clean shutdown) instead of SIGKILL, and
    /// require it to exit cleanly; with `--lazyfs` the unsynced data is still dropped after it
    /// exits, so every write acknowledged before the stop must have been synced by then (in
    /// relaxed durability too, which promises nothing is lost on a clean shutdown).
    #[arg(long)]
    terminate: bool,
}

/// The content of a Secret as the harness writes it (what is compared).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Content {
    data: BTreeMap<String, Vec<u8>>,
    labels: BTreeMap<String, String>,
}

impl Content {
    fn of(s: &pb::Secret) -> Self {
        Self {
            data: s.data.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            labels: s
                .metadata
                .as_ref()
                .map(|m| {
                    m.labels
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

/// A key's state.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Absent,
    /// Present with this content; `rv` is known for an acknowledged write.
    Present(Content, Option<u64>),
}

/// What the harness knows of one key.
#[derive(Debug, Clone)]
struct KeyModel {
    namespace: String,
    name: String,
    /// The last acknowledged (or verified) state.
    acked: State,
    /// The resource_version of the last acknowledged write to the key (a delete's too).
    acked_rv: u64,
    /// A write sent after `acked` whose answer was lost: it may or may not have happened.
    doubt: Option<State>,
    /// Every acknowledged (or verified) version with its revision: each must be in History.
    versions: Vec<(u64, State)>,
}

/// One acknowledged write.
#[derive(Debug, Clone)]
struct Ack {
    key: usize,
    rv: u64,
    state: State,
}

/// One watch event as received.
#[derive(Debug, Clone)]
struct Seen {
    rv: u64,
    kind: i32,
    namespace: String,
    name: String,
    content: Content,
}

/// Totals over the run.
#[derive(Debug, Default)]
struct Totals {
    acked: u64,
    in_doubt: u64,
    doubt_applied: u64,
    doubt_absent: u64,
    keys_checked: u64,
    versions_checked: u64,
    events_checked: u64,
    resumes_served: u64,
    history_events_checked: u64,
    startup_kills: u64,
    power_losses: u64,
    etcd_acked: u64,
    etcd: etcd::Checked,
    restart_ms: Vec<u64>,
    violations: Vec<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("coffer-crash: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("coffer-crash: {e}");
            ExitCode::from(2)
        }
    }
}

/// The `coffer serve` process and where it lives.
struct Server {
    coffer: PathBuf,
    work: PathBuf,
    /// The data directory (on the LazyFS mount under `--lazyfs`).
    data: PathBuf,
    /// The etcd door's address, when there are door writers.
    etcd: Option<std::net::SocketAddr>,
    watch_window: usize,
    wal_checkpoint_bytes: u64,
    extra: Vec<String>,
    child: Option<Child>,
}

impl Server {
    fn socket(&self) -> PathBuf {
        self.work.join("coffer.sock")
    }

    fn log(&self) -> PathBuf {
        self.work.join("serve.log")
    }

    /// Starts the server and waits until it answers; an early exit is an error with the log's
    /// tail.
    async fn start(&mut self) -> Result<Client, String> {
        self.spawn()?;
        let socket = self.socket();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(format!(
                    "coffer serve exited during start ({status}); log tail:\n{}",
                    tail(&self.log())
                ));
            }
            if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "coffer serve did not listen within {START_TIMEOUT:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        connect(&socket).await
    }

    /// Starts the server process without waiting for it.
    fn spawn(&mut self) -> Result<(), String> {
        let socket = self.socket();
        let _ = std::fs::remove_file(&socket);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .map_err(|e| format!("cannot open the server log: {e}"))?;
        let mut command = Command::new(&self.coffer);
        command.arg("serve");
        if self.wal_checkpoint_bytes > 0 {
            command
                .arg("--wal-checkpoint-bytes")
                .arg(self.wal_checkpoint_bytes.to_string());
        }
        let child = command
            .arg("--data-dir")
            .arg(&self.data)
            .arg("--listen")
            .arg(format!("unix://{}", socket.display()))
            .args(["--token-cleaner-interval", "0"])
            .arg("--watch-window")
            .arg(self.watch_window.to_string())
            .args(
                self.etcd
                    .map(|a| vec!["--etcd-listen".to_owned(), a.to_string()])
                    .unwrap_or_default(),
            )
            .args(&self.extra)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.coffer.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGTERM and wait for a clean exit; an error if it does not exit cleanly within the start
    /// timeout (then it is killed).
    async fn terminate(&mut self) -> Result<(), String> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + START_TIMEOUT;
        let result = loop {
            match child.try_wait() {
                Ok(Some(status)) if status.success() => break Ok(()),
                Ok(Some(status)) => {
                    break Err(format!(
                        "coffer serve exited with {status} on SIGTERM ({sent:?})"
                    ));
                }
                Ok(None) if Instant::now() > deadline => {
                    break Err(format!(
                        "coffer serve did not exit within {START_TIMEOUT:?} of SIGTERM"
                    ));
                }
                Ok(None) => tokio::time::sleep(Duration::from_millis(10)).await,
                Err(e) => break Err(format!("cannot wait for coffer serve: {e}")),
            }
        };
        let _ = child.kill();
        let _ = child.wait();
        result
    }

    /// SIGKILL (std's `Child::kill` sends SIGKILL on unix) and reap.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn connect(socket: &Path) -> Result<Client, String> {
    let addr =
        ServerAddr::parse(&format!("unix://{}", socket.display())).map_err(|e| e.to_string())?;
    addr.connect().await.map_err(|e| e.to_string())
}

/// The last 40 lines of a file.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

fn default_coffer() -> Result<PathBuf, String> {
    let me = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let dir = me
        .parent()
        .ok_or_else(|| "this binary has no directory".to_owned())?;
    // Under `cargo test` binaries live in target/<profile>/ and the test in deps/.
    for candidate in [dir.join("coffer"), dir.join("../coffer")] {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(format!(
        "no `coffer` binary next to {}: pass --coffer",
        me.display()
    ))
}

async fn run(args: Args) -> Result<bool, String> {
    let coffer = match &args.coffer {
        Some(p) => p.clone(),
        None => default_coffer()?,
    };
    let (work, temporary) = match &args.work_dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!(
                "coffer-crash-{}-{:016x}",
                std::process::id(),
                rand::random::<u64>()
            )),
            true,
        ),
    };
    std::fs::create_dir_all(&work).map_err(|e| format!("cannot create {}: {e}", work.display()))?;
    let started = Instant::now();
    let mut power = match &args.lazyfs {
        Some(binary) => Some(lazyfs::LazyFs::mount(binary, &work.join("lazyfs")).await?),
        None => None,
    };
    let data = match &power {
        Some(fs) => fs.path().join("data"),
        None => work.join("data"),
    };
    let etcd_addr = if args.etcd_writers > 0 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("cannot pick a port for the etcd door: {e}"))?
            .port();
        Some(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
    } else {
        None
    };
    let mut etcd_keys: Vec<etcd::EtcdKey> = (0..args.etcd_writers)
        .flat_map(|w| (0..args.keys).map(move |k| etcd::EtcdKey::new(w, k)))
        .collect();
    // Secret-watch revisions no acknowledged write explains, to be explained by the door's
    // in-doubt writes at the next restart.
    let mut gaps: Vec<u64> = Vec::new();
    let mut server = Server {
        coffer,
        work: work.clone(),
        data,
        etcd: etcd_addr,
        watch_window: args.watch_window,
        wal_checkpoint_bytes: args.wal_checkpoint_bytes,
        extra: args.server_arg.clone(),
        child: None,
    };
    let mut keys = Vec::new();
    for c in 0..args.clients {
        for k in 0..args.keys {
            keys.push(KeyModel {
                namespace: format!("crash-{c}"),
                name: format!("key-{k:03}"),
                acked: State::Absent,
                acked_rv: 0,
                doubt: None,
                versions: Vec::new(),
            });
        }
    }
    let mut totals = Totals::default();
    let mut last_revision = 0u64;
    // The last revision the previous cycle's watch saw (0: none).
    let mut watched = 0u64;
    let mut rng = StdRng::seed_from_u64(args.seed);
    for cycle in 0..=args.cycles {
        if cycle > 0 && rng.gen_range(0..100) < args.startup_kill_percent {
            // A kill while the server recovers what the previous kill left.
            server.spawn()?;
            tokio::time::sleep(Duration::from_millis(rng.gen_range(0..=200))).await;
            server.kill();
            totals.startup_kills += 1;
            if let Some(fs) = power.as_mut() {
                fs.clear_cache().await?;
                totals.power_losses += 1;
            }
        }
        let t = Instant::now();
        let client = server.start().await;
        totals.restart_ms.push(t.elapsed().as_millis() as u64);
        let mut client = match client {
            Ok(c) => c,
            Err(e) => {
                totals
                    .violations
                    .push(format!("cycle {cycle}: the server did not come back: {e}"));
                break;
            }
        };
        let before = totals.violations.len();
        let (revision, resumed) = verify(
            cycle,
            &mut client,
            &mut keys,
            last_revision,
            watched,
            &mut totals,
        )
        .await;
        last_revision = revision;
        if let Some(addr) = etcd_addr {
            let mut viol = Vec::new();
            let door_revision = etcd::verify(
                addr,
                &mut etcd_keys,
                &mut gaps,
                &mut totals.etcd,
                &mut |m| viol.push(format!("cycle {cycle}: {m}")),
            )
            .await;
            let max_acked = etcd_keys.iter().map(|k| k.acked_rv).max().unwrap_or(0);
            if door_revision < max_acked || door_revision != revision {
                viol.push(format!(
                    "cycle {cycle}: the door's revision {door_revision} after the restart is \
                     below its highest acknowledged write {max_acked} or differs from the \
                     Secret service's {revision}"
                ));
            }
            totals.violations.extend(viol);
        }
        if totals.violations.len() > before + 20 || cycle == args.cycles {
            // The last restart is only checked; no more load.
            break;
        }
        let kill_after = Duration::from_millis(rng.gen_range(0..=args.max_run_ms));
        let killed = Arc::new(AtomicBool::new(false));
        let running = drive(
            &server,
            &keys,
            &etcd_keys,
            revision,
            resumed,
            kill_after,
            args.seed ^ (u64::from(cycle) << 32),
            killed,
        )
        .await;
        if args.terminate {
            if let Err(e) = server.terminate().await {
                totals.violations.push(format!("cycle {cycle}: {e}"));
            }
        } else {
            server.kill();
        }
        if let Some(fs) = power.as_mut() {
            fs.clear_cache().await?;
            totals.power_losses += 1;
        }
        let outcome = running.finish().await;
        watched = outcome.last_watched;
        let door_revisions = etcd::apply(&mut etcd_keys, &outcome.etcd, &mut totals.etcd_acked);
        for r in &outcome.etcd {
            totals
                .violations
                .extend(r.violations.iter().map(|v| format!("cycle {cycle}: {v}")));
        }
        let door = etcd_addr.map(|_| (door_revisions, &mut gaps));
        apply_outcome(cycle, &mut keys, outcome, door, &mut totals);
        if (cycle + 1) % 25 == 0 {
            eprintln!(
                "cycle {}: {} acknowledged, {} in doubt, {} violations, {:.1?}",
                cycle + 1,
                totals.acked,
                totals.in_doubt,
                totals.violations.len(),
                started.elapsed()
            );
        }
    }
    server.kill();
    // Unmount before the work directory is removed.
    drop(power);
    let elapsed = started.elapsed();
    let mut restart = totals.restart_ms.clone();
    restart.sort_unstable();
    let p50 = restart.get(restart.len() / 2).copied().unwrap_or(0);
    let max = restart.last().copied().unwrap_or(0);
    println!(
        "coffer-crash: {} {} cycles (seed {}, {} clients x {} keys) in {:.1?}",
        args.cycles,
        if args.terminate { "SIGTERM" } else { "kill" },
        args.seed,
        args.clients,
        args.keys,
        elapsed
    );
    println!(
        "  acknowledged writes: {} (verified after the next restart, as each key's state)",
        totals.acked
    );
    println!(
        "  in-doubt writes: {} ({} found applied, {} found absent; all whole)",
        totals.in_doubt, totals.doubt_applied, totals.doubt_absent
    );
    println!(
        "  key checks after restart: {}; versions found in History: {}; watch events checked: {}",
        totals.keys_checked, totals.versions_checked, totals.events_checked
    );
    println!(
        "  watch resumed across a restart: {} served gap-free, {} events replayed from history \
         (each equal to the version written at its revision)",
        totals.resumes_served, totals.history_events_checked
    );
    println!(
        "  extra kills during startup/recovery: {}",
        totals.startup_kills
    );
    println!(
        "  power losses (unsynced data dropped after the kill, LazyFS): {}",
        totals.power_losses
    );
    if etcd_addr.is_some() {
        println!(
            "  etcd door: {} acknowledged writes, {} key checks, in doubt {} applied / {} absent",
            totals.etcd_acked,
            totals.etcd.keys,
            totals.etcd.doubt_applied,
            totals.etcd.doubt_absent
        );
    }
    println!("  restart to first answer: p50 {p50} ms, max {max} ms");
    println!("  violations: {}", totals.violations.len());
    for v in totals.violations.iter().take(50) {
        println!("  VIOLATION: {v}");
    }
    let ok = totals.violations.is_empty();
    if ok && temporary {
        let _ = std::fs::remove_dir_all(&work);
    } else {
        println!("  work directory kept: {}", work.display());
    }
    Ok(ok)
}

/// Checks the restarted server against the model, resolves doubts, and returns the recovered
/// revision and, if the previous watch could be resumed, its stream.
async fn verify(
    cycle: u32,
    client: &mut Client,
    keys: &mut [KeyModel],
    last_revision: u64,
    watched: u64,
    totals: &mut Totals,
) -> (u64, Option<tonic::Streaming<pb::WatchEvent>>) {
    let mut viol = Vec::new();
    let (revision, resumed) = verify_inner(
        cycle,
        client,
        keys,
        last_revision,
        watched,
        totals,
        &mut viol,
    )
    .await;
    totals.violations.extend(viol);
    (revision, resumed)
}

#[allow(clippy::too_many_arguments)]
async fn verify_inner(
    cycle: u32,
    client: &mut Client,
    keys: &mut [KeyModel],
    last_revision: u64,
    watched: u64,
    totals: &mut Totals,
    viol: &mut Vec<String>,
) -> (u64, Option<tonic::Streaming<pb::WatchEvent>>) {
    let mut bad = |m: String| viol.push(format!("cycle {cycle}: {m}"));
    let list =
        match tokio::time::timeout(RPC_TIMEOUT, client.list(pb::ListSecretsRequest::default()))
            .await
        {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(e)) => {
                bad(format!("list after restart failed: {e}"));
                return (last_revision, None);
            }
            Err(_) => {
                bad("list after restart hung".into());
                return (last_revision, None);
            }
        };
    let revision = list.resource_version;
    let max_acked = keys.iter().map(|k| k.acked_rv).max().unwrap_or(0);
    if revision < last_revision || revision < max_acked || revision < watched {
        bad(format!(
            "revision went backwards: recovered {revision}, previous restart {last_revision}, \
             highest acknowledged {max_acked}, highest watched {watched}"
        ));
    }
    let mut listed: HashMap<(String, String), pb::Secret> = HashMap::new();
    for s in list.items {
        let m = s.metadata.clone().unwrap_or_default();
        listed.insert((m.namespace, m.name), s);
    }
    let mut doubt_applied = 0;
    let mut doubt_absent = 0;
    for key in keys.iter_mut() {
        let got = tokio::time::timeout(
            RPC_TIMEOUT,
            client.get(pb::GetSecretRequest {
                namespace: key.namespace.clone(),
                name: key.name.clone(),
                resource_version: 0,
            }),
        )
        .await;
        let actual = match got {
            Ok(Ok(r)) => {
                let s = r.into_inner();
                let rv = s.metadata.as_ref().map_or(0, |m| m.resource_version);
                State::Present(Content::of(&s), Some(rv))
            }
            Ok(Err(e)) if e.code() == Code::NotFound => State::Absent,
            Ok(Err(e)) => {
                bad(format!(
                    "get {}/{}: {:?} {} (a damaged or half-written record?)",
                    key.namespace,
                    key.name,
                    e.code(),
                    e.message()
                ));
                continue;
            }
            Err(_) => {
                bad(format!("get {}/{} hung", key.namespace, key.name));
                continue;
            }
        };
        // List agrees with Get.
        let in_list = listed.remove(&(key.namespace.clone(), key.name.clone()));
        match (&actual, &in_list) {
            (State::Absent, None) => {}
            (State::Present(c, rv), Some(s))
                if Content::of(s) == *c
                    && s.metadata.as_ref().map(|m| m.resource_version) == *rv => {}
            _ => bad(format!(
                "list and get disagree on {}/{}",
                key.namespace, key.name
            )),
        }
        if let State::Present(_, Some(rv)) = &actual
            && *rv > revision
        {
            bad(format!(
                "{}/{} has resource_version {rv} above the store revision {revision}",
                key.namespace, key.name
            ));
        }
        let matches_acked = match (&key.acked, &actual) {
            (State::Absent, State::Absent) => true,
            (State::Present(c, rv), State::Present(ac, arv)) => c == ac && rv == arv,
            _ => false,
        };
        let matches_doubt = match (&key.doubt, &actual) {
            (Some(State::Absent), State::Absent) => true,
            (Some(State::Present(c, _)), State::Present(ac, Some(arv))) => {
                c == ac && *arv > key.acked_rv
            }
            _ => false,
        };
        if matches_doubt && key.doubt.is_some() && !matches_acked {
            doubt_applied += 1;
        } else if matches_acked && key.doubt.is_some() {
            doubt_absent += 1;
        }
        if !matches_acked && !matches_doubt {
            bad(format!(
                "{}/{}: found {}, expected the acknowledged {}{}",
                key.namespace,
                key.name,
                describe(&actual),
                describe(&key.acked),
                key.doubt
                    .as_ref()
                    .map(|d| format!(" or the in-doubt {}", describe(d)))
                    .unwrap_or_default()
            ));
        }
        totals.keys_checked += 1;
        // From now on the found state is the truth.
        if let State::Present(_, Some(rv)) = &actual {
            if matches_doubt && !matches_acked {
                key.versions.push((*rv, actual.clone()));
            }
            key.acked_rv = key.acked_rv.max(*rv);
        }
        totals.versions_checked += check_history(client, key, &mut bad).await;
        key.acked = actual;
        key.doubt = None;
    }
    for ((ns, name), _) in listed {
        bad(format!("list shows {ns}/{name}, which was never written"));
    }
    totals.doubt_applied += doubt_applied;
    totals.doubt_absent += doubt_absent;

    // Resume the previous cycle's watch from the last revision it saw.
    let mut resumed = None;
    if watched > 0 {
        let request = pb::WatchSecretsRequest {
            resource_version: watched,
            ..Default::default()
        };
        let first = tokio::time::timeout(Duration::from_secs(5), async {
            match client.watch(request).await {
                Err(e) => Err(e),
                Ok(r) => Ok(r.into_inner()),
            }
        })
        .await;
        match first {
            Ok(Err(e)) => totals.violations.push(format!(
                "cycle {cycle}: resume from {watched} (recovered revision {revision}) was \
                 refused: {e}"
            )),
            Ok(Ok(mut stream)) => {
                // (W, R] comes from history, then the stream goes on live from R.
                let replayed = check_replay(
                    &mut stream,
                    keys,
                    watched,
                    revision,
                    &mut totals.violations,
                    cycle,
                )
                .await;
                totals.history_events_checked += replayed;
                totals.resumes_served += 1;
                resumed = Some(stream);
            }
            Err(_) => totals.violations.push(format!(
                "cycle {cycle}: resume from {watched} neither served nor rejected within 5 s"
            )),
        }
    }
    (revision, resumed)
}

/// Checks that every version of `key` the harness knows of is in its History; returns how many
/// were checked.
async fn check_history(client: &mut Client, key: &KeyModel, bad: &mut impl FnMut(String)) -> u64 {
    if key.versions.is_empty() {
        return 0;
    }
    let request = pb::HistoryRequest {
        namespace: key.namespace.clone(),
        name: key.name.clone(),
        limit: 0,
    };
    let page = match tokio::time::timeout(RPC_TIMEOUT, client.history(request)).await {
        Ok(Ok(r)) => r.into_inner(),
        Ok(Err(e)) => {
            bad(format!("history {}/{}: {e}", key.namespace, key.name));
            return 0;
        }
        Err(_) => {
            bad(format!("history {}/{} hung", key.namespace, key.name));
            return 0;
        }
    };
    let by_rv: HashMap<u64, &pb::SecretVersion> =
        page.versions.iter().map(|v| (v.revision, v)).collect();
    // History returns at most 1000 versions: check what is within them.
    let oldest = if page.versions.len() >= 1000 {
        page.versions.last().map_or(0, |v| v.revision)
    } else {
        0
    };
    let mut checked = 0;
    for (rv, state) in key.versions.iter().filter(|(rv, _)| *rv >= oldest) {
        checked += 1;
        let ok = match (by_rv.get(rv), state) {
            (Some(v), State::Absent) => v.deleted,
            (Some(v), State::Present(c, _)) => {
                !v.deleted && v.secret.as_ref().is_some_and(|s| Content::of(s) == *c)
            }
            (None, _) => false,
        };
        if !ok {
            bad(format!(
                "{}/{}: the acknowledged version at revision {rv} ({}) is not in its history",
                key.namespace,
                key.name,
                describe(state)
            ));
        }
    }
    checked
}

/// Reads the events of a watch resumed from `watched` up to the recovered `revision` (replayed
/// from the store's history): increasing revisions, each equal to the version the harness knows
/// was written there. A revision may be missing only if no write the harness knows of has it (a
/// write a kill cut short can leave its revision number used and nothing else). Returns how
/// many events were checked.
async fn check_replay(
    stream: &mut tonic::Streaming<pb::WatchEvent>,
    keys: &[KeyModel],
    watched: u64,
    revision: u64,
    violations: &mut Vec<String>,
    cycle: u32,
) -> u64 {
    let mut bad = |m: String| violations.push(format!("cycle {cycle}: resume from {watched}: {m}"));
    let known = |rv: u64| {
        keys.iter().find_map(|k| {
            k.versions
                .iter()
                .find(|(r, _)| *r == rv)
                .map(|(_, state)| (k, state))
        })
    };
    let mut expect = watched + 1;
    let mut checked = 0;
    while expect <= revision {
        let ev = match tokio::time::timeout(Duration::from_secs(2), stream.message()).await {
            Ok(Ok(Some(ev))) => ev,
            Err(_) => {
                // Nothing more below the recovered revision: what is left must be unowned.
                for rv in expect..=revision {
                    if let Some((k, s)) = known(rv) {
                        bad(format!(
                            "revision {rv} ({}/{}, {}) was never replayed",
                            k.namespace,
                            k.name,
                            describe(s)
                        ));
                    }
                }
                return checked;
            }
            other => {
                bad(format!(
                    "expected revision {expect} from history, got {other:?}"
                ));
                return checked;
            }
        };
        let Some(obj) = ev.object.as_ref() else {
            bad("an event without an object".into());
            return checked;
        };
        let m = obj.metadata.clone().unwrap_or_default();
        let rv = m.resource_version;
        if rv < expect {
            bad(format!("revision {rv} replayed again (a duplicate)"));
            return checked;
        }
        for skipped in expect..rv {
            if let Some((k, s)) = known(skipped) {
                bad(format!(
                    "revision {skipped} ({}/{}, {}) was skipped (a gap)",
                    k.namespace,
                    k.name,
                    describe(s)
                ));
            }
        }
        let deleted = ev.r#type == pb::watch_event::Type::Deleted as i32;
        match known(rv) {
            Some((k, State::Absent)) if deleted && k.name == m.name => {}
            Some((k, State::Present(c, _)))
                if !deleted && k.name == m.name && Content::of(obj) == *c => {}
            // An in-doubt delete found applied: its revision was never known.
            None if deleted => {}
            other => bad(format!(
                "revision {rv} ({}/{}) replayed as {}, written as {:?}",
                m.namespace,
                m.name,
                if deleted { "a delete" } else { "a put" },
                other.map(|(k, s)| format!("{}/{} {}", k.namespace, k.name, describe(s)))
            )),
        }
        checked += 1;
        expect = rv + 1;
    }
    checked
}

fn describe(s: &State) -> String {
    match s {
        State::Absent => "absent".into(),
        State::Present(c, rv) => format!(
            "present(gen {:?}, rv {})",
            c.labels.get("gen"),
            rv.map_or("?".into(), |r| r.to_string())
        ),
    }
}

/// The load of one cycle, still running.
struct Running {
    writers: Vec<tokio::task::JoinHandle<WriterResult>>,
    etcd: Vec<tokio::task::JoinHandle<etcd::EtcdWriterResult>>,
    watch: tokio::task::JoinHandle<WatchResult>,
    /// The revision the watch started after.
    from: u64,
}

/// What one cycle produced.
struct Outcome {
    writers: Vec<WriterResult>,
    etcd: Vec<etcd::EtcdWriterResult>,
    watch: WatchResult,
    /// The revision the watch started after.
    from: u64,
    /// The last revision the watch saw (`from` if none).
    last_watched: u64,
}

#[derive(Debug, Default)]
struct WriterResult {
    acks: Vec<Ack>,
    /// The key and state of the write in flight (or attempted) when the server died.
    doubt: Option<(usize, State)>,
    violations: Vec<String>,
}

#[derive(Debug, Default)]
struct WatchResult {
    events: Vec<Seen>,
    violations: Vec<String>,
}

impl Running {
    /// Collects the tasks once the server is dead.
    async fn finish(self) -> Outcome {
        let mut writers = Vec::new();
        for w in self.writers {
            let r = match tokio::time::timeout(RPC_TIMEOUT, w).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => WriterResult {
                    violations: vec![format!("a writer task failed: {e}")],
                    ..Default::default()
                },
                Err(_) => WriterResult {
                    violations: vec!["a writer did not notice the kill within 20 s".into()],
                    ..Default::default()
                },
            };
            writers.push(r);
        }
        let mut etcd = Vec::new();
        for w in self.etcd {
            etcd.push(match tokio::time::timeout(RPC_TIMEOUT, w).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => etcd::EtcdWriterResult {
                    violations: vec![format!("an etcd writer task failed: {e}")],
                    ..Default::default()
                },
                Err(_) => etcd::EtcdWriterResult {
                    violations: vec!["an etcd writer did not notice the kill within 20 s".into()],
                    ..Default::default()
                },
            });
        }
        let watch = match tokio::time::timeout(RPC_TIMEOUT, self.watch).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => WatchResult {
                violations: vec![format!("the watch task failed: {e}")],
                ..Default::default()
            },
            Err(_) => WatchResult {
                violations: vec!["the watch did not end within 20 s of the kill".into()],
                ..Default::default()
            },
        };
        let last_watched = watch.events.last().map_or(self.from, |e| e.rv);
        Outcome {
            writers,
            etcd,
            watch,
            from: self.from,
            last_watched,
        }
    }
}

/// Starts the writers and the watch, and returns once it is time to kill the server; `killed`
/// is set just before the kill, so that errors after it count as the crash, not as failures.
#[allow(clippy::too_many_arguments)]
async fn drive(
    server: &Server,
    keys: &[KeyModel],
    etcd_keys: &[etcd::EtcdKey],
    revision: u64,
    resumed: Option<tonic::Streaming<pb::WatchEvent>>,
    kill_after: Duration,
    seed: u64,
    killed: Arc<AtomicBool>,
) -> Running {
    let socket = server.socket();
    // The watch: the resumed stream, or a new one from the recovered revision.
    let watch_stream = match resumed {
        Some(s) => Ok(s),
        None => match connect(&socket).await {
            Ok(mut c) => c
                .watch(pb::WatchSecretsRequest {
                    resource_version: revision,
                    ..Default::default()
                })
                .await
                .map(|r| r.into_inner())
                .map_err(|e| e.to_string()),
            Err(e) => Err(e),
        },
    };
    let watch = tokio::spawn(watcher(watch_stream, killed.clone()));
    // Writers: one connection each, each on its own keys (one namespace per writer).
    let per_client = keys
        .iter()
        .take_while(|k| k.namespace == keys[0].namespace)
        .count()
        .max(1);
    let mut writers = Vec::new();
    for (c, chunk) in keys.chunks(per_client).enumerate() {
        let models: Vec<KeyModel> = chunk.to_vec();
        let socket = socket.clone();
        let killed = killed.clone();
        let seed = seed ^ ((c as u64 + 1) << 8);
        writers.push(tokio::spawn(writer(
            socket,
            c * per_client,
            models,
            killed,
            seed,
        )));
    }
    let mut etcd_writers = Vec::new();
    if let Some(addr) = server.etcd {
        // Each door writer owns `--keys` keys, in order.
        let per_writer = etcd_keys
            .iter()
            .take_while(|k| k.key.starts_with(b"/crash/etcd-0/"))
            .count()
            .max(1);
        for (w, chunk) in etcd_keys.chunks(per_writer).enumerate() {
            etcd_writers.push(tokio::spawn(etcd::writer(
                addr,
                w * per_writer,
                chunk.to_vec(),
                killed.clone(),
                seed ^ ((w as u64 + 1) << 16),
            )));
        }
    }
    tokio::time::sleep(kill_after).await;
    killed.store(true, Ordering::SeqCst);
    Running {
        writers,
        etcd: etcd_writers,
        watch,
        from: revision,
    }
}

async fn watcher(
    stream: Result<tonic::Streaming<pb::WatchEvent>, String>,
    killed: Arc<AtomicBool>,
) -> WatchResult {
    let mut out = WatchResult::default();
    let mut stream = match stream {
        Ok(s) => s,
        Err(e) => {
            if !killed.load(Ordering::SeqCst) {
                out.violations.push(format!("cannot start the watch: {e}"));
            }
            return out;
        }
    };
    loop {
        match stream.message().await {
            Ok(Some(ev)) => {
                let obj = ev.object.unwrap_or_default();
                let m = obj.metadata.clone().unwrap_or_default();
                out.events.push(Seen {
                    rv: m.resource_version,
                    kind: ev.r#type,
                    namespace: m.namespace,
                    name: m.name,
                    content: Content::of(&obj),
                });
            }
            Ok(None) => {
                if !killed.load(Ordering::SeqCst) {
                    out.violations
                        .push("the watch ended before the kill".into());
                }
                return out;
            }
            Err(e) => {
                if !killed.load(Ordering::SeqCst) {
                    out.violations
                        .push(format!("the watch failed before the kill: {e}"));
                }
                return out;
            }
        }
    }
}

fn content(rng: &mut StdRng, tag: &str, generation: u64) -> Content {
    let mut blob = vec![0u8; rng.gen_range(0..3000)];
    rng.fill_bytes(&mut blob);
    let mut data = BTreeMap::new();
    data.insert("tag".to_owned(), tag.as_bytes().to_vec());
    data.insert("blob".to_owned(), blob);
    let mut labels = BTreeMap::new();
    labels.insert("gen".to_owned(), generation.to_string());
    Content { data, labels }
}

fn to_proto(key: &KeyModel, c: &Content, rv: u64) -> pb::Secret {
    pb::Secret {
        metadata: Some(pb::ObjectMeta {
            name: key.name.clone(),
            namespace: key.namespace.clone(),
            resource_version: rv,
            labels: c.labels.clone().into_iter().collect(),
            ..Default::default()
        }),
        data: c.data.clone().into_iter().collect(),
        ..Default::default()
    }
}

/// One write request.
enum Request {
    Create(pb::CreateSecretRequest),
    Update(pb::UpdateSecretRequest),
    Delete(pb::DeleteSecretRequest),
}

async fn send(client: &mut Client, req: Request) -> Result<pb::Secret, tonic::Status> {
    match req {
        Request::Create(r) => client.create(r).await.map(|r| r.into_inner()),
        Request::Update(r) => client.update(r).await.map(|r| r.into_inner()),
        Request::Delete(r) => client
            .delete(r)
            .await
            .map(|r| r.into_inner().secret.unwrap_or_default()),
    }
}

/// One writer: random operations on its own keys until an error (the kill) or, as a safety net,
/// two minutes.
async fn writer(
    socket: PathBuf,
    base: usize,
    mut models: Vec<KeyModel>,
    killed: Arc<AtomicBool>,
    seed: u64,
) -> WriterResult {
    let mut out = WriterResult::default();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut client = match connect(&socket).await {
        Ok(c) => c,
        Err(e) => {
            if !killed.load(Ordering::SeqCst) {
                out.violations.push(format!("writer cannot connect: {e}"));
            }
            return out;
        }
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut generation = rng.next_u64() % 1_000_000 * 1000;
    while Instant::now() < deadline {
        let i = rng.gen_range(0..models.len());
        generation += 1;
        let key = &models[i];
        let tag = format!("{}/{}#{generation}", key.namespace, key.name);
        let (next, req) = match &key.acked {
            State::Absent => {
                let c = content(&mut rng, &tag, generation);
                let req = Request::Create(pb::CreateSecretRequest {
                    secret: Some(to_proto(key, &c, 0)),
                });
                (State::Present(c, None), req)
            }
            State::Present(_, rv) if rng.gen_bool(0.75) => {
                let c = content(&mut rng, &tag, generation);
                // The acknowledged resource_version as a precondition: a lost write shows up as
                // a conflict.
                let req = Request::Update(pb::UpdateSecretRequest {
                    secret: Some(to_proto(key, &c, rv.unwrap_or(0))),
                });
                (State::Present(c, None), req)
            }
            State::Present(_, rv) => {
                let req = Request::Delete(pb::DeleteSecretRequest {
                    namespace: key.namespace.clone(),
                    name: key.name.clone(),
                    resource_version: rv.unwrap_or(0),
                });
                (State::Absent, req)
            }
        };
        match tokio::time::timeout(RPC_TIMEOUT, send(&mut client, req)).await {
            Ok(Ok(s)) => {
                let rv = s.metadata.as_ref().map_or(0, |m| m.resource_version);
                let state = match next {
                    State::Present(c, _) => {
                        if Content::of(&s) != c {
                            out.violations.push(format!(
                                "{tag}: the acknowledged object differs from what was sent"
                            ));
                        }
                        State::Present(c, Some(rv))
                    }
                    State::Absent => State::Absent,
                };
                let key = &mut models[i];
                if rv <= key.acked_rv {
                    out.violations.push(format!(
                        "{tag}: acknowledged at revision {rv}, not above the key's previous {}",
                        key.acked_rv
                    ));
                }
                key.acked = state.clone();
                key.acked_rv = rv;
                out.acks.push(Ack {
                    key: base + i,
                    rv,
                    state,
                });
            }
            Ok(Err(status)) => {
                if !killed.load(Ordering::SeqCst) {
                    out.violations.push(format!(
                        "{tag}: failed while the server was up: {:?} {}",
                        status.code(),
                        status.message()
                    ));
                }
                out.doubt = Some((base + i, next));
                return out;
            }
            Err(_) => {
                out.violations
                    .push(format!("{tag}: no answer within {RPC_TIMEOUT:?}"));
                out.doubt = Some((base + i, next));
                return out;
            }
        }
    }
    out
}

/// Folds a cycle's acknowledgements and watch events into the model, checking the watch.
/// `door`: with door writers, the revisions of their acknowledged writes (which the Secret watch
/// skips) and where to put skipped revisions none explains (resolved at the next restart).
fn apply_outcome(
    cycle: u32,
    keys: &mut [KeyModel],
    outcome: Outcome,
    mut door: Option<(std::collections::BTreeSet<u64>, &mut Vec<u64>)>,
    totals: &mut Totals,
) {
    let mut viol = Vec::new();
    let mut bad = |m: String| viol.push(format!("cycle {cycle}: {m}"));
    let mut by_rv: HashMap<u64, (usize, State)> = HashMap::new();
    for w in &outcome.writers {
        for v in &w.violations {
            bad(v.clone());
        }
        for a in &w.acks {
            totals.acked += 1;
            if a.rv <= outcome.from {
                bad(format!(
                    "a write was acknowledged at revision {}, not above the revision {} the \
                     server recovered",
                    a.rv, outcome.from
                ));
            }
            if by_rv.insert(a.rv, (a.key, a.state.clone())).is_some() {
                bad(format!("two acknowledged writes share revision {}", a.rv));
            }
            let k = &mut keys[a.key];
            k.acked = a.state.clone();
            k.acked_rv = a.rv;
            k.versions.push((a.rv, a.state.clone()));
        }
        if let Some((key, state)) = &w.doubt {
            totals.in_doubt += 1;
            keys[*key].doubt = Some(state.clone());
        }
    }
    for v in &outcome.watch.violations {
        bad(v.clone());
    }
    // The watch: consecutive revisions from where it started, each equal to its write.
    let mut expect = outcome.from + 1;
    let index: HashMap<(String, String), usize> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| ((k.namespace.clone(), k.name.clone()), i))
        .collect();
    for ev in &outcome.watch.events {
        totals.events_checked += 1;
        if let Some((acked, gaps)) = door.as_mut()
            && ev.rv > expect
        {
            // Revisions of the door's writes: acknowledged ones, or in doubt (checked later).
            gaps.extend((expect..ev.rv).filter(|r| !acked.contains(r)));
            expect = ev.rv;
        }
        if ev.rv != expect {
            bad(format!(
                "watch from {}: expected revision {expect}, got {} (a {})",
                outcome.from,
                ev.rv,
                if ev.rv < expect { "duplicate" } else { "gap" }
            ));
        }
        expect = ev.rv + 1;
        let Some(&ki) = index.get(&(ev.namespace.clone(), ev.name.clone())) else {
            bad(format!(
                "watch event for {}/{}, which was never written",
                ev.namespace, ev.name
            ));
            continue;
        };
        let deleted = ev.kind == pb::watch_event::Type::Deleted as i32;
        if let Some((ak, state)) = by_rv.get(&ev.rv) {
            let same = *ak == ki
                && match state {
                    State::Absent => deleted,
                    State::Present(c, _) => !deleted && *c == ev.content,
                };
            if !same {
                bad(format!(
                    "watch event at revision {} ({}/{}) differs from the write acknowledged there",
                    ev.rv, ev.namespace, ev.name
                ));
            }
        } else {
            // Not acknowledged to its writer: it must be that key's in-doubt write, which the
            // event proves durable.
            let k = &mut keys[ki];
            let matches = match &k.doubt {
                Some(State::Absent) => deleted,
                Some(State::Present(c, _)) => !deleted && *c == ev.content,
                None => false,
            };
            if !matches || ev.rv <= k.acked_rv {
                bad(format!(
                    "watch event at revision {} for {}/{} matches no write of that key",
                    ev.rv, ev.namespace, ev.name
                ));
            } else if let Some(d) = k.doubt.take() {
                // Durable: from now on it is the acknowledged state.
                k.acked = match d {
                    State::Present(c, _) => State::Present(c, Some(ev.rv)),
                    State::Absent => State::Absent,
                };
                k.acked_rv = ev.rv;
                k.versions.push((ev.rv, k.acked.clone()));
                totals.doubt_applied += 1;
            }
        }
    }
    totals.violations.extend(viol);
}
