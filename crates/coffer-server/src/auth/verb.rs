//! The verbs a request does on Secrets, as the policy, the audit log and error messages name them.

use std::fmt;
use std::str::FromStr;

/// What a request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verb {
    /// Get one Secret.
    Get,
    /// List Secrets.
    List,
    /// Watch Secrets.
    Watch,
    /// Create a Secret.
    Create,
    /// Update a Secret.
    Update,
    /// Delete a Secret.
    Delete,
    /// Use the etcd v3 door (every key of its keyspace; granted on namespace `*` only).
    Etcd,
}

impl Verb {
    /// Every verb.
    pub const ALL: [Verb; 7] = [
        Verb::Get,
        Verb::List,
        Verb::Watch,
        Verb::Create,
        Verb::Update,
        Verb::Delete,
        Verb::Etcd,
    ];

    /// The verb's name, as in the policy and the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Delete => "delete",
            Verb::Etcd => "etcd",
        }
    }
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Verb {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Verb::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown verb {s:?} (expected get, list, watch, create, update, delete or \"*\")"
                )
            })
    }
}
