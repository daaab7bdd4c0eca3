//! Where a command acts: the local data directory, or a server over mTLS (`--server URL` with `--bundle DIR`
//! or `--cert/--key/--ca`, or `server` / `bundle` in the configuration, `HWLEDGER_SERVER` /
//! `HWLEDGER_BUNDLE`). Subcommands that submit or read (submit, devices, device, telemetry, jobs, cost,
//! dashboard, enroll token) take [`RemoteArgs`], resolve a [`Target`] and call the same methods whichever it
//! is, so their human and `--json` output is the same both ways. The fleet commands (probe, dispatch, suggest,
//! rentals, discover) reach a server through [`Remote`] too (`super::fleet::Target`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use hwledger_engine::event::Actor;
use hwledger_engine::ledger::Outcome;
use hwledger_engine::{Context, Submission};
use hwledger_projections::{GroupBy, Projector, ProjectorOptions};
use hwledger_wire::api::{BatchItemResult, MAX_BATCH, ReceiptBody};
use hwledger_wire::client::{Client, ClientError, TelemetryQuery};

use super::Config;
use super::ledger_tools::now_ms;
use super::reads::HEARTBEAT;

/// Serialized bytes per batch sent to a server: below its default 64 KiB body limit, with room to spare.
const BATCH_BYTES: usize = 48 * 1024;

/// Flags that point a subcommand at a server instead of the local data directory.
#[derive(Debug, Clone, Default, Args)]
pub struct RemoteArgs {
    /// Act on this server (`https://HOST:PORT`) instead of the local data directory. Also `server` in the
    /// configuration file or `HWLEDGER_SERVER`.
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
    /// Credential bundle directory for `--server` (`ca.crt`, `<role>-<name>.crt`, `.key`). Also `bundle` in
    /// the configuration or `HWLEDGER_BUNDLE`; default `<data>/operator` when it exists.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["cert", "key"])]
    pub bundle: Option<PathBuf>,
    /// Client certificate (PEM) for `--server`, with `--key` and `--ca`.
    #[arg(long, value_name = "FILE", requires_all = ["key", "ca"])]
    pub cert: Option<PathBuf>,
    /// Client private key (PEM) for `--server`.
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
    /// CA bundle (PEM) the server's certificate must chain to.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
}

/// How a remote target is reached, as resolved by [`Config::remote`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteSettings {
    /// The server's base URL.
    pub url: String,
    /// The credentials.
    pub credentials: Credentials,
}

/// Client credentials for a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// A bundle directory.
    Bundle(PathBuf),
    /// Three files.
    Files {
        /// CA bundle.
        ca: PathBuf,
        /// Certificate.
        cert: PathBuf,
        /// Key.
        key: PathBuf,
    },
}

/// A server and the runtime its client runs on (the binary is otherwise synchronous).
pub struct Remote {
    /// The typed client.
    pub client: Client,
    /// A current-thread runtime for the client's futures.
    pub rt: tokio::runtime::Runtime,
}

impl Remote {
    /// The server's head seq now: remote reads ask for at least it, so a read after a write (from any
    /// process) reflects that write, as a local read does (the local projector catches up on open).
    pub fn head(&self) -> anyhow::Result<Option<u64>> {
        Ok(Some(self.rt.block_on(self.client.health()).map_err(remote_err)?.head_seq))
    }

    /// Submits in batches the server accepts; one result per submission, in order. The identity is the
    /// client certificate's.
    pub fn submit(&self, subs: &[Submission]) -> anyhow::Result<Vec<BatchItemResult>> {
        let mut out = Vec::with_capacity(subs.len());
        for chunk in chunks(subs)? {
            let answer = self.rt.block_on(self.client.submit_batch(chunk)).map_err(remote_err)?;
            out.extend(answer.results);
        }
        Ok(out)
    }
}

/// Where the command acts.
pub enum Target {
    /// The local data directory (opened per operation; it must not be in use by a running server).
    Local(Box<Config>),
    /// A server.
    Remote(Remote),
}

/// Turns a client error into a CLI error; [`super::exit_code`] maps 4xx answers to exit 1.
fn remote_err(e: ClientError) -> anyhow::Error {
    anyhow::Error::new(e)
}

impl Target {
    /// The target the flags, environment and configuration name.
    pub fn resolve(config: &Config, args: &RemoteArgs) -> anyhow::Result<Target> {
        match config.remote(args)? {
            None => Ok(Target::Local(Box::new(config.clone()))),
            Some(settings) => {
                let client = match &settings.credentials {
                    Credentials::Bundle(dir) => Client::from_bundle_dir(&settings.url, dir),
                    Credentials::Files { ca, cert, key } => Client::from_files(&settings.url, ca, cert, key),
                }
                .context("set up the HTTPS client")?;
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("start the client runtime")?;
                Ok(Target::Remote(Remote { client, rt }))
            }
        }
    }

    /// Submits commands. Locally they run as `actor` (default: the system); remotely the identity is the
    /// client certificate's, so `actor` must be `None`. One result per submission, in order.
    pub fn submit(&self, subs: Vec<Submission>, actor: Option<Actor>) -> anyhow::Result<Vec<BatchItemResult>> {
        match self {
            Target::Local(config) => {
                let ledger = config.open_ledger()?;
                let now = now_ms();
                let actor = actor.unwrap_or(Actor::System);
                let items = subs.into_iter().map(|s| (s, Context::new(actor.clone(), now))).collect();
                let mut out = Vec::new();
                for outcome in ledger.submit_many(items).wait() {
                    out.push(match outcome.context("submit")? {
                        Outcome::Accepted(r) => BatchItemResult::Accepted { receipt: ReceiptBody::from(&r) },
                        Outcome::Duplicate(r) => BatchItemResult::Duplicate { receipt: ReceiptBody::from(&r) },
                        Outcome::Rejected(r) => {
                            BatchItemResult::Rejected { code: r.code().to_owned(), message: r.to_string() }
                        }
                    });
                }
                ledger.close()?;
                Ok(out)
            }
            Target::Remote(remote) => {
                if let Some(actor) = actor {
                    anyhow::bail!(
                        "cannot act as {actor:?} on a server: the identity comes from the client certificate"
                    );
                }
                remote.submit(&subs)
            }
        }
    }

