//! Fuzz key parsing (`engine::note`): verifier keys come from `--vkey` arguments, `keys/log.vkey` and
//! bundles; signer keys from `keys/log.key`. Any text gives a key or a typed `KeyError`, never a panic; a key
//! that parses prints back to exactly the same text, and a signer key is never accepted as a verifier key.
#![no_main]

use hwledger_engine::note::{Signer, Verifier};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(v) = Verifier::from_vkey(text) {
        assert_eq!(v.to_vkey(), text, "a vkey has one encoding");
        assert!(!text.starts_with("PRIVATE+KEY+"));
        assert_eq!(Verifier::from_public_key(v.name(), &v.public_key()).expect("same key").to_vkey(), text);
    }
    if let Ok(s) = Signer::from_key_string(text) {
        assert_eq!(s.to_key_string(), text, "a signer key has one encoding");
        assert!(Verifier::from_vkey(text).is_err(), "a signer key is refused as a verifier key");
        assert_eq!(Verifier::from_vkey(&s.verifier().to_vkey()).expect("own vkey parses"), s.verifier());
    }
    let _: Result<Verifier, _> = text.parse();
});
