//! `coffer-load watch`: many watch streams, then updates; measures delivery and server memory.
//!
//! Opens `--streams` streams over `--connections` HTTP/2 connections. With
//! `--watches-per-stream 1` each is a `Watch` on one of `--secrets` Secrets (by
//! `metadata.name`, as a mount agent watches); with K > 1 each is a `WatchMany` stream carrying
//! K such watches. `--namespace-watchers` more streams watch the whole namespace. Then Secrets
//! are updated round-robin at `--updates-per-sec` for `--duration`, and the tool reports:
//! streams (and watches) established, events delivered against those expected, delivery latency
//! (update acknowledged -> event received) p50/p99/max, and, when the server's pid is known
//! (`--spawn`, which runs `coffer serve` as a child process, or `--server-pid`), its RSS before
//! and after opening the streams and the difference per stream and per watch. Every phase has a
//! deadline, so the run always ends by itself.
//!
//! ```sh
//! ulimit -n 200000
//! cargo run --release --bin coffer-load -- watch --spawn --streams 10000 --connections 100 \
//!     --secrets 1000 --updates-per-sec 100 --duration 10
//! ```

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use coffer_server::proto::v1 as pb;
use coffer_server::proto::v1::secrets_client::SecretsClient;
use coffer_server::proto::v1::watch_many_request::Op;
use hdrhistogram::Histogram;
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

/// Flags of `coffer-load watch`.
#[derive(Debug, Clone, Args)]
pub(crate) struct WatchArgs {
    /// The store to load: coffer, or etcd (there each stream is one etcd Watch stream with one
    /// watcher on the key `/<namespace>/<name>`; namespace watchers watch the prefix
    /// `/<namespace>/`; updates are Puts).
    #[arg(long, value_enum, default_value_t = crate::Target::Coffer)]
    pub(crate) target: crate::Target,
    /// The server: HOST:PORT or http://HOST:PORT [default: $COFFER_SERVER, else 127.0.0.1:7070;
    /// with --target etcd: 127.0.0.1:2379].
    #[arg(long, conflicts_with = "spawn")]
    pub(crate) server: Option<String>,
    /// The server's pid, to read its RSS from /proc (implied by --spawn).
    #[arg(long, conflicts_with = "spawn")]
    pub(crate) server_pid: Option<u32>,
    /// Print the results as one JSON object instead of text.
    #[arg(long)]
    pub(crate) json: bool,
    /// Run `coffer serve` (the binary next to this one) as a child process on a free port over
    /// a temporary data directory (relaxed durability), and stop it at the end.
    #[arg(long)]
    pub(crate) spawn: bool,
    /// Watch streams to open (not counting --namespace-watchers).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub(crate) streams: u32,
    /// HTTP/2 connections the streams are spread over (the server allows 1024 streams per
    /// connection).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub(crate) connections: u32,
    /// Watches per stream: 1 = a Watch stream; K > 1 = a WatchMany stream with K watches.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub(crate) watches_per_stream: u32,
    /// Secrets created and watched (watch i is on Secret i mod S).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub(crate) secrets: u32,
    /// Extra streams watching the whole namespace.
    #[arg(long, default_value_t = 2)]
    pub(crate) namespace_watchers: u32,
    /// Updates per second during the measured phase.
    #[arg(long, default_value_t = 100.0)]
    pub(crate) updates_per_sec: f64,
    /// Seconds of updates (the streams are held open throughout).
    #[arg(long, default_value = "10", value_parser = crate::parse_seconds, value_name = "SECS")]
    pub(crate) duration: Duration,
    /// Seconds allowed for opening every stream before the run goes on without the rest.
    #[arg(long, default_value = "300", value_parser = crate::parse_seconds, value_name = "SECS")]
    pub(crate) open_timeout: Duration,
    /// Streams being opened at once.
    #[arg(long, default_value_t = 512)]
    pub(crate) open_concurrency: u32,
    /// Namespace of the Secrets.
    #[arg(long, short = 'n', default_value = crate::DEFAULT_NAMESPACE)]
    pub(crate) namespace: String,
    /// Percentage of the streams that never read after opening (stalled watchers; the server
    /// should end them without slowing writes or the other watchers). 0 to 50.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) stalled_percent: f64,
    /// Creates of new Secrets per second during the measured phase, alongside the updates, to
    /// report Create latency (e.g. with and without stalled watchers); 0 for none.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) creates_per_sec: f64,
}

