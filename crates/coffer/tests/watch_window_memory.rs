//! README ("Watching at scale"): the window of recent changes that resumes are served from
//! keeps at most 64 MiB of them (`--watch-window-bytes`), and a watcher whose client does not
//! read is ended once its stream's queue (128 events) is full, never buffered without bound. So
//! a stalled stream and a flow of large Secrets cannot grow the server's memory past those
//! bounds.
//!
//! The real `coffer serve` (its RSS read from /proc) with the window's event count raised out
//! of the way (`--watch-window 100000`: the byte bound is the one that holds), no history
//! (`--history-retention 0`: the window alone serves resumes, so what it holds shows as which
//! resumes work), a stalled cluster-wide Watch stream (a client that never reads, with small
//! HTTP/2 windows) and a healthy namespace watcher reading all along. Every write is an Update
//! of a large value:
//!
//! - warm-up: more changes than the window holds (the stalled stream's queue fills and the hub
//!   ends it on the way), then the RSS baseline;
//! - measured: 1.5 times the window's bytes of changes more; the server's peak RSS may not pass
//!   the baseline by more than 3/4 of the window (without the byte bound the window alone grows
//!   by 1.5 times its size, and so does a stalled stream's queue without its bound);
//! - the window holds the last window's bytes of changes and no more: a resume from 7/8 of that
//!   back is served, one from 9/8 back answers OUT_OF_RANGE;
//! - the healthy watcher got every change in order; the stalled one, read at last, gets what
//!   was queued (at least its queue's 128 events), then ABORTED "resume from resource version
//!   N" with N its last event, and that resume answers OUT_OF_RANGE (re-list).
//!
//! CI runs it with a 4 MiB window and 32 KiB values (a debug build seals about 1 MiB/s on 2
//! cores: 12 MiB of writes, 15-20 s); the ignored test runs the same at the default 64 MiB:
//! `cargo test --release -p coffer --test watch_window_memory -- --ignored --nocapture`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use coffer_server::proto::v1 as pb;
use coffer_server::proto::v1::secrets_client::SecretsClient;
use coffer_server::proto::v1::watch_event::Type;
use coffer_testkit::process::{Serve, rss_kib};
use coffer_testkit::require::Watchdog;
use coffer_testkit::server::{create, get, rv, secret, update};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Streaming};

const NS: &str = "flood";
/// Secrets the writes go round.
const SECRETS: usize = 4;
/// Concurrent writers.
const WRITERS: usize = 4;
/// A Watch stream's queue (`WATCH_QUEUE` in the server's watch module).
const WATCH_QUEUE: usize = 128;
const WAIT: Duration = Duration::from_secs(30);

/// One run's sizes.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    /// The window's byte bound; `None`: the default (64 MiB), no flag.
    flag: Option<usize>,
    window: usize,
    /// The size of each value written.
    value: usize,
}

impl Sizes {
    /// Changes the window holds: its bytes over each change's approximate size (the value, its
    /// key, names, uid and type, and 64 bytes of framing).
    fn window_events(&self) -> usize {
        let approx = self.value + 1 + 8 + "big0".len() + NS.len() + 36 + "Opaque".len() + 64;
        self.window / approx
    }
}

async fn channel(addr: &str, window: Option<u32>) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .initial_stream_window_size(window)
        .initial_connection_window_size(window)
        .connect()
        .await
        .unwrap()
}

fn client(ch: Channel) -> SecretsClient<Channel> {
    SecretsClient::new(ch)
        .max_decoding_message_size(16 << 20)
        .max_encoding_message_size(16 << 20)
}

/// Write `n` of Secret `n % SECRETS`: a value of `size` bytes.
fn big(n: usize, size: usize) -> pb::Secret {
    let mut v = format!("{n:08}-");
    v.push_str(&"v".repeat(size - v.len()));
    let mut s = secret(NS, &format!("big{}", n % SECRETS), &[("v", &v)]);
    s.r#type = "Opaque".into();
    s
}

/// Writes `count` Updates from `WRITERS` tasks, numbered from `first`; samples the server's
/// RSS every few writes and returns the largest sample (KiB).
async fn write_phase(
    c: &SecretsClient<Channel>,
    first: usize,
    count: usize,
    sizes: Sizes,
    pid: u32,
) -> u64 {
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..WRITERS {
        let mut c = c.clone();
        tasks.spawn(async move {
            let mut peak = 0;
            for n in (first + w..first + count).step_by(WRITERS) {
                update(&mut c, big(n, sizes.value)).await.expect("update");
                if n % 8 == 0 {
                    peak = peak.max(rss_kib(pid));
                }
            }
            peak
        });
    }
    let mut peak = 0;
    while let Some(p) = tasks.join_next().await {
        peak = peak.max(p.expect("writer"));
    }
    peak.max(rss_kib(pid))
}

async fn next_event(
    s: &mut Streaming<pb::WatchEvent>,
) -> Result<Option<pb::WatchEvent>, tonic::Status> {
    tokio::time::timeout(WAIT, s.message())
        .await
        .expect("an event or a status in time")
}

/// The first event of a watch of the namespace from `from`, or its error.
async fn resume(c: &SecretsClient<Channel>, from: u64) -> Result<u64, tonic::Status> {
    let mut s = c
        .clone()
        .watch(pb::WatchSecretsRequest {
            namespace: NS.into(),
            resource_version: from,
            ..Default::default()
        })
        .await?
        .into_inner();
    let ev = next_event(&mut s).await?.expect("an event");
    Ok(rv(&ev.object.unwrap_or_default()))
}

