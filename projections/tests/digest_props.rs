//! Property test: random command sequences through a real ledger, applied live by a following projector that is
//! restarted at random (gracefully, or "killed" without a final checkpoint), rebuilt at random (one projection
//! or all, while following), and reopened with random checkpoint intervals. After every phase the live digests
//! must equal those of a fresh rebuild of the whole log.
//!
//! `HWLEDGER_PROPTEST_CASES` raises the number of cases (default 12: each case fsyncs every command).

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hwledger_engine::command::Command;
use hwledger_engine::event::{CertRole, DeviceKind, GpuReading, PriceQuote};
use hwledger_projections::{ProjectionName, Projector, ProjectorOptions};
use proptest::prelude::*;
use support::{TestLedger, assert_matches_replay, enroll, register};

const T0: i64 = 1_710_028_800_000;

#[derive(Debug, Clone)]
enum Op {
    /// A command of kind `kind` about device `dev` / job `job`, `step` ms after the previous one.
    Cmd { kind: u8, dev: u8, job: u8, step: i64, val: u16 },
    /// Stop following, write checkpoints, reopen.
    Restart,
    /// Stop following and drop the projector without a final checkpoint, reopen.
    Kill,
    /// Rebuild one projection (0-3) or all (4) while the follower runs.
    Rebuild(u8),
}

fn op() -> impl Strategy<Value = Op> {
    let step = prop_oneof![4 => 0i64..120_000, 1 => 0i64..(3 * 3_600_000)];
    prop_oneof![
        30 => (0u8..16, 0u8..4, 0u8..6, step, any::<u16>())
            .prop_map(|(kind, dev, job, step, val)| Op::Cmd { kind, dev, job, step, val }),
        2 => Just(Op::Restart),
        2 => Just(Op::Kill),
        1 => (0u8..5).prop_map(Op::Rebuild),
    ]
}

fn device(dev: u8) -> String {
    format!("dev-{dev}")
}

fn command(kind: u8, dev: u8, job: u8, now: i64, val: u16) -> Command {
    let d = device(dev);
    let job_id = format!("job-{dev}-{job}");
    let gpus = u32::from(val % 3) + 1;
    match kind {
        0 => enroll(
            &d,
            match dev % 3 {
                0 => DeviceKind::Local,
                1 => DeviceKind::Ssh { target: format!("root@{d}") },
                _ => DeviceKind::Rental { provider: "vast".into(), instance_id: format!("i-{dev}") },
            },
        ),
        1 => register(&d, gpus),
        2..=4 => Command::RecordTelemetry {
            device_id: d,
            // Agents' clocks drift: sometimes behind the ledger's.
            sampled_at: now - i64::from(val % 4) * 20_000,
            gpus: (0..gpus)
                .map(|index| GpuReading {
                    index,
                    vram_used_mib: Some(u64::from(val) % 24_000),
                    vram_total_mib: Some(24_576),
                    utilization_pct: (!val.is_multiple_of(7)).then(|| f32::from(val % 101)),
                    temperature_c: Some(f32::from(val % 90)),
                    power_w: Some(f32::from(val % 400) + 0.5),
                })
                .collect(),
        },
        5 => Command::DecommissionDevice { device_id: d, reason: "prop".into() },
        6 => Command::DispatchJob {
            job_id,
            device_id: d,
            model: "m".into(),
            vram_mib: u64::from(val % 2_048),
            price: val.is_multiple_of(2).then(|| PriceQuote {
                source: "vast".into(),
                micro_usd_per_hour: u64::from(val) * 37,
                offer_id: None,
                quoted_at: now,
            }),
        },
        7 => Command::StartJob { job_id },
        8 => Command::CompleteJob { job_id, exit_status: 0 },
        9 => Command::FailJob { job_id, exit_status: Some(1), reason: "prop".into() },
        10 => Command::SetDeviceRate { device_id: d, micro_usd_per_hour: u64::from(val) * 100 },
        11 => Command::IssueCertificate {
            role: CertRole::Agent(d),
            fingerprint: [dev.wrapping_mul(16).wrapping_add(job); 32],
            serial: format!("{dev}-{job}"),
            not_after: i64::MAX,
        },
        12 => {
            Command::RevokeCertificate { fingerprint: [dev.wrapping_mul(16).wrapping_add(job); 32], reason: "p".into() }
        }
        13 => Command::PinHostKey { device_id: d, key_fingerprint: format!("SHA256:{dev}") },
        14 => Command::RecordProbe {
            device_id: d,
            ok: val.is_multiple_of(2),
            detail: String::new(),
            gpus: vec![GpuReading {
                index: 0,
                vram_used_mib: None,
                vram_total_mib: None,
                utilization_pct: Some(f32::from(val % 100)),
                temperature_c: None,
                power_w: None,
            }],
        },
        _ => Command::QuoteRentalPrice {
            provider: "vast".into(),
            gpu_name: "RTX 4090".into(),
            gpu_count: 1,
            micro_usd_per_hour: u64::from(val),
            offer_id: None,
            quoted_at: now,
        },
    }
}