impl WatchArgs {
    /// Every how many streams one is stalled (0: none).
    fn stall_every(&self) -> u64 {
        if self.stalled_percent <= 0.0 {
            0
        } else {
            (100.0 / self.stalled_percent.min(50.0)).round().max(2.0) as u64
        }
    }
}

fn is_stalled(stall_every: u64, index: u64) -> bool {
    stall_every > 0 && index % stall_every == stall_every - 1
}

/// What the stream tasks share.
#[derive(Debug, Default)]
struct Counters {
    streams_established: AtomicU64,
    watches_established: AtomicU64,
    streams_ended: AtomicU64,
    events: AtomicU64,
    bookmarks: AtomicU64,
    errors: Mutex<Vec<String>>,
}

pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

pub(crate) fn secret_name(i: u64) -> String {
    format!("w{i:07}")
}

struct Child {
    child: tokio::process::Child,
    dir: PathBuf,
    addr: String,
}

async fn spawn_server() -> Result<Child, String> {
    let exe = std::env::current_exe()
        .map_err(|e| format!("cannot locate this executable: {e}"))?
        .with_file_name("coffer");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("cannot pick a port: {e}"))?
        .port();
    let dir = std::env::temp_dir().join(format!("coffer-load-watch-{}", std::process::id()));
    let addr = format!("127.0.0.1:{port}");
    let child = tokio::process::Command::new(&exe)
        .arg("serve")
        .arg("--data-dir")
        .arg(&dir)
        .arg("--listen")
        .arg(&addr)
        .arg("--relaxed-durability")
        .arg("--shutdown-grace")
        .arg("2s")
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(&addr).await.is_err() {
        if Instant::now() > deadline {
            return Err(format!(
                "{} did not start listening on {addr}",
                exe.display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(Child { child, dir, addr })
}

pub(crate) async fn connect(addr: &str) -> Result<Channel, String> {
    let uri = if addr.starts_with("http://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    };
    Endpoint::from_shared(uri)
        .map_err(|e| format!("bad address {addr}: {e}"))?
        // A small stream window bounds what a stalled stream buffers; a large connection
        // window raises h2's budget of buffered small DATA frames (half the connection window),
        // which a few stalled streams full of small events would otherwise exhaust, making h2
        // end the whole connection (GOAWAY ENHANCE_YOUR_CALM "too_many_data_frames").
        .initial_stream_window_size(16 * 1024)
        .initial_connection_window_size(8 << 20)
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(|e| format!("cannot connect to {addr}: {e}"))
}

fn one_secret(ns: &str, secret: u64) -> pb::WatchSecretsRequest {
    pb::WatchSecretsRequest {
        namespace: ns.to_owned(),
        field_selector: format!("metadata.name={}", secret_name(secret)),
        ..Default::default()
    }
}

/// Acknowledged updates by revision: (Secret index, sent, acknowledged).
pub(crate) type Acks<R> = HashMap<R, (u64, Instant, Instant)>;

/// The events one stream received: (resource_version, when).
type Received = Vec<(u64, Instant)>;

/// Reads a stream of events until `stop`; records MODIFIED events.
async fn read_single(
    mut s: tonic::Streaming<pb::WatchEvent>,
    counters: Arc<Counters>,
    stop: CancellationToken,
) -> Received {
    let mut got = Vec::new();
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => break,
            m = s.message() => m,
        };
        match msg {
            Ok(Some(ev)) => record(&ev, &counters, &mut got),
            Ok(None) => {
                counters.streams_ended.fetch_add(1, Ordering::Relaxed);
                break;
            }
            Err(e) => {
                counters.streams_ended.fetch_add(1, Ordering::Relaxed);
                push_error(&counters, format!("watch ended: {e}"));
                break;
            }
        }
    }
    got
}

fn record(ev: &pb::WatchEvent, counters: &Counters, got: &mut Received) {
    use pb::watch_event::Type;
    let now = Instant::now();
    if ev.r#type == Type::Bookmark as i32 {
        counters.bookmarks.fetch_add(1, Ordering::Relaxed);
        return;
    }
    counters.events.fetch_add(1, Ordering::Relaxed);
    if ev.r#type == Type::Modified as i32 {
        let rv = ev
            .object
            .as_ref()
            .and_then(|o| o.metadata.as_ref())
            .map_or(0, |m| m.resource_version);
        got.push((rv, now));
    }
}