    fn local_projector<T>(config: &Config, f: impl FnOnce(&Projector) -> T) -> anyhow::Result<T> {
        let ledger = config.open_ledger()?;
        let projector = Projector::open(ledger.store(), ProjectorOptions::default()).context("open projections")?;
        let value = f(&projector);
        projector.persist().context("persist projections")?;
        drop(ledger);
        Ok(value)
    }

    /// Every device (registry projection), as JSON objects.
    pub fn devices(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        match self {
            Target::Local(c) => {
                let devices = Target::local_projector(c, |p| p.devices(now_ms(), HEARTBEAT))?;
                devices.into_iter().map(|d| serde_json::to_value(d).context("render device")).collect()
            }
            Target::Remote(r) => r.rt.block_on(r.client.devices(r.head()?)).map_err(remote_err),
        }
    }

    /// One device, or `None` if it is not enrolled.
    pub fn device(&self, id: &str) -> anyhow::Result<Option<serde_json::Value>> {
        match self {
            Target::Local(c) => {
                let found = Target::local_projector(c, |p| {
                    p.devices(now_ms(), HEARTBEAT).into_iter().find(|d| d.device_id == id)
                })?;
                found.map(|d| serde_json::to_value(d).context("render device")).transpose()
            }
            Target::Remote(r) => match r.rt.block_on(r.client.device(id, r.head()?)) {
                Ok(v) => Ok(Some(v)),
                Err(e) if e.code() == Some("device_unknown") => Ok(None),
                Err(e) => Err(remote_err(e)),
            },
        }
    }

    /// A device's telemetry, or `None` if there is none.
    pub fn telemetry(&self, q: &TelemetryQuery) -> anyhow::Result<Option<serde_json::Value>> {
        match self {
            Target::Local(c) => {
                let found = Target::local_projector(c, |p| {
                    p.telemetry(&q.device, q.gpu, q.from.unwrap_or(i64::MIN), q.to.unwrap_or(i64::MAX))
                })?;
                found.map(|t| serde_json::to_value(t).context("render telemetry")).transpose()
            }
            Target::Remote(r) => match r.rt.block_on(r.client.telemetry(q, r.head()?)) {
                Ok(v) => Ok(Some(v)),
                Err(e) if e.status() == Some(404) => Ok(None),
                Err(e) => Err(remote_err(e)),
            },
        }
    }

    /// Every job.
    pub fn jobs(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        match self {
            Target::Local(c) => {
                let jobs = Target::local_projector(c, Projector::jobs)?;
                jobs.into_iter().map(|j| serde_json::to_value(j).context("render job")).collect()
            }
            Target::Remote(r) => r.rt.block_on(r.client.jobs(r.head()?)).map_err(remote_err),
        }
    }

    /// Cost over the `window` ending now.
    pub fn cost(&self, window: Duration, by: GroupBy) -> anyhow::Result<serde_json::Value> {
        match self {
            Target::Local(c) => {
                let report = Target::local_projector(c, |p| p.cost(now_ms(), window, by))?;
                serde_json::to_value(report).context("render cost")
            }
            Target::Remote(r) => r.rt.block_on(r.client.cost(window, by, r.head()?)).map_err(remote_err),
        }
    }

    /// The dashboard.
    pub fn dashboard(&self) -> anyhow::Result<serde_json::Value> {
        match self {
            Target::Local(c) => {
                let view = Target::local_projector(c, |p| p.dashboard(now_ms(), HEARTBEAT))?;
                serde_json::to_value(view).context("render dashboard")
            }
            Target::Remote(r) => r.rt.block_on(r.client.dashboard(r.head()?)).map_err(remote_err),
        }
    }
}

/// Splits submissions into batches a server accepts: at most [`MAX_BATCH`] and about [`BATCH_BYTES`] each
/// (a single larger submission goes alone; the server then answers 413 for it).
fn chunks(subs: &[Submission]) -> anyhow::Result<Vec<&[Submission]>> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0usize, 0usize);
    for (i, sub) in subs.iter().enumerate() {
        let len = serde_json::to_vec(sub).context("encode submission")?.len() + 1;
        if i > start && (i - start >= MAX_BATCH || bytes + len > BATCH_BYTES) {
            out.push(&subs[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += len;
    }
    if start < subs.len() {
        out.push(&subs[start..]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hwledger_engine::Command;

    fn hb(i: usize) -> Submission {
        Submission {
            command_id: format!("c-{i}"),
            expected_version: None,
            command: Command::RecordTelemetry { device_id: "d".into(), sampled_at: 1, gpus: vec![] },
        }
    }

    #[test]
    fn chunks_respect_count_and_size() -> anyhow::Result<()> {
        let subs: Vec<Submission> = (0..2500).map(hb).collect();
        let parts = chunks(&subs)?;
        assert_eq!(parts.iter().map(|p| p.len()).sum::<usize>(), subs.len());
        for p in &parts {
            assert!(p.len() <= MAX_BATCH);
            assert!(serde_json::to_vec(p)?.len() <= BATCH_BYTES + 2);
        }
        assert!(chunks(&[])?.is_empty());
        Ok(())
    }
}
