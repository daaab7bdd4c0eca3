//! Read subcommands (devices, device, telemetry, jobs, cost, dashboard) over the projections of the local data
//! directory or of a server (`--server`, see [`super::target`]), with the same output either way; and the
//! adapter that serves the projections to the HTTPS front door (`wire::server::ReadModels`).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use hwledger_projections::{GroupBy, Projector};
use hwledger_wire::client::TelemetryQuery;
use hwledger_wire::server::{ReadModelError, ReadModels, ReadQuery};

use super::ledger_tools::now_ms;
use super::target::{RemoteArgs, Target};
use super::{Config, Global};

/// Heartbeat interval agents use; a device is stale after missing a few of them.
pub const HEARTBEAT: Duration = Duration::from_secs(30);

/// Parses `24h`, `7d`, `30d`, `90m`, `3600s`.
pub fn parse_window(s: &str) -> anyhow::Result<Duration> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().with_context(|| format!("window {s:?} must look like 24h, 7d or 30d"))?;
    let unit_secs: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" | "" => 3600,
        "d" => 86_400,
        _ => bail!("window {s:?}: unit must be s, m, h or d"),
    };
    let secs = n.checked_mul(unit_secs).with_context(|| format!("window {s:?} is too long"))?;
    Ok(Duration::from_secs(secs))
}

fn parse_group(s: Option<&str>) -> anyhow::Result<GroupBy> {
    Ok(match s {
        None | Some("none") => GroupBy::None,
        Some("device") => GroupBy::Device,
        Some("backend") => GroupBy::Backend,
        Some("day") => GroupBy::Day,
        Some(other) => bail!("--by {other:?}: expected device, backend or day"),
    })
}

/// Parses RFC 3339 or unix milliseconds.
pub fn parse_time(s: &str) -> anyhow::Result<i64> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .with_context(|| format!("{s:?} is neither RFC 3339 nor unix milliseconds"))?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).context("time out of range")
}

#[derive(Debug, Args)]
pub struct ReadArgs {
    /// Device id (for `device` and `telemetry`).
    pub id: Option<String>,
    /// Telemetry from (RFC 3339 or unix ms).
    #[arg(long)]
    pub from: Option<String>,
    /// Telemetry to (RFC 3339 or unix ms).
    #[arg(long)]
    pub to: Option<String>,
    /// Only this GPU index (telemetry).
    #[arg(long)]
    pub gpu: Option<u32>,
    /// Cost window: 24h, 7d, 30d...
    #[arg(long, default_value = "24h")]
    pub window: String,
    /// Cost grouping: device, backend or day.
    #[arg(long)]
    pub by: Option<String>,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

/// Which read.
#[derive(Debug, Clone, Copy)]
pub enum Read {
    Devices,
    Device,
    Telemetry,
    Jobs,
    Cost,
    Dashboard,
}

pub fn run(config: &Config, global: &Global, which: Read, args: ReadArgs) -> anyhow::Result<ExitCode> {
    let target = Target::resolve(config, &args.remote)?;
    let value = match which {
        Read::Devices => serde_json::Value::Array(target.devices()?),
        Read::Device => {
            let id = args.id.context("give a device id")?;
            match target.device(&id)? {
                Some(d) => d,
                None => {
                    eprintln!("device {id} is not enrolled");
                    return Ok(ExitCode::from(1));
                }
            }
        }
        Read::Telemetry => {
            let id = args.id.context("give a device id")?;
            let q = TelemetryQuery {
                device: id.clone(),
                from: args.from.as_deref().map(parse_time).transpose()?,
                to: args.to.as_deref().map(parse_time).transpose()?,
                gpu: args.gpu,
            };
            match target.telemetry(&q)? {
                Some(t) => t,
                None => {
                    eprintln!("no telemetry for device {id}");
                    return Ok(ExitCode::from(1));
                }
            }
        }
        Read::Jobs => serde_json::Value::Array(target.jobs()?),
        Read::Cost => target.cost(parse_window(&args.window)?, parse_group(args.by.as_deref())?)?,
        Read::Dashboard => target.dashboard()?,
    };
    if global.json {
        println!("{}", serde_json::to_string(&value)?);
    } else {
        render_human(which, &value);
    }
    Ok(ExitCode::SUCCESS)
}

fn render_human(which: Read, value: &serde_json::Value) {
    match (which, value) {
        (Read::Devices, serde_json::Value::Array(devices)) => {
            println!("{:<20} {:<10} {:<16} {:>4} {:<24}", "DEVICE", "BACKEND", "STATUS", "GPUS", "LAST SEEN (ms)");
            for d in devices {
                println!(
                    "{:<20} {:<10} {:<16} {:>4} {:<24}",
                    d["device_id"].as_str().unwrap_or("?"),
                    d["backend"].as_str().unwrap_or("?"),
                    d["status"].as_str().unwrap_or("?"),
                    d["gpus"].as_array().map_or(0, Vec::len),
                    d["last_seen"].to_string(),
                );
            }
        }
        (Read::Jobs, serde_json::Value::Array(jobs)) => {
            println!("{:<16} {:<16} {:<12} {:<20} {:>14}", "JOB", "DEVICE", "STATUS", "MODEL", "COST (µ$)");
            for j in jobs {
                println!(
                    "{:<16} {:<16} {:<12} {:<20} {:>14}",
                    j["job_id"].as_str().unwrap_or("?"),
                    j["device_id"].as_str().unwrap_or("?"),
                    j["status"].as_str().unwrap_or("?"),
                    j["model"].as_str().unwrap_or("?"),
                    j["cost_micro_usd"].to_string(),
                );
            }
        }
        (Read::Dashboard, serde_json::Value::Object(map)) => {
            for (k, v) in map {
                if k == "recent_events" {
                    continue;
                }
                println!("{k:<28} {v}");
            }
            if let Some(events) = map.get("recent_events").and_then(|e| e.as_array()) {
                println!("recent events:");
                for e in events.iter().rev().take(10) {
                    println!("  {e}");
                }
            }
        }
        _ => println!("{}", serde_json::to_string_pretty(value).unwrap_or_default()),
    }
}

/// The projections served over HTTPS.
pub struct ProjectorReads {
    /// The live projector (followed by a background thread).
    pub projector: Arc<Projector>,
}

fn to_json<T: serde::Serialize>(v: T) -> Result<serde_json::Value, ReadModelError> {
    serde_json::to_value(v).map_err(|e| ReadModelError::Unavailable(e.to_string()))
}

impl ReadModels for ProjectorReads {
    fn applied_seq(&self) -> u64 {
        self.projector.applied_seq()
    }

