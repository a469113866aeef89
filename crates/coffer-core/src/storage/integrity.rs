//! What the sled backend keeps to authenticate its state: the store's integrity key material
//! ([`StoreIntegrity`]), the MAC'd lsn record and write intent inside sled, and the anchor file.
//!
//! The keys come from an integrity seed that the KMS wraps, kept wrapped in the checkpoint
//! record (see `checkpoint_file`), so that the log can be authenticated before anything in the
//! database is read; `kms::integrity` unwraps it (or makes it, for a new or pre-integrity data
//! directory) before the backend opens.
//!
//! # Records
//!
//! - The lsn record, under the reserved key `\0coffer/lsn`: `lsn: u64 | digest (40 bytes) |
//!   MAC (32)`, written after every batch: the state sled holds, authenticated. A data
//!   directory from before integrity holds the bare 8-byte lsn.
//! - The write intent, under `\0coffer/intent`, written *before* a batch's ops: its lsn and,
//!   per op, the key and the SHA-256 of the value before and after it, MAC'd. sled may persist
//!   a prefix of a batch whose log entry never made it to disk (a crash); the intent is what
//!   lets open accept exactly those states of exactly those keys, and nothing an attacker made.
//! - The anchor (`--anchor-file`, on another volume): `magic "COFFERAN" | version: u32 (2) |
//!   store id (16) | lsn: u64 | store revision: u64 | digest (40) | MAC (32)`, replaced
//!   atomically at every checkpoint. A store whose state is older than its anchor refuses to
//!   start (the message names the revisions).
//! - On a shared keyspace (etcd): the integrity row and the MAC'd state digest key
//!   ([`SHARED_INTEGRITY_KEY`], [`SHARED_DIGEST_PREFIX`]), kept by the etcd backend.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use crate::crypto::integrity::{DIGEST_BYTES, TAG_LEN, value_hash};
use crate::crypto::{IntegrityKeys, StateDigest, StoreId};

use super::{Lsn, Op, StorageError};

const LSN_DOMAIN: &[u8] = b"sled lsn record";
const INTENT_DOMAIN: &[u8] = b"sled write intent";
const ANCHOR_DOMAIN: &[u8] = b"anchor";
const ANCHOR_MAGIC: &[u8; 8] = b"COFFERAN";
const ANCHOR_VERSION: u32 = 2;
const ANCHOR_LEN: usize = 8 + 4 + 16 + 8 + 8 + DIGEST_BYTES + TAG_LEN;
/// Length of an authenticated lsn record.
pub(crate) const LSN_RECORD_LEN: usize = 8 + DIGEST_BYTES + TAG_LEN;

/// The integrity seed as the checkpoint record keeps it: wrapped by the KMS, with the check
/// value that binds it to the store (seed id 0). Public facts only.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct WrappedIntegritySeed {
    /// The KMS ciphertext.
    #[prost(bytes = "vec", tag = "1")]
    pub ciphertext: Vec<u8>,
    /// The key_id of the KEK that wrapped it.
    #[prost(string, tag = "2")]
    pub key_id: String,
    /// The plugin's annotations, handed back on `Decrypt`.
    #[prost(btree_map = "string, bytes", tag = "3")]
    pub annotations: std::collections::BTreeMap<String, Vec<u8>>,
    /// `seed_check(seed, store id, 0)`.
    #[prost(bytes = "vec", tag = "4")]
    pub check: Vec<u8>,
}

/// A store's integrity material, unwrapped: its id, its keys, and the wrapped seed they come
/// from (written into every checkpoint record).
#[derive(Debug)]
pub struct StoreIntegrity {
    /// The store's id.
    pub store_id: StoreId,
    /// The keys derived from the integrity seed.
    pub keys: IntegrityKeys,
    /// The integrity seed, wrapped.
    pub wrapped: WrappedIntegritySeed,
}

