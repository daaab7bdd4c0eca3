//! Disk full, engine level: the ledger's directory on a small tmpfs this test mounts (root is needed for
//! `mount`; the test fails with a clear message without it), filled up by ingest. Checks that every submission
//! is either acknowledged and durable or refused with `storage_unavailable` and appended nothing; that while
//! the disk stays full the ledger keeps refusing without appending; that once space is freed the **same open
//! ledger** accepts writes again by itself; that retries of the refused commands (same ids) are appended once
//! or answered with their original receipt; and that after a reopen the chain verifies, every acknowledged
//! receipt is there exactly once and the decision state equals a replay of the log.
//!
//! Figures: `RELIABILITY diskfull.engine.*` lines (run with `--nocapture`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command as Proc;

use hwledger_engine::event::{Actor, DeviceKind, GpuReading};
use hwledger_engine::ledger::{Outcome, SubmitError};
use hwledger_engine::verify::{VerifyOptions, verify_dir};
use hwledger_engine::{Command, Context, Ledger, LedgerOptions, Submission};

/// A tmpfs mounted on a fresh directory, unmounted on drop.
struct Tmpfs {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Tmpfs {
    fn mount(size_mib: u64) -> Tmpfs {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("fs");
        std::fs::create_dir(&path).expect("mount point");
        let out = Proc::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m,mode=0700"), "tmpfs"])
            .arg(&path)
            .output();
        match out {
            Ok(o) if o.status.success() => Tmpfs { _dir: dir, path },
            Ok(o) => panic!(
                "this test mounts a {size_mib} MiB tmpfs to fill it up and needs root (`mount -t tmpfs` failed: {}); \
                 run it as root, as CI does",
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => panic!("this test needs the `mount` command to create a small filesystem: {e}"),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Proc::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn ctx() -> Context {
    Context::new(Actor::Operator("diskfull".into()), 1_700_000_000_000)
}

fn heartbeat(id: &str, n: u64) -> Submission {
    let gpus = (0..8)
        .map(|i| GpuReading {
            index: i,
            vram_used_mib: Some(1000 + n % 20_000),
            vram_total_mib: Some(24_576),
            utilization_pct: Some(f32::from(u8::try_from(n % 100).unwrap_or(0))),
            temperature_c: Some(55.0),
            power_w: Some(210.0),
        })
        .collect();
    Submission {
        command_id: id.to_owned(),
        expected_version: None,
        command: Command::RecordTelemetry {
            device_id: "dev-1".into(),
            sampled_at: 1_700_000_000_000 + i64::try_from(n).unwrap_or(0),
            gpus,
        },
    }
}

/// Fills `dir` with a ballast file until the filesystem refuses more; returns its path.
fn ballast(dir: &Path, leave_mib: u64) -> PathBuf {
    use std::io::Write;
    let path = dir.join("ballast");
    let mut f = std::fs::File::create(&path).expect("create ballast");
    let chunk = vec![0xa5u8; 1 << 20];
    let avail = available_mib(dir);
    for _ in 0..avail.saturating_sub(leave_mib) {
        if f.write_all(&chunk).is_err() {
            break;
        }
    }
    let _ = f.sync_all();
    path
}

fn available_mib(dir: &Path) -> u64 {
    let out = Proc::new("df").args(["--output=avail", "-m"]).arg(dir).output().expect("df");
    String::from_utf8_lossy(&out.stdout).lines().nth(1).and_then(|l| l.trim().parse().ok()).unwrap_or(0)
}

#[test]
fn a_full_disk_refuses_cleanly_and_recovers_by_itself() {
    let fs = Tmpfs::mount(48);
    let dir = fs.path.join("ledger");
    let ledger = Ledger::open(&dir, LedgerOptions::default()).expect("open ledger");
    let enroll = Submission {
        command_id: "enroll".into(),
        expected_version: None,
        command: Command::EnrollDevice {
            device_id: "dev-1".into(),
            kind: DeviceKind::Local,
            hostname: None,
            labels: Default::default(),
        },
    };
    assert!(matches!(ledger.submit(enroll, ctx()), Ok(Outcome::Accepted(_))));
    let ballast = ballast(&fs.path, 6);

    // Ingest in groups of 64 until the disk is full (bounded).
    let mut acked: HashMap<String, (u64, [u8; 32])> = HashMap::new();
    let mut refused: Vec<Submission> = Vec::new();
    let mut n = 0u64;
    let mut first_error = None;
    while first_error.is_none() && n < 2_000_000 {
        let items: Vec<_> = (0..64)
            .map(|_| {
                n += 1;
                (heartbeat(&format!("hb-{n}"), n), ctx())
            })
            .collect();
        let subs: Vec<Submission> = items.iter().map(|(s, _)| s.clone()).collect();
        for (sub, outcome) in subs.into_iter().zip(ledger.submit_many(items).wait()) {
            let id = sub.command_id.clone();
            match outcome {
                Ok(Outcome::Accepted(r)) => {
                    acked.insert(id, (r.seq, r.hash));
                }
                Err(e @ SubmitError::Storage(_)) => {
                    assert_eq!(e.code(), "storage_unavailable");
                    first_error.get_or_insert(e.to_string());
                    refused.push(sub);
                }
                other => panic!("{id}: unexpected {other:?}"),
            }
        }
    }
    let first_error = first_error.expect("the disk never filled up");
    println!("disk full after {} acknowledged heartbeats: {first_error}", acked.len());
    let head_full = ledger.head().seq;

    // While full: refused again, nothing appended, the head stays where the durable log ends.
    for i in 0..5 {
        let sub = heartbeat(&format!("full-{i}"), n + i);
        match ledger.submit(sub.clone(), ctx()) {
            Err(e) => assert_eq!(e.code(), "storage_unavailable", "{e}"),
            Ok(o) => panic!("accepted on a full disk: {o:?}"),
        }
        refused.push(sub);
    }
    assert_eq!(ledger.head().seq, head_full, "nothing is appended while the disk is full");

    // Free the space: the same ledger accepts writes again, by itself.
    std::fs::remove_file(&ballast).expect("remove ballast");
    let after = ledger.submit(heartbeat("after-free", n + 100), ctx());
    assert!(matches!(after, Ok(Outcome::Accepted(_))), "no recovery after freeing space: {after:?}");
    assert!(ledger.unavailable().is_none() && ledger.broken().is_none());
    // Retries of every refused command: appended once, or (if its group had reached the disk after all) the
    // original receipt.
    let (mut retried_new, mut retried_dup) = (0u64, 0u64);
    for sub in &refused {
        let id = &sub.command_id;
        match ledger.submit(sub.clone(), ctx()) {
            Ok(Outcome::Accepted(r)) => {
                retried_new += 1;
                acked.insert(id.clone(), (r.seq, r.hash));
            }
            Ok(Outcome::Duplicate(r)) => {
                retried_dup += 1;
                acked.insert(id.clone(), (r.seq, r.hash));
            }
            other => panic!("retry of {id}: {other:?}"),
        }
    }
    let head = ledger.head().seq;
    let live_state = ledger.state();
    ledger.close().expect("close");
    drop(ledger);

    // Reopened: intact chain, every acknowledged receipt exactly once, state = replay.
    let report = verify_dir(&dir, &VerifyOptions::default(), |_| {}).expect("verify");
    assert!(report.intact(), "{:?}", report.breaks);
    assert_eq!(report.head_seq, head);
    let ledger = Ledger::open(&dir, LedgerOptions::default()).expect("reopen");
    assert!(ledger.broken().is_none());
    let events = ledger.read(1, u64::MAX).expect("read log");
    let mut count: HashMap<&str, u32> = HashMap::new();
    for e in &events {
        *count.entry(e.record.command_id.as_str()).or_default() += 1;
    }
    assert!(count.values().all(|c| *c == 1), "a command id appended twice");
    for (id, (seq, hash)) in &acked {
        let e = &events[usize::try_from(*seq - 1).expect("seq")];
        assert_eq!((&e.record.command_id, &e.hash), (id, hash), "acknowledged {id} lost");
    }
    let mut replayed = hwledger_engine::state::State::default();
    for e in &events {
        hwledger_engine::state::apply(&mut replayed, &e.record);
    }
    assert_eq!(replayed, live_state, "the state after recovery equals a replay of the log");
    assert_eq!(ledger.state(), live_state);
    println!("RELIABILITY diskfull.engine.acknowledged_before_full {}", head_full);
    println!("RELIABILITY diskfull.engine.refused {}", refused.len());
    println!("RELIABILITY diskfull.engine.retries_appended {retried_new}");
    println!("RELIABILITY diskfull.engine.retries_answered_duplicate {retried_dup}");
    println!("RELIABILITY diskfull.engine.lost 0");
    println!("RELIABILITY diskfull.engine.recovered_without_restart 1");
}
