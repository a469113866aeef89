//! Issue 17: an attacker who can write the data directory cannot make Coffer serve old or
//! foreign data. Each test reproduces one attack on a real data directory (`Store::open_dir` /
//! `open_default`: sled, the write-ahead log, the local key file) and shows it refused, and the
//! upgrade test shows a data directory written before integrity still opens.

use std::path::Path;
use std::sync::Arc;

use coffer_core::kms::Kms;
use coffer_core::model::Secret;
use coffer_core::storage::{Backend, Batch, Durability};
use coffer_core::store::{Store, StoreConfig, StoreError};
use coffer_testkit::engine::{TestKms, open_store};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

async fn open(dir: &Path) -> Result<Store, StoreError> {
    Store::open_default(dir, Durability::Sync, StoreConfig::default()).await
}

async fn open_anchored(dir: &Path, anchor: &Path, accept: bool) -> Result<Store, StoreError> {
    let config = StoreConfig {
        anchor_file: Some(anchor.to_owned()),
        accept_rollback: accept,
        ..StoreConfig::default()
    };
    Store::open_default(dir, Durability::Sync, config).await
}

fn secret(name: &str, value: &str) -> Secret {
    Secret::new("ns", name).with_data("password", value)
}

async fn password(store: &Store, name: &str) -> Option<Vec<u8>> {
    match store.get("ns", name).await {
        Ok(s) => Some(s.data["password"].expose().to_vec()),
        Err(StoreError::NotFound { .. }) => None,
        Err(e) => panic!("get {name}: {e}"),
    }
}

/// Writes `count` checksummed log entries (lsn 1..=count) of the given format: `mac` None is
/// the format from before integrity (an unkeyed CRC only); `Some` adds a 40-byte digest and a
/// 32-byte tag that the attacker, lacking the key, can only guess.
fn forged_log(count: u64, mac: Option<[u8; 32]>) -> Vec<u8> {
    let mut out = Vec::new();
    for lsn in 1..=count {
        let mut payload = lsn.to_be_bytes().to_vec();
        payload.extend_from_slice(&0u32.to_be_bytes());
        let mut body = payload.clone();
        if let Some(tag) = mac {
            body.extend_from_slice(&[0; 40]);
            let len = body.len();
            body.extend_from_slice(&tag);
            out.extend_from_slice(&(len as u32).to_be_bytes());
        } else {
            out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        }
        out.extend_from_slice(&crc32fast::hash(&body).to_be_bytes());
        out.extend_from_slice(&body);
    }
    out
}

/// The attack of the issue: an older `db/sled` put back, and log entries forged up to (and
/// past) the checkpoint's lsn so that the database seems to reach it. Before integrity, replay
/// accepted any consecutive checksummed entries and the store opened with the old versions
/// (the deleted Secret back). Now forged entries are refused as such, and entries in the old
/// format are never applied (moved aside), so the database stays behind the checkpoint.
#[tokio::test]
async fn an_older_database_with_forged_log_entries_is_refused() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("data");
    let old = root.path().join("old-sled");
    {
        let store = open(&dir).await.expect("open");
        store.create(secret("a", "v1")).await.expect("create");
        store.create(secret("gone", "x")).await.expect("create");
    }
    copy_dir(&dir.join("db/sled"), &old);
    {
        let store = open(&dir).await.expect("reopen");
        let mut a = store.get("ns", "a").await.expect("get");
        a.data.insert("password".into(), b"v2".as_ref().into());
        store.update(a).await.expect("update");
        store.delete("ns", "gone", 0).await.expect("delete");
    }
    for (name, log) in [
        ("old-format entries", forged_log(500, None)),
        ("entries with a guessed MAC", forged_log(500, Some([7; 32]))),
    ] {
        let attacked = root.path().join(format!("attacked-{}", name.len()));
        copy_dir(&dir, &attacked);
        std::fs::remove_dir_all(attacked.join("db/sled")).expect("rm sled");
        copy_dir(&old, &attacked.join("db/sled"));
        std::fs::write(attacked.join("db/wal.log"), &log).expect("forge log");
        let error = open(&attacked).await.expect_err(name).to_string();
        eprintln!("{name}: {error}");
        assert!(
            error.contains("fails authentication")
                || error.contains("a checkpoint already made lsn"),
            "{name}: {error}"
        );
        assert!(!error.contains("v1") && !error.contains("v2"), "{error}");
    }
    // The untouched directory still opens, at the newest versions.
    let store = open(&dir).await.expect("open");
    assert_eq!(password(&store, "a").await.as_deref(), Some(&b"v2"[..]));
    assert_eq!(password(&store, "gone").await, None);
}

