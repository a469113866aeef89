//! The network face of Coffer: the gRPC Secret service, health, reflection, metrics, the
//! bootstrap token cleaner, and the `coffer serve` entry point.
//!
//! # Layout
//!
//! - [`config`]: `ServeArgs` (the contract with the CLI), the TOML file, defaults.
//! - [`service`]: the `coffer.v1.Secrets` implementation over [`Store`].
//! - `watch`: Watch and WatchMany streams: a hub routes change events (converted once) to the
//!   bounded queues of the watchers they concern; a window of recent events serves resumes.
//! - [`status`]: the one mapping from engine errors to gRPC codes.
//! - [`convert`]: wire messages to and from the engine's `Secret`.
//! - [`metrics`]: Prometheus counters, the RPC observer, the KMS call counter, `/metrics`.
//! - [`limits`]: the server-wide watch-stream cap and request rate; the quota, limit and
//!   hygiene flags.
//! - [`cleaner`]: deletes expired bootstrap tokens.
//! - `health`: the gRPC health service, ending its watches at shutdown.
//! - `listen`: binding the addresses; accepting on them through the one accept loop
//!   ([`coffer_kms::net`]), with the TLS handshake and the HTTP/2 preface deadline (`preface`).
//! - `error`: [`ServeError`].
//!
//! This module file is the facade and the run loop: its children never name it.
//!
//! Authentication, authorization, per-connection limits and audit live in [`crate::auth`] and
//! [`crate::audit`], below this module (they never name it): [`Server::security`] hands them
//! in; every Secret RPC passes the gate; the metrics renderer reads the counters they keep.
//!
//! # Running
//!
//! `coffer serve` calls [`run`]: it opens the embedded default store, starts a [`Server`], and
//! shuts down gracefully on SIGTERM or SIGINT. Tests (and embedders) build a [`Server`] over a
//! store of their own, listen on `127.0.0.1:0` or a temporary unix socket, read the bound
//! addresses from the [`RunningServer`], and stop it with [`RunningServer::shutdown`]:
//!
//! ```no_run
//! # async fn example(
//! #     store: std::sync::Arc<coffer_core::store::Store>,
//! # ) -> Result<(), coffer_server::server::ServeError> {
//! use coffer_server::server::{ListenAddr, Server};
//! let running = Server::new(store)
//!     .listen(ListenAddr::Tcp("127.0.0.1:0".into()))
//!     .start()
//!     .await?;
//! let addr = running.tcp_addr();
//! // ... talk to `addr` ...
//! running.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! Shutdown stops accepting connections, ends watch streams with `UNAVAILABLE` "server shutting
//! down", lets in-flight calls finish (for at most [`ServerOptions::shutdown_grace`]), syncs the
//! store, and removes the unix sockets it created.

pub mod cleaner;
pub mod config;
pub mod convert;
mod error;
mod health;
pub mod limits;
mod listen;
pub mod metrics;
mod opening;
mod preface;
pub mod service;
pub mod status;
mod watch;

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

pub use self::config::{ListenAddr, MAX_TLS_HANDSHAKES, ServeArgs, ServeConfig, ServerOptions};
pub use self::error::ServeError;
use self::health::ShutdownAwareHealth;
pub use self::listen::BoundAddr;
use self::listen::{Bound, Listener, bind_all, tcp_incoming, tls_incoming, unix_incoming};
use self::metrics::MetricsService;
pub use self::metrics::{CountingKms, Metrics};
use self::opening::{Front, OpenFuture, OpeningReason};
pub use self::preface::PREFACE_TIMEOUT;
pub use self::service::SecretsService;
pub use self::watch::MAX_WATCHES_PER_STREAM;
use self::watch::{Hub, WatchContext};
use crate::auth::Security;
use crate::auth::gate::Gate;
use crate::proto::v1::FILE_DESCRIPTOR_SET;
use crate::proto::v1::secrets_server::SecretsServer;
use coffer_core::kms::KmsError;
use coffer_core::store::{Store, StoreError};

