//! `coffer kms status`, and what it shares with `coffer migrate`: opening a data directory
//! offline.
//!
//! Both commands work on the data directory directly, with the server stopped (sled locks the
//! directory, so a running server is detected and named). That keeps them simple and exact: no
//! admin API to secure, and the counts are of the records on disk. They take the same `--kms`,
//! `--kms-timeout` and `--config` settings as `coffer serve`, so the same flags or the same
//! config file open the same store.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::error::CliError;
use coffer_core::model::timestamp::format_rfc3339;
use coffer_core::storage::Durability;
use coffer_core::store::{Quotas, Store, StoreConfig};
use coffer_kms::KmsEndpoint;
use coffer_kms::config::LOCAL_KEK_FILE;
use coffer_server::server::config as serve;
use coffer_server::server::{ServeArgs, ServeConfig};
use coffer_server::settings::parse_duration;

/// Where the store is and which KMS protects it, for the commands that open a data directory
/// offline (`coffer kms status`, `coffer migrate`).
#[derive(Debug, Clone, Args)]
pub struct OfflineStoreArgs {
    /// Data directory [default: ./coffer-data]. The server must be stopped.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// KMS v2 plugin socket (unix:///path/to/kms.sock), as given to `coffer serve`; unset: the
    /// local key file <data-dir>/kek.key.
    #[arg(long, value_name = "unix:///PATH")]
    pub kms: Option<KmsEndpoint>,
    /// Deadline of each KMS call [default: 3s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub kms_timeout: Option<Duration>,
    /// The uid the KMS plugin must run as (as `coffer serve --kms-peer-uid`).
    #[arg(long, value_name = "UID")]
    pub kms_peer_uid: Option<u32>,
    /// The `coffer serve` TOML config file (its data_dir, kms, kms_timeout and aead are used).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// `coffer kms ...`.
#[derive(Debug, Args)]
pub struct KmsArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: KmsCommand,
}

/// The `kms` subcommands.
#[derive(Debug, Subcommand)]
pub enum KmsCommand {
    /// Show the KMS's health and key_id, the seeds, and how many records each protects
    /// (offline: stop the server first). Exit code 3 when the KMS does not answer well.
    Status(KmsStatusArgs),
}

/// `coffer kms status`.
#[derive(Debug, Args)]
pub struct KmsStatusArgs {
    /// The data directory and KMS.
    #[command(flatten)]
    pub store: OfflineStoreArgs,
    /// Output format: table (default) or json.
    #[arg(short, long, default_value = "table", value_parser = ["table", "json"])]
    pub output: String,
}

impl OfflineStoreArgs {
    /// Resolves the settings as `coffer serve` would.
    pub(super) fn resolve(&self) -> Result<ServeConfig, CliError> {
        ServeArgs {
            config: self.config.clone(),
            store: serve::StoreArgs {
                data_dir: self.data_dir.clone(),
                ..serve::StoreArgs::default()
            },
            kms: serve::KmsArgs {
                kms: self.kms.clone(),
                kms_timeout: self.kms_timeout,
                kms_peer_uid: self.kms_peer_uid,
                ..serve::KmsArgs::default()
            },
            ..ServeArgs::default()
        }
        .resolve()
        .map_err(CliError::msg)
    }

    /// Opens the store in the data directory with its KMS (the server must be stopped).
    pub(super) async fn open(&self) -> Result<(Store, ServeConfig), CliError> {
        let config = self.resolve()?;
        let dir = &config.data_dir;
        if !dir.join("db").is_dir() {
            return Err(CliError::msg(format_args!(
                "{} holds no Coffer data (no db directory); set --data-dir",
                dir.display()
            )));
        }
        if config.kms.endpoint.is_none() && !dir.join(LOCAL_KEK_FILE).is_file() {
            return Err(CliError::msg(format_args!(
                "{} has no local key file {LOCAL_KEK_FILE}; if the server runs with --kms, pass the same --kms",
                dir.display()
            )));
        }
        let kms = config
            .kms
            .open(dir)
            .map_err(|e| CliError::msg(format_args!("KMS: {e}")))?;
        // Offline tools write no new Secrets: no quotas.
        let store_config = StoreConfig {
            quotas: Quotas::unlimited(),
            ..config.store_config()
        };
        let store = Store::open_dir(dir, Durability::Sync, store_config, kms)
            .await
            .map_err(|e| {
                let text = e.to_string();
                if text.contains("lock") || text.contains("WouldBlock") {
                    CliError::msg(format_args!(
                        "cannot open {}: {text} (is `coffer serve` running on it? stop it first: this command works offline)",
                        dir.display()
                    ))
                } else {
                    CliError::msg(format_args!("cannot open {}: {text}", dir.display()))
                }
            })?;
        Ok((store, config))
    }
}

/// Runs `coffer kms ...`.
pub(super) async fn run(args: KmsArgs) -> Result<ExitCode, CliError> {
    match args.command {
        KmsCommand::Status(a) => status(a).await,
    }
}

