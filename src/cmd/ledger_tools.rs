//! Local ledger tools: submit, log, verify, replay, export, import, checkpoint, proof.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use hwledger_engine::Submission;
use hwledger_engine::chain::{from_hex, to_hex};
use hwledger_engine::event::Actor;
use hwledger_engine::note::Verifier;
use hwledger_engine::verify::{Report, VerifyOptions};
use hwledger_wire::api::BatchItemResult;
use indicatif::{ProgressBar, ProgressStyle};

use super::target::{RemoteArgs, Target};
use super::{Config, Global};

/// Milliseconds since the Unix epoch: the binary is the one place that reads the clock for the engine.
pub fn now_ms() -> i64 {
    let now = time::OffsetDateTime::now_utc();
    i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}

fn progress(total: u64, quiet: bool) -> ProgressBar {
    if quiet || total < 100_000 {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len} ({per_sec}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// File with one submission, a JSON array of submissions, or one per line; `-` for standard input.
    pub file: PathBuf,
    /// Act as this operator (default: the local system actor; local data directory only).
    #[arg(long)]
    pub operator: Option<String>,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

/// Parses submissions: one JSON object, an array, or JSON lines.
pub fn parse_submissions(text: &str) -> anyhow::Result<Vec<Submission>> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        return serde_json::from_str(trimmed).context("parse JSON array of submissions");
    }
    if let Ok(one) = serde_json::from_str::<Submission>(trimmed) {
        return Ok(vec![one]);
    }
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        out.push(serde_json::from_str(line).with_context(|| format!("parse submission on line {}", i + 1))?);
    }
    Ok(out)
}

