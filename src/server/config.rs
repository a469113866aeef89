//! `coffer serve` settings: flags, with an optional TOML file holding the same settings.

use std::path::PathBuf;

use clap::Args;

/// Settings of `coffer serve`. Every flag can also be set in the `--config` TOML file (same names,
/// with `_` for `-`); a flag given on the command line wins over the file.
#[derive(Debug, Clone, Args, Default)]
pub struct ServeArgs {
    /// Data directory (sled database, write-ahead log, and the local KEK file).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Address to listen on: HOST:PORT or unix:///path/to.sock. Repeatable.
    #[arg(long)]
    pub listen: Vec<String>,
    /// AEAD for new records: aes-256-gcm or xchacha20-poly1305.
    #[arg(long)]
    pub aead: Option<String>,
    /// Prometheus text endpoint address (HOST:PORT); off when unset.
    #[arg(long)]
    pub metrics_listen: Option<String>,
    /// Acknowledge writes before they are fsync'd (a power loss may lose ~100 ms of writes).
    #[arg(long)]
    pub relaxed_durability: bool,
    /// TOML file with the same settings.
    #[arg(long)]
    pub config: Option<PathBuf>,
}
