//! Fuzz the CSR path of `POST /v1/enroll` (the one request the server takes from a client without a
//! certificate): the request body is parsed as the server parses it (`wire::api::EnrollRequest`, unknown
//! fields refused), and the CSR text — from the body, or the raw input itself, so mutations reach the PEM and
//! DER parsers directly — goes through `Pki::sign_csr` of a real fleet CA. Any input gives a certificate or a
//! typed `PkiError`. A certificate issued speaks for exactly the role the server chose (never what the CSR
//! asked for) and parses back to it.
#![no_main]

use std::sync::LazyLock;

use hwledger_wire::api::EnrollRequest;
use hwledger_wire::pki::{Pki, PkiOptions, Role, identity_from_cert_der};
use libfuzzer_sys::fuzz_target;
use time::{Duration, OffsetDateTime};

fn now() -> OffsetDateTime {
    time::macros::datetime!(2030-01-01 00:00:00 UTC)
}

/// A fleet CA created once per fuzzing process, in a directory removed at exit by the OS temp cleaner
/// (it is small; `tempfile` would delete it before the last input if dropped).
static PKI: LazyLock<Pki> = LazyLock::new(|| {
    let dir = tempfile::Builder::new().prefix("hwledger-fuzz-pki").tempdir().expect("temporary directory").keep();
    Pki::init(&dir, PkiOptions::default(), now()).expect("create a fleet CA")
});
static ROLE: LazyLock<Role> = LazyLock::new(|| Role::agent("dev-fuzz").expect("valid device id"));

fn sign(csr_pem: &str) {
    let Ok(cert) = PKI.sign_csr(csr_pem, &ROLE, Duration::days(30), now()) else { return };
    let identity = identity_from_cert_der(&cert.cert_der).expect("an issued certificate parses");
    assert_eq!(identity.role, *ROLE, "the role comes from the server, not the CSR");
    assert_eq!(identity.fingerprint, cert.fingerprint);
    assert!(cert.key_pem.is_none(), "the device keeps its key");
}

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = serde_json::from_slice::<EnrollRequest>(data) {
        sign(&req.csr_pem);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        sign(text);
    }
});
