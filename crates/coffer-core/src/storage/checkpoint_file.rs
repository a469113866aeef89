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
//! 24 bytes, integers big-endian: `magic "COFFERCP" | version: u32 (1) | lsn: u64 | crc32 of the
//! previous 20 bytes: u32`. It is replaced atomically: written to `checkpoint.tmp`, `fsync`ed,
//! renamed over `checkpoint`, and the directory `fsync`ed.
//!
//! A missing record reads as "no checkpoint yet" (a new data directory, or one written before
//! the record existed); a damaged one is corruption.

use std::io::Write;
use std::path::Path;

use super::{Lsn, StorageError};

const MAGIC: &[u8; 8] = b"COFFERCP";
const VERSION: u32 = 1;
const LEN: usize = 8 + 4 + 8 + 4;

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
fn decode(bytes: &[u8]) -> Result<Lsn, String> {
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
    Ok(Lsn::from_be_bytes(lsn))
}

/// The lsn recorded at `path`, `None` when there is no record.
pub(crate) fn read(path: &Path) -> Result<Option<Lsn>, StorageError> {
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

/// Atomically replaces the record at `path` with `lsn`, durably.
pub(crate) fn write(path: &Path, lsn: Lsn) -> Result<(), StorageError> {
    let tmp = path.with_extension("tmp");
    {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&encode(lsn))?;
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
}
