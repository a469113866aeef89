//! Which KMS a data directory uses: the local key file (the embedded default) or a KMS v2 plugin
//! on a unix socket (`--kms unix:///path/kms.sock`), with its call deadline and outage policy.
//! `coffer serve`, `coffer kms status` and `coffer migrate` all resolve their flags to a
//! [`KmsConfig`] and open the KMS through [`KmsConfig::open`].

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use crate::GrpcKms;
use coffer_core::kms::{Kms, KmsError, LocalKek, OutagePolicy, RecordedKms};

/// The per-call deadline of KMS calls when none is configured.
pub const DEFAULT_KMS_TIMEOUT: Duration = Duration::from_secs(3);

/// The name of the embedded default KEK file inside the data directory.
pub use coffer_core::kms::LOCAL_KEK_FILE;

/// Where a KMS v2 plugin listens: a unix socket, written `unix:///path/to/kms.sock` (or
/// `unix:relative/path.sock`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KmsEndpoint {
    path: PathBuf,
}

impl KmsEndpoint {
    /// The endpoint of the socket at `path`.
    pub fn unix(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl FromStr for KmsEndpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let path = s
            .strip_prefix("unix://")
            .or_else(|| s.strip_prefix("unix:"))
            .ok_or_else(|| {
                format!(
                    "{s:?} is not a KMS endpoint: expected unix:///path/to/kms.sock (KMS v2 plugins listen on a unix socket)"
                )
            })?;
        if path.is_empty() {
            return Err(format!("{s:?}: the socket path is empty"));
        }
        Ok(Self::unix(path))
    }
}

impl fmt::Display for KmsEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unix://{}", self.path.display())
    }
}

/// Which KMS to use and how to treat it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KmsConfig {
    /// The KMS v2 plugin's socket; `None` uses the local key file `<data-dir>/kek.key`.
    pub endpoint: Option<KmsEndpoint>,
    /// The deadline of each KMS call. Default 3 s.
    pub timeout: Duration,
    /// Status polling and how long writes survive an outage.
    pub outage: OutagePolicy,
    /// The uid the plugin must run as (checked on each connection); `None`: not checked.
    pub peer_uid: Option<u32>,
}

impl Default for KmsConfig {
    fn default() -> Self {
        Self {
            endpoint: None,
            timeout: DEFAULT_KMS_TIMEOUT,
            outage: OutagePolicy::default(),
            peer_uid: None,
        }
    }
}

impl KmsConfig {
    /// Opens the configured KMS for the data directory `data_dir`. A plugin is dialed lazily:
    /// this succeeds while the plugin is down, and the first call reports it.
    ///
    /// The data directory records which KMS it uses ([`RecordedKms`]): a directory made with a
    /// plugin is refused without `--kms` (no local key file is created for it; see
    /// [`LocalKek::open_for_data_dir`]).
    pub fn open(&self, data_dir: &Path) -> Result<Arc<dyn Kms>, KmsError> {
        match &self.endpoint {
            Some(endpoint) => {
                let kms = GrpcKms::with_peer_uid(endpoint.path(), self.timeout, self.peer_uid)?;
                RecordedKms::Plugin(endpoint.to_string())
                    .write(data_dir)
                    .map_err(|e| {
                        KmsError::Unavailable(format!(
                            "cannot record the KMS in {}: {e}",
                            data_dir.join(coffer_core::kms::KMS_RECORD_FILE).display()
                        ))
                    })?;
                Ok(Arc::new(kms))
            }
            None => LocalKek::open_for_data_dir(data_dir).map(|k| Arc::new(k) as Arc<dyn Kms>),
        }
    }

    /// A one-line description of the KMS, for messages (never a secret).
    pub fn describe(&self, data_dir: &Path) -> String {
        match &self.endpoint {
            Some(e) => format!("KMS v2 plugin at {e}"),
            None => format!("local key file {}", data_dir.join(LOCAL_KEK_FILE).display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let e: KmsEndpoint = "unix:///run/kms.sock".parse().expect("parse");
        assert_eq!(e.path(), Path::new("/run/kms.sock"));
        assert_eq!(e.to_string(), "unix:///run/kms.sock");
        let rel: KmsEndpoint = "unix:kms.sock".parse().expect("parse");
        assert_eq!(rel.path(), Path::new("kms.sock"));
        for bad in ["/run/kms.sock", "unix://", "tcp://127.0.0.1:1", ""] {
            let err = bad.parse::<KmsEndpoint>().expect_err(bad);
            assert!(err.contains("unix"), "{err}");
        }
    }
}
