//! Byte flips over the real data directory (`Store::open_default`: sled + the write-ahead log +
//! the local key file `kek.key`).
//!
//! A pristine data dir holds 20 Secrets with known contents. For a sample of single-byte flips
//! spread over every stored file except `kek.key`, each on a fresh copy of the pristine dir, the
//! store is reopened and every Secret read (get, then list). Each read must fail or return exactly
//! the original; opening may fail too (detected). Never different plaintext.
//!
//! A panic or a hang (over [`FLIP_TIMEOUT`]) on a corrupt file fails the test, after the
//! campaign's table is printed: a corrupt directory must be refused with an error, not crash or
//! block the server. Wrong plaintext fails it at once, and so does a campaign flip that rolls a
//! Secret back to an older version (the checkpoint record, `db/checkpoint`, makes open refuse instead; the
//! `wal.log`-only round of the crash image still only counts rollbacks, because a flip in the
//! log's last entry is indistinguishable from a torn write). Flipping `kek.key` must make the store refuse with an
//! error, never open with wrong plaintext. Records moved between keys are covered by
//! `tests/engine_crypto.rs` (`every_flipped_byte_and_every_moved_record_is_data_loss`).

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use coffer_core::model::Secret;
use coffer_core::storage::Durability;
use coffer_core::store::{ListOptions, Store, StoreConfig, StoreError};

const SECRETS: usize = 20;
/// How long one flip (copy, open, 20 gets, list, close) may take before it counts as a hang.
const FLIP_TIMEOUT: Duration = Duration::from_secs(10);

/// Panic messages seen by the hook, with the panicking thread's name.
fn panics() -> &'static Mutex<Vec<String>> {
    static PANICS: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    static HOOK: OnceLock<()> = OnceLock::new();
    HOOK.get_or_init(|| {
        std::panic::set_hook(Box::new(|info| {
            let thread = std::thread::current();
            let msg = format!(
                "[{}] {info}",
                thread.name().unwrap_or("<unnamed>").to_owned()
            );
            eprintln!("panic observed: {msg}");
            if let Ok(mut v) = panics().lock() {
                v.push(msg);
            }
        }));
    });
    PANICS.get_or_init(|| Mutex::new(Vec::new()))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn secret(i: usize) -> Secret {
    Secret::new(format!("ns{}", i % 3), format!("secret-{i:02}"))
        .with_data("password", format!("hunter2-{i}-{}", "x".repeat(i * 7)))
        .with_data("token", vec![i as u8; 40 + i])
        .with_label("app", format!("app{}", i % 4))
}

/// What was written: every Secret's current version, and the versions it replaced.
#[derive(Debug)]
struct Expect {
    current: Vec<Secret>,
    older: Vec<Secret>,
}

impl Expect {
    fn duplicate(&self) -> Self {
        Self {
            current: self.current.iter().map(Secret::duplicate).collect(),
            older: self.older.iter().map(Secret::duplicate).collect(),
        }
    }
}

/// Writes the pristine data dir; returns the stored Secrets (as the store returned them).
/// `crash_image`: copy the dir while the store is still open (after a sync), so `wal.log` still
/// holds the entries, as after a kill; otherwise close cleanly (the log is checkpointed away).
fn make_pristine(dir: &Path, crash_image: Option<&Path>) -> Expect {
    runtime().block_on(async {
        let store = Store::open_default(dir, Durability::Sync, StoreConfig::default())
            .await
            .expect("open pristine");
        let mut stored = Vec::new();
        let mut older = Vec::new();
        for i in 0..SECRETS {
            stored.push(store.create(secret(i)).await.expect("create"));
        }
        // Overwrite a few, so the files also hold superseded versions.
        for s in stored.iter_mut().take(5) {
            let mut next = s.duplicate();
            next.data
                .insert("password".into(), b"rotated-value".as_ref().into());
            older.push(std::mem::replace(
                s,
                store.update(next).await.expect("update"),
            ));
        }
        store.sync().await.expect("sync");
        if let Some(image) = crash_image {
            copy_dir(dir, image);
        }
        drop(store);
        Expect {
            current: stored,
            older,
        }
    })
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// Every non-empty file under `dir` except the key file, relative to `dir`, with the length of its
/// written extent (up to its last non-zero byte: sled preallocates zero-filled segments, and flips
/// there would mostly test nothing).
fn data_files(dir: &Path, rel: &Path, out: &mut Vec<(PathBuf, u64)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir.join(rel))
        .expect("read_dir")
        .map(|e| e.expect("entry"))
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = rel.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            data_files(dir, &path, out);
        } else if entry.file_name() != "kek.key" {
            let bytes = std::fs::read(entry.path()).expect("read");
            let extent = bytes.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
            if extent > 0 {
                out.push((path, extent as u64));
            }
        }
    }
}

