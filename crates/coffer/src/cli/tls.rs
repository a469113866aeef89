//! `create secret tls`: checks that the certificate and key files are PEM and that the key
//! belongs to the certificate, as kubectl does with Go's `tls.X509KeyPair` (same messages).
//!
//! Keys: PKCS#8 (RSA, ECDSA, Ed25519), PKCS#1 RSA, SEC1 EC. The structures are read with
//! well-kept crates: the certificate with x509-parser, the keys with RustCrypto's `pkcs8`,
//! `pkcs1` and `sec1`. RSA keys are compared by modulus and exponent, as Go does (so that keys
//! ring would refuse to load, such as 1024-bit ones, are still checked). ECDSA (P-256, P-384)
//! and Ed25519 keys are loaded with rustls's ring key provider, which derives the public key
//! from the private one, and compared as `rustls::sign::CertifiedKey::keys_match` does: by
//! SubjectPublicKeyInfo bytes. An EC key on a curve ring lacks (P-521) is compared through
//! the public key its file embeds.

use pkcs8::der::Decode as _;
use pkcs8::{ObjectIdentifier, PrivateKeyInfoRef};
use rustls_pki_types::pem::{PemObject, SectionKind};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer};
use x509_parser::oid_registry::{
    OID_KEY_TYPE_EC_PUBLIC_KEY, OID_PKCS1_RSAENCRYPTION, OID_SIG_ED25519,
};
use x509_parser::public_key::PublicKey;
use zeroize::Zeroizing;

const MISMATCH: &str = "tls: private key does not match public key";
const TYPE_MISMATCH: &str = "tls: private key type does not match public key type";
const PARSE_KEY: &str = "tls: failed to parse private key";

const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");

/// The kinds of key Go's `tls.X509KeyPair` pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyType {
    Rsa,
    Ec,
    Ed25519,
}

/// Checks a certificate/key pair as Go's `tls.X509KeyPair` does; the error is Go's message.
pub(crate) fn check_key_pair(cert_pem: &[u8], key_pem: &[u8]) -> Result<(), String> {
    let cert_der = first_certificate(cert_pem)?;
    let (kind, key_der) = first_private_key(key_pem)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&cert_der)
        .map_err(|e| format!("x509: malformed certificate: {e}"))?;
    let spki = cert.public_key();
    let oid = &spki.algorithm.algorithm;
    let cert_type = if *oid == OID_PKCS1_RSAENCRYPTION {
        KeyType::Rsa
    } else if *oid == OID_KEY_TYPE_EC_PUBLIC_KEY {
        KeyType::Ec
    } else if *oid == OID_SIG_ED25519 {
        KeyType::Ed25519
    } else {
        return Err("tls: unknown public key algorithm".into());
    };
    let key = PrivateKey::parse(kind, &key_der)?;
    if key.key_type != cert_type {
        return Err(TYPE_MISMATCH.into());
    }
    match key.key_type {
        KeyType::Rsa => {
            let Ok(PublicKey::RSA(public)) = spki.parsed() else {
                return Err("tls: unknown public key algorithm".into());
            };
            check_rsa(public.modulus, public.exponent, key.rsa)
        }
        KeyType::Ec | KeyType::Ed25519 => {
            match rustls::crypto::ring::sign::any_supported_type(&key.der) {
                Ok(signing) => match signing.public_key() {
                    Some(own) if own.as_ref() == spki.raw => Ok(()),
                    Some(_) => Err(MISMATCH.into()),
                    None => Err(PARSE_KEY.into()),
                },
                // A curve ring does not implement: the public key the key file embeds.
                Err(_) => match key.embedded_ec_public_key() {
                    Some(pk) if pk == spki.subject_public_key.data.as_ref() => Ok(()),
                    Some(_) => Err(MISMATCH.into()),
                    None => Err(PARSE_KEY.into()),
                },
            }
        }
    }
}