async fn status(args: KmsStatusArgs) -> Result<ExitCode, CliError> {
    let (store, config) = args.store.open().await?;
    let seeds = store.seeds();
    // `open` asked for the status once already; this records a fresh answer or error.
    let status = seeds.refresh().await;
    let health = seeds.kms_health();
    let counts = store
        .records_per_seed()
        .map_err(|e| CliError::msg(format_args!("cannot count records: {e}")))?;
    // Values the API server encrypted itself (k8s:enc:): the Secret service cannot show them.
    // Counting opens every current Secret; a KMS that cannot unwrap leaves it unknown.
    let apiserver_encrypted = store.count_apiserver_encrypted().await.ok();
    let current_key = seeds.current_key_id();
    let infos = seeds.seeds();
    // The seed new writes use: the current one, if it is still under the current KEK.
    let current_seed = seeds.current_id().filter(|id| {
        infos
            .iter()
            .any(|s| s.id == *id && current_key.as_deref() == Some(s.key_id.as_str()))
    });
    let kms = config.kms.describe(&config.data_dir);
    let stale: u64 = infos
        .iter()
        .filter(|s| current_key.as_deref().is_some_and(|k| k != s.key_id))
        .map(|s| counts.by_seed.get(&s.id).copied().unwrap_or(0))
        .sum();
    let out = if args.output == "json" {
        let seeds_json: Vec<serde_json::Value> = infos
            .iter()
            .map(|s| {
                serde_json::json!({
                    "id": s.id,
                    "keyId": s.key_id,
                    "created": format_rfc3339(s.created_unix),
                    "currentKeyId": current_key.as_deref() == Some(s.key_id.as_str()),
                    "currentSeed": current_seed == Some(s.id),
                    "unwrapped": s.available,
                    "records": counts.by_seed.get(&s.id).copied().unwrap_or(0),
                })
            })
            .collect();
        let v = serde_json::json!({
            "kms": kms,
            "healthy": status.is_ok(),
            "health": match &status { Ok(_) => "ok".to_owned(), Err(e) => e.to_string() },
            "version": health.last_status.as_ref().map(|s| s.version.clone()),
            "keyId": current_key,
            "seeds": seeds_json,
            "records": counts.total,
            "unreadableRecords": counts.unreadable,
            "recordsUnderOldKeyIds": stale,
            "apiserverEncryptedSecrets": apiserver_encrypted,
        });
        format!(
            "{}\n",
            serde_json::to_string_pretty(&v).unwrap_or_else(|_| "{}".into())
        )
    } else {
        let mut o = String::new();
        let _ = writeln!(o, "KMS:      {kms}");
        let _ = match &status {
            Ok(s) => writeln!(o, "Health:   ok (Status version {})", s.version),
            Err(e) => writeln!(o, "Health:   FAILING: {e}"),
        };
        let _ = writeln!(
            o,
            "Key ID:   {}",
            current_key
                .as_deref()
                .unwrap_or("<unknown: no good Status>")
        );
        let _ = writeln!(o, "Records:  {}", counts.total);
        let _ = writeln!(o);
        let rows: Vec<[String; 6]> = infos
            .iter()
            .map(|s| {
                [
                    s.id.to_string(),
                    s.key_id.clone(),
                    format_rfc3339(s.created_unix),
                    match current_key.as_deref() {
                        Some(k) if k == s.key_id => "current".to_owned(),
                        Some(_) => "old".to_owned(),
                        None => "unknown".to_owned(),
                    },
                    if s.available { "yes" } else { "NO" }.to_owned(),
                    counts.by_seed.get(&s.id).copied().unwrap_or(0).to_string(),
                ]
            })
            .collect();
        let header = ["SEED", "KEY_ID", "CREATED", "KEK", "UNWRAPPED", "RECORDS"];
        let mut widths = header.map(str::len);
        for r in &rows {
            for (w, c) in widths.iter_mut().zip(r.iter()) {
                *w = (*w).max(c.len());
            }
        }
        let mut line = |cells: &[&str]| {
            let mut l = String::new();
            for (i, c) in cells.iter().enumerate() {
                if i + 1 == cells.len() {
                    l.push_str(c);
                } else {
                    let _ = write!(l, "{c:<w$}   ", w = widths[i]);
                }
            }
            let _ = writeln!(o, "{l}");
        };
        line(&header);
        for r in &rows {
            line(&r.iter().map(String::as_str).collect::<Vec<_>>());
        }
        if infos.is_empty() {
            let _ = writeln!(o, "(no seeds yet: the first write makes one)");
        }
        if counts.unreadable > 0 {
            let _ = writeln!(
                o,
                "\n{} records have a header that cannot be read.",
                counts.unreadable
            );
        }
        match apiserver_encrypted {
            Some(0) => {}
            Some(n) => {
                let _ = writeln!(
                    o,
                    "\n{n} Secrets were encrypted by the API server itself (k8s:enc:): Coffer keeps them sealed but serves them through the etcd door only. Turn the API server's encryption of Secrets off and rewrite them to see them through Coffer."
                );
            }
            None => {
                let _ = writeln!(
                    o,
                    "\nSecrets encrypted by the API server itself: unknown (the Secrets could not all be opened)."
                );
            }
        }
        if stale > 0 {
            let _ = writeln!(
                o,
                "\n{stale} records are under a KEK that is not current: run `coffer migrate` to rewrite them."
            );
        }
        o
    };
    print!("{out}");
    store
        .sync()
        .await
        .map_err(|e| CliError::msg(format_args!("cannot close the store: {e}")))?;
    Ok(if status.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}
