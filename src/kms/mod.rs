//! Key management: the [`Kms`] trait (Kubernetes KMS v2 semantics), the local key-file KEK used
//! by the embedded default, and the seed manager that keeps KMS calls off the write path.

mod local;
pub mod seeds;

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;
use zeroize::Zeroizing;

pub use self::local::LocalKek;
pub use self::seeds::{SeedError, SeedManager, SeedPolicy};

/// The answer to a KMS v2 `Status` call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KmsStatus {
    /// API version; `v2` for a KMS v2 plugin.
    pub version: String,
    /// `ok` when healthy.
    pub healthz: String,
    /// The id of the key-encryption key currently used for `Encrypt`. Public, not secret.
    pub key_id: String,
}

impl KmsStatus {
    /// Whether the status is healthy by the KMS v2 rules: version `v2` (or `v2beta1`), healthz
    /// `ok`, and a non-empty key_id under 1 kB.
    pub fn check(&self) -> Result<(), KmsError> {
        if self.version != "v2" && self.version != "v2beta1" {
            return Err(KmsError::InvalidResponse(format!(
                "status version is {:?}, expected \"v2\"",
                self.version
            )));
        }
        if self.healthz != "ok" {
            return Err(KmsError::Unavailable(format!(
                "plugin reports healthz {:?}",
                self.healthz
            )));
        }
        check_key_id(&self.key_id)
    }
}

/// Checks a key_id from the plugin: non-empty and under 1 kB.
pub fn check_key_id(key_id: &str) -> Result<(), KmsError> {
    if key_id.is_empty() {
        return Err(KmsError::InvalidResponse("key_id is empty".into()));
    }
    if key_id.len() >= 1024 {
        return Err(KmsError::InvalidResponse(format!(
            "key_id is {} bytes, must be under 1024",
            key_id.len()
        )));
    }
    Ok(())
}

/// The answer to a KMS v2 `Encrypt` call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wrapped {
    /// The wrapped bytes (not secret: only the plugin can unwrap them).
    pub ciphertext: Vec<u8>,
    /// The key_id of the KEK that wrapped them.
    pub key_id: String,
    /// Plugin-specific data that must be handed back on `Decrypt`.
    pub annotations: BTreeMap<String, Vec<u8>>,
}

/// The KMS failed or refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KmsError {
    /// The plugin cannot be reached or reports itself unhealthy.
    #[error("KMS unavailable: {0}")]
    Unavailable(String),
    /// The plugin refused the request (for example an unknown key_id, or a ciphertext it cannot
    /// unwrap).
    #[error("KMS refused the request: {0}")]
    Rejected(String),
    /// The plugin answered with something that breaks the KMS v2 contract.
    #[error("KMS gave an invalid response: {0}")]
    InvalidResponse(String),
}

/// A key-encryption service with Kubernetes KMS v2 semantics. Implementations: [`LocalKek`]
/// (a key file, the embedded default) and the KMS v2 gRPC client.
#[async_trait]
pub trait Kms: Send + Sync + fmt::Debug + 'static {
    /// Health and the current key_id.
    async fn status(&self) -> Result<KmsStatus, KmsError>;

    /// Wraps `plaintext` (a seed) under the current KEK. `uid` is a fresh id for this call.
    async fn encrypt(&self, uid: &str, plaintext: &[u8]) -> Result<Wrapped, KmsError>;

    /// Unwraps what [`Kms::encrypt`] returned; refuses a key_id the KMS does not know.
    async fn decrypt(&self, uid: &str, wrapped: &Wrapped) -> Result<Zeroizing<Vec<u8>>, KmsError>;

    /// A one-line description for logs (never a secret), e.g. `local key file /path`.
    fn describe(&self) -> String;
}
