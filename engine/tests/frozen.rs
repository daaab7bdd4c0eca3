//! The frozen v1 ledger (fixtures/ledgers/v1, written by the first build, never regenerated) must open,
//! replay and verify in every later version, from both the data directory and the export bundle.

use std::path::PathBuf;

use hwledger_engine::chain::to_hex;
use hwledger_engine::note::Verifier;
use hwledger_engine::verify::{VerifyOptions, verify_dir};
use hwledger_engine::{Ledger, LedgerOptions};

const HEAD: &str = "9a9c5dc3f7c108b6926907fa8dd34265be34c903bce11c1e8987acadbfc90863";
const ROOT: &str = "ee909271c9d06d1ae111121fe37def411005447c83462574d0e8c9cd4b9d17fe";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/ledgers/v1").join(name)
}

fn verifier() -> Verifier {
    Verifier::from_vkey(std::fs::read_to_string(fixture("log.vkey")).unwrap().trim()).unwrap()
}

#[test]
fn frozen_v1_data_directory_replays_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("tar")
        .args(["xzf"])
        .arg(fixture("data.tar.gz"))
        .arg("-C")
        .arg(dir.path())
        .status()
        .expect("run tar");
    assert!(status.success());
    let ledger_dir = dir.path().join("ledger");
    let opts = VerifyOptions { verifier: Some(verifier()), ..VerifyOptions::default() };
    let report = verify_dir(&ledger_dir, &opts, |_| {}).unwrap();
    assert!(report.intact(), "{:?}", report.breaks);
    assert_eq!(report.events, 21);
    assert_eq!(report.head_hash, HEAD);
    assert_eq!(report.merkle_root, ROOT);
    assert_eq!(report.checkpoint_size, Some(21));

    let ledger = Ledger::open(&ledger_dir, LedgerOptions::default()).unwrap();
    assert!(ledger.broken().is_none());
    assert_eq!(to_hex(&ledger.head().hash), HEAD);
    let events = ledger.read(1, 21).unwrap();
    let types: Vec<&str> = events.iter().map(|e| e.record.event.type_name()).collect();
    assert_eq!(types[0], "device_enrolled");
    assert_eq!(types[20], "device_decommissioned");
    // Replaying from scratch gives the same state as the stored snapshot path.
    let mut state = hwledger_engine::state::State::default();
    for e in &events {
        hwledger_engine::state::apply(&mut state, &e.record);
    }
    assert_eq!(state, ledger.state());
    assert_eq!(state.devices.len(), 3);
    assert_eq!(state.jobs.len(), 2);
    assert_eq!(to_hex(&ledger.root(21).unwrap()), ROOT);
    // Idempotency entries written in the v1 layout still answer retries.
    let retry: hwledger_engine::Submission = serde_json::from_str(
        r#"{"command_id":"f-003","command":{"type":"enroll_device","device_id":"mbp-m1","kind":"local"}}"#,
    )
    .unwrap();
    let ctx = hwledger_engine::Context::new(hwledger_engine::Actor::System, 1_763_900_000_000);
    match ledger.submit(retry, ctx).unwrap() {
        hwledger_engine::Outcome::Duplicate(r) => assert_eq!(r.seq, 3),
        other => panic!("{other:?}"),
    }
}

#[test]
fn frozen_v1_bundle_verifies_offline() {
    let opts = VerifyOptions { verifier: Some(verifier()), ..VerifyOptions::default() };
    let report = hwledger_engine::export::verify_export(&fixture("v1.hwlx"), &opts, |_| {}).unwrap();
    assert!(report.intact(), "{:?}", report.breaks);
    assert_eq!(report.head_hash, HEAD);
    assert_eq!(report.merkle_root, ROOT);
    assert_eq!(report.checkpoint_size, Some(21));
}

#[test]
fn frozen_v1_bundle_verifies_with_the_independent_python_verifier() {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/independent/verify.py");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .arg(fixture("v1.hwlx"))
        .arg("--vkey")
        .arg(fixture("log.vkey"))
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.trim(), format!("OK 21 {ROOT}"));
}
