//! `hwledger probe ssh user@host[:port] --key FILE [--device ID] [--known-hosts FILE]` and `hwledger
//! probe --all` (every `[[ssh_hosts]]` host of the configuration, through the bounded session pool).
//!
//! Host keys: a known_hosts file when one is given (flag, host entry or `[ssh]`), else the fingerprint
//! pinned in the ledger, else trust on first use — and the key is then pinned (`pin_host_key`). A
//! changed key is refused (exit 1) and, for an enrolled device, recorded as a failed probe. What a
//! probe records is in `hwledger_adapters::fleet::probe`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use hwledger_adapters::fleet::probe::{device_id_for_target, probe_failed, probe_succeeded};
use hwledger_adapters::ssh::{
    ClientIdentity, HostKeyPolicy, PoolLimits, ProbeReport, SshClientConfig, SshError, SshPool, SshTarget,
};

use super::fleet::{CheckFailed, FleetView, ServerArgs, Submitted, Target, runtime};
use super::ledger_tools::now_ms;
use super::{Config, Global};

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ProbeArgs {
    #[command(subcommand)]
    pub what: Option<ProbeWhat>,
    /// Probe every `[[ssh_hosts]]` host of the configuration.
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, Subcommand)]
pub enum ProbeWhat {
    /// Probe one host over SSH.
    Ssh(SshProbeArgs),
}

#[derive(Debug, Args)]
pub struct SshProbeArgs {
    /// `user@host[:port]`.
    pub target: String,
    /// Client private key (ed25519 or ECDSA); default: the host's `[[ssh_hosts]]` key, else `[ssh].key`.
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Device id (default: the `[[ssh_hosts]]` entry of this target, else the host name, `-PORT` off 22).
    #[arg(long)]
    pub device: Option<String>,
    /// Check the host key against this known_hosts file instead of the pin in the ledger.
    #[arg(long)]
    pub known_hosts: Option<PathBuf>,
}

/// One host to probe, fully resolved.
#[derive(Debug, Clone)]
pub struct HostPlan {
    /// Device id.
    pub device_id: String,
    /// Where.
    pub target: SshTarget,
    /// Client key.
    pub key: PathBuf,
    /// known_hosts file; `None` = the ledger's pin (trust on first use).
    pub known_hosts: Option<PathBuf>,
}

impl HostPlan {
    /// The host key policy for this host given what the ledger pinned.
    pub fn policy(&self, fleet: &FleetView) -> HostKeyPolicy {
        match &self.known_hosts {
            Some(path) => HostKeyPolicy::KnownHosts(path.clone()),
            None => HostKeyPolicy::Pinned { expected: fleet.device(&self.device_id).and_then(|d| d.host_key.clone()) },
        }
    }
}

/// The client settings for one key, from `[ssh]`.
pub fn client_config(config: &Config, key: &std::path::Path) -> Result<SshClientConfig, SshError> {
    let mut c = SshClientConfig::new(ClientIdentity::from_file(key)?);
    c.connect_timeout = Duration::from_secs(config.ssh.connect_timeout_secs.max(1));
    c.command_timeout = Duration::from_secs(config.ssh.probe_timeout_secs.max(1));
    Ok(c)
}

fn parse_target(text: &str) -> anyhow::Result<SshTarget> {
    text.parse::<SshTarget>().with_context(|| format!("SSH target {text:?}"))
}

/// The `[[ssh_hosts]]` entries as plans.
pub fn configured_hosts(config: &Config) -> anyhow::Result<Vec<HostPlan>> {
    config
        .ssh_hosts
        .iter()
        .map(|h| {
            let key = h
                .key
                .clone()
                .or_else(|| config.ssh.key.clone())
                .with_context(|| format!("[[ssh_hosts]] {}: no key (set key here or in [ssh])", h.device_id))?;
            Ok(HostPlan {
                device_id: h.device_id.clone(),
                target: parse_target(&h.target)?,
                key,
                known_hosts: h.known_hosts.clone().or_else(|| config.ssh.known_hosts.clone()),
            })
        })
        .collect()
}

