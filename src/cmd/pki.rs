//! `hwledger ca init|status|rotate` and `hwledger enroll operator|auditor|agent NAME --out DIR`: the fleet PKI
//! on the local data directory. Every issued certificate is pinned in the ledger (an event).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use hwledger_wire::pki::{Pki, PkiOptions, Role, write_bundle};
use hwledger_wire::server::pin_identity;

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
    /// operator, auditor or agent.
    pub role: String,
    /// Operator/auditor name, or the device id for an agent (the device must be enrolled).
    pub name: String,
    /// Directory for the bundle (`ca.crt`, `<role>-<name>.crt`, `<role>-<name>.key` 0600).
    #[arg(long)]
    pub out: PathBuf,
    /// Certificate validity in days.
    #[arg(long, default_value_t = 90)]
    pub days: i64,
}

pub fn enroll(config: &Config, global: &Global, args: EnrollArgs) -> anyhow::Result<ExitCode> {
    let now = time::OffsetDateTime::now_utc();
    let role = match args.role.as_str() {
        "operator" => Role::operator(&args.name),
        "auditor" => Role::auditor(&args.name),
        "agent" => Role::agent(&args.name),
        other => anyhow::bail!("role {other:?}: expected operator, auditor or agent"),
    }
    .context("certificate role")?;
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
