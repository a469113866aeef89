//! The client side of authentication: the `authorization: Bearer` header a client adds to every
//! call (the CLI and the mount agent). TLS client certificates are set on the channel instead
//! (see `crate::cli::ServerAddr`).

use std::sync::Arc;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use coffer_server::proto::v1::secrets_client::SecretsClient;

/// A Secrets client that sends its [`Bearer`] token (if any) with every call.
pub type Client = SecretsClient<InterceptedService<Channel, Bearer>>;

/// Adds `authorization: Bearer <token>` to every request, when it holds a token. Its `Debug`
/// never shows the token, and the header value is marked sensitive (so the HTTP stack does
/// not show it either).
#[derive(Clone, Default)]
pub struct Bearer(Option<Arc<MetadataValue<Ascii>>>);

/// A token that cannot be sent in a header.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the bearer token is empty or has characters not allowed in a header (visible ASCII only)")]
pub struct BadToken;

impl Bearer {
    /// No token: requests are sent as they are.
    pub fn none() -> Self {
        Self(None)
    }

    /// A token (surrounding whitespace trimmed). The error does not contain it.
    pub fn new(token: &str) -> Result<Self, BadToken> {
        let token = token.trim();
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(BadToken);
        }
        let mut value: MetadataValue<Ascii> =
            format!("Bearer {token}").parse().map_err(|_| BadToken)?;
        value.set_sensitive(true);
        Ok(Self(Some(Arc::new(value))))
    }

    /// Whether a token is sent.
    pub fn is_set(&self) -> bool {
        self.0.is_some()
    }

    /// A client on `channel` that sends this token.
    pub fn client(self, channel: Channel) -> Client {
        SecretsClient::with_interceptor(channel, self)
    }
}

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.is_set() {
            "Bearer(<redacted>)"
        } else {
            "Bearer(none)"
        })
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut()
                .insert("authorization", MetadataValue::clone(v));
        }
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_the_header_and_never_shows_the_token() {
        let mut b = Bearer::new(" s3cret\n").expect("token");
        assert_eq!(format!("{b:?}"), "Bearer(<redacted>)");
        let req = b.call(tonic::Request::new(())).expect("call");
        let v = req.metadata().get("authorization").expect("header");
        assert_eq!(v.to_str().expect("ascii"), "Bearer s3cret");
        assert!(!format!("{v:?}").contains("s3cret"));
        let mut none = Bearer::none();
        let req = none.call(tonic::Request::new(())).expect("call");
        assert!(req.metadata().get("authorization").is_none());
        assert!(Bearer::new("a\u{7}b").is_err());
        assert!(Bearer::new("é").is_err());
        assert!(Bearer::new("a b").is_err());
        assert!(Bearer::new(" ").is_err());
    }
}