/// What probing one host gave.
#[derive(Debug)]
pub struct HostResult {
    /// The plan.
    pub plan: HostPlan,
    /// The report or the error.
    pub result: Result<ProbeReport, SshError>,
    /// What was recorded for it.
    pub recorded: Vec<Submitted>,
}

/// Errors that say nothing about the host (our key, our files): never recorded as a failed probe.
fn local_problem(e: &SshError) -> bool {
    matches!(
        e,
        SshError::KeyLoad { .. }
            | SshError::KeyUnsupported { .. }
            | SshError::KnownHostsUnreadable { .. }
            | SshError::InvalidPin { .. }
            | SshError::InvalidConfig { .. }
    )
}

/// Probes `plans` (grouped by client key, one bounded pool per key) and records the results.
pub fn probe_hosts(config: &Config, target: &Target, plans: Vec<HostPlan>) -> anyhow::Result<Vec<HostResult>> {
    let fleet = target.fleet()?;
    let (retired, plans): (Vec<HostPlan>, Vec<HostPlan>) =
        plans.into_iter().partition(|p| fleet.device(&p.device_id).is_some_and(|d| d.decommissioned));
    for plan in &retired {
        eprintln!("skipping {}: the device is decommissioned", plan.device_id);
    }
    if plans.is_empty() {
        bail!(CheckFailed("nothing to probe: every host named is a decommissioned device".to_owned()));
    }
    let rt = runtime()?;
    let limits = PoolLimits {
        max_sessions: config.ssh.max_sessions.max(1),
        max_per_host: config.ssh.max_per_host.max(1),
        ..PoolLimits::default()
    };
    let mut by_key: BTreeMap<PathBuf, Vec<usize>> = BTreeMap::new();
    for (i, plan) in plans.iter().enumerate() {
        by_key.entry(plan.key.clone()).or_default().push(i);
    }
    let mut results: Vec<Option<Result<ProbeReport, SshError>>> = plans.iter().map(|_| None).collect();
    for (key, indexes) in by_key {
        let pool = client_config(config, &key).and_then(|c| SshPool::new(c, limits));
        match pool {
            Err(e) => {
                for i in indexes {
                    results[i] = Some(Err(clone_local_error(&e)));
                }
            }
            Ok(pool) => {
                let work: Vec<(SshTarget, HostKeyPolicy)> =
                    indexes.iter().map(|&i| (plans[i].target.clone(), plans[i].policy(&fleet))).collect();
                let done = rt.block_on(async {
                    let out = pool.probe_many(work, config.ssh.concurrency.max(1)).await;
                    pool.clear_idle();
                    out
                });
                for (i, (_, result)) in indexes.into_iter().zip(done) {
                    results[i] = Some(result);
                }
            }
        }
    }
    drop(rt);
    let at = now_ms();
    let mut subs = Vec::new();
    let mut spans = Vec::new();
    let results: Vec<Result<ProbeReport, SshError>> = results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(SshError::InvalidConfig { reason: "host was not probed".into() })))
        .collect();
    for (plan, result) in plans.iter().zip(&results) {
        let known = fleet.device(&plan.device_id);
        let start = subs.len();
        match result {
            Ok(report) => subs.extend(probe_succeeded(&plan.device_id, &plan.target, known, report, at)),
            Err(e) if known.is_some() && !local_problem(e) => subs.push(probe_failed(&plan.device_id, e, at)),
            Err(_) => {}
        }
        spans.push(start..subs.len());
    }
    let mut recorded = target.submit(subs, at)?.into_iter();
    let mut out = Vec::new();
    for ((plan, result), span) in plans.into_iter().zip(results).zip(spans) {
        out.push(HostResult { plan, result, recorded: recorded.by_ref().take(span.len()).collect() });
    }
    Ok(out)
}

/// `SshError` is not `Clone`; the errors a pool or key can fail with before connecting are rebuilt.
fn clone_local_error(e: &SshError) -> SshError {
    match e {
        SshError::KeyLoad { path, reason } => SshError::KeyLoad { path: path.clone(), reason: reason.clone() },
        SshError::KeyUnsupported { path, algorithm } => {
            SshError::KeyUnsupported { path: path.clone(), algorithm: algorithm.clone() }
        }
        other => SshError::InvalidConfig { reason: other.to_string() },
    }
}