/// On a shared keyspace (etcd): the unversioned key of the store's integrity row, `store id (16)
/// | WrappedIntegritySeed`, created once for all replicas (`Backend::put_if_absent`).
pub const SHARED_INTEGRITY_KEY: &[u8] = b"k/integrity";
/// On a shared keyspace: how many keys the state digest is kept in. Each versioned key's term
/// goes to one of them ([`shared_digest_shard`]), and the store's digest is their sum, so a
/// write's transaction compares and updates only the shards of the keys it writes: replicas
/// writing different keys rarely race on a shard, where one digest key would make every
/// write in the cluster race every other.
pub const SHARED_DIGEST_SHARDS: u8 = 64;
/// On a shared keyspace: the unversioned keys of the state digest's shards, this prefix and
/// the shard as two hex digits; each holds `digest (40) | MAC (32)`.
pub const SHARED_DIGEST_PREFIX: &[u8] = b"i/digest/";
const SHARED_DIGEST_DOMAIN: &[u8] = b"shared state digest shard";
/// Length of a digest shard key's value.
pub const SHARED_DIGEST_LEN: usize = DIGEST_BYTES + TAG_LEN;

/// The digest shard of a versioned key (below the keyspace's root): the first byte of its
/// SHA-256, modulo [`SHARED_DIGEST_SHARDS`]. Public and stable: it only spreads the writes.
pub fn shared_digest_shard(key: &[u8]) -> u8 {
    value_hash(key)[0] % SHARED_DIGEST_SHARDS
}

/// The unversioned key of digest shard `shard`.
pub fn shared_digest_key(shard: u8) -> Vec<u8> {
    let mut key = SHARED_DIGEST_PREFIX.to_vec();
    key.extend_from_slice(format!("{shard:02x}").as_bytes());
    key
}

/// The shard a digest shard key names (`None`: not one).
pub fn shared_digest_key_shard(key: &[u8]) -> Option<u8> {
    let hex = key.strip_prefix(SHARED_DIGEST_PREFIX)?;
    let shard = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
    (hex.len() == 2 && shard < SHARED_DIGEST_SHARDS).then_some(shard)
}

/// Encodes the integrity row of a shared keyspace.
pub fn encode_shared_integrity(store_id: &StoreId, wrapped: &WrappedIntegritySeed) -> Vec<u8> {
    use prost::Message as _;
    let mut out = store_id.0.to_vec();
    out.extend_from_slice(&wrapped.encode_to_vec());
    out
}

/// Decodes the integrity row of a shared keyspace.
pub fn decode_shared_integrity(
    bytes: &[u8],
) -> Result<(StoreId, WrappedIntegritySeed), StorageError> {
    use prost::Message as _;
    let bad = |why: String| StorageError::Corrupt(format!("the integrity row {why}"));
    let (id, rest) = bytes
        .split_first_chunk::<16>()
        .ok_or_else(|| bad("is too short".into()))?;
    let wrapped = WrappedIntegritySeed::decode(rest).map_err(|e| bad(e.to_string()))?;
    Ok((StoreId(*id), wrapped))
}

/// A shard of the state digest as a shared keyspace keeps it: MAC'd under the store's keys and
/// bound to its id and shard, so that a digest key copied from another store or another shard
/// (or made up) is refused.
pub fn encode_shared_digest(
    keys: &IntegrityKeys,
    store_id: &StoreId,
    shard: u8,
    digest: &StateDigest,
) -> Vec<u8> {
    let body = digest.to_bytes();
    let tag = keys.mac(SHARED_DIGEST_DOMAIN, &[&store_id.0, &[shard], &body]);
    let mut out = body.to_vec();
    out.extend_from_slice(&tag);
    out
}

/// Decodes and authenticates a shared keyspace's digest shard key.
pub fn decode_shared_digest(
    keys: &IntegrityKeys,
    store_id: &StoreId,
    shard: u8,
    bytes: &[u8],
) -> Result<StateDigest, StorageError> {
    if bytes.len() != SHARED_DIGEST_LEN {
        return Err(StorageError::Corrupt(format!(
            "the state digest key of shard {shard:02x} holds {} bytes, not {SHARED_DIGEST_LEN}",
            bytes.len()
        )));
    }
    let (body, tag) = bytes.split_at(DIGEST_BYTES);
    if !keys.verify(SHARED_DIGEST_DOMAIN, &[&store_id.0, &[shard], body], tag) {
        return Err(StorageError::Corrupt(format!(
            "the state digest key of shard {shard:02x} does not authenticate as store \
             {store_id}'s: it was written by someone without the store's keys, or copied from \
             another store or shard"
        )));
    }
    StateDigest::from_bytes(body).ok_or_else(|| {
        StorageError::Corrupt(format!(
            "the state digest key of shard {shard:02x} is malformed"
        ))
    })
}

