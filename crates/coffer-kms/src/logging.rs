//! The log setup shared by `coffer serve` and the KMS plugins: text lines on stderr, filtered by
//! `RUST_LOG` (default `info`), colored only on a terminal.

use std::io;

/// Installs the stderr log subscriber (a no-op when one is already installed).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_ansi(io::IsTerminal::is_terminal(&io::stderr()))
        .try_init();
}
