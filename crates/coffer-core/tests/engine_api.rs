//! The Store API over real sled and a real local KEK: CRUD, preconditions, update rules, lists,
//! selectors, pagination, and change events.

use coffer_testkit::engine as common;

use std::sync::Arc;

use coffer_core::model::{Secret, SecretValue};
use coffer_core::store::{EventKind, ListOptions, Store, StoreConfig, StoreError};
use common::{TestKms, open_store};

async fn store() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let kms = TestKms::open(dir.path(), 1);
    let (store, _) = open_store(dir.path(), kms, StoreConfig::default()).await;
    (store, dir)
}

#[tokio::test]
async fn create_sets_server_fields_and_defaults() {
    let (store, _d) = store().await;
    let mut s = Secret::new("ns", "a").with_data("k", "v");
    s.string_data
        .insert("k".into(), SecretValue::from("from-string-data"));
    let created = store.create(s).await.expect("create");
    assert_eq!(created.type_, "Opaque");
    assert_eq!(created.metadata.resource_version, 2);
    assert!(!created.metadata.uid.is_empty());
    assert!(created.metadata.creation_timestamp.is_some());
    assert_eq!(created.data["k"].expose(), b"from-string-data");
    assert!(created.string_data.is_empty());
    let again = store
        .create(Secret::new("ns", "a"))
        .await
        .expect_err("exists");
    assert!(
        matches!(again, StoreError::AlreadyExists { .. }),
        "{again:?}"
    );
    assert_eq!(again.to_string(), "secrets \"a\" already exists");
}

#[tokio::test]
async fn create_rejects_invalid_objects_naming_the_field_and_stores_nothing() {
    let (store, _d) = store().await;
    let err = store
        .create(Secret::new("ns", "a").with_data("a*b", "v"))
        .await
        .expect_err("bad key");
    assert!(
        err.to_string().starts_with(
            "data[a*b]: Invalid value: \"a*b\": a valid key must consist of alphanumeric characters, '-', '_' or '.'"
        ),
        "{err}"
    );
    let err = store
        .create(Secret::new("NS", "a"))
        .await
        .expect_err("bad namespace");
    assert!(err.to_string().contains("metadata.namespace"), "{err}");
    let mut with_rv = Secret::new("ns", "a");
    with_rv.metadata.resource_version = 7;
    let err = store.create(with_rv).await.expect_err("rv on create");
    assert!(
        err.to_string().contains("metadata.resourceVersion"),
        "{err}"
    );
    assert_eq!(store.revision(), 1);
    assert!(matches!(
        store.get("ns", "a").await,
        Err(StoreError::NotFound { .. })
    ));
}

#[tokio::test]
async fn get_missing_and_invalid_names() {
    let (store, _d) = store().await;
    let err = store.get("ns", "nope").await.expect_err("missing");
    assert_eq!(err.to_string(), "secrets \"nope\" not found");
    let err = store.get("ns", "a/b").await.expect_err("slash");
    assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
}