/// Whether a versioned key of a shared keyspace counts in its digest: keys under a lease are
/// left out (the storage deletes them by itself when the lease expires).
pub fn shared_term_applies(lease: i64) -> bool {
    lease == 0
}

/// Adds (`add`) or removes the term of a versioned key of a shared keyspace: its key (below
/// the keyspace's root), its per-key `version` (known before the write's transaction, unlike
/// the revision the storage gives it) and the hash of the value as stored.
pub fn shared_digest_update(
    digest: &mut StateDigest,
    keys: &IntegrityKeys,
    key: &[u8],
    version: u64,
    stored: &[u8],
    add: bool,
) {
    let h = value_hash(stored);
    if add {
        digest.add(keys, key, version, &h);
    } else {
        digest.remove(keys, key, version, &h);
    }
}

/// Encodes the authenticated lsn record.
pub(crate) fn encode_lsn_record(
    keys: &IntegrityKeys,
    lsn: Lsn,
    digest: &StateDigest,
) -> [u8; LSN_RECORD_LEN] {
    let mut out = [0u8; LSN_RECORD_LEN];
    out[..8].copy_from_slice(&lsn.to_be_bytes());
    out[8..8 + DIGEST_BYTES].copy_from_slice(&digest.to_bytes());
    let tag = keys.mac(LSN_DOMAIN, &[&out[..8 + DIGEST_BYTES]]);
    out[8 + DIGEST_BYTES..].copy_from_slice(&tag);
    out
}

/// Decodes and authenticates an lsn record.
pub(crate) fn decode_lsn_record(
    keys: &IntegrityKeys,
    bytes: &[u8],
) -> Result<(Lsn, StateDigest), String> {
    if bytes.len() != LSN_RECORD_LEN {
        return Err(format!(
            "it has {} bytes, not {LSN_RECORD_LEN} (an unauthenticated record)",
            bytes.len()
        ));
    }
    let body = &bytes[..8 + DIGEST_BYTES];
    if !keys.verify(LSN_DOMAIN, &[body], &bytes[8 + DIGEST_BYTES..]) {
        return Err("its MAC does not verify".into());
    }
    let mut lsn = [0u8; 8];
    lsn.copy_from_slice(&bytes[..8]);
    let digest = StateDigest::from_bytes(&bytes[8..8 + DIGEST_BYTES])
        .ok_or_else(|| "its digest is malformed".to_owned())?;
    Ok((Lsn::from_be_bytes(lsn), digest))
}

/// One op of a write intent: the key, and its value's hash before and after the op.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IntentOp {
    pub(crate) key: Vec<u8>,
    pub(crate) before: Option<[u8; 32]>,
    pub(crate) after: Option<[u8; 32]>,
}

/// A batch about to be applied: its lsn, the ops' before and after hashes (read from `data`),
/// and the digest once it is applied.
pub(crate) struct Planned {
    pub(crate) ops: Vec<IntentOp>,
    pub(crate) digest_after: StateDigest,
}

