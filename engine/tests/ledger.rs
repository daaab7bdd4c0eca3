//! The ledger end to end on a real sled directory: receipts, idempotency across restarts, conflicts,
//! proofs and checkpoints, and every tamper case reported with its exact seq and kind.

use std::path::Path;

use hwledger_engine::chain::{GENESIS, Hash, chain_hash};
use hwledger_engine::event::Actor;
use hwledger_engine::ledger::Outcome;
use hwledger_engine::merkle::{leaf_hash, verify_inclusion};
use hwledger_engine::note::{Signer, Verifier};
use hwledger_engine::store::{Store, finish_block, frame_event, parse_block, start_block};
use hwledger_engine::testing::telemetry;
use hwledger_engine::verify::{BreakKind, VerifyOptions, verify_dir};
use hwledger_engine::{Command, Context, Ledger, LedgerOptions, Submission};

fn signer() -> Signer {
    Signer::from_seed("test.example/log", &[9u8; 32]).expect("signer")
}

fn options() -> LedgerOptions {
    LedgerOptions {
        signer: Some(signer()),
        origin: "test.example/log".into(),
        checkpoint_interval_ms: 0,
        ..LedgerOptions::default()
    }
}

fn sub(id: &str, command: Command) -> Submission {
    Submission { command_id: id.into(), expected_version: None, command }
}

fn op() -> Context {
    Context::new(Actor::Operator("alice".into()), 1_700_000_000_000)
}

fn enroll(id: &str) -> Command {
    Command::EnrollDevice {
        device_id: id.into(),
        kind: hwledger_engine::event::DeviceKind::Local,
        hostname: None,
        labels: Default::default(),
    }
}

/// Enrolls dev-1 and records `n` heartbeats; returns the ledger.
fn filled(dir: &Path, n: u64) -> Ledger {
    let ledger = Ledger::open(dir, options()).expect("open");
    ledger.submit(sub("enroll-1", enroll("dev-1")), op()).expect("enroll");
    let items: Vec<_> = (0..n).map(|i| (sub(&format!("hb-{i}"), telemetry("dev-1", i as i64)), op())).collect();
    for r in ledger.submit_many(items).wait() {
        assert!(matches!(r, Ok(Outcome::Accepted(_))), "{r:?}");
    }
    ledger
}

#[test]
fn receipts_are_gapless_and_retries_are_idempotent_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let first = {
        let ledger = filled(dir.path(), 10);
        assert_eq!(ledger.head().seq, 11);
        let r = ledger.submit(sub("hb-3", telemetry("dev-1", 3)), op()).unwrap();
        let Outcome::Duplicate(receipt) = r else { panic!("{r:?}") };
        assert_eq!(receipt.seq, 5);
        assert_eq!(receipt.stream, "device/dev-1");
        assert_eq!(receipt.stream_version, 5);
        receipt
    };
    let ledger = Ledger::open(dir.path(), options()).unwrap();
    assert_eq!(ledger.head().seq, 11);
    let again = ledger.submit(sub("hb-3", telemetry("dev-1", 3)), op()).unwrap();
    assert_eq!(again, Outcome::Duplicate(first));
    let conflict = ledger.submit(sub("hb-3", telemetry("dev-1", 999)), op()).unwrap();
    assert!(matches!(conflict, Outcome::Rejected(ref r) if r.code() == "duplicate_conflict"), "{conflict:?}");
    assert_eq!(ledger.head().seq, 11, "nothing appended by a duplicate or a conflict");
}

/// Regression: an empty request (what `warm_up` sends) once signed a checkpoint stamped with no time, and the
/// next group's staleness arithmetic overflowed and killed the writer ("ledger is closed" ever after).
#[test]
fn warm_up_between_groups_leaves_the_writer_working() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = filled(dir.path(), 3);
    ledger.warm_up();
    assert!(ledger.submit_many(Vec::new()).wait().is_empty());
    let r = ledger.submit(sub("hb-after", telemetry("dev-1", 100)), op()).unwrap();
    assert!(matches!(r, Outcome::Accepted(_)), "{r:?}");
    drop(ledger);
    let ledger = Ledger::open(dir.path(), options()).unwrap();
    ledger.warm_up();
    let r = ledger.submit(sub("hb-reopened", telemetry("dev-1", 101)), op()).unwrap();
    assert!(matches!(r, Outcome::Accepted(_)), "{r:?}");
    assert_eq!(ledger.head().seq, 6);
}

