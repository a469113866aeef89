//! The KMS v2 client and plugin server over real unix sockets, against in-process plugins: a
//! well-behaved one that records what it is sent, fakes that answer garbage (fault injection),
//! a slow one (the per-call deadline), and the outage policy and Status poller on a paused clock.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use coffer_testkit::engine as common;
use coffer_testkit::kms as kms_support;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use coffer_core::kms::{Kms, KmsError, KmsStatus, LocalKek, OutagePolicy, Wrapped};
use coffer_core::model::Secret;
use coffer_core::storage::Backend;
use coffer_core::store::{StoreConfig, StoreError};
use coffer_kms::GrpcKms;
use coffer_kms::proto as kpb;
use coffer_kms::proto::key_management_service_server::{
    KeyManagementService, KeyManagementServiceServer,
};
use common::{TestKms, open_store};
use kms_support::kms_client;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Response, Status};
use zeroize::Zeroizing;

/// A scripted plugin: answers what it is told to, and records the uids it is sent.
#[derive(Debug, Clone)]
struct Scripted {
    status: kpb::StatusResponse,
    encrypt: kpb::EncryptResponse,
    delay: Duration,
    uids: Arc<Mutex<Vec<String>>>,
    /// What Encrypt was last given, which Decrypt gives back (a test needs no real wrapping).
    kept: Arc<Mutex<Vec<u8>>>,
}

impl Scripted {
    fn good() -> Self {
        Self {
            status: kpb::StatusResponse {
                version: "v2".into(),
                healthz: "ok".into(),
                key_id: "k1".into(),
            },
            encrypt: kpb::EncryptResponse {
                ciphertext: vec![0xAB; 60],
                key_id: "k1".into(),
                annotations: HashMap::new(),
            },
            delay: Duration::ZERO,
            uids: Arc::default(),
            kept: Arc::default(),
        }
    }
}

#[tonic::async_trait]
impl KeyManagementService for Scripted {
    async fn status(
        &self,
        _r: Request<kpb::StatusRequest>,
    ) -> Result<Response<kpb::StatusResponse>, Status> {
        tokio::time::sleep(self.delay).await;
        Ok(Response::new(self.status.clone()))
    }

    async fn encrypt(
        &self,
        r: Request<kpb::EncryptRequest>,
    ) -> Result<Response<kpb::EncryptResponse>, Status> {
        let r = r.into_inner();
        self.uids.lock().unwrap().push(r.uid);
        *self.kept.lock().unwrap() = r.plaintext;
        Ok(Response::new(self.encrypt.clone()))
    }

    async fn decrypt(
        &self,
        r: Request<kpb::DecryptRequest>,
    ) -> Result<Response<kpb::DecryptResponse>, Status> {
        let r = r.into_inner();
        self.uids.lock().unwrap().push(r.uid);
        if r.ciphertext == self.encrypt.ciphertext {
            Ok(Response::new(kpb::DecryptResponse {
                plaintext: self.kept.lock().unwrap().clone(),
            }))
        } else {
            Err(Status::invalid_argument("not mine"))
        }
    }
}