/// A small deterministic generator (xorshift64*), so a failing flip can be reproduced.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// How one flipped copy behaved.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    /// The store refused to open (detected): `rollback` when the checkpoint record caught
    /// sled's files behind it, `other` for any other reason.
    RefusedOpen(&'static str),
    /// It opened; at least one read failed, every other read was exact. The string names the
    /// kinds of error seen (DataLoss, NotFound, ...).
    ReadError(String),
    /// It opened and every read returned exactly the original.
    Exact,
    /// A read returned something never written under that key: the failure this test exists for.
    Wrong(String),
    /// A read returned an earlier acknowledged version of the Secret (acknowledged writes silently
    /// rolled back): a finding, not different plaintext.
    Stale(String),
    /// Something panicked in the opening thread (a finding).
    Panic(String),
    /// The flip did not finish within [`FLIP_TIMEOUT`] (a finding).
    Hang,
}

fn error_kind(e: &StoreError) -> &'static str {
    match e {
        StoreError::DataLoss { .. } => "DataLoss",
        StoreError::NotFound { .. } => "NotFound",
        StoreError::Storage(_) => "Storage",
        StoreError::Unavailable(_) => "Unavailable",
        _ => "other",
    }
}

/// Opens the store in `dir` and reads every Secret back.
async fn check(dir: &Path, expect: &Expect) -> Outcome {
    let want = &expect.current;
    let store = match Store::open_default(dir, Durability::Sync, StoreConfig::default()).await {
        Ok(s) => s,
        Err(e) => {
            let message = e.to_string();
            assert!(!message.is_empty(), "open error without a message");
            return Outcome::RefusedOpen(if message.contains("checkpoint already made") {
                "rollback"
            } else {
                "other"
            });
        }
    };
    let mut errors = std::collections::BTreeSet::new();
    let mut stale = Vec::new();
    for s in want {
        match store.get(&s.metadata.namespace, &s.metadata.name).await {
            Ok(got) if got == *s => {}
            Ok(got) if expect.older.contains(&got) => stale.push(format!(
                "get {} returned resource_version {} instead of {}",
                s.storage_key(),
                got.metadata.resource_version,
                s.metadata.resource_version
            )),
            Ok(got) => {
                return Outcome::Wrong(format!(
                    "get {}: got {got:?} (data differs or metadata differs)",
                    s.storage_key()
                ));
            }
            Err(e) => {
                errors.insert(error_kind(&e));
            }
        }
    }
    match store.list(&ListOptions::default()).await {
        Ok(list) => {
            let by_key: BTreeMap<String, &Secret> =
                want.iter().map(|s| (s.storage_key(), s)).collect();
            for item in &list.items {
                match by_key.get(&item.storage_key()) {
                    Some(orig) if *orig == item => {}
                    Some(_) if expect.older.contains(item) => {
                        stale.push(format!("list returned an older {}", item.storage_key()))
                    }
                    _ => return Outcome::Wrong(format!("list: unexpected item {item:?}")),
                }
            }
            if list.items.len() != want.len() {
                errors.insert("list-missing-items");
            }
        }
        Err(e) => {
            errors.insert(error_kind(&e));
        }
    }
    if !stale.is_empty() {
        stale.extend(errors.iter().map(|e| format!("also {e}")));
        Outcome::Stale(stale.join("; "))
    } else if errors.is_empty() {
        Outcome::Exact
    } else {
        Outcome::ReadError(errors.into_iter().collect::<Vec<_>>().join("+"))
    }
}

/// Runs [`check`] on its own thread (named, with its own runtime), catching panics and hangs.
fn check_isolated(name: String, dir: PathBuf, want: Arc<Expect>) -> Outcome {
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            let outcome = catch_unwind(AssertUnwindSafe(|| runtime().block_on(check(&dir, &want))))
                .unwrap_or_else(|payload| {
                    let msg = payload
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                        .unwrap_or_else(|| "<non-string panic>".into());
                    Outcome::Panic(msg)
                });
            let _ = tx.send(outcome);
        })
        .expect("spawn");
    match rx.recv_timeout(FLIP_TIMEOUT) {
        Ok(outcome) => {
            let _ = handle.join();
            outcome
        }
        // The thread is left behind; its copy lives in a temp dir removed at the end.
        Err(_) => Outcome::Hang,
    }
}

