//! The checkpoint record: a small file, outside sled, naming the lsn the last checkpoint made
//! durable.
//!
//! sled can lose writes on its own when its files are damaged (it recovers its log up to the
//! first bad message and silently drops the rest). While the write-ahead log still holds those
//! writes, recovery notices (the log would start after the database's end); once a checkpoint has
//! emptied the log nothing else would. This record closes that gap: open compares it with the lsn
//! the database and the log reach and refuses to open when they fall short.
//!
//! # Format
//!
//! Version 1 (before integrity), 24 bytes, integers big-endian: `magic "COFFERCP" | version: u32
//! (1) | lsn: u64 | crc32 of the previous 20 bytes: u32`.
//!
//! Version 2: `magic "COFFERCP" | version: u32 (2) | body length: u32 | body | crc32 of all the
//! previous bytes: u32`, the body a protobuf message: the store id, the wrapped integrity seed
//! (the KMS unwraps it to the keys that authenticate the log, this record and the anchor), the
//! lsn, the state digest at that lsn, and the MAC of (store id, lsn, digest). The crc tells
//! damage; the MAC tells forgery.
//!
//! Either is replaced atomically: written to `checkpoint.tmp`, `fsync`ed, renamed over
//! `checkpoint`, and the directory `fsync`ed.
//!
//! A missing record reads as "no checkpoint yet" (a new data directory, or one written before
//! the record existed); a damaged one is corruption.

use std::io::Write;
use std::path::Path;

use prost::Message;

use super::integrity::WrappedIntegritySeed;
use super::{Lsn, StorageError};
use crate::crypto::{IntegrityKeys, StateDigest, StoreId};

const MAGIC: &[u8; 8] = b"COFFERCP";
const VERSION: u32 = 1;
const VERSION_2: u32 = 2;
const LEN: usize = 8 + 4 + 8 + 4;
const MAC_DOMAIN: &[u8] = b"checkpoint record";

/// The body of a version 2 record.
#[derive(Clone, PartialEq, prost::Message)]
struct Body {
    #[prost(bytes = "vec", tag = "1")]
    store_id: Vec<u8>,
    #[prost(message, optional, tag = "2")]
    seed: Option<WrappedIntegritySeed>,
    #[prost(uint64, tag = "3")]
    lsn: u64,
    #[prost(bytes = "vec", tag = "4")]
    digest: Vec<u8>,
    #[prost(bytes = "vec", tag = "5")]
    mac: Vec<u8>,
}

/// A checkpoint record as read (a version 2 record's MAC is not checked yet: see
/// [`Record::authenticate`]).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Record {
    /// From before integrity: the lsn only.
    V1 {
        /// The checkpointed lsn.
        lsn: Lsn,
    },
    /// Authenticated.
    V2 {
        /// The store's id.
        store_id: StoreId,
        /// The integrity seed, wrapped.
        seed: WrappedIntegritySeed,
        /// The checkpointed lsn.
        lsn: Lsn,
        /// The state digest at `lsn`.
        digest: StateDigest,
        /// The MAC of (store id, lsn, digest).
        mac: Vec<u8>,
    },
}

fn mac_parts(store_id: &StoreId, lsn: Lsn, digest: &StateDigest, keys: &IntegrityKeys) -> [u8; 32] {
    keys.mac(
        MAC_DOMAIN,
        &[&store_id.0, &lsn.to_be_bytes(), &digest.to_bytes()],
    )
}

impl Record {
    /// The checkpointed lsn.
    pub(crate) fn lsn(&self) -> Lsn {
        match self {
            Record::V1 { lsn } | Record::V2 { lsn, .. } => *lsn,
        }
    }

    /// Checks a version 2 record's MAC under `keys`; the error says why it fails.
    pub(crate) fn authenticate(&self, keys: &IntegrityKeys) -> Result<(), String> {
        match self {
            Record::V1 { .. } => Err("it is from before integrity (not authenticated)".into()),
            Record::V2 {
                store_id,
                lsn,
                digest,
                mac,
                ..
            } => {
                if keys.verify(
                    MAC_DOMAIN,
                    &[&store_id.0, &lsn.to_be_bytes(), &digest.to_bytes()],
                    mac,
                ) {
                    Ok(())
                } else {
                    Err("its MAC does not verify".into())
                }
            }
        }
    }
}

