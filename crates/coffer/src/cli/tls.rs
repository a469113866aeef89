//! `create secret tls`: checks that the certificate and key files are PEM and that the key
//! belongs to the certificate, as kubectl does with Go's `tls.X509KeyPair` (same messages).
//!
//! Keys: PKCS#8 (RSA, ECDSA P-256/P-384/P-521, Ed25519), PKCS#1 RSA, SEC1 EC. ECDSA and Ed25519
//! keys are loaded with `ring`, which derives the public key from the private one; RSA keys are
//! compared by modulus and exponent, as Go does.

use ring::signature::KeyPair as _;
use rustls_pki_types::pem::{PemObject, SectionKind};
use zeroize::Zeroizing;

const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_EC: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];

const TAG_INTEGER: u8 = 0x02;
const TAG_BIT_STRING: u8 = 0x03;
const TAG_OCTET_STRING: u8 = 0x04;
const TAG_OID: u8 = 0x06;
const TAG_SEQUENCE: u8 = 0x30;
const TAG_CTX0: u8 = 0xa0;
const TAG_CTX1: u8 = 0xa1;

const MISMATCH: &str = "tls: private key does not match public key";
const TYPE_MISMATCH: &str = "tls: private key type does not match public key type";
const PARSE_KEY: &str = "tls: failed to parse private key";

/// The public key a certificate carries.
#[derive(Debug, PartialEq, Eq)]
enum PublicKey {
    Rsa { n: Vec<u8>, e: Vec<u8> },
    Ec { curve: Vec<u8>, point: Vec<u8> },
    Ed25519(Vec<u8>),
}

/// Checks a certificate/key pair as Go's `tls.X509KeyPair` does; the error is Go's message.
pub(crate) fn check_key_pair(cert_pem: &[u8], key_pem: &[u8]) -> Result<(), String> {
    let cert_der = first_certificate(cert_pem)?;
    let key = first_private_key(key_pem)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&cert_der)
        .map_err(|e| format!("x509: malformed certificate: {e}"))?;
    let public = parse_spki(cert.public_key().raw)
        .ok_or_else(|| "tls: unknown public key algorithm".to_owned())?;
    match key.0 {
        SectionKind::RsaPrivateKey => check_rsa_pkcs1(&public, &key.1),
        SectionKind::EcPrivateKey => check_sec1(&public, &key.1),
        _ => check_pkcs8(&public, &key.1),
    }
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

// --- the public key of the certificate -------------------------------------------------------

fn parse_spki(spki: &[u8]) -> Option<PublicKey> {
    let (tag, body, _) = tlv(spki)?;
    expect(tag, TAG_SEQUENCE)?;
    let (tag, alg, rest) = tlv(body)?;
    expect(tag, TAG_SEQUENCE)?;
    let (tag, oid, params) = tlv(alg)?;
    expect(tag, TAG_OID)?;
    let (tag, bits, _) = tlv(rest)?;
    expect(tag, TAG_BIT_STRING)?;
    // The first byte of a BIT STRING counts unused bits; keys use whole bytes.
    let (&unused, key) = bits.split_first()?;
    if unused != 0 {
        return None;
    }
    if oid == OID_RSA {
        let (tag, seq, _) = tlv(key)?;
        expect(tag, TAG_SEQUENCE)?;
        let (tag, n, rest) = tlv(seq)?;
        expect(tag, TAG_INTEGER)?;
        let (tag, e, _) = tlv(rest)?;
        expect(tag, TAG_INTEGER)?;
        Some(PublicKey::Rsa {
            n: strip_zeros(n).to_vec(),
            e: strip_zeros(e).to_vec(),
        })
    } else if oid == OID_EC {
        let (tag, curve, _) = tlv(params)?;
        expect(tag, TAG_OID)?;
        Some(PublicKey::Ec {
            curve: curve.to_vec(),
            point: key.to_vec(),
        })
    } else if oid == OID_ED25519 {
        Some(PublicKey::Ed25519(key.to_vec()))
    } else {
        None
    }
}

// --- the private key --------------------------------------------------------------------------

