//! The fleet PKI: a private CA created once per data directory, role certificates for agents,
//! operators and auditors (role in a `hwledger:<role>:<name>` SAN URI), CSR signing for
//! enrollment (the device keeps its key), one-time bootstrap tokens, CA rotation with an
//! overlap, and reading a peer's identity back from its certificate.
//!
//! Time is always a parameter (`now`); nothing here reads the clock.

mod error;
mod fingerprint;
mod fsio;
mod identity;
mod issue;
mod role;
mod store;
mod token;

pub use error::PkiError;
pub use fingerprint::{Fingerprint, FingerprintParseError};
pub use identity::{MAX_CERT_DER_LEN, PeerIdentity, check_cert_matches_key, identity_from_cert_der};
pub use issue::{CLOCK_SKEW_ALLOWANCE, MAX_CSR_PEM_LEN, MAX_LEAF_VALIDITY, generate_key_and_csr};
pub use role::{MAX_NAME_LEN, Role, validate_name};
pub use store::{
    BundlePaths, CaInfo, DEFAULT_SERVER_NAMES, IssuedCert, Pki, PkiOptions, PkiStatus, Rotation, write_bundle,
    write_enrolled_bundle, write_new_private_key,
};
pub use token::{
    BootstrapToken, TokenHash, TokenHashParseError, bootstrap_token_submission, constant_time_eq, new_bootstrap_token,
};