/// Serves `svc` on a unix socket until the token is cancelled.
fn serve_raw(svc: Scripted, path: &Path) -> CancellationToken {
    let listener = std::os::unix::net::UnixListener::bind(path).expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let listener = tokio::net::UnixListener::from_std(listener).expect("listener");
    let token = CancellationToken::new();
    let stop = token.clone();
    let incoming = futures::stream::unfold(listener, |l| async move {
        Some((l.accept().await.map(|(s, _)| s), l))
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(KeyManagementServiceServer::new(svc))
            .serve_with_incoming_shutdown(incoming, stop.cancelled_owned()),
    );
    token
}

fn secret(name: &str) -> Secret {
    let mut s = Secret::new("ns", name);
    s.data.insert("k".into(), "v".into());
    s
}

#[tokio::test]
async fn the_client_sends_a_fresh_uuid_per_call_and_checks_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("kms.sock");
    let plugin = Scripted::good();
    let uids = plugin.uids.clone();
    let _stop = serve_raw(plugin, &sock);
    let kms = GrpcKms::new(&sock, Duration::from_secs(3)).unwrap();
    let status = kms.status().await.expect("status");
    assert_eq!(status.key_id, "k1");
    status.check().expect("healthy");
    let (store, _backend) = open_store(tmp.path(), Arc::new(kms), StoreConfig::default()).await;
    for i in 0..3 {
        store
            .create(secret(&format!("s{i}")))
            .await
            .expect("create");
    }
    // One Encrypt for three writes: one seed (and one Decrypt that checks it comes back before
    // its first use, issue 17).
    let seen = uids.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    drop((store, _backend));
    // A restart unwraps the seed with one Decrypt, under another uid.
    let kms = GrpcKms::new(&sock, Duration::from_secs(3)).unwrap();
    let (store, _backend) = open_store(tmp.path(), Arc::new(kms), StoreConfig::default()).await;
    assert_eq!(
        store.get("ns", "s0").await.expect("get").metadata.name,
        "s0"
    );
    let seen = uids.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_ne!(seen[0], seen[1]);
    assert_ne!(seen[1], seen[2]);
    for u in &seen {
        uuid::Uuid::parse_str(u).unwrap_or_else(|_| panic!("uid {u:?} is not a UUID"));
    }
}

#[tokio::test]
async fn a_slow_plugin_hits_the_per_call_deadline() {
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("kms.sock");
    let _stop = serve_raw(
        Scripted {
            delay: Duration::from_secs(5),
            ..Scripted::good()
        },
        &sock,
    );
    let kms = GrpcKms::new(&sock, Duration::from_millis(200)).unwrap();
    let started = std::time::Instant::now();
    let e = kms.status().await.expect_err("too slow");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(matches!(e, KmsError::Unavailable(_)), "{e}");
    // Nothing listening at all: a clear error at once.
    let kms = GrpcKms::new(tmp.path().join("nobody.sock"), Duration::from_secs(3)).unwrap();
    let e = kms.status().await.expect_err("no plugin");
    assert!(e.to_string().contains("nobody.sock"), "{e}");
}

