//! The etcd door's writes under `/registry/secrets/<ns>/<name>` through the engine: what the
//! Secret service's watchers see live and on replay (a value only the door serves appears and
//! disappears as an add and a delete), History, and a custom `--etcd-prefix`.

use coffer_testkit::engine as common;

use coffer_core::model::Secret;
use coffer_core::model::k8s;
use coffer_core::store::raw::{KeyRange, RawWrite};
use coffer_core::store::{EventKind, Store, StoreConfig};
use common::{TestKms, open_store};
use zeroize::Zeroizing;

fn k8s_value(name: &str, v: &str) -> Zeroizing<Vec<u8>> {
    let mut s = Secret::new("ns", name)
        .with_data("k", v)
        .with_type("Opaque");
    s.metadata.uid = format!("uid-{name}");
    s.metadata.creation_timestamp = Some(1_700_000_000);
    k8s::encode(&s)
}

async fn put(store: &Store, key: &str, value: &[u8]) -> u64 {
    let w = store.raw_writer().await;
    let (rev, _) = w
        .commit(
            vec![RawWrite::Put {
                key: key.as_bytes().to_vec(),
                value: Zeroizing::new(value.to_vec()),
                lease: 0,
            }],
            Vec::new(),
        )
        .await
        .expect("put");
    rev
}

async fn delete(store: &Store, key: &str) -> u64 {
    let w = store.raw_writer().await;
    let (rev, _) = w
        .commit(
            vec![RawWrite::Delete {
                key: key.as_bytes().to_vec(),
            }],
            Vec::new(),
        )
        .await
        .expect("delete");
    rev
}

#[tokio::test]
async fn door_writes_are_secret_changes_live_on_replay_and_in_history() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = open_store(
        dir.path(),
        TestKms::open(dir.path(), 1),
        StoreConfig::default(),
    )
    .await;
    let mut live = store.subscribe();
    let key = "/registry/secrets/ns/s";
    let start = store.revision();
    let r1 = put(&store, key, &k8s_value("s", "1")).await;
    let r2 = put(&store, key, &k8s_value("s", "2")).await;
    let r3 = put(&store, key, b"k8s:enc:aescbc:v1:key1:sealed").await;
    let r4 = put(&store, key, &k8s_value("s", "4")).await;
    let r5 = delete(&store, key).await;
    // Not a Secret's key (an invalid name): no event for the Secret service.
    put(&store, "/registry/secrets/ns/Bad_Name", b"x").await;
    let want = [
        (EventKind::Added, r1, Some("1")),
        (EventKind::Modified, r2, Some("2")),
        // Now encrypted by the API server: gone from the Secret service's view, last state 2.
        (EventKind::Deleted, r3, Some("2")),
        (EventKind::Added, r4, Some("4")),
        (EventKind::Deleted, r5, Some("4")),
    ];
    let check = |got: Vec<(EventKind, u64, Option<String>)>| {
        let want: Vec<_> = want
            .iter()
            .map(|(k, r, v)| (*k, *r, v.map(str::to_owned)))
            .collect();
        assert_eq!(got, want);
    };
    let mut seen = Vec::new();
    for _ in 0..want.len() {
        let ev = live.recv().await.expect("event");
        assert_eq!(ev.object.metadata.resource_version, ev.revision);
        assert_eq!(ev.object.metadata.name, "s");
        seen.push((
            ev.kind,
            ev.revision,
            ev.object
                .data
                .get("k")
                .map(|v| String::from_utf8_lossy(v.expose()).into_owned()),
        ));
    }
    check(seen);
    let replay = store
        .changes_after(start, store.revision(), 100)
        .await
        .expect("replay");
    check(
        replay
            .into_iter()
            .map(|ev| {
                (
                    ev.kind,
                    ev.revision,
                    ev.object
                        .data
                        .get("k")
                        .map(|v| String::from_utf8_lossy(v.expose()).into_owned()),
                )
            })
            .collect(),
    );
    // History shows the versions the Secret service can show (not the encrypted one).
    let history = store.history("ns", "s", 0).await.expect("history");
    let revisions: Vec<u64> = history.versions.iter().map(|v| v.revision).collect();
    assert_eq!(revisions, vec![r5, r4, r2, r1]);
}

#[tokio::test]
async fn the_prefix_follows_the_api_servers_etcd_prefix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = StoreConfig {
        etcd_prefix: "/custom/".into(),
        ..StoreConfig::default()
    };
    let (store, _) = open_store(dir.path(), TestKms::open(dir.path(), 1), config).await;
    put(&store, "/custom/secrets/ns/a", &k8s_value("a", "1")).await;
    put(&store, "/registry/secrets/ns/b", &k8s_value("b", "1")).await;
    assert_eq!(
        store.get("ns", "a").await.expect("a").data["k"].expose(),
        b"1"
    );
    assert!(store.get("ns", "b").await.is_err(), "not under the prefix");
    // A Secret made through the Secret service is under the prefix through the door.
    store
        .create(Secret::new("ns", "c").with_data("k", "3"))
        .await
        .expect("create");
    let mut keys = Vec::new();
    store
        .raw_scan(&KeyRange::From(Vec::new()), None, |v| {
            keys.push(String::from_utf8_lossy(&v.key).into_owned());
            true
        })
        .await
        .expect("scan");
    assert_eq!(
        keys,
        [
            "/custom/secrets/ns/a",
            "/custom/secrets/ns/c",
            "/registry/secrets/ns/b"
        ]
    );
}
