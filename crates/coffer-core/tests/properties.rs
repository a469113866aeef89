//! Property tests: seal/open round trips over random sizes and both AEADs, validation that
//! never panics (nor echoes a data value) on arbitrary Secrets, and List pagination that returns
//! every object exactly once while writers change the store under it.
//!
//! Case counts are modest so that CI stays fast on two cores; `PROPTEST_CASES=N` raises them.

use coffer_testkit::engine as common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use coffer_core::crypto::{Algorithm, RecordHeader, Seed, open, seal};
use coffer_core::model::validation::{validate_secret, validate_update};
use coffer_core::model::{Secret, SecretValue};
use coffer_core::storage::{Backend, Durability, SledBackend, SledConfig};
use coffer_core::store::{ListOptions, Store, StoreConfig, StoreError};
use proptest::prelude::*;

use crate::common::TestKms;

fn cases(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases,
        // A shrunk failure is printed; nothing is written next to the tests.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn algorithm() -> impl Strategy<Value = Algorithm> {
    prop_oneof![
        Just(Algorithm::Aes256Gcm),
        Just(Algorithm::XChaCha20Poly1305)
    ]
}

// ---------------------------------------------------------------------------------------------
// Seal / open
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(cases(128))]

    #[test]
    fn seal_open_round_trip(
        alg in algorithm(),
        seed in prop::array::uniform32(any::<u8>()),
        seed_id in any::<u32>(),
        key in "[a-z0-9.-]{1,40}/[a-z0-9.-]{1,60}",
        // Mostly small, sometimes up to 1.1 MiB (a full Secret plus metadata).
        len in prop_oneof![4 => 0usize..2048, 1 => 0usize..1_100_000],
        fill in any::<u8>(),
        flip in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let seed = Seed::from_slice(&seed).expect("32 bytes");
        let plaintext: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31) ^ fill).collect();
        let rec = seal(alg, seed_id, &seed, key.as_bytes(), &plaintext);
        let header = RecordHeader::parse(&rec).expect("own header parses");
        prop_assert_eq!(header.algorithm, alg);
        prop_assert_eq!(header.seed_id, seed_id);
        prop_assert_eq!(rec.len(), 1 + 1 + 4 + 32 + alg.nonce_len() + len + 16);
        let pt = open(&rec, key.as_bytes(), |id| (id == seed_id).then_some(&seed))
            .expect("round trip");
        prop_assert_eq!(pt.expose(), &plaintext[..]);
        // Another storage key, another seed, or any flipped bit: refused, never other bytes.
        let moved = format!("{key}x");
        prop_assert!(open(&rec, moved.as_bytes(), |_| Some(&seed)).is_err());
        let other = Seed::from_slice(&[0x5a; 32]).expect("32 bytes");
        if other.expose() != seed.expose() {
            prop_assert!(open(&rec, key.as_bytes(), |_| Some(&other)).is_err());
        }
        let mut bad = rec.clone();
        bad[flip.index(rec.len())] ^= 1 << bit;
        prop_assert!(open(&bad, key.as_bytes(), |_| Some(&seed)).is_err());
        // Every truncation is refused too.
        let cut = flip.index(rec.len());
        prop_assert!(open(&rec[..cut], key.as_bytes(), |_| Some(&seed)).is_err());
    }
}

// ---------------------------------------------------------------------------------------------
// Validation never panics
// ---------------------------------------------------------------------------------------------

const CANARY: &str = "S3CR3T-CANARY";

/// Strings that are sometimes valid names, sometimes nearly, sometimes anything at all.
fn name_like(max: usize) -> impl Strategy<Value = String> {
    let re = |r: String| proptest::string::string_regex(&r).expect("regex");
    prop_oneof![
        3 => re(format!("[a-z0-9]([-a-z0-9.]{{0,{max}}}[a-z0-9])?")),
        2 => re(format!("[-._a-zA-Z0-9/]{{0,{}}}", max + 10)),
        1 => re(format!("[-._a-zA-Z0-9/]{{{},{}}}", max, max + 300)),
        2 => any::<String>(),
        1 => Just(String::new()),
        1 => prop::sample::select(vec![".", "..", "..a", ".a", "-", "a-", "A", "a/b", "a/", "/a",
            "kubernetes.io/", "example.com/x", "é", "a\u{0}b"]).prop_map(str::to_owned),
    ]
}