    fn devices(&self, _query: &ReadQuery) -> Result<serde_json::Value, ReadModelError> {
        Ok(serde_json::json!({ "devices": to_json(self.projector.devices(now_ms(), HEARTBEAT))? }))
    }

    fn device(&self, device_id: &str) -> Result<Option<serde_json::Value>, ReadModelError> {
        let found = self.projector.devices(now_ms(), HEARTBEAT).into_iter().find(|d| d.device_id == device_id);
        found.map(to_json).transpose()
    }

    fn telemetry(&self, query: &ReadQuery) -> Result<serde_json::Value, ReadModelError> {
        let bad = |e: anyhow::Error| ReadModelError::BadRequest(format!("{e:#}"));
        let device =
            query.params.get("device").ok_or_else(|| ReadModelError::BadRequest("device= is required".into()))?;
        let from = query.params.get("from").map(|s| parse_time(s)).transpose().map_err(bad)?.unwrap_or(i64::MIN);
        let to = query.params.get("to").map(|s| parse_time(s)).transpose().map_err(bad)?.unwrap_or(i64::MAX);
        let gpu = match query.params.get("gpu") {
            Some(g) => Some(g.parse::<u32>().map_err(|_| ReadModelError::BadRequest("gpu must be a number".into()))?),
            None => None,
        };
        match self.projector.telemetry(device, gpu, from, to) {
            Some(t) => to_json(t),
            None => Err(ReadModelError::NotFound(format!("no telemetry for device {device}"))),
        }
    }

    fn jobs(&self, _query: &ReadQuery) -> Result<serde_json::Value, ReadModelError> {
        Ok(serde_json::json!({ "jobs": to_json(self.projector.jobs())? }))
    }

    fn cost(&self, query: &ReadQuery) -> Result<serde_json::Value, ReadModelError> {
        let bad = |e: anyhow::Error| ReadModelError::BadRequest(format!("{e:#}"));
        let window = parse_window(query.params.get("window").map_or("24h", String::as_str)).map_err(bad)?;
        let by = parse_group(query.params.get("by").map(String::as_str)).map_err(bad)?;
        to_json(self.projector.cost(now_ms(), window, by))
    }

    fn dashboard(&self) -> Result<serde_json::Value, ReadModelError> {
        to_json(self.projector.dashboard(now_ms(), HEARTBEAT))
    }

    fn projections(&self, query: &ReadQuery) -> Result<serde_json::Value, ReadModelError> {
        if let Some(k) = query.params.keys().next() {
            return Err(ReadModelError::BadRequest(format!("unknown query parameter {k:?}; known: min_seq")));
        }
        // One read lock for all four, so the seqs and digests belong together.
        let status = self.projector.status();
        let applied_seq = status.iter().map(|s| s.applied_seq).min().unwrap_or(0);
        Ok(serde_json::json!({ "applied_seq": applied_seq, "projections": to_json(status)? }))
    }
}
