//! The label and field selector parsers, and matching with what they parse.
#![no_main]

use std::collections::BTreeMap;

use coffer_core::model::Secret;
use coffer_core::model::selector::{FieldSelector, LabelSelector};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut labels = BTreeMap::new();
    labels.insert("app".to_owned(), "web".to_owned());
    labels.insert("example.com/tier".to_owned(), "gold".to_owned());
    match LabelSelector::parse(text) {
        Ok(sel) => {
            let _ = sel.matches(&labels);
            let _ = sel.matches(&BTreeMap::new());
            let _ = sel.is_empty();
        }
        Err(e) => assert!(!e.message().is_empty()),
    }
    let secret = Secret::new("ns", "name").with_label("app", "web");
    match FieldSelector::parse(text) {
        Ok(sel) => {
            let _ = sel.matches(&secret);
            let _ = sel.exact_name();
            let _ = sel.exact_namespace();
        }
        Err(e) => assert!(!e.message().is_empty()),
    }
});
