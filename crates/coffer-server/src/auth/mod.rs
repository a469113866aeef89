//! Authentication, authorization and per-connection limits.
//!
//! # Layout
//!
//! - [`args`]: the security flags (`SecurityArgs`, flattened into `ServeArgs`), the config
//!   file's `[security]` table, the resolved [`SecurityConfig`].
//! - `error`: [`AuthConfigError`] (a bad setting or file) and [`AuthError`] (a refused
//!   request); `verb`: the [`Verb`]s requests do.
//! - [`identity`]: the authenticated [`Identity`] (user, groups) and how certificates map to it.
//! - [`tokens`]: the static bearer token file, held hashed, compared in constant time.
//! - [`policy`]: the YAML authorization rules and their Kubernetes semantics.
//! - [`conn`]: per-connection info (id, peer, uid) and limits (request rate, watch streams).
//! - [`tls`]: TLS on TCP listeners; client certificates verified per request, not at the
//!   handshake, so that a bad one is answered `UNAUTHENTICATED` with a reason.
//! - [`gate`]: the one check each request passes: authenticate, limit, authorize, audit.
//!
//! [`Security`] holds the live state; its token table and policy are swapped atomically by
//! [`Security::reload`] (on SIGHUP), so a reload never drops a connection and a bad file keeps
//! the old one. It counts the requests its per-connection limits refuse ([`Rejections`]); the
//! metrics renderer reads the counts (nothing here knows about metrics).
//!
//! This module sits below `crate::server`: it names the audit log and the engine, never the
//! server.

pub mod args;
pub mod conn;
mod error;
pub mod gate;
pub mod identity;
pub mod policy;
pub mod tls;
pub mod tokens;
mod verb;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;

pub use self::args::{ConnLimits, SecurityArgs, SecurityConfig};
use self::conn::{ConnInfo, ConnState, WatchStreamGuard};
pub use self::error::{AuthConfigError, AuthError};
pub use self::identity::Identity;
use self::identity::Method;
pub use self::policy::Policy;
use self::tokens::TokenTable;
pub use self::verb::Verb;
use crate::audit::Auditor;
use crate::throttle::RequestBudget;

/// The live security state of a server.
pub struct Security {
    config: SecurityConfig,
    tokens: ArcSwap<TokenTable>,
    policy: ArcSwap<Policy>,
    unix_users: HashMap<u32, (String, Vec<String>)>,
    client_ca: Option<tls::ClientCa>,
    auditor: Auditor,
    rejections: Rejections,
    /// The server-wide request budget, charged after authentication (set by the server that
    /// serves this state; none: unlimited).
    request_budget: std::sync::RwLock<Option<Arc<dyn RequestBudget>>>,
    /// Watches open per identity (user), with authentication on.
    identity_watches: std::sync::Mutex<HashMap<String, Arc<conn::WatchCount>>>,
}

/// Requests refused by a per-connection limit since start (the metrics renderer reads them).
#[derive(Debug, Default)]
pub struct Rejections {
    rate_limited: AtomicU64,
    watch_streams: AtomicU64,
    unauthenticated: AtomicU64,
}

impl Rejections {
    /// Requests refused because they could not be authenticated.
    pub fn unauthenticated(&self) -> u64 {
        self.unauthenticated.load(Ordering::Relaxed)
    }

    /// Requests refused by their connection's request rate.
    pub fn rate_limited(&self) -> u64 {
        self.rate_limited.load(Ordering::Relaxed)
    }

    /// Watch and WatchMany calls refused because their connection had its most streams open.
    pub fn watch_streams(&self) -> u64 {
        self.watch_streams.load(Ordering::Relaxed)
    }
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security")
            .field("auth_enabled", &self.auth_enabled())
            .field("tokens", &self.tokens.load().len())
            .field("rules", &self.policy.load().len())
            .field("auditor", &self.auditor)
            .finish_non_exhaustive()
    }
}

impl Security {
    /// No authentication, no audit, no limits: every caller may do everything.
    pub fn disabled() -> Arc<Self> {
        Arc::new(Self {
            config: SecurityConfig::default(),
            tokens: ArcSwap::from_pointee(TokenTable::default()),
            policy: ArcSwap::from_pointee(Policy::default()),
            unix_users: HashMap::new(),
            client_ca: None,
            auditor: Auditor::new(None, false, None),
            rejections: Rejections::default(),
            request_budget: std::sync::RwLock::new(None),
            identity_watches: Default::default(),
        })
    }

