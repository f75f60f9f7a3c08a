//! TLS clients, rustls with `ring`:
//! - the HTTPS transport to a remote incusd: a client certificate for authentication, and
//!   the server certificate pinned (incusd presents a self-signed certificate; trusting a
//!   CA would be both wrong and weaker);
//! - the checks through the edge of an environment that terminates TLS ([`edge_check`]).

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

/// Accepts exactly one server certificate, byte for byte, or (`cert: None`, the edge's
/// checks) any; the handshake's signatures are verified either way.
#[derive(Debug)]
struct Pinned {
    cert: Option<CertificateDer<'static>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.cert.as_ref().is_none_or(|c| c.as_ref() == end_entity.as_ref()) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "the server presented a certificate other than the pinned `server_cert`".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The client configuration: the pinned server certificate and our client certificate.
/// Errors name the file and what is wrong with it.
pub(crate) fn client_config(
    client_cert: &Path,
    client_key: &Path,
    server_cert: &Path,
) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(client_cert)
        .and_then(Iterator::collect)
        .map_err(|e| format!("client certificate `{}`: {e}", client_cert.display()))?;
    if certs.is_empty() {
        return Err(format!("client certificate `{}` holds no certificate", client_cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(client_key)
        .map_err(|e| format!("client key `{}`: {e}", client_key.display()))?;
    let pinned = CertificateDer::from_pem_file(server_cert)
        .map_err(|e| format!("server certificate `{}`: {e}", server_cert.display()))?;
    let verifier =
        Pinned { cert: Some(pinned), algorithms: provider.signature_verification_algorithms };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(certs, key)
        .map_err(|e| format!("client certificate and key do not match: {e}"))?;
    Ok(config)
}

/// The client configuration of the checks through the edge over HTTPS: any server
/// certificate. A check asks whether the edge routes a host's requests to the color it
/// should, over the path clients take (an environment with `tls` may answer plain HTTP
/// with a redirect only); the certificates are the edge's own, from the manifests'
/// `tls.cert_dir` on the edge's machine, which the agent does not hold. Built once.
pub(crate) fn edge_check() -> Result<Arc<rustls::ClientConfig>, String> {
    static CONFIG: std::sync::OnceLock<Result<Arc<rustls::ClientConfig>, String>> =
        std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let verifier =
                Pinned { cert: None, algorithms: provider.signature_verification_algorithms };
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("TLS setup: {e}"))?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_no_client_auth();
            Ok(Arc::new(config))
        })
        .clone()
}
