//! Key management: the [`Kms`] trait (Kubernetes KMS v2 semantics), its implementations, and
//! the seed manager that keeps KMS calls off the write path.
//!
//! # Layout
//!
//! - [`Kms`], [`KmsStatus`], [`Wrapped`], [`KmsError`]: the KMS v2 contract, and the checks of
//!   what a plugin answers ([`KmsStatus::check`], [`Wrapped::check`]).
//! - `local`: [`LocalKek`], a key file beside the data (the embedded default).
//! - The KMS v2 gRPC client and the plugin-serving helpers are the `coffer-kms` crate's: this
//!   crate holds only the contract they implement.
//! - [`seeds`]: [`SeedManager`]: seeds wrapped once, unwrapped once at start, replaced on a
//!   key_id change; the [`OutagePolicy`] (writes refused once the last good `Status` is older
//!   than the grace period; the poll intervals).
//! - [`poller`]: the `Status` poller (every minute while healthy, every 10 s while failing).
//! - Rewriting records still under seeds of a retired key_id (`coffer migrate`) is the store's
//!   (`store::migrate`), beside `reseal`.

pub mod integrity;
mod local;
pub mod poller;
pub mod seeds;

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;
use zeroize::Zeroizing;

pub use self::local::{KMS_RECORD_FILE, LOCAL_KEK_FILE, LocalKek, RecordedKms};
pub use self::seeds::{OutagePolicy, SeedError, SeedManager, SeedPolicy};

/// The KMS v2 API version a healthy plugin reports.
pub const KMS_API_VERSION: &str = "v2";
/// The largest key_id, wrapped ciphertext or plaintext a KMS v2 call carries, in bytes (the
/// Kubernetes API server's limit: 1 kB).
pub const MAX_WRAPPED_LEN: usize = 1024;
/// The largest total size of an `Encrypt` response's annotations, keys plus values, in bytes
/// (the Kubernetes API server's limit: 32 kB).
pub const MAX_ANNOTATIONS_LEN: usize = 32 * 1024;

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
    /// `ok`, and a non-empty key_id of at most 1 kB.
    pub fn check(&self) -> Result<(), KmsError> {
        if self.version != KMS_API_VERSION && self.version != "v2beta1" {
            return Err(KmsError::InvalidResponse(format!(
                "Status version is {:?}, expected \"v2\"",
                truncate_for_message(&self.version)
            )));
        }
        if self.healthz != "ok" {
            return Err(KmsError::Unavailable(format!(
                "plugin reports healthz {:?}",
                truncate_for_message(&self.healthz)
            )));
        }
        match check_key_id(&self.key_id) {
            Err(KmsError::InvalidResponse(why)) => Err(KmsError::InvalidResponse(format!(
                "Status returned a bad key_id: {why}"
            ))),
            other => other,
        }
    }
}

/// Checks a key_id from the plugin: non-empty and at most 1 kB ([`MAX_WRAPPED_LEN`]), as the
/// Kubernetes API server checks it.
pub fn check_key_id(key_id: &str) -> Result<(), KmsError> {
    if key_id.is_empty() {
        return Err(KmsError::InvalidResponse("key_id is empty".into()));
    }
    if key_id.len() > MAX_WRAPPED_LEN {
        return Err(KmsError::InvalidResponse(format!(
            "key_id is {} bytes, must be at most {MAX_WRAPPED_LEN}",
            key_id.len()
        )));
    }
    Ok(())
}

/// Checks the annotations of an `Encrypt` response as the Kubernetes API server does: every key
/// is a fully qualified DNS name (a DNS subdomain with at least two labels, e.g.
/// `version.kms.example.com`), and keys plus values total at most 32 kB
/// ([`MAX_ANNOTATIONS_LEN`]).
pub fn check_annotations(annotations: &BTreeMap<String, Vec<u8>>) -> Result<(), KmsError> {
    let mut total = 0usize;
    for (k, v) in annotations {
        let name = k.strip_suffix('.').unwrap_or(k);
        let mut problems = crate::model::validation::is_dns1123_subdomain(name);
        if name.split('.').count() < 2 {
            problems.push("should be a domain with at least two segments separated by dots".into());
        }
        if !problems.is_empty() {
            return Err(KmsError::InvalidResponse(format!(
                "Encrypt returned annotation key {:?}, which is not a fully qualified domain name: {}",
                truncate_for_message(k),
                problems.join("; ")
            )));
        }
        total = total.saturating_add(k.len()).saturating_add(v.len());
    }
    if total > MAX_ANNOTATIONS_LEN {
        return Err(KmsError::InvalidResponse(format!(
            "annotations total {total} bytes, must be at most {MAX_ANNOTATIONS_LEN}"
        )));
    }
    Ok(())
}

