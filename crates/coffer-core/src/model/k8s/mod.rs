//! Kubernetes' own storage encodings of a Secret: what kube-apiserver writes under
//! `/registry/secrets/<namespace>/<name>` through the etcd door.
//!
//! A value is one of: Kubernetes protobuf (`k8s\0` + `runtime.Unknown`, the default), JSON
//! (`--storage-media-type=application/json`), a value the API server encrypted itself
//! (`k8s:enc:...`), or something else. The first two decode to Coffer's [`Secret`], so the
//! Secret service, the CLI and the mount agent show what the API server wrote; the others are
//! kept as they are and shown through the door only. Coffer keeps the bytes it was given and
//! serves them back unchanged; an update through the Secret service [`edit`]s them, rewriting
//! only the fields Coffer's model carries.

mod decoded;
mod json;
mod proto;
mod wire;

use zeroize::Zeroizing;

use super::Secret;

pub use decoded::{Decoded, NotASecret};
pub use proto::MAGIC;

/// The prefix of a value the API server encrypted itself (its own KMS or aescbc provider).
pub const APISERVER_ENCRYPTED_PREFIX: &[u8] = b"k8s:enc:";

/// Whether the API server encrypted `value` itself.
pub fn is_apiserver_encrypted(value: &[u8]) -> bool {
    value.starts_with(APISERVER_ENCRYPTED_PREFIX)
}

/// Decodes the value stored under the Secret `namespace/name`.
pub fn decode(namespace: &str, name: &str, value: &[u8]) -> Decoded {
    if is_apiserver_encrypted(value) {
        return Decoded::Opaque(NotASecret("encrypted by the API server (k8s:enc:)"));
    }
    if value.starts_with(MAGIC) {
        return proto::decode(namespace, name, value);
    }
    if value.trim_ascii_start().starts_with(b"{") {
        return match json::parse(namespace, name, value) {
            Ok(s) => Decoded::Secret(Box::new(s)),
            Err(e) => Decoded::Opaque(e),
        };
    }
    Decoded::Opaque(NotASecret("neither Kubernetes protobuf nor JSON"))
}

/// Encodes a Secret as kube-apiserver stores it by default (protobuf, resourceVersion empty).
pub fn encode(secret: &Secret) -> Zeroizing<Vec<u8>> {
    proto::encode(secret)
}

/// Rewrites a stored value (protobuf or JSON, as it was written) to carry `new`'s labels,
/// annotations, data, type and immutability; every other field is kept exactly.
pub fn edit(original: &[u8], new: &Secret) -> Result<Zeroizing<Vec<u8>>, NotASecret> {
    if original.starts_with(MAGIC) {
        proto::edit(original, new)
    } else {
        json::edit(original, new)
    }
}

#[cfg(test)]
mod tests;
