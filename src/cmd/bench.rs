//! `hwledger bench`: the standard workloads of BENCHMARKS.md, through the normal command path.
//!
//! One JSON object per measurement on stdout, a table on stderr. Each figure is the median of `--runs` runs
//! (default 3). Every run starts from a fresh data directory with 100 devices enrolled and registered (not
//! counted). W1a is one durable commit per command, so it runs `min(n, --w1a-n)` commands (default 20 000)
//! to keep the suite short, and W5 (64 mTLS clients through the real server, see `bench_wire.rs`)
//! `min(n, --w5-n)` (default 64 000); the JSON says which `n` was used.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, bail};
use clap::Args;
use hwledger_engine::command::Command;
use hwledger_engine::event::{Actor, DeviceKind, GpuInfo, GpuReading};
use hwledger_engine::ledger::Outcome;
use hwledger_engine::note::Signer;
use hwledger_engine::{Context, Ledger, LedgerOptions, Submission};
use rand::{Rng, SeedableRng};

use super::Global;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Events per workload.
    #[arg(long, default_value_t = 200_000)]
    pub n: u64,
    /// Commands for W1a (one flush each).
    #[arg(long, default_value_t = 20_000)]
    pub w1a_n: u64,
    /// Commands for W5 (64 mTLS clients, one request each at a time).
    #[arg(long, default_value_t = 64_000)]
    pub w5_n: u64,
    /// W5's protocol: `http1` (HTTP/1.1 keep-alive, one connection per client) or `h2` (HTTP/2 via ALPN).
    #[arg(long, default_value = "http1", value_parser = ["http1", "h2"])]
    pub w5_protocol: String,
    /// Parent directory for the data directories (default: a fresh temporary directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Comma-separated workloads (W1a,W1b,W1c,W2,W3,W4,W5,W6,W7). Default: all.
    #[arg(long)]
    pub only: Option<String>,
    /// Runs per figure (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
}

const DEVICES: u64 = 100;
const ORIGIN: &str = "bench.hwledger/log";

struct Measure {
    workload: &'static str,
    metric: &'static str,
    value: f64,
    unit: &'static str,
    n: u64,
}

fn signer() -> Signer {
    // A fixed key: the benchmark's checkpoints need no secrecy, only the same cost as real ones.
    Signer::from_seed(ORIGIN, &[7u8; 32]).unwrap_or_else(|_| unreachable_signer())
}

#[cold]
fn unreachable_signer() -> Signer {
    panic!("the fixed benchmark key name is valid")
}

fn options() -> LedgerOptions {
    LedgerOptions { signer: Some(signer()), origin: ORIGIN.into(), ..LedgerOptions::default() }
}

fn op() -> Context {
    Context::new(Actor::Operator("bench".into()), 1_700_000_000_000)
}

/// Opens a fresh ledger with the fleet enrolled and registered.
pub(super) fn setup(dir: &Path) -> anyhow::Result<Ledger> {
    let ledger = Ledger::open(dir, options())?;
    let mut items = Vec::new();
    for d in 0..DEVICES {
        let id = format!("dev-{d:03}");
        items.push((
            Submission {
                command_id: format!("enroll-{id}"),
                expected_version: None,
                command: Command::EnrollDevice {
                    device_id: id.clone(),
                    kind: DeviceKind::Local,
                    hostname: None,
                    labels: Default::default(),
                },
            },
            op(),
        ));
        items.push((
            Submission {
                command_id: format!("register-{id}"),
                expected_version: None,
                command: Command::RegisterDevice {
                    device_id: id,
                    hostname: None,
                    gpus: (0..4)
                        .map(|i| GpuInfo {
                            index: i,
                            name: "NVIDIA GeForce RTX 4090".into(),
                            uuid: Some(format!("GPU-{d:08x}-{i}")),
                            vram_total_mib: 24_564,
                        })
                        .collect(),
                },
            },
            op(),
        ));
    }
    for r in ledger.submit_many(items).wait() {
        if !matches!(r, Ok(Outcome::Accepted(_))) {
            bail!("setup failed: {r:?}");
        }
    }
    Ok(ledger)
}

/// The `i`-th heartbeat of the standard workload (seeded, so every run appends the same events).
fn heartbeat(i: u64, rng: &mut rand::rngs::StdRng) -> (Submission, Context) {
    let device = format!("dev-{:03}", i % DEVICES);
    let gpus = (0..4)
        .map(|g| GpuReading {
            index: g,
            vram_used_mib: Some(rng.random_range(0..24_564)),
            vram_total_mib: Some(24_564),
            utilization_pct: Some(rng.random_range(0..=100) as f32),
            temperature_c: Some(rng.random_range(30..90) as f32),
            power_w: Some(rng.random_range(20..450) as f32),
        })
        .collect();
    let sub = Submission {
        command_id: format!("hb-{i:010}"),
        expected_version: None,
        command: Command::RecordTelemetry { device_id: device, sampled_at: 1_700_000_000_000 + i as i64, gpus },
    };
    (sub, op())
}

