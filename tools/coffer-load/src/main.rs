//! `coffer-load`: a load generator for the Coffer gRPC Secret service.
//!
//! `coffer-load unary` drives Create, then Get, then Update (each a timed phase) over N HTTP/2
//! connections shared by M concurrent callers, and reports each phase's throughput and latency
//! percentiles (hdrhistogram). With `--spawn` it starts an in-process server on `127.0.0.1:0`
//! over a temporary data directory (durable writes unless `--relaxed`), so one command measures
//! client and server together; otherwise it loads the server at `--server`.
//!
//! ```sh
//! cargo run --release --bin coffer-load -- unary --spawn --connections 4 --concurrency 64 --duration 10
//! ```
//!
//! The exit code is 0 when every phase completed without errors, 1 when a phase had errors (the
//! table is still printed; a run with errors is not a valid figure), 2 for bad flags.
#![forbid(unsafe_code)]

#[cfg(feature = "etcd")]
mod etcd;
#[cfg(feature = "plot")]
mod plot;
mod report;
mod soak;
mod spawn;
mod unary;
mod watch;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// The namespace the load is written to when `--namespace` is not given.
const DEFAULT_NAMESPACE: &str = "coffer-load";
/// The server loaded when neither `--server` nor `COFFER_SERVER` is set (as for `coffer`).
const DEFAULT_SERVER: &str = "127.0.0.1:7070";

/// `coffer-load`: measure a Coffer server's throughput and latency.
#[derive(Debug, Parser)]
#[command(name = "coffer-load", version, about)]
struct Cli {
    /// The benchmark to run.
    #[command(subcommand)]
    command: Command,
}

/// The benchmarks.
#[derive(Debug, Subcommand)]
enum Command {
    /// Unary RPCs: timed Create, Get and Update phases over N connections and M callers.
    Unary(UnaryArgs),
    /// Watch streams at scale: delivery latency and server memory per stream.
    Watch(watch::WatchArgs),
    /// A long mixed run (writers, readers, watchers, a KMS rotation in the middle) against a
    /// `coffer serve` child process, sampling its RSS and open file descriptors.
    Soak(soak::SoakArgs),
    /// PNG charts of `scripts/bench-vs-etcd.sh` results or of a soak's samples (built with the
    /// `plot` feature).
    #[cfg(feature = "plot")]
    Plot(plot::PlotArgs),
}

/// The store a benchmark loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
enum Target {
    /// A Coffer server (the Secret service).
    #[default]
    Coffer,
    /// An etcd member (KV and Watch APIs; needs a build with the `etcd` feature).
    Etcd,
}

