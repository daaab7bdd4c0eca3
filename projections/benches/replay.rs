//! Criterion benchmarks of the read models: applying decoded events to each projection alone and to all four,
//! and `as_of` (read, decode and apply) over a real sled store. The workload is BENCHMARKS.md's standard fleet:
//! 100 devices × 4 GPUs enrolled and registered, then heartbeats 1 ms apart round-robin over the devices.
//!
//! `cargo bench -p hwledger-projections --bench replay` (W2 of `hwledger bench` is the end-to-end figure).

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use hwledger_engine::command::Command;
use hwledger_engine::event::{Actor, DeviceKind, EventRecord, GpuInfo, GpuReading};
use hwledger_engine::ledger::Outcome;
use hwledger_engine::{Context, Ledger, LedgerOptions, Submission};
use hwledger_projections::Projection;
use hwledger_projections::{AsOf, Projections, as_of};

const DEVICES: u64 = 100;
const HEARTBEATS: u64 = 100_000;
const AT: i64 = 1_700_000_000_000;

fn submissions() -> Vec<Submission> {
    let mut out = Vec::new();
    for d in 0..DEVICES {
        let id = format!("dev-{d:03}");
        out.push(Submission {
            command_id: format!("enroll-{id}"),
            expected_version: None,
            command: Command::EnrollDevice {
                device_id: id.clone(),
                kind: DeviceKind::Local,
                hostname: None,
                labels: Default::default(),
            },
        });
        let gpus = (0..4)
            .map(|i| GpuInfo {
                index: i,
                name: "NVIDIA GeForce RTX 4090".into(),
                uuid: Some(format!("GPU-{d:08x}-{i}")),
                vram_total_mib: 24_564,
            })
            .collect();
        out.push(Submission {
            command_id: format!("register-{id}"),
            expected_version: None,
            command: Command::RegisterDevice { device_id: id, hostname: None, gpus },
        });
    }
    for i in 0..HEARTBEATS {
        // A cheap deterministic spread of readings (xorshift), so buckets see varying values.
        let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = |m: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % m
        };
        let gpus = (0..4)
            .map(|g| GpuReading {
                index: g,
                vram_used_mib: Some(next(24_564)),
                vram_total_mib: Some(24_564),
                utilization_pct: Some(next(101) as f32),
                temperature_c: Some((30 + next(60)) as f32),
                power_w: Some((20 + next(430)) as f32),
            })
            .collect();
        out.push(Submission {
            command_id: format!("hb-{i:010}"),
            expected_version: None,
            command: Command::RecordTelemetry {
                device_id: format!("dev-{:03}", i % DEVICES),
                sampled_at: AT + i as i64,
                gpus,
            },
        });
    }
    out
}

/// A ledger holding the workload, and its events decoded.
fn fixture(dir: &std::path::Path) -> (Ledger, Vec<EventRecord>) {
    let ledger = Ledger::open(dir, LedgerOptions::default()).expect("open ledger");
    let ctx = Context::new(Actor::Operator("bench".into()), AT);
    for chunk in submissions().chunks(1000) {
        for r in ledger.submit_many(chunk.iter().cloned().map(|s| (s, ctx.clone())).collect()).wait() {
            assert!(matches!(r, Ok(Outcome::Accepted(_))), "workload command not accepted: {r:?}");
        }
    }
    let head = ledger.head().seq;
    let mut records = Vec::with_capacity(usize::try_from(head).unwrap_or(0));
    hwledger_engine::replay::for_each_event(ledger.store(), 1, head, |e| {
        records.push(e.record);
        Ok(())
    })
    .expect("read the log");
    (ledger, records)
}

fn apply_all<P: Projection + Default>(records: &[EventRecord]) -> P {
    let mut p = P::default();
    for r in records {
        p.apply(r);
    }
    p
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ledger, records) = fixture(dir.path());
    let n = records.len() as u64;

    let mut g = c.benchmark_group("apply");
    g.throughput(Throughput::Elements(n));
    g.sample_size(10);
    g.bench_function("registry", |b| b.iter(|| black_box(apply_all::<hwledger_projections::Registry>(&records))));
    g.bench_function("snapshots", |b| b.iter(|| black_box(apply_all::<hwledger_projections::Snapshots>(&records))));
    g.bench_function("cost", |b| b.iter(|| black_box(apply_all::<hwledger_projections::Cost>(&records))));
    g.bench_function("dashboard", |b| b.iter(|| black_box(apply_all::<hwledger_projections::Dashboard>(&records))));
    g.bench_function("all", |b| {
        b.iter_batched(
            Projections::default,
            |mut p| {
                for r in &records {
                    p.apply(r);
                }
                p
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();

    let mut g = c.benchmark_group("replay");
    g.throughput(Throughput::Elements(n));
    g.sample_size(10);
    g.bench_function("as_of_head", |b| {
        b.iter(|| black_box(as_of(ledger.store(), AsOf::Seq(n)).expect("as_of")));
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
