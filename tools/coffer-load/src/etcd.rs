//! `--target etcd`: the same load against an etcd member, through the `etcd-client` crate.
//!
//! Unary phases map as follows (see `unary.rs`): create is a Put of a new key, get a Range of
//! one existing key, update a Put of an existing key; keys are `/<namespace>/<name>` and the
//! values are the same random bytes as Coffer's. etcd acknowledges a Put once its WAL entry is
//! fsync'd (its default), so both stores' writes are durable.
//!
//! The watch run mirrors `watch.rs`: `--streams` gRPC Watch streams over `--connections` etcd
//! clients (one HTTP/2 connection each), each stream carrying one watcher on one key
//! (stream i watches key i mod S), plus `--namespace-watchers` streams watching the prefix
//! `/<namespace>/`; then Puts at `--updates-per-sec`; delivery latency is from the Put's
//! acknowledgement to the event's arrival, matched by revision.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, EventType, WatchOptions};
use hdrhistogram::Histogram;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use std::process::ExitCode;

use crate::watch::{Acks, Percentiles, WatchArgs, WatchSummary, drain, rss_kib, secret_name};

/// Runs `coffer-load watch --target etcd` against the member at `--server`.
pub(crate) async fn run_watch(args: WatchArgs) -> Result<ExitCode, String> {
    if args.spawn {
        return Err("--spawn starts a Coffer server: with --target etcd give --server".into());
    }
    if args.watches_per_stream > 1 {
        return Err("--watches-per-stream > 1 is not supported with --target etcd".into());
    }
    let addr = args
        .server
        .clone()
        .unwrap_or_else(|| crate::args::DEFAULT_ETCD.to_owned());
    let summary = measure_watch(&args, &addr).await?;
    Ok(summary.print(args.json))
}

/// Connects one etcd client (its own HTTP/2 connection) to `addr` (HOST:PORT or http://...).
pub(crate) async fn connect(addr: &str) -> Result<Client, String> {
    let url = if addr.starts_with("http://") || addr.starts_with("https://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    };
    let options = ConnectOptions::new().with_connect_timeout(Duration::from_secs(10));
    Client::connect([url.as_str()], Some(options))
        .await
        .map_err(|e| format!("cannot reach etcd at {addr}: {e}"))
}

/// The key of Secret `i` in namespace `ns`.
fn key(ns: &str, i: u64) -> String {
    format!("/{ns}/{}", secret_name(i))
}

#[derive(Debug, Default)]
struct Counters {
    established: AtomicU64,
    ended: AtomicU64,
    events: AtomicU64,
    errors: Mutex<Vec<String>>,
}

fn push_error(c: &Counters, e: String) {
    let mut errors = c.errors.lock().unwrap_or_else(|p| p.into_inner());
    if errors.len() < 10 {
        errors.push(e);
    }
}

/// Opens one watch stream (one watcher) and records (revision, arrival) of each Put event.
async fn run_stream(
    client: Client,
    watch_key: String,
    prefix: bool,
    counters: Arc<Counters>,
    stop: CancellationToken,
    opened: tokio::sync::OwnedSemaphorePermit,
) -> Vec<(i64, Instant)> {
    let mut wc = client.watch_client();
    let options = if prefix {
        Some(WatchOptions::new().with_prefix())
    } else {
        None
    };
    let mut stream = match wc.watch(watch_key, options).await {
        Ok(s) => s,
        Err(e) => {
            push_error(&counters, format!("watch refused: {e}"));
            return Vec::new();
        }
    };
    let mut opened = Some(opened);
    let mut got = Vec::new();
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => break,
            m = stream.message() => m,
        };
        match msg {
            Ok(Some(resp)) => {
                let now = Instant::now();
                if resp.created() && opened.take().is_some() {
                    counters.established.fetch_add(1, Ordering::Relaxed);
                }
                if resp.canceled() {
                    push_error(
                        &counters,
                        format!("watch canceled: {}", resp.cancel_reason()),
                    );
                }
                for ev in resp.events() {
                    counters.events.fetch_add(1, Ordering::Relaxed);
                    if ev.event_type() == EventType::Put
                        && let Some(kv) = ev.kv()
                    {
                        got.push((kv.mod_revision(), now));
                    }
                }
            }
            Ok(None) => {
                counters.ended.fetch_add(1, Ordering::Relaxed);
                break;
            }
            Err(e) => {
                counters.ended.fetch_add(1, Ordering::Relaxed);
                push_error(&counters, format!("watch ended: {e}"));
                break;
            }
        }
    }
    got
}