impl Target {
    /// The lowercase name, as on the command line.
    fn name(self) -> &'static str {
        match self {
            Target::Coffer => "coffer",
            Target::Etcd => "etcd",
        }
    }

    /// Refuses `etcd` in a build without the `etcd` feature, with the way to get one.
    fn check_built(self) -> Result<(), String> {
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
const DEFAULT_ETCD: &str = "127.0.0.1:2379";

/// Flags of `coffer-load unary`.
#[derive(Debug, Clone, Args)]
struct UnaryArgs {
    /// The store to load: coffer, or etcd (there: create and update are Puts of a new and of an
    /// existing key, get is a Range of one key; same names, values and callers).
    #[arg(long, value_enum, default_value_t = Target::Coffer)]
    target: Target,
    /// The server to load: HOST:PORT, http://HOST:PORT or unix:///path/to.sock [default:
    /// $COFFER_SERVER, else 127.0.0.1:7070; with --target etcd: 127.0.0.1:2379].
    #[arg(long, conflicts_with = "spawn")]
    server: Option<String>,
    /// Start an in-process server on 127.0.0.1:0 over a temporary data directory instead.
    #[arg(long)]
    spawn: bool,
    /// With --spawn: acknowledge writes before they are fsync'd (the server's
    /// --relaxed-durability). Durable by default.
    #[arg(long, requires = "spawn")]
    relaxed: bool,
    /// With --spawn: use this data directory (kept afterwards) instead of a temporary one
    /// (removed afterwards). Put it on the disk you want to measure.
    #[arg(long, requires = "spawn", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// With --spawn: the AEAD for new records, aes-256-gcm or xchacha20-poly1305.
    #[arg(long, requires = "spawn", default_value = "aes-256-gcm")]
    aead: String,
    /// HTTP/2 connections (tonic channels) to open.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=4096))]
    connections: u32,
    /// Concurrent callers, spread round-robin over the connections.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    concurrency: u32,
    /// Measured seconds per phase (fractions allowed, e.g. 0.5).
    #[arg(long, default_value = "10", value_parser = parse_seconds, value_name = "SECS")]
    duration: Duration,
    /// Unmeasured seconds at the start of each phase (connections and caches warm up).
    #[arg(long, default_value = "0", value_parser = parse_seconds_or_zero, value_name = "SECS")]
    phase_warmup: Duration,
    /// Bytes of the one data value of each Secret (random, so incompressible).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(0..=1_048_576))]
    value_size: u32,
    /// Phases to run, comma-separated; they always run in the order create, get, update.
    #[arg(long, value_delimiter = ',', default_value = "create,get,update")]
    ops: Vec<Op>,
    /// Namespace of the Secrets written (names are unique per run).
    #[arg(long, short = 'n', default_value = DEFAULT_NAMESPACE)]
    namespace: String,
    /// Secrets created (unmeasured) before Get/Update when the create phase is not run.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    seed_keys: u32,
    /// Deadline of each call, after which it counts as an error.
    #[arg(long, default_value = "30", value_parser = parse_seconds, value_name = "SECS")]
    call_timeout: Duration,
    /// Delete the Secrets this run created (unmeasured) before exiting.
    #[arg(long)]
    cleanup: bool,
    /// Print the results as one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// One kind of call, measured as its own phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, ValueEnum)]
enum Op {
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
    fn server(&self) -> String {
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
    fn name(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Get => "get",
            Op::Update => "update",
        }
    }
}

/// Parses a positive, finite number of seconds.
fn parse_seconds(s: &str) -> Result<Duration, String> {
    let d = parse_seconds_or_zero(s)?;
    if d.is_zero() {
        return Err("must be more than 0".into());
    }
    Ok(d)
}

/// Parses a non-negative, finite number of seconds (at most a day).
fn parse_seconds_or_zero(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !secs.is_finite() || !(0.0..=86_400.0).contains(&secs) {
        return Err(format!("{s:?}: expected 0 to 86400 seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Unary(args) => runtime.block_on(unary::run(args)),
        Command::Watch(args) => runtime.block_on(watch::run(args)),
        Command::Soak(args) => runtime.block_on(soak::run(args)),
        #[cfg(feature = "plot")]
        Command::Plot(args) => plot::run(args),
    };
    match result {
        Ok(outcome) => outcome,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn parses_flags() {
        let cli = Cli::try_parse_from([
            "coffer-load",
            "unary",
            "--spawn",
            "--duration",
            "0.5",
            "--ops",
            "update,get",
        ])
        .unwrap();
        let Command::Unary(a) = cli.command else {
            panic!("not unary")
        };
        assert!(a.spawn);
        assert_eq!(a.duration, Duration::from_millis(500));
        assert_eq!(a.ops, vec![Op::Update, Op::Get]);
        assert_eq!(a.connections, 4);
        assert_eq!(a.concurrency, 64);
        assert_eq!(a.value_size, 1024);

        assert_eq!(a.target, Target::Coffer);
        assert_eq!(a.server(), DEFAULT_SERVER);

        let cli = Cli::try_parse_from(["coffer-load", "unary", "--target", "etcd"]).unwrap();
        let Command::Unary(a) = cli.command else {
            panic!("not unary")
        };
        assert_eq!(a.target, Target::Etcd);
        assert_eq!(a.server(), DEFAULT_ETCD);
        assert_eq!(
            Target::Etcd.check_built().is_ok(),
            cfg!(feature = "etcd"),
            "--target etcd works exactly in builds with the etcd feature"
        );

        let cli = Cli::try_parse_from([
            "coffer-load",
            "soak",
            "--duration",
            "5",
            "--watchers",
            "200",
            "--rotate-at",
            "1",
        ])
        .unwrap();
        assert!(matches!(cli.command, Command::Soak(_)));

        for bad in [
            &["coffer-load", "unary", "--duration", "0"][..],
            &["coffer-load", "unary", "--target", "zookeeper"],
            &["coffer-load", "soak", "--duration", "0"],
            &["coffer-load", "unary", "--duration", "-1"],
            &["coffer-load", "unary", "--duration", "NaN"],
            &["coffer-load", "unary", "--connections", "0"],
            &["coffer-load", "unary", "--ops", "delete"],
            &["coffer-load", "unary", "--relaxed"],
            &["coffer-load", "unary", "--spawn", "--server", "127.0.0.1:1"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
    }
}