/// A parsed private key: its type, its DER as rustls takes it, and where its parts are.
struct PrivateKey<'a> {
    key_type: KeyType,
    der: PrivateKeyDer<'a>,
    /// The PKCS#1 `RSAPrivateKey` (RSA keys only).
    rsa: &'a [u8],
    /// The SEC1 `ECPrivateKey` (EC keys only).
    sec1: &'a [u8],
}

impl<'a> PrivateKey<'a> {
    /// Reads the key as its PEM label says; a key that does not parse is Go's "failed to
    /// parse private key", one of a kind Go does not pair too.
    fn parse(kind: SectionKind, der: &'a [u8]) -> Result<Self, String> {
        let key = match kind {
            SectionKind::RsaPrivateKey => {
                pkcs1::RsaPrivateKeyRef::from_der(der).map_err(|_| PARSE_KEY)?;
                Self {
                    key_type: KeyType::Rsa,
                    der: PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(der)),
                    rsa: der,
                    sec1: &[],
                }
            }
            SectionKind::EcPrivateKey => {
                sec1::EcPrivateKey::from_der(der).map_err(|_| PARSE_KEY)?;
                Self {
                    key_type: KeyType::Ec,
                    der: PrivateKeyDer::Sec1(PrivateSec1KeyDer::from(der)),
                    rsa: &[],
                    sec1: der,
                }
            }
            _ => {
                let info = PrivateKeyInfoRef::from_der(der).map_err(|_| PARSE_KEY)?;
                let inner = info.private_key.as_bytes();
                let (key_type, rsa, sec1) = match info.algorithm.oid {
                    RSA_ENCRYPTION => (KeyType::Rsa, inner, &[][..]),
                    EC_PUBLIC_KEY => (KeyType::Ec, &[][..], inner),
                    ED25519 => (KeyType::Ed25519, &[][..], &[][..]),
                    _ => return Err(PARSE_KEY.into()),
                };
                Self {
                    key_type,
                    der: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der)),
                    rsa,
                    sec1,
                }
            }
        };
        Ok(key)
    }

    /// The public key an EC key file carries beside the private one, if it does.
    fn embedded_ec_public_key(&self) -> Option<&'a [u8]> {
        sec1::EcPrivateKey::from_der(self.sec1).ok()?.public_key
    }
}

/// An RSA key (PKCS#1 `RSAPrivateKey`): modulus and exponent must be the certificate's.
fn check_rsa(modulus: &[u8], exponent: &[u8], der: &[u8]) -> Result<(), String> {
    let key = pkcs1::RsaPrivateKeyRef::from_der(der).map_err(|_| PARSE_KEY)?;
    if unsigned(key.modulus.as_bytes()) == unsigned(modulus)
        && unsigned(key.public_exponent.as_bytes()) == unsigned(exponent)
    {
        Ok(())
    } else {
        Err(MISMATCH.into())
    }
}

/// A big-endian unsigned integer without its leading zero bytes (DER adds one before a high
/// bit; the certificate's and the key's integers are compared as numbers).
fn unsigned(b: &[u8]) -> &[u8] {
    let i = b.iter().position(|x| *x != 0).unwrap_or(b.len());
    &b[i..]
}

fn first_certificate(pem: &[u8]) -> Result<Vec<u8>, String> {
    let mut skipped = Vec::new();
    for item in <(SectionKind, Vec<u8>) as PemObject>::pem_slice_iter(pem) {
        let (kind, der) =
            item.map_err(|_| "tls: failed to decode PEM data in certificate input".to_owned())?;
        if kind == SectionKind::Certificate {
            return Ok(der);
        }
        skipped.push(kind);
    }
    if skipped.is_empty() {
        return Err("tls: failed to find any PEM data in certificate input".into());
    }
    if skipped.iter().all(is_private_key) {
        return Err("tls: failed to find certificate PEM data in certificate input, but did find a private key; PEM inputs may have been switched".into());
    }
    Err(format!(
        "tls: failed to find \"CERTIFICATE\" PEM block in certificate input after skipping PEM blocks of the following types: {}",
        kinds(&skipped)
    ))
}

