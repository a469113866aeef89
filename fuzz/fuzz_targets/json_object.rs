//! The JSON syntax check that validates `.dockerconfigjson` and `.dockercfg` values (a
//! non-recursive check that copies nothing out of the plaintext), reached through the public
//! validation of a `kubernetes.io/dockerconfigjson` Secret. It never panics, and whatever
//! serde_json reads as a JSON object it accepts too (serde_json is the stricter of the two:
//! Go's `encoding/json`, which the check follows, allows invalid UTF-8 in strings).
#![no_main]

use coffer_core::model::Secret;
use coffer_core::model::validation::validate_secret;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let secret = Secret::new("ns", "regcred")
        .with_type("kubernetes.io/dockerconfigjson")
        .with_data(".dockerconfigjson", data);
    let accepted = match validate_secret(&secret) {
        Ok(()) => true,
        Err(errors) => !errors
            .errors()
            .iter()
            .any(|e| e.to_string().contains("must be a valid JSON object")),
    };
    if serde_json::from_slice::<serde_json::Value>(data).is_ok_and(|v| v.is_object()) {
        assert!(accepted, "serde_json reads an object the check refuses");
    }
});
