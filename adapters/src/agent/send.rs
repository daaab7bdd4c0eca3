//! The send loop: drains the outbox in order, in batches bounded by count and bytes, through a
//! [`Transport`] (the binary implements it with the mTLS client of `hwledger-wire`; adapters depend on the
//! engine only). An entry leaves the outbox only when its receipt arrives, or when the server refuses it
//! for good (then it is dead-lettered with the server's code).
//!
//! | the server says | the loop does |
//! | --- | --- |
//! | receipt (accepted or duplicate) for an item | records the receipt, removes the entry |
//! | a non-retryable rejection of an item (`invalid_command`, `duplicate_conflict`, ...) | dead-letters it |
//! | a retryable rejection of an item (`storage_unavailable`, ...) | keeps it; backs off |
//! | transport error, timeout, 5xx, 429 | keeps everything; backs off (429/503: at least `Retry-After`) |
//! | the request's content is refused (413, malformed batch) | halves the batch; a single command refused so is dead-lettered |
//! | the agent itself is refused (certificate not pinned, forbidden) | keeps everything; retries at the backoff cap |
//!
//! Backoff is exponential from [`Backoff::initial`] to [`Backoff::max`] with "equal jitter": the wait is
//! uniformly random in `[d/2, d]` for the nominal delay `d`, so agents that lost the same server do not
//! come back in lockstep. A `Retry-After` is honoured (capped by [`Backoff::max_retry_after`]).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hwledger_engine::event::UnixMillis;
use rand::Rng;
use tokio::sync::{Notify, watch};

use super::now_ms;
use super::outbox::{Outbox, OutboxError, Pending, Resolution};

/// Default most commands in one batch (the server takes up to 1000).
pub const DEFAULT_BATCH_MAX_COUNT: usize = 500;
/// Default most bytes of one batch's body: under the server's 64 KiB body limit with room to spare.
pub const DEFAULT_BATCH_MAX_BYTES: usize = 60 * 1024;

/// Retry timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// First delay after a failure.
    pub initial: Duration,
    /// Longest delay (the exponential growth stops here).
    pub max: Duration,
    /// Longest `Retry-After` honoured (a misconfigured server cannot park agents for days).
    pub max_retry_after: Duration,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(60),
            max_retry_after: Duration::from_secs(600),
        }
    }
}

impl Backoff {
    /// The nominal delay before retry number `attempt` (0-based): `initial · 2^attempt`, capped at `max`.
    pub fn nominal(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(30)).unwrap_or(u32::MAX);
        self.initial.checked_mul(factor).unwrap_or(self.max).min(self.max)
    }

    /// The jittered delay: `nominal/2 + jitter · nominal/2` for `jitter` in `[0, 1]`.
    pub fn jittered(&self, attempt: u32, jitter: f64) -> Duration {
        let d = self.nominal(attempt);
        let half = d / 2;
        half + half.mul_f64(jitter.clamp(0.0, 1.0))
    }

    /// The wait after a failure that came with `retry_after`: at least the server's wish (capped), never
    /// less than the jittered backoff.
    pub fn after_failure(&self, attempt: u32, retry_after: Option<Duration>, jitter: f64) -> Duration {
        let backoff = self.jittered(attempt, jitter);
        match retry_after {
            Some(ra) => ra.min(self.max_retry_after).max(backoff.min(self.max)),
            None => backoff,
        }
    }
}

/// How the send loop batches and retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendOptions {
    /// Most commands per batch.
    pub batch_max_count: usize,
    /// Most bytes per batch body.
    pub batch_max_bytes: usize,
    /// Retry timing.
    pub backoff: Backoff,
}

impl Default for SendOptions {
    fn default() -> SendOptions {
        SendOptions {
            batch_max_count: DEFAULT_BATCH_MAX_COUNT,
            batch_max_bytes: DEFAULT_BATCH_MAX_BYTES,
            backoff: Backoff::default(),
        }
    }
}

/// What the server said about one command of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemOutcome {
    /// In the ledger: appended now, or earlier under the same command id.
    Stored {
        /// The command id the receipt names (must be the submitted one).
        command_id: String,
        /// Seq of the command's last event.
        ledger_seq: u64,
        /// Chain hash after it, hex.
        hash: String,
        /// Recorded before this request.
        duplicate: bool,
    },
    /// Refused.
    Rejected {
        /// The stable code.
        code: String,
        /// The message.
        message: String,
        /// Whether sending it again later can succeed (storage trouble) or not (a rule refused it).
        retryable: bool,
    },
}

