//! Kubernetes protobuf Secrets, as kube-apiserver stores them in etcd: the magic `k8s\0`, then a
//! `runtime.Unknown` (typeMeta = 1 {apiVersion = 1, kind = 2}, raw = 2, contentEncoding = 3,
//! contentType = 4) whose `raw` is a `core/v1` Secret (metadata = 1, data = 2, type = 3,
//! stringData = 4, immutable = 5), its ObjectMeta numbered as in apimachinery's
//! `pkg/apis/meta/v1/generated.proto`.
//!
//! Encoding follows the rules of the API server's generated marshallers (field-number order,
//! map entries in key order, non-pointer strings always written, pointers only when set), so
//! that what Coffer writes is what the API server would have written. An edit rewrites only the
//! fields Coffer's model carries and copies every other field byte for byte.

use std::collections::BTreeMap;

use zeroize::Zeroizing;

use super::decoded::{Decoded, NotASecret};
use super::wire::{self, WireError, put_bytes, put_map_entry, put_varint};
use crate::model::{ObjectMeta, Secret, SecretValue};

/// The magic in front of every protobuf value.
pub const MAGIC: &[u8] = b"k8s\0";

/// The Unix time of Go's zero `time.Time` (what an unset creationTimestamp encodes as).
const GO_ZERO_TIME: i64 = -62_135_596_800;

mod tag {
    pub(super) const UNKNOWN_TYPE_META: u32 = 1;
    pub(super) const UNKNOWN_RAW: u32 = 2;
    pub(super) const TYPE_META_API_VERSION: u32 = 1;
    pub(super) const TYPE_META_KIND: u32 = 2;
    pub(super) const SECRET_METADATA: u32 = 1;
    pub(super) const SECRET_DATA: u32 = 2;
    pub(super) const SECRET_TYPE: u32 = 3;
    pub(super) const SECRET_STRING_DATA: u32 = 4;
    pub(super) const SECRET_IMMUTABLE: u32 = 5;
    pub(super) const META_NAME: u32 = 1;
    pub(super) const META_GENERATE_NAME: u32 = 2;
    pub(super) const META_NAMESPACE: u32 = 3;
    pub(super) const META_SELF_LINK: u32 = 4;
    pub(super) const META_UID: u32 = 5;
    pub(super) const META_RESOURCE_VERSION: u32 = 6;
    pub(super) const META_GENERATION: u32 = 7;
    pub(super) const META_CREATION_TIMESTAMP: u32 = 8;
    pub(super) const META_LABELS: u32 = 11;
    pub(super) const META_ANNOTATIONS: u32 = 12;
    pub(super) const TIME_SECONDS: u32 = 1;
    pub(super) const TIME_NANOS: u32 = 2;
}

/// Decodes a value that starts with [`MAGIC`].
pub(super) fn decode(namespace: &str, name: &str, value: &[u8]) -> Decoded {
    match parse(namespace, name, value) {
        Ok(s) => Decoded::Secret(Box::new(s)),
        Err(e) => Decoded::Opaque(e),
    }
}

pub(super) fn parse(namespace: &str, name: &str, value: &[u8]) -> Result<Secret, NotASecret> {
    let body = value
        .strip_prefix(MAGIC)
        .ok_or(NotASecret("no k8s protobuf magic"))?;
    let mut raw = None;
    let (mut api_version, mut kind) = ("", "");
    for f in wire::fields(body).map_err(wire_error)? {
        match f.tag {
            tag::UNKNOWN_TYPE_META => {
                for t in wire::fields(f.bytes().map_err(wire_error)?).map_err(wire_error)? {
                    match t.tag {
                        tag::TYPE_META_API_VERSION => {
                            api_version = t.string().map_err(wire_error)?
                        }
                        tag::TYPE_META_KIND => kind = t.string().map_err(wire_error)?,
                        _ => {}
                    }
                }
            }
            tag::UNKNOWN_RAW => raw = Some(f.bytes().map_err(wire_error)?),
            _ => {}
        }
    }
    if api_version != "v1" || kind != "Secret" {
        return Err(NotASecret("not a v1 Secret"));
    }
    let raw = raw.ok_or(NotASecret("no object in the envelope"))?;
    let mut secret = Secret::new(namespace, name);
    for f in wire::fields(raw).map_err(wire_error)? {
        match f.tag {
            tag::SECRET_METADATA => {
                parse_meta(f.bytes().map_err(wire_error)?, &mut secret.metadata)?
            }
            tag::SECRET_DATA => {
                let (k, v) = wire::map_entry(&f).map_err(wire_error)?;
                secret.data.insert(k, SecretValue::new(v));
            }
            tag::SECRET_TYPE => secret.type_ = f.string().map_err(wire_error)?.to_owned(),
            tag::SECRET_IMMUTABLE => secret.immutable = f.varint().map_err(wire_error)? != 0,
            _ => {}
        }
    }
    Ok(secret)
}

