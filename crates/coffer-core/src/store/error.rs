//! The engine's error type. The gRPC layer maps each variant to one status code, in one place.

use std::fmt;

use crate::crypto::OpenError;
use crate::kms::{KmsError, SeedError};
use crate::model::validation::ValidationErrors;
use crate::storage::StorageError;

/// Errors of the [`Store`](super::Store) API.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The object breaks a validation rule; the message names the field and the rule.
    #[error(transparent)]
    Invalid(#[from] ValidationErrors),
    /// A request parameter (selector, continue token, ...) is malformed.
    #[error("{field}: {message}")]
    BadRequest {
        /// The parameter, e.g. `labelSelector`.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// Create of a Secret that exists.
    #[error("secrets \"{name}\" already exists")]
    AlreadyExists {
        /// The namespace.
        namespace: String,
        /// The name.
        name: String,
    },
    /// The Secret does not exist.
    #[error("secrets \"{name}\" not found")]
    NotFound {
        /// The namespace.
        namespace: String,
        /// The name.
        name: String,
    },
    /// The request's resource_version precondition is stale.
    #[error(
        "Operation cannot be fulfilled on secrets \"{name}\": the object has been modified; please apply your changes to the latest version and try again (expected resource_version {expected}, current {current})"
    )]
    Conflict {
        /// The name.
        name: String,
        /// The resource_version the request named.
        expected: u64,
        /// The stored resource_version.
        current: u64,
    },
    /// A delete's uid precondition does not hold: the name now belongs to another object.
    #[error(
        "Precondition failed for secrets \"{name}\": UID in precondition: {expected}, UID in object meta: {current}"
    )]
    UidMismatch {
        /// The name.
        name: String,
        /// The uid the request named.
        expected: String,
        /// The stored object's uid.
        current: String,
    },
    /// The namespace's quota cannot take the write (see [`super::quota`]); the message is
    /// Kubernetes' "exceeded quota: ..." and holds names and numbers only.
    #[error("{0}")]
    QuotaExceeded(QuotaExceeded),
    /// The KMS cannot be used, so the write (or the read of a seed not in memory) cannot proceed.
    #[error("KMS is unavailable: {0}")]
    Unavailable(String),
    /// A stored record failed to open: it was altered, moved, or its seed is gone.
    #[error("secret {key} cannot be read: {reason}")]
    DataLoss {
        /// The storage key `namespace/name` (never the content).
        key: String,
        /// Why.
        reason: String,
    },
    /// A read, list or watch at a revision below the compaction revision (Kubernetes' wording,
    /// which clients match to re-list).
    #[error("too old resource version: {requested} ({compacted})")]
    TooOld {
        /// The revision asked for.
        requested: u64,
        /// The compaction revision.
        compacted: u64,
    },
    /// A read or list at a revision the store has not reached.
    #[error("too large resource version: {requested} (current {current})")]
    TooLarge {
        /// The revision asked for.
        requested: u64,
        /// The current revision.
        current: u64,
    },
    /// A lease of the etcd door.
    #[error(transparent)]
    Lease(#[from] LeaseError),
    /// The storage layer failed.
    #[error(transparent)]
    Storage(StorageError),
}

impl From<StorageError> for StoreError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::Compacted {
                requested,
                compacted,
            } => StoreError::TooOld {
                requested,
                compacted,
            },
            StorageError::FutureRevision { requested, current } => {
                StoreError::TooLarge { requested, current }
            }
            other => StoreError::Storage(other),
        }
    }
}

impl StoreError {
    pub(crate) fn data_loss(key: &str, e: impl std::fmt::Display) -> Self {
        StoreError::DataLoss {
            key: key.to_owned(),
            reason: e.to_string(),
        }
    }

    pub(crate) fn open_failed(key: &str, e: OpenError) -> Self {
        Self::data_loss(key, e)
    }
}

impl From<SeedError> for StoreError {
    fn from(e: SeedError) -> Self {
        match e {
            SeedError::Kms(k) => k.into(),
            SeedError::Storage(s) => StoreError::Storage(s),
            // A damaged or foreign seed row (its check value names another store) is the
            // storage's fault, not the KMS's.
            e @ SeedError::Corrupt { .. } => {
                StoreError::Storage(StorageError::Corrupt(e.to_string()))
            }
            other => StoreError::Unavailable(other.to_string()),
        }
    }
}

impl From<KmsError> for StoreError {
    fn from(e: KmsError) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

/// A write that a quota refuses. Carries numbers and names only, never content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaExceeded {
    /// The quota's name.
    pub quota: String,
    /// `count/secrets` or `bytes/secrets`.
    pub resource: &'static str,
    /// What the write would add.
    pub requested: u64,
    /// What the namespace uses now.
    pub used: u64,
    /// The limit.
    pub limited: u64,
}

impl fmt::Display for QuotaExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.resource;
        write!(
            f,
            "exceeded quota: {}, requested: {r}={}, used: {r}={}, limited: {r}={}",
            self.quota, self.requested, self.used, self.limited
        )
    }
}

/// What can go wrong with a lease (etcd's errors).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    /// No lease has that id.
    #[error("requested lease not found")]
    NotFound,
    /// Grant of an id in use.
    #[error("lease already exists")]
    Exists,
    /// Grant of a TTL over [`MAX_LEASE_TTL`].
    #[error("too large lease TTL")]
    TtlTooLarge,
}
