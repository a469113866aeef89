//! `--storage etcd://HOST:PORT[,HOST:PORT...][/PREFIX]` and the TLS files that go with it.

use std::path::PathBuf;

/// The prefix used when the URL names none.
pub const DEFAULT_PREFIX: &str = "/coffer";

/// A parsed `etcd://` storage URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageUrl {
    /// `HOST:PORT` of each member, in the order given (the first is tried first).
    pub endpoints: Vec<String>,
    /// Every key Coffer writes starts with this (no trailing `/`).
    pub prefix: String,
}

/// Why a storage URL was refused; the message names the flag and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--storage {url:?}: {rule}")]
pub struct UrlError {
    /// The URL as given.
    pub url: String,
    /// What it breaks.
    pub rule: String,
}

impl std::str::FromStr for StorageUrl {
    type Err = UrlError;

    fn from_str(url: &str) -> Result<Self, UrlError> {
        let bad = |rule: &str| UrlError {
            url: url.to_owned(),
            rule: rule.to_owned(),
        };
        let rest = url.strip_prefix("etcd://").ok_or_else(|| {
            bad("must start with etcd:// (etcd://HOST:PORT[,HOST:PORT...][/PREFIX])")
        })?;
        let (hosts, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, DEFAULT_PREFIX),
        };
        if prefix.is_empty() {
            return Err(bad(
                "the prefix must not be empty (leave it out for /coffer)",
            ));
        }
        if prefix.contains("//") {
            return Err(bad("the prefix must not contain an empty segment (//)"));
        }
        let mut endpoints = Vec::new();
        for host in hosts.split(',') {
            let Some((h, port)) = host.rsplit_once(':') else {
                return Err(bad(&format!("endpoint {host:?} must be HOST:PORT")));
            };
            if h.is_empty() || h.contains(['@', '?', '#', ' ']) {
                return Err(bad(&format!("endpoint {host:?} has no valid host")));
            }
            if port.parse::<u16>().ok().filter(|p| *p != 0).is_none() {
                return Err(bad(&format!("endpoint {host:?}: the port must be 1-65535")));
            }
            if endpoints.iter().any(|e| e == host) {
                return Err(bad(&format!("endpoint {host:?} is named twice")));
            }
            endpoints.push(host.to_owned());
        }
        Ok(Self {
            endpoints,
            prefix: prefix.to_owned(),
        })
    }
}

impl std::fmt::Display for StorageUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "etcd://{}{}", self.endpoints.join(","), self.prefix)
    }
}

/// TLS towards etcd: the CA that signed the members' certificates and, for client-certificate
/// authentication, this replica's certificate and key (PEM files).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StorageTls {
    /// `--storage-ca-file`.
    pub ca_file: Option<PathBuf>,
    /// `--storage-cert-file`.
    pub cert_file: Option<PathBuf>,
    /// `--storage-key-file`.
    pub key_file: Option<PathBuf>,
}

impl StorageTls {
    /// Whether any TLS file is set (then every endpoint is dialled with TLS).
    pub fn enabled(&self) -> bool {
        self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<StorageUrl, String> {
        s.parse::<StorageUrl>().map_err(|e| e.to_string())
    }

    #[test]
    fn endpoints_and_prefix() {
        let u = parse("etcd://127.0.0.1:2379").expect("one");
        assert_eq!(u.endpoints, ["127.0.0.1:2379"]);
        assert_eq!(u.prefix, "/coffer");
        let u = parse("etcd://a:1,b:2,c:3/team/x/").expect("three");
        assert_eq!(u.endpoints, ["a:1", "b:2", "c:3"]);
        assert_eq!(u.prefix, "/team/x");
        assert_eq!(u.to_string(), "etcd://a:1,b:2,c:3/team/x");
        assert_eq!(
            parse("etcd://[::1]:2379").expect("v6").endpoints,
            ["[::1]:2379"]
        );
    }

    #[test]
    fn refusals_name_the_flag_and_the_rule() {
        for (url, rule) in [
            ("http://a:1", "must start with etcd://"),
            ("etcd://a", "must be HOST:PORT"),
            ("etcd://a:0", "the port must be 1-65535"),
            ("etcd://a:x", "the port must be 1-65535"),
            ("etcd://:1", "no valid host"),
            ("etcd://a:1,", "must be HOST:PORT"),
            ("etcd://a:1,a:1", "named twice"),
            ("etcd://a:1/", "the prefix must not be empty"),
            ("etcd://a:1//x", "empty segment"),
        ] {
            let e = parse(url).expect_err(url);
            assert!(e.starts_with("--storage "), "{e}");
            assert!(e.contains(rule), "{url}: {e}");
        }
    }
}