/// Plans `ops` over the current state of `data`: the value hashes each op goes from and to
/// (later ops in the batch see the earlier ones), and the digest after the whole batch.
pub(crate) fn plan(
    data: &sled::Tree,
    keys: &IntegrityKeys,
    digest: &StateDigest,
    ops: &[Op],
) -> Result<Planned, StorageError> {
    let mut current: HashMap<&[u8], Option<[u8; 32]>> = HashMap::new();
    let mut first: Vec<(&[u8], Option<[u8; 32]>)> = Vec::new();
    let mut planned = Vec::with_capacity(ops.len());
    for op in ops {
        let (key, after, known) = match op {
            Op::Put(k, v) => (k.as_slice(), Some(value_hash(v)), None),
            Op::PutOver(k, v, prior) => (k.as_slice(), Some(value_hash(v)), Some(*prior)),
            Op::Delete(k) => (k.as_slice(), None, None),
        };
        let before = match current.get(key) {
            Some(h) => *h,
            None => {
                let h = match known {
                    // The writer read the value under the lock it writes under: no second
                    // read. Debug builds (every test) check that it was right.
                    Some(prior) => {
                        debug_assert_eq!(
                            data.get(key)?.map(|v| value_hash(&v)),
                            prior,
                            "the prior value hash of an Op::PutOver"
                        );
                        prior
                    }
                    None => data.get(key)?.map(|v| value_hash(&v)),
                };
                first.push((key, h));
                h
            }
        };
        current.insert(key, after);
        planned.push(IntentOp {
            key: key.to_vec(),
            before,
            after,
        });
    }
    let mut digest_after = *digest;
    for (key, before) in first {
        if let Some(h) = before {
            digest_after.remove(keys, key, 0, &h);
        }
        if let Some(Some(h)) = current.get(key) {
            digest_after.add(keys, key, 0, h);
        }
    }
    Ok(Planned {
        ops: planned,
        digest_after,
    })
}

fn push_hash(out: &mut Vec<u8>, h: &Option<[u8; 32]>) {
    match h {
        Some(h) => {
            out.push(1);
            out.extend_from_slice(h);
        }
        None => out.push(0),
    }
}

/// Encodes and MACs a write intent.
pub(crate) fn encode_intent(keys: &IntegrityKeys, lsn: Lsn, ops: &[IntentOp]) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + ops.len() * 80);
    out.extend_from_slice(&lsn.to_be_bytes());
    out.extend_from_slice(&(ops.len() as u64).to_be_bytes());
    for op in ops {
        out.extend_from_slice(&(op.key.len() as u64).to_be_bytes());
        out.extend_from_slice(&op.key);
        push_hash(&mut out, &op.before);
        push_hash(&mut out, &op.after);
    }
    let tag = keys.mac(INTENT_DOMAIN, &[&out]);
    out.extend_from_slice(&tag);
    out
}

/// Decodes and authenticates a write intent.
pub(crate) fn decode_intent(
    keys: &IntegrityKeys,
    bytes: &[u8],
) -> Result<(Lsn, Vec<IntentOp>), String> {
    let body_len = bytes.len().checked_sub(TAG_LEN).ok_or("it is too short")?;
    let (body, tag) = bytes.split_at(body_len);
    if !keys.verify(INTENT_DOMAIN, &[body], tag) {
        return Err("its MAC does not verify".into());
    }
    let mut r = body;
    fn take<'a>(r: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
        if r.len() < n {
            return Err("it ends early".into());
        }
        let (h, t) = r.split_at(n);
        *r = t;
        Ok(h)
    }
    fn u64_of(r: &mut &[u8]) -> Result<u64, String> {
        let mut b = [0u8; 8];
        b.copy_from_slice(take(r, 8)?);
        Ok(u64::from_be_bytes(b))
    }
    fn hash_of(r: &mut &[u8]) -> Result<Option<[u8; 32]>, String> {
        match take(r, 1)?[0] {
            0 => Ok(None),
            _ => {
                let mut h = [0u8; 32];
                h.copy_from_slice(take(r, 32)?);
                Ok(Some(h))
            }
        }
    }
    let lsn = u64_of(&mut r)?;
    let n = u64_of(&mut r)?;
    let mut ops = Vec::new();
    for _ in 0..n {
        let len = usize::try_from(u64_of(&mut r)?).map_err(|_| "a key is too long")?;
        let key = take(&mut r, len)?.to_vec();
        let before = hash_of(&mut r)?;
        let after = hash_of(&mut r)?;
        ops.push(IntentOp { key, before, after });
    }
    Ok((lsn, ops))
}

/// The anchor: the latest (lsn, digest) of a store, kept outside its data directory, with the
/// store revision at that lsn (what a refusal names: operators know revisions, not lsns).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Anchor {
    pub(crate) store_id: StoreId,
    pub(crate) lsn: Lsn,
    pub(crate) revision: u64,
    pub(crate) digest: StateDigest,
}

