//! The KMS v2 client: Coffer's side of `proto/kms/v2/api.proto`, over a unix socket.
//!
//! Every call carries a fresh UUID in `uid` and a deadline (the `grpc-timeout` header, and a
//! local timer that also covers dialing). The channel dials lazily and redials after the plugin
//! restarts, so an outage needs no restart of Coffer. Answers are checked before they are used:
//! an `Encrypt` response that breaks the KMS v2 rules ([`Wrapped::check`]) is refused with
//! [`KmsError::InvalidResponse`], and responses larger than [`MAX_RESPONSE_BYTES`] are not even
//! decoded.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Request, Response};
use zeroize::{Zeroize, Zeroizing};

use crate::proto as pb;
use crate::proto::key_management_service_client::KeyManagementServiceClient;
use coffer_core::kms::{Kms, KmsError, KmsStatus, Wrapped};

/// The largest response accepted from a plugin: a 1 kB ciphertext, a 1 kB key_id and 32 kB of
/// annotations fit with room to spare.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// A KMS v2 plugin reached over gRPC on a unix socket.
#[derive(Debug, Clone)]
pub struct GrpcKms {
    /// The plugin's socket (for messages).
    socket: PathBuf,
    /// The deadline of each call.
    timeout: Duration,
    /// A lazily connected channel; tonic redials it after a failure.
    client: KeyManagementServiceClient<Channel>,
}

impl GrpcKms {
    /// A client for the plugin listening on `socket`, with `timeout` per call. Nothing is dialed
    /// until the first call.
    pub fn new(socket: impl Into<PathBuf>, timeout: Duration) -> Result<Self, KmsError> {
        Self::with_peer_uid(socket, timeout, None)
    }

    /// As [`GrpcKms::new`], and when `peer_uid` is given, every connection checks that the
    /// process serving the socket runs as that uid (`SO_PEERCRED`; `--kms-peer-uid`): whoever
    /// could replace the socket file must not be able to pose as the plugin and be handed
    /// seeds to wrap.
    pub fn with_peer_uid(
        socket: impl Into<PathBuf>,
        timeout: Duration,
        peer_uid: Option<u32>,
    ) -> Result<Self, KmsError> {
        let socket = socket.into();
        if timeout.is_zero() {
            return Err(KmsError::Unavailable(
                "the KMS call timeout must be more than 0".into(),
            ));
        }
        let path = socket.clone();
        // The URI is required by the API but unused: the connector dials the socket.
        let channel = Endpoint::from_static("http://kms.invalid")
            .connect_timeout(timeout)
            .timeout(timeout)
            .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(&path).await?;
                    if let Some(want) = peer_uid {
                        let got = stream.peer_cred()?.uid();
                        if got != want {
                            tracing::error!(
                                socket = %path.display(),
                                peer_uid = got,
                                expected = want,
                                "KMS plugin socket served by the wrong user; not using it (--kms-peer-uid)"
                            );
                            return Err(std::io::Error::new(
                                std::io::ErrorKind::PermissionDenied,
                                format!(
                                    "the KMS plugin socket {} is served by uid {got}, not {want} (--kms-peer-uid)",
                                    path.display()
                                ),
                            ));
                        }
                    }
                    Ok::<_, std::io::Error>(TokioIo::new(stream))
                }
            }));
        let client = KeyManagementServiceClient::new(channel)
            .max_decoding_message_size(MAX_RESPONSE_BYTES)
            .max_encoding_message_size(MAX_RESPONSE_BYTES);
        Ok(Self {
            socket,
            timeout,
            client,
        })
    }

    /// The plugin's socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The per-call deadline.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Runs one call with the deadline, mapping failures to [`KmsError`].
    async fn call<M, T, F, Fut>(&self, op: &'static str, message: M, f: F) -> Result<T, KmsError>
    where
        F: FnOnce(KeyManagementServiceClient<Channel>, Request<M>) -> Fut,
        Fut: Future<Output = Result<Response<T>, tonic::Status>>,
    {
        let mut request = Request::new(message);
        request.set_timeout(self.timeout);
        match tokio::time::timeout(self.timeout, f(self.client.clone(), request)).await {
            Err(_) => Err(KmsError::Unavailable(format!(
                "{op} on unix://{}: no answer within {:?}",
                self.socket.display(),
                self.timeout
            ))),
            Ok(Err(status)) => Err(map_status(op, &self.socket, &status)),
            Ok(Ok(response)) => Ok(response.into_inner()),
        }
    }
}

