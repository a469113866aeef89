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
//! With integrity (every data directory the store opens; see `super::integrity`) an entry also
//! carries the state digest after its batch and a MAC:
//!
//! ```text
//! entry   = len: u32 | crc: u32 (crc32 of payload and mac) | payload (len bytes) | mac (32 bytes)
//! payload = lsn: u64 | op count: u32 | op* | digest (40 bytes)
//! ```
//!
//! The crc tells damage, the MAC forgery: an entry whose crc matches but whose MAC does not was
//! written by someone without the key (an attacker appending entries, say to carry an older
//! database up to the checkpoint's lsn), wherever it is, and the log is refused. A crash cannot
//! produce one. A damaged entry at the end (its crc fails) is a torn write; its bytes are moved
//! aside to `wal.log.damaged-<time>` rather than silently dropped.
//!
//! The file is grown ahead of the entries in steps of zero bytes ([`PREALLOCATE`]), written and
//! synced once per step, and entries then overwrite those zeros in place: a sync after an
//! append only flushes the entry's data blocks, where appending past the end made every
//! `fdatasync` also commit the file's new size and extents to the filesystem's journal (on
//! the development VM's ext4 a sync took about half as long). The log thus ends where the
//! zeros begin: an all-zero rest is the unused part of the file, not damage.
//!
//! Reading stops at the first entry that is truncated, has a bad checksum or a length too small
//! to hold a payload (a zero-filled start of an otherwise damaged rest looks like that): that is
//! a torn tail, an unacknowledged
//! write interrupted by a crash, provided no intact entry follows it. A damaged entry followed by
//! an intact one is corruption in the middle of the log (a torn write only damages the end), and
//! so is an entry whose checksum matches but whose payload cannot be decoded: both are reported as
//! errors, because cutting the log there would silently drop acknowledged writes.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use super::{Lsn, Op, StorageError};
use crate::crypto::integrity::{DIGEST_BYTES, TAG_LEN};
use crate::crypto::{IntegrityKeys, StateDigest};

/// The log file grows in steps of this many zero bytes (see the module docs).
pub(crate) const PREALLOCATE: u64 = 4 << 20;

/// The MAC domain of log entries.
const MAC_DOMAIN: &[u8] = b"wal entry";

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
    /// The state digest after the batch (authenticated entries only).
    pub(crate) digest: Option<StateDigest>,
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
#[cfg(test)]
pub(crate) fn encode_entry(lsn: Lsn, ops: &[Op], out: &mut Vec<u8>) -> Result<(), StorageError> {
    encode_entry_with(lsn, ops, None, out)
}

/// As [`encode_entry`]; with `auth`, an authenticated entry carrying the digest after the batch.
pub(crate) fn encode_entry_with(
    lsn: Lsn,
    ops: &[Op],
    auth: Option<(&IntegrityKeys, &StateDigest)>,
    out: &mut Vec<u8>,
) -> Result<(), StorageError> {
    let start = out.len();
    let result = encode_into(lsn, ops, auth, out, start);
    if result.is_err() {
        out.truncate(start);
    }
    result
}

