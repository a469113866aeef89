//! The content hash kubectl and Kustomize append to a generated Secret's name
//! (`create secret ... --append-hash`, a `secretGenerator` without `disableNameSuffixHash`).
//!
//! Both hash a small canonical JSON document with SHA-256 and keep the first ten hex digits,
//! with five of them swapped for letters so that the suffix never reads as a number or a word
//! (`0`→`g`, `1`→`h`, `3`→`k`, `a`→`m`, `e`→`t`). The document names the kind, the name, the
//! type and the data, so a change of any of them renames the Secret and rolls the workloads
//! that refer to it. The two tools differ in one detail that matters for byte equality:
//!
//! - kubectl (`k8s.io/kubectl/pkg/util/hash`): `{"data":{...},"kind":"Secret","name":N,
//!   "type":T}`, where `type` is the flag's value (empty when none was given) and `data` is `{}`
//!   for a Secret with no keys.
//! - Kustomize (`api/hasher`): the same fields read off the generated object after every
//!   transformation (so `type` is `Opaque` by default), `data` an empty string when the object
//!   has none, and `stringData` added when present; the name is always hashed as `""` (its
//!   lookup path never matches), so two generators with the same content share a suffix.
//!
//! Values in `data` are base64, as in the object. The JSON is Go's `encoding/json` output (keys
//! sorted, `<`, `>`, `&` escaped), byte for byte, because the hash is of those bytes. The
//! document holds the Secret's values, so it lives in zeroizing buffers only.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::create::go_json_string;
use coffer_core::model::Secret;

/// The ten-character suffix of a SHA-256 digest of `document` (kustomize's `encode(hex256(..))`).
fn suffix(document: &str) -> String {
    let digest = Sha256::digest(document.as_bytes());
    hex::encode(&digest[..5])
        .chars()
        .map(|c| match c {
            '0' => 'g',
            '1' => 'h',
            '3' => 'k',
            'a' => 'm',
            'e' => 't',
            c => c,
        })
        .collect()
}

/// The suffix `kubectl create secret ... --append-hash` appends (after a `-`), computed from
/// the Secret as the command built it (its name without the suffix, its type as given).
pub(crate) fn kubectl_secret_suffix(secret: &Secret) -> String {
    let mut doc = Zeroizing::new(String::from("{\"data\":{"));
    for (i, (key, value)) in secret.data.iter().enumerate() {
        if i > 0 {
            doc.push(',');
        }
        go_json_string(key, &mut doc);
        doc.push(':');
        let encoded = Zeroizing::new(STANDARD.encode(value.expose()));
        go_json_string(&encoded, &mut doc);
    }
    doc.push_str("},\"kind\":\"Secret\",\"name\":");
    go_json_string(&secret.metadata.name, &mut doc);
    doc.push_str(",\"type\":");
    go_json_string(&secret.type_, &mut doc);
    doc.push('}');
    suffix(&doc)
}

/// The suffix Kustomize appends to a generated Secret, computed from the object as it will be
/// printed (a JSON object with `type`, `metadata.name`, `data` and maybe `stringData`).
pub(crate) fn kustomize_secret_suffix(object: &Map<String, Value>) -> String {
    let empty = Value::String(String::new());
    // kustomize looks the name up as `Lookup("metadata/name")`, which names a top-level field
    // called `metadata/name`: no Secret has one, so the name is always hashed as "".
    let name = object.get("metadata/name");
    let mut doc = Zeroizing::new(String::from("{\"data\":"));
    go_json_value(object.get("data").unwrap_or(&empty), &mut doc);
    doc.push_str(",\"kind\":\"Secret\",\"name\":");
    go_json_value(name.unwrap_or(&empty), &mut doc);
    if let Some(sd @ Value::Object(_)) = object.get("stringData") {
        doc.push_str(",\"stringData\":");
        go_json_value(sd, &mut doc);
    }
    doc.push_str(",\"type\":");
    go_json_value(object.get("type").unwrap_or(&empty), &mut doc);
    doc.push('}');
    suffix(&doc)
}

/// A value as Go's `json.Marshal` writes a decoded `interface{}` (map keys sorted by bytes).
fn go_json_value(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => go_json_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                go_json_value(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                go_json_string(k, out);
                out.push(':');
                go_json_value(&map[k], out);
            }
            out.push('}');
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn kubectl_suffixes() {
        // Made with `kubectl create secret generic a ... --append-hash --dry-run=client`.
        assert_eq!(kubectl_secret_suffix(&Secret::new("", "a")), "tb87bhff4c");
        let s = Secret::new("", "a").with_data("k", "v");
        assert_eq!(kubectl_secret_suffix(&s), "969f6bdb22");
        assert_eq!(
            kubectl_secret_suffix(&s.duplicate().with_type("Opaque")),
            "hmt9kc9957"
        );
        // `<`, `&` and `>` are escaped as Go escapes them before hashing.
        assert_eq!(
            kubectl_secret_suffix(&s.duplicate().with_type("foo/bar<&>")),
            "5846fg456k"
        );
    }

    #[test]
    fn kustomize_suffixes() {
        let obj = |text: &str| -> Map<String, Value> { serde_json::from_str(text).unwrap() };
        // `kubectl kustomize` of a generator named `e` with no sources: `e-46f8b28mk5`.
        assert_eq!(
            kustomize_secret_suffix(&obj(
                r#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"e"},"type":"Opaque","data":{}}"#
            )),
            "46f8b28mk5"
        );
        // With `literals: [a=1]`: `e-25khgmg44c`.
        assert_eq!(
            kustomize_secret_suffix(&obj(
                r#"{"kind":"Secret","metadata":{"name":"e"},"type":"Opaque","data":{"a":"MQ=="}}"#
            )),
            "25khgmg44c"
        );
        // kustomize's own test vectors (api/hasher/hasher_test.go).
        assert_eq!(
            kustomize_secret_suffix(&obj(r#"{"kind":"Secret","type":"my-type"}"#)),
            "5gmgkf8578"
        );
        assert_eq!(
            kustomize_secret_suffix(&obj(
                r#"{"kind":"Secret","type":"my-type","data":{"one":""},"stringData":{"two":2}}"#
            )),
            "c4h4264gdb"
        );
    }
}
