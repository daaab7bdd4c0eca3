//! `hwledger dispatch --device D --model M --vram MB [--price-from vast|runpod|lambda|rate] -- COMMAND…`
//! (or `--suggest` instead of `--device`): a job run over SSH exec on an agentless host.
//!
//! Steps, each recorded before the next starts: the quote (a cloud quote is its own
//! `quote_rental_price` event) and `dispatch_job`; connect (host key checked, pinned on first use);
//! `start_job`; run COMMAND; `complete_job` only on a confirmed exit status 0, else `fail_job` with
//! the exit status or the reason (`hwledger_adapters::fleet::job`). When the connection is lost or the
//! command times out, the job is recorded as failed with an `outcome_unknown` reason (never completed)
//! and the host is probed again so the ledger also says whether it is still there.
//!
//! Command ids derive from the job id (`job/<id>/dispatch|start|end`): a retried `dispatch --job ID`
//! gets the original receipts, and a job that already started is never run a second time.

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};
use hwledger_adapters::cloud::Provider;
use hwledger_adapters::fleet::job::{self, JobOutcome};
use hwledger_adapters::fleet::price::{dispatch_quote, format_usd, pick_offer, rate_quote};
use hwledger_adapters::fleet::probe::{pin_host_key, probe_failed, probe_succeeded};
use hwledger_adapters::fleet::suggest::{Need, Suggestion, suggest};
use hwledger_adapters::ssh::{
    DEFAULT_MAX_OUTPUT_BYTES, ExecLimits, HostKeyPolicy, HostKeyTrust, Session, SshTarget, probe,
};
use hwledger_engine::event::PriceQuote;
use hwledger_engine::state::JobStatus;

use super::fleet::{
    CheckFailed, FleetView, ServerArgs, Target, cloud_client, fetch_offers, hours_ms, load_price_cache, runtime,
    save_price_cache, submit_all,
};
use super::ledger_tools::now_ms;
use super::probe::{HostPlan, client_config};
use super::reads::parse_window;
use super::{Config, Global};

/// Where the price of a job comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PriceFrom {
    /// Vast.ai's cheapest offer of the device's GPU type.
    Vast,
    /// RunPod's.
    Runpod,
    /// Lambda's.
    Lambda,
    /// The device's operator-set rate.
    Rate,
}