/// Flips `flips` single bytes spread round-robin over every data file of `pristine` (or only
/// those whose path ends with `only`), each on a fresh copy, and classifies the outcomes. Fails
/// on any wrong plaintext, and on any rollback to an older version (acknowledged writes silently
/// lost). Returns the outcome counts.
fn flip_campaign(
    label: &str,
    pristine: &Path,
    want: Expect,
    flips: usize,
    seed: u64,
    only: Option<&str>,
) -> BTreeMap<String, usize> {
    let started = Instant::now();
    let want = Arc::new(want);
    let baseline = check_isolated(
        format!("{label}-baseline"),
        pristine.to_owned(),
        want.clone(),
    );
    // The baseline open checkpoints the pristine dir; that is the state every flip starts from.
    assert_eq!(
        baseline,
        Outcome::Exact,
        "{label}: untouched copy must read back"
    );
    // Control: a fresh copy of the (now checkpointed) pristine dir, reopened without any flip.
    let work = tempfile::tempdir().expect("tempdir");
    let control = work.path().join("control");
    copy_dir(pristine, &control);
    let outcome = check_isolated(format!("{label}-control"), control, want.clone());
    assert_eq!(
        outcome,
        Outcome::Exact,
        "{label}: unflipped copy must read back"
    );

    let mut files = Vec::new();
    data_files(pristine, Path::new(""), &mut files);
    if let Some(only) = only {
        files.retain(|(f, _)| f.ends_with(only));
    }
    assert!(!files.is_empty());
    let mut rng = Rng(seed);
    let mut by_file: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    let mut totals: BTreeMap<String, usize> = BTreeMap::new();
    let mut findings = Vec::new();
    for i in 0..flips {
        let (file, len) = &files[i % files.len()];
        let offset = rng.next() % len;
        let mask = (rng.next() % 255 + 1) as u8;
        let copy = work.path().join(format!("flip-{i}"));
        copy_dir(pristine, &copy);
        let path = copy.join(file);
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[offset as usize] ^= mask;
        std::fs::write(&path, &bytes).expect("write");
        drop(bytes);

        let outcome = check_isolated(format!("{label}-flip-{i}"), copy.clone(), want.clone());
        let what = format!("{} @{offset} ^{mask:#04x}", file.display());
        let class = match &outcome {
            Outcome::RefusedOpen(why) => format!("refused-open({why})"),
            Outcome::ReadError(kinds) => format!("read-error({kinds})"),
            Outcome::Exact => "exact".to_owned(),
            Outcome::Wrong(msg) => panic!("{label}: {what}: WRONG PLAINTEXT: {msg}"),
            Outcome::Stale(msg) => {
                findings.push(format!("rollback on {what}: {msg}"));
                "stale-version".to_owned()
            }
            Outcome::Panic(msg) => {
                findings.push(format!("panic on {what}: {msg}"));
                "panic".to_owned()
            }
            Outcome::Hang => {
                findings.push(format!("hang (> {FLIP_TIMEOUT:?}) on {what}"));
                "hang".to_owned()
            }
        };
        *by_file
            .entry(file.display().to_string())
            .or_default()
            .entry(class.clone())
            .or_default() += 1;
        *totals.entry(class).or_default() += 1;
        if outcome != Outcome::Hang {
            let _ = std::fs::remove_dir_all(&copy);
        }
    }
    println!(
        "{label}: {flips} single-byte flips over {} files in {:?}",
        files.len(),
        started.elapsed()
    );
    for (file, len) in &files {
        println!(
            "  {:<32} {len:>7} bytes written  {:?}",
            file.display(),
            by_file.get(&file.display().to_string())
        );
    }
    println!("  totals: {totals:?}");
    for f in findings.iter().take(5) {
        println!("  FINDING: {f}");
    }
    if findings.len() > 5 {
        println!("  ... {} findings in all", findings.len());
    }
    let hook = panics().lock().map(|v| v.clone()).unwrap_or_default();
    let ours: Vec<_> = hook.iter().filter(|m| m.contains(label)).collect();
    if !ours.is_empty() {
        println!(
            "  panics seen by the hook on {label} threads: {}",
            ours.len()
        );
    }
    assert_eq!(totals.values().sum::<usize>(), flips);
    let crashes: Vec<_> = findings
        .iter()
        .filter(|f| f.starts_with("panic") || f.starts_with("hang"))
        .collect();
    assert!(
        crashes.is_empty() && ours.is_empty(),
        "{label}: {} flips panicked or hung instead of being refused with an error, e.g. {:?} \
         (panics seen by the hook: {:?})",
        crashes.len(),
        crashes.iter().take(3).collect::<Vec<_>>(),
        ours.iter().take(3).collect::<Vec<_>>()
    );
    let rollbacks: Vec<_> = findings
        .iter()
        .filter(|f| f.starts_with("rollback"))
        .collect();
    assert!(
        rollbacks.is_empty(),
        "{label}: {} flips silently rolled Secrets back to older versions, e.g. {:?}",
        rollbacks.len(),
        rollbacks.iter().take(3).collect::<Vec<_>>()
    );
    totals
}

