//! What history costs, each figure against its baseline in the same run:
//!
//! - `history_durable/{create,update}/{on,off}`: 16 concurrent writers doing durable (fdatasync'd)
//!   1 KiB creates or updates with history kept (`history_retention` 1h) vs keeping only the
//!   current version (`history_retention` 0, the behaviour before history).
//! - `history_get/{latest,old}`: `Store::get` vs `Store::get_at` an old revision of a Secret with
//!   100 kept versions.
//! - `history_replay/10000`: `Store::changes_after` reading 10,000 changes back from storage and
//!   opening them (what a watch resuming from storage does), in elements (events) per second.
//!
//! It also prints the disk figure once: stored bytes per kept version vs per current record.

use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer_core::kms::LocalKek;
use coffer_core::model::Secret;
use coffer_core::storage::mvcc::layout::{VALUE_OFFSET, current_key};
use coffer_core::storage::{Backend, Durability, SledBackend, SledConfig};
use coffer_core::store::{Store, StoreConfig};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

const WRITERS: u64 = 16;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn open_store(
    rt: &tokio::runtime::Runtime,
    dir: &std::path::Path,
    durability: Durability,
    retention: Duration,
) -> Arc<Store> {
    open_store_and_backend(rt, dir, durability, retention).0
}

fn open_store_and_backend(
    rt: &tokio::runtime::Runtime,
    dir: &std::path::Path,
    durability: Durability,
    retention: Duration,
) -> (Arc<Store>, Arc<dyn Backend>) {
    let kek = LocalKek::open_or_create(dir.join("kek.key")).expect("kek");
    let mut cfg = SledConfig::new(dir.join("db"));
    cfg.durability = durability;
    let backend: Arc<dyn Backend> = Arc::new(SledBackend::open(cfg).expect("sled"));
    let config = StoreConfig {
        history_retention: retention,
        ..StoreConfig::default()
    };
    let store = rt
        .block_on(Store::open(backend.clone(), Arc::new(kek), config))
        .expect("store");
    (Arc::new(store), backend)
}

fn payload(n: u64) -> Vec<u8> {
    let mut v = vec![0x42u8; 1024];
    v[..8].copy_from_slice(&n.to_le_bytes());
    v
}

/// `iters` writes from [`WRITERS`] tasks; `update` rewrites 1,000 existing Secrets, else each
/// write creates a new one.
async fn write_many(store: Arc<Store>, base: u64, iters: u64, update: bool) -> Duration {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..WRITERS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = t;
            while i < iters {
                let n = base + i;
                if update {
                    let s =
                        Secret::new("bench", format!("u{}", n % 1000)).with_data("v", payload(n));
                    store.update(s).await.expect("update");
                } else {
                    let s = Secret::new("bench", format!("c{n}")).with_data("v", payload(n));
                    store.create(s).await.expect("create");
                }
                i += WRITERS;
            }
        }));
    }
    for t in tasks {
        t.await.expect("join");
    }
    start.elapsed()
}

fn durable_writes(c: &mut Criterion) {
    let rt = runtime();
    for (label, update) in [("create", false), ("update", true)] {
        let mut group = c.benchmark_group(format!("history_durable/{label}"));
        group.sample_size(10);
        group.measurement_time(Duration::from_secs(8));
        group.throughput(Throughput::Elements(1));
        for (mode, retention) in [("on", Duration::from_secs(3600)), ("off", Duration::ZERO)] {
            let dir = tempfile::tempdir().expect("tempdir");
            let store = open_store(&rt, dir.path(), Durability::Sync, retention);
            if update {
                for i in 0..1000 {
                    rt.block_on(
                        store.create(
                            Secret::new("bench", format!("u{i}")).with_data("v", payload(0)),
                        ),
                    )
                    .expect("create");
                }
            }
            let mut next = 0u64;
            group.bench_function(BenchmarkId::from_parameter(mode), |b| {
                b.iter_custom(|iters| {
                    let base = next;
                    next += iters;
                    rt.block_on(write_many(store.clone(), base, iters, update))
                })
            });
        }
        group.finish();
    }
}

fn old_reads(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, backend) = open_store_and_backend(
        &rt,
        dir.path(),
        Durability::Relaxed,
        Duration::from_secs(3600),
    );
    // 1,000 Secrets, one of which has 100 versions, interleaved with the others' writes.
    for i in 0..1000 {
        rt.block_on(store.create(Secret::new("bench", format!("s{i}")).with_data("v", payload(0))))
            .expect("create");
    }
    let mut old = 0;
    for n in 1..=100u64 {
        let s = rt
            .block_on(store.update(Secret::new("bench", "hot").with_data("v", payload(n))))
            .or_else(|_| {
                rt.block_on(store.create(Secret::new("bench", "hot").with_data("v", payload(n))))
            })
            .expect("write hot");
        if n == 50 {
            old = s.metadata.resource_version;
        }
        rt.block_on(
            store.update(Secret::new("bench", format!("s{}", n % 1000)).with_data("v", payload(n))),
        )
        .expect("update other");
    }
    let stats = store.history_stats();
    let current = backend
        .get(&current_key(b"s/bench/hot"))
        .expect("get")
        .map_or(0, |v| v.len());
    eprintln!(
        "history disk: {} kept versions in {} bytes: {:.0} bytes per kept version, {current} bytes \
         per current version (a 1 KiB Secret; both with their {VALUE_OFFSET}-byte version header)",
        stats.versions,
        stats.bytes,
        stats.bytes as f64 / stats.versions.max(1) as f64
    );
    let mut group = c.benchmark_group("history_get");
    group.throughput(Throughput::Elements(1));
    group.bench_function("latest", |b| {
        b.to_async(&rt).iter(|| {
            let store = store.clone();
            async move { store.get("bench", "hot").await.expect("get") }
        })
    });
    group.bench_function("old", |b| {
        b.to_async(&rt).iter(|| {
            let store = store.clone();
            async move { store.get_at("bench", "hot", old).await.expect("get_at") }
        })
    });
    group.finish();
}

fn replay(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(
        &rt,
        dir.path(),
        Durability::Relaxed,
        Duration::from_secs(3600),
    );
    for i in 0..100u64 {
        rt.block_on(store.create(Secret::new("bench", format!("s{i}")).with_data("v", payload(i))))
            .expect("create");
    }
    let from = store.revision();
    for n in 0..10_000u64 {
        rt.block_on(store.update(
            Secret::new("bench", format!("s{}", n % 100)).with_data("v", payload(n + 100)),
        ))
        .expect("update");
    }
    let until = store.revision();
    assert_eq!(until - from, 10_000);
    let mut group = c.benchmark_group("history_replay");
    group.sample_size(10);
    group.throughput(Throughput::Elements(10_000));
    group.bench_function("10000", |b| {
        b.to_async(&rt).iter(|| {
            let store = store.clone();
            async move {
                let mut after = from;
                let mut seen = 0;
                while after < until {
                    let page = store
                        .changes_after(after, until, 1000)
                        .await
                        .expect("changes");
                    seen += page.len();
                    after = page.last().map_or(until, |e| e.revision);
                }
                assert_eq!(seen, 10_000, "from {from} until {until}");
            }
        })
    });
    group.finish();
}

criterion_group!(benches, durable_writes, old_reads, replay);
criterion_main!(benches);
