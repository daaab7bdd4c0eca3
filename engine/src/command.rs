//! Commands: what agents and operators ask the ledger to do, and the [`Context`] they are decided in.
//!
//! A command is imperative ("record telemetry"); if [`crate::decide`] accepts it, it becomes one or more
//! past-tense events. Commands arrive as JSON (`hwledger submit`, the HTTP front door); unknown fields are
//! refused so a typo never silently drops data. Commands are *not* a storage format: only events are stored.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::event::{
    Actor, CertRole, DeviceId, DeviceKind, Fingerprint, GpuInfo, GpuReading, JobId, MicroUsd, PriceQuote, UnixMillis,
};

/// Longest command id accepted. Ids are stored in every event, so they are kept short.
pub const MAX_COMMAND_ID_LEN: usize = 128;

/// One command with its idempotency key and optional optimistic-concurrency expectation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Submission {
    /// Client-chosen idempotency key (a UUID is a good choice). Resubmitting the same id with the same
    /// command returns the original receipt; with a different command it is a `duplicate_conflict`.
    pub command_id: String,
    /// If set, the command's stream must be at exactly this version (0 = the stream must not exist yet).
    #[serde(default)]
    pub expected_version: Option<u64>,
    /// The command.
    pub command: Command,
}

/// The outside world, handed to [`crate::decide`]: the engine never reads a clock, the network or a price
/// feed itself, so replay can never disagree with what was decided live.
#[derive(Debug, Clone, PartialEq)]
pub struct Context {
    /// Who is asking (from the authenticated peer, never from the request body).
    pub actor: Actor,
    /// The time the command is handled, unix ms (the ledger makes recorded times non-decreasing).
    pub now: UnixMillis,
    /// A price quote obtained by the caller for this command (e.g. the rental price at dispatch).
    pub quote: Option<PriceQuote>,
}

impl Context {
    /// A context for `actor` at `now` with no quote.
    pub fn new(actor: Actor, now: UnixMillis) -> Context {
        Context { actor, now, quote: None }
    }
}

/// What can be asked of the ledger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    /// Add a device to the fleet.
    EnrollDevice {
        device_id: DeviceId,
        kind: DeviceKind,
        #[serde(default)]
        hostname: Option<String>,
        #[serde(default)]
        labels: BTreeMap<String, String>,
    },
    /// Declare a device's hardware inventory (replaces the previous one).
    RegisterDevice {
        device_id: DeviceId,
        #[serde(default)]
        hostname: Option<String>,
        gpus: Vec<GpuInfo>,
    },
    /// A heartbeat with GPU telemetry.
    RecordTelemetry { device_id: DeviceId, sampled_at: UnixMillis, gpus: Vec<GpuReading> },
    /// Remove a device for good.
    DecommissionDevice {
        device_id: DeviceId,
        #[serde(default)]
        reason: String,
    },
    /// Send a job to a device. The price comes from the command or, if absent, from the context's quote.
    DispatchJob {
        job_id: JobId,
        device_id: DeviceId,
        model: String,
        vram_mib: u64,
        #[serde(default)]
        price: Option<PriceQuote>,
    },
    /// The job began running.
    StartJob { job_id: JobId },
    /// The job finished successfully.
    CompleteJob { job_id: JobId, exit_status: i32 },
    /// The job failed (or its outcome could not be confirmed).
    FailJob {
        job_id: JobId,
        #[serde(default)]
        exit_status: Option<i32>,
        reason: String,
    },
    /// Record a rental price quote.
    QuoteRentalPrice {
        provider: String,
        gpu_name: String,
        gpu_count: u32,
        micro_usd_per_hour: MicroUsd,
        #[serde(default)]
        offer_id: Option<String>,
        quoted_at: UnixMillis,
    },
    /// Set the hourly rate of an owned device.
    SetDeviceRate { device_id: DeviceId, micro_usd_per_hour: MicroUsd },
    /// Record that a certificate was issued and pin its fingerprint.
    IssueCertificate {
        role: CertRole,
        #[serde(with = "crate::codec::hex32")]
        fingerprint: Fingerprint,
        serial: String,
        not_after: UnixMillis,
    },
    /// Revoke a certificate.
    RevokeCertificate {
        #[serde(with = "crate::codec::hex32")]
        fingerprint: Fingerprint,
        #[serde(default)]
        reason: String,
    },
    /// Create a one-time enrollment token (only its hash is given and stored).
    CreateBootstrapToken {
        #[serde(with = "crate::codec::hex32")]
        token_hash: [u8; 32],
        device_id: DeviceId,
        expires_at: UnixMillis,
    },
    /// Spend a bootstrap token: enrolls the token's device and pins the certificate issued for it.
    RedeemBootstrapToken {
        #[serde(with = "crate::codec::hex32")]
        token_hash: [u8; 32],
        #[serde(with = "crate::codec::hex32")]
        fingerprint: Fingerprint,
        serial: String,
        not_after: UnixMillis,
        #[serde(default)]
        hostname: Option<String>,
    },
    /// Pin an SSH host key for a device.
    PinHostKey { device_id: DeviceId, key_fingerprint: String },
    /// Record the result of an agentless probe.
    RecordProbe {
        device_id: DeviceId,
        ok: bool,
        #[serde(default)]
        detail: String,
        #[serde(default)]
        gpus: Vec<GpuReading>,
    },
    /// Record an instance seen at a rental provider.
    ObserveRentalInstance {
        provider: String,
        instance_id: String,
        gpu_name: String,
        gpu_count: u32,
        status: String,
        #[serde(default)]
        micro_usd_per_hour: Option<MicroUsd>,
    },
}

impl Command {
    /// Stable snake_case name (the JSON `type`).
    pub fn type_name(&self) -> &'static str {
        match self {
            Command::EnrollDevice { .. } => "enroll_device",
            Command::RegisterDevice { .. } => "register_device",
            Command::RecordTelemetry { .. } => "record_telemetry",
            Command::DecommissionDevice { .. } => "decommission_device",
            Command::DispatchJob { .. } => "dispatch_job",
            Command::StartJob { .. } => "start_job",
            Command::CompleteJob { .. } => "complete_job",
            Command::FailJob { .. } => "fail_job",
            Command::QuoteRentalPrice { .. } => "quote_rental_price",
            Command::SetDeviceRate { .. } => "set_device_rate",
            Command::IssueCertificate { .. } => "issue_certificate",
            Command::RevokeCertificate { .. } => "revoke_certificate",
            Command::CreateBootstrapToken { .. } => "create_bootstrap_token",
            Command::RedeemBootstrapToken { .. } => "redeem_bootstrap_token",
            Command::PinHostKey { .. } => "pin_host_key",
            Command::RecordProbe { .. } => "record_probe",
            Command::ObserveRentalInstance { .. } => "observe_rental_instance",
        }
    }
}

/// Checks an identifier (device, job, provider, name): 1–64 of `[A-Za-z0-9._-]`, not starting with `.`.
pub fn validate_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && !id.starts_with('.')
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Checks a command id: 1–[`MAX_COMMAND_ID_LEN`] printable ASCII characters without spaces.
pub fn validate_command_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_COMMAND_ID_LEN && id.bytes().all(|b| b.is_ascii_graphic())
}
