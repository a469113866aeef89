//! The security flags of `coffer serve` (flattened into `ServeArgs`), which are also the
//! `[security]` table of the TOML config, and their resolved form [`SecurityConfig`].
//!
//! ```toml
//! [security]
//! tls_cert = "/etc/coffer/tls.crt"
//! tls_key = "/etc/coffer/tls.key"
//! client_ca = "/etc/coffer/clients-ca.crt"
//! token_file = "/etc/coffer/tokens.csv"
//! unix_peer_users = ["0=root:admins", "1000=alice"]
//! authz_policy = "/etc/coffer/policy.yaml"
//! audit_log = "/var/log/coffer/audit.log"
//! audit_fail_closed = true
//! max_watch_streams_per_connection = 256
//! max_requests_per_second_per_connection = 100
//! request_burst_per_connection = 200
//! ```

use std::path::PathBuf;

use clap::Args;
use serde::Deserialize;

use super::AuthConfigError;
use crate::settings::{Merge, merge_fields};

/// Authentication, authorization, audit and per-connection limits: the flags, and the config
/// file's `[security]` table (the flags' names with `_`).
#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecurityArgs {
    /// Serve TLS on TCP listeners with this PEM certificate (chain).
    #[arg(long, value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "PEM")]
    pub tls_key: Option<PathBuf>,
    /// Verify client certificates against this PEM CA bundle (mutual TLS): the subject CN is
    /// the user, each O a group. Needs --tls-cert.
    #[arg(long, value_name = "PEM")]
    pub client_ca: Option<PathBuf>,
    /// Bearer token file (Kubernetes static token CSV: token,user,uid,"group1,group2").
    #[arg(long, value_name = "CSV")]
    pub token_file: Option<PathBuf>,
    /// Trust a unix socket peer's uid (SO_PEERCRED) as a user: UID=USER[:GROUP,...].
    /// Repeatable.
    #[arg(long, value_name = "UID=USER[:GROUPS]")]
    pub unix_peer_users: Vec<String>,
    /// Authorization policy (YAML rules); without one, an authenticated server denies
    /// everything.
    #[arg(long, value_name = "YAML")]
    pub authz_policy: Option<PathBuf>,
    /// Allow listening on a non-loopback address with no authentication configured.
    #[arg(long)]
    pub insecure_allow_unauthenticated: bool,
    /// Append an audit record (JSON line) per request to this file.
    #[arg(long, value_name = "PATH")]
    pub audit_log: Option<PathBuf>,
    /// Refuse requests with UNAVAILABLE when the audit log cannot be written.
    #[arg(long)]
    pub audit_fail_closed: bool,
    /// Key for the audit log's HMACs (file contents); unset: random per process.
    #[arg(long, value_name = "PATH")]
    pub audit_hmac_key_file: Option<PathBuf>,
    /// The most Watch and WatchMany streams one connection may have open [default: unlimited].
    #[arg(long, value_name = "N")]
    pub max_watch_streams_per_connection: Option<usize>,
    /// The most watches one connection may hold: each Watch stream is one, each watch a
    /// WatchMany stream creates is one [default: 100000].
    #[arg(long, value_name = "N")]
    pub max_watches_per_connection: Option<usize>,
    /// With authentication on, the most watches one identity (user) may hold over all its
    /// connections [default: 100000].
    #[arg(long, value_name = "N")]
    pub max_watches_per_identity: Option<usize>,
    /// The most requests per second one connection may make, on average [default: unlimited].
    #[arg(long, value_name = "RATE")]
    pub max_requests_per_second_per_connection: Option<f64>,
    /// The requests a connection may make at once above its rate [default: the rate, at
    /// least 1].
    #[arg(long, value_name = "N")]
    pub request_burst_per_connection: Option<u32>,
}

merge_fields!(SecurityArgs {
    tls_cert,
    tls_key,
    client_ca,
    token_file,
    unix_peer_users,
    authz_policy,
    insecure_allow_unauthenticated,
    audit_log,
    audit_fail_closed,
    audit_hmac_key_file,
    max_watch_streams_per_connection,
    max_watches_per_connection,
    max_watches_per_identity,
    max_requests_per_second_per_connection,
    request_burst_per_connection,
});

/// The default of `--max-watches-per-connection` and `--max-watches-per-identity`: as many as
/// one WatchMany stream may hold, so a client that multiplexes 1,000,000 watches over 100
/// connections stays within it.
pub const DEFAULT_MAX_WATCHES: usize = 100_000;

/// A unix peer uid trusted as a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixPeerUser {
    /// The peer's uid.
    pub uid: u32,
    /// The user it is.
    pub user: String,
    /// Its groups.
    pub groups: Vec<String>,
}

