//! The Secret object as Coffer stores it, and the Kubernetes rules it must obey.
//!
//! `Secret` is the engine's own type, independent of the gRPC messages and of the on-disk encoding:
//! the service converts to and from protobuf at its edge, and [`codec`] turns it into the plaintext
//! that the envelope seals.

pub mod codec;
pub mod k8s;
pub mod manifest;
pub mod selector;
pub mod timestamp;
pub mod validation;

use std::collections::BTreeMap;
use std::fmt;

use zeroize::Zeroizing;

/// The type a Secret gets when none is given.
pub const DEFAULT_SECRET_TYPE: &str = "Opaque";

/// One data value of a Secret: plaintext bytes, wiped from memory on drop.
///
/// There is deliberately no `Clone`: copies of plaintext must be visible in the code
/// ([`SecretValue::duplicate`]), and `Debug` never prints the bytes.
#[derive(PartialEq, Eq)]
pub struct SecretValue(Zeroizing<Vec<u8>>);

impl SecretValue {
    /// Takes ownership of `bytes` without copying them.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// The plaintext bytes.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The number of plaintext bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// An explicit copy of the plaintext (a second zeroizing buffer).
    pub fn duplicate(&self) -> Self {
        Self::new(self.0.to_vec())
    }
}

impl From<&str> for SecretValue {
    fn from(s: &str) -> Self {
        Self::new(s.as_bytes().to_vec())
    }
}

impl From<&[u8]> for SecretValue {
    fn from(s: &[u8]) -> Self {
        Self::new(s.to_vec())
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

/// Object metadata, as Kubernetes' `ObjectMeta` (the subset Secrets use).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectMeta {
    /// DNS subdomain, at most 253 characters.
    pub name: String,
    /// DNS label, at most 63 characters.
    pub namespace: String,
    /// Set by the store on create; never changes afterwards.
    pub uid: String,
    /// The store revision of the object's last write; 0 means "unset" in requests.
    pub resource_version: u64,
    /// Seconds since the Unix epoch, set by the store on create.
    pub creation_timestamp: Option<i64>,
    /// Labels, used by selectors.
    pub labels: BTreeMap<String, String>,
    /// Annotations: free-form metadata, at most 256 KiB in all.
    pub annotations: BTreeMap<String, String>,
}

/// A Kubernetes-style Secret.
///
/// `Debug` prints metadata and the data keys; values print as `[REDACTED]`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Secret {
    /// Name, namespace, labels and the store-managed fields.
    pub metadata: ObjectMeta,
    /// The Secret type; empty means [`DEFAULT_SECRET_TYPE`].
    pub type_: String,
    /// Key -> plaintext bytes.
    pub data: BTreeMap<String, SecretValue>,
    /// Write-only convenience input, merged into `data` (and emptied) before validation.
    pub string_data: BTreeMap<String, SecretValue>,
    /// Once stored as true, the data can no longer change.
    pub immutable: bool,
}

impl Secret {
    /// A Secret with the given namespace and name and nothing else.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            metadata: ObjectMeta {
                name: name.into(),
                namespace: namespace.into(),
                ..ObjectMeta::default()
            },
            ..Self::default()
        }
    }

    /// Builder helper: adds one data entry.
    pub fn with_data(mut self, key: impl Into<String>, value: impl AsRef<[u8]>) -> Self {
        self.data
            .insert(key.into(), SecretValue::from(value.as_ref()));
        self
    }

    /// Builder helper: sets the type.
    pub fn with_type(mut self, type_: impl Into<String>) -> Self {
        self.type_ = type_.into();
        self
    }

    /// Builder helper: adds one label.
    pub fn with_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.labels.insert(key.into(), value.into());
        self
    }

    /// Merges `string_data` into `data` (string_data wins on a clash) and empties it, as the
    /// Kubernetes API server does before validation.
    pub fn merge_string_data(&mut self) {
        let string_data = std::mem::take(&mut self.string_data);
        for (k, v) in string_data {
            self.data.insert(k, v);
        }
    }

    /// Fills in defaults: the type `Opaque` when none is given.
    pub fn apply_defaults(&mut self) {
        if self.type_.is_empty() {
            self.type_ = DEFAULT_SECRET_TYPE.to_owned();
        }
    }

    /// The storage key `namespace/name`, which the envelope's AAD binds.
    pub fn storage_key(&self) -> String {
        storage_key(&self.metadata.namespace, &self.metadata.name)
    }

    /// An explicit deep copy, plaintext included.
    pub fn duplicate(&self) -> Self {
        Self {
            metadata: self.metadata.clone(),
            type_: self.type_.clone(),
            data: dup_map(&self.data),
            string_data: dup_map(&self.string_data),
            immutable: self.immutable,
        }
    }

    /// A rough size in bytes of the whole object (data, metadata, and a little per entry for
    /// framing), for bounding pages and buffers; not the exact size of any encoding.
    pub fn approx_size(&self) -> usize {
        const PER_ENTRY: usize = 8;
        let m = &self.metadata;
        let maps = |it: &mut dyn Iterator<Item = usize>| -> usize {
            it.fold(0usize, |a, n| a.saturating_add(n).saturating_add(PER_ENTRY))
        };
        let data = maps(&mut self.data.iter().map(|(k, v)| k.len() + v.len()));
        let string_data = maps(&mut self.string_data.iter().map(|(k, v)| k.len() + v.len()));
        let labels = maps(&mut m.labels.iter().map(|(k, v)| k.len() + v.len()));
        let annotations = maps(&mut m.annotations.iter().map(|(k, v)| k.len() + v.len()));
        (m.name.len() + m.namespace.len() + m.uid.len() + self.type_.len() + 64)
            .saturating_add(data)
            .saturating_add(string_data)
            .saturating_add(labels)
            .saturating_add(annotations)
    }

    /// The sum of the data values' lengths (the quantity the 1 MiB limit bounds).
    pub fn data_size(&self) -> usize {
        self.data.values().map(SecretValue::len).sum()
    }
}

fn dup_map(m: &BTreeMap<String, SecretValue>) -> BTreeMap<String, SecretValue> {
    m.iter().map(|(k, v)| (k.clone(), v.duplicate())).collect()
}

/// The storage key of a Secret: `namespace/name`. Neither part can contain `/` once validated.
pub fn storage_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_values() {
        let s = Secret::new("ns", "n").with_data("password", "hunter2-canary");
        let dbg = format!("{s:?}");
        assert!(!dbg.contains("hunter2-canary"), "{dbg}");
        assert!(dbg.contains("[REDACTED]"));
        assert!(dbg.contains("password"));
    }

    #[test]
    fn string_data_wins_on_clash() {
        let mut s = Secret::new("ns", "n")
            .with_data("a", "from-data")
            .with_data("b", "kept");
        s.string_data
            .insert("a".into(), SecretValue::from("from-string-data"));
        s.merge_string_data();
        assert_eq!(s.data["a"].expose(), b"from-string-data");
        assert_eq!(s.data["b"].expose(), b"kept");
        assert!(s.string_data.is_empty());
    }
}