/// `coffer-load watch --target etcd`.
pub(crate) async fn measure_watch(args: &WatchArgs, addr: &str) -> Result<WatchSummary, String> {
    if args.stalled_percent > 0.0 || args.creates_per_sec > 0.0 {
        return Err(
            "--stalled-percent and --creates-per-sec are not supported with --target etcd".into(),
        );
    }
    let ns = args.namespace.clone();
    let secrets = u64::from(args.secrets);
    let streams = u64::from(args.streams);
    let ns_watchers = u64::from(args.namespace_watchers);
    let mut clients = Vec::new();
    for _ in 0..args.connections {
        clients.push(connect(addr).await?);
    }
    let client = |i: u64| clients[(i % clients.len() as u64) as usize].clone();

    // The keys (unmeasured).
    let t = Instant::now();
    let sem = Arc::new(Semaphore::new(64));
    let mut puts = tokio::task::JoinSet::new();
    for i in 0..secrets {
        let mut kv = client(i).kv_client();
        let k = key(&ns, i);
        let permit = sem
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        puts.spawn(async move {
            let _permit = permit;
            kv.put(k.clone(), b"0".to_vec(), None)
                .await
                .map(|_| ())
                .map_err(|e| format!("put {k}: {e}"))
        });
    }
    while let Some(r) = puts.join_next().await {
        r.map_err(|e| e.to_string())??;
    }
    eprintln!("{secrets} keys ready in {:.1?}", t.elapsed());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = args.server_pid.and_then(rss_kib);

    // The watch streams.
    let counters = Arc::new(Counters::default());
    let stop = CancellationToken::new();
    let open_sem = Arc::new(Semaphore::new(args.open_concurrency.max(1) as usize));
    let mut tasks = tokio::task::JoinSet::new();
    let t = Instant::now();
    for i in 0..streams + ns_watchers {
        let permit = open_sem
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        let (watch_key, prefix) = if i >= streams {
            (format!("/{ns}/"), true)
        } else {
            (key(&ns, i % secrets), false)
        };
        tasks.spawn(run_stream(
            client(i),
            watch_key,
            prefix,
            counters.clone(),
            stop.clone(),
            permit,
        ));
        if t.elapsed() > args.open_timeout {
            break;
        }
    }
    let deadline = Instant::now() + args.open_timeout.saturating_sub(t.elapsed());
    while counters.established.load(Ordering::Relaxed) < streams + ns_watchers
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let established_all = counters.established.load(Ordering::Relaxed);
    let open_time = t.elapsed();
    eprintln!("{established_all} etcd watch streams established in {open_time:.1?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = args.server_pid.and_then(rss_kib);

    // Puts at the given rate; acknowledgements by revision.
    let acks: Arc<Mutex<Acks<i64>>> = Arc::default();
    let update_errors = Arc::new(AtomicU64::new(0));
    let update_latency = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).map_err(|e| e.to_string())?,
    ));
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
        let mut kv = client(n).kv_client();
        let k = key(&ns, target);
        let acks = acks.clone();
        let errors = update_errors.clone();
        let latency = update_latency.clone();
        updates.spawn(async move {
            let sent = Instant::now();
            match kv.put(k, n.to_string().into_bytes(), None).await {
                Ok(r) => {
                    let now = Instant::now();
                    let us =
                        u64::try_from(now.duration_since(sent).as_micros()).unwrap_or(u64::MAX);
                    let _ = latency
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .record(us.max(1));
                    let rev = r.header().map_or(0, |h| h.revision());
                    acks.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(rev, (target, sent, now));
                }
                Err(_) => {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    while updates.join_next().await.is_some() {}
    let update_time = t.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ended_early = counters.ended.load(Ordering::Relaxed);
    stop.cancel();
    let received = drain(&mut tasks).await;

    let acks = std::mem::take(&mut *acks.lock().unwrap_or_else(|p| p.into_inner()));
    let mut per_key = vec![0u64; secrets as usize];
    for i in 0..streams {
        per_key[(i % secrets) as usize] += 1;
    }
    let expected: u64 = acks
        .values()
        .map(|(s, _, _)| per_key[*s as usize] + ns_watchers)
        .sum();
    let mut hist =
        Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).map_err(|e| e.to_string())?;
    let mut from_send =
        Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).map_err(|e| e.to_string())?;
    let mut delivered = 0u64;
    for (rev, at) in received.iter().flatten() {
        if let Some((_, sent, acked)) = acks.get(rev) {
            delivered += 1;
            let us = at.saturating_duration_since(*acked).as_micros();
            let _ = hist.record(u64::try_from(us).unwrap_or(u64::MAX).max(1));
            let us = at.saturating_duration_since(*sent).as_micros();
            let _ = from_send.record(u64::try_from(us).unwrap_or(u64::MAX).max(1));
        }
    }
    let update_latency = update_latency.lock().unwrap_or_else(|p| p.into_inner());
    let errors = counters.errors.lock().unwrap_or_else(|p| p.into_inner());
    let established = established_all.min(streams);
    Ok(WatchSummary {
        target: "etcd",
        server: addr.to_owned(),
        streams,
        established,
        watches: established,
        per_stream: 1,
        connections: args.connections,
        namespace_watchers: ns_watchers,
        open_time,
        ended_early,
        events: counters.events.load(Ordering::Relaxed),
        bookmarks: 0,
        updates_acked: acks.len() as u64,
        updates_failed: update_errors.load(Ordering::Relaxed),
        update_time,
        delivered,
        expected,
        update_latency: Percentiles::of(&update_latency),
        delivery_latency: Percentiles::of(&hist),
        delivery_from_send: Percentiles::of(&from_send),
        creates: None,
        stalled_streams: 0,
        rss_before_kib: rss_before,
        rss_after_kib: rss_after,
        errors: errors.clone(),
    })
}
