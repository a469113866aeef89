//! `EtcdMvcc` against real etcd (Debian's etcd-server on loopback): revisions are etcd's,
//! conditions are compares, history and changes come from etcd's MVCC, and two replicas over
//! one etcd see each other's commits once their read barrier returns.

use coffer_core::storage::StorageError;
use coffer_core::storage::mvcc::{Condition, Mvcc, Txn, VersionKind, Write};
use coffer_etcd::{EtcdClient, EtcdMvcc, StorageTls, StorageUrl};
use coffer_testkit::etcd::EtcdCluster;

async fn open(cluster: &EtcdCluster, prefix: &str) -> EtcdMvcc {
    let url: StorageUrl = cluster.storage_url(prefix).parse().expect("url");
    let client = EtcdClient::new(&url, &StorageTls::default()).expect("client");
    EtcdMvcc::open(client).await.expect("open")
}

fn put(m: &EtcdMvcc, key: &str, value: &str, expect: u64) -> Result<u64, StorageError> {
    m.commit(Txn {
        conditions: vec![Condition {
            key: key.as_bytes().to_vec(),
            mod_revision: expect,
        }],
        writes: vec![Write::Put {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            lease: 0,
        }],
        meta: Vec::new(),
    })
    .map(|c| c.revision)
}

fn del(m: &EtcdMvcc, key: &str, expect: u64) -> Result<u64, StorageError> {
    m.commit(Txn {
        conditions: vec![Condition {
            key: key.as_bytes().to_vec(),
            mod_revision: expect,
        }],
        writes: vec![Write::Delete {
            key: key.as_bytes().to_vec(),
        }],
        meta: Vec::new(),
    })
    .map(|c| c.revision)
}

