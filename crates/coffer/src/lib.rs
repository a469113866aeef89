//! The `coffer` binary's library: the kubectl-like CLI, `coffer serve`'s command line, the mount
//! agent and `coffer exec`.
//!
//! # Layout
//!
//! - [`cli`]: the `coffer` commands (thin: they call the engine, the server or the gRPC API).
//! - [`mount`]: the mount agent (Secrets as files, kept current, in the kubelet's atomic-writer
//!   layout) and environment variables from Secrets (`coffer exec`).
//! - [`credentials`]: the client side of authentication (TLS, client certificates, bearer
//!   tokens) that the CLI and the mount agent dial with.
//!
//! # What this crate may use
//!
//! The top layer: `coffer-server`, `coffer-kms` and `coffer-core`. Nothing names it.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod cli;
pub mod credentials;
pub mod mount;
