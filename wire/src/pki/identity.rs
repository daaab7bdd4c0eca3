//! Reading a peer's identity back out of its certificate: the role from the single
//! `hwledger:` SAN URI, plus fingerprint, validity and serial. Total over hostile DER.

use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::error::PkiError;
use super::fingerprint::Fingerprint;
use super::role::Role;

/// Largest certificate DER accepted for parsing. Fleet certificates are well under 1 KiB;
/// the bound keeps a hostile peer from making us parse megabytes.
pub const MAX_CERT_DER_LEN: usize = 16 * 1024;

/// Who a certificate says its holder is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PeerIdentity {
    /// The role and name from the `hwledger:<role>:<name>` SAN URI.
    pub role: Role,
    /// SHA-256 of the certificate DER.
    pub fingerprint: Fingerprint,
    /// Start of validity.
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    /// End of validity.
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    /// The serial number, lowercase hex without leading zero bytes.
    pub serial: String,
}

/// Parses a certificate and returns the identity it carries.
///
/// Exactly one `hwledger:` SAN URI is required; none is [`PkiError::NoRole`], several is
/// [`PkiError::AmbiguousRole`]. This does not verify the signature or the validity period: the
/// TLS handshake already did, against the fleet CAs.
pub fn identity_from_cert_der(der: &[u8]) -> Result<PeerIdentity, PkiError> {
    let cert = parse_cert(der)?;
    let role = role_of(&cert)?;
    let validity = cert.validity();
    Ok(PeerIdentity {
        role,
        fingerprint: Fingerprint::of_der(der),
        not_before: validity.not_before.to_datetime(),
        not_after: validity.not_after.to_datetime(),
        serial: serial_hex(cert.raw_serial()),
    })
}

/// Checks that the first certificate of `cert_pem` is for the private key `key_pem` (same public key)
/// and returns its identity: what a device does with the certificate it receives at enrollment.
pub fn check_cert_matches_key(cert_pem: &str, key_pem: &str) -> Result<PeerIdentity, PkiError> {
    use rcgen::PublicKeyData as _;
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let der = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .next()
        .ok_or_else(|| PkiError::MalformedCertificate { reason: "no PEM certificate".into() })?
        .map_err(|e| PkiError::MalformedCertificate { reason: e.to_string() })?;
    let key = rcgen::KeyPair::from_pem(key_pem).map_err(|e| PkiError::MalformedKey { reason: e.to_string() })?;
    let cert = parse_cert(der.as_ref())?;
    if cert.public_key().subject_public_key.data.as_ref() != key.der_bytes() {
        return Err(PkiError::KeyMismatch);
    }
    identity_from_cert_der(der.as_ref())
}

/// Parses DER into a certificate, refusing trailing bytes and oversized input.
pub(crate) fn parse_cert(der: &[u8]) -> Result<X509Certificate<'_>, PkiError> {
    if der.len() > MAX_CERT_DER_LEN {
        return Err(PkiError::MalformedCertificate {
            reason: format!("{} bytes exceeds the {MAX_CERT_DER_LEN}-byte limit", der.len()),
        });
    }
    let (rest, cert) =
        X509Certificate::from_der(der).map_err(|e| PkiError::MalformedCertificate { reason: e.to_string() })?;
    if !rest.is_empty() {
        return Err(PkiError::MalformedCertificate {
            reason: format!("{} trailing bytes after the certificate", rest.len()),
        });
    }
    Ok(cert)
}

/// The role carried by a parsed certificate.
fn role_of(cert: &X509Certificate<'_>) -> Result<Role, PkiError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| PkiError::MalformedCertificate { reason: format!("subject alternative name: {e}") })?;
    let Some(san) = san else {
        return Err(PkiError::NoRole);
    };
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) if Role::is_role_uri(u) => Some(*u),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [] => Err(PkiError::NoRole),
        [one] => Role::from_uri(one),
        many => Err(PkiError::AmbiguousRole { count: many.len() }),
    }
}

/// Serial bytes as lowercase hex, without the sign-padding zero bytes DER may add.
pub(crate) fn serial_hex(raw: &[u8]) -> String {
    let start = raw.iter().position(|b| *b != 0).unwrap_or(raw.len().saturating_sub(1));
    hex::encode(raw.get(start..).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for input in [&b""[..], &b"\x30"[..], &b"\x30\x82\xff\xff"[..], &[0u8; 100][..], &[0x30u8; 64][..]] {
            assert!(matches!(identity_from_cert_der(input), Err(PkiError::MalformedCertificate { .. })));
        }
        let huge = vec![0x30u8; MAX_CERT_DER_LEN + 1];
        assert!(identity_from_cert_der(&huge).is_err());
    }

    #[test]
    fn serial_hex_strips_padding() {
        assert_eq!(serial_hex(&[0x00, 0x80, 0x01]), "8001");
        assert_eq!(serial_hex(&[0x00]), "00");
        assert_eq!(serial_hex(&[]), "");
        assert_eq!(serial_hex(&[0x7f, 0x00]), "7f00");
    }
}
