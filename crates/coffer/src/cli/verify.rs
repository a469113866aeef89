//! `coffer verify --data-dir D`: checks a data directory's integrity offline (issue 17).
//!
//! With the server stopped, it unwraps the store's integrity seed through the same KMS as
//! `coffer serve` (same `--kms`, `--config` flags), recomputes the state digest from every
//! record, and checks the checkpoint record, the database's lsn record, the write-ahead log's
//! authentication and continuity, the database against the checkpoint, every seed's binding
//! to the store, and (with `--anchor-file`) the anchor. It prints the record count, the store
//! revision and every mismatch, and exits 1 if there is any: nothing is written.
//!
//! `--storage etcd://...` waits for the etcd backend (issue 16): its digest key is kept with
//! the same arithmetic (`coffer_core::crypto::integrity`), and its checks plug in beside these.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::error::CliError;
use super::kms::OfflineStoreArgs;
use coffer_kms::config::LOCAL_KEK_FILE;

/// `coffer verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The data directory and KMS.
    #[command(flatten)]
    pub store: OfflineStoreArgs,
    /// The anchor file `coffer serve --anchor-file` keeps: the directory must not be older.
    #[arg(long, value_name = "PATH")]
    pub anchor_file: Option<PathBuf>,
    /// Output format: text (default) or json.
    #[arg(short, long, default_value = "text", value_parser = ["text", "json"])]
    pub output: String,
}

/// Runs `coffer verify`.
pub(super) async fn run(args: VerifyArgs) -> Result<ExitCode, CliError> {
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
        if report.mismatches.is_empty() {
            out.push_str("result:         ok, no mismatch\n");
        } else {
            out.push_str(&format!(
                "result:         {} mismatch(es)\n",
                report.mismatches.len()
            ));
            for m in &report.mismatches {
                out.push_str(&format!("MISMATCH: {m}\n"));
            }
        }
        out
    };
    let _ = super::printer::Out::new().print(&out);
    Ok(if report.mismatches.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
