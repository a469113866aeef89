//! Helpers for the server's integration tests: a real server on 127.0.0.1:0 and a temporary
//! unix socket, over a store whose backend and KMS the test keeps for fault injection.
//!
//! Test files use it as `coffer_testkit::server`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use coffer_core::kms::{Kms, KmsError, KmsStatus, Wrapped};
use coffer_core::storage::SledBackend;
use coffer_core::store::{Store, StoreConfig};
use coffer_server::proto::v1 as pb;
use coffer_server::proto::v1::secrets_client::SecretsClient;
use coffer_server::server::{ListenAddr, RunningServer, Server, ServerOptions};
use tonic::transport::{Channel, Endpoint, Uri};
use zeroize::Zeroizing;

use crate::engine::{TestKms, open_store};

/// A KMS that can be switched off: every call then fails with `Unavailable`.
#[derive(Debug)]
pub struct FlakyKms {
    pub inner: Arc<TestKms>,
    pub down: AtomicBool,
}

impl FlakyKms {
    pub fn new(inner: Arc<TestKms>, down: bool) -> Arc<Self> {
        Arc::new(Self {
            inner,
            down: AtomicBool::new(down),
        })
    }

    fn check(&self) -> Result<(), KmsError> {
        if self.down.load(Ordering::SeqCst) {
            Err(KmsError::Unavailable(
                "plugin socket: connection refused".into(),
            ))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl Kms for FlakyKms {
    async fn status(&self) -> Result<KmsStatus, KmsError> {
        self.check()?;
        self.inner.status().await
    }

    async fn encrypt(&self, uid: &str, plaintext: &[u8]) -> Result<Wrapped, KmsError> {
        self.check()?;
        self.inner.encrypt(uid, plaintext).await
    }

    async fn decrypt(&self, uid: &str, w: &Wrapped) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        self.check()?;
        self.inner.decrypt(uid, w).await
    }

    fn describe(&self) -> String {
        "flaky test kms".into()
    }
}

/// A running test server and what a test needs around it.
pub struct TestServer {
    pub running: RunningServer,
    pub store: Arc<Store>,
    pub backend: Arc<SledBackend>,
    pub kms: Arc<FlakyKms>,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
}

/// Options with short intervals for tests.
pub fn test_options() -> ServerOptions {
    ServerOptions {
        bookmark_interval: Duration::from_millis(200),
        token_cleaner_interval: None,
        shutdown_grace: Duration::from_secs(10),
        ..ServerOptions::default()
    }
}

impl TestServer {
    /// Starts a server on 127.0.0.1:0 and on a unix socket in a temp dir.
    pub async fn start() -> Self {
        Self::start_with(test_options(), false).await
    }

    pub async fn start_with(options: ServerOptions, kms_down: bool) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let kms = FlakyKms::new(TestKms::open(dir.path(), 1), kms_down);
        let (store, backend) = open_store(dir.path(), kms.clone(), StoreConfig::default()).await;
        let store = Arc::new(store);
        let socket = dir.path().join("coffer.sock");
        let running = Server::new(store.clone())
            .listen(ListenAddr::Tcp("127.0.0.1:0".into()))
            .listen(ListenAddr::Unix(socket.clone()))
            .metrics_listen("127.0.0.1:0")
            .options(options)
            .start()
            .await
            .expect("start server");
        Self {
            running,
            store,
            backend,
            kms,
            dir,
            socket,
        }
    }

    pub async fn client(&self) -> SecretsClient<Channel> {
        SecretsClient::new(self.channel().await)
            .max_decoding_message_size(16 << 20)
            .max_encoding_message_size(16 << 20)
    }

    pub async fn channel(&self) -> Channel {
        tcp_channel(self.running.tcp_addr().expect("tcp addr")).await
    }

    pub async fn unix_client(&self) -> SecretsClient<Channel> {
        SecretsClient::new(unix_channel(&self.socket).await)
    }
}

pub async fn tcp_channel(addr: std::net::SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect")
}

pub async fn unix_channel(path: &Path) -> Channel {
    let path = path.to_owned();
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .expect("connect unix")
}

/// A wire Secret with the given data.
pub fn secret(ns: &str, name: &str, data: &[(&str, &str)]) -> pb::Secret {
    pb::Secret {
        metadata: Some(pb::ObjectMeta {
            name: name.into(),
            namespace: ns.into(),
            ..pb::ObjectMeta::default()
        }),
        data: data
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
            .collect(),
        ..pb::Secret::default()
    }
}

pub fn with_labels(mut s: pb::Secret, labels: &[(&str, &str)]) -> pb::Secret {
    if let Some(m) = s.metadata.as_mut() {
        m.labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<HashMap<_, _>>();
    }
    s
}

pub fn meta(s: &pb::Secret) -> pb::ObjectMeta {
    s.metadata.clone().unwrap_or_default()
}

pub fn meta_mut(s: &mut pb::Secret) -> &mut pb::ObjectMeta {
    s.metadata.get_or_insert_with(pb::ObjectMeta::default)
}

pub fn rv(s: &pb::Secret) -> u64 {
    meta(s).resource_version
}

pub async fn create(
    c: &mut SecretsClient<Channel>,
    s: pb::Secret,
) -> Result<pb::Secret, tonic::Status> {
    c.create(pb::CreateSecretRequest { secret: Some(s) })
        .await
        .map(tonic::Response::into_inner)
}

pub async fn get(
    c: &mut SecretsClient<Channel>,
    ns: &str,
    name: &str,
) -> Result<pb::Secret, tonic::Status> {
    c.get(pb::GetSecretRequest {
        namespace: ns.into(),
        name: name.into(),
        resource_version: 0,
    })
    .await
    .map(tonic::Response::into_inner)
}

pub async fn update(
    c: &mut SecretsClient<Channel>,
    s: pb::Secret,
) -> Result<pb::Secret, tonic::Status> {
    c.update(pb::UpdateSecretRequest { secret: Some(s) })
        .await
        .map(tonic::Response::into_inner)
}

pub async fn delete(
    c: &mut SecretsClient<Channel>,
    ns: &str,
    name: &str,
    rv: u64,
) -> Result<pb::Secret, tonic::Status> {
    c.delete(pb::DeleteSecretRequest {
        namespace: ns.into(),
        name: name.into(),
        resource_version: rv,
    })
    .await
    .map(|r| r.into_inner().secret.unwrap_or_default())
}

pub async fn list(
    c: &mut SecretsClient<Channel>,
    req: pb::ListSecretsRequest,
) -> Result<pb::ListSecretsResponse, tonic::Status> {
    c.list(req).await.map(tonic::Response::into_inner)
}

/// Names (`ns/name`) of listed Secrets.
pub fn names(items: &[pb::Secret]) -> Vec<String> {
    items
        .iter()
        .map(|s| {
            let m = meta(s);
            format!("{}/{}", m.namespace, m.name)
        })
        .collect()
}

/// Polls `f` every 10 ms until it returns true, for at most `secs` seconds.
pub async fn eventually<F, Fut>(secs: u64, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}
