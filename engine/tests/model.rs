//! Property test against a model, with restarts: random command sequences (with repeated command ids and
//! rule-breaking commands) are submitted to a real ledger that is reopened at random points; the outcome of
//! every submission, the final decision state, the gapless seqs and the chain must all match a pure in-memory
//! model built from `decide` + `apply` and a map of command ids.

use std::collections::HashMap;

use hwledger_engine::event::{Actor, DeviceKind, EventRecord};
use hwledger_engine::ledger::Outcome;
use hwledger_engine::state::{State, apply};
use hwledger_engine::testing::telemetry;
use hwledger_engine::verify::{VerifyOptions, verify_dir};
use hwledger_engine::{Command, Context, Ledger, LedgerOptions, Submission, decide};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Submit { id: u8, cmd: u8, dev: u8 },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        9 => (0u8..40, 0u8..6, 0u8..3).prop_map(|(id, cmd, dev)| Op::Submit { id, cmd, dev }),
        1 => Just(Op::Reopen),
    ]
}

fn command(cmd: u8, dev: u8) -> Command {
    let device_id = format!("dev-{dev}");
    match cmd {
        0 => Command::EnrollDevice { device_id, kind: DeviceKind::Local, hostname: None, labels: Default::default() },
        1 | 2 => telemetry(&device_id, i64::from(dev)),
        3 => Command::DecommissionDevice { device_id, reason: String::new() },
        4 => Command::RegisterDevice { device_id, hostname: None, gpus: vec![] },
        _ => Command::StartJob { job_id: format!("job-{dev}") },
    }
}

fn ctx() -> Context {
    Context::new(Actor::Operator("prop".into()), 1_000)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn ledger_matches_model_across_restarts(ops in proptest::collection::vec(op(), 1..80)) {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open(dir.path(), LedgerOptions { snapshot_every: 7, ..LedgerOptions::default() }).unwrap();
        let mut model = State::default();
        let mut ids: HashMap<String, (Command, u64)> = HashMap::new();
        let mut seq = 0u64;
        for o in ops {
            match o {
                Op::Reopen => {
                    drop(ledger);
                    ledger = Ledger::open(dir.path(), LedgerOptions { snapshot_every: 7, ..LedgerOptions::default() }).unwrap();
                }
                Op::Submit { id, cmd, dev } => {
                    let id = format!("c{id}");
                    let command = command(cmd, dev);
                    let got = ledger.submit(Submission { command_id: id.clone(), expected_version: None, command: command.clone() }, ctx()).unwrap();
                    match ids.get(&id) {
                        Some((c, last)) if *c == command => {
                            prop_assert!(matches!(&got, Outcome::Duplicate(r) if r.seq == *last), "{got:?}");
                        }
                        Some(_) => prop_assert!(matches!(&got, Outcome::Rejected(r) if r.code() == "duplicate_conflict"), "{got:?}"),
                        None => match decide(&model, &command, &ctx()) {
                            Err(rej) => prop_assert_eq!(got, Outcome::Rejected(rej)),
                            Ok(events) => {
                                for event in events {
                                    seq += 1;
                                    let record = EventRecord {
                                        seq, recorded_at: 1_000, command_id: id.clone(), actor: ctx().actor,
                                        stream_version: model.next_version(&event), event,
                                    };
                                    apply(&mut model, &record);
                                }
                                prop_assert!(matches!(&got, Outcome::Accepted(r) if r.seq == seq), "{got:?}");
                                ids.insert(id, (command, seq));
                            }
                        },
                    }
                }
            }
        }
        prop_assert_eq!(ledger.head().seq, seq);
        prop_assert_eq!(ledger.state(), model);
        let events = ledger.read(1, u64::MAX).unwrap();
        prop_assert!(events.iter().enumerate().all(|(i, e)| e.seq == i as u64 + 1 && e.record.seq == e.seq));
        drop(ledger);
        let report = verify_dir(dir.path(), &VerifyOptions::default(), |_| {}).unwrap();
        prop_assert!(report.intact(), "{:?}", report.breaks);
    }
}
