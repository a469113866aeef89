//! Limits shared by the harness's clients (the Secret service's and the etcd door's).

use std::time::Duration;

/// How long one RPC may take while the server is alive before it counts as a hang.
pub(crate) const RPC_TIMEOUT: Duration = Duration::from_secs(20);
