//! libpq's `sslmode` on rustls, and the `tls-server-end-point` channel binding for
//! SCRAM-SHA-256-PLUS.
//!
//! | sslmode | TLS | certificate checked |
//! |---|---|---|
//! | disable | never | – |
//! | allow, prefer | if the server offers it | no |
//! | require | required | no; but if a root certificate file exists, as verify-ca (libpq's rule) |
//! | verify-ca | required | chain to the root certificate |
//! | verify-full | required | chain and host name |

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use crate::conninfo::SslMode;

/// How the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Any certificate (the handshake signature is still checked).
    None,
    /// The chain must lead to a trusted root; the name is not checked.
    Chain,
    /// Chain and host name.
    Full,
}

/// What the connection needs to build a TLS client.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub verify: Verify,
    pub root_cert: Option<PathBuf>,
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// Decides verification from `sslmode` and the root certificate file, as libpq does.
pub fn settings(
    mode: &SslMode,
    root_cert: Option<&Path>,
    client_cert: Option<(&Path, &Path)>,
) -> Result<TlsSettings, String> {
    let root = root_cert.filter(|p| p.exists()).map(Path::to_path_buf);
    let verify = match mode {
        SslMode::VerifyFull => Verify::Full,
        SslMode::VerifyCa => Verify::Chain,
        SslMode::Require if root.is_some() => Verify::Chain,
        _ => Verify::None,
    };
    if verify != Verify::None && root.is_none() {
        return Err(match root_cert {
            Some(p) => format!(
                "sslmode {mode:?} needs the root certificate file {}, which does not exist",
                p.display()
            ),
            None => {
                "this sslmode needs a root certificate: set sslrootcert or PGSSLROOTCERT".into()
            }
        });
    }
    Ok(TlsSettings {
        verify,
        root_cert: root,
        client_cert: client_cert.map(|(c, k)| (c.to_path_buf(), k.to_path_buf())),
    })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the rustls client configuration.
pub fn client_config(s: &TlsSettings) -> Result<ClientConfig, String> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match s.verify {
        Verify::None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider()))),
        Verify::Chain | Verify::Full => {
            let path = s.root_cert.as_ref().ok_or("no root certificate")?;
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("reading root certificates from {}: {e}", path.display()))?
            {
                let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("root certificate in {}: {e}", path.display()))?;
            }
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| e.to_string())?;
            if s.verify == Verify::Full {
                builder.with_webpki_verifier(webpki)
            } else {
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(ChainOnly(webpki)))
            }
        }
    };
    match &s.client_cert {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .and_then(|it| it.collect())
                .map_err(|e| format!("client certificate {}: {e}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("client key {}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("client certificate: {e}"))
        }
    }
}

/// Accepts any certificate but still checks the handshake signatures (sslmode require/prefer
/// without a root certificate: encryption without authentication, as libpq does).
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// verify-ca: the chain must verify; a name mismatch alone is accepted.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The `tls-server-end-point` channel binding data (RFC 5929): a hash of the server's
/// certificate with the hash of its signature algorithm, SHA-256 for MD5 and SHA-1.
/// `None` when the algorithm has no single hash (Ed25519), as libpq also refuses then.
pub fn server_end_point(cert_der: &[u8]) -> Option<Vec<u8>> {
    use sha2::Digest;
    let oid = signature_algorithm_oid(cert_der)?;
    // 1.2.840.113549.1.1.{12,13}: sha384/512WithRSA; 1.2.840.10045.4.3.{3,4}: ecdsa-with-SHA384/512.
    const SHA384: [&[u8]; 2] = [
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c],
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03],
    ];
    const SHA512: [&[u8]; 2] = [
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d],
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04],
    ];
    const ED25519: &[u8] = &[0x2b, 0x65, 0x70];
    if SHA384.contains(&oid) {
        Some(sha2::Sha384::digest(cert_der).to_vec())
    } else if SHA512.contains(&oid) {
        Some(sha2::Sha512::digest(cert_der).to_vec())
    } else if oid == ED25519 || oid == [0x2b, 0x65, 0x71] {
        None
    } else {
        Some(sha2::Sha256::digest(cert_der).to_vec())
    }
}

/// Reads one DER TLV header: (tag, content start, content length).
fn der_header(b: &[u8], at: usize) -> Option<(u8, usize, usize)> {
    let tag = *b.get(at)?;
    let first = *b.get(at + 1)?;
    if first < 0x80 {
        return Some((tag, at + 2, usize::from(first)));
    }
    let n = usize::from(first & 0x7f);
    if n == 0 || n > 4 {
        return None;
    }
    let mut len = 0usize;
    for i in 0..n {
        len = (len << 8) | usize::from(*b.get(at + 2 + i)?);
    }
    Some((tag, at + 2 + n, len))
}

/// The OID of `Certificate.signatureAlgorithm`: the second element of the outer SEQUENCE.
fn signature_algorithm_oid(cert: &[u8]) -> Option<&[u8]> {
    let (tag, body, _) = der_header(cert, 0)?;
    if tag != 0x30 {
        return None;
    }
    let (_, tbs_body, tbs_len) = der_header(cert, body)?;
    let alg_at = tbs_body.checked_add(tbs_len)?;
    let (tag, alg_body, _) = der_header(cert, alg_at)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, oid_body, oid_len) = der_header(cert, alg_body)?;
    if tag != 0x06 {
        return None;
    }
    cert.get(oid_body..oid_body.checked_add(oid_len)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_walker_finds_the_signature_algorithm_and_refuses_garbage() {
        // Certificate SEQUENCE { tbs SEQUENCE { INTEGER 1 }, alg SEQUENCE { OID sha384WithRSA }, BIT STRING }
        let oid = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c];
        let mut alg = vec![0x06, oid.len() as u8];
        alg.extend_from_slice(&oid);
        let mut body = vec![0x30, 3, 0x02, 1, 1, 0x30, alg.len() as u8];
        body.extend_from_slice(&alg);
        body.extend_from_slice(&[0x03, 1, 0]);
        let mut cert = vec![0x30, body.len() as u8];
        cert.extend_from_slice(&body);
        assert_eq!(signature_algorithm_oid(&cert), Some(&oid[..]));
        assert_eq!(server_end_point(&cert).map(|h| h.len()), Some(48));
        for n in 0..cert.len() {
            let _ = server_end_point(&cert[..n]);
        }
        assert_eq!(
            signature_algorithm_oid(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]),
            None
        );
    }

    #[test]
    fn sslmode_rules_follow_libpq() {
        let dir = tempfile::tempdir().expect("tmp");
        let root = dir.path().join("root.crt");
        std::fs::write(&root, "x").expect("write");
        let missing = dir.path().join("missing.crt");
        let v = |m: SslMode, r: &Path| settings(&m, Some(r), None).map(|s| s.verify);
        assert_eq!(v(SslMode::Prefer, &root), Ok(Verify::None));
        assert_eq!(v(SslMode::Require, &missing), Ok(Verify::None));
        assert_eq!(v(SslMode::Require, &root), Ok(Verify::Chain));
        assert_eq!(v(SslMode::VerifyCa, &root), Ok(Verify::Chain));
        assert_eq!(v(SslMode::VerifyFull, &root), Ok(Verify::Full));
        assert!(v(SslMode::VerifyFull, &missing).is_err());
    }
}
