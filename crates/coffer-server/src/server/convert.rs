//! Conversion between the wire messages (`coffer.v1`) and the engine's [`Secret`].
//!
//! Inbound, data values move into [`SecretValue`]s without a copy (the decoded `Vec<u8>` becomes
//! the zeroizing buffer). Outbound, prost needs plain `Vec<u8>`s, so each value is copied once
//! into the response message; that copy lives only until tonic has encoded the response, and
//! the codec ([`coffer_kms::codec`]) zeroizes it then.
//!
//! `string_data` is write-only: it is accepted (and merged into `data` by the store) but never
//! returned. Server-managed fields (`uid`, `creation_timestamp`) are ignored on the way in.

use std::collections::{BTreeMap, HashMap};

use crate::proto::v1 as pb;
use coffer_core::model::{ObjectMeta, Secret, SecretValue};

/// The annotation a bookmark ending the initial events carries (value `"true"`).
pub const INITIAL_EVENTS_END_ANNOTATION: &str = "k8s.io/initial-events-end";

/// Converts a request's Secret into the engine's type, taking ownership of its buffers.
pub fn secret_from_proto(s: pb::Secret) -> Secret {
    let meta = s.metadata.unwrap_or_default();
    Secret {
        metadata: ObjectMeta {
            name: meta.name,
            namespace: meta.namespace,
            // Set by the store; whatever the client sent is ignored.
            uid: String::new(),
            resource_version: meta.resource_version,
            creation_timestamp: None,
            labels: meta.labels.into_iter().collect(),
            annotations: meta.annotations.into_iter().collect(),
        },
        type_: s.r#type,
        data: values_from(s.data),
        string_data: s
            .string_data
            .into_iter()
            .map(|(k, v)| (k, SecretValue::new(v.into_bytes())))
            .collect(),
        immutable: s.immutable,
    }
}

fn values_from(m: HashMap<String, Vec<u8>>) -> BTreeMap<String, SecretValue> {
    m.into_iter()
        .map(|(k, v)| (k, SecretValue::new(v)))
        .collect()
}

/// Converts the engine's Secret into the wire message. `string_data` is never returned.
pub fn secret_to_proto(s: &Secret) -> pb::Secret {
    pb::Secret {
        metadata: Some(meta_to_proto(&s.metadata)),
        r#type: s.type_.clone(),
        data: s
            .data
            .iter()
            .map(|(k, v)| (k.clone(), v.expose().to_vec()))
            .collect(),
        string_data: HashMap::new(),
        immutable: s.immutable,
    }
}

/// As [`secret_to_proto`], consuming the Secret (saves copying the metadata).
pub fn secret_into_proto(s: Secret) -> pb::Secret {
    let data = s
        .data
        .iter()
        .map(|(k, v)| (k.clone(), v.expose().to_vec()))
        .collect();
    pb::Secret {
        metadata: Some(meta_into_proto(s.metadata)),
        r#type: s.type_,
        data,
        string_data: HashMap::new(),
        immutable: s.immutable,
    }
}

fn meta_to_proto(m: &ObjectMeta) -> pb::ObjectMeta {
    pb::ObjectMeta {
        name: m.name.clone(),
        namespace: m.namespace.clone(),
        uid: m.uid.clone(),
        resource_version: m.resource_version,
        creation_timestamp: m.creation_timestamp.map(timestamp),
        labels: m
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        annotations: m
            .annotations
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

fn meta_into_proto(m: ObjectMeta) -> pb::ObjectMeta {
    pb::ObjectMeta {
        name: m.name,
        namespace: m.namespace,
        uid: m.uid,
        resource_version: m.resource_version,
        creation_timestamp: m.creation_timestamp.map(timestamp),
        labels: m.labels.into_iter().collect(),
        annotations: m.annotations.into_iter().collect(),
    }
}

/// Seconds since the Unix epoch as a protobuf `Timestamp`.
pub fn timestamp(seconds: i64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds, nanos: 0 }
}

/// A bookmark object: only `metadata.resource_version` (and, for the bookmark that ends the
/// initial events, the annotation [`INITIAL_EVENTS_END_ANNOTATION`]).
pub fn bookmark_object(resource_version: u64, initial_events_end: bool) -> pb::Secret {
    let mut annotations = HashMap::new();
    if initial_events_end {
        annotations.insert(INITIAL_EVENTS_END_ANNOTATION.to_owned(), "true".to_owned());
    }
    pb::Secret {
        metadata: Some(pb::ObjectMeta {
            resource_version,
            annotations,
            ..pb::ObjectMeta::default()
        }),
        ..pb::Secret::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_fields_and_drops_server_managed_and_write_only_ones() {
        let mut p = pb::Secret {
            metadata: Some(pb::ObjectMeta {
                name: "n".into(),
                namespace: "ns".into(),
                uid: "client-chosen".into(),
                resource_version: 7,
                creation_timestamp: Some(timestamp(5)),
                labels: [("a".to_owned(), "b".to_owned())].into(),
                annotations: [("c".to_owned(), "d".to_owned())].into(),
            }),
            r#type: "Opaque".into(),
            data: [("k".to_owned(), b"v".to_vec())].into(),
            string_data: [("s".to_owned(), "t".to_owned())].into(),
            immutable: true,
        };
        let s = secret_from_proto(p.clone());
        assert_eq!(s.metadata.uid, "");
        assert_eq!(s.metadata.creation_timestamp, None);
        assert_eq!(s.metadata.resource_version, 7);
        assert_eq!(s.data["k"].expose(), b"v");
        assert_eq!(s.string_data["s"].expose(), b"t");
        assert!(s.immutable);
        let back = secret_to_proto(&s);
        assert!(back.string_data.is_empty(), "string_data is write-only");
        assert_eq!(back, secret_into_proto(s));
        p.string_data.clear();
        if let Some(m) = p.metadata.as_mut() {
            m.uid.clear();
            m.creation_timestamp = None;
        }
        assert_eq!(back, p);
    }

    #[test]
    fn request_values_move_into_zeroizing_buffers_without_a_copy() {
        let value = b"s3cret".to_vec();
        let string = String::from("t0ps3cret");
        let (value_at, string_at) = (value.as_ptr(), string.as_ptr());
        let p = pb::Secret {
            data: [("k".to_owned(), value)].into(),
            string_data: [("s".to_owned(), string)].into(),
            ..pb::Secret::default()
        };
        let s = secret_from_proto(p);
        // The same allocations, now owned by `SecretValue`s (wiped on drop): no plaintext copy
        // of the request is left behind for the allocator.
        assert_eq!(s.data["k"].expose().as_ptr(), value_at);
        assert_eq!(s.string_data["s"].expose().as_ptr(), string_at);
    }

    #[test]
    fn bookmarks_carry_only_the_revision() {
        let b = bookmark_object(42, false);
        let m = b.metadata.clone().unwrap_or_default();
        assert_eq!(m.resource_version, 42);
        assert!(m.name.is_empty() && m.annotations.is_empty() && b.data.is_empty());
        let end = bookmark_object(42, true);
        let m = end.metadata.unwrap_or_default();
        assert_eq!(m.annotations[INITIAL_EVENTS_END_ANNOTATION], "true");
    }
}
