//! How [`super::KvMvcc`] lays a versioned keyspace out in an ordered key-value [`Backend`]
//! (`crate::storage::Backend`).
//!
//! - `l/<key>`: the current version of each live key (an [`Entry`]). Reads at the latest revision
//!   touch only these, so they cost what they cost before history existed.
//! - `r/<rev><idx>`: the change row of the `idx`-th write of revision `rev`: when (unix
//!   milliseconds) and which key. Once the version it wrote is superseded, the row holds that
//!   version too (rewritten in place by the write that supersedes it); a delete's row holds its
//!   tombstone from the start. A current version's row is small, as its `l/` row has it. An
//!   in-memory index (`super::index`) says which rows hold a key's versions. Watches replay
//!   from these rows; retention reads their times. The two forms are told apart by their first
//!   byte.
//! - `h/<esc(key)>\0\x01<rev>`: a copy of a superseded version whose change row is gone: the
//!   layout before copied every superseded version and tombstone here, and compaction may have
//!   removed the change row of a version written before it. `esc` doubles as an order- and
//!   prefix-preserving escape (`0x00` -> `0x00 0xFF`, then the terminator `0x00 0x01`), so one
//!   key's versions are one contiguous range, in revision order, and no key's range contains
//!   another's.
//! - `m/revision`, `m/compact`, `m/compacted`: the store revision, the compaction revision, and
//!   how far compaction has physically removed what it may.
//!
//! Revisions are big-endian so that byte order is revision order.
//!
//! Public for tests and tools that look at stored bytes (tamper tests, the crash harness):
//! [`current_key`] and [`VALUE_OFFSET`] locate a current version's sealed record.

use super::{Revision, Version, VersionKind};
use crate::storage::StorageError;

/// The prefix of current versions.
pub(super) const LATEST: &[u8] = b"l/";
/// The prefix of copied superseded versions (and the layout before's tombstones).
pub(super) const HISTORY: &[u8] = b"h/";
/// The prefix of the change rows, which hold the versions.
pub(super) const CHANGES: &[u8] = b"r/";
/// The store revision (big-endian u64).
pub(super) const REVISION_KEY: &[u8] = b"m/revision";
/// The compaction revision: reads below it are refused.
pub(super) const COMPACT_KEY: &[u8] = b"m/compact";
/// How far compaction has removed superseded versions (at most `m/compact`).
pub(super) const COMPACTED_KEY: &[u8] = b"m/compacted";

/// The first byte of an encoded [`Entry`] (so that a raw sealed record of the layout before
/// history, which starts with its own format byte, is never mistaken for one).
const ENTRY_MAGIC: u8 = 0xC5;
const KIND_PUT: u8 = 0;
const KIND_DELETE: u8 = 1;
/// magic, kind, create, mod, version, lease, prev, written.
const ENTRY_HEADER_LEN: usize = 2 + 8 * 6;

/// Where a current version's sealed record starts in its stored entry.
pub const VALUE_OFFSET: usize = ENTRY_HEADER_LEN;

/// The backend key of `key`'s current version.
pub fn current_key(key: &[u8]) -> Vec<u8> {
    latest_key(key)
}

/// `l/<key>`.
pub(super) fn latest_key(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(LATEST.len() + key.len());
    out.extend_from_slice(LATEST);
    out.extend_from_slice(key);
    out
}

/// `h/<esc(prefix)>`: the start of every history range whose key starts with `prefix`.
pub(super) fn history_prefix(prefix: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HISTORY.len() + prefix.len() + 4);
    out.extend_from_slice(HISTORY);
    escape_into(prefix, &mut out);
    out
}

/// `h/<esc(key)>\0\x01`: the range of one key's versions.
pub(super) fn history_range(key: &[u8]) -> Vec<u8> {
    let mut out = history_prefix(key);
    out.extend_from_slice(&[0, 1]);
    out
}

/// `h/<esc(key)>\0\x01<rev>`.
pub(super) fn history_key(key: &[u8], revision: Revision) -> Vec<u8> {
    let mut out = history_range(key);
    out.extend_from_slice(&revision.to_be_bytes());
    out
}

/// The key and revision of a `h/` key.
pub(super) fn parse_history_key(raw: &[u8]) -> Result<(Vec<u8>, Revision), StorageError> {
    let body = raw
        .strip_prefix(HISTORY)
        .ok_or_else(|| corrupt("history key without its prefix"))?;
    let mut key = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        match (body[i], body.get(i + 1)) {
            (0, Some(0xFF)) => {
                key.push(0);
                i += 2;
            }
            (0, Some(1)) => {
                let rev = body
                    .get(i + 2..)
                    .and_then(|r| <[u8; 8]>::try_from(r).ok())
                    .ok_or_else(|| corrupt("history key with a bad revision"))?;
                return Ok((key, u64::from_be_bytes(rev)));
            }
            (0, _) => return Err(corrupt("history key with a bad escape")),
            (b, _) => {
                key.push(b);
                i += 1;
            }
        }
    }
    Err(corrupt("history key without its terminator"))
}

