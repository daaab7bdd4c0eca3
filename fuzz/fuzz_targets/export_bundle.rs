//! Fuzz the export / bundle reader (`engine::export`): `verify_export_from` over arbitrary bytes, with and
//! without a pinned verifier key, gives a report (framing breaks, undecodable bodies, ...) or an I/O error,
//! never a panic. And the promise `hwledger import` relies on: a file that verifies intact imports into a
//! fresh data directory, which then verifies intact with the same head and Merkle root and opens as a
//! writable ledger.
#![no_main]

use std::sync::LazyLock;

use hwledger_engine::export::{import_from, read_export_from, verify_export_from};
use hwledger_engine::note::{Signer, Verifier};
use hwledger_engine::verify::{VerifyOptions, verify_dir};
use hwledger_engine::{Ledger, LedgerOptions};
use libfuzzer_sys::fuzz_target;

/// The key `fuzz/seed.sh` signs its generated bundles with (see `fuzz/src/bin/seed_corpus.rs`), so the
/// signature path is reached with valid signatures too.
static VERIFIER: LazyLock<Verifier> =
    LazyLock::new(|| Signer::from_seed("hwledger.fuzz/log", &[7; 32]).expect("fixed fuzz key").verifier());

fuzz_target!(|data: &[u8]| {
    let mut events = 0u64;
    let read = read_export_from(data, "fuzz", |_, _, _| events += 1);
    let plain =
        verify_export_from(data, "fuzz", &VerifyOptions::default(), |_| {}).expect("in-memory reads never fail");
    assert_eq!(plain.events, events, "the verifier sees every event the reader framed");
    let pinned = VerifyOptions { verifier: Some(VERIFIER.clone()), ..VerifyOptions::default() };
    let checked = verify_export_from(data, "fuzz", &pinned, |_| {}).expect("in-memory reads never fail");
    if read.is_err() {
        assert!(!plain.intact(), "a file the reader refuses never verifies intact");
    }
    if !plain.intact() {
        return;
    }
    // Intact without a key: `hwledger import FILE` would go ahead. The result must be a sound ledger.
    let dir = tempfile::tempdir().expect("temporary directory");
    let ledger_dir = dir.path().join("ledger");
    let n = import_from(data, "fuzz", &ledger_dir).expect("an intact export imports");
    assert_eq!(n, plain.events);
    let report = verify_dir(&ledger_dir, &VerifyOptions::default(), |_| {}).expect("the imported store opens");
    assert!(report.intact(), "the imported store verifies: {:?}", report.breaks);
    assert_eq!((report.head_seq, &report.merkle_root), (plain.head_seq, &plain.merkle_root));
    if checked.intact() {
        let report = verify_dir(&ledger_dir, &pinned, |_| {}).expect("the imported store opens");
        assert!(report.intact(), "the imported checkpoint still verifies: {:?}", report.breaks);
    }
    let ledger = Ledger::open(&ledger_dir, LedgerOptions::default()).expect("the imported ledger opens");
    assert_eq!(ledger.broken(), None, "the imported ledger accepts writes");
    assert_eq!(ledger.head().seq, plain.head_seq);
    ledger.close().expect("close");
});
