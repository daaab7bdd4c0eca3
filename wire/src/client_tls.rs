//! The HTTPS client side of the fleet: a reqwest client that trusts only the fleet CA bundle
//! (no system roots) and presents a client certificate when given one. Used by agents,
//! operators, auditors and the tests.

use std::time::Duration;

/// Why a fleet client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientTlsError {
    /// The CA bundle has no certificate in it.
    #[error("the CA bundle contains no certificate")]
    EmptyCaBundle,
    /// The CA bundle could not be parsed.
    #[error("the CA bundle is not valid PEM: {0}")]
    BadCaBundle(#[source] reqwest::Error),
    /// The client certificate or key could not be used.
    #[error("the client certificate or key is unusable (PEM certificate + PKCS#8 key expected): {0}")]
    BadIdentity(#[source] reqwest::Error),
    /// The client PEM holds no private key, or no certificate.
    #[error("the client identity needs a PEM certificate and a PEM private key")]
    IncompleteIdentity,
    /// reqwest refused the configuration.
    #[error("cannot build the HTTPS client: {0}")]
    Build(#[source] reqwest::Error),
}

/// A client builder trusting only the CA certificates in `ca_pem`, presenting
/// `identity = (cert_pem, key_pem)` if given, with TLS 1.2 as the floor, HTTPS only, and
/// `timeout` for each whole request (connect included). Add options (e.g. `http1_only`)
/// before `build()`.
pub fn client_builder(
    ca_pem: &[u8],
    identity: Option<(&[u8], &[u8])>,
    timeout: Duration,
) -> Result<reqwest::ClientBuilder, ClientTlsError> {
    Ok(streaming_client_builder(ca_pem, identity, timeout)?.timeout(timeout))
}

/// [`client_builder`] without a whole-request timeout, only `connect_timeout`: for clients that hold
/// long-lived responses (the SSE event stream) and set a timeout per ordinary request instead.
pub fn streaming_client_builder(
    ca_pem: &[u8],
    identity: Option<(&[u8], &[u8])>,
    connect_timeout: Duration,
) -> Result<reqwest::ClientBuilder, ClientTlsError> {
    let roots = reqwest::Certificate::from_pem_bundle(ca_pem).map_err(ClientTlsError::BadCaBundle)?;
    if roots.is_empty() {
        return Err(ClientTlsError::EmptyCaBundle);
    }
    let mut builder = reqwest::Client::builder()
        .tls_backend_rustls()
        .tls_certs_only(roots)
        .tls_version_min(reqwest::tls::Version::TLS_1_2)
        .https_only(true)
        .connect_timeout(connect_timeout);
    if let Some((cert_pem, key_pem)) = identity {
        if !contains_pem_block(cert_pem, b"CERTIFICATE") || !contains_pem_block(key_pem, b"PRIVATE KEY") {
            return Err(ClientTlsError::IncompleteIdentity);
        }
        let mut pem = Vec::with_capacity(cert_pem.len() + key_pem.len() + 1);
        pem.extend_from_slice(cert_pem);
        if !pem.ends_with(b"\n") {
            pem.push(b'\n');
        }
        pem.extend_from_slice(key_pem);
        let id = reqwest::Identity::from_pem(&pem).map_err(ClientTlsError::BadIdentity)?;
        builder = builder.identity(id);
    }
    Ok(builder)
}

/// [`client_builder`] built with its defaults (HTTP/2 via ALPN when the server offers it).
pub fn build_client(
    ca_pem: &[u8],
    identity: Option<(&[u8], &[u8])>,
    timeout: Duration,
) -> Result<reqwest::Client, ClientTlsError> {
    client_builder(ca_pem, identity, timeout)?.build().map_err(ClientTlsError::Build)
}

/// Whether `pem` has a `-----BEGIN ...<label>-----` line (label matched as a suffix, so
/// `PRIVATE KEY` also matches `EC PRIVATE KEY`).
fn contains_pem_block(pem: &[u8], label: &[u8]) -> bool {
    pem.split(|b| *b == b'\n').any(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        line.strip_prefix(b"-----BEGIN ")
            .and_then(|rest| rest.strip_suffix(b"-----"))
            .is_some_and(|l| l.ends_with(label))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_inputs() {
        assert!(matches!(build_client(b"", None, Duration::from_secs(1)), Err(ClientTlsError::EmptyCaBundle)));
        assert!(
            build_client(b"-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n", None, Duration::from_secs(1))
                .is_err()
        );
    }

    #[test]
    fn pem_block_detection() {
        assert!(contains_pem_block(b"-----BEGIN CERTIFICATE-----\nAA\n", b"CERTIFICATE"));
        assert!(contains_pem_block(b"x\r\n-----BEGIN EC PRIVATE KEY-----\r\n", b"PRIVATE KEY"));
        assert!(!contains_pem_block(b"-----BEGIN PUBLIC KEY-----\n", b"PRIVATE KEY"));
    }
}