/// A cleanly closed data dir: the sled files hold everything, `wal.log` is empty.
#[test]
fn flips_in_a_cleanly_closed_data_dir_never_give_wrong_plaintext() {
    let _ = panics();
    let dir = tempfile::tempdir().expect("tempdir");
    let pristine = dir.path().join("pristine");
    let want = make_pristine(&pristine, None);
    flip_campaign("closed", &pristine, want, 120, 0x00C0_FFEE_1234_5678, None);
}

/// A crash image (copied after a sync while the store was open): `wal.log` holds the entries
/// that recovery replays, so flips land in the log too.
#[test]
fn flips_in_a_crash_image_never_give_wrong_plaintext() {
    let _ = panics();
    let dir = tempfile::tempdir().expect("tempdir");
    let live = dir.path().join("live");
    let image = dir.path().join("image");
    let want = make_pristine(&live, Some(&image));
    let mut files = Vec::new();
    data_files(&image, Path::new(""), &mut files);
    assert!(
        files.iter().any(|(f, _)| f.ends_with("wal.log")),
        "crash image should hold a non-empty wal.log: {files:?}"
    );
    // Flip on copies of the image without the baseline checkpoint touching it: keep a spare.
    let spare = dir.path().join("image-spare");
    copy_dir(&image, &spare);
    flip_log_only(&spare, &want);
    flip_campaign("crash", &image, want, 100, 0x0BAD_5EED_9876_5431, None);
}

/// The rollback that the checkpoint record exists for: after crash recovery and its checkpoint
/// (the log replayed into sled, then emptied), a flipped byte in sled's `db` file can make sled
/// recover only up to an earlier point, silently serving older versions of Secrets. The store
/// must refuse to open instead (or read back exactly). Every outcome is counted and printed.
#[test]
fn flips_in_sled_after_recovery_and_checkpoint_never_roll_back() {
    let _ = panics();
    let dir = tempfile::tempdir().expect("tempdir");
    let live = dir.path().join("live");
    let image = dir.path().join("image");
    let want = make_pristine(&live, Some(&image));
    // The campaign's baseline open is the recovery: it replays wal.log and checkpoints.
    let totals = flip_campaign(
        "recovered-db",
        &image,
        want,
        80,
        0x005E_ED0F_0DB0_0001,
        Some("sled/db"),
    );
    println!("  sled/db flips after recovery + checkpoint: {totals:?}");
}

/// sled's files put back from an older copy (everything else current): refused at open with a
/// message naming the rollback, never served.
#[test]
fn an_older_copy_of_the_sled_files_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let old = dir.path().join("old-sled");
    runtime().block_on(async {
        let store = Store::open_default(&data, Durability::Sync, StoreConfig::default())
            .await
            .expect("open");
        let first = store.create(secret(0)).await.expect("create");
        drop(store);
        copy_dir(&data.join("db").join("sled"), &old);
        let store = Store::open_default(&data, Durability::Sync, StoreConfig::default())
            .await
            .expect("reopen");
        let mut next = first.duplicate();
        next.data
            .insert("password".into(), b"newer".as_ref().into());
        store.update(next).await.expect("update");
        drop(store);
    });
    std::fs::remove_dir_all(data.join("db").join("sled")).expect("rm");
    copy_dir(&old, &data.join("db").join("sled"));
    let error = runtime().block_on(async {
        Store::open_default(&data, Durability::Sync, StoreConfig::default())
            .await
            .expect_err("an older copy of sled's files must be refused")
    });
    let message = error.to_string();
    assert!(message.contains("checkpoint"), "{message}");
    assert!(message.contains("lost acknowledged writes"), "{message}");
}