/// The most streams (calls, including Watch and WatchMany streams) one HTTP/2 connection may
/// have open at once. 100,000 watch streams therefore need at least 98 connections; a client
/// that wants more per connection should multiplex watches over `WatchMany` instead (up to
/// [`MAX_WATCHES_PER_STREAM`] per stream).
pub const MAX_CONCURRENT_STREAMS: u32 = 1024;
/// The HTTP/2 receive window the server grants each stream (32 KiB): what one stream's peer may
/// send before the server reads it. Requests larger than this just take more round trips.
pub const INITIAL_STREAM_WINDOW: u32 = 32 * 1024;
/// The HTTP/2 receive window of a whole connection (256 KiB): bounds what a connection, however
/// many streams it holds, may make the server buffer. 1,000 connections: at most 256 MiB.
pub const INITIAL_CONNECTION_WINDOW: u32 = 256 * 1024;
/// How often the server pings an idle connection.
pub const HTTP2_KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);
/// How long a ping may go unanswered before the connection (and its streams) is closed.
pub const HTTP2_KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// Runs `coffer serve`: resolves the settings, opens the store (sled under the data directory,
/// the local key-file KEK or the `--kms` plugin), serves until SIGTERM or SIGINT, then shuts
/// down gracefully.
///
/// Sets up logging (tracing to stderr, filtered by `RUST_LOG`, default `info`) unless the caller
/// already has.
pub async fn run(args: ServeArgs) -> Result<(), ServeError> {
    init_tracing();
    let config = args.resolve()?;
    // Before any key is loaded: no core dumps, memory locked.
    coffer_kms::hygiene::apply(&config.limits.hygiene);
    let metrics = Metrics::new();
    let store_config = config.store_config();
    // How often a store that waits for the KMS tries to open again.
    let retry = config
        .kms
        .outage
        .healthy_interval
        .min(config.kms.outage.failing_interval);
    let server = match &config.storage {
        None => {
            create_data_dir(&config.data_dir)?;
            // `--kek-file`, the local key file, or a KMS v2 plugin (dialed lazily: a plugin
            // that is down at start leaves the server up but not ready, and the Status poller
            // retries). A data directory made with a plugin is refused without `--kms` (no key
            // file is made).
            let kms = match &config.kek_file {
                Some(path) => open_kek_file(path)?,
                None => config.kms.open(&config.data_dir).map_err(|e| match e {
                    KmsError::WrongKms(why) => ServeError::Config(why),
                    other => StoreError::from(other).into(),
                })?,
            };
            let kms = CountingKms::wrap(kms, metrics.clone());
            let data_dir = config.data_dir.clone();
            let durability = config.durability;
            tracing::info!(
                "data directory {} ({:?} durability)",
                config.data_dir.display(),
                config.durability
            );
            let open = move || {
                Store::open_dir(
                    data_dir.clone(),
                    durability,
                    store_config.clone(),
                    kms.clone(),
                )
            };
            open_or_wait(open, retry).await?
        }
        Some((url, tls)) => {
            // The shared KEK (resolve refused to go on without one).
            let kms: Arc<dyn coffer_core::kms::Kms> = match (&config.kek_file, &config.kms.endpoint)
            {
                (Some(path), _) => open_kek_file(path)?,
                (None, Some(endpoint)) => Arc::new(
                    coffer_kms::GrpcKms::with_peer_uid(
                        endpoint.path(),
                        config.kms.timeout,
                        config.kms.peer_uid,
                    )
                    .map_err(StoreError::from)?,
                ),
                (None, None) => {
                    return Err(ServeError::Config(format!(
                        "--storage {url}: needs --kms or --kek-file"
                    )));
                }
            };
            let client = coffer_etcd::EtcdClient::new(url, tls)
                .map_err(|e| ServeError::Config(e.to_string()))?;
            let kms = CountingKms::wrap(kms, metrics.clone());
            tracing::info!("storage {url} (revisions are etcd's; shared with other replicas)");
            let open = move || {
                let (client, kms, store_config) =
                    (client.clone(), kms.clone(), store_config.clone());
                async move {
                    let mvcc = coffer_etcd::EtcdMvcc::open(client).await?;
                    Store::open_mvcc(Arc::new(mvcc), kms, store_config).await
                }
            };
            open_or_wait(open, retry).await?
        }
    };
    let security =
        Security::load(config.security).map_err(|e| ServeError::Config(e.to_string()))?;
    let mut server = server
        .options(config.options)
        .security(security.clone())
        .metrics(metrics);
    for addr in config.listen {
        server = server.listen(addr);
    }
    for addr in config.etcd_listen {
        server = server.etcd_listen(addr);
    }
    if let Some(m) = config.metrics_listen {
        server = server.metrics_listen(m);
    }
    // Watched from before the listeners are bound: a SIGTERM that arrives while the server
    // starts (the unix socket accepts as soon as it is bound) stops it cleanly.
    let stop = StopSignals::install();
    let running = server.start().await?;
    let token = running.shutdown_token();
    tokio::spawn(reload_on_sighup(security, token.clone()));
    tokio::spawn(async move {
        tokio::select! {
            _ = token.cancelled() => {}
            signal = stop.wait() => {
                tracing::info!("{signal} received: shutting down");
                token.cancel();
            }
        }
    });
    running.wait().await
}

/// Opens `--kek-file` (never creates it: every replica must hold the same key).
fn open_kek_file(path: &std::path::Path) -> Result<Arc<dyn coffer_core::kms::Kms>, ServeError> {
    coffer_core::kms::LocalKek::open_existing(path)
        .map(|k| Arc::new(k) as Arc<dyn coffer_core::kms::Kms>)
        .map_err(|e| {
            ServeError::Config(format!(
                "--kek-file {}: {e} (it must exist: 32 random bytes, mode 0600, the same file \
                 on every replica)",
                path.display()
            ))
        })
}

