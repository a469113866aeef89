//! Reaching the server: `--server` parsing (TCP, TLS or unix socket), the client credentials
//! (`--ca-file`, `--client-cert`/`--client-key`, `--token-file` or `COFFER_TOKEN`), and the gRPC
//! channel.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use hyper_util::rt::TokioIo;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, Uri};

use super::error::CliError;
use crate::credentials::{Bearer, Client};

/// The largest response the CLI accepts (a list page of many 1 MiB Secrets).
const MAX_DECODING: usize = 256 * 1024 * 1024;
/// The largest request the CLI sends (one Secret, well above the 1 MiB data limit).
const MAX_ENCODING: usize = 16 * 1024 * 1024;
/// How long to wait for the connection to be established.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The environment variable a bearer token may come from (when `--token-file` is not given).
pub const TOKEN_ENV: &str = "COFFER_TOKEN";

/// The client's credentials flags (global: every command that connects uses them).
#[derive(Debug, Clone, Default, Args)]
pub struct CredentialArgs {
    /// The CA certificate (PEM) that signed the server's certificate; needed by an https://
    /// --server.
    #[arg(long, global = true, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
    /// A client certificate (PEM) for mutual TLS (its CN is your user, each O a group).
    #[arg(long, global = true, value_name = "PEM")]
    pub client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, global = true, value_name = "PEM")]
    pub client_key: Option<PathBuf>,
    /// A file holding a bearer token, sent as `authorization: Bearer ...` (default: the
    /// COFFER_TOKEN environment variable). Keep it owner-only (chmod 600).
    // The id is the one of `coffer serve --token-file` (the server's token table) on purpose:
    // clap does not propagate a global flag into a subcommand that has an argument with the
    // same id, so `serve` keeps its own flag and help.
    #[arg(
        id = "token_file",
        long = "token-file",
        global = true,
        value_name = "PATH"
    )]
    pub token_file: Option<PathBuf>,
}

/// A parsed `--server` value, with the credentials the client presents.
#[derive(Debug, Clone)]
pub struct ServerAddr {
    /// As the user wrote it, for messages.
    pub display: String,
    target: Target,
    /// More replicas of the same store (`--server a,b,c`): a connection that cannot be made to
    /// one is tried on the next (etcd storage: every replica serves the same revisions, so a
    /// watch resumes on any of them).
    others: Vec<Target>,
    /// The index (in `target`, then `others`) that last connected: tried first next time.
    preferred: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// The TLS settings of an https:// server (`ClientTlsConfig`'s Debug is not shown: it
    /// would show the client key).
    tls: Option<Tls>,
    bearer: Bearer,
}

#[derive(Clone)]
struct Tls(ClientTlsConfig);

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls(..)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// `http://HOST:PORT`.
    Http(String),
    /// `https://HOST:PORT`.
    Https(String),
    /// A unix socket path.
    Unix(PathBuf),
}

impl ServerAddr {
    /// Parses `HOST:PORT`, `http://HOST:PORT`, `https://HOST:PORT` or `unix:///path/to.sock`,
    /// or several of them separated by commas (replicas of one store, tried in turn); no
    /// credentials (see [`Self::with_credentials`]).
    pub fn parse(s: &str) -> Result<Self, CliError> {
        if s.contains(',') && s.split(',').any(|p| p.trim().is_empty()) {
            return Err(CliError::msg(format_args!(
                "invalid --server {s:?}: an empty address in the list of replicas"
            )));
        }
        let mut parts = s.split(',').map(Self::parse_one);
        let mut first = parts.next().unwrap_or_else(|| Self::parse_one(s))?;
        for next in parts {
            let next = next?;
            if matches!(next.target, Target::Https(_)) != matches!(first.target, Target::Https(_)) {
                return Err(CliError::msg(format_args!(
                    "invalid --server {s:?}: the replicas must all be https:// or none (one set of TLS settings)"
                )));
            }
            first.others.push(next.target);
        }
        first.display = s.to_owned();
        Ok(first)
    }

