//! `coffer mount`: the mount agent. Mounts come from `--config FILE` (YAML or TOML, see
//! [`crate::mount::config`]) and/or the one-mount shorthand `--secret NS/NAME --dir PATH`; the
//! agent ([`crate::mount::Agent`]) writes them in the Kubernetes secret-volume layout and keeps
//! them current over one WatchMany stream until SIGTERM or SIGINT, or, with `--once`, writes
//! them and exits (1 when any mount failed).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use tokio_util::sync::CancellationToken;

use super::client::ServerAddr;
use super::error::CliError;
use crate::mount::atomic_writer::DirAccess;
use crate::mount::config::{self, KeyToPath, MountSpec, parse_mode, parse_secret_ref};
use crate::mount::{Agent, AgentOptions, Connector};
use coffer_server::settings::parse_duration;

/// `coffer mount`.
#[derive(Debug, Args)]
pub struct MountArgs {
    /// A YAML or TOML file of mounts (repeatable); `.toml` files are TOML, others YAML.
    #[arg(short = 'f', long = "config", value_name = "FILE")]
    pub config: Vec<PathBuf>,
    /// The Secret of a single mount: NAMESPACE/NAME, or NAME in --namespace.
    #[arg(long, value_name = "NAMESPACE/NAME", requires = "dir")]
    pub secret: Option<String>,
    /// The target directory of --secret (created if missing; a tmpfs is recommended).
    #[arg(long, value_name = "PATH", requires = "secret")]
    pub dir: Option<PathBuf>,
    /// The namespace of --secret NAME [default: default].
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// Project one key of --secret to a relative path, with an optional octal mode
    /// (repeatable; default: every key, as a file named after it).
    #[arg(long = "item", value_name = "KEY=PATH[:MODE]", requires = "secret")]
    pub items: Vec<String>,
    /// The mode of --secret's files [default: 0644].
    #[arg(long, value_name = "MODE", value_parser = parse_mode, requires = "secret")]
    pub default_mode: Option<u32>,
    /// --secret may be missing (an empty directory), and so may its listed keys (skipped).
    #[arg(long, requires = "secret")]
    pub optional: bool,
    /// Write every mount once and exit (for init containers and CI); exit code 1 when any
    /// mount could not be written.
    #[arg(long)]
    pub once: bool,
    /// With --once: how long to keep retrying failed mounts and the connection [default: 0s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, requires = "once")]
    pub timeout: Option<Duration>,
    /// The longest delay between retries of a failed mount [default: 60s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub retry_max: Option<Duration>,
    /// The group of the directories and files the agent creates; its directories are then
    /// 0750 instead of 0700 (files keep their own modes).
    #[arg(long, value_name = "GID")]
    pub group: Option<u32>,
    /// The owner of the directories and files the agent creates (root only).
    #[arg(long, value_name = "UID")]
    pub owner: Option<u32>,
}

/// Parses `KEY=PATH[:MODE]`.
fn parse_item(s: &str) -> Result<KeyToPath, CliError> {
    let Some((key, rest)) = s.split_once('=') else {
        return Err(CliError::msg(format_args!(
            "--item {s:?}: expected KEY=PATH or KEY=PATH:MODE"
        )));
    };
    let (path, mode) = match rest.rsplit_once(':') {
        Some((path, mode))
            if !mode.is_empty() && mode.bytes().all(|b| b.is_ascii_alphanumeric()) =>
        {
            let mode =
                parse_mode(mode).map_err(|e| CliError::msg(format_args!("--item {s:?}: {e}")))?;
            (path, Some(mode))
        }
        _ => (rest, None),
    };
    if key.is_empty() || path.is_empty() {
        return Err(CliError::msg(format_args!(
            "--item {s:?}: expected KEY=PATH or KEY=PATH:MODE"
        )));
    }
    Ok(KeyToPath {
        key: key.to_owned(),
        path: path.to_owned(),
        mode,
    })
}

/// The mounts the flags and files describe.
fn mounts(args: &MountArgs) -> Result<Vec<MountSpec>, CliError> {
    let mut out = Vec::new();
    for file in &args.config {
        out.extend(config::load_mount_file(file).map_err(CliError::msg)?);
    }
    if let (Some(secret), Some(dir)) = (&args.secret, &args.dir) {
        let ns = args
            .namespace
            .as_deref()
            .unwrap_or(config::DEFAULT_NAMESPACE);
        let (namespace, name) = parse_secret_ref(secret, ns)
            .map_err(|e| CliError::msg(format_args!("--secret: {e}")))?;
        let mut spec = MountSpec::new(namespace, name, dir.clone());
        spec.items = args
            .items
            .iter()
            .map(|i| parse_item(i))
            .collect::<Result<_, _>>()?;
        if let Some(m) = args.default_mode {
            spec.default_mode = m;
        }
        spec.optional = args.optional;
        out.push(spec);
    }
    Ok(out)
}

/// Runs `coffer mount`.
pub(super) async fn run(server: &ServerAddr, args: MountArgs) -> Result<ExitCode, CliError> {
    coffer_server::server::init_tracing();
    let specs = mounts(&args)?;
    if specs.is_empty() {
        return Err(CliError::msg(
            "nothing to mount: give --secret NAMESPACE/NAME --dir PATH, or --config FILE",
        ));
    }
    if specs.iter().all(|s| s.validate().is_err()) {
        let first = specs
            .iter()
            .find_map(|s| s.validate().err())
            .map(|e| e.to_string())
            .unwrap_or_default();
        return Err(CliError::msg(format_args!("no valid mount: {first}")));
    }
    let addr = server.clone();
    let connector: Connector = Arc::new(move || {
        let addr = addr.clone();
        Box::pin(async move {
            addr.connect().await.map_err(|e| {
                let s = e.to_string();
                s.strip_prefix("error: ").map(str::to_owned).unwrap_or(s)
            })
        })
    });
    if args.owner.is_some() && !rustix::process::geteuid().is_root() {
        return Err(CliError::msg(
            "--owner: only root can give the mounts to another user; run as that user instead",
        ));
    }
    let mut options = AgentOptions {
        once: args.once,
        once_timeout: args.timeout.unwrap_or(Duration::ZERO),
        access: DirAccess {
            owner: args.owner,
            group: args.group,
        },
        ..AgentOptions::default()
    };
    if let Some(max) = args.retry_max {
        options.retry_max = max;
        options.retry_initial = options.retry_initial.min(max);
    }
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    tokio::spawn(async move {
        let signal = wait_for_signal().await;
        tracing::info!("{signal} received: stopping the mount agent");
        token.cancel();
    });
    let report = Agent::new(specs, connector, options).run(shutdown).await;
    if args.once && !report.failures.is_empty() {
        return Err(CliError::msg(format_args!(
            "{} of {} mounts could not be written",
            report.failures.len(),
            report.mounts
        )));
    }
    Ok(ExitCode::SUCCESS)
}

async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => tokio::select! {
            _ = tokio::signal::ctrl_c() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        },
        Err(e) => {
            tracing::warn!("cannot watch for SIGTERM ({e}); only SIGINT stops the agent");
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn items() {
        let i = parse_item("password=db/pass:0400").unwrap();
        assert_eq!(
            (i.key.as_str(), i.path.as_str(), i.mode),
            ("password", "db/pass", Some(0o400))
        );
        let i = parse_item("k=p").unwrap();
        assert_eq!((i.path.as_str(), i.mode), ("p", None));
        assert!(parse_item("k").is_err());
        assert!(parse_item("=p").is_err());
        assert!(parse_item("k=p:0999").is_err());
    }
}
