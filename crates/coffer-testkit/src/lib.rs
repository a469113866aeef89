//! Shared helpers of Coffer's integration tests, one place for every crate's tests: test KMSes
//! and stores ([`engine`]); the one in-process test server, [`server::TestServer::builder`]
//! (store, KMS, options, security, listeners), with its channels and request helpers
//! ([`server`]); child processes: the built binaries and [`process::Serve`], the one way to
//! start `coffer serve` ([`process`]); certificates, tokens and policies ([`auth`]); the KMS
//! plugin and its clients ([`kms`]); the `coffer` CLI's runner and server ([`cli`]); and a
//! real etcd member with etcd clients, for the etcd door's differential tests ([`etcd`]).
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
pub mod etcd;
pub mod kms;
pub mod process;
pub mod require;
pub mod server;
