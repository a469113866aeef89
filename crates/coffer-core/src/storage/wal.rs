//! The write-ahead log that makes sled writes durable.
//!
//! sled 0.34 flushes with `sync_file_range`, which neither flushes the device cache nor file
//! metadata, so the backend keeps its own log and `fdatasync`s it (see [`super::sled`]).
//!
//! # Format
//!
//! The file is a sequence of entries, one per applied batch, all integers big-endian:
//!
//! ```text
//! entry   = len: u32 | crc: u32 (crc32 of payload) | payload (len bytes)
//! payload = lsn: u64 | op count: u32 | op*
//! op      = 1u8 | key len: u32 | key | value len: u32 | value      (put)
//!         | 2u8 | key len: u32 | key                                (delete)
//! ```
//!
//! Reading stops at the first entry that is truncated, has a bad checksum or a length too small
//! to hold a payload (a zero-filled tail looks like that): that is a torn tail, an unacknowledged
//! write interrupted by a crash, provided no intact entry follows it. A damaged entry followed by
//! an intact one is corruption in the middle of the log (a torn write only damages the end), and
//! so is an entry whose checksum matches but whose payload cannot be decoded: both are reported as
//! errors, because cutting the log there would silently drop acknowledged writes.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use super::{Lsn, Op, StorageError};

/// Bytes before the payload: length and checksum.
pub(crate) const HEADER_LEN: usize = 8;
/// The smallest valid payload: an lsn and an op count.
const MIN_PAYLOAD: usize = 8 + 4;
const KIND_PUT: u8 = 1;
const KIND_DELETE: u8 = 2;

/// One decoded log entry: a batch and its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    /// The position of the batch.
    pub(crate) lsn: Lsn,
    /// The batch's writes, in order.
    pub(crate) ops: Vec<Op>,
}

fn len_u32(n: usize, what: &str) -> Result<u32, StorageError> {
    u32::try_from(n).map_err(|_| {
        StorageError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{what} of {n} bytes is too large for the write-ahead log"),
        ))
    })
}

/// Appends the encoded entry for (`lsn`, `ops`) to `out`. On error (a key, value or batch larger
/// than 4 GiB) `out` is left unchanged.
pub(crate) fn encode_entry(lsn: Lsn, ops: &[Op], out: &mut Vec<u8>) -> Result<(), StorageError> {
    let start = out.len();
    let result = encode_into(lsn, ops, out, start);
    if result.is_err() {
        out.truncate(start);
    }
    result
}

fn encode_into(lsn: Lsn, ops: &[Op], out: &mut Vec<u8>, start: usize) -> Result<(), StorageError> {
    let payload_len: usize = MIN_PAYLOAD
        + ops
            .iter()
            .map(|op| match op {
                Op::Put(k, v) => 1 + 4 + k.len() + 4 + v.len(),
                Op::Delete(k) => 1 + 4 + k.len(),
            })
            .sum::<usize>();
    let len = len_u32(payload_len, "a batch")?;
    out.reserve(HEADER_LEN + payload_len);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&[0; 4]); // crc, filled in below
    out.extend_from_slice(&lsn.to_be_bytes());
    out.extend_from_slice(&len_u32(ops.len(), "an op count")?.to_be_bytes());
    for op in ops {
        match op {
            Op::Put(k, v) => {
                out.push(KIND_PUT);
                out.extend_from_slice(&len_u32(k.len(), "a key")?.to_be_bytes());
                out.extend_from_slice(k);
                out.extend_from_slice(&len_u32(v.len(), "a value")?.to_be_bytes());
                out.extend_from_slice(v);
            }
            Op::Delete(k) => {
                out.push(KIND_DELETE);
                out.extend_from_slice(&len_u32(k.len(), "a key")?.to_be_bytes());
                out.extend_from_slice(k);
            }
        }
    }
    debug_assert_eq!(out.len() - start, HEADER_LEN + payload_len);
    let crc = crc32fast::hash(&out[start + HEADER_LEN..]);
    out[start + 4..start + HEADER_LEN].copy_from_slice(&crc.to_be_bytes());
    Ok(())
}

/// A cursor over a payload; every read fails on a short buffer.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err(format!("payload ends {} bytes early", n - self.0.len()));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, String> {
        let mut b = [0; 4];
        b.copy_from_slice(self.take(4)?);
        Ok(u32::from_be_bytes(b))
    }

    fn u64(&mut self) -> Result<u64, String> {
        let mut b = [0; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(b))
    }

    fn bytes(&mut self) -> Result<Vec<u8>, String> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
}

