//! The device side of enrollment with a one-time bootstrap token: generate a key here, write it 0600,
//! send only a CSR to the enrollment listener (server-authenticated TLS, no client certificate), check the
//! certificate that comes back is for this key and this device, and complete the bundle (`ca.crt`,
//! `agent-<device>.crt`, `agent-<device>.key`) that [`super::Client::from_bundle_dir`] reads. The private
//! key never leaves the machine.

use std::path::{Path, PathBuf};

use super::{BundleFiles, Client, ClientError, DEFAULT_TIMEOUT};
use crate::api::{EnrollRequest, ReceiptBody};
use crate::pki::{
    PkiError, Role, check_cert_matches_key, generate_key_and_csr, write_enrolled_bundle, write_new_private_key,
};

/// Why enrolling with a token failed.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// The device id, key generation, key file or bundle files failed.
    #[error("enroll: {0}")]
    Pki(#[from] PkiError),
    /// The enrollment request failed (a spent token is `Api { code: "token_used" }`, an expired one
    /// `token_expired`, an unknown one `token_unknown`).
    #[error("enroll: {0}")]
    Client(#[from] ClientError),
    /// The token was issued for another device than the one asked for. Its certificate is pinned for
    /// `token_device`; an operator should revoke it (fingerprint given).
    #[error(
        "enroll: the token is for device {token_device:?}, not {asked:?}; nothing was written \
         (ask an operator to revoke certificate {fingerprint})"
    )]
    OtherDevice {
        /// The device asked for.
        asked: String,
        /// The device the token names.
        token_device: String,
        /// The fingerprint of the certificate the server signed.
        fingerprint: String,
    },
    /// The server's answer does not fit the request (another key, another role, another fingerprint).
    #[error("enroll: the server's certificate is unusable: {0}")]
    BadCertificate(String),
}

impl EnrollError {
    /// The server's error code, when the server refused.
    pub fn code(&self) -> Option<&str> {
        match self {
            EnrollError::Client(e) => e.code(),
            _ => None,
        }
    }
}

/// A completed enrollment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrolledBundle {
    /// The bundle's files.
    pub files: BundleFiles,
    /// The device the certificate speaks for.
    pub device_id: String,
    /// SHA-256 of the certificate, hex (pinned in the ledger by the redemption).
    pub fingerprint: String,
    /// Certificate expiry, unix ms.
    pub not_after: i64,
    /// The receipt of the redemption.
    pub receipt: ReceiptBody,
}

/// Enrolls `device_id` at the enrollment listener `enroll_url` (trusting `ca_pem`) with `token`, writing
/// the bundle into `out_dir`. Refuses to overwrite an existing identity of the device there. On failure
/// the new key is removed again (without its certificate it is of no use: the token is single-use).
pub async fn redeem_bootstrap_token(
    enroll_url: &str,
    ca_pem: &[u8],
    token: &str,
    device_id: &str,
    hostname: Option<String>,
    out_dir: &Path,
) -> Result<EnrolledBundle, EnrollError> {
    let role = Role::agent(device_id)?;
    let client = Client::new(enroll_url, ca_pem, None, DEFAULT_TIMEOUT)?;
    let (key_pem, csr_pem) = generate_key_and_csr(&role)?;
    let key_path = write_new_private_key(out_dir, &role, &key_pem)?;
    let result = redeem_with_key(&client, &role, token, &key_pem, csr_pem, hostname, out_dir, &key_path).await;
    if result.is_err() {
        if let Err(e) = std::fs::remove_file(&key_path) {
            tracing::warn!(path = %key_path.display(), error = %e, "could not remove the unused enrollment key");
        }
    }
    result
}

#[allow(clippy::too_many_arguments)]
async fn redeem_with_key(
    client: &Client,
    role: &Role,
    token: &str,
    key_pem: &str,
    csr_pem: String,
    hostname: Option<String>,
    out_dir: &Path,
    key_path: &Path,
) -> Result<EnrolledBundle, EnrollError> {
    let answer = client.enroll(&EnrollRequest { token: token.to_owned(), csr_pem, hostname }).await?;
    if answer.device_id != role.name() {
        return Err(EnrollError::OtherDevice {
            asked: role.name().to_owned(),
            token_device: answer.device_id,
            fingerprint: answer.fingerprint,
        });
    }
    let identity = check_cert_matches_key(&answer.cert_pem, key_pem).map_err(|e| match e {
        PkiError::KeyMismatch => EnrollError::BadCertificate("it is not for the key this device generated".into()),
        other => EnrollError::BadCertificate(other.to_string()),
    })?;
    if identity.role != *role {
        return Err(EnrollError::BadCertificate(format!("it is for {}, not {role}", identity.role)));
    }
    if identity.fingerprint.to_string() != answer.fingerprint {
        return Err(EnrollError::BadCertificate(format!(
            "its fingerprint is {}, the server reported {}",
            identity.fingerprint, answer.fingerprint
        )));
    }
    if crate::tls::parse_certs_pem(answer.ca_pem.as_bytes(), "the CA bundle from the server").is_err() {
        return Err(EnrollError::BadCertificate("the CA bundle sent with it is not PEM certificates".into()));
    }
    let paths = write_enrolled_bundle(out_dir, role, &answer.cert_pem, &answer.ca_pem)?;
    Ok(EnrolledBundle {
        files: BundleFiles { ca: paths.ca, cert: paths.cert, key: PathBuf::from(key_path) },
        device_id: answer.device_id,
        fingerprint: answer.fingerprint,
        not_after: answer.not_after,
        receipt: answer.receipt,
    })
}
