//! `coffer serve` settings: one struct per concern, each both the flags (`clap::Args`) and its
//! part of the optional `--config` TOML file (`serde::Deserialize`), merged flag over file over
//! default (see [`crate::settings`]).
//!
//! | concern | flags struct | file | resolved into |
//! |---|---|---|---|
//! | data directory, AEAD, durability | [`StoreArgs`] | top level | [`ServeConfig`] |
//! | listeners, metrics endpoint | [`ListenArgs`] | top level | [`ServeConfig::listen`] |
//! | watch window, bookmarks | [`WatchArgs`] | top level | [`ServerOptions`] |
//! | shutdown grace, token cleaner | [`ServerArgs`] | top level | [`ServerOptions`] |
//! | KMS plugin, deadline, outage | [`KmsArgs`] | top level | [`KmsConfig`] |
//! | quotas, server-wide limits, hygiene | [`LimitArgs`] | `[limits]` | [`LimitConfig`] |
//! | authentication, audit, per-connection limits | [`SecurityArgs`] | `[security]` | [`SecurityConfig`] |
//! | the etcd v3 door | [`EtcdArgs`] | top level | [`ServeConfig::etcd_listen`], [`ServerOptions::etcd`] |
//!
//! The file uses the flags' names with `_` (or `-`) between words, e.g.
//!
//! ```toml
//! data_dir = "/var/lib/coffer"
//! listen = ["127.0.0.1:7070", "unix:///run/coffer.sock"]
//! aead = "xchacha20-poly1305"
//! metrics_listen = "127.0.0.1:9090"
//! relaxed_durability = false
//! token_cleaner_interval = "60s"
//! bookmark_interval = "1m"
//! shutdown_grace = "30s"
//! watch_window = 1000
//! watch_window_bytes = 67108864
//! watch_window_age = "5m"
//! kms = "unix:///run/kms/kms.sock"
//! kms_timeout = "3s"
//! kms_grace = "3m"
//! kms_poll_interval = "1h30m"
//!
//! [limits]
//! quota_file = "/etc/coffer/quota.toml"
//! max_watch_streams = 100000
//! max_request_rate = 2000
//! request_burst = 4000
//! allow_core_dumps = false
//! disable_mlock = false
//! [security]            # see crate::auth::args
//! token_file = "/etc/coffer/tokens.csv"
//! ```
//!
//! Durations are `humantime` strings (`500ms`, `90s`, `1h30m`) or a bare number of seconds. A
//! relative `data_dir` or socket path is relative to the working directory.
//!
//! A new setting is one field in its concern's struct (flag, file key and help text at once),
//! one line in that struct's `merge_fields!`, and its use where the struct is resolved (for a
//! store setting: [`StoreArgs`], then [`ServeConfig::store_config`]).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::Args;
use serde::Deserialize;

use super::ServeError;
use super::limits::{LimitArgs, LimitConfig, LimitOptions};
use crate::auth::{SecurityArgs, SecurityConfig};
use crate::etcd::EtcdOptions;
use crate::settings::{self, Merge, merge_fields, parse_duration};
use coffer_core::crypto::Algorithm;
use coffer_core::storage::Durability;
use coffer_core::store::StoreConfig;
use coffer_etcd::{StorageTls, StorageUrl};
use coffer_kms::{KmsConfig, KmsEndpoint};

/// The data directory when none is given.
pub const DEFAULT_DATA_DIR: &str = "./coffer-data";
/// The listen address when none is given.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7070";

/// Settings of `coffer serve`: the concerns below, flattened. Every flag can also be set in the
/// `--config` TOML file (same names, with `_` for `-`); a flag given on the command line wins
/// over the file.
#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeArgs {
    /// TOML file with the same settings (a flag given on the command line wins over it).
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Data directory, AEAD and durability.
    #[command(flatten)]
    #[serde(flatten)]
    pub store: StoreArgs,
    /// Where the server and its metrics endpoint listen.
    #[command(flatten)]
    #[serde(flatten)]
    pub listen: ListenArgs,
    /// The server's own timers.
    #[command(flatten)]
    #[serde(flatten)]
    pub server: ServerArgs,
    /// The watch window and bookmarks.
    #[command(flatten)]
    #[serde(flatten)]
    pub watch: WatchArgs,
    /// The KMS and its outage policy.
    #[command(flatten)]
    #[serde(flatten)]
    pub kms: KmsArgs,
    /// The etcd v3 door.
    #[command(flatten)]
    #[serde(flatten)]
    pub etcd: EtcdArgs,
    /// Quotas, server-wide limits and memory hygiene (the file's `[limits]` table).
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Authentication, authorization, audit, per-connection limits (the `[security]` table of
    /// the config file).
    #[command(flatten)]
    pub security: SecurityArgs,
}

merge_fields!(ServeArgs {
    config,
    store,
    listen,
    server,
    watch,
    kms,
    etcd,
    limits,
    security,
});

