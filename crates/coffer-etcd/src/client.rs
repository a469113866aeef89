//! The connection to an etcd cluster.
//!
//! One lazily connected channel per member, and an index of the member in use: a read that
//! fails with a transport error moves on to the next member and tries again (reads are
//! idempotent), a write is retried on the next member only when it cannot have been sent (a
//! connect error), so that a write is never applied twice. Every call has a deadline.
//!
//! The storage traits of coffer-core are synchronous, while tonic is asynchronous: the client
//! owns a small private runtime on which every etcd call and the watch task run, and
//! [`EtcdClient::block_on`] waits for a call from synchronous code (handing the caller's tokio
//! worker over to its other tasks first, on a multi-threaded runtime).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coffer_core::storage::StorageError;
use tokio::runtime::{Handle, Runtime};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::proto::etcdserverpb as pb;
use crate::url::{StorageTls, StorageUrl};
use pb::kv_client::KvClient;
use pb::lease_client::LeaseClient;
use pb::maintenance_client::MaintenanceClient;
use pb::watch_client::WatchClient;

/// The default deadline of one etcd call (a read's retries on other members included).
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest message exchanged with etcd (etcd's own default request limit is 1.5 MiB; a
/// Range answer can be larger).
const MAX_MESSAGE: usize = 64 << 20;

/// Errors talking to etcd.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EtcdError {
    /// A TLS file cannot be read or the TLS settings are incomplete; names the flag.
    #[error("{flag}: {message}")]
    Config {
        /// The flag at fault.
        flag: &'static str,
        /// What is wrong.
        message: String,
    },
    /// No member answered (in time).
    #[error("etcd unavailable: {0}")]
    Unavailable(String),
    /// etcd refused the request (an etcd error string, e.g. a compacted revision).
    #[error("etcd refused the request: {0}")]
    Refused(tonic::Status),
    /// The client's runtime is gone (the store is shutting down).
    #[error("the etcd client is closed")]
    Closed,
}

impl From<EtcdError> for StorageError {
    fn from(e: EtcdError) -> Self {
        match e {
            EtcdError::Refused(s) => {
                StorageError::Invalid(format!("etcd refused the request: {}", s.message()))
            }
            other => StorageError::Unavailable(other.to_string()),
        }
    }
}

/// A cheap handle on one etcd cluster (clones share the connection).
#[derive(Clone)]
pub struct EtcdClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EtcdClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdClient")
            .field("endpoints", &self.inner.endpoints)
            .field("prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

struct Inner {
    /// The private runtime (taken on drop and shut down in the background: dropping a runtime
    /// inside another one's task would panic).
    runtime: Mutex<Option<Runtime>>,
    handle: Handle,
    endpoints: Vec<String>,
    channels: Vec<Channel>,
    /// The member tried first.
    current: AtomicUsize,
    prefix: String,
    timeout: Duration,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let rt = self
            .runtime
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(rt) = rt {
            rt.shutdown_background();
        }
    }
}

/// What a call needs from a failure: may it go to another member?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// A read: any transport failure may be retried.
    Idempotent,
    /// A write: only when it was surely not sent.
    NotSent,
}

impl EtcdClient {
    /// A client for `url` (nothing is dialled yet: see [`EtcdClient::check`]).
    pub fn new(url: &StorageUrl, tls: &StorageTls) -> Result<Self, EtcdError> {
        Self::with_timeout(url, tls, DEFAULT_CALL_TIMEOUT)
    }

    /// As [`EtcdClient::new`] with a per-call deadline.
    pub fn with_timeout(
        url: &StorageUrl,
        tls: &StorageTls,
        timeout: Duration,
    ) -> Result<Self, EtcdError> {
        let tls_config = client_tls(tls)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("coffer-etcd")
            .enable_all()
            .build()
            .map_err(|e| EtcdError::Unavailable(format!("cannot start the etcd runtime: {e}")))?;
        let handle = runtime.handle().clone();
        let channels = {
            // Lazy channels spawn their connection task on the current runtime: ours.
            let _enter = runtime.enter();
            url.endpoints
                .iter()
                .map(|host| endpoint(host, tls_config.as_ref(), timeout).map(|e| e.connect_lazy()))
                .collect::<Result<Vec<_>, _>>()?
        };
        Ok(Self {
            inner: Arc::new(Inner {
                runtime: Mutex::new(Some(runtime)),
                handle,
                endpoints: url.endpoints.clone(),
                channels,
                current: AtomicUsize::new(0),
                prefix: url.prefix.clone(),
                timeout,
            }),
        })
    }