fn push_error(counters: &Counters, e: String) {
    let mut errors = counters.errors.lock().unwrap_or_else(|p| p.into_inner());
    if errors.len() < 10 {
        errors.push(e);
    }
}

/// Opens one stream (a Watch, or a WatchMany with `k` watches) and reads it until `stop`.
#[allow(clippy::too_many_arguments)]
async fn run_stream(
    mut client: SecretsClient<Channel>,
    index: u64,
    k: u64,
    secrets: u64,
    ns: String,
    counters: Arc<Counters>,
    stop: CancellationToken,
    opened: tokio::sync::OwnedSemaphorePermit,
    stalled: bool,
) -> Received {
    if k == 1 {
        let s = match client.watch(one_secret(&ns, index % secrets)).await {
            Ok(r) => r.into_inner(),
            Err(e) => {
                push_error(&counters, format!("watch refused: {e}"));
                return Vec::new();
            }
        };
        counters.streams_established.fetch_add(1, Ordering::Relaxed);
        counters.watches_established.fetch_add(1, Ordering::Relaxed);
        drop(opened);
        if stalled {
            // Holds the stream open without reading it.
            stop.cancelled().await;
            drop(s);
            return Vec::new();
        }
        return read_single(s, counters, stop).await;
    }
    let (tx, rx) = mpsc::channel(64);
    let mut s = match client.watch_many(ReceiverStream::new(rx)).await {
        Ok(r) => r.into_inner(),
        Err(e) => {
            push_error(&counters, format!("watch_many refused: {e}"));
            return Vec::new();
        }
    };
    let creates = {
        let ns = ns.clone();
        tokio::spawn(async move {
            for w in 0..k {
                let req = pb::WatchManyRequest {
                    op: Some(Op::Create(pb::WatchCreate {
                        watch_id: w + 1,
                        watch: Some(one_secret(&ns, (index * k + w) % secrets)),
                    })),
                };
                if tx.send(req).await.is_err() {
                    return None;
                }
            }
            Some(tx)
        })
    };
    let mut acked = 0;
    let mut got = Vec::new();
    let mut opened = Some(opened);
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => break,
            m = s.message() => m,
        };
        match msg {
            Ok(Some(ev)) => {
                if ev.created {
                    acked += 1;
                    counters.watches_established.fetch_add(1, Ordering::Relaxed);
                    if acked == k {
                        counters.streams_established.fetch_add(1, Ordering::Relaxed);
                        opened.take();
                        if stalled {
                            stop.cancelled().await;
                            break;
                        }
                    }
                } else if ev.canceled {
                    push_error(
                        &counters,
                        format!("watch {} canceled: {}", ev.watch_id, ev.error_message),
                    );
                } else if let Some(e) = ev.event {
                    record(&e, &counters, &mut got);
                }
            }
            Ok(None) => {
                counters.streams_ended.fetch_add(1, Ordering::Relaxed);
                break;
            }
            Err(e) => {
                counters.streams_ended.fetch_add(1, Ordering::Relaxed);
                push_error(&counters, format!("watch_many ended: {e}"));
                break;
            }
        }
    }
    // Keeps the request side open until here.
    drop(creates.await);
    got
}

fn ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}

/// Runs `coffer-load watch` against Coffer.
pub(crate) async fn run(args: WatchArgs) -> Result<ExitCode, String> {
    // `--target etcd` is dispatched to `crate::etcd` before this; here it can only mean a
    // build without the etcd feature, which this refuses.
    args.target.check_built()?;
    let mut child = None;
    let (addr, pid) = if args.spawn {
        let c = spawn_server().await?;
        let addr = c.addr.clone();
        let pid = c.child.id();
        child = Some(c);
        (addr, pid)
    } else {
        let addr = args
            .server
            .clone()
            .or_else(|| {
                std::env::var("COFFER_SERVER")
                    .ok()
                    .filter(|s| !s.is_empty())
            })
            .unwrap_or_else(|| crate::DEFAULT_SERVER.to_owned());
        (addr, args.server_pid)
    };
    let result = measure(&args, &addr, pid).await;
    if let Some(mut c) = child {
        let _ = c.child.start_kill();
        let _ = c.child.wait().await;
        let _ = std::fs::remove_dir_all(&c.dir);
    }
    result
}