pub fn submit(config: &Config, global: &Global, args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let text = if args.file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).context("read standard input")?;
        s
    } else {
        std::fs::read_to_string(&args.file).with_context(|| format!("read {}", args.file.display()))?
    };
    let subs = parse_submissions(&text)?;
    let target = Target::resolve(config, &args.remote)?;
    let results = target.submit(subs, args.operator.map(Actor::Operator))?;
    let mut rejected = false;
    for result in &results {
        let (status, value) = match result {
            BatchItemResult::Accepted { receipt } => ("accepted", serde_json::to_value(receipt)?),
            BatchItemResult::Duplicate { receipt } => ("duplicate", serde_json::to_value(receipt)?),
            BatchItemResult::Rejected { code, message } => {
                rejected = true;
                ("rejected", serde_json::json!({"code": code, "message": message}))
            }
        };
        if global.json {
            print_json(&serde_json::json!({"status": status, "result": value}))?;
        } else {
            match result {
                BatchItemResult::Accepted { receipt: r } | BatchItemResult::Duplicate { receipt: r } => {
                    println!("{status:<9} {} seq {} hash {}", r.command_id, r.seq, r.hash)
                }
                BatchItemResult::Rejected { code, message } => println!("rejected  {code}: {message}"),
            }
        }
    }
    Ok(if rejected { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

#[derive(Debug, Args)]
pub struct LogArgs {
    /// First seq.
    #[arg(long, default_value_t = 1)]
    pub from: u64,
    /// Last seq (default: head).
    #[arg(long)]
    pub to: Option<u64>,
    /// Only this stream (e.g. `device/dev-1`).
    #[arg(long)]
    pub stream: Option<String>,
    /// Only this event type (e.g. `telemetry_recorded`).
    #[arg(long = "type")]
    pub event_type: Option<String>,
    /// At most this many events.
    #[arg(long, default_value_t = 1000)]
    pub limit: usize,
}

pub fn log(config: &Config, global: &Global, args: LogArgs) -> anyhow::Result<ExitCode> {
    if let Some(t) = &args.event_type {
        if !hwledger_engine::Event::TYPE_NAMES.contains(&t.as_str()) {
            bail!("unknown event type {t:?}; known: {}", hwledger_engine::Event::TYPE_NAMES.join(", "));
        }
    }
    let ledger = config.open_ledger()?;
    let to = args.to.unwrap_or(u64::MAX);
    let mut shown = 0usize;
    let mut err = None;
    hwledger_engine::replay::for_each_event(ledger.store(), args.from, to, |e| {
        if shown >= args.limit {
            return Ok(());
        }
        if args.event_type.as_deref().is_some_and(|t| t != e.record.event.type_name()) {
            return Ok(());
        }
        if args.stream.as_deref().is_some_and(|s| s != e.record.event.stream()) {
            return Ok(());
        }
        shown += 1;
        let r = if global.json {
            print_json(&serde_json::json!({"seq": e.seq, "hash": to_hex(&e.hash), "record": e.record}))
        } else {
            let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(e.record.recorded_at) * 1_000_000)
                .ok()
                .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
                .unwrap_or_default();
            println!(
                "{:>8} {at} {:<26} {:<24} {}",
                e.seq,
                e.record.event.type_name(),
                e.record.event.stream(),
                &to_hex(&e.hash)[..16]
            );
            Ok(())
        };
        if let Err(e2) = r {
            err = Some(e2);
        }
        Ok(())
    })?;
    if let Some(e) = err {
        return Err(e);
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Verify this export or bundle file instead of the data directory.
    #[arg(long, alias = "bundle")]
    pub export: Option<PathBuf>,
    /// A head recorded earlier, `SEQ:HASH`: the log must reach it with that hash.
    #[arg(long)]
    pub head: Option<String>,
    /// The pinned verifier key (vkey string or a file containing it) for checkpoint signatures.
    #[arg(long)]
    pub vkey: Option<String>,
    /// An older signed checkpoint (file) the log must consistently extend.
    #[arg(long)]
    pub since: Option<PathBuf>,
    /// Report every break (default: all are reported; kept for compatibility with scripts).
    #[arg(long)]
    pub all: bool,
    /// Verify a proof file (from `hwledger proof …`) offline instead: an inclusion proof against
    /// `--checkpoint`, or a consistency proof between `--since` (older) and `--checkpoint` (newer).
    #[arg(long, requires_all = ["checkpoint", "vkey"])]
    pub proof: Option<PathBuf>,
    /// The signed checkpoint a proof is checked against (with `--proof`).
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
}

/// `verify --proof`: checks a proof file offline against signed checkpoints.
fn verify_proof(global: &Global, args: &VerifyArgs, vkey: &Verifier) -> anyhow::Result<ExitCode> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let read = |p: &PathBuf| std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()));
    let (Some(proof_path), Some(cp_path)) = (&args.proof, &args.checkpoint) else {
        bail!("--proof needs --checkpoint and --vkey");
    };
    let proof: serde_json::Value = serde_json::from_str(&read(proof_path)?).context("proof JSON")?;
    let hashes = |v: &serde_json::Value| -> anyhow::Result<Vec<[u8; 32]>> {
        v.as_array()
            .context("proof must be an array")?
            .iter()
            .map(|h| {
                let bytes = b64.decode(h.as_str().unwrap_or_default()).context("proof hash base64")?;
                <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| anyhow::anyhow!("proof hash is not 32 bytes"))
            })
            .collect()
    };
    let outcome: Result<String, String> = (|| -> anyhow::Result<Result<String, String>> {
        let new = match hwledger_engine::checkpoint::open_checkpoint(&read(cp_path)?, vkey) {
            Ok(c) => c,
            Err(e) => return Ok(Err(format!("checkpoint does not verify: {e}"))),
        };
        let path = hashes(proof.get("proof").context("no proof hashes")?)?;
        if let Some(size1) = proof.get("size1").and_then(|v| v.as_u64()) {
            let since = args.since.as_ref().context("a consistency proof needs --since OLD_CHECKPOINT")?;
            let old = match hwledger_engine::checkpoint::open_checkpoint(&read(since)?, vkey) {
                Ok(c) => c,
                Err(e) => return Ok(Err(format!("older checkpoint does not verify: {e}"))),
            };
            if old.size != size1 || proof.get("size2").and_then(|v| v.as_u64()) != Some(new.size) {
                return Ok(Err("the proof's sizes are not the checkpoints' sizes".into()));
            }
            Ok(hwledger_engine::verify::check_consistency(&old, &new, &path)
                .map(|()| format!("the log of {} events extends the log of {} events", new.size, old.size))
                .map_err(|e| format!("consistency proof does not verify: {e}")))
        } else {
            let seq = proof.get("seq").and_then(|v| v.as_u64()).context("proof has no seq or size1")?;
            if proof.get("tree_size").and_then(|v| v.as_u64()) != Some(new.size) {
                return Ok(Err(format!("the proof is not against the checkpoint's size {}", new.size)));
            }
            let body = b64.decode(proof.get("body").and_then(|v| v.as_str()).context("proof has no body")?)?;
            let leaf = hwledger_engine::merkle::leaf_hash(&body);
            Ok(hwledger_engine::merkle::verify_inclusion(&leaf, seq.saturating_sub(1), new.size, &path, &new.root)
                .map(|()| format!("event {seq} is in the log of {} events", new.size))
                .map_err(|e| format!("inclusion proof does not verify: {e}")))
        }
    })()?;
    let ok = outcome.is_ok();
    let text = outcome.unwrap_or_else(|e| e);
    if global.json {
        print_json(&serde_json::json!({"verified": ok, "detail": text}))?;
    } else {
        println!("{}: {text}", if ok { "VERIFIED" } else { "NOT VERIFIED" });
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn read_vkey(arg: &str) -> anyhow::Result<Verifier> {
    let text = if std::path::Path::new(arg).exists() {
        std::fs::read_to_string(arg).with_context(|| format!("read verifier key {arg}"))?
    } else {
        arg.to_owned()
    };
    Verifier::from_vkey(text.trim()).context("parse verifier key")
}

fn parse_head(s: &str) -> anyhow::Result<(u64, [u8; 32])> {
    let (seq, hash) = s.split_once(':').context("--head must be SEQ:HASH")?;
    let seq = seq.parse().context("--head SEQ must be a number")?;
    let hash = from_hex(hash).context("--head HASH must be 64 hex digits")?;
    Ok((seq, hash))
}

pub fn verify(config: &Config, global: &Global, args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let verifier = match &args.vkey {
        Some(v) => Some(read_vkey(v)?),
        None if args.export.is_none() => config.vkey()?.map(|v| Verifier::from_vkey(&v)).transpose()?,
        None => None,
    };
    let since = match &args.since {
        Some(p) => Some(std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()))?),
        None => None,
    };
    if args.proof.is_some() {
        let v = verifier.as_ref().context("--proof needs --vkey")?;
        return verify_proof(global, &args, v);
    }
    if since.is_some() && verifier.is_none() {
        bail!("--since needs --vkey to check the older checkpoint's signature");
    }
    let opts = VerifyOptions { head: args.head.as_deref().map(parse_head).transpose()?, verifier, since };
    let bar = progress(0, global.json);
    bar.set_message("verifying");
    let report = match &args.export {
        Some(path) => hwledger_engine::export::verify_export(path, &opts, |n| bar.set_position(n))?,
        None => {
            let dir = config.data_dir.join("ledger");
            if !dir.exists() {
                bail!("no ledger in {}", config.data_dir.display());
            }
            hwledger_engine::verify::verify_dir(&dir, &opts, |n| bar.set_position(n))?
        }
    };
    bar.finish_and_clear();
    render_report(&report, global.json)?;
    Ok(if report.intact() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn render_report(report: &Report, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(report);
    }
    println!("verified {}", report.source);
    for c in &report.checks {
        println!("  checked {c}");
    }
    println!(
        "  events {} ({} bytes), head seq {} hash {}",
        report.events, report.bytes, report.head_seq, report.head_hash
    );
    println!("  merkle root {}", report.merkle_root);
    if let Some(s) = report.checkpoint_size {
        println!("  signed checkpoint at size {s}");
    }
    if report.intact() {
        println!("INTACT");
    } else {
        println!("BROKEN: {} break(s)", report.breaks.len());
        for b in &report.breaks {
            println!("  seq {:>8}  {:<20} {}", b.seq, b.kind.as_str(), b.detail);
            if let (Some(e), Some(f)) = (&b.expected, &b.found) {
                println!("                expected {e}\n                found    {f}");
            }
        }
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Compute the projections as they stood at this seq or RFC 3339 time (live state untouched).
    #[arg(long)]
    pub until: Option<String>,
    /// Only this projection (registry, snapshots, cost, dashboard) with `--until` or `--rebuild`.
    #[arg(long)]
    pub projection: Option<String>,
    /// Drop and rebuild the stored projections (one with `--projection`, else all) from the log.
    #[arg(long)]
    pub rebuild: bool,
}

fn projection_name(name: Option<&str>) -> anyhow::Result<Option<hwledger_projections::ProjectionName>> {
    name.map(|n| {
        hwledger_projections::ProjectionName::parse(n)
            .with_context(|| format!("unknown projection {n:?}: expected registry, snapshots, cost or dashboard"))
    })
    .transpose()
}

/// `replay --until`: the projections as of a past point, computed from the log alone.
fn replay_until(config: &Config, global: &Global, until: &str, only: Option<&str>) -> anyhow::Result<ExitCode> {
    use hwledger_projections::{AsOf, ProjectionName};
    let which = projection_name(only)?;
    let ledger = config.open_ledger()?;
    let at = match until.parse::<u64>() {
        Ok(seq) => AsOf::Seq(seq),
        Err(_) => AsOf::Time(super::reads::parse_time(until)?),
    };
    let past = hwledger_projections::as_of(ledger.store(), at)?;
    let p = &past.projections;
    let at_ms = ledger.read(past.seq, past.seq)?.pop().map_or(0, |e| e.record.recorded_at);
    let hb = super::reads::HEARTBEAT;
    let wanted = |n: ProjectionName| which.is_none_or(|w| w == n);
    let mut views = serde_json::Map::new();
    if wanted(ProjectionName::Registry) {
        views.insert("registry".into(), serde_json::to_value(p.registry.devices(at_ms, hb))?);
    }
    if wanted(ProjectionName::Snapshots) {
        views.insert("snapshots".into(), serde_json::to_value(p.snapshots.latest())?);
    }
    if wanted(ProjectionName::Cost) {
        views.insert("cost".into(), serde_json::to_value(p.cost.jobs())?);
    }
    if wanted(ProjectionName::Dashboard) {
        views.insert("dashboard".into(), serde_json::to_value(p.dashboard_view(past.seq, at_ms, hb))?);
    }
    let digests: serde_json::Map<String, serde_json::Value> = p
        .digests()
        .iter()
        .filter(|(n, _)| wanted(*n))
        .map(|(n, d)| (n.as_str().to_owned(), serde_json::Value::String(d.to_hex().to_string())))
        .collect();
    let value = serde_json::json!({"seq": past.seq, "recorded_at": at_ms, "digests": digests, "projections": views});
    if global.json {
        print_json(&value)?;
    } else {
        println!("{}", serde_json::to_string_pretty(&value)?);
    }
    Ok(ExitCode::SUCCESS)
}

pub fn replay(config: &Config, global: &Global, args: ReplayArgs) -> anyhow::Result<ExitCode> {
    if let Some(until) = &args.until {
        return replay_until(config, global, until, args.projection.as_deref());
    }
    if args.rebuild {
        let which = projection_name(args.projection.as_deref())?;
        let ledger = config.open_ledger()?;
        let projector = hwledger_projections::Projector::open(ledger.store(), Default::default())?;
        let start = std::time::Instant::now();
        let seq = projector.rebuild(ledger.store(), which)?;
        projector.persist()?;
        let (_, digests) = projector.digests();
        let value = serde_json::json!({
            "rebuilt": which.map_or("all", |w| w.as_str()),
            "seq": seq,
            "seconds": start.elapsed().as_secs_f64(),
            "digests": digests.iter().map(|(n, d)| (n.as_str().to_owned(), d.to_hex().to_string())).collect::<std::collections::BTreeMap<_, _>>(),
        });
        if global.json {
            print_json(&value)?;
        } else {
            println!("{}", serde_json::to_string_pretty(&value)?);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let ledger = config.open_ledger()?;
    let head = ledger.head().seq;
    let bar = progress(head, global.json);
    bar.set_message("replaying");
    let start = std::time::Instant::now();
    let mut state = hwledger_engine::state::State::default();
    let mut n = 0u64;
    hwledger_engine::replay::for_each_event(ledger.store(), 1, head, |e| {
        hwledger_engine::state::apply(&mut state, &e.record);
        n += 1;
        if n.is_multiple_of(65536) {
            bar.set_position(n);
        }
        Ok(())
    })?;
    bar.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    let live = ledger.state();
    let identical = live == state;
    let summary = serde_json::json!({
        "events": n,
        "seconds": secs,
        "events_per_s": n as f64 / secs.max(1e-9),
        "devices": state.devices.len(),
        "jobs": state.jobs.len(),
        "certificates": state.certs.len(),
        "identical_to_live": identical,
    });
    if global.json {
        print_json(&summary)?;
    } else {
        println!(
            "replayed {n} events in {secs:.3}s: {} devices, {} jobs, {} certificates; rebuilt state {} the live state",
            state.devices.len(),
            state.jobs.len(),
            state.certs.len(),
            if identical { "equals" } else { "DIFFERS FROM" }
        );
    }
    Ok(if identical { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Output file.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn export(config: &Config, global: &Global, args: ExportArgs) -> anyhow::Result<ExitCode> {
    let ledger = config.open_ledger()?;
    ledger.sign_checkpoint_now(now_ms())?;
    let cp = ledger.latest_checkpoint();
    let vkey = config.vkey()?;
    let summary =
        hwledger_engine::export::export(ledger.store(), &args.out, cp.as_ref().map(|c| c.1.as_str()), vkey.as_deref())?;
    if global.json {
        print_json(&summary)?;
    } else {
        println!(
            "exported {} events ({} bytes, checkpoint at size {}) to {}\nblake3 {}",
            summary.events,
            summary.bytes,
            summary.checkpoint_size.map_or("none".into(), |s| s.to_string()),
            args.out.display(),
            summary.blake3
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The export file.
    pub file: PathBuf,
    /// Pinned verifier key of the exporting log (checks the bundle's checkpoint before importing).
    #[arg(long)]
    pub vkey: Option<String>,
}

pub fn import(config: &Config, global: &Global, args: ImportArgs) -> anyhow::Result<ExitCode> {
    let verifier = args.vkey.as_deref().map(read_vkey).transpose()?;
    let opts = VerifyOptions { head: None, verifier, since: None };
    let report = hwledger_engine::export::verify_export(&args.file, &opts, |_| {})?;
    if !report.intact() {
        render_report(&report, global.json)?;
        bail!("refusing to import {}: the export does not verify", args.file.display());
    }
    config.create_data_dir()?;
    let dir = config.data_dir.join("ledger");
    let n = hwledger_engine::export::import(&args.file, &dir)?;
    if global.json {
        print_json(&serde_json::json!({"imported": n, "data_dir": config.data_dir}))?;
    } else {
        println!("imported {n} events into {}", config.data_dir.display());
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct CheckpointArgs {
    /// Print the verifier key instead.
    #[arg(long)]
    pub vkey: bool,
    /// Sign a checkpoint of the current head first.
    #[arg(long)]
    pub sign: bool,
}

pub fn checkpoint(config: &Config, global: &Global, args: CheckpointArgs) -> anyhow::Result<ExitCode> {
    let ledger = config.open_ledger()?;
    if args.vkey {
        let v = config.vkey()?.context("no log key yet")?;
        if global.json {
            print_json(&serde_json::json!({ "vkey": v }))?;
        } else {
            println!("{v}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    if args.sign || ledger.latest_checkpoint().is_none_or(|c| c.0 < ledger.head().seq) {
        ledger.sign_checkpoint_now(now_ms())?;
    }
    match ledger.latest_checkpoint() {
        None => bail!("the log is empty: nothing to checkpoint"),
        Some((size, note)) => {
            if global.json {
                print_json(&serde_json::json!({"size": size, "note": note}))?;
            } else {
                print!("{note}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct ProofArgs {
    #[command(subcommand)]
    pub kind: ProofKind,
}

#[derive(Debug, Subcommand)]
pub enum ProofKind {
    /// Prove event SEQ is in the tree of SIZE events (default: the latest checkpoint's size).
    Inclusion {
        #[arg(long)]
        seq: u64,
        #[arg(long)]
        size: Option<u64>,
    },
    /// Prove the tree of TO events extends the tree of FROM events.
    Consistency {
        #[arg(long)]
        from: u64,
        #[arg(long)]
        to: Option<u64>,
    },
}

pub fn proof(config: &Config, _global: &Global, args: ProofArgs) -> anyhow::Result<ExitCode> {
    use base64::Engine as _;
    let b64 = |h: &[u8; 32]| base64::engine::general_purpose::STANDARD.encode(h);
    let ledger = config.open_ledger()?;
    let default_size = ledger.latest_checkpoint().map_or(ledger.head().seq, |c| c.0);
    let value = match args.kind {
        ProofKind::Inclusion { seq, size } => {
            let size = size.unwrap_or(default_size);
            let proof = ledger.inclusion_proof(seq, size)?;
            let mut body = Vec::new();
            let mut prev = hwledger_engine::chain::GENESIS;
            hwledger_engine::replay::for_each_raw(ledger.store(), seq.saturating_sub(1).max(1), seq, |s, b, h| {
                if s == seq {
                    body = b.to_vec();
                } else {
                    prev = *h;
                }
                Ok(())
            })?;
            serde_json::json!({
                "body": base64::engine::general_purpose::STANDARD.encode(&body),
                "prev_hash": to_hex(&prev),
                "seq": seq, "leaf_index": seq - 1, "tree_size": size,
                "leaf_hash": b64(&hwledger_engine::merkle::leaf_hash(&body)),
                "root": b64(&ledger.root(size)?),
                "proof": proof.iter().map(b64).collect::<Vec<_>>(),
            })
        }
        ProofKind::Consistency { from, to } => {
            let to = to.unwrap_or(default_size);
            let proof = ledger.consistency_proof(from, to)?;
            serde_json::json!({
                "size1": from, "size2": to,
                "root1": b64(&ledger.root(from)?), "root2": b64(&ledger.root(to)?),
                "proof": proof.iter().map(b64).collect::<Vec<_>>(),
            })
        }
    };
    println!("{}", serde_json::to_string_pretty(&value)?);
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct ReceiptArgs {
    #[command(subcommand)]
    pub action: ReceiptAction,
}

#[derive(Debug, Subcommand)]
pub enum ReceiptAction {
    /// Check offline that a receipt's event is in a signed checkpoint: the proof's body hashes to the receipt's
    /// chain hash, its leaf is included in the checkpoint's tree, and the checkpoint is signed by the pinned key.
    Verify {
        /// The receipt (JSON, as `submit --json` or the HTTP API return it; a `receipt` field is accepted too).
        #[arg(long)]
        receipt: PathBuf,
        /// The inclusion proof (JSON, as `proof inclusion` prints it).
        #[arg(long)]
        proof: PathBuf,
        /// The signed checkpoint (note text).
        #[arg(long)]
        checkpoint: PathBuf,
        /// The pinned verifier key (string or file).
        #[arg(long)]
        vkey: String,
    },
}

/// The checks of `receipt verify`, in order; the first failure is reported.
pub fn verify_receipt(
    receipt: &serde_json::Value,
    proof: &serde_json::Value,
    note: &str,
    vkey: &Verifier,
) -> anyhow::Result<(u64, u64)> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let receipt = receipt.get("receipt").or_else(|| receipt.get("result")).unwrap_or(receipt);
    let r: hwledger_engine::Receipt = serde_json::from_value(receipt.clone()).context("parse receipt")?;
    let cp = hwledger_engine::checkpoint::open_checkpoint(note, vkey).context("checkpoint signature")?;
    let field = |k: &str| proof.get(k).with_context(|| format!("proof has no {k:?}"));
    let seq = field("seq")?.as_u64().context("proof seq")?;
    let size = field("tree_size")?.as_u64().context("proof tree_size")?;
    anyhow::ensure!(seq == r.seq, "the proof is for event {seq}, the receipt for event {}", r.seq);
    anyhow::ensure!(size == cp.size, "the proof is against a tree of {size} events, the checkpoint has {}", cp.size);
    let body = b64.decode(field("body")?.as_str().context("proof body")?).context("proof body base64")?;
    let prev = from_hex(field("prev_hash")?.as_str().context("prev_hash")?).context("prev_hash hex")?;
    let chained = hwledger_engine::chain::chain_hash(&prev, &body);
    anyhow::ensure!(chained == r.hash, "the proof's event body does not hash to the receipt's chain hash");
    let record = hwledger_engine::codec::decode_record(&body).context("decode event body")?;
    anyhow::ensure!(
        record.seq == r.seq && record.command_id == r.command_id,
        "the event body is not the receipt's event"
    );
    let path: Vec<[u8; 32]> = field("proof")?
        .as_array()
        .context("proof hashes")?
        .iter()
        .map(|h| {
            let bytes = b64.decode(h.as_str().unwrap_or_default()).ok()?;
            <[u8; 32]>::try_from(bytes.as_slice()).ok()
        })
        .collect::<Option<_>>()
        .context("proof hashes must be base64 of 32 bytes")?;
    hwledger_engine::merkle::verify_inclusion(
        &hwledger_engine::merkle::leaf_hash(&body),
        r.leaf_index,
        cp.size,
        &path,
        &cp.root,
    )
    .map_err(|e| anyhow::anyhow!("inclusion proof does not verify against the signed root: {e}"))?;
    Ok((r.seq, cp.size))
}

pub fn receipt(global: &Global, args: ReceiptArgs) -> anyhow::Result<ExitCode> {
    let ReceiptAction::Verify { receipt, proof, checkpoint, vkey } = args.action;
    let read = |p: &PathBuf| std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()));
    let receipt: serde_json::Value = serde_json::from_str(read(&receipt)?.trim()).context("receipt JSON")?;
    let proof: serde_json::Value = serde_json::from_str(&read(&proof)?).context("proof JSON")?;
    let note = read(&checkpoint)?;
    let vkey = read_vkey(&vkey)?;
    match verify_receipt(&receipt, &proof, &note, &vkey) {
        Ok((seq, size)) => {
            if global.json {
                print_json(&serde_json::json!({"verified": true, "seq": seq, "tree_size": size}))?;
            } else {
                println!("VERIFIED: event {seq} is in the log of {size} events signed by {}", vkey.name());
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            if global.json {
                print_json(&serde_json::json!({"verified": false, "error": format!("{e:#}")}))?;
            } else {
                println!("NOT VERIFIED: {e:#}");
            }
            Ok(ExitCode::from(1))
        }
    }
}
