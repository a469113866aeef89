//! Cryptography: the AEADs, zeroizing key types, the per-write key derivation, and the sealed
//! record format.
//!
//! The key hierarchy: the KMS key-encryption key wraps a 32-byte [`Seed`]; every write derives a
//! fresh [`DataKey`] = HKDF-SHA256(seed, info = 32 random bytes) and seals the object with it. Each
//! data key encrypts exactly one message, so nonce reuse limits never come into play.

mod aead;
pub mod integrity;
mod keys;
pub mod record;

pub use self::aead::{Algorithm, UnknownAlgorithm};
pub use self::integrity::{IntegrityKeys, StateDigest, StoreId};
pub use self::keys::{DataKey, Plaintext, SEED_LEN, Seed};
pub use self::record::{OpenError, RecordHeader, open, seal};