async fn measure(args: &WatchArgs, addr: &str, pid: Option<u32>) -> Result<ExitCode, String> {
    let ns = args.namespace.clone();
    let secrets = u64::from(args.secrets);
    let k = u64::from(args.watches_per_stream);
    let streams = u64::from(args.streams);
    let mut channels = Vec::new();
    for _ in 0..args.connections {
        channels.push(connect(addr).await?);
    }
    let client = |i: u64| {
        SecretsClient::new(channels[(i % channels.len() as u64) as usize].clone())
            .max_decoding_message_size(16 << 20)
    };

    // The Secrets (unmeasured; existing ones are reused).
    let t = Instant::now();
    let sem = Arc::new(Semaphore::new(64));
    let mut creates = tokio::task::JoinSet::new();
    for i in 0..secrets {
        let mut c = client(i);
        let ns = ns.clone();
        let permit = sem
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        creates.spawn(async move {
            let _permit = permit;
            let s = secret(&ns, i, 0);
            match c.create(pb::CreateSecretRequest { secret: Some(s) }).await {
                Ok(_) => Ok(()),
                Err(e) if e.code() == tonic::Code::AlreadyExists => Ok(()),
                Err(e) => Err(format!("create {}: {e}", secret_name(i))),
            }
        });
    }
    while let Some(r) = creates.join_next().await {
        r.map_err(|e| e.to_string())??;
    }
    eprintln!("{secrets} Secrets ready in {:.1?}", t.elapsed());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = pid.and_then(rss_kib);

    // Open the streams.
    let counters = Arc::new(Counters::default());
    let stop = CancellationToken::new();
    let open_sem = Arc::new(Semaphore::new(args.open_concurrency.max(1) as usize));
    let mut tasks = tokio::task::JoinSet::new();
    let t = Instant::now();
    let ns_watchers = u64::from(args.namespace_watchers);
    for i in 0..streams + ns_watchers {
        let permit = open_sem
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        let c = client(i);
        let counters = counters.clone();
        let stop = stop.clone();
        if i >= streams {
            let mut c = c;
            let ns = ns.clone();
            tasks.spawn(async move {
                let req = pb::WatchSecretsRequest {
                    namespace: ns,
                    ..Default::default()
                };
                match c.watch(req).await {
                    Ok(s) => {
                        drop(permit);
                        read_single(s.into_inner(), counters, stop).await
                    }
                    Err(e) => {
                        push_error(&counters, format!("namespace watch refused: {e}"));
                        Vec::new()
                    }
                }
            });
        } else {
            tasks.spawn(run_stream(
                c,
                i,
                k,
                secrets,
                ns.clone(),
                counters,
                stop,
                permit,
                is_stalled(args.stall_every(), i),
            ));
        }
        if t.elapsed() > args.open_timeout {
            break;
        }
    }
    let deadline = Instant::now() + args.open_timeout.saturating_sub(t.elapsed());
    while counters.streams_established.load(Ordering::Relaxed) < streams
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let established = counters.streams_established.load(Ordering::Relaxed);
    let watches = counters.watches_established.load(Ordering::Relaxed);
    let open_time = t.elapsed();
    eprintln!("{established} streams ({watches} watches) established in {open_time:.1?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = pid.and_then(rss_kib);

    // Updates at the given rate, each in its own task; acknowledgements by revision.
    let acks: Arc<Mutex<Acks<u64>>> = Arc::default();
    let update_errors = Arc::new(AtomicU64::new(0));
    let update_latency = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).map_err(|e| e.to_string())?,
    ));
    let creates = (args.creates_per_sec > 0.0).then(|| {
        tokio::spawn(create_probe(
            client(0),
            ns.clone(),
            args.creates_per_sec,
            args.duration,
        ))
    });
    let mut updates = tokio::task::JoinSet::new();
    let period = Duration::from_secs_f64(1.0 / args.updates_per_sec.max(0.001));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let t = Instant::now();
    let mut n = 0u64;
    while t.elapsed() < args.duration {
        ticker.tick().await;
        let target = n % secrets;
        n += 1;
        let mut c = client(n);
        let s = secret(&ns, target, n);
        let acks = acks.clone();
        let errors = update_errors.clone();
        let latency = update_latency.clone();
        updates.spawn(async move {
            let sent = Instant::now();
            match c.update(pb::UpdateSecretRequest { secret: Some(s) }).await {
                Ok(r) => {
                    let now = Instant::now();
                    let us =
                        u64::try_from(now.duration_since(sent).as_micros()).unwrap_or(u64::MAX);
                    let _ = latency
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .record(us.max(1));
                    let rv = r.into_inner().metadata.map_or(0, |m| m.resource_version);
                    acks.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(rv, (target, sent, now));
                }
                Err(_) => {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    while updates.join_next().await.is_some() {}
    let update_time = t.elapsed();
    let creates = match creates {
        Some(task) => task.await.map_err(|e| e.to_string())?,
        None => None,
    };
    // Let the last events arrive, then stop every stream.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ended_early = counters.streams_ended.load(Ordering::Relaxed);
    stop.cancel();
    let received = drain(&mut tasks).await;

    // Expected deliveries: every acknowledged update, once per watch on its Secret and once per
    // namespace watcher.
    let acks = std::mem::take(&mut *acks.lock().unwrap_or_else(|p| p.into_inner()));
    // Watches per Secret, stalled streams left out.
    let stall_every = args.stall_every();
    let mut per_secret = vec![0u64; secrets as usize];
    let mut stalled_streams = 0u64;
    for i in 0..streams {
        if is_stalled(stall_every, i) {
            stalled_streams += 1;
            continue;
        }
        if k == 1 {
            per_secret[(i % secrets) as usize] += 1;
        } else {
            for w in 0..k {
                per_secret[((i * k + w) % secrets) as usize] += 1;
            }
        }
    }
    let watchers_of = |secret: u64| per_secret[secret as usize] + ns_watchers;
    let expected: u64 = acks.values().map(|(s, _, _)| watchers_of(*s)).sum();
    let mut hist =
        Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).map_err(|e| e.to_string())?;
    let mut from_send =
        Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).map_err(|e| e.to_string())?;
    let mut delivered = 0u64;
    for (rv, at) in received.iter().flatten() {
        if let Some((_, sent, acked)) = acks.get(rv) {
            delivered += 1;
            let us = at.saturating_duration_since(*acked).as_micros();
            let _ = hist.record(u64::try_from(us).unwrap_or(u64::MAX).max(1));
            let us = at.saturating_duration_since(*sent).as_micros();
            let _ = from_send.record(u64::try_from(us).unwrap_or(u64::MAX).max(1));
        }
    }

    let update_latency = update_latency.lock().unwrap_or_else(|p| p.into_inner());
    let errors = counters.errors.lock().unwrap_or_else(|p| p.into_inner());
    let summary = WatchSummary {
        target: "coffer",
        server: addr.to_owned(),
        streams,
        established,
        watches,
        per_stream: k,
        connections: args.connections,
        namespace_watchers: ns_watchers,
        open_time,
        ended_early,
        events: counters.events.load(Ordering::Relaxed),
        bookmarks: counters.bookmarks.load(Ordering::Relaxed),
        updates_acked: acks.len() as u64,
        updates_failed: update_errors.load(Ordering::Relaxed),
        update_time,
        delivered,
        expected,
        update_latency: Percentiles::of(&update_latency),
        delivery_latency: Percentiles::of(&hist),
        delivery_from_send: Percentiles::of(&from_send),
        creates: creates
            .as_ref()
            .map(|(l, failed)| (Percentiles::of(l), *failed)),
        stalled_streams,
        rss_before_kib: rss_before,
        rss_after_kib: rss_after,
        errors: errors.clone(),
    };
    Ok(summary.print(args.json))
}

/// p50, p99 and max of a latency histogram, in µs (zeros when empty).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Percentiles {
    pub(crate) p50: u64,
    pub(crate) p99: u64,
    pub(crate) max: u64,
    pub(crate) count: u64,
}

impl Percentiles {
    pub(crate) fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            p50: h.value_at_quantile(0.5),
            p99: h.value_at_quantile(0.99),
            max: h.max(),
            count: h.len(),
        }
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({"p50": self.p50, "p99": self.p99, "max": self.max, "count": self.count})
    }
}

