//! Watch at (CI) scale: a few thousand watches, multiplexed over WatchMany streams and as single
//! Watch streams, each on one Secret (as a mount agent watches), plus namespace and cluster
//! watchers; every one of them receives its update, and shutdown ends every stream with
//! UNAVAILABLE. The 100,000-stream runs are the load tool's (`coffer-load watch`).
//!
//! Among them, stalled streams (README, "Watching at scale"): clients that stop reading while
//! the server keeps sending, with small HTTP/2 windows, while 3 MiB of changes go by. Their
//! HTTP/2 windows and then their queues (128 events) fill; the hub ends each one (its watch is
//! no longer counted as open) while every other watcher, the cluster-wide one that sees the
//! same changes included, gets every change. Read at last, a stalled stream gives the changes
//! that were queued, in order, then `ABORTED` "resume from resource version N" with N its last
//! change; a resume from N gives the rest. A stream never read holds shutdown up to the
//! shutdown grace at most.

use coffer_testkit::server as server_common;

use std::collections::HashMap;
use std::time::Duration;

use coffer_server::proto::v1 as pb;
use coffer_server::proto::v1::secrets_client::SecretsClient;
use coffer_server::proto::v1::watch_event::Type;
use coffer_server::proto::v1::watch_many_request::Op;
use coffer_server::server::ServerOptions;
use server_common::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

const WAIT: Duration = Duration::from_secs(10);
const NS: &str = "scale";
const SECRETS: usize = 50;
const MANY_STREAMS: usize = 4;
const WATCHES_PER_STREAM: usize = 500;
const SINGLE_STREAMS: usize = 2000;
const SINGLE_CONNECTIONS: usize = 4;
/// Changes the stalled streams are not reading: more than a Watch stream's queue (128) and
/// what HTTP/2 flow control buffers (the client's 16 KiB windows, the server's send buffer).
const FLOOD: usize = 200;
/// Their size: 200 x 16 KiB = 3.2 MiB.
const FLOOD_VALUE: usize = 16 * 1024;
/// How long shutdown waits for calls still in flight (a stalled stream's among them).
const GRACE: Duration = Duration::from_secs(3);

fn name(i: usize) -> String {
    format!("s{:03}", i % SECRETS)
}

fn one_secret(i: usize) -> pb::WatchSecretsRequest {
    pb::WatchSecretsRequest {
        namespace: NS.into(),
        field_selector: format!("metadata.name={}", name(i)),
        ..Default::default()
    }
}

async fn next<T: std::fmt::Debug>(s: &mut Streaming<T>) -> T {
    match tokio::time::timeout(WAIT, s.message()).await {
        Ok(Ok(Some(m))) => m,
        other => panic!("no message: {other:?}"),
    }
}

fn event_rv(ev: &pb::WatchEvent) -> u64 {
    ev.object
        .as_ref()
        .and_then(|o| o.metadata.as_ref())
        .map_or(0, |m| m.resource_version)
}

/// A cluster-wide Watch stream on a connection of its own with 16 KiB HTTP/2 windows, whose
/// client never reads it (until the test does).
async fn stalled_stream(addr: std::net::SocketAddr) -> Streaming<pb::WatchEvent> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .initial_stream_window_size(16 * 1024)
        .initial_connection_window_size(16 * 1024)
        .connect()
        .await
        .expect("connect");
    SecretsClient::new(channel)
        .watch(pb::WatchSecretsRequest::default())
        .await
        .expect("watch")
        .into_inner()
}

/// The `coffer_watches_open` gauge.
fn watches_open(ts: &TestServer) -> i64 {
    ts.running
        .metrics()
        .render(None)
        .lines()
        .find_map(|l| l.strip_prefix("coffer_watches_open ")?.trim().parse().ok())
        .unwrap_or(-1)
}