fn anchor_body(a: &Anchor) -> Vec<u8> {
    let mut out = Vec::with_capacity(ANCHOR_LEN);
    out.extend_from_slice(ANCHOR_MAGIC);
    out.extend_from_slice(&ANCHOR_VERSION.to_be_bytes());
    out.extend_from_slice(&a.store_id.0);
    out.extend_from_slice(&a.lsn.to_be_bytes());
    out.extend_from_slice(&a.revision.to_be_bytes());
    out.extend_from_slice(&a.digest.to_bytes());
    out
}

/// Reads the anchor at `path` (`None`: there is none yet). Its MAC is checked against `keys`;
/// an anchor that fails (damaged, or another store's) is an error naming the file.
pub(crate) fn read_anchor(
    path: &Path,
    keys: &IntegrityKeys,
) -> Result<Option<Anchor>, StorageError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(StorageError::Io(std::io::Error::new(
                e.kind(),
                format!("cannot read the anchor file {}: {e}", path.display()),
            )));
        }
    };
    let bad = |why: &str| {
        StorageError::Corrupt(format!(
            "the anchor file {} {why}: it is damaged or belongs to another store. Give the \
             anchor file of this data directory (or remove it to start a new one knowingly)",
            path.display()
        ))
    };
    if bytes.len() != ANCHOR_LEN || &bytes[..8] != ANCHOR_MAGIC {
        return Err(bad("is not an anchor"));
    }
    let body = &bytes[..ANCHOR_LEN - TAG_LEN];
    let mut version = [0u8; 4];
    version.copy_from_slice(&bytes[8..12]);
    if u32::from_be_bytes(version) != ANCHOR_VERSION {
        return Err(bad("has an unknown version"));
    }
    let store_id = StoreId::from_slice(&bytes[12..28]).ok_or_else(|| bad("is malformed"))?;
    if !keys.verify(ANCHOR_DOMAIN, &[body], &bytes[ANCHOR_LEN - TAG_LEN..]) {
        return Err(bad(&format!(
            "does not authenticate (it names store {store_id})"
        )));
    }
    let mut lsn = [0u8; 8];
    lsn.copy_from_slice(&bytes[28..36]);
    let mut revision = [0u8; 8];
    revision.copy_from_slice(&bytes[36..44]);
    let digest = StateDigest::from_bytes(&bytes[44..44 + DIGEST_BYTES])
        .ok_or_else(|| bad("is malformed"))?;
    Ok(Some(Anchor {
        store_id,
        lsn: Lsn::from_be_bytes(lsn),
        revision: u64::from_be_bytes(revision),
        digest,
    }))
}

