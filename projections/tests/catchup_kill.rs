//! A projector SIGKILLed in the middle of catching up resumes exactly from a checkpoint it wrote.
//!
//! Each round the parent appends a few thousand events to the log, then starts a child process (this test
//! binary re-run with `HWLEDGER_CATCHUP_CHILD_DIR`) that opens the projector, which catches up and writes a
//! checkpoint every [`PERSIST_EVERY`] events, logging each one. The parent SIGKILLs the child right after a
//! chosen checkpoint line, reopens, and checks for every projection that it resumed from a checkpoint the child
//! really wrote (at or after the one the parent waited for: checkpoints are flushed before they are logged),
//! never rebuilt from scratch, and that after catching up its digest equals a fresh replay of the log.
//!
//! `HWLEDGER_CATCHUP_KILLS` sets the number of rounds (default 3).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command as Proc, Stdio};

use hwledger_engine::command::{Context, Submission};
use hwledger_engine::event::DeviceKind;
use hwledger_engine::ledger::LedgerOptions;
use hwledger_engine::{Actor, Ledger, Outcome};
use hwledger_projections::{AsOf, Projector, ProjectorOptions, as_of};
use support::{enroll, register, telemetry};

const CHILD_ENV: &str = "HWLEDGER_CATCHUP_CHILD_DIR";
const PERSIST_EVERY: u64 = 500;
const EVENTS_PER_ROUND: i64 = 6_000;
const T0: i64 = 1_710_028_800_000;

/// The child: open the projector (catching up, checkpointing) with checkpoint lines on stdout, then idle
/// until killed.
fn child(dir: &str) {
    tracing_subscriber::fmt()
        .with_env_filter("hwledger_projections=debug")
        .with_writer(std::io::stdout)
        .with_ansi(false)
        .without_time()
        .with_target(false)
        .with_level(false)
        .init();
    let ledger = Ledger::open(Path::new(dir), LedgerOptions::default()).expect("child: open ledger");
    let projector = Projector::open(ledger.store(), ProjectorOptions { persist_every: PERSIST_EVERY })
        .expect("child: open projector");
    println!("caught up {}", projector.applied_seq());
    std::thread::sleep(std::time::Duration::from_secs(60));
}

/// `projection checkpoint written projection=NAME seq=N` → `(NAME, N)`.
fn parse_checkpoint_line(line: &str) -> Option<(String, u64)> {
    if !line.contains("projection checkpoint written") {
        return None;
    }
    let field = |key: &str| line.split_whitespace().find_map(|w| w.strip_prefix(key)).map(str::to_owned);
    Some((field("projection=")?, field("seq=")?.parse().ok()?))
}

fn submit_all(ledger: &Ledger, items: Vec<(Submission, Context)>) {
    for outcome in ledger.submit_many(items).wait() {
        assert!(matches!(outcome, Ok(Outcome::Accepted(_))), "{outcome:?}");
    }
}

/// Appends one round of history: heartbeats from three devices (and, the first time, their enrollment).
fn grow(dir: &Path, round: i64) {
    let ledger = Ledger::open(dir, LedgerOptions::default()).expect("open ledger");
    let mut commands = Vec::new();
    if round == 0 {
        for d in ["a", "b", "c"] {
            commands.push((T0, enroll(d, DeviceKind::Local)));
            commands.push((T0, register(d, 2)));
        }
    }
    let base = T0 + round * EVENTS_PER_ROUND * 10_000;
    for i in 0..EVENTS_PER_ROUND {
        let now = base + i * 10_000;
        let d = ["a", "b", "c"][(i % 3) as usize];
        commands.push((now, telemetry(d, now, 2, (i % 100) as f32, 1_000 + (i as u64 % 500))));
    }
    let mut items: Vec<(Submission, Context)> = commands
        .into_iter()
        .enumerate()
        .map(|(i, (now, command))| {
            let sub = Submission { command_id: format!("r{round}-{i}"), expected_version: None, command };
            (sub, Context::new(Actor::System, now))
        })
        .collect();
    while !items.is_empty() {
        let rest = items.split_off(items.len().min(1_000));
        submit_all(&ledger, std::mem::replace(&mut items, rest));
    }
    ledger.close().expect("close ledger");
}

