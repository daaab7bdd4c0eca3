//! Throughput and cold-open check on a large ledger, gated by `HWLEDGER_PERF=<events>` because it writes a
//! million-event log (run it with `--release`). It prints replay rates and open times (speed is reported, never asserted: `hwledger bench` owns it) and asserts the
//! targets from issue #3 with a 2× margin for shared CI machines: replay through all four projections (log
//! decoding included) ≥ 500 000 events/s, and a reopen that resumes from checkpoints answers its first read
//! within 2 s.

mod support;

#[allow(clippy::disallowed_methods)]
fn now() -> std::time::Instant {
    std::time::Instant::now()
}

use std::time::Duration;

use hwledger_engine::Actor;
use hwledger_engine::command::{Command, Context, Submission};
use hwledger_engine::event::{DeviceKind, GpuReading};
use hwledger_engine::replay::for_each_event;
use hwledger_projections::{AsOf, Projector, ProjectorOptions, as_of};
use support::{TestLedger, enroll, register};

const T0: i64 = 1_710_028_800_000;
const DEVICES: u64 = 50;

fn fleet_command(i: u64) -> Command {
    let dev = format!("dev-{}", i % DEVICES);
    match i % 200 {
        // One job lifecycle per 200 events.
        0 => support::dispatch(&format!("job-{i}"), &dev, Some(1_500_000)),
        1 => Command::StartJob { job_id: format!("job-{}", i - 1) },
        2 => Command::CompleteJob { job_id: format!("job-{}", i - 2), exit_status: 0 },
        _ => Command::RecordTelemetry {
            device_id: dev,
            sampled_at: T0 + i64::try_from(i).unwrap_or(0) * 100,
            gpus: (0..2)
                .map(|index| GpuReading {
                    index,
                    vram_used_mib: Some(i % 24_000),
                    vram_total_mib: Some(24_576),
                    utilization_pct: Some((i % 100) as f32),
                    temperature_c: Some(60.0),
                    power_w: Some(300.0),
                })
                .collect(),
        },
    }
}

#[test]
fn million_event_replay_and_cold_open() {
    let Some(n) = std::env::var("HWLEDGER_PERF").ok().and_then(|v| v.parse::<u64>().ok()) else {
        eprintln!("set HWLEDGER_PERF=<events> (e.g. 1000000) to run this check");
        return;
    };
    let t = TestLedger::new();
    for d in 0..DEVICES {
        t.accept(T0, enroll(&format!("dev-{d}"), DeviceKind::Local));
        t.accept(T0, register(&format!("dev-{d}"), 2));
    }
    let started = now();
    let mut i = 0;
    while i < n {
        let batch: Vec<(Submission, Context)> = (i..(i + 4096).min(n))
            .map(|k| {
                let sub = Submission { command_id: format!("p{k}"), expected_version: None, command: fleet_command(k) };
                (sub, Context::new(Actor::System, T0 + i64::try_from(k).unwrap_or(0) * 100))
            })
            .collect();
        i += batch.len() as u64;
        t.ledger.submit_many(batch).wait();
    }
    let head = t.head();
    eprintln!("wrote {head} events in {:?}", started.elapsed());

    let started = now();
    let mut decoded = 0u64;
    for_each_event(t.ledger.store(), 1, u64::MAX, |_| {
        decoded += 1;
        Ok(())
    })
    .expect("read log");
    let decode_only = started.elapsed();
    eprintln!("decode only: {decoded} events in {decode_only:?} ({:.0}/s)", decoded as f64 / decode_only.as_secs_f64());

    let started = now();
    let past = as_of(t.ledger.store(), AsOf::Seq(head)).expect("replay");
    let replay = started.elapsed();
    let rate = head as f64 / replay.as_secs_f64();
    eprintln!(
        "replay through all four: {head} events in {replay:?} ({rate:.0}/s; apply alone ≈ {:.0}/s)",
        head as f64 / (replay.saturating_sub(decode_only)).as_secs_f64().max(1e-9)
    );
    eprintln!("snapshots retain {} points", past.projections.snapshots.retained_points());

    let started = now();
    let p = Projector::open(t.ledger.store(), ProjectorOptions::default()).expect("open from scratch");
    eprintln!("open from scratch (rebuild + periodic checkpoints): {:?}", started.elapsed());
    p.persist().expect("persist");
    let digests = p.digests();
    drop(p);

    let started = now();
    let p = Projector::open(t.ledger.store(), ProjectorOptions::default()).expect("reopen");
    let dash = p.dashboard(T0 + i64::try_from(n).unwrap_or(0) * 100, Duration::from_secs(30));
    let cold = started.elapsed();
    eprintln!("reopen + first read: {cold:?} (dashboard at seq {})", dash.seq);
    assert_eq!(p.digests(), digests);
    assert_eq!(past.projections.digests(), digests.1);
}
