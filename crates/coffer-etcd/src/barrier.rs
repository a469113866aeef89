//! etcd's current revision for read barriers: one count-only Range per round, shared by every
//! reader that was waiting when the round began.
//!
//! A read barrier needs a revision that etcd gave out *after* the read began: that is what
//! makes a read served from the cache linearizable. A reader that arrives while a Range is in
//! flight cannot use that Range's answer (etcd may have taken it before the reader arrived), so
//! it waits for the next round, and every reader waiting by then shares it. Under load this
//! turns one etcd round trip per Get into one per round, as etcd batches its own linearizable
//! reads (ReadIndex) and Kubernetes' consistent reads from cache share one revision request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use coffer_core::storage::StorageError;
use tokio::sync::oneshot;

use crate::client::{EtcdClient, EtcdError};

type Answer = Result<u64, Arc<EtcdError>>;

/// The rounds of current-revision requests of one replica.
pub(crate) struct Rounds {
    client: EtcdClient,
    state: Arc<Mutex<State>>,
    /// Ranges sent so far (for tests and figures).
    sent: Arc<AtomicU64>,
}

#[derive(Default)]
struct State {
    /// A task is sending rounds.
    running: bool,
    /// The readers of the next round.
    waiting: Vec<oneshot::Sender<Answer>>,
}

impl Rounds {
    pub(crate) fn new(client: EtcdClient) -> Self {
        Self {
            client,
            state: Arc::default(),
            sent: Arc::default(),
        }
    }

    /// etcd's current revision, read after this call began.
    pub(crate) async fn current(&self) -> Result<u64, StorageError> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.waiting.push(tx);
            !std::mem::replace(&mut state.running, true)
        };
        if start {
            // A task of its own, so that a reader that gives up does not strand the others.
            self.client.spawn(rounds(
                self.client.clone(),
                Arc::clone(&self.state),
                Arc::clone(&self.sent),
            ));
        }
        match rx.await {
            Ok(Ok(revision)) => Ok(revision),
            Ok(Err(e)) => Err(storage_error(&e)),
            Err(_) => Err(EtcdError::Closed.into()),
        }
    }

    /// Ranges sent so far.
    pub(crate) fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

/// Sends rounds while readers wait: each round answers the readers that were waiting before
/// its Range was sent.
async fn rounds(client: EtcdClient, state: Arc<Mutex<State>>, sent: Arc<AtomicU64>) {
    loop {
        let readers = {
            let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
            if state.waiting.is_empty() {
                state.running = false;
                return;
            }
            std::mem::take(&mut state.waiting)
        };
        sent.fetch_add(1, Ordering::Relaxed);
        let answer = client.current_revision().await.map_err(Arc::new);
        for reader in readers {
            let _ = reader.send(answer.clone());
        }
    }
}

/// As `From<EtcdError>`, from a shared error.
fn storage_error(e: &EtcdError) -> StorageError {
    match e {
        EtcdError::Refused(s) => {
            StorageError::Invalid(format!("etcd refused the request: {}", s.message()))
        }
        other => StorageError::Unavailable(other.to_string()),
    }
}