    /// Loads the token file, the policy and the audit key named by `config`.
    pub fn load(config: SecurityConfig) -> Result<Arc<Self>, AuthConfigError> {
        let tokens = match &config.token_file {
            Some(p) => TokenTable::load(p)?,
            None => TokenTable::default(),
        };
        let policy = match &config.authz_policy {
            Some(p) => Policy::load(p)?,
            None => Policy::default(),
        };
        let client_ca = config
            .client_ca
            .as_deref()
            .map(tls::ClientCa::load)
            .transpose()?;
        let key = match &config.audit_hmac_key_file {
            Some(p) => {
                let k = zeroize::Zeroizing::new(std::fs::read(p).map_err(|e| {
                    AuthConfigError::new(format!("cannot read audit HMAC key {}: {e}", p.display()))
                })?);
                if k.len() < 16 {
                    return Err(AuthConfigError::new(format!(
                        "audit HMAC key {}: at least 16 bytes needed",
                        p.display()
                    )));
                }
                Some(k)
            }
            None => None,
        };
        if let Some(p) = &config.audit_log {
            crate::audit::check_existing(p).map_err(|e| AuthConfigError::new(e.to_string()))?;
        }
        let auditor = Auditor::new(
            config.audit_log.clone(),
            config.audit_fail_closed,
            key.as_deref().map(Vec::as_slice),
        );
        let unix_users = config
            .unix_peer_users
            .iter()
            .map(|u| (u.uid, (u.user.clone(), u.groups.clone())))
            .collect();
        Ok(Arc::new(Self {
            config,
            tokens: ArcSwap::from_pointee(tokens),
            policy: ArcSwap::from_pointee(policy),
            unix_users,
            client_ca,
            auditor,
            rejections: Rejections::default(),
            request_budget: std::sync::RwLock::new(None),
            identity_watches: Default::default(),
        }))
    }

    /// Reloads the token file and the policy (both, or neither when one is bad: the old ones
    /// stay), and reopens the audit log.
    pub fn reload(&self) -> Result<(), AuthConfigError> {
        let reopened = self.auditor.reopen();
        let tokens = match &self.config.token_file {
            Some(p) => Some(TokenTable::load(p)?),
            None => None,
        };
        let policy = match &self.config.authz_policy {
            Some(p) => Some(Policy::load(p)?),
            None => None,
        };
        if let Some(t) = tokens {
            self.tokens.store(Arc::new(t));
        }
        if let Some(p) = policy {
            self.policy.store(Arc::new(p));
        }
        reopened.map_err(|e| AuthConfigError::new(e.to_string()))
    }

    /// Reloads, logging the outcome (the SIGHUP handler).
    pub fn reload_and_log(&self) {
        match self.reload() {
            Ok(()) => tracing::info!(
                tokens = self.tokens.load().len(),
                rules = self.policy.load().len(),
                "security settings reloaded"
            ),
            Err(e) => {
                tracing::error!(error = %e, "reload failed; the previous settings stay in force")
            }
        }
    }

    /// The settings.
    pub fn config(&self) -> &SecurityConfig {
        &self.config
    }

    /// Whether callers must authenticate.
    pub fn auth_enabled(&self) -> bool {
        self.config.auth_enabled()
    }

    /// The audit log.
    pub fn auditor(&self) -> &Auditor {
        &self.auditor
    }

    /// The requests the per-connection limits refused.
    pub fn rejections(&self) -> &Rejections {
        &self.rejections
    }

