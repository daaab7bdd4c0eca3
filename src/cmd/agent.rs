//! `hwledger agent --server URL --bundle DIR [--state-dir DIR] [--interval 30s] [--device ID]`: the agent
//! that runs on each device. The work is in `hwledger_adapters::agent` (collector, outbox, send loop); this
//! file reads the bundle (the device id comes from the certificate's role `hwledger:agent:<device>`),
//! implements the send loop's transport over the fleet mTLS client, waits for SIGTERM / Ctrl-C, and renders
//! `hwledger agent status` (the outbox: queued commands, receipts, dead letters).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use hwledger_adapters::agent::outbox::Pending;
use hwledger_adapters::agent::{
    self, AgentOptions, Backoff, Collector, CollectorOptions, ItemOutcome, Outbox, OutboxOptions, SendFailure,
    SendOptions, ToolPaths, Transport,
};
use hwledger_wire::api::{BatchItemResult, BatchResponse, ErrorBody};
use hwledger_wire::pki::Role;

use super::Global;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AgentArgs {
    #[command(subcommand)]
    pub action: Option<AgentAction>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum AgentAction {
    /// Show the outbox of a state directory: counters, queued commands, receipts and dead letters.
    Status(StatusArgs),
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The agent's state directory.
    #[arg(long, env = "HWLEDGER_AGENT_STATE")]
    pub state_dir: Option<PathBuf>,
    /// Most entries listed per section (newest receipts, oldest queued).
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The server's base URL, e.g. https://ledger.example:8443.
    #[arg(long, env = "HWLEDGER_SERVER")]
    pub server: Option<String>,
    /// The agent's bundle directory (`ca.crt`, `agent-<device>.crt`, `agent-<device>.key`).
    #[arg(long, env = "HWLEDGER_AGENT_BUNDLE")]
    pub bundle: Option<PathBuf>,
    /// State directory holding the outbox. Default: $STATE_DIRECTORY (systemd), else
    /// ~/.local/state/hwledger-agent.
    #[arg(long, env = "HWLEDGER_AGENT_STATE")]
    pub state_dir: Option<PathBuf>,
    /// Time between heartbeats (30s, 200ms, 5m, ...).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub interval: Duration,
    /// The device this agent speaks for; must match the certificate (selects it when the bundle has several).
    #[arg(long)]
    pub device: Option<String>,
    /// Host name declared in the registration (default: the system's).
    #[arg(long)]
    pub hostname: Option<String>,
    /// nvidia-smi program ("none" disables it).
    #[arg(long, default_value = "nvidia-smi")]
    pub nvidia_smi: String,
    /// rocm-smi program ("none" disables it).
    #[arg(long, default_value = "rocm-smi")]
    pub rocm_smi: String,
    /// amd-smi program ("none" disables it).
    #[arg(long, default_value = "amd-smi")]
    pub amd_smi: String,
    /// system_profiler program ("none" disables it; default: /usr/sbin/system_profiler on macOS only).
    #[arg(long)]
    pub system_profiler: Option<String>,
    /// Longest run of one GPU tool before it is killed.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub tool_timeout: Duration,
    /// Most commands queued in the outbox (then old heartbeats are coalesced).
    #[arg(long, default_value_t = OutboxOptions::default().max_entries)]
    pub outbox_max_entries: usize,
    /// Most bytes of commands queued in the outbox (then old heartbeats are coalesced).
    #[arg(long, default_value_t = OutboxOptions::default().max_bytes)]
    pub outbox_max_bytes: u64,
    /// Most commands per request.
    #[arg(long, default_value_t = agent::send::DEFAULT_BATCH_MAX_COUNT)]
    pub batch_max: usize,
    /// First retry delay after a failure (doubles up to --backoff-max, with jitter).
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub backoff_initial: Duration,
    /// Longest retry delay.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub backoff_max: Duration,
    /// Timeout of one request to the server.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e} (examples: 30s, 200ms, 5m)"))?;
    if d.is_zero() {
        return Err(format!("{s:?}: must be more than zero"));
    }
    Ok(d)
}

fn tool_path(value: &str) -> Option<PathBuf> {
    (value != "none" && !value.is_empty()).then(|| PathBuf::from(value))
}

fn default_state_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("STATE_DIRECTORY") {
        // systemd's StateDirectory= may list several, separated by ':'; the first is ours.
        let d = PathBuf::from(d);
        if let Some(first) = d.to_str().and_then(|s| s.split(':').next()) {
            return PathBuf::from(first);
        }
        return d;
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/state/hwledger-agent")
}

fn outbox_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("outbox")
}

