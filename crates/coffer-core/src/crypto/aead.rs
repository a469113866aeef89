//! The two AEADs Coffer offers, behind one small interface.

use std::fmt;
use std::str::FromStr;

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{Aead as _, KeyInit, Payload};
use chacha20poly1305::XChaCha20Poly1305;

use super::keys::DataKey;

/// An AEAD algorithm; its id is recorded in every sealed record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Algorithm {
    /// AES-256-GCM with a 12-byte random nonce (the default, as in Kubernetes KMS v2).
    #[default]
    Aes256Gcm,
    /// XChaCha20-Poly1305 with a 24-byte random nonce (fast without AES hardware).
    XChaCha20Poly1305,
}

/// The error for an algorithm name or id that Coffer does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown AEAD algorithm {0:?}: expected aes-256-gcm or xchacha20-poly1305")]
pub struct UnknownAlgorithm(pub String);

impl Algorithm {
    /// The one-byte id stored in record headers.
    pub fn id(self) -> u8 {
        match self {
            Algorithm::Aes256Gcm => 1,
            Algorithm::XChaCha20Poly1305 => 2,
        }
    }

    /// The algorithm for a header id.
    pub fn from_id(id: u8) -> Option<Self> {
        match id {
            1 => Some(Algorithm::Aes256Gcm),
            2 => Some(Algorithm::XChaCha20Poly1305),
            _ => None,
        }
    }

    /// The nonce length in bytes.
    pub fn nonce_len(self) -> usize {
        match self {
            Algorithm::Aes256Gcm => 12,
            Algorithm::XChaCha20Poly1305 => 24,
        }
    }

    /// The configuration name (`aes-256-gcm`, `xchacha20-poly1305`).
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Aes256Gcm => "aes-256-gcm",
            Algorithm::XChaCha20Poly1305 => "xchacha20-poly1305",
        }
    }

    /// Encrypts `msg`; returns ciphertext || 16-byte tag. `None` if the nonce has the wrong
    /// length or the message exceeds the AEAD's length limit (far above the 1 MiB Secret limit).
    pub fn encrypt(self, key: &DataKey, nonce: &[u8], msg: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
        // A wrong-length nonce would panic inside generic-array; refuse it instead.
        if nonce.len() != self.nonce_len() {
            return None;
        }
        let payload = Payload { msg, aad };
        match self {
            Algorithm::Aes256Gcm => Aes256Gcm::new(key.expose().into())
                .encrypt(nonce.into(), payload)
                .ok(),
            Algorithm::XChaCha20Poly1305 => XChaCha20Poly1305::new(key.expose().into())
                .encrypt(nonce.into(), payload)
                .ok(),
        }
    }

    /// Decrypts ciphertext || tag; `None` on any authentication failure (one opaque outcome).
    pub fn decrypt(self, key: &DataKey, nonce: &[u8], ct: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
        if nonce.len() != self.nonce_len() {
            return None;
        }
        let payload = Payload { msg: ct, aad };
        match self {
            Algorithm::Aes256Gcm => Aes256Gcm::new(key.expose().into())
                .decrypt(nonce.into(), payload)
                .ok(),
            Algorithm::XChaCha20Poly1305 => XChaCha20Poly1305::new(key.expose().into())
                .decrypt(nonce.into(), payload)
                .ok(),
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Algorithm {
    type Err = UnknownAlgorithm;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "aes-256-gcm" | "aes256gcm" | "aes-gcm" => Ok(Algorithm::Aes256Gcm),
            "xchacha20-poly1305" | "xchacha20poly1305" => Ok(Algorithm::XChaCha20Poly1305),
            _ => Err(UnknownAlgorithm(s.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Seed;

    #[test]
    fn wrong_nonce_length_is_refused_not_a_panic() {
        let key = Seed::generate().derive(b"info");
        for alg in [Algorithm::Aes256Gcm, Algorithm::XChaCha20Poly1305] {
            assert!(alg.encrypt(&key, &[0u8; 8], b"m", b"").is_none());
            assert!(alg.decrypt(&key, &[0u8; 8], &[0u8; 32], b"").is_none());
        }
    }
}
