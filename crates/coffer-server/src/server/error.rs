//! The errors of starting and running a server.

use std::io;

use coffer_core::store::StoreError;

/// Errors of starting or running the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A setting is wrong; the message names it.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// An address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address, as configured.
        addr: String,
        /// Why.
        source: io::Error,
    },
    /// Another I/O failure.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Why it failed.
        source: io::Error,
    },
    /// The store could not be opened or synced.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The gRPC transport failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The reflection service could not be built.
    #[error("reflection service: {0}")]
    Reflection(String),
    /// A server task panicked or was cancelled.
    #[error("server task failed: {0}")]
    Task(String),
}
