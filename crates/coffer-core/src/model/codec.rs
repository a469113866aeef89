//! The plaintext encoding of a whole Secret: what the envelope seals.
//!
//! Everything but the storage key is inside the envelope: data, labels, annotations, type, uid and
//! revision. The encoding is protobuf (hand-declared `prost` messages, independent of the public
//! API so that API changes never change the disk format). The encoded buffer is zeroizing.

use std::collections::BTreeMap;

use prost::Message;
use zeroize::Zeroizing;

use super::{ObjectMeta, Secret, SecretValue};

/// Version 1 of the stored object.
#[derive(Clone, PartialEq, prost::Message)]
struct StoredSecretV1 {
    #[prost(string, tag = "1")]
    namespace: String,
    #[prost(string, tag = "2")]
    name: String,
    #[prost(string, tag = "3")]
    uid: String,
    #[prost(uint64, tag = "4")]
    resource_version: u64,
    #[prost(int64, optional, tag = "5")]
    creation_timestamp: Option<i64>,
    #[prost(btree_map = "string, string", tag = "6")]
    labels: BTreeMap<String, String>,
    #[prost(btree_map = "string, string", tag = "7")]
    annotations: BTreeMap<String, String>,
    #[prost(string, tag = "8")]
    type_: String,
    #[prost(message, repeated, tag = "9")]
    data: Vec<DataEntry>,
    #[prost(bool, tag = "10")]
    immutable: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
struct DataEntry {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

/// The stored object could not be decoded (only possible after a successful AEAD open, so it
/// means a bug or a format this build does not know, never tampering).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stored object cannot be decoded: {0}")]
pub struct DecodeError(String);

/// Encodes a Secret (its `string_data` is ignored: it is merged before storing).
pub fn encode(secret: &Secret) -> Zeroizing<Vec<u8>> {
    let m = &secret.metadata;
    // The intermediate message holds copies of the values; it is wiped below.
    let mut msg = StoredSecretV1 {
        namespace: m.namespace.clone(),
        name: m.name.clone(),
        uid: m.uid.clone(),
        resource_version: m.resource_version,
        creation_timestamp: m.creation_timestamp,
        labels: m.labels.clone(),
        annotations: m.annotations.clone(),
        type_: secret.type_.clone(),
        data: secret
            .data
            .iter()
            .map(|(k, v)| DataEntry {
                key: k.clone(),
                value: v.expose().to_vec(),
            })
            .collect(),
        immutable: secret.immutable,
    };
    let mut out = Zeroizing::new(Vec::with_capacity(msg.encoded_len()));
    // Encoding into a Vec with enough capacity cannot fail.
    let _ = msg.encode(&mut *out);
    wipe(&mut msg);
    out
}

/// Decodes a Secret; the value buffers move into zeroizing [`SecretValue`]s without copies.
pub fn decode(bytes: &[u8]) -> Result<Secret, DecodeError> {
    let msg = StoredSecretV1::decode(bytes).map_err(|e| DecodeError(e.to_string()))?;
    let data = msg
        .data
        .into_iter()
        .map(|e| (e.key, SecretValue::new(e.value)))
        .collect();
    Ok(Secret {
        metadata: ObjectMeta {
            name: msg.name,
            namespace: msg.namespace,
            uid: msg.uid,
            resource_version: msg.resource_version,
            creation_timestamp: msg.creation_timestamp,
            labels: msg.labels,
            annotations: msg.annotations,
        },
        type_: msg.type_,
        data,
        string_data: BTreeMap::new(),
        immutable: msg.immutable,
    })
}

fn wipe(msg: &mut StoredSecretV1) {
    use zeroize::Zeroize;
    for e in &mut msg.data {
        e.value.zeroize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut s = Secret::new("ns", "n")
            .with_data("a", b"\x00\x01binary")
            .with_data(".dot", "")
            .with_label("app", "web")
            .with_type("kubernetes.io/tls");
        s.metadata.uid = "u-1".into();
        s.metadata.resource_version = 42;
        s.metadata.creation_timestamp = Some(1_700_000_000);
        s.metadata.annotations.insert("note".into(), "x".into());
        s.immutable = true;
        let bytes = encode(&s);
        let back = decode(&bytes).expect("decode");
        assert_eq!(back, s);
    }

    #[test]
    fn garbage_is_a_decode_error() {
        assert!(decode(&[0xff, 0xff, 0xff]).is_err());
    }
}
