//! Three Coffer stores (replicas) over one 3-member etcd cluster on loopback, through the
//! engine's API: one revision for all, no stale read, one watch sees every replica's writes in
//! revision order, a precondition race has one winner, concurrent first writes agree on one
//! seed, and etcd holds no plaintext.

use std::sync::Arc;
use std::time::Duration;

use coffer_core::kms::{Kms, LocalKek};
use coffer_core::model::Secret;
use coffer_core::store::{EventKind, Store, StoreConfig, StoreError};
use coffer_etcd::{EtcdClient, EtcdMvcc, StorageTls, StorageUrl};
use coffer_testkit::etcd::EtcdCluster;
use tokio_util::sync::CancellationToken;

struct Replicas {
    stores: Vec<Arc<Store>>,
    stop: CancellationToken,
    _kek_dir: tempfile::TempDir,
}

impl Drop for Replicas {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// `n` stores over `cluster` under `prefix`, sharing one key file (the shared-KEK rule).
async fn replicas(cluster: &EtcdCluster, prefix: &str, n: usize) -> Replicas {
    replicas_with(cluster, prefix, n, StoreConfig::default()).await
}

async fn replicas_with(
    cluster: &EtcdCluster,
    prefix: &str,
    n: usize,
    config: StoreConfig,
) -> Replicas {
    let kek_dir = tempfile::tempdir().expect("tempdir");
    let kek_path = kek_dir.path().join("kek.key");
    LocalKek::create_new(&kek_path).expect("kek");
    let url: StorageUrl = cluster.storage_url(prefix).parse().expect("url");
    let stop = CancellationToken::new();
    let mut stores = Vec::new();
    for _ in 0..n {
        let client = EtcdClient::new(&url, &StorageTls::default()).expect("client");
        let mvcc = Arc::new(EtcdMvcc::open(client).await.expect("open etcd"));
        let kms: Arc<dyn Kms> = Arc::new(LocalKek::open_existing(&kek_path).expect("kek"));
        let store = Arc::new(
            Store::open_mvcc(mvcc, kms, config.clone())
                .await
                .expect("open store"),
        );
        let (s, stop) = (store.clone(), stop.clone());
        tokio::spawn(async move { s.run_feed(stop).await });
        stores.push(store);
    }
    Replicas {
        stores,
        stop,
        _kek_dir: kek_dir,
    }
}

fn secret(name: &str, value: &str) -> Secret {
    Secret::new("ns", name).with_data("k", value)
}

fn value(s: &Secret) -> String {
    String::from_utf8_lossy(s.data["k"].expose()).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_reads_every_write_at_once_and_watches_them_in_order() {
    let cluster = EtcdCluster::start(3).await;
    let r = replicas(&cluster, "/coffer", 3).await;
    let mut events = r.stores[0].subscribe();
    let mut revisions = Vec::new();
    for i in 0..9 {
        let writer = &r.stores[i % 3];
        let created = writer
            .create(secret(&format!("s{i}"), &format!("v{i}")))
            .await
            .expect("create");
        // No stale read on any replica, and the same resource_version everywhere.
        for reader in &r.stores {
            let got = reader.get("ns", &format!("s{i}")).await.expect("get");
            assert_eq!(value(&got), format!("v{i}"));
            assert_eq!(
                got.metadata.resource_version,
                created.metadata.resource_version
            );
        }
        revisions.push(created.metadata.resource_version);
    }
    assert!(revisions.windows(2).all(|w| w[0] < w[1]), "{revisions:?}");
    // An update on one replica, a delete on another.
    let mut s0 = r.stores[1].get("ns", "s0").await.expect("get");
    s0.data.insert("k".into(), "changed".into());
    let updated = r.stores[1].update(s0).await.expect("update");
    let deleted = r.stores[2].delete("ns", "s1", 0).await.expect("delete");
    revisions.push(updated.metadata.resource_version);
    revisions.push(deleted.metadata.resource_version);
    // Replica 0's watch saw every replica's writes, in revision order, decrypted.
    let mut seen = Vec::new();
    while seen.len() < revisions.len() {
        let ev = tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .expect("an event in time")
            .expect("event");
        seen.push((ev.revision, ev.kind));
    }
    let kinds: Vec<EventKind> = seen.iter().map(|(_, k)| *k).collect();
    assert_eq!(seen.iter().map(|(r, _)| *r).collect::<Vec<_>>(), revisions);
    assert_eq!(kinds[..9], [EventKind::Added; 9]);
    assert_eq!(kinds[9..], [EventKind::Modified, EventKind::Deleted]);
    // A list on any replica shows the same thing.
    for reader in &r.stores {
        let list = reader
            .list(&coffer_core::store::ListOptions {
                namespace: "ns".into(),
                ..Default::default()
            })
            .await
            .expect("list");
        assert_eq!(list.items.len(), 8);
    }
    // History is etcd's: every replica sees s0's two versions.
    let h = r.stores[2].history("ns", "s0", 0).await.expect("history");
    assert_eq!(
        h.versions.iter().map(|v| v.revision).collect::<Vec<_>>(),
        [updated.metadata.resource_version, revisions[0]]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_precondition_race_has_exactly_one_winner() {
    let cluster = EtcdCluster::start(3).await;
    let r = replicas(&cluster, "/coffer", 3).await;
    let base = r.stores[0]
        .create(secret("race", "0"))
        .await
        .expect("create");
    for round in 0..5 {
        let current = r.stores[0].get("ns", "race").await.expect("get");
        let tries = r.stores.iter().enumerate().map(|(i, s)| {
            let mut mine = current.duplicate();
            mine.data
                .insert("k".into(), format!("{round}-{i}").as_str().into());
            let s = s.clone();
            tokio::spawn(async move { s.update(mine).await })
        });
        let results = futures::future::join_all(tries).await;
        let mut wins = 0;
        for res in results {
            match res.expect("join") {
                Ok(_) => wins += 1,
                Err(StoreError::Conflict { .. }) => {}
                Err(e) => panic!("unexpected error: {e}"),
            }
        }
        assert_eq!(wins, 1, "round {round}");
    }
    // A create race too: one ALREADY_EXISTS per loser.
    let tries = r.stores.iter().map(|s| {
        let s = s.clone();
        tokio::spawn(async move { s.create(secret("once", "x")).await })
    });
    let results = futures::future::join_all(tries).await;
    let created = results
        .into_iter()
        .filter(|r| matches!(r, Ok(Ok(_))))
        .count();
    assert_eq!(created, 1);
    assert!(base.metadata.resource_version > 0);
}

/// One replica's concurrent writes (many callers at once, each a Txn with the state digest)
/// stay exact: among concurrent conditional updates of one Secret exactly
/// one wins, concurrent unconditional updates are all applied (each a version of its own), and
/// concurrent creates of one name have one winner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replicas_concurrent_writes_stay_exact() {
    let cluster = EtcdCluster::start(1).await;
    let r = replicas(&cluster, "/coffer", 1).await;
    let store = r.stores[0].clone();
    let base = store.create(secret("hot", "0")).await.expect("create");
    let conditional = (0..16).map(|i| {
        let mut mine = base.duplicate();
        mine.data
            .insert("k".into(), format!("c{i}").as_str().into());
        let s = store.clone();
        tokio::spawn(async move { s.update(mine).await })
    });
    let mut wins = 0;
    for res in futures::future::join_all(conditional).await {
        match res.expect("join") {
            Ok(_) => wins += 1,
            Err(StoreError::Conflict { .. }) => {}
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(wins, 1, "conditional updates from one base");

    let before = store
        .get("ns", "hot")
        .await
        .expect("get")
        .metadata
        .resource_version;
    let unconditional = (0..16).map(|i| {
        let mut mine = secret("hot", &format!("u{i}"));
        mine.metadata.resource_version = 0;
        let s = store.clone();
        tokio::spawn(async move { s.update(mine).await })
    });
    let mut revisions = Vec::new();
    for res in futures::future::join_all(unconditional).await {
        revisions.push(
            res.expect("join")
                .expect("unconditional update")
                .metadata
                .resource_version,
        );
    }
    revisions.sort_unstable();
    revisions.dedup();
    assert_eq!(revisions.len(), 16, "each update its own revision");
    assert!(revisions[0] > before);
    let last = store.get("ns", "hot").await.expect("get");
    assert_eq!(last.metadata.resource_version, revisions[15]);

    let creates = (0..16).map(|_| {
        let s = store.clone();
        tokio::spawn(async move { s.create(secret("new-once", "x")).await })
    });
    let mut created = 0;
    for res in futures::future::join_all(creates).await {
        match res.expect("join") {
            Ok(_) => created += 1,
            Err(StoreError::AlreadyExists { .. }) => {}
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(created, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_writes_on_every_replica_share_one_seed_and_etcd_sees_no_plaintext() {
    let cluster = EtcdCluster::start(3).await;
    let r = replicas(&cluster, "/coffer", 3).await;
    let canary = "canary-7f3e9b2c-plaintext";
    // Every replica's first write needs a seed: they race to create it.
    let tries = r.stores.iter().enumerate().map(|(i, s)| {
        let s = s.clone();
        tokio::spawn(async move { s.create(secret(&format!("first{i}"), canary)).await })
    });
    for res in futures::future::join_all(tries).await {
        res.expect("join").expect("create");
    }
    // Every replica opens every record: no seed row was overwritten.
    for reader in &r.stores {
        for i in 0..3 {
            let got = reader.get("ns", &format!("first{i}")).await.expect("get");
            assert_eq!(value(&got), canary);
        }
    }
    let ids: std::collections::BTreeSet<Option<u32>> =
        r.stores.iter().map(|s| s.seeds().current_id()).collect();
    assert_eq!(ids.len(), 1, "one seed for all replicas: {ids:?}");
    let dump = cluster.etcdctl_get_prefix("/coffer");
    assert!(!dump.is_empty());
    let b64 = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(canary)
    };
    for needle in [canary.to_owned(), b64, hex::encode(canary)] {
        assert!(
            !dump.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "etcd holds {needle:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_is_exact_across_replicas() {
    use coffer_core::store::{QuotaLimits, Quotas};
    let cluster = EtcdCluster::start(3).await;
    let config = StoreConfig {
        quotas: Quotas::unlimited().with_namespace(
            "ns",
            QuotaLimits {
                count: Some(5),
                bytes: None,
            },
        ),
        ..StoreConfig::default()
    };
    let r = replicas_with(&cluster, "/coffer", 3, config).await;
    // Fifteen creates race on three replicas for five places.
    let tries = (0..15).map(|i| {
        let s = r.stores[i % 3].clone();
        tokio::spawn(async move { s.create(secret(&format!("q{i}"), "v")).await })
    });
    let mut created = 0;
    for res in futures::future::join_all(tries).await {
        match res.expect("join") {
            Ok(_) => created += 1,
            Err(StoreError::QuotaExceeded(_)) => {}
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(created, 5);
    // A delete on one replica makes room for a create on another, and no more.
    let list = r.stores[0]
        .list(&coffer_core::store::ListOptions {
            namespace: "ns".into(),
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(list.items.len(), 5);
    let gone = &list.items[0].metadata.name;
    r.stores[1].delete("ns", gone, 0).await.expect("delete");
    r.stores[2]
        .create(secret("after", "v"))
        .await
        .expect("room after the delete");
    assert!(matches!(
        r.stores[0].create(secret("over", "v")).await,
        Err(StoreError::QuotaExceeded(_))
    ));
}
