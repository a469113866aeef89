//! The write-ahead log decoder, as the sled backend runs it over `wal.log` at open: it never
//! panics, its valid prefix lies within the input, and decoding that prefix alone gives the
//! same batches (a torn tail never changes what came before it).
#![no_main]

use coffer_core::storage::decode_wal;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match decode_wal(data) {
        Ok((batches, valid_len)) => {
            assert!(valid_len <= data.len());
            let (again, again_len) =
                decode_wal(&data[..valid_len]).expect("the valid prefix decodes");
            assert_eq!(again_len, valid_len);
            assert_eq!(again, batches);
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
