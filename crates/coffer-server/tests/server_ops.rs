//! Operating the server: health, reflection, graceful shutdown (in-flight calls complete and
//! nothing acknowledged is lost), unix sockets, the metrics endpoint, and the bootstrap token
//! cleaner.

use coffer_testkit::engine as common;
use coffer_testkit::server as server_common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use coffer_core::kms::{Kms, KmsError, KmsStatus, Wrapped};
use coffer_core::store::{Preconditions, StoreConfig, StoreError};
use coffer_server::proto::v1 as pb;
use coffer_server::server::cleaner::clean_once;
use coffer_server::server::{ListenAddr, Server, ServerOptions};
use common::{TestKms, open_store};
use prost::Message as _;
use server_common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::StreamExt as _;
use tonic::Code;
use zeroize::Zeroizing;

#[tokio::test]
async fn health_reports_serving() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let ts = TestServer::start().await;
    let mut h = HealthClient::new(ts.channel().await);
    for service in ["coffer.v1.Secrets", ""] {
        let r = h
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("check")
            .into_inner();
        assert_eq!(r.status, ServingStatus::Serving as i32, "{service:?}");
    }
    let e = h
        .check(HealthCheckRequest {
            service: "nope.Service".into(),
        })
        .await
        .expect_err("unknown service");
    assert_eq!(e.code(), Code::NotFound);
}

#[tokio::test]
async fn health_watch_ends_at_shutdown_without_holding_it() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let ts = TestServer::start().await;
    let mut h = HealthClient::new(ts.channel().await);
    let mut w = h
        .watch(HealthCheckRequest {
            service: "coffer.v1.Secrets".into(),
        })
        .await
        .expect("watch")
        .into_inner();
    let first = w.message().await.expect("ok").expect("status");
    assert_eq!(first.status, ServingStatus::Serving as i32);
    let TestServer { running, .. } = ts;
    let started = std::time::Instant::now();
    running.shutdown().await.expect("shutdown");
    // Well under the 10 s grace of the test options.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let mut last = None;
    while let Ok(Some(m)) = w.message().await {
        last = Some(m.status);
    }
    assert_eq!(last, Some(ServingStatus::NotServing as i32));
}

#[tokio::test]
async fn reflection_lists_and_describes_the_service() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let ts = TestServer::start().await;
    let mut r = ServerReflectionClient::new(ts.channel().await);
    let reqs = [
        MessageRequest::ListServices(String::new()),
        MessageRequest::FileContainingSymbol("coffer.v1.Secrets".into()),
        MessageRequest::FileByFilename("google/protobuf/timestamp.proto".into()),
    ]
    .map(|m| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(m),
    });
    let mut responses = r
        .server_reflection_info(tokio_stream::iter(reqs))
        .await
        .expect("reflection")
        .into_inner();
    let mut got = Vec::new();
    while let Some(resp) = responses.next().await {
        got.push(resp.expect("response").message_response);
    }
    assert_eq!(got.len(), 3);
    let Some(MessageResponse::ListServicesResponse(list)) = &got[0] else {
        panic!("{:?}", got[0]);
    };
    let services: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    for want in [
        "coffer.v1.Secrets",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(services.contains(&want), "{services:?}");
    }
    for (i, want) in [
        (1, "coffer/v1/secrets.proto"),
        (2, "google/protobuf/timestamp.proto"),
    ] {
        let Some(MessageResponse::FileDescriptorResponse(fd)) = &got[i] else {
            panic!("{:?}", got[i]);
        };
        let names: Vec<String> = fd
            .file_descriptor_proto
            .iter()
            .map(|b| {
                prost_types::FileDescriptorProto::decode(b.as_slice())
                    .expect("descriptor")
                    .name
                    .unwrap_or_default()
            })
            .collect();
        assert!(names.iter().any(|n| n == want), "{names:?}");
    }

    // v1alpha too (older grpcurl versions use it).
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient as Alpha;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest as AlphaReq;
    let mut a = Alpha::new(ts.channel().await);
    let req = tonic_reflection::pb::v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(AlphaReq::ListServices(String::new())),
    };
    let mut s = a
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .expect("v1alpha")
        .into_inner();
    let resp = s.next().await.expect("one").expect("ok");
    assert!(format!("{resp:?}").contains("coffer.v1.Secrets"));
}

/// A KMS whose `encrypt` waits for the test to open the gate (so writes can be held in flight).
#[derive(Debug)]
struct GatedKms {
    inner: Arc<TestKms>,
    gate: tokio::sync::Semaphore,
}

#[async_trait]
impl Kms for GatedKms {
    async fn status(&self) -> Result<KmsStatus, KmsError> {
        self.inner.status().await
    }