#[test]
fn expected_version_is_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path(), options()).unwrap();
    let mut s = sub("e1", enroll("dev-1"));
    s.expected_version = Some(0);
    assert!(matches!(ledger.submit(s, op()).unwrap(), Outcome::Accepted(_)));
    let mut s = sub("t1", telemetry("dev-1", 1));
    s.expected_version = Some(0);
    let r = ledger.submit(s, op()).unwrap();
    assert!(matches!(r, Outcome::Rejected(ref r) if r.code() == "version_conflict"), "{r:?}");
    let mut s = sub("t2", telemetry("dev-1", 1));
    s.expected_version = Some(1);
    assert!(matches!(ledger.submit(s, op()).unwrap(), Outcome::Accepted(_)));
}

#[test]
fn inclusion_proofs_verify_against_signed_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = filled(dir.path(), 700);
    let head = ledger.head().seq;
    ledger.sign_checkpoint_now(1_700_000_000_000).unwrap();
    let (size, note) = ledger.latest_checkpoint().expect("checkpoint");
    assert_eq!(size, head);
    let cp = hwledger_engine::checkpoint::open_checkpoint(&note, &signer().verifier()).expect("signature");
    for seq in [1, 2, 255, 256, 257, 512, head] {
        let proof = ledger.inclusion_proof(seq, size).unwrap();
        let body = raw_bodies(ledger.store())[(seq - 1) as usize].clone();
        verify_inclusion(&leaf_hash(&body), seq - 1, size, &proof, &cp.root).expect("inclusion");
    }
    let old_root = ledger.root(300).unwrap();
    let proof = ledger.consistency_proof(300, size).unwrap();
    hwledger_engine::merkle::verify_consistency(300, size, &proof, &old_root, &cp.root).expect("consistency");
    drop(ledger);
    // The rebuilt right edge after reopening gives the same roots.
    let ledger = Ledger::open(dir.path(), options()).unwrap();
    assert_eq!(ledger.root(size).unwrap(), cp.root);
    assert_eq!(ledger.root(300).unwrap(), old_root);
}

fn raw_bodies(store: &Store) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    hwledger_engine::replay::for_each_raw(store, 1, u64::MAX, |_, body, _| {
        out.push(body.to_vec());
        Ok(())
    })
    .unwrap();
    out
}

/// Rewrites the store's blocks as one list of (body, hash) pairs in single-event blocks.
fn rewrite(dir: &Path, f: impl FnOnce(&mut Vec<(Vec<u8>, Hash)>)) {
    let store = Store::open(dir).unwrap();
    let tree = store.raw_tree().unwrap();
    let mut events = Vec::new();
    let keys: Vec<_> = tree.scan_prefix(b"B").map(|r| r.unwrap()).collect();
    for (k, v) in &keys {
        for e in parse_block(v).unwrap() {
            events.push((e.body.to_vec(), e.hash));
        }
        tree.remove(k).unwrap();
    }
    f(&mut events);
    for (i, (body, hash)) in events.iter().enumerate() {
        let mut block = Vec::new();
        start_block(&mut block);
        frame_event(&mut block, body, hash);
        finish_block(&mut block, 1);
        let mut key = vec![b'B'];
        key.extend_from_slice(&(i as u64 + 1).to_be_bytes());
        tree.insert(key, block).unwrap();
    }
    store.sync().unwrap();
}

fn verify(dir: &Path, head: Option<(u64, Hash)>) -> hwledger_engine::verify::Report {
    let opts = VerifyOptions { head, verifier: Some(signer().verifier()), since: None };
    verify_dir(dir, &opts, |_| {}).unwrap()
}

fn kinds(report: &hwledger_engine::verify::Report) -> Vec<(u64, BreakKind)> {
    report
        .breaks
        .iter()
        .filter(|b| b.kind != BreakKind::MerkleMismatch && b.kind != BreakKind::CheckpointMismatch)
        .map(|b| (b.seq, b.kind))
        .collect()
}

fn tampered(n: u64) -> (tempfile::TempDir, Hash) {
    let dir = tempfile::tempdir().unwrap();
    let head = {
        let ledger = filled(dir.path(), n);
        ledger.head().hash
    };
    (dir, head)
}

#[test]
fn intact_ledger_verifies() {
    let (dir, head) = tampered(600);
    let r = verify(dir.path(), Some((601, head)));
    assert!(r.intact(), "{:?}", r.breaks);
    assert_eq!(r.events, 601);
    assert_eq!(r.checkpoint_size, Some(601));
}

