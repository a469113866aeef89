//! IO faults under the real gRPC server: the storage backend fails its Nth operation.
//!
//! For every N in a range, a scripted workload (creates, updates, deletes, gets, lists on a few
//! keys, one client, in order) runs against a server whose store sits on a
//! [`FaultyBackend`] over a real sled data directory, the Nth backend call (get, scan, apply,
//! wait_durable or sync) failing. Checked for every N:
//!
//! - no panic and no hang (every call answers within a deadline);
//! - every error is UNAVAILABLE or INTERNAL with a message naming the storage failure;
//! - after a failed write or sync, every later write is refused with UNAVAILABLE (the store
//!   does not pretend durability after a failed fsync);
//! - reopening the data directory without faults shows every acknowledged write with exactly its
//!   content and resource_version, and an unacknowledged one either whole or not at all.
//!
//! A second test fails the real write-ahead log's write+fdatasync (not the wrapper), through
//! the server, and checks the same.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use coffer_core::kms::{Kms, LocalKek};
use coffer_core::storage::fault::{FaultOp, FaultyBackend};
use coffer_core::storage::{Backend, Durability, SledBackend, SledConfig};
use coffer_core::store::{Store, StoreConfig, StoreError};
use coffer_server::proto::v1 as pb;
use coffer_server::proto::v1::secrets_client::SecretsClient;
use coffer_server::server::{ListenAddr, RunningServer, ServerOptions};
use coffer_testkit::server::TestServer;
use tonic::Code;
use tonic::transport::Channel;

/// Keys the workload writes.
const KEYS: usize = 4;
/// Steps of the workload.
const STEPS: usize = 36;
/// The deadline of every call: longer means a hang.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Absent,
    /// Data, and the resource_version when acknowledged.
    Present(BTreeMap<String, Vec<u8>>, Option<u64>),
}

#[derive(Debug)]
struct Key {
    acked: State,
    /// Unacknowledged writes after `acked` (each may or may not have happened).
    doubt: Vec<State>,
}

fn name(k: usize) -> String {
    format!("key-{k}")
}

fn data(step: usize) -> BTreeMap<String, Vec<u8>> {
    let mut d = BTreeMap::new();
    d.insert("step".to_owned(), step.to_string().into_bytes());
    d.insert("pad".to_owned(), vec![step as u8; 100 + step * 13]);
    d
}

fn proto(k: usize, d: &BTreeMap<String, Vec<u8>>, rv: u64) -> pb::Secret {
    pb::Secret {
        metadata: Some(pb::ObjectMeta {
            name: name(k),
            namespace: "faults".into(),
            resource_version: rv,
            ..Default::default()
        }),
        data: d.clone().into_iter().collect::<HashMap<_, _>>(),
        ..Default::default()
    }
}