fn event_name(ev: &pb::WatchEvent) -> String {
    ev.object
        .as_ref()
        .and_then(|o| o.metadata.as_ref())
        .map(|m| m.name.clone())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_watches_all_receive_their_update() {
    let started = std::time::Instant::now();
    let ts = TestServer::builder()
        .options(ServerOptions {
            shutdown_grace: GRACE,
            ..test_options()
        })
        .start()
        .await;
    let addr = ts.running.tcp_addr().expect("addr");
    let mut c = ts.client().await;
    for i in 0..SECRETS {
        create(&mut c, secret(NS, &name(i), &[("k", "v0")]))
            .await
            .expect("create");
    }

    // WatchMany streams, each on its own connection, each with WATCHES_PER_STREAM watches.
    let mut many = Vec::new();
    for _ in 0..MANY_STREAMS {
        let mut client = SecretsClient::new(tcp_channel(addr).await);
        let (tx, rx) = mpsc::channel(WATCHES_PER_STREAM + 8);
        for id in 0..WATCHES_PER_STREAM {
            tx.send(pb::WatchManyRequest {
                op: Some(Op::Create(pb::WatchCreate {
                    watch_id: id as u64 + 1,
                    watch: Some(one_secret(id)),
                })),
            })
            .await
            .expect("send");
        }
        let mut events = client
            .watch_many(ReceiverStream::new(rx))
            .await
            .expect("watch_many")
            .into_inner();
        for _ in 0..WATCHES_PER_STREAM {
            let ev = next(&mut events).await;
            assert!(ev.created, "{ev:?}");
        }
        many.push((tx, events));
    }

    // Single Watch streams over a few connections, plus a namespace and a cluster watcher.
    let mut clients = Vec::new();
    for _ in 0..SINGLE_CONNECTIONS {
        clients.push(SecretsClient::new(tcp_channel(addr).await));
    }
    let opens = (0..SINGLE_STREAMS).map(|i| {
        let mut client = clients[i % SINGLE_CONNECTIONS].clone();
        async move {
            client
                .watch(one_secret(i))
                .await
                .expect("watch")
                .into_inner()
        }
    });
    let mut singles: Vec<Streaming<pb::WatchEvent>> = futures::future::join_all(opens).await;
    let mut wide = Vec::new();
    for req in [
        pb::WatchSecretsRequest {
            namespace: NS.into(),
            ..Default::default()
        },
        pb::WatchSecretsRequest::default(),
    ] {
        wide.push(c.watch(req).await.expect("watch").into_inner());
    }
    // Two stalled streams: they watch every Secret and their clients stop reading. The first is
    // read at the end; the second never, through shutdown.
    let mut stalled = stalled_stream(addr).await;
    let _never_read = stalled_stream(addr).await;
    let streams = (MANY_STREAMS + SINGLE_STREAMS + 4) as i64;
    let watches = (MANY_STREAMS * WATCHES_PER_STREAM + SINGLE_STREAMS + 4) as i64;
    assert!(
        eventually(5, || async {
            ts.running.metrics().watch_streams_open() == streams && watches_open(&ts) == watches
        })
        .await,
        "{} streams, {} watches",
        ts.running.metrics().watch_streams_open(),
        watches_open(&ts)
    );

    // A flood of large changes in another namespace, which the stalled streams and the
    // cluster-wide watcher (reading all along) see. The cluster-wide watcher gets them all.
    let flood_start = ts.store.revision();
    let mut cluster = wide.pop().expect("the cluster-wide watcher");
    let cluster_reader = tokio::spawn(async move {
        for i in 0..FLOOD as u64 {
            let ev = next(&mut cluster).await;
            assert_eq!(ev.r#type, Type::Added as i32);
            assert_eq!(event_rv(&ev), flood_start + 1 + i, "every change, in order");
        }
        cluster
    });
    let blob = "x".repeat(FLOOD_VALUE);
    for batch in 0..FLOOD / 8 {
        // Eight at a time: concurrent writers share the syncs.
        let writes = (0..8).map(|j| {
            let mut c = c.clone();
            let s = secret("flood", &format!("f{batch:03}-{j}"), &[("k", &blob)]);
            async move { create(&mut c, s).await.expect("create") }
        });
        futures::future::join_all(writes).await;
    }
    wide.push(cluster_reader.await.expect("the cluster-wide watcher"));
    // The hub ended both stalled watchers: they are not counted as open any more, while their
    // streams (which still hold what was queued) are.
    assert!(
        eventually(10, || async { watches_open(&ts) == watches - 2 }).await,
        "{} watches open, {} before the flood",
        watches_open(&ts),
        watches
    );
    assert_eq!(ts.running.metrics().watch_streams_open(), streams);

    // One update per Secret.
    let updates = (0..SECRETS).map(|i| {
        let mut c = c.clone();
        async move {
            let mut s = get(&mut c, NS, &name(i)).await.expect("get");
            s.data.insert("k".into(), b"v1".to_vec());
            update(&mut c, s).await.expect("update");
        }
    });
    futures::future::join_all(updates).await;

    // Every watch gets exactly its Secret's update.
    let checks = singles.iter_mut().enumerate().map(|(i, s)| async move {
        let ev = next(s).await;
        assert_eq!(ev.r#type, Type::Modified as i32);
        assert_eq!(event_name(&ev), name(i));
    });
    futures::future::join_all(checks).await;
    for (_, events) in &mut many {
        let mut seen = HashMap::new();
        for _ in 0..WATCHES_PER_STREAM {
            let ev = next(events).await;
            let inner = ev.event.clone().unwrap_or_default();
            assert_eq!(inner.r#type, Type::Modified as i32, "{ev:?}");
            let id = ev.watch_id as usize - 1;
            assert_eq!(event_name(&inner), name(id));
            assert!(seen.insert(id, ()).is_none(), "watch {id} got two events");
        }
    }
    for s in &mut wide {
        let mut names = Vec::new();
        for _ in 0..SECRETS {
            names.push(event_name(&next(s).await));
        }
        names.sort();
        names.dedup();
        assert_eq!(names.len(), SECRETS);
    }
    // The stalled stream, read at last: the changes that were queued, in order, then where to
    // resume from; nothing of the updates after it was ended.
    let mut delivered = 0u64;
    let mut last = flood_start;
    let err = loop {
        match tokio::time::timeout(WAIT, stalled.message()).await {
            Ok(Ok(Some(ev))) => {
                delivered += 1;
                last = event_rv(&ev);
                assert_eq!(
                    last,
                    flood_start + delivered,
                    "a prefix of the flood, in order"
                );
            }
            Ok(Ok(None)) => panic!("ended without a status after {delivered} events"),
            Ok(Err(e)) => break e,
            Err(_) => panic!("nothing after {delivered} events"),
        }
    };
    assert!(
        (128..FLOOD as u64).contains(&delivered),
        "{delivered} events before the end: its queue holds 128"
    );
    assert_eq!(err.code(), tonic::Code::Aborted, "{err:?}");
    assert!(
        err.message()
            .ends_with(&format!("resume from resource version {last}")),
        "{err:?} after {last}"
    );
    // Resuming from there gives the rest of the flood and the updates, in order.
    let mut resumed = c
        .watch(pb::WatchSecretsRequest {
            resource_version: last,
            ..Default::default()
        })
        .await
        .expect("resume")
        .into_inner();
    for expected in last + 1..=ts.store.revision() {
        assert_eq!(event_rv(&next(&mut resumed).await), expected);
    }
    wide.push(resumed);
    eprintln!(
        "the stalled stream: {delivered} of {FLOOD} changes queued, then {:?} {:?}",
        err.code(),
        err.message()
    );

    let total = MANY_STREAMS * WATCHES_PER_STREAM + SINGLE_STREAMS;
    eprintln!(
        "{total} one-Secret watches + 2 wide watchers all received their update in {:?}",
        started.elapsed()
    );

    // Shutdown ends every stream with UNAVAILABLE. The stream that was never read holds it up
    // to the shutdown grace at most (its client reads nothing, so its call never finishes),
    // then its connection is closed.
    let TestServer { running, .. } = ts;
    let t = std::time::Instant::now();
    running.shutdown().await.expect("shutdown");
    assert!(
        t.elapsed() < GRACE + Duration::from_secs(5),
        "{:?} (grace {GRACE:?})",
        t.elapsed()
    );
    eprintln!("shutdown took {:?}", t.elapsed());
    for s in singles.iter_mut().chain(&mut wide) {
        let end = tokio::time::timeout(WAIT, s.message())
            .await
            .expect("ended");
        let e = end.expect_err("a status");
        assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    }
    for (_, events) in &mut many {
        let end = tokio::time::timeout(WAIT, events.message())
            .await
            .expect("ended");
        let e = end.expect_err("a status");
        assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    }
}
