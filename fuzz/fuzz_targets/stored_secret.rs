//! The decoder of an opened record's plaintext (the stored Secret), and its re-encoding.
#![no_main]

use coffer_core::model::codec::{decode, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(secret) = decode(data) {
        let again = decode(&encode(&secret)).expect("re-encoded Secret decodes");
        assert_eq!(again.metadata.name, secret.metadata.name);
        assert_eq!(again.data.len(), secret.data.len());
    }
});
