//! Kubernetes Secret manifests: [`Secret`] to and from the YAML and JSON that kubectl reads and
//! writes.
//!
//! Reading ([`parse_manifests`]) accepts what `kubectl apply -f` accepts for Secrets: YAML (one or
//! many `---`-separated documents) or JSON (one or many concatenated objects), each document a
//! `v1` `Secret` or a `List` (or `SecretList`) of them; `data` values are base64, `stringData`
//! values plain text. Server-managed metadata (`uid`, `resourceVersion`, `creationTimestamp`, ...)
//! is read but ignored, so the output of `coffer get -o yaml` goes back in unchanged.
//!
//! Writing ([`to_yaml`], [`to_json`], [`list_to_yaml`], [`list_to_json`]) prints what
//! `kubectl get -o yaml|json` prints: keys in alphabetical order, `resourceVersion` as a string,
//! `creationTimestamp` in RFC 3339 (`2026-11-28T15:04:05Z`), `data` in base64, `immutable` only
//! when true.
//!
//! Plaintext: decoded values go straight into [`SecretValue`]s; rendered output is returned in a
//! zeroizing buffer; errors name documents and fields, never values.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Serialize;
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use super::timestamp::format_rfc3339;
use super::{ObjectMeta, Secret, SecretValue};

/// The `apiVersion` of a Secret (and of a `List`).
pub const API_VERSION: &str = "v1";
/// The `kind` of a Secret.
pub const KIND_SECRET: &str = "Secret";
/// The `kind` of a generic list, as `kubectl get -o yaml` prints for a collection.
pub const KIND_LIST: &str = "List";
/// The `kind` of a typed Secret list, as the Kubernetes API returns for a collection.
pub const KIND_SECRET_LIST: &str = "SecretList";

/// The top-level fields of a Secret manifest; any other field is rejected, as kubectl's strict
/// field validation does.
const SECRET_FIELDS: &[&str] = &[
    "apiVersion",
    "kind",
    "metadata",
    "type",
    "data",
    "stringData",
    "immutable",
];

/// A manifest could not be read. The message names the document (and list item) and the field,
/// never a secret value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    message: String,
}

