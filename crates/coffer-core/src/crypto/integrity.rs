//! Integrity keys, the state digest and seed check values: what lets Coffer notice an attacker
//! who can *write* its storage (encryption alone only stops one who reads it).
//!
//! # Keys
//!
//! [`IntegrityKeys`] derive from a KMS-protected [`Seed`] by HKDF-SHA256 with labels of their own
//! (never 32 bytes long, so they cannot collide with a write's random 32-byte info): one key MACs
//! log entries, checkpoint records and anchors ([`IntegrityKeys::mac`]), the other keys the terms
//! of the state digest. Whoever cannot unwrap the seed through the KMS can forge neither.
//!
//! # The state digest
//!
//! [`StateDigest`] is an incremental set hash over every stored record: the sum, modulo 2^256,
//! of one keyed term per record, `HMAC(digest key, storage key, revision, SHA-256(value))`
//! ([`IntegrityKeys::term`]), and the number of records. A write adds the terms of what it
//! stores and subtracts those of what it replaces or removes, so keeping it costs a few hashes
//! per write, and recomputing it from a full scan (open, `coffer verify`) must give the same
//! value. Because every term is keyed, an attacker cannot make a different set of records sum to
//! the same digest. It is backend-neutral on purpose: the sled backend digests its keys (a
//! versioned key already carries its revision, so it passes revision 0); an etcd backend passes
//! the etcd key and its mod_revision and stores the digest under a key in the same Txn.
//!
//! # Seed check values
//!
//! [`seed_check`] binds a seed to the store that made it and to its id: stored beside the
//! wrapped seed and recomputed after every KMS `Decrypt`, it refuses a seed row copied from
//! another store that shares the KMS (the KMS would unwrap it happily).

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::{Digest as _, Sha256};

use super::Seed;

type HmacSha256 = Hmac<Sha256>;

/// HKDF label of the MAC key.
const MAC_LABEL: &[u8] = b"coffer/v1 integrity: mac";
/// HKDF label of the digest key.
const DIGEST_LABEL: &[u8] = b"coffer/v1 integrity: state digest";
/// HKDF label of a seed's check-value key.
const CHECK_LABEL: &[u8] = b"coffer/v1 seed check";

/// Length of a MAC tag, a digest sum and a check value, in bytes.
pub const TAG_LEN: usize = 32;
/// Length of a store id, in bytes.
pub const STORE_ID_LEN: usize = 16;
/// Length of [`StateDigest::to_bytes`].
pub const DIGEST_BYTES: usize = TAG_LEN + 8;

/// A store's id: 16 random bytes made when the store is created. Public (it names the store in
/// messages); what it protects is the binding of seeds, checkpoints and anchors to one store.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct StoreId(pub [u8; STORE_ID_LEN]);

impl StoreId {
    /// A fresh random id.
    pub fn generate() -> Self {
        let mut id = [0u8; STORE_ID_LEN];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut id);
        Self(id)
    }

    /// An id from stored bytes; `None` if the length is wrong.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }
}

impl fmt::Display for StoreId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for StoreId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreId({self})")
    }
}

/// A keyed HMAC state (as secret as its key) that is overwritten with a keyless one on drop:
/// the `hmac` crate offers no `zeroize`.
struct WipedHmac(Box<HmacSha256>);

impl WipedHmac {
    fn new(key: &[u8]) -> Self {
        // HMAC takes keys of any length.
        Self(Box::new(
            <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!()),
        ))
    }

    fn start(&self) -> HmacSha256 {
        (*self.0).clone()
    }
}

impl Drop for WipedHmac {
    fn drop(&mut self) {
        *self.0 = WipedHmac::blank();
        std::hint::black_box(&*self.0);
    }
}

impl WipedHmac {
    fn blank() -> HmacSha256 {
        <HmacSha256 as Mac>::new_from_slice(&[0u8; 32]).unwrap_or_else(|_| unreachable!())
    }
}

/// Feeds length-prefixed parts, so that no two different part lists hash alike.
fn feed(mac: &mut HmacSha256, parts: &[&[u8]]) {
    for part in parts {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part);
    }
}

/// The keys that authenticate a store's log, checkpoints, anchors and state digest. Not
/// `Clone`; `Debug` prints `[REDACTED]`.
pub struct IntegrityKeys {
    mac: WipedHmac,
    digest: WipedHmac,
}