#[derive(Debug, Args)]
pub struct DispatchArgs {
    /// Device to run on (an SSH host: `[[ssh_hosts]]` or enrolled with kind ssh).
    #[arg(long, required_unless_present = "suggest", conflicts_with = "suggest")]
    pub device: Option<String>,
    /// Take the top device of `hwledger suggest` (asks for confirmation; `--yes` skips it).
    #[arg(long)]
    pub suggest: bool,
    /// Do not ask before dispatching to a suggested device.
    #[arg(long)]
    pub yes: bool,
    /// Model the job runs (recorded).
    #[arg(long)]
    pub model: String,
    /// VRAM the job needs on one GPU, MiB.
    #[arg(long)]
    pub vram: u64,
    /// Price the job at a provider's current offer for the device's GPU type, or at the device's rate.
    #[arg(long, value_enum)]
    pub price_from: Option<PriceFrom>,
    /// Job id (default: generated and printed). Retrying with the same id never runs a started job twice.
    #[arg(long)]
    pub job: Option<String>,
    /// Client key (default: the host's `[[ssh_hosts]]` key, else `[ssh].key`).
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// known_hosts file (default: the host's, else `[ssh]`'s, else the pin in the ledger / first use).
    #[arg(long)]
    pub known_hosts: Option<PathBuf>,
    /// Longest the command may run (`90m`, `24h`, `3600s`); after it the outcome is unknown.
    #[arg(long, default_value = "24h")]
    pub timeout: String,
    /// Hours shown in the cost estimate of `--suggest`.
    #[arg(long, default_value_t = 1.0)]
    pub hours: f64,
    /// The command to run (joined with spaces, like ssh does, and run by the remote shell).
    #[arg(last = true, required = true, num_args = 1..)]
    pub command: Vec<String>,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// How to reach `device_id` over SSH: its `[[ssh_hosts]]` entry, else its enrolled SSH target.
pub fn reach(
    config: &Config,
    fleet: &FleetView,
    device_id: &str,
    key: Option<PathBuf>,
    known_hosts: Option<PathBuf>,
) -> anyhow::Result<HostPlan> {
    let entry = config.ssh_hosts.iter().find(|h| h.device_id == device_id);
    let target_text = match (entry, fleet.device(device_id).map(|d| &d.kind)) {
        (Some(h), _) => h.target.clone(),
        (None, Some(hwledger_engine::event::DeviceKind::Ssh { target })) => target.clone(),
        (None, Some(_)) => bail!("device {device_id} is not an SSH host and has no [[ssh_hosts]] entry"),
        (None, None) => bail!("device {device_id} is not enrolled (probe it first: hwledger probe ssh …)"),
    };
    let target: SshTarget = target_text.parse().with_context(|| format!("SSH target of {device_id}"))?;
    let key = key
        .or_else(|| entry.and_then(|h| h.key.clone()))
        .or_else(|| config.ssh.key.clone())
        .with_context(|| format!("no client key for {device_id}: pass --key FILE or set [ssh].key"))?;
    let known_hosts =
        known_hosts.or_else(|| entry.and_then(|h| h.known_hosts.clone())).or_else(|| config.ssh.known_hosts.clone());
    Ok(HostPlan { device_id: device_id.to_owned(), target, key, known_hosts })
}

fn confirm(question: &str, yes: bool) -> anyhow::Result<bool> {
    if yes {
        return Ok(true);
    }
    if !std::io::stdin().is_terminal() {
        bail!("refusing to dispatch to a suggested device without confirmation: no terminal (pass --yes)");
    }
    eprint!("{question} [y/N] ");
    std::io::stderr().flush().ok();
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer).context("read the answer")?;
    Ok(matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes"))
}

/// `--suggest`: the cheapest enrolled device that fits and can be reached over SSH.
fn suggested_device(
    config: &Config,
    fleet: &FleetView,
    rt: &tokio::runtime::Runtime,
    args: &DispatchArgs,
) -> anyhow::Result<Option<String>> {
    let now = Instant::now();
    let wall = now_ms();
    let mut cache = load_price_cache(config, now, wall);
    let (offers, _errors) = rt.block_on(fetch_offers(config, &mut cache, None, now, false));
    save_price_cache(&cache, now, wall);
    let need = Need { vram_mib: args.vram, duration_ms: hours_ms(args.hours)?, max_offers: 1 };
    let ranked = suggest(&fleet.devices, &fleet.loads, &offers, need);
    let pick = ranked.iter().find_map(|s| match s {
        Suggestion::Device(d)
            if reach(config, fleet, &d.device_id, args.key.clone(), args.known_hosts.clone()).is_ok() =>
        {
            Some(d)
        }
        _ => None,
    });
    let Some(pick) = pick else {
        bail!(CheckFailed(format!(
            "no enrolled SSH device has a GPU with {} MiB free (see hwledger suggest --vram {})",
            args.vram, args.vram
        )));
    };
    let cheapest_offer = ranked.iter().find_map(|s| match s {
        Suggestion::Offer(o) => Some(o),
        _ => None,
    });
    let price = pick.micro_usd_per_hour.map_or("no rate set".to_owned(), |r| format!("{}/h", format_usd(r)));
    eprintln!(
        "suggested: {} (GPU {} {}, {} MiB free, {price}{})",
        pick.device_id,
        pick.gpu_index,
        pick.gpu_name,
        pick.free_vram_mib,
        pick.cost_micro_usd.map_or(String::new(), |c| format!(", {} for {} h", format_usd(c), args.hours))
    );
    if let Some(o) = cheapest_offer {
        eprintln!(
            "cheapest fitting rental: {} {} x{} at {}/h",
            o.offer.provider,
            o.offer.gpu_name,
            o.offer.gpu_count,
            format_usd(o.micro_usd_per_hour)
        );
    }
    if confirm(&format!("dispatch {} to {}?", args.model, pick.device_id), args.yes)? {
        Ok(Some(pick.device_id.clone()))
    } else {
        Ok(None)
    }
}

/// The price the job is dispatched at, and the cloud quote to record with it.
fn price(
    config: &Config,
    fleet: &FleetView,
    rt: &tokio::runtime::Runtime,
    device_id: &str,
    vram: u64,
    from: Option<PriceFrom>,
) -> anyhow::Result<(Option<PriceQuote>, Option<hwledger_engine::Submission>)> {
    let device = fleet.device(device_id);
    let provider = match from {
        None => return Ok((None, None)),
        Some(PriceFrom::Rate) => {
            let rate = device.and_then(|d| d.micro_usd_per_hour).with_context(|| {
                format!("device {device_id} has no rate: record one with a set_device_rate command")
            })?;
            return Ok((Some(rate_quote(rate, now_ms())), None));
        }
        Some(PriceFrom::Vast) => Provider::Vast,
        Some(PriceFrom::Runpod) => Provider::RunPod,
        Some(PriceFrom::Lambda) => Provider::Lambda,
    };
    let gpu = device
        .and_then(|d| d.gpus.iter().filter(|g| g.vram_total_mib >= vram).max_by_key(|g| g.vram_total_mib))
        .with_context(|| format!("device {device_id} has no registered GPU with {vram} MiB (probe it first)"))?;
    let client = cloud_client(config, provider).with_context(|| format!("{provider} client"))?;
    let now = Instant::now();
    let wall = now_ms();
    let mut cache = load_price_cache(config, now, wall);
    let offers = rt.block_on(cache.cache.offers(&client, None, now)).with_context(|| format!("{provider} offers"))?;
    let age = cache.cache.age(provider, None, now).unwrap_or_default();
    save_price_cache(&cache, now, wall);
    let Some(offer) = pick_offer(&offers, &gpu.name, vram) else {
        bail!(CheckFailed(format!("{provider} has no available {} offer with {vram} MiB to price the job", gpu.name)));
    };
    let quoted_at = wall.saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX));
    let q = dispatch_quote(offer, quoted_at).context("the offer's price is not a usable amount")?;
    Ok((Some(q.price), Some(q.quote)))
}

