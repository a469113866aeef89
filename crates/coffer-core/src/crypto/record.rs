//! The sealed-record format.
//!
//! ```text
//! offset  size  field
//! 0       1     format version (1)
//! 1       1     algorithm id (1 = AES-256-GCM, 2 = XChaCha20-Poly1305)
//! 2       4     seed id, big-endian
//! 6       32    info: the HKDF context that derives this record's data key
//! 38      12|24 nonce
//! ...           ciphertext || 16-byte tag
//! ```
//!
//! The AAD is a domain label, the whole header, and the length-prefixed storage key. A record
//! moved to another key, a header edited to name another seed or algorithm, or any flipped byte
//! fails to open with [`OpenError::Integrity`] (or a refusal of the header), never with other
//! plaintext. Records name their seed by id instead of carrying the wrapped seed, which keeps each
//! record about 1 kB smaller than the Kubernetes format.

use rand::RngCore;

use super::aead::Algorithm;
use super::keys::{Plaintext, Seed};

/// The only record format version this build reads and writes.
pub const FORMAT_VERSION: u8 = 1;
const INFO_LEN: usize = 32;
const FIXED_HEADER_LEN: usize = 1 + 1 + 4 + INFO_LEN;
const AAD_DOMAIN: &[u8] = b"coffer.record.v1\0";

/// Why a record could not be opened. Every cryptographic failure is the one opaque
/// [`OpenError::Integrity`]; the others describe a header that cannot even be tried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// The record is shorter than its header and tag.
    #[error("record is truncated")]
    Truncated,
    /// A format version this build does not know (refused rather than guessed at).
    #[error("unsupported record format version {0}")]
    UnsupportedVersion(u8),
    /// An algorithm id this build does not know.
    #[error("unknown AEAD algorithm id {0}")]
    UnknownAlgorithm(u8),
    /// The record names a seed that is not loaded.
    #[error("record refers to seed {0}, which is not available")]
    UnknownSeed(u32),
    /// Authentication failed: the record was altered, moved, or sealed under another key.
    #[error("record failed its integrity check")]
    Integrity,
}

/// The parsed header of a sealed record, borrowing the record bytes.
#[derive(Debug, Clone, Copy)]
pub struct RecordHeader<'a> {
    /// The AEAD algorithm.
    pub algorithm: Algorithm,
    /// The id of the seed whose derived key sealed the record.
    pub seed_id: u32,
    header: &'a [u8],
    info: &'a [u8],
    nonce: &'a [u8],
    ciphertext: &'a [u8],
}

impl<'a> RecordHeader<'a> {
    /// Parses the header; checks lengths, the version and the algorithm id.
    pub fn parse(record: &'a [u8]) -> Result<Self, OpenError> {
        let (&version, _) = record.split_first().ok_or(OpenError::Truncated)?;
        if version != FORMAT_VERSION {
            return Err(OpenError::UnsupportedVersion(version));
        }
        if record.len() < FIXED_HEADER_LEN {
            return Err(OpenError::Truncated);
        }
        let algorithm =
            Algorithm::from_id(record[1]).ok_or(OpenError::UnknownAlgorithm(record[1]))?;
        let seed_id = u32::from_be_bytes([record[2], record[3], record[4], record[5]]);
        let header_len = FIXED_HEADER_LEN + algorithm.nonce_len();
        if record.len() < header_len + 16 {
            return Err(OpenError::Truncated);
        }
        Ok(Self {
            algorithm,
            seed_id,
            header: &record[..header_len],
            info: &record[6..FIXED_HEADER_LEN],
            nonce: &record[FIXED_HEADER_LEN..header_len],
            ciphertext: &record[header_len..],
        })
    }

    /// Opens the record with its seed, checking that it was sealed for `storage_key`.
    pub fn open(&self, seed: &Seed, storage_key: &[u8]) -> Result<Plaintext, OpenError> {
        let key = seed.derive(self.info);
        let aad = aad(self.header, storage_key);
        self.algorithm
            .decrypt(&key, self.nonce, self.ciphertext, &aad)
            .map(Plaintext::new)
            .ok_or(OpenError::Integrity)
    }
}

fn aad(header: &[u8], storage_key: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(AAD_DOMAIN.len() + header.len() + 4 + storage_key.len());
    aad.extend_from_slice(AAD_DOMAIN);
    aad.extend_from_slice(header);
    // Length-prefixed so that header/key boundaries cannot be shifted.
    aad.extend_from_slice(&(storage_key.len() as u32).to_be_bytes());
    aad.extend_from_slice(storage_key);
    aad
}