pub(super) fn heartbeats(from: u64, count: u64, seed: u64) -> Vec<(Submission, Context)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (from..from + count).map(|i| heartbeat(i, &mut rng)).collect()
}

pub(super) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    percentile(&v, 0.5)
}

fn check_accepted(outcomes: &[Result<Outcome, hwledger_engine::SubmitError>]) -> anyhow::Result<()> {
    for o in outcomes {
        if !matches!(o, Ok(Outcome::Accepted(_))) {
            bail!("benchmark command not accepted: {o:?}");
        }
    }
    Ok(())
}

/// W1a: one command per submission, each acknowledged after its own flush.
fn w1a(dir: &Path, n: u64) -> anyhow::Result<(f64, f64, f64)> {
    let ledger = setup(dir)?;
    let items = heartbeats(0, n, 1);
    let mut lat = Vec::with_capacity(items.len());
    let start = Instant::now();
    for (sub, ctx) in items {
        let t = Instant::now();
        let o = ledger.submit(sub, ctx);
        lat.push(t.elapsed().as_secs_f64() * 1e3);
        check_accepted(std::slice::from_ref(&o))?;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    Ok((rate, percentile(&lat, 0.5), percentile(&lat, 0.99)))
}

/// W1b: 64 concurrent submitters, one command at a time each (group commit).
fn w1b(dir: &Path, n: u64) -> anyhow::Result<(f64, f64, f64)> {
    let ledger = Arc::new(setup(dir)?);
    let per = n / 64;
    let all: Vec<_> = (0..64).map(|t| heartbeats(t * per, per, 2 + t)).collect();
    let start = Instant::now();
    let handles: Vec<_> = all
        .into_iter()
        .map(|items| {
            let ledger = Arc::clone(&ledger);
            std::thread::spawn(move || -> anyhow::Result<Vec<f64>> {
                let mut lat = Vec::with_capacity(items.len());
                for (sub, ctx) in items {
                    let t = Instant::now();
                    let o = ledger.submit(sub, ctx);
                    lat.push(t.elapsed().as_secs_f64() * 1e3);
                    check_accepted(std::slice::from_ref(&o))?;
                }
                Ok(lat)
            })
        })
        .collect();
    let mut lat = Vec::new();
    for h in handles {
        lat.extend(h.join().map_err(|_| anyhow::anyhow!("submitter thread panicked"))??);
    }
    let rate = (per * 64) as f64 / start.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    Ok((rate, percentile(&lat, 0.5), percentile(&lat, 0.99)))
}

/// W1c: batches of 1 000 commands per submission. Returns the rate and leaves the ledger for W2-W4, W7.
fn w1c(dir: &Path, n: u64) -> anyhow::Result<(f64, Ledger)> {
    let ledger = setup(dir)?;
    let batches: Vec<_> =
        (0..n.div_ceil(1000)).map(|b| heartbeats(b * 1000, 1000.min(n - b * 1000), 100 + b)).collect();
    let start = Instant::now();
    for batch in batches {
        check_accepted(&ledger.submit_many(batch).wait())?;
    }
    Ok((n as f64 / start.elapsed().as_secs_f64(), ledger))
}

fn dir_bytes(dir: &Path) -> u64 {
    #[cfg(unix)]
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else {
                #[cfg(unix)]
                {
                    total += m.blocks() * 512;
                }
                #[cfg(not(unix))]
                {
                    total += m.len();
                }
            }
        }
    }
    total
}

