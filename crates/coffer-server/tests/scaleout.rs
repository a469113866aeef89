//! Several Coffer replicas (real servers, in-process) over one 3-member etcd cluster on
//! loopback (issue 16): every replica reads every acknowledged write at once, a watch on one
//! sees every replica's writes in revision order and resumes on another from its last
//! resource_version without a gap, and acknowledged writes survive SIGKILLs of an etcd member,
//! of the etcd leader, and a replica going away.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coffer_core::kms::LocalKek;
use coffer_core::store::StoreConfig;
use coffer_server::proto::v1 as pb;
use coffer_server::proto::v1::secrets_client::SecretsClient;
use coffer_testkit::etcd::{EtcdCluster, etcd_store};
use coffer_testkit::server::{TestServer, create, get, meta, rv, secret};
use tonic::transport::Channel;

const WAIT: Duration = Duration::from_secs(60);

async fn replica(etcd: &EtcdCluster, kek: &Path) -> TestServer {
    let store = etcd_store(etcd, "/coffer", kek, StoreConfig::default()).await;
    TestServer::builder().store(store).start().await
}

async fn watch_from(
    c: &mut SecretsClient<Channel>,
    resource_version: u64,
) -> tonic::Streaming<pb::WatchEvent> {
    c.watch(pb::WatchSecretsRequest {
        namespace: "ns".into(),
        resource_version,
        ..Default::default()
    })
    .await
    .expect("watch")
    .into_inner()
}

