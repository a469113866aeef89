//! `coffer verify --data-dir D`: checks a data directory's integrity offline (issue 17).
//!
//! With the server stopped, it unwraps the store's integrity seed through the same KMS as
//! `coffer serve` (same `--kms`, `--config` flags), recomputes the state digest from every
//! record, and checks the checkpoint record, the database's lsn record, the write-ahead log's
//! authentication and continuity, the database against the checkpoint, every seed's binding
//! to the store, and (with `--anchor-file`) the anchor. It prints the record count, the store
//! revision and every mismatch, and exits 1 if there is any: nothing is written.
//!
//! `coffer verify --storage etcd://HOST:PORT[/PREFIX] (--kms ...|--kek-file P)` checks a store
//! on etcd instead, read-only (the replicas may keep running): its state digest keys against
//! the digest recomputed from every record, every seed's binding, and every Secret's record at
//! its etcd version (an older ciphertext put back with etcdctl does not open there); see
//! `coffer_etcd::verify`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;

use super::error::CliError;
use super::kms::OfflineStoreArgs;
use coffer_core::kms::{Kms, LocalKek};
use coffer_kms::config::LOCAL_KEK_FILE;
use coffer_server::server::ServeArgs;
use coffer_server::server::config as serve;

/// `coffer verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The data directory and KMS.
    #[command(flatten)]
    pub store: OfflineStoreArgs,
    /// The anchor file `coffer serve --anchor-file` keeps: the directory must not be older.
    #[arg(long, value_name = "PATH")]
    pub anchor_file: Option<PathBuf>,
    /// Verify the store on etcd instead of a data directory (as `coffer serve --storage`),
    /// read-only: etcd://HOST:PORT[,HOST:PORT...][/PREFIX]. Needs the replicas' KEK (--kms or
    /// --kek-file).
    #[arg(long, value_name = "etcd://HOST:PORT[,...][/PREFIX]")]
    pub storage: Option<coffer_etcd::StorageUrl>,
    /// The CA that signed the etcd members' certificates (TLS towards etcd).
    #[arg(long, value_name = "PATH")]
    pub storage_ca_file: Option<PathBuf>,
    /// A client certificate for etcd (PEM; with --storage-key-file).
    #[arg(long, value_name = "PATH")]
    pub storage_cert_file: Option<PathBuf>,
    /// The key of --storage-cert-file (PEM).
    #[arg(long, value_name = "PATH")]
    pub storage_key_file: Option<PathBuf>,
    /// The replicas' shared key file (as `coffer serve --kek-file`), with --storage.
    #[arg(long, value_name = "PATH")]
    pub kek_file: Option<PathBuf>,
    /// Output format: text (default) or json.
    #[arg(short, long, default_value = "text", value_parser = ["text", "json"])]
    pub output: String,
}

