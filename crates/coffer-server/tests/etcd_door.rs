//! The etcd door's behaviour beyond what the differential suite compares with etcd: one revision
//! shared with the Secret service, progress replies ordered with the events, progress
//! notifications, many watches per stream, lease expiry with delete events, restarts keeping
//! revisions, history and leases, limits, authentication and audit, metrics, and values sealed
//! at rest.

use std::collections::BTreeMap;
use std::time::Duration;

use coffer_server::etcd::EtcdOptions;
use coffer_server::proto::etcd::etcdserverpb as pb;
use coffer_testkit::auth::{Pki, read_audit, tls_channel, write_file};
use coffer_testkit::etcd::Clients;
use coffer_testkit::server::{TestServer, create, secret, test_options};
use pb::watch_request::RequestUnion;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

fn put_req(key: &str, value: &[u8]) -> pb::PutRequest {
    pb::PutRequest {
        key: key.as_bytes().to_vec(),
        value: value.to_vec(),
        ..Default::default()
    }
}

async fn put(c: &mut Clients, key: &str, value: &[u8]) -> i64 {
    tokio::time::timeout(Duration::from_secs(10), c.kv.put(put_req(key, value)))
        .await
        .expect("a put answered within 10 s")
        .expect("put")
        .into_inner()
        .header
        .expect("header")
        .revision
}

/// A watch stream: send requests, read responses.
struct Stream {
    tx: mpsc::Sender<pb::WatchRequest>,
    rx: tonic::Streaming<pb::WatchResponse>,
}

impl Stream {
    async fn open(c: &mut Clients) -> Self {
        let (tx, rx) = mpsc::channel(16);
        let rx = c
            .watch
            .watch(ReceiverStream::new(rx))
            .await
            .expect("watch")
            .into_inner();
        Self { tx, rx }
    }

    async fn send(&self, r: RequestUnion) {
        self.tx
            .send(pb::WatchRequest {
                request_union: Some(r),
            })
            .await
            .expect("send");
    }

    async fn create(&mut self, create: pb::WatchCreateRequest) -> i64 {
        self.send(RequestUnion::CreateRequest(create)).await;
        let r = self.next().await;
        assert!(r.created, "{r:?}");
        r.watch_id
    }

    async fn next(&mut self) -> pb::WatchResponse {
        tokio::time::timeout(Duration::from_secs(10), self.rx.message())
            .await
            .expect("a response within 10 s")
            .expect("stream ok")
            .expect("stream open")
    }
}

/// Clients whose HTTP/2 windows are the protocol's initial 64 KiB rather than the client's
/// larger defaults: a watch stream that is not read fills them after a few events. Only for
/// the watch stream: its unread events hold the connection's window too, so a unary call on
/// the same connection could wait behind them forever (write through another client).
async fn small_window_clients(server: &TestServer) -> Clients {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.etcd_addr()))
        .expect("endpoint")
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .expect("connect");
    Clients::new(channel)
}

/// (watch id, event type, value, previous value) of an event received.
type Seen = (i64, i32, Vec<u8>, Option<Vec<u8>>);