/// Seals `plaintext` for `storage_key` under a fresh key derived from `seed`.
pub fn seal(
    algorithm: Algorithm,
    seed_id: u32,
    seed: &Seed,
    storage_key: &[u8],
    plaintext: &[u8],
) -> Vec<u8> {
    let nonce_len = algorithm.nonce_len();
    let header_len = FIXED_HEADER_LEN + nonce_len;
    let mut header = vec![0u8; header_len];
    header[0] = FORMAT_VERSION;
    header[1] = algorithm.id();
    header[2..6].copy_from_slice(&seed_id.to_be_bytes());
    rand::rngs::OsRng.fill_bytes(&mut header[6..]);
    let key = seed.derive(&header[6..FIXED_HEADER_LEN]);
    let aad = aad(&header, storage_key);
    let ct = algorithm
        .encrypt(&key, &header[FIXED_HEADER_LEN..], plaintext, &aad)
        // The AEAD limits are gigabytes; Secrets are at most 1 MiB plus metadata.
        .expect("plaintext within AEAD length limits");
    let mut record = header;
    record.extend_from_slice(&ct);
    record
}

/// Parses and opens a record in one step, looking its seed up by id.
pub fn open<'s>(
    record: &[u8],
    storage_key: &[u8],
    seed_for: impl FnOnce(u32) -> Option<&'s Seed>,
) -> Result<Plaintext, OpenError> {
    let header = RecordHeader::parse(record)?;
    let seed = seed_for(header.seed_id).ok_or(OpenError::UnknownSeed(header.seed_id))?;
    header.open(seed, storage_key)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALGS: [Algorithm; 2] = [Algorithm::Aes256Gcm, Algorithm::XChaCha20Poly1305];

    fn seed() -> Seed {
        Seed::from_slice(&[9u8; 32]).expect("32 bytes")
    }

    #[test]
    fn round_trip_both_algorithms() {
        let s = seed();
        for alg in ALGS {
            for len in [0usize, 1, 1024, 70_000] {
                let msg: Vec<u8> = (0..len).map(|i| i as u8).collect();
                let rec = seal(alg, 3, &s, b"ns/name", &msg);
                let header = RecordHeader::parse(&rec).expect("parse");
                assert_eq!(header.seed_id, 3);
                assert_eq!(header.algorithm, alg);
                let pt = open(&rec, b"ns/name", |id| (id == 3).then_some(&s)).expect("open");
                assert_eq!(pt.expose(), &msg[..]);
            }
        }
    }

    #[test]
    fn two_seals_of_the_same_message_differ() {
        let s = seed();
        let a = seal(Algorithm::Aes256Gcm, 1, &s, b"k", b"same");
        let b = seal(Algorithm::Aes256Gcm, 1, &s, b"k", b"same");
        assert_ne!(a, b);
    }

    #[test]
    fn every_single_byte_flip_is_refused() {
        let s = seed();
        let other = Seed::from_slice(&[1u8; 32]).expect("32 bytes");
        for alg in ALGS {
            let rec = seal(alg, 1, &s, b"ns/name", b"the canary plaintext");
            for i in 0..rec.len() {
                for bit in [0x01u8, 0x80] {
                    let mut bad = rec.clone();
                    bad[i] ^= bit;
                    // A flipped seed id may name a seed that exists: it must still fail.
                    let res = open(&bad, b"ns/name", |id| {
                        Some(if id == 1 { &s } else { &other })
                    });
                    assert!(res.is_err(), "flip at {i} opened");
                }
            }
        }
    }

    #[test]
    fn record_moved_to_another_key_fails_with_integrity() {
        let s = seed();
        let rec = seal(Algorithm::Aes256Gcm, 1, &s, b"ns/a", b"x");
        assert_eq!(
            open(&rec, b"ns/b", |_| Some(&s)).map(|_| ()),
            Err(OpenError::Integrity)
        );
    }

    #[test]
    fn wrong_seed_fails_with_integrity() {
        let s = seed();
        let other = Seed::from_slice(&[1u8; 32]).expect("32 bytes");
        let rec = seal(Algorithm::XChaCha20Poly1305, 1, &s, b"k", b"x");
        assert_eq!(
            open(&rec, b"k", |_| Some(&other)).map(|_| ()),
            Err(OpenError::Integrity)
        );
    }

    #[test]
    fn header_refusals() {
        let s = seed();
        let rec = seal(Algorithm::Aes256Gcm, 1, &s, b"k", b"x");
        let mut v2 = rec.clone();
        v2[0] = 2;
        assert_eq!(
            RecordHeader::parse(&v2).map(|_| ()),
            Err(OpenError::UnsupportedVersion(2))
        );
        let mut alg = rec.clone();
        alg[1] = 99;
        assert_eq!(
            RecordHeader::parse(&alg).map(|_| ()),
            Err(OpenError::UnknownAlgorithm(99))
        );
        assert_eq!(
            RecordHeader::parse(&rec[..20]).map(|_| ()),
            Err(OpenError::Truncated)
        );
        assert_eq!(
            RecordHeader::parse(&[]).map(|_| ()),
            Err(OpenError::Truncated)
        );
        assert_eq!(
            open(&rec, b"k", |_| None).map(|_| ()),
            Err(OpenError::UnknownSeed(1))
        );
    }
}
