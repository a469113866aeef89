//! The one in-process test server: [`TestServer::builder`] starts a real server on 127.0.0.1:0
//! (and, by default, a unix socket and the metrics endpoint) over a sled store in a temp dir,
//! with the options a test needs (server options, store quotas, a KMS of its own or one that
//! is down, a store it opened itself, security settings, listeners). Also the channels and
//! request helpers the tests share.
//!
//! Test files use it as `coffer_testkit::server`; `coffer serve` as a child process is
//! [`crate::process::Serve`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use coffer_core::kms::{Kms, KmsError, KmsStatus, Wrapped};
use coffer_core::storage::SledBackend;
use coffer_core::store::{Store, StoreConfig};
use coffer_server::auth::{Security, SecurityArgs};
use coffer_server::proto::v1 as pb;
use coffer_server::proto::v1::secrets_client::SecretsClient;
use coffer_server::server::{
    ListenAddr, Metrics, RunningServer, ServeError, Server, ServerOptions,
};
use tonic::client::GrpcService;
use tonic::transport::{Channel, Endpoint, Uri};
use zeroize::Zeroizing;

use crate::engine::{TestKms, open_store};

/// A KMS that can be switched off: every call then fails with `Unavailable`. Every
/// [`TestServer`] whose store it opened sits on one, so any test can take the KMS down.
#[derive(Debug)]
pub struct FlakyKms {
    pub inner: Arc<dyn Kms>,
    pub down: AtomicBool,
}