fn parse_meta(bytes: &[u8], meta: &mut ObjectMeta) -> Result<(), NotASecret> {
    for f in wire::fields(bytes).map_err(wire_error)? {
        match f.tag {
            tag::META_UID => meta.uid = f.string().map_err(wire_error)?.to_owned(),
            tag::META_CREATION_TIMESTAMP => {
                let mut seconds = 0i64;
                for t in wire::fields(f.bytes().map_err(wire_error)?).map_err(wire_error)? {
                    if t.tag == tag::TIME_SECONDS {
                        seconds = t.varint().map_err(wire_error)? as i64;
                    }
                }
                meta.creation_timestamp = (seconds != GO_ZERO_TIME).then_some(seconds);
            }
            tag::META_LABELS => {
                let (k, v) = wire::map_entry(&f).map_err(wire_error)?;
                meta.labels.insert(k, utf8(v)?);
            }
            tag::META_ANNOTATIONS => {
                let (k, v) = wire::map_entry(&f).map_err(wire_error)?;
                meta.annotations.insert(k, utf8(v)?);
            }
            _ => {}
        }
    }
    Ok(())
}

fn utf8(v: Vec<u8>) -> Result<String, NotASecret> {
    String::from_utf8(v).map_err(|_| NotASecret("a label or annotation is not UTF-8"))
}

fn wire_error(e: WireError) -> NotASecret {
    NotASecret(e.0)
}

/// Encodes a Secret as the API server stores it (resourceVersion empty: the key's mod_revision
/// is the resourceVersion).
pub(super) fn encode(secret: &Secret) -> Zeroizing<Vec<u8>> {
    let m = &secret.metadata;
    // Annotations may hold a copy of the data (kubectl's last-applied configuration).
    let mut meta = Zeroizing::new(Vec::new());
    put_bytes(&mut meta, tag::META_NAME, m.name.as_bytes());
    put_bytes(&mut meta, tag::META_GENERATE_NAME, b"");
    put_bytes(&mut meta, tag::META_NAMESPACE, m.namespace.as_bytes());
    put_bytes(&mut meta, tag::META_SELF_LINK, b"");
    put_bytes(&mut meta, tag::META_UID, m.uid.as_bytes());
    put_bytes(&mut meta, tag::META_RESOURCE_VERSION, b"");
    put_varint(&mut meta, tag::META_GENERATION, 0);
    put_bytes(
        &mut meta,
        tag::META_CREATION_TIMESTAMP,
        &time(m.creation_timestamp),
    );
    put_string_map(&mut meta, tag::META_LABELS, &m.labels);
    put_string_map(&mut meta, tag::META_ANNOTATIONS, &m.annotations);
    let mut raw = Zeroizing::new(Vec::new());
    put_bytes(&mut raw, tag::SECRET_METADATA, &meta);
    put_data(&mut raw, &secret.data);
    put_bytes(&mut raw, tag::SECRET_TYPE, secret.type_.as_bytes());
    if secret.immutable {
        put_varint(&mut raw, tag::SECRET_IMMUTABLE, 1);
    }
    envelope(&raw)
}

/// Wraps an encoded Secret in the magic and `runtime.Unknown`.
fn envelope(raw: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut type_meta = Vec::new();
    put_bytes(&mut type_meta, tag::TYPE_META_API_VERSION, b"v1");
    put_bytes(&mut type_meta, tag::TYPE_META_KIND, b"Secret");
    let mut out = Zeroizing::new(Vec::with_capacity(raw.len() + 32));
    out.extend_from_slice(MAGIC);
    put_bytes(&mut out, tag::UNKNOWN_TYPE_META, &type_meta);
    put_bytes(&mut out, tag::UNKNOWN_RAW, raw);
    put_bytes(&mut out, 3, b"");
    put_bytes(&mut out, 4, b"");
    out
}

fn time(seconds: Option<i64>) -> Vec<u8> {
    let mut t = Vec::new();
    put_varint(
        &mut t,
        tag::TIME_SECONDS,
        seconds.unwrap_or(GO_ZERO_TIME) as u64,
    );
    // The API server never stores nanoseconds (metav1.Time.ProtoTime).
    put_varint(&mut t, tag::TIME_NANOS, 0);
    t
}

fn put_string_map(out: &mut Vec<u8>, tag: u32, map: &BTreeMap<String, String>) {
    for (k, v) in map {
        put_map_entry(out, tag, k, v.as_bytes());
    }
}

fn put_data(out: &mut Vec<u8>, data: &BTreeMap<String, SecretValue>) {
    for (k, v) in data {
        put_map_entry(out, tag::SECRET_DATA, k, v.expose());
    }
}