/// A record put back inside sled itself (an older sealed version of a Secret, or one copied
/// under another key) by someone writing sled's files directly: the state digest no longer
/// matches and open refuses, naming the counts.
#[tokio::test]
async fn records_written_into_the_database_directly_are_refused() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("data");
    {
        let store = open(&dir).await.expect("open");
        store.create(secret("a", "v1")).await.expect("create");
    }
    for attack in ["insert", "remove"] {
        let attacked = root.path().join(attack);
        copy_dir(&dir, &attacked);
        {
            let db = sled::open(attacked.join("db/sled")).expect("raw sled");
            let (key, value) = db
                .iter()
                .filter_map(Result::ok)
                .find(|(k, _)| k.starts_with(b"l/"))
                .expect("a record");
            match attack {
                "insert" => {
                    let mut other = key.to_vec();
                    other.extend_from_slice(b"-copy");
                    db.insert(other, value).expect("insert");
                }
                _ => {
                    db.remove(key).expect("remove");
                }
            }
            db.flush().expect("flush");
        }
        let error = open(&attacked).await.expect_err(attack).to_string();
        eprintln!("{attack}: {error}");
        assert!(
            error.contains("does not match its authenticated state digest"),
            "{attack}: {error}"
        );
    }
}

/// A whole older copy of the data directory put back (consistent in itself, so nothing inside
/// it can tell): the anchor file, kept elsewhere, refuses it, naming both positions and the
/// flag; `--accept-rollback` starts from it knowingly and moves the anchor back.
#[tokio::test]
async fn a_rolled_back_directory_is_refused_by_its_anchor() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("data");
    let anchor = root.path().join("elsewhere/anchor");
    std::fs::create_dir_all(anchor.parent().expect("parent")).expect("mkdir");
    let backup = root.path().join("backup");
    let old = {
        let store = open_anchored(&dir, &anchor, false).await.expect("open");
        store.create(secret("a", "v1")).await.expect("create");
        store.revision()
    };
    assert!(anchor.exists(), "every checkpoint writes the anchor");
    copy_dir(&dir, &backup);
    let new = {
        let store = open_anchored(&dir, &anchor, false).await.expect("reopen");
        let mut a = store.get("ns", "a").await.expect("get");
        a.data.insert("password".into(), b"v2".as_ref().into());
        store.update(a).await.expect("update");
        store.revision()
    };
    assert!(new > old);
    std::fs::remove_dir_all(&dir).expect("rm");
    copy_dir(&backup, &dir);
    // Without the anchor, nothing can tell (the "whole-store rollback").
    let error = open_anchored(&dir, &anchor, false)
        .await
        .expect_err("rolled back")
        .to_string();
    eprintln!("rolled back: {error}");
    assert!(error.contains("rolled back"), "{error}");
    assert!(error.contains("--accept-rollback"), "{error}");
    // Revisions, as operators know them (not log positions).
    assert!(
        error.contains(&format!("is at revision {old},"))
            && error.contains(&format!("records revision {new} ")),
        "{error}"
    );
    assert!(!error.contains("lsn"), "{error}");
    {
        let store = open_anchored(&dir, &anchor, true).await.expect("accepted");
        assert_eq!(password(&store, "a").await.as_deref(), Some(&b"v1"[..]));
    }
    // The anchor followed the accepted state: a plain start works again.
    let store = open_anchored(&dir, &anchor, false).await.expect("again");
    assert_eq!(password(&store, "a").await.as_deref(), Some(&b"v1"[..]));
    drop(store);

    // Another store's anchor is refused, as is this store's directory replaced by a fresh one.
    let other = root.path().join("other");
    let other_anchor = root.path().join("other-anchor");
    drop(
        open_anchored(&other, &other_anchor, false)
            .await
            .expect("other"),
    );
    let error = open_anchored(&dir, &other_anchor, false)
        .await
        .expect_err("foreign anchor")
        .to_string();
    eprintln!("foreign anchor: {error}");
    assert!(error.contains("anchor"), "{error}");
}

/// A seed row copied from another store sharing the KMS unwraps fine, but its check value
/// names the other store: refused with a clear error, and so is a row moved to another id.
#[tokio::test]
async fn a_seed_row_moved_between_stores_is_refused() {
    let root = tempfile::tempdir().expect("tempdir");
    let kms = TestKms::open(root.path(), 1);
    let seed_key = [&b"k/seed/"[..], &1u32.to_be_bytes()].concat();
    let row_b = {
        let (store, backend) = open_store(
            &root.path().join("b"),
            kms.clone() as Arc<dyn Kms>,
            StoreConfig::default(),
        )
        .await;
        store.create(secret("b", "of-b")).await.expect("create");
        drop(store);
        backend.get(&seed_key).expect("get").expect("row")
    };
    let a = root.path().join("a");
    {
        let (store, backend) =
            open_store(&a, kms.clone() as Arc<dyn Kms>, StoreConfig::default()).await;
        store.create(secret("a", "of-a")).await.expect("create");
        drop(store);
        let row_a = backend.get(&seed_key).expect("get").expect("row");
        // First: A's own row moved to id 2.
        let mut batch = Batch::new();
        batch.put([&b"k/seed/"[..], &2u32.to_be_bytes()].concat(), row_a);
        backend
            .wait_durable(backend.apply(batch).expect("apply"))
            .await
            .expect("durable");
    }
    let error = coffer_core::store::Store::open(
        reopen_backend(&a),
        kms.clone() as Arc<dyn Kms>,
        StoreConfig::default(),
    )
    .await
    .expect_err("moved row")
    .to_string();
    eprintln!("moved row: {error}");
    assert!(
        error.contains("seed 2") && error.contains("check value"),
        "{error}"
    );
    {
        let backend = reopen_backend(&a);
        let mut batch = Batch::new();
        batch
            .delete([&b"k/seed/"[..], &2u32.to_be_bytes()].concat())
            .put(seed_key.clone(), row_b);
        backend
            .wait_durable(backend.apply(batch).expect("apply"))
            .await
            .expect("durable");
    }
    let error = coffer_core::store::Store::open(
        reopen_backend(&a),
        kms as Arc<dyn Kms>,
        StoreConfig::default(),
    )
    .await
    .expect_err("foreign row")
    .to_string();
    eprintln!("foreign row: {error}");
    assert!(
        error.contains("seed 1") && error.contains("another store"),
        "{error}"
    );
}