/// Maps a plugin's gRPC status to a [`KmsError`]: a refusal of the request itself is
/// [`KmsError::Rejected`]; anything that may pass (the plugin down, slow or failing) is
/// [`KmsError::Unavailable`].
fn map_status(op: &str, socket: &Path, status: &tonic::Status) -> KmsError {
    let mut message = status.message().to_owned();
    if message.len() > 512 {
        let cut = (0..=512)
            .rev()
            .find(|i| message.is_char_boundary(*i))
            .unwrap_or(0);
        message.truncate(cut);
        message.push_str("...");
    }
    let text = format!(
        "{op} on unix://{}: {}: {message}",
        socket.display(),
        crate::code::name(status.code())
    );
    match status.code() {
        Code::InvalidArgument
        | Code::FailedPrecondition
        | Code::NotFound
        | Code::OutOfRange
        | Code::PermissionDenied
        | Code::Unauthenticated
        | Code::AlreadyExists
        | Code::Unimplemented => KmsError::Rejected(text),
        _ => KmsError::Unavailable(text),
    }
}

fn uid() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[async_trait]
impl Kms for GrpcKms {
    async fn status(&self) -> Result<KmsStatus, KmsError> {
        let r = self
            .call("Status", pb::StatusRequest {}, |mut c, r| async move {
                c.status(r).await
            })
            .await?;
        Ok(KmsStatus {
            version: r.version,
            healthz: r.healthz,
            key_id: r.key_id,
        })
    }

    async fn encrypt(&self, uid_: &str, plaintext: &[u8]) -> Result<Wrapped, KmsError> {
        let uid_ = if uid_.is_empty() {
            uid()
        } else {
            uid_.to_owned()
        };
        let message = pb::EncryptRequest {
            plaintext: plaintext.to_vec(),
            uid: uid_,
        };
        let result = self
            .call(
                "Encrypt",
                message,
                |mut c, r| async move { c.encrypt(r).await },
            )
            .await;
        // The request (with its copy of the plaintext) was consumed by the call; tonic's
        // encoding buffer is beyond reach, as in every gRPC KMS client.
        let r = result?;
        let wrapped = Wrapped {
            ciphertext: r.ciphertext,
            key_id: r.key_id,
            annotations: r.annotations.into_iter().collect(),
        };
        wrapped.check()?;
        Ok(wrapped)
    }

    async fn decrypt(&self, uid_: &str, wrapped: &Wrapped) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        let uid_ = if uid_.is_empty() {
            uid()
        } else {
            uid_.to_owned()
        };
        let message = pb::DecryptRequest {
            ciphertext: wrapped.ciphertext.clone(),
            uid: uid_,
            key_id: wrapped.key_id.clone(),
            annotations: wrapped
                .annotations
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        let mut r = self
            .call(
                "Decrypt",
                message,
                |mut c, r| async move { c.decrypt(r).await },
            )
            .await?;
        if r.plaintext.is_empty() {
            return Err(KmsError::InvalidResponse(
                "Decrypt returned an empty plaintext".into(),
            ));
        }
        let plaintext = Zeroizing::new(std::mem::take(&mut r.plaintext));
        r.plaintext.zeroize();
        Ok(plaintext)
    }

    fn describe(&self) -> String {
        format!(
            "KMS v2 plugin at unix://{} (call timeout {:?})",
            self.socket.display(),
            self.timeout
        )
    }
}