/// What a watch run measured, for either target.
#[derive(Debug)]
pub(crate) struct WatchSummary {
    pub(crate) target: &'static str,
    pub(crate) server: String,
    pub(crate) streams: u64,
    pub(crate) established: u64,
    pub(crate) watches: u64,
    pub(crate) per_stream: u64,
    pub(crate) connections: u32,
    pub(crate) namespace_watchers: u64,
    pub(crate) open_time: Duration,
    pub(crate) ended_early: u64,
    pub(crate) events: u64,
    pub(crate) bookmarks: u64,
    pub(crate) updates_acked: u64,
    pub(crate) updates_failed: u64,
    pub(crate) update_time: Duration,
    pub(crate) delivered: u64,
    pub(crate) expected: u64,
    pub(crate) update_latency: Percentiles,
    pub(crate) delivery_latency: Percentiles,
    /// Update sent -> event received (the write's own latency included).
    pub(crate) delivery_from_send: Percentiles,
    /// With `--creates-per-sec`: Create latency and the number of failed creates.
    pub(crate) creates: Option<(Percentiles, u64)>,
    pub(crate) stalled_streams: u64,
    pub(crate) rss_before_kib: Option<u64>,
    pub(crate) rss_after_kib: Option<u64>,
    pub(crate) errors: Vec<String>,
}

