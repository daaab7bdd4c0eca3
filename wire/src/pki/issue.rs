//! Pure certificate construction: keys, serials, the parameters of CA, cross-signed CA,
//! server and role certificates, validity arithmetic, and CSR checking. Nothing here reads the
//! clock or touches the disk.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::ServerName;
use time::{Duration, OffsetDateTime};

use super::error::{PkiError, truncate_for_message};
use super::role::Role;

/// How far back `not_before` is set from "now", so a peer whose clock is a little behind
/// does not see a brand-new certificate as not yet valid.
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::minutes(5);

/// Largest CSR (PEM text) accepted. A P-256 CSR is about 500 bytes; anything near this bound
/// is not a fleet CSR.
pub const MAX_CSR_PEM_LEN: usize = 8 * 1024;

/// Longest certificate lifetime this PKI issues to anyone, as a sanity bound on requests.
pub const MAX_LEAF_VALIDITY: Duration = Duration::days(825);

/// Organisation written into every subject, so `openssl x509 -text` shows whose cert it is.
const ORGANISATION: &str = "hwledger";

/// Generates a fresh ECDSA P-256 key: accepted by rustls/webpki, openssl and every TLS stack.
pub(crate) fn new_key() -> Result<KeyPair, PkiError> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| PkiError::generate("generate an ECDSA P-256 key", e))
}

/// A random 127-bit positive serial (RFC 5280 asks for unpredictable, ≤ 20 octets). The first
/// byte is forced into 0x40..=0x7f so the DER encoding is always exactly 16 bytes.
pub(crate) fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(PkiError::Random)?;
    bytes[0] = (bytes[0] & 0x3f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

/// Drops sub-second precision: X.509 times have whole seconds, and values we report must
/// equal what a parser reads back.
pub(crate) fn whole_seconds(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_nanosecond(0).unwrap_or(t)
}

fn subject(common_name: String) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, ORGANISATION);
    dn.push(DnType::CommonName, common_name);
    dn
}

/// The subject common name of CA generation `generation` of the fleet `fleet_id`.
pub(crate) fn ca_common_name(fleet_id: &str, generation: u32) -> String {
    format!("hwledger fleet CA {generation} ({fleet_id})")
}

/// Parameters of a self-signed fleet CA.
///
/// Path length 1: the root may certify one intermediate, which is exactly the cross-signed
/// successor CA used during a rotation; it never needs more.
pub(crate) fn ca_params(
    fleet_id: &str,
    generation: u32,
    now: OffsetDateTime,
    validity: Duration,
) -> Result<CertificateParams, PkiError> {
    let mut p = CertificateParams::default();
    p.distinguished_name = subject(ca_common_name(fleet_id, generation));
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    p.not_before = whole_seconds(now - CLOCK_SKEW_ALLOWANCE);
    p.not_after = whole_seconds(now + validity);
    p.serial_number = Some(random_serial()?);
    Ok(p)
}

/// Parameters of the cross certificate of a new CA, issued by its predecessor: same subject
/// and key as the new self-signed CA, so a client that only knows the old CA can still build a
/// path to the server certificate the new CA issued. Path length 0: it issues leaves only.
pub(crate) fn cross_params(
    new_ca: &CertificateParams,
    old_not_after: OffsetDateTime,
) -> Result<CertificateParams, PkiError> {
    let mut p = new_ca.clone();
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.not_after = p.not_after.min(old_not_after);
    p.serial_number = Some(random_serial()?);
    p.use_authority_key_identifier_extension = true;
    Ok(p)
}

/// Validity window of a certificate issued at `now` for `validity`, clamped so it never outlives
/// the issuing CA (a leaf past its CA's expiry could not be verified anyway).
pub(crate) fn leaf_window(
    now: OffsetDateTime,
    validity: Duration,
    ca_not_after: OffsetDateTime,
) -> Result<(OffsetDateTime, OffsetDateTime), PkiError> {
    if validity <= Duration::ZERO {
        return Err(PkiError::InvalidValidity { reason: format!("validity must be positive, got {validity}") });
    }
    if validity > MAX_LEAF_VALIDITY {
        return Err(PkiError::InvalidValidity {
            reason: format!("validity {validity} exceeds the maximum of {} days", MAX_LEAF_VALIDITY.whole_days()),
        });
    }
    let not_before = whole_seconds(now - CLOCK_SKEW_ALLOWANCE);
    let not_after = whole_seconds((now + validity).min(ca_not_after));
    if not_after <= now {
        return Err(PkiError::InvalidValidity {
            reason: format!(
                "the issuing CA expires at {ca_not_after}, before the certificate could start; rotate the CA"
            ),
        });
    }
    Ok((not_before, not_after))
}