/// Where and how Secrets are stored.
#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(default)]
pub struct StoreArgs {
    /// Data directory (sled database, write-ahead log, and the local KEK file) [default: ./coffer-data].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// AEAD for new records: aes-256-gcm or xchacha20-poly1305 [default: aes-256-gcm].
    #[arg(long)]
    #[serde(deserialize_with = "settings::parsed")]
    pub aead: Option<Algorithm>,
    /// Acknowledge writes before they are fsync'd (a power loss may lose ~100 ms of writes).
    #[arg(long)]
    pub relaxed_durability: bool,
    /// How long a superseded version of a Secret is kept for reads at a revision, History and
    /// watch resumes, e.g. 1h30m; 0 keeps only the latest version (no history) [default: 1h].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(deserialize_with = "settings::duration")]
    pub history_retention: Option<Duration>,
    /// Checkpoint the write-ahead log (sled flushed and fsync'd, the log emptied) once it grows
    /// past this many bytes [default: 67108864].
    #[arg(long, value_name = "BYTES")]
    pub wal_checkpoint_bytes: Option<u64>,
    /// A file, best on another volume than the data directory, where every checkpoint records
    /// the store's latest authenticated (position, state digest); a data directory older than
    /// its anchor (a whole older copy put back) then refuses to start.
    #[arg(long, value_name = "PATH")]
    pub anchor_file: Option<PathBuf>,
    /// Start from a data directory older than its --anchor-file anyway (after restoring a
    /// backup on purpose); the anchor moves back to it.
    #[arg(long)]
    pub accept_rollback: bool,
    /// Store in an etcd cluster instead of the data directory, so that several replicas share
    /// it: etcd://HOST:PORT[,HOST:PORT...][/PREFIX] (prefix default /coffer). etcd holds only
    /// ciphertext; every replica needs the same KEK (--kms or --kek-file).
    #[arg(long, value_name = "etcd://HOST:PORT[,...][/PREFIX]")]
    #[serde(deserialize_with = "settings::parsed")]
    pub storage: Option<StorageUrl>,
    /// The CA that signed the etcd members' certificates (TLS towards etcd).
    #[arg(long, value_name = "PATH")]
    pub storage_ca_file: Option<PathBuf>,
    /// This replica's client certificate for etcd (PEM; with --storage-key-file).
    #[arg(long, value_name = "PATH")]
    pub storage_cert_file: Option<PathBuf>,
    /// The key of --storage-cert-file (PEM).
    #[arg(long, value_name = "PATH")]
    pub storage_key_file: Option<PathBuf>,
}

merge_fields!(StoreArgs {
    data_dir,
    aead,
    relaxed_durability,
    history_retention,
    wal_checkpoint_bytes,
    anchor_file,
    accept_rollback,
    storage,
    storage_ca_file,
    storage_cert_file,
    storage_key_file,
});

impl StoreArgs {
    /// The etcd storage, if `--storage` is set; TLS files without it are refused.
    pub fn resolve_storage(&self) -> Result<Option<(StorageUrl, StorageTls)>, ServeError> {
        let tls = StorageTls {
            ca_file: self.storage_ca_file.clone(),
            cert_file: self.storage_cert_file.clone(),
            key_file: self.storage_key_file.clone(),
        };
        match &self.storage {
            Some(url) => Ok(Some((url.clone(), tls))),
            None if tls.enabled() => Err(ServeError::Config(
                "--storage-ca-file/--storage-cert-file/--storage-key-file need --storage etcd://..."
                    .into(),
            )),
            None => Ok(None),
        }
    }
}

/// Where the server listens.
#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(default)]
pub struct ListenArgs {
    /// Address to listen on: HOST:PORT or unix:///path/to.sock. Repeatable [default: 127.0.0.1:7070].
    #[arg(long)]
    #[serde(deserialize_with = "settings::parsed_list")]
    pub listen: Vec<ListenAddr>,
    /// Prometheus text endpoint address (HOST:PORT); off when unset.
    #[arg(long)]
    #[serde(deserialize_with = "settings::parsed")]
    pub metrics_listen: Option<ListenAddr>,
}

merge_fields!(ListenArgs {
    listen,
    metrics_listen
});

impl ListenArgs {
    /// Applies the default address and checks the metrics endpoint; returns the addresses and
    /// the metrics endpoint.
    pub fn resolve(&self) -> Result<(Vec<ListenAddr>, Option<String>), ServeError> {
        let listen = if self.listen.is_empty() {
            vec![ListenAddr::Tcp(DEFAULT_LISTEN.to_owned())]
        } else {
            self.listen.clone()
        };
        let metrics_listen = match &self.metrics_listen {
            None => None,
            Some(ListenAddr::Tcp(a)) => Some(a.clone()),
            Some(m @ ListenAddr::Unix(_)) => {
                return Err(ServeError::Config(format!(
                    "--metrics-listen {:?}: must be HOST:PORT",
                    m.to_string()
                )));
            }
        };
        Ok((listen, metrics_listen))
    }
}

/// The server's own timers.
#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(default)]
pub struct ServerArgs {
    /// How long shutdown waits for in-flight calls before it closes connections [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(deserialize_with = "settings::duration")]
    pub shutdown_grace: Option<Duration>,
    /// How often expired bootstrap tokens are deleted, e.g. 60s or 5m; 0 turns the cleaner off
    /// [default: 60s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(deserialize_with = "settings::duration")]
    pub token_cleaner_interval: Option<Duration>,
}

merge_fields!(ServerArgs {
    shutdown_grace,
    token_cleaner_interval,
});