fn value(m: &EtcdMvcc, key: &str, at: Option<u64>) -> Option<String> {
    m.get(key.as_bytes(), at)
        .expect("get")
        .map(|v| String::from_utf8(v.value).expect("utf8"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revisions_conditions_history_and_changes_are_etcds() {
    let cluster = EtcdCluster::start(1).await;
    let m = open(&cluster, "/t1").await;
    let r1 = put(&m, "s/ns/a", "one", 0).expect("create");
    // An absent-key condition on an existing key fails, naming both revisions.
    match put(&m, "s/ns/a", "again", 0) {
        Err(StorageError::ConditionFailed {
            expected, current, ..
        }) => assert_eq!((expected, current), (0, r1)),
        other => panic!("expected a failed condition, got {other:?}"),
    }
    let r2 = put(&m, "s/ns/a", "two", r1).expect("update");
    assert!(r2 > r1);
    assert!(matches!(
        put(&m, "s/ns/a", "stale", r1),
        Err(StorageError::ConditionFailed { .. })
    ));
    let r3 = del(&m, "s/ns/a", r2).expect("delete");
    m.read_barrier().await.expect("barrier");
    assert!(m.revision() >= r3, "the election may have written since");
    assert_eq!(value(&m, "s/ns/a", None), None);
    assert_eq!(value(&m, "s/ns/a", Some(r1)).as_deref(), Some("one"));
    assert_eq!(value(&m, "s/ns/a", Some(r2)).as_deref(), Some("two"));

    let h = m.history(b"s/ns/a", 10).expect("history");
    let revs: Vec<(u64, VersionKind)> = h.iter().map(|v| (v.mod_revision, v.kind)).collect();
    assert_eq!(
        revs,
        [
            (r3, VersionKind::Delete),
            (r2, VersionKind::Put),
            (r1, VersionKind::Put)
        ]
    );
    assert!(h[1].written_ms > 0, "write times are kept: {h:?}");
    let changes = m.changes(r1, 100).expect("changes");
    let revs: Vec<u64> = changes.iter().map(|c| c.kv.mod_revision).collect();
    assert_eq!(revs, [r2, r3]);
    assert_eq!(
        changes[1].prev.as_ref().map(|p| p.value.clone()),
        Some(b"two".to_vec()),
        "a delete carries the state it removed"
    );

    // Compaction is etcd's: below it reads are refused, and another replica learns it.
    m.compact(r2).await.expect("compact");
    assert_eq!(m.compact_revision(), r2);
    assert!(matches!(
        m.get(b"s/ns/a", Some(r1)),
        Err(StorageError::Compacted { .. })
    ));
    let other = open(&cluster, "/t1").await;
    assert_eq!(other.compact_revision(), r2);
    assert!(matches!(
        other.changes(r1 - 1, 10),
        Err(StorageError::Compacted { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_revision_and_feed() {
    let cluster = EtcdCluster::start(3).await;
    let a = open(&cluster, "/t2").await;
    let b = open(&cluster, "/t2").await;
    let mut feed = b.take_feed().expect("feed");
    assert!(b.take_feed().is_none(), "the feed is taken once");
    let mut written = Vec::new();
    for i in 0..10 {
        let (writer, reader) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let key = format!("s/ns/k{i}");
        let rev = put(writer, &key, &format!("v{i}"), 0).expect("put");
        // No stale read: once the barrier returns, the other replica has the write.
        reader.read_barrier().await.expect("barrier");
        assert_eq!(
            value(reader, &key, None).as_deref(),
            Some(format!("v{i}").as_str())
        );
        assert_eq!(
            reader
                .get(key.as_bytes(), None)
                .expect("get")
                .map(|v| v.mod_revision),
            Some(rev)
        );
        written.push(rev);
    }
    // Both replicas' writes, in revision order, on b's feed.
    let mut seen = Vec::new();
    while seen.len() < written.len() {
        let c = tokio::time::timeout(std::time::Duration::from_secs(10), feed.recv())
            .await
            .expect("feed in time")
            .expect("feed open");
        seen.push(c.kv.mod_revision);
    }
    assert_eq!(seen, written);
    // Two replicas racing on one precondition: exactly one wins.
    let base = *written.last().expect("a write");
    let key = "s/ns/k9";
    let (ra, rb) = tokio::join!(
        tokio::task::spawn_blocking({
            let a = std::sync::Arc::new(a);
            move || put(&a, key, "from-a", base)
        }),
        tokio::task::spawn_blocking({
            let b = std::sync::Arc::new(b);
            move || put(&b, key, "from-b", base)
        })
    );
    let wins = [ra.expect("join"), rb.expect("join")]
        .iter()
        .filter(|r| r.is_ok())
        .count();
    assert_eq!(wins, 1);
}

#[tokio::test(flavor = "current_thread")]
async fn a_single_threaded_runtime_works_too() {
    let cluster = EtcdCluster::start(1).await;
    let m = open(&cluster, "/t3").await;
    let r = put(&m, "s/ns/x", "v", 0).expect("put");
    m.read_barrier().await.expect("barrier");
    assert!(m.revision() >= r, "the election may have written since");
    let seeds = m.backend();
    let mut batch = coffer_core::storage::Batch::new();
    batch.put(b"k/seed/1".to_vec(), b"wrapped".to_vec());
    seeds.apply(batch).expect("apply");
    assert_eq!(
        seeds.get(b"k/seed/1").expect("get"),
        Some(b"wrapped".to_vec())
    );
    assert_eq!(seeds.scan(b"k/seed/", None, 10).expect("scan").len(), 1);
    assert!(
        seeds
            .put_if_absent(b"k/seed/1", b"other".to_vec())
            .expect("cas")
            .is_none()
    );
    assert!(
        seeds
            .put_if_absent(b"k/seed/2", b"new".to_vec())
            .expect("cas")
            .is_some()
    );
    assert_eq!(
        seeds.get(b"k/seed/1").expect("get"),
        Some(b"wrapped".to_vec())
    );
    // A barrier returns even when the newest revision is outside the watched keys: the
    // store's unversioned keys, then a key of someone else's.
    m.read_barrier()
        .await
        .expect("barrier after unversioned writes");
    let mut foreign = cluster.clients(0);
    let rev = foreign
        .kv
        .put(coffer_testkit::etcd::pb::PutRequest {
            key: b"/elsewhere/x".to_vec(),
            value: b"y".to_vec(),
            ..Default::default()
        })
        .await
        .expect("foreign put")
        .into_inner()
        .header
        .expect("header")
        .revision as u64;
    m.read_barrier()
        .await
        .expect("barrier after a foreign write");
    assert!(m.revision() >= rev);
    assert_eq!(
        m.get(b"s/ns/x", None).expect("get").map(|v| v.mod_revision),
        Some(r)
    );
}

/// Waits until exactly one of `ms` holds the office, and it stays so for a while; its index.
async fn one_leader(ms: &[Option<EtcdMvcc>]) -> usize {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut stable = 0;
    let mut last = None;
    loop {
        let leaders: Vec<usize> = ms
            .iter()
            .enumerate()
            .filter(|(_, m)| m.as_ref().is_some_and(|m| m.is_leader()))
            .map(|(i, _)| i)
            .collect();
        if leaders.len() == 1 && last == Some(leaders[0]) {
            stable += 1;
            if stable == 10 {
                return leaders[0];
            }
        } else {
            stable = 0;
        }
        last = leaders.first().copied().filter(|_| leaders.len() == 1);
        assert!(
            std::time::Instant::now() < deadline,
            "no single leader: {leaders:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_is_elected_and_another_takes_over_when_it_dies() {
    let cluster = EtcdCluster::start(1).await;
    let url: StorageUrl = cluster.storage_url("/t4").parse().expect("url");
    let mut ms = Vec::new();
    for _ in 0..3 {
        let client = EtcdClient::new(&url, &StorageTls::default()).expect("client");
        ms.push(Some(
            EtcdMvcc::open_with_election_ttl(client, std::time::Duration::from_secs(2))
                .await
                .expect("open"),
        ));
    }
    let first = one_leader(&ms).await;
    // The holder dies (its keep-alives stop): another replica takes the office.
    ms[first] = None;
    let second = one_leader(&ms).await;
    assert_ne!(first, second);
}

/// Concurrent read barriers share count-only Ranges (one per round, not one per read), and
/// every one of them still sees a write another replica committed before it began.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_read_barriers_share_ranges_and_stay_linearizable() {
    let cluster = EtcdCluster::start(1).await;
    let writer = std::sync::Arc::new(open(&cluster, "/t-barrier").await);
    let reader = std::sync::Arc::new(open(&cluster, "/t-barrier").await);
    let mut reads = 0u64;
    for round in 0..5 {
        let key = format!("s/ns/b{round}");
        let rev = {
            let (w, k) = (writer.clone(), key.clone());
            tokio::task::spawn_blocking(move || put(&w, &k, "v", 0))
                .await
                .expect("join")
                .expect("put")
        };
        // 64 reads begun after the write was acknowledged: each sees it.
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..64 {
            let (r, k) = (reader.clone(), key.clone());
            tasks.spawn(async move {
                r.read_barrier().await.expect("barrier");
                r.get(k.as_bytes(), None)
                    .expect("get")
                    .map(|v| v.mod_revision)
            });
        }
        while let Some(seen) = tasks.join_next().await {
            assert_eq!(seen.expect("join"), Some(rev), "a read missed {key}");
            reads += 1;
        }
    }
    let ranges = reader.barrier_rounds();
    assert!(ranges >= 5, "each round asks etcd at least once: {ranges}");
    assert!(
        ranges < reads / 2,
        "{reads} concurrent barriers sent {ranges} Ranges: they are not shared"
    );
}

/// With no progress notifications (etcd's default interval is 10 minutes), a read barrier
/// still returns when etcd's newest revisions are someone else's keys: the quiet check proves
/// nothing under the prefix changed and moves the cache on; and it does not when something
/// under the prefix did change (the cache then waits for that event).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_barrier_after_foreign_writes_needs_no_progress_notification() {
    let cluster = EtcdCluster::start_without_progress_notify(1).await;
    let m = std::sync::Arc::new(open(&cluster, "/t-quiet").await);
    let mut foreign = cluster.clients(0);
    let mut foreign_put = async |key: &str| {
        foreign
            .kv
            .put(coffer_testkit::etcd::pb::PutRequest {
                key: key.as_bytes().to_vec(),
                value: b"y".to_vec(),
                ..Default::default()
            })
            .await
            .expect("foreign put")
            .into_inner()
            .header
            .expect("header")
            .revision as u64
    };
    let r = {
        let m = m.clone();
        tokio::task::spawn_blocking(move || put(&m, "s/ns/x", "v", 0))
            .await
            .expect("join")
            .expect("put")
    };
    for round in 0..3 {
        let mut newest = 0;
        for i in 0..20 {
            newest = foreign_put(&format!("/elsewhere/{round}/{i}")).await;
        }
        let checks = m.barrier_quiet_checks();
        m.read_barrier()
            .await
            .expect("barrier after foreign writes, without progress notifications");
        assert!(m.revision() >= newest, "round {round}");
        assert!(
            m.barrier_quiet_checks() > checks,
            "proved quiet, round {round}"
        );
    }
    assert_eq!(
        m.get(b"s/ns/x", None).expect("get").map(|v| v.mod_revision),
        Some(r)
    );
}

/// The etcd door's seam (issue 16 item 6): a range guard holds while no key in its range was
/// written after its revision, and fails the whole commit otherwise (a key added to the range,
/// or one in it changed); the keys outside the range do not matter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_guard_fails_the_commit_when_its_range_was_written_since() {
    use coffer_core::storage::mvcc::RangeGuard;
    let cluster = EtcdCluster::start(1).await;
    let m = open(&cluster, "/tg").await;
    put(&m, "e/r/a", "1", 0).expect("a");
    m.read_barrier().await.expect("barrier");
    let read_at = m.revision();
    let guard = |start: &str, end: &str| RangeGuard {
        start: start.as_bytes().to_vec(),
        end: Some(end.as_bytes().to_vec()),
        not_after: read_at,
    };
    let marker = |value: &str| Txn {
        conditions: Vec::new(),
        writes: vec![Write::Put {
            key: b"e/marker".to_vec(),
            value: value.as_bytes().to_vec(),
            lease: 0,
        }],
        meta: Vec::new(),
    };
    m.commit_guarded(marker("unchanged"), &[guard("e/r/", "e/r0")])
        .expect("nothing written in the range since");
    // A key added to the range after the read: the guard fails, nothing is written.
    put(&m, "e/r/b", "2", 0).expect("b");
    let marker_at = |m: &EtcdMvcc| {
        m.get(b"e/marker", None)
            .expect("get")
            .map(|v| (v.mod_revision, v.version))
    };
    let before = marker_at(&m);
    assert!(matches!(
        m.commit_guarded(marker("stale"), &[guard("e/r/", "e/r0")]),
        Err(StorageError::ConditionFailed { .. })
    ));
    m.read_barrier().await.expect("barrier");
    assert_eq!(value(&m, "e/marker", None).as_deref(), Some("unchanged"));
    // (The store's revision itself may move: the replica's election writes its own keys.)
    assert_eq!(marker_at(&m), before, "a failed guard writes nothing");
    // A guard on another range still holds (and `None` ends at the versioned keys' end).
    m.commit_guarded(marker("other"), &[guard("e/s/", "e/s0")])
        .expect("another range");
    let open_ended = RangeGuard {
        start: b"e/r/b".to_vec(),
        end: None,
        not_after: read_at,
    };
    assert!(
        matches!(
            m.commit_guarded(marker("open"), &[open_ended]),
            Err(StorageError::ConditionFailed { .. })
        ),
        "e/r/b was written after the read, and is in [e/r/b, end)"
    );
}
