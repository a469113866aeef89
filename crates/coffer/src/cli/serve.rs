//! `coffer serve`: hands the settings to [`coffer_server::server::run`] on a multi-threaded runtime.

use super::error::CliError;
use coffer_server::server::ServeArgs;

/// Runs the server until it shuts down (SIGTERM/SIGINT); the one place the CLI touches it.
pub(super) fn serve(args: ServeArgs) -> Result<(), CliError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::msg(format_args!("cannot start the async runtime: {e}")))?;
    runtime
        .block_on(coffer_server::server::run(args))
        .map_err(CliError::msg)
}