fn run(ops: &[Op], persist_every: u64) {
    let t = TestLedger::new();
    let mut now = T0;
    let mut i = 0;
    while i < ops.len() {
        let projector = Projector::open(t.ledger.store(), ProjectorOptions { persist_every }).expect("open projector");
        assert_matches_replay(&projector, &t);
        let shutdown = AtomicBool::new(false);
        let mut end = None;
        std::thread::scope(|s| {
            let follower = s.spawn(|| projector.follow(&t.ledger, &shutdown));
            while i < ops.len() {
                let op = ops[i].clone();
                i += 1;
                match op {
                    Op::Cmd { kind, dev, job, step, val } => {
                        now += step;
                        t.submit(now, command(kind, dev, job, now, val));
                    }
                    Op::Rebuild(which) => {
                        let which = ProjectionName::ALL.get(usize::from(which)).copied();
                        projector.rebuild(t.ledger.store(), which).expect("rebuild");
                    }
                    Op::Restart | Op::Kill => {
                        end = Some(op);
                        break;
                    }
                }
            }
            projector.wait_for(t.head(), Duration::from_secs(20)).expect("projections reach the head");
            shutdown.store(true, Ordering::Release);
            follower.join().expect("follower thread").expect("follow ends cleanly");
        });
        assert_matches_replay(&projector, &t);
        if let Some(Op::Restart) = end {
            projector.persist().expect("persist");
        }
        drop(projector);
    }
    let projector = Projector::open(t.ledger.store(), ProjectorOptions { persist_every }).expect("final open");
    assert_matches_replay(&projector, &t);
}

fn cases() -> u32 {
    std::env::var("HWLEDGER_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(12)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), max_shrink_iters: 200, ..ProptestConfig::default() })]

    #[test]
    fn live_digest_equals_fresh_rebuild_across_restarts(
        setup in proptest::collection::vec((0u8..4, 1u16..4), 1..4),
        ops in proptest::collection::vec(op(), 1..70),
        persist_every in 1u64..40,
    ) {
        // Start with some enrolled, registered devices so most commands are accepted.
        let mut all: Vec<Op> = setup
            .iter()
            .flat_map(|&(dev, gpus)| {
                [
                    Op::Cmd { kind: 0, dev, job: 0, step: 0, val: 0 },
                    Op::Cmd { kind: 1, dev, job: 0, step: 0, val: gpus - 1 },
                ]
            })
            .collect();
        all.extend(ops);
        run(&all, persist_every);
    }
}

/// Regression-style fixed scenario: a kill right after a rebuild, then telemetry across the retention edges.
#[test]
fn kill_after_rebuild_then_hours_of_telemetry() {
    let mut ops = vec![
        Op::Cmd { kind: 0, dev: 0, job: 0, step: 0, val: 0 },
        Op::Cmd { kind: 1, dev: 0, job: 0, step: 0, val: 1 },
        Op::Cmd { kind: 6, dev: 0, job: 1, step: 1_000, val: 2 },
        Op::Cmd { kind: 7, dev: 0, job: 1, step: 1_000, val: 0 },
        Op::Rebuild(4),
        Op::Kill,
    ];
    for n in 0..40u16 {
        ops.push(Op::Cmd { kind: 2, dev: 0, job: 0, step: 47 * 60_000, val: n * 13 });
    }
    ops.push(Op::Cmd { kind: 8, dev: 0, job: 1, step: 1_000, val: 0 });
    ops.push(Op::Restart);
    ops.push(Op::Cmd { kind: 3, dev: 0, job: 0, step: 1_000, val: 5 });
    run(&ops, 7);
}