/// The next `n` non-bookmark events' (type, name, resource_version).
async fn next_events(
    s: &mut tonic::Streaming<pb::WatchEvent>,
    n: usize,
) -> Vec<(i32, String, u64)> {
    let mut out = Vec::new();
    while out.len() < n {
        let ev = tokio::time::timeout(WAIT, s.message())
            .await
            .expect("an event in time")
            .expect("stream ok")
            .expect("stream open");
        if ev.r#type == pb::watch_event::Type::Bookmark as i32 {
            continue;
        }
        let obj = ev.object.unwrap_or_default();
        out.push((ev.r#type, meta(&obj).name.clone(), rv(&obj)));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_agree_and_a_watch_resumes_on_another_replica_without_a_gap() {
    let etcd = EtcdCluster::start(3).await;
    let kek_dir = tempfile::tempdir().expect("tempdir");
    let kek = kek_dir.path().join("kek.key");
    LocalKek::create_new(&kek).expect("kek");
    let mut servers = Vec::new();
    for _ in 0..3 {
        servers.push(replica(&etcd, &kek).await);
    }
    let mut clients = Vec::new();
    for s in &servers {
        clients.push(s.client().await);
    }
    let start = create(&mut clients[0], secret("ns", "start", &[("k", "v")]))
        .await
        .expect("create");
    let from = rv(&start);
    let mut on0 = watch_from(&mut clients[0], from).await;
    let mut on1 = watch_from(&mut clients[1], from).await;
    let mut written = Vec::new();
    for i in 0..6 {
        let name = format!("s{i}");
        let c = &mut clients[i % 3];
        let made = create(c, secret("ns", &name, &[("k", &format!("v{i}"))]))
            .await
            .expect("create");
        // Readable at once on every replica, with the same resource_version.
        for reader in clients.iter_mut() {
            let got = get(reader, "ns", &name).await.expect("get");
            assert_eq!(rv(&got), rv(&made));
        }
        written.push((pb::watch_event::Type::Added as i32, name, rv(&made)));
    }
    assert_eq!(next_events(&mut on0, 6).await, written);
    // A watcher reads half on replica 1, loses its stream, resumes on replica 2.
    let first = next_events(&mut on1, 3).await;
    drop(on1);
    let last = first.last().map(|e| e.2).expect("an event");
    let mut on2 = watch_from(&mut clients[2], last).await;
    let rest = next_events(&mut on2, 3).await;
    assert_eq!([first, rest].concat(), written);
    // A watch from a revision just given out by another replica opens at once (the replica
    // waits until it has caught up rather than refuse it as too large).
    for round in 0..5 {
        let made = create(
            &mut clients[0],
            secret("ns", &format!("fresh{round}"), &[("k", "v")]),
        )
        .await
        .expect("create");
        let mut w = watch_from(&mut clients[1 + round % 2], rv(&made)).await;
        // WatchMany too.
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(pb::WatchManyRequest {
            op: Some(pb::watch_many_request::Op::Create(pb::WatchCreate {
                watch_id: 7,
                watch: Some(pb::WatchSecretsRequest {
                    namespace: "ns".into(),
                    resource_version: rv(&made),
                    ..Default::default()
                }),
            })),
        })
        .await
        .expect("send");
        let mut many = clients[2 - round % 2]
            .watch_many(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("watch many")
            .into_inner();
        let next = create(
            &mut clients[2],
            secret("ns", &format!("next{round}"), &[("k", "v")]),
        )
        .await
        .expect("create");
        assert_eq!(next_events(&mut w, 1).await[0].2, rv(&next));
        loop {
            let ev = tokio::time::timeout(WAIT, many.message())
                .await
                .expect("in time")
                .expect("stream ok")
                .expect("stream open");
            assert!(!ev.canceled, "refused: {}", ev.error_message);
            if let Some(e) = ev.event
                && e.r#type != pb::watch_event::Type::Bookmark as i32
            {
                assert_eq!(e.object.as_ref().map(rv), Some(rv(&next)));
                break;
            }
        }
        drop(tx);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_member_leader_and_replica_kills() {
    let mut etcd = EtcdCluster::start(3).await;
    let kek_dir = tempfile::tempdir().expect("tempdir");
    let kek = kek_dir.path().join("kek.key");
    LocalKek::create_new(&kek).expect("kek");
    let mut servers = Vec::new();
    for _ in 0..3 {
        servers.push(Some(replica(&etcd, &kek).await));
    }
    let mut c0 = servers[0].as_ref().expect("r0").client().await;
    let start = create(&mut c0, secret("ns", "start", &[("k", "v")]))
        .await
        .expect("create");
    let mut watch = watch_from(&mut c0, rv(&start)).await;

    // Two writers (on replicas 0 and 1) create Secrets until told to stop, retrying a failed
    // create; what each acknowledged is recorded with its resource_version.
    let acked: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let stop = tokio_util::sync::CancellationToken::new();
    let mut writers = Vec::new();
    for (w, server) in servers.iter().take(2).enumerate() {
        let mut c = server.as_ref().expect("replica").client().await;
        let (acked, stop) = (acked.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.is_cancelled() {
                let name = format!("w{w}-{i}");
                match create(&mut c, secret("ns", &name, &[("k", "v")])).await {
                    Ok(s) => {
                        acked.lock().expect("lock").insert(name, rv(&s));
                        i += 1;
                    }
                    // An earlier try committed but its answer was lost: not acknowledged.
                    Err(s) if s.code() == tonic::Code::AlreadyExists => i += 1,
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        }));
    }
    let progress = |n: usize| {
        let acked = acked.clone();
        async move {
            let deadline = tokio::time::Instant::now() + WAIT;
            let base = acked.lock().expect("lock").len();
            while acked.lock().expect("lock").len() < base + n {
                assert!(tokio::time::Instant::now() < deadline, "writes stalled");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    progress(10).await;
    // A follower, then the leader.
    let leader = etcd.leader().await;
    let follower = (leader + 1) % 3;
    etcd.kill(follower);
    progress(10).await;
    etcd.restart(follower).await;
    progress(10).await;
    let leader = etcd.leader().await;
    etcd.kill(leader);
    progress(10).await;
    etcd.restart(leader).await;
    progress(10).await;
    // A replica goes away and comes back (in-process: its server shut down and its store
    // dropped; a SIGKILLed `coffer serve` process is the next step).
    if let Some(r2) = servers[2].take() {
        r2.running.shutdown().await.expect("shutdown");
    }
    progress(10).await;
    servers[2] = Some(replica(&etcd, &kek).await);
    progress(5).await;
    stop.cancel();
    for w in writers {
        w.await.expect("writer");
    }
    let acked = acked.lock().expect("lock").clone();
    // Every acknowledged write, exactly as acknowledged, on every replica.
    for s in servers.iter().flatten() {
        let mut c = s.client().await;
        for (name, want) in &acked {
            let got = get(&mut c, "ns", name)
                .await
                .expect("an acknowledged write");
            assert_eq!(rv(&got), *want, "{name}");
        }
    }
    // Replica 0's watch went on through it all: revisions only go up, and every acknowledged
    // write is among them.
    let mut seen = Vec::new();
    let mut missing: std::collections::BTreeSet<u64> = acked.values().copied().collect();
    while !missing.is_empty() {
        let ev = next_events(&mut watch, 1).await.remove(0);
        missing.remove(&ev.2);
        seen.push(ev.2);
    }
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
}