fn check_pkcs8(public: &PublicKey, der: &[u8]) -> Result<(), String> {
    // PrivateKeyInfo ::= SEQUENCE { version, AlgorithmIdentifier, OCTET STRING privateKey, ... }
    let parsed = (|| {
        let (tag, body, _) = tlv(der)?;
        expect(tag, TAG_SEQUENCE)?;
        let (tag, _version, rest) = tlv(body)?;
        expect(tag, TAG_INTEGER)?;
        let (tag, alg, rest) = tlv(rest)?;
        expect(tag, TAG_SEQUENCE)?;
        let (tag, oid, params) = tlv(alg)?;
        expect(tag, TAG_OID)?;
        let (tag, inner, _) = tlv(rest)?;
        expect(tag, TAG_OCTET_STRING)?;
        Some((oid, params, inner))
    })();
    let (oid, params, inner) = parsed.ok_or(PARSE_KEY)?;
    match public {
        PublicKey::Rsa { .. } if oid == OID_RSA => check_rsa_pkcs1(public, inner),
        PublicKey::Ec { curve, point } if oid == OID_EC => {
            let key_curve = tlv(params)
                .filter(|(t, _, _)| *t == TAG_OID)
                .map(|(_, c, _)| c);
            if key_curve.is_some_and(|c| c != curve.as_slice()) {
                return Err(MISMATCH.into());
            }
            check_ec_pkcs8(curve, point, der, inner)
        }
        PublicKey::Ed25519(pk) if oid == OID_ED25519 => {
            let pair = ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
                .map_err(|_| PARSE_KEY)?;
            if pair.public_key().as_ref() == pk.as_slice() {
                Ok(())
            } else {
                Err(MISMATCH.into())
            }
        }
        _ if [OID_RSA, OID_EC, OID_ED25519].contains(&oid) => Err(TYPE_MISMATCH.into()),
        _ => Err(PARSE_KEY.into()),
    }
}

/// An RSA key (PKCS#1 `RSAPrivateKey`): modulus and exponent must be the certificate's.
fn check_rsa_pkcs1(public: &PublicKey, der: &[u8]) -> Result<(), String> {
    let parsed = (|| {
        let (tag, body, _) = tlv(der)?;
        expect(tag, TAG_SEQUENCE)?;
        let (tag, _version, rest) = tlv(body)?;
        expect(tag, TAG_INTEGER)?;
        let (tag, n, rest) = tlv(rest)?;
        expect(tag, TAG_INTEGER)?;
        let (tag, e, rest) = tlv(rest)?;
        expect(tag, TAG_INTEGER)?;
        // The private exponent must be there too.
        let (tag, _d, _) = tlv(rest)?;
        expect(tag, TAG_INTEGER)?;
        Some((strip_zeros(n), strip_zeros(e)))
    })();
    let (n, e) = parsed.ok_or(PARSE_KEY)?;
    match public {
        PublicKey::Rsa { n: pn, e: pe } => {
            if n == pn.as_slice() && e == pe.as_slice() {
                Ok(())
            } else {
                Err(MISMATCH.into())
            }
        }
        _ => Err(TYPE_MISMATCH.into()),
    }
}

/// An SEC1 `ECPrivateKey`: wrapped into PKCS#8 for the certificate's curve and checked.
fn check_sec1(public: &PublicKey, der: &[u8]) -> Result<(), String> {
    let PublicKey::Ec { curve, point } = public else {
        // Still tell a malformed key from a key of the wrong type.
        return match tlv(der) {
            Some((TAG_SEQUENCE, _, _)) => Err(TYPE_MISMATCH.into()),
            _ => Err(PARSE_KEY.into()),
        };
    };
    // ECPrivateKey ::= SEQUENCE { version 1, privateKey OCTET STRING, [0] params, [1] publicKey }
    let key_curve = (|| {
        let (tag, body, _) = tlv(der)?;
        expect(tag, TAG_SEQUENCE)?;
        let (tag, _version, rest) = tlv(body)?;
        expect(tag, TAG_INTEGER)?;
        let (tag, _key, mut rest) = tlv(rest)?;
        expect(tag, TAG_OCTET_STRING)?;
        let mut curve = None;
        while let Some((tag, content, next)) = tlv(rest) {
            if tag == TAG_CTX0 {
                let (t, oid, _) = tlv(content)?;
                expect(t, TAG_OID)?;
                curve = Some(oid);
            }
            rest = next;
        }
        Some(curve)
    })()
    .ok_or(PARSE_KEY)?;
    if key_curve.is_some_and(|c| c != curve.as_slice()) {
        return Err(MISMATCH.into());
    }
    // PrivateKeyInfo { 0, { id-ecPublicKey, curve }, OCTET STRING { ECPrivateKey } }
    let mut alg = der_tlv(TAG_OID, OID_EC);
    alg.extend(der_tlv(TAG_OID, curve));
    let mut body = der_tlv(TAG_INTEGER, &[0]);
    body.extend(der_tlv(TAG_SEQUENCE, &alg));
    body.extend(der_tlv(TAG_OCTET_STRING, der));
    let pkcs8 = Zeroizing::new(der_tlv(TAG_SEQUENCE, &body));
    body.iter_mut().for_each(|b| *b = 0);
    check_ec_pkcs8(curve, point, &pkcs8, der)
}

