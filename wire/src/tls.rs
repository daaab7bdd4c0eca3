//! rustls server configuration for the fleet: TLS 1.2+, ALPN `h2` / `http/1.1`, a client
//! certificate from a trusted fleet CA made mandatory (or server-auth only, for a separate
//! enrollment listener), the aws-lc-rs provider passed explicitly; plus PEM loading for
//! bring-your-own server certificates and a handle that lets a running server swap its
//! configuration (after a CA rotation, or when an overlap ends).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use rustls::RootCertStore;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use time::OffsetDateTime;

use crate::pki::{Pki, PkiError};

/// ALPN protocols offered, in preference order.
pub const ALPN_PROTOCOLS: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Largest PEM file read for certificates or keys; real ones are a few KiB.
const MAX_PEM_FILE_LEN: u64 = 1024 * 1024;

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("TLS: cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// PEM input could not be parsed.
    #[error("TLS: {what} is not valid PEM: {reason}")]
    Pem {
        /// What was being parsed (a path or a description).
        what: String,
        /// The parser's complaint.
        reason: String,
    },
    /// PEM input held no certificate.
    #[error("TLS: {what} contains no certificate")]
    NoCertificates {
        /// What was being parsed.
        what: String,
    },
    /// PEM input held no private key.
    #[error("TLS: {what} contains no private key")]
    NoPrivateKey {
        /// What was being parsed.
        what: String,
    },
    /// No CA to verify client certificates against.
    #[error("TLS: no trusted fleet CA to verify client certificates against")]
    NoTrustAnchors,
    /// A CA certificate could not be used as a trust anchor.
    #[error("TLS: CA certificate unusable as a trust anchor: {0}")]
    BadTrustAnchor(#[source] rustls::Error),
    /// The client verifier could not be built.
    #[error("TLS: cannot build the client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// rustls refused the configuration (e.g. the key does not match the certificate).
    #[error("TLS: invalid server configuration: {0}")]
    Config(#[source] rustls::Error),
    /// The PKI could not provide its material.
    #[error(transparent)]
    Pki(#[from] PkiError),
}

/// The crypto provider used everywhere: aws-lc-rs, passed explicitly so no process-wide
/// default has to be installed.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Builds the server configuration.
///
/// With `require_client_cert`, the handshake fails unless the client presents a certificate
/// that chains to one of `trust_roots` and is currently valid; without it (enrollment
/// listener), no client certificate is asked for and `trust_roots` is unused.
pub fn server_config(
    trust_roots: &[CertificateDer<'static>],
    server_cert_chain: Vec<CertificateDer<'static>>,
    server_key: PrivateKeyDer<'static>,
    require_client_cert: bool,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Config)?;
    let builder = if require_client_cert {
        if trust_roots.is_empty() {
            return Err(TlsError::NoTrustAnchors);
        }
        let mut roots = RootCertStore::empty();
        for root in trust_roots {
            roots.add(root.clone()).map_err(TlsError::BadTrustAnchor)?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build()?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let mut config = builder.with_single_cert(server_cert_chain, server_key).map_err(TlsError::Config)?;
    config.alpn_protocols = ALPN_PROTOCOLS.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// Builds the server configuration from the fleet PKI as of `now`: its server certificate
/// chain and key, and the CAs trusted at `now`.
pub fn server_config_from_pki(
    pki: &Pki,
    now: OffsetDateTime,
    require_client_cert: bool,
) -> Result<Arc<ServerConfig>, TlsError> {
    let roots = pki.trust_roots(now);
    if require_client_cert && roots.is_empty() {
        return Err(TlsError::Pki(PkiError::NoTrustedCa { at: now }));
    }
    server_config(&roots, pki.server_cert_chain(now), pki.server_key()?, require_client_cert)
}

/// An operator-supplied server certificate (e.g. publicly trusted) used instead of the auto-issued one.
/// The files are read again whenever the configuration is rebuilt, so a renewed certificate is picked up
/// without a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerIdentityFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
}

/// [`server_config_from_pki`], but presenting `identity` when given. Client certificates are still
/// verified against the fleet CAs trusted at `now`.
pub fn server_config_for(
    pki: &Pki,
    now: OffsetDateTime,
    identity: Option<&ServerIdentityFiles>,
    require_client_cert: bool,
) -> Result<Arc<ServerConfig>, TlsError> {
    let Some(files) = identity else {
        return server_config_from_pki(pki, now, require_client_cert);
    };
    let roots = pki.trust_roots(now);
    if require_client_cert && roots.is_empty() {
        return Err(TlsError::Pki(PkiError::NoTrustedCa { at: now }));
    }
    let chain = load_cert_chain_pem(&files.cert)?;
    let key = load_private_key_pem(&files.key)?;
    server_config(&roots, chain, key, require_client_cert)
}

fn read_pem_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    use std::io::Read;
    let io = |source| TlsError::Io { path: path.to_path_buf(), source };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut buf = Vec::new();
    file.take(MAX_PEM_FILE_LEN + 1).read_to_end(&mut buf).map_err(io)?;
    if u64::try_from(buf.len()).unwrap_or(u64::MAX) > MAX_PEM_FILE_LEN {
        return Err(TlsError::Pem {
            what: path.display().to_string(),
            reason: format!("larger than {MAX_PEM_FILE_LEN} bytes"),
        });
    }
    Ok(buf)
}

/// Parses every certificate in PEM text (a chain or a CA bundle); at least one is required.
/// `what` names the input in errors.
pub fn parse_certs_pem(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let mut certs = Vec::new();
    for item in CertificateDer::pem_slice_iter(pem) {
        certs.push(item.map_err(|e| TlsError::Pem { what: what.to_owned(), reason: e.to_string() })?);
    }
    if certs.is_empty() {
        return Err(TlsError::NoCertificates { what: what.to_owned() });
    }
    Ok(certs)
}

/// Parses the first private key (PKCS#8, SEC1 or PKCS#1) in PEM text.
pub fn parse_private_key_pem(pem: &[u8], what: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoPrivateKey { what: what.to_owned() },
        other => TlsError::Pem { what: what.to_owned(), reason: other.to_string() },
    })
}

/// Loads a certificate chain (leaf first) from a PEM file: for bring-your-own server
/// certificates.
pub fn load_cert_chain_pem(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    parse_certs_pem(&read_pem_file(path)?, &path.display().to_string())
}

/// Loads a private key from a PEM file: for bring-your-own server certificates.
pub fn load_private_key_pem(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    parse_private_key_pem(&read_pem_file(path)?, &path.display().to_string())
}

/// A server configuration that can be replaced while the server runs. Each new connection
/// uses the configuration current at its accept; established connections keep theirs.
///
/// Replace it after [`Pki::rotate`], and periodically (say every minute) so a CA whose overlap
/// has ended drops out of the trust set on time.
#[derive(Clone)]
pub struct TlsConfigHandle(Arc<RwLock<Arc<ServerConfig>>>);

impl TlsConfigHandle {
    /// A handle holding `config`.
    pub fn new(config: Arc<ServerConfig>) -> Self {
        TlsConfigHandle(Arc::new(RwLock::new(config)))
    }

    /// The current configuration.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.0.read().clone()
    }

    /// Replaces the configuration for connections accepted from now on.
    pub fn replace(&self, config: Arc<ServerConfig>) {
        *self.0.write() = config;
    }
}

impl From<Arc<ServerConfig>> for TlsConfigHandle {
    fn from(config: Arc<ServerConfig>) -> Self {
        TlsConfigHandle::new(config)
    }
}

impl std::fmt::Debug for TlsConfigHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsConfigHandle")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_parsing_errors_are_typed() {
        assert!(matches!(parse_certs_pem(b"", "empty"), Err(TlsError::NoCertificates { .. })));
        assert!(matches!(parse_private_key_pem(b"hello", "junk"), Err(TlsError::NoPrivateKey { .. })));
        assert!(parse_certs_pem(b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n", "bad").is_err());
    }

    #[test]
    fn mandatory_client_auth_needs_roots() -> Result<(), Box<dyn std::error::Error>> {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
        let chain = vec![ck.cert.der().clone()];
        let key = PrivateKeyDer::try_from(ck.signing_key.serialize_der())?;
        assert!(matches!(server_config(&[], chain.clone(), key.clone_key(), true), Err(TlsError::NoTrustAnchors)));
        let config = server_config(&[], chain, key, false)?;
        assert_eq!(config.alpn_protocols, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
        Ok(())
    }
}