/// Decodes a payload whose checksum has been verified.
pub(crate) fn decode_payload(payload: &[u8]) -> Result<Entry, String> {
    let mut r = Reader(payload);
    let lsn = r.u64()?;
    let count = r.u32()? as usize;
    // Every op takes at least 5 bytes: do not trust `count` for the allocation.
    let mut ops = Vec::with_capacity(count.min(payload.len() / 5));
    for _ in 0..count {
        let op = match r.u8()? {
            KIND_PUT => {
                let k = r.bytes()?;
                Op::Put(k, r.bytes()?)
            }
            KIND_DELETE => Op::Delete(r.bytes()?),
            other => return Err(format!("unknown op kind {other}")),
        };
        ops.push(op);
    }
    if !r.0.is_empty() {
        return Err(format!("{} trailing bytes after the last op", r.0.len()));
    }
    Ok(Entry { lsn, ops })
}

/// What [`parse`] found in a log's bytes.
#[derive(Debug)]
pub(crate) struct Parsed {
    /// The valid entries, in file order.
    pub(crate) entries: Vec<Entry>,
    /// The length of the valid prefix; everything after it is a torn tail.
    pub(crate) valid_len: usize,
    /// Why reading stopped before the end of the data, if it did.
    pub(crate) torn: Option<String>,
}

/// Parses log bytes up to the first torn entry. Fails only on corruption that a torn write cannot
/// explain (a checksummed payload that does not decode).
pub(crate) fn parse(data: &[u8]) -> Result<Parsed, StorageError> {
    let mut entries = Vec::new();
    let mut pos = 0;
    let torn = loop {
        let rest = &data[pos..];
        if rest.is_empty() {
            break None;
        }
        if rest.len() < HEADER_LEN {
            break Some(format!("truncated entry header ({} bytes)", rest.len()));
        }
        let mut len = [0; 4];
        len.copy_from_slice(&rest[..4]);
        let len = u32::from_be_bytes(len) as usize;
        let mut crc = [0; 4];
        crc.copy_from_slice(&rest[4..HEADER_LEN]);
        let crc = u32::from_be_bytes(crc);
        if len < MIN_PAYLOAD {
            break Some(format!("entry length {len} is too small"));
        }
        if rest.len() - HEADER_LEN < len {
            break Some(format!(
                "truncated entry ({} of {len} payload bytes)",
                rest.len() - HEADER_LEN
            ));
        }
        let payload = &rest[HEADER_LEN..HEADER_LEN + len];
        if crc32fast::hash(payload) != crc {
            break Some("entry checksum mismatch".to_owned());
        }
        let entry = decode_payload(payload).map_err(|e| {
            StorageError::Corrupt(format!(
                "write-ahead log entry at offset {pos} has a valid checksum but does not decode: {e}"
            ))
        })?;
        entries.push(entry);
        pos += HEADER_LEN + len;
    };
    if torn.is_some() {
        let last = entries.last().map(|e: &Entry| e.lsn);
        if let Some((at, lsn)) = intact_entry_after(data, pos, last) {
            return Err(StorageError::Corrupt(format!(
                "write-ahead log entry at offset {pos} is damaged ({}), but an intact entry \
                 (lsn {lsn}) follows at offset {at}: this is not a torn write, and cutting the log \
                 there would silently drop acknowledged writes. Restore the data directory from a \
                 backup, or move wal.log aside to accept losing the writes after offset {pos}",
                torn.as_deref().unwrap_or("unknown")
            )));
        }
    }
    Ok(Parsed {
        entries,
        valid_len: pos,
        torn,
    })
}

/// Decodes a whole log as the backend reads it at open: the batches (position and writes) of
/// its valid prefix and that prefix's length (what follows it is a torn tail), or the
/// corruption error. Public so that the WAL fuzz target (`fuzz/fuzz_targets/wal.rs`) reaches the
/// decoder; the backend itself goes through [`parse`].
#[allow(
    clippy::type_complexity,
    reason = "a plain tuple keeps the crate's one public entry to the log format free of new types"
)]
pub fn decode_log(data: &[u8]) -> Result<(Vec<(Lsn, Vec<Op>)>, usize), StorageError> {
    let parsed = parse(data)?;
    let batches = parsed.entries.into_iter().map(|e| (e.lsn, e.ops)).collect();
    Ok((batches, parsed.valid_len))
}

