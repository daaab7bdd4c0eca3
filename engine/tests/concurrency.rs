//! Concurrency through `Ledger::submit_many`: 64 submitter threads × 5 000 commands each (group commits of 1 to
//! 16), with deliberately repeated command ids — the same id with the same body from many submitters (one is
//! appended, the others get its receipt as duplicates) and the same id with different bodies (one is appended,
//! the others are `duplicate_conflict`) — and racing decommissions: at three moments every submitter tries to
//! decommission one of a few devices while the others keep sending heartbeats for them.
//!
//! Checks: every submission gets exactly one outcome and no fail-stop error; seqs are gapless; no command id is
//! in the log twice (zero duplicates); every accepted receipt is in the log with its seq and hash and every
//! duplicate answer carries that same receipt (zero losses); each device is decommissioned at most once and no
//! heartbeat of a device is in the log after its decommission (rules never violated); after a reopen the chain
//! verifies and the decision state equals a replay of the log.
//!
//! `HWLEDGER_CONCURRENCY_SUBMITTERS` (default 64) and `HWLEDGER_CONCURRENCY_COMMANDS` (per submitter, default
//! 5 000). Figures: `RELIABILITY concurrency.engine.*` lines (run with `--nocapture`).

use std::collections::HashMap;
use std::sync::Arc;

use hwledger_engine::event::{Actor, DeviceKind, Event, GpuReading};
use hwledger_engine::ledger::{Outcome, Receipt};
use hwledger_engine::verify::{VerifyOptions, verify_dir};
use hwledger_engine::{Command, Context, Ledger, LedgerOptions, Submission};

const DEVICES: u64 = 32;
/// Devices the submitters race to decommission (one per phase and group of submitters).
const DOOMED: u64 = 6;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn ctx() -> Context {
    Context::new(Actor::Operator("race".into()), 1_700_000_000_000)
}

fn sub(id: String, command: Command) -> Submission {
    Submission { command_id: id, expected_version: None, command }
}

fn heartbeat(device: u64, n: u64) -> Command {
    Command::RecordTelemetry {
        device_id: format!("dev-{device}"),
        sampled_at: 1_700_000_000_000 + i64::try_from(n).unwrap_or(0),
        gpus: vec![GpuReading {
            index: 0,
            vram_used_mib: Some(n % 24_000),
            vram_total_mib: Some(24_576),
            utilization_pct: Some(50.0),
            temperature_c: Some(60.0),
            power_w: Some(300.0),
        }],
    }
}

/// xorshift64*, seeded per submitter.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// What one submitter sent and got back: (command id, kind of command, outcome code, receipt).
type Answers = Vec<(String, &'static str, &'static str, Option<Receipt>)>;

fn submitter(ledger: &Ledger, s: u64, per: u64) -> Answers {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (s + 1).wrapping_mul(0x2545_f491));
    let mut answers = Vec::with_capacity(usize::try_from(per).unwrap_or(0));
    let mut k = 0u64;
    while k < per {
        let group = (1 + rng.below(16)).min(per - k);
        let mut items = Vec::new();
        let mut kinds = Vec::new();
        for _ in 0..group {
            let phase = [per / 4, per / 2, 3 * per / 4].iter().position(|p| *p == k);
            let (id, kind, command) = if let Some(phase) = phase {
                // Racing decommissions: every submitter of a group of 8 aims at the same device.
                let device = (u64::try_from(phase).unwrap_or(0) * 2 + s % 2) % DOOMED;
                let reason = "race".to_owned();
                (
                    format!("decom-{s}-{k}"),
                    "decommission",
                    Command::DecommissionDevice { device_id: format!("dev-{device}"), reason },
                )
            } else {
                match rng.below(16) {
                    // The same id and body from many submitters: one append, duplicates for the rest.
                    0 | 1 => {
                        let (d, j) = (rng.below(DEVICES), rng.below(64));
                        (format!("shared-{d}-{j}"), "shared", heartbeat(d, 1_000_000 + j))
                    }
                    // The same id with another body: one append, duplicate_conflict for the rest.
                    2 => {
                        let j = rng.below(32);
                        (format!("conflict-{j}"), "conflict", heartbeat(DEVICES - 1, s * 1_000_000 + k))
                    }
                    _ => {
                        let d = rng.below(DEVICES);
                        (format!("hb-{s}-{k}"), "unique", heartbeat(d, s * 1_000_000 + k))
                    }
                }
            };
            kinds.push((id.clone(), kind));
            items.push((sub(id, command), ctx()));
            k += 1;
        }
        let outcomes = ledger.submit_many(items).wait();
        assert_eq!(outcomes.len(), kinds.len(), "one outcome per submission");
        for ((id, kind), outcome) in kinds.into_iter().zip(outcomes) {
            let (code, receipt) = match outcome {
                Ok(Outcome::Accepted(r)) => ("accepted", Some(r)),
                Ok(Outcome::Duplicate(r)) => ("duplicate", Some(r)),
                Ok(Outcome::Rejected(r)) => (r.code(), None),
                Err(e) => panic!("{id}: fail-stop error {e}"),
            };
            answers.push((id, kind, code, receipt));
        }
    }
    answers
}