/// The watch window and bookmarks.
#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(default)]
pub struct WatchArgs {
    /// How often a watch that allows bookmarks gets one [default: 60s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(deserialize_with = "settings::duration")]
    pub bookmark_interval: Option<Duration>,
    /// How many recent changes are kept for watches to resume from [default: 1000].
    #[arg(long, value_name = "EVENTS")]
    pub watch_window: Option<usize>,
    /// The most bytes of changes (approximate object sizes) kept in that window
    /// [default: 67108864, 64 MiB].
    #[arg(long, value_name = "BYTES")]
    pub watch_window_bytes: Option<usize>,
    /// How long a change stays in that window at most, e.g. 5m; 0 for no age limit
    /// [default: 5m].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(deserialize_with = "settings::duration")]
    pub watch_window_age: Option<Duration>,
}

merge_fields!(WatchArgs {
    bookmark_interval,
    watch_window,
    watch_window_bytes,
    watch_window_age,
});

/// The etcd v3 door: where it listens and etcd's limits.
#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(default)]
pub struct EtcdArgs {
    /// Serve the etcd v3 API (for kube-apiserver's --etcd-servers-overrides) on HOST:PORT, with
    /// the same TLS and authentication as the Secret service (policy verb `etcd`). Repeatable.
    #[arg(long, value_name = "HOST:PORT")]
    #[serde(deserialize_with = "settings::parsed_list")]
    pub etcd_listen: Vec<ListenAddr>,
    /// The most operations in one transaction branch (etcd's --max-txn-ops) [default: 128].
    #[arg(long, value_name = "N")]
    pub etcd_max_txn_ops: Option<usize>,
    /// The largest write request in bytes (etcd's --max-request-bytes) [default: 1572864].
    #[arg(long, value_name = "BYTES")]
    pub etcd_max_request_bytes: Option<usize>,
    /// The most bytes one Range may gather before it is refused (clients page with a limit)
    /// [default: 268435456].
    #[arg(long, value_name = "BYTES")]
    pub etcd_max_response_bytes: Option<usize>,
    /// How often an idle watch created with progress_notify hears the current revision
    /// [default: 10m, as etcd].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(deserialize_with = "settings::duration")]
    pub etcd_progress_notify_interval: Option<Duration>,
    /// kube-apiserver's --etcd-prefix: door keys <prefix>/secrets/<namespace>/<name> are the
    /// Secrets the Secret service, CLI and mount agent see [default: /registry].
    #[arg(long, value_name = "PREFIX")]
    pub etcd_prefix: Option<String>,
}

merge_fields!(EtcdArgs {
    etcd_listen,
    etcd_max_txn_ops,
    etcd_max_request_bytes,
    etcd_max_response_bytes,
    etcd_progress_notify_interval,
    etcd_prefix,
});

impl EtcdArgs {
    /// The door's addresses (TCP only) and settings.
    pub fn resolve(&self) -> Result<(Vec<ListenAddr>, EtcdOptions), ServeError> {
        for a in &self.etcd_listen {
            if let ListenAddr::Unix(_) = a {
                return Err(ServeError::Config(format!(
                    "--etcd-listen {:?}: must be HOST:PORT",
                    a.to_string()
                )));
            }
        }
        let mut o = EtcdOptions::default();
        if let Some(n) = self.etcd_max_txn_ops {
            if n == 0 {
                return Err(ServeError::Config(
                    "--etcd-max-txn-ops: must be at least 1".into(),
                ));
            }
            o.max_txn_ops = n;
        }
        if let Some(n) = self.etcd_max_request_bytes {
            if n == 0 {
                return Err(ServeError::Config(
                    "--etcd-max-request-bytes: must be at least 1".into(),
                ));
            }
            o.max_request_bytes = n;
        }
        if let Some(n) = self.etcd_max_response_bytes {
            o.max_response_bytes = n.max(1);
        }
        if let Some(d) = self.etcd_progress_notify_interval {
            o.progress_notify_interval = positive(d, "etcd-progress-notify-interval")?;
        }
        if let Some(p) = &self.etcd_prefix {
            if p.contains('\0') {
                return Err(ServeError::Config(
                    "--etcd-prefix: must not contain a NUL byte".into(),
                ));
            }
            o.prefix = p.clone();
        }
        Ok((self.etcd_listen.clone(), o))
    }
}

/// The KMS: the local key file or a KMS v2 plugin, its call deadline and outage policy.
#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(default)]
pub struct KmsArgs {
    /// KMS v2 plugin socket (unix:///path/to/kms.sock); unset: the local key file
    /// <data-dir>/kek.key.
    #[arg(long, value_name = "unix:///PATH")]
    #[serde(deserialize_with = "settings::parsed")]
    pub kms: Option<KmsEndpoint>,
    /// Deadline of each KMS call [default: 3s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(deserialize_with = "settings::duration")]
    pub kms_timeout: Option<Duration>,
    /// How long writes keep working after the last good KMS Status; reads go on regardless
    /// [default: 3m].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(deserialize_with = "settings::duration")]
    pub kms_grace: Option<Duration>,
    /// How often the KMS Status is polled while healthy (every 10s, or this if shorter, while
    /// failing) [default: 60s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(deserialize_with = "settings::duration")]
    pub kms_poll_interval: Option<Duration>,
    /// The uid the KMS plugin must run as: each connection to its socket checks the peer's uid
    /// (SO_PEERCRED) and refuses another [default: not checked].
    #[arg(long, value_name = "UID")]
    pub kms_peer_uid: Option<u32>,
    /// A local key file (32 bytes, mode 0600) to use as the KEK instead of <data-dir>/kek.key:
    /// with --storage etcd://, the same file on every replica. It must exist (never created).
    #[arg(long, value_name = "PATH")]
    pub kek_file: Option<PathBuf>,
}