fn secret_type() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "Opaque",
            "kubernetes.io/service-account-token",
            "kubernetes.io/dockercfg",
            "kubernetes.io/dockerconfigjson",
            "kubernetes.io/basic-auth",
            "kubernetes.io/ssh-auth",
            "kubernetes.io/tls",
            "bootstrap.kubernetes.io/token",
            "",
        ]).prop_map(str::to_owned),
        1 => any::<String>(),
    ]
}

fn data_key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[-._a-zA-Z0-9]{1,40}",
        1 => prop::sample::select(vec![
            ".dockercfg", ".dockerconfigjson", "username", "password", "ssh-privatekey",
            "tls.crt", "tls.key", ".", "..", "..x", "",
        ]).prop_map(str::to_owned),
        1 => any::<String>(),
        1 => "[-._a-zA-Z0-9]{250,260}",
    ]
}

fn data_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        // JSON-ish values carrying the canary, for the docker types' JSON checks.
        1 => prop::sample::select(vec![
            format!("{{\"auths\":{{\"x\":\"{CANARY}\"}}}}"),
            format!("[\"{CANARY}\"]"),
            format!("{{\"{CANARY}\""),
            format!("{CANARY}{}", "[".repeat(20_000)),
        ]).prop_map(String::into_bytes),
        3 => prop::collection::vec(any::<u8>(), 0..64).prop_map(|mut v| {
            v.extend_from_slice(CANARY.as_bytes());
            v
        }),
    ]
}

