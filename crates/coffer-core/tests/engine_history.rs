//! History through the engine's API: reads and lists at a revision, History, change replay,
//! compaction, retention, the upgrade of a data directory written before history, and resealing
//! of old versions.

use coffer_testkit::engine as common;

use std::collections::BTreeSet;
use std::time::Duration;

use coffer_core::model::Secret;
use coffer_core::storage::mvcc::layout::{VALUE_OFFSET, current_key};
use coffer_core::storage::{Backend, Batch};
use coffer_core::store::{EventKind, ListOptions, StoreConfig, StoreError};
use common::{TestKms, open_store};

fn secret(name: &str, value: &str) -> Secret {
    Secret::new("ns", name).with_data("k", value)
}

fn value(s: &Secret) -> String {
    String::from_utf8_lossy(s.data["k"].expose()).into_owned()
}

#[tokio::test]
async fn get_and_list_at_a_revision_see_the_store_as_it_was() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = open_store(
        dir.path(),
        TestKms::open(dir.path(), 1),
        StoreConfig::default(),
    )
    .await;
    let a1 = store.create(secret("a", "1")).await.expect("create a");
    store.create(secret("b", "1")).await.expect("create b");
    let mut a2 = a1.duplicate();
    a2.data.insert("k".into(), "2".into());
    let a2 = store.update(a2).await.expect("update a");
    let deleted = store.delete("ns", "b", 0).await.expect("delete b");
    let now = store.revision();
    assert_eq!(
        (
            a1.metadata.resource_version,
            a2.metadata.resource_version,
            now
        ),
        (2, 4, 5)
    );

    assert_eq!(value(&store.get_at("ns", "a", 2).await.expect("a@2")), "1");
    assert_eq!(value(&store.get_at("ns", "a", 3).await.expect("a@3")), "1");
    let at3 = store.get_at("ns", "a", 4).await.expect("a@4");
    assert_eq!(
        (value(&at3), at3.metadata.resource_version),
        ("2".into(), 4)
    );
    assert_eq!(value(&store.get_at("ns", "b", 4).await.expect("b@4")), "1");
    assert!(matches!(
        store
            .get_at("ns", "b", deleted.metadata.resource_version)
            .await,
        Err(StoreError::NotFound { .. })
    ));
    let err = store.get_at("ns", "a", 99).await.expect_err("future");
    assert!(
        matches!(
            err,
            StoreError::TooLarge {
                requested: 99,
                current: 5
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "too large resource version: 99 (current 5)"
    );

    let names = |items: &[Secret]| -> Vec<String> {
        items
            .iter()
            .map(|s| format!("{}={}", s.metadata.name, value(s)))
            .collect()
    };
    let at = |rv| ListOptions {
        resource_version: rv,
        ..ListOptions::default()
    };
    assert_eq!(
        names(&store.list(&at(3)).await.expect("list").items),
        ["a=1", "b=1"]
    );
    assert_eq!(
        names(&store.list(&at(4)).await.expect("list").items),
        ["a=2", "b=1"]
    );
    assert_eq!(
        names(&store.list(&at(5)).await.expect("list").items),
        ["a=2"]
    );
    let page = store.list(&at(3)).await.expect("list");
    assert_eq!(
        page.revision, 3,
        "a list at a revision reports that revision"
    );
}

#[tokio::test]
async fn paginated_lists_stay_at_the_first_page_revision_under_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = open_store(
        dir.path(),
        TestKms::open(dir.path(), 1),
        StoreConfig::default(),
    )
    .await;
    for i in 0..10 {
        store
            .create(secret(&format!("s{i}"), "before"))
            .await
            .expect("create");
    }
    let mut opts = ListOptions {
        limit: 3,
        ..ListOptions::default()
    };
    let first = store.list(&opts).await.expect("first page");
    let revision = first.revision;
    let mut seen: Vec<Secret> = first.items;
    let mut token = first.continue_token;
    let mut round = 0;
    while !token.is_empty() {
        // Every page is read while others write: create, update and delete.
        store
            .create(secret(&format!("new{round}"), "after"))
            .await
            .expect("create");
        let mut s = store.get("ns", "s9").await.expect("get");
        s.data
            .insert("k".into(), format!("after{round}").as_str().into());
        store.update(s).await.expect("update");
        if round == 0 {
            store.delete("ns", "s5", 0).await.expect("delete");
        }
        round += 1;
        opts.continue_token = token;
        let page = store.list(&opts).await.expect("page");
        assert_eq!(page.revision, revision);
        seen.extend(page.items);
        token = page.continue_token;
    }
    let got: Vec<_> = seen
        .iter()
        .map(|s| (s.metadata.name.clone(), value(s)))
        .collect();
    let want: Vec<_> = (0..10)
        .map(|i| (format!("s{i}"), "before".to_owned()))
        .collect();
    assert_eq!(
        got, want,
        "the list is exactly the store at the first page's revision"
    );
}