#[test]
fn flipped_byte_is_payload_altered_at_its_seq() {
    let (dir, _) = tampered(20);
    rewrite(dir.path(), |ev| {
        let body = &mut ev[9].0;
        let last = body.len() - 1;
        body[last] ^= 0x01;
    });
    let r = verify(dir.path(), None);
    assert_eq!(kinds(&r), vec![(10, BreakKind::PayloadAltered)]);
    assert!(r.breaks.iter().any(|b| b.kind == BreakKind::CheckpointMismatch), "signed root no longer matches");
}

#[test]
fn deleted_event_is_event_missing() {
    let (dir, _) = tampered(20);
    rewrite(dir.path(), |ev| {
        ev.remove(6);
    });
    let r = verify(dir.path(), None);
    // The signed checkpoint still covers 21 events: the log is now one short of it.
    assert_eq!(kinds(&r), vec![(7, BreakKind::EventMissing), (21, BreakKind::Truncated)]);
}

#[test]
fn swapped_events_are_reordered() {
    let (dir, _) = tampered(20);
    rewrite(dir.path(), |ev| ev.swap(4, 5));
    let r = verify(dir.path(), None);
    assert_eq!(kinds(&r), vec![(5, BreakKind::EventsReordered)]);
}

#[test]
fn truncation_is_caught_against_a_recorded_head() {
    let (dir, head) = tampered(20);
    rewrite(dir.path(), |ev| ev.truncate(15));
    let r = verify(dir.path(), Some((21, head)));
    assert!(kinds(&r).contains(&(16, BreakKind::Truncated)), "{:?}", r.breaks);
}

#[test]
fn forged_append_is_caught() {
    let (dir, _) = tampered(20);
    rewrite(dir.path(), |ev| {
        let (body, _) = ev[20].clone();
        // A copy of the last event with a made-up hash.
        ev.push((body, [0xab; 32]));
    });
    let r = verify(dir.path(), None);
    assert!(kinds(&r).contains(&(21, BreakKind::EventsReordered)), "{:?}", r.breaks);
}

#[test]
fn consistent_rewrite_is_caught_by_head_and_signature() {
    let (dir, head) = tampered(20);
    rewrite(dir.path(), |ev| {
        // Rewrite from seq 12 with recomputed hashes: the chain itself stays consistent.
        let body = &mut ev[11].0;
        let last = body.len() - 1;
        body[last] ^= 0x01;
        let mut prev = ev[10].1;
        for e in ev.iter_mut().skip(11) {
            e.1 = chain_hash(&prev, &e.0);
            prev = e.1;
        }
    });
    let r = verify(dir.path(), Some((21, head)));
    assert_eq!(kinds(&r), vec![(21, BreakKind::HeadMismatch)]);
    assert!(r.breaks.iter().any(|b| b.kind == BreakKind::CheckpointMismatch));
    let _ = GENESIS;
}

#[test]
fn opened_ledger_refuses_writes_when_chain_since_verified_point_is_broken() {
    let (dir, _) = tampered(5);
    // Corrupt the last event; reset the verified point so the open check covers it.
    rewrite(dir.path(), |ev| {
        let body = &mut ev[5].0;
        let last = body.len() - 1;
        body[last] ^= 0x01;
    });
    {
        let store = Store::open(dir.path()).unwrap();
        store.raw_tree().unwrap().remove(b"Mverified").unwrap();
        store.raw_tree().unwrap().remove(b"S").unwrap();
        store.sync().unwrap();
    }
    let ledger = Ledger::open(dir.path(), options()).unwrap();
    assert!(ledger.broken().is_some());
    let r = ledger.submit(sub("x", telemetry("dev-1", 1)), op());
    assert!(matches!(r, Err(ref e) if e.code() == "ledger_broken"), "{r:?}");
    let _ = Verifier::from_vkey;
}