#[test]
fn racing_submitters_never_lose_duplicate_or_break_a_rule() {
    let submitters = env_u64("HWLEDGER_CONCURRENCY_SUBMITTERS", 64).max(1);
    let per = env_u64("HWLEDGER_CONCURRENCY_COMMANDS", 5_000).max(4);
    let dir = tempfile::tempdir().expect("temp dir");
    let ledger = Arc::new(Ledger::open(dir.path(), LedgerOptions::default()).expect("open"));
    for d in 0..DEVICES {
        let enroll = Command::EnrollDevice {
            device_id: format!("dev-{d}"),
            kind: DeviceKind::Local,
            hostname: None,
            labels: Default::default(),
        };
        assert!(matches!(ledger.submit(sub(format!("enroll-{d}"), enroll), ctx()), Ok(Outcome::Accepted(_))));
    }
    let setup = ledger.head().seq;
    let threads: Vec<_> = (0..submitters)
        .map(|s| {
            let ledger = ledger.clone();
            std::thread::spawn(move || submitter(&ledger, s, per))
        })
        .collect();
    let answers: Vec<_> = threads.into_iter().flat_map(|t| t.join().expect("submitter panicked")).collect();
    assert_eq!(answers.len() as u64, submitters * per, "every submission got exactly one outcome");

    let head = ledger.head().seq;
    let events = ledger.read(1, head).expect("read the log");
    assert_eq!(events.len() as u64, head);
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.seq, i as u64 + 1, "seqs are gapless");
    }
    // Zero duplicates: no command id twice in the log.
    let mut in_log: HashMap<&str, usize> = HashMap::new();
    for (i, e) in events.iter().enumerate() {
        assert!(in_log.insert(e.record.command_id.as_str(), i).is_none(), "{} appended twice", e.record.command_id);
    }
    // Zero losses: every accepted receipt is in the log; duplicates carry the accepted receipt.
    let mut accepted: HashMap<&str, &Receipt> = HashMap::new();
    let mut codes: HashMap<(&str, &str), u64> = HashMap::new();
    for (id, kind, code, receipt) in &answers {
        *codes.entry((*kind, *code)).or_default() += 1;
        if *code == "accepted" {
            let r = receipt.as_ref().expect("receipt");
            assert!(accepted.insert(id.as_str(), r).is_none(), "{id} accepted twice");
            let e = &events[usize::try_from(r.seq - 1).expect("seq")];
            assert_eq!((&e.record.command_id, e.hash), (id, r.hash), "accepted {id} is not in the log as receipted");
        }
    }
    assert_eq!(accepted.len() as u64 + setup, head, "every event in the log comes from an accepted command");
    for (id, _, code, receipt) in &answers {
        if *code == "duplicate" {
            assert_eq!(
                accepted.get(id.as_str()).copied(),
                receipt.as_ref(),
                "{id}: a duplicate answer with another receipt"
            );
        }
        if *code == "duplicate_conflict" {
            assert!(accepted.contains_key(id.as_str()), "{id}: conflict with a command that is not in the log");
        }
    }
    // Rules: decommission once; no heartbeat after it.
    let mut decommissioned: HashMap<String, u64> = HashMap::new();
    let mut violations = 0u64;
    for e in &events {
        match &e.record.event {
            Event::DeviceDecommissioned { device_id, .. } => {
                assert!(decommissioned.insert(device_id.clone(), e.seq).is_none(), "{device_id} decommissioned twice");
            }
            Event::TelemetryRecorded { device_id, .. } if decommissioned.contains_key(device_id) => violations += 1,
            _ => {}
        }
    }
    assert_eq!(violations, 0, "heartbeats accepted after their device's decommission");
    let raced = decommissioned.len() as u64;
    assert!((1..=DOOMED).contains(&raced), "racing decommissions: {decommissioned:?}");

    // Reopen: the chain verifies, the state equals a replay.
    let live = ledger.state();
    drop(ledger);
    let report = verify_dir(dir.path(), &VerifyOptions::default(), |_| {}).expect("verify");
    assert!(report.intact(), "{:?}", report.breaks);
    let reopened = Ledger::open(dir.path(), LedgerOptions::default()).expect("reopen");
    let mut replayed = hwledger_engine::state::State::default();
    for e in &events {
        hwledger_engine::state::apply(&mut replayed, &e.record);
    }
    assert_eq!(replayed, live);
    assert_eq!(reopened.state(), live);

    let count = |kind: &str, code: &str| codes.get(&(kind, code)).copied().unwrap_or(0);
    let sum = |code: &str| codes.iter().filter(|((_, c), _)| *c == code).map(|(_, n)| n).sum::<u64>();
    println!("outcomes by (kind, code): {codes:?}");
    println!("RELIABILITY concurrency.engine.submitters {submitters}");
    println!("RELIABILITY concurrency.engine.commands {}", submitters * per);
    println!("RELIABILITY concurrency.engine.accepted {}", accepted.len());
    println!("RELIABILITY concurrency.engine.duplicates_answered {}", sum("duplicate"));
    println!("RELIABILITY concurrency.engine.conflicts {}", sum("duplicate_conflict"));
    println!("RELIABILITY concurrency.engine.rejected_decommissioned {}", sum("device_decommissioned"));
    println!("RELIABILITY concurrency.engine.decommission_races_won {}", count("decommission", "accepted"));
    println!("RELIABILITY concurrency.engine.events {head}");
    println!("RELIABILITY concurrency.engine.lost 0");
    println!("RELIABILITY concurrency.engine.duplicated 0");
    println!("RELIABILITY concurrency.engine.rule_violations {violations}");
}