fn escape_into(key: &[u8], out: &mut Vec<u8>) {
    for &b in key {
        out.push(b);
        if b == 0 {
            out.push(0xFF);
        }
    }
}

/// `r/<rev><idx>`.
pub(super) fn change_key(revision: Revision, index: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(CHANGES.len() + 12);
    out.extend_from_slice(CHANGES);
    out.extend_from_slice(&revision.to_be_bytes());
    out.extend_from_slice(&index.to_be_bytes());
    out
}

/// The revision of a `r/` key.
pub(super) fn parse_change_key(raw: &[u8]) -> Result<Revision, StorageError> {
    raw.strip_prefix(CHANGES)
        .and_then(|r| r.get(..8))
        .and_then(|r| <[u8; 8]>::try_from(r).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| corrupt("change index key of a bad length"))
}

/// The first byte of a change row that holds its version (a small row starts with its
/// big-endian time, whose first byte is 0 for the next two million years).
const CHANGE_WITH_VERSION: u8 = 0xC6;

/// A small change row's value: when, and which key (the version is the key's current one).
pub(super) fn change_value(unix_ms: u64, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + key.len());
    out.extend_from_slice(&unix_ms.to_be_bytes());
    out.extend_from_slice(key);
    out
}

/// A change row's value that holds its version: when, which key, and the encoded [`Entry`].
pub(super) fn change_value_with(unix_ms: u64, key: &[u8], entry: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + 8 + 4 + key.len() + entry.len());
    out.push(CHANGE_WITH_VERSION);
    out.extend_from_slice(&unix_ms.to_be_bytes());
    out.extend_from_slice(&(key.len() as u32).to_be_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(entry);
    out
}

/// A parsed change row.
pub(super) struct ChangeRow<'a> {
    /// When it was written (unix milliseconds).
    pub time: u64,
    /// Which key.
    pub key: &'a [u8],
    /// The version's encoded [`Entry`] (`None` in a small row).
    pub entry: Option<&'a [u8]>,
}

impl ChangeRow<'_> {
    /// The version the row holds, if it holds one.
    pub(super) fn version(&self) -> Result<Option<Version>, StorageError> {
        self.entry.map(|e| Entry::decode(self.key, e)).transpose()
    }
}

/// Parses a change row's value, in either form.
pub(super) fn parse_change_value(raw: &[u8]) -> Result<ChangeRow<'_>, StorageError> {
    if raw.first() == Some(&CHANGE_WITH_VERSION) {
        let body = &raw[1..];
        let (time, body) = body
            .split_first_chunk::<8>()
            .ok_or_else(|| corrupt("change row too short"))?;
        let (len, body) = body
            .split_first_chunk::<4>()
            .ok_or_else(|| corrupt("change row too short"))?;
        let len = u32::from_be_bytes(*len) as usize;
        if body.len() < len {
            return Err(corrupt("change row with a key longer than the row"));
        }
        let (key, entry) = body.split_at(len);
        return Ok(ChangeRow {
            time: u64::from_be_bytes(*time),
            key,
            entry: Some(entry),
        });
    }
    let (time, key) = raw
        .split_first_chunk::<8>()
        .ok_or_else(|| corrupt("change index value too short"))?;
    Ok(ChangeRow {
        time: u64::from_be_bytes(*time),
        key,
        entry: None,
    })
}

/// The index within its revision of a `r/` key.
pub(super) fn parse_change_index(raw: &[u8]) -> Result<u32, StorageError> {
    raw.strip_prefix(CHANGES)
        .and_then(|r| r.get(8..))
        .and_then(|r| <[u8; 4]>::try_from(r).ok())
        .map(u32::from_be_bytes)
        .ok_or_else(|| corrupt("change index key of a bad length"))
}

/// The length of the entry inside a change row of `key` whose value is `row_len` bytes.
pub(super) fn entry_len_in_change(row_len: usize, key: &[u8]) -> usize {
    row_len.saturating_sub(1 + 8 + 4 + key.len())
}

/// A big-endian u64 meta value (absent: 0).
pub(super) fn parse_u64(raw: Option<Vec<u8>>, what: &str) -> Result<u64, StorageError> {
    match raw {
        None => Ok(0),
        Some(v) => <[u8; 8]>::try_from(v.as_slice())
            .map(u64::from_be_bytes)
            .map_err(|_| corrupt(&format!("{what} has a bad length"))),
    }
}

/// One stored version: its metadata in clear, its value (a sealed record) as it is.
pub(super) struct Entry;