/// Looks for an intact entry after a damaged one at `bad`, which tells mid-log corruption apart
/// from a torn tail (a torn write only ever damages the end of the log). The damaged entry's
/// length field may itself be wrong, so entries are found by their lsn: the next few lsns after
/// the last good one are searched for as bytes, and each hit is checked as a whole entry (length,
/// checksum, decode). With no good entry before the damage (so no lsn to search for), every offset
/// in the next 1 MiB is tried instead.
fn intact_entry_after(data: &[u8], bad: usize, last: Option<Lsn>) -> Option<(usize, Lsn)> {
    let Some(base) = last else {
        let end = data.len().min(bad.saturating_add(1 << 20));
        return (bad + 1..end).find_map(|at| parse_one(&data[at..]).ok().map(|e| (at, e.lsn)));
    };
    for lsn in (1..=3).filter_map(|d| base.checked_add(d)) {
        let needle = lsn.to_be_bytes();
        let mut from = bad + HEADER_LEN + 1;
        while let Some(i) = data
            .get(from..)
            .and_then(|rest| rest.windows(8).position(|w| w == needle))
        {
            let at = from + i - HEADER_LEN;
            if parse_one(&data[at..]).is_ok_and(|e| e.lsn == lsn) {
                return Some((at, lsn));
            }
            from += i + 1;
        }
    }
    None
}

/// Parses exactly one whole, checksummed entry at the start of `data`.
fn parse_one(data: &[u8]) -> Result<Entry, ()> {
    let header = data.get(..HEADER_LEN).ok_or(())?;
    let len = u32::from_be_bytes(header[..4].try_into().map_err(|_| ())?) as usize;
    let crc = u32::from_be_bytes(header[4..].try_into().map_err(|_| ())?);
    let payload = data
        .get(HEADER_LEN..HEADER_LEN.checked_add(len).ok_or(())?)
        .ok_or(())?;
    if len < MIN_PAYLOAD || crc32fast::hash(payload) != crc {
        return Err(());
    }
    decode_payload(payload).map_err(|_| ())
}

/// The open log file. Writes append; [`Wal::truncate`] empties it after a checkpoint.
#[derive(Debug)]
pub(crate) struct Wal {
    file: File,
    len: u64,
}

