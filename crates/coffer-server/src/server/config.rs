//! `coffer serve` settings: flags, with an optional TOML file holding the same settings.
//!
//! [`ServeArgs`] is what the CLI parses; [`ServeArgs::resolve`] merges it with the `--config`
//! file (a flag given on the command line wins) and the defaults into a [`ServeConfig`].
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
//! watch_window_age = "5m"
//! kms = "unix:///run/kms/kms.sock"
//! kms_timeout = "3s"
//! kms_grace = "3m"
//! kms_poll_interval = "60s"
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
//! A relative `data_dir` or socket path is relative to the working directory.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use clap::Args;
use serde::Deserialize;

use super::ServeError;
use super::limits::{LimitArgs, LimitConfig, LimitFile, LimitOptions};
use crate::auth::args::FileSecurity;
use crate::auth::{SecurityArgs, SecurityConfig};
use coffer_core::crypto::Algorithm;
use coffer_core::storage::Durability;
use coffer_kms::{KmsConfig, KmsEndpoint};

/// The data directory when none is given.
pub const DEFAULT_DATA_DIR: &str = "./coffer-data";
/// The listen address when none is given.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7070";

/// Settings of `coffer serve`. Every flag can also be set in the `--config` TOML file (same names,
/// with `_` for `-`); a flag given on the command line wins over the file.
#[derive(Debug, Clone, Args, Default)]
pub struct ServeArgs {
    /// Data directory (sled database, write-ahead log, and the local KEK file) [default: ./coffer-data].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Address to listen on: HOST:PORT or unix:///path/to.sock. Repeatable [default: 127.0.0.1:7070].
    #[arg(long)]
    pub listen: Vec<String>,
    /// AEAD for new records: aes-256-gcm or xchacha20-poly1305 [default: aes-256-gcm].
    #[arg(long)]
    pub aead: Option<String>,
    /// Prometheus text endpoint address (HOST:PORT); off when unset.
    #[arg(long)]
    pub metrics_listen: Option<String>,
    /// Acknowledge writes before they are fsync'd (a power loss may lose ~100 ms of writes).
    #[arg(long)]
    pub relaxed_durability: bool,
    /// TOML file with the same settings.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// How often expired bootstrap tokens are deleted, e.g. 60s or 5m; 0 turns the cleaner off
    /// [default: 60s].
    #[arg(long, value_name = "DURATION")]
    pub token_cleaner_interval: Option<String>,
    /// How often a watch that allows bookmarks gets one [default: 60s].
    #[arg(long, value_name = "DURATION")]
    pub bookmark_interval: Option<String>,
    /// How long shutdown waits for in-flight calls before it closes connections [default: 30s].
    #[arg(long, value_name = "DURATION")]
    pub shutdown_grace: Option<String>,
    /// How many recent changes are kept for watches to resume from [default: 1000].
    #[arg(long, value_name = "EVENTS")]
    pub watch_window: Option<usize>,
    /// How long a change stays in that window at most, e.g. 5m; 0 for no age limit
    /// [default: 5m].
    #[arg(long, value_name = "DURATION")]
    pub watch_window_age: Option<String>,
    /// KMS v2 plugin socket (unix:///path/to/kms.sock); unset: the local key file
    /// <data-dir>/kek.key.
    #[arg(long, value_name = "unix:///PATH")]
    pub kms: Option<String>,
    /// Deadline of each KMS call [default: 3s].
    #[arg(long, value_name = "DURATION")]
    pub kms_timeout: Option<String>,
    /// How long writes keep working after the last good KMS Status; reads go on regardless
    /// [default: 3m].
    #[arg(long, value_name = "DURATION")]
    pub kms_grace: Option<String>,
    /// How often the KMS Status is polled while healthy (every 10s, or this if shorter, while
    /// failing) [default: 60s].
    #[arg(long, value_name = "DURATION")]
    pub kms_poll_interval: Option<String>,
    /// Quotas, server-wide limits and memory hygiene (the file's `[limits]` table).
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Authentication, authorization, audit, per-connection limits (the `[security]` table of
    /// the config file).
    #[command(flatten)]
    pub security: SecurityArgs,
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
    type Err = ServeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| {
            ServeError::Config(format!(
                "listen address {s:?}: {why} (expected HOST:PORT or unix:///path/to.sock)"
            ))
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
    /// When writes count as durable.
    pub durability: Durability,
    /// Server tunables.
    pub options: ServerOptions,
    /// The KMS: local key file or KMS v2 plugin, call deadline, outage policy.
    pub kms: KmsConfig,
    /// Quotas, server-wide limits (also in `options.limits`) and memory hygiene.
    pub limits: LimitConfig,
    /// Authentication, authorization, audit, per-connection limits.
    pub security: SecurityConfig,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(alias = "data-dir")]
    data_dir: Option<PathBuf>,
    listen: Option<OneOrMany>,
    aead: Option<String>,
    #[serde(alias = "metrics-listen")]
    metrics_listen: Option<String>,
    #[serde(alias = "relaxed-durability")]
    relaxed_durability: Option<bool>,
    #[serde(alias = "token-cleaner-interval")]
    token_cleaner_interval: Option<String>,
    #[serde(alias = "bookmark-interval")]
    bookmark_interval: Option<String>,
    #[serde(alias = "shutdown-grace")]
    shutdown_grace: Option<String>,
    #[serde(alias = "watch-window")]
    watch_window: Option<usize>,
    #[serde(alias = "watch-window-age")]
    watch_window_age: Option<String>,
    kms: Option<String>,
    #[serde(alias = "kms-timeout")]
    kms_timeout: Option<String>,
    #[serde(alias = "kms-grace")]
    kms_grace: Option<String>,
    #[serde(alias = "kms-poll-interval")]
    kms_poll_interval: Option<String>,
    limits: Option<LimitFile>,
    security: Option<FileSecurity>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl ServeArgs {
    /// Merges the flags with the `--config` file (flags win) and the defaults.
    pub fn resolve(&self) -> Result<ServeConfig, ServeError> {
        let file = match &self.config {
            Some(path) => read_file_config(path)?,
            None => FileConfig::default(),
        };
        let security = self
            .security
            .resolve(file.security)
            .map_err(|e| ServeError::Config(e.to_string()))?;
        let data_dir = self
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let listen: Vec<String> = if !self.listen.is_empty() {
            self.listen.clone()
        } else {
            match file.listen {
                Some(OneOrMany::One(a)) => vec![a],
                Some(OneOrMany::Many(v)) if !v.is_empty() => v,
                _ => vec![DEFAULT_LISTEN.to_owned()],
            }
        };
        let listen = listen
            .iter()
            .map(|a| a.parse())
            .collect::<Result<Vec<ListenAddr>, _>>()?;
        let aead = match self.aead.as_deref().or(file.aead.as_deref()) {
            Some(a) => a
                .parse::<Algorithm>()
                .map_err(|e| ServeError::Config(format!("--aead: {e}")))?,
            None => Algorithm::default(),
        };
        let metrics_listen = self.metrics_listen.clone().or(file.metrics_listen);
        if let Some(m) = &metrics_listen {
            match m.parse::<ListenAddr>()? {
                ListenAddr::Tcp(_) => {}
                ListenAddr::Unix(_) => {
                    return Err(ServeError::Config(format!(
                        "--metrics-listen {m:?}: must be HOST:PORT"
                    )));
                }
            }
        }
        let relaxed = self.relaxed_durability || file.relaxed_durability.unwrap_or(false);
        let mut options = ServerOptions::default();
        let duration = |flag: &Option<String>, file: Option<String>, name: &str| {
            flag.clone()
                .or(file)
                .map(|d| {
                    parse_duration(&d).map_err(|e| ServeError::Config(format!("--{name}: {e}")))
                })
                .transpose()
        };
        if let Some(d) = duration(
            &self.token_cleaner_interval,
            file.token_cleaner_interval,
            "token-cleaner-interval",
        )? {
            options.token_cleaner_interval = (!d.is_zero()).then_some(d);
        }
        if let Some(d) = duration(
            &self.bookmark_interval,
            file.bookmark_interval,
            "bookmark-interval",
        )? {
            if d.is_zero() {
                return Err(ServeError::Config(
                    "--bookmark-interval: must be more than 0".into(),
                ));
            }
            options.bookmark_interval = d;
        }
        if let Some(d) = duration(&self.shutdown_grace, file.shutdown_grace, "shutdown-grace")? {
            options.shutdown_grace = d;
        }
        if let Some(n) = self.watch_window.or(file.watch_window) {
            if n == 0 {
                return Err(ServeError::Config(
                    "--watch-window: must be at least 1".into(),
                ));
            }
            options.watch_window_events = n;
        }
        if let Some(d) = duration(
            &self.watch_window_age,
            file.watch_window_age,
            "watch-window-age",
        )? {
            options.watch_window_age = (!d.is_zero()).then_some(d);
        }
        let limits = self.limits.resolve(file.limits)?;
        options.limits = limits.server;
        let mut kms = KmsConfig::default();
        if let Some(e) = self.kms.clone().or(file.kms) {
            kms.endpoint = Some(
                e.parse::<KmsEndpoint>()
                    .map_err(|e| ServeError::Config(format!("--kms: {e}")))?,
            );
        }
        let positive = |d: Duration, name: &str| {
            if d.is_zero() {
                Err(ServeError::Config(format!("--{name}: must be more than 0")))
            } else {
                Ok(d)
            }
        };
        if let Some(d) = duration(&self.kms_timeout, file.kms_timeout, "kms-timeout")? {
            kms.timeout = positive(d, "kms-timeout")?;
        }
        if let Some(d) = duration(&self.kms_grace, file.kms_grace, "kms-grace")? {
            kms.outage.grace = d;
        }
        if let Some(d) = duration(
            &self.kms_poll_interval,
            file.kms_poll_interval,
            "kms-poll-interval",
        )? {
            kms.outage.healthy_interval = positive(d, "kms-poll-interval")?;
        }
        Ok(ServeConfig {
            data_dir,
            listen,
            aead,
            metrics_listen,
            durability: if relaxed {
                Durability::Relaxed
            } else {
                Durability::Sync
            },
            options,
            kms,
            limits,
            security,
        })
    }
}

fn read_file_config(path: &Path) -> Result<FileConfig, ServeError> {
    let text = std::fs::read_to_string(path).map_err(|e| ServeError::Io {
        context: format!("cannot read config file {}", path.display()),
        source: e,
    })?;
    toml::from_str(&text)
        .map_err(|e| ServeError::Config(format!("config file {}: {}", path.display(), e.message())))
}

/// Parses a duration: a number with a unit `ms`, `s`, `m` or `h` (`250ms`, `60s`, `5m`), or a
/// bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (expected e.g. 250ms, 60s, 5m, 1h)"))?;
    let d = match unit.trim() {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => {
            return Err(format!(
                "{s:?} has an unknown unit (expected ms, s, m or h)"
            ));
        }
    };
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn kms_settings() {
        let c = ServeArgs::default().resolve().expect("resolve");
        assert_eq!(c.kms, KmsConfig::default());
        assert_eq!(c.kms.timeout, Duration::from_secs(3));
        assert_eq!(c.kms.outage.grace, Duration::from_secs(180));
        let args = ServeArgs {
            kms: Some("unix:///run/kms.sock".into()),
            kms_timeout: Some("500ms".into()),
            kms_grace: Some("10s".into()),
            kms_poll_interval: Some("2s".into()),
            ..ServeArgs::default()
        };
        let c = args.resolve().expect("resolve");
        assert_eq!(c.kms.endpoint, Some(KmsEndpoint::unix("/run/kms.sock")));
        assert_eq!(c.kms.timeout, Duration::from_millis(500));
        assert_eq!(c.kms.outage.grace, Duration::from_secs(10));
        assert_eq!(c.kms.outage.healthy_interval, Duration::from_secs(2));
        for (args, flag) in [
            (
                ServeArgs {
                    kms: Some("/run/kms.sock".into()),
                    ..ServeArgs::default()
                },
                "--kms",
            ),
            (
                ServeArgs {
                    kms_timeout: Some("0".into()),
                    ..ServeArgs::default()
                },
                "--kms-timeout",
            ),
        ] {
            let err = args.resolve().expect_err(flag).to_string();
            assert!(err.contains(flag), "{err}");
        }
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
    }

    #[test]
    fn file_and_flags_merge_with_flags_winning() {
        let dir = std::env::temp_dir().join(format!("coffer-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "data_dir = \"/from/file\"\nlisten = [\"127.0.0.1:1\", \"unix:///tmp/x.sock\"]\n\
             aead = \"xchacha20-poly1305\"\nrelaxed-durability = true\n\
             token_cleaner_interval = \"0\"\nbookmark_interval = \"250ms\"\nwatch_window = 7\n",
        )
        .expect("write");
        let args = ServeArgs {
            config: Some(path.clone()),
            data_dir: Some("/from/flag".into()),
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

        std::fs::write(&path, "data_dir = \"/x\"\nlisen = \"typo\"\n").expect("write");
        let err = args.resolve().expect_err("unknown key");
        assert!(err.to_string().contains("lisen"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
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
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("60"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("5 days").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