/// A server over the store `open` opens: at once, or (when it fails for want of the KMS: the
/// integrity key that authenticates the storage is unwrapped by it) in the background, every
/// `retry`, the server up but not ready meanwhile. Any other failure is final.
async fn open_or_wait<F, Fut>(open: F, retry: std::time::Duration) -> Result<Server, ServeError>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<Store, StoreError>> + Send + 'static,
{
    match open().await {
        Ok(store) => Ok(Server::new(Arc::new(store))),
        Err(StoreError::Unavailable(e)) => {
            tracing::warn!(error = %e, "the store opens once the KMS answers; health NOT_SERVING \
                until then");
            let why: OpeningReason = Arc::new(std::sync::Mutex::new(refusal(&e)));
            Ok(Server::opening(
                Box::pin(open_when_kms_answers(open, retry, why.clone(), e)),
                why,
            ))
        }
        Err(e) => Err(e.into()),
    }
}

/// What calls are told while the store waits for the KMS (the KMS error says why; it names no
/// secret).
fn refusal(error: &str) -> String {
    format!("KMS unreachable: the store opens once the KMS answers ({error})")
}

/// Tries `open` every `retry` while it fails for want of the KMS (logging each new reason,
/// keeping `why` current); any other failure is final.
async fn open_when_kms_answers<F, Fut>(
    open: F,
    retry: std::time::Duration,
    why: OpeningReason,
    mut last: String,
) -> Result<Arc<Store>, ServeError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<Store, StoreError>>,
{
    loop {
        tokio::time::sleep(retry).await;
        match open().await {
            Ok(store) => {
                tracing::info!("KMS answers: store open");
                return Ok(Arc::new(store));
            }
            Err(StoreError::Unavailable(e)) => {
                if e != last {
                    tracing::warn!(error = %e, "the store still waits for the KMS");
                    if let Ok(mut w) = why.lock() {
                        *w = refusal(&e);
                    }
                    last = e;
                } else {
                    tracing::debug!(error = %e, "the store still waits for the KMS");
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Reloads the token file and the policy (and reopens the audit log) on each SIGHUP, until
/// shutdown. Connections stay up; a bad file keeps the previous settings.
async fn reload_on_sighup(security: Arc<Security>, shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch for SIGHUP; settings reload only on restart");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                got = hup.recv() => {
                    if got.is_none() {
                        return;
                    }
                    tracing::info!("SIGHUP received: reloading the token file and the authorization policy");
                    security.reload_and_log();
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (security, shutdown);
    }
}

/// Creates the data directory if missing, owner-only (it holds the local KEK); an existing
/// directory is left as it is.
fn create_data_dir(dir: &Path) -> Result<(), ServeError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(|e| ServeError::Io {
        context: format!("cannot create data directory {}", dir.display()),
        source: e,
    })
}

pub use coffer_kms::logging::init_tracing;

/// SIGTERM and SIGINT, each watched from the moment it is installed.
struct StopSignals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let watch = |kind: SignalKind, name: &str| match signal(kind) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch for {name}");
                    None
                }
            };
            Self {
                term: watch(SignalKind::terminate(), "SIGTERM"),
                int: watch(SignalKind::interrupt(), "SIGINT"),
            }
        }
        #[cfg(not(unix))]
        {
            Self {}
        }
    }

    /// Waits for the first of them; returns its name.
    async fn wait(self) -> &'static str {
        #[cfg(unix)]
        {
            async fn next(s: Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(mut s) => {
                        if s.recv().await.is_none() {
                            std::future::pending::<()>().await;
                        }
                    }
                    None => std::future::pending::<()>().await,
                }
            }
            tokio::select! {
                _ = next(self.int) => "SIGINT",
                _ = next(self.term) => "SIGTERM",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}

/// Builds and starts a server over a store.
#[derive(Debug)]
pub struct Server {
    store: StoreSource,
    listen: Vec<ListenAddr>,
    etcd_listen: Vec<ListenAddr>,
    metrics_listen: Option<String>,
    options: ServerOptions,
    metrics: Option<Arc<Metrics>>,
    security: Option<Arc<Security>>,
}

impl Server {
    /// A server over `store` with the default [`ServerOptions`] and no address yet.
    pub fn new(store: Arc<Store>) -> Self {
        Self::with_source(StoreSource::Open(store))
    }

    /// A server whose store `open` opens in the background (`coffer serve` while the KMS does
    /// not answer yet): the listeners are bound at once, health says NOT_SERVING and every
    /// other call is refused with `UNAVAILABLE` and the text in `why`, until the store is open.
    fn opening(open: OpenFuture, why: OpeningReason) -> Self {
        Self::with_source(StoreSource::Opening { open, why })
    }

    fn with_source(store: StoreSource) -> Self {
        Self {
            store,
            listen: Vec::new(),
            etcd_listen: Vec::new(),
            metrics_listen: None,
            options: ServerOptions::default(),
            metrics: None,
            security: None,
        }
    }

    /// Authenticates, authorizes, limits and audits requests with `security` (default:
    /// [`Security::disabled`], which needs loopback or unix listeners).
    pub fn security(mut self, security: Arc<Security>) -> Self {
        self.security = Some(security);
        self
    }