impl ManifestError {
    fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ManifestError {}

/// One Secret read from a manifest stream, and where it was found.
#[derive(Debug)]
pub struct ParsedSecret {
    /// The Secret as the manifest describes it: `string_data` merged into `data` already (it
    /// wins on a clash), no defaults applied, server-managed metadata dropped. The namespace is
    /// empty when the manifest names none.
    pub secret: Secret,
    /// The 1-based number of the document in the stream.
    pub document: usize,
    /// The 0-based index in the document's `items` when the document is a list.
    pub item: Option<usize>,
}

impl ParsedSecret {
    /// Where the Secret was found, for messages: `document 2` or `document 1, items[3]`.
    pub fn location(&self) -> String {
        location(self.document, self.item)
    }
}

fn location(document: usize, item: Option<usize>) -> String {
    match item {
        Some(i) => format!("document {document}, items[{i}]"),
        None => format!("document {document}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------------------

/// Reads every Secret from a YAML or JSON manifest stream.
///
/// JSON is detected as kubectl does: the first non-blank character is `{` (or `[`). Empty YAML
/// documents are skipped; a stream with no object at all yields an empty vector.
pub fn parse_manifests(text: &str) -> Result<Vec<ParsedSecret>, ManifestError> {
    let docs = parse_documents(text)?;
    let mut out = Vec::new();
    for (i, doc) in docs.into_iter().enumerate() {
        let document = i + 1;
        parse_document(doc, document, &mut out)?;
    }
    Ok(out)
}

/// Splits a stream into documents (YAML or JSON) as generic values.
fn parse_documents(text: &str) -> Result<Vec<Value>, ManifestError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let first = text.trim_start().chars().next();
    if matches!(first, Some('{') | Some('[')) {
        let mut docs = Vec::new();
        for (i, doc) in serde_json::Deserializer::from_str(text)
            .into_iter::<Value>()
            .enumerate()
        {
            match doc {
                Ok(v) => docs.push(v),
                Err(e) => {
                    // serde_json's messages carry the line and column and never echo input.
                    return Err(ManifestError::new(format!(
                        "document {}: invalid JSON: {e}",
                        i + 1
                    )));
                }
            }
        }
        Ok(docs)
    } else {
        let mut options = serde_saphyr::Options::default();
        // The snippet would quote the input, which may hold plaintext `stringData`.
        options.with_snippet = false;
        serde_saphyr::from_multiple_with_options::<Value>(text, options)
            .map_err(|e| ManifestError::new(format!("invalid YAML: {}", e.without_snippet())))
    }
}

fn parse_document(
    doc: Value,
    document: usize,
    out: &mut Vec<ParsedSecret>,
) -> Result<(), ManifestError> {
    let Value::Object(mut obj) = doc else {
        return Err(ManifestError::new(format!(
            "document {document}: expected an object with apiVersion and kind, got {}",
            kind_of(&doc)
        )));
    };
    let kind = string_field(&obj, "kind", &location(document, None))?;
    match kind.as_deref() {
        Some(KIND_SECRET) => {
            let secret = secret_from_object(obj, &location(document, None))?;
            out.push(ParsedSecret {
                secret,
                document,
                item: None,
            });
            Ok(())
        }
        Some(KIND_LIST) | Some(KIND_SECRET_LIST) => {
            let items = match obj.remove("items") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(items)) => items,
                Some(other) => {
                    return Err(ManifestError::new(format!(
                        "document {document}: items: expected a list, got {}",
                        kind_of(&other)
                    )));
                }
            };
            for (i, item) in items.into_iter().enumerate() {
                let loc = location(document, Some(i));
                let Value::Object(item) = item else {
                    return Err(ManifestError::new(format!(
                        "{loc}: expected an object, got {}",
                        kind_of(&item)
                    )));
                };
                match string_field(&item, "kind", &loc)?.as_deref() {
                    Some(KIND_SECRET) => {}
                    other => return Err(unsupported_kind(&loc, other, &item)),
                }
                let secret = secret_from_object(item, &loc)?;
                out.push(ParsedSecret {
                    secret,
                    document,
                    item: Some(i),
                });
            }
            Ok(())
        }
        other => Err(unsupported_kind(&location(document, None), other, &obj)),
    }
}

fn unsupported_kind(loc: &str, kind: Option<&str>, obj: &Map<String, Value>) -> ManifestError {
    let name = obj
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str);
    let named = name.map(|n| format!(" {n:?}")).unwrap_or_default();
    match kind {
        None => ManifestError::new(format!("{loc}{named}: kind not set")),
        Some(k) => ManifestError::new(format!(
            "{loc}: kind {k:?}{named} is not supported: Coffer stores only Secrets (apiVersion: v1, kind: Secret)"
        )),
    }
}

