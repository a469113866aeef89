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