impl IntegrityKeys {
    /// Derives both keys from `seed` (HKDF-SHA256, each under its own label).
    pub fn derive(seed: &Seed) -> Self {
        let mac = seed.derive(MAC_LABEL);
        let digest = seed.derive(DIGEST_LABEL);
        Self {
            mac: WipedHmac::new(mac.expose()),
            digest: WipedHmac::new(digest.expose()),
        }
    }

    /// The MAC of `parts` (each length-prefixed) in the domain `domain` (what is MAC'd: a log
    /// entry, a checkpoint record, an anchor), so that a tag from one kind of record never
    /// verifies as another.
    pub fn mac(&self, domain: &[u8], parts: &[&[u8]]) -> [u8; TAG_LEN] {
        let mut mac = self.mac.start();
        feed(&mut mac, &[domain]);
        feed(&mut mac, parts);
        mac.finalize().into_bytes().into()
    }

    /// Whether `tag` is the MAC of `parts` in `domain` (compared in constant time).
    pub fn verify(&self, domain: &[u8], parts: &[&[u8]], tag: &[u8]) -> bool {
        let mut mac = self.mac.start();
        feed(&mut mac, &[domain]);
        feed(&mut mac, parts);
        mac.verify_slice(tag).is_ok()
    }

    /// The digest term of one record: its storage key, its revision (0 where the key carries
    /// it) and the SHA-256 of its stored (sealed) value ([`value_hash`]).
    pub fn term(&self, key: &[u8], revision: u64, value_hash: &[u8; TAG_LEN]) -> [u8; TAG_LEN] {
        let mut mac = self.digest.start();
        feed(&mut mac, &[key, &revision.to_be_bytes(), value_hash]);
        mac.finalize().into_bytes().into()
    }
}

impl fmt::Debug for IntegrityKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IntegrityKeys([REDACTED])")
    }
}

/// The SHA-256 of a stored value, as digest terms and intents name it.
pub fn value_hash(value: &[u8]) -> [u8; TAG_LEN] {
    Sha256::digest(value).into()
}

/// The check value of seed `seed_id` in store `store`: a MAC under a key derived from the seed
/// itself, so only the seed's holder can make it, and it names the store and the id.
pub fn seed_check(seed: &Seed, store: &StoreId, seed_id: u32) -> [u8; TAG_LEN] {
    let key = seed.derive(CHECK_LABEL);
    let mac = WipedHmac::new(key.expose());
    let mut m = mac.start();
    feed(&mut m, &[&store.0, &seed_id.to_be_bytes()]);
    m.finalize().into_bytes().into()
}

/// Whether `check` is seed `seed_id`'s check value in store `store` (constant time).
pub fn seed_check_ok(seed: &Seed, store: &StoreId, seed_id: u32, check: &[u8]) -> bool {
    let key = seed.derive(CHECK_LABEL);
    let mac = WipedHmac::new(key.expose());
    let mut m = mac.start();
    feed(&mut m, &[&store.0, &seed_id.to_be_bytes()]);
    m.verify_slice(check).is_ok()
}

/// The incremental set hash over a store's records (see the module docs).
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct StateDigest {
    /// The sum of the terms, a little-endian 256-bit number.
    sum: [u8; TAG_LEN],
    /// How many records the sum covers.
    count: u64,
}

impl StateDigest {
    /// The digest of no records.
    pub const EMPTY: StateDigest = StateDigest {
        sum: [0; TAG_LEN],
        count: 0,
    };

    /// Adds a record.
    pub fn add(&mut self, keys: &IntegrityKeys, key: &[u8], revision: u64, value_hash: &[u8; 32]) {
        self.add_term(&keys.term(key, revision, value_hash));
    }

    /// Removes a record (one that [`StateDigest::add`] added).
    pub fn remove(
        &mut self,
        keys: &IntegrityKeys,
        key: &[u8],
        revision: u64,
        value_hash: &[u8; 32],
    ) {
        self.remove_term(&keys.term(key, revision, value_hash));
    }

    /// Adds a term made by [`IntegrityKeys::term`].
    pub fn add_term(&mut self, term: &[u8; TAG_LEN]) {
        let mut carry = 0u16;
        for (s, t) in self.sum.iter_mut().zip(term) {
            let v = u16::from(*s) + u16::from(*t) + carry;
            *s = v as u8;
            carry = v >> 8;
        }
        self.count = self.count.wrapping_add(1);
    }