impl WatchSummary {
    /// Whether the run is a valid figure: every stream opened, every event delivered, and no
    /// error except stalled streams being ended.
    fn ok(&self) -> bool {
        self.established == self.streams
            && self.delivered == self.expected
            && (self.stalled_streams > 0 || self.errors.is_empty())
    }

    /// Prints the summary (text or JSON) and returns the exit code.
    pub(crate) fn print(&self, json: bool) -> ExitCode {
        if json {
            println!("{}", self.json());
        } else {
            self.print_text();
        }
        if self.ok() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    }

    fn json(&self) -> serde_json::Value {
        let grown = match (self.rss_before_kib, self.rss_after_kib) {
            (Some(b), Some(a)) => Some(a.saturating_sub(b) * 1024),
            _ => None,
        };
        serde_json::json!({
            "target": self.target,
            "server": self.server,
            "streams": self.streams,
            "established": self.established,
            "watches": self.watches,
            "watches_per_stream": self.per_stream,
            "connections": self.connections,
            "namespace_watchers": self.namespace_watchers,
            "open_secs": self.open_time.as_secs_f64(),
            "ended_early": self.ended_early,
            "events": self.events,
            "bookmarks": self.bookmarks,
            "updates_acked": self.updates_acked,
            "updates_failed": self.updates_failed,
            "update_secs": self.update_time.as_secs_f64(),
            "delivered": self.delivered,
            "expected": self.expected,
            "delivered_per_sec": self.delivered as f64 / self.update_time.as_secs_f64().max(1e-9),
            "update_latency_us": self.update_latency.json(),
            "delivery_latency_us": self.delivery_latency.json(),
            "delivery_from_send_us": self.delivery_from_send.json(),
            "create_latency_us": self.creates.as_ref().map(|(l, _)| l.json()),
            "creates_failed": self.creates.as_ref().map(|(_, f)| *f),
            "stalled_streams": self.stalled_streams,
            "rss_before_kib": self.rss_before_kib,
            "rss_after_kib": self.rss_after_kib,
            "rss_bytes_per_stream": grown.map(|g| g as f64 / self.established.max(1) as f64),
            "errors": self.errors,
            "ok": self.ok(),
        })
    }