    /// Adds an address to listen on (TCP or unix socket; several may be given).
    pub fn listen(mut self, addr: ListenAddr) -> Self {
        self.listen.push(addr);
        self
    }

    /// Serves the etcd v3 door on `addr` (`HOST:PORT`; several may be given).
    pub fn etcd_listen(mut self, addr: ListenAddr) -> Self {
        self.etcd_listen.push(addr);
        self
    }

    /// Serves Prometheus metrics on `addr` (`HOST:PORT`; port 0 picks one).
    pub fn metrics_listen(mut self, addr: impl Into<String>) -> Self {
        self.metrics_listen = Some(addr.into());
        self
    }

    /// Replaces the tunables.
    pub fn options(mut self, options: ServerOptions) -> Self {
        self.options = options;
        self
    }

    /// Uses `metrics` (for instance one whose [`CountingKms`] wraps the store's KMS) instead of
    /// a fresh registry.
    pub fn metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Binds every address, starts serving, and returns at once.
    pub async fn start(self) -> Result<RunningServer, ServeError> {
        if self.listen.is_empty() {
            return Err(ServeError::Config("no address to listen on".into()));
        }
        let Self {
            store: source,
            mut listen,
            etcd_listen,
            metrics_listen,
            options,
            metrics,
            security,
        } = self;
        let metrics = metrics.unwrap_or_else(Metrics::new);
        let security = security.unwrap_or_else(Security::disabled);
        // Audit errors and per-connection rejections are counted by the security state itself.
        metrics.read_from(security.clone());
        let tls = security
            .tls_acceptor()
            .map_err(|e| ServeError::Config(e.to_string()))?;
        let shutdown = CancellationToken::new();

        if let StoreSource::Open(store) = &source
            && !etcd_listen.is_empty()
            && store.history_retention().is_zero()
        {
            return Err(ServeError::Config(
                "--etcd-listen needs history (the door's watches and reads at a revision are \
                 served from it): set --history-retention above 0"
                    .into(),
            ));
        }
        // Bind everything first, so a bad address fails the start and nothing is half-up. The
        // Secret service's listeners come first, then the etcd door's.
        let secret_listeners = listen.len();
        listen.extend(etcd_listen);
        let Bound {
            mut listeners,
            mut addrs,
            sockets,
            metrics: metrics_listener,
            metrics_addr,
        } = bind_all(&listen, metrics_listen.as_deref()).await?;
        if let Err(e) =
            check_exposure(&security, &addrs).and_then(|()| open_sockets(&security, &sockets))
        {
            drop(listeners);
            for path in &sockets {
                let _ = std::fs::remove_file(path);
            }
            return Err(e);
        }
        let etcd_listeners = listeners.split_off(secret_listeners);
        let etcd_addrs: Vec<SocketAddr> = addrs
            .split_off(secret_listeners)
            .into_iter()
            .filter_map(|a| match a {
                BoundAddr::Tcp(s) => Some(s),
                BoundAddr::Unix(_) => None,
            })
            .collect();

        // Until the store is open (at once, or once the KMS answers), health says NOT_SERVING
        // and other calls are refused with the reason.
        let (health, _) = tonic_health::server::health_reporter();
        set_kms_readiness(&health, false).await;
        let health_service = ShutdownAwareHealth::server(health.clone(), shutdown.clone());
        let why = match &source {
            StoreSource::Opening { why, .. } => why.clone(),
            StoreSource::Open(_) => OpeningReason::default(),
        };
        let front = Front::new(Routes::new(health_service.clone()).prepare(), why.clone());
        let door_front = (!etcd_addrs.is_empty())
            .then(|| Front::new(Routes::new(health_service.clone()).prepare(), why.clone()));
        let attach = Attach {
            options: options.clone(),
            metrics: metrics.clone(),
            security: security.clone(),
            health: health.clone(),
            health_service,
            shutdown: shutdown.clone(),
            etcd_addrs: etcd_addrs.clone(),
            tls: tls.is_some(),
            front: front.clone(),
            door_front: door_front.clone(),
        };
        let slot: Arc<OnceLock<Arc<Store>>> = Arc::new(OnceLock::new());
        let opening_failed: Arc<std::sync::Mutex<Option<ServeError>>> = Arc::default();
        let mut background = JoinSet::new();
        let opening = match source {
            StoreSource::Open(store) => {
                let _ = slot.set(store.clone());
                attach
                    .attach(&store, metrics_listener, &mut background)
                    .await?;
                None
            }
            StoreSource::Opening { open, .. } => Some((open, attach, metrics_listener)),
        };
        let service = MetricsService::new(front, metrics.clone());
        let door_service = door_front.map(|f| MetricsService::new(f, metrics.clone()));

        let mut serving = JoinSet::new();
        // Places for TLS handshakes in progress, shared by every TLS listener.
        let handshakes = Arc::new(tokio::sync::Semaphore::new(
            options.max_tls_handshakes.max(1),
        ));
        for listener in listeners {
            // Many long-lived streams per connection, small flow-control windows (they bound
            // what a peer may make us buffer), and pings that find dead peers so that their
            // watch streams do not linger. See the constants.
            let builder = tonic::transport::Server::builder()
                .max_concurrent_streams(Some(MAX_CONCURRENT_STREAMS))
                .initial_stream_window_size(Some(INITIAL_STREAM_WINDOW))
                .initial_connection_window_size(Some(INITIAL_CONNECTION_WINDOW))
                .http2_adaptive_window(Some(false))
                .http2_keepalive_interval(Some(HTTP2_KEEPALIVE_INTERVAL))
                .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE_TIMEOUT));
            let signal = shutdown.clone().cancelled_owned();
            let service = service.clone();
            match listener {
                Listener::Tcp(l) => match &tls {
                    Some(acceptor) => {
                        serving.spawn(builder.serve_with_incoming_shutdown(
                            service,
                            tls_incoming(l, acceptor.clone(), handshakes.clone()),
                            signal,
                        ));
                    }
                    None => {
                        serving.spawn(builder.serve_with_incoming_shutdown(
                            service,
                            tcp_incoming(l),
                            signal,
                        ));
                    }
                },
                Listener::Unix(l) => {
                    serving.spawn(builder.serve_with_incoming_shutdown(
                        service,
                        unix_incoming(l),
                        signal,
                    ));
                }
            }
        }
        if let Some(door_service) = &door_service {
            for listener in etcd_listeners {
                let Listener::Tcp(l) = listener else {
                    continue;
                };
                // etcd's own server settings: no small windows (the door serves few clients,
                // and a kube-apiserver's lists are large).
                let builder = tonic::transport::Server::builder()
                    .http2_keepalive_interval(Some(HTTP2_KEEPALIVE_INTERVAL))
                    .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE_TIMEOUT));
                let signal = shutdown.clone().cancelled_owned();
                let service = door_service.clone();
                match &tls {
                    Some(acceptor) => {
                        serving.spawn(builder.serve_with_incoming_shutdown(
                            service,
                            tls_incoming(l, acceptor.clone(), handshakes.clone()),
                            signal,
                        ));
                    }
                    None => {
                        serving.spawn(builder.serve_with_incoming_shutdown(
                            service,
                            tcp_incoming(l),
                            signal,
                        ));
                    }
                }
            }
        }

        let mut listening = addrs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        if !etcd_addrs.is_empty() {
            listening.push_str(&format!(
                "; etcd v3 door on {}",
                etcd_addrs
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        log_security(&security, tls.is_some());
        let metrics_at = metrics_addr
            .map(|a| format!("; metrics on http://{a}/metrics"))
            .unwrap_or_default();
        match (opening, slot.get()) {
            (None, Some(store)) => tracing::info!(
                "coffer listening on {listening}; KMS: {}; AEAD: {}{metrics_at}",
                store.seeds().describe_kms(),
                store.algorithm(),
            ),
            (Some((open, attach, metrics_listener)), _) => {
                tracing::info!(
                    "coffer listening on {listening}; the store opens once the KMS answers \
                     (health NOT_SERVING until then){metrics_at}"
                );
                background.spawn(open_then_attach(
                    open,
                    attach,
                    metrics_listener,
                    slot.clone(),
                    opening_failed.clone(),
                ));
            }
            (None, None) => {}
        }

        let supervisor = tokio::spawn(supervise(Supervised {
            store: slot.clone(),
            opening_failed,
            shutdown: shutdown.clone(),
            serving,
            background,
            health,
            sockets,
            grace: options.shutdown_grace,
        }));
        Ok(RunningServer {
            addrs,
            etcd_addrs,
            metrics_addr,
            shutdown,
            store: slot,
            metrics,
            security,
            done: Some(supervisor),
        })
    }
}

/// Where a [`Server`]'s store comes from.
enum StoreSource {
    /// Open already.
    Open(Arc<Store>),
    /// Opened in the background (`coffer serve` while the KMS does not answer); `why` is what
    /// refused calls are told meanwhile.
    Opening {
        open: OpenFuture,
        why: OpeningReason,
    },
}

impl std::fmt::Debug for StoreSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreSource::Open(store) => f.debug_tuple("Open").field(store).finish(),
            StoreSource::Opening { .. } => f.write_str("Opening"),
        }
    }
}