#[tokio::test]
async fn history_lists_versions_newest_first_with_deletes_as_versions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = open_store(
        dir.path(),
        TestKms::open(dir.path(), 1),
        StoreConfig::default(),
    )
    .await;
    let v1 = store.create(secret("a", "1")).await.expect("create");
    let mut v2 = v1.duplicate();
    v2.data.insert("k".into(), "2".into());
    store.update(v2).await.expect("update");
    store.delete("ns", "a", 0).await.expect("delete");
    store.create(secret("a", "3")).await.expect("re-create");
    let page = store.history("ns", "a", 0).await.expect("history");
    let summary: Vec<_> = page
        .versions
        .iter()
        .map(|v| (v.revision, v.deleted, v.secret.as_ref().map(value)))
        .collect();
    assert_eq!(
        summary,
        [
            (5, false, Some("3".into())),
            (4, true, Some("2".into())),
            (3, false, Some("2".into())),
            (2, false, Some("1".into())),
        ]
    );
    // The delete's object is the state it removed, at the delete's revision.
    let del = page.versions[1].secret.as_ref().expect("removed state");
    assert_eq!(del.metadata.resource_version, 4);
    assert_eq!(page.compact_revision, 0);
    assert_eq!(
        store
            .history("ns", "a", 2)
            .await
            .expect("history")
            .versions
            .len(),
        2
    );
    assert!(matches!(
        store.history("ns", "never", 0).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.history("NS!", "a", 0).await,
        Err(StoreError::Invalid(_))
    ));
}

#[tokio::test]
async fn changes_replay_as_watch_events_after_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kms = TestKms::open(dir.path(), 1);
    {
        let (store, _) = open_store(dir.path(), kms.clone(), StoreConfig::default()).await;
        let v1 = store.create(secret("a", "1")).await.expect("create");
        let mut v2 = v1.duplicate();
        v2.data.insert("k".into(), "2".into());
        store.update(v2).await.expect("update");
        store.delete("ns", "a", 0).await.expect("delete");
    }
    let (store, _) = open_store(dir.path(), kms, StoreConfig::default()).await;
    let events = store
        .changes_after(0, u64::MAX, 100)
        .await
        .expect("changes");
    let summary: Vec<_> = events
        .iter()
        .map(|e| {
            (
                e.revision,
                e.kind,
                value(&e.object),
                e.object.metadata.resource_version,
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (2, EventKind::Added, "1".into(), 2),
            (3, EventKind::Modified, "2".into(), 3),
            (4, EventKind::Deleted, "2".into(), 4),
        ]
    );
    assert_eq!(
        store.changes_after(2, 3, 100).await.expect("changes").len(),
        1
    );
}

#[tokio::test]
async fn compaction_and_retention_refuse_what_they_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = open_store(
        dir.path(),
        TestKms::open(dir.path(), 1),
        StoreConfig::default(),
    )
    .await;
    let v1 = store.create(secret("a", "1")).await.expect("create");
    let mut v2 = v1.duplicate();
    v2.data.insert("k".into(), "2".into());
    store.update(v2).await.expect("update");
    store.create(secret("b", "1")).await.expect("create b");
    assert_eq!(store.history_stats().versions, 1);
    store.compact(3).await.expect("compact");
    assert_eq!(store.compact_revision(), 3);
    let err = store.get_at("ns", "a", 2).await.expect_err("compacted");
    assert_eq!(err.to_string(), "too old resource version: 2 (3)");
    let err = store
        .list(&ListOptions {
            resource_version: 2,
            ..ListOptions::default()
        })
        .await
        .expect_err("compacted");
    assert!(matches!(err, StoreError::TooOld { .. }), "{err:?}");
    assert!(matches!(
        store.changes_after(1, 9, 9).await,
        Err(StoreError::TooOld { .. })
    ));
    assert!(matches!(
        store.compact(2).await,
        Err(StoreError::TooOld { .. })
    ));
    assert!(matches!(
        store.compact(9).await,
        Err(StoreError::TooLarge { .. })
    ));
    assert_eq!(store.history_stats().versions, 0);
    // Retention: nothing was superseded an hour ago, so the default keeps everything.
    assert_eq!(store.retain_once().await.expect("retain"), 3);
}