#[tokio::test]
async fn update_with_preconditions_and_no_op_updates() {
    let (store, _d) = store().await;
    let v1 = store
        .create(Secret::new("ns", "a").with_data("k", "1"))
        .await
        .expect("create");
    let mut upd = Secret::new("ns", "a").with_data("k", "2");
    upd.metadata.resource_version = v1.metadata.resource_version;
    let v2 = store.update(upd).await.expect("update");
    assert_eq!(v2.metadata.resource_version, 3);
    assert_eq!(v2.metadata.uid, v1.metadata.uid);
    assert_eq!(
        v2.metadata.creation_timestamp,
        v1.metadata.creation_timestamp
    );
    // Stale precondition: ABORTED-class conflict, nothing changes.
    let mut stale = Secret::new("ns", "a").with_data("k", "3");
    stale.metadata.resource_version = 2;
    let err = store.update(stale).await.expect_err("stale");
    assert!(
        matches!(
            err,
            StoreError::Conflict {
                expected: 2,
                current: 3,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        store.get("ns", "a").await.expect("get").data["k"].expose(),
        b"2"
    );
    // Unconditional update (rv 0) works.
    let v3 = store
        .update(Secret::new("ns", "a").with_data("k", "3"))
        .await
        .expect("unconditional");
    assert_eq!(v3.metadata.resource_version, 4);
    // An update that changes nothing keeps the revision.
    let same = store
        .update(Secret::new("ns", "a").with_data("k", "3"))
        .await
        .expect("no-op");
    assert_eq!(same.metadata.resource_version, 4);
    assert_eq!(store.revision(), 4);
    let err = store
        .update(Secret::new("ns", "missing"))
        .await
        .expect_err("missing");
    assert!(matches!(err, StoreError::NotFound { .. }));
}

#[tokio::test]
async fn update_rules_type_and_immutable() {
    let (store, _d) = store().await;
    let mut s = Secret::new("ns", "frozen").with_data("k", "v");
    s.immutable = true;
    store.create(s).await.expect("create");
    let mut change_data = Secret::new("ns", "frozen").with_data("k", "other");
    change_data.immutable = true;
    let err = store.update(change_data).await.expect_err("frozen data");
    assert!(err.to_string().contains("data: Forbidden"), "{err}");
    let unset = Secret::new("ns", "frozen").with_data("k", "v");
    let err = store.update(unset).await.expect_err("unset immutable");
    assert!(err.to_string().contains("immutable: Forbidden"), "{err}");
    // Labels may change on an immutable Secret.
    let mut relabel = Secret::new("ns", "frozen")
        .with_data("k", "v")
        .with_label("tier", "gold");
    relabel.immutable = true;
    let out = store.update(relabel).await.expect("labels may change");
    assert_eq!(out.metadata.labels["tier"], "gold");
    // Type cannot change.
    store
        .create(Secret::new("ns", "t").with_data("k", "v"))
        .await
        .expect("create");
    let err = store
        .update(
            Secret::new("ns", "t")
                .with_type("kubernetes.io/basic-auth")
                .with_data("username", "u"),
        )
        .await
        .expect_err("type change");
    assert!(err.to_string().contains("type: Invalid value"), "{err}");
}

#[tokio::test]
async fn delete_with_preconditions() {
    let (store, _d) = store().await;
    let v1 = store
        .create(Secret::new("ns", "a").with_data("k", "v"))
        .await
        .expect("create");
    let err = store.delete("ns", "a", 99).await.expect_err("stale");
    assert!(matches!(err, StoreError::Conflict { .. }));
    let last = store
        .delete("ns", "a", v1.metadata.resource_version)
        .await
        .expect("delete");
    assert_eq!(last.data["k"].expose(), b"v");
    assert_eq!(last.metadata.resource_version, 3);
    assert!(matches!(
        store.delete("ns", "a", 0).await,
        Err(StoreError::NotFound { .. })
    ));
    // Re-create after delete gets a new uid.
    let again = store
        .create(Secret::new("ns", "a"))
        .await
        .expect("re-create");
    assert_ne!(again.metadata.uid, v1.metadata.uid);
}

async fn seed_objects(store: &Store) {
    for ns in ["alpha", "beta"] {
        for i in 0..7 {
            let tier = if i % 2 == 0 { "even" } else { "odd" };
            let mut s = Secret::new(ns, format!("s{i:02}"))
                .with_data("k", "v")
                .with_label("tier", tier);
            if i == 3 {
                s = s
                    .with_type("kubernetes.io/basic-auth")
                    .with_data("username", "u");
            }
            store.create(s).await.expect("create");
        }
    }
}

fn names(items: &[Secret]) -> Vec<String> {
    items
        .iter()
        .map(|s| format!("{}/{}", s.metadata.namespace, s.metadata.name))
        .collect()
}

#[tokio::test]
async fn list_by_namespace_selectors_and_pages() {
    let (store, _d) = store().await;
    seed_objects(&store).await;
    let all = store.list(&ListOptions::default()).await.expect("list");
    assert_eq!(all.items.len(), 14);
    assert_eq!(all.revision, 15);
    assert!(all.continue_token.is_empty());
    let beta = store
        .list(&ListOptions {
            namespace: "beta".into(),
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(beta.items.len(), 7);
    assert!(beta.items.iter().all(|s| s.metadata.namespace == "beta"));
    let odd = store
        .list(&ListOptions {
            label_selector: "tier in (odd),tier!=even".into(),
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(odd.items.len(), 6);
    let by_type = store
        .list(&ListOptions {
            field_selector: "type=kubernetes.io/basic-auth".into(),
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(names(&by_type.items), ["alpha/s03", "beta/s03"]);
    let one = store
        .list(&ListOptions {
            field_selector: "metadata.namespace=alpha,metadata.name=s05".into(),
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(names(&one.items), ["alpha/s05"]);

    // Pages of 4 over the odd ones, across namespaces.
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = store
            .list(&ListOptions {
                label_selector: "tier=odd".into(),
                limit: 4,
                continue_token: token.clone(),
                ..Default::default()
            })
            .await
            .expect("page");
        pages += 1;
        assert!(page.items.len() <= 4);
        assert_eq!(
            page.revision, 15,
            "every page reports the first page's revision"
        );
        seen.extend(names(&page.items));
        if page.continue_token.is_empty() {
            break;
        }
        token = page.continue_token;
    }
    assert_eq!(pages, 2);
    assert_eq!(
        seen,
        [
            "alpha/s01",
            "alpha/s03",
            "alpha/s05",
            "beta/s01",
            "beta/s03",
            "beta/s05"
        ]
    );
}

#[tokio::test]
async fn list_errors_name_the_parameter() {
    let (store, _d) = store().await;
    let err = store
        .list(&ListOptions {
            field_selector: "data.password=x".into(),
            ..Default::default()
        })
        .await
        .expect_err("unsupported field");
    assert!(
        err.to_string().contains("field label not supported"),
        "{err}"
    );
    let err = store
        .list(&ListOptions {
            label_selector: "a in (".into(),
            ..Default::default()
        })
        .await
        .expect_err("bad selector");
    assert!(err.to_string().starts_with("labelSelector:"), "{err}");
    let err = store
        .list(&ListOptions {
            continue_token: "forged!".into(),
            ..Default::default()
        })
        .await
        .expect_err("bad token");
    assert!(err.to_string().starts_with("continue:"), "{err}");
    seed_objects(&store).await;
    let page = store
        .list(&ListOptions {
            namespace: "alpha".into(),
            limit: 2,
            ..Default::default()
        })
        .await
        .expect("page");
    // A token from one namespace's list cannot be used to list another.
    let err = store
        .list(&ListOptions {
            namespace: "beta".into(),
            continue_token: page.continue_token,
            ..Default::default()
        })
        .await
        .expect_err("foreign token");
    assert!(matches!(
        err,
        StoreError::BadRequest {
            field: "continue",
            ..
        }
    ));
}

#[tokio::test]
async fn events_in_revision_order_after_durability() {
    let (store, _d) = store().await;
    let mut rx = store.subscribe();
    store
        .create(Secret::new("ns", "a").with_data("k", "1"))
        .await
        .expect("create");
    store
        .update(Secret::new("ns", "a").with_data("k", "2"))
        .await
        .expect("update");
    store.delete("ns", "a", 0).await.expect("delete");
    let kinds: Vec<(EventKind, u64, Vec<u8>)> = (0..3)
        .map(|_| {
            let e = rx.try_recv().expect("event");
            (e.kind, e.revision, e.object.data["k"].expose().to_vec())
        })
        .collect();
    assert_eq!(
        kinds,
        [
            (EventKind::Added, 2, b"1".to_vec()),
            (EventKind::Modified, 3, b"2".to_vec()),
            (EventKind::Deleted, 4, b"2".to_vec()),
        ]
    );
}

#[tokio::test]
async fn concurrent_writers_get_unique_gapless_revisions() {
    let (store, _d) = store().await;
    let store = Arc::new(store);
    let mut rx = store.subscribe();
    let mut tasks = Vec::new();
    for w in 0..16 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut revs = Vec::new();
            for i in 0..20 {
                let s = store
                    .create(Secret::new("ns", format!("w{w}-{i}")).with_data("k", "v"))
                    .await
                    .expect("create");
                revs.push(s.metadata.resource_version);
            }
            revs
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("join"));
    }
    all.sort_unstable();
    assert_eq!(all, (2..=321).collect::<Vec<u64>>());
    // Events arrive in strictly increasing revision order.
    let mut last = 0;
    for _ in 0..320 {
        let e = rx.recv().await.expect("event");
        assert!(e.revision > last, "{} after {last}", e.revision);
        last = e.revision;
    }
    // Concurrent conditional updates of one object: exactly one wins per revision.
    let base = store.get("ns", "w0-0").await.expect("get");
    let mut racers = Vec::new();
    for i in 0..8 {
        let store = store.clone();
        let rv = base.metadata.resource_version;
        racers.push(tokio::spawn(async move {
            let mut s = Secret::new("ns", "w0-0").with_data("k", format!("racer{i}"));
            s.metadata.resource_version = rv;
            store.update(s).await.is_ok()
        }));
    }
    let mut wins = 0;
    for r in racers {
        wins += usize::from(r.await.expect("join"));
    }
    assert_eq!(wins, 1, "exactly one conditional update wins");
}

/// Spawns `n` writes while the door's writer holds the sequencer, waits until `seals` of them
/// are sealed (a delete seals nothing) and all are queued, then lets them go: the group
/// commit takes them as one group.
async fn held_back<T: Send + 'static>(
    store: &Arc<Store>,
    n: u64,
    seals: u64,
    write: impl Fn(Arc<Store>, u64) -> tokio::task::JoinHandle<T>,
) -> Vec<T> {
    let writer = store.raw_writer().await;
    let sealed = store.seal_count();
    let tasks: Vec<_> = (0..n).map(|i| write(store.clone(), i)).collect();
    while store.seal_count() < sealed + seals {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    // Sealing and queueing are one step without an await between them; this covers the
    // thread that sealed last.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    drop(writer);
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("join"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_waiting_together_commit_as_one_group_in_one_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kms = TestKms::open(dir.path(), 1);
    let (store, backend) = open_store(dir.path(), kms, StoreConfig::default()).await;
    let store = Arc::new(store);
    // The first write also stores the seed (a batch of its own).
    store
        .create(Secret::new("ns", "first"))
        .await
        .expect("create");
    let mut rx = store.subscribe();
    let base = store.revision();
    let applied = coffer_core::storage::Backend::applied(backend.as_ref());
    let created = held_back(&store, 12, 12, |store, i| {
        tokio::spawn(async move {
            store
                .create(Secret::new("ns", format!("g{i}")).with_data("k", format!("v{i}")))
                .await
        })
    })
    .await;
    let mut revisions: Vec<u64> = created
        .iter()
        .map(|r| r.as_ref().expect("create").metadata.resource_version)
        .collect();
    revisions.sort_unstable();
    assert_eq!(revisions, (base + 1..=base + 12).collect::<Vec<_>>());
    // Twelve writes, one backend batch (one log entry, one sync).
    assert_eq!(
        coffer_core::storage::Backend::applied(backend.as_ref()),
        applied + 1
    );
    // Each answer is what a read shows, and events come in revision order.
    for r in &created {
        let s = r.as_ref().expect("create");
        let read = store.get("ns", &s.metadata.name).await.expect("get");
        assert_eq!(read.metadata.resource_version, s.metadata.resource_version);
        assert_eq!(read.data["k"].expose(), s.data["k"].expose());
    }
    for want in base + 1..=base + 12 {
        assert_eq!(rx.recv().await.expect("event").revision, want);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_prepared_against_the_same_version_race_at_the_commit() {
    let (store, _d) = store().await;
    let store = Arc::new(store);
    let first = store
        .create(Secret::new("ns", "hot").with_data("k", "0"))
        .await
        .expect("create");
    let rv = first.metadata.resource_version;
    // Two updates that both name the version they read: the first in the group wins, the
    // second fails its condition at the commit with the conflict it would have met later.
    let results = held_back(&store, 2, 2, |store, i| {
        tokio::spawn(async move {
            let mut s = Secret::new("ns", "hot").with_data("k", format!("conditional{i}"));
            s.metadata.resource_version = rv;
            store.update(s).await
        })
    })
    .await;
    let wins = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(wins, 1, "{results:?}");
    let lost = results
        .iter()
        .find_map(|r| r.as_ref().err())
        .expect("loser");
    assert!(
        matches!(lost, StoreError::Conflict { expected, .. } if *expected == rv),
        "{lost:?}"
    );
    // Unconditional updates prepared against the same version all land: a loser reads again.
    let before = store.revision();
    let results = held_back(&store, 6, 6, |store, i| {
        tokio::spawn(async move {
            store
                .update(Secret::new("ns", "hot").with_data("k", format!("blind{i}")))
                .await
        })
    })
    .await;
    for r in &results {
        assert!(r.is_ok(), "{r:?}");
    }
    assert_eq!(store.revision(), before + 6);
    // A create of a name another create in the same group took is told it exists.
    let results = held_back(&store, 2, 2, |store, i| {
        tokio::spawn(async move {
            store
                .create(Secret::new("ns", "twin").with_data("k", format!("{i}")))
                .await
        })
    })
    .await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
    assert!(
        results
            .iter()
            .any(|r| matches!(r, Err(StoreError::AlreadyExists { .. }))),
        "{results:?}"
    );
    // So is a delete that lost to an update: its precondition no longer holds.
    let current = store.get("ns", "hot").await.expect("get");
    let rv = current.metadata.resource_version;
    let results = held_back(&store, 2, 1, |store, i| {
        tokio::spawn(async move {
            if i == 0 {
                store
                    .update(Secret::new("ns", "hot").with_data("k", "last"))
                    .await
                    .map(|_| ())
            } else {
                store.delete("ns", "hot", rv).await.map(|_| ())
            }
        })
    })
    .await;
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{results:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_unconditional_updates_of_one_secret_all_land() {
    let (store, _d) = store().await;
    let store = Arc::new(store);
    store
        .create(Secret::new("ns", "hot").with_data("k", "0"))
        .await
        .expect("create");
    let before = store.revision();
    let mut tasks = Vec::new();
    for w in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..10 {
                store
                    .update(Secret::new("ns", "hot").with_data("k", format!("{w}-{i}")))
                    .await
                    .expect("an unconditional update never conflicts");
            }
        }));
    }
    for t in tasks {
        t.await.expect("join");
    }
    assert_eq!(store.revision(), before + 80);
}