fn data_of(s: &pb::Secret) -> BTreeMap<String, Vec<u8>> {
    s.data.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn rv_of(s: &pb::Secret) -> u64 {
    s.metadata.as_ref().map_or(0, |m| m.resource_version)
}

async fn start(store: Store) -> (RunningServer, SecretsClient<Channel>) {
    let options = ServerOptions {
        token_cleaner_interval: None,
        ..ServerOptions::default()
    };
    let server = TestServer::builder()
        .store(store)
        .options(options)
        .listen(vec![ListenAddr::Tcp("127.0.0.1:0".into())])
        .without_metrics_listener()
        .start()
        .await;
    let client = server.client().await;
    // The store goes with the server (the test waits for its last handle after shutdown).
    (server.running, client)
}

/// An error a client may see for a storage fault: UNAVAILABLE or INTERNAL, with a message.
fn check_error(n: u64, what: &str, e: &tonic::Status) {
    assert!(
        matches!(e.code(), Code::Unavailable | Code::Internal),
        "N={n}: {what}: unexpected code {:?}: {}",
        e.code(),
        e.message()
    );
    let m = e.message();
    assert!(
        m.contains("injected") || m.contains("storage") || m.contains("write-ahead log"),
        "N={n}: {what}: unclear message {m:?}"
    );
}

/// What one run did.
#[derive(Debug, Default)]
struct Run {
    acked: usize,
    failed_calls: usize,
    open_failed: bool,
}

/// Runs the workload against `client`; returns the model of what must survive.
async fn workload(
    n: u64,
    client: &mut SecretsClient<Channel>,
    faulty: &FaultyBackend,
    run: &mut Run,
) -> Vec<Key> {
    let mut keys: Vec<Key> = (0..KEYS)
        .map(|_| Key {
            acked: State::Absent,
            doubt: Vec::new(),
        })
        .collect();
    // Set once a write or sync failed: from then on writes must be refused.
    let mut gate_closed = false;
    for step in 0..STEPS {
        let k = step % KEYS;
        let op = step / KEYS % 4;
        // Reads.
        if op == 3 {
            let get = tokio::time::timeout(
                CALL_TIMEOUT,
                client.get(pb::GetSecretRequest {
                    namespace: "faults".into(),
                    name: name(k),
                    resource_version: 0,
                }),
            )
            .await
            .unwrap_or_else(|_| panic!("N={n}: get hung"));
            match get {
                Ok(_) => {}
                Err(e) if e.code() == Code::NotFound => {}
                Err(e) => {
                    run.failed_calls += 1;
                    check_error(n, "get", &e);
                }
            }
            let list = tokio::time::timeout(
                CALL_TIMEOUT,
                client.list(pb::ListSecretsRequest {
                    namespace: "faults".into(),
                    ..Default::default()
                }),
            )
            .await
            .unwrap_or_else(|_| panic!("N={n}: list hung"));
            if let Err(e) = list {
                run.failed_calls += 1;
                check_error(n, "list", &e);
            }
            continue;
        }
        // A key with a write in doubt is left alone: its state is unknown until the reopen.
        if !keys[k].doubt.is_empty() {
            continue;
        }
        let d = data(step);
        let (next, result) = match &keys[k].acked {
            State::Absent => (
                State::Present(d.clone(), None),
                tokio::time::timeout(
                    CALL_TIMEOUT,
                    client.create(pb::CreateSecretRequest {
                        secret: Some(proto(k, &d, 0)),
                    }),
                )
                .await
                .map(|r| r.map(|r| r.into_inner())),
            ),
            State::Present(_, rv) if op != 2 => (
                State::Present(d.clone(), None),
                tokio::time::timeout(
                    CALL_TIMEOUT,
                    client.update(pb::UpdateSecretRequest {
                        secret: Some(proto(k, &d, rv.unwrap_or(0))),
                    }),
                )
                .await
                .map(|r| r.map(|r| r.into_inner())),
            ),
            State::Present(_, rv) => (
                State::Absent,
                tokio::time::timeout(
                    CALL_TIMEOUT,
                    client.delete(pb::DeleteSecretRequest {
                        namespace: "faults".into(),
                        name: name(k),
                        resource_version: rv.unwrap_or(0),
                    }),
                )
                .await
                .map(|r| r.map(|r| r.into_inner().secret.unwrap_or_default())),
            ),
        };
        let result = result.unwrap_or_else(|_| panic!("N={n}: write at step {step} hung"));
        match result {
            Ok(s) => {
                assert!(
                    !gate_closed,
                    "N={n}: a write was acknowledged after a failed write or sync"
                );
                run.acked += 1;
                keys[k].acked = match next {
                    State::Present(d, _) => {
                        assert_eq!(data_of(&s), d, "N={n}: acknowledged content differs");
                        State::Present(d, Some(rv_of(&s)))
                    }
                    State::Absent => State::Absent,
                };
            }
            Err(e) => {
                run.failed_calls += 1;
                check_error(n, "write", &e);
                if gate_closed {
                    assert_eq!(
                        e.code(),
                        Code::Unavailable,
                        "N={n}: a write after a failed fsync must be UNAVAILABLE: {}",
                        e.message()
                    );
                    assert!(
                        e.message().contains("refuses writes until restart"),
                        "N={n}: {}",
                        e.message()
                    );
                }
                keys[k].doubt.push(next);
            }
        }
        if faulty.is_failed() {
            gate_closed = true;
        }
    }
    keys
}

/// Waits until `arc` is the last handle (the server's connection tasks may still hold the store
/// for a moment after shutdown returns), so that dropping it closes the backend.
async fn wait_last_handle<T: ?Sized>(arc: &Arc<T>, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while Arc::strong_count(arc) > 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} is still held 20 s after shutdown"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Reopens `dir` without faults and checks every key against the model.
async fn verify(n: u64, dir: &Path, keys: &[Key]) {
    let store = Store::open_default(dir, Durability::Sync, StoreConfig::default())
        .await
        .unwrap_or_else(|e| panic!("N={n}: reopen without faults failed: {e}"));
    for (k, key) in keys.iter().enumerate() {
        let found = match store.get("faults", &name(k)).await {
            Ok(s) => State::Present(
                s.data
                    .iter()
                    .map(|(k, v)| (k.clone(), v.expose().to_vec()))
                    .collect(),
                Some(s.metadata.resource_version),
            ),
            Err(StoreError::NotFound { .. }) => State::Absent,
            Err(e) => panic!("N={n}: {}: read after reopen failed: {e}", name(k)),
        };
        let ok = found == key.acked
            || key.doubt.iter().any(|d| match (d, &found) {
                (State::Absent, State::Absent) => true,
                (State::Present(want, _), State::Present(got, _)) => want == got,
                _ => false,
            });
        assert!(
            ok,
            "N={n}: {}: found {found:?}, acknowledged {:?}, in doubt {:?}",
            name(k),
            key.acked,
            key.doubt
        );
    }
}

/// Opens a store over the faulty backend, runs the workload through the server, shuts down,
/// and verifies after a clean reopen.
async fn one_run(n: u64, kinds: &[FaultOp]) -> (Run, u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut run = Run::default();
    let sled = SledBackend::open(SledConfig::new(dir.path().join("db"))).expect("sled");
    let sled: Arc<dyn Backend> = Arc::new(sled);
    let faulty = Arc::new(FaultyBackend::new(sled.clone(), kinds, n));
    let kek: Arc<dyn Kms> =
        Arc::new(LocalKek::open_or_create(dir.path().join("kek.key")).expect("kek"));
    let keys = match Store::open(faulty.clone(), kek, StoreConfig::default()).await {
        Err(e) => {
            // A fault while loading seeds: a clear error, nothing written yet.
            let m = e.to_string();
            assert!(
                m.contains("injected") || m.contains("storage"),
                "N={n}: {m}"
            );
            run.open_failed = true;
            Vec::new()
        }
        Ok(store) => {
            let (server, mut client) = start(store).await;
            let keys = workload(n, &mut client, &faulty, &mut run).await;
            drop(client);
            tokio::time::timeout(Duration::from_secs(30), server.shutdown())
                .await
                .unwrap_or_else(|_| panic!("N={n}: shutdown hung"))
                .ok();
            keys
        }
    };
    let count = faulty.count();
    wait_last_handle(&faulty, "the store's backend").await;
    drop(faulty);
    // The last handle: closing syncs and checkpoints, releasing the directory.
    wait_last_handle(&sled, "the sled backend").await;
    drop(sled);
    verify(n, dir.path(), &keys).await;
    (run, count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_nth_backend_operation_failing_loses_no_acknowledged_write() {
    let started = std::time::Instant::now();
    // A fault-free run counts the operations of the workload.
    let (clean, total) = one_run(0, &FaultOp::ALL).await;
    assert_eq!(clean.failed_calls, 0);
    assert!(clean.acked > 10, "{clean:?}");
    let last = total.min(200);
    let mut failed_calls = 0;
    let mut acked = 0;
    let mut open_failed = 0;
    // Four runs at a time: each mostly waits for fsyncs.
    let all: Vec<u64> = (1..=last).collect();
    for chunk in all.chunks(4) {
        let runs = futures::future::join_all(
            chunk
                .iter()
                .map(|&n| tokio::spawn(async move { one_run(n, &FaultOp::ALL).await })),
        )
        .await;
        for run in runs {
            let (run, _) = run.expect("a run panicked");
            failed_calls += run.failed_calls;
            acked += run.acked;
            open_failed += usize::from(run.open_failed);
        }
    }
    println!(
        "fault injection: {total} backend operations in the workload; N = 1..={last} each \
         failed once: {acked} acknowledged writes verified after reopen, {failed_calls} calls \
         failed cleanly, {open_failed} runs failed at open, in {:?}",
        started.elapsed()
    );
}

/// The real write-ahead log's write+fdatasync fails (not the wrapper): the backend enters its
/// failed state, the server reports UNAVAILABLE for writes and reads, and a restart recovers
/// every acknowledged write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_log_fsync_fails_the_store_until_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sled = Arc::new(SledBackend::open(SledConfig::new(dir.path().join("db"))).expect("sled"));
    let kek: Arc<dyn Kms> =
        Arc::new(LocalKek::open_or_create(dir.path().join("kek.key")).expect("kek"));
    let backend: Arc<dyn Backend> = sled.clone();
    let store = Store::open(backend, kek, StoreConfig::default())
        .await
        .expect("store");
    let (server, mut client) = start(store).await;
    let acked = client
        .create(pb::CreateSecretRequest {
            secret: Some(proto(0, &data(0), 0)),
        })
        .await
        .expect("create")
        .into_inner();

    sled.inject_log_write_failure();
    let e = client
        .create(pb::CreateSecretRequest {
            secret: Some(proto(1, &data(1), 0)),
        })
        .await
        .expect_err("the write whose fsync failed must not be acknowledged");
    assert_eq!(e.code(), Code::Unavailable, "{}", e.message());
    assert!(
        e.message().contains("injected write failure"),
        "{}",
        e.message()
    );
    // Writes and reads stay refused: nothing is shown as durable any more.
    let e = client
        .update(pb::UpdateSecretRequest {
            secret: Some(proto(0, &data(2), rv_of(&acked))),
        })
        .await
        .expect_err("no write after a failed fsync");
    assert_eq!(e.code(), Code::Unavailable);
    assert!(
        e.message().contains("refuses writes until restart"),
        "{}",
        e.message()
    );
    let e = client
        .get(pb::GetSecretRequest {
            namespace: "faults".into(),
            name: name(0),
            resource_version: 0,
        })
        .await
        .expect_err("no read after a failed fsync");
    assert_eq!(e.code(), Code::Unavailable, "{}", e.message());
    // Health says so, for the whole server and for the Secrets service.
    let addr = server.tcp_addr().expect("tcp addr");
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect health");
    let health = tonic_health::pb::health_client::HealthClient::new(channel);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let statuses = futures::future::join_all(["", "coffer.v1.Secrets"].map(|service| {
            let mut h = health.clone();
            async move {
                h.check(tonic_health::pb::HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .map(|r| r.into_inner().status)
            }
        }))
        .await;
        let not_serving = tonic_health::pb::health_check_response::ServingStatus::NotServing as i32;
        if statuses
            .iter()
            .all(|s| s.as_ref().is_ok_and(|s| *s == not_serving))
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "health still {statuses:?} after the storage failed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    drop(health);
    let _ = server.shutdown().await;
    wait_last_handle(&sled, "the sled backend").await;
    drop(sled);

    let keys = vec![
        Key {
            acked: State::Present(data(0), Some(rv_of(&acked))),
            doubt: vec![State::Present(data(2), None)],
        },
        Key {
            acked: State::Absent,
            doubt: vec![State::Present(data(1), None)],
        },
    ];
    verify(u64::MAX, dir.path(), &keys).await;
}