#[tokio::test]
async fn zero_retention_keeps_only_the_current_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = StoreConfig {
        history_retention: Duration::ZERO,
        ..StoreConfig::default()
    };
    let (store, _) = open_store(dir.path(), TestKms::open(dir.path(), 1), config).await;
    let v1 = store.create(secret("a", "1")).await.expect("create");
    let mut v2 = v1.duplicate();
    v2.data.insert("k".into(), "2".into());
    store.update(v2).await.expect("update");
    assert_eq!(store.history_stats().versions, 0);
    assert!(matches!(
        store.get_at("ns", "a", 2).await,
        Err(StoreError::TooOld { .. })
    ));
    assert_eq!(
        value(&store.get_at("ns", "a", 3).await.expect("current")),
        "2"
    );
    assert_eq!(
        store
            .history("ns", "a", 0)
            .await
            .expect("history")
            .versions
            .len(),
        1
    );
}

#[tokio::test]
async fn a_data_directory_from_before_history_is_upgraded_in_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kms = TestKms::open(dir.path(), 1);
    {
        let (store, backend) = open_store(dir.path(), kms.clone(), StoreConfig::default()).await;
        store.create(secret("a", "1")).await.expect("create");
        store.create(secret("b", "1")).await.expect("create");
        let mut b = store.get("ns", "b").await.expect("get");
        b.data.insert("k".into(), "2".into());
        store.update(b).await.expect("update");
        // Rewrite the directory as the layout before history had it: one sealed record per
        // Secret at s/<namespace>/<name>, nothing else but the revision and the seeds.
        let mut batch = Batch::new();
        for name in ["a", "b"] {
            let key = format!("s/ns/{name}");
            let entry = backend
                .get(&current_key(key.as_bytes()))
                .expect("get")
                .expect("entry");
            batch.put(key.into_bytes(), entry[VALUE_OFFSET..].to_vec());
            batch.delete(current_key(format!("s/ns/{name}").as_bytes()));
        }
        for prefix in [&b"h/"[..], b"r/"] {
            for (k, _) in backend.scan(prefix, None, 1000).expect("scan") {
                batch.delete(k);
            }
        }
        batch.delete(b"m/history".to_vec());
        let lsn = backend.apply(batch).expect("apply");
        backend.wait_durable(lsn).await.expect("durable");
    }
    let (store, backend) = open_store(dir.path(), kms, StoreConfig::default()).await;
    assert!(
        backend.scan(b"s/", None, 10).expect("scan").is_empty(),
        "old records moved"
    );
    let b = store.get("ns", "b").await.expect("b");
    assert_eq!((value(&b), b.metadata.resource_version), ("2".into(), 4));
    assert_eq!(value(&store.get("ns", "a").await.expect("a")), "1");
    assert_eq!(
        store.compact_revision(),
        4,
        "nothing older than the upgrade is kept"
    );
    let mut b2 = b.duplicate();
    b2.data.insert("k".into(), "3".into());
    store.update(b2).await.expect("update after upgrade");
    assert_eq!(value(&store.get_at("ns", "b", 4).await.expect("b@4")), "2");
}

#[tokio::test]
async fn migrate_reseals_old_versions_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kms = TestKms::open(dir.path(), 2);
    let (store, _) = open_store(dir.path(), kms.clone(), StoreConfig::default()).await;
    let v1 = store.create(secret("a", "1")).await.expect("create");
    let mut v2 = v1.duplicate();
    v2.data.insert("k".into(), "2".into());
    store.update(v2).await.expect("update");
    store.delete("ns", "a", 0).await.expect("delete");
    store.create(secret("b", "1")).await.expect("create");
    let before = store.records_per_seed().expect("counts");
    assert_eq!(before.total, 3, "two old versions of a and the current b");
    kms.rotate_to(1);
    let summary = coffer_core::store::migrate::migrate(
        &store,
        &coffer_core::store::migrate::MigrateOptions::default(),
        |_| {},
    )
    .await
    .expect("migrate");
    assert_eq!((summary.rewritten, summary.remaining), (3, 0));
    let stale: BTreeSet<u32> = summary.stale_seeds.iter().copied().collect();
    let after = store.records_per_seed().expect("counts");
    assert!(
        after.by_seed.keys().all(|id| !stale.contains(id)),
        "{after:?}"
    );
    // The old versions still open, under the new seed.
    assert_eq!(value(&store.get_at("ns", "a", 2).await.expect("a@2")), "1");
    let h = store.history("ns", "a", 0).await.expect("history");
    assert_eq!(h.versions.len(), 3);
}
