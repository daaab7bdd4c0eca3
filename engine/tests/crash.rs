//! Crash safety: a child process ingests commands and prints each receipt only after it is acknowledged;
//! the parent SIGKILLs it at a random moment, reopens the data directory, and checks that every acknowledged
//! receipt is present exactly once and the chain verifies. The test binary re-runs itself as the child.
//!
//! `HWLEDGER_CRASH_KILLS` sets the number of kills (default 3; the long run uses 50). Figures:
//! `RELIABILITY crash.engine.*` lines on stdout (with `--nocapture`).

use std::io::{BufRead, BufReader};
use std::process::{Command as Proc, Stdio};
use std::time::Duration;

use hwledger_engine::event::{Actor, DeviceKind};
use hwledger_engine::ledger::Outcome;
use hwledger_engine::testing::telemetry;
use hwledger_engine::verify::{VerifyOptions, verify_dir};
use hwledger_engine::{Command, Context, Ledger, LedgerOptions, Submission};

const CHILD_ENV: &str = "HWLEDGER_CRASH_CHILD_DIR";

fn ctx() -> Context {
    Context::new(Actor::Operator("crash".into()), 1_700_000_000_000)
}

/// The child: ingest forever from where the log is, with 8 concurrent submitters, printing receipts.
fn child(dir: &str) {
    let ledger = std::sync::Arc::new(Ledger::open(std::path::Path::new(dir), LedgerOptions::default()).unwrap());
    let _ = ledger.submit(
        Submission {
            command_id: "enroll".into(),
            expected_version: None,
            command: Command::EnrollDevice {
                device_id: "dev-1".into(),
                kind: DeviceKind::Local,
                hostname: None,
                labels: Default::default(),
            },
        },
        ctx(),
    );
    let pid = std::process::id();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let ledger = ledger.clone();
            std::thread::spawn(move || {
                for i in 0u64.. {
                    let id = format!("p{pid}-t{t}-{i}");
                    let sub = Submission {
                        command_id: id.clone(),
                        expected_version: None,
                        command: telemetry("dev-1", i as i64),
                    };
                    match ledger.submit(sub, ctx()) {
                        Ok(Outcome::Accepted(r)) => {
                            use std::io::Write;
                            let mut out = std::io::stdout().lock();
                            let _ = writeln!(out, "{} {} {}", r.command_id, r.seq, hex::encode(r.hash));
                            let _ = out.flush();
                        }
                        other => panic!("unexpected {other:?}"),
                    }
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

#[test]
fn acknowledged_receipts_survive_sigkill() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        child(&dir);
        return;
    }
    let kills: u32 = std::env::var("HWLEDGER_CRASH_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut acknowledged: Vec<(String, u64, String)> = Vec::new();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..kills {
        let mut child = Proc::new(&exe)
            .args(["--exact", "acknowledged_receipts_survive_sigkill", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        // Random lifetime 150-650 ms (xorshift, deterministic per run).
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let life = Duration::from_millis(150 + seed % 500);
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let mut parts = line.split(' ');
                if let (Some(id), Some(seq), Some(hash)) = (parts.next(), parts.next(), parts.next()) {
                    if id.starts_with('p') {
                        if let Ok(seq) = seq.parse() {
                            lines.push((id.to_owned(), seq, hash.to_owned()));
                        }
                    }
                }
            }
            lines
        });
        std::thread::sleep(life);
        // SIGKILL: no destructor, no final flush.
        child.kill().unwrap();
        let _ = child.wait();
        let got = reader.join().unwrap();
        assert!(!got.is_empty() || round > 0 || life < Duration::from_millis(200), "child printed no receipts");
        acknowledged.extend(got);

        // Reopen and check every acknowledged receipt is there exactly once, with its hash.
        let ledger = Ledger::open(dir.path(), LedgerOptions::default()).unwrap();
        assert!(ledger.broken().is_none(), "{:?}", ledger.broken());
        let events = ledger.read(1, u64::MAX).unwrap();
        let mut seen = std::collections::HashMap::new();
        for e in &events {
            *seen.entry(e.record.command_id.clone()).or_insert(0u32) += 1;
        }
        for (id, seq, hash) in &acknowledged {
            assert_eq!(seen.get(id), Some(&1), "acknowledged {id} present exactly once");
            let e = &events[(*seq - 1) as usize];
            assert_eq!(&e.record.command_id, id);
            assert_eq!(&hex::encode(e.hash), hash);
        }
        drop(ledger);
        let report = verify_dir(dir.path(), &VerifyOptions::default(), |_| {}).unwrap();
        assert!(report.intact(), "round {round}: {:?}", report.breaks);
    }
    eprintln!("crash test: {kills} kills, {} acknowledged receipts, none lost", acknowledged.len());
    // Figures for scripts/reliability.sh (docs/RELIABILITY.md).
    println!("RELIABILITY crash.engine.kills {kills}");
    println!("RELIABILITY crash.engine.acknowledged {}", acknowledged.len());
    println!("RELIABILITY crash.engine.lost 0");
}
