//! Helpers for the security tests: a test PKI made with rcgen (a CA, the server's certificate,
//! client certificates with CN = user and O = groups, an expired one, one from another CA),
//! clients with a bearer token, and the audit log. A server with security settings is
//! [`TestServer::builder`]`.security(args)`.
//!
//! Test files use it as `coffer_testkit::auth`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use coffer_server::auth::SecurityArgs;
use coffer_server::proto::v1 as pb;
use coffer_server::proto::v1::secrets_client::SecretsClient;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa, KeyPair,
};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

pub use crate::server::{TestServer, create, get, tcp_channel, unix_channel};

/// A certificate and its key, PEM.
#[derive(Debug, Clone)]
pub struct Pair {
    pub cert: String,
    pub key: String,
}

/// A CA, the server's certificate, and a way to issue client certificates.
pub struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
    pub ca_pem: String,
    pub server: Pair,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("ca")
}

fn leaf(
    issuer: &CertifiedIssuer<'static, KeyPair>,
    sans: &[&str],
    cn: Option<&str>,
    orgs: &[&str],
    expired: bool,
) -> Pair {
    let mut params =
        CertificateParams::new(sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
            .expect("params");
    params.distinguished_name = DistinguishedName::new();
    if let Some(cn) = cn {
        params.distinguished_name.push(DnType::CommonName, cn);
    }
    for o in orgs {
        params.distinguished_name.push(DnType::OrganizationName, *o);
    }
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, issuer).expect("sign");
    Pair {
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

impl Pki {
    pub fn new() -> Self {
        let ca = ca("coffer test CA");
        let server = leaf(&ca, &["localhost", "127.0.0.1"], Some("coffer"), &[], false);
        Self {
            ca_pem: ca.pem(),
            ca,
            server,
        }
    }

    /// A client certificate: CN = `user`, one O per group.
    pub fn client(&self, user: &str, groups: &[&str]) -> Pair {
        leaf(&self.ca, &[], Some(user), groups, false)
    }

    /// A client certificate that expired in 2021.
    pub fn expired_client(&self, user: &str) -> Pair {
        leaf(&self.ca, &[], Some(user), &[], true)
    }

    /// A client certificate with no CN (valid otherwise).
    pub fn client_without_cn(&self) -> Pair {
        leaf(&self.ca, &[], None, &["admins"], false)
    }

    /// A client certificate whose subject holds two CNs, `first` then `second` (the second
    /// written under the CN's OID as a custom attribute: rcgen keeps one value per type).
    pub fn client_with_two_cns(&self, first: &str, second: &str) -> Pair {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, first);
        params
            .distinguished_name
            .push(DnType::CustomDnType(vec![2, 5, 4, 3]), second);
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.ca).expect("sign");
        Pair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// A client certificate from another CA.
    pub fn foreign_client(user: &str) -> Pair {
        leaf(&ca("another CA"), &[], Some(user), &["admins"], false)
    }

    /// Writes the CA, the server's certificate and key into `dir`; returns security args with
    /// TLS and mutual TLS set.
    pub fn write(&self, dir: &Path) -> SecurityArgs {
        let p = |n: &str| dir.join(n);
        std::fs::write(p("ca.crt"), &self.ca_pem).expect("write");
        std::fs::write(p("server.crt"), &self.server.cert).expect("write");
        std::fs::write(p("server.key"), &self.server.key).expect("write");
        SecurityArgs {
            tls_cert: Some(p("server.crt")),
            tls_key: Some(p("server.key")),
            client_ca: Some(p("ca.crt")),
            ..SecurityArgs::default()
        }
    }
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    // Owner-only, as the server requires of token files.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    path
}

/// Adds `authorization: Bearer <token>` when it has one.
#[derive(Clone, Debug, Default)]
pub struct Bearer(pub Option<String>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(t) = &self.0 {
            let v = format!("Bearer {t}")
                .parse()
                .map_err(|_| tonic::Status::internal("bad token"))?;
            req.metadata_mut().insert("authorization", v);
        }
        Ok(req)
    }
}

pub type Client = SecretsClient<InterceptedService<Channel, Bearer>>;

pub fn client(channel: Channel, token: Option<&str>) -> Client {
    SecretsClient::with_interceptor(channel, Bearer(token.map(str::to_owned)))
}

/// A TLS channel to `addr` trusting `ca_pem`, presenting `identity` if given.
pub async fn tls_channel(
    addr: SocketAddr,
    ca_pem: &str,
    identity: Option<&Pair>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    if let Some(p) = identity {
        tls = tls.identity(Identity::from_pem(&p.cert, &p.key));
    }
    Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
}

/// A wire Secret whose data values are bytes ([`crate::server::secret`] takes text).
pub fn secret(ns: &str, name: &str, data: &[(&str, &[u8])]) -> pb::Secret {
    let mut s = crate::server::secret(ns, name, &[]);
    s.data = data
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.to_vec()))
        .collect();
    s
}

/// The first event of a watch with initial events, within 5 s.
pub async fn first_watch_event(
    c: &mut Client,
    req: pb::WatchSecretsRequest,
) -> Result<pb::WatchEvent, tonic::Status> {
    let mut stream = c.watch(req).await?.into_inner();
    match tokio::time::timeout(Duration::from_secs(5), stream.message()).await {
        Ok(Ok(Some(ev))) => Ok(ev),
        Ok(Ok(None)) => Err(tonic::Status::unknown("watch ended without an event")),
        Ok(Err(s)) => Err(s),
        Err(_) => Err(tonic::Status::deadline_exceeded(
            "no watch event within 5 s",
        )),
    }
}

/// Every line of a JSON-lines file.
pub fn read_audit(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
        .collect()
}
