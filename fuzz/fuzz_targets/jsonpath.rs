//! The kubectl JSONPath template parser and evaluator of `-o jsonpath=...`: the first line is
//! the template, the rest a JSON document (a fixed Secret list when it is not JSON). Parsing
//! never panics; a template that parses renders over any document without panicking.
#![no_main]

use coffer::cli::jsonpath::Template;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (template, doc) = text.split_once('\n').unwrap_or((text, ""));
    let Ok(template) = Template::parse(template) else {
        return;
    };
    let fixed = serde_json::json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {"metadata": {"name": "a", "labels": {"app": "x"}}, "data": {"tls.crt": "Q1JU"}},
            {"metadata": {"name": "b"}, "data": {"k": "dg=="}, "type": "Opaque"}
        ]
    });
    let _ = template.render(&fixed);
    if let Ok(doc) = serde_json::from_str::<Value>(doc) {
        let _ = template.render(&doc);
    }
});