pub fn run(global: &Global, args: AgentArgs) -> anyhow::Result<ExitCode> {
    match args.action {
        Some(AgentAction::Status(s)) => status(global, s),
        None => run_agent(args.run),
    }
}

/// The agent's credentials, read from its bundle directory.
struct Bundle {
    device_id: String,
    ca_pem: Vec<u8>,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
}

fn read_bundle(dir: &Path, device: Option<&str>) -> anyhow::Result<Bundle> {
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("read {}", p.display()));
    let cert_path = match device {
        Some(d) => dir.join(format!("{}.crt", Role::agent(d).context("--device")?.file_stem())),
        None => {
            let mut found = Vec::new();
            for entry in std::fs::read_dir(dir).with_context(|| format!("list bundle {}", dir.display()))? {
                let name = entry.with_context(|| format!("list bundle {}", dir.display()))?.file_name();
                let name = name.to_string_lossy();
                if name.starts_with("agent-") && name.ends_with(".crt") {
                    found.push(dir.join(&*name));
                }
            }
            match found.len() {
                1 => found.remove(0),
                0 => bail!("no agent certificate (agent-<device>.crt) in {}", dir.display()),
                n => bail!("{n} agent certificates in {}; choose one with --device", dir.display()),
            }
        }
    };
    let cert_pem = read(&cert_path)?;
    let key_path = cert_path.with_extension("key");
    let key_pem = read(&key_path)?;
    let ca_pem = read(&dir.join("ca.crt"))?;
    let certs = hwledger_wire::tls::parse_certs_pem(&cert_pem, &cert_path.display().to_string())
        .context("parse the agent certificate")?;
    let identity = hwledger_wire::pki::identity_from_cert_der(certs[0].as_ref())
        .with_context(|| format!("read the role of {}", cert_path.display()))?;
    let device_id = match identity.role {
        Role::Agent { device_id } => device_id,
        other => bail!("{} is a {} certificate, not an agent's", cert_path.display(), other.kind()),
    };
    if let Some(d) = device {
        if d != device_id {
            bail!("--device {d} but the certificate {} speaks for device {device_id}", cert_path.display());
        }
    }
    Ok(Bundle { device_id, ca_pem, cert_pem, key_pem })
}

fn run_agent(args: RunArgs) -> anyhow::Result<ExitCode> {
    let server = args.server.context("--server URL is required (or HWLEDGER_SERVER)")?;
    let bundle_dir = args.bundle.context("--bundle DIR is required (or HWLEDGER_AGENT_BUNDLE)")?;
    let url = format!("{}/v1/commands/batch", server.trim_end_matches('/'));
    if !url.starts_with("https://") {
        bail!("--server must be an https:// URL, not {server:?}");
    }
    let bundle = read_bundle(&bundle_dir, args.device.as_deref())?;
    let state_dir = args.state_dir.unwrap_or_else(default_state_dir);
    let outbox_options = OutboxOptions {
        max_entries: args.outbox_max_entries.max(1),
        max_bytes: args.outbox_max_bytes,
        ..OutboxOptions::default()
    };
    let outbox = Arc::new(
        Outbox::open(&outbox_dir(&state_dir), outbox_options)
            .with_context(|| format!("open the outbox in {}", state_dir.display()))?,
    );
    let mut tools = ToolPaths {
        nvidia_smi: tool_path(&args.nvidia_smi),
        rocm_smi: tool_path(&args.rocm_smi),
        amd_smi: tool_path(&args.amd_smi),
        ..ToolPaths::default()
    };
    if let Some(sp) = &args.system_profiler {
        tools.system_profiler = tool_path(sp);
    }
    let collector =
        Collector::new(CollectorOptions { tools, timeout: args.tool_timeout, ..CollectorOptions::default() });
    let client = hwledger_wire::client_tls::build_client(
        &bundle.ca_pem,
        Some((&bundle.cert_pem, &bundle.key_pem)),
        args.request_timeout,
    )
    .context("build the HTTPS client from the bundle")?;
    let transport = HttpTransport { client, url };
    let options = AgentOptions {
        device_id: bundle.device_id.clone(),
        hostname: args.hostname.or_else(agent::collector::local_hostname),
        interval: args.interval,
    };
    let send_options = SendOptions {
        batch_max_count: args.batch_max.clamp(1, hwledger_wire::api::MAX_BATCH),
        backoff: Backoff {
            initial: args.backoff_initial,
            max: args.backoff_max.max(args.backoff_initial),
            ..Backoff::default()
        },
        ..SendOptions::default()
    };
    tracing::info!("outbox {}, server {server}", outbox.dir().display());
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().context("start runtime")?;
    let stats = rt.block_on(async {
        let shutdown = shutdown_signal()?;
        agent::run(options, collector, outbox.clone(), transport, send_options, shutdown).await.context("agent stopped")
    })?;
    drop(outbox);
    eprintln!("hwledger agent: stopped cleanly, {} commands queued on disk", stats.pending);
    Ok(ExitCode::SUCCESS)
}