/// Builds a Secret from one manifest object whose kind is `Secret`.
fn secret_from_object(mut obj: Map<String, Value>, loc: &str) -> Result<Secret, ManifestError> {
    if let Some(unknown) = obj.keys().find(|k| !SECRET_FIELDS.contains(&k.as_str())) {
        return Err(ManifestError::new(format!(
            "{loc}: unknown field {unknown:?} in Secret"
        )));
    }
    match string_field(&obj, "apiVersion", loc)?.as_deref() {
        Some(API_VERSION) => {}
        None => return Err(ManifestError::new(format!("{loc}: apiVersion not set"))),
        Some(other) => {
            return Err(ManifestError::new(format!(
                "{loc}: apiVersion {other:?} is not supported for kind Secret (want \"v1\")"
            )));
        }
    }

    let mut secret = Secret {
        metadata: metadata_from_value(obj.remove("metadata"), loc)?,
        ..Secret::default()
    };
    let name = &secret.metadata.name;
    let loc = &format!("{loc} (secret {name:?})");

    secret.type_ = string_field(&obj, "type", loc)?.unwrap_or_default();
    secret.immutable = match obj.get("immutable") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(ManifestError::new(format!(
                "{loc}: immutable: expected true or false, got {}",
                kind_of(other)
            )));
        }
    };

    if let Some(data) = obj.remove("data") {
        for (key, value) in map_entries(data, "data", loc)? {
            let decoded = match value {
                Value::Null => Vec::new(),
                Value::String(s) => {
                    let s = Zeroizing::new(s);
                    decode_base64(&s).ok_or_else(|| {
                        ManifestError::new(format!(
                            "{loc}: data[{key}]: the value is not valid base64 (data values must be base64-encoded; use stringData for plain text)"
                        ))
                    })?
                }
                other => {
                    return Err(ManifestError::new(format!(
                        "{loc}: data[{key}]: expected a base64 string, got {}",
                        kind_of(&other)
                    )));
                }
            };
            secret.data.insert(key, SecretValue::new(decoded));
        }
    }
    if let Some(string_data) = obj.remove("stringData") {
        for (key, value) in map_entries(string_data, "stringData", loc)? {
            let text = match value {
                Value::Null => String::new(),
                Value::String(s) => s,
                other => {
                    return Err(ManifestError::new(format!(
                        "{loc}: stringData[{key}]: expected a string, got {} (quote the value)",
                        kind_of(&other)
                    )));
                }
            };
            secret
                .string_data
                .insert(key, SecretValue::new(text.into_bytes()));
        }
    }
    secret.merge_string_data();
    Ok(secret)
}

/// Reads `metadata`: name, namespace, labels and annotations. Server-managed fields are ignored.
fn metadata_from_value(meta: Option<Value>, loc: &str) -> Result<ObjectMeta, ManifestError> {
    let meta = match meta {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m,
        Some(other) => {
            return Err(ManifestError::new(format!(
                "{loc}: metadata: expected an object, got {}",
                kind_of(&other)
            )));
        }
    };
    let mut out = ObjectMeta {
        name: string_field(&meta, "name", &format!("{loc}: metadata"))?.unwrap_or_default(),
        ..ObjectMeta::default()
    };
    if out.name.is_empty() {
        return Err(ManifestError::new(format!(
            "{loc}: metadata.name: Required value: a Secret needs a name"
        )));
    }
    let loc = format!("{loc} (secret {:?})", out.name);
    out.namespace =
        string_field(&meta, "namespace", &format!("{loc}: metadata"))?.unwrap_or_default();
    for (field, target) in [
        ("labels", &mut out.labels),
        ("annotations", &mut out.annotations),
    ] {
        let Some(map) = meta.get(field) else {
            continue;
        };
        let path = format!("metadata.{field}");
        for (key, value) in map_entries(map.clone(), &path, &loc)? {
            match value {
                Value::String(s) => {
                    target.insert(key, s);
                }
                Value::Null => {
                    target.insert(key, String::new());
                }
                other => {
                    return Err(ManifestError::new(format!(
                        "{loc}: {path}[{key}]: expected a string, got {} (quote the value)",
                        kind_of(&other)
                    )));
                }
            }
        }
    }
    Ok(out)
}

/// The entries of a map-valued field (`null` is an empty map).
fn map_entries(
    value: Value,
    field: &str,
    loc: &str,
) -> Result<Vec<(String, Value)>, ManifestError> {
    match value {
        Value::Null => Ok(Vec::new()),
        Value::Object(m) => Ok(m.into_iter().collect()),
        other => Err(ManifestError::new(format!(
            "{loc}: {field}: expected a map of key: value, got {}",
            kind_of(&other)
        ))),
    }
}

/// A string field; `None` when absent or null.
fn string_field(
    obj: &Map<String, Value>,
    field: &str,
    loc: &str,
) -> Result<Option<String>, ManifestError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(ManifestError::new(format!(
            "{loc}: {field}: expected a string, got {}",
            kind_of(other)
        ))),
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a map",
    }
}