#[test]
fn concurrent_submitters_with_repeated_ids_get_one_event_each() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = std::sync::Arc::new(Ledger::open(dir.path(), options()).unwrap());
    ledger.submit(sub("enroll-1", enroll("dev-1")), op()).unwrap();
    ledger.submit(sub("enroll-2", enroll("dev-2")), op()).unwrap();
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let ledger = ledger.clone();
            std::thread::spawn(move || {
                let mut receipts = Vec::new();
                for i in 0..300u64 {
                    // Every id is submitted by 4 threads with the same body.
                    let id = format!("hb-{}-{i}", t % 4);
                    let dev = if i % 2 == 0 { "dev-1" } else { "dev-2" };
                    if t == 5 && i == 150 {
                        let _ = ledger.submit(
                            sub(
                                "decom-2",
                                Command::DecommissionDevice { device_id: "dev-2".into(), reason: String::new() },
                            ),
                            op(),
                        );
                    }
                    match ledger.submit(sub(&id, telemetry(dev, i as i64)), op()).unwrap() {
                        Outcome::Accepted(r) | Outcome::Duplicate(r) => receipts.push((id, r.seq)),
                        Outcome::Rejected(r) => assert_eq!(r.code(), "device_decommissioned", "{r}"),
                    }
                }
                receipts
            })
        })
        .collect();
    let mut by_id = std::collections::HashMap::new();
    for t in threads {
        for (id, seq) in t.join().unwrap() {
            let prev = by_id.insert(id.clone(), seq);
            assert!(prev.is_none_or(|p| p == seq), "{id} got two different receipts");
        }
    }
    let events = ledger.read(1, u64::MAX).unwrap();
    assert!(events.iter().enumerate().all(|(i, e)| e.seq == i as u64 + 1), "gapless");
    let mut seen = std::collections::HashSet::new();
    let mut decommissioned_at = None;
    for e in &events {
        assert!(seen.insert(e.record.command_id.clone()), "duplicate event for {}", e.record.command_id);
        if let hwledger_engine::Event::DeviceDecommissioned { .. } = e.record.event {
            decommissioned_at = Some(e.seq);
        }
        if let hwledger_engine::Event::TelemetryRecorded { device_id, .. } = &e.record.event {
            if device_id == "dev-2" {
                assert!(decommissioned_at.is_none(), "telemetry for dev-2 after its decommission");
            }
        }
    }
    assert_eq!(events.len(), seen.len());
}

/// The auth epoch (what the server's pin-check cache is validated by) moves on every commit that can change
/// an authorization answer, and only then: heartbeats leave it; enrollment, pins, revocations and
/// decommissioning move it, before their receipts are returned.
#[test]
fn auth_epoch_moves_exactly_when_authorization_can_change() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = filled(dir.path(), 0);
    let e0 = ledger.auth_epoch();
    ledger.submit(sub("hb-a", telemetry("dev-1", 1)), op()).expect("heartbeat");
    assert_eq!(ledger.auth_epoch(), e0, "a heartbeat cannot change who is allowed in");
    let pin = Command::IssueCertificate {
        role: hwledger_engine::event::CertRole::Agent("dev-1".into()),
        fingerprint: [7u8; 32],
        serial: "01".into(),
        not_after: 1_900_000_000_000,
    };
    let r = ledger.submit(sub("pin-1", pin), op()).expect("pin");
    assert!(matches!(r, Outcome::Accepted(_)), "{r:?}");
    let e1 = ledger.auth_epoch();
    assert!(e1 > e0, "a pin moves the epoch by the time its receipt is back");
    let revoke = Command::RevokeCertificate { fingerprint: [7u8; 32], reason: "lost".into() };
    let r = ledger.submit(sub("revoke-1", revoke), op()).expect("revoke");
    assert!(matches!(r, Outcome::Accepted(_)), "{r:?}");
    assert!(ledger.auth_epoch() > e1);
    let e2 = ledger.auth_epoch();
    ledger
        .submit(sub("dec-1", Command::DecommissionDevice { device_id: "dev-1".into(), reason: "retired".into() }), op())
        .expect("dec");
    assert!(ledger.auth_epoch() > e2, "decommissioning moves it");
    // A rejected command appends nothing and changes nothing.
    let e3 = ledger.auth_epoch();
    let r = ledger.submit(sub("hb-x", telemetry("nope", 1)), op()).expect("submit");
    assert!(matches!(r, Outcome::Rejected(_)));
    assert_eq!(ledger.auth_epoch(), e3);
}

/// Regression: an empty `submit_many` used to overflow the checkpoint-due arithmetic and kill the writer.
#[test]
fn an_empty_submission_does_not_stop_the_writer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = filled(dir.path(), 1);
    assert!(ledger.submit_many(Vec::new()).wait().is_empty());
    let r = ledger.submit(sub("after-empty", telemetry("dev-1", 99)), op()).expect("the writer still runs");
    assert!(matches!(r, Outcome::Accepted(_)), "{r:?}");
}