/// `pkcs8` is the whole PrivateKeyInfo, `sec1` the ECPrivateKey inside it.
fn check_ec_pkcs8(curve: &[u8], point: &[u8], pkcs8: &[u8], sec1: &[u8]) -> Result<(), String> {
    let alg = if curve == OID_P256 {
        &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING
    } else if curve == OID_P384 {
        &ring::signature::ECDSA_P384_SHA384_ASN1_SIGNING
    } else {
        // A curve ring does not implement (P-521): compare the public key the key file embeds.
        return match embedded_ec_public_key(sec1) {
            Some(pk) if pk == point => Ok(()),
            Some(_) => Err(MISMATCH.into()),
            None => Err(PARSE_KEY.into()),
        };
    };
    let rng = ring::rand::SystemRandom::new();
    let pair =
        ring::signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8, &rng).map_err(|_| PARSE_KEY)?;
    if pair.public_key().as_ref() == point {
        Ok(())
    } else {
        Err(MISMATCH.into())
    }
}

fn embedded_ec_public_key(sec1: &[u8]) -> Option<&[u8]> {
    let (tag, body, _) = tlv(sec1)?;
    expect(tag, TAG_SEQUENCE)?;
    let (_, _, mut rest) = tlv(body)?;
    while let Some((tag, content, next)) = tlv(rest) {
        if tag == TAG_CTX1 {
            let (t, bits, _) = tlv(content)?;
            expect(t, TAG_BIT_STRING)?;
            return bits.split_first().map(|(_, k)| k);
        }
        rest = next;
    }
    None
}

// --- minimal DER --------------------------------------------------------------------------------

/// Splits one DER TLV off `input`: (tag, content, rest). Single-byte tags only.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

fn expect(tag: u8, want: u8) -> Option<()> {
    (tag == want).then_some(())
}

fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .iter()
            .copied()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let i = b.iter().position(|x| *x != 0).unwrap_or(b.len());
    &b[i..]
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

    #[test]
    fn sec1_keys_are_read() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["x".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        // PKCS#8 -> SEC1: the OCTET STRING inside PrivateKeyInfo, with its [0] curve added.
        let der = key.serialize_der();
        let (_, body, _) = tlv(&der).unwrap();
        let (_, _, rest) = tlv(body).unwrap();
        let (_, _, rest) = tlv(rest).unwrap();
        let (_, sec1, _) = tlv(rest).unwrap();
        let pem = format!(
            "-----BEGIN EC PRIVATE KEY-----\n{}\n-----END EC PRIVATE KEY-----\n",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, sec1)
        );
        check_key_pair(cert.pem().as_bytes(), pem.as_bytes()).unwrap();
        let (_, other) = pair(&rcgen::PKCS_ECDSA_P256_SHA256);
        let other = rcgen::KeyPair::from_pem(&other).unwrap().serialize_der();
        let (_, body, _) = tlv(&other).unwrap();
        let (_, _, rest) = tlv(body).unwrap();
        let (_, _, rest) = tlv(rest).unwrap();
        let (_, sec1, _) = tlv(rest).unwrap();
        let pem = format!(
            "-----BEGIN EC PRIVATE KEY-----\n{}\n-----END EC PRIVATE KEY-----\n",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, sec1)
        );
        assert_eq!(
            check_key_pair(cert.pem().as_bytes(), pem.as_bytes()).unwrap_err(),
            MISMATCH
        );
    }

    #[test]
    fn rsa_pkcs1_compares_modulus_and_exponent() {
        // A certificate SPKI and a PKCS#1 key built by hand with the same (n, e).
        let n = [0x00, 0xc3, 0x11, 0x22, 0x33];
        let e = [0x01, 0x00, 0x01];
        let mut rsa_pub = der_tlv(TAG_INTEGER, &n);
        rsa_pub.extend(der_tlv(TAG_INTEGER, &e));
        let rsa_pub = der_tlv(TAG_SEQUENCE, &rsa_pub);
        let mut bits = vec![0u8];
        bits.extend(&rsa_pub);
        let mut alg = der_tlv(TAG_OID, OID_RSA);
        alg.extend([0x05, 0x00]);
        let mut spki = der_tlv(TAG_SEQUENCE, &alg);
        spki.extend(der_tlv(TAG_BIT_STRING, &bits));
        let public = parse_spki(&der_tlv(TAG_SEQUENCE, &spki)).unwrap();
        let key = |n: &[u8]| {
            let mut k = der_tlv(TAG_INTEGER, &[0]);
            k.extend(der_tlv(TAG_INTEGER, n));
            k.extend(der_tlv(TAG_INTEGER, &e));
            k.extend(der_tlv(TAG_INTEGER, &[0x42]));
            der_tlv(TAG_SEQUENCE, &k)
        };
        assert!(check_rsa_pkcs1(&public, &key(&n)).is_ok());
        assert_eq!(
            check_rsa_pkcs1(&public, &key(&[0x00, 0xc3, 0x11, 0x22, 0x34])).unwrap_err(),
            MISMATCH
        );
        assert_eq!(check_rsa_pkcs1(&public, b"junk").unwrap_err(), PARSE_KEY);
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
