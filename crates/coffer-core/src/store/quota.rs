//! Per-namespace quotas on the number of Secrets (`count/secrets`) and the bytes they take in
//! storage (`bytes/secrets`).
//!
//! A namespace's quota is its own entry in [`Quotas`] or, failing that, the default entry; a
//! namespace with neither is unlimited. Usage is kept per namespace in memory, computed at open
//! by a scan of the records (their lengths only: nothing is decrypted, so a KMS that is down at
//! start does not stop it), and changed by every write *under the store's sequencing lock*: the
//! check and the write it admits cannot interleave with another write, so concurrent creates
//! never overshoot a limit.
//!
//! `bytes/secrets` counts the sealed records: the encoded object (data, labels, annotations and
//! the rest of its metadata) plus the envelope's header and tag (66 bytes with AES-256-GCM, 78
//! with XChaCha20-Poly1305). It is what the namespace costs on disk, and it is known without
//! decrypting anything.
//!
//! What is checked: a create needs `count/secrets` room for one more Secret and `bytes/secrets`
//! room for its record; an update that makes a record larger needs room for the growth. Deletes,
//! and updates that do not grow, are always admitted, so a namespace over a lowered quota can
//! always shrink. Rejections are [`StoreError::QuotaExceeded`], worded as Kubernetes words them:
//! `exceeded quota: <name>, requested: count/secrets=1, used: count/secrets=10, limited:
//! count/secrets=10`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::Deserialize;

use super::StoreError;
pub use super::error::QuotaExceeded;

/// The resource name of the Secret count.
pub const COUNT_SECRETS: &str = "count/secrets";
/// The resource name of the Secrets' stored bytes.
pub const BYTES_SECRETS: &str = "bytes/secrets";
/// The name of the default quota in messages, unless the file names it.
pub const DEFAULT_QUOTA_NAME: &str = "default";

/// The limits of one quota; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuotaLimits {
    /// The most Secrets (`count/secrets`).
    pub count: Option<u64>,
    /// The most stored bytes (`bytes/secrets`).
    pub bytes: Option<u64>,
}

/// A named quota (the name appears in rejection messages, as a ResourceQuota's does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quota {
    /// Shown as `exceeded quota: <name>`.
    pub name: String,
    /// The limits.
    pub limits: QuotaLimits,
}

/// Every namespace's quota: a default, and per-namespace entries that replace it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Quotas {
    /// Applies to every namespace without an entry of its own; `None`: unlimited.
    pub default: Option<Quota>,
    /// Per-namespace quotas, replacing the default (a field left out is unlimited).
    pub namespaces: BTreeMap<String, Quota>,
}

/// A quota file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("quota file {path}: {message}")]
pub struct QuotaFileError {
    /// The file.
    pub path: String,
    /// What is wrong (a TOML error names the line).
    pub message: String,
}

/// One entry of the quota file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileQuota {
    /// The quota's name in messages.
    name: Option<String>,
    #[serde(rename = "count/secrets", alias = "secrets", alias = "count")]
    count: Option<u64>,
    #[serde(rename = "bytes/secrets", alias = "bytes")]
    bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct QuotaFile {
    default: Option<FileQuota>,
    #[serde(default)]
    namespaces: BTreeMap<String, FileQuota>,
}

impl Quotas {
    /// No quota anywhere (the default).
    pub fn unlimited() -> Self {
        Self::default()
    }

    /// Whether any quota is set (if none is, usage is not even tracked).
    pub fn is_enabled(&self) -> bool {
        self.default.is_some() || !self.namespaces.is_empty()
    }

    /// Sets the default quota, named [`DEFAULT_QUOTA_NAME`].
    pub fn with_default(mut self, limits: QuotaLimits) -> Self {
        self.default = Some(Quota {
            name: DEFAULT_QUOTA_NAME.to_owned(),
            limits,
        });
        self
    }

    /// Sets `namespace`'s quota, named after the namespace.
    pub fn with_namespace(mut self, namespace: &str, limits: QuotaLimits) -> Self {
        self.namespaces.insert(
            namespace.to_owned(),
            Quota {
                name: namespace.to_owned(),
                limits,
            },
        );
        self
    }

    /// The quota that applies to `namespace`, if any.
    pub fn for_namespace(&self, namespace: &str) -> Option<&Quota> {
        self.namespaces.get(namespace).or(self.default.as_ref())
    }

