//! `coffer-kms-pkcs11`: a Kubernetes KMS v2 plugin whose key-encryption key is an AES-256 key
//! inside a PKCS#11 token (an HSM, or SoftHSM2 for testing); see [`token`] for the key layout.
//! Serves the KMS v2 API on a unix socket.
//!
//! ```text
//! export COFFER_PKCS11_PIN_FILE=/etc/coffer-kms/pin     # or COFFER_PKCS11_PIN, never a flag
//! coffer-kms-pkcs11 rotate --token-label coffer          # generates version 1 (then 2, ...)
//! coffer-kms-pkcs11 serve  --token-label coffer --listen unix:///run/coffer-kms.sock
//! coffer-kms-pkcs11 list   --token-label coffer
//! coffer-kms-pkcs11 destroy --token-label coffer --version 1   # after `coffer migrate`
//! ```
//!
//! The user PIN comes from the file named by `--pin-file` (or `COFFER_PKCS11_PIN_FILE`), or from
//! the environment variable `COFFER_PKCS11_PIN`; it is never a flag value, so it never shows in
//! `ps`.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod token;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use coffer_kms::KmsEndpoint;
use cryptoki::types::AuthPin;
use zeroize::Zeroizing;

use crate::token::{TokenKek, TokenKms, TokenSettings};

/// The environment variable holding the user PIN.
const PIN_ENV: &str = "COFFER_PKCS11_PIN";

/// A Kubernetes KMS v2 plugin with its KEK in a PKCS#11 token.
#[derive(Debug, Parser)]
#[command(name = "coffer-kms-pkcs11", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Which token and key; every subcommand needs them.
#[derive(Debug, Args)]
struct TokenArgs {
    /// The PKCS#11 module (shared library).
    #[arg(
        long,
        env = "COFFER_PKCS11_MODULE",
        default_value = "/usr/lib/softhsm/libsofthsm2.so"
    )]
    module: PathBuf,
    /// The token's label.
    #[arg(
        long,
        env = "COFFER_PKCS11_TOKEN_LABEL",
        required_unless_present = "slot"
    )]
    token_label: Option<String>,
    /// The slot id (when no token label is given).
    #[arg(long, env = "COFFER_PKCS11_SLOT")]
    slot: Option<u64>,
    /// The label of the KEK's key objects.
    #[arg(long, env = "COFFER_PKCS11_KEY_LABEL", default_value = "coffer-kek")]
    key_label: String,
    /// A file holding the user PIN (else the COFFER_PKCS11_PIN environment variable).
    #[arg(long, env = "COFFER_PKCS11_PIN_FILE")]
    pin_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the KMS v2 API on a unix socket until SIGTERM or SIGINT.
    Serve {
        #[command(flatten)]
        token: TokenArgs,
        /// The socket to listen on: unix:///path/to/kms.sock.
        #[arg(long, value_name = "unix:///PATH")]
        listen: String,
        #[command(flatten)]
        hygiene: coffer_kms::hygiene::HygieneOptions,
    },
    /// Generate a new KEK version on the token and make it current (the first one too).
    Rotate {
        #[command(flatten)]
        token: TokenArgs,
    },
    /// List the KEK versions on the token and their key_ids.
    List {
        #[command(flatten)]
        token: TokenArgs,
    },
    /// Destroy an old KEK version (never the current one): run `coffer migrate` first.
    Destroy {
        #[command(flatten)]
        token: TokenArgs,
        /// The version to destroy.
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

fn read_pin(pin_file: Option<&PathBuf>) -> Result<AuthPin, String> {
    let pin = match pin_file {
        Some(path) => {
            // The PIN file must be owner-only.
            let bytes = coffer_kms::hygiene::read_checked(
                path,
                "PIN file",
                coffer_kms::hygiene::GROUP_OTHER_ACCESS,
            )?;
            let text = std::str::from_utf8(&bytes)
                .map_err(|_| format!("the PIN file {} is not UTF-8", path.display()))?;
            Zeroizing::new(text.trim_end_matches(['\n', '\r']).to_owned())
        }
        None => Zeroizing::new(std::env::var(PIN_ENV).map_err(|_| {
            format!("no PIN: give --pin-file (or COFFER_PKCS11_PIN_FILE), or set {PIN_ENV}")
        })?),
    };
    if pin.is_empty() {
        return Err("the PIN is empty".into());
    }
    Ok(AuthPin::from(pin.as_str()))
}

fn open(args: &TokenArgs) -> Result<TokenKek, String> {
    let pin = read_pin(args.pin_file.as_ref())?;
    TokenKek::open(
        TokenSettings {
            module: args.module.clone(),
            token_label: args.token_label.clone(),
            slot: args.slot,
            key_label: args.key_label.clone(),
        },
        pin,
    )
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Serve {
            token,
            listen,
            hygiene,
        } => {
            coffer_kms::logging::init_tracing();
            // The KEK stays on the token, but seeds pass through this process in plaintext.
            coffer_kms::hygiene::apply(&hygiene);
            let endpoint: KmsEndpoint = listen.parse().map_err(|e| format!("--listen: {e}"))?;
            let kek = open(&token)?;
            if kek.find_keys()?.is_empty() {
                return Err(format!(
                    "no AES key labelled {:?} on the token: run `coffer-kms-pkcs11 rotate` first",
                    token.key_label
                ));
            }
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start the async runtime: {e}"))?;
            runtime.block_on(async move {
                coffer_kms::plugin::serve_unix(
                    Arc::new(TokenKms(Arc::new(kek))),
                    endpoint.path(),
                    shutdown_signal(),
                )
                .await
                .map_err(|e| e.to_string())
            })
        }
        Command::Rotate { token } => {
            let k = open(&token)?.rotate()?;
            println!("version {} is current, key_id {}", k.version, k.key_id);
            Ok(())
        }
        Command::List { token } => {
            let keys = open(&token)?.find_keys()?;
            let current = keys.last().map(|k| k.version);
            println!("VERSION  KEY_ID                                   CURRENT");
            for k in &keys {
                let mark = if Some(k.version) == current {
                    "yes"
                } else {
                    ""
                };
                println!("{:<8} {:<40} {mark}", k.version, k.key_id);
            }
            Ok(())
        }
        Command::Destroy { token, version } => {
            let id = open(&token)?.destroy(version)?;
            println!("destroyed version {version} (key_id {id})");
            Ok(())
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_file_is_read_and_trimmed_and_an_empty_pin_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pin");
        std::fs::write(&path, "12 34\n").expect("write");
        // Readable by others: refused, naming the mode and the fix (issue 18).
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .expect("chmod");
        let e = read_pin(Some(&path)).expect_err("0644");
        assert!(e.contains("mode 0644") && e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod");
        let pin = read_pin(Some(&path)).expect("pin");
        assert_eq!(secrecy::ExposeSecret::expose_secret(&pin), "12 34");
        std::fs::write(&path, "\n").expect("write");
        assert!(read_pin(Some(&path)).expect_err("empty").contains("empty"));
        let missing = dir.path().join("missing");
        assert!(
            read_pin(Some(&missing))
                .expect_err("missing")
                .contains("cannot read")
        );
    }
}