/// Decodes standard (padded) base64, ignoring line breaks as Go's decoder does.
fn decode_base64(s: &str) -> Option<Vec<u8>> {
    if s.contains(['\n', '\r']) {
        let compact: Zeroizing<String> =
            Zeroizing::new(s.chars().filter(|c| *c != '\n' && *c != '\r').collect());
        STANDARD.decode(compact.as_bytes()).ok()
    } else {
        STANDARD.decode(s.as_bytes()).ok()
    }
}

// ---------------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------------

/// A data value, serialized as base64.
struct Base64Value<'a>(&'a SecretValue);

impl Serialize for Base64Value<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let encoded = Zeroizing::new(STANDARD.encode(self.0.expose()));
        serializer.serialize_str(&encoded)
    }
}

/// `metadata` as kubectl prints it (fields in alphabetical order).
#[derive(Serialize)]
struct MetadataOut<'a> {
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: &'a BTreeMap<String, String>,
    /// `null` when unset, as kubectl prints for an object not yet stored.
    #[serde(rename = "creationTimestamp")]
    creation_timestamp: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    labels: &'a BTreeMap<String, String>,
    name: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    namespace: &'a str,
    #[serde(rename = "resourceVersion", skip_serializing_if = "Option::is_none")]
    resource_version: Option<String>,
    #[serde(skip_serializing_if = "str::is_empty")]
    uid: &'a str,
}

/// A Secret as kubectl prints it (fields in alphabetical order).
#[derive(Serialize)]
struct SecretOut<'a> {
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    data: BTreeMap<&'a str, Base64Value<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    immutable: Option<bool>,
    kind: &'static str,
    metadata: MetadataOut<'a>,
    #[serde(rename = "type", skip_serializing_if = "str::is_empty")]
    type_: &'a str,
}

impl<'a> SecretOut<'a> {
    fn new(s: &'a Secret) -> Self {
        let m = &s.metadata;
        Self {
            api_version: API_VERSION,
            data: s
                .data
                .iter()
                .map(|(k, v)| (k.as_str(), Base64Value(v)))
                .collect(),
            immutable: s.immutable.then_some(true),
            kind: KIND_SECRET,
            metadata: MetadataOut {
                annotations: &m.annotations,
                creation_timestamp: m.creation_timestamp.map(format_rfc3339),
                labels: &m.labels,
                name: &m.name,
                namespace: &m.namespace,
                resource_version: (m.resource_version != 0).then(|| m.resource_version.to_string()),
                uid: &m.uid,
            },
            type_: &s.type_,
        }
    }
}

#[derive(Serialize)]
struct ListMetaOut {
    #[serde(rename = "resourceVersion")]
    resource_version: &'static str,
}

/// A `kind: List`, as `kubectl get -o yaml|json` prints a collection.
#[derive(Serialize)]
struct ListOut<'a> {
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    items: Vec<SecretOut<'a>>,
    kind: &'static str,
    metadata: ListMetaOut,
}

impl<'a> ListOut<'a> {
    fn new(items: &'a [Secret]) -> Self {
        Self {
            api_version: API_VERSION,
            items: items.iter().map(SecretOut::new).collect(),
            kind: KIND_LIST,
            metadata: ListMetaOut {
                resource_version: "",
            },
        }
    }
}

fn yaml_options() -> serde_saphyr::SerializerOptions {
    let mut o = serde_saphyr::SerializerOptions::default();
    // kubectl's style: plain or quoted scalars, `- ` items at the parent's indentation.
    o.prefer_block_scalars = false;
    o.compact_list_indent = true;
    o.indent_step = 2;
    o
}

fn render_yaml<T: Serialize>(value: &T) -> Zeroizing<String> {
    let mut out = Zeroizing::new(String::new());
    // Serializing plain structs of strings and maps cannot fail; keep the error path anyway.
    if let Err(e) = serde_saphyr::to_fmt_writer_with_options(&mut *out, value, yaml_options()) {
        out.clear();
        out.push_str(&format!("# cannot render YAML: {e}\n"));
    }
    out
}