impl FlakyKms {
    pub fn new(inner: Arc<dyn Kms>, down: bool) -> Arc<Self> {
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

/// Server options with short intervals for tests: bookmarks every 200 ms, no token cleaner,
/// a 10 s shutdown grace.
pub fn test_options() -> ServerOptions {
    ServerOptions {
        bookmark_interval: Duration::from_millis(200),
        token_cleaner_interval: None,
        shutdown_grace: Duration::from_secs(10),
        ..ServerOptions::default()
    }
}

/// How a [`TestServer`] is started; every setting has a default that suits most tests.
pub struct TestServerBuilder {
    dir: Option<PathBuf>,
    options: ServerOptions,
    store_config: StoreConfig,
    kms: Option<Arc<dyn Kms>>,
    kms_down: bool,
    store: Option<Store>,
    security: Option<SecurityArgs>,
    listen: Option<Vec<ListenAddr>>,
    metrics_listen: bool,
    etcd: bool,
}

impl TestServerBuilder {
    /// Also serves the etcd v3 door on 127.0.0.1:0 ([`TestServer::etcd_addr`]).
    pub fn etcd(mut self) -> Self {
        self.etcd = true;
        self
    }

    /// The directory of the store (`db`), the test KMS's key file and the unix socket, kept
    /// by the test (so that a restart finds the same data); a fresh temp dir by default.
    pub fn dir(mut self, dir: &Path) -> Self {
        self.dir = Some(dir.to_owned());
        self
    }

    /// Server options instead of [`test_options`].
    pub fn options(mut self, options: ServerOptions) -> Self {
        self.options = options;
        self
    }

    /// The store's settings (quotas, ...) instead of the defaults.
    pub fn store_config(mut self, config: StoreConfig) -> Self {
        self.store_config = config;
        self
    }

    /// The KMS under the store (wrapped in a [`FlakyKms`]); a [`TestKms`] by default.
    pub fn kms(mut self, kms: Arc<dyn Kms>) -> Self {
        self.kms = Some(kms);
        self
    }

    /// Starts with the KMS down (see [`FlakyKms`]).
    pub fn kms_down(mut self) -> Self {
        self.kms_down = true;
        self
    }

    /// Serves a store the test opened itself (over a faulty backend, say) instead of one
    /// over sled in [`Self::dir`]; the server then has no [`TestServer::backend`] or
    /// [`TestServer::kms`].
    pub fn store(mut self, store: Store) -> Self {
        self.store = Some(store);
        self
    }

    /// Security settings (TLS, client CA, tokens, policy, audit), resolved and loaded as
    /// `coffer serve` does.
    pub fn security(mut self, args: SecurityArgs) -> Self {
        self.security = Some(args);
        self
    }

    /// The gRPC listeners instead of the default: TCP on 127.0.0.1:0 and `coffer.sock` in
    /// the directory.
    pub fn listen(mut self, listen: Vec<ListenAddr>) -> Self {
        self.listen = Some(listen);
        self
    }

    /// No metrics endpoint (by default it listens on 127.0.0.1:0).
    pub fn without_metrics_listener(mut self) -> Self {
        self.metrics_listen = false;
        self
    }

    /// Starts the server; panics if it does not start.
    pub async fn start(self) -> TestServer {
        self.try_start().await.expect("start server")
    }

    /// Starts the server, or says why it did not (bad security files, an address in use).
    pub async fn try_start(self) -> Result<TestServer, ServeError> {
        let (dir, tmp) = match self.dir {
            Some(dir) => (dir, None),
            None => {
                let tmp = tempfile::tempdir().expect("tempdir");
                (tmp.path().to_owned(), Some(tmp))
            }
        };
        let (store, backend, kms) = match self.store {
            Some(store) => (store, None, None),
            None => {
                let inner = self
                    .kms
                    .unwrap_or_else(|| TestKms::open(&dir, 1) as Arc<dyn Kms>);
                let kms = FlakyKms::new(inner, self.kms_down);
                let (store, backend) = open_store(&dir, kms.clone(), self.store_config).await;
                (store, Some(backend), Some(kms))
            }
        };
        let store = Arc::new(store);
        let socket = dir.join("coffer.sock");
        let metrics = Metrics::new();
        let mut server = Server::new(store.clone())
            .options(self.options)
            .metrics(metrics.clone());
        if let Some(args) = self.security {
            let config = args
                .resolve(None)
                .map_err(|e| ServeError::Config(e.to_string()))?;
            let security = Security::load(config).map_err(|e| ServeError::Config(e.to_string()))?;
            server = server.security(security);
        }
        let listen = self.listen.unwrap_or_else(|| {
            vec![
                ListenAddr::Tcp("127.0.0.1:0".into()),
                ListenAddr::Unix(socket.clone()),
            ]
        });
        for l in listen {
            server = server.listen(l);
        }
        if self.metrics_listen {
            server = server.metrics_listen("127.0.0.1:0");
        }
        if self.etcd {
            server = server.etcd_listen(ListenAddr::Tcp("127.0.0.1:0".into()));
        }
        let running = server.start().await?;
        Ok(TestServer {
            running,
            store,
            backend,
            kms,
            dir,
            socket,
            _tmp: tmp,
        })
    }
}

/// A running test server and what a test needs around it.
pub struct TestServer {
    pub running: RunningServer,
    pub store: Arc<Store>,
    backend: Option<Arc<SledBackend>>,
    kms: Option<Arc<FlakyKms>>,
    /// Where the store, the KMS key file and the unix socket are.
    pub dir: PathBuf,
    /// The unix socket of the default listeners.
    pub socket: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl TestServer {
    pub fn builder() -> TestServerBuilder {
        TestServerBuilder {
            dir: None,
            options: test_options(),
            store_config: StoreConfig::default(),
            kms: None,
            kms_down: false,
            store: None,
            security: None,
            listen: None,
            metrics_listen: true,
            etcd: false,
        }
    }

    /// A server with every default: TCP on 127.0.0.1:0, a unix socket, the metrics endpoint,
    /// [`test_options`], a fresh store.
    pub async fn start() -> Self {
        Self::builder().start().await
    }

    /// The TCP address (the first TCP listener).
    pub fn addr(&self) -> SocketAddr {
        self.running.tcp_addr().expect("tcp addr")
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        self.running.metrics()
    }

    /// The sled backend under the store, for tampering.
    pub fn backend(&self) -> &Arc<SledBackend> {
        self.backend
            .as_ref()
            .expect("the test passed its own store: no backend here")
    }

    /// The KMS under the store, to take it down and bring it back.
    pub fn kms(&self) -> &Arc<FlakyKms> {
        self.kms
            .as_ref()
            .expect("the test passed its own store: no KMS here")
    }

    /// A plaintext client over TCP that takes messages up to 16 MiB.
    pub async fn client(&self) -> SecretsClient<Channel> {
        SecretsClient::new(self.channel().await)
            .max_decoding_message_size(16 << 20)
            .max_encoding_message_size(16 << 20)
    }

    /// The etcd door's address (see [`TestServerBuilder::etcd`]).
    pub fn etcd_addr(&self) -> SocketAddr {
        *self
            .running
            .etcd_addrs()
            .first()
            .expect("the server was built without .etcd()")
    }

    /// etcd clients on the door.
    pub async fn etcd(&self) -> crate::etcd::Clients {
        crate::etcd::Clients::new(tcp_channel(self.etcd_addr()).await)
    }

    pub async fn channel(&self) -> Channel {
        tcp_channel(self.addr()).await
    }

    pub async fn unix_client(&self) -> SecretsClient<Channel> {
        SecretsClient::new(unix_channel(&self.socket).await)
    }
}

/// A plaintext channel over TCP.
pub async fn tcp_channel(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect")
}

/// A plaintext channel over a unix socket.
pub async fn unix_channel(path: &Path) -> Channel {
    try_unix_channel(path).await.expect("connect unix")
}

/// [`unix_channel`], for a test that expects it to fail at times (a server restarting).
pub async fn try_unix_channel(path: &Path) -> Result<Channel, tonic::transport::Error> {
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
}

/// What a generated client runs over: a [`Channel`], or one behind an interceptor (a bearer
/// token), so that one request helper serves both.
pub trait Transport:
    GrpcService<
        tonic::body::Body,
        Error: Into<StdError>,
        ResponseBody: http_body::Body<Data = bytes::Bytes, Error: Into<StdError> + Send>
                          + Send
                          + 'static,
    >
{
}

impl<T> Transport for T where
    T: GrpcService<
            tonic::body::Body,
            Error: Into<StdError>,
            ResponseBody: http_body::Body<Data = bytes::Bytes, Error: Into<StdError> + Send>
                              + Send
                              + 'static,
        >
{
}

type StdError = Box<dyn std::error::Error + Send + Sync + 'static>;

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

pub async fn create<T: Transport>(
    c: &mut SecretsClient<T>,
    s: pb::Secret,
) -> Result<pb::Secret, tonic::Status> {
    c.create(pb::CreateSecretRequest { secret: Some(s) })
        .await
        .map(tonic::Response::into_inner)
}

pub async fn get<T: Transport>(
    c: &mut SecretsClient<T>,
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
