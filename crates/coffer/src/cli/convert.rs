//! Conversions between the engine's [`Secret`] and the protobuf message, for the client side.
//!
//! Free functions rather than `From` impls, so that they never collide with the server's.

use zeroize::Zeroize;

use coffer_core::model::{ObjectMeta, Secret, SecretValue};
use coffer_server::proto::v1 as pb;

/// The request form of a Secret (a copy: the message is handed to the transport).
pub(crate) fn to_proto(s: &Secret) -> pb::Secret {
    let m = &s.metadata;
    pb::Secret {
        metadata: Some(pb::ObjectMeta {
            name: m.name.clone(),
            namespace: m.namespace.clone(),
            uid: m.uid.clone(),
            resource_version: m.resource_version,
            creation_timestamp: m
                .creation_timestamp
                .map(|seconds| prost_types::Timestamp { seconds, nanos: 0 }),
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
        }),
        r#type: s.type_.clone(),
        data: s
            .data
            .iter()
            .map(|(k, v)| (k.clone(), v.expose().to_vec()))
            .collect(),
        string_data: Default::default(),
        immutable: s.immutable,
    }
}

/// The engine form of a received Secret; data buffers move into zeroizing values.
pub(crate) fn from_proto(mut p: pb::Secret) -> Secret {
    let m = p.metadata.take().unwrap_or_default();
    let mut data: std::collections::BTreeMap<String, SecretValue> = p
        .data
        .drain()
        .map(|(k, v)| (k, SecretValue::new(v)))
        .collect();
    // The server never returns string_data; merge it anyway rather than drop it.
    for (k, mut v) in p.string_data.drain() {
        data.insert(k, SecretValue::new(v.as_bytes().to_vec()));
        v.zeroize();
    }
    Secret {
        metadata: ObjectMeta {
            name: m.name,
            namespace: m.namespace,
            uid: m.uid,
            resource_version: m.resource_version,
            creation_timestamp: m.creation_timestamp.map(|t| t.seconds),
            labels: m.labels.into_iter().collect(),
            annotations: m.annotations.into_iter().collect(),
        },
        type_: p.r#type,
        data,
        string_data: Default::default(),
        immutable: p.immutable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut s = Secret::new("ns", "n")
            .with_type("Opaque")
            .with_data("k", "v")
            .with_label("a", "b");
        s.metadata.creation_timestamp = Some(5);
        s.metadata.resource_version = 9;
        s.immutable = true;
        let back = from_proto(to_proto(&s));
        assert_eq!(back, s);
    }
}