    async fn encrypt(&self, uid: &str, plaintext: &[u8]) -> Result<Wrapped, KmsError> {
        let _permit = self.gate.acquire().await;
        self.inner.encrypt(uid, plaintext).await
    }

    async fn decrypt(&self, uid: &str, w: &Wrapped) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        self.inner.decrypt(uid, w).await
    }

    fn describe(&self) -> String {
        "gated test kms".into()
    }
}

#[tokio::test]
async fn graceful_shutdown_completes_in_flight_calls_and_loses_nothing() {
    const N: usize = 8;
    let dir = tempfile::tempdir().expect("tempdir");
    let kms = Arc::new(GatedKms {
        inner: TestKms::open(dir.path(), 1),
        gate: tokio::sync::Semaphore::new(0),
    });
    let TestServer { running, store, .. } = TestServer::builder()
        .dir(dir.path())
        .kms(kms.clone())
        .listen(vec![ListenAddr::Tcp("127.0.0.1:0".into())])
        .without_metrics_listener()
        .start()
        .await;
    let addr = running.tcp_addr().expect("addr");
    let channel = tcp_channel(addr).await;
    let mut calls = Vec::new();
    for i in 0..N {
        let mut c = pb::secrets_client::SecretsClient::new(channel.clone());
        calls.push(tokio::spawn(async move {
            create(&mut c, secret("ns", &format!("s{i}"), &[("k", "v")])).await
        }));
    }
    // Every create has reached the server and waits (the first for the KMS, the rest for it).
    let metrics = running.metrics().clone();
    assert!(eventually(5, || async { metrics.in_flight("Create") == N as i64 }).await);

    let token = running.shutdown_token();
    token.cancel();
    // New connections are refused once shutdown has begun.
    assert!(
        eventually(5, || async {
            tokio::net::TcpStream::connect(addr).await.is_err()
        })
        .await
    );
    kms.gate.add_permits(1000);
    running.wait().await.expect("clean shutdown");
    for call in calls {
        let created = call
            .await
            .expect("task")
            .expect("in-flight create completed");
        assert!(rv(&created) > 0);
    }

    // Reopen the data dir: every acknowledged create is there.
    drop(channel);
    let store = Arc::try_unwrap(store).expect("the server let go of the store");
    drop(store);
    let (store, _backend) = open_store(dir.path(), kms.inner.clone(), StoreConfig::default()).await;
    let listed = store
        .list(&coffer_core::store::ListOptions::default())
        .await
        .expect("list");
    assert_eq!(listed.items.len(), N);
}

#[tokio::test]
async fn unix_socket_only_server_replaces_a_stale_socket_and_refuses_a_live_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.sock");
    // A stale socket file: bound, then its listener dropped.
    drop(std::os::unix::net::UnixListener::bind(&path).expect("stale"));
    assert!(path.exists());
    let TestServer { running, store, .. } = TestServer::builder()
        .dir(dir.path())
        .listen(vec![ListenAddr::Unix(path.clone())])
        .without_metrics_listener()
        .try_start()
        .await
        .expect("start over a stale socket");
    assert_eq!(running.unix_path(), Some(path.as_path()));
    assert_eq!(running.tcp_addr(), None);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    let mut c = pb::secrets_client::SecretsClient::new(unix_channel(&path).await);
    create(&mut c, secret("ns", "a", &[("k", "v")]))
        .await
        .expect("create");
    assert_eq!(get(&mut c, "ns", "a").await.expect("get").data["k"], b"v");

    // A second server on the same live socket is refused.
    let e = Server::new(store.clone())
        .listen(ListenAddr::Unix(path.clone()))
        .start()
        .await
        .expect_err("live socket");
    assert!(e.to_string().contains("another process"), "{e}");
    // A regular file is never replaced.
    let file = dir.path().join("not-a-socket");
    std::fs::write(&file, "x").expect("write");
    let e = Server::new(store.clone())
        .listen(ListenAddr::Unix(file.clone()))
        .start()
        .await
        .expect_err("regular file");
    assert!(e.to_string().contains("not a socket"), "{e}");

    // A start that fails part-way leaves no socket file behind.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let other = dir.path().join("other.sock");
    let e = Server::new(store.clone())
        .listen(ListenAddr::Unix(other.clone()))
        .metrics_listen(taken.local_addr().expect("addr").to_string())
        .start()
        .await
        .expect_err("metrics address in use");
    assert!(
        e.to_string().starts_with("cannot listen on 127.0.0.1:"),
        "{e}"
    );
    assert!(!other.exists());

    running.shutdown().await.expect("shutdown");
    assert!(!path.exists(), "the socket file is removed at shutdown");
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    out
}