pub fn run(global: &Global, args: BenchArgs) -> anyhow::Result<ExitCode> {
    let _ = global;
    let selected =
        |w: &str| args.only.as_deref().is_none_or(|o| o.split(',').any(|x| x.trim().eq_ignore_ascii_case(w)));
    let tmp;
    let parent = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
            d.clone()
        }
        None => {
            tmp = tempfile::tempdir().context("create temporary directory")?;
            tmp.path().to_path_buf()
        }
    };
    let runs = args.runs.max(1);
    let mut out: Vec<Measure> = Vec::new();
    let mut fresh = {
        let mut k = 0;
        move |name: &str| {
            k += 1;
            let d = parent.join(format!("{name}-{k}"));
            let _ = std::fs::remove_dir_all(&d);
            d
        }
    };
    let n = args.n;
    if selected("W1a") {
        let n1 = n.min(args.w1a_n);
        let r: Vec<_> = (0..runs).map(|_| w1a(&fresh("w1a"), n1)).collect::<anyhow::Result<_>>()?;
        out.push(Measure {
            workload: "W1a",
            metric: "events_per_s",
            value: median(r.iter().map(|x| x.0).collect()),
            unit: "events/s",
            n: n1,
        });
        out.push(Measure {
            workload: "W1a",
            metric: "p50_ms",
            value: median(r.iter().map(|x| x.1).collect()),
            unit: "ms",
            n: n1,
        });
        out.push(Measure {
            workload: "W1a",
            metric: "p99_ms",
            value: median(r.iter().map(|x| x.2).collect()),
            unit: "ms",
            n: n1,
        });
    }
    if selected("W1b") {
        let r: Vec<_> = (0..runs).map(|_| w1b(&fresh("w1b"), n)).collect::<anyhow::Result<_>>()?;
        out.push(Measure {
            workload: "W1b",
            metric: "events_per_s",
            value: median(r.iter().map(|x| x.0).collect()),
            unit: "events/s",
            n,
        });
        out.push(Measure {
            workload: "W1b",
            metric: "p50_ms",
            value: median(r.iter().map(|x| x.1).collect()),
            unit: "ms",
            n,
        });
        out.push(Measure {
            workload: "W1b",
            metric: "p99_ms",
            value: median(r.iter().map(|x| x.2).collect()),
            unit: "ms",
            n,
        });
    }
    if selected("W5") {
        let n5 = n.min(args.w5_n) / super::bench_wire::CLIENTS * super::bench_wire::CLIENTS;
        anyhow::ensure!(n5 > 0, "W5 needs at least {} commands", super::bench_wire::CLIENTS);
        let r: Vec<_> = (0..runs)
            .map(|_| super::bench_wire::w5(&fresh("w5"), n5, args.w5_protocol == "http1", setup))
            .collect::<anyhow::Result<_>>()?;
        for (metric, unit, pick) in [("events_per_s", "events/s", 0usize), ("p50_ms", "ms", 1), ("p99_ms", "ms", 2)] {
            let values = r.iter().map(|x| [x.0, x.1, x.2][pick]).collect();
            out.push(Measure { workload: "W5", metric, value: median(values), unit, n: n5 });
        }
    }
    let needs_log = ["W1c", "W2", "W3", "W4", "W6", "W7"].iter().any(|w| selected(w));
    if needs_log {
        let mut rates = Vec::new();
        let mut kept = None;
        for _ in 0..runs {
            // `<run>/ledger` so that W6 can open it as a data directory with the binary.
            let d = fresh("w1c").join("ledger");
            let (rate, ledger) = w1c(&d, n)?;
            rates.push(rate);
            kept = Some((d, ledger));
        }
        let (dir, ledger) = kept.context("no run")?;
        if selected("W1c") {
            out.push(Measure { workload: "W1c", metric: "events_per_s", value: median(rates), unit: "events/s", n });
        }
        let total = ledger.head().seq;
        if selected("W2") {
            let r: Vec<f64> = (0..runs)
                .map(|_| -> anyhow::Result<f64> {
                    let start = Instant::now();
                    let mut state = hwledger_engine::state::State::default();
                    hwledger_engine::replay::for_each_event(ledger.store(), 1, total, |e| {
                        hwledger_engine::state::apply(&mut state, &e.record);
                        Ok(())
                    })?;
                    Ok(total as f64 / start.elapsed().as_secs_f64())
                })
                .collect::<anyhow::Result<_>>()?;
            out.push(Measure { workload: "W2", metric: "events_per_s", value: median(r), unit: "events/s", n: total });
            // The same replay through all four projections (registry, snapshots, cost, dashboard).
            let r: Vec<f64> = (0..runs)
                .map(|_| -> anyhow::Result<f64> {
                    let start = Instant::now();
                    let past = hwledger_projections::as_of(ledger.store(), hwledger_projections::AsOf::Seq(total))?;
                    anyhow::ensure!(past.seq == total, "projections replayed to {} of {total}", past.seq);
                    Ok(total as f64 / start.elapsed().as_secs_f64())
                })
                .collect::<anyhow::Result<_>>()?;
            out.push(Measure {
                workload: "W2",
                metric: "projections_events_per_s",
                value: median(r),
                unit: "events/s",
                n: total,
            });
            // Issue 3: the snapshots projection must grow with devices × retention, not with heartbeats.
            let past = hwledger_projections::as_of(ledger.store(), hwledger_projections::AsOf::Seq(total))?;
            let bytes = hwledger_projections::Projection::encode(&past.projections.snapshots).len();
            out.push(Measure {
                workload: "W2",
                metric: "snapshots_state_bytes",
                value: bytes as f64,
                unit: "bytes",
                n: total,
            });
        }
        if selected("W7") {
            let size = total;
            let root = ledger.root(size)?;
            let mut bodies = Vec::new();
            hwledger_engine::replay::for_each_raw(ledger.store(), 1, size, |_, b, _| {
                bodies.push(hwledger_engine::merkle::leaf_hash(b));
                Ok(())
            })?;
            let count = 20_000u64;
            let r: Vec<f64> = (0..runs)
                .map(|run| -> anyhow::Result<f64> {
                    let mut rng = rand::rngs::StdRng::seed_from_u64(run as u64);
                    let start = Instant::now();
                    for _ in 0..count {
                        let seq = rng.random_range(1..=size);
                        let proof = ledger.inclusion_proof(seq, size)?;
                        let leaf = bodies.get((seq - 1) as usize).context("leaf")?;
                        hwledger_engine::merkle::verify_inclusion(leaf, seq - 1, size, &proof, &root)
                            .map_err(|e| anyhow::anyhow!("proof failed: {e}"))?;
                    }
                    Ok(count as f64 / start.elapsed().as_secs_f64())
                })
                .collect::<anyhow::Result<_>>()?;
            out.push(Measure { workload: "W7", metric: "proofs_per_s", value: median(r), unit: "proofs/s", n: size });
        }
        ledger.sign_checkpoint_now(1_800_000_000_000)?;
        ledger.close()?;
        drop(ledger);
        if selected("W4") {
            let bytes = dir_bytes(&dir);
            out.push(Measure {
                workload: "W4",
                metric: "bytes_per_event",
                value: bytes as f64 / total as f64,
                unit: "bytes/event",
                n: total,
            });
        }
        if selected("W6") {
            // Cold start in a fresh process: open the ledger and the projections and answer the first read.
            let data = dir.parent().context("data directory")?;
            let exe = std::env::current_exe().context("locate the hwledger binary")?;
            let prepare =
                std::process::Command::new(&exe).arg("--data").arg(data).args(["--json", "dashboard"]).output()?;
            anyhow::ensure!(
                prepare.status.success(),
                "W6 warm-up failed: {}",
                String::from_utf8_lossy(&prepare.stderr)
            );
            let mut secs = Vec::new();
            let mut rss = Vec::new();
            for _ in 0..runs {
                let start = Instant::now();
                let o = std::process::Command::new(&exe)
                    .arg("--data")
                    .arg(data)
                    .args(["--json", "dashboard"])
                    .env("HWLEDGER_REPORT_PEAK_RSS", "1")
                    .output()?;
                secs.push(start.elapsed().as_secs_f64());
                anyhow::ensure!(o.status.success(), "W6 failed: {}", String::from_utf8_lossy(&o.stderr));
                let err = String::from_utf8_lossy(&o.stderr);
                if let Some(kb) =
                    err.lines().find_map(|l| l.strip_prefix("peak_rss_kb ")).and_then(|v| v.trim().parse::<f64>().ok())
                {
                    rss.push(kb / 1024.0);
                }
            }
            out.push(Measure { workload: "W6", metric: "seconds", value: median(secs), unit: "s", n: total });
            out.push(Measure { workload: "W6", metric: "peak_rss_mb", value: median(rss), unit: "MB", n: total });
        }
        if selected("W3") {
            let opts =
                hwledger_engine::verify::VerifyOptions { head: None, verifier: Some(signer().verifier()), since: None };
            let mut rates = Vec::new();
            let mut mbs = Vec::new();
            for _ in 0..runs {
                let start = Instant::now();
                let report = hwledger_engine::verify::verify_dir(&dir, &opts, |_| {})?;
                let secs = start.elapsed().as_secs_f64();
                if !report.intact() {
                    bail!("W3: the benchmark ledger does not verify: {:?}", report.breaks.first());
                }
                rates.push(report.events as f64 / secs);
                mbs.push(report.bytes as f64 / secs / 1e6);
            }
            out.push(Measure {
                workload: "W3",
                metric: "events_per_s",
                value: median(rates),
                unit: "events/s",
                n: total,
            });
            out.push(Measure { workload: "W3", metric: "mb_per_s", value: median(mbs), unit: "MB/s", n: total });
        }
    }
    eprintln!("{:<5} {:<24} {:>14} {:<12} {:>9}", "load", "metric", "value", "unit", "n");
    for m in &out {
        println!(
            "{}",
            serde_json::json!({"workload": m.workload, "metric": m.metric, "value": (m.value * 10.0).round() / 10.0, "unit": m.unit, "n": m.n})
        );
        eprintln!("{:<5} {:<24} {:>14.1} {:<12} {:>9}", m.workload, m.metric, m.value, m.unit, m.n);
    }
    Ok(ExitCode::SUCCESS)
}
