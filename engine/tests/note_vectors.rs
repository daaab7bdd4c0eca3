//! Tests of `hwledger_engine::note` and `hwledger_engine::checkpoint` against the C2SP signed-note example in
//! `fixtures/signed-note/` (the spec's own vkey and note), tamper resistance (every single-byte change of the
//! note is refused), and sign → open round trips of notes and of checkpoints over a real Merkle tree.

use hwledger_engine::checkpoint::{Checkpoint, CheckpointError, open_checkpoint, sign_checkpoint};
use hwledger_engine::merkle::{MemoryTree, consistency_proof, root, verify_consistency};
use hwledger_engine::note::{
    NoteError, Signer, Verifier, generate_signer, key_id, open_note, open_note_bytes, sign_note,
};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/signed-note");

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{FIXTURES}/{name}")).unwrap_or_else(|e| panic!("read {name}: {e}"))
}

fn example_verifier() -> Verifier {
    // The file ends with a newline; the vkey is the line.
    let vkey = fixture("example-foo.vkey");
    Verifier::from_vkey(vkey.trim_end_matches('\n')).unwrap()
}

#[test]
fn spec_example_opens_with_its_vkey() {
    let verifier = example_verifier();
    assert_eq!(verifier.name(), "example.com/foo");
    assert_eq!(verifier.key_id(), 0x530d_903a);
    assert_eq!(key_id(verifier.name(), &verifier.public_key()), 0x530d_903a);
    assert_eq!(verifier.to_vkey(), fixture("example-foo.vkey").trim_end_matches('\n'));

    let opened = open_note(&fixture("example-foo.note"), std::slice::from_ref(&verifier)).unwrap();
    assert_eq!(opened.text, "This is an example message.\n");
    assert_eq!(opened.verified_by, vec!["example.com/foo"]);
    assert_eq!(opened.unknown_signatures, 0);

    // Without the key the note is refused; a verifier list with other keys too still opens it.
    let stranger = Signer::from_seed("example.com/foo", &[1; 32]).unwrap().verifier();
    assert_eq!(
        open_note(&fixture("example-foo.note"), std::slice::from_ref(&stranger)).unwrap_err(),
        NoteError::NoKnownSignature { unknown: 1 }
    );
    assert_eq!(
        open_note(&fixture("example-foo.note"), &[stranger, verifier]).unwrap().verified_by,
        vec!["example.com/foo"]
    );
}

#[test]
fn every_single_byte_change_is_refused() {
    let verifier = [example_verifier()];
    let note = fixture("example-foo.note").into_bytes();
    assert!(open_note_bytes(&note, &verifier).is_ok());
    let text_len = "This is an example message.\n".len();
    let mut checked = 0;
    for pos in 0..note.len() {
        // Several flips per byte: the low bit, the ASCII case bit and the high bit (which breaks UTF-8).
        for mask in [0x01u8, 0x20, 0x80] {
            let mut tampered = note.clone();
            tampered[pos] ^= mask;
            let result = open_note_bytes(&tampered, &verifier);
            assert!(result.is_err(), "changing byte {pos} with mask {mask:#04x} was accepted");
            let printable = tampered[pos] >= 0x20 && note[pos] != b'\n';
            if pos < text_len && printable && std::str::from_utf8(&tampered).is_ok() {
                // A printable change inside the text must be caught by the signature itself.
                assert_eq!(
                    result.unwrap_err(),
                    NoteError::InvalidSignature { name: "example.com/foo".into(), key_id: 0x530d_903a },
                    "byte {pos} mask {mask:#04x}"
                );
            }
            checked += 1;
        }
    }
    assert_eq!(checked, note.len() * 3);
    // Truncating the note anywhere is refused as well.
    for len in 0..note.len() {
        assert!(open_note_bytes(&note[..len], &verifier).is_err(), "truncated to {len} bytes");
    }
}

#[test]
fn signed_notes_round_trip() {
    let (signer, skey, vkey) = generate_signer("hwledger.test/notes").unwrap();
    let verifier = Verifier::from_vkey(&vkey).unwrap();
    assert_eq!(verifier, signer.verifier());
    assert_eq!(Signer::from_key_string(&skey).unwrap().verifier(), verifier);
    for text in [
        "one line\n",
        "\n",
        "two\n\nparagraphs, and a dash — inside\n",
        "unicode: ünïcödé λ 日本語\n",
        "ends with blank lines\n\n\n",
    ] {
        let note = sign_note(text, &signer).unwrap();
        assert!(note.starts_with(text));
        let opened = open_note(&note, std::slice::from_ref(&verifier)).unwrap();
        assert_eq!(opened.text, text);
        assert_eq!(opened.verified_by, vec!["hwledger.test/notes"]);
        // Signing is deterministic (Ed25519), so re-signing reproduces the note byte for byte.
        assert_eq!(sign_note(&opened.text, &signer).unwrap(), note);
    }
    // A second signature (a witness) can be appended; both verify, either alone suffices.
    let (witness, _, _) = generate_signer("hwledger.test/witness").unwrap();
    let text = "cosigned\n";
    let by_log = sign_note(text, &signer).unwrap();
    let by_witness = sign_note(text, &witness).unwrap();
    let both = format!("{by_log}{}", by_witness.strip_prefix(&format!("{text}\n")).unwrap());
    let opened = open_note(&both, &[witness.verifier(), verifier.clone()]).unwrap();
    assert_eq!(opened.verified_by, vec!["hwledger.test/notes", "hwledger.test/witness"]);
    assert_eq!(open_note(&both, &[verifier]).unwrap().unknown_signatures, 1);
}

#[test]
fn checkpoints_sign_open_and_prove_append_only() {
    let (signer, _, vkey) = generate_signer("hwledger.test/fleet-log").unwrap();
    let verifier = Verifier::from_vkey(&vkey).unwrap();
    let tree = MemoryTree::from_leaf_data((0u32..37).map(|i| format!("event {i}")));

    let old = Checkpoint {
        origin: "hwledger.test/fleet-log".into(),
        size: 20,
        root: root(&tree, 20).unwrap(),
        extensions: vec![],
    };
    let new = Checkpoint { size: 37, root: tree.root(), ..old.clone() };
    let old_note = sign_checkpoint(&old, &signer).unwrap();
    let new_note = sign_checkpoint(&new, &signer).unwrap();
    assert!(old_note.starts_with(&format!("{}\n\u{2014} hwledger.test/fleet-log ", old.to_text())));

    let old_open = open_checkpoint(&old_note, &verifier).unwrap();
    let new_open = open_checkpoint(&new_note, &verifier).unwrap();
    assert_eq!((&old_open, &new_open), (&old, &new));
    let proof = consistency_proof(&tree, old_open.size, new_open.size).unwrap();
    verify_consistency(old_open.size, new_open.size, &proof, &old_open.root, &new_open.root).unwrap();

    // A checkpoint with a rewritten size fails the signature, and the parser refuses sloppy text.
    let tampered = old_note.replacen("\n20\n", "\n21\n", 1);
    assert!(matches!(
        open_checkpoint(&tampered, &verifier),
        Err(CheckpointError::Note(NoteError::InvalidSignature { .. }))
    ));
    assert_eq!(Checkpoint::parse("o\n020\nAA==\n").unwrap_err().code(), "checkpoint_invalid_size");
}
