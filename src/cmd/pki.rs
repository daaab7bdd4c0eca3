//! `hwledger ca init|status|rotate` and `hwledger enroll operator|auditor|agent NAME --out DIR`: the fleet PKI
//! on the local data directory; every issued certificate is pinned in the ledger (an event). `hwledger enroll
//! token DEVICE` (operator, local or `--server`) creates a one-time bootstrap token, recording only its hash;
//! `hwledger enroll redeem` (on the device) spends it for a certificate over a key generated on the spot.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use hwledger_wire::api::BatchItemResult;
use hwledger_wire::client::{ClientError, EnrollError, redeem_bootstrap_token};
use hwledger_wire::pki::{Pki, PkiOptions, Role, bootstrap_token_submission, write_bundle};
use hwledger_wire::server::pin_identity;

use super::ledger_tools::now_ms;
use super::reads::parse_window;
use super::target::{RemoteArgs, Target};
use super::{Config, Global};

#[derive(Debug, Args)]
pub struct CaArgs {
    #[command(subcommand)]
    pub action: CaAction,
}

#[derive(Debug, Subcommand)]
pub enum CaAction {
    /// Create the fleet CA and the server certificate (idempotent: a second run changes nothing).
    Init,
    /// The issuing CA, when its rotation is due, and the trusted CAs.
    Status,
    /// Create a new issuing CA; the old one stays trusted for the overlap.
    Rotate {
        /// Days the old CA stays trusted.
        #[arg(long, default_value_t = 14)]
        overlap_days: i64,
    },
}

fn open_pki(config: &Config) -> anyhow::Result<Pki> {
    config.create_data_dir()?;
    Pki::init(&config.data_dir.join("pki"), PkiOptions::default(), time::OffsetDateTime::now_utc())
        .context("initialise PKI")
}

pub fn ca(config: &Config, global: &Global, args: CaArgs) -> anyhow::Result<ExitCode> {
    let now = time::OffsetDateTime::now_utc();
    let mut pki = open_pki(config)?;
    if let CaAction::Rotate { overlap_days } = args.action {
        let rotation = pki.rotate(time::Duration::days(overlap_days), now).context("rotate CA")?;
        eprintln!("rotated: {rotation:?}");
    }
    let status = pki.status(now).context("CA status")?;
    if global.json {
        println!("{}", serde_json::to_string(&status)?);
    } else {
        println!("{}", serde_json::to_string_pretty(&status)?);
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct EnrollArgs {
    #[command(subcommand)]
    pub action: EnrollAction,
}

#[derive(Debug, Subcommand)]
pub enum EnrollAction {
    /// Issue an operator bundle (local data directory).
    Operator(IssueArgs),
    /// Issue an auditor bundle (local data directory).
    Auditor(IssueArgs),
    /// Issue an agent bundle for an enrolled device, for scp (local data directory).
    Agent(IssueArgs),
    /// Create a one-time bootstrap token for a device (only its hash is recorded); prints the token once.
    Token(TokenArgs),
    /// On the device: enroll with a bootstrap token. The key is generated here and never leaves the machine.
    Redeem(RedeemArgs),
}

#[derive(Debug, Args)]
pub struct IssueArgs {
    /// Operator/auditor name, or the device id for an agent (the device must be enrolled).
    pub name: String,
    /// Directory for the bundle (`ca.crt`, `<role>-<name>.crt`, `<role>-<name>.key` 0600).
    #[arg(long)]
    pub out: PathBuf,
    /// Certificate validity in days.
    #[arg(long, default_value_t = 90)]
    pub days: i64,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The device the token enrolls (enrolled on redemption if new).
    pub device: String,
    /// How long the token stays valid: 30m, 24h, 7d...
    #[arg(long, default_value = "24h")]
    pub ttl: String,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Debug, Args)]
pub struct RedeemArgs {
    /// The server's enrollment listener (`serve --enroll-listen`), e.g. `https://ledger.lan:8444`.
    #[arg(long, value_name = "URL")]
    pub server: String,
    /// The CA certificate the enrollment listener's certificate chains to (the fleet's `ca.crt`).
    #[arg(long, value_name = "FILE")]
    pub ca: PathBuf,
    /// The bootstrap token from `hwledger enroll token` (or `HWLEDGER_BOOTSTRAP_TOKEN`, which keeps it out
    /// of the process list).
    #[arg(long, env = "HWLEDGER_BOOTSTRAP_TOKEN", hide_env_values = true)]
    pub token: String,
    /// This device's id (must be the one the token was created for).
    #[arg(long)]
    pub device: String,
    /// Where to write the bundle: `ca.crt`, `agent-<device>.crt`, `agent-<device>.key` (0600).
    #[arg(long)]
    pub out: PathBuf,
    /// Hostname to record for the device.
    #[arg(long)]
    pub hostname: Option<String>,
}

pub fn enroll(config: &Config, global: &Global, args: EnrollArgs) -> anyhow::Result<ExitCode> {
    match args.action {
        EnrollAction::Operator(a) => issue(config, global, Role::operator(&a.name), a),
        EnrollAction::Auditor(a) => issue(config, global, Role::auditor(&a.name), a),
        EnrollAction::Agent(a) => issue(config, global, Role::agent(&a.name), a),
        EnrollAction::Token(a) => token(config, global, a),
        EnrollAction::Redeem(a) => redeem(global, a),
    }
}

fn issue(
    config: &Config,
    global: &Global,
    role: Result<Role, hwledger_wire::pki::PkiError>,
    args: IssueArgs,
) -> anyhow::Result<ExitCode> {
    let now = time::OffsetDateTime::now_utc();
    let role = role.context("certificate role")?;
    let pki = open_pki(config)?;
    let ledger = config.open_ledger()?;
    let cert = pki.issue(&role, time::Duration::days(args.days), now).context("issue certificate")?;
    // Pin first: a bundle that is written but not pinned would be refused by the server anyway.
    pin_identity(&ledger, &cert, now).context("pin the certificate in the ledger")?;
    let paths = write_bundle(&args.out, &cert, &pki.ca_bundle_pem(now)).context("write bundle")?;
    let value = serde_json::json!({
        "fingerprint": cert.fingerprint.to_string(),
        "ca": paths.ca, "cert": paths.cert, "key": paths.key,
    });
    if global.json {
        println!("{value}");
    } else {
        println!("{}", serde_json::to_string_pretty(&value)?);
    }
    ledger.close()?;
    Ok(ExitCode::SUCCESS)
}

fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| ms.to_string())
}