/// Completes on SIGTERM (systemd's stop) or SIGINT (Ctrl-C).
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("listen for SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("listen for SIGINT")?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: stopping"),
                _ = int.recv() => tracing::info!("SIGINT: stopping"),
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}

/// The send loop's transport: `POST /v1/commands/batch` with the agent's client certificate.
struct HttpTransport {
    client: reqwest::Client,
    url: String,
}

/// Item codes that mean "the ledger could not store it now" (its fail-stop submit errors), not "refused".
const RETRYABLE_ITEM_CODES: [&str; 3] = ["storage_unavailable", "ledger_broken", "ledger_closed"];

impl Transport for HttpTransport {
    async fn send_batch(&self, batch: &[Pending]) -> Result<Vec<ItemOutcome>, SendFailure> {
        // The stored JSON of each command, exactly as queued.
        let mut body = Vec::with_capacity(batch.iter().map(|p| p.json.len() + 1).sum::<usize>() + 2);
        body.push(b'[');
        for (i, p) in batch.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(&p.json);
        }
        body.push(b']');
        let response = self
            .client
            .post(&self.url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| SendFailure::Transient { message: describe(&e), retry_after: None })?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, time::OffsetDateTime::now_utc()));
        let bytes = response.bytes().await.map_err(|e| SendFailure::Transient {
            message: format!("reading the answer: {}", describe(&e)),
            retry_after,
        })?;
        outcome_of(status, retry_after, &bytes)
    }
}

/// What an answer of `POST /v1/commands/batch` means for the send loop: per-item outcomes for a 200, else
/// transient (408, 429, 5xx: retry after a backoff, at least `Retry-After`), bad batch (400, 413: the content
/// was refused, bisect), or refused (401, 403, 404, ...: the server will not take commands from this agent).
fn outcome_of(status: u16, retry_after: Option<Duration>, bytes: &[u8]) -> Result<Vec<ItemOutcome>, SendFailure> {
    if status == 200 {
        let answer: BatchResponse = serde_json::from_slice(bytes).map_err(|e| SendFailure::Transient {
            message: format!("the server's answer is not a batch response: {e}"),
            retry_after: None,
        })?;
        return Ok(answer
            .results
            .into_iter()
            .map(|r| match r {
                BatchItemResult::Accepted { receipt } => ItemOutcome::Stored {
                    command_id: receipt.command_id,
                    ledger_seq: receipt.seq,
                    hash: receipt.hash,
                    duplicate: false,
                },
                BatchItemResult::Duplicate { receipt } => ItemOutcome::Stored {
                    command_id: receipt.command_id,
                    ledger_seq: receipt.seq,
                    hash: receipt.hash,
                    duplicate: true,
                },
                BatchItemResult::Rejected { code, message } => {
                    let retryable = RETRYABLE_ITEM_CODES.contains(&code.as_str());
                    ItemOutcome::Rejected { code, message, retryable }
                }
            })
            .collect());
    }
    let (code, message) = match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(b) => (b.code, b.message),
        Err(_) => (format!("http_{status}"), String::from_utf8_lossy(bytes).chars().take(200).collect()),
    };
    Err(match status {
        408 | 429 | 500..=599 => {
            SendFailure::Transient { message: format!("HTTP {status} {code}: {message}"), retry_after }
        }
        400 | 413 => SendFailure::BadBatch { code, message },
        _ => SendFailure::Refused { code, message },
    })
}

/// `Retry-After`: delay-seconds, or an HTTP-date (RFC 9110 §10.2.3) turned into the wait from `now`.
fn parse_retry_after(value: &str, now: time::OffsetDateTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc2822).ok()?;
    Some(Duration::try_from(at - now).unwrap_or(Duration::ZERO))
}

