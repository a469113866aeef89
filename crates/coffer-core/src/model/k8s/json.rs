//! Kubernetes JSON Secrets (kube-apiserver with `--storage-media-type=application/json`): the
//! object with `kind` and `apiVersion`, `metadata.resourceVersion` absent, written by Go's
//! `encoding/json` (struct fields in declaration order, map keys sorted, `<`, `>`, `&` escaped)
//! and followed by a newline.
//!
//! An edit keeps every member it does not rewrite as the exact bytes it was given (members are
//! held as borrowed raw JSON), so fields Coffer's model lacks survive untouched.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use zeroize::Zeroizing;

use super::decoded::NotASecret;
use crate::model::timestamp::parse_rfc3339;
use crate::model::{ObjectMeta, Secret, SecretValue};

/// Go's order of a Secret's members (TypeMeta inline, then the struct's fields).
const SECRET_ORDER: &[&str] = &[
    "kind",
    "apiVersion",
    "metadata",
    "immutable",
    "data",
    "stringData",
    "type",
];
/// Go's order of ObjectMeta's members.
const META_ORDER: &[&str] = &[
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
];

/// A member's value: as given, or rewritten.
enum Part<'a> {
    Given(&'a RawValue),
    Written(Zeroizing<String>),
}

impl Part<'_> {
    fn text(&self) -> &str {
        match self {
            Part::Given(r) => r.get(),
            Part::Written(s) => s,
        }
    }
}

/// A JSON object's members in the order given, values as raw JSON.
struct Object<'a>(Vec<(Cow<'a, str>, Part<'a>)>);

impl<'de: 'a, 'a> serde::Deserialize<'de> for Object<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Object<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Object<'a>, A::Error> {
                let mut members = Vec::new();
                while let Some((k, v)) = map.next_entry::<Cow<'de, str>, &'de RawValue>()? {
                    members.push((k, Part::Given(v)));
                }
                Ok(Object(members))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

impl<'a> Object<'a> {
    fn parse(text: &'a str) -> Result<Self, NotASecret> {
        serde_json::from_str(text).map_err(|_| NotASecret("not a JSON object"))
    }

    /// A member's value; the last one when a key repeats (as Go's decoder reads it).
    fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.0.iter().rev().find_map(|(k, v)| match v {
            Part::Given(r) if k == key => Some(*r),
            _ => None,
        })
    }

    /// Sets (or with `None` removes) a member; a new member goes where Go would write it.
    fn set(&mut self, key: &str, value: Option<Zeroizing<String>>, order: &[&str]) {
        let at = self.0.iter().rposition(|(k, _)| k == key);
        match (at, value) {
            (Some(i), None) => {
                self.0.remove(i);
            }
            (Some(i), Some(v)) => self.0[i].1 = Part::Written(v),
            (None, None) => {}
            (None, Some(v)) => {
                let rank = |k: &str| order.iter().position(|o| *o == k);
                let mine = rank(key).unwrap_or(usize::MAX);
                let i = self
                    .0
                    .iter()
                    .position(|(k, _)| rank(k).is_some_and(|r| r > mine))
                    .unwrap_or(self.0.len());
                self.0
                    .insert(i, (Cow::Owned(key.to_owned()), Part::Written(v)));
            }
        }
    }

    fn write(&self) -> Zeroizing<String> {
        let mut out = Zeroizing::new(String::with_capacity(
            self.0
                .iter()
                .map(|(k, v)| k.len() + v.text().len() + 4)
                .sum::<usize>()
                + 2,
        ));
        out.push('{');
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            go_string(&mut out, k);
            out.push(':');
            out.push_str(v.text());
        }
        out.push('}');
        out
    }
}

/// Appends `s` as Go's `encoding/json` writes a string.
fn go_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' | '\0'..='\u{1f}' => {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A raw JSON string's value (`None` for `null`).
fn string_of(raw: &RawValue) -> Result<Option<Zeroizing<String>>, NotASecret> {
    let text = raw.get();
    if text == "null" {
        return Ok(None);
    }
    // The common case, no escapes: no intermediate copy.
    if let Some(inner) = text.strip_prefix('"').and_then(|t| t.strip_suffix('"'))
        && !inner.contains('\\')
    {
        return Ok(Some(Zeroizing::new(inner.to_owned())));
    }
    serde_json::from_str::<String>(text)
        .map(|s| Some(Zeroizing::new(s)))
        .map_err(|_| NotASecret("a member that must be a string is not one"))
}

fn string_map(raw: Option<&RawValue>) -> Result<BTreeMap<String, String>, NotASecret> {
    let mut out = BTreeMap::new();
    let Some(raw) = raw else { return Ok(out) };
    if raw.get() == "null" {
        return Ok(out);
    }
    for (k, v) in Object::parse(raw.get())?.0 {
        if let Part::Given(v) = v
            && let Some(v) = string_of(v)?
        {
            out.insert(k.into_owned(), v.to_string());
        }
    }
    Ok(out)
}

