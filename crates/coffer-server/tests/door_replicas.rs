//! The etcd door on etcd storage (issue 16 item 6): two Coffer replicas (real servers,
//! in-process) over one 3-member etcd cluster on loopback, each serving the door. Driven with
//! etcd's generated clients: kube-apiserver's guarded Txn racing on both doors (exactly one
//! wins), a write on one door read at once on the other, a door watch on one replica seeing
//! the other's writes in revision order, leases shared by the replicas (granted on one, keys
//! attached on the other, kept alive through either, revoked or expired by etcd with delete
//! events on both doors), revisions 1:1 with the etcd underneath, no plaintext in `etcdctl get
//! --prefix`, and a Secret written through one door read through the other replica's Secret
//! service.

use std::path::Path;
use std::time::Duration;

use coffer_core::kms::LocalKek;
use coffer_core::store::StoreConfig;
use coffer_core::store::quota::{QuotaLimits, Quotas};
use coffer_server::proto::etcd::etcdserverpb as pb;
use coffer_server::proto::etcd::mvccpb;
use coffer_testkit::etcd::{Clients, EtcdCluster, etcd_store, get_kv, guarded_put};
use coffer_testkit::server::{TestServer, create, get, secret};
use tokio_stream::wrappers::ReceiverStream;

const WAIT: Duration = Duration::from_secs(15);

async fn replica(etcd: &EtcdCluster, kek: &Path) -> TestServer {
    replica_with(etcd, kek, StoreConfig::default()).await
}

async fn replica_with(etcd: &EtcdCluster, kek: &Path, config: StoreConfig) -> TestServer {
    let store = etcd_store(etcd, "/coffer", kek, config).await;
    TestServer::builder().store(store).etcd().start().await
}

async fn put(c: &mut Clients, key: &[u8], value: &[u8], lease: i64) -> i64 {
    c.kv.put(pb::PutRequest {
        key: key.to_vec(),
        value: value.to_vec(),
        lease,
        ..Default::default()
    })
    .await
    .expect("put")
    .into_inner()
    .header
    .expect("header")
    .revision
}

/// A door watch on `[key, end)` from `start` (0: now), with prev_kv.
struct DoorWatch {
    _tx: tokio::sync::mpsc::Sender<pb::WatchRequest>,
    stream: tonic::Streaming<pb::WatchResponse>,
}

impl DoorWatch {
    async fn open(c: &mut Clients, key: &[u8], end: &[u8], start: i64) -> Self {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                pb::WatchCreateRequest {
                    key: key.to_vec(),
                    range_end: end.to_vec(),
                    start_revision: start,
                    prev_kv: true,
                    ..Default::default()
                },
            )),
        })
        .await
        .expect("send");
        let mut stream = c
            .watch
            .watch(ReceiverStream::new(rx))
            .await
            .expect("watch")
            .into_inner();
        let created = tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("created in time")
            .expect("stream ok")
            .expect("stream open");
        assert!(created.created, "{created:?}");
        Self { _tx: tx, stream }
    }

    /// The next `n` events.
    async fn events(&mut self, n: usize) -> Vec<mvccpb::Event> {
        let mut out = Vec::new();
        while out.len() < n {
            let r = tokio::time::timeout(WAIT, self.stream.message())
                .await
                .unwrap_or_else(|_| panic!("events in time; so far {out:?}"))
                .expect("stream ok")
                .expect("stream open");
            assert!(!r.canceled, "{r:?}");
            out.extend(r.events);
        }
        out
    }
}

