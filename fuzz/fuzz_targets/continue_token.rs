//! The List continue-token decoder: whatever it accepts lies under the list's prefix, and every
//! token it issues decodes back to what was encoded.
#![no_main]

use coffer_core::store::continue_token::{decode, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for prefix in ["s/", "s/team-a/"] {
        if let Ok((_, start)) = decode(text, prefix) {
            assert!(start.starts_with(prefix));
        }
    }
    let rv = data.len() as u64;
    let key = format!("s/team-a/{text}");
    let t = encode(rv, &key);
    if t.len() <= 4096 {
        assert_eq!(decode(&t, "s/team-a/").expect("own token"), (rv, key));
    }
});
