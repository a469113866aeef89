//! Seal/open throughput of the record format for both AEADs (HKDF derivation included, as on
//! the write path).

use coffer_core::crypto::{Algorithm, Seed, open, seal};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

fn bench(c: &mut Criterion) {
    let seed = Seed::generate();
    for alg in [Algorithm::Aes256Gcm, Algorithm::XChaCha20Poly1305] {
        let mut group = c.benchmark_group(format!("seal/{alg}"));
        for size in [256usize, 4096, 65536, 1 << 20] {
            let msg = vec![0x5Au8; size];
            group.throughput(Throughput::Bytes(size as u64));
            group.bench_with_input(BenchmarkId::from_parameter(size), &msg, |b, msg| {
                b.iter(|| seal(alg, 1, &seed, b"ns/name", msg))
            });
        }
        group.finish();
        let mut group = c.benchmark_group(format!("open/{alg}"));
        for size in [256usize, 4096, 65536, 1 << 20] {
            let rec = seal(alg, 1, &seed, b"ns/name", &vec![0x5Au8; size]);
            group.throughput(Throughput::Bytes(size as u64));
            group.bench_with_input(BenchmarkId::from_parameter(size), &rec, |b, rec| {
                b.iter(|| open(rec, b"ns/name", |_| Some(&seed)).expect("open"))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