/// What serving a store needs, once it is open: the services are built and attached to the
/// listeners' [`Front`], and the store's background tasks start.
struct Attach {
    options: ServerOptions,
    metrics: Arc<Metrics>,
    security: Arc<Security>,
    health: tonic_health::server::HealthReporter,
    health_service: tonic_health::pb::health_server::HealthServer<ShutdownAwareHealth>,
    shutdown: CancellationToken,
    etcd_addrs: Vec<SocketAddr>,
    tls: bool,
    front: Front,
    door_front: Option<Front>,
}

impl Attach {
    async fn attach(
        &self,
        store: &Arc<Store>,
        metrics_listener: Option<tokio::net::TcpListener>,
        background: &mut JoinSet<()>,
    ) -> Result<(), ServeError> {
        let Self {
            options,
            metrics,
            security,
            health,
            health_service,
            shutdown,
            etcd_addrs,
            tls,
            front,
            door_front,
        } = self;
        if door_front.is_some() && store.history_retention().is_zero() {
            return Err(ServeError::Config(
                "--etcd-listen needs history (the door's watches and reads at a revision are \
                 served from it): set --history-retention above 0"
                    .into(),
            ));
        }
        let hub = Hub::start(
            store,
            metrics.clone(),
            watch::WindowLimits {
                events: options.watch_window_events,
                bytes: options.watch_window_bytes,
                age: options.watch_window_age,
            },
            options.bookmark_interval,
            shutdown.clone(),
        );
        let ctx = WatchContext {
            store: store.clone(),
            hub,
            metrics: metrics.clone(),
            list_page_bytes: options.list_page_bytes,
            shutdown: shutdown.clone(),
        };
        let secrets = SecretsServer::new(SecretsService::new(ctx, Gate::new(security.clone())))
            .max_decoding_message_size(options.max_decoding_message_size)
            .max_encoding_message_size(options.max_encoding_message_size);
        let limits = limits::Limits::new(options.limits, metrics.limit_counters());
        // The request rate is charged by the gate once a caller is authenticated.
        security.set_request_budget(limits.clone());
        let secrets = limits::LimitedSecrets::new(secrets, limits);
        // Not ready while the KMS is unusable for writes (started while the plugin is down, or
        // an outage past the grace period); the Status poller retries and flips it back.
        let kms_ready = store.seeds().readiness();
        let ready_now = *kms_ready.borrow();
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1 = reflection()
            .build_v1()
            .map_err(|e| ServeError::Reflection(e.to_string()))?;
        let reflection_v1alpha = reflection()
            .build_v1alpha()
            .map_err(|e| ServeError::Reflection(e.to_string()))?;
        front.attach(
            Routes::new(secrets)
                .add_service(health_service.clone())
                .add_service(reflection_v1)
                .add_service(reflection_v1alpha)
                .prepare(),
        );
        if let Some(door_front) = door_front {
            let scheme = if *tls { "https" } else { "http" };
            let door = crate::etcd::Door::new(
                store.clone(),
                Gate::new(security.clone()),
                options.etcd.clone(),
                etcd_addrs
                    .iter()
                    .map(|a| format!("{scheme}://{a}"))
                    .collect(),
                shutdown.clone(),
            );
            door_front.attach(door.routes().add_service(health_service.clone()).prepare());
            background.spawn(crate::etcd::expire_leases(store.clone(), shutdown.clone()));
        }
        // Ready only once every call reaches the open store: a client that waits for SERVING
        // must never meet the opening front's UNAVAILABLE after it.
        set_kms_readiness(health, ready_now).await;
        background.spawn(poll_kms(store.clone(), shutdown.clone()));
        background.spawn(mirror_kms_readiness(
            kms_ready,
            store.clone(),
            health.clone(),
            shutdown.clone(),
        ));
        background.spawn(watch_storage_health(
            store.clone(),
            health.clone(),
            shutdown.clone(),
        ));
        if let Some(interval) = options.token_cleaner_interval {
            background.spawn(cleaner::run(store.clone(), interval, shutdown.clone()));
        }
        background.spawn(retain_history(store.clone(), shutdown.clone()));
        // On etcd storage: every replica's changes reach this one's hub and door.
        background.spawn(feed_events(store.clone(), shutdown.clone()));
        if let Some(l) = metrics_listener {
            background.spawn(metrics::serve(
                l,
                metrics.clone(),
                store.clone(),
                shutdown.clone(),
            ));
        }
        Ok(())
    }
}