    /// Removes a term made by [`IntegrityKeys::term`].
    pub fn remove_term(&mut self, term: &[u8; TAG_LEN]) {
        let mut borrow = 0i16;
        for (s, t) in self.sum.iter_mut().zip(term) {
            let mut v = i16::from(*s) - i16::from(*t) - borrow;
            borrow = 0;
            if v < 0 {
                v += 256;
                borrow = 1;
            }
            *s = v as u8;
        }
        self.count = self.count.wrapping_sub(1);
    }

    /// How many records the digest covers.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The stored form: the sum, then the count (big-endian).
    pub fn to_bytes(&self) -> [u8; DIGEST_BYTES] {
        let mut out = [0u8; DIGEST_BYTES];
        out[..TAG_LEN].copy_from_slice(&self.sum);
        out[TAG_LEN..].copy_from_slice(&self.count.to_be_bytes());
        out
    }

    /// The digest from [`StateDigest::to_bytes`]; `None` if the length is wrong.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != DIGEST_BYTES {
            return None;
        }
        let mut sum = [0u8; TAG_LEN];
        sum.copy_from_slice(&bytes[..TAG_LEN]);
        let mut count = [0u8; 8];
        count.copy_from_slice(&bytes[TAG_LEN..]);
        Some(Self {
            sum,
            count: u64::from_be_bytes(count),
        })
    }

    /// A short fingerprint for messages (the first 8 bytes of the sum, in hex).
    pub fn short(&self) -> String {
        hex::encode(&self.sum[..8])
    }
}

impl fmt::Debug for StateDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StateDigest({} records, {})", self.count, self.short())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(byte: u8) -> IntegrityKeys {
        IntegrityKeys::derive(&Seed::from_slice(&[byte; 32]).expect("32 bytes"))
    }

    #[test]
    fn digest_is_order_free_and_removal_undoes_add() {
        let k = keys(1);
        let records: Vec<(Vec<u8>, u64, [u8; 32])> = (0..50u8)
            .map(|i| (vec![i; 3], u64::from(i) * 7, value_hash(&[i; 20])))
            .collect();
        let mut forward = StateDigest::EMPTY;
        for (key, rev, h) in &records {
            forward.add(&k, key, *rev, h);
        }
        let mut backward = StateDigest::EMPTY;
        for (key, rev, h) in records.iter().rev() {
            backward.add(&k, key, *rev, h);
        }
        assert_eq!(forward, backward);
        assert_eq!(forward.count(), 50);
        let mut d = forward;
        for (key, rev, h) in &records {
            d.remove(&k, key, *rev, h);
        }
        assert_eq!(d, StateDigest::EMPTY);
        assert_eq!(StateDigest::from_bytes(&forward.to_bytes()), Some(forward));
        assert_eq!(StateDigest::from_bytes(&[0; 3]), None);
    }

    #[test]
    fn terms_bind_key_revision_value_and_key_material() {
        let (a, b) = (keys(1), keys(2));
        let h = value_hash(b"v");
        let t = a.term(b"k", 1, &h);
        assert_ne!(t, a.term(b"k", 2, &h));
        assert_ne!(t, a.term(b"k2", 1, &h));
        assert_ne!(t, a.term(b"k", 1, &value_hash(b"w")));
        assert_ne!(t, b.term(b"k", 1, &h));
    }

    #[test]
    fn macs_are_domain_separated_and_verified() {
        let k = keys(3);
        let tag = k.mac(b"wal", &[b"payload"]);
        assert!(k.verify(b"wal", &[b"payload"], &tag));
        assert!(!k.verify(b"checkpoint", &[b"payload"], &tag));
        assert!(!k.verify(b"wal", &[b"pay", b"load"], &tag));
        assert!(!keys(4).verify(b"wal", &[b"payload"], &tag));
        assert!(!k.verify(b"wal", &[b"payload"], &tag[..31]));
        assert_eq!(format!("{k:?}"), "IntegrityKeys([REDACTED])");
    }

    #[test]
    fn seed_checks_bind_store_and_id() {
        let seed = Seed::from_slice(&[5; 32]).expect("32 bytes");
        let other = Seed::from_slice(&[6; 32]).expect("32 bytes");
        let (s1, s2) = (StoreId([1; 16]), StoreId([2; 16]));
        let c = seed_check(&seed, &s1, 1);
        assert!(seed_check_ok(&seed, &s1, 1, &c));
        assert!(!seed_check_ok(&seed, &s2, 1, &c));
        assert!(!seed_check_ok(&seed, &s1, 2, &c));
        assert!(!seed_check_ok(&other, &s1, 1, &c));
        assert!(!seed_check_ok(&seed, &s1, 1, &[]));
    }
}