/// Encodes a version 2 record.
fn encode_v2(
    store_id: &StoreId,
    seed: &WrappedIntegritySeed,
    lsn: Lsn,
    digest: &StateDigest,
    keys: &IntegrityKeys,
) -> Vec<u8> {
    let body = Body {
        store_id: store_id.0.to_vec(),
        seed: Some(seed.clone()),
        lsn,
        digest: digest.to_bytes().to_vec(),
        mac: mac_parts(store_id, lsn, digest, keys).to_vec(),
    }
    .encode_to_vec();
    let mut out = Vec::with_capacity(16 + body.len() + 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION_2.to_be_bytes());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

fn decode_v2(bytes: &[u8]) -> Result<Record, String> {
    if bytes.len() < 20 {
        return Err(format!("it has {} bytes, too few", bytes.len()));
    }
    let (head, crc) = bytes.split_at(bytes.len() - 4);
    let mut c = [0u8; 4];
    c.copy_from_slice(crc);
    if crc32fast::hash(head) != u32::from_be_bytes(c) {
        return Err("its checksum does not match".into());
    }
    let mut len = [0u8; 4];
    len.copy_from_slice(&head[12..16]);
    if u32::from_be_bytes(len) as usize != head.len() - 16 {
        return Err("its body length is wrong".into());
    }
    let body = Body::decode(&head[16..]).map_err(|e| format!("its body does not decode: {e}"))?;
    let store_id =
        StoreId::from_slice(&body.store_id).ok_or("its store id has the wrong length")?;
    let digest = StateDigest::from_bytes(&body.digest).ok_or("its digest has the wrong length")?;
    let seed = body.seed.ok_or("it holds no integrity seed")?;
    Ok(Record::V2 {
        store_id,
        seed,
        lsn: body.lsn,
        digest,
        mac: body.mac,
    })
}

/// Encodes a record for `lsn`.
fn encode(lsn: Lsn) -> [u8; LEN] {
    let mut out = [0u8; LEN];
    out[..8].copy_from_slice(MAGIC);
    out[8..12].copy_from_slice(&VERSION.to_be_bytes());
    out[12..20].copy_from_slice(&lsn.to_be_bytes());
    let crc = crc32fast::hash(&out[..20]);
    out[20..].copy_from_slice(&crc.to_be_bytes());
    out
}

/// Decodes a record; the error says what is wrong with it.
fn decode(bytes: &[u8]) -> Result<Record, String> {
    if bytes.len() >= 12 && &bytes[..8] == MAGIC && bytes[8..12] == VERSION_2.to_be_bytes() {
        return decode_v2(bytes);
    }
    if bytes.len() != LEN {
        return Err(format!("it has {} bytes, not {LEN}", bytes.len()));
    }
    if &bytes[..8] != MAGIC {
        return Err("its magic is wrong".into());
    }
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&bytes[20..]);
    if crc32fast::hash(&bytes[..20]) != u32::from_be_bytes(crc) {
        return Err("its checksum does not match".into());
    }
    let mut version = [0u8; 4];
    version.copy_from_slice(&bytes[8..12]);
    let version = u32::from_be_bytes(version);
    if version != VERSION {
        return Err(format!("its version {version} is unknown"));
    }
    let mut lsn = [0u8; 8];
    lsn.copy_from_slice(&bytes[12..20]);
    Ok(Record::V1 {
        lsn: Lsn::from_be_bytes(lsn),
    })
}

/// The record at `path`, `None` when there is none.
pub(crate) fn read_record(path: &Path) -> Result<Option<Record>, StorageError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    decode(&bytes).map(Some).map_err(|why| {
        StorageError::Corrupt(format!(
            "the checkpoint record {} is damaged ({why}): the database cannot be checked against \
             rollback. Restore the data directory from a backup",
            path.display()
        ))
    })
}