/// Parameters of a role certificate (client authentication only).
pub(crate) fn role_params(
    role: &Role,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<CertificateParams, PkiError> {
    role.validate()?;
    let uri = role.to_uri().try_into().map_err(|e| PkiError::generate("encode the role URI", e))?;
    let mut p = CertificateParams::default();
    p.distinguished_name = subject(role.to_string());
    p.subject_alt_names = vec![SanType::URI(uri)];
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.use_authority_key_identifier_extension = true;
    p.not_before = not_before;
    p.not_after = not_after;
    p.serial_number = Some(random_serial()?);
    Ok(p)
}

/// Checks a server name: a DNS name or an IP address literal.
pub(crate) fn validate_server_name(name: &str) -> Result<(), PkiError> {
    ServerName::try_from(name)
        .map(|_| ())
        .map_err(|_| PkiError::InvalidServerName { name: truncate_for_message(name, 120) })
}

/// Parameters of the server certificate for `names` (DNS names and IP literals).
pub(crate) fn server_params(
    names: &[String],
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<CertificateParams, PkiError> {
    for name in names {
        validate_server_name(name)?;
    }
    let mut p = CertificateParams::new(names.to_vec()).map_err(|e| PkiError::generate("encode the server names", e))?;
    let first = names.first().cloned().unwrap_or_else(|| "localhost".into());
    p.distinguished_name = subject(format!("hwledger server {first}"));
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p.use_authority_key_identifier_extension = true;
    p.not_before = not_before;
    p.not_after = not_after;
    p.serial_number = Some(random_serial()?);
    Ok(p)
}

/// Parses and checks a CSR: size bound, exactly one PEM block, a valid self-signature and an
/// accepted key type. Returns only the public key: everything else the CSR asks for (subject,
/// SANs, usages) is ignored, because the role comes from the server.
pub(crate) fn csr_public_key(csr_pem: &str) -> Result<rcgen::PublicKey, PkiError> {
    if csr_pem.len() > MAX_CSR_PEM_LEN {
        return Err(PkiError::CsrTooLarge { size: csr_pem.len(), limit: MAX_CSR_PEM_LEN });
    }
    let begins = csr_pem.matches("-----BEGIN ").count();
    if begins != 1 {
        return Err(PkiError::MalformedCsr { reason: format!("expected exactly one PEM block, found {begins}") });
    }
    if !csr_pem.contains("-----BEGIN CERTIFICATE REQUEST-----") {
        return Err(PkiError::MalformedCsr { reason: "the PEM block is not a CERTIFICATE REQUEST".into() });
    }
    let parsed = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| match e {
        rcgen::Error::InvalidCertificationRequestSignature => PkiError::CsrBadSignature,
        rcgen::Error::UnsupportedSignatureAlgorithm => PkiError::CsrUnsupportedKey,
        other => PkiError::MalformedCsr { reason: other.to_string() },
    })?;
    let alg = parsed.public_key.algorithm();
    let accepted = [&rcgen::PKCS_ECDSA_P256_SHA256, &rcgen::PKCS_ECDSA_P384_SHA384, &rcgen::PKCS_ED25519];
    if !accepted.contains(&alg) {
        return Err(PkiError::CsrUnsupportedKey);
    }
    Ok(parsed.public_key)
}

/// Agent side of enrollment: a new private key (which never leaves the device) and a CSR for
/// it, returned as `(key_pem, csr_pem)`. The CSR names the role it hopes for, but the server
/// decides the role; it does not read this.
pub fn generate_key_and_csr(role: &Role) -> Result<(String, String), PkiError> {
    role.validate()?;
    let key = new_key()?;
    let uri = role.to_uri().try_into().map_err(|e| PkiError::generate("encode the role URI", e))?;
    let mut p = CertificateParams::default();
    p.distinguished_name = subject(role.to_string());
    p.subject_alt_names = vec![SanType::URI(uri)];
    let csr = p.serialize_request(&key).map_err(|e| PkiError::generate("build the CSR", e))?;
    let csr_pem = csr.pem().map_err(|e| PkiError::generate("encode the CSR as PEM", e))?;
    Ok((key.serialize_pem(), csr_pem))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> OffsetDateTime {
        time::macros::datetime!(2030-01-01 00:00:00 UTC)
    }

    #[test]
    fn leaf_window_clamps_to_the_ca() -> Result<(), PkiError> {
        let ca_end = t0() + Duration::days(10);
        let (nb, na) = leaf_window(t0(), Duration::days(30), ca_end)?;
        assert_eq!(nb, t0() - CLOCK_SKEW_ALLOWANCE);
        assert_eq!(na, ca_end);
        let (_, na) = leaf_window(t0(), Duration::days(1), ca_end)?;
        assert_eq!(na, t0() + Duration::days(1));
        assert!(leaf_window(t0(), Duration::ZERO, ca_end).is_err());
        assert!(leaf_window(t0(), Duration::days(-1), ca_end).is_err());
        assert!(leaf_window(t0(), Duration::days(900), ca_end).is_err());
        assert!(leaf_window(ca_end, Duration::days(1), ca_end).is_err());
        Ok(())
    }

    #[test]
    fn serials_are_positive_and_sixteen_bytes() -> Result<(), PkiError> {
        for _ in 0..32 {
            let s = random_serial()?.to_bytes();
            assert_eq!(s.len(), 16);
            assert_eq!(s.first().map(|b| b & 0xc0), Some(0x40));
        }
        Ok(())
    }

    #[test]
    fn server_names_are_validated() {
        assert!(validate_server_name("localhost").is_ok());
        assert!(validate_server_name("::1").is_ok());
        assert!(validate_server_name("box.tail1234.ts.net").is_ok());
        assert!(validate_server_name("bad name").is_err());
        assert!(validate_server_name("").is_err());
    }

    #[test]
    fn csr_checks() -> Result<(), PkiError> {
        let role = Role::agent("d1")?;
        let (_key, csr) = generate_key_and_csr(&role)?;
        assert!(csr_public_key(&csr).is_ok());
        assert!(matches!(csr_public_key(&format!("{csr}{csr}")), Err(PkiError::MalformedCsr { .. })));
        assert!(matches!(csr_public_key(&"A".repeat(MAX_CSR_PEM_LEN + 1)), Err(PkiError::CsrTooLarge { .. })));
        assert!(matches!(
            csr_public_key("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"),
            Err(PkiError::MalformedCsr { .. })
        ));
        Ok(())
    }
}