#[tokio::test]
async fn metrics_endpoint_serves_prometheus_text() {
    let ts = TestServer::start().await;
    let mut c = ts.client().await;
    create(&mut c, secret("ns", "a", &[]))
        .await
        .expect("create");
    get(&mut c, "ns", "a").await.expect("get");
    get(&mut c, "ns", "missing").await.expect_err("missing");
    let _watch = c
        .watch(pb::WatchSecretsRequest::default())
        .await
        .expect("watch");
    let addr = ts.running.metrics_addr().expect("metrics addr");
    assert!(
        eventually(5, || async {
            ts.running.metrics().watch_streams_open() == 1
        })
        .await
    );
    let text = http_get(addr, "/metrics").await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(
        text.contains("Content-Type: text/plain; version=0.0.4"),
        "{text}"
    );
    for want in [
        "coffer_grpc_requests_total{method=\"Create\",code=\"OK\"} 1",
        "coffer_grpc_requests_total{method=\"Get\",code=\"OK\"} 1",
        "coffer_grpc_requests_total{method=\"Get\",code=\"NotFound\"} 1",
        "# TYPE coffer_grpc_request_duration_seconds histogram",
        "coffer_grpc_request_duration_seconds_bucket{method=\"Get\",le=\"+Inf\"} 2",
        "coffer_grpc_request_duration_seconds_count{method=\"Create\"} 1",
        "coffer_watch_streams_open 1",
        "coffer_kms_calls_total{op=\"encrypt\",result=\"ok\"}",
        "coffer_seal_total 1",
        "coffer_open_total 1",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    assert!(http_get(addr, "/nope").await.starts_with("HTTP/1.1 404"));
}

#[tokio::test]
async fn token_cleaner_deletes_expired_and_unparseable_tokens_only() {
    let options = ServerOptions {
        token_cleaner_interval: Some(Duration::from_millis(50)),
        ..test_options()
    };
    let ts = TestServer::builder().options(options).start().await;
    let mut c = ts.client().await;
    let token = |name: &str, expiration: Option<&str>| {
        let data: Vec<(&str, &str)> = match expiration {
            Some(e) => vec![("token-id", "abcdef"), ("expiration", e)],
            None => vec![("token-id", "abcdef")],
        };
        let mut s = secret("kube-system", name, &data);
        s.r#type = "bootstrap.kubernetes.io/token".into();
        s
    };
    for s in [
        token("expired", Some("2001-01-01T00:00:00Z")),
        token("garbage", Some("next tuesday")),
        token("valid", Some("2999-12-31T23:59:59+01:00")),
        token("no-expiry", None),
    ] {
        create(&mut c, s).await.expect("create");
    }
    // An expired Secret of another type is not a bootstrap token.
    let mut opaque = secret(
        "kube-system",
        "opaque",
        &[("expiration", "2001-01-01T00:00:00Z")],
    );
    opaque.r#type = "Opaque".into();
    create(&mut c, opaque).await.expect("create");

    let gone = |name: &'static str| {
        let ts = &ts;
        async move {
            let mut c = ts.client().await;
            matches!(get(&mut c, "kube-system", name).await, Err(e) if e.code() == Code::NotFound)
        }
    };
    assert!(
        eventually(5, || gone("expired")).await,
        "expired token kept"
    );
    assert!(
        eventually(5, || gone("garbage")).await,
        "unparseable token kept"
    );
    for kept in ["valid", "no-expiry", "opaque"] {
        get(&mut c, "kube-system", kept)
            .await
            .unwrap_or_else(|e| panic!("{kept}: {e:?}"));
    }
}

#[tokio::test]
async fn cleaner_round_and_uid_precondition() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _b) = open_store(
        dir.path(),
        TestKms::open(dir.path(), 1),
        StoreConfig::default(),
    )
    .await;
    let mk = |exp: &str| {
        coffer_core::model::Secret::new("kube-system", "t")
            .with_type("bootstrap.kubernetes.io/token")
            .with_data("expiration", exp)
    };
    let t = store
        .create(mk("2030-01-01T00:00:00Z"))
        .await
        .expect("create");
    // Before the expiry nothing happens; after it the token goes.
    let before = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let after = SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000);
    let r = clean_once(&store, before).await.expect("round");
    assert_eq!((r.examined, r.deleted), (1, 0));
    // A uid precondition that does not hold is a conflict (ABORTED on the wire).
    let e = store
        .delete_with(
            "kube-system",
            "t",
            &Preconditions {
                resource_version: 0,
                uid: Some("someone-else".into()),
            },
        )
        .await
        .expect_err("uid mismatch");
    assert!(matches!(e, StoreError::UidMismatch { .. }), "{e:?}");
    assert_eq!(
        coffer_server::server::status::store_error(&e).code(),
        Code::Aborted
    );
    let r = clean_once(&store, after).await.expect("round");
    assert_eq!((r.examined, r.deleted), (1, 1));
    assert!(store.get("kube-system", "t").await.is_err());
    assert_eq!(t.metadata.name, "t");
}