/// Why a whole batch failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendFailure {
    /// The server was not reached or could not answer now (connection refused, timeout, 5xx, 429).
    #[error("{message}")]
    Transient {
        /// What happened.
        message: String,
        /// The server's `Retry-After`, if it sent one.
        retry_after: Option<Duration>,
    },
    /// The request's content was refused (too large, malformed).
    #[error("{code}: {message}")]
    BadBatch {
        /// The server's code.
        code: String,
        /// The server's message.
        message: String,
    },
    /// The server refuses this agent (its certificate is not pinned, the role may not submit, ...).
    #[error("{code}: {message}")]
    Refused {
        /// The server's code.
        code: String,
        /// The server's message.
        message: String,
    },
}

/// Sends one batch to the server. Implemented by the binary over `hwledger-wire`'s client.
pub trait Transport: Send + Sync {
    /// Sends `batch` (in order) as one request; one outcome per command, in the same order.
    fn send_batch(&self, batch: &[Pending]) -> impl Future<Output = Result<Vec<ItemOutcome>, SendFailure>> + Send;
}

/// What one round of the loop did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing is queued.
    Idle,
    /// A batch was sent and its outcomes recorded.
    Sent {
        /// Commands with a receipt.
        delivered: usize,
        /// Of which the server already had.
        duplicates: usize,
        /// Commands dead-lettered.
        dead: usize,
        /// Commands kept for a retry (retryable rejections).
        kept: usize,
    },
    /// The round failed; wait this long before the next.
    Backoff(Duration),
}

/// The send loop's memory between rounds.
#[derive(Debug, Default)]
struct State {
    /// Consecutive failed rounds.
    attempt: u32,
    /// A reduced batch size while a refused batch is being bisected.
    split: Option<usize>,
}

/// Drains the outbox through a transport.
pub struct Sender<T> {
    outbox: Arc<Outbox>,
    transport: T,
    options: SendOptions,
    state: State,
}

impl<T> std::fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender").field("outbox", &self.outbox).field("options", &self.options).finish()
    }
}

impl<T: Transport> Sender<T> {
    /// A sender for `outbox` over `transport`.
    pub fn new(outbox: Arc<Outbox>, transport: T, options: SendOptions) -> Sender<T> {
        Sender { outbox, transport, options, state: State::default() }
    }

    fn failed(&mut self, retry_after: Option<Duration>) -> Duration {
        let jitter: f64 = rand::rng().random();
        let d = self.options.backoff.after_failure(self.state.attempt, retry_after, jitter);
        self.state.attempt = self.state.attempt.saturating_add(1);
        d
    }

    /// One round: sends the oldest batch and records what the server said. Only an outbox storage failure
    /// is an error (the agent must stop: it can no longer keep its promise).
    pub async fn round(&mut self) -> Result<Step, OutboxError> {
        let count = self.state.split.unwrap_or(self.options.batch_max_count).max(1);
        let batch = self.outbox.peek(count, self.options.batch_max_bytes)?;
        if batch.is_empty() {
            self.state.split = None;
            return Ok(Step::Idle);
        }
        match self.transport.send_batch(&batch).await {
            Ok(outcomes) => self.record(&batch, outcomes, now_ms()),
            Err(SendFailure::Transient { message, retry_after }) => {
                let wait = self.failed(retry_after);
                tracing::warn!(
                    "server unreachable or busy: {message}; {} commands queued; backing off for {:.1}s",
                    self.outbox.stats().pending,
                    wait.as_secs_f64()
                );
                Ok(Step::Backoff(wait))
            }
            Err(SendFailure::Refused { code, message }) => {
                self.state.attempt = self.state.attempt.saturating_add(1);
                let wait = self.options.backoff.max;
                tracing::error!(
                    "the server refuses this agent ({code}: {message}); keeping {} queued commands, retrying in {}s",
                    self.outbox.stats().pending,
                    wait.as_secs()
                );
                Ok(Step::Backoff(wait))
            }
            Err(SendFailure::BadBatch { code, message }) => {
                if batch.len() > 1 {
                    let half = batch.len() / 2;
                    tracing::warn!(
                        "the server refused a batch of {} ({code}: {message}); retrying in halves",
                        batch.len()
                    );
                    self.state.split = Some(half.max(1));
                    return Ok(Step::Sent { delivered: 0, duplicates: 0, dead: 0, kept: batch.len() });
                }
                let only = &batch[0];
                tracing::error!(
                    "dead-lettered {}: the server refused it ({code}: {message})",
                    only.submission.command_id
                );
                self.outbox.resolve(&[(only, Resolution::Dead { code, message })], now_ms())?;
                self.state.split = None;
                self.state.attempt = 0;
                Ok(Step::Sent { delivered: 0, duplicates: 0, dead: 1, kept: 0 })
            }
        }
    }