merge_fields!(KmsArgs {
    kms,
    kms_timeout,
    kms_grace,
    kms_poll_interval,
    kms_peer_uid,
    kek_file,
});

impl KmsArgs {
    /// Applies the defaults ([`KmsConfig::default`]) and checks the values.
    pub fn resolve(&self) -> Result<KmsConfig, ServeError> {
        if self.kms_peer_uid.is_some() && self.kms.is_none() {
            return Err(ServeError::Config(
                "--kms-peer-uid needs --kms (it checks the plugin's socket)".into(),
            ));
        }
        if self.kek_file.is_some() && self.kms.is_some() {
            return Err(ServeError::Config(
                "--kek-file and --kms: choose one KEK (a key file or a KMS v2 plugin)".into(),
            ));
        }
        let mut kms = KmsConfig {
            endpoint: self.kms.clone(),
            peer_uid: self.kms_peer_uid,
            ..KmsConfig::default()
        };
        if let Some(d) = self.kms_timeout {
            kms.timeout = positive(d, "kms-timeout")?;
        }
        if let Some(d) = self.kms_grace {
            kms.outage.grace = d;
        }
        if let Some(d) = self.kms_poll_interval {
            kms.outage.healthy_interval = positive(d, "kms-poll-interval")?;
        }
        Ok(kms)
    }
}

/// `d`, unless it is zero.
fn positive(d: Duration, flag: &str) -> Result<Duration, ServeError> {
    if d.is_zero() {
        Err(ServeError::Config(format!("--{flag}: must be more than 0")))
    } else {
        Ok(d)
    }
}

/// Where the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// `HOST:PORT` (port 0 picks a free port).
    Tcp(String),
    /// A unix socket path (`unix:///path/to.sock`).
    Unix(PathBuf),
}

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| {
            format!("listen address {s:?}: {why} (expected HOST:PORT or unix:///path/to.sock)")
        };
        if let Some(path) = s
            .strip_prefix("unix://")
            .or_else(|| s.strip_prefix("unix:"))
        {
            if path.is_empty() {
                return Err(bad("empty socket path"));
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        let hostport = s.strip_prefix("tcp://").unwrap_or(s);
        let Some((host, port)) = hostport.rsplit_once(':') else {
            return Err(bad("missing port"));
        };
        if host.is_empty() {
            return Err(bad("missing host"));
        }
        if port.parse::<u16>().is_err() {
            return Err(bad("bad port"));
        }
        Ok(ListenAddr::Tcp(hostport.to_owned()))
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => f.write_str(a),
            ListenAddr::Unix(p) => write!(f, "unix://{}", p.display()),
        }
    }
}

/// The default of [`ServerOptions::max_tls_handshakes`]: 256 handshakes in progress.
pub const MAX_TLS_HANDSHAKES: usize = 256;

/// Tunables of a running server, with documented defaults.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// How often a watch that allows bookmarks gets one. Default 60 s.
    pub bookmark_interval: Duration,
    /// How often the bootstrap token cleaner runs; `None` turns it off. Default 60 s.
    pub token_cleaner_interval: Option<Duration>,
    /// How long shutdown waits for in-flight calls and streams before it stops waiting.
    /// Default 30 s.
    pub shutdown_grace: Duration,
    /// How many recent change events are kept for watches. Default 1000.
    pub watch_window_events: usize,
    /// The most bytes (approximate object sizes) the watch window keeps. Default 64 MiB.
    pub watch_window_bytes: usize,
    /// How long a change stays in the watch window at most; `None`: no age limit. Default 5 min.
    pub watch_window_age: Option<Duration>,
    /// The largest request message accepted; a larger one gets RESOURCE_EXHAUSTED. Default
    /// 4 MiB: a 1 MiB Secret, 256 KiB of annotations, and room for labels and framing.
    pub max_decoding_message_size: usize,
    /// The largest response message sent. Default 8 MiB (a response is never larger than the
    /// object it returns; list pages are cut at `list_page_bytes`).
    pub max_encoding_message_size: usize,
    /// The soft cap on the size of one List page, so that pages stay readable by clients with
    /// the default 4 MiB receive limit. Default 3 MiB.
    pub list_page_bytes: usize,
    /// Server-wide limits on watch streams and request rate. Default: none.
    pub limits: LimitOptions,
    /// The etcd door's settings (used when it listens).
    pub etcd: EtcdOptions,
    /// The most TLS handshakes in progress at once (over all TLS listeners); further accepted
    /// connections wait for a place before their handshake starts, so that a flood of slow or
    /// silent clients cannot make the server hold unbounded handshake state. Default
    /// [`MAX_TLS_HANDSHAKES`].
    pub max_tls_handshakes: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            bookmark_interval: Duration::from_secs(60),
            token_cleaner_interval: Some(Duration::from_secs(60)),
            shutdown_grace: Duration::from_secs(30),
            watch_window_events: 1000,
            watch_window_bytes: 64 << 20,
            watch_window_age: Some(Duration::from_secs(300)),
            max_decoding_message_size: 4 << 20,
            max_encoding_message_size: 8 << 20,
            list_page_bytes: 3 << 20,
            limits: LimitOptions::default(),
            etcd: EtcdOptions::default(),
            max_tls_handshakes: MAX_TLS_HANDSHAKES,
        }
    }
}