fn render_json<T: Serialize>(value: &T) -> Zeroizing<String> {
    let mut buf = Zeroizing::new(Vec::new());
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut *buf, formatter);
    if value.serialize(&mut ser).is_err() {
        buf.clear();
    }
    buf.push(b'\n');
    // serde_json writes UTF-8 only.
    Zeroizing::new(String::from_utf8_lossy(&buf).into_owned())
}

/// The Secret as a YAML manifest, as `kubectl get secret NAME -o yaml` prints it.
pub fn to_yaml(secret: &Secret) -> Zeroizing<String> {
    render_yaml(&SecretOut::new(secret))
}

/// The Secret as JSON, as `kubectl get secret NAME -o json` prints it (4-space indent).
pub fn to_json(secret: &Secret) -> Zeroizing<String> {
    render_json(&SecretOut::new(secret))
}

/// The Secrets as a YAML `kind: List`, as `kubectl get secrets -o yaml` prints them.
pub fn list_to_yaml(items: &[Secret]) -> Zeroizing<String> {
    render_yaml(&ListOut::new(items))
}

/// The Secrets as a JSON `kind: List`, as `kubectl get secrets -o json` prints them.
pub fn list_to_json(items: &[Secret]) -> Zeroizing<String> {
    render_json(&ListOut::new(items))
}

/// The Secret as a generic JSON value (the input of JSONPath templates). Data is base64.
pub fn to_value(secret: &Secret) -> Value {
    serde_json::to_value(SecretOut::new(secret)).unwrap_or(Value::Null)
}

