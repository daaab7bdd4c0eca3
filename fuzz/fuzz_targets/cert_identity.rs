//! Fuzz reading an identity out of a peer certificate (`wire::pki::identity_from_cert_der`, run on every
//! mTLS request after the handshake) and the role URI parser (`Role::from_uri`). Any DER gives an identity
//! or a typed `PkiError`; a role URI that parses prints back to the same URI.
#![no_main]

use hwledger_wire::pki::{Role, identity_from_cert_der};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(identity) = identity_from_cert_der(data) {
        assert!(identity.role.validate().is_ok());
        assert_eq!(Role::from_uri(&identity.role.to_uri()).expect("own URI parses"), identity.role);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(role) = Role::from_uri(text) {
            assert_eq!(role.to_uri(), text, "a role URI has one encoding");
        }
    }
});