impl Wal {
    /// Opens (creating if needed) the log at `path`, returns its valid entries, and cuts off a torn
    /// tail (logging a warning) so that new entries follow the last valid one.
    pub(crate) fn open(path: &Path) -> Result<(Self, Vec<Entry>), StorageError> {
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)?;
        let mut data = Vec::new();
        file.seek(SeekFrom::Start(0))?;
        file.read_to_end(&mut data)?;
        let parsed = parse(&data)?;
        if let Some(reason) = &parsed.torn {
            tracing::warn!(
                path = %path.display(),
                valid_bytes = parsed.valid_len,
                discarded_bytes = data.len() - parsed.valid_len,
                entries = parsed.entries.len(),
                "write-ahead log has a torn tail ({reason}); truncating it"
            );
            file.set_len(parsed.valid_len as u64)?;
            file.sync_all()?;
        }
        let wal = Wal {
            file,
            len: parsed.valid_len as u64,
        };
        Ok((wal, parsed.entries))
    }

    /// The file's length in bytes, as far as this handle has written it.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Appends `data` (whole encoded entries) and `fdatasync`s. An error leaves the file in an
    /// unknown state: the caller must not retry.
    pub(crate) fn append_sync(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.file.write_all(data)?;
        self.len += data.len() as u64;
        self.file.sync_data()
    }

    /// Empties the log and syncs the new length. Only call once every entry in it is durable
    /// elsewhere.
    pub(crate) fn truncate(&mut self) -> std::io::Result<()> {
        self.file.set_len(0)?;
        self.len = 0;
        self.file.sync_all()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    fn put(k: &str, v: &str) -> Op {
        Op::Put(k.as_bytes().to_vec(), v.as_bytes().to_vec())
    }

    fn sample() -> Vec<Entry> {
        vec![
            Entry {
                lsn: 1,
                ops: vec![put("a", "1"), put("b", "")],
            },
            Entry {
                lsn: 2,
                ops: vec![Op::Delete(b"a".to_vec())],
            },
            Entry {
                lsn: 3,
                ops: vec![],
            },
        ]
    }

    fn encode_all(entries: &[Entry]) -> Vec<u8> {
        let mut out = Vec::new();
        for e in entries {
            encode_entry(e.lsn, &e.ops, &mut out).unwrap();
        }
        out
    }

    #[test]
    fn roundtrip() {
        let data = encode_all(&sample());
        let parsed = parse(&data).unwrap();
        assert_eq!(parsed.entries, sample());
        assert_eq!(parsed.valid_len, data.len());
        assert!(parsed.torn.is_none());
        assert!(parse(&[]).unwrap().entries.is_empty());
    }

    #[test]
    fn torn_tails_stop_reading() {
        let data = encode_all(&sample());
        let first_len = {
            let mut one = Vec::new();
            encode_entry(1, &sample()[0].ops, &mut one).unwrap();
            one.len()
        };
        // Every strict prefix that cuts the second entry yields exactly the first.
        for cut in first_len + 1..first_len + 10 {
            let parsed = parse(&data[..cut]).unwrap();
            assert_eq!(parsed.entries.len(), 1, "cut at {cut}");
            assert_eq!(parsed.valid_len, first_len);
            assert!(parsed.torn.is_some());
        }
        // A zero-filled tail (extended size, data never written) is torn, not corrupt.
        let mut zeroed = data.clone();
        zeroed.extend_from_slice(&[0; 64]);
        let parsed = parse(&zeroed).unwrap();
        assert_eq!(parsed.entries, sample());
        assert_eq!(parsed.valid_len, data.len());
        // A huge length is a torn entry.
        let mut huge = data.clone();
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        huge.extend_from_slice(&[7; 20]);
        assert_eq!(parse(&huge).unwrap().valid_len, data.len());
    }

    #[test]
    fn bad_crc_in_the_middle_is_corruption_not_a_torn_tail() {
        let mut data = encode_all(&sample());
        let mut first = Vec::new();
        encode_entry(1, &sample()[0].ops, &mut first).unwrap();
        // Flip a byte in the second entry's payload: intact entries follow it.
        data[first.len() + HEADER_LEN + 3] ^= 0xff;
        let err = parse(&data).unwrap_err();
        assert!(matches!(err, StorageError::Corrupt(_)), "{err}");
        assert!(err.to_string().contains("acknowledged writes"), "{err}");
        // So is a flip in the second entry's length field.
        let mut data = encode_all(&sample());
        data[first.len() + 1] ^= 0x40;
        assert!(matches!(parse(&data), Err(StorageError::Corrupt(_))));
        // And a flip in the very first entry.
        let mut data = encode_all(&sample());
        data[HEADER_LEN + 2] ^= 0x01;
        assert!(matches!(parse(&data), Err(StorageError::Corrupt(_))));
    }

    #[test]
    fn bad_crc_in_the_last_entry_is_a_torn_tail() {
        let mut data = encode_all(&sample());
        let n = data.len();
        data[n - 1] ^= 0xff;
        let parsed = parse(&data).unwrap();
        assert_eq!(parsed.entries.len(), sample().len() - 1);
        assert!(parsed.torn.unwrap().contains("checksum"));
    }

    #[test]
    fn checksummed_garbage_is_corruption() {
        let payload = [0u8, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 9, 0, 0, 0, 0];
        let mut data = Vec::new();
        data.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        data.extend_from_slice(&crc32fast::hash(&payload).to_be_bytes());
        data.extend_from_slice(&payload);
        assert!(matches!(parse(&data), Err(StorageError::Corrupt(_))));
    }

    #[test]
    fn open_truncates_torn_tail_and_appends_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal.log");
        let mut data = encode_all(&sample()[..2]);
        let valid = data.len();
        data.extend_from_slice(&[0, 0, 0, 40, 1, 2]);
        std::fs::write(&path, &data).unwrap();

        let (mut wal, entries) = Wal::open(&path).unwrap();
        assert_eq!(entries, sample()[..2].to_vec());
        assert_eq!(wal.len(), valid as u64);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), valid as u64);

        let mut third = Vec::new();
        encode_entry(3, &[], &mut third).unwrap();
        wal.append_sync(&third).unwrap();
        drop(wal);
        let (mut wal, entries) = Wal::open(&path).unwrap();
        assert_eq!(entries, sample());

        wal.truncate().unwrap();
        wal.append_sync(&third).unwrap();
        drop(wal);
        let (wal, entries) = Wal::open(&path).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(wal.len(), third.len() as u64);
    }
}