/// Atomically replaces the anchor at `path`, durably (a temporary file beside it, renamed).
pub(crate) fn write_anchor(
    path: &Path,
    keys: &IntegrityKeys,
    anchor: &Anchor,
) -> Result<(), StorageError> {
    let mut bytes = anchor_body(anchor);
    let tag = keys.mac(ANCHOR_DOMAIN, &[&bytes]);
    bytes.extend_from_slice(&tag);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    #[cfg(unix)]
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::crypto::Seed;

    fn keys(b: u8) -> IntegrityKeys {
        IntegrityKeys::derive(&Seed::from_slice(&[b; 32]).unwrap())
    }

    /// An `Op::PutOver` plans as the `Op::Put` it stands for when its prior hash is right
    /// (without reading the key), and a wrong one is caught in debug builds.
    #[test]
    fn a_put_over_plans_as_a_put_and_a_wrong_prior_is_caught_in_debug_builds() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new()
            .path(dir.path())
            .temporary(true)
            .open()
            .unwrap();
        db.insert(b"a", b"old".as_slice()).unwrap();
        let k = keys(2);
        let mut digest = StateDigest::EMPTY;
        digest.add(&k, b"a", 0, &value_hash(b"old"));
        let put = [
            Op::Put(b"a".to_vec(), b"new".to_vec()),
            Op::Put(b"b".to_vec(), b"1".to_vec()),
        ];
        let over = [
            Op::PutOver(b"a".to_vec(), b"new".to_vec(), Some(value_hash(b"old"))),
            Op::PutOver(b"b".to_vec(), b"1".to_vec(), None),
        ];
        let (p, o) = (
            plan(&db, &k, &digest, &put).unwrap(),
            plan(&db, &k, &digest, &over).unwrap(),
        );
        assert_eq!(p.digest_after, o.digest_after);
        assert_eq!(p.ops.len(), o.ops.len());
        for (p, o) in p.ops.iter().zip(&o.ops) {
            assert_eq!((&p.key, p.before, p.after), (&o.key, o.before, o.after));
        }
        let wrong = [Op::PutOver(b"a".to_vec(), b"new".to_vec(), None)];
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            plan(&db, &k, &digest, &wrong)
        }));
        assert_eq!(caught.is_err(), cfg!(debug_assertions));
    }

    #[test]
    fn digest_shard_keys_name_their_shard_and_bind_it() {
        for shard in 0..SHARED_DIGEST_SHARDS {
            assert_eq!(
                shared_digest_key_shard(&shared_digest_key(shard)),
                Some(shard)
            );
        }
        assert_eq!(shared_digest_key_shard(b"i/digest/40"), None, "shard 64");
        assert_eq!(shared_digest_key_shard(b"i/digest/0"), None);
        assert_eq!(shared_digest_key_shard(b"i/digest/zz"), None);
        assert_eq!(shared_digest_key_shard(b"k/integrity"), None);
        assert!(shared_digest_shard(b"s/ns/name") < SHARED_DIGEST_SHARDS);
        let (k, id) = (keys(1), StoreId([7; 16]));
        let mut d = StateDigest::EMPTY;
        d.add(&k, b"s/ns/a", 1, &value_hash(b"v"));
        let v = encode_shared_digest(&k, &id, 3, &d);
        assert_eq!(decode_shared_digest(&k, &id, 3, &v).unwrap(), d);
        assert!(
            decode_shared_digest(&k, &id, 4, &v).is_err(),
            "another shard"
        );
        assert!(
            decode_shared_digest(&k, &StoreId([8; 16]), 3, &v).is_err(),
            "another store"
        );
        assert!(
            decode_shared_digest(&keys(2), &id, 3, &v).is_err(),
            "other keys"
        );
    }

    #[test]
    fn lsn_records_and_intents_authenticate() {
        let k = keys(1);
        let mut d = StateDigest::EMPTY;
        d.add(&k, b"a", 0, &value_hash(b"1"));
        let rec = encode_lsn_record(&k, 7, &d);
        assert_eq!(decode_lsn_record(&k, &rec).unwrap(), (7, d));
        assert!(decode_lsn_record(&keys(2), &rec).is_err());
        let mut bad = rec;
        bad[3] ^= 1;
        assert!(decode_lsn_record(&k, &bad).is_err());
        assert!(decode_lsn_record(&k, &7u64.to_be_bytes()).is_err());

        let ops = vec![
            IntentOp {
                key: b"a".to_vec(),
                before: None,
                after: Some([1; 32]),
            },
            IntentOp {
                key: b"b".to_vec(),
                before: Some([2; 32]),
                after: None,
            },
        ];
        let intent = encode_intent(&k, 9, &ops);
        assert_eq!(decode_intent(&k, &intent).unwrap(), (9, ops));
        assert!(decode_intent(&keys(2), &intent).is_err());
        assert!(decode_intent(&k, &intent[..10]).is_err());
    }

    #[test]
    fn anchors_roundtrip_and_refuse_other_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("anchor");
        let k = keys(1);
        assert_eq!(read_anchor(&path, &k).unwrap(), None);
        let a = Anchor {
            store_id: StoreId([3; 16]),
            lsn: 42,
            revision: 40,
            digest: StateDigest::EMPTY,
        };
        write_anchor(&path, &k, &a).unwrap();
        assert_eq!(read_anchor(&path, &k).unwrap(), Some(a));
        let error = read_anchor(&path, &keys(2)).unwrap_err();
        assert!(error.to_string().contains("another store"), "{error}");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[30] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(read_anchor(&path, &k).is_err());
    }
}
