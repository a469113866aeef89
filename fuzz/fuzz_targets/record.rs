//! The sealed-record decoder: parse any bytes as a record header, then try to open it. Nothing
//! but a record sealed with the seed for that key may open; nothing may panic.
#![no_main]

use coffer_core::crypto::{Algorithm, RecordHeader, Seed, open, seal};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(seed) = Seed::from_slice(&[7u8; 32]) else {
        return;
    };
    if let Ok(header) = RecordHeader::parse(data) {
        let _ = header.algorithm.nonce_len();
        assert!(
            header.open(&seed, b"ns/name").is_err(),
            "a record that was never sealed opened"
        );
    }
    assert!(open(data, b"ns/name", |_| Some(&seed)).is_err());
    // The same bytes as a plaintext: sealed and opened back unchanged, bound to its key.
    let alg = if data.first().is_some_and(|b| b & 1 == 1) {
        Algorithm::XChaCha20Poly1305
    } else {
        Algorithm::Aes256Gcm
    };
    let rec = seal(alg, 9, &seed, b"ns/name", data);
    let pt = open(&rec, b"ns/name", |id| (id == 9).then_some(&seed)).expect("own record opens");
    assert_eq!(pt.expose(), data);
    assert!(open(&rec, b"ns/other", |_| Some(&seed)).is_err());
});