/// Waits for the store to open (or shutdown), attaches it, then runs its background tasks until
/// they end. A store that cannot open for good shuts the server down with that error.
async fn open_then_attach(
    open: OpenFuture,
    attach: Attach,
    metrics_listener: Option<tokio::net::TcpListener>,
    slot: Arc<OnceLock<Arc<Store>>>,
    failed: Arc<std::sync::Mutex<Option<ServeError>>>,
) {
    let shutdown = attach.shutdown.clone();
    let opened = tokio::select! {
        _ = shutdown.cancelled() => return,
        opened = open => opened,
    };
    let mut tasks = JoinSet::new();
    let attached = match opened {
        Ok(store) => {
            let _ = slot.set(store.clone());
            attach
                .attach(&store, metrics_listener, &mut tasks)
                .await
                .map(|()| store)
        }
        Err(e) => Err(e),
    };
    match attached {
        Ok(store) => {
            tracing::info!(
                "store open; KMS: {}; AEAD: {}",
                store.seeds().describe_kms(),
                store.algorithm()
            );
            while tasks.join_next().await.is_some() {}
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot open the store; shutting down");
            if let Ok(mut f) = failed.lock() {
                *f = Some(e);
            }
            shutdown.cancel();
        }
    }
}

/// Compacts away the versions superseded longer ago than the retention, until shutdown: a round
/// every tenth of the retention (between 1 s and 1 min), so nothing outlives it by much.
async fn retain_history(store: Arc<Store>, shutdown: CancellationToken) {
    let interval = (store.history_retention() / 10).clamp(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(60),
    );
    store.run_retention(interval, shutdown).await;
}

