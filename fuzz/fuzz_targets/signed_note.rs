//! Fuzz signed-note and checkpoint parsing (`engine::note`, `engine::checkpoint`, `verify::checkpoint_size`):
//! notes come from bundles, `--since` files, `receipt verify` and the HTTP API. Opening arbitrary bytes
//! against pinned keys gives a note or a typed `NoteError`; a note that opens was really signed by one of
//! them. Checkpoint text that parses prints back to exactly the same text (one encoding per checkpoint).
//! Text the signer accepts opens again with its verifier, and a signed checkpoint opens to itself.
#![no_main]

use std::sync::LazyLock;

use hwledger_engine::checkpoint::{Checkpoint, open_checkpoint, sign_checkpoint};
use hwledger_engine::note::{Signer, Verifier, open_note, open_note_bytes, sign_note};
use hwledger_engine::verify::checkpoint_size;
use libfuzzer_sys::fuzz_target;

/// The fixed log key of the generated seeds, and a witness-like second key.
static SIGNER: LazyLock<Signer> =
    LazyLock::new(|| Signer::from_seed("hwledger.fuzz/log", &[7; 32]).expect("fixed fuzz key"));
static VERIFIERS: LazyLock<Vec<Verifier>> = LazyLock::new(|| {
    let witness = Signer::from_seed("witness.fuzz", &[9; 32]).expect("fixed witness key");
    vec![SIGNER.verifier(), witness.verifier()]
});

fuzz_target!(|data: &[u8]| {
    if let Ok(opened) = open_note_bytes(data, &VERIFIERS) {
        assert!(!opened.verified_by.is_empty(), "an opened note names who signed it");
        assert!(data.starts_with(opened.text.as_bytes()), "the signed text is a prefix of the note");
    }
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(cp) = open_checkpoint(text, &SIGNER.verifier()) {
        assert_eq!(cp.origin, SIGNER.name());
    }
    let _ = checkpoint_size(text);
    if let Ok(cp) = Checkpoint::parse(text) {
        assert_eq!(cp.to_text(), text, "checkpoint text has one encoding");
        if let Ok(note) = sign_checkpoint(&cp, &SIGNER) {
            let mine = Checkpoint { origin: SIGNER.name().to_owned(), ..cp.clone() };
            if cp == mine {
                assert_eq!(open_checkpoint(&note, &SIGNER.verifier()).expect("own checkpoint opens"), cp);
            }
            assert_eq!(checkpoint_size(&note), Some(cp.size));
        }
    }
    if let Ok(note) = sign_note(text, &SIGNER) {
        let opened = open_note(&note, &VERIFIERS).expect("a note signed by a known key opens");
        assert_eq!(opened.text, text);
    }
});
