//! Shared helpers of the projections' integration tests: a real ledger in a temporary directory, and commands
//! submitted to it at chosen times.

#![allow(dead_code)]

use std::collections::BTreeMap;

use hwledger_engine::command::{Command, Context, Submission};
use hwledger_engine::event::{CertRole, DeviceKind, GpuInfo, GpuReading, PriceQuote};
use hwledger_engine::ledger::LedgerOptions;
use hwledger_engine::{Actor, Ledger, Outcome};
use hwledger_projections::{AsOf, Projector, as_of};

/// A ledger in a temporary directory, with a command-id counter.
pub struct TestLedger {
    pub dir: tempfile::TempDir,
    pub ledger: Ledger,
    next_id: std::cell::Cell<u64>,
}

impl TestLedger {
    pub fn new() -> TestLedger {
        let dir = tempfile::tempdir().expect("create temp dir");
        let ledger = Ledger::open(dir.path(), LedgerOptions::default()).expect("open ledger");
        TestLedger { dir, ledger, next_id: std::cell::Cell::new(0) }
    }

    /// Submits `command` as the system at `now`; returns the last seq if accepted.
    pub fn submit(&self, now: i64, command: Command) -> Option<u64> {
        self.next_id.set(self.next_id.get() + 1);
        let sub = Submission { command_id: format!("cmd-{}", self.next_id.get()), expected_version: None, command };
        match self.ledger.submit(sub, Context::new(Actor::System, now)) {
            Ok(Outcome::Accepted(r)) => Some(r.seq),
            Ok(_) => None,
            Err(e) => panic!("submit failed: {e}"),
        }
    }

    /// Like [`TestLedger::submit`] but the command must be accepted.
    pub fn accept(&self, now: i64, command: Command) -> u64 {
        let what = format!("{command:?}");
        self.submit(now, command).unwrap_or_else(|| panic!("rejected: {what}"))
    }

    pub fn head(&self) -> u64 {
        self.ledger.head().seq
    }
}

pub fn enroll(device: &str, kind: DeviceKind) -> Command {
    Command::EnrollDevice {
        device_id: device.into(),
        kind,
        hostname: Some(format!("{device}.lan")),
        labels: BTreeMap::new(),
    }
}

pub fn register(device: &str, gpus: u32) -> Command {
    Command::RegisterDevice {
        device_id: device.into(),
        hostname: None,
        gpus: (0..gpus)
            .map(|index| GpuInfo { index, name: "NVIDIA RTX 4090".into(), uuid: None, vram_total_mib: 24_576 })
            .collect(),
    }
}

pub fn telemetry(device: &str, sampled_at: i64, gpus: u32, util: f32, vram_mib: u64) -> Command {
    Command::RecordTelemetry {
        device_id: device.into(),
        sampled_at,
        gpus: (0..gpus)
            .map(|index| GpuReading {
                index,
                vram_used_mib: Some(vram_mib),
                vram_total_mib: Some(24_576),
                utilization_pct: Some(util),
                temperature_c: Some(55.0),
                power_w: Some(250.0),
            })
            .collect(),
    }
}

pub fn dispatch(job: &str, device: &str, price: Option<u64>) -> Command {
    Command::DispatchJob {
        job_id: job.into(),
        device_id: device.into(),
        model: "llama-3-8b".into(),
        vram_mib: 1_024,
        price: price.map(|p| PriceQuote { source: "vast".into(), micro_usd_per_hour: p, offer_id: None, quoted_at: 0 }),
    }
}

pub fn issue(device: &str, fingerprint: [u8; 32]) -> Command {
    Command::IssueCertificate {
        role: CertRole::Agent(device.into()),
        fingerprint,
        serial: hex::encode(&fingerprint[..4]),
        not_after: i64::MAX,
    }
}

/// Asserts the projector's live digests equal a fresh replay of the whole log.
#[track_caller]
pub fn assert_matches_replay(projector: &Projector, t: &TestLedger) {
    let head = t.head();
    let (seq, live) = projector.digests();
    assert_eq!(seq, head, "projector is at {seq}, the log at {head}");
    let fresh = as_of(t.ledger.store(), AsOf::Seq(head)).expect("replay");
    assert_eq!(fresh.seq, head);
    for ((name, l), (_, f)) in live.iter().zip(fresh.projections.digests().iter()) {
        assert_eq!(l, f, "{name}: live digest differs from a fresh rebuild at seq {head}");
    }
}