prop_compose! {
    fn arbitrary_secret()(
        namespace in name_like(63),
        name in name_like(253),
        type_ in secret_type(),
        labels in prop::collection::btree_map(name_like(63), name_like(63), 0..8),
        annotations in prop::collection::btree_map(name_like(63), any::<String>(), 0..8),
        data in prop::collection::btree_map(data_key(), data_value(), 0..8),
        big in prop::option::weighted(0.05, 1_048_000usize..1_049_000),
        immutable in any::<bool>(),
    ) -> Secret {
        let mut s = Secret::new(namespace, name).with_type(type_);
        s.metadata.labels = labels;
        s.metadata.annotations = annotations;
        s.data = data.into_iter().map(|(k, v)| (k, SecretValue::new(v))).collect::<BTreeMap<_, _>>();
        if let Some(n) = big {
            s.data.insert("big".into(), SecretValue::new(vec![b'x'; n]));
        }
        s.immutable = immutable;
        s
    }
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn validation_never_panics_nor_echoes_data(old in arbitrary_secret(), new in arbitrary_secret()) {
        for result in [validate_secret(&new), validate_update(&old, &new), validate_update(&new, &new)] {
            if let Err(errs) = result {
                prop_assert!(!errs.errors().is_empty());
                let msg = errs.to_string();
                prop_assert!(!msg.is_empty());
                prop_assert!(!msg.contains(CANARY), "a data value in an error: {}", msg);
            }
        }
        // What validates is what Kubernetes would store.
        if validate_secret(&new).is_ok() {
            prop_assert!(!new.metadata.name.is_empty() && new.metadata.name.len() <= 253);
            prop_assert!(!new.metadata.namespace.is_empty() && new.metadata.namespace.len() <= 63);
            prop_assert!(new.data_size() <= 1024 * 1024);
            for k in new.data.keys() {
                prop_assert!(!k.is_empty() && k.len() <= 253 && k != "." && k != ".." && !k.starts_with(".."));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Pagination under concurrent writes
// ---------------------------------------------------------------------------------------------

/// A write made between two pages.
#[derive(Debug, Clone)]
enum Op {
    /// Create (or re-create) a churn object.
    Create(usize),
    /// Delete a churn object (if present).
    Delete(usize),
    /// Update a stable object.
    Touch(usize),
}

const NAMESPACES: [&str; 3] = ["ns-a", "ns-b", "ns-c"];

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0usize..30).prop_map(Op::Create),
        (0usize..30).prop_map(Op::Delete),
        (0usize..40).prop_map(Op::Touch),
    ]
}

fn stable_key(i: usize) -> (&'static str, String) {
    (NAMESPACES[i % 3], format!("stable-{i:03}"))
}

fn churn_key(i: usize) -> (&'static str, String) {
    (NAMESPACES[i % 3], format!("churn-{i:03}"))
}

async fn apply(store: &Store, op: &Op, stable: usize) -> Result<(), StoreError> {
    let r = match *op {
        Op::Create(i) => {
            let (ns, name) = churn_key(i);
            store
                .create(Secret::new(ns, name).with_data("k", b"v"))
                .await
                .map(drop)
        }
        Op::Delete(i) => {
            let (ns, name) = churn_key(i);
            store.delete(ns, &name, 0).await.map(drop)
        }
        Op::Touch(i) => {
            let (ns, name) = stable_key(i % stable.max(1));
            let mut s = store.get(ns, &name).await?;
            s.data
                .insert("touched".into(), SecretValue::new(b"yes".to_vec()));
            store.update(s).await.map(drop)
        }
    };
    match r {
        // The two writers race: an object may already exist or be gone, and a Touch may lose
        // its read-modify-write to the other writer.
        Err(
            StoreError::AlreadyExists { .. }
            | StoreError::NotFound { .. }
            | StoreError::Conflict { .. },
        ) => Ok(()),
        other => other,
    }
}

proptest! {
    #![proptest_config(cases(32))]

    #[test]
    fn pagination_returns_every_object_once_under_writes(
        stable in 1usize..40,
        limit in 1usize..6,
        namespace in prop::sample::select(vec!["", "ns-a", "ns-b"]),
        label_selector in prop::sample::select(vec!["", "!missing", "kind in (stable,churn)"]),
        ops in prop::collection::vec(prop::collection::vec(op(), 0..4), 0..20),
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let dir = tempfile::tempdir().expect("tempdir");
            let kms = TestKms::open(dir.path(), 1);
            let mut cfg = SledConfig::new(dir.path().join("db"));
            // Durability is not what this test is about; fsyncs would only slow it down.
            cfg.durability = Durability::Relaxed;
            let backend = Arc::new(SledBackend::open(cfg).expect("sled"));
            let store = Arc::new(
                Store::open(backend as Arc<dyn Backend>, kms, StoreConfig::default())
                    .await
                    .expect("store"),
            );
            for i in 0..stable {
                let (ns, name) = stable_key(i);
                store
                    .create(Secret::new(ns, name).with_data("k", b"v").with_label("kind", "stable"))
                    .await
                    .expect("create stable");
            }
            // Half the churn objects exist before the list starts.
            for i in (0..30).step_by(2) {
                let (ns, name) = churn_key(i);
                store
                    .create(Secret::new(ns, name).with_data("k", b"v").with_label("kind", "churn"))
                    .await
                    .expect("create churn");
            }
            // A writer running throughout, as well as the scripted writes between pages.
            let stop = Arc::new(AtomicBool::new(false));
            let writer = {
                let (store, stop) = (store.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut n = 0usize;
                    while !stop.load(Ordering::Relaxed) {
                        let op = match n % 3 {
                            0 => Op::Create(n * 7 % 30),
                            1 => Op::Delete(n * 11 % 30),
                            _ => Op::Touch(n * 13),
                        };
                        apply(&store, &op, stable).await.expect("background write");
                        n += 1;
                        tokio::task::yield_now().await;
                    }
                    n
                })
            };
            let mut seen: Vec<(String, String)> = Vec::new();
            let mut token = String::new();
            let mut page = 0usize;
            let mut revision = None;
            loop {
                let res = store
                    .list(&ListOptions {
                        namespace: namespace.to_owned(),
                        label_selector: label_selector.to_owned(),
                        limit,
                        continue_token: token.clone(),
                        ..ListOptions::default()
                    })
                    .await
                    .expect("list page");
                assert!(res.items.len() <= limit);
                // Every page of one list reports the revision of its first page.
                assert_eq!(*revision.get_or_insert(res.revision), res.revision);
                for s in &res.items {
                    assert!(namespace.is_empty() || s.metadata.namespace == namespace);
                    seen.push((s.metadata.namespace.clone(), s.metadata.name.clone()));
                }
                if let Some(batch) = ops.get(page) {
                    for op in batch {
                        apply(&store, op, stable).await.expect("scripted write");
                    }
                }
                page += 1;
                if res.continue_token.is_empty() {
                    break;
                }
                assert!(page < 10_000, "pagination does not end");
                token = res.continue_token;
            }
            stop.store(true, Ordering::Relaxed);
            writer.await.expect("writer");

            // In key order, so nothing can appear twice.
            let mut sorted = seen.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted, seen, "pages out of order or repeating an object");
            let seen: BTreeSet<_> = seen.into_iter().collect();
            // Every object that existed throughout, exactly once.
            for i in 0..stable {
                let (ns, name) = stable_key(i);
                if namespace.is_empty() || ns == namespace {
                    assert!(seen.contains(&(ns.to_owned(), name.clone())), "{ns}/{name} missing");
                }
            }
            // Nothing else but churn objects.
            for (ns, name) in &seen {
                assert!(name.starts_with("stable-") || name.starts_with("churn-"), "{ns}/{name}");
            }
        });
    }
}
