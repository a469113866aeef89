//! A large batch does not hold the runtime's worker: while the storage applies it, the
//! runtime's other tasks run (connections answer pings, reads are served). etcdctl's `check
//! perf` ends with a DeleteRange of about 9,000 keys; run in place on a worker, it left every
//! connection unpolled for seconds and etcdctl's keepalive dropped its connection.
//!
//! The backend here stops inside `apply` of the large batch until a task on the same
//! one-worker runtime tells it to go on: that task can run only if the worker was handed over.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use coffer_core::storage::{
    Backend, Batch, Durability, KeyValues, Lsn, SledBackend, SledConfig, StorageError,
};
use coffer_core::store::raw::RawWrite;
use coffer_core::store::{Store, StoreConfig};
use coffer_testkit::engine::TestKms;
use zeroize::Zeroizing;

/// How many keys the large batch writes (the door's commits of more than 64 writes run off
/// the worker).
const KEYS: usize = 200;

/// Hands-off proof: a batch of at least `KEYS` ops tells `entered`, then waits for `go`.
struct Gate {
    entered: tokio::sync::oneshot::Sender<()>,
    go: std::sync::mpsc::Receiver<()>,
}

#[derive(Debug)]
struct GatedBackend {
    inner: Arc<SledBackend>,
    gate: Mutex<Option<Gate>>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Gate")
    }
}

#[async_trait]
impl Backend for GatedBackend {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.inner.get(key)
    }

    fn scan(
        &self,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: usize,
    ) -> Result<KeyValues, StorageError> {
        self.inner.scan(prefix, start_after, limit)
    }

    fn scan_rev(
        &self,
        prefix: &[u8],
        start_before: Option<&[u8]>,
        limit: usize,
    ) -> Result<KeyValues, StorageError> {
        self.inner.scan_rev(prefix, start_before, limit)
    }

    fn apply(&self, batch: Batch) -> Result<Lsn, StorageError> {
        if batch.ops.len() >= KEYS {
            let gate = self.gate.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(gate) = gate {
                let _ = gate.entered.send(());
                if gate.go.recv_timeout(Duration::from_secs(30)).is_err() {
                    return Err(StorageError::Io(std::io::Error::other(
                        "no other task ran while the large batch was applied",
                    )));
                }
            }
        }
        self.inner.apply(batch)
    }

    fn applied(&self) -> Lsn {
        self.inner.applied()
    }

    async fn wait_durable(&self, lsn: Lsn) -> Result<(), StorageError> {
        self.inner.wait_durable(lsn).await
    }

    async fn sync(&self) -> Result<(), StorageError> {
        self.inner.sync().await
    }

    fn digests_values(&self) -> bool {
        self.inner.digests_values()
    }
}

fn puts(n: usize) -> Vec<RawWrite> {
    (0..n)
        .map(|i| RawWrite::Put {
            key: format!("/registry/configmaps/default/c{i:04}").into_bytes(),
            value: Zeroizing::new(vec![b'v'; 1024]),
            lease: 0,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn the_runtime_runs_other_tasks_while_a_large_batch_is_applied() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = SledConfig::new(dir.path().join("db"));
    cfg.durability = Durability::Sync;
    let sled = Arc::new(SledBackend::open(cfg).expect("open sled"));
    let backend = Arc::new(GatedBackend {
        inner: sled,
        gate: Mutex::new(None),
    });
    let kms = TestKms::open(dir.path(), 1);
    let store = Store::open(
        backend.clone() as Arc<dyn Backend>,
        kms,
        StoreConfig::default(),
    )
    .await
    .expect("open store");
    let (rev, _) = store
        .raw_writer()
        .await
        .commit(puts(KEYS), Vec::new())
        .await
        .expect("the keys, before the gate is set");

    // The gate: the large DeleteRange's batch waits in `apply` until the task below runs.
    let (entered_tx, entered_rx) = tokio::sync::oneshot::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel();
    *backend.gate.lock().expect("gate") = Some(Gate {
        entered: entered_tx,
        go: go_rx,
    });
    let other = tokio::spawn(async move {
        if entered_rx.await.is_ok() {
            let _ = go_tx.send(());
        }
    });
    let deletes = (0..KEYS)
        .map(|i| RawWrite::Delete {
            key: format!("/registry/configmaps/default/c{i:04}").into_bytes(),
        })
        .collect();
    // On a worker, as a server's handlers run (the test's own body runs beside the workers).
    let store = Arc::new(store);
    let (deleted_at, prev) = tokio::spawn({
        let store = store.clone();
        async move { store.raw_writer().await.commit(deletes, Vec::new()).await }
    })
    .await
    .expect("the committing task")
    .expect("the large batch commits: another task ran while it was applied");
    assert_eq!(deleted_at, rev + 1);
    assert_eq!(prev.iter().flatten().count(), KEYS);
    other.await.expect("the other task");
    assert!(
        backend.gate.lock().expect("gate").is_none(),
        "the gate was reached"
    );
}
