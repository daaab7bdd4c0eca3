//! The hwledger agent, as a library: it samples the local GPUs every interval ([`collector`]), turns the
//! samples into `register_device` / `record_telemetry` commands with deterministic ids ([`commands`]),
//! writes them durably to an on-disk [`outbox`] before anything is sent, and drains the outbox to the
//! server through a [`send::Transport`] ([`send`]). The binary (`hwledger agent`) supplies the transport
//! (the mTLS client of `hwledger-wire`), the device id (from the agent certificate) and the shutdown
//! signal; everything else lives here.
//!
//! ```text
//! every interval:  sample GPUs ─► [inventory changed? register] + heartbeat ─► outbox (fdatasync) ─► wake
//! send loop:       outbox (oldest first, ≤ N commands, ≤ B bytes) ─► POST /v1/commands/batch
//!                  ─► receipt: remove · refused for good: dead-letter · otherwise: back off, keep
//! ```

pub mod collector;
pub mod commands;
pub mod outbox;
pub mod send;

use std::sync::Arc;
use std::time::Duration;

use hwledger_engine::event::UnixMillis;
use tokio::sync::{Notify, watch};

pub use collector::{CollectError, Collector, CollectorOptions, Sample, Tool, ToolPaths};
pub use commands::Inventory;
pub use outbox::{EnqueueError, Outbox, OutboxError, OutboxOptions, OutboxStats, Stamp};
pub use send::{Backoff, ItemOutcome, SendFailure, SendOptions, Sender, Transport};

/// Default heartbeat interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);

/// The wall clock in unix milliseconds (the agent's only clock: `sampled_at` and the outbox's timestamps).
pub fn now_ms() -> UnixMillis {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

/// What the agent is and how often it reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentOptions {
    /// The device this agent speaks for (from its certificate).
    pub device_id: String,
    /// The host name declared in the registration.
    pub hostname: Option<String>,
    /// Time between samples.
    pub interval: Duration,
}

/// Why the agent stopped other than by request.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The outbox failed: the agent cannot keep its promise of not losing commands, so it stops.
    #[error("outbox: {0}")]
    Outbox(#[from] OutboxError),
}

impl AgentError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            AgentError::Outbox(e) => e.code(),
        }
    }
}

/// One sampling step: sample, queue a registration if the inventory changed, queue the heartbeat. Returns
/// whether anything was queued. A failed sample or a full outbox is logged and skipped; only an outbox
/// storage failure is an error.
pub async fn tick(options: &AgentOptions, collector: &Collector, outbox: &Outbox) -> Result<bool, OutboxError> {
    let sample = match collector.sample().await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("sampling the GPUs failed ({}): {e}; no heartbeat this interval", e.code());
            return Ok(false);
        }
    };
    let now = now_ms();
    let sampled_at = outbox.next_sampled_at(now);
    let inventory = Inventory::from_sample(options.hostname.clone(), &sample);
    let digest = inventory.digest();
    let mut items = Vec::with_capacity(2);
    let mut stamp = Stamp { sampled_at: Some(sampled_at), inventory: None };
    if outbox.registered_inventory() != Some(digest) {
        let what = sample.tool.map(|t| t.as_str()).unwrap_or("no GPU tool: CPU only");
        let names: Vec<&str> = inventory.gpus.iter().map(|g| g.name.as_str()).collect();
        tracing::info!(
            "inventory of {}: {} GPU(s) ({what}) {names:?}; queued registration {}",
            options.device_id,
            inventory.gpus.len(),
            commands::registration_id(&options.device_id, sampled_at)
        );
        items.push(inventory.register(&options.device_id, sampled_at));
        stamp.inventory = Some(digest);
    }
    items.push(commands::heartbeat(&options.device_id, sampled_at, &sample));
    match outbox.enqueue(&items, stamp, now) {
        Ok(done) => {
            if let (Some(first), Some(last)) = (done.coalesced.first(), done.coalesced.last()) {
                tracing::warn!(
                    "outbox full: coalesced {} old heartbeats ({first} … {last}) to make room",
                    done.coalesced.len()
                );
            }
            tracing::info!(
                "queued heartbeat {} ({} GPU readings); {} queued",
                commands::heartbeat_id(&options.device_id, sampled_at),
                sample.gpus.len(),
                done.pending
            );
            Ok(true)
        }
        Err(EnqueueError::Storage(e)) => Err(e),
        Err(e) => {
            tracing::error!("heartbeat {sampled_at} not queued ({}): {e}", e.code());
            Ok(false)
        }
    }
}

/// Runs the agent until `shutdown` completes: a sample every interval (the first at once) and the send
/// loop, concurrently. Everything queued is already on disk, so stopping loses nothing; a request in flight
/// is abandoned and its commands are sent again on the next start (the server answers "duplicate").
pub async fn run<T: Transport>(
    options: AgentOptions,
    collector: Collector,
    outbox: Arc<Outbox>,
    transport: T,
    send_options: SendOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<OutboxStats, AgentError> {
    let stats = outbox.stats();
    tracing::info!(
        "agent for device {} started: sampling every {:?}; {} commands queued from before, {} dead letters",
        options.device_id,
        options.interval,
        stats.pending,
        stats.dead_letters
    );
    let wake = Arc::new(Notify::new());
    if stats.pending > 0 {
        wake.notify_one();
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let sender = Sender::new(outbox.clone(), transport, send_options);
    let send_loop = sender.run(wake.clone(), stop_rx.clone());
    let sample_loop = {
        let (outbox, wake, mut stop) = (outbox.clone(), wake.clone(), stop_rx);
        async move {
            let mut ticker = tokio::time::interval(options.interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.changed() => return Ok::<(), OutboxError>(()),
                    _ = ticker.tick() => {}
                }
                let queued = tokio::select! {
                    _ = stop.changed() => return Ok(()),
                    queued = tick(&options, &collector, &outbox) => queued?,
                };
                if queued {
                    wake.notify_one();
                }
            }
        }
    };
    // The first loop to fail ends both (try_join drops the other).
    let work = async { tokio::try_join!(send_loop, sample_loop).map(|_| ()) };
    tokio::pin!(work);
    tokio::pin!(shutdown);
    let result = tokio::select! {
        r = &mut work => r,
        _ = &mut shutdown => {
            let _ = stop_tx.send(true);
            work.await
        }
    };
    result?;
    outbox.sync_now()?;
    let stats = outbox.stats();
    tracing::info!(
        "agent stopped: {} commands queued on disk (sent on the next start), {} dead letters",
        stats.pending,
        stats.dead_letters
    );
    Ok(stats)
}