/// Flips over `wal.log` of an uncheckpointed crash image (the campaign's baseline open
/// checkpoints its pristine dir, emptying the log, so the log gets its own round here).
fn flip_log_only(image: &Path, want: &Expect) {
    let want = Arc::new(want.duplicate());
    let log = image.join("db").join("wal.log");
    let len = std::fs::metadata(&log).expect("wal.log").len();
    assert!(len > 0);
    let work = tempfile::tempdir().expect("tempdir");
    let mut rng = Rng(0x1357_9BDF_2468_ACE0);
    let mut totals: BTreeMap<String, usize> = BTreeMap::new();
    let mut findings = Vec::new();
    let flips = 60;
    for i in 0..flips {
        let copy = work.path().join(format!("log-{i}"));
        copy_dir(image, &copy);
        let path = copy.join("db").join("wal.log");
        let mut bytes = std::fs::read(&path).expect("read");
        let offset = (rng.next() % len) as usize;
        bytes[offset] ^= (rng.next() % 255 + 1) as u8;
        std::fs::write(&path, &bytes).expect("write");
        let outcome = check_isolated(format!("wal-flip-{i}"), copy.clone(), want.clone());
        let class = match outcome {
            Outcome::Wrong(msg) => panic!("wal.log @{offset}: WRONG PLAINTEXT: {msg}"),
            Outcome::ReadError(kinds) => format!("read-error({kinds})"),
            Outcome::Stale(msg) => {
                findings.push(format!("rollback on wal.log @{offset}: {msg}"));
                "stale-version".to_owned()
            }
            Outcome::Panic(msg) => {
                findings.push(format!("panic on wal.log @{offset}: {msg}"));
                "panic".to_owned()
            }
            other => format!("{other:?}"),
        };
        *totals.entry(class).or_default() += 1;
        let _ = std::fs::remove_dir_all(&copy);
    }
    println!("wal.log of the crash image ({len} bytes): {flips} flips: {totals:?}");
    for f in findings.iter().take(5) {
        println!("  FINDING: {f}");
    }
    if findings.len() > 5 {
        println!("  ... {} findings in all", findings.len());
    }
}

/// A flipped key file: the store must refuse (open or reads) with an error, never wrong plaintext.
#[test]
fn a_flipped_key_file_is_refused() {
    let _ = panics();
    let dir = tempfile::tempdir().expect("tempdir");
    let pristine = dir.path().join("pristine");
    let want = Arc::new(make_pristine(&pristine, None));
    let len = std::fs::metadata(pristine.join("kek.key"))
        .expect("kek.key")
        .len() as usize;
    let mut totals: BTreeMap<String, usize> = BTreeMap::new();
    let mut messages = std::collections::BTreeSet::new();
    for offset in 0..len {
        let copy = dir.path().join(format!("kek-{offset}"));
        copy_dir(&pristine, &copy);
        let path = copy.join("kek.key");
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[offset] ^= 0x01;
        std::fs::write(&path, &bytes).expect("write");
        let msg = runtime().block_on(async {
            match Store::open_default(&copy, Durability::Sync, StoreConfig::default()).await {
                Err(e) => Some(e.to_string()),
                Ok(_) => None,
            }
        });
        let outcome = match msg {
            Some(m) => {
                messages.insert(m);
                Outcome::RefusedOpen("kek")
            }
            None => check_isolated(format!("kek-flip-{offset}"), copy.clone(), want.clone()),
        };
        let class = match outcome {
            Outcome::Wrong(msg) => panic!("kek.key @{offset}: WRONG PLAINTEXT: {msg}"),
            Outcome::Exact => panic!("kek.key @{offset}: a flipped key file still read back"),
            Outcome::ReadError(kinds) => format!("read-error({kinds})"),
            other => format!("{other:?}"),
        };
        *totals.entry(class).or_default() += 1;
        let _ = std::fs::remove_dir_all(&copy);
    }
    println!("kek.key ({len} bytes), every byte flipped: {totals:?}");
    // What a client sees after a flipped key file: a clear error, once per read.
    let copy = dir.path().join("kek-sample");
    copy_dir(&pristine, &copy);
    let path = copy.join("kek.key");
    let mut bytes = std::fs::read(&path).expect("read");
    bytes[0] ^= 0x01;
    std::fs::write(&path, &bytes).expect("write");
    runtime().block_on(async {
        if let Ok(store) =
            Store::open_default(&copy, Durability::Sync, StoreConfig::default()).await
        {
            let s = &want.current[0];
            let err = store
                .get(&s.metadata.namespace, &s.metadata.name)
                .await
                .expect_err("a flipped key file must not read back");
            println!("  read error: {err}");
        }
    });
    for m in &messages {
        println!("  open error: {m}");
    }
}
