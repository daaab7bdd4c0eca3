//! The one error type of the fleet PKI: every way that creating, loading, issuing, signing or
//! parsing can fail, each variant carrying enough context for an operator to act on it.

use std::path::PathBuf;

/// Why a PKI operation failed.
///
/// I/O and corrupt-state variants are fail-stop (the data directory needs an operator);
/// the name, CSR and certificate variants describe bad input and map to a client error.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file or directory of the PKI could not be read, written, locked or synced.
    #[error("PKI: cannot {action} {path}: {source}")]
    Io {
        /// What was being done, as a verb phrase ("write", "create directory", ...).
        action: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The state file that lists the CA generations is unreadable or inconsistent.
    #[error("PKI: state file {path} is invalid: {reason}")]
    State {
        /// The state file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A certificate or key file on disk is not what it should be.
    #[error("PKI: {path} is invalid: {reason}")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A device id, operator or auditor name does not match `[A-Za-z0-9._-]{1,64}`.
    #[error("invalid {kind} {value:?}: {reason} (allowed: 1 to 64 of A-Z a-z 0-9 . _ -)")]
    InvalidName {
        /// Which kind of name ("device id", "operator name", "auditor name").
        kind: &'static str,
        /// The rejected value (truncated to 80 characters).
        value: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// An extra server name is neither a DNS name nor an IP address.
    #[error("invalid server name {name:?}: not a DNS name or IP address")]
    InvalidServerName {
        /// The rejected value.
        name: String,
    },

    /// Option values that contradict each other or make no sense.
    #[error("invalid PKI option: {reason}")]
    InvalidOptions {
        /// What is wrong.
        reason: String,
    },

    /// A requested validity period is unusable.
    #[error("invalid validity: {reason}")]
    InvalidValidity {
        /// What is wrong.
        reason: String,
    },

    /// A certificate's DER could not be parsed.
    #[error("malformed certificate: {reason}")]
    MalformedCertificate {
        /// What the parser reported.
        reason: String,
    },

    /// A certificate carries no `hwledger:<role>:<name>` SAN URI.
    #[error("certificate carries no hwledger role (no SAN URI of the form hwledger:<role>:<name>)")]
    NoRole,

    /// A certificate carries more than one `hwledger:` SAN URI, so its role is ambiguous.
    #[error("certificate carries {count} hwledger role URIs; exactly one is required")]
    AmbiguousRole {
        /// How many `hwledger:` URIs were found.
        count: usize,
    },

    /// A `hwledger:` URI names an unknown role or is badly formed.
    #[error("unrecognised hwledger role URI {uri:?}: {reason}")]
    BadRoleUri {
        /// The URI (truncated to 120 characters).
        uri: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// A CSR exceeds the size limit.
    #[error("CSR is {size} bytes; the limit is {limit} bytes")]
    CsrTooLarge {
        /// The size of the submitted CSR.
        size: usize,
        /// The limit.
        limit: usize,
    },

    /// A CSR could not be parsed.
    #[error("malformed CSR: {reason}")]
    MalformedCsr {
        /// What is wrong with it.
        reason: String,
    },

    /// A CSR's self-signature does not verify: it was not made with the key it carries.
    #[error("CSR signature does not verify against the public key it carries")]
    CsrBadSignature,

    /// A CSR's key type is not one the fleet accepts.
    #[error("CSR key type is not accepted; use ECDSA P-256, ECDSA P-384 or Ed25519")]
    CsrUnsupportedKey,

    /// rcgen could not generate a key or build/sign a certificate or CSR.
    #[error("PKI: cannot {action}: {source}")]
    Generate {
        /// What was being done.
        action: &'static str,
        /// The underlying error.
        #[source]
        source: rcgen::Error,
    },

    /// The operating system's random number generator failed.
    #[error("PKI: the system random number generator failed: {0}")]
    Random(getrandom::Error),

    /// A certificate is not for the private key it is paired with.
    #[error("the certificate is not for this private key (public keys differ)")]
    KeyMismatch,

    /// A private key could not be parsed.
    #[error("malformed private key: {reason}")]
    MalformedKey {
        /// What the parser reported.
        reason: String,
    },

    /// A credential file that must not be overwritten already exists.
    #[error("{path} already exists; move it away or choose another --out directory")]
    AlreadyExists {
        /// The file.
        path: PathBuf,
    },

    /// No CA is trusted at the given time (all expired or past their overlap).
    #[error("no fleet CA is trusted at {at}; rotate the CA (`hwledger ca rotate`)")]
    NoTrustedCa {
        /// The time asked about.
        at: time::OffsetDateTime,
    },
}

impl PkiError {
    /// Builds an [`PkiError::Io`] for `path`.
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        PkiError::Io { action, path: path.into(), source }
    }

    /// Builds an [`PkiError::BadFile`] for `path`.
    pub(crate) fn bad_file(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        PkiError::BadFile { path: path.into(), reason: reason.into() }
    }

    /// Builds an [`PkiError::Generate`].
    pub(crate) fn generate(action: &'static str, source: rcgen::Error) -> Self {
        PkiError::Generate { action, source }
    }
}

/// Cuts a hostile string down to `max` characters for inclusion in an error message.
pub(crate) fn truncate_for_message(value: &str, max: usize) -> String {
    value.chars().take(max).collect()
}