#[tokio::test]
async fn a_plugin_that_answers_garbage_is_refused_and_nothing_is_written() {
    type Tweak = fn(&mut Scripted);
    let cases: Vec<(&str, Tweak, &str)> = vec![
        (
            "status version",
            |p| p.status.version = "v1".into(),
            "Status version is \"v1\"",
        ),
        (
            "status healthz",
            |p| p.status.healthz = "disk on fire".into(),
            "disk on fire",
        ),
        (
            "status empty key_id",
            |p| p.status.key_id.clear(),
            "key_id is empty",
        ),
        (
            "empty ciphertext",
            |p| p.encrypt.ciphertext.clear(),
            "empty ciphertext",
        ),
        (
            "oversized ciphertext",
            |p| p.encrypt.ciphertext = vec![1; 1025],
            "1025-byte ciphertext",
        ),
        (
            "empty encrypt key_id",
            |p| p.encrypt.key_id.clear(),
            "key_id is empty",
        ),
        (
            "oversized key_id",
            |p| {
                let k = "k".repeat(1025);
                p.status.key_id = k.clone();
                p.encrypt.key_id = k;
            },
            "must be at most 1024",
        ),
        (
            "annotation key not a DNS name",
            |p| {
                p.encrypt.annotations.insert("Not A Name".into(), vec![1]);
            },
            "not a fully qualified domain name",
        ),
        (
            "annotation key with one label",
            |p| {
                p.encrypt.annotations.insert("version".into(), vec![1]);
            },
            "at least two segments",
        ),
        (
            "oversized annotations",
            |p| {
                p.encrypt
                    .annotations
                    .insert("a.example.com".into(), vec![0; 33 * 1024]);
            },
            "must be at most 32768",
        ),
        (
            "encrypt key_id differs from status",
            |p| p.encrypt.key_id = "k2".into(),
            "Encrypt returned key_id \"k2\", but Status reports \"k1\"",
        ),
    ];
    for (name, tweak, needle) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let sock = tmp.path().join("kms.sock");
        let mut plugin = Scripted::good();
        tweak(&mut plugin);
        let _stop = serve_raw(plugin, &sock);
        let kms = GrpcKms::new(&sock, Duration::from_secs(3)).unwrap();
        let (store, backend) = open_store(tmp.path(), Arc::new(kms), StoreConfig::default()).await;
        let e = store.create(secret("a")).await.expect_err(name);
        assert!(matches!(e, StoreError::Unavailable(_)), "{name}: {e}");
        assert!(e.to_string().contains(needle), "{name}: {e}");
        assert!(
            backend.scan(b"s/", None, 10).unwrap().is_empty(),
            "{name}: a record was written"
        );
        assert!(
            backend.scan(b"k/seed/", None, 10).unwrap().is_empty(),
            "{name}: a seed was written"
        );
        assert!(matches!(
            store.get("ns", "a").await,
            Err(StoreError::NotFound { .. })
        ));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plugin_server_refuses_bad_requests_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("kms.sock");
    let kek: Arc<dyn Kms> = Arc::new(LocalKek::open_or_create(tmp.path().join("kek")).unwrap());
    let stop = CancellationToken::new();
    let server = {
        let (sock, stop) = (sock.clone(), stop.clone());
        tokio::spawn(async move {
            coffer_kms::plugin::serve_unix(kek, &sock, stop.cancelled_owned()).await
        })
    };
    kms_support::wait_for_socket(&sock, "plugin", Path::new("/dev/null"));
    let mut c = kms_client(&sock).await;
    let status = c.status(kpb::StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(
        (status.version.as_str(), status.healthz.as_str()),
        ("v2", "ok")
    );
    let good = c
        .encrypt(kpb::EncryptRequest {
            plaintext: vec![9; 32],
            uid: "u1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(good.key_id, status.key_id);
    let decrypt = |ciphertext: Vec<u8>, key_id: &str| kpb::DecryptRequest {
        ciphertext,
        uid: "u2".into(),
        key_id: key_id.into(),
        annotations: HashMap::new(),
    };
    let ok = c
        .decrypt(decrypt(good.ciphertext.clone(), &good.key_id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.plaintext, vec![9; 32]);
    let mut tampered = good.ciphertext.clone();
    tampered[20] ^= 1;
    let cases = [
        (decrypt(vec![], &good.key_id), "ciphertext is empty"),
        (
            decrypt(vec![1; 1025], &good.key_id),
            "ciphertext is 1025 bytes",
        ),
        (decrypt(good.ciphertext.clone(), ""), "key_id is empty"),
        (
            decrypt(good.ciphertext.clone(), "someone-else"),
            "unknown key_id",
        ),
        (decrypt(tampered, &good.key_id), "integrity"),
    ];
    for (req, needle) in cases {
        let e = c.decrypt(req).await.expect_err(needle);
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains(needle), "{e:?}");
    }
    let e = c
        .encrypt(kpb::EncryptRequest {
            plaintext: vec![],
            uid: "u".into(),
        })
        .await
        .expect_err("empty");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    stop.cancel();
    server.await.unwrap().expect("clean stop");
    assert!(!sock.exists(), "socket removed at shutdown");
}

/// A real KMS that can be switched off.
#[derive(Debug)]
struct Switch {
    inner: Arc<TestKms>,
    down: AtomicBool,
}

#[async_trait]
impl Kms for Switch {
    async fn status(&self) -> Result<KmsStatus, KmsError> {
        self.check()?;
        self.inner.status().await
    }
    async fn encrypt(&self, uid: &str, p: &[u8]) -> Result<Wrapped, KmsError> {
        self.check()?;
        self.inner.encrypt(uid, p).await
    }
    async fn decrypt(&self, uid: &str, w: &Wrapped) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        self.check()?;
        self.inner.decrypt(uid, w).await
    }
    fn describe(&self) -> String {
        "switch".into()
    }
}

impl Switch {
    fn check(&self) -> Result<(), KmsError> {
        if self.down.load(Ordering::SeqCst) {
            Err(KmsError::Unavailable("connection refused".into()))
        } else {
            Ok(())
        }
    }
}

#[tokio::test(start_paused = true)]
async fn outage_policy_on_a_paused_clock() {
    let tmp = tempfile::tempdir().unwrap();
    let kms = Arc::new(Switch {
        inner: TestKms::open(tmp.path(), 1),
        down: AtomicBool::new(false),
    });
    let config = StoreConfig {
        outage: OutagePolicy {
            grace: Duration::from_secs(180),
            ..OutagePolicy::default()
        },
        ..StoreConfig::default()
    };
    let (store, _b) = open_store(tmp.path(), kms.clone(), config).await;
    store.create(secret("a")).await.expect("healthy");
    let mut ready = store.seeds().readiness();
    assert!(*ready.borrow_and_update());

    kms.down.store(true, Ordering::SeqCst);
    tokio::time::advance(Duration::from_secs(170)).await;
    store
        .create(secret("b"))
        .await
        .expect("within the grace period");
    assert!(store.seeds().is_writable());
    tokio::time::advance(Duration::from_secs(11)).await;
    let e = store
        .create(secret("c"))
        .await
        .expect_err("past the grace period");
    assert!(e.to_string().contains("KMS unreachable"), "{e}");
    assert!(e.to_string().contains("181s ago"), "{e}");
    assert!(e.to_string().contains("connection refused"), "{e}");
    assert!(
        !*ready.borrow_and_update(),
        "not ready after a failed probe past the grace"
    );
    assert_eq!(
        store
            .get("ns", "a")
            .await
            .expect("reads go on")
            .metadata
            .name,
        "a"
    );
    let health = store.seeds().kms_health();
    assert!(!health.healthy && !health.writable, "{health:?}");

    kms.down.store(false, Ordering::SeqCst);
    store
        .create(secret("c"))
        .await
        .expect("recovered without a restart");
    assert!(*ready.borrow_and_update());
}

#[tokio::test(start_paused = true)]
async fn the_poller_notices_a_new_key_id_and_an_outage() {
    let tmp = tempfile::tempdir().unwrap();
    let test_kms = TestKms::open(tmp.path(), 2);
    let kms = Arc::new(Switch {
        inner: test_kms.clone(),
        down: AtomicBool::new(false),
    });
    let (store, _b) = open_store(tmp.path(), kms.clone(), StoreConfig::default()).await;
    let store = Arc::new(store);
    store.create(secret("a")).await.unwrap();
    let stop = CancellationToken::new();
    let poller = {
        let store = store.clone();
        let stop = stop.clone();
        tokio::spawn(async move { coffer_core::kms::poller::run(store.seeds(), stop).await })
    };
    let statuses = || test_kms.statuses.load(Ordering::SeqCst);
    let before = statuses();
    tokio::time::sleep(Duration::from_secs(121)).await;
    assert_eq!(statuses() - before, 2, "every 60 s while healthy");

    test_kms.rotate_to(1);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(store.seeds().current_key_id(), Some(test_kms.key_id(1)));
    store.create(secret("b")).await.unwrap();
    let seeds = store.seeds().seeds();
    assert_eq!(seeds.len(), 2);
    assert_eq!(seeds[1].key_id, test_kms.key_id(1));
    assert_eq!(
        store
            .seeds()
            .stale_seed_ids()
            .into_iter()
            .collect::<Vec<_>>(),
        vec![seeds[0].id]
    );

    // (The clock jumps while a write waits for its fsync on another thread, so the checks
    // below leave a poll interval of slack.)
    kms.down.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(61)).await;
    assert!(!store.seeds().last_status_ok());
    // Failing: retried every 10 s, not every minute.
    kms.down.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert!(
        store.seeds().last_status_ok(),
        "a retry within 10 s of a failure"
    );
    stop.cancel();
    poller.await.unwrap();
}
