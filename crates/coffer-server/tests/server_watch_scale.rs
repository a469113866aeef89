//! Watch at (CI) scale: a few thousand watches, multiplexed over WatchMany streams and as single
//! Watch streams, each on one Secret (as a mount agent watches), plus namespace and cluster
//! watchers; every one of them receives its update, a stalled stream does not hold up the
//! others, and shutdown ends every stream with UNAVAILABLE. The 100,000-stream runs are the load tool's (`coffer-load watch`).

use coffer_testkit::server as server_common;

use std::collections::HashMap;
use std::time::Duration;

use coffer_server::proto::v1 as pb;
use coffer_server::proto::v1::secrets_client::SecretsClient;
use coffer_server::proto::v1::watch_event::Type;
use coffer_server::proto::v1::watch_many_request::Op;
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
    let ts = TestServer::start().await;
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
    // A stalled stream: watches every Secret and never reads.
    let _stalled = SecretsClient::new(tcp_channel(addr).await)
        .watch(pb::WatchSecretsRequest::default())
        .await
        .expect("watch");
    assert!(
        eventually(5, || async {
            ts.running.metrics().watch_streams_open() == (MANY_STREAMS + SINGLE_STREAMS + 3) as i64
        })
        .await
    );

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
    let total = MANY_STREAMS * WATCHES_PER_STREAM + SINGLE_STREAMS;
    eprintln!(
        "{total} one-Secret watches + 2 wide watchers all received their update in {:?}",
        started.elapsed()
    );

    // Shutdown ends every stream, the stalled one included, with UNAVAILABLE.
    let TestServer { running, .. } = ts;
    let t = std::time::Instant::now();
    running.shutdown().await.expect("shutdown");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
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