async fn run(sizes: Sizes) {
    let started = Instant::now();
    let window_events = sizes.window_events();
    let tmp = tempfile::tempdir().unwrap();
    let mut args = vec![
        "--relaxed-durability".to_owned(),
        "--history-retention".to_owned(),
        "0".to_owned(),
        "--watch-window".to_owned(),
        "100000".to_owned(),
        "--watch-window-age".to_owned(),
        "0".to_owned(),
    ];
    if let Some(bytes) = sizes.flag {
        args.extend(["--watch-window-bytes".to_owned(), bytes.to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Serve::new(tmp.path()).tcp().args(&args).start();
    let pid = server.child.id();
    let addr = server.tcp_addr();
    let c = client(channel(&addr, None).await);
    let mut created = 0;
    for i in 0..SECRETS {
        created = rv(&create(&mut c.clone(), big(i, sizes.value))
            .await
            .expect("create"));
    }
    let rss_start = rss_kib(pid);

    // The stalled stream: every change, small HTTP/2 windows, never read (until the end).
    let mut stalled = client(channel(&addr, Some(16 * 1024)).await)
        .watch(pb::WatchSecretsRequest::default())
        .await
        .expect("watch")
        .into_inner();
    // A healthy watcher of the same changes, reading all along.
    let mut healthy = client(channel(&addr, None).await)
        .watch(pb::WatchSecretsRequest {
            namespace: NS.into(),
            ..Default::default()
        })
        .await
        .expect("watch")
        .into_inner();
    let warm_up = window_events.max(WATCH_QUEUE) * 5 / 4 + 16;
    let measured = window_events * 3 / 2;
    let reader = tokio::spawn(async move {
        let mut expected = created + 1;
        while expected <= created + (warm_up + measured) as u64 {
            let ev = next_event(&mut healthy)
                .await
                .expect("the healthy watcher goes on")
                .expect("open");
            assert_eq!(ev.r#type, Type::Modified as i32);
            assert_eq!(
                rv(&ev.object.unwrap_or_default()),
                expected,
                "every change, in order"
            );
            expected += 1;
        }
    });

    let warm_peak = write_phase(&c, SECRETS, warm_up, sizes, pid).await;
    let baseline = rss_kib(pid);
    let peak = write_phase(&c, SECRETS + warm_up, measured, sizes, pid).await;
    let end = rss_kib(pid);
    let growth = peak.saturating_sub(baseline) * 1024;
    let mib = |b: usize| b as f64 / f64::from(1 << 20);
    println!(
        "window {:.0} MiB ({window_events} changes of {} KiB): server RSS {:.1} MiB at the start, \
         {:.1} MiB peak over {warm_up} warm-up changes, {:.1} MiB after them; {:.1} MiB peak and \
         {:.1} MiB at the end of {measured} more ({:.0} MiB): +{:.1} MiB ({:.1?})",
        mib(sizes.window),
        sizes.value >> 10,
        rss_start as f64 / 1024.0,
        warm_peak as f64 / 1024.0,
        baseline as f64 / 1024.0,
        peak as f64 / 1024.0,
        end as f64 / 1024.0,
        mib(measured * sizes.value),
        mib(growth as usize),
        started.elapsed()
    );
    assert!(
        growth as usize <= sizes.window * 3 / 4,
        "server RSS grew by {:.1} MiB over {:.0} MiB of changes (bound: 3/4 of the {:.0} MiB \
         window)",
        mib(growth as usize),
        mib(measured * sizes.value),
        mib(sizes.window)
    );
    reader.await.expect("the healthy watcher got every change");

    // The window holds the last `window_events` changes, no more.
    let mut latest = 0;
    for i in 0..SECRETS {
        let s = get(&mut c.clone(), NS, &format!("big{i}"))
            .await
            .expect("get");
        latest = latest.max(rv(&s));
    }
    let inside = (window_events * 7 / 8) as u64;
    assert_eq!(
        resume(&c, latest - inside).await.expect("in the window"),
        latest - inside + 1
    );
    let outside = (window_events * 9 / 8) as u64;
    let e = resume(&c, latest - outside)
        .await
        .expect_err("out of the window");
    assert_eq!(e.code(), Code::OutOfRange, "{e:?}");

    // The stalled stream, read at last: what was queued, then where to resume from.
    let mut delivered = 0;
    let mut last = 0;
    let err = loop {
        match next_event(&mut stalled).await {
            Ok(Some(ev)) => {
                delivered += 1;
                last = rv(&ev.object.unwrap_or_default());
            }
            Ok(None) => panic!("ended without a status after {delivered} events"),
            Err(e) => break e,
        }
    };
    assert!(
        (WATCH_QUEUE..warm_up).contains(&delivered),
        "{delivered} events before the end"
    );
    assert_eq!(last, created + delivered as u64, "a prefix of the changes");
    assert_eq!(err.code(), Code::Aborted, "{err:?}");
    assert!(
        err.message()
            .ends_with(&format!("resume from resource version {last}")),
        "{err:?} after {last}"
    );
    let e = resume(&c, last)
        .await
        .expect_err("long gone from the window");
    assert_eq!(e.code(), Code::OutOfRange, "{e:?}");
    println!(
        "the stalled stream got {delivered} changes, then {:?} {:?}; {:.1?} in all",
        err.code(),
        err.message(),
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_changes_and_a_stalled_stream_keep_server_memory_bounded() {
    let _watchdog = Watchdog::arm("watch_window_memory", Duration::from_secs(300));
    run(Sizes {
        flag: Some(4 << 20),
        window: 4 << 20,
        value: 32 << 10,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the default 64 MiB window: 180 MiB of writes (cargo test --release ... -- --ignored)"]
async fn large_changes_and_a_stalled_stream_keep_server_memory_bounded_at_64_mib() {
    run(Sizes {
        flag: None,
        window: 64 << 20,
        value: 256 << 10,
    })
    .await;
}
