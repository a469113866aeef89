//! Coffer: an encrypted-at-rest store for Kubernetes-style Secrets.
//!
//! # Layout
//!
//! - [`model`]: the Secret object, Kubernetes validation, selectors, and the plaintext encoding
//!   that the envelope seals.
//! - [`storage`]: the `Backend` trait (ordered KV, atomic batches, explicit durability) and the
//!   sled backend with its group-committed write-ahead log.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod cli;
pub mod crypto;
pub mod kms;
pub mod model;
pub mod proto;
pub mod server;
pub mod storage;
pub mod store;