fn token(config: &Config, global: &Global, args: TokenArgs) -> anyhow::Result<ExitCode> {
    let ttl = parse_window(&args.ttl).context("--ttl")?;
    if ttl.is_zero() {
        anyhow::bail!("--ttl must be positive");
    }
    let ttl_ms = i64::try_from(ttl.as_millis()).context("--ttl is too long")?;
    let expires_at = now_ms().checked_add(ttl_ms).context("--ttl is too long")?;
    let (token, submission) =
        bootstrap_token_submission(&args.device, expires_at).context("create the bootstrap token")?;
    let target = Target::resolve(config, &args.remote)?;
    let result = target.submit(vec![submission], None)?;
    let receipt = match result.into_iter().next() {
        Some(BatchItemResult::Accepted { receipt }) => receipt,
        Some(BatchItemResult::Duplicate { .. }) => anyhow::bail!("a token with this hash exists already; run again"),
        Some(BatchItemResult::Rejected { code, message }) => {
            eprintln!("rejected  {code}: {message}");
            return Ok(ExitCode::from(1));
        }
        None => anyhow::bail!("no answer for the token submission"),
    };
    if global.json {
        let value = serde_json::json!({
            "token": token.as_str(), "device_id": args.device, "expires_at": expires_at,
            "token_hash": token.hash().to_string(), "receipt": receipt,
        });
        println!("{value}");
    } else {
        println!("{}", token.as_str());
        eprintln!(
            "bootstrap token for device {} (valid until {}, single use; shown only now). On the device:\n  \
             hwledger enroll redeem --server https://<ledger-host>:<enroll-port> --ca ca.crt --device {} --out <dir> --token <token>",
            args.device,
            rfc3339(expires_at),
            args.device
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn redeem(global: &Global, args: RedeemArgs) -> anyhow::Result<ExitCode> {
    let ca_pem = std::fs::read(&args.ca).with_context(|| format!("read {}", args.ca.display()))?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("start runtime")?;
    let result = rt.block_on(redeem_bootstrap_token(
        &args.server,
        &ca_pem,
        args.token.trim(),
        &args.device,
        args.hostname.clone(),
        &args.out,
    ));
    let bundle = match result {
        Ok(b) => b,
        // The server refused the token (used, expired, unknown) or the answer is for another device: exit 1.
        Err(e @ (EnrollError::Client(ClientError::Api { .. }) | EnrollError::OtherDevice { .. })) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(1));
        }
        Err(e) => return Err(e).context("enroll with the bootstrap token"),
    };
    let value = serde_json::json!({
        "device_id": bundle.device_id, "fingerprint": bundle.fingerprint, "not_after": bundle.not_after,
        "ca": bundle.files.ca, "cert": bundle.files.cert, "key": bundle.files.key, "receipt": bundle.receipt,
    });
    if global.json {
        println!("{value}");
    } else {
        println!("{}", serde_json::to_string_pretty(&value)?);
    }
    Ok(ExitCode::SUCCESS)
}