/// Decodes a JSON Secret.
pub(super) fn parse(namespace: &str, name: &str, value: &[u8]) -> Result<Secret, NotASecret> {
    let text = std::str::from_utf8(value).map_err(|_| NotASecret("JSON that is not UTF-8"))?;
    let top = Object::parse(text.trim_end())?;
    let kind = top.get("kind").map(string_of).transpose()?.flatten();
    let api_version = top.get("apiVersion").map(string_of).transpose()?.flatten();
    if kind.as_deref().map(String::as_str) != Some("Secret")
        || api_version.as_deref().map(String::as_str) != Some("v1")
    {
        return Err(NotASecret("not a v1 Secret"));
    }
    let mut secret = Secret::new(namespace, name);
    if let Some(meta) = top.get("metadata").filter(|m| m.get() != "null") {
        parse_meta(Object::parse(meta.get())?, &mut secret.metadata)?;
    }
    if let Some(data) = top.get("data").filter(|d| d.get() != "null") {
        for (k, v) in Object::parse(data.get())?.0 {
            let Part::Given(v) = v else { continue };
            let encoded = string_of(v)?.unwrap_or_default();
            let bytes = STANDARD
                .decode(encoded.as_bytes())
                .map_err(|_| NotASecret("a data value is not base64"))?;
            secret.data.insert(k.into_owned(), SecretValue::new(bytes));
        }
    }
    if let Some(t) = top.get("type").map(string_of).transpose()?.flatten() {
        secret.type_ = t.to_string();
    }
    if let Some(i) = top.get("immutable") {
        secret.immutable = serde_json::from_str::<Option<bool>>(i.get())
            .map_err(|_| NotASecret("immutable is not a boolean"))?
            .unwrap_or(false);
    }
    Ok(secret)
}

fn parse_meta(meta: Object<'_>, out: &mut ObjectMeta) -> Result<(), NotASecret> {
    if let Some(uid) = meta.get("uid").map(string_of).transpose()?.flatten() {
        out.uid = uid.to_string();
    }
    if let Some(ts) = meta
        .get("creationTimestamp")
        .map(string_of)
        .transpose()?
        .flatten()
    {
        let (secs, _) =
            parse_rfc3339(&ts).ok_or(NotASecret("creationTimestamp is not RFC 3339"))?;
        out.creation_timestamp = Some(secs);
    }
    out.labels = string_map(meta.get("labels"))?;
    out.annotations = string_map(meta.get("annotations"))?;
    Ok(())
}

/// Rewrites `original` (a JSON Secret) to carry `new`'s labels, annotations, data, type and
/// immutability where they differ from what it holds; everything else is kept as given.
pub(super) fn edit(original: &[u8], new: &Secret) -> Result<Zeroizing<Vec<u8>>, NotASecret> {
    let old = parse(&new.metadata.namespace, &new.metadata.name, original)?;
    let text = std::str::from_utf8(original).map_err(|_| NotASecret("JSON that is not UTF-8"))?;
    let body = text.trim_end();
    let tail = &text[body.len()..];
    let mut top = Object::parse(body)?;
    let meta_text;
    if old.metadata.labels != new.metadata.labels
        || old.metadata.annotations != new.metadata.annotations
    {
        let given = match top.get("metadata").map(RawValue::get) {
            None | Some("null") => "{}",
            Some(m) => m,
        };
        let mut meta = Object::parse(given)?;
        if old.metadata.labels != new.metadata.labels {
            meta.set("labels", string_map_json(&new.metadata.labels), META_ORDER);
        }
        if old.metadata.annotations != new.metadata.annotations {
            meta.set(
                "annotations",
                string_map_json(&new.metadata.annotations),
                META_ORDER,
            );
        }
        meta_text = meta.write();
        top.set("metadata", Some(meta_text.clone()), SECRET_ORDER);
    }
    if old.data != new.data {
        top.set("data", data_json(&new.data), SECRET_ORDER);
        top.set("stringData", None, SECRET_ORDER);
    }
    if old.type_ != new.type_ {
        let t = (!new.type_.is_empty()).then(|| {
            let mut s = Zeroizing::new(String::new());
            go_string(&mut s, &new.type_);
            s
        });
        top.set("type", t, SECRET_ORDER);
    }
    if old.immutable != new.immutable {
        let v = if new.immutable { "true" } else { "false" };
        top.set(
            "immutable",
            Some(Zeroizing::new(v.to_owned())),
            SECRET_ORDER,
        );
    }
    let mut out = top.write();
    out.push_str(tail);
    Ok(Zeroizing::new(std::mem::take(&mut *out).into_bytes()))
}

/// A string map as Go writes it (`None`, so omitted, when empty: `omitempty`).
fn string_map_json(map: &BTreeMap<String, String>) -> Option<Zeroizing<String>> {
    if map.is_empty() {
        return None;
    }
    let mut s = Zeroizing::new(String::from("{"));
    for (i, (k, v)) in map.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        go_string(&mut s, k);
        s.push(':');
        go_string(&mut s, v);
    }
    s.push('}');
    Some(s)
}

fn data_json(data: &BTreeMap<String, SecretValue>) -> Option<Zeroizing<String>> {
    if data.is_empty() {
        return None;
    }
    let mut s = Zeroizing::new(String::from("{"));
    for (i, (k, v)) in data.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        go_string(&mut s, k);
        s.push_str(":\"");
        let encoded = Zeroizing::new(STANDARD.encode(v.expose()));
        s.push_str(&encoded);
        s.push('"');
    }
    s.push('}');
    Some(s)
}

/// The creationTimestamp as the API server writes it (for tests building JSON values).
#[cfg(test)]
pub(super) fn timestamp(secs: i64) -> String {
    crate::model::timestamp::format_rfc3339(secs)
}
