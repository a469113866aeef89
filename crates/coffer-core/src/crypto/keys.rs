//! Zeroizing key and plaintext types. None of them is `Clone`; `Debug` prints `[REDACTED]`.

use std::fmt;

use hkdf::Hkdf;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretBox};
use sha2::Sha256;
use zeroize::Zeroizing;

/// Length of a seed and of a data key, in bytes.
pub const SEED_LEN: usize = 32;

/// A 32-byte seed: the secret that the KMS wraps and from which every data key is derived.
pub struct Seed(SecretBox<[u8; SEED_LEN]>);

impl Seed {
    /// A fresh random seed from the operating system's CSPRNG, built in place so the bytes never
    /// sit in an unprotected temporary.
    pub fn generate() -> Self {
        Self(SecretBox::init_with_mut(|k: &mut [u8; SEED_LEN]| {
            rand::rngs::OsRng.fill_bytes(k)
        }))
    }

    /// A seed from unwrapped bytes (as returned by the KMS); `None` if the length is wrong.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != SEED_LEN {
            return None;
        }
        Some(Self(SecretBox::init_with_mut(|k: &mut [u8; SEED_LEN]| {
            k.copy_from_slice(bytes)
        })))
    }

    /// The raw seed bytes, for wrapping by the KMS.
    pub fn expose(&self) -> &[u8; SEED_LEN] {
        self.0.expose_secret()
    }

    /// Derives the data key for one write: HKDF-SHA256 with the seed as input key material, no
    /// salt, and `info` (32 fresh random bytes per write) as the context, as the Kubernetes KMS v2
    /// transformer does.
    pub fn derive(&self, info: &[u8]) -> DataKey {
        let hk = WipedHkdf::new(self.0.expose_secret());
        DataKey(SecretBox::init_with_mut(|k: &mut [u8; SEED_LEN]| {
            // 32 bytes is far below HKDF-SHA256's 8160-byte output limit, so expand cannot fail.
            let _ = hk.0.expand(info, k);
        }))
    }
}

/// HKDF-SHA256 state (the PRK, held as HMAC-SHA256's keyed inner and outer hash states: as
/// secret as the seed) in a heap box that is overwritten with a keyless state on drop. The
/// `hkdf` and `hmac` crates offer no `zeroize`; this keeps the state in one place and wipes it
/// there (without `unsafe`, by assigning over it).
struct WipedHkdf(Box<Hkdf<Sha256>>);

impl WipedHkdf {
    fn new(ikm: &[u8]) -> Self {
        Self(Box::new(Hkdf::<Sha256>::new(None, ikm)))
    }
}

impl Drop for WipedHkdf {
    fn drop(&mut self) {
        *self.0 = Hkdf::<Sha256>::new(None, &[0u8; SEED_LEN]);
        // The overwrite is a store the optimiser must not drop as dead.
        std::hint::black_box(&*self.0);
    }
}

impl fmt::Debug for Seed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Seed([REDACTED])")
    }
}

/// A per-write AEAD key, derived from a [`Seed`]; used for one message only.
pub struct DataKey(SecretBox<[u8; SEED_LEN]>);

impl DataKey {
    /// A data key from raw bytes; `None` if the length is not [`SEED_LEN`]. Coffer itself only
    /// derives data keys (see [`Seed::derive`]); this exists for known-answer tests (Wycheproof
    /// vectors) that must drive the AEADs with a given key. The key is built in place in zeroizing
    /// memory; the caller still owns (and should wipe) `bytes`.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != SEED_LEN {
            return None;
        }
        Some(Self(SecretBox::init_with_mut(|k: &mut [u8; SEED_LEN]| {
            k.copy_from_slice(bytes)
        })))
    }

    /// The key bytes.
    pub fn expose(&self) -> &[u8; SEED_LEN] {
        self.0.expose_secret()
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey([REDACTED])")
    }
}

/// Decrypted bytes, wiped on drop.
pub struct Plaintext(Zeroizing<Vec<u8>>);

impl Plaintext {
    /// Takes ownership of `bytes` without copying.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// The plaintext bytes.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The bytes themselves, still wiped on drop (moved, not copied).
    pub fn into_zeroizing(self) -> Zeroizing<Vec<u8>> {
        self.0
    }
}

impl fmt::Debug for Plaintext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Plaintext([REDACTED], {} bytes)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derive_is_deterministic_and_info_separated() {
        let seed = Seed::from_slice(&[7u8; 32]).expect("32 bytes");
        let a = seed.derive(&[1u8; 32]);
        let b = seed.derive(&[1u8; 32]);
        let c = seed.derive(&[2u8; 32]);
        assert_eq!(a.expose(), b.expose());
        assert_ne!(a.expose(), c.expose());
        assert_ne!(a.expose(), seed.expose());
    }

    #[test]
    fn debug_is_redacted() {
        let seed = Seed::generate();
        assert_eq!(format!("{seed:?}"), "Seed([REDACTED])");
        assert_eq!(format!("{:?}", seed.derive(b"x")), "DataKey([REDACTED])");
        assert!(format!("{:?}", Plaintext::new(b"canary".to_vec())).contains("REDACTED"));
    }

    #[test]
    fn wrong_length_seed_is_refused() {
        assert!(Seed::from_slice(&[0u8; 31]).is_none());
        assert!(Seed::from_slice(&[0u8; 33]).is_none());
        assert!(DataKey::from_slice(&[0u8; 31]).is_none());
        assert!(DataKey::from_slice(&[0u8; 33]).is_none());
        let k = DataKey::from_slice(&[9u8; 32]).expect("32 bytes");
        assert_eq!(k.expose(), &[9u8; 32]);
    }
}