fn encode_into(
    lsn: Lsn,
    ops: &[Op],
    auth: Option<(&IntegrityKeys, &StateDigest)>,
    out: &mut Vec<u8>,
    start: usize,
) -> Result<(), StorageError> {
    let extra = if auth.is_some() { DIGEST_BYTES } else { 0 };
    let payload_len: usize = MIN_PAYLOAD
        + extra
        + ops
            .iter()
            .map(|op| match op {
                Op::Put(k, v) | Op::PutOver(k, v, _) => 1 + 4 + k.len() + 4 + v.len(),
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
            Op::Put(k, v) | Op::PutOver(k, v, _) => {
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
    if let Some((keys, digest)) = auth {
        out.extend_from_slice(&digest.to_bytes());
        let tag = keys.mac(MAC_DOMAIN, &[&out[start + HEADER_LEN..]]);
        out.extend_from_slice(&tag);
    }
    let tag_len = if auth.is_some() { TAG_LEN } else { 0 };
    debug_assert_eq!(out.len() - start, HEADER_LEN + payload_len + tag_len);
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

/// Decodes a payload whose checksum (and MAC, if `authenticated`) has been verified.
pub(crate) fn decode_payload(payload: &[u8], authenticated: bool) -> Result<Entry, String> {
    let (payload, digest) = if authenticated {
        let split = payload
            .len()
            .checked_sub(DIGEST_BYTES)
            .ok_or("payload too short for a digest")?;
        let (p, d) = payload.split_at(split);
        (p, StateDigest::from_bytes(d))
    } else {
        (payload, None)
    };
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
    Ok(Entry { lsn, ops, digest })
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

/// Parses log bytes up to the first torn entry. Fails on corruption that a torn write cannot
/// explain (a checksummed payload that does not decode, damage followed by an intact entry) and,
/// with `keys`, on any entry whose checksum matches but whose MAC does not (a forgery).
pub(crate) fn parse(data: &[u8], keys: Option<&IntegrityKeys>) -> Result<Parsed, StorageError> {
    let tag_len = if keys.is_some() { TAG_LEN } else { 0 };
    let min_payload = MIN_PAYLOAD + if keys.is_some() { DIGEST_BYTES } else { 0 };
    let mut entries = Vec::new();
    let mut pos = 0;
    let torn = loop {
        let rest = &data[pos..];
        // The end of the log, or the zeros the file was grown by ahead of it.
        if rest.iter().all(|b| *b == 0) {
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
        if len < min_payload {
            break Some(format!("entry length {len} is too small"));
        }
        if rest.len() - HEADER_LEN < len + tag_len {
            break Some(format!(
                "truncated entry ({} of {} bytes)",
                rest.len() - HEADER_LEN,
                len + tag_len
            ));
        }
        let body = &rest[HEADER_LEN..HEADER_LEN + len + tag_len];
        if crc32fast::hash(body) != crc {
            break Some("entry checksum mismatch".to_owned());
        }
        let payload = &body[..len];
        if let Some(keys) = keys
            && !keys.verify(MAC_DOMAIN, &[payload], &body[len..])
        {
            return Err(forged(pos));
        }
        let entry = decode_payload(payload, keys.is_some()).map_err(|e| {
            StorageError::Corrupt(format!(
                "write-ahead log entry at offset {pos} has a valid checksum but does not decode: {e}"
            ))
        })?;
        entries.push(entry);
        pos += HEADER_LEN + len + tag_len;
    };
    if torn.is_some() {
        let last = entries.last().map(|e: &Entry| e.lsn);
        if let Some((at, lsn)) = intact_entry_after(data, pos, last, keys)? {
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

/// The error for an entry whose checksum matches and whose MAC does not.
fn forged(pos: usize) -> StorageError {
    StorageError::Corrupt(format!(
        "write-ahead log entry at offset {pos} fails authentication (its checksum matches, its \
         MAC does not): it was not written by this store, whose key it lacks. The data \
         directory has been tampered with; restore it from a backup"
    ))
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
    let parsed = parse(data, None)?;
    let batches = parsed.entries.into_iter().map(|e| (e.lsn, e.ops)).collect();
    Ok((batches, parsed.valid_len))
}

/// Looks for an intact entry after a damaged one at `bad`, which tells mid-log corruption apart
/// from a torn tail (a torn write only ever damages the end of the log). The damaged entry's
/// length field may itself be wrong, so entries are found by their lsn: the next few lsns after
/// the last good one are searched for as bytes, and each hit is checked as a whole entry (length,
/// checksum, decode). With no good entry before the damage (so no lsn to search for), every offset
/// in the next 1 MiB is tried instead.
/// An intact entry after the damage is corruption, and so is a forged one (checksum right, MAC
/// wrong): that is reported as such at once.
fn intact_entry_after(
    data: &[u8],
    bad: usize,
    last: Option<Lsn>,
    keys: Option<&IntegrityKeys>,
) -> Result<Option<(usize, Lsn)>, StorageError> {
    let check = |at: usize| -> Result<Option<Entry>, StorageError> {
        match parse_one(&data[at..], keys) {
            Ok(e) => Ok(Some(e)),
            Err(One::Forged) => Err(forged(at)),
            Err(One::Bad) => Ok(None),
        }
    };
    let Some(base) = last else {
        let end = data.len().min(bad.saturating_add(1 << 20));
        for at in bad + 1..end {
            if let Some(e) = check(at)? {
                return Ok(Some((at, e.lsn)));
            }
        }
        return Ok(None);
    };
    for lsn in (1..=3).filter_map(|d| base.checked_add(d)) {
        let needle = lsn.to_be_bytes();
        let mut from = bad + HEADER_LEN + 1;
        while let Some(i) = data
            .get(from..)
            .and_then(|rest| rest.windows(8).position(|w| w == needle))
        {
            let at = from + i - HEADER_LEN;
            if check(at)?.is_some_and(|e| e.lsn == lsn) {
                return Ok(Some((at, lsn)));
            }
            from += i + 1;
        }
    }
    Ok(None)
}

/// Why [`parse_one`] found no entry.
enum One {
    /// Not a whole entry with a matching checksum.
    Bad,
    /// A whole entry whose checksum matches but whose MAC does not.
    Forged,
}

/// Parses exactly one whole, checksummed (and, with `keys`, authenticated) entry at the start of
/// `data`.
fn parse_one(data: &[u8], keys: Option<&IntegrityKeys>) -> Result<Entry, One> {
    let tag_len = if keys.is_some() { TAG_LEN } else { 0 };
    let min_payload = MIN_PAYLOAD + if keys.is_some() { DIGEST_BYTES } else { 0 };
    let header = data.get(..HEADER_LEN).ok_or(One::Bad)?;
    let len = u32::from_be_bytes(header[..4].try_into().map_err(|_| One::Bad)?) as usize;
    let crc = u32::from_be_bytes(header[4..].try_into().map_err(|_| One::Bad)?);
    let end = HEADER_LEN
        .checked_add(len)
        .and_then(|e| e.checked_add(tag_len))
        .ok_or(One::Bad)?;
    let body = data.get(HEADER_LEN..end).ok_or(One::Bad)?;
    if len < min_payload || crc32fast::hash(body) != crc {
        return Err(One::Bad);
    }
    if let Some(keys) = keys
        && !keys.verify(MAC_DOMAIN, &[&body[..len]], &body[len..])
    {
        return Err(One::Forged);
    }
    decode_payload(&body[..len], keys.is_some()).map_err(|_| One::Bad)
}

/// Writes `tail` (a damaged end of the log) to a new file beside `path`, durably, and returns
/// its path.
fn move_aside(path: &Path, tail: &[u8]) -> Result<std::path::PathBuf, StorageError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".damaged-{now}"));
    let aside = std::path::PathBuf::from(name);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&aside)?;
    file.write_all(tail)?;
    file.sync_all()?;
    if let Some(dir) = path.parent() {
        #[cfg(unix)]
        File::open(dir)?.sync_all()?;
    }
    Ok(aside)
}

/// The open log file. Entries go after the last one, into space grown ahead of them;
/// [`Wal::truncate`] empties it after a checkpoint.
#[derive(Debug)]
pub(crate) struct Wal {
    file: File,
    /// Where the entries end.
    len: u64,
    /// The file's size: zeros from `len` up to here.
    allocated: u64,
}

impl Wal {
    /// Opens (creating if needed) the log at `path`, returns its valid entries, and cuts off a torn
    /// tail (logging a warning, and moving any non-zero bytes of it aside to
    /// `wal.log.damaged-<unix time>` first) so that new entries follow the last valid one. With
    /// `keys`, the entries are authenticated ones (see the module docs).
    pub(crate) fn open(
        path: &Path,
        keys: Option<&IntegrityKeys>,
    ) -> Result<(Self, Vec<Entry>), StorageError> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let mut data = Vec::new();
        file.seek(SeekFrom::Start(0))?;
        file.read_to_end(&mut data)?;
        let parsed = parse(&data, keys)?;
        if let Some(reason) = &parsed.torn {
            let tail = &data[parsed.valid_len..];
            // The zeros the file was grown by are not worth keeping.
            let written = tail.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
            let tail = &tail[..written];
            if !tail.is_empty() {
                let aside = move_aside(path, tail)?;
                tracing::warn!(
                    path = %path.display(),
                    saved = %aside.display(),
                    "the write-ahead log's last entry is damaged or incomplete ({reason}); its \
                     bytes are kept in the saved file"
                );
            }
            tracing::warn!(
                path = %path.display(),
                valid_bytes = parsed.valid_len,
                discarded_bytes = data.len() - parsed.valid_len,
                entries = parsed.entries.len(),
                "write-ahead log has a torn tail ({reason}); truncating it"
            );
            file.set_len(parsed.valid_len as u64)?;
            file.sync_all()?;
            data.truncate(parsed.valid_len);
        }
        let wal = Wal {
            file,
            len: parsed.valid_len as u64,
            allocated: data.len() as u64,
        };
        Ok((wal, parsed.entries))
    }

    /// The log's length in bytes (its entries), as far as this handle has written it.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Writes `data` (whole encoded entries) after the last entry, in one `write`, and
    /// `fdatasync`s. An error leaves the file in an unknown state: the caller must not retry.
    pub(crate) fn append_sync(&mut self, data: &[u8]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt as _;
        let end = self.len + data.len() as u64;
        if end > self.allocated {
            self.grow(end)?;
        }
        self.file.write_all_at(data, self.len)?;
        self.len = end;
        self.file.sync_data()
    }

    /// Grows the file with zeros to the next [`PREALLOCATE`] step at or past `end`, and syncs
    /// it whole (its size and extents too), so that the appends into that space need to sync
    /// their data only.
    fn grow(&mut self, end: u64) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt as _;
        // Zeros from a static block: a large heap buffer, freed again, would raise glibc's
        // mmap threshold and leave later large allocations (log rounds, values) on the heap.
        static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
        let target = end.div_ceil(PREALLOCATE) * PREALLOCATE;
        let mut at = self.allocated;
        while at < target {
            let n = (target - at).min(ZEROS.len() as u64);
            self.file.write_all_at(&ZEROS[..n as usize], at)?;
            at += n;
        }
        self.file.sync_all()?;
        self.allocated = target;
        Ok(())
    }

    /// Empties the log and syncs the new length. Only call once every entry in it is durable
    /// elsewhere. (The space is grown again by the next append: zeros over the old entries
    /// could not be told from a torn one followed by intact ones.)
    pub(crate) fn truncate(&mut self) -> std::io::Result<()> {
        self.file.set_len(0)?;
        self.len = 0;
        self.allocated = 0;
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
                digest: None,
            },
            Entry {
                lsn: 2,
                ops: vec![Op::Delete(b"a".to_vec())],
                digest: None,
            },
            Entry {
                lsn: 3,
                ops: vec![],
                digest: None,
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
        let parsed = parse(&data, None).unwrap();
        assert_eq!(parsed.entries, sample());
        assert_eq!(parsed.valid_len, data.len());
        assert!(parsed.torn.is_none());
        assert!(parse(&[], None).unwrap().entries.is_empty());
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
            let parsed = parse(&data[..cut], None).unwrap();
            assert_eq!(parsed.entries.len(), 1, "cut at {cut}");
            assert_eq!(parsed.valid_len, first_len);
            // (A cut that kept only zero bytes of the entry's length is no entry at all.)
            let kept_zeros_only = data[first_len..cut].iter().all(|b| *b == 0);
            assert_eq!(parsed.torn.is_some(), !kept_zeros_only, "cut at {cut}");
        }
        // A zero-filled tail (the space the file is grown by ahead of the entries) is the end
        // of the log: neither torn nor corrupt.
        let mut zeroed = data.clone();
        zeroed.extend_from_slice(&[0; 64]);
        let parsed = parse(&zeroed, None).unwrap();
        assert_eq!(parsed.torn, None);
        assert_eq!(parsed.entries, sample());
        assert_eq!(parsed.valid_len, data.len());
        // A huge length is a torn entry.
        let mut huge = data.clone();
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        huge.extend_from_slice(&[7; 20]);
        assert_eq!(parse(&huge, None).unwrap().valid_len, data.len());
    }

    #[test]
    fn bad_crc_in_the_middle_is_corruption_not_a_torn_tail() {
        let mut data = encode_all(&sample());
        let mut first = Vec::new();
        encode_entry(1, &sample()[0].ops, &mut first).unwrap();
        // Flip a byte in the second entry's payload: intact entries follow it.
        data[first.len() + HEADER_LEN + 3] ^= 0xff;
        let err = parse(&data, None).unwrap_err();
        assert!(matches!(err, StorageError::Corrupt(_)), "{err}");
        assert!(err.to_string().contains("acknowledged writes"), "{err}");
        // So is a flip in the second entry's length field.
        let mut data = encode_all(&sample());
        data[first.len() + 1] ^= 0x40;
        assert!(matches!(parse(&data, None), Err(StorageError::Corrupt(_))));
        // And a flip in the very first entry.
        let mut data = encode_all(&sample());
        data[HEADER_LEN + 2] ^= 0x01;
        assert!(matches!(parse(&data, None), Err(StorageError::Corrupt(_))));
    }

    #[test]
    fn bad_crc_in_the_last_entry_is_a_torn_tail() {
        let mut data = encode_all(&sample());
        let n = data.len();
        data[n - 1] ^= 0xff;
        let parsed = parse(&data, None).unwrap();
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
        assert!(matches!(parse(&data, None), Err(StorageError::Corrupt(_))));
    }

    #[test]
    fn appends_go_into_space_grown_ahead_and_reopen_after_the_last_entry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal.log");
        let (mut wal, entries) = Wal::open(&path, None).unwrap();
        assert!(entries.is_empty());
        let mut bytes = Vec::new();
        encode_entry(1, &[put("a", "1")], &mut bytes).unwrap();
        wal.append_sync(&bytes).unwrap();
        // The file is one step of zeros long, the entry at its start.
        assert_eq!(std::fs::metadata(&path).unwrap().len(), PREALLOCATE);
        assert_eq!(wal.len(), bytes.len() as u64);
        drop(wal);
        let (mut wal, entries) = Wal::open(&path, None).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(wal.len(), bytes.len() as u64);
        // Not cut back: the zeros are the space ahead, not a torn tail.
        assert_eq!(std::fs::metadata(&path).unwrap().len(), PREALLOCATE);
        let mut second = Vec::new();
        encode_entry(2, &[put("b", "2")], &mut second).unwrap();
        wal.append_sync(&second).unwrap();
        // An append past the grown space grows it by whole steps.
        let big = vec![7u8; PREALLOCATE as usize];
        let mut third = Vec::new();
        encode_entry(3, &[Op::Put(b"c".to_vec(), big)], &mut third).unwrap();
        wal.append_sync(&third).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 2 * PREALLOCATE);
        drop(wal);
        let (wal, entries) = Wal::open(&path, None).unwrap();
        assert_eq!(entries.iter().map(|e| e.lsn).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(wal.len(), (bytes.len() + second.len() + third.len()) as u64);
        let mut wal = wal;
        wal.truncate().unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        drop(wal);
        let (_, entries) = Wal::open(&path, None).unwrap();
        assert!(entries.is_empty());
    }

    #[test]
    fn open_truncates_torn_tail_and_appends_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal.log");
        let mut data = encode_all(&sample()[..2]);
        let valid = data.len();
        data.extend_from_slice(&[0, 0, 0, 40, 1, 2]);
        std::fs::write(&path, &data).unwrap();

        let (mut wal, entries) = Wal::open(&path, None).unwrap();
        assert_eq!(entries, sample()[..2].to_vec());
        assert_eq!(wal.len(), valid as u64);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), valid as u64);

        let mut third = Vec::new();
        encode_entry(3, &[], &mut third).unwrap();
        wal.append_sync(&third).unwrap();
        drop(wal);
        let (mut wal, entries) = Wal::open(&path, None).unwrap();
        assert_eq!(entries, sample());

        wal.truncate().unwrap();
        wal.append_sync(&third).unwrap();
        drop(wal);
        let (wal, entries) = Wal::open(&path, None).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(wal.len(), third.len() as u64);
    }

    fn keys(b: u8) -> IntegrityKeys {
        IntegrityKeys::derive(&crate::crypto::Seed::from_slice(&[b; 32]).unwrap())
    }

    fn encode_auth(keys: &IntegrityKeys, entries: &[Entry]) -> Vec<u8> {
        let mut out = Vec::new();
        for e in entries {
            let d = StateDigest::EMPTY;
            encode_entry_with(e.lsn, &e.ops, Some((keys, &d)), &mut out).unwrap();
        }
        out
    }

    #[test]
    fn authenticated_entries_roundtrip_and_refuse_forgeries() {
        let k = keys(1);
        let data = encode_auth(&k, &sample());
        let parsed = parse(&data, Some(&k)).unwrap();
        assert_eq!(parsed.entries.len(), 3);
        assert_eq!(parsed.entries[1].ops, sample()[1].ops);
        assert_eq!(parsed.entries[2].digest, Some(StateDigest::EMPTY));
        assert_eq!(parsed.valid_len, data.len());
        // An unauthenticated log is never applied as an authenticated one (it reads as a
        // damaged tail, which open moves aside).
        let legacy = parse(&encode_all(&sample()), Some(&k)).unwrap();
        assert!(legacy.entries.is_empty() && legacy.torn.is_some());
        // Entries MAC'd under another store's key: forged, wherever they are, even last.
        let error = parse(&encode_auth(&keys(2), &sample()), Some(&k)).unwrap_err();
        assert!(
            error.to_string().contains("fails authentication"),
            "{error}"
        );
        let mut spliced = encode_auth(&k, &sample()[..2]);
        spliced.extend(encode_auth(&keys(2), &sample()[2..]));
        let error = parse(&spliced, Some(&k)).unwrap_err();
        assert!(error.to_string().contains("offset"), "{error}");
        // A forged entry behind a damaged one is still reported as forged.
        let mut data2 = encode_auth(&k, &sample()[..1]);
        let cut = data2.len();
        data2.extend(encode_auth(&k, &sample()[1..2]));
        data2[cut + HEADER_LEN + 1] ^= 0xff;
        data2.extend(encode_auth(&keys(2), &sample()[2..]));
        assert!(parse(&data2, Some(&k)).is_err());
    }

    #[test]
    fn authenticated_torn_tails_are_torn_and_damage_is_moved_aside() {
        let k = keys(1);
        let data = encode_auth(&k, &sample());
        let two = encode_auth(&k, &sample()[..2]).len();
        for cut in two + 1..data.len() {
            let parsed = parse(&data[..cut], Some(&k)).unwrap();
            assert_eq!(parsed.entries.len(), 2, "cut at {cut}");
            assert_eq!(parsed.valid_len, two);
        }
        // A flip in the last entry (its crc fails): torn, and open keeps its bytes aside.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal.log");
        let mut damaged = data.clone();
        let n = damaged.len();
        damaged[n - 3] ^= 0x10;
        std::fs::write(&path, &damaged).unwrap();
        let (wal, entries) = Wal::open(&path, Some(&k)).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(wal.len(), two as u64);
        let aside: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with("wal.log.damaged-"))
            .collect();
        assert_eq!(aside.len(), 1, "{aside:?}");
        assert_eq!(
            std::fs::read(dir.path().join(&aside[0])).unwrap(),
            damaged[two..].to_vec()
        );
    }
}
