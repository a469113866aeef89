//! Values the etcd door receives under a Secret's key (any etcd client with the `etcd` verb
//! can write them): decoding never panics, and a Secret that decodes survives an edit through
//! the Secret service with every change read back.
#![no_main]

use coffer_core::model::SecretValue;
use coffer_core::model::k8s::{Decoded, decode, edit};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Decoded::Secret(mut secret) = decode("ns", "name", data) {
        secret.data.insert("fuzz".into(), SecretValue::from("value"));
        secret.metadata.labels.insert("fuzz".into(), "x".into());
        secret.immutable = !secret.immutable;
        let edited = edit(data, &secret).expect("a decoded Secret can be edited");
        match decode("ns", "name", &edited) {
            Decoded::Secret(again) => assert_eq!(*again, *secret),
            Decoded::Opaque(e) => panic!("an edited Secret no longer decodes: {e}"),
        }
    }
});
