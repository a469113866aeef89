//! The engine against raw sled, measured in the same run with the same sled configuration.
//!
//! - `put/{1KiB,16KiB}`: `Store::update` (validate, seal, write with a revision, event) vs a raw
//!   unencrypted `sled::Tree::insert` of the same bytes. Both without fsync (relaxed durability
//!   on the store; a plain insert on raw sled), so the ratio is the engine's own cost.
//! - `get/{1KiB,16KiB}`: `Store::get` (read, open, decode) vs raw `sled::Tree::get`.
//! - `seal_only` / `open_only` in those groups: the record format alone (HKDF and
//!   AES-256-GCM) over the same value, so the engine's cost beyond the envelope shows in the
//!   same run.
//! - `durable_put/{1,16,64}`: concurrent writers doing durable 1 KiB creates (fdatasync'd,
//!   group commit); throughput is in elements (puts) per second.

use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer_core::crypto::{Algorithm, Seed, open, seal};
use coffer_core::kms::LocalKek;
use coffer_core::model::Secret;
use coffer_core::storage::{Backend, Durability, SledBackend, SledConfig};
use coffer_core::store::{Store, StoreConfig};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

const KEYS: usize = 1000;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn open_store(rt: &tokio::runtime::Runtime, dir: &std::path::Path, d: Durability) -> Arc<Store> {
    let kek = LocalKek::open_or_create(dir.join("kek.key")).expect("kek");
    let mut cfg = SledConfig::new(dir.join("db"));
    cfg.durability = d;
    let backend: Arc<dyn Backend> = Arc::new(SledBackend::open(cfg).expect("sled"));
    Arc::new(
        rt.block_on(Store::open(backend, Arc::new(kek), StoreConfig::default()))
            .expect("store"),
    )
}

fn payload(size: usize, n: u64) -> Vec<u8> {
    let mut v = vec![0x42u8; size];
    v[..8].copy_from_slice(&n.to_le_bytes());
    v
}

fn put_get(c: &mut Criterion) {
    let rt = runtime();
    for (label, size) in [("1KiB", 1024usize), ("16KiB", 16 * 1024)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_store(&rt, dir.path(), Durability::Relaxed);
        let raw_dir = tempfile::tempdir().expect("tempdir");
        let raw = coffer_core::storage::sled_tuning(sled::Config::new().path(raw_dir.path()))
            .open()
            .expect("raw sled");
        for i in 0..KEYS {
            rt.block_on(
                store
                    .create(Secret::new("bench", format!("s{i}")).with_data("v", payload(size, 0))),
            )
            .expect("create");
            raw.insert(format!("s/bench/s{i}"), payload(size, 0))
                .expect("insert");
        }
        let seed = Seed::generate();
        let aad = b"s/bench/s1";
        let mut group = c.benchmark_group(format!("put/{label}"));
        group.throughput(Throughput::Elements(1));
        let mut n = 1u64;
        group.bench_function("seal_only", |b| {
            b.iter(|| {
                n += 1;
                seal(Algorithm::Aes256Gcm, 1, &seed, aad, &payload(size, n))
            })
        });
        group.bench_function("raw_sled", |b| {
            b.iter(|| {
                n += 1;
                let i = n as usize % KEYS;
                raw.insert(format!("s/bench/s{i}"), payload(size, n))
                    .expect("insert")
            })
        });
        group.bench_function("coffer", |b| {
            b.to_async(&rt).iter(|| {
                n += 1;
                let i = n as usize % KEYS;
                let s = Secret::new("bench", format!("s{i}")).with_data("v", payload(size, n));
                let store = store.clone();
                async move { store.update(s).await.expect("update") }
            })
        });
        group.finish();
        let mut group = c.benchmark_group(format!("get/{label}"));
        group.throughput(Throughput::Elements(1));
        let record = seal(Algorithm::Aes256Gcm, 1, &seed, aad, &payload(size, 0));
        group.bench_function("open_only", |b| {
            b.iter(|| open(&record, aad, |_| Some(&seed)).expect("open"))
        });
        group.bench_function("raw_sled", |b| {
            b.iter(|| {
                n += 1;
                raw.get(format!("s/bench/s{}", n as usize % KEYS))
                    .expect("get")
            })
        });
        group.bench_function("coffer", |b| {
            b.to_async(&rt).iter(|| {
                n += 1;
                let store = store.clone();
                async move {
                    store
                        .get("bench", &format!("s{}", n as usize % KEYS))
                        .await
                        .expect("get")
                }
            })
        });
        group.finish();
    }
}

fn durable_puts(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(&rt, dir.path(), Durability::Sync);
    let mut group = c.benchmark_group("durable_put_1KiB");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(8));
    group.throughput(Throughput::Elements(1));
    let mut next = 0u64;
    for writers in [1usize, 16, 64] {
        group.bench_with_input(BenchmarkId::from_parameter(writers), &writers, |b, &w| {
            b.iter_custom(|iters| {
                let base = next;
                next += iters;
                let store = store.clone();
                rt.block_on(async move {
                    let start = Instant::now();
                    let mut tasks = Vec::new();
                    for t in 0..w as u64 {
                        let store = store.clone();
                        tasks.push(tokio::spawn(async move {
                            let mut i = t;
                            while i < iters {
                                let s = Secret::new("durable", format!("d{}", base + i))
                                    .with_data("v", payload(1024, i));
                                store.create(s).await.expect("create");
                                i += w as u64;
                            }
                        }));
                    }
                    for t in tasks {
                        t.await.expect("join");
                    }
                    start.elapsed()
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, put_get, durable_puts);
criterion_main!(benches);