    /// Parses a quota file (TOML):
    ///
    /// ```toml
    /// [default]                 # every namespace without an entry of its own
    /// "count/secrets" = 1000    # alias: secrets
    /// "bytes/secrets" = 67108864  # alias: bytes
    ///
    /// [namespaces.team-a]       # replaces the default for team-a
    /// name = "team-a-quota"     # optional: the name in messages (default: the namespace)
    /// "count/secrets" = 10
    /// ```
    pub fn parse(text: &str, path: &str) -> Result<Self, QuotaFileError> {
        let err = |message: String| QuotaFileError {
            path: path.to_owned(),
            message,
        };
        let file: QuotaFile = toml::from_str(text).map_err(|e| err(e.message().to_owned()))?;
        let mut quotas = Quotas::default();
        if let Some(d) = file.default {
            quotas.default = Some(Quota {
                name: d.name.unwrap_or_else(|| DEFAULT_QUOTA_NAME.to_owned()),
                limits: QuotaLimits {
                    count: d.count,
                    bytes: d.bytes,
                },
            });
        }
        for (ns, q) in file.namespaces {
            crate::model::validation::validate_namespace(&ns)
                .map_err(|e| err(format!("namespaces.{ns}: {e}")))?;
            quotas.namespaces.insert(
                ns.clone(),
                Quota {
                    name: q.name.unwrap_or(ns),
                    limits: QuotaLimits {
                        count: q.count,
                        bytes: q.bytes,
                    },
                },
            );
        }
        Ok(quotas)
    }

    /// Reads and parses a quota file (see [`Quotas::parse`]).
    pub fn read(path: &Path) -> Result<Self, QuotaFileError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| QuotaFileError {
            path: shown.clone(),
            message: e.to_string(),
        })?;
        Self::parse(&text, &shown)
    }
}

/// What a namespace uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuotaUsage {
    /// Secrets.
    pub count: u64,
    /// Stored bytes (sealed record lengths).
    pub bytes: u64,
}

impl QuotaUsage {
    /// The usage after a write that replaced a record of `old_len` bytes (`None`: a create)
    /// with one of `new_len` bytes (`None`: a delete).
    pub(crate) fn after(self, old_len: Option<u64>, new_len: Option<u64>) -> QuotaUsage {
        let count = match (old_len, new_len) {
            (None, Some(_)) => self.count.saturating_add(1),
            (Some(_), None) => self.count.saturating_sub(1),
            _ => self.count,
        };
        QuotaUsage {
            count,
            bytes: self
                .bytes
                .saturating_sub(old_len.unwrap_or(0))
                .saturating_add(new_len.unwrap_or(0)),
        }
    }
}

/// The quotas and every namespace's usage. Changed only under the store's sequencing lock.
#[derive(Debug, Default)]
pub(crate) struct QuotaState {
    quotas: Quotas,
    usage: HashMap<String, QuotaUsage>,
}

impl QuotaState {
    pub(crate) fn new(quotas: Quotas, usage: HashMap<String, QuotaUsage>) -> Self {
        Self { quotas, usage }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.quotas.is_enabled()
    }

    pub(crate) fn usage(&self, namespace: &str) -> QuotaUsage {
        self.usage.get(namespace).copied().unwrap_or_default()
    }

    /// Checks a put of a record of `new_len` bytes replacing one of `old_len` bytes (`None`: a
    /// create); returns the namespace's usage after it.
    pub(crate) fn admit_put(
        &self,
        namespace: &str,
        old_len: Option<u64>,
        new_len: u64,
    ) -> Result<QuotaUsage, StoreError> {
        self.admit_put_over(namespace, self.usage(namespace), old_len, new_len)
    }

    /// As [`QuotaState::admit_put`], over `used` rather than the namespace's counted usage (a
    /// group commit admits each write over the writes admitted before it in the group).
    pub(crate) fn admit_put_over(
        &self,
        namespace: &str,
        used: QuotaUsage,
        old_len: Option<u64>,
        new_len: u64,
    ) -> Result<QuotaUsage, StoreError> {
        let next = used.after(old_len, Some(new_len));
        if let Some(q) = self.quotas.for_namespace(namespace) {
            if old_len.is_none()
                && let Some(limit) = q.limits.count
                && next.count > limit
            {
                return Err(exceeded(q, COUNT_SECRETS, 1, used.count, limit));
            }
            if let Some(limit) = q.limits.bytes
                && next.bytes > used.bytes
                && next.bytes > limit
            {
                let growth = next.bytes - used.bytes;
                return Err(exceeded(q, BYTES_SECRETS, growth, used.bytes, limit));
            }
        }
        Ok(next)
    }

    /// The usage after a put of a record of `new_len` bytes replacing one of `old_len` bytes
    /// (`None`: a create), unchecked (the etcd door's writes are never refused for quota: the
    /// API server admitted them).
    pub(crate) fn after_put(
        &self,
        namespace: &str,
        old_len: Option<u64>,
        new_len: u64,
    ) -> QuotaUsage {
        self.usage(namespace).after(old_len, Some(new_len))
    }

    /// The usage after a delete of a record of `old_len` bytes.
    pub(crate) fn after_delete(&self, namespace: &str, old_len: u64) -> QuotaUsage {
        self.usage(namespace).after(Some(old_len), None)
    }

    /// Counts a write once it is committed: a record of `new_len` bytes (`None`: a delete)
    /// that replaced one of `old_len` (`None`: a create).
    pub(crate) fn count(&mut self, namespace: &str, old_len: Option<u64>, new_len: Option<u64>) {
        let after = self.usage(namespace).after(old_len, new_len);
        self.set(namespace, after);
    }

    /// Records a namespace's usage after a write was applied.
    pub(crate) fn set(&mut self, namespace: &str, usage: QuotaUsage) {
        if usage == QuotaUsage::default() {
            self.usage.remove(namespace);
        } else {
            self.usage.insert(namespace.to_owned(), usage);
        }
    }
}