/// Rewrites `original` (a protobuf Secret) to carry `new`'s labels, annotations, data, type
/// and immutability, each only where it differs from what `original` holds; every other field
/// is copied byte for byte. `stringData` (write-only) is dropped when the data changes.
pub(super) fn edit(original: &[u8], new: &Secret) -> Result<Zeroizing<Vec<u8>>, NotASecret> {
    let old = parse(&new.metadata.namespace, &new.metadata.name, original)?;
    let body = &original[MAGIC.len()..];
    let outer = wire::fields(body).map_err(wire_error)?;
    // `raw` is a bytes field: when it appears more than once the last one counts (as for a
    // decoder), and only that one is edited.
    let last_raw = outer.iter().rposition(|f| f.tag == tag::UNKNOWN_RAW);
    let mut out = Zeroizing::new(Vec::with_capacity(original.len() + 64));
    out.extend_from_slice(MAGIC);
    for (i, f) in outer.iter().enumerate() {
        if Some(i) != last_raw {
            out.extend_from_slice(f.raw);
            continue;
        }
        let raw = edit_secret(f.bytes().map_err(wire_error)?, &old, new)?;
        put_bytes(&mut out, tag::UNKNOWN_RAW, &raw);
    }
    Ok(out)
}

fn edit_secret(raw: &[u8], o: &Secret, new: &Secret) -> Result<Zeroizing<Vec<u8>>, NotASecret> {
    let data_changed = o.data != new.data;
    let type_changed = o.type_ != new.type_;
    let immutable_changed = o.immutable != new.immutable;
    let mut parts: Vec<(u32, Zeroizing<Vec<u8>>)> = Vec::new();
    let fields = wire::fields(raw).map_err(wire_error)?;
    if !fields.iter().any(|f| f.tag == tag::SECRET_METADATA) {
        // No metadata at all: one that carries only what changed.
        let meta = edit_meta(&[], &o.metadata, &new.metadata)?;
        if !meta.is_empty() {
            let mut field = Zeroizing::new(Vec::new());
            put_bytes(&mut field, tag::SECRET_METADATA, &meta);
            parts.push((tag::SECRET_METADATA, field));
        }
    }
    for f in fields {
        let replaced = match f.tag {
            tag::SECRET_METADATA => {
                let meta = edit_meta(f.bytes().map_err(wire_error)?, &o.metadata, &new.metadata)?;
                let mut field = Zeroizing::new(Vec::new());
                put_bytes(&mut field, tag::SECRET_METADATA, &meta);
                parts.push((f.tag, field));
                continue;
            }
            tag::SECRET_DATA | tag::SECRET_STRING_DATA => data_changed,
            tag::SECRET_TYPE => type_changed,
            tag::SECRET_IMMUTABLE => immutable_changed,
            _ => false,
        };
        if !replaced {
            parts.push((f.tag, Zeroizing::new(f.raw.to_vec())));
        }
    }
    if data_changed {
        let mut field = Zeroizing::new(Vec::new());
        put_data(&mut field, &new.data);
        parts.push((tag::SECRET_DATA, field));
    }
    if type_changed {
        let mut field = Zeroizing::new(Vec::new());
        put_bytes(&mut field, tag::SECRET_TYPE, new.type_.as_bytes());
        parts.push((tag::SECRET_TYPE, field));
    }
    if immutable_changed {
        let mut field = Zeroizing::new(Vec::new());
        put_varint(&mut field, tag::SECRET_IMMUTABLE, u64::from(new.immutable));
        parts.push((tag::SECRET_IMMUTABLE, field));
    }
    Ok(join(parts))
}

fn edit_meta(
    bytes: &[u8],
    old: &ObjectMeta,
    new: &ObjectMeta,
) -> Result<Zeroizing<Vec<u8>>, NotASecret> {
    let labels_changed = old.labels != new.labels;
    let annotations_changed = old.annotations != new.annotations;
    let mut parts: Vec<(u32, Zeroizing<Vec<u8>>)> = Vec::new();
    for f in wire::fields(bytes).map_err(wire_error)? {
        let replaced = match f.tag {
            tag::META_LABELS => labels_changed,
            tag::META_ANNOTATIONS => annotations_changed,
            _ => false,
        };
        if !replaced {
            parts.push((f.tag, Zeroizing::new(f.raw.to_vec())));
        }
    }
    if labels_changed {
        let mut field = Zeroizing::new(Vec::new());
        put_string_map(&mut field, tag::META_LABELS, &new.labels);
        parts.push((tag::META_LABELS, field));
    }
    if annotations_changed {
        let mut field = Zeroizing::new(Vec::new());
        put_string_map(&mut field, tag::META_ANNOTATIONS, &new.annotations);
        parts.push((tag::META_ANNOTATIONS, field));
    }
    Ok(join(parts))
}

/// Concatenates fields in field-number order; fields with the same number (map entries,
/// repeated fields, and unknown ones) keep their order.
fn join(mut parts: Vec<(u32, Zeroizing<Vec<u8>>)>) -> Zeroizing<Vec<u8>> {
    parts.sort_by_key(|(tag, _)| *tag);
    let mut out = Zeroizing::new(Vec::with_capacity(parts.iter().map(|(_, p)| p.len()).sum()));
    for (_, p) in parts {
        out.extend_from_slice(&p);
    }
    out
}
