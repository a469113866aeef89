//! The plaintext encoding of a whole Secret: what the envelope seals.
//!
//! Everything but the storage key is inside the envelope: data, labels, annotations, type, uid and
//! revision. The encoding is protobuf (hand-declared `prost` messages, independent of the public
//! API so that API changes never change the disk format). The encoded buffer is zeroizing.
//!
//! A Secret the API server wrote through the etcd door is stored as the bytes it wrote (see
//! [`super::k8s`]), in the same message with only namespace, name, revision and `door_value`
//! set: what it decodes to is worked out when it is read, and nothing the API server wrote is
//! lost.

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
    /// The value as written through the etcd door (Kubernetes protobuf or JSON, or opaque).
    #[prost(bytes = "vec", optional, tag = "11")]
    door_value: Option<Vec<u8>>,
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
        door_value: None,
    };
    let mut out = Zeroizing::new(Vec::with_capacity(msg.encoded_len()));
    // Encoding into a Vec with enough capacity cannot fail.
    let _ = msg.encode(&mut *out);
    wipe(&mut msg);
    out
}

/// A stored object: a Secret in Coffer's own form, or the value written through the door.
#[derive(Debug)]
pub enum Stored {
    /// Written through the Secret service.
    Native(Secret),
    /// Written through the etcd door.
    Door(DoorValue),
}

/// A value written through the etcd door under a Secret's key.
pub struct DoorValue {
    /// The namespace of its key.
    pub namespace: String,
    /// The name of its key.
    pub name: String,
    /// The revision it was written at.
    pub resource_version: u64,
    /// The bytes as written.
    pub value: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for DoorValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DoorValue")
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .field("resource_version", &self.resource_version)
            .field("value", &"[REDACTED]")
            .finish()
    }
}

/// Encodes a value written through the door under the Secret `namespace/name`.
pub fn encode_door(
    namespace: &str,
    name: &str,
    resource_version: u64,
    value: &[u8],
) -> Zeroizing<Vec<u8>> {
    let mut msg = StoredSecretV1 {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        resource_version,
        door_value: Some(value.to_vec()),
        ..StoredSecretV1::default()
    };
    let mut out = Zeroizing::new(Vec::with_capacity(msg.encoded_len()));
    let _ = msg.encode(&mut *out);
    wipe(&mut msg);
    out
}

/// Decodes a stored object of either form.
pub fn decode_stored(bytes: &[u8]) -> Result<Stored, DecodeError> {
    let mut msg = StoredSecretV1::decode(bytes).map_err(|e| DecodeError(e.to_string()))?;
    if let Some(value) = msg.door_value.take() {
        let door = DoorValue {
            namespace: std::mem::take(&mut msg.namespace),
            name: std::mem::take(&mut msg.name),
            resource_version: msg.resource_version,
            value: Zeroizing::new(value),
        };
        wipe(&mut msg);
        return Ok(Stored::Door(door));
    }
    Ok(Stored::Native(native(msg)))
}

/// Decodes a Secret written in Coffer's own form (a door value is an error here).
pub fn decode(bytes: &[u8]) -> Result<Secret, DecodeError> {
    match decode_stored(bytes)? {
        Stored::Native(s) => Ok(s),
        Stored::Door(_) => Err(DecodeError("a value written through the etcd door".into())),
    }
}

/// The value buffers move into zeroizing [`SecretValue`]s without copies.
fn native(msg: StoredSecretV1) -> Secret {
    let data = msg
        .data
        .into_iter()
        .map(|e| (e.key, SecretValue::new(e.value)))
        .collect();
    Secret {
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
    }
}

fn wipe(msg: &mut StoredSecretV1) {
    use zeroize::Zeroize;
    for e in &mut msg.data {
        e.value.zeroize();
    }
    if let Some(v) = &mut msg.door_value {
        v.zeroize();
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
    fn door_values_round_trip_and_are_not_native() {
        let bytes = encode_door("ns", "n", 7, b"k8s\0...");
        match decode_stored(&bytes).expect("decode") {
            Stored::Door(d) => {
                assert_eq!((d.namespace.as_str(), d.name.as_str()), ("ns", "n"));
                assert_eq!(d.resource_version, 7);
                assert_eq!(d.value.as_slice(), b"k8s\0...");
                assert!(!format!("{d:?}").contains("k8s"));
            }
            Stored::Native(_) => panic!("a door value decoded as native"),
        }
        // An empty value is still a door value.
        assert!(matches!(
            decode_stored(&encode_door("ns", "n", 1, b"")),
            Ok(Stored::Door(_))
        ));
        assert!(decode(&bytes).is_err());
    }

    #[test]
    fn garbage_is_a_decode_error() {
        assert!(decode(&[0xff, 0xff, 0xff]).is_err());
    }
}
