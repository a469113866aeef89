//! The KMS v2 plugin side: a `v2.KeyManagementService` gRPC server over any [`Kms`], served on a
//! unix socket. Coffer's plugins (`kms-plugins/coffer-kms-local`, `kms-plugins/coffer-kms-pkcs11`)
//! are a [`Kms`] implementation plus [`serve_unix`]; tests serve fakes the same way.
//!
//! Requests are checked before the [`Kms`] sees them, with clear gRPC errors:
//!
//! | request | answer |
//! | --- | --- |
//! | Encrypt with an empty plaintext or one over 1 kB | `INVALID_ARGUMENT` |
//! | Decrypt with an empty ciphertext or one over 1 kB, an empty or oversized key_id | `INVALID_ARGUMENT` |
//! | Decrypt with a key_id the plugin does not know ([`KmsError::Rejected`]) | `INVALID_ARGUMENT` |
//! | the key store failing ([`KmsError::Unavailable`]) | `UNAVAILABLE` |
//!
//! The plugin checks its own `Encrypt` answer ([`Wrapped::check`]) before sending it, so a broken
//! key store cannot make it break the contract.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tonic::{Request, Response, Status};
use zeroize::Zeroize;

use crate::net::{bind_unix, incoming};
use crate::proto as pb;
use crate::proto::key_management_service_server::{
    KeyManagementService, KeyManagementServiceServer,
};
use coffer_core::kms::{Kms, KmsError, MAX_WRAPPED_LEN, Wrapped, check_annotations};

/// The largest request a plugin decodes (a 1 kB ciphertext, a 1 kB key_id, 32 kB of
/// annotations, with room to spare).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// The KMS v2 service over a [`Kms`].
#[derive(Debug, Clone)]
pub struct PluginService {
    kms: Arc<dyn Kms>,
}

impl PluginService {
    /// The service over `kms`.
    pub fn new(kms: Arc<dyn Kms>) -> Self {
        Self { kms }
    }

    /// The tonic server for this service, with the request size limit.
    pub fn into_server(self) -> KeyManagementServiceServer<Self> {
        KeyManagementServiceServer::new(self)
            .max_decoding_message_size(MAX_REQUEST_BYTES)
            .max_encoding_message_size(MAX_REQUEST_BYTES)
    }
}

/// Maps a key store error to the status a plugin answers with.
pub fn kms_error_status(e: &KmsError) -> Status {
    match e {
        KmsError::Rejected(m) => Status::invalid_argument(m.clone()),
        KmsError::Unavailable(m) | KmsError::Unreachable(m) => Status::unavailable(m.clone()),
        KmsError::InvalidResponse(m) | KmsError::WrongKms(m) => Status::internal(m.clone()),
    }
}

fn check_len(what: &str, len: usize) -> Result<(), Status> {
    if len == 0 {
        return Err(Status::invalid_argument(format!("{what} is empty")));
    }
    if len > MAX_WRAPPED_LEN {
        return Err(Status::invalid_argument(format!(
            "{what} is {len} bytes, must be at most {MAX_WRAPPED_LEN}"
        )));
    }
    Ok(())
}

#[tonic::async_trait]
impl KeyManagementService for PluginService {
    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let s = match self.kms.status().await {
            Ok(s) => s,
            // An unhealthy key store is reported in healthz, as KMS v2 expects; the key_id is
            // unknown then, and a placeholder keeps the answer well-formed.
            Err(e) => {
                tracing::warn!(error = %e, "Status: key store unhealthy");
                return Ok(Response::new(pb::StatusResponse {
                    version: coffer_core::kms::KMS_API_VERSION.into(),
                    healthz: e.to_string(),
                    key_id: "unknown".into(),
                }));
            }
        };
        Ok(Response::new(pb::StatusResponse {
            version: s.version,
            healthz: s.healthz,
            key_id: s.key_id,
        }))
    }

    async fn encrypt(
        &self,
        request: Request<pb::EncryptRequest>,
    ) -> Result<Response<pb::EncryptResponse>, Status> {
        let mut r = request.into_inner();
        let checked = check_len("plaintext", r.plaintext.len());
        let result = match checked {
            Ok(()) => self.kms.encrypt(&r.uid, &r.plaintext).await,
            Err(s) => {
                r.plaintext.zeroize();
                return Err(s);
            }
        };
        r.plaintext.zeroize();
        let wrapped = result.map_err(|e| {
            tracing::warn!(uid = %r.uid, error = %e, "Encrypt failed");
            kms_error_status(&e)
        })?;
        wrapped.check().map_err(|e| {
            tracing::error!(uid = %r.uid, error = %e, "Encrypt produced an invalid answer");
            kms_error_status(&e)
        })?;
        Ok(Response::new(pb::EncryptResponse {
            ciphertext: wrapped.ciphertext,
            key_id: wrapped.key_id,
            annotations: wrapped.annotations.into_iter().collect(),
        }))
    }

    async fn decrypt(
        &self,
        request: Request<pb::DecryptRequest>,
    ) -> Result<Response<pb::DecryptResponse>, Status> {
        let r = request.into_inner();
        check_len("ciphertext", r.ciphertext.len())?;
        check_len("key_id", r.key_id.len())?;
        let wrapped = Wrapped {
            ciphertext: r.ciphertext,
            key_id: r.key_id,
            annotations: r.annotations.into_iter().collect(),
        };
        check_annotations(&wrapped.annotations)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let mut plaintext = self.kms.decrypt(&r.uid, &wrapped).await.map_err(|e| {
            tracing::warn!(uid = %r.uid, key_id = %wrapped.key_id, error = %e, "Decrypt refused");
            kms_error_status(&e)
        })?;
        // The response needs an owned Vec; the zeroizing box is left empty and the copy in
        // flight belongs to the transport.
        let plaintext = std::mem::take(&mut *plaintext);
        Ok(Response::new(pb::DecryptResponse { plaintext }))
    }
}

/// Errors of [`serve_unix`].
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The socket could not be bound.
    #[error("cannot listen on unix://{path}: {source}")]
    Listen {
        /// The socket path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves `kms` as a KMS v2 plugin on the unix socket `path` until `shutdown` resolves, then
/// removes the socket file. A stale socket file (nobody answers on it) is replaced; a live one,
/// or any other kind of file, is refused. The socket is made owner-only (0600).
pub async fn serve_unix(
    kms: Arc<dyn Kms>,
    path: &Path,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), PluginError> {
    let listener = bind_unix(path)
        .await
        .map_err(|source| PluginError::Listen {
            path: path.to_owned(),
            source,
        })?;
    tracing::info!(socket = %path.display(), kms = %kms.describe(), "KMS v2 plugin listening");
    let result = tonic::transport::Server::builder()
        .add_service(PluginService::new(kms).into_server())
        // The accept loop every Coffer server shares (see `crate::net`).
        .serve_with_incoming_shutdown(incoming(listener), shutdown)
        .await;
    if let Err(e) = std::fs::remove_file(path)
        && e.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(socket = %path.display(), error = %e, "cannot remove the socket file");
    }
    result.map_err(PluginError::from)
}
