//! TLS on TCP listeners, and client certificates checked per request.
//!
//! Coffer does TLS itself (tokio-rustls) rather than through tonic's `ServerTlsConfig`, for one
//! reason: a bad client certificate must be answered with `UNAUTHENTICATED` and a message that
//! says what is wrong, not with a failed handshake that the client sees as `Unknown: transport
//! error`. kube-apiserver does the same: its TLS layer asks for a client certificate without
//! verifying its chain, and its x509 authenticator verifies the chain per request.
//!
//! - At the handshake, [`ProvenPossession`] accepts any client certificate (or none) but still
//!   checks the client's `CertificateVerify` signature with rustls's own verifier: the client
//!   proves it holds the certificate's private key, so the certificate identifies the peer.
//! - Per request, [`ClientCa::verify`] verifies the certificate chain against `--client-ca`
//!   (validity period, issuer, signature, key usage) with rustls's `WebPkiClientVerifier`; a
//!   failure becomes [`AuthError::Unauthenticated`] ("client certificate rejected: expired").
//!
//! No cryptography is implemented here: every check is rustls/webpki's.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use tokio_rustls::TlsAcceptor;

use super::{AuthConfigError, AuthError};

/// The one crypto provider Coffer's TLS uses (ring, as tonic's `tls-ring`).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, AuthConfigError> {
    std::fs::read(path)
        .map_err(|e| AuthConfigError::new(format!("cannot read {what} {}: {e}", path.display())))
}

/// The client CA (`--client-ca`): verifies client certificate chains.
#[derive(Debug, Clone)]
pub struct ClientCa {
    verifier: Arc<dyn ClientCertVerifier>,
}

impl ClientCa {
    /// Loads the PEM CA certificates of `path`.
    pub fn load(path: &Path) -> Result<Self, AuthConfigError> {
        let bad =
            |why: String| AuthConfigError::new(format!("--client-ca {}: {why}", path.display()));
        let pem = read(path, "--client-ca")?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| bad(format!("not PEM certificates: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| bad(format!("not a usable CA certificate: {e}")))?;
        }
        if roots.is_empty() {
            return Err(bad("no certificate in the file".into()));
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| bad(e.to_string()))?;
        Ok(Self { verifier })
    }

    /// Verifies `chain` (the leaf first, then the intermediates the client sent) against the
    /// CA, now. The error says why, in words a user can act on; it never contains the
    /// certificate.
    pub fn verify(&self, chain: &[CertificateDer<'static>]) -> Result<(), AuthError> {
        let Some((leaf, intermediates)) = chain.split_first() else {
            return Err(AuthError::Unauthenticated(
                "no client certificate presented".into(),
            ));
        };
        self.verifier
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .map(|_| ())
            .map_err(|e| {
                AuthError::Unauthenticated(format!("client certificate rejected: {}", reason(&e)))
            })
    }
}

/// Why rustls/webpki refused a client certificate, in a few words.
fn reason(e: &rustls::Error) -> String {
    let rustls::Error::InvalidCertificate(c) = e else {
        return e.to_string();
    };
    match c {
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired".into(),
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "not yet valid".into()
        }
        CertificateError::UnknownIssuer => "not signed by the client CA".into(),
        // An issuer with the client CA's name but another key.
        CertificateError::BadSignature => "bad signature (not signed by the client CA)".into(),
        CertificateError::Revoked => "revoked".into(),
        CertificateError::BadEncoding => "malformed certificate".into(),
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            "not valid for client authentication (extended key usage)".into()
        }
        _ => e.to_string(),
    }
}

/// The handshake half of client authentication: a client certificate is optional and its chain
/// is not checked here (see [`ClientCa::verify`]), but a client that presents one must prove it
/// holds the private key: the `CertificateVerify` signature is checked by the CA's verifier.
#[derive(Debug)]
struct ProvenPossession {
    ca: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for ProvenPossession {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        // A client may authenticate with a bearer token instead.
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.ca.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Deliberately deferred to each request (ClientCa::verify), so that a bad certificate
        // gets UNAUTHENTICATED with a reason instead of a handshake failure.
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.ca.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.ca.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.ca.supported_verify_schemes()
    }
}

