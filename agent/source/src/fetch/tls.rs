//! TLS for HTTPS remotes: rustls with `ring` (the provider the Incus client uses too),
//! HTTP/1.1, and whom the agent trusts:
//!
//! * without `source.ca_file`, the system's certificate authorities (the platform
//!   verifier reads the host's CA store, `ca-certificates` on Debian);
//! * with it, only the certificates of that file (as git's `http.sslCAInfo`: the file
//!   replaces the system's CAs). A certificate of the file that the forge presents
//!   itself, byte for byte, is accepted for the names it carries even when it is marked as
//!   a CA (a self-signed forge certificate made with `openssl req -x509` is): listing the
//!   forge's own certificate pins it, as it did with libcurl. Its dates still count:
//!   webpki checks them before anything else, and an expired or not yet valid certificate
//!   is refused whatever the file says.

use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use rustls_platform_verifier::BuilderVerifierExt;

/// The client configuration for a plain `http://` remote: no TLS is expected, so no CA
/// is read (the system's store costs several milliseconds per fetch); should a server send
/// the client to https anyway, every certificate is refused.
pub(super) fn plain_http_config() -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = builder(&provider)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Verifier { trust: Trust::Nothing, provider }))
        .with_no_client_auth();
    Ok(config)
}

/// The client configuration for a fetch: the CA file's certificates (`Some`) or the
/// system's. The error says what is wrong with the file, for `FetchError::Remote`.
pub(super) fn client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = builder(&provider)?;
    let mut config = match ca_file {
        None => builder
            .with_platform_verifier()
            .map_err(|e| format!("reading the system's CA certificates: {e}"))?
            .with_no_client_auth(),
        Some(path) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Verifier::ca_file(path, provider)?))
            .with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A client configuration over `provider` with its safe protocol versions, whose verifier
/// is still to choose.
fn builder(
    provider: &Arc<CryptoProvider>,
) -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier>, String> {
    rustls::ClientConfig::builder_with_provider(Arc::clone(provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))
}

/// Whether a verification error is about the certificate's validity dates (webpki
/// checks them first, so any other error means the dates are fine).
fn about_dates(e: &rustls::Error) -> bool {
    use rustls::CertificateError as C;
    matches!(
        e,
        rustls::Error::InvalidCertificate(
            C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. }
        )
    )
}

/// Whom the agent's own verifier trusts (the system's CAs are the platform verifier's).
#[derive(Debug)]
enum Trust {
    /// Nobody: a remote configured as plain http.
    Nothing,
    /// The certificates of `source.ca_file`: as authorities, and each as the server's own
    /// certificate when the server presents exactly it.
    CaFile { webpki: Arc<WebPkiServerVerifier>, certs: Vec<CertificateDer<'static>> },
}

/// A server certificate verifier over a [`Trust`]; signatures are checked with the
/// provider's algorithms.
#[derive(Debug)]
struct Verifier {
    trust: Trust,
    provider: Arc<CryptoProvider>,
}

impl Verifier {
    /// Trusts the certificates of the file at `path`.
    fn ca_file(path: &Path, provider: Arc<CryptoProvider>) -> Result<Verifier, String> {
        let bad = |why: String| format!("source.ca_file `{}`: {why}", path.display());
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .and_then(Iterator::collect)
            .map_err(|e| bad(e.to_string()))?;
        let mut roots = rustls::RootCertStore::empty();
        let (_, ignored) = roots.add_parsable_certificates(certs.iter().cloned());
        if roots.is_empty() {
            return Err(bad(format!(
                "holds no usable PEM certificate ({} found, {ignored} unreadable)",
                certs.len()
            )));
        }
        let webpki =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                .build()
                .map_err(|e| bad(e.to_string()))?;
        Ok(Verifier { trust: Trust::CaFile { webpki, certs }, provider })
    }
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Trust::CaFile { webpki, certs } = &self.trust else {
            return Err(rustls::Error::General(
                "TLS from a remote configured as plain http: use its https:// URL (and \
                 source.ca_file if needed)"
                    .into(),
            ));
        };
        let chained = webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp, now);
        match chained {
            Err(e)
                if !about_dates(&e) && certs.iter().any(|c| c.as_ref() == end_entity.as_ref()) =>
            {
                let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
                rustls::client::verify_server_name(&parsed, server_name)?;
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
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
            &self.provider.signature_verification_algorithms,
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
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Self-signed for `IP:127.0.0.1`, marked `CA:TRUE` as `openssl req -x509` makes
    /// them, valid from 2026-12-06 to 2126-11-12.
    const FORGE: &str = include_str!("testdata/forge.crt");
    /// Another such certificate, for the same address.
    const OTHER: &str = include_str!("testdata/other.crt");

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).expect("test certificate")
    }

    fn verifier(ca_file: &str) -> Result<Verifier, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, ca_file).expect("write CA file");
        Verifier::ca_file(&path, Arc::new(rustls::crypto::ring::default_provider()))
    }

    #[test]
    fn a_ca_file_trusts_the_forges_own_certificate_for_its_names_and_dates_only() {
        const JAN_2027: u64 = 1_798_761_600;
        const JAN_2127: u64 = 4_954_435_200;
        let both = format!("{FORGE}{OTHER}");
        // (CA file, presented certificate, server name, now, accepted)
        let cases = [
            (FORGE, FORGE, "127.0.0.1", JAN_2027, true),
            (both.as_str(), OTHER, "127.0.0.1", JAN_2027, true),
            (FORGE, FORGE, "forge.example", JAN_2027, false),
            (FORGE, FORGE, "127.0.0.1", JAN_2127, false),
            (FORGE, OTHER, "127.0.0.1", JAN_2027, false),
        ];
        for (i, (file, presented, name, now, accepted)) in cases.into_iter().enumerate() {
            let name = ServerName::try_from(name.to_string()).expect("server name");
            let now = UnixTime::since_unix_epoch(std::time::Duration::from_secs(now));
            let verdict = verifier(file).and_then(|v| {
                v.verify_server_cert(&der(presented), &[], &name, &[], now)
                    .map_err(|e| e.to_string())
            });
            assert_eq!(verdict.is_ok(), accepted, "case {i}: {verdict:?}");
        }
    }

    #[test]
    fn a_plain_http_remote_trusts_no_certificate() {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let refuse = Verifier { trust: Trust::Nothing, provider };
        let name = ServerName::try_from("127.0.0.1").expect("server name");
        let now = UnixTime::since_unix_epoch(std::time::Duration::from_secs(1_798_761_600));
        let e = refuse.verify_server_cert(&der(FORGE), &[], &name, &[], now).expect_err("refused");
        assert!(e.to_string().contains("configured as plain http"), "{e}");
        assert!(plain_http_config().is_ok());
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused_naming_the_file() {
        for text in ["", "not a certificate\n"] {
            let e = verifier(text).expect_err("no certificate");
            assert!(e.starts_with("source.ca_file `") && e.contains("no usable PEM"), "{e}");
        }
    }
}
