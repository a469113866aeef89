//! The YAML/JSON manifest parser (`coffer apply -f`, `coffer create --from-file`).
#![no_main]

use coffer_core::model::manifest::parse_manifests;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(secrets) = parse_manifests(text) {
        for s in &secrets {
            let _ = s.location();
            let _ = coffer_core::model::validation::validate_secret(&s.secret);
        }
    }
});
