//! The cost of integrity (issue 17), before vs after in the same run, same machine, same sled:
//!
//! - `integrity_durable_put/{plain,authenticated}`: 16 concurrent writers doing durable 1 KiB
//!   creates (fdatasync'd, group commit) over a sled backend without and with integrity (MAC'd
//!   log entries, write intent and lsn record, the state digest kept per write); elements (puts)
//!   per second.
//! - `integrity_open_100k/{plain,authenticated}`: opening a data directory that holds 100,000
//!   Secrets (the authenticated open recomputes the state digest from every record).
//!
//! `cargo bench -p coffer-core --bench integrity` (only on a quiet machine: the ratio is what
//! counts).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer_core::kms::{Kms, LocalKek};
use coffer_core::model::Secret;
use coffer_core::storage::integrity::StoreIntegrity;
use coffer_core::storage::{Backend, Durability, SledBackend, SledConfig};
use coffer_core::store::{Store, StoreConfig};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

const WRITERS: u64 = 16;
const OPEN_SECRETS: u64 = 100_000;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn backend(dir: &Path, d: Durability, integrity: Option<Arc<StoreIntegrity>>) -> Arc<dyn Backend> {
    let mut cfg = SledConfig::new(dir.join("db"));
    cfg.durability = d;
    cfg.integrity = integrity;
    Arc::new(SledBackend::open(cfg).expect("sled"))
}

/// Both variants: (name, integrity material or none), the same KEK.
fn variants(
    rt: &tokio::runtime::Runtime,
    kek: &Arc<LocalKek>,
) -> Vec<(&'static str, Option<Arc<StoreIntegrity>>)> {
    let integrity = rt
        .block_on(coffer_core::kms::integrity::create(kek.as_ref()))
        .expect("integrity seed");
    vec![
        ("plain", None),
        ("authenticated", Some(Arc::new(integrity))),
    ]
}

fn durable_puts(c: &mut Criterion) {
    let rt = runtime();
    let keys = tempfile::tempdir().expect("tempdir");
    let kek = Arc::new(LocalKek::open_or_create(keys.path().join("kek.key")).expect("kek"));
    let mut group = c.benchmark_group("integrity_durable_put");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(8));
    group.throughput(Throughput::Elements(1));
    let mut dirs = Vec::new();
    for (name, integrity) in variants(&rt, &kek) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(
            rt.block_on(Store::open(
                backend(dir.path(), Durability::Sync, integrity),
                kek.clone() as Arc<dyn Kms>,
                StoreConfig::default(),
            ))
            .expect("store"),
        );
        dirs.push(dir);
        let mut next = 0u64;
        group.bench_with_input(BenchmarkId::from_parameter(name), &(), |b, ()| {
            b.iter_custom(|iters| {
                let base = next;
                next += iters;
                let store = store.clone();
                rt.block_on(async move {
                    let start = Instant::now();
                    let mut tasks = Vec::new();
                    for t in 0..WRITERS {
                        let store = store.clone();
                        tasks.push(tokio::spawn(async move {
                            let mut i = t;
                            while i < iters {
                                let s = Secret::new("durable", format!("d{}", base + i))
                                    .with_data("v", vec![0x42u8; 1024]);
                                store.create(s).await.expect("create");
                                i += WRITERS;
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

fn open_100k(c: &mut Criterion) {
    let rt = runtime();
    let keys = tempfile::tempdir().expect("tempdir");
    let kek = Arc::new(LocalKek::open_or_create(keys.path().join("kek.key")).expect("kek"));
    let mut group = c.benchmark_group("integrity_open_100k");
    group.sample_size(10);
    for (name, integrity) in variants(&rt, &kek) {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = Arc::new(
                rt.block_on(Store::open(
                    backend(dir.path(), Durability::Relaxed, integrity.clone()),
                    kek.clone() as Arc<dyn Kms>,
                    StoreConfig::default(),
                ))
                .expect("store"),
            );
            rt.block_on(async {
                let mut tasks = Vec::new();
                for t in 0..WRITERS {
                    let store = store.clone();
                    tasks.push(tokio::spawn(async move {
                        let mut i = t;
                        while i < OPEN_SECRETS {
                            let s = Secret::new(format!("ns{}", i % 10), format!("s{i}"))
                                .with_data("v", vec![0x42u8; 256]);
                            store.create(s).await.expect("create");
                            i += WRITERS;
                        }
                    }));
                }
                for t in tasks {
                    t.await.expect("join");
                }
                store.sync().await.expect("sync");
            });
        }
        group.bench_function(name, |b| {
            b.iter(|| drop(backend(dir.path(), Durability::Sync, integrity.clone())))
        });
    }
    group.finish();
}

criterion_group!(benches, durable_puts, open_100k);
criterion_main!(benches);
