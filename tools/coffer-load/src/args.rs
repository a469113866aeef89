//! The flags and values the benchmarks share: the target store, the unary benchmark's flags,
//! the operations, the defaults, the seconds parsers. A leaf: the benchmark modules name it,
//! it names none of them.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

/// The namespace the load is written to when `--namespace` is not given.
pub(crate) const DEFAULT_NAMESPACE: &str = "coffer-load";
/// The server loaded when neither `--server` nor `COFFER_SERVER` is set (as for `coffer`).
pub(crate) const DEFAULT_SERVER: &str = "127.0.0.1:7070";

/// The store a benchmark loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub(crate) enum Target {
    /// A Coffer server (the Secret service).
    #[default]
    Coffer,
    /// An etcd member (KV and Watch APIs; needs a build with the `etcd` feature).
    Etcd,
}

impl Target {
    /// The lowercase name, as on the command line.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Target::Coffer => "coffer",
            Target::Etcd => "etcd",
        }
    }

    /// Refuses `etcd` in a build without the `etcd` feature, with the way to get one.
    pub(crate) fn check_built(self) -> Result<(), String> {
        if self == Target::Etcd && !cfg!(feature = "etcd") {
            return Err(
                "this coffer-load was built without etcd support: build it with \
                 `cargo build --release --features etcd --bin coffer-load` (needs protoc: \
                 apt-get install protobuf-compiler)"
                    .into(),
            );
        }
        Ok(())
    }
}

/// The etcd client endpoint loaded when `--server` is not given with `--target etcd`.
pub(crate) const DEFAULT_ETCD: &str = "127.0.0.1:2379";

/// Flags of `coffer-load unary`.
#[derive(Debug, Clone, Args)]
pub(crate) struct UnaryArgs {
    /// The store to load: coffer, or etcd (there: create and update are Puts of a new and of an
    /// existing key, get is a Range of one key; same names, values and callers).
    #[arg(long, value_enum, default_value_t = Target::Coffer)]
    pub(crate) target: Target,
    /// The server to load: HOST:PORT, http://HOST:PORT or unix:///path/to.sock, or several
    /// replicas of one store separated by commas (the connections are spread over them in turn)
    /// [default: $COFFER_SERVER, else 127.0.0.1:7070; with --target etcd: 127.0.0.1:2379].
    #[arg(long, conflicts_with = "spawn")]
    pub(crate) server: Option<String>,
    /// Start an in-process server on 127.0.0.1:0 over a temporary data directory instead.
    #[arg(long)]
    pub(crate) spawn: bool,
    /// With --spawn: acknowledge writes before they are fsync'd (the server's
    /// --relaxed-durability). Durable by default.
    #[arg(long, requires = "spawn")]
    pub(crate) relaxed: bool,
    /// With --spawn: use this data directory (kept afterwards) instead of a temporary one
    /// (removed afterwards). Put it on the disk you want to measure.
    #[arg(long, requires = "spawn", value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// With --spawn: the AEAD for new records, aes-256-gcm or xchacha20-poly1305.
    #[arg(long, requires = "spawn", default_value = "aes-256-gcm")]
    pub(crate) aead: String,
    /// HTTP/2 connections (tonic channels) to open.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub(crate) connections: u32,
    /// Concurrent callers, spread round-robin over the connections.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub(crate) concurrency: u32,
    /// Measured seconds per phase (fractions allowed, e.g. 0.5).
    #[arg(long, default_value = "10", value_parser = parse_seconds, value_name = "SECS")]
    pub(crate) duration: Duration,
    /// Unmeasured seconds at the start of each phase (connections and caches warm up).
    #[arg(long, default_value = "0", value_parser = parse_seconds_or_zero, value_name = "SECS")]
    pub(crate) phase_warmup: Duration,
    /// Bytes of the one data value of each Secret (random, so incompressible).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(0..=1_048_576))]
    pub(crate) value_size: u32,
    /// Phases to run, comma-separated; they always run in the order create, get, update.
    #[arg(long, value_delimiter = ',', default_value = "create,get,update")]
    pub(crate) ops: Vec<Op>,
    /// Namespace of the Secrets written (names are unique per run).
    #[arg(long, short = 'n', default_value = DEFAULT_NAMESPACE)]
    pub(crate) namespace: String,
    /// Secrets created (unmeasured) before Get/Update when the create phase is not run.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub(crate) seed_keys: u32,
    /// Deadline of each call, after which it counts as an error.
    #[arg(long, default_value = "30", value_parser = parse_seconds, value_name = "SECS")]
    pub(crate) call_timeout: Duration,
    /// Delete the Secrets this run created (unmeasured) before exiting.
    #[arg(long)]
    pub(crate) cleanup: bool,
    /// Print the results as one JSON object instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

/// One kind of call, measured as its own phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, ValueEnum)]
pub(crate) enum Op {
    /// `Create` of a new, uniquely named Secret.
    Create,
    /// `Get` of a random existing Secret.
    Get,
    /// Unconditional `Update` of a random existing Secret with a changed value.
    Update,
}

impl UnaryArgs {
    /// The server to load without `--spawn`: `--server`, else `COFFER_SERVER`, else the
    /// default. (`COFFER_SERVER` is read here rather than by clap, so that it does not conflict
    /// with `--spawn`.)
    pub(crate) fn server(&self) -> String {
        if self.target == Target::Etcd {
            return self
                .server
                .clone()
                .unwrap_or_else(|| DEFAULT_ETCD.to_owned());
        }
        self.server
            .clone()
            .or_else(|| {
                std::env::var("COFFER_SERVER")
                    .ok()
                    .filter(|s| !s.is_empty())
            })
            .unwrap_or_else(|| DEFAULT_SERVER.to_owned())
    }
}

impl Op {
    /// The lowercase name, as on the command line.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Get => "get",
            Op::Update => "update",
        }
    }
}

/// Parses a positive, finite number of seconds.
pub(crate) fn parse_seconds(s: &str) -> Result<Duration, String> {
    let d = parse_seconds_or_zero(s)?;
    if d.is_zero() {
        return Err("must be more than 0".into());
    }
    Ok(d)
}

/// Parses a non-negative, finite number of seconds (at most a day).
pub(crate) fn parse_seconds_or_zero(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !secs.is_finite() || !(0.0..=86_400.0).contains(&secs) {
        return Err(format!("{s:?}: expected 0 to 86400 seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
}