/// A KMS whose `status` can be made to hang until the test opens a gate, then fail; it counts
/// the `status` calls made while hanging.
#[derive(Debug)]
struct HangingStatusKms {
    inner: Arc<TestKms>,
    hang: std::sync::atomic::AtomicBool,
    hung_calls: std::sync::atomic::AtomicUsize,
    gate: tokio::sync::Semaphore,
}

#[async_trait]
impl Kms for HangingStatusKms {
    async fn status(&self) -> Result<KmsStatus, KmsError> {
        use std::sync::atomic::Ordering::SeqCst;
        if self.hang.load(SeqCst) {
            self.hung_calls.fetch_add(1, SeqCst);
            let _permit = self.gate.acquire().await;
            return Err(KmsError::Unavailable("plugin does not answer".into()));
        }
        self.inner.status().await
    }

    async fn encrypt(&self, uid: &str, plaintext: &[u8]) -> Result<Wrapped, KmsError> {
        self.inner.encrypt(uid, plaintext).await
    }

    async fn decrypt(&self, uid: &str, w: &Wrapped) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        self.inner.decrypt(uid, w).await
    }

    fn describe(&self) -> String {
        "test kms with a hanging status".into()
    }
}

/// Issue 18, item 7: writes past the outage grace probe the KMS before the write sequencer,
/// and share one probe: while a `Status` call hangs, a delete (no KMS needed) and reads go
/// through, and a crowd of creates makes one `Status` call, then all fail UNAVAILABLE.
#[tokio::test]
async fn kms_probes_run_outside_the_write_sequencer_and_are_shared() {
    use std::sync::atomic::Ordering::SeqCst;
    const N: usize = 6;
    let dir = tempfile::tempdir().expect("tempdir");
    let kms = Arc::new(HangingStatusKms {
        inner: TestKms::open(dir.path(), 1),
        hang: false.into(),
        hung_calls: 0.into(),
        gate: tokio::sync::Semaphore::new(0),
    });
    let mut config = StoreConfig::default();
    // No grace: every write asks the KMS for its Status first.
    config.outage.grace = Duration::ZERO;
    let TestServer { running, .. } = TestServer::builder()
        .dir(dir.path())
        .kms(kms.clone())
        .store_config(config)
        .listen(vec![ListenAddr::Tcp("127.0.0.1:0".into())])
        .without_metrics_listener()
        .start()
        .await;
    let channel = tcp_channel(running.tcp_addr().expect("addr")).await;
    let mut c = pb::secrets_client::SecretsClient::new(channel.clone());
    create(&mut c, secret("ns", "keep", &[("k", "v")]))
        .await
        .expect("create while the KMS answers");
    create(&mut c, secret("ns", "gone", &[("k", "v")]))
        .await
        .expect("create while the KMS answers");

    kms.hang.store(true, SeqCst);
    let mut calls = Vec::new();
    for i in 0..N {
        let mut c = pb::secrets_client::SecretsClient::new(channel.clone());
        calls.push(tokio::spawn(async move {
            create(&mut c, secret("ns", &format!("s{i}"), &[("k", "v")])).await
        }));
    }
    let metrics = running.metrics().clone();
    assert!(eventually(5, || async { metrics.in_flight("Create") == N as i64 }).await);
    assert!(eventually(5, || async { kms.hung_calls.load(SeqCst) >= 1 }).await);
    // The sequencer is free while the probe hangs: a delete and a read go through.
    c.delete(pb::DeleteSecretRequest {
        namespace: "ns".into(),
        name: "gone".into(),
        resource_version: 0,
    })
    .await
    .expect("a delete does not wait for the KMS probe");
    c.get(pb::GetSecretRequest {
        namespace: "ns".into(),
        name: "keep".into(),
        resource_version: 0,
    })
    .await
    .expect("a read does not wait either");
    kms.gate.add_permits(1000);
    for call in calls {
        let e = call.await.expect("task").expect_err("KMS down");
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
        assert!(e.message().contains("KMS unreachable"), "{e:?}");
    }
    assert_eq!(
        kms.hung_calls.load(SeqCst),
        1,
        "the creates that queued behind one probe share its answer"
    );
    running.shutdown().await.expect("shutdown");
}
