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

mod args;
#[cfg(feature = "etcd")]
mod etcd;
#[cfg(feature = "plot")]
mod plot;
mod report;
mod soak;
mod spawn;
mod unary;
mod watch;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

// The shared flags, under the names the benchmark modules use (`crate::Op`, ...).
pub(crate) use self::args::{
    DEFAULT_NAMESPACE, DEFAULT_SERVER, Op, Target, UnaryArgs, parse_seconds, parse_seconds_or_zero,
};

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

/// `coffer-load watch`: against Coffer, or (built with the `etcd` feature) against etcd. The
/// etcd run is dispatched here, not by `watch`, because it is built from `watch`'s parts.
async fn run_watch(args: watch::WatchArgs) -> Result<ExitCode, String> {
    #[cfg(feature = "etcd")]
    {
        if args.target == Target::Etcd {
            return etcd::run_watch(args).await;
        }
    }
    watch::run(args).await
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
        Command::Watch(args) => runtime.block_on(run_watch(args)),
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

    use std::time::Duration;

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
        assert_eq!(a.server(), args::DEFAULT_ETCD);
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
