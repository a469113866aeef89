//! `coffer serve`: hands the settings to [`crate::server::run`] on a multi-threaded runtime.

use super::error::CliError;
use crate::server::ServeArgs;

/// Runs the server until it shuts down (SIGTERM/SIGINT); the one place the CLI touches it.
pub(super) fn serve(args: ServeArgs) -> Result<(), CliError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::msg(format_args!("cannot start the async runtime: {e}")))?;
    runtime
        .block_on(crate::server::run(args))
        .map_err(CliError::msg)
}