/// Publishes the changes of a shared keyspace (etcd storage) as the store's events, until
/// shutdown; returns at once on sled.
async fn feed_events(store: Arc<Store>, shutdown: CancellationToken) {
    store.run_feed(shutdown).await;
}

/// Runs the KMS Status poller until shutdown.
async fn poll_kms(store: Arc<Store>, shutdown: CancellationToken) {
    coffer_core::kms::poller::run(store.seeds(), shutdown).await;
}

/// Sets the overall and the Secrets service's health from the KMS's usability.
async fn set_kms_readiness(health: &tonic_health::server::HealthReporter, ready: bool) {
    let status = if ready {
        tonic_health::ServingStatus::Serving
    } else {
        tonic_health::ServingStatus::NotServing
    };
    health.set_service_status("", status).await;
    if ready {
        health.set_serving::<SecretsServer<SecretsService>>().await;
    } else {
        health
            .set_not_serving::<SecretsServer<SecretsService>>()
            .await;
    }
}

/// Mirrors the KMS's usability into the health service until shutdown (which sets
/// NOT_SERVING itself).
async fn mirror_kms_readiness(
    mut ready: tokio::sync::watch::Receiver<bool>,
    store: Arc<Store>,
    health: tonic_health::server::HealthReporter,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = ready.changed() => if changed.is_err() { return },
        }
        let now = *ready.borrow_and_update();
        if shutdown.is_cancelled() || store.storage_failed() {
            return;
        }
        if now {
            tracing::info!("KMS usable: health SERVING");
        } else {
            tracing::warn!("KMS unusable for writes: health NOT_SERVING until it answers again");
        }
        set_kms_readiness(&health, now).await;
    }
}

/// How often the storage backend's state is checked for the health service.
const STORAGE_HEALTH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Sets health NOT_SERVING, for good, once the storage backend has failed (it refuses every
/// call until restart, so load balancers and orchestrators should know).
async fn watch_storage_health(
    store: Arc<Store>,
    health: tonic_health::server::HealthReporter,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(STORAGE_HEALTH_INTERVAL);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if store.storage_failed() {
            tracing::error!("storage failed: health NOT_SERVING until restart");
            set_kms_readiness(&health, false).await;
            return;
        }
    }
}

/// Refuses a non-loopback TCP listener when no authentication is configured, unless
/// `--insecure-allow-unauthenticated`.
fn check_exposure(security: &Security, addrs: &[BoundAddr]) -> Result<(), ServeError> {
    if security.auth_enabled() {
        return Ok(());
    }
    let exposed: Vec<String> = addrs
        .iter()
        .filter_map(|a| match a {
            BoundAddr::Tcp(s) if !s.ip().is_loopback() => Some(s.to_string()),
            _ => None,
        })
        .collect();
    if exposed.is_empty() {
        return Ok(());
    }
    if security.config().insecure_allow_unauthenticated {
        tracing::warn!(
            "authentication is off and {} is not a loopback address: anyone who can reach it may \
             read and write every Secret (--insecure-allow-unauthenticated)",
            exposed.join(", ")
        );
        return Ok(());
    }
    Err(ServeError::Config(format!(
        "refusing to listen on {} without authentication: configure --client-ca, --token-file or \
         --unix-peer-users, listen on a loopback address or a unix socket, or pass \
         --insecure-allow-unauthenticated",
        exposed.join(", ")
    )))
}

/// With authentication on, unix sockets are opened to every local user (0666): callers are then
/// told apart by their credentials or peer uid, not by the socket file's mode. Without it they
/// stay owner-only.
fn open_sockets(security: &Security, sockets: &[PathBuf]) -> Result<(), ServeError> {
    if !security.auth_enabled() {
        return Ok(());
    }
    #[cfg(unix)]
    for path in sockets {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).map_err(|e| {
            ServeError::Io {
                context: format!("cannot open socket {} to other users", path.display()),
                source: e,
            }
        })?;
    }
    Ok(())
}

/// Says at start how callers are authenticated and authorized.
fn log_security(security: &Security, tls: bool) {
    let c = security.config();
    if !security.auth_enabled() {
        tracing::warn!(
            "authentication is off: every caller may read and write every Secret; serving only \
             on loopback addresses and unix sockets (configure --client-ca, --token-file or \
             --unix-peer-users to turn it on)"
        );
    } else {
        let mut methods = Vec::new();
        if c.client_ca.is_some() {
            methods.push("client certificates");
        }
        if c.token_file.is_some() {
            methods.push("bearer tokens");
        }
        if !c.unix_peer_users.is_empty() {
            methods.push("unix peer uids");
        }
        tracing::info!(
            "authentication: {}; authorization: {} rule(s) (default deny)",
            methods.join(", "),
            security.policy().len()
        );
        if c.authz_policy.is_none() {
            tracing::warn!("no --authz-policy: every authenticated request is denied");
        }
        if c.token_file.is_some() && !tls {
            tracing::warn!("bearer tokens are accepted without TLS: use --tls-cert off loopback");
        }
    }
    if let Some(p) = &c.audit_log {
        tracing::info!(
            "audit log {}{}",
            p.display(),
            if c.audit_fail_closed {
                " (fail closed)"
            } else {
                ""
            }
        );
    }
}