    fn record(&mut self, batch: &[Pending], outcomes: Vec<ItemOutcome>, now: UnixMillis) -> Result<Step, OutboxError> {
        if outcomes.len() != batch.len() {
            let wait = self.failed(None);
            tracing::error!(
                "the server answered {} results for {} commands; keeping them all, retrying in {:.1}s",
                outcomes.len(),
                batch.len(),
                wait.as_secs_f64()
            );
            return Ok(Step::Backoff(wait));
        }
        // Check every receipt before recording any, so a confused answer changes nothing.
        for (p, o) in batch.iter().zip(&outcomes) {
            if let ItemOutcome::Stored { command_id, .. } = o {
                if *command_id != p.submission.command_id {
                    let wait = self.failed(None);
                    tracing::error!(
                        "receipt for {command_id} answered command {}; keeping the batch, retrying in {:.1}s",
                        p.submission.command_id,
                        wait.as_secs_f64()
                    );
                    return Ok(Step::Backoff(wait));
                }
            }
        }
        let mut done = Vec::with_capacity(batch.len());
        let (mut delivered, mut duplicates, mut dead, mut kept) = (0, 0, 0, 0);
        let mut retry_reason = None;
        for (p, o) in batch.iter().zip(outcomes) {
            match o {
                ItemOutcome::Stored { ledger_seq, hash, duplicate, .. } => {
                    delivered += 1;
                    duplicates += usize::from(duplicate);
                    done.push((p, Resolution::Receipt { ledger_seq, hash, duplicate }));
                }
                ItemOutcome::Rejected { code, message, retryable: false } => {
                    dead += 1;
                    tracing::error!(
                        "dead-lettered {}: rejected by the ledger ({code}: {message})",
                        p.submission.command_id
                    );
                    done.push((p, Resolution::Dead { code, message }));
                }
                ItemOutcome::Rejected { code, message, retryable: true } => {
                    kept += 1;
                    retry_reason.get_or_insert(format!("{code}: {message}"));
                }
            }
        }
        self.outbox.resolve(&done, now)?;
        if delivered > 0 {
            tracing::info!(
                "sent {delivered} commands ({duplicates} already recorded); {} queued",
                self.outbox.stats().pending
            );
        }
        if let Some(reason) = retry_reason {
            let wait = self.failed(None);
            tracing::warn!(
                "{kept} commands not stored ({reason}); keeping them, backing off for {:.1}s",
                wait.as_secs_f64()
            );
            return Ok(Step::Backoff(wait));
        }
        self.state.attempt = 0;
        // After a bisection, grow the batch back gradually.
        self.state.split = self.state.split.and_then(|s| {
            let grown = s.saturating_mul(2);
            (grown < self.options.batch_max_count).then_some(grown)
        });
        Ok(Step::Sent { delivered, duplicates, dead, kept })
    }

    /// Runs rounds until `stop` turns true: sends while anything is queued, waits for `wake` when idle and
    /// for the backoff after a failure. Returns on stop, or with the outbox error that makes going on
    /// impossible.
    pub async fn run(mut self, wake: Arc<Notify>, mut stop: watch::Receiver<bool>) -> Result<(), OutboxError> {
        loop {
            if *stop.borrow() {
                return Ok(());
            }
            let step = tokio::select! {
                _ = stop.changed() => return Ok(()),
                step = self.round() => step?,
            };
            match step {
                Step::Sent { .. } => {}
                Step::Idle => {
                    tokio::select! {
                        _ = stop.changed() => return Ok(()),
                        _ = wake.notified() => {}
                    }
                }
                Step::Backoff(wait) => {
                    tokio::select! {
                        _ = stop.changed() => return Ok(()),
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_to_the_cap() {
        let b = Backoff {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(60),
            max_retry_after: Duration::from_secs(600),
        };
        assert_eq!(b.nominal(0), Duration::from_millis(500));
        assert_eq!(b.nominal(1), Duration::from_secs(1));
        assert_eq!(b.nominal(3), Duration::from_secs(4));
        assert_eq!(b.nominal(7), Duration::from_secs(60));
        assert_eq!(b.nominal(u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn jitter_stays_in_the_upper_half() {
        let b = Backoff::default();
        for attempt in 0..12 {
            let d = b.nominal(attempt);
            assert_eq!(b.jittered(attempt, 0.0), d / 2);
            assert_eq!(b.jittered(attempt, 1.0), d);
            let mid = b.jittered(attempt, 0.5);
            assert!(mid >= d / 2 && mid <= d);
        }
    }

    #[test]
    fn retry_after_is_honoured_and_capped() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
            max_retry_after: Duration::from_secs(120),
        };
        assert_eq!(b.after_failure(0, Some(Duration::from_secs(30)), 0.0), Duration::from_secs(30));
        assert_eq!(b.after_failure(0, Some(Duration::from_secs(3600)), 0.0), Duration::from_secs(120));
        // A Retry-After shorter than the backoff does not make the agent come back sooner.
        assert_eq!(b.after_failure(10, Some(Duration::from_millis(1)), 1.0), Duration::from_secs(10));
        assert_eq!(b.after_failure(0, None, 1.0), Duration::from_millis(100));
    }
}
