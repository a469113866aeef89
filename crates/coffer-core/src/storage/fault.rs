//! A fault-injecting [`Backend`] wrapper, for tests: the Nth operation fails as a disk would.
//!
//! [`FaultyBackend`] counts every call of the kinds it is told to watch and makes the Nth one
//! fail with an I/O error whose message contains "injected". It keeps the contract of the
//! backend it stands in for ([`super::SledBackend`]):
//!
//! - a failed `get` or `scan` is transient: the next call goes through;
//! - a failed `apply` leaves the batch not applied, or (every other N) applied in part (its first
//!   op only, as a crash in the middle of `apply_to_sled` could), and a failed `wait_durable` or
//!   `sync` is a failed fsync: in all three cases the wrapper then refuses every later `apply`,
//!   `wait_durable` and `sync` with [`StorageError::Failed`], as the sled backend does, because
//!   the state of the files after a failed write or sync is unknown (fsync-gate semantics).
//!
//! It is public (not `cfg(test)`) so that integration tests can reach it; nothing in the server
//! uses it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use async_trait::async_trait;

use super::{Backend, Batch, KeyValues, Lsn, StorageError};

/// The kinds of backend call a [`FaultyBackend`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultOp {
    /// [`Backend::get`].
    Get,
    /// [`Backend::scan`] and [`Backend::scan_rev`].
    Scan,
    /// [`Backend::apply`] (a write).
    Apply,
    /// [`Backend::wait_durable`] (the fsync a writer waits for).
    WaitDurable,
    /// [`Backend::sync`].
    Sync,
}

impl FaultOp {
    /// Every kind.
    pub const ALL: [FaultOp; 5] = [
        FaultOp::Get,
        FaultOp::Scan,
        FaultOp::Apply,
        FaultOp::WaitDurable,
        FaultOp::Sync,
    ];
}

/// A backend whose `fail_at`-th counted operation fails (see the module docs).
#[derive(Debug)]
pub struct FaultyBackend {
    inner: Arc<dyn Backend>,
    /// Which kinds are counted (and so can fail).
    kinds: Vec<FaultOp>,
    /// 1-based index of the counted operation that fails; 0 never fails.
    fail_at: AtomicU64,
    /// Counted operations so far.
    count: AtomicU64,
    /// The operation that failed, once one has.
    failed_op: std::sync::Mutex<Option<FaultOp>>,
    /// Set after a failed write or sync: every later write or sync is refused.
    gate_closed: AtomicBool,
}

impl FaultyBackend {
    /// Wraps `inner`; the `fail_at`-th call of one of `kinds` fails (0: none does).
    pub fn new(inner: Arc<dyn Backend>, kinds: &[FaultOp], fail_at: u64) -> Self {
        Self {
            inner,
            kinds: kinds.to_vec(),
            fail_at: AtomicU64::new(fail_at),
            count: AtomicU64::new(0),
            failed_op: std::sync::Mutex::new(None),
            gate_closed: AtomicBool::new(false),
        }
    }

    /// How many counted operations have run (failed one included).
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    /// The operation that was made to fail, if the fault has fired.
    pub fn fired(&self) -> Option<FaultOp> {
        *self.failed_op.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a failed write or sync has closed the write path.
    pub fn is_failed(&self) -> bool {
        self.gate_closed.load(Ordering::SeqCst)
    }

    /// Counts a call of kind `op`; true when this is the one that must fail.
    fn hit(&self, op: FaultOp) -> bool {
        if !self.kinds.contains(&op) {
            return false;
        }
        let n = self.count.fetch_add(1, Ordering::SeqCst) + 1;
        if n == self.fail_at.load(Ordering::SeqCst) {
            *self.failed_op.lock().unwrap_or_else(|p| p.into_inner()) = Some(op);
            true
        } else {
            false
        }
    }

    fn injected(op: FaultOp, n: u64) -> StorageError {
        StorageError::Io(std::io::Error::other(format!(
            "injected fault: {op:?} operation #{n} failed"
        )))
    }

    fn gate(&self) -> Result<(), StorageError> {
        if self.gate_closed.load(Ordering::SeqCst) {
            return Err(StorageError::Failed(
                "an earlier injected write or sync failure".into(),
            ));
        }
        Ok(())
    }

    fn close_gate(&self) {
        self.gate_closed.store(true, Ordering::SeqCst);
    }
}

#[async_trait]
impl Backend for FaultyBackend {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        if self.hit(FaultOp::Get) {
            return Err(Self::injected(FaultOp::Get, self.count()));
        }
        self.inner.get(key)
    }

    fn scan(
        &self,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: usize,
    ) -> Result<KeyValues, StorageError> {
        if self.hit(FaultOp::Scan) {
            return Err(Self::injected(FaultOp::Scan, self.count()));
        }
        self.inner.scan(prefix, start_after, limit)
    }

    fn scan_rev(
        &self,
        prefix: &[u8],
        start_before: Option<&[u8]>,
        limit: usize,
    ) -> Result<KeyValues, StorageError> {
        if self.hit(FaultOp::Scan) {
            return Err(Self::injected(FaultOp::Scan, self.count()));
        }
        self.inner.scan_rev(prefix, start_before, limit)
    }

    fn apply(&self, batch: Batch) -> Result<Lsn, StorageError> {
        self.gate()?;
        if self.hit(FaultOp::Apply) {
            let n = self.count();
            if n.is_multiple_of(2)
                && let Some(first) = batch.ops.first()
            {
                // A crash inside the write: only a prefix of the batch reached the store.
                let prefix = Batch {
                    ops: vec![first.clone()],
                };
                let _ = self.inner.apply(prefix);
            }
            self.close_gate();
            return Err(Self::injected(FaultOp::Apply, n));
        }
        self.inner.apply(batch)
    }

    fn applied(&self) -> Lsn {
        self.inner.applied()
    }

    async fn wait_durable(&self, lsn: Lsn) -> Result<(), StorageError> {
        self.gate()?;
        if self.hit(FaultOp::WaitDurable) {
            self.close_gate();
            return Err(Self::injected(FaultOp::WaitDurable, self.count()));
        }
        self.inner.wait_durable(lsn).await
    }

    fn is_failed(&self) -> bool {
        FaultyBackend::is_failed(self)
    }

    fn digests_values(&self) -> bool {
        self.inner.digests_values()
    }

    async fn sync(&self) -> Result<(), StorageError> {
        self.gate()?;
        if self.hit(FaultOp::Sync) {
            self.close_gate();
            return Err(Self::injected(FaultOp::Sync, self.count()));
        }
        self.inner.sync().await
    }
}