fn prefix(p: &str) -> pb::WatchCreateRequest {
    let mut end = p.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    pb::WatchCreateRequest {
        key: p.as_bytes().to_vec(),
        range_end: end,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_door_and_the_secret_service_share_one_revision() {
    let server = TestServer::builder().etcd().start().await;
    let mut door = server.etcd().await;
    let mut secrets = server.client().await;
    let r1 = put(&mut door, "/a", b"1").await;
    assert_eq!(r1, 2, "a new store is at revision 1, as etcd's");
    let s = create(&mut secrets, secret("ns", "s1", &[("k", "v")]))
        .await
        .expect("create");
    let rv = s.metadata.as_ref().expect("meta").resource_version;
    assert_eq!(
        rv, 3,
        "the Secret's resource_version follows the door's revision"
    );
    let r3 = put(&mut door, "/a", b"2").await;
    assert_eq!(r3, 4);
    let range = door
        .kv
        .range(pb::RangeRequest {
            key: b"/a".to_vec(),
            revision: 2,
            ..Default::default()
        })
        .await
        .expect("range")
        .into_inner();
    assert_eq!(
        range.kvs[0].value, b"1",
        "history of step 9 serves the door"
    );
    assert_eq!(
        range.header.expect("header").revision,
        4,
        "header.revision is the current revision even for a historical read"
    );
    // Compaction through the door is the store's compaction.
    door.kv
        .compact(pb::CompactionRequest {
            revision: 4,
            physical: false,
        })
        .await
        .expect("compact");
    assert_eq!(server.store.compact_revision(), 4);
    let e = secrets
        .get(coffer_server::proto::v1::GetSecretRequest {
            namespace: "ns".into(),
            name: "s1".into(),
            resource_version: 3,
        })
        .await
        .expect_err("compacted");
    assert_eq!(e.code(), Code::OutOfRange);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_replies_come_after_every_event_at_or_below_them() {
    let server = TestServer::builder().etcd().start().await;
    let mut c = server.etcd().await;
    // A stream without watches is answered too (etcd#17507).
    let mut empty = Stream::open(&mut c).await;
    empty
        .send(RequestUnion::ProgressRequest(pb::WatchProgressRequest {}))
        .await;
    let r = empty.next().await;
    assert_eq!(r.watch_id, -1);
    assert_eq!(r.header.expect("header").revision, 1);

    let mut s = Stream::open(&mut c).await;
    s.create(prefix("/p/")).await;
    let writer = {
        let mut w = server.etcd().await;
        tokio::spawn(async move {
            for i in 0..200 {
                put(&mut w, &format!("/p/{}", i % 7), b"v").await;
            }
        })
    };
    let mut last_event = 0i64;
    let mut last_progress = 0i64;
    let mut progresses = 0;
    let mut events = 0;
    while events < 200 {
        if events % 10 == 0 {
            s.send(RequestUnion::ProgressRequest(pb::WatchProgressRequest {}))
                .await;
        }
        let r = s.next().await;
        let rev = r.header.as_ref().expect("header").revision;
        if r.events.is_empty() {
            // A progress reply: never below an event already sent, never above one to come.
            assert_eq!(r.watch_id, -1);
            assert!(rev >= last_event, "progress {rev} below event {last_event}");
            assert!(rev >= last_progress, "progress went back");
            last_progress = rev;
            progresses += 1;
        } else {
            for e in &r.events {
                let m = e.kv.as_ref().expect("kv").mod_revision;
                assert!(
                    m > last_progress,
                    "event {m} at or below progress {last_progress}"
                );
                assert!(m > last_event, "events in order");
                last_event = m;
                events += 1;
            }
        }
    }
    writer.await.expect("writer");
    assert!(progresses > 0);
    // After the writes: progress catches up with the store.
    s.send(RequestUnion::ProgressRequest(pb::WatchProgressRequest {}))
        .await;
    loop {
        let r = s.next().await;
        if r.events.is_empty() && r.watch_id == -1 {
            assert_eq!(r.header.expect("h").revision, 201);
            break;
        }
    }
}

/// A watch created from an old revision on a key another watch of its stream already follows,
/// while that watch's events wait in the stream's inbox (its client is not reading): history
/// serves the new watch up to the revision it was created at, the feed after, and no event
/// comes twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_from_history_beside_a_live_one_sees_each_event_once() {
    let server = TestServer::builder().etcd().start().await;
    let mut c = server.etcd().await;
    let mut reader = small_window_clients(&server).await;
    let mut s = Stream::open(&mut reader).await;
    let key = || pb::WatchCreateRequest {
        key: b"/d/k".to_vec(),
        ..Default::default()
    };
    let live = s.create(key()).await;
    // More than the HTTP/2 windows and the stream's response queue hold: the stream's task
    // waits with the rest of the live watch's events in its inbox.
    let value = vec![b'v'; 4 << 10];
    let mut revs = Vec::new();
    for _ in 0..120 {
        revs.push(put(&mut c, "/d/k", &value).await);
    }
    s.send(RequestUnion::CreateRequest(pb::WatchCreateRequest {
        start_revision: revs[0],
        ..key()
    }))
    .await;
    let mut seen: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    let mut old = None;
    while old.is_none() {
        let r = s.next().await;
        if r.created {
            old = Some(r.watch_id);
        }
        for e in r.events {
            seen.entry(r.watch_id)
                .or_default()
                .push(e.kv.expect("kv").mod_revision);
        }
    }
    let old = old.expect("created");
    for _ in 0..5 {
        revs.push(put(&mut c, "/d/k", b"after").await);
    }
    while seen.values().map(Vec::len).sum::<usize>() < 2 * revs.len() {
        let r = s.next().await;
        for e in r.events {
            seen.entry(r.watch_id)
                .or_default()
                .push(e.kv.expect("kv").mod_revision);
        }
    }
    assert_eq!(seen[&live], revs);
    assert_eq!(seen[&old], revs);
    s.send(RequestUnion::ProgressRequest(pb::WatchProgressRequest {}))
        .await;
    let r = s.next().await;
    assert!(
        r.events.is_empty() && r.watch_id == -1,
        "nothing more: {r:?}"
    );
}

/// A client that stops reading: its stream's inbox in the door's feed overflows (8 batches
/// here, 1,024 by default), the stream reads what it missed from history, and the client still
/// sees every event once, in order, with its previous value, on both of its watches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_client_stops_reading_catches_up_from_history() {
    let mut options = test_options();
    options.etcd = EtcdOptions {
        watch_inbox_batches: 8,
        ..EtcdOptions::default()
    };
    let server = TestServer::builder().options(options).etcd().start().await;
    let mut c = server.etcd().await;
    let mut reader = small_window_clients(&server).await;
    let mut s = Stream::open(&mut reader).await;
    let all = s
        .create(pb::WatchCreateRequest {
            prev_kv: true,
            ..prefix("/lag/")
        })
        .await;
    let one = s
        .create(pb::WatchCreateRequest {
            key: b"/lag/0".to_vec(),
            ..Default::default()
        })
        .await;
    // Written while nobody reads the stream: 150 revisions of 4 KiB each are more than the
    // HTTP/2 windows, the stream's response queue and its inbox hold.
    const PUTS: usize = 150;
    let value = |i: usize| {
        let mut v = vec![b'x'; 4 << 10];
        v[..8].copy_from_slice(&(i as u64).to_be_bytes());
        v
    };
    let mut last = 0;
    for i in 0..PUTS {
        last = put(&mut c, &format!("/lag/{}", i % 5), &value(i)).await;
    }
    // Per watch: (revision, value, previous value) of each event.
    type Delivered = (i64, Vec<u8>, Option<Vec<u8>>);
    let mut seen: BTreeMap<i64, Vec<Delivered>> = BTreeMap::new();
    while seen.get(&all).map_or(0, Vec::len) < PUTS {
        let r = s.next().await;
        for e in r.events {
            let kv = e.kv.expect("kv");
            seen.entry(r.watch_id).or_default().push((
                kv.mod_revision,
                kv.value,
                e.prev_kv.map(|p| p.value),
            ));
        }
    }
    s.send(RequestUnion::ProgressRequest(pb::WatchProgressRequest {}))
        .await;
    loop {
        let r = s.next().await;
        for e in r.events {
            let kv = e.kv.expect("kv");
            seen.entry(r.watch_id)
                .or_default()
                .push((kv.mod_revision, kv.value, None));
        }
        if r.watch_id == -1 {
            assert_eq!(r.header.expect("header").revision, last);
            break;
        }
    }
    let first = last - PUTS as i64 + 1;
    let on_all = &seen[&all];
    assert_eq!(on_all.len(), PUTS, "every event once on the prefix watch");
    for (i, (rev, v, prev)) in on_all.iter().enumerate() {
        assert_eq!(*rev, first + i as i64, "in order, none missed");
        assert_eq!(*v, value(i));
        assert_eq!(
            *prev,
            i.checked_sub(5).map(value),
            "previous value of event {i}"
        );
    }
    let on_one: Vec<i64> = seen[&one].iter().map(|(r, _, _)| *r).collect();
    let want: Vec<i64> = (0..PUTS).step_by(5).map(|i| first + i as i64).collect();
    assert_eq!(on_one, want, "every event once on the single-key watch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_watches_share_a_stream_with_filters_progress_notify_and_cancel() {
    let mut options = test_options();
    options.etcd = EtcdOptions {
        progress_notify_interval: Duration::from_millis(300),
        ..EtcdOptions::default()
    };
    let server = TestServer::builder().options(options).etcd().start().await;
    let mut c = server.etcd().await;
    let mut s = Stream::open(&mut c).await;
    let mut ids = BTreeMap::new();
    for i in 0..50 {
        let key = format!("/k/{i}");
        let id = s
            .create(pb::WatchCreateRequest {
                key: key.clone().into_bytes(),
                prev_kv: true,
                ..Default::default()
            })
            .await;
        ids.insert(id, key);
    }
    assert_eq!(ids.len(), 50, "distinct ids");
    // A client-chosen id, and the same id again: refused as etcd does.
    assert_eq!(
        s.create(pb::WatchCreateRequest {
            key: b"/chosen".to_vec(),
            watch_id: 1000,
            ..Default::default()
        })
        .await,
        1000
    );
    s.send(RequestUnion::CreateRequest(pb::WatchCreateRequest {
        key: b"/chosen".to_vec(),
        watch_id: 1000,
        ..Default::default()
    }))
    .await;
    let dup = s.next().await;
    assert!(dup.created && dup.canceled, "{dup:?}");
    assert_eq!(
        dup.cancel_reason,
        "mvcc: duplicate watch ID provided on the WatchStream"
    );
    // No deletes for this one.
    let nodel = s
        .create(pb::WatchCreateRequest {
            key: b"/k/3".to_vec(),
            filters: vec![1],
            ..Default::default()
        })
        .await;
    put(&mut c, "/k/3", b"first").await;
    put(&mut c, "/k/3", b"second").await;
    c.kv.delete_range(pb::DeleteRangeRequest {
        key: b"/k/3".to_vec(),
        ..Default::default()
    })
    .await
    .expect("delete");
    let mut seen: Vec<Seen> = Vec::new();
    while seen.len() < 5 {
        let r = s.next().await;
        for e in r.events {
            seen.push((
                r.watch_id,
                e.r#type,
                e.kv.expect("kv").value,
                e.prev_kv.map(|p| p.value),
            ));
        }
    }
    let id3 = *ids.iter().find(|(_, k)| *k == "/k/3").expect("id").0;
    let for3: Vec<_> = seen.iter().filter(|e| e.0 == id3).collect();
    assert_eq!(for3.len(), 3, "put, put, delete: {seen:?}");
    assert_eq!(for3[1].3.as_deref(), Some(&b"first"[..]), "prev_kv");
    assert_eq!(for3[2].1, 1, "a delete");
    assert_eq!(
        for3[2].3.as_deref(),
        Some(&b"second"[..]),
        "delete carries prev_kv"
    );
    assert_eq!(
        seen.iter().filter(|e| e.0 == nodel).count(),
        2,
        "the NODELETE filter drops the delete"
    );
    // Cancel: a canceled response, and no more events for it.
    s.send(RequestUnion::CancelRequest(pb::WatchCancelRequest {
        watch_id: id3,
    }))
    .await;
    let r = s.next().await;
    assert!(r.canceled && r.watch_id == id3, "{r:?}");
    // Progress notifications: an idle watch that asked for them hears the revision.
    let notify = s
        .create(pb::WatchCreateRequest {
            key: b"/quiet".to_vec(),
            progress_notify: true,
            ..Default::default()
        })
        .await;
    put(&mut c, "/k/3", b"third").await;
    loop {
        let r = s.next().await;
        assert_ne!(r.watch_id, id3, "a canceled watch gets nothing");
        if r.watch_id == notify && r.events.is_empty() {
            assert_eq!(r.header.expect("h").revision, 5);
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_deletes_its_keys_with_events() {
    let server = TestServer::builder().etcd().start().await;
    let mut c = server.etcd().await;
    let lease = c
        .lease
        .lease_grant(pb::LeaseGrantRequest { ttl: 1, id: 0 })
        .await
        .expect("grant")
        .into_inner();
    assert_eq!(lease.ttl, 2, "raised to the minimum TTL");
    assert!(lease.id > 0);
    let mut s = Stream::open(&mut c).await;
    s.create(pb::WatchCreateRequest {
        prev_kv: true,
        ..prefix("/l/")
    })
    .await;
    for k in ["/l/a", "/l/b"] {
        c.kv.put(pb::PutRequest {
            lease: lease.id,
            ..put_req(k, b"v")
        })
        .await
        .expect("put");
    }
    let mut deletes = Vec::new();
    while deletes.len() < 2 {
        let r = tokio::time::timeout(Duration::from_secs(10), s.rx.message())
            .await
            .expect("expiry within 10 s")
            .expect("ok")
            .expect("open");
        for e in r.events {
            if e.r#type == 1 {
                deletes.push((e.kv.expect("kv").mod_revision, e.prev_kv.expect("prev").key));
            }
        }
    }
    assert_eq!(deletes[0].0, deletes[1].0, "one revision for the expiry");
    let ttl = c
        .lease
        .lease_time_to_live(pb::LeaseTimeToLiveRequest {
            id: lease.id,
            keys: true,
        })
        .await
        .expect("ttl")
        .into_inner();
    assert_eq!(ttl.ttl, -1, "gone");
    // KeepAlive of a lease that no longer exists: TTL 0.
    let (tx, rx) = mpsc::channel(1);
    tx.send(pb::LeaseKeepAliveRequest { id: lease.id })
        .await
        .expect("send");
    let mut ka = c
        .lease
        .lease_keep_alive(ReceiverStream::new(rx))
        .await
        .expect("keepalive")
        .into_inner();
    let r = ka.message().await.expect("ok").expect("reply");
    assert_eq!((r.id, r.ttl), (lease.id, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_revisions_history_and_leases() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lease_id;
    {
        let server = TestServer::builder().dir(dir.path()).etcd().start().await;
        let mut c = server.etcd().await;
        put(&mut c, "/r/a", b"1").await;
        put(&mut c, "/r/a", b"2").await;
        lease_id = c
            .lease
            .lease_grant(pb::LeaseGrantRequest { ttl: 600, id: 42 })
            .await
            .expect("grant")
            .into_inner()
            .id;
        c.kv.put(pb::PutRequest {
            lease: lease_id,
            ..put_req("/r/leased", b"x")
        })
        .await
        .expect("put");
        server.running.shutdown().await.expect("shutdown");
    }
    let server = TestServer::builder().dir(dir.path()).etcd().start().await;
    let mut c = server.etcd().await;
    let old =
        c.kv.range(pb::RangeRequest {
            key: b"/r/a".to_vec(),
            revision: 2,
            ..Default::default()
        })
        .await
        .expect("range")
        .into_inner();
    assert_eq!(old.kvs[0].value, b"1");
    assert_eq!(old.header.expect("h").revision, 4);
    let ttl = c
        .lease
        .lease_time_to_live(pb::LeaseTimeToLiveRequest {
            id: lease_id,
            keys: true,
        })
        .await
        .expect("ttl")
        .into_inner();
    assert_eq!(ttl.granted_ttl, 600);
    assert!(
        ttl.ttl > 590 && ttl.ttl <= 600,
        "remaining TTL kept: {}",
        ttl.ttl
    );
    assert_eq!(ttl.keys, vec![b"/r/leased".to_vec()]);
    assert_eq!(put(&mut c, "/r/b", b"3").await, 5, "revisions go on");
    // A watch from before the restart replays from history.
    let mut s = Stream::open(&mut c).await;
    s.create(pb::WatchCreateRequest {
        start_revision: 2,
        ..prefix("/r/")
    })
    .await;
    let mut revs = Vec::new();
    while revs.len() < 4 {
        let r = s.next().await;
        revs.extend(
            r.events
                .iter()
                .map(|e| e.kv.as_ref().expect("kv").mod_revision),
        );
    }
    assert_eq!(revs, vec![2, 3, 4, 5]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_etcds_and_values_are_sealed_at_rest() {
    let mut options = test_options();
    options.etcd = EtcdOptions {
        max_response_bytes: 64 * 1024,
        ..EtcdOptions::default()
    };
    let server = TestServer::builder().options(options).etcd().start().await;
    let mut c = server.etcd().await;
    let big = vec![b'z'; 1536 * 1024 + 1];
    let e =
        c.kv.put(put_req("/big", &big))
            .await
            .expect_err("too large");
    assert_eq!(
        (e.code(), e.message()),
        (Code::InvalidArgument, "etcdserver: request is too large")
    );
    let huge = vec![b'z'; 3 << 20];
    let e =
        c.kv.put(put_req("/huge", &huge))
            .await
            .expect_err("over gRPC's limit");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    // A range that would hold more than --etcd-max-response-bytes is refused; pages are not.
    let value = vec![b'q'; 8 * 1024];
    for i in 0..16 {
        put(&mut c, &format!("/many/{i:02}"), &value).await;
    }
    let all = pb::RangeRequest {
        key: b"/many/".to_vec(),
        range_end: b"/many0".to_vec(),
        ..Default::default()
    };
    let e = c.kv.range(all.clone()).await.expect_err("too large");
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(e.message().contains("--etcd-max-response-bytes"), "{e:?}");
    let page =
        c.kv.range(pb::RangeRequest {
            limit: 4,
            ..all.clone()
        })
        .await
        .expect("page")
        .into_inner();
    assert_eq!((page.kvs.len(), page.count, page.more), (4, 16, true));
    let counted =
        c.kv.range(pb::RangeRequest {
            count_only: true,
            ..all
        })
        .await
        .expect("count")
        .into_inner();
    assert_eq!(counted.count, 16);
    // Sealed: no value is in the storage in clear.
    put(&mut c, "/plain", b"the-plaintext-marker").await;
    server.store.sync().await.expect("sync");
    for entry in walk(&server.dir) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        assert!(
            !bytes
                .windows(b"the-plaintext-marker".len())
                .any(|w| w == b"the-plaintext-marker"),
            "plaintext in {}",
            entry.display()
        );
    }
    // Metrics count the door's calls by method.
    let text = server.metrics().render(Some(&server.store));
    assert!(
        text.contains("coffer_grpc_requests_total{method=\"etcd.Put\",code=\"OK\"}"),
        "{text}"
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

const POLICY: &str = r#"
rules:
  - users: [apiserver]
    verbs: [etcd]
    namespaces: ["*"]
  - users: [reader]
    verbs: [get, list, watch]
    namespaces: ["*"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_door_needs_the_etcd_verb_and_is_audited() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new();
    let mut args = pki.write(dir.path());
    args.authz_policy = Some(write_file(dir.path(), "policy.yaml", POLICY));
    args.audit_log = Some(dir.path().join("audit.log"));
    let server = TestServer::builder()
        .dir(dir.path())
        .security(args)
        .listen(vec![coffer_server::server::ListenAddr::Tcp(
            "127.0.0.1:0".into(),
        )])
        .etcd()
        .start()
        .await;
    let addr = server.etcd_addr();
    let clients = |pair: Option<coffer_testkit::auth::Pair>| {
        let ca = pki.ca_pem.clone();
        async move { Clients::new(tls_channel(addr, &ca, pair.as_ref()).await.expect("tls")) }
    };
    let mut apiserver = clients(Some(pki.client("apiserver", &[]))).await;
    put(&mut apiserver, "/registry/x", b"v").await;
    let mut reader = clients(Some(pki.client("reader", &[]))).await;
    let e = reader
        .kv
        .range(pb::RangeRequest {
            key: b"/registry/x".to_vec(),
            ..Default::default()
        })
        .await
        .expect_err("no etcd verb");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let mut anonymous = clients(None).await;
    let e = anonymous
        .kv
        .range(pb::RangeRequest {
            key: b"/registry/x".to_vec(),
            ..Default::default()
        })
        .await
        .expect_err("no credentials");
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let audit = read_audit(&dir.path().join("audit.log"));
    let verbs: Vec<(String, String, String)> = audit
        .iter()
        .map(|r| {
            (
                r["user"].as_str().unwrap_or_default().to_owned(),
                r["verb"].as_str().unwrap_or_default().to_owned(),
                r["code"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert!(
        verbs.contains(&("apiserver".into(), "etcd.Put".into(), "Ok".into())),
        "{verbs:?}"
    );
    assert!(
        verbs.contains(&(
            "reader".into(),
            "etcd.Range".into(),
            "PermissionDenied".into()
        )),
        "{verbs:?}"
    );
    let text = std::fs::read_to_string(dir.path().join("audit.log")).expect("audit");
    assert!(!text.contains("\"v\""), "no value in the audit log");
}

/// A RangeRequest with a field etcd does not know (number 999).
#[derive(Clone, PartialEq, prost::Message)]
struct RangeWithUnknownField {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    #[prost(string, tag = "999")]
    unknown: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_fields_are_ignored_and_garbage_is_refused() {
    let server = TestServer::builder().etcd().start().await;
    let mut c = server.etcd().await;
    put(&mut c, "/u", b"value").await;
    let channel = coffer_testkit::server::tcp_channel(server.etcd_addr()).await;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/etcdserverpb.KV/Range");
    let reply: tonic::Response<pb::RangeResponse> = grpc
        .unary(
            tonic::Request::new(RangeWithUnknownField {
                key: b"/u".to_vec(),
                unknown: "from a newer client".into(),
            }),
            path.clone(),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .expect("unknown fields are ignored");
    assert_eq!(reply.into_inner().kvs[0].value, b"value");
    // Bytes that are not a RangeRequest: INVALID_ARGUMENT, nothing written or lost.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Wrong {
        #[prost(uint64, tag = "1")]
        key: u64,
    }
    grpc.ready().await.expect("ready");
    let e = grpc
        .unary::<Wrong, pb::RangeResponse, _>(
            tonic::Request::new(Wrong { key: 7 }),
            path,
            tonic_prost::ProstCodec::default(),
        )
        .await
        .expect_err("not a RangeRequest");
    assert_ne!(e.code(), Code::Ok);
    assert_eq!(
        put(&mut c, "/u", b"value2").await,
        3,
        "the store is unharmed"
    );
}
