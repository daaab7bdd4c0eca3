//! `hwledger discover tailscale [--tailscale-bin PATH] [--enroll PEER...]`: the tailnet's peers that are
//! not enrolled yet, and one-time bootstrap tokens for the chosen ones (each printed once; only its
//! SHA-256 is recorded, as a `create_bootstrap_token` event). The agent on that peer enrolls with it
//! on the server's enrollment port (`serve --enroll-listen`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use hwledger_adapters::fleet::discover::{PeerStatus, find, peers, token_submission};

use super::fleet::{CheckFailed, ServerArgs, Target, runtime, submit_all};
use super::ledger_tools::now_ms;
use super::{Config, Global};

/// How long `tailscale status --json` may take: it answers from the local daemon in milliseconds.
const TAILSCALE_TIMEOUT: Duration = Duration::from_secs(15);

/// Largest `tailscale status --json` output read (a tailnet of thousands of peers is a few MiB).
const MAX_STATUS_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, Args)]
pub struct DiscoverArgs {
    #[command(subcommand)]
    pub source: DiscoverSource,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, Subcommand)]
pub enum DiscoverSource {
    /// Peers of the local tailnet (`tailscale status --json`).
    Tailscale(TailscaleArgs),
}

#[derive(Debug, Args)]
pub struct TailscaleArgs {
    /// The tailscale binary (default: `tailscale_bin` of the configuration, else `tailscale` on PATH).
    #[arg(long)]
    pub tailscale_bin: Option<PathBuf>,
    /// Create a bootstrap token for these peers (host name, MagicDNS name, node id, address or device id).
    #[arg(long, num_args = 1..)]
    pub enroll: Vec<String>,
    /// Hours a token stays valid.
    #[arg(long, default_value_t = 24)]
    pub token_hours: u32,
}

/// Runs `<bin> status --json` and returns its standard output.
fn tailscale_status(bin: &std::path::Path) -> anyhow::Result<String> {
    let rt = runtime()?;
    let output = rt.block_on(async {
        let child = tokio::process::Command::new(bin)
            .args(["status", "--json"])
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        tokio::time::timeout(TAILSCALE_TIMEOUT, child).await
    });
    let output = match output {
        Err(_) => bail!("{} status --json did not answer within {TAILSCALE_TIMEOUT:?}", bin.display()),
        Ok(r) => r.with_context(|| format!("run {} status --json", bin.display()))?,
    };
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        bail!("{} status --json failed ({}): {}", bin.display(), output.status, stderr.trim());
    }
    if output.stdout.len() > MAX_STATUS_BYTES {
        bail!(
            "{} status --json printed {} bytes, over the {MAX_STATUS_BYTES}-byte limit",
            bin.display(),
            output.stdout.len()
        );
    }
    String::from_utf8(output.stdout).context("tailscale status --json is not UTF-8")
}

/// A new bootstrap token for `device_id`, recorded (hash only) in the ledger; the token is returned once.
fn create_bootstrap_token(target: &Target, device_id: &str, expires_at: i64, now: i64) -> anyhow::Result<String> {
    let (token, hash) = hwledger_wire::pki::new_bootstrap_token().context("mint bootstrap token")?;
    submit_all(target, vec![token_submission(device_id, hash.0, expires_at)], now)?;
    Ok(token.as_str().to_owned())
}

fn row(p: &PeerStatus) -> String {
    format!(
        "{:<24} {:<36} {:<16} {:<7} {:<8} {}",
        p.peer.host_name.as_deref().unwrap_or("?"),
        p.peer.dns_name.as_deref().unwrap_or("?"),
        p.peer.addresses.first().map_or("?", String::as_str),
        match p.peer.online {
            Some(true) => "online",
            Some(false) => "offline",
            None => "?",
        },
        p.peer.os.as_deref().unwrap_or("?"),
        match (&p.enrolled_as, &p.device_id) {
            (Some(d), _) => format!("enrolled as {d}"),
            (None, Some(d)) => format!("not enrolled (would be {d})"),
            (None, None) => "not enrolled (no usable name)".to_owned(),
        }
    )
}

pub fn run(config: &Config, global: &Global, args: DiscoverArgs) -> anyhow::Result<ExitCode> {
    let server = args.server;
    let DiscoverSource::Tailscale(args) = args.source;
    let bin = args.tailscale_bin.unwrap_or_else(|| config.tailscale_bin.clone());
    let text = tailscale_status(&bin)?;
    let status = hwledger_adapters::tailscale::parse_status(&text)
        .map_err(|e| anyhow::anyhow!("{} status --json: {} ({})", bin.display(), e, e.code()))?;
    let target = Target::resolve(config, &server)?;
    let fleet = target.fleet()?;
    let all = peers(&status, &fleet.devices);

    // Resolve every requested peer before creating any token: a typo creates nothing.
    let mut chosen = Vec::new();
    for wanted in &args.enroll {
        let Some(p) = find(&all, wanted) else {
            bail!("no tailnet peer matches {wanted:?}");
        };
        if let Some(d) = &p.enrolled_as {
            bail!(CheckFailed(format!("peer {wanted} is already enrolled as device {d}")));
        }
        let device_id =
            p.device_id.clone().with_context(|| format!("peer {wanted} has no name usable as a device id"))?;
        chosen.push((p, device_id));
    }
    let now = now_ms();
    let expires_at = now.saturating_add(i64::from(args.token_hours).saturating_mul(3_600_000));
    let mut tokens = Vec::new();
    for (p, device_id) in &chosen {
        let token = create_bootstrap_token(&target, device_id, expires_at, now)?;
        tokens.push((p.peer.id.clone(), device_id.clone(), token));
    }

    if global.json {
        let listed: Vec<&PeerStatus> = all.iter().filter(|p| p.enrolled_as.is_none()).collect();
        let created: Vec<serde_json::Value> = tokens
            .iter()
            .map(|(peer, device, token)| serde_json::json!({"peer": peer, "device_id": device, "token": token, "expires_at": expires_at}))
            .collect();
        println!("{}", serde_json::json!({"peers": all, "not_enrolled": listed, "tokens": created}));
    } else {
        let (enrolled, fresh): (Vec<&PeerStatus>, Vec<&PeerStatus>) = all.iter().partition(|p| p.enrolled_as.is_some());
        println!("{:<24} {:<36} {:<16} {:<7} {:<8} STATUS", "HOST", "DNS NAME", "ADDRESS", "STATE", "OS");
        for p in &fresh {
            println!("{}", row(p));
        }
        if !enrolled.is_empty() {
            let names: Vec<&str> = enrolled.iter().filter_map(|p| p.enrolled_as.as_deref()).collect();
            println!("{} peer(s) already enrolled: {}", enrolled.len(), names.join(", "));
        }
        for (_, device, token) in &tokens {
            println!("\nbootstrap token for {device} (shown once, valid {} h):\n  {token}", args.token_hours);
        }
    }
    Ok(ExitCode::SUCCESS)
}
