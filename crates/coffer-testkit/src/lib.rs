//! Shared helpers of Coffer's integration tests, one place for every crate's tests: test KMSes
//! and stores ([`engine`]), in-process servers ([`server`]), certificates, tokens and policies
//! ([`auth`]), plugin and `coffer serve` child processes ([`kms`]), and the `coffer` binary's
//! runner ([`cli`]).
//!
//! A dev-dependency only: no production crate names it.
#![allow(
    missing_docs,
    missing_debug_implementations,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::new_without_default
)]

pub mod auth;
pub mod cli;
pub mod engine;
pub mod kms;
pub mod server;