    /// The current policy.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.load_full()
    }

    /// The TLS acceptor of TCP listeners, if TLS is on (see [`tls`]).
    pub fn tls_acceptor(&self) -> Result<Option<tokio_rustls::TlsAcceptor>, AuthConfigError> {
        match &self.config.tls {
            Some((cert, key)) => tls::acceptor(cert, key, self.client_ca.as_ref()).map(Some),
            None => Ok(None),
        }
    }

    /// Who is calling: a bearer token, else a verified client certificate, else a trusted unix
    /// peer uid. A token that is presented must be valid.
    pub fn authenticate(
        &self,
        ext: &tonic::Extensions,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<Identity, AuthError> {
        if !self.auth_enabled() {
            return Ok(Identity::anonymous());
        }
        let unauth = |m: &str| AuthError::Unauthenticated(m.to_owned());
        if let Some(value) = metadata.get("authorization") {
            let value = value
                .to_str()
                .map_err(|_| unauth("malformed authorization header"))?;
            let token = match value.split_once(' ') {
                Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") => t.trim(),
                _ => return Err(unauth("authorization header is not a bearer token")),
            };
            if self.config.token_file.is_none() {
                return Err(unauth("this server does not accept bearer tokens"));
            }
            let tokens = self.tokens.load();
            return match tokens.lookup(token) {
                Some(u) => Ok(Identity::authenticated(
                    u.user.clone(),
                    u.groups.clone(),
                    Method::Token,
                    Some(self.auditor.hmac(&tokens::hash_token(token))),
                )),
                None => Err(unauth("invalid bearer token")),
            };
        }
        let certs = conn_state(ext).map_or(&[][..], |c| c.peer_certs());
        if let Some(leaf) = certs.first() {
            // Possession of the key was proven at the handshake; the chain is checked here, per
            // request, as kube-apiserver's x509 authenticator does.
            match &self.client_ca {
                Some(ca) => ca.verify(certs)?,
                None => return Err(unauth("this server does not accept client certificates")),
            }
            return match identity::from_certificate(leaf) {
                Some((user, groups)) => Ok(Identity::authenticated(
                    user,
                    groups,
                    Method::ClientCert,
                    Some(self.auditor.hmac(leaf)),
                )),
                None => Err(unauth(
                    "client certificate must have exactly one subject common name (CN)",
                )),
            };
        }
        if let Some(uid) = conn_state(ext).and_then(|c| c.peer_uid())
            && let Some((user, groups)) = self.unix_users.get(&uid)
        {
            return Ok(Identity::authenticated(
                user.clone(),
                groups.clone(),
                Method::UnixPeer,
                Some(self.auditor.hmac(&uid.to_be_bytes())),
            ));
        }
        Err(unauth(
            "no credentials: present a client certificate or an authorization: Bearer token",
        ))
    }

    /// Whether `id` may do `verb` on `namespace`/`name` (always, when authentication is off).
    pub fn allows(&self, id: &Identity, verb: Verb, namespace: &str, name: Option<&str>) -> bool {
        id.method == Method::Unauthenticated || self.policy.load().allows(id, verb, namespace, name)
    }

    /// [`Self::allows`], or the error naming the user, verb, namespace and name.
    pub fn authorize(
        &self,
        id: &Identity,
        verb: Verb,
        namespace: &str,
        name: Option<&str>,
    ) -> Result<(), AuthError> {
        if self.allows(id, verb, namespace, name) {
            Ok(())
        } else {
            Err(AuthError::Forbidden {
                user: id.user.clone(),
                verb,
                namespace: namespace.to_owned(),
                name: name.map(str::to_owned),
            })
        }
    }

    /// The server-wide request budget that [`Security::charge_server_budget`] charges.
    pub fn set_request_budget(&self, budget: Arc<dyn RequestBudget>) {
        *self
            .request_budget
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(budget);
    }

    /// Takes one request from the server-wide budget (after authentication).
    pub fn charge_server_budget(&self) -> Result<(), tonic::Status> {
        let budget = self
            .request_budget
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        budget.map_or(Ok(()), |b| b.charge())
    }

    /// The watch counts a caller's watches are held against: its connection's, and with
    /// authentication on its identity's (see [`gate::WatchBudget`]).
    pub(crate) fn watch_counts(
        &self,
        identity: &Identity,
    ) -> (Option<Arc<conn::WatchCount>>, usize, usize) {
        let limits = &self.config.limits;
        let identity_count = self.auth_enabled().then(|| {
            self.identity_watches
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(identity.user.clone())
                .or_default()
                .clone()
        });
        (
            identity_count,
            limits.max_watches.unwrap_or(args::DEFAULT_MAX_WATCHES),
            limits
                .max_watches_per_identity
                .unwrap_or(args::DEFAULT_MAX_WATCHES),
        )
    }

    /// Counts a request refused because it could not be authenticated.
    pub(crate) fn count_unauthenticated(&self) {
        self.rejections
            .unauthenticated
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one request from the connection's rate budget.
    pub fn limit_rate(&self, conn: Option<&ConnState>) -> Result<(), AuthError> {
        match (self.config.limits.rate, conn) {
            (Some((rate, burst)), Some(c)) if !c.take_request(rate, burst) => {
                self.rejections.rate_limited.fetch_add(1, Ordering::Relaxed);
                Err(AuthError::RateLimited { rate, burst })
            }
            _ => Ok(()),
        }
    }

    /// Takes one of the connection's watch stream slots (held until the guard is dropped);
    /// `None` when no cap is set.
    pub fn open_watch_stream(
        &self,
        conn: Option<&Arc<ConnState>>,
    ) -> Result<Option<WatchStreamGuard>, AuthError> {
        match (self.config.limits.max_watch_streams, conn) {
            (Some(max), Some(c)) => match c.open_watch_stream(max) {
                Some(g) => Ok(Some(g)),
                None => {
                    self.rejections
                        .watch_streams
                        .fetch_add(1, Ordering::Relaxed);
                    Err(AuthError::TooManyWatchStreams { max })
                }
            },
            _ => Ok(None),
        }
    }
}

/// The connection's state, from a request's extensions.
pub fn conn_state(ext: &tonic::Extensions) -> Option<&Arc<ConnState>> {
    ext.get::<ConnInfo>().map(|c| &c.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reload_keeps_the_old_files_when_a_new_one_is_bad() {
        let dir = tempfile::tempdir().expect("dir");
        let tokens = dir.path().join("tokens.csv");
        let policy = dir.path().join("policy.yaml");
        std::fs::write(&tokens, "t1,alice\n").expect("write");
        // Token files must be owner-only.
        std::fs::set_permissions(&tokens, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod");
        std::fs::write(
            &policy,
            "rules:\n  - users: [alice]\n    verbs: [get]\n    namespaces: [a]\n",
        )
        .expect("write");
        let cfg = SecurityArgs {
            token_file: Some(tokens.clone()),
            authz_policy: Some(policy.clone()),
            ..SecurityArgs::default()
        }
        .resolve(None)
        .expect("config");
        let sec = Security::load(cfg).expect("load");
        let alice = Identity::authenticated("alice", vec![], Method::Token, None);
        assert!(sec.allows(&alice, Verb::Get, "a", Some("x")));
        assert!(!sec.allows(&alice, Verb::Get, "b", Some("x")));

        // A good reload: new rules and tokens take effect.
        std::fs::write(&tokens, "t2,alice\n").expect("write");
        std::fs::write(
            &policy,
            "rules:\n  - users: [alice]\n    verbs: [get]\n    namespaces: [b]\n",
        )
        .expect("write");
        sec.reload().expect("reload");
        assert!(sec.allows(&alice, Verb::Get, "b", Some("x")));
        assert!(!sec.allows(&alice, Verb::Get, "a", Some("x")));
        assert!(sec.tokens.load().lookup("t2").is_some());
        assert!(sec.tokens.load().lookup("t1").is_none());

        // A bad policy: neither file changes.
        std::fs::write(&tokens, "t3,alice\n").expect("write");
        std::fs::write(&policy, "rules:\n  - users: [alice]\n    verbs: [gett]\n").expect("write");
        let e = sec.reload().expect_err("bad policy");
        assert!(e.to_string().contains("policy file"), "{e}");
        assert!(sec.allows(&alice, Verb::Get, "b", Some("x")));
        assert!(sec.tokens.load().lookup("t2").is_some());
        assert!(sec.tokens.load().lookup("t3").is_none());

        // A bad token file: same.
        std::fs::write(&policy, "rules: []\n").expect("write");
        std::fs::write(&tokens, "t4\n").expect("write");
        let e = sec.reload().expect_err("bad tokens");
        assert!(e.to_string().contains("token file"), "{e}");
        assert!(sec.allows(&alice, Verb::Get, "b", Some("x")));
        // A missing file: same.
        std::fs::remove_file(&tokens).expect("rm");
        assert!(sec.reload().is_err());
        assert!(sec.tokens.load().lookup("t2").is_some());
    }
}