pub fn run(config: &Config, global: &Global, args: ProbeArgs) -> anyhow::Result<ExitCode> {
    let target = Target::resolve(config, &args.server)?;
    let plans = match (args.what, args.all) {
        (Some(ProbeWhat::Ssh(a)), false) => {
            let ssh_target = parse_target(&a.target)?;
            let entry = config.ssh_hosts.iter().find(|h| {
                a.device.as_deref().map_or_else(
                    || h.target.parse::<SshTarget>().ok().as_ref() == Some(&ssh_target),
                    |d| h.device_id == d,
                )
            });
            let device_id = match a.device.clone().or_else(|| entry.map(|h| h.device_id.clone())) {
                Some(d) => d,
                None => device_id_for_target(&ssh_target)
                    .with_context(|| format!("no device id can be made from {ssh_target}; pass --device"))?,
            };
            if !hwledger_engine::command::validate_id(&device_id) {
                bail!("device id {device_id:?} must be 1-64 characters of A-Z a-z 0-9 . _ -");
            }
            let key = a
                .key
                .or_else(|| entry.and_then(|h| h.key.clone()))
                .or_else(|| config.ssh.key.clone())
                .context("no client key: pass --key FILE (or set [ssh].key in the configuration)")?;
            // Fail early (exit 2) on an unusable key rather than as a failed probe.
            ClientIdentity::from_file(&key).with_context(|| format!("load SSH key {}", key.display()))?;
            let known_hosts = a
                .known_hosts
                .or_else(|| entry.and_then(|h| h.known_hosts.clone()))
                .or_else(|| config.ssh.known_hosts.clone());
            vec![HostPlan { device_id, target: ssh_target, key, known_hosts }]
        }
        (None, true) => {
            let plans = configured_hosts(config)?;
            if plans.is_empty() {
                bail!("no [[ssh_hosts]] in the configuration: nothing to probe");
            }
            plans
        }
        _ => bail!("give either `probe ssh user@host[:port] --key FILE` or `probe --all`"),
    };
    let results = probe_hosts(config, &target, plans)?;
    let mut failed = 0usize;
    for r in &results {
        let rejected: Vec<&Submitted> = r.recorded.iter().filter(|s| !s.recorded()).collect();
        if r.result.is_err() || !rejected.is_empty() {
            failed += 1;
        }
        if global.json {
            let value = match &r.result {
                Ok(report) => serde_json::json!({
                    "device_id": r.plan.device_id, "target": r.plan.target.to_string(), "ok": true,
                    "tool": report.tool, "host_key_fingerprint": report.host_key_fingerprint,
                    "host_key_trust": report.host_key_trust, "gpus": report.samples, "recorded": r.recorded,
                }),
                Err(e) => serde_json::json!({
                    "device_id": r.plan.device_id, "target": r.plan.target.to_string(), "ok": false,
                    "error": {"code": e.code(), "message": e.to_string()}, "recorded": r.recorded,
                }),
            };
            println!("{value}");
        } else {
            match &r.result {
                Ok(report) => println!(
                    "{:<20} {:<28} ok      {} GPU(s) via {}, host key {} ({})",
                    r.plan.device_id,
                    r.plan.target.to_string(),
                    report.samples.len(),
                    report.tool,
                    report.host_key_fingerprint,
                    match report.host_key_trust {
                        hwledger_adapters::ssh::HostKeyTrust::KnownHosts => "in known_hosts",
                        hwledger_adapters::ssh::HostKeyTrust::Pinned => "matches the pin",
                        hwledger_adapters::ssh::HostKeyTrust::FirstUse => "first use: pinned now",
                    }
                ),
                Err(e) => {
                    println!("{:<20} {:<28} FAILED  {}: {e}", r.plan.device_id, r.plan.target.to_string(), e.code())
                }
            }
            for s in rejected {
                println!("  not recorded: {}", s.describe());
            }
        }
        if let Err(e) = &r.result {
            if e.is_host_key_problem() {
                eprintln!("error: {}: {e}", r.plan.device_id);
            }
        }
    }
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