fn first_private_key(pem: &[u8]) -> Result<(SectionKind, Zeroizing<Vec<u8>>), String> {
    let mut skipped = Vec::new();
    for item in <(SectionKind, Vec<u8>) as PemObject>::pem_slice_iter(pem) {
        let (kind, der) =
            item.map_err(|_| "tls: failed to decode PEM data in key input".to_owned())?;
        let der = Zeroizing::new(der);
        if is_private_key(&kind) {
            return Ok((kind, der));
        }
        skipped.push(kind);
    }
    if skipped.is_empty() {
        return Err("tls: failed to find any PEM data in key input".into());
    }
    if skipped.iter().all(|k| *k == SectionKind::Certificate) {
        return Err(
            "tls: found a certificate rather than a key in the PEM for the private key".into(),
        );
    }
    Err(format!(
        "tls: failed to find PEM block with type ending in \"PRIVATE KEY\" in key input after skipping PEM blocks of the following types: {}",
        kinds(&skipped)
    ))
}

fn is_private_key(k: &SectionKind) -> bool {
    matches!(
        k,
        SectionKind::PrivateKey | SectionKind::RsaPrivateKey | SectionKind::EcPrivateKey
    )
}

fn kinds(k: &[SectionKind]) -> String {
    let names: Vec<&str> = k
        .iter()
        .map(|k| match k {
            SectionKind::Certificate => "CERTIFICATE",
            SectionKind::PublicKey => "PUBLIC KEY",
            SectionKind::RsaPrivateKey => "RSA PRIVATE KEY",
            SectionKind::PrivateKey => "PRIVATE KEY",
            SectionKind::EcPrivateKey => "EC PRIVATE KEY",
            SectionKind::Crl => "X509 CRL",
            SectionKind::Csr => "CERTIFICATE REQUEST",
            _ => "OTHER",
        })
        .collect();
    format!("[{}]", names.join(" "))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn pair(alg: &'static rcgen::SignatureAlgorithm) -> (String, String) {
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["example.com".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn matching_pairs_pass() {
        for alg in [
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &rcgen::PKCS_ECDSA_P384_SHA384,
            &rcgen::PKCS_ED25519,
        ] {
            let (c, k) = pair(alg);
            check_key_pair(c.as_bytes(), k.as_bytes()).unwrap();
        }
    }

    #[test]
    fn mismatches_fail() {
        let (c1, _) = pair(&rcgen::PKCS_ECDSA_P256_SHA256);
        let (_, k2) = pair(&rcgen::PKCS_ECDSA_P256_SHA256);
        assert_eq!(
            check_key_pair(c1.as_bytes(), k2.as_bytes()).unwrap_err(),
            MISMATCH
        );
        let (_, k3) = pair(&rcgen::PKCS_ED25519);
        assert_eq!(
            check_key_pair(c1.as_bytes(), k3.as_bytes()).unwrap_err(),
            TYPE_MISMATCH
        );
        let (c4, k4) = pair(&rcgen::PKCS_ED25519);
        let (_, k5) = pair(&rcgen::PKCS_ED25519);
        assert_eq!(
            check_key_pair(c4.as_bytes(), k5.as_bytes()).unwrap_err(),
            MISMATCH
        );
        let (_, k6) = pair(&rcgen::PKCS_ECDSA_P384_SHA384);
        assert_eq!(
            check_key_pair(c1.as_bytes(), k6.as_bytes()).unwrap_err(),
            MISMATCH
        );
        assert!(check_key_pair(c4.as_bytes(), k4.as_bytes()).is_ok());
    }

    /// The SEC1 `ECPrivateKey` inside a PKCS#8 key, as PEM.
    fn sec1_pem(pkcs8_der: &[u8]) -> String {
        let info = PrivateKeyInfoRef::from_der(pkcs8_der).unwrap();
        format!(
            "-----BEGIN EC PRIVATE KEY-----\n{}\n-----END EC PRIVATE KEY-----\n",
            base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                info.private_key.as_bytes()
            )
        )
    }

    #[test]
    fn sec1_keys_are_read() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["x".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let pem = sec1_pem(&key.serialize_der());
        check_key_pair(cert.pem().as_bytes(), pem.as_bytes()).unwrap();
        let (_, other) = pair(&rcgen::PKCS_ECDSA_P256_SHA256);
        let other = rcgen::KeyPair::from_pem(&other).unwrap().serialize_der();
        assert_eq!(
            check_key_pair(cert.pem().as_bytes(), sec1_pem(&other).as_bytes()).unwrap_err(),
            MISMATCH
        );
        // An EC key for an RSA certificate is of the wrong type; a broken one does not parse.
        assert_eq!(
            check_key_pair(RSA_CERT.as_bytes(), pem.as_bytes()).unwrap_err(),
            TYPE_MISMATCH
        );
        let broken = "-----BEGIN EC PRIVATE KEY-----\nMAA=\n-----END EC PRIVATE KEY-----\n";
        assert_eq!(
            check_key_pair(cert.pem().as_bytes(), broken.as_bytes()).unwrap_err(),
            PARSE_KEY
        );
    }

    const RSA_CERT: &str = include_str!("testdata/rsa-1024.crt");
    const RSA_PKCS8: &str = include_str!("testdata/rsa-1024.pkcs8.key");
    const RSA_PKCS1: &str = include_str!("testdata/rsa-1024.pkcs1.key");
    const RSA_OTHER: &str = include_str!("testdata/rsa-1024-other.pkcs1.key");

    #[test]
    fn rsa_keys_are_compared_by_modulus_and_exponent() {
        // 1024 bits: ring would refuse to load the key; Go and this check compare (n, e).
        check_key_pair(RSA_CERT.as_bytes(), RSA_PKCS8.as_bytes()).unwrap();
        check_key_pair(RSA_CERT.as_bytes(), RSA_PKCS1.as_bytes()).unwrap();
        assert_eq!(
            check_key_pair(RSA_CERT.as_bytes(), RSA_OTHER.as_bytes()).unwrap_err(),
            MISMATCH
        );
        let (ec_cert, ec_key) = pair(&rcgen::PKCS_ECDSA_P256_SHA256);
        assert_eq!(
            check_key_pair(ec_cert.as_bytes(), RSA_PKCS1.as_bytes()).unwrap_err(),
            TYPE_MISMATCH
        );
        assert_eq!(
            check_key_pair(RSA_CERT.as_bytes(), ec_key.as_bytes()).unwrap_err(),
            TYPE_MISMATCH
        );
        // The same number with and without DER's leading zero byte.
        assert_eq!(unsigned(&[0x00, 0xc3, 0x11]), &[0xc3, 0x11]);
        assert_eq!(
            check_rsa(&[0xc3], &[1, 0, 1], b"junk").unwrap_err(),
            PARSE_KEY
        );
    }

    #[test]
    fn not_pem_and_switched_inputs() {
        let (c, k) = pair(&rcgen::PKCS_ECDSA_P256_SHA256);
        assert_eq!(
            check_key_pair(b"hello, not a certificate", k.as_bytes()).unwrap_err(),
            "tls: failed to find any PEM data in certificate input"
        );
        assert_eq!(
            check_key_pair(c.as_bytes(), b"nope").unwrap_err(),
            "tls: failed to find any PEM data in key input"
        );
        assert!(
            check_key_pair(k.as_bytes(), c.as_bytes())
                .unwrap_err()
                .contains("PEM inputs may have been switched")
        );
        assert_eq!(
            check_key_pair(c.as_bytes(), c.as_bytes()).unwrap_err(),
            "tls: found a certificate rather than a key in the PEM for the private key"
        );
        let junk = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(
            check_key_pair(junk.as_bytes(), k.as_bytes())
                .unwrap_err()
                .starts_with("x509: malformed certificate")
        );
    }
}