/// Everything `coffer serve` needs, resolved from flags, the file and the defaults.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The data directory.
    pub data_dir: PathBuf,
    /// Where to listen (at least one address).
    pub listen: Vec<ListenAddr>,
    /// The AEAD for new records.
    pub aead: Algorithm,
    /// The metrics endpoint, if any.
    pub metrics_listen: Option<String>,
    /// Where the etcd door listens (none: no door).
    pub etcd_listen: Vec<ListenAddr>,
    /// When writes count as durable.
    pub durability: Durability,
    /// How long superseded versions are kept (0: none).
    pub history_retention: Duration,
    /// The write-ahead log's size between checkpoints.
    pub wal_checkpoint_bytes: u64,
    /// `--anchor-file`: the latest authenticated state, kept outside the data directory.
    pub anchor_file: Option<PathBuf>,
    /// `--accept-rollback`: start from a data directory older than its anchor.
    pub accept_rollback: bool,
    /// Server tunables.
    pub options: ServerOptions,
    /// The KMS: local key file or KMS v2 plugin, call deadline, outage policy.
    pub kms: KmsConfig,
    /// Quotas, server-wide limits (also in `options.limits`) and memory hygiene.
    pub limits: LimitConfig,
    /// Authentication, authorization, audit, per-connection limits.
    pub security: SecurityConfig,
    /// `--storage etcd://...` and its TLS files (none: sled under the data directory).
    pub storage: Option<(StorageUrl, StorageTls)>,
    /// `--kek-file`: the local KEK's file, instead of `<data_dir>/kek.key`.
    pub kek_file: Option<PathBuf>,
}

impl ServeConfig {
    /// The engine's settings: the AEAD, the KMS outage policy and the quotas (the one place
    /// where resolved store settings meet [`StoreConfig`]).
    pub fn store_config(&self) -> StoreConfig {
        StoreConfig {
            algorithm: self.aead,
            outage: self.kms.outage,
            quotas: self.limits.quotas.clone(),
            history_retention: self.history_retention,
            wal_checkpoint_bytes: self.wal_checkpoint_bytes,
            etcd_prefix: self.options.etcd.prefix.clone(),
            anchor_file: self.anchor_file.clone(),
            accept_rollback: self.accept_rollback,
            ..StoreConfig::default()
        }
    }
}

impl ServeArgs {
    /// Merges the flags with the `--config` file (flags win) and the defaults.
    pub fn resolve(&self) -> Result<ServeConfig, ServeError> {
        let file = match &self.config {
            Some(path) => read_file_config(path)?,
            None => ServeArgs::default(),
        };
        let args = self.clone().merge(file);
        let security = args
            .security
            .resolve(None)
            .map_err(|e| ServeError::Config(e.to_string()))?;
        let (listen, metrics_listen) = args.listen.resolve()?;
        let limits = args.limits.resolve()?;
        let (etcd_listen, etcd) = args.etcd.resolve()?;
        let mut options = ServerOptions {
            limits: limits.server,
            etcd,
            ..ServerOptions::default()
        };
        let ServerArgs {
            shutdown_grace,
            token_cleaner_interval,
        } = args.server;
        if let Some(d) = shutdown_grace {
            options.shutdown_grace = d;
        }
        if let Some(d) = token_cleaner_interval {
            options.token_cleaner_interval = (!d.is_zero()).then_some(d);
        }
        let WatchArgs {
            bookmark_interval,
            watch_window,
            watch_window_bytes,
            watch_window_age,
        } = args.watch;
        if let Some(d) = bookmark_interval {
            options.bookmark_interval = positive(d, "bookmark-interval")?;
        }
        if let Some(n) = watch_window {
            if n == 0 {
                return Err(ServeError::Config(
                    "--watch-window: must be at least 1".into(),
                ));
            }
            options.watch_window_events = n;
        }
        if let Some(n) = watch_window_bytes {
            if n == 0 {
                return Err(ServeError::Config(
                    "--watch-window-bytes: must be at least 1".into(),
                ));
            }
            options.watch_window_bytes = n;
        }
        if let Some(d) = watch_window_age {
            options.watch_window_age = (!d.is_zero()).then_some(d);
        }
        let store = args.store;
        let storage = store.resolve_storage()?;
        let kek_file = args.kms.kek_file.clone();
        if let Some((url, _)) = &storage
            && args.kms.kms.is_none()
            && kek_file.is_none()
        {
            // A key file made per data directory would give each replica its own KEK, and
            // none could open the others' records.
            return Err(ServeError::Config(format!(
                "--storage {url}: needs a KEK every replica shares: --kms unix:///PATH (a KMS v2 \
                 plugin) or --kek-file PATH (the same key file on every replica)"
            )));
        }
        if storage.is_some() && (store.anchor_file.is_some() || store.accept_rollback) {
            // The anchor records a data directory's checkpoints; etcd's state digest lives in
            // etcd itself, and a whole etcd restored from an older snapshot is not detected.
            return Err(ServeError::Config(
                "--anchor-file/--accept-rollback with --storage etcd://: the anchor is for a \
                 data directory only (etcd keeps its state digest in a key of its own)"
                    .into(),
            ));
        }
        let data_dir = store
            .data_dir
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        if storage.is_none() {
            check_anchor_file(
                &data_dir,
                store.anchor_file.as_deref(),
                store.accept_rollback,
            )?;
        }
        Ok(ServeConfig {
            storage,
            kek_file,
            data_dir,
            listen,
            aead: store.aead.unwrap_or_default(),
            metrics_listen,
            etcd_listen,
            durability: if store.relaxed_durability {
                Durability::Relaxed
            } else {
                Durability::Sync
            },
            history_retention: store
                .history_retention
                .unwrap_or(coffer_core::store::DEFAULT_HISTORY_RETENTION),
            wal_checkpoint_bytes: match store.wal_checkpoint_bytes {
                Some(0) => {
                    return Err(ServeError::Config(
                        "--wal-checkpoint-bytes: must be at least 1".into(),
                    ));
                }
                Some(n) => n,
                None => coffer_core::storage::DEFAULT_WAL_CHECKPOINT_BYTES,
            },
            anchor_file: store.anchor_file,
            accept_rollback: store.accept_rollback,
            options,
            kms: args.kms.resolve()?,
            limits,
            security,
        })
    }
}

