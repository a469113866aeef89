//! Reaching the server: `--server` parsing (TCP or unix socket) and the gRPC channel.

use std::path::PathBuf;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

use super::error::CliError;
use crate::proto::v1::secrets_client::SecretsClient;

/// The largest response the CLI accepts (a list page of many 1 MiB Secrets).
const MAX_DECODING: usize = 256 * 1024 * 1024;
/// The largest request the CLI sends (one Secret, well above the 1 MiB data limit).
const MAX_ENCODING: usize = 16 * 1024 * 1024;
/// How long to wait for the connection to be established.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A parsed `--server` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerAddr {
    /// As the user wrote it, for messages.
    pub display: String,
    target: Target,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// `http://HOST:PORT`.
    Http(String),
    /// A unix socket path.
    Unix(PathBuf),
}

impl ServerAddr {
    /// Parses `HOST:PORT`, `http://HOST:PORT` or `unix:///path/to.sock`.
    pub fn parse(s: &str) -> Result<Self, CliError> {
        let display = s.to_owned();
        let bad = |why: &str| {
            CliError::msg(format_args!(
                "invalid --server {s:?}: {why} (expected HOST:PORT, http://HOST:PORT or unix:///path/to.sock)"
            ))
        };
        if let Some(path) = s
            .strip_prefix("unix://")
            .or_else(|| s.strip_prefix("unix:"))
        {
            if path.is_empty() {
                return Err(bad("the socket path is empty"));
            }
            return Ok(Self {
                display,
                target: Target::Unix(PathBuf::from(path)),
            });
        }
        if s.starts_with("https://") {
            return Err(bad("TLS (https://) is not supported by this client yet"));
        }
        let uri = if s.starts_with("http://") {
            s.to_owned()
        } else if s.contains("://") {
            return Err(bad("unknown scheme"));
        } else {
            format!("http://{s}")
        };
        let parsed: Uri = uri.parse().map_err(|_| bad("not a valid address"))?;
        if parsed.host().is_none_or(str::is_empty) {
            return Err(bad("the host is missing"));
        }
        if parsed.port().is_none() {
            return Err(bad("the port is missing"));
        }
        Ok(Self {
            display,
            target: Target::Http(uri),
        })
    }

    /// Opens a channel and returns a Secrets client on it.
    pub async fn connect(&self) -> Result<SecretsClient<Channel>, CliError> {
        let channel = match &self.target {
            Target::Http(uri) => {
                let endpoint = Endpoint::from_shared(uri.clone())
                    .map_err(|e| CliError::connect(&self.display, &e))?
                    .connect_timeout(CONNECT_TIMEOUT);
                endpoint
                    .connect()
                    .await
                    .map_err(|e| CliError::connect(&self.display, &e))?
            }
            Target::Unix(path) => {
                let path = path.clone();
                // The URI is ignored by the connector; it only has to be valid.
                Endpoint::from_static("http://localhost")
                    .connect_timeout(CONNECT_TIMEOUT)
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let path = path.clone();
                        async move {
                            let stream = tokio::net::UnixStream::connect(path).await?;
                            Ok::<_, std::io::Error>(TokioIo::new(stream))
                        }
                    }))
                    .await
                    .map_err(|e| CliError::connect(&self.display, &e))?
            }
        };
        Ok(SecretsClient::new(channel)
            .max_decoding_message_size(MAX_DECODING)
            .max_encoding_message_size(MAX_ENCODING))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn parses_server_forms() {
        assert_eq!(
            ServerAddr::parse("127.0.0.1:7070").unwrap().target,
            Target::Http("http://127.0.0.1:7070".into())
        );
        assert_eq!(
            ServerAddr::parse("http://localhost:1").unwrap().target,
            Target::Http("http://localhost:1".into())
        );
        assert_eq!(
            ServerAddr::parse("[::1]:7070").unwrap().target,
            Target::Http("http://[::1]:7070".into())
        );
        assert_eq!(
            ServerAddr::parse("unix:///tmp/c.sock").unwrap().target,
            Target::Unix("/tmp/c.sock".into())
        );
        for bad in [
            "",
            "localhost",
            "https://x:1",
            "ftp://x:1",
            "unix://",
            "http://:80",
        ] {
            assert!(ServerAddr::parse(bad).is_err(), "{bad}");
        }
    }
}