/// The Secrets as a generic JSON `kind: List` value.
pub fn list_to_value(items: &[Secret]) -> Value {
    serde_json::to_value(ListOut::new(items)).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn stored() -> Secret {
        let mut s = Secret::new("default", "db")
            .with_type("Opaque")
            .with_data("password", "s3cr3t")
            .with_data("user", "admin")
            .with_label("app", "web");
        s.metadata.uid = "0b7c1a4e-5f7e-4b8e-9d7a-2f1c3e4d5a6b".into();
        s.metadata.resource_version = 42;
        s.metadata.creation_timestamp = Some(1_795_878_245); // 2026-11-28T15:04:05Z
        s.metadata
            .annotations
            .insert("owner".into(), "team-a".into());
        s
    }

    #[test]
    fn yaml_golden() {
        let y = to_yaml(&stored());
        assert_eq!(
            y.as_str(),
            "apiVersion: v1\n\
             data:\n  password: czNjcjN0\n  user: YWRtaW4=\n\
             kind: Secret\n\
             metadata:\n  annotations:\n    owner: team-a\n  creationTimestamp: \"2026-11-28T15:04:05Z\"\n  labels:\n    app: web\n  name: db\n  namespace: default\n  resourceVersion: \"42\"\n  uid: 0b7c1a4e-5f7e-4b8e-9d7a-2f1c3e4d5a6b\n\
             type: Opaque\n"
        );
    }

    #[test]
    fn json_golden() {
        let mut s = Secret::new("default", "t").with_data("a", "b");
        s.type_ = "Opaque".into();
        s.immutable = true;
        s.metadata.resource_version = 7;
        s.metadata.creation_timestamp = Some(0);
        assert_eq!(
            to_json(&s).as_str(),
            "{\n    \"apiVersion\": \"v1\",\n    \"data\": {\n        \"a\": \"Yg==\"\n    },\n    \"immutable\": true,\n    \"kind\": \"Secret\",\n    \"metadata\": {\n        \"creationTimestamp\": \"1970-01-01T00:00:00Z\",\n        \"name\": \"t\",\n        \"namespace\": \"default\",\n        \"resourceVersion\": \"7\"\n    },\n    \"type\": \"Opaque\"\n}\n"
        );
    }

    #[test]
    fn unstored_prints_null_timestamp_and_no_type() {
        let s = Secret::new("", "x").with_data("k", "v");
        assert_eq!(
            to_yaml(&s).as_str(),
            "apiVersion: v1\ndata:\n  k: dg==\nkind: Secret\nmetadata:\n  creationTimestamp: null\n  name: x\n"
        );
    }

    #[test]
    fn list_golden_yaml() {
        let items = vec![
            stored().duplicate(),
            Secret::new("ns2", "b").with_type("Opaque"),
        ];
        let y = list_to_yaml(&items);
        assert!(
            y.starts_with(
                "apiVersion: v1\nitems:\n- apiVersion: v1\n  data:\n    password: czNjcjN0\n"
            ),
            "{}",
            y.as_str()
        );
        assert!(
            y.ends_with("kind: List\nmetadata:\n  resourceVersion: \"\"\n"),
            "{}",
            y.as_str()
        );
        let back = parse_manifests(&y).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[1].secret.metadata.namespace, "ns2");
        assert_eq!(back[1].item, Some(1));
        let empty = list_to_yaml(&[]);
        assert_eq!(
            empty.as_str(),
            "apiVersion: v1\nitems: []\nkind: List\nmetadata:\n  resourceVersion: \"\"\n"
        );
    }

    #[test]
    fn yaml_round_trip_keeps_content_drops_server_fields() {
        let s = stored();
        let parsed = parse_manifests(&to_yaml(&s)).unwrap();
        assert_eq!(parsed.len(), 1);
        let p = &parsed[0].secret;
        assert_eq!(p.metadata.name, "db");
        assert_eq!(p.metadata.namespace, "default");
        assert_eq!(p.metadata.labels, s.metadata.labels);
        assert_eq!(p.metadata.annotations, s.metadata.annotations);
        assert_eq!(p.metadata.uid, "");
        assert_eq!(p.metadata.resource_version, 0);
        assert_eq!(p.metadata.creation_timestamp, None);
        assert_eq!(p.type_, "Opaque");
        assert_eq!(p.data, s.data);
        assert!(!p.immutable);
    }

    #[test]
    fn json_round_trip() {
        let mut s = stored();
        s.immutable = true;
        let parsed = parse_manifests(&to_json(&s)).unwrap();
        assert_eq!(parsed[0].secret.data, s.data);
        assert!(parsed[0].secret.immutable);
    }

    #[test]
    fn ambiguous_strings_are_quoted() {
        let mut s = Secret::new("default", "q").with_type("Opaque");
        for (k, v) in [
            ("a", "yes"),
            ("b", "123"),
            ("c", "true"),
            ("d", "null"),
            ("e", "1.5"),
            ("f", "a: b"),
            ("g", "line1\nline2"),
            ("h", ""),
            ("i", "0x1F"),
            ("j", "- x"),
            ("k", "#c"),
            ("l", "on"),
        ] {
            s.metadata.labels.insert(k.into(), v.into());
            s.metadata.annotations.insert(k.into(), v.into());
        }
        let parsed = parse_manifests(&to_yaml(&s)).unwrap();
        assert_eq!(parsed[0].secret.metadata.labels, s.metadata.labels);
        assert_eq!(
            parsed[0].secret.metadata.annotations,
            s.metadata.annotations
        );
    }

    #[test]
    fn multi_document_yaml_with_string_data_and_comments() {
        let text = "# leading comment\n---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: a\nstringData:\n  user: admin\ndata:\n  user: b3RoZXI=\n  pw: aHVudGVyMg==\n---\n---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: b\n  namespace: prod\ntype: kubernetes.io/basic-auth\nstringData:\n  username: u\n";
        let parsed = parse_manifests(text).unwrap();
        assert_eq!(parsed.len(), 2);
        let a = &parsed[0].secret;
        assert_eq!(a.data["user"].expose(), b"admin"); // stringData wins
        assert_eq!(a.data["pw"].expose(), b"hunter2");
        assert!(a.string_data.is_empty());
        assert_eq!(a.metadata.namespace, "");
        assert_eq!(parsed[1].secret.metadata.namespace, "prod");
        assert_eq!(parsed[1].secret.type_, "kubernetes.io/basic-auth");
        assert_eq!(parsed[1].document, 2);
    }

    #[test]
    fn json_stream_and_secret_list() {
        let text = r#"{"apiVersion":"v1","kind":"SecretList","items":[
            {"apiVersion":"v1","kind":"Secret","metadata":{"name":"x"},"data":{"k":"dg=="}}]}
            {"apiVersion":"v1","kind":"Secret","metadata":{"name":"y"},"data":{"k":null}}"#;
        let parsed = parse_manifests(text).unwrap();
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0].secret.data["k"].expose(), b"v");
        assert_eq!(parsed[0].location(), "document 1, items[0]");
        assert_eq!(parsed[1].secret.data["k"].expose(), b"");
    }

    #[test]
    fn base64_with_line_breaks() {
        let text = "apiVersion: v1\nkind: Secret\nmetadata: {name: a}\ndata:\n  k: |\n    aHVu\n    dGVyMg==\n";
        let parsed = parse_manifests(text).unwrap();
        assert_eq!(parsed[0].secret.data["k"].expose(), b"hunter2");
    }

    fn err(text: &str) -> String {
        parse_manifests(text).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_document_and_field_never_values() {
        let e = err(
            "apiVersion: v1\nkind: Secret\nmetadata: {name: a}\ndata:\n  pw: not*base64-topsecret\n",
        );
        assert!(e.contains("document 1"), "{e}");
        assert!(e.contains("data[pw]"), "{e}");
        assert!(e.contains("base64"), "{e}");
        assert!(!e.contains("topsecret"), "{e}");

        let e = err(
            "apiVersion: v1\nkind: Secret\nmetadata: {name: a}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm}\n",
        );
        assert!(e.contains("document 2"), "{e}");
        assert!(e.contains("\"ConfigMap\""), "{e}");
        assert!(e.contains("\"cm\""), "{e}");

        let e = err(
            "apiVersion: v1\nkind: List\nitems:\n- apiVersion: apps/v1\n  kind: Deployment\n  metadata: {name: d}\n",
        );
        assert!(e.contains("items[0]"), "{e}");
        assert!(e.contains("Deployment"), "{e}");

        let e =
            err("apiVersion: v1\nkind: Secret\nmetadata: {name: a}\nstringData:\n  port: 5432\n");
        assert!(e.contains("stringData[port]"), "{e}");
        assert!(!e.contains("5432"), "{e}");

        let e = err("apiVersion: v1\nkind: Secret\nmetadata: {name: a}\nspec: {}\n");
        assert!(e.contains("unknown field \"spec\""), "{e}");

        let e = err("apiVersion: v2\nkind: Secret\nmetadata: {name: a}\n");
        assert!(e.contains("apiVersion \"v2\""), "{e}");

        let e = err("kind: Secret\nmetadata: {name: a}\n");
        assert!(e.contains("apiVersion not set"), "{e}");

        let e = err("apiVersion: v1\nkind: Secret\nmetadata: {}\n");
        assert!(e.contains("metadata.name"), "{e}");

        let e = err("apiVersion: v1\nmetadata: {name: a}\n");
        assert!(e.contains("kind not set"), "{e}");

        let e = err(
            "apiVersion: v1\nkind: Secret\nmetadata: {name: a}\nstringData:\n  pw: \"unterminated-topsecret\n",
        );
        assert!(e.contains("invalid YAML"), "{e}");
        assert!(!e.contains("topsecret"), "{e}");

        let e = err(
            "{\"apiVersion\": \"v1\", \"kind\": \"Secret\", \"stringData\": {\"pw\": \"topsecret\"",
        );
        assert!(e.contains("invalid JSON"), "{e}");
        assert!(!e.contains("topsecret"), "{e}");

        let e = err("- a\n- b\n");
        assert!(e.contains("expected an object"), "{e}");
    }

    #[test]
    fn empty_stream_has_no_objects() {
        assert!(parse_manifests("").unwrap().is_empty());
        assert!(
            parse_manifests("# only a comment\n---\n")
                .unwrap()
                .is_empty()
        );
    }
}