/// An anchor inside the data directory would be put back with it, so it must live elsewhere;
/// `--accept-rollback` means nothing without one.
fn check_anchor_file(
    data_dir: &std::path::Path,
    anchor: Option<&std::path::Path>,
    accept_rollback: bool,
) -> Result<(), ServeError> {
    let Some(anchor) = anchor else {
        if accept_rollback {
            return Err(ServeError::Config(
                "--accept-rollback: needs --anchor-file (the anchor is what a rollback is \
                 measured against)"
                    .into(),
            ));
        }
        return Ok(());
    };
    let absolute = |p: &std::path::Path| std::path::absolute(p).unwrap_or_else(|_| p.to_owned());
    if absolute(anchor).starts_with(absolute(data_dir)) {
        return Err(ServeError::Config(format!(
            "--anchor-file: {} is inside the data directory {}; it must be outside it (best on \
             another volume), or an older copy of the directory would bring its own anchor back",
            anchor.display(),
            data_dir.display()
        )));
    }
    if anchor.file_name().is_none() {
        return Err(ServeError::Config(format!(
            "--anchor-file: {} names no file",
            anchor.display()
        )));
    }
    Ok(())
}

/// Reads the `--config` file: the same settings as the flags.
fn read_file_config(path: &std::path::Path) -> Result<ServeArgs, ServeError> {
    let text = std::fs::read_to_string(path).map_err(|e| ServeError::Io {
        context: format!("cannot read config file {}", path.display()),
        source: e,
    })?;
    settings::from_toml(&text)
        .map_err(|e| ServeError::Config(format!("config file {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    /// `coffer serve`'s flags as the CLI parses them.
    #[derive(Debug, Parser)]
    struct Serve {
        #[command(flatten)]
        args: ServeArgs,
    }

    fn flags(list: &[&str]) -> Result<ServeArgs, clap::Error> {
        Serve::try_parse_from(std::iter::once("serve").chain(list.iter().copied())).map(|s| s.args)
    }

    #[test]
    fn etcd_storage_needs_a_shared_kek_and_names_its_flags() {
        let resolve = |list: &[&str]| {
            flags(list)
                .map_err(|e| e.to_string())
                .and_then(|a| a.resolve().map_err(|e| e.to_string()))
        };
        let c = resolve(&[
            "--storage",
            "etcd://127.0.0.1:2379,127.0.0.1:2380/team",
            "--kek-file",
            "/k",
        ])
        .expect("with a key file");
        let (url, tls) = c.storage.expect("storage");
        assert_eq!(url.endpoints, ["127.0.0.1:2379", "127.0.0.1:2380"]);
        assert_eq!(url.prefix, "/team");
        assert!(!tls.enabled());
        assert_eq!(c.kek_file, Some(PathBuf::from("/k")));
        assert!(resolve(&["--storage", "etcd://h:1", "--kms", "unix:///run/kms.sock"]).is_ok());
        assert!(
            ServeArgs::default()
                .resolve()
                .expect("default")
                .storage
                .is_none()
        );
        for (list, needle) in [
            (&["--storage", "etcd://h:1"][..], "--kms unix:///PATH"),
            (&["--storage", "etcd://h:1"][..], "--kek-file PATH"),
            (&["--storage", "http://h:1"][..], "must start with etcd://"),
            (&["--storage", "etcd://h"][..], "must be HOST:PORT"),
            (&["--storage-ca-file", "/ca"][..], "need --storage etcd://"),
            (
                &["--kek-file", "/k", "--kms", "unix:///s"][..],
                "--kek-file and --kms",
            ),
        ] {
            let e = resolve(list).expect_err(needle);
            assert!(e.contains(needle), "{list:?}: {e}");
        }
        // The etcd door on etcd storage (issue 16 item 6) is served.
        let door_on_etcd = resolve(&[
            "--storage",
            "etcd://h:1",
            "--kek-file",
            "/k",
            "--etcd-listen",
            "127.0.0.1:0",
        ])
        .expect("the door on etcd storage");
        assert!(door_on_etcd.storage.is_some());
        assert!(!door_on_etcd.etcd_listen.is_empty());
    }

    #[test]
    fn defaults() {
        let c = ServeArgs::default().resolve().expect("resolve");
        assert_eq!(c.data_dir, PathBuf::from("./coffer-data"));
        assert_eq!(c.listen, vec![ListenAddr::Tcp("127.0.0.1:7070".into())]);
        assert_eq!(c.aead, Algorithm::Aes256Gcm);
        assert_eq!(c.durability, Durability::Sync);
        assert!(c.metrics_listen.is_none());
        assert_eq!(
            c.options.token_cleaner_interval,
            Some(Duration::from_secs(60))
        );
    }

    #[test]
    fn anchor_file_and_accept_rollback() {
        let c = flags(&[
            "--data-dir",
            "/srv/coffer",
            "--anchor-file",
            "/mnt/other/anchor",
            "--accept-rollback",
        ])
        .expect("flags")
        .resolve()
        .expect("resolve");
        let store = c.store_config();
        assert_eq!(store.anchor_file, Some(PathBuf::from("/mnt/other/anchor")));
        assert!(store.accept_rollback);
        assert!(
            ServeArgs::default()
                .resolve()
                .expect("defaults")
                .anchor_file
                .is_none()
        );
        let err = flags(&[
            "--data-dir",
            "/srv/coffer",
            "--anchor-file",
            "/srv/coffer/anchor",
        ])
        .expect("flags")
        .resolve()
        .expect_err("inside");
        assert!(err.to_string().contains("--anchor-file"), "{err}");
        assert!(err.to_string().contains("outside"), "{err}");
        let err = flags(&["--accept-rollback"])
            .expect("flags")
            .resolve()
            .expect_err("alone");
        assert!(err.to_string().contains("needs --anchor-file"), "{err}");
    }

    #[test]
    fn kms_settings() {
        let c = ServeArgs::default().resolve().expect("resolve");
        assert_eq!(c.kms, KmsConfig::default());
        assert_eq!(c.kms.timeout, Duration::from_secs(3));
        assert_eq!(c.kms.outage.grace, Duration::from_secs(180));
        let args = flags(&[
            "--kms",
            "unix:///run/kms.sock",
            "--kms-timeout",
            "500ms",
            "--kms-grace",
            "10s",
            "--kms-poll-interval",
            "2s",
        ])
        .expect("flags");
        let c = args.resolve().expect("resolve");
        assert_eq!(c.kms.endpoint, Some(KmsEndpoint::unix("/run/kms.sock")));
        assert_eq!(c.kms.timeout, Duration::from_millis(500));
        assert_eq!(c.kms.outage.grace, Duration::from_secs(10));
        assert_eq!(c.kms.outage.healthy_interval, Duration::from_secs(2));
        let err = flags(&["--kms", "/run/kms.sock"]).expect_err("--kms");
        assert!(err.to_string().contains("--kms"), "{err}");
        let err = flags(&["--kms-timeout", "0"])
            .expect("flags")
            .resolve()
            .expect_err("zero");
        assert!(err.to_string().contains("--kms-timeout"), "{err}");
    }

    #[test]
    fn durations_like_1h30m_from_flags_and_file() {
        let c = flags(&["--kms-poll-interval", "1h30m", "--watch-window-age", "90s"])
            .expect("flags")
            .resolve()
            .expect("resolve");
        assert_eq!(c.kms.outage.healthy_interval, Duration::from_secs(5400));
        assert_eq!(c.options.watch_window_age, Some(Duration::from_secs(90)));
        let c = flags(&["--history-retention", "1h30m"])
            .expect("flags")
            .resolve()
            .expect("resolve");
        assert_eq!(
            c.store_config().history_retention,
            Duration::from_secs(5400)
        );
        let c = flags(&["--history-retention", "0"])
            .expect("flags")
            .resolve()
            .expect("resolve");
        assert!(c.store_config().history_retention.is_zero());
        let c = flags(&[]).expect("flags").resolve().expect("resolve");
        assert_eq!(c.history_retention, Duration::from_secs(3600));
        assert_eq!(
            c.options.watch_window_bytes,
            64 << 20,
            "the README's 64 MiB"
        );
        let c = flags(&["--watch-window-bytes", "8388608"])
            .expect("flags")
            .resolve()
            .expect("resolve");
        assert_eq!(c.options.watch_window_bytes, 8 << 20);
        let err = flags(&["--watch-window-bytes", "0"])
            .expect("flags")
            .resolve()
            .expect_err("zero");
        assert!(err.to_string().contains("--watch-window-bytes"), "{err}");
        for flag in [
            "--shutdown-grace",
            "--watch-window-age",
            "--kms-timeout",
            "--history-retention",
        ] {
            let err = flags(&[flag, "soon"]).expect_err(flag).to_string();
            assert!(
                err.contains(flag) && err.contains("not a duration"),
                "{err}"
            );
        }
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "shutdown_grace = \"1h30m\"\nkms-grace = \"500ms\"\n").expect("w");
        let args = ServeArgs {
            config: Some(path.clone()),
            ..ServeArgs::default()
        };
        let c = args.resolve().expect("resolve");
        assert_eq!(c.options.shutdown_grace, Duration::from_secs(5400));
        assert_eq!(c.kms.outage.grace, Duration::from_millis(500));
        std::fs::write(&path, "kms_grace = \"3 fortnights\"\n").expect("w");
        let err = args.resolve().expect_err("bad duration").to_string();
        assert!(err.contains("kms_grace") && err.contains("c.toml"), "{err}");
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(
            "unix:///run/c.sock".parse::<ListenAddr>().ok(),
            Some(ListenAddr::Unix("/run/c.sock".into()))
        );
        assert_eq!(
            "[::1]:0".parse::<ListenAddr>().ok(),
            Some(ListenAddr::Tcp("[::1]:0".into()))
        );
        assert_eq!(
            "localhost:7070".parse::<ListenAddr>().ok(),
            Some(ListenAddr::Tcp("localhost:7070".into()))
        );
        for bad in ["7070", ":7070", "host:port", "unix://", "h:99999"] {
            assert!(bad.parse::<ListenAddr>().is_err(), "{bad}");
        }
        let err = flags(&["--metrics-listen", "unix:///m.sock"])
            .expect("flags")
            .resolve()
            .expect_err("unix metrics");
        assert!(err.to_string().contains("--metrics-listen"), "{err}");
    }

    #[test]
    fn file_and_flags_merge_with_flags_winning() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "data_dir = \"/from/file\"\nlisten = [\"127.0.0.1:1\", \"unix:///tmp/x.sock\"]\n\
             aead = \"xchacha20-poly1305\"\nrelaxed-durability = true\n\
             token_cleaner_interval = \"0\"\nbookmark_interval = \"250ms\"\nwatch_window = 7\n\
             watch_window_bytes = 1048576\n",
        )
        .expect("write");
        let args = ServeArgs {
            config: Some(path.clone()),
            store: StoreArgs {
                data_dir: Some("/from/flag".into()),
                ..StoreArgs::default()
            },
            ..ServeArgs::default()
        };
        let c = args.resolve().expect("resolve");
        assert_eq!(c.data_dir, PathBuf::from("/from/flag"));
        assert_eq!(c.listen.len(), 2);
        assert_eq!(c.aead, Algorithm::XChaCha20Poly1305);
        assert_eq!(c.durability, Durability::Relaxed);
        assert_eq!(c.options.token_cleaner_interval, None);
        assert_eq!(c.options.bookmark_interval, Duration::from_millis(250));
        assert_eq!(c.options.watch_window_events, 7);
        assert_eq!(c.options.watch_window_bytes, 1 << 20);
        let c = ServeArgs {
            listen: ListenArgs {
                listen: vec![ListenAddr::Tcp("127.0.0.1:2".into())],
                ..ListenArgs::default()
            },
            ..args.clone()
        }
        .resolve()
        .expect("resolve");
        assert_eq!(c.listen, [ListenAddr::Tcp("127.0.0.1:2".into())]);

        std::fs::write(&path, "data_dir = \"/x\"\nlisen = \"typo\"\n").expect("write");
        let err = args.resolve().expect_err("unknown key");
        assert!(err.to_string().contains("lisen"), "{err}");
        std::fs::write(&path, "config = \"/other.toml\"\n").expect("write");
        let err = args.resolve().expect_err("not a file key");
        assert!(err.to_string().contains("config"), "{err}");
        std::fs::write(&path, "listen = \"7070\"\n").expect("write");
        let err = args.resolve().expect_err("bad address").to_string();
        assert!(
            err.contains("listen") && err.contains("missing port"),
            "{err}"
        );
    }

    #[test]
    fn security_table_in_the_config_file() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:0\"\n[security]\ntoken_file = \"/t.csv\"\n\
             audit-log = \"/a.log\"\nmax_watch_streams_per_connection = 4\n",
        )
        .expect("write");
        let args = ServeArgs {
            config: Some(path.clone()),
            ..ServeArgs::default()
        };
        let c = args.resolve().expect("resolve");
        assert_eq!(c.security.token_file, Some(PathBuf::from("/t.csv")));
        assert_eq!(c.security.audit_log, Some(PathBuf::from("/a.log")));
        assert_eq!(c.security.limits.max_watch_streams, Some(4));
        assert!(c.security.auth_enabled());
        std::fs::write(&path, "[security]\naudit_fail_closed = true\n").expect("write");
        let err = args.resolve().expect_err("needs a log").to_string();
        assert!(
            err.contains("--audit-fail-closed needs --audit-log"),
            "{err}"
        );
        std::fs::write(
            &path,
            "[security]\nmax_watch_streams_per_connection = \"x\"\n",
        )
        .expect("write");
        let err = args.resolve().expect_err("bad type").to_string();
        assert!(
            err.contains("security.max_watch_streams_per_connection"),
            "{err}"
        );
    }

    /// Every flag has help text, and a default it states is the default: `--flag VALUE` with
    /// the stated value resolves to what no flag at all resolves to.
    #[test]
    fn help_states_the_defaults() {
        let default = format!("{:?}", ServeArgs::default().resolve().expect("defaults"));
        let mut checked = 0;
        let command = Serve::command();
        for arg in command.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
            assert!(!help.trim().is_empty(), "--{long} has no help");
            let Some(stated) = help
                .split_once("[default: ")
                .and_then(|(_, rest)| rest.split_once(']'))
                .map(|(value, _)| value.to_owned())
            else {
                continue;
            };
            // A default in words ("unlimited", "one second's worth") is not a value.
            let Ok(args) = flags(&[&format!("--{long}"), &stated]) else {
                continue;
            };
            let resolved = format!("{:?}", args.resolve().expect(long));
            assert_eq!(resolved, default, "--{long} [default: {stated}]");
            checked += 1;
        }
        assert!(checked >= 12, "{checked}");
        let help = Serve::command().render_long_help().to_string();
        for flag in [
            "--config",
            "--data-dir",
            "--kms-poll-interval",
            "--disable-mlock",
            "--tls-cert",
        ] {
            assert!(help.contains(flag), "{flag}: {help}");
        }
    }
}