/// At most 64 characters of a string a plugin sent, for an error message.
fn truncate_for_message(s: &str) -> String {
    match s.char_indices().nth(64) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_owned(),
    }
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

impl Wrapped {
    /// Checks an `Encrypt` response by the KMS v2 rules: ciphertext non-empty and at most 1 kB,
    /// a valid key_id ([`check_key_id`]) and valid annotations ([`check_annotations`]). A
    /// response that fails is refused: no seed is made from it and no record is written.
    pub fn check(&self) -> Result<(), KmsError> {
        if self.ciphertext.is_empty() {
            return Err(KmsError::InvalidResponse(
                "Encrypt returned an empty ciphertext".into(),
            ));
        }
        if self.ciphertext.len() > MAX_WRAPPED_LEN {
            return Err(KmsError::InvalidResponse(format!(
                "Encrypt returned a {}-byte ciphertext, must be at most {MAX_WRAPPED_LEN}",
                self.ciphertext.len()
            )));
        }
        match check_key_id(&self.key_id) {
            Err(KmsError::InvalidResponse(why)) => Err(KmsError::InvalidResponse(format!(
                "Encrypt returned a bad key_id: {why}"
            ))),
            other => other,
        }?;
        check_annotations(&self.annotations)
    }
}

/// The KMS failed or refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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
    /// Writes are refused: no good `Status` for longer than the outage grace period (reads go on
    /// from the seeds in memory).
    #[error("KMS unreachable: {0}")]
    Unreachable(String),
    /// The KMS given is not the one the data directory uses (a store made with a KMS plugin,
    /// opened without one); the message says which to give.
    #[error("{0}")]
    WrongKms(String),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn wrapped() -> Wrapped {
        Wrapped {
            ciphertext: vec![1; 40],
            key_id: "k1".into(),
            annotations: BTreeMap::new(),
        }
    }

    #[test]
    fn encrypt_responses_are_checked_as_kubernetes_does() {
        assert!(wrapped().check().is_ok());
        let mut w = wrapped();
        w.ciphertext = vec![1; MAX_WRAPPED_LEN];
        assert!(w.check().is_ok(), "exactly 1 kB passes");
        w.ciphertext.push(1);
        assert!(w.check().is_err());
        let mut w = wrapped();
        w.key_id = "k".repeat(MAX_WRAPPED_LEN + 1);
        assert!(matches!(w.check(), Err(KmsError::InvalidResponse(m)) if m.contains("key_id")));
        let mut w = wrapped();
        w.annotations
            .insert("version.encryption.example.com".into(), vec![0; 100]);
        w.annotations.insert("key.example.com.".into(), vec![]);
        assert!(w.check().is_ok(), "{:?}", w.check());
        for bad in [
            "nodots",
            "UPPER.example.com",
            "under_score.example.com",
            ".x.com",
        ] {
            let mut w = wrapped();
            w.annotations.insert(bad.into(), vec![]);
            assert!(w.check().is_err(), "{bad}");
        }
        let mut w = wrapped();
        w.annotations
            .insert("a.example.com".into(), vec![0; MAX_ANNOTATIONS_LEN]);
        assert!(w.check().is_err(), "keys count toward the 32 kB");
    }

    #[test]
    fn statuses_are_checked() {
        let ok = KmsStatus {
            version: "v2".into(),
            healthz: "ok".into(),
            key_id: "k".into(),
        };
        assert!(ok.check().is_ok());
        let bad_version = KmsStatus {
            version: "v1".into(),
            ..ok.clone()
        };
        assert!(matches!(
            bad_version.check(),
            Err(KmsError::InvalidResponse(_))
        ));
        let unhealthy = KmsStatus {
            healthz: "x".repeat(10_000),
            ..ok.clone()
        };
        let e = unhealthy.check().expect_err("unhealthy").to_string();
        assert!(matches!(unhealthy.check(), Err(KmsError::Unavailable(_))));
        assert!(e.len() < 200, "plugin text is cut: {e}");
    }
}