/// Runs `coffer verify`.
pub(super) async fn run(args: VerifyArgs) -> Result<ExitCode, CliError> {
    if args.storage.is_some() {
        return run_etcd(args).await;
    }
    if args.kek_file.is_some()
        || args.storage_ca_file.is_some()
        || args.storage_cert_file.is_some()
        || args.storage_key_file.is_some()
    {
        return Err(CliError::msg(
            "--kek-file and --storage-ca-file/--storage-cert-file/--storage-key-file go with \
             --storage etcd://...",
        ));
    }
    let config = args.store.resolve()?;
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
    let report = coffer_core::kms::integrity::verify_data_dir(
        &dir.join("db"),
        &*kms,
        args.anchor_file.as_deref(),
    )
    .await
    .map_err(|e| {
        let text = e.to_string();
        if text.contains("lock") || text.contains("WouldBlock") {
            CliError::msg(format_args!(
                "cannot verify {}: {text} (is `coffer serve` running on it? stop it first: this command works offline)",
                dir.display()
            ))
        } else {
            CliError::msg(format_args!("cannot verify {}: {text}", dir.display()))
        }
    })?;
    let out = if args.output == "json" {
        let v = serde_json::json!({
            "dataDir": dir.display().to_string(),
            "store": report.store_id.map(|s| s.to_string()),
            "records": report.records,
            "revision": report.revision,
            "lsn": report.lsn,
            "checkpointLsn": report.checkpoint_lsn,
            "pendingLogEntries": report.pending_log_entries,
            "mismatches": report.mismatches,
            "ok": report.mismatches.is_empty(),
        });
        format!(
            "{}\n",
            serde_json::to_string_pretty(&v).unwrap_or_else(|_| v.to_string())
        )
    } else {
        let mut out = format!(
            "data directory: {}\nstore:          {}\nrecords:        {}\nrevision:       {}\nlsn:            {} (checkpoint {}, {} log entries to replay)\n",
            dir.display(),
            report
                .store_id
                .map_or_else(|| "-".to_owned(), |s| s.to_string()),
            report.records,
            report
                .revision
                .map_or_else(|| "-".to_owned(), |r| r.to_string()),
            report.lsn,
            report.checkpoint_lsn,
            report.pending_log_entries,
        );
        push_result(&mut out, &report.mismatches);
        out
    };
    let _ = super::printer::Out::new().print(&out);
    Ok(if report.mismatches.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `coffer verify --storage etcd://...`.
async fn run_etcd(args: VerifyArgs) -> Result<ExitCode, CliError> {
    if args.anchor_file.is_some() {
        return Err(CliError::msg(
            "--anchor-file is for a data directory; a store on etcd keeps its state digest in \
             etcd",
        ));
    }
    let config = ServeArgs {
        config: args.store.config.clone(),
        store: serve::StoreArgs {
            storage: args.storage.clone(),
            storage_ca_file: args.storage_ca_file.clone(),
            storage_cert_file: args.storage_cert_file.clone(),
            storage_key_file: args.storage_key_file.clone(),
            ..serve::StoreArgs::default()
        },
        kms: serve::KmsArgs {
            kms: args.store.kms.clone(),
            kms_timeout: args.store.kms_timeout,
            kms_peer_uid: args.store.kms_peer_uid,
            kek_file: args.kek_file.clone(),
            ..serve::KmsArgs::default()
        },
        ..ServeArgs::default()
    }
    .resolve()
    .map_err(CliError::msg)?;
    let Some((url, tls)) = &config.storage else {
        return Err(CliError::msg("--storage: missing"));
    };
    let kms: Arc<dyn Kms> = match (&config.kek_file, &config.kms.endpoint) {
        (Some(path), _) => Arc::new(
            LocalKek::open_existing(path)
                .map_err(|e| CliError::msg(format_args!("--kek-file {}: {e}", path.display())))?,
        ),
        (None, Some(endpoint)) => Arc::new(
            coffer_kms::GrpcKms::with_peer_uid(
                endpoint.path(),
                config.kms.timeout,
                config.kms.peer_uid,
            )
            .map_err(|e| CliError::msg(format_args!("--kms: {e}")))?,
        ),
        (None, None) => {
            return Err(CliError::msg(format_args!(
                "--storage {url}: needs --kms or --kek-file"
            )));
        }
    };
    let client = coffer_etcd::EtcdClient::new(url, tls)
        .map_err(|e| CliError::msg(format_args!("--storage {url}: {e}")))?;
    let report = coffer_etcd::verify::verify(&client, &*kms)
        .await
        .map_err(|e| CliError::msg(format_args!("cannot verify {url}: {e}")))?;
    let out = if args.output == "json" {
        let v = serde_json::json!({
            "storage": url.to_string(),
            "store": report.store_id.map(|s| s.to_string()),
            "records": report.records,
            "secrets": report.secrets,
            "revision": report.revision,
            "mismatches": report.mismatches,
            "ok": report.mismatches.is_empty(),
        });
        format!(
            "{}\n",
            serde_json::to_string_pretty(&v).unwrap_or_else(|_| v.to_string())
        )
    } else {
        let mut out = format!(
            "storage:        {url}\nstore:          {}\nrecords:        {} ({} Secrets)\nrevision:       {}\n",
            report
                .store_id
                .map_or_else(|| "-".to_owned(), |s| s.to_string()),
            report.records,
            report.secrets,
            report.revision,
        );
        push_result(&mut out, &report.mismatches);
        out
    };
    let _ = super::printer::Out::new().print(&out);
    Ok(if report.mismatches.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The result line and one line per mismatch.
fn push_result(out: &mut String, mismatches: &[String]) {
    if mismatches.is_empty() {
        out.push_str("result:         ok, no mismatch\n");
    } else {
        out.push_str(&format!(
            "result:         {} mismatch(es)\n",
            mismatches.len()
        ));
        for m in mismatches {
            out.push_str(&format!("MISMATCH: {m}\n"));
        }
    }
}