/// A reqwest error with its causes (connection refused, TLS alert, timeout...).
fn describe(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn status(global: &Global, args: StatusArgs) -> anyhow::Result<ExitCode> {
    let state_dir = args.state_dir.unwrap_or_else(default_state_dir);
    let dir = outbox_dir(&state_dir);
    if !dir.join("db").exists() {
        bail!("no outbox in {} (has the agent run with this --state-dir?)", state_dir.display());
    }
    let outbox = Outbox::open(&dir, OutboxOptions::default())
        .with_context(|| format!("open the outbox in {} (stop the agent first)", state_dir.display()))?;
    let stats = outbox.stats();
    let pending = outbox.pending().context("read queued commands")?;
    let receipts = outbox.receipts().context("read receipts")?;
    let dead = outbox.dead_letters().context("read dead letters")?;
    if global.json {
        let value = serde_json::json!({
            "stats": stats,
            "registered_inventory": outbox.registered_inventory().map(hex::encode),
            "pending": pending.iter().map(|p| serde_json::json!({
                "outbox_seq": p.seq, "kind": p.kind, "queued_at": p.queued_at,
                "command_id": p.submission.command_id, "sampled_at": p.sampled_at(),
            })).collect::<Vec<_>>(),
            "receipts": receipts,
            "dead_letters": dead,
        });
        println!("{value}");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "outbox {}: {} queued ({} bytes), {} receipts kept, {} dead letters, {} heartbeats coalesced",
        dir.display(),
        stats.pending,
        stats.pending_bytes,
        stats.receipts,
        stats.dead_letters,
        stats.coalesced_total
    );
    for p in pending.iter().take(args.limit) {
        println!("  queued   #{:<8} {:<12?} {}", p.seq, p.kind, p.submission.command_id);
    }
    for r in receipts.iter().rev().take(args.limit) {
        println!(
            "  receipt  #{:<8} {} -> ledger seq {} {}{}",
            r.outbox_seq,
            r.command_id,
            r.ledger_seq,
            &r.hash.get(..16).unwrap_or(&r.hash),
            if r.duplicate { " (duplicate)" } else { "" }
        );
    }
    for d in dead.iter().rev().take(args.limit) {
        println!("  dead     #{:<8} {} {}: {}", d.outbox_seq, d.submission.command_id, d.code, d.message);
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECEIPT: &str = r#"{"command_id":"b:hb:1","first_seq":7,"seq":7,"leaf_index":6,"hash":"HASH","stream":"device/b","stream_version":3}"#;

    #[test]
    fn batch_answers_map_to_receipts_and_item_rejections() {
        let body = format!(
            r#"{{"results":[{{"status":"accepted","receipt":{RECEIPT}}},{{"status":"duplicate","receipt":{RECEIPT}}},
            {{"status":"rejected","code":"invalid_command","message":"m"}},
            {{"status":"rejected","code":"storage_unavailable","message":"disk"}}]}}"#
        );
        let out = outcome_of(200, None, body.as_bytes()).unwrap();
        assert_eq!(
            out[0],
            ItemOutcome::Stored { command_id: "b:hb:1".into(), ledger_seq: 7, hash: "HASH".into(), duplicate: false }
        );
        assert!(matches!(out[1], ItemOutcome::Stored { duplicate: true, .. }));
        assert!(matches!(&out[2], ItemOutcome::Rejected { code, retryable: false, .. } if code == "invalid_command"));
        assert!(matches!(&out[3], ItemOutcome::Rejected { retryable: true, .. }));
        assert!(matches!(outcome_of(200, None, b"{}"), Err(SendFailure::Transient { .. })));
    }

    #[test]
    fn error_statuses_map_to_retry_bisect_or_refused() {
        let body = br#"{"code":"rate_limited","message":"slow down"}"#;
        match outcome_of(429, Some(Duration::from_secs(9)), body) {
            Err(SendFailure::Transient { retry_after, message }) => {
                assert_eq!(retry_after, Some(Duration::from_secs(9)));
                assert!(message.contains("rate_limited"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(outcome_of(503, None, b"busy"), Err(SendFailure::Transient { .. })));
        let too_large = br#"{"code":"body_too_large","message":"m"}"#;
        assert!(
            matches!(outcome_of(413, None, too_large), Err(SendFailure::BadBatch { code, .. }) if code == "body_too_large")
        );
        let not_pinned = br#"{"code":"not_pinned","message":"m"}"#;
        assert!(
            matches!(outcome_of(403, None, not_pinned), Err(SendFailure::Refused { code, .. }) if code == "not_pinned")
        );
        assert!(matches!(outcome_of(404, None, b""), Err(SendFailure::Refused { code, .. }) if code == "http_404"));
    }

    #[test]
    fn retry_after_takes_seconds_or_an_http_date() {
        let now = time::macros::datetime!(1994-11-06 08:49:00 UTC);
        assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now), Some(Duration::from_secs(37)));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:48:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn durations_and_tool_paths() {
        assert_eq!(parse_duration("200ms"), Ok(Duration::from_millis(200)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").is_err());
        assert_eq!(tool_path("none"), None);
        assert_eq!(tool_path("/opt/bin/nvidia-smi"), Some(PathBuf::from("/opt/bin/nvidia-smi")));
    }
}