fn reopen_backend(dir: &Path) -> Arc<dyn Backend> {
    let mut cfg = coffer_core::storage::SledConfig::new(dir.join("db"));
    cfg.durability = Durability::Sync;
    Arc::new(coffer_core::storage::SledBackend::open(cfg).expect("sled"))
}

/// The integrity record of a data directory copied from another store (same KMS) is refused:
/// its integrity seed's check value names the other store.
#[tokio::test]
async fn another_stores_checkpoint_record_is_refused() {
    let root = tempfile::tempdir().expect("tempdir");
    let kms = TestKms::open(root.path(), 1);
    let (a, b) = (root.path().join("a"), root.path().join("b"));
    for dir in [&a, &b] {
        let store = Store::open_dir(
            dir,
            Durability::Sync,
            StoreConfig::default(),
            kms.clone() as Arc<dyn Kms>,
        )
        .await
        .expect("open");
        store.create(secret("x", "y")).await.expect("create");
    }
    std::fs::copy(b.join("db/checkpoint"), a.join("db/checkpoint")).expect("copy");
    let error = Store::open_dir(
        &a,
        Durability::Sync,
        StoreConfig::default(),
        kms as Arc<dyn Kms>,
    )
    .await
    .expect_err("foreign record")
    .to_string();
    eprintln!("foreign record: {error}");
    assert!(
        error.contains("fails authentication") || error.contains("store"),
        "{error}"
    );
}

/// A data directory written before integrity (by the previous release: fixture files) opens:
/// the first open adopts it (binds its seeds, writes the authenticated checkpoint record and
/// state digest), and every Secret reads back; later opens verify it. A crash image whose
/// write-ahead log still holds entries in the old format is replayed once, then adopted.
#[tokio::test]
async fn a_data_directory_from_before_integrity_is_adopted() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pre-integrity");
    for with_log in [false, true] {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("data");
        copy_dir(&fixture.join("data"), &dir);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.join("kek.key"), std::fs::Permissions::from_mode(0o600))
                .expect("chmod");
        }
        if with_log {
            std::fs::copy(
                fixture.join("wal-after-restart.log"),
                dir.join("db/wal.log"),
            )
            .expect("log");
        }
        let old_record = std::fs::metadata(dir.join("db/checkpoint")).expect("record");
        assert_eq!(old_record.len(), 24, "the fixture's record is version 1");
        for round in 0..2 {
            let store = Store::open_default(&dir, Durability::Sync, StoreConfig::default())
                .await
                .unwrap_or_else(|e| panic!("round {round}, log {with_log}: {e}"));
            assert_eq!(
                password(&store, "s1").await.as_deref(),
                Some(&b"pre-integrity-1"[..])
            );
            assert_eq!(
                password(&store, "s2").await.as_deref(),
                Some(&b"pre-integrity-2"[..])
            );
            assert_eq!(password(&store, "s3").await, None, "deleted before");
            assert_eq!(
                store.get("ns2", "s1").await.expect("ns2").data["k"].expose(),
                b"v"
            );
            if with_log {
                assert_eq!(
                    password(&store, "s5").await.as_deref(),
                    Some(&b"logged-only-5"[..])
                );
            }
            store
                .create(secret(&format!("new-{round}"), "after"))
                .await
                .expect("write after the upgrade");
        }
        assert!(
            std::fs::metadata(dir.join("db/checkpoint"))
                .expect("record")
                .len()
                > 24
        );
    }
}

/// The checkpoint record removed (or replaced by one from before integrity) once the database
/// is authenticated: no longer read as "a new or old directory", refused.
#[tokio::test]
async fn a_removed_checkpoint_record_is_refused() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("data");
    {
        let store = open(&dir).await.expect("open");
        store.create(secret("a", "v1")).await.expect("create");
    }
    std::fs::remove_file(dir.join("db/checkpoint")).expect("rm");
    let error = open(&dir).await.expect_err("no record").to_string();
    assert!(
        error.contains("is authenticated, but its checkpoint record is missing"),
        "{error}"
    );
}