fn exceeded(
    q: &Quota,
    resource: &'static str,
    requested: u64,
    used: u64,
    limited: u64,
) -> StoreError {
    StoreError::QuotaExceeded(QuotaExceeded {
        quota: q.name.clone(),
        resource,
        requested,
        used,
        limited,
    })
}

/// The namespace of a backend key `s/<namespace>/<name>` (after the prefix is removed).
pub(crate) fn namespace_of(key: &str) -> &str {
    key.split_once('/').map_or(key, |(ns, _)| ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(q: Quotas) -> QuotaState {
        QuotaState::new(q, HashMap::new())
    }

    #[test]
    fn count_limit_and_message() {
        let mut s = state(Quotas::unlimited().with_default(QuotaLimits {
            count: Some(2),
            bytes: None,
        }));
        for _ in 0..2 {
            let next = s.admit_put("a", None, 10).expect("room");
            s.set("a", next);
        }
        let e = s.admit_put("a", None, 10).expect_err("full");
        assert_eq!(
            e.to_string(),
            "exceeded quota: default, requested: count/secrets=1, used: count/secrets=2, limited: count/secrets=2"
        );
        // Updates do not need count room; other namespaces have their own usage.
        assert!(s.admit_put("a", Some(10), 10).is_ok());
        assert!(s.admit_put("b", None, 10).is_ok());
        let after = s.after_delete("a", 10);
        s.set("a", after);
        assert!(s.admit_put("a", None, 10).is_ok());
    }

    #[test]
    fn bytes_limit_checks_growth_only() {
        let mut s = state(Quotas::unlimited().with_namespace(
            "a",
            QuotaLimits {
                count: None,
                bytes: Some(100),
            },
        ));
        let next = s.admit_put("a", None, 60).expect("room");
        s.set("a", next);
        let e = s.admit_put("a", None, 41).expect_err("over");
        assert_eq!(
            e.to_string(),
            "exceeded quota: a, requested: bytes/secrets=41, used: bytes/secrets=60, limited: bytes/secrets=100"
        );
        // Growing 60 -> 101 is 41 more: refused; 60 -> 100 fits.
        assert!(s.admit_put("a", Some(60), 101).is_err());
        assert!(s.admit_put("a", Some(60), 100).is_ok());
        // Over a limit (lowered since), shrinking still passes.
        s.set(
            "a",
            QuotaUsage {
                count: 1,
                bytes: 500,
            },
        );
        assert!(s.admit_put("a", Some(500), 400).is_ok());
        assert!(s.admit_put("a", Some(500), 501).is_err());
    }

    #[test]
    fn a_group_admits_over_its_held_usage_and_counts_only_what_committed() {
        let mut s = state(Quotas::unlimited().with_namespace(
            "a",
            QuotaLimits {
                count: Some(2),
                bytes: None,
            },
        ));
        // Two creates admitted in one group fill the namespace; a third is refused, though
        // nothing is counted yet.
        let held = s.admit_put_over("a", s.usage("a"), None, 10).expect("room");
        let held = s.admit_put_over("a", held, None, 10).expect("room");
        assert!(s.admit_put_over("a", held, None, 10).is_err());
        assert_eq!(s.usage("a"), QuotaUsage::default());
        // Only the first committed (the second raced a create of the same name).
        s.count("a", None, Some(10));
        assert_eq!(
            s.usage("a"),
            QuotaUsage {
                count: 1,
                bytes: 10
            }
        );
        // An update that grows, then a delete.
        s.count("a", Some(10), Some(25));
        assert_eq!(
            s.usage("a"),
            QuotaUsage {
                count: 1,
                bytes: 25
            }
        );
        s.count("a", Some(25), None);
        assert_eq!(s.usage("a"), QuotaUsage::default());
    }

    #[test]
    fn quota_file() {
        let q = Quotas::parse(
            "[default]\nsecrets = 5\n\"bytes/secrets\" = 1000\n\
             [namespaces.team-a]\nname = \"team-a-quota\"\n\"count/secrets\" = 1\n",
            "q.toml",
        )
        .expect("parse");
        assert_eq!(
            q.for_namespace("x").map(|q| q.name.as_str()),
            Some("default")
        );
        assert_eq!(
            q.for_namespace("x").map(|q| q.limits),
            Some(QuotaLimits {
                count: Some(5),
                bytes: Some(1000)
            })
        );
        let a = q.for_namespace("team-a").expect("team-a");
        assert_eq!(a.name, "team-a-quota");
        assert_eq!(a.limits.bytes, None, "an entry replaces the default");
        for bad in [
            "[default]\ncount/secrets = 1\n",
            "[default]\nsecrets = -1\n",
            "[default]\nsecret = 1\n",
            "[namespaces.Bad_NS]\nsecrets = 1\n",
        ] {
            let e = Quotas::parse(bad, "q.toml").expect_err(bad);
            assert!(e.to_string().starts_with("quota file q.toml: "), "{e}");
        }
        assert!(!Quotas::unlimited().is_enabled());
    }
}
