//! `coffer-kms-local`: a Kubernetes KMS v2 plugin whose key-encryption keys are versioned local
//! key files (see [`keyring`] for the layout). Serves the KMS v2 API on a unix socket; works with
//! Coffer (`coffer serve --kms unix:///path`) and with the Kubernetes API server alike.
//!
//! ```text
//! coffer-kms-local init   --key-dir /etc/coffer-kms/keys
//! coffer-kms-local serve  --key-dir /etc/coffer-kms/keys --listen unix:///run/coffer-kms.sock
//! coffer-kms-local rotate --key-dir /etc/coffer-kms/keys     # new current version
//! coffer-kms-local list   --key-dir /etc/coffer-kms/keys
//! coffer-kms-local remove --key-dir /etc/coffer-kms/keys --version 1   # after `coffer migrate`
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod keyring;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use coffer_kms::KmsEndpoint;

/// A Kubernetes KMS v2 plugin with versioned local key files.
#[derive(Debug, Parser)]
#[command(name = "coffer-kms-local", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The key directory, which every subcommand needs.
#[derive(Debug, Args)]
struct KeyDir {
    /// Directory of key versions (kek-NNNNNN.key files, mode 0600).
    #[arg(long, env = "COFFER_KMS_KEY_DIR")]
    key_dir: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the KMS v2 API on a unix socket until SIGTERM or SIGINT.
    Serve {
        #[command(flatten)]
        keys: KeyDir,
        /// The socket to listen on: unix:///path/to/kms.sock.
        #[arg(long, value_name = "unix:///PATH")]
        listen: String,
        #[command(flatten)]
        hygiene: coffer_kms::hygiene::HygieneOptions,
    },
    /// Create the key directory and its first version (no-op if it has versions).
    Init {
        #[command(flatten)]
        keys: KeyDir,
    },
    /// Add a new key version and make it current.
    Rotate {
        #[command(flatten)]
        keys: KeyDir,
    },
    /// List the key versions and their key_ids.
    List {
        #[command(flatten)]
        keys: KeyDir,
    },
    /// Delete an old key version (never the current one): run `coffer migrate` first.
    Remove {
        #[command(flatten)]
        keys: KeyDir,
        /// The version to delete.
        #[arg(long)]
        version: u32,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Serve {
            keys,
            listen,
            hygiene,
        } => serve(keys.key_dir, &listen, &hygiene),
        Command::Init { keys } => {
            let (v, id, created) = keyring::init(&keys.key_dir).map_err(|e| e.to_string())?;
            if created {
                println!("created version {v}, key_id {id}");
            } else {
                println!("already initialised: current version {v}, key_id {id}");
            }
            Ok(())
        }
        Command::Rotate { keys } => {
            let (v, id) = keyring::rotate(&keys.key_dir).map_err(|e| e.to_string())?;
            println!("version {v} is current, key_id {id}");
            Ok(())
        }
        Command::List { keys } => {
            let versions = keyring::read_versions(&keys.key_dir).map_err(|e| e.to_string())?;
            let current = versions.keys().next_back().copied();
            println!("VERSION  KEY_ID                                  CURRENT");
            for (v, kek) in &versions {
                let mark = if Some(*v) == current { "yes" } else { "" };
                println!("{v:<8} {:<39} {mark}", kek.key_id());
            }
            Ok(())
        }
        Command::Remove { keys, version } => {
            let id = keyring::remove(&keys.key_dir, version).map_err(|e| e.to_string())?;
            println!("removed version {version} (key_id {id})");
            Ok(())
        }
    }
}

fn serve(
    key_dir: PathBuf,
    listen: &str,
    hygiene: &coffer_kms::hygiene::HygieneOptions,
) -> Result<(), String> {
    coffer_kms::logging::init_tracing();
    // Before the KEKs are read: no core dumps, memory locked.
    coffer_kms::hygiene::apply(hygiene);
    let endpoint: KmsEndpoint = listen.parse().map_err(|e| format!("--listen: {e}"))?;
    let ring = keyring::Keyring::open(&key_dir).map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(async move {
        coffer_kms::plugin::serve_unix(Arc::new(ring), endpoint.path(), shutdown_signal())
            .await
            .map_err(|e| e.to_string())
    })
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("shutting down");
}
