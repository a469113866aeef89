//! Why a security setting is refused, and why a request is.

use super::verb::Verb;

/// A security setting or file is wrong (at start, or on reload); the message names it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct AuthConfigError(String);

impl AuthConfigError {
    /// An error with this message.
    pub fn new(msg: impl Into<String>) -> Self {
        Self(msg.into())
    }
}

/// Why a request was refused before it ran. Mapped to gRPC codes in
/// `crate::server::status::auth_error`. Messages name the user, never a credential.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    /// No valid credentials.
    #[error("{0}")]
    Unauthenticated(String),
    /// The policy does not allow it.
    #[error("{}", forbidden_message(.user, *.verb, .namespace, .name.as_deref()))]
    Forbidden {
        /// The user.
        user: String,
        /// The verb.
        verb: Verb,
        /// The namespace (empty: all).
        namespace: String,
        /// The name, if the request has one.
        name: Option<String>,
    },
    /// The connection's request rate is exceeded.
    #[error("too many requests on this connection: at most {rate} per second (burst {burst})")]
    RateLimited {
        /// Requests per second.
        rate: f64,
        /// Burst.
        burst: f64,
    },
    /// The connection has its most watch streams open.
    #[error(
        "too many watch streams on this connection: at most {max} (use WatchMany to multiplex watches)"
    )]
    TooManyWatchStreams {
        /// The limit.
        max: usize,
    },
    /// The caller holds its most watches: on this connection, or (with authentication on) as
    /// this identity over all its connections.
    #[error(
        "too many watches: {scope} may hold at most {max} ({flag}); cancel some{hint}",
        scope = if *.per_identity { "one user" } else { "a connection" },
        flag = if *.per_identity { "--max-watches-per-identity" } else { "--max-watches-per-connection" },
        hint = if *.per_identity { "" } else { ", or use another connection" }
    )]
    TooManyWatches {
        /// The limit.
        max: usize,
        /// Whether the identity's cap (not the connection's) was reached.
        per_identity: bool,
    },
    /// The audit log cannot be written and the server fails closed.
    #[error("audit log unavailable, request refused (--audit-fail-closed): {0}")]
    AuditUnavailable(String),
}

/// Kubernetes' wording: `secrets "db" is forbidden: User "bob" cannot get resource "secrets"
/// in the namespace "prod"`.
fn forbidden_message(user: &str, verb: Verb, namespace: &str, name: Option<&str>) -> String {
    let what = match name {
        Some(n) => format!("secrets {n:?}"),
        None => "secrets".to_owned(),
    };
    let scope = if namespace.is_empty() {
        "at the cluster scope".to_owned()
    } else {
        format!("in the namespace {namespace:?}")
    };
    format!("{what} is forbidden: User {user:?} cannot {verb} resource \"secrets\" {scope}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forbidden_messages() {
        let e = AuthError::Forbidden {
            user: "bob".into(),
            verb: Verb::Get,
            namespace: "prod".into(),
            name: Some("db".into()),
        };
        assert_eq!(
            e.to_string(),
            "secrets \"db\" is forbidden: User \"bob\" cannot get resource \"secrets\" in the namespace \"prod\""
        );
        let e = AuthError::Forbidden {
            user: "bob".into(),
            verb: Verb::List,
            namespace: String::new(),
            name: None,
        };
        assert_eq!(
            e.to_string(),
            "secrets is forbidden: User \"bob\" cannot list resource \"secrets\" at the cluster scope"
        );
    }
}
