//! Where the fleet commands (`probe`, `dispatch`, `suggest`, `prices`, `rentals`, `discover`) send what
//! they record and read what they need: one [`Target`] with "submit these submissions, get receipts"
//! and the read models they consult (devices, latest GPU load, jobs).
//!
//! The local target opens the data directory's ledger for each call and closes it again, so a long
//! job dispatched over SSH never holds the store's lock while it runs (other CLI calls stay usable).
//! Local commands act as the system actor, like `submit`. With `--server URL` (or `server` in the
//! configuration, `HWLEDGER_SERVER`) they submit to and read from a running server over mTLS instead, as
//! the operator of the `--bundle` (default `<data>/operator`): the way to use them while `hwledger serve`
//! holds the data directory. Their `--key` is the SSH key, so the TLS credentials come from a bundle only.
//!
//! Also here: the shared plumbing of those commands — the tokio runtime they use for SSH and HTTP, and
//! the rental-cloud clients and on-disk price cache built from the configuration.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hwledger_adapters::cloud::{ApiKey, ClientOptions, CloudClient, CloudError, PriceCacheFile, Provider};
use hwledger_adapters::fleet::{GpuLoad, KnownDevice};
use hwledger_engine::event::Actor;
use hwledger_engine::ledger::Outcome;
use hwledger_engine::state::JobStatus;
use hwledger_engine::{Context, Submission};
use hwledger_projections::{Projector, ProjectorOptions};
use hwledger_wire::api::BatchItemResult;
use hwledger_wire::client::TelemetryQuery;
use serde::{Deserialize, Serialize};

use super::Config;
use super::ledger_tools::now_ms;
use super::reads::HEARTBEAT;
use super::target::{Remote, RemoteArgs};

/// What became of one submission.
#[derive(Debug, Clone, Serialize)]
pub struct Submitted {
    /// Its command id.
    pub command_id: String,
    /// Its command type (`record_probe`, ...).
    pub command: &'static str,
    /// `accepted`, `duplicate` (the original receipt) or `rejected`.
    pub status: &'static str,
    /// Seq of its first event (accepted or duplicate).
    pub seq: Option<u64>,
    /// Rejection code.
    pub code: Option<String>,
    /// Rejection message.
    pub message: Option<String>,
}

impl Submitted {
    /// Accepted now or earlier (a duplicate is the same fact already recorded).
    pub fn recorded(&self) -> bool {
        self.status != "rejected"
    }

    /// `"<command> <id>: <code>: <message>"` for error messages.
    pub fn describe(&self) -> String {
        format!(
            "{} {}: {}: {}",
            self.command,
            self.command_id,
            self.code.as_deref().unwrap_or("?"),
            self.message.as_deref().unwrap_or_default()
        )
    }
}

/// The fleet as the read models see it.
#[derive(Debug, Clone, Default)]
pub struct FleetView {
    /// Every device ever enrolled.
    pub devices: Vec<KnownDevice>,
    /// Latest reading of each GPU, by device id.
    pub loads: HashMap<String, Vec<GpuLoad>>,
}

impl FleetView {
    /// A device by id.
    pub fn device(&self, device_id: &str) -> Option<&KnownDevice> {
        self.devices.iter().find(|d| d.device_id == device_id)
    }
}

/// `--server` and `--bundle` of the fleet commands.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServerArgs {
    /// Record to and read from this server (`https://HOST:PORT`) instead of the local data directory (needed
    /// while `hwledger serve` runs on it). Also `server` in the configuration file or `HWLEDGER_SERVER`.
    #[arg(long, value_name = "URL", global = true)]
    pub server: Option<String>,
    /// Operator credential bundle for `--server` (`ca.crt`, `operator-<name>.crt`, `.key`). Also `bundle` in
    /// the configuration or `HWLEDGER_BUNDLE`; default `<data>/operator` when it exists.
    #[arg(long, value_name = "DIR", global = true)]
    pub bundle: Option<PathBuf>,
}

/// Where commands are submitted and reads come from.
pub enum Target {
    /// The local data directory.
    Local(Box<Config>),
    /// A server, as the bundle's operator.
    Remote(Box<Remote>),
}

impl Target {
    /// The target the flags, environment and configuration name.
    pub fn resolve(config: &Config, args: &ServerArgs) -> anyhow::Result<Target> {
        let remote = RemoteArgs { server: args.server.clone(), bundle: args.bundle.clone(), ..RemoteArgs::default() };
        Ok(match super::target::Target::resolve(config, &remote)? {
            super::target::Target::Local(c) => Target::Local(c),
            super::target::Target::Remote(r) => Target::Remote(Box::new(r)),
        })
    }