struct Supervised {
    /// Empty while the store is still being opened.
    store: Arc<OnceLock<Arc<Store>>>,
    /// Why the store could not be opened in the background, if so.
    opening_failed: Arc<std::sync::Mutex<Option<ServeError>>>,
    shutdown: CancellationToken,
    serving: JoinSet<Result<(), tonic::transport::Error>>,
    background: JoinSet<()>,
    health: tonic_health::server::HealthReporter,
    sockets: Vec<PathBuf>,
    grace: std::time::Duration,
}

/// Waits for the shutdown signal (or a listener failing), then shuts down in order.
async fn supervise(mut s: Supervised) -> Result<(), ServeError> {
    let mut failure: Option<ServeError> = None;
    tokio::select! {
        biased;
        _ = s.shutdown.cancelled() => {}
        Some(ended) = s.serving.join_next() => {
            // A listener ended by itself, before any shutdown was asked for.
            let e = match ended {
                Ok(Ok(())) => ServeError::Task("a listener stopped unexpectedly".into()),
                Ok(Err(e)) => ServeError::Transport(e),
                Err(e) => ServeError::Task(e.to_string()),
            };
            tracing::error!(error = %e, "listener failed; shutting down");
            failure = Some(e);
            s.shutdown.cancel();
        }
    }
    tracing::info!("shutting down: no new connections; finishing in-flight calls");
    s.health
        .set_not_serving::<SecretsServer<SecretsService>>()
        .await;
    s.health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    let drained = tokio::time::timeout(s.grace, async {
        while let Some(ended) = s.serving.join_next().await {
            match ended {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "listener ended with an error"),
                Err(e) => tracing::warn!(error = %e, "listener task failed"),
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!("connections still open after {:?}; closing them", s.grace);
        s.serving.abort_all();
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while s.background.join_next().await.is_some() {}
    })
    .await;
    s.background.abort_all();
    let synced = match s.store.get() {
        Some(store) => store.sync().await,
        None => Ok(()),
    };
    for path in &s.sockets {
        if let Err(e) = std::fs::remove_file(path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove socket file");
        }
    }
    synced?;
    let failure = failure.or_else(|| s.opening_failed.lock().ok().and_then(|mut f| f.take()));
    if failure.is_none() {
        tracing::info!("shut down cleanly");
    }
    failure.map_or(Ok(()), Err)
}

/// A started server: its bound addresses, and the handle to stop it. Dropping it starts a
/// shutdown too (without waiting for it).
#[derive(Debug)]
pub struct RunningServer {
    addrs: Vec<BoundAddr>,
    etcd_addrs: Vec<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    store: Arc<OnceLock<Arc<Store>>>,
    metrics: Arc<Metrics>,
    security: Arc<Security>,
    done: Option<tokio::task::JoinHandle<Result<(), ServeError>>>,
}

impl RunningServer {
    /// Every address the server listens on, in the order given.
    pub fn addrs(&self) -> &[BoundAddr] {
        &self.addrs
    }

    /// The etcd door's addresses, in the order given.
    pub fn etcd_addrs(&self) -> &[SocketAddr] {
        &self.etcd_addrs
    }

    /// The first TCP address, if any.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.addrs.iter().find_map(|a| match a {
            BoundAddr::Tcp(s) => Some(*s),
            BoundAddr::Unix(_) => None,
        })
    }

    /// The first unix socket, if any.
    pub fn unix_path(&self) -> Option<&Path> {
        self.addrs.iter().find_map(|a| match a {
            BoundAddr::Unix(p) => Some(p.as_path()),
            BoundAddr::Tcp(_) => None,
        })
    }

    /// The metrics endpoint's address, if enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The security state (e.g. to [`Security::reload`] it).
    pub fn security(&self) -> &Arc<Security> {
        &self.security
    }

    /// The store being served.
    ///
    /// # Panics
    ///
    /// While the store is still being opened (only `coffer serve` starts a server that way;
    /// [`Server::new`] takes an open store).
    pub fn store(&self) -> &Arc<Store> {
        self.store
            .get()
            .expect("the store of a server built by Server::new is open")
    }

    /// A token that shuts the server down when cancelled (as SIGTERM does).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Starts a graceful shutdown and waits for it to finish.
    pub async fn shutdown(self) -> Result<(), ServeError> {
        self.shutdown.cancel();
        self.wait().await
    }

    /// Waits until the server has shut down (after its token is cancelled, or a listener
    /// failed).
    pub async fn wait(mut self) -> Result<(), ServeError> {
        match self.done.take() {
            Some(handle) => handle.await.map_err(|e| ServeError::Task(e.to_string()))?,
            None => Ok(()),
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