/// The TLS acceptor of the TCP listeners: the server's certificate chain and key (PEM), HTTP/2
/// by ALPN, and with a client CA the optional client certificates described above.
pub fn acceptor(
    cert: &Path,
    key: &Path,
    client_ca: Option<&ClientCa>,
) -> Result<TlsAcceptor, AuthConfigError> {
    let cert_pem = read(cert, "--tls-cert")?;
    let key_pem = zeroize::Zeroizing::new(read(key, "--tls-key")?);
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            AuthConfigError::new(format!("--tls-cert {}: not PEM: {e}", cert.display()))
        })?;
    if chain.is_empty() {
        return Err(AuthConfigError::new(format!(
            "--tls-cert {}: no certificate in the file",
            cert.display()
        )));
    }
    // The error names the file, never the key.
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| {
        AuthConfigError::new(format!(
            "--tls-key {}: no PEM private key (PKCS#8, PKCS#1 or SEC1) in the file",
            key.display()
        ))
    })?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| AuthConfigError::new(format!("TLS: {e}")))?;
    let builder = match client_ca {
        Some(ca) => builder.with_client_cert_verifier(Arc::new(ProvenPossession {
            ca: ca.verifier.clone(),
        })),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key_der).map_err(|e| {
        AuthConfigError::new(format!(
            "--tls-cert {} / --tls-key {}: {e}",
            cert.display(),
            key.display()
        ))
    })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa,
        KeyPair,
    };

    use super::*;

    fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
    }

    /// A client certificate valid from `from` to `to` (years).
    fn client(
        issuer: &CertifiedIssuer<'static, KeyPair>,
        from: i32,
        to: i32,
    ) -> CertificateDer<'static> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, "alice");
        params.not_before = rcgen::date_time_ymd(from, 1, 1);
        params.not_after = rcgen::date_time_ymd(to, 1, 1);
        let key = KeyPair::generate().unwrap();
        params.signed_by(&key, issuer).unwrap().der().clone()
    }

    fn message(ca: &ClientCa, chain: &[CertificateDer<'static>]) -> String {
        ca.verify(chain).unwrap_err().to_string()
    }

    #[test]
    fn client_certificates_are_verified_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let issuer = ca("ca");
        let path = dir.path().join("ca.crt");
        std::fs::write(&path, issuer.pem()).unwrap();
        let ca = ClientCa::load(&path).unwrap();

        assert!(ca.verify(&[client(&issuer, 2020, 2100)]).is_ok());
        let m = |c| format!("client certificate rejected: {c}");
        assert_eq!(message(&ca, &[client(&issuer, 2020, 2021)]), m("expired"));
        assert_eq!(
            message(&ca, &[client(&issuer, 2090, 2100)]),
            m("not yet valid")
        );
        assert_eq!(
            message(&ca, &[client(&self::ca("another"), 2020, 2100)]),
            m("not signed by the client CA")
        );
        assert_eq!(
            message(&ca, &[client(&self::ca("ca"), 2020, 2100)]),
            m("bad signature (not signed by the client CA)")
        );
        assert_eq!(
            message(
                &ca,
                &[CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00])]
            ),
            m("malformed certificate")
        );
        assert!(message(&ca, &[]).contains("no client certificate"));
    }

    #[test]
    fn bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        std::fs::write(p("empty"), "").unwrap();
        std::fs::write(
            p("garbage.pem"),
            "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let e = ClientCa::load(&p("missing")).unwrap_err().to_string();
        assert!(e.contains("cannot read --client-ca"), "{e}");
        let e = ClientCa::load(&p("empty")).unwrap_err().to_string();
        assert!(e.contains("no certificate"), "{e}");
        assert!(ClientCa::load(&p("garbage.pem")).is_err());

        let issuer = ca("ca");
        std::fs::write(p("ca.crt"), issuer.pem()).unwrap();
        let err = |c: &str, k: &str| match acceptor(&p(c), &p(k), None) {
            Ok(_) => panic!("accepted {c} / {k}"),
            Err(e) => e.to_string(),
        };
        let e = err("empty", "empty");
        assert!(
            e.contains("--tls-cert") && e.contains("no certificate"),
            "{e}"
        );
        let e = err("ca.crt", "empty");
        assert!(
            e.contains("--tls-key") && e.contains("no PEM private key"),
            "{e}"
        );
        // A key that is not the certificate's.
        std::fs::write(p("other.key"), KeyPair::generate().unwrap().serialize_pem()).unwrap();
        assert!(acceptor(&p("ca.crt"), &p("other.key"), None).is_err());
        std::fs::write(p("ca.key"), issuer.key().serialize_pem()).unwrap();
        let ca = ClientCa::load(&p("ca.crt")).unwrap();
        assert!(acceptor(&p("ca.crt"), &p("ca.key"), Some(&ca)).is_ok());
    }
}