impl std::str::FromStr for UnixPeerUser {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?}: expected UID=USER[:GROUP,...]");
        let (uid, rest) = s.split_once('=').ok_or_else(bad)?;
        let uid = uid.trim().parse::<u32>().map_err(|_| bad())?;
        let (user, groups) = match rest.split_once(':') {
            Some((u, g)) => (u, g),
            None => (rest, ""),
        };
        let user = user.trim();
        if user.is_empty() {
            return Err(bad());
        }
        let groups = groups
            .split(',')
            .map(str::trim)
            .filter(|g| !g.is_empty())
            .map(str::to_owned)
            .collect();
        Ok(Self {
            uid,
            user: user.to_owned(),
            groups,
        })
    }
}

/// Per-connection limits.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ConnLimits {
    /// The most watch streams open per connection.
    pub max_watch_streams: Option<usize>,
    /// The most watches per connection; `None`: [`DEFAULT_MAX_WATCHES`].
    pub max_watches: Option<usize>,
    /// The most watches per identity, with authentication on; `None`:
    /// [`DEFAULT_MAX_WATCHES`].
    pub max_watches_per_identity: Option<usize>,
    /// Requests per second and burst, per connection.
    pub rate: Option<(f64, f64)>,
}

/// The resolved security settings.
#[derive(Debug, Clone, Default)]
pub struct SecurityConfig {
    /// TLS certificate and key (TCP listeners).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Client CA for mutual TLS.
    pub client_ca: Option<PathBuf>,
    /// Bearer token file.
    pub token_file: Option<PathBuf>,
    /// Trusted unix socket peers.
    pub unix_peer_users: Vec<UnixPeerUser>,
    /// Authorization policy file.
    pub authz_policy: Option<PathBuf>,
    /// Allow non-loopback listeners without authentication.
    pub insecure_allow_unauthenticated: bool,
    /// Audit log file.
    pub audit_log: Option<PathBuf>,
    /// Fail requests when the audit log cannot be written.
    pub audit_fail_closed: bool,
    /// Audit HMAC key file.
    pub audit_hmac_key_file: Option<PathBuf>,
    /// Per-connection limits.
    pub limits: ConnLimits,
}

impl SecurityConfig {
    /// Whether any authentication method is configured (then authorization denies by
    /// default).
    pub fn auth_enabled(&self) -> bool {
        self.client_ca.is_some() || self.token_file.is_some() || !self.unix_peer_users.is_empty()
    }
}