impl Entry {
    /// Encodes `v` (its key is not stored: the storage key says it).
    pub(super) fn encode(v: &Version) -> Vec<u8> {
        let mut out = Vec::with_capacity(ENTRY_HEADER_LEN + v.value.len());
        out.push(ENTRY_MAGIC);
        out.push(match v.kind {
            VersionKind::Put => KIND_PUT,
            VersionKind::Delete => KIND_DELETE,
        });
        out.extend_from_slice(&v.create_revision.to_be_bytes());
        out.extend_from_slice(&v.mod_revision.to_be_bytes());
        out.extend_from_slice(&v.version.to_be_bytes());
        out.extend_from_slice(&v.lease.to_be_bytes());
        out.extend_from_slice(&v.prev_revision.to_be_bytes());
        out.extend_from_slice(&v.written_ms.to_be_bytes());
        out.extend_from_slice(&v.value);
        out
    }

    /// Decodes an entry stored for `key`.
    pub(super) fn decode(key: &[u8], raw: &[u8]) -> Result<Version, StorageError> {
        if raw.len() < ENTRY_HEADER_LEN || raw[0] != ENTRY_MAGIC {
            return Err(corrupt("a stored version has a bad header"));
        }
        let kind = match raw[1] {
            KIND_PUT => VersionKind::Put,
            KIND_DELETE => VersionKind::Delete,
            _ => return Err(corrupt("a stored version has an unknown kind")),
        };
        let field = |i: usize| {
            let start = 2 + 8 * i;
            let mut b = [0u8; 8];
            b.copy_from_slice(&raw[start..start + 8]);
            b
        };
        Ok(Version {
            key: key.to_vec(),
            kind,
            create_revision: u64::from_be_bytes(field(0)),
            mod_revision: u64::from_be_bytes(field(1)),
            version: u64::from_be_bytes(field(2)),
            lease: i64::from_be_bytes(field(3)),
            prev_revision: u64::from_be_bytes(field(4)),
            written_ms: u64::from_be_bytes(field(5)),
            value: raw[ENTRY_HEADER_LEN..].to_vec(),
        })
    }
}

fn corrupt(what: &str) -> StorageError {
    StorageError::Corrupt(what.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_keys_keep_key_order_and_round_trip() {
        let keys: [&[u8]; 5] = [b"a", b"a\0", b"a\0b", b"ab", b"b"];
        let mut encoded: Vec<Vec<u8>> = keys.iter().map(|k| history_key(k, 7)).collect();
        let sorted = encoded.clone();
        encoded.sort();
        assert_eq!(encoded, sorted, "escaping preserves key order");
        for k in keys {
            assert_eq!(
                parse_history_key(&history_key(k, 7)).expect("parse"),
                (k.to_vec(), 7)
            );
            // One key's range never holds another key's versions.
            for other in keys.iter().filter(|o| **o != k) {
                assert!(!history_key(other, 1).starts_with(&history_range(k)));
            }
        }
        assert!(history_key(b"a", 2) < history_key(b"a", 10));
        assert!(parse_history_key(b"h/a\0\x02").is_err());
        assert!(parse_history_key(b"h/a").is_err());
    }

    #[test]
    fn entries_round_trip_and_refuse_garbage() {
        let v = Version {
            key: b"k".to_vec(),
            kind: VersionKind::Delete,
            create_revision: 3,
            mod_revision: 9,
            version: 0,
            lease: -1,
            prev_revision: 5,
            written_ms: 1_700_000_000_000,
            value: b"sealed".to_vec(),
        };
        let raw = Entry::encode(&v);
        assert_eq!(raw.len(), ENTRY_HEADER_LEN + 6);
        assert_eq!(Entry::decode(b"k", &raw).expect("decode"), v);
        assert!(Entry::decode(b"k", &raw[..10]).is_err());
        assert!(Entry::decode(b"k", b"\x01plain record").is_err());
    }

    #[test]
    fn change_index_round_trips() {
        let k = change_key(42, 3);
        assert_eq!(parse_change_key(&k).expect("rev"), 42);
        assert_eq!(parse_change_index(&k).expect("idx"), 3);
        assert!(change_key(9, 0) < change_key(10, 0));
        let before = change_value(1_700_000_000_000, b"s/ns/name");
        let row = parse_change_value(&before).expect("value");
        assert_eq!((row.time, row.key), (1_700_000_000_000, &b"s/ns/name"[..]));
        assert!(row.version().expect("none").is_none());
        assert!(parse_change_value(b"short").is_err());
        let v = Version {
            key: b"s/ns/name".to_vec(),
            kind: VersionKind::Put,
            create_revision: 3,
            mod_revision: 42,
            version: 2,
            lease: 0,
            prev_revision: 3,
            written_ms: 1_700_000_000_000,
            value: b"sealed".to_vec(),
        };
        let raw = change_value_with(1_700_000_000_000, &v.key, &Entry::encode(&v));
        let row = parse_change_value(&raw).expect("value");
        assert_eq!((row.time, row.key), (1_700_000_000_000, &b"s/ns/name"[..]));
        assert_eq!(row.version().expect("decode"), Some(v.clone()));
        assert_eq!(
            entry_len_in_change(raw.len(), &v.key),
            Entry::encode(&v).len()
        );
        assert!(parse_change_value(&raw[..5]).is_err());
        let mut long_key = raw.clone();
        long_key[9..13].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(parse_change_value(&long_key).is_err());
    }
}
