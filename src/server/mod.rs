//! The network face of Coffer: the gRPC Secret service, health, reflection, metrics, and the
//! `coffer serve` entry point.
//!
//! (Skeleton: `ServeArgs` is the contract between the CLI and the server.)

pub mod config;

pub use self::config::ServeArgs;
