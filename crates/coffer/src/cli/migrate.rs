//! `coffer migrate`: rewrite every record still under a seed whose KEK is not the KMS's current
//! one (after a KEK rotation), with a progress bar and a summary; then the old KEK version can be
//! removed from the plugin. Offline, like `coffer kms status` (see [`super::kms`]); resumable:
//! run it again after a crash and it rewrites what is left.

use std::process::ExitCode;

use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::error::CliError;
use super::kms::OfflineStoreArgs;
use coffer_core::store::migrate::{MigrateOptions, MigrateProgress, migrate};

/// `coffer migrate`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// The data directory and KMS.
    #[command(flatten)]
    pub store: OfflineStoreArgs,
    /// Records per batch; each batch is one atomic, fsync'd write.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch_size: u32,
    /// Keep old seeds in the seeds table even when no record uses them any more.
    #[arg(long)]
    pub keep_seeds: bool,
    /// Do not draw a progress bar (it is drawn only on a terminal anyway).
    #[arg(long)]
    pub no_progress: bool,
}

/// Runs `coffer migrate`.
pub(super) async fn run(args: MigrateArgs) -> Result<ExitCode, CliError> {
    let (store, _config) = args.store.open().await?;
    let bar = if args.no_progress {
        ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden())
    } else {
        ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} migrating [{bar:40}] {pos}/{len} records ({per_sec}, eta {eta}) {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let options = MigrateOptions {
        batch_size: args.batch_size as usize,
        retire_seeds: !args.keep_seeds,
    };
    let on_progress = |p: &MigrateProgress| {
        bar.set_length(p.total);
        bar.set_position(p.rewritten + p.failed);
        if p.failed > 0 {
            bar.set_message(format!("{} failed", p.failed));
        }
    };
    let result = migrate(&store, &options, on_progress).await;
    bar.finish_and_clear();
    let summary = result.map_err(CliError::msg)?;
    store
        .sync()
        .await
        .map_err(|e| CliError::msg(format_args!("cannot close the store: {e}")))?;
    println!("current key_id: {}", summary.key_id);
    if summary.stale_seeds.is_empty() {
        println!("nothing to migrate: every seed is under the current key_id");
    } else {
        println!(
            "seeds under old key_ids: {}",
            join(summary.stale_seeds.iter())
        );
    }
    println!(
        "rewrote {} of {} records in {:.2}s ({:.0} records/s); {} failed",
        summary.rewritten,
        summary.scanned,
        summary.elapsed.as_secs_f64(),
        summary.records_per_second(),
        summary.failed_count
    );
    for (key, why) in &summary.failed {
        println!("  failed: {key}: {why}");
    }
    if summary.failed_count as usize > summary.failed.len() {
        println!(
            "  ... and {} more",
            summary.failed_count as usize - summary.failed.len()
        );
    }
    if !summary.retired_seeds.is_empty() {
        println!(
            "retired seeds no record uses: {}",
            join(summary.retired_seeds.iter())
        );
    }
    if summary.remaining == 0 {
        println!(
            "no record is under an old key_id: the old KEK versions can be removed from the KMS"
        );
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "{} records are still under old key_ids: fix the failures above and run `coffer migrate` again",
            summary.remaining
        );
        Ok(ExitCode::from(1))
    }
}

fn join<'a>(ids: impl Iterator<Item = &'a u32>) -> String {
    ids.map(ToString::to_string).collect::<Vec<_>>().join(", ")
}
