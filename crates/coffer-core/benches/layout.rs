//! What the rows one Secret update writes cost in raw sled, for the keyspace's layout today and
//! for a revision-keyed one (etcd's), measured in the same run: the evidence for the next step
//! of the write path (README, "The write path").
//!
//! Every case updates one of 10,000 live keys, picked at random, with a 1,100-byte value (a
//! sealed 1 KiB Secret), without fsync:
//!
//! - `today`: the superseded version's copy `h/<key><old rev>` (1,100 bytes, a new key in a
//!   random place), the change index row `r/<rev>` (60 bytes, appended) and the new current
//!   version `l/<key>` (1,100 bytes, replaced in place). This is `KvMvcc`'s layout.
//! - `index_and_by_revision`: as today, but the superseded version's `h/<key><old rev>` row is
//!   an empty index entry; the version itself went once, when it was written, into its change
//!   row `r/<rev>` (1,100 bytes, appended), and the current version is replaced in place.
//! - `current_and_filled_on_supersede`: the current version in place (`l/<key>`), a 60-byte
//!   change row appended for each write, and the superseded version's change row rewritten
//!   in place to hold it (1,100 bytes): each version is written once while current and once
//!   when superseded, and a create writes no more than today.
//! - `current_and_by_revision`: the current version replaced in place (`l/<key>`, so that a
//!   Get stays one read) and each new version appended once under its revision (`r/<rev>`,
//!   1,100 bytes, in place of both the history copy and the change index row).
//! - `by_revision_with_pointer`: each version written once, appended under its revision
//!   (`r/<rev>`, 1,100 bytes), and a 60-byte current-version row `l/<key>` naming it.
//! - `by_revision`: the appended version only, as etcd stores it (its key index is in memory).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const KEYS: u64 = 10_000;
const VALUE: usize = 1_100;
const SMALL: usize = 60;

#[derive(Clone, Copy)]
enum Layout {
    Today,
    IndexAndByRevision,
    CurrentAndFilledOnSupersede,
    CurrentAndByRevision,
    ByRevisionWithPointer,
    ByRevision,
}

struct Keyspace {
    db: sled::Db,
    layout: Layout,
    revision: u64,
    /// Each key's current revision.
    current: Vec<u64>,
    rng: u64,
    _dir: tempfile::TempDir,
}

fn key(k: u64) -> Vec<u8> {
    format!("secrets/bench/name-{k:08}").into_bytes()
}

fn row(prefix: &[u8], key: &[u8], revision: Option<u64>) -> Vec<u8> {
    let mut out = prefix.to_vec();
    out.extend_from_slice(key);
    if let Some(r) = revision {
        out.extend_from_slice(&[0, 1]);
        out.extend_from_slice(&r.to_be_bytes());
    }
    out
}

fn revision_row(revision: u64) -> Vec<u8> {
    row(b"r/", &revision.to_be_bytes(), None)
}

impl Keyspace {
    fn new(layout: Layout) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = coffer_core::storage::sled_tuning(sled::Config::new().path(dir.path()))
            .open()
            .expect("sled");
        let mut ks = Keyspace {
            db,
            layout,
            revision: 1,
            current: vec![0; KEYS as usize],
            rng: 0x9E37_79B9_7F4A_7C15,
            _dir: dir,
        };
        for k in 0..KEYS {
            ks.write(k, false);
        }
        ks
    }

    /// Writes the rows of `k`'s next version (`update`: it replaces one).
    fn write(&mut self, k: u64, update: bool) {
        self.revision += 1;
        let key = key(k);
        let value = vec![0x42u8; VALUE];
        match self.layout {
            Layout::Today => {
                if update {
                    let old = row(b"h/", &key, Some(self.current[k as usize]));
                    self.db.insert(old, value.clone()).expect("insert");
                }
                let change = revision_row(self.revision);
                self.db.insert(change, vec![0x17u8; SMALL]).expect("insert");
                self.db
                    .insert(row(b"l/", &key, None), value)
                    .expect("insert");
            }
            Layout::IndexAndByRevision => {
                if update {
                    let old = row(b"h/", &key, Some(self.current[k as usize]));
                    self.db.insert(old, Vec::new()).expect("insert");
                }
                let version = revision_row(self.revision);
                self.db.insert(version, value.clone()).expect("insert");
                self.db
                    .insert(row(b"l/", &key, None), value)
                    .expect("insert");
            }
            Layout::CurrentAndFilledOnSupersede => {
                if update {
                    let old = revision_row(self.current[k as usize]);
                    self.db.insert(old, value.clone()).expect("insert");
                }
                let change = revision_row(self.revision);
                self.db.insert(change, vec![0x17u8; SMALL]).expect("insert");
                self.db
                    .insert(row(b"l/", &key, None), value)
                    .expect("insert");
            }
            Layout::CurrentAndByRevision => {
                let version = revision_row(self.revision);
                self.db.insert(version, value.clone()).expect("insert");
                self.db
                    .insert(row(b"l/", &key, None), value)
                    .expect("insert");
            }
            Layout::ByRevisionWithPointer => {
                let version = revision_row(self.revision);
                self.db.insert(version, value).expect("insert");
                let pointer = row(b"l/", &key, None);
                self.db
                    .insert(pointer, vec![0x17u8; SMALL])
                    .expect("insert");
            }
            Layout::ByRevision => {
                let version = revision_row(self.revision);
                self.db.insert(version, value).expect("insert");
            }
        }
        self.current[k as usize] = self.revision;
    }

    fn update_random(&mut self) {
        // xorshift: the same key sequence for every layout.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.write(self.rng % KEYS, true);
    }
}

fn update_rows(c: &mut Criterion) {
    let mut group = c.benchmark_group("update_rows_1KiB");
    group.throughput(Throughput::Elements(1));
    for (name, layout) in [
        ("today", Layout::Today),
        ("index_and_by_revision", Layout::IndexAndByRevision),
        (
            "current_and_filled_on_supersede",
            Layout::CurrentAndFilledOnSupersede,
        ),
        ("current_and_by_revision", Layout::CurrentAndByRevision),
        ("by_revision_with_pointer", Layout::ByRevisionWithPointer),
        ("by_revision", Layout::ByRevision),
    ] {
        let mut ks = Keyspace::new(layout);
        group.bench_function(name, |b| b.iter(|| ks.update_random()));
    }
    group.finish();
}

criterion_group!(benches, update_rows);
criterion_main!(benches);