pub fn run(config: &Config, global: &Global, args: DispatchArgs) -> anyhow::Result<ExitCode> {
    let target = Target::resolve(config, &args.server)?;
    let rt = runtime()?;
    let timeout = parse_window(&args.timeout).context("--timeout")?;
    let fleet = target.fleet()?;
    let device_id = match (&args.device, args.suggest) {
        (Some(d), _) => d.clone(),
        (None, _) => match suggested_device(config, &fleet, &rt, &args)? {
            Some(d) => d,
            None => {
                eprintln!("not dispatched");
                return Ok(ExitCode::from(1));
            }
        },
    };
    let plan = reach(config, &fleet, &device_id, args.key.clone(), args.known_hosts.clone())?;
    let ssh = client_config(config, &plan.key).with_context(|| format!("load SSH key {}", plan.key.display()))?;
    let job_id = args.job.clone().unwrap_or_else(|| format!("job-{}-{:04x}", now_ms(), rand::random::<u16>()));
    if !hwledger_engine::command::validate_id(&job_id) {
        bail!("job id {job_id:?} must be 1-64 characters of A-Z a-z 0-9 . _ -");
    }
    let command = args.command.join(" ");

    // 1. Quote and dispatch — unless a retry finds the job already dispatched (then it continues from
    // there, at the price recorded then) or further along (then nothing runs again).
    let quote = match target.job(&job_id)? {
        None => {
            let (quote, quote_sub) = price(config, &fleet, &rt, &device_id, args.vram, args.price_from)?;
            let mut subs: Vec<_> = quote_sub.into_iter().collect();
            subs.push(job::dispatch(&job_id, &device_id, &args.model, args.vram, quote.clone()));
            submit_all(&target, subs, now_ms())?;
            eprintln!("dispatched job {job_id} to {device_id} ({})", plan.target);
            quote
        }
        Some(existing) if existing.status == JobStatus::Dispatched && existing.device_id == device_id => {
            eprintln!("job {job_id} was dispatched before but never started; starting it now");
            None
        }
        Some(existing) => bail!(CheckFailed(format!(
            "job {job_id} was dispatched before (to {}) and is {}; not running it again",
            existing.device_id,
            existing.status.as_str()
        ))),
    };

    // 2. Connect (host key checked; pinned on first use).
    let policy = plan.policy(&fleet);
    let session = match rt.block_on(Session::connect(&plan.target, &policy, &ssh)) {
        Ok(s) => s,
        Err(e) => {
            let outcome = job::not_started(&e);
            submit_all(&target, vec![outcome.submission(&job_id)], now_ms())?;
            return Err(CheckFailed(format!("job {job_id} not started: {e}")).into());
        }
    };
    let fingerprint = session.host_key_fingerprint().to_owned();
    if session.host_key_trust() == HostKeyTrust::FirstUse {
        // Trusted on first use: pin it, or — if the ledger refuses (another key was pinned meanwhile) —
        // run nothing on this host.
        let pinned = target.submit(vec![pin_host_key(&device_id, &fingerprint)], now_ms())?;
        if let Some(bad) = pinned.iter().find(|r| !r.recorded()) {
            rt.block_on(session.close());
            let outcome = JobOutcome::NotStarted { reason: format!("{}: {}", job::NOT_STARTED, bad.describe()) };
            submit_all(&target, vec![outcome.submission(&job_id)], now_ms())?;
            bail!(CheckFailed(format!(
                "job {job_id} not started: host key {fingerprint} not pinned: {}",
                bad.describe()
            )));
        }
    }

    // 3. Start and run.
    if let Err(e) = submit_all(&target, vec![job::start(&job_id)], now_ms()) {
        rt.block_on(session.close());
        return Err(e);
    }
    let began = Instant::now();
    let result =
        rt.block_on(session.exec_with(&command, ExecLimits { timeout, max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES }));
    let elapsed = began.elapsed();
    let outcome = job::classify(&result, elapsed);
    let ended = submit_all(&target, vec![outcome.submission(&job_id)], now_ms());
    if let Ok(out) = &result {
        if !global.json {
            std::io::stdout().write_all(&out.stdout).ok();
            std::io::stderr().write_all(&out.stderr).ok();
        }
    }

    // 4. Outcome unknown: ask the host whether it is still there, and record that too.
    let mut reprobe = None;
    if matches!(outcome, JobOutcome::Unknown { .. }) {
        drop(session);
        let pinned = HostKeyPolicy::Pinned { expected: Some(fingerprint.clone()) };
        let policy = if plan.known_hosts.is_some() { plan.policy(&fleet) } else { pinned };
        let probed = rt.block_on(async {
            match Session::connect(&plan.target, &policy, &ssh).await {
                Ok(s) => {
                    let r = probe(&s).await;
                    s.close().await;
                    r
                }
                Err(e) => Err(e),
            }
        });
        let at = now_ms();
        let known = target.fleet()?.device(&device_id).cloned();
        let sub = match &probed {
            Ok(report) => probe_succeeded(&device_id, &plan.target, known.as_ref(), report, at),
            Err(e) => vec![probe_failed(&device_id, e, at)],
        };
        target.submit(sub, at)?;
        reprobe = Some(match &probed {
            Ok(r) => serde_json::json!({"ok": true, "gpus": r.samples.len()}),
            Err(e) => serde_json::json!({"ok": false, "code": e.code(), "message": e.to_string()}),
        });
    } else {
        rt.block_on(session.close());
    }
    ended?;

    let view = target.job(&job_id)?;
    let cost = view.as_ref().and_then(|j| j.cost_micro_usd);
    if global.json {
        let output = result.as_ref().ok().map(|o| {
            serde_json::json!({
                "stdout": o.stdout_lossy(), "stderr": o.stderr_lossy(),
                "stdout_truncated": o.stdout_truncated, "stderr_truncated": o.stderr_truncated,
            })
        });
        let value = serde_json::json!({
            "job_id": job_id, "device_id": device_id, "target": plan.target.to_string(),
            "outcome": outcome, "duration_ms": u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            "price": quote, "cost_micro_usd": cost, "output": output, "reprobe": reprobe,
        });
        println!("{value}");
    } else {
        let detail = match &outcome {
            JobOutcome::Completed { .. } => "completed (exit status 0)".to_owned(),
            JobOutcome::Failed { reason, .. } | JobOutcome::NotStarted { reason } | JobOutcome::Unknown { reason } => {
                format!("{}: {reason}", outcome.code())
            }
        };
        eprintln!(
            "job {job_id} on {device_id}: {detail}; ran {:.1} s{}",
            elapsed.as_secs_f64(),
            cost.map_or(String::new(), |c| format!(", cost {}", format_usd(c)))
        );
        if let Some(r) = &reprobe {
            eprintln!("host after the loss: {r}");
        }
    }
    Ok(if matches!(outcome, JobOutcome::Completed { .. }) { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::fleet::hours_ms;
    use super::*;

    #[test]
    fn hours_convert_to_milliseconds() {
        assert_eq!(hours_ms(1.5).ok(), Some(5_400_000));
        assert!(hours_ms(-1.0).is_err());
        assert!(hours_ms(f64::NAN).is_err());
    }

    #[test]
    fn the_window_parser_reads_timeouts() {
        assert_eq!(parse_window("90m").ok(), Some(Duration::from_secs(5400)));
    }
}