    fn parse_one(s: &str) -> Result<Self, CliError> {
        let display = s.to_owned();
        let bad = |why: &str| {
            CliError::msg(format_args!(
                "invalid --server {s:?}: {why} (expected HOST:PORT, http://HOST:PORT, https://HOST:PORT or unix:///path/to.sock)"
            ))
        };
        let plain = |target| Self {
            display: display.clone(),
            target,
            others: Vec::new(),
            preferred: Default::default(),
            tls: None,
            bearer: Bearer::none(),
        };
        if let Some(path) = s
            .strip_prefix("unix://")
            .or_else(|| s.strip_prefix("unix:"))
        {
            if path.is_empty() {
                return Err(bad("the socket path is empty"));
            }
            return Ok(plain(Target::Unix(PathBuf::from(path))));
        }
        let uri = if s.starts_with("http://") || s.starts_with("https://") {
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
        Ok(plain(if uri.starts_with("https://") {
            Target::Https(uri)
        } else {
            Target::Http(uri)
        }))
    }

    /// Adds the credentials of `args` (reading their files now), the token falling back to
    /// `env_token` (`COFFER_TOKEN`). Certificates need an https:// server, which needs
    /// `--ca-file`. Warnings (a token file others can read, a token sent in plaintext) go to
    /// stderr; nothing printed or returned contains the token or the key.
    pub fn with_credentials(
        mut self,
        args: &CredentialArgs,
        env_token: Option<String>,
    ) -> Result<Self, CliError> {
        let wants_tls =
            args.ca_file.is_some() || args.client_cert.is_some() || args.client_key.is_some();
        match (&self.target, wants_tls) {
            (Target::Https(_), _) => {
                let Some(ca) = &args.ca_file else {
                    return Err(CliError::msg(format_args!(
                        "--server {}: https:// needs --ca-file (the CA certificate that signed the server's certificate)",
                        self.display
                    )));
                };
                let mut tls =
                    ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
                match (&args.client_cert, &args.client_key) {
                    (Some(cert), Some(key)) => {
                        let key = zeroize::Zeroizing::new(read(key)?);
                        tls = tls.identity(Identity::from_pem(read(cert)?, key.as_slice()));
                    }
                    (None, None) => {}
                    _ => {
                        return Err(CliError::msg("--client-cert and --client-key go together"));
                    }
                }
                self.tls = Some(Tls(tls));
            }
            (_, true) => {
                return Err(CliError::msg(format_args!(
                    "--ca-file, --client-cert and --client-key need an https:// --server (got {:?})",
                    self.display
                )));
            }
            (_, false) => {}
        }
        let token = match &args.token_file {
            Some(path) => Some((read_token_file(path)?, path.display().to_string())),
            None => env_token
                .filter(|t| !t.trim().is_empty())
                .map(|t| (zeroize::Zeroizing::new(t), TOKEN_ENV.to_owned())),
        };
        if let Some((token, from)) = token {
            if token.trim().is_empty() {
                return Err(CliError::msg(format_args!(
                    "the token file {from} is empty"
                )));
            }
            self.bearer = Bearer::new(&token)
                .map_err(|e| CliError::msg(format_args!("{e} (from {from})")))?;
            if std::iter::once(&self.target)
                .chain(&self.others)
                .any(|t| matches!(t, Target::Http(uri) if !is_loopback(uri)))
            {
                eprintln!(
                    "warning: sending a bearer token without TLS to {}; use https:// and --ca-file",
                    self.display
                );
            }
        }
        Ok(self)
    }

    /// Opens a channel and returns a Secrets client on it that sends the bearer token, if any.
    /// With several replicas, the one that connected last is tried first, then the others in
    /// turn; the error is the last one's.
    pub async fn connect(&self) -> Result<Client, CliError> {
        use std::sync::atomic::Ordering;
        let all: Vec<&Target> = std::iter::once(&self.target).chain(&self.others).collect();
        let start = self.preferred.load(Ordering::Relaxed) % all.len();
        let mut last = None;
        for k in 0..all.len() {
            let i = (start + k) % all.len();
            match self.connect_to(all[i]).await {
                Ok(client) => {
                    self.preferred.store(i, Ordering::Relaxed);
                    return Ok(client);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| CliError::msg("no --server to connect to")))
    }

    async fn connect_to(&self, target: &Target) -> Result<Client, CliError> {
        let channel = match target {
            Target::Http(uri) | Target::Https(uri) => {
                let mut endpoint = Endpoint::from_shared(uri.clone())
                    .map_err(|e| CliError::connect(&self.display, &e))?
                    .connect_timeout(CONNECT_TIMEOUT);
                if let Some(Tls(tls)) = &self.tls {
                    endpoint = endpoint
                        .tls_config(tls.clone())
                        .map_err(|e| CliError::connect(&self.display, &e))?;
                }
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
        Ok(self
            .bearer
            .clone()
            .client(channel)
            .max_decoding_message_size(MAX_DECODING)
            .max_encoding_message_size(MAX_ENCODING))
    }
}

fn read(path: &Path) -> Result<Vec<u8>, CliError> {
    std::fs::read(path).map_err(|e| CliError::file(&path.display().to_string(), &e))
}

/// Reads a token file, warning when its mode lets the group or others read it.
fn read_token_file(path: &Path) -> Result<zeroize::Zeroizing<String>, CliError> {
    use std::os::unix::fs::PermissionsExt as _;
    let bytes = zeroize::Zeroizing::new(read(path)?);
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        eprintln!(
            "warning: the token file {} can be read by other users (mode {:o}); chmod 600 it",
            path.display(),
            meta.permissions().mode() & 0o777
        );
    }
    let text = std::str::from_utf8(&bytes).map_err(|_| {
        CliError::msg(format_args!(
            "the token file {} is not UTF-8 text",
            path.display()
        ))
    })?;
    Ok(zeroize::Zeroizing::new(text.trim().to_owned()))
}

/// Whether an http:// URI's host is a loopback address or `localhost`.
fn is_loopback(uri: &str) -> bool {
    let Ok(uri) = uri.parse::<Uri>() else {
        return false;
    };
    let host = uri.host().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
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
            ServerAddr::parse("https://localhost:1").unwrap().target,
            Target::Https("https://localhost:1".into())
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
            "https://x",
            "ftp://x:1",
            "unix://",
            "http://:80",
        ] {
            assert!(ServerAddr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn several_replicas_are_tried_in_turn() {
        let a = ServerAddr::parse("127.0.0.1:1,127.0.0.1:2,unix:///tmp/c.sock").unwrap();
        assert_eq!(a.target, Target::Http("http://127.0.0.1:1".into()));
        assert_eq!(
            a.others,
            [
                Target::Http("http://127.0.0.1:2".into()),
                Target::Unix("/tmp/c.sock".into())
            ]
        );
        assert_eq!(a.display, "127.0.0.1:1,127.0.0.1:2,unix:///tmp/c.sock");
        for (bad, why) in [
            ("127.0.0.1:1,", "an empty address"),
            ("127.0.0.1:1,localhost", "the port is missing"),
            ("https://a:1,http://b:2", "all be https:// or none"),
        ] {
            let e = ServerAddr::parse(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[tokio::test]
    async fn connect_moves_on_to_the_next_replica() {
        // A port nobody listens on, then a live server: the client connects to the second.
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead_addr = dead.local_addr().unwrap();
        drop(dead);
        let server = coffer_testkit::server::TestServer::start().await;
        let a = ServerAddr::parse(&format!("{dead_addr},{}", server.addr())).unwrap();
        let mut c = a.connect().await.expect("fails over");
        c.list(coffer_server::proto::v1::ListSecretsRequest::default())
            .await
            .expect("list on the live replica");
        assert_eq!(a.preferred.load(std::sync::atomic::Ordering::Relaxed), 1);
        // All dead: the last replica's error.
        let b = ServerAddr::parse(&format!("{dead_addr},{dead_addr}")).unwrap();
        assert!(b.connect().await.is_err());
    }

    fn creds(server: &str, args: &CredentialArgs, env: Option<&str>) -> Result<ServerAddr, String> {
        ServerAddr::parse(server)
            .unwrap()
            .with_credentials(args, env.map(str::to_owned))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn credentials_are_checked_and_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "file-s3cret\n").unwrap();
        let missing = dir.path().join("missing");
        let ca = |p: &Path| CredentialArgs {
            ca_file: Some(p.to_owned()),
            ..CredentialArgs::default()
        };

        // https:// needs --ca-file; TLS flags need https://; cert and key go together.
        let e = creds("https://localhost:1", &CredentialArgs::default(), None).unwrap_err();
        assert!(e.contains("needs --ca-file"), "{e}");
        let e = creds("localhost:1", &ca(&token), None).unwrap_err();
        assert!(e.contains("need an https:// --server"), "{e}");
        let e = creds("unix:///x.sock", &ca(&token), None).unwrap_err();
        assert!(e.contains("need an https:// --server"), "{e}");
        let e = creds("https://localhost:1", &ca(&missing), None).unwrap_err();
        assert!(e.contains("no such file"), "{e}");
        let half = CredentialArgs {
            client_cert: Some(token.clone()),
            ..ca(&token)
        };
        let e = creds("https://localhost:1", &half, None).unwrap_err();
        assert!(e.contains("go together"), "{e}");

        // The token: the file wins over the environment; neither is ever in Debug.
        let from_file = CredentialArgs {
            token_file: Some(token.clone()),
            ..CredentialArgs::default()
        };
        let a = creds("unix:///x.sock", &from_file, Some("env-s3cret")).unwrap();
        assert!(a.bearer.is_set());
        let shown = format!("{a:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        let a = creds(
            "unix:///x.sock",
            &CredentialArgs::default(),
            Some("env-s3cret"),
        )
        .unwrap();
        assert!(a.bearer.is_set());
        assert!(!format!("{a:?}").contains("s3cret"));
        let a = creds("unix:///x.sock", &CredentialArgs::default(), Some("  ")).unwrap();
        assert!(!a.bearer.is_set());

        // Bad token files: missing, empty, not a header value (the error does not echo it).
        let e = creds(
            "unix:///x.sock",
            &CredentialArgs {
                token_file: Some(missing),
                ..CredentialArgs::default()
            },
            None,
        )
        .unwrap_err();
        assert!(e.contains("no such file"), "{e}");
        std::fs::write(&token, "\n").unwrap();
        let e = creds("unix:///x.sock", &from_file, None).unwrap_err();
        assert!(e.contains("is empty"), "{e}");
        std::fs::write(&token, "bad\u{1}s3cret").unwrap();
        let e = creds("unix:///x.sock", &from_file, None).unwrap_err();
        assert!(e.contains("not allowed in a header"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
        let e = creds(
            "unix:///x.sock",
            &CredentialArgs::default(),
            Some("bad\u{1}s3cret"),
        )
        .unwrap_err();
        assert!(e.contains("COFFER_TOKEN"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
        std::fs::write(&token, [0xff, 0xfe]).unwrap();
        let e = creds("unix:///x.sock", &from_file, None).unwrap_err();
        assert!(e.contains("not UTF-8"), "{e}");
    }

    #[test]
    fn loopback_hosts() {
        assert!(is_loopback("http://127.0.0.1:1"));
        assert!(is_loopback("http://localhost:1"));
        assert!(is_loopback("http://[::1]:1"));
        assert!(!is_loopback("http://10.0.0.1:1"));
        assert!(!is_loopback("http://example.com:1"));
    }
}