/// Atomically replaces the record at `path` with an authenticated one, durably.
pub(crate) fn write_v2(
    path: &Path,
    store_id: &StoreId,
    seed: &WrappedIntegritySeed,
    lsn: Lsn,
    digest: &StateDigest,
    keys: &IntegrityKeys,
) -> Result<(), StorageError> {
    replace(path, &encode_v2(store_id, seed, lsn, digest, keys))
}

/// The lsn recorded at `path`, `None` when there is no record.
#[cfg(test)]
pub(crate) fn read(path: &Path) -> Result<Option<Lsn>, StorageError> {
    Ok(read_record(path)?.map(|r| r.lsn()))
}

/// Atomically replaces the record at `path` with `lsn`, durably.
pub(crate) fn write(path: &Path, lsn: Lsn) -> Result<(), StorageError> {
    replace(path, &encode(lsn))
}

fn replace(path: &Path, bytes: &[u8]) -> Result<(), StorageError> {
    let tmp = path.with_extension("tmp");
    {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    #[cfg(unix)]
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn roundtrip_missing_and_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("checkpoint");
        assert_eq!(read(&path).unwrap(), None);
        write(&path, 42).unwrap();
        assert_eq!(read(&path).unwrap(), Some(42));
        write(&path, u64::MAX).unwrap();
        assert_eq!(read(&path).unwrap(), Some(u64::MAX));
        assert!(!path.with_extension("tmp").exists());

        // Every single-bit flip is refused.
        let good = std::fs::read(&path).unwrap();
        for i in 0..good.len() * 8 {
            let mut bad = good.clone();
            bad[i / 8] ^= 1 << (i % 8);
            std::fs::write(&path, &bad).unwrap();
            let error = read(&path).unwrap_err();
            assert!(matches!(error, StorageError::Corrupt(_)), "{error}");
        }
        std::fs::write(&path, &good[..10]).unwrap();
        assert!(read(&path).unwrap_err().to_string().contains("10 bytes"));
    }

    #[test]
    fn version_2_roundtrips_authenticates_and_refuses_flips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("checkpoint");
        let keys = IntegrityKeys::derive(&crate::crypto::Seed::from_slice(&[1; 32]).unwrap());
        let seed = WrappedIntegritySeed {
            ciphertext: vec![9; 60],
            key_id: "k1".into(),
            annotations: Default::default(),
            check: vec![4; 32],
        };
        let id = StoreId([7; 16]);
        let mut digest = StateDigest::EMPTY;
        digest.add(&keys, b"k", 0, &[1; 32]);
        write_v2(&path, &id, &seed, 5, &digest, &keys).unwrap();
        let record = read_record(&path).unwrap().unwrap();
        assert_eq!(record.lsn(), 5);
        record.authenticate(&keys).unwrap();
        let other = IntegrityKeys::derive(&crate::crypto::Seed::from_slice(&[2; 32]).unwrap());
        assert!(record.authenticate(&other).is_err());
        assert!(Record::V1 { lsn: 5 }.authenticate(&keys).is_err());
        // Every single-bit flip is refused (the crc), so is a re-crc'd forgery (the MAC).
        let good = std::fs::read(&path).unwrap();
        for i in 0..good.len() * 8 {
            let mut bad = good.clone();
            bad[i / 8] ^= 1 << (i % 8);
            std::fs::write(&path, &bad).unwrap();
            assert!(read_record(&path).is_err(), "flip {i}");
        }
        let Record::V2 { store_id, seed, .. } = record else {
            panic!("version 2 expected")
        };
        let forged = Body {
            store_id: store_id.0.to_vec(),
            seed: Some(seed),
            lsn: 9,
            digest: digest.to_bytes().to_vec(),
            mac: vec![0; 32],
        }
        .encode_to_vec();
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&VERSION_2.to_be_bytes());
        bytes.extend_from_slice(&(forged.len() as u32).to_be_bytes());
        bytes.extend_from_slice(&forged);
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_be_bytes());
        std::fs::write(&path, &bytes).unwrap();
        assert!(
            read_record(&path)
                .unwrap()
                .unwrap()
                .authenticate(&keys)
                .is_err()
        );
    }
}