#[test]
fn projector_killed_mid_catch_up_resumes_from_a_checkpoint_it_wrote() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        child(&dir);
        return;
    }
    let rounds: i64 = std::env::var("HWLEDGER_CATCHUP_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let dir = tempfile::tempdir().expect("temp dir");
    let exe = std::env::current_exe().expect("test binary");
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    // What each projection had durably applied before the round (the parent persists after checking).
    let mut base: BTreeMap<String, u64> = BTreeMap::new();
    let mut resumed_mid_way = 0;
    for round in 0..rounds {
        grow(dir.path(), round);
        let mut child = Proc::new(&exe)
            .args(["--exact", "projector_killed_mid_catch_up_resumes_from_a_checkpoint_it_wrote", "--nocapture"])
            .args(["--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("child stdout");
        let mut lines = BufReader::new(stdout).lines();
        // Kill after the k-th checkpoint line: somewhere in the first half of this round's catch-up.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let per_round = 4 * (EVENTS_PER_ROUND as u64 / PERSIST_EVERY);
        let kill_after = 1 + seed % (per_round / 2);
        let mut written: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
        let mut waited_for: Option<(String, u64)> = None;
        let mut seen = 0;
        for line in lines.by_ref() {
            let line = line.expect("read child stdout");
            assert!(!line.starts_with("caught up"), "round {round}: the child finished before the kill: {line}");
            if let Some((name, seq)) = parse_checkpoint_line(&line) {
                written.entry(name.clone()).or_default().insert(seq);
                seen += 1;
                if seen == kill_after {
                    waited_for = Some((name, seq));
                    break;
                }
            }
        }
        // SIGKILL: no destructor, no final persist.
        child.kill().expect("kill child");
        for line in lines {
            let Ok(line) = line else { break };
            if let Some((name, seq)) = parse_checkpoint_line(&line) {
                written.entry(name).or_default().insert(seq);
            }
        }
        let _ = child.wait();
        let (waited_name, waited_seq) = waited_for.expect("the child wrote the awaited checkpoint");

        let ledger = Ledger::open(dir.path(), LedgerOptions::default()).expect("reopen ledger");
        let head = ledger.head().seq;
        let projector = Projector::open(ledger.store(), ProjectorOptions::default()).expect("reopen projector");
        for s in projector.status() {
            let name = s.name.to_string();
            assert_eq!(s.rebuilt, None, "round {round}: {name} was rebuilt instead of resuming");
            let mut allowed = written.get(&name).cloned().unwrap_or_default();
            allowed.insert(base.get(&name).copied().unwrap_or(0));
            assert!(
                allowed.contains(&s.loaded_seq),
                "round {round}: {name} resumed from seq {}, which is not a checkpoint it wrote ({allowed:?})",
                s.loaded_seq
            );
            if name == waited_name {
                assert!(
                    s.loaded_seq >= waited_seq,
                    "round {round}: {name} lost checkpoint {waited_seq} that was logged before the kill"
                );
            }
            if s.loaded_seq > base.get(&name).copied().unwrap_or(0) {
                resumed_mid_way += 1;
            }
            assert_eq!(s.applied_seq, head);
        }
        let (seq, live) = projector.digests();
        assert_eq!(seq, head);
        let fresh = as_of(ledger.store(), AsOf::Seq(head)).expect("replay");
        for ((name, l), (_, f)) in live.iter().zip(fresh.projections.digests().iter()) {
            assert_eq!(l, f, "round {round}: {name} after resuming differs from a fresh replay");
        }
        projector.persist().expect("persist");
        for s in projector.status() {
            base.insert(s.name.to_string(), s.persisted_seq);
        }
        drop(projector);
        ledger.close().expect("close");
    }
    assert!(resumed_mid_way > 0, "no projection ever resumed from a mid-catch-up checkpoint");
    println!(
        "catch-up kill test: {rounds} kills; {resumed_mid_way} projection resumptions from mid-catch-up checkpoints"
    );
}