/// The mod_revision of `key` (a door key of the door's own keyspace) in the etcd underneath.
async fn underlying_mod(etcd: &EtcdCluster, key: &[u8]) -> i64 {
    let mut full = b"/coffer/v/e/".to_vec();
    full.extend_from_slice(key);
    get_kv(&mut etcd.clients(0), &full)
        .await
        .map_or(0, |kv| kv.mod_revision)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_doors_over_one_etcd_race_read_and_watch_as_one_etcd() {
    let etcd = EtcdCluster::start(3).await;
    let kek_dir = tempfile::tempdir().expect("tempdir");
    let kek = kek_dir.path().join("kek.key");
    LocalKek::create_new(&kek).expect("kek");
    let a = replica(&etcd, &kek).await;
    let b = replica(&etcd, &kek).await;
    let (mut da, mut db) = (a.etcd().await, b.etcd().await);

    // A watch on each door, before anything is written.
    let mut wa = DoorWatch::open(&mut da, b"/registry/", b"/registry0", 0).await;
    let mut wb = DoorWatch::open(&mut db, b"/registry/", b"/registry0", 0).await;

    // A write on A is read at once on B, and its revision is the etcd underneath's.
    let canary = b"door-canary-3f9a1c";
    let r1 = put(&mut da, b"/registry/configmaps/ns/one", canary, 0).await;
    let on_b = get_kv(&mut db, b"/registry/configmaps/ns/one")
        .await
        .expect("A's write read on B at once");
    assert_eq!(on_b.value, canary);
    assert_eq!(on_b.mod_revision, r1);
    assert_eq!(
        underlying_mod(&etcd, b"/registry/configmaps/ns/one").await,
        r1,
        "door revision == the underlying etcd's mod_revision"
    );

    // kube-apiserver's create racing on both doors: exactly one wins each time, and the loser
    // is answered with the winner's version (the failure branch's get).
    let mut revisions = vec![r1];
    for i in 0..8 {
        let key = format!("/registry/pods/ns/race-{i}").into_bytes();
        let (mut ca, mut cb) = (da.clone(), db.clone());
        let (k1, k2) = (key.clone(), key.clone());
        let (ra, rb) = tokio::join!(
            async move { guarded_put(&mut ca, &k1, 0, b"from-a").await },
            async move { guarded_put(&mut cb, &k2, 0, b"from-b").await },
        );
        assert!(
            ra.succeeded ^ rb.succeeded,
            "exactly one create wins: a {} b {}",
            ra.succeeded,
            rb.succeeded
        );
        let (winner, loser) = if ra.succeeded { (&ra, &rb) } else { (&rb, &ra) };
        let won_at = winner.header.as_ref().expect("header").revision;
        let seen = match &loser.responses[0].response {
            Some(pb::response_op::Response::ResponseRange(r)) => r.kvs[0].mod_revision,
            other => panic!("the loser's get: {other:?}"),
        };
        assert_eq!(seen, won_at, "the loser sees the winner's version");
        assert_eq!(underlying_mod(&etcd, &key).await, won_at);
        revisions.push(won_at);

        // Then a guarded update from the revision both read: exactly one wins again.
        let (mut ca, mut cb) = (da.clone(), db.clone());
        let (k1, k2) = (key.clone(), key.clone());
        let (ua, ub) = tokio::join!(
            async move { guarded_put(&mut ca, &k1, won_at, b"update-a").await },
            async move { guarded_put(&mut cb, &k2, won_at, b"update-b").await },
        );
        assert!(ua.succeeded ^ ub.succeeded, "exactly one update wins");
        let winner = if ua.succeeded { &ua } else { &ub };
        revisions.push(winner.header.as_ref().expect("header").revision);
    }
    // Writes alternating between the doors.
    for i in 0..6 {
        let c = if i % 2 == 0 { &mut da } else { &mut db };
        revisions.push(put(c, format!("/registry/leases/ns/l{i}").as_bytes(), b"x", 0).await);
    }

    // Both watches saw every write of both replicas, in revision order, at those revisions.
    let want = revisions.len();
    for (name, w) in [("A", &mut wa), ("B", &mut wb)] {
        let got: Vec<i64> = w
            .events(want)
            .await
            .iter()
            .map(|e| e.kv.as_ref().expect("kv").mod_revision)
            .collect();
        let mut sorted = revisions.clone();
        sorted.sort_unstable();
        assert_eq!(
            got, sorted,
            "the watch on {name}: every write, in revision order"
        );
    }

    // Nothing under the prefix in etcd holds a door value in clear.
    let dump = etcd.etcdctl_get_prefix("/coffer");
    for needle in [
        canary.to_vec(),
        // base64 of the canary's first 18 bytes (no padding to align).
        b"ZG9vci1jYW5hcnktM2Y5".to_vec(),
        hex(canary).into_bytes(),
        b"from-a".to_vec(),
        b"update-b".to_vec(),
    ] {
        assert!(
            !contains(&dump, &needle),
            "etcdctl get --prefix shows {:?}",
            String::from_utf8_lossy(&needle)
        );
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_through_one_door_is_read_through_the_other_replicas_secret_service() {
    let etcd = EtcdCluster::start(1).await;
    let kek_dir = tempfile::tempdir().expect("tempdir");
    let kek = kek_dir.path().join("kek.key");
    LocalKek::create_new(&kek).expect("kek");
    // At most 2 Secrets per namespace, on both replicas: the door's writes keep the shared
    // counter (never refused: the API server admitted them).
    let quotas = || StoreConfig {
        quotas: Quotas::unlimited().with_default(QuotaLimits {
            count: Some(2),
            bytes: None,
        }),
        ..StoreConfig::default()
    };
    let a = replica_with(&etcd, &kek, quotas()).await;
    let b = replica_with(&etcd, &kek, quotas()).await;
    let (mut da, mut ca, mut cb) = (a.etcd().await, a.client().await, b.client().await);
    // The Kubernetes bytes of a Secret, as the door shows one the Secret service wrote.
    create(&mut ca, secret("ns", "model", &[("password", "s3cr3t-Zq")]))
        .await
        .expect("create");
    let value = get_kv(&mut da, b"/registry/secrets/ns/model")
        .await
        .expect("the Secret through the door")
        .value;
    // The API server's create of another Secret with those bytes, through A's door: the name
    // inside is "model", so it is written back where it belongs after a delete.
    da.kv
        .delete_range(pb::DeleteRangeRequest {
            key: b"/registry/secrets/ns/model".to_vec(),
            ..Default::default()
        })
        .await
        .expect("delete");
    let created = guarded_put(&mut da, b"/registry/secrets/ns/model", 0, &value).await;
    assert!(created.succeeded);
    let rev = created.header.expect("header").revision;
    let on_b = get(&mut cb, "ns", "model").await.expect("read on B");
    let meta = on_b.metadata.as_ref().expect("metadata");
    assert_eq!(
        meta.resource_version, rev as u64,
        "revision 1:1 with the door's"
    );
    assert_eq!(
        on_b.data.get("password").map(Vec::as_slice),
        Some(&b"s3cr3t-Zq"[..])
    );
    let dump = etcd.etcdctl_get_prefix("/coffer");
    assert!(!contains(&dump, b"s3cr3t-Zq"));

    // The door's delete and create counted: one Secret, so one more fits on B, then none.
    create(&mut cb, secret("ns", "second", &[("k", "v")]))
        .await
        .expect("the second Secret fits");
    let refused = create(&mut cb, secret("ns", "third", &[("k", "v")]))
        .await
        .expect_err("over the quota");
    assert!(refused.message().contains("quota"), "{refused:?}");
    // Through the door the API server's writes are not refused, and still counted.
    let third = guarded_put(&mut da, b"/registry/secrets/ns/model", 0, &value).await;
    assert!(!third.succeeded, "model exists");
    da.kv
        .delete_range(pb::DeleteRangeRequest {
            key: b"/registry/secrets/ns/second".to_vec(),
            ..Default::default()
        })
        .await
        .expect("delete through the door");
    create(&mut ca, secret("ns", "third", &[("k", "v")]))
        .await
        .expect("room again after the door's delete");

    // A value the API server encrypted itself, through A's door, is counted on B (its record
    // opens at its etcd version there too).
    let enc = guarded_put(
        &mut da,
        b"/registry/secrets/other/enc",
        0,
        b"k8s:enc:aescbc:v1:key1:opaque",
    )
    .await;
    assert!(enc.succeeded);
    let hidden = get(&mut cb, "other", "enc")
        .await
        .expect_err("door-only on B");
    assert_eq!(hidden.code(), tonic::Code::NotFound, "{hidden:?}");
    assert_eq!(
        b.store
            .count_apiserver_encrypted()
            .await
            .expect("count on B"),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_are_shared_by_the_replicas_doors() {
    let etcd = EtcdCluster::start(1).await;
    let kek_dir = tempfile::tempdir().expect("tempdir");
    let kek = kek_dir.path().join("kek.key");
    LocalKek::create_new(&kek).expect("kek");
    let a = replica(&etcd, &kek).await;
    let b = replica(&etcd, &kek).await;
    let (mut da, mut db) = (a.etcd().await, b.etcd().await);
    let mut wa = DoorWatch::open(&mut da, b"/leased/", b"/leased0", 0).await;
    let mut wb = DoorWatch::open(&mut db, b"/leased/", b"/leased0", 0).await;

    // Granted on A (its id kept), a key attached on B.
    let granted = da
        .lease
        .lease_grant(pb::LeaseGrantRequest { ttl: 60, id: 4242 })
        .await
        .expect("grant")
        .into_inner();
    assert_eq!(granted.id, 4242);
    let put_rev = put(&mut db, b"/leased/k", b"v", 4242).await;
    assert_eq!(
        get_kv(&mut da, b"/leased/k").await.expect("on A").lease,
        4242
    );
    let ttl = db
        .lease
        .lease_time_to_live(pb::LeaseTimeToLiveRequest {
            id: 4242,
            keys: true,
        })
        .await
        .expect("ttl")
        .into_inner();
    assert_eq!(ttl.granted_ttl, 60);
    assert_eq!(ttl.keys, vec![b"/leased/k".to_vec()]);
    // Listed on both (and no replica's own lease).
    for c in [&mut da, &mut db] {
        let ids: Vec<i64> = c
            .lease
            .lease_leases(pb::LeaseLeasesRequest {})
            .await
            .expect("leases")
            .into_inner()
            .leases
            .iter()
            .map(|l| l.id)
            .collect();
        assert_eq!(ids, vec![4242]);
    }
    // The replicas' own leases (their election) are etcd's too, but not the door's to revoke.
    let own: Vec<i64> = etcd
        .clients(0)
        .lease
        .lease_leases(pb::LeaseLeasesRequest {})
        .await
        .expect("etcd's leases")
        .into_inner()
        .leases
        .iter()
        .map(|l| l.id)
        .filter(|id| *id != 4242)
        .collect();
    assert_eq!(own.len(), 2, "one election lease per replica: {own:?}");
    let refused = da
        .lease
        .lease_revoke(pb::LeaseRevokeRequest { id: own[0] })
        .await
        .expect_err("a replica's own lease");
    assert_eq!(refused.code(), tonic::Code::NotFound, "{refused:?}");
    // Kept alive through either.
    for c in [&mut da, &mut db] {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(pb::LeaseKeepAliveRequest { id: 4242 })
            .await
            .expect("send");
        let mut s = c
            .lease
            .lease_keep_alive(ReceiverStream::new(rx))
            .await
            .expect("keep-alive")
            .into_inner();
        let r = s.message().await.expect("ok").expect("an answer");
        assert_eq!((r.id, r.ttl), (4242, 60));
    }
    // Revoked on A: etcd deletes the key; both doors' watches see the delete.
    let revoked = da
        .lease
        .lease_revoke(pb::LeaseRevokeRequest { id: 4242 })
        .await
        .expect("revoke")
        .into_inner()
        .header
        .expect("header")
        .revision;
    for w in [&mut wa, &mut wb] {
        let evs = w.events(2).await;
        assert_eq!(evs[0].kv.as_ref().expect("kv").mod_revision, put_rev);
        assert_eq!(evs[1].r#type, mvccpb::event::EventType::Delete as i32);
        let kv = evs[1].kv.as_ref().expect("kv");
        assert_eq!(
            (kv.key.as_slice(), kv.mod_revision),
            (&b"/leased/k"[..], revoked)
        );
    }
    assert!(get_kv(&mut db, b"/leased/k").await.is_none());
    let gone = db
        .lease
        .lease_revoke(pb::LeaseRevokeRequest { id: 4242 })
        .await
        .expect_err("revoked already");
    assert_eq!(gone.code(), tonic::Code::NotFound);
    assert!(
        gone.message().contains("requested lease not found"),
        "{gone:?}"
    );

    // Expiry by etcd: a short lease granted on B, a key attached on A, never kept alive.
    let short = db
        .lease
        .lease_grant(pb::LeaseGrantRequest { ttl: 2, id: 0 })
        .await
        .expect("grant")
        .into_inner()
        .id;
    put(&mut da, b"/leased/short", b"v", short).await;
    for w in [&mut wa, &mut wb] {
        let evs = w.events(2).await;
        assert_eq!(evs[0].r#type, mvccpb::event::EventType::Put as i32);
        assert_eq!(evs[1].r#type, mvccpb::event::EventType::Delete as i32);
        assert_eq!(evs[1].kv.as_ref().expect("kv").key, b"/leased/short");
    }
    // A put with a lease that does not exist is refused as etcd refuses it.
    let e = da
        .kv
        .put(pb::PutRequest {
            key: b"/leased/none".to_vec(),
            value: b"v".to_vec(),
            lease: short,
            ..Default::default()
        })
        .await
        .expect_err("expired lease");
    assert!(e.message().contains("requested lease not found"), "{e:?}");
}

/// A put whose lease etcd no longer has when the write reaches it (expired or revoked by
/// another replica after the door checked it) is refused as etcd refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_gone_before_the_commit_is_lease_not_found() {
    use coffer_core::store::StoreError;
    use coffer_core::store::lease::LeaseError;
    use coffer_core::store::raw::RawWrite;
    let etcd = EtcdCluster::start(1).await;
    let kek_dir = tempfile::tempdir().expect("tempdir");
    let kek = kek_dir.path().join("kek.key");
    LocalKek::create_new(&kek).expect("kek");
    let store = etcd_store(&etcd, "/coffer", &kek, StoreConfig::default()).await;
    store.raw_barrier().await.expect("barrier");
    let writer = store.raw_writer().await;
    let e = writer
        .commit(
            vec![RawWrite::Put {
                key: b"/gone".to_vec(),
                value: zeroize::Zeroizing::new(b"v".to_vec()),
                lease: 987_654,
            }],
            Vec::new(),
        )
        .await
        .expect_err("no such lease in etcd");
    assert!(
        matches!(e, StoreError::Lease(LeaseError::NotFound)),
        "{e:?}"
    );
}