    fn print_text(&self) {
        println!("coffer-load watch against {} {}", self.target, self.server);
        println!(
            "  streams: {}/{} established ({} watches, {} per stream) \
             over {} connections in {:.1?}; + {} namespace watchers",
            self.established,
            self.streams,
            self.watches,
            self.per_stream,
            self.connections,
            self.open_time,
            self.namespace_watchers
        );
        println!(
            "  streams ended before the end of the run: {} (all events: {}, bookmarks: {})",
            self.ended_early, self.events, self.bookmarks
        );
        println!(
            "  updates: {} acknowledged, {} failed, in {:.1?} ({:.0}/s)",
            self.updates_acked,
            self.updates_failed,
            self.update_time,
            self.updates_acked as f64 / self.update_time.as_secs_f64().max(1e-9)
        );
        println!(
            "  delivered: {}/{} update events ({:.0}/s over the update phase)",
            self.delivered,
            self.expected,
            self.delivered as f64 / self.update_time.as_secs_f64().max(1e-9)
        );
        let l = &self.update_latency;
        if l.count > 0 {
            println!(
                "  update latency: p50 {} p99 {} max {}; {} stalled streams (never read)",
                ms(l.p50),
                ms(l.p99),
                ms(l.max),
                self.stalled_streams
            );
        }
        if let Some((l, failed)) = &self.creates {
            println!(
                "  create latency: {} acknowledged, {failed} failed; p50 {} p99 {} max {}",
                l.count,
                ms(l.p50),
                ms(l.p99),
                ms(l.max)
            );
        }
        let d = &self.delivery_latency;
        if d.count > 0 {
            println!(
                "  delivery latency (update acknowledged -> event received): p50 {} p99 {} max {}",
                ms(d.p50),
                ms(d.p99),
                ms(d.max)
            );
            let d = &self.delivery_from_send;
            println!(
                "  delivery latency (update sent -> event received): p50 {} p99 {} max {}",
                ms(d.p50),
                ms(d.p99),
                ms(d.max)
            );
        }
        match (self.rss_before_kib, self.rss_after_kib) {
            (Some(b), Some(a)) => {
                let grown = a.saturating_sub(b) * 1024;
                println!(
                    "  server RSS: {:.1} MiB before the streams, {:.1} MiB after; {:.0} bytes per stream, {:.0} bytes per watch",
                    b as f64 / 1024.0,
                    a as f64 / 1024.0,
                    grown as f64 / self.established.max(1) as f64,
                    grown as f64 / self.watches.max(1) as f64,
                );
            }
            _ => println!("  server RSS: unknown (use --spawn or --server-pid)"),
        }
        for e in &self.errors {
            println!("  error: {e}");
        }
    }
}

/// What the stream tasks of a run received, once they have stopped: waits up to 30 s for them,
/// then aborts the rest.
pub(crate) async fn drain<T: 'static>(tasks: &mut tokio::task::JoinSet<T>) -> Vec<T> {
    let mut received = Vec::new();
    let all = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(r) = tasks.join_next().await {
            if let Ok(v) = r {
                received.push(v);
            }
        }
    })
    .await;
    if all.is_err() {
        tasks.abort_all();
    }
    received
}

/// Creates new Secrets at `rate`/s for `duration`, each in its own task; returns their latency
/// histogram and the number that failed.
async fn create_probe(
    client: SecretsClient<Channel>,
    ns: String,
    rate: f64,
    duration: Duration,
) -> Option<(Histogram<u64>, u64)> {
    let latency = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).ok()?,
    ));
    let failed = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.001)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let t = Instant::now();
    let run = std::process::id();
    let mut n = 0u64;
    while t.elapsed() < duration {
        ticker.tick().await;
        n += 1;
        let mut c = client.clone();
        let mut s = secret(&ns, 0, n);
        if let Some(m) = s.metadata.as_mut() {
            m.name = format!("probe-{run}-{n}");
        }
        let (latency, failed) = (latency.clone(), failed.clone());
        tasks.spawn(async move {
            let sent = Instant::now();
            match c.create(pb::CreateSecretRequest { secret: Some(s) }).await {
                Ok(_) => {
                    let us = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                    let _ = latency
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .record(us.max(1));
                }
                Err(_) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let h = latency.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Some((h, failed.load(Ordering::Relaxed)))
}

fn secret(ns: &str, i: u64, version: u64) -> pb::Secret {
    pb::Secret {
        metadata: Some(pb::ObjectMeta {
            name: secret_name(i),
            namespace: ns.to_owned(),
            ..Default::default()
        }),
        r#type: "Opaque".into(),
        data: [("v".to_owned(), version.to_string().into_bytes())].into(),
        ..Default::default()
    }
}
