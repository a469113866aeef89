//! `coffer verify --data-dir D` (issue 17): the real binary on real data directories. An intact
//! directory reports its record count and revision and exits 0; each tampering is reported as a
//! mismatch and exits 1; nothing is written.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use coffer_core::model::Secret;
use coffer_core::storage::Durability;
use coffer_core::store::{Store, StoreConfig};
use coffer_testkit::cli::coffer;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Writes Secrets `names` (each one version more) with the given anchor.
async fn write(dir: &Path, anchor: &Path, names: &[&str]) {
    let config = StoreConfig {
        anchor_file: Some(anchor.to_owned()),
        ..StoreConfig::default()
    };
    let store = Store::open_default(dir, Durability::Sync, config)
        .await
        .unwrap();
    for name in names {
        store
            .create(Secret::new("ns", *name).with_data("k", "v"))
            .await
            .unwrap();
    }
}

fn verify(dir: &Path, extra: &[&str]) -> coffer_testkit::cli::Run {
    let dir = dir.to_str().unwrap();
    let mut args = vec!["verify", "--data-dir", dir];
    args.extend_from_slice(extra);
    coffer(&args, None, None)
}

#[tokio::test]
async fn verify_reports_counts_and_every_mismatch() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("data");
    let anchor = root.path().join("anchor");
    write(&dir, &anchor, &["a", "b"]).await;
    let old = root.path().join("old");
    copy_dir(&dir, &old);
    write(&dir, &anchor, &["c"]).await;

    // Intact.
    let r = verify(&dir, &["--anchor-file", anchor.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("records:"), "{r:?}");
    assert!(r.stdout.contains("revision:       4"), "{r:?}");
    assert!(r.stdout.contains("ok, no mismatch"), "{r:?}");
    let r = verify(&dir, &["-o", "json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["revision"], 4);
    assert!(v["records"].as_u64().unwrap() > 3, "{v}");

    // The older copy put back: consistent in itself, only the anchor tells.
    let r = verify(&old, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    let r = verify(&old, &["--anchor-file", anchor.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stdout.contains("MISMATCH: anchor"), "{r:?}");
    assert!(r.stdout.contains("rolled back"), "{r:?}");

    // The older copy with a forged log entry (a right checksum, a guessed MAC) appended: both
    // reported, in one run.
    let forged = root.path().join("forged");
    copy_dir(&old, &forged);
    let mut body = 9u64.to_be_bytes().to_vec();
    body.extend_from_slice(&0u32.to_be_bytes());
    body.extend_from_slice(&[0; 40]);
    let len = body.len() as u32;
    body.extend_from_slice(&[1; 32]);
    let mut entry = len.to_be_bytes().to_vec();
    entry.extend_from_slice(&crc32fast::hash(&body).to_be_bytes());
    entry.extend_from_slice(&body);
    std::fs::write(forged.join("db/wal.log"), &entry).unwrap();
    let r = verify(&forged, &["--anchor-file", anchor.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stdout.contains("MISMATCH: write-ahead log") && r.stdout.contains("fails authentication"),
        "{r:?}"
    );
    assert!(r.stdout.contains("MISMATCH: anchor"), "{r:?}");
    assert!(r.stdout.contains("2 mismatch(es)"), "{r:?}");
    assert_eq!(
        std::fs::read(forged.join("db/wal.log")).unwrap(),
        entry,
        "verify writes nothing"
    );

    // A damaged checkpoint record holds the integrity key's wrapping: nothing can be checked.
    let record = forged.join("db/checkpoint");
    let mut bytes = std::fs::read(&record).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 1;
    std::fs::write(&record, &bytes).unwrap();
    let r = verify(&forged, &[]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("checkpoint record"), "{r:?}");
}

#[test]
fn verify_refuses_what_it_cannot_check() {
    let root = tempfile::tempdir().unwrap();
    let r = verify(&root.path().join("nothing"), &[]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("no db directory"), "{r:?}");

    // A directory from before integrity, never started since.
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../coffer-core/tests/fixtures/pre-integrity/data");
    let dir = root.path().join("old");
    copy_dir(&fixture, &dir);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join("kek.key"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
    }
    let r = verify(&dir, &[]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("start `coffer serve` on it once"),
        "{r:?}"
    );
}
