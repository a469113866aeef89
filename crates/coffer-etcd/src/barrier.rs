//! Read barriers: one round of "what is etcd's revision now, and has the cache caught up with
//! it" serves every reader that was waiting when the round began.
//!
//! A read served from the watch-fed cache is linearizable once the cache has reached a revision
//! that etcd gave out *after* the read began. A reader that arrives while a round is running
//! cannot use that round's revision (etcd may have given it out before the reader arrived), so
//! it waits for the next round, and every reader waiting by then shares it: one count-only Range
//! (and, rarely, one quiet check) per round instead of per Get, as etcd batches its own
//! linearizable reads (ReadIndex) and Kubernetes' consistent reads from cache share one
//! revision request.
//!
//! The cache's revision advances with the events of its watch on `PREFIX/`. When etcd's newest
//! revisions belong to keys outside the prefix (another tenant of the cluster), no event brings
//! the cache there; then a *quiet check* proves from etcd that nothing under the prefix changed
//! between the cache's revision and the target, and the cache moves to the target. (etcd 3.4's
//! progress requests could do this, but before 3.4.24 their answer can overtake the events it
//! claims were delivered; periodic progress notifications, when etcd is run with
//! `--experimental-watch-progress-notify-interval`, advance the cache too.)

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use coffer_core::storage::StorageError;
use tokio::sync::oneshot;

use crate::backend::prefix_end;
use crate::cache::Cache;
use crate::client::{EtcdClient, EtcdError};
use crate::proto::etcdserverpb as pb;

/// The rounds of read barriers of one replica.
pub(crate) struct Rounds {
    shared: Arc<Shared>,
    state: Arc<Mutex<State>>,
}

struct Shared {
    client: EtcdClient,
    cache: Arc<Cache>,
    /// `PREFIX/`: every key the cache's watch follows.
    all: Vec<u8>,
    /// Rounds run so far (each one count-only Range): for tests and figures.
    rounds: AtomicU64,
    /// Quiet checks run so far.
    quiet_checks: AtomicU64,
}

#[derive(Default)]
struct State {
    /// A task is running rounds.
    running: bool,
    /// The readers of the next round.
    waiting: Vec<oneshot::Sender<Result<(), Failure>>>,
}

/// A round's failure, given to each of its readers.
#[derive(Clone)]
enum Failure {
    Invalid(String),
    Unavailable(String),
}

impl From<StorageError> for Failure {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::Invalid(s) => Failure::Invalid(s),
            StorageError::Unavailable(s) => Failure::Unavailable(s),
            other => Failure::Unavailable(other.to_string()),
        }
    }
}

impl From<Failure> for StorageError {
    fn from(f: Failure) -> Self {
        match f {
            Failure::Invalid(s) => StorageError::Invalid(s),
            Failure::Unavailable(s) => StorageError::Unavailable(s),
        }
    }
}

impl Rounds {
    pub(crate) fn new(client: EtcdClient, cache: Arc<Cache>) -> Self {
        let all = format!("{}/", client.prefix()).into_bytes();
        Self {
            shared: Arc::new(Shared {
                client,
                cache,
                all,
                rounds: AtomicU64::new(0),
                quiet_checks: AtomicU64::new(0),
            }),
            state: Arc::default(),
        }
    }

    /// Returns once the cache holds every change etcd committed before this call began.
    pub(crate) async fn barrier(&self) -> Result<(), StorageError> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.waiting.push(tx);
            !std::mem::replace(&mut state.running, true)
        };
        if start {
            // A task of its own, so that a reader that gives up does not strand the others.
            self.shared
                .client
                .spawn(rounds(Arc::clone(&self.shared), Arc::clone(&self.state)));
        }
        match rx.await {
            Ok(answer) => answer.map_err(StorageError::from),
            Err(_) => Err(EtcdError::Closed.into()),
        }
    }

    /// Rounds run so far (one count-only Range each).
    pub(crate) fn rounds(&self) -> u64 {
        self.shared.rounds.load(Ordering::Relaxed)
    }

    /// Quiet checks run so far.
    pub(crate) fn quiet_checks(&self) -> u64 {
        self.shared.quiet_checks.load(Ordering::Relaxed)
    }
}

/// Runs rounds while readers wait: each round answers the readers that were waiting before it
/// asked etcd for its revision.
async fn rounds(shared: Arc<Shared>, state: Arc<Mutex<State>>) {
    loop {
        let readers = {
            let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
            if state.waiting.is_empty() {
                state.running = false;
                return;
            }
            std::mem::take(&mut state.waiting)
        };
        let answer = round(&shared).await.map_err(Failure::from);
        for reader in readers {
            let _ = reader.send(answer.clone());
        }
    }
}

async fn round(shared: &Shared) -> Result<(), StorageError> {
    shared.rounds.fetch_add(1, Ordering::Relaxed);
    let target = shared.client.current_revision().await?;
    let quiet = |from: u64, to: u64| async move {
        shared.quiet_checks.fetch_add(1, Ordering::Relaxed);
        unchanged_between(&shared.client, &shared.all, from, to).await
    };
    shared
        .cache
        .wait_for(target, shared.client.timeout(), quiet)
        .await
}

/// Whether no key under `all` changed in `(from, to]`: every key there at `to` was last
/// modified at or before `from` (so it existed unchanged at `from`), and as many keys existed at
/// `from` (so none was deleted since).
///
/// etcd (3.4 and 3.5) ignores `min_mod_revision`/`max_mod_revision` when counting (`count_only`
/// counts every key of the range), so the newest modification is found by sorting on
/// `mod_revision`, keys only, limit 1.
pub(crate) async fn unchanged_between(
    client: &EtcdClient,
    all: &[u8],
    from: u64,
    to: u64,
) -> Result<bool, StorageError> {
    let end = prefix_end(all);
    let newest = {
        let req = pb::RangeRequest {
            key: all.to_vec(),
            range_end: end.clone(),
            revision: to as i64,
            limit: 1,
            keys_only: true,
            sort_order: pb::range_request::SortOrder::Descend as i32,
            sort_target: pb::range_request::SortTarget::Mod as i32,
            ..Default::default()
        };
        client
            .read(move |mut kv| {
                let req = req.clone();
                async move { kv.range(req).await }
            })
            .await?
            .kvs
            .first()
            .map_or(0, |kv| kv.mod_revision.max(0) as u64)
    };
    if newest > from {
        return Ok(false);
    }
    let count = |revision: u64| {
        let req = pb::RangeRequest {
            key: all.to_vec(),
            range_end: end.clone(),
            revision: revision as i64,
            count_only: true,
            ..Default::default()
        };
        async move {
            client
                .read(move |mut kv| {
                    let req = req.clone();
                    async move { kv.range(req).await }
                })
                .await
                .map(|r| r.count)
        }
    };
    Ok(count(from).await? == count(to).await?)
}
