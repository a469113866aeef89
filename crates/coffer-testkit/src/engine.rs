//! Shared helpers for the engine's integration tests.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use coffer_core::kms::{Kms, KmsError, KmsStatus, LocalKek, Wrapped};
use coffer_core::storage::{Backend, Durability, SledBackend, SledConfig};
use coffer_core::store::{Store, StoreConfig};
use zeroize::Zeroizing;

/// A real KMS (local key files, one per key version) whose current key can be switched, as a KMS
/// does on rotation; counts its calls so tests can check that writes cost no KMS call.
#[derive(Debug)]
pub struct TestKms {
    keks: Vec<LocalKek>,
    current: AtomicUsize,
    pub encrypts: AtomicUsize,
    pub decrypts: AtomicUsize,
    pub statuses: AtomicUsize,
}

impl TestKms {
    /// Opens (or creates) `versions` key files under `dir`.
    pub fn open(dir: &Path, versions: usize) -> Arc<Self> {
        let keks = (0..versions)
            .map(|i| LocalKek::open_or_create(dir.join(format!("kek-{i}.key"))).expect("kek"))
            .collect();
        Arc::new(Self {
            keks,
            current: AtomicUsize::new(0),
            encrypts: AtomicUsize::new(0),
            decrypts: AtomicUsize::new(0),
            statuses: AtomicUsize::new(0),
        })
    }

    /// Makes key version `i` current (a key_id change, as after a KMS rotation).
    pub fn rotate_to(&self, i: usize) {
        self.current.store(i, Ordering::SeqCst);
    }

    pub fn key_id(&self, i: usize) -> String {
        self.keks[i].key_id().to_owned()
    }

    fn cur(&self) -> &LocalKek {
        &self.keks[self.current.load(Ordering::SeqCst)]
    }
}

#[async_trait]
impl Kms for TestKms {
    async fn status(&self) -> Result<KmsStatus, KmsError> {
        self.statuses.fetch_add(1, Ordering::SeqCst);
        self.cur().status().await
    }

    async fn encrypt(&self, uid: &str, plaintext: &[u8]) -> Result<Wrapped, KmsError> {
        self.encrypts.fetch_add(1, Ordering::SeqCst);
        self.cur().encrypt(uid, plaintext).await
    }

    async fn decrypt(&self, uid: &str, w: &Wrapped) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        self.decrypts.fetch_add(1, Ordering::SeqCst);
        match self.keks.iter().find(|k| k.key_id() == w.key_id) {
            Some(k) => k.decrypt(uid, w).await,
            None => Err(KmsError::Rejected(format!("unknown key_id {}", w.key_id))),
        }
    }

    fn describe(&self) -> String {
        "test kms".into()
    }
}

/// Opens a store in `dir` over sled with the given KMS; returns the backend too for tampering.
pub async fn open_store(
    dir: &Path,
    kms: Arc<dyn Kms>,
    config: StoreConfig,
) -> (Store, Arc<SledBackend>) {
    let mut cfg = SledConfig::new(dir.join("db"));
    cfg.durability = Durability::Sync;
    let backend = Arc::new(SledBackend::open(cfg).expect("open sled"));
    let store = Store::open(backend.clone() as Arc<dyn Backend>, kms, config)
        .await
        .expect("open store");
    (store, backend)
}