impl SecurityArgs {
    /// Merges the flags with the config file's `[security]` table, if given (flags win), and
    /// checks them.
    pub fn resolve(&self, file: Option<SecurityArgs>) -> Result<SecurityConfig, AuthConfigError> {
        let f = match file {
            Some(file) => self.clone().merge(file),
            None => self.clone(),
        };
        let tls = match (f.tls_cert, f.tls_key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            (Some(_), None) => return Err(AuthConfigError::new("--tls-cert needs --tls-key")),
            (None, Some(_)) => return Err(AuthConfigError::new("--tls-key needs --tls-cert")),
        };
        let client_ca = f.client_ca;
        if client_ca.is_some() && tls.is_none() {
            return Err(AuthConfigError::new(
                "--client-ca needs --tls-cert and --tls-key (client certificates are presented in the TLS handshake)",
            ));
        }
        let unix_peer_users = f
            .unix_peer_users
            .iter()
            .map(|p| p.parse::<UnixPeerUser>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| AuthConfigError::new(format!("--unix-peer-users {e}")))?;
        let max_watch_streams = f.max_watch_streams_per_connection;
        if max_watch_streams == Some(0) {
            return Err(AuthConfigError::new(
                "--max-watch-streams-per-connection: must be at least 1",
            ));
        }
        for (flag, value) in [
            ("--max-watches-per-connection", f.max_watches_per_connection),
            ("--max-watches-per-identity", f.max_watches_per_identity),
        ] {
            if value == Some(0) {
                return Err(AuthConfigError::new(format!("{flag}: must be at least 1")));
            }
        }
        let rate = f.max_requests_per_second_per_connection;
        let burst = f.request_burst_per_connection;
        let rate = match rate {
            None if burst.is_some() => {
                return Err(AuthConfigError::new(
                    "--request-burst-per-connection needs --max-requests-per-second-per-connection",
                ));
            }
            None => None,
            Some(r) if !(r.is_finite() && r > 0.0) => {
                return Err(AuthConfigError::new(
                    "--max-requests-per-second-per-connection: must be a number above 0",
                ));
            }
            Some(r) => {
                let burst = match burst {
                    Some(0) => {
                        return Err(AuthConfigError::new(
                            "--request-burst-per-connection: must be at least 1",
                        ));
                    }
                    Some(b) => f64::from(b),
                    None => r.max(1.0).ceil(),
                };
                Some((r, burst))
            }
        };
        let config = SecurityConfig {
            tls,
            client_ca,
            token_file: f.token_file,
            unix_peer_users,
            authz_policy: f.authz_policy,
            insecure_allow_unauthenticated: f.insecure_allow_unauthenticated,
            audit_log: f.audit_log,
            audit_fail_closed: f.audit_fail_closed,
            audit_hmac_key_file: f.audit_hmac_key_file,
            limits: ConnLimits {
                max_watch_streams,
                max_watches: Some(f.max_watches_per_connection.unwrap_or(DEFAULT_MAX_WATCHES)),
                max_watches_per_identity: Some(
                    f.max_watches_per_identity.unwrap_or(DEFAULT_MAX_WATCHES),
                ),
                rate,
            },
        };
        if config.authz_policy.is_some() && !config.auth_enabled() {
            return Err(AuthConfigError::new(
                "--authz-policy needs an authentication method (--client-ca, --token-file or --unix-peer-users)",
            ));
        }
        if config.audit_fail_closed && config.audit_log.is_none() {
            return Err(AuthConfigError::new(
                "--audit-fail-closed needs --audit-log",
            ));
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_peer_users() {
        let u: UnixPeerUser = "1000=alice:dev, ops".parse().expect("parse");
        assert_eq!(u.uid, 1000);
        assert_eq!(u.user, "alice");
        assert_eq!(u.groups, ["dev", "ops"]);
        let u: UnixPeerUser = "0=root".parse().expect("parse");
        assert!(u.groups.is_empty());
        for bad in ["alice", "x=alice", "1000=", "=a", "-1=a"] {
            assert!(bad.parse::<UnixPeerUser>().is_err(), "{bad}");
        }
    }

    #[test]
    fn resolve_checks_combinations() {
        let ok = SecurityArgs::default().resolve(None).expect("default");
        assert!(!ok.auth_enabled());
        for (args, want) in [
            (
                SecurityArgs {
                    tls_cert: Some("c".into()),
                    ..SecurityArgs::default()
                },
                "--tls-cert needs --tls-key",
            ),
            (
                SecurityArgs {
                    tls_key: Some("k".into()),
                    ..SecurityArgs::default()
                },
                "--tls-key needs --tls-cert",
            ),
            (
                SecurityArgs {
                    client_ca: Some("ca".into()),
                    ..SecurityArgs::default()
                },
                "--client-ca needs --tls-cert",
            ),
            (
                SecurityArgs {
                    authz_policy: Some("p".into()),
                    ..SecurityArgs::default()
                },
                "--authz-policy needs an authentication method",
            ),
            (
                SecurityArgs {
                    audit_fail_closed: true,
                    ..SecurityArgs::default()
                },
                "--audit-fail-closed needs --audit-log",
            ),
            (
                SecurityArgs {
                    unix_peer_users: vec!["nope".into()],
                    ..SecurityArgs::default()
                },
                "--unix-peer-users",
            ),
            (
                SecurityArgs {
                    max_watch_streams_per_connection: Some(0),
                    ..SecurityArgs::default()
                },
                "--max-watch-streams-per-connection",
            ),
            (
                SecurityArgs {
                    max_requests_per_second_per_connection: Some(0.0),
                    ..SecurityArgs::default()
                },
                "--max-requests-per-second-per-connection",
            ),
            (
                SecurityArgs {
                    request_burst_per_connection: Some(3),
                    ..SecurityArgs::default()
                },
                "--request-burst-per-connection needs",
            ),
        ] {
            let e = args.resolve(None).expect_err(want).to_string();
            assert!(e.contains(want), "{e}");
        }
        let c = SecurityArgs {
            token_file: Some("t".into()),
            max_requests_per_second_per_connection: Some(2.5),
            ..SecurityArgs::default()
        }
        .resolve(None)
        .expect("ok");
        assert!(c.auth_enabled());
        assert_eq!(c.limits.rate, Some((2.5, 3.0)));
    }

    #[test]
    fn file_table_with_flags_winning() {
        let file: SecurityArgs = crate::settings::from_toml(
            "token_file = \"/file/tokens\"\nunix-peer-users = [\"5=e\"]\naudit_log = \"/a\"\naudit_fail_closed = true\n",
        )
        .expect("toml");
        let args = SecurityArgs {
            token_file: Some("/flag/tokens".into()),
            ..SecurityArgs::default()
        };
        let c = args.resolve(Some(file)).expect("resolve");
        assert_eq!(c.token_file, Some(PathBuf::from("/flag/tokens")));
        assert_eq!(c.unix_peer_users.len(), 1);
        assert!(c.audit_fail_closed);
        let e = crate::settings::from_toml::<SecurityArgs>("tokn_file = \"x\"").expect_err("typo");
        assert!(e.contains("tokn_file"), "{e}");
    }
}