    /// The key prefix every key of this store starts with.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The members' addresses.
    pub fn endpoints(&self) -> &[String] {
        &self.inner.endpoints
    }

    /// The per-call deadline.
    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// Asks the cluster for its current revision (a linearizable read): proves that a quorum
    /// answers.
    pub async fn current_revision(&self) -> Result<u64, EtcdError> {
        let key = format!("{}/", self.inner.prefix).into_bytes();
        let resp = self
            .read(move |mut kv| {
                let key = key.clone();
                async move {
                    kv.range(pb::RangeRequest {
                        key,
                        count_only: true,
                        ..Default::default()
                    })
                    .await
                }
            })
            .await?;
        Ok(header_revision(resp.header.as_ref()))
    }

    /// As [`EtcdClient::current_revision`], from synchronous code (start-up checks).
    pub fn check(&self) -> Result<u64, EtcdError> {
        let me = self.clone();
        self.block_on(async move { me.current_revision().await })
    }

    /// Runs `fut` on the client's runtime and waits for it from synchronous code.
    pub(crate) fn block_on<T, E, F>(&self, fut: F) -> Result<T, E>
    where
        F: Future<Output = Result<T, E>> + Send + 'static,
        T: Send + 'static,
        E: From<EtcdError> + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.inner.handle.spawn(async move {
            // The receiver is gone only if the caller went away: nothing to tell.
            let _ = tx.send(fut.await);
        });
        let out = coffer_core::storage::off_worker(move || rx.recv());
        out.unwrap_or_else(|_| Err(EtcdError::Closed.into()))
    }

    /// Runs `fut` on the client's runtime and awaits it from any runtime.
    pub(crate) async fn run<T, E, F>(&self, fut: F) -> Result<T, E>
    where
        F: Future<Output = Result<T, E>> + Send + 'static,
        T: Send + 'static,
        E: From<EtcdError> + Send + 'static,
    {
        self.inner
            .handle
            .spawn(fut)
            .await
            .unwrap_or_else(|_| Err(EtcdError::Closed.into()))
    }

    /// Spawns a task on the client's runtime.
    pub(crate) fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.inner.handle.spawn(fut)
    }

    fn kv_at(&self, i: usize) -> KvClient<Channel> {
        KvClient::new(self.inner.channels[i].clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    /// A watch client on the member in use, and that member's index (pass it to
    /// [`EtcdClient::failed`] when the stream breaks).
    pub(crate) fn watch_client(&self) -> (usize, WatchClient<Channel>) {
        let i = self.inner.current.load(Ordering::Relaxed) % self.inner.channels.len();
        let c = WatchClient::new(self.inner.channels[i].clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        (i, c)
    }

    /// A lease client on the member in use.
    pub fn lease_client(&self) -> LeaseClient<Channel> {
        let i = self.inner.current.load(Ordering::Relaxed) % self.inner.channels.len();
        LeaseClient::new(self.inner.channels[i].clone())
    }

    /// A maintenance client on member `i`.
    pub fn maintenance_client(&self, i: usize) -> MaintenanceClient<Channel> {
        MaintenanceClient::new(self.inner.channels[i % self.inner.channels.len()].clone())
    }

    /// Member `i` failed a call: move on to the next one (unless another call already did).
    pub(crate) fn failed(&self, i: usize) {
        let n = self.inner.channels.len();
        let _ = self.inner.current.compare_exchange(
            i,
            (i + 1) % n,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// A read on the KV service, retried on the other members until the deadline.
    pub(crate) async fn read<T, F, Fut>(&self, op: F) -> Result<T, EtcdError>
    where
        F: Fn(KvClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.call(Retry::Idempotent, op).await
    }

    /// A write on the KV service: retried on another member only if it cannot have been sent.
    pub(crate) async fn write<T, F, Fut>(&self, op: F) -> Result<T, EtcdError>
    where
        F: Fn(KvClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.call(Retry::NotSent, op).await
    }

    async fn call<T, F, Fut>(&self, retry: Retry, op: F) -> Result<T, EtcdError>
    where
        F: Fn(KvClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let deadline = Instant::now() + self.inner.timeout;
        let mut pause = Duration::from_millis(20);
        let mut last = String::new();
        loop {
            let i = self.inner.current.load(Ordering::Relaxed) % self.inner.channels.len();
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(EtcdError::Unavailable(format!(
                    "no etcd member answered within {:?} (last: {last})",
                    self.inner.timeout
                )));
            }
            match tokio::time::timeout(left, op(self.kv_at(i))).await {
                Ok(Ok(resp)) => return Ok(resp.into_inner()),
                Ok(Err(status)) => {
                    if !transient(&status) {
                        return Err(EtcdError::Refused(status));
                    }
                    let sent = !not_sent(&status);
                    last = format!("{}: {}", self.inner.endpoints[i], status.message());
                    self.failed(i);
                    if retry == Retry::NotSent && sent {
                        return Err(EtcdError::Unavailable(format!(
                            "the write's outcome is unknown ({last})"
                        )));
                    }
                }
                Err(_) => {
                    self.failed(i);
                    return Err(EtcdError::Unavailable(format!(
                        "no answer from {} within {:?}",
                        self.inner.endpoints[i], self.inner.timeout
                    )));
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }
}

/// The revision in an etcd response header (0 when absent).
pub(crate) fn header_revision(h: Option<&pb::ResponseHeader>) -> u64 {
    h.map_or(0, |h| h.revision.max(0) as u64)
}

/// Whether another attempt (on this or another member) may succeed.
fn transient(s: &tonic::Status) -> bool {
    use tonic::Code;
    match s.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => true,
        // Transport errors surface as Unknown; etcd's leader changes as Unavailable or these.
        Code::Unknown | Code::Internal => {
            let m = s.message();
            m.contains("transport")
                || m.contains("connect")
                || m.contains("leader")
                || m.contains("timed out")
                || m.contains("broken pipe")
        }
        _ => false,
    }
}

/// Whether the request surely never reached a member (the connection could not be made).
fn not_sent(s: &tonic::Status) -> bool {
    let m = s.message();
    m.contains("tcp connect error")
        || m.contains("error trying to connect")
        || m.contains("Connection refused")
}

fn endpoint(
    host: &str,
    tls: Option<&ClientTlsConfig>,
    timeout: Duration,
) -> Result<Endpoint, EtcdError> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut e = Endpoint::from_shared(format!("{scheme}://{host}"))
        .map_err(|err| EtcdError::Config {
            flag: "--storage",
            message: format!("endpoint {host:?}: {err}"),
        })?
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .tcp_nodelay(true)
        // A member that vanishes without closing its connections (a partition) is noticed.
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    if let Some(tls) = tls {
        let domain = host
            .rsplit_once(':')
            .map_or(host, |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']');
        e = e
            .tls_config(tls.clone().domain_name(domain))
            .map_err(|err| EtcdError::Config {
                flag: "--storage-ca-file",
                message: err.to_string(),
            })?;
    }
    Ok(e)
}

fn client_tls(tls: &StorageTls) -> Result<Option<ClientTlsConfig>, EtcdError> {
    if !tls.enabled() {
        return Ok(None);
    }
    let read = |flag: &'static str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| EtcdError::Config {
            flag,
            message: format!("cannot read {}: {e}", path.display()),
        })
    };
    let Some(ca) = &tls.ca_file else {
        return Err(EtcdError::Config {
            flag: "--storage-ca-file",
            message: "required with --storage-cert-file/--storage-key-file (the CA that signed \
                      the etcd members' certificates)"
                .into(),
        });
    };
    let mut config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("--storage-ca-file", ca)?));
    match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => {
            config = config.identity(Identity::from_pem(
                read("--storage-cert-file", cert)?,
                read("--storage-key-file", key)?,
            ));
        }
        (None, None) => {}
        (Some(_), None) => {
            return Err(EtcdError::Config {
                flag: "--storage-key-file",
                message: "required with --storage-cert-file".into(),
            });
        }
        (None, Some(_)) => {
            return Err(EtcdError::Config {
                flag: "--storage-cert-file",
                message: "required with --storage-key-file".into(),
            });
        }
    }
    Ok(Some(config))
}