    /// Submits `subs` in order (one group commit), at `now`. Every submission gets a [`Submitted`];
    /// an I/O failure of the store is an error.
    pub fn submit(&self, subs: Vec<Submission>, now: i64) -> anyhow::Result<Vec<Submitted>> {
        if subs.is_empty() {
            return Ok(Vec::new());
        }
        match self {
            Target::Local(config) => {
                let names: Vec<(String, &'static str)> =
                    subs.iter().map(|s| (s.command_id.clone(), s.command.type_name())).collect();
                let ledger = config.open_ledger()?;
                let items = subs.into_iter().map(|s| (s, Context::new(Actor::System, now))).collect();
                let outcomes = ledger.submit_many(items).wait();
                ledger.close().context("close ledger")?;
                let mut out = Vec::with_capacity(names.len());
                for ((command_id, command), outcome) in names.into_iter().zip(outcomes) {
                    let submitted = match outcome.context("submit")? {
                        Outcome::Accepted(r) => Submitted {
                            command_id,
                            command,
                            status: "accepted",
                            seq: Some(r.seq),
                            code: None,
                            message: None,
                        },
                        Outcome::Duplicate(r) => Submitted {
                            command_id,
                            command,
                            status: "duplicate",
                            seq: Some(r.seq),
                            code: None,
                            message: None,
                        },
                        Outcome::Rejected(r) => Submitted {
                            command_id,
                            command,
                            status: "rejected",
                            seq: None,
                            code: Some(r.code().to_owned()),
                            message: Some(r.to_string()),
                        },
                    };
                    out.push(submitted);
                }
                Ok(out)
            }
            Target::Remote(remote) => {
                let names: Vec<(String, &'static str)> =
                    subs.iter().map(|s| (s.command_id.clone(), s.command.type_name())).collect();
                let results = remote.submit(&subs)?;
                anyhow::ensure!(
                    results.len() == names.len(),
                    "the server answered {} results for {} submissions",
                    results.len(),
                    names.len()
                );
                Ok(names
                    .into_iter()
                    .zip(results)
                    .map(|((command_id, command), result)| match result {
                        BatchItemResult::Accepted { receipt } => Submitted {
                            command_id,
                            command,
                            status: "accepted",
                            seq: Some(receipt.first_seq),
                            code: None,
                            message: None,
                        },
                        BatchItemResult::Duplicate { receipt } => Submitted {
                            command_id,
                            command,
                            status: "duplicate",
                            seq: Some(receipt.first_seq),
                            code: None,
                            message: None,
                        },
                        BatchItemResult::Rejected { code, message } => Submitted {
                            command_id,
                            command,
                            status: "rejected",
                            seq: None,
                            code: Some(code),
                            message: Some(message),
                        },
                    })
                    .collect())
            }
        }
    }

    fn with_projector<R>(&self, f: impl FnOnce(&Projector) -> R) -> anyhow::Result<R> {
        match self {
            Target::Local(config) => {
                let ledger = config.open_ledger()?;
                let projector =
                    Projector::open(ledger.store(), ProjectorOptions::default()).context("open projections")?;
                let result = f(&projector);
                projector.persist().context("persist projections")?;
                ledger.close().context("close ledger")?;
                Ok(result)
            }
            Target::Remote(_) => anyhow::bail!("internal: no local projections on a server target"),
        }
    }

    /// Every device as the registry serves it (`GET /v1/devices`, `devices --json`).
    fn device_views(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        if let Target::Remote(r) = self {
            return r.rt.block_on(r.client.devices(r.head()?)).map_err(anyhow::Error::new);
        }
        let views = self.with_projector(|p| p.devices(now_ms(), HEARTBEAT))?;
        views.into_iter().map(|v| serde_json::to_value(v).context("render device")).collect()
    }

    /// The latest reading of each GPU of `devices`, as the snapshots projection serves it.
    fn latest_views(&self, devices: &[KnownDevice]) -> anyhow::Result<Vec<LatestView>> {
        let Target::Remote(r) = self else {
            let latest = self.with_projector(|p| p.snapshots().latest())?;
            return latest
                .into_iter()
                .map(|v| serde_json::to_value(v).and_then(serde_json::from_value).context("render telemetry"))
                .collect();
        };
        // A server serves telemetry per device: ask each live device for an empty range, which still carries
        // every GPU's latest sample. No `min_seq`: `devices` (read just before, see `fleet`) already waited
        // until every projection had applied the server's head, and projections never go back.
        let now = now_ms();
        let mut out = Vec::new();
        for d in devices.iter().filter(|d| !d.decommissioned) {
            let q = TelemetryQuery { device: d.device_id.clone(), from: Some(now), to: Some(now), gpu: None };
            let answer: DeviceTelemetryView = match r.rt.block_on(r.client.telemetry(&q, None)) {
                Ok(v) => serde_json::from_value(v).context("read telemetry")?,
                Err(e) if e.status() == Some(404) => continue,
                Err(e) => return Err(anyhow::Error::new(e)),
            };
            out.extend(answer.gpus.into_iter().map(|g| LatestView {
                device_id: answer.device_id.clone(),
                index: g.index,
                sample: g.latest,
            }));
        }
        Ok(out)
    }

    /// Every job as the cost projection serves it.
    fn job_views(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        if let Target::Remote(r) = self {
            return r.rt.block_on(r.client.jobs(r.head()?)).map_err(anyhow::Error::new);
        }
        let jobs = self.with_projector(|p| p.jobs())?;
        jobs.into_iter().map(|v| serde_json::to_value(v).context("render job")).collect()
    }

    /// Devices and the latest GPU readings.
    pub fn fleet(&self) -> anyhow::Result<FleetView> {
        let devices = self.device_views()?.iter().map(known_device).collect::<anyhow::Result<Vec<_>>>()?;
        let mut loads: HashMap<String, Vec<GpuLoad>> = HashMap::new();
        for latest in self.latest_views(&devices)? {
            loads.entry(latest.device_id).or_default().push(GpuLoad {
                index: latest.index,
                sampled_at: latest.sample.sampled_at,
                vram_used_mib: latest.sample.vram_used_mib,
                vram_total_mib: latest.sample.vram_total_mib,
            });
        }
        Ok(FleetView { devices, loads })
    }

    /// One job, if it was dispatched.
    pub fn job(&self, job_id: &str) -> anyhow::Result<Option<JobInfo>> {
        for v in self.job_views()? {
            let job: JobInfo = serde_json::from_value(v).context("read job")?;
            if job.job_id == job_id {
                return Ok(Some(job));
            }
        }
        Ok(None)
    }
}

/// A device of the registry's JSON view as [`KnownDevice`] (its `status` tells decommissioned ones).
fn known_device(view: &serde_json::Value) -> anyhow::Result<KnownDevice> {
    let mut device: KnownDevice = serde_json::from_value(view.clone()).context("read device")?;
    device.decommissioned = view.get("status").and_then(|s| s.as_str()) == Some("decommissioned");
    Ok(device)
}

/// The fields of the snapshots projection's latest-sample view that fleet commands use.
#[derive(Debug, Deserialize)]
struct LatestView {
    device_id: String,
    index: u32,
    sample: SampleView,
}

/// The fields of a device's telemetry (`GET /v1/telemetry`) that fleet commands use.
#[derive(Debug, Deserialize)]
struct DeviceTelemetryView {
    device_id: String,
    gpus: Vec<GpuTelemetryView>,
}

#[derive(Debug, Deserialize)]
struct GpuTelemetryView {
    index: u32,
    latest: SampleView,
}

#[derive(Debug, Deserialize)]
struct SampleView {
    sampled_at: i64,
    vram_used_mib: Option<u64>,
    vram_total_mib: Option<u64>,
}

/// The fields of a job's view that fleet commands use.
#[derive(Debug, Clone, Deserialize)]
pub struct JobInfo {
    /// Job id.
    pub job_id: String,
    /// Device it was dispatched to.
    pub device_id: String,
    /// Lifecycle.
    pub status: JobStatus,
    /// Cost of a finished, priced job.
    pub cost_micro_usd: Option<u64>,
}

/// Submits and insists every submission was recorded (accepted or duplicate); a rejection is a
/// [`CheckFailed`] naming the command and the engine's code.
pub fn submit_all(target: &Target, subs: Vec<Submission>, now: i64) -> anyhow::Result<Vec<Submitted>> {
    let results = target.submit(subs, now)?;
    if let Some(bad) = results.iter().find(|r| !r.recorded()) {
        return Err(CheckFailed(format!("rejected: {}", bad.describe())).into());
    }
    Ok(results)
}

/// A refusal or failed check (a rejected command, a changed host key, a job that did not complete):
/// `main` maps it to exit code 1, where other errors are 2.
#[derive(Debug)]
pub struct CheckFailed(pub String);

impl std::fmt::Display for CheckFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CheckFailed {}

/// `--hours` as milliseconds (0 to 100 000 hours).
pub fn hours_ms(hours: f64) -> anyhow::Result<u64> {
    if !hours.is_finite() || !(0.0..=100_000.0).contains(&hours) {
        anyhow::bail!("--hours must be between 0 and 100000");
    }
    // In range by the check above, so the conversion is exact to the millisecond.
    format!("{:.0}", hours * 3_600_000.0).parse().context("--hours")
}

/// The tokio runtime for SSH and HTTP (the ledger calls stay outside it: they block).
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().context("start runtime")
}

/// The rental providers in use: those with a `[clouds.<name>]` table, or whose key variable is set.
pub fn configured_providers(config: &Config) -> Vec<Provider> {
    Provider::ALL
        .into_iter()
        .filter(|p| {
            config.clouds.provider(*p).is_some() || std::env::var(p.api_key_env()).is_ok_and(|v| !v.trim().is_empty())
        })
        .collect()
}

/// A client for `provider`: base URL and timeout from the configuration, the key from its environment
/// variable, else from the configuration file.
pub fn cloud_client(config: &Config, provider: Provider) -> Result<CloudClient, CloudError> {
    let settings = config.clouds.provider(provider);
    let key = match ApiKey::from_env(provider) {
        Ok(key) => key,
        Err(missing @ CloudError::MissingApiKey { .. }) => match settings.and_then(|s| s.api_key.as_ref()) {
            Some(secret) => ApiKey::new(secret.0.clone())?,
            None => return Err(missing),
        },
        Err(other) => return Err(other),
    };
    let mut options = ClientOptions::for_provider(provider);
    if let Some(s) = settings {
        if let Some(url) = &s.base_url {
            options = options.with_base_url(url.clone());
        }
        if let Some(secs) = s.timeout_secs {
            options = options.with_timeout(Duration::from_secs(secs));
        }
    }
    CloudClient::new(provider, key, options)
}

/// The price cache of the data directory, loaded as of `now` (a broken file is reported and ignored).
pub fn load_price_cache(config: &Config, now: Instant, now_ms: i64) -> PriceCacheFile {
    // The cache is saved under the data directory afterwards: create that 0700 first, as every command does,
    // rather than letting the cache writer create it with the umask's mode.
    if let Err(e) = config.create_data_dir() {
        tracing::warn!("{e:#}");
    }
    let (file, warning) = PriceCacheFile::load(
        &config.price_cache_path(),
        Duration::from_secs(config.clouds.cache_ttl_secs),
        now,
        now_ms,
    );
    if let Some(w) = warning {
        tracing::warn!("{w}");
    }
    file
}

/// Saves the price cache; failing to is only a warning (it is derived data).
pub fn save_price_cache(file: &PriceCacheFile, now: Instant, now_ms: i64) {
    if let Err(e) = file.save(now, now_ms) {
        tracing::warn!("{e}");
    }
}

/// Offers of every configured provider through the cache (or, with `refresh`, asked now and cached),
/// with the errors of those that failed. A failed refresh is an error, never the older cached quote.
pub async fn fetch_offers(
    config: &Config,
    cache: &mut PriceCacheFile,
    gpu: Option<&str>,
    now: Instant,
    refresh: bool,
) -> (Vec<hwledger_adapters::cloud::PriceOffer>, Vec<ProviderError>) {
    let mut offers = Vec::new();
    let mut errors = Vec::new();
    for provider in configured_providers(config) {
        let result = match cloud_client(config, provider) {
            Ok(client) if refresh => match client.offers(gpu).await {
                Ok(fresh) => {
                    cache.cache.store(provider, gpu, fresh.clone(), now);
                    Ok(fresh)
                }
                Err(e) => Err(e),
            },
            Ok(client) => cache.cache.offers(&client, gpu, now).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(mut o) => offers.append(&mut o),
            Err(e) => {
                tracing::warn!("{provider}: {e}");
                errors.push(ProviderError { provider, code: e.code(), message: e.to_string() });
            }
        }
    }
    (offers, errors)
}

/// A provider that could not be asked.
#[derive(Debug, Clone, Serialize)]
pub struct ProviderError {
    /// Which.
    pub provider: Provider,
    /// The client's stable error code.
    pub code: &'static str,
    /// Its message (never contains the key).
    pub message: String,
}
