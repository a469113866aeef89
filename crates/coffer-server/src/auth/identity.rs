//! Who is calling: the [`Identity`] a request was authenticated as, and how.

use std::fmt;

/// The group every authenticated identity is in (as in Kubernetes), so a policy can grant
/// something to "anyone who authenticated".
pub const AUTHENTICATED_GROUP: &str = "system:authenticated";

/// The user of every call when authentication is off.
pub const ANONYMOUS_USER: &str = "system:anonymous";

/// How an identity was established.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// A client certificate verified against `--client-ca`.
    ClientCert,
    /// A bearer token from the token file.
    Token,
    /// The uid of the peer of a unix socket (SO_PEERCRED), mapped with `--unix-peer-users`.
    UnixPeer,
    /// Authentication is off: every caller is the anonymous user and may do everything.
    Unauthenticated,
}

impl Method {
    /// The name used in the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::ClientCert => "x509",
            Method::Token => "token",
            Method::UnixPeer => "unix-peer",
            Method::Unauthenticated => "none",
        }
    }
}

/// An authenticated caller. Carries no credential: only names, which may be logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user name (a certificate's CN, a token's user, a mapped unix user).
    pub user: String,
    /// The groups (a certificate's O values, a token's groups), plus [`AUTHENTICATED_GROUP`]
    /// for an authenticated caller.
    pub groups: Vec<String>,
    /// How the caller was authenticated.
    pub method: Method,
    /// An HMAC of the credential (the token, the certificate, the uid), to correlate the calls
    /// of one credential in the audit log without revealing it.
    pub credential_id: Option<String>,
}

impl Identity {
    /// An authenticated identity: `groups` plus [`AUTHENTICATED_GROUP`].
    pub fn authenticated(
        user: impl Into<String>,
        mut groups: Vec<String>,
        method: Method,
        credential_id: Option<String>,
    ) -> Self {
        if !groups.iter().any(|g| g == AUTHENTICATED_GROUP) {
            groups.push(AUTHENTICATED_GROUP.to_owned());
        }
        Self {
            user: user.into(),
            groups,
            method,
            credential_id,
        }
    }

    /// The caller when authentication is off.
    pub fn anonymous() -> Self {
        Self {
            user: ANONYMOUS_USER.to_owned(),
            groups: Vec::new(),
            method: Method::Unauthenticated,
            credential_id: None,
        }
    }

    /// Whether the identity has `group`.
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("user", &self.user)
            .field("groups", &self.groups)
            .field("method", &self.method)
            .finish_non_exhaustive()
    }
}

/// The user (CN) and groups (each O) of a DER client certificate, as Kubernetes reads them.
/// `None` if the certificate cannot be parsed, has no CN, or has more than one: which of two
/// CNs names the user is ambiguous (a CA that signs a subject with a second CN could otherwise
/// be made to vouch for another user), so such a certificate names nobody.
pub fn from_certificate(der: &[u8]) -> Option<(String, Vec<String>)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    if subject.iter_common_name().count() != 1 {
        return None;
    }
    let user = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned)
        .filter(|u| !u.is_empty())?;
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok())
        .map(str::to_owned)
        .collect();
    Some((user, groups))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authenticated_adds_the_group_once() {
        let id = Identity::authenticated("a", vec!["dev".into()], Method::Token, None);
        assert_eq!(id.groups, ["dev", AUTHENTICATED_GROUP]);
        let again = Identity::authenticated("a", id.groups.clone(), Method::Token, None);
        assert_eq!(again.groups.len(), 2);
        assert!(!Identity::anonymous().in_group(AUTHENTICATED_GROUP));
    }

    #[test]
    fn debug_shows_no_credential() {
        let id = Identity::authenticated("a", vec![], Method::Token, Some("hmac".into()));
        assert!(!format!("{id:?}").contains("hmac"));
    }
}
