//! Stored events: the facts of the ledger, in the exact shape they are written to disk.
//!
//! These types are a **storage format that must stay readable forever**. Their encoding (see
//! [`crate::codec`] and `docs/FORMAT.md`) is positional: the variant index of [`Event`] is its type tag and
//! field order is the byte order. So:
//!
//! - never reorder, remove or change the fields of an existing variant;
//! - to change an event, add a new variant at the **end** (for example `TelemetryRecordedV2`) and teach
//!   [`crate::state::apply`] and the projections to read both;
//! - wire types (`hwledger-wire`) and commands ([`crate::command`]) are separate and convert explicitly.
//!
//! Names are past tense: an event records something that happened.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Identifies a device (a machine of the fleet). Validated by [`crate::command::validate_id`].
pub type DeviceId = String;
/// Identifies a job dispatched to a device.
pub type JobId = String;
/// Money in millionths of a US dollar: integers, so costs add up exactly on every replay.
pub type MicroUsd = u64;
/// Unix time in milliseconds (UTC). Always comes from a [`crate::Context`], never from a clock in the engine.
pub type UnixMillis = i64;

/// One stored event: the envelope plus the fact. `seq` is the global, gapless position (from 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    /// Global position in the log, gapless from 1.
    pub seq: u64,
    /// When the command that produced this event was accepted (the ledger's clock, via `Context`).
    pub recorded_at: UnixMillis,
    /// The client-chosen idempotency key of the command that produced this event.
    pub command_id: String,
    /// Who asked for it: identity comes from the authenticated peer, never from a request body.
    pub actor: Actor,
    /// Version of this event's stream after it (1 for the first event of a stream).
    pub stream_version: u64,
    /// The fact itself.
    pub event: Event,
}

/// The authenticated identity behind a command.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Actor {
    /// A device's agent: may only speak for that device.
    Agent(DeviceId),
    /// A fleet operator.
    Operator(String),
    /// An auditor (read-only; never submits commands, kept for completeness of the identity model).
    Auditor(String),
    /// The ledger itself or a local administrator on the data directory (CLI `submit` without a server).
    System,
}

/// How a device is reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum DeviceKind {
    /// A machine running the hwledger agent.
    Local,
    /// An agentless host probed and driven over SSH.
    Ssh {
        /// `user@host[:port]` used to reach it.
        target: String,
    },
    /// A short-lived cloud rental.
    Rental {
        /// Provider name (`vast`, `runpod`, `lambda`, ...).
        provider: String,
        /// The provider's instance id.
        instance_id: String,
    },
}

impl DeviceKind {
    /// The cost/capacity backend this device belongs to: `local`, `ssh` or the rental provider's name.
    pub fn backend(&self) -> &str {
        match self {
            DeviceKind::Local => "local",
            DeviceKind::Ssh { .. } => "ssh",
            DeviceKind::Rental { provider, .. } => provider,
        }
    }
}

/// A GPU in a device's hardware inventory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuInfo {
    /// The tool's index of the GPU on its host.
    pub index: u32,
    /// Marketing name as reported by the tool (`NVIDIA GeForce RTX 4090`, `Apple M1`, ...).
    pub name: String,
    /// Vendor UUID where the tool reports one.
    pub uuid: Option<String>,
    /// Total VRAM in MiB (0 when unknown, e.g. unified memory without a figure).
    pub vram_total_mib: u64,
}

/// One GPU's telemetry at one moment. `None` means the tool reported the value as unavailable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuReading {
    /// Index of the GPU on its host (matches [`GpuInfo::index`]).
    pub index: u32,
    /// VRAM in use, MiB.
    pub vram_used_mib: Option<u64>,
    /// VRAM total, MiB.
    pub vram_total_mib: Option<u64>,
    /// GPU utilisation, percent.
    pub utilization_pct: Option<f32>,
    /// Temperature, degrees Celsius.
    pub temperature_c: Option<f32>,
    /// Power draw, watts.
    pub power_w: Option<f32>,
}

/// Where a price came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceQuote {
    /// `rate` for an operator-set rate of an owned machine, else the rental provider (`vast`, `runpod`, ...).
    pub source: String,
    /// Price per hour for the whole device/offer, micro-USD.
    pub micro_usd_per_hour: MicroUsd,
    /// The provider's offer id, if any.
    pub offer_id: Option<String>,
    /// When the quote was obtained (unix ms).
    pub quoted_at: UnixMillis,
}

/// The role a certificate grants (mirrors the PKI's roles; stored as part of issuance events).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CertRole {
    /// Speaks for exactly one device.
    Agent(DeviceId),
    /// Fleet operator.
    Operator(String),
    /// Read-only auditor.
    Auditor(String),
}

/// A SHA-256 fingerprint (of a certificate's DER, or an SSH host key's wire blob).
pub type Fingerprint = [u8; 32];

/// The facts. The variant index is the stored type tag: **append only** (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// A device joined the fleet.
    DeviceEnrolled { device_id: DeviceId, kind: DeviceKind, hostname: Option<String>, labels: BTreeMap<String, String> },
    /// A device reported (or an operator declared) its hardware inventory. Replaces the previous inventory.
    DeviceRegistered { device_id: DeviceId, hostname: Option<String>, gpus: Vec<GpuInfo> },
    /// A heartbeat with telemetry. `sampled_at` is when the agent read its GPUs.
    TelemetryRecorded { device_id: DeviceId, sampled_at: UnixMillis, gpus: Vec<GpuReading> },
    /// A device left the fleet for good. Final.
    DeviceDecommissioned { device_id: DeviceId, reason: String },
    /// Work was sent to a device, at the quoted price.
    JobDispatched { job_id: JobId, device_id: DeviceId, model: String, vram_mib: u64, price: Option<PriceQuote> },
    /// The job began running.
    JobStarted { job_id: JobId },
    /// The job ended successfully.
    JobCompleted { job_id: JobId, exit_status: i32 },
    /// The job ended in failure (or its outcome could not be confirmed).
    JobFailed { job_id: JobId, exit_status: Option<i32>, reason: String },
    /// A rental provider quoted a price for a GPU type.
    RentalPriceQuoted {
        provider: String,
        gpu_name: String,
        gpu_count: u32,
        micro_usd_per_hour: MicroUsd,
        offer_id: Option<String>,
        quoted_at: UnixMillis,
    },
    /// An operator set the hourly rate charged for an owned device.
    DeviceRateSet { device_id: DeviceId, micro_usd_per_hour: MicroUsd },
    /// A certificate was issued; its fingerprint is pinned to the identity.
    CertificateIssued {
        role: CertRole,
        #[serde(with = "crate::codec::hex32")]
        fingerprint: Fingerprint,
        serial: String,
        not_after: UnixMillis,
    },
    /// A certificate was revoked; its fingerprint is no longer accepted.
    CertificateRevoked {
        #[serde(with = "crate::codec::hex32")]
        fingerprint: Fingerprint,
        reason: String,
    },
    /// A one-time enrollment token was created. Only its SHA-256 is stored, never the token.
    BootstrapTokenCreated {
        #[serde(with = "crate::codec::hex32")]
        token_hash: [u8; 32],
        device_id: DeviceId,
        expires_at: UnixMillis,
    },
    /// A bootstrap token was spent (single use).
    BootstrapTokenUsed {
        #[serde(with = "crate::codec::hex32")]
        token_hash: [u8; 32],
    },
    /// An SSH host's key was pinned on first use (TOFU) or from known_hosts.
    HostKeyPinned { device_id: DeviceId, key_fingerprint: String },
    /// An agentless probe of an SSH host ran.
    HostProbed { device_id: DeviceId, ok: bool, detail: String, gpus: Vec<GpuReading> },
    /// An instance was seen running at a rental provider.
    RentalInstanceObserved {
        provider: String,
        instance_id: String,
        gpu_name: String,
        gpu_count: u32,
        status: String,
        micro_usd_per_hour: Option<MicroUsd>,
    },
}

impl Event {
    /// Stable snake_case name of the event type (as in JSON and `hwledger log --type`).
    pub fn type_name(&self) -> &'static str {
        match self {
            Event::DeviceEnrolled { .. } => "device_enrolled",
            Event::DeviceRegistered { .. } => "device_registered",
            Event::TelemetryRecorded { .. } => "telemetry_recorded",
            Event::DeviceDecommissioned { .. } => "device_decommissioned",
            Event::JobDispatched { .. } => "job_dispatched",
            Event::JobStarted { .. } => "job_started",
            Event::JobCompleted { .. } => "job_completed",
            Event::JobFailed { .. } => "job_failed",
            Event::RentalPriceQuoted { .. } => "rental_price_quoted",
            Event::DeviceRateSet { .. } => "device_rate_set",
            Event::CertificateIssued { .. } => "certificate_issued",
            Event::CertificateRevoked { .. } => "certificate_revoked",
            Event::BootstrapTokenCreated { .. } => "bootstrap_token_created",
            Event::BootstrapTokenUsed { .. } => "bootstrap_token_used",
            Event::HostKeyPinned { .. } => "host_key_pinned",
            Event::HostProbed { .. } => "host_probed",
            Event::RentalInstanceObserved { .. } => "rental_instance_observed",
        }
    }

    /// The stream this event belongs to: `device/<id>`, `job/<id>`, `prices`, `pki` or `rentals`.
    pub fn stream(&self) -> String {
        match self {
            Event::DeviceEnrolled { device_id, .. }
            | Event::DeviceRegistered { device_id, .. }
            | Event::TelemetryRecorded { device_id, .. }
            | Event::DeviceDecommissioned { device_id, .. }
            | Event::DeviceRateSet { device_id, .. }
            | Event::HostKeyPinned { device_id, .. }
            | Event::HostProbed { device_id, .. } => format!("device/{device_id}"),
            Event::JobDispatched { job_id, .. }
            | Event::JobStarted { job_id }
            | Event::JobCompleted { job_id, .. }
            | Event::JobFailed { job_id, .. } => format!("job/{job_id}"),
            Event::RentalPriceQuoted { .. } => "prices".to_owned(),
            Event::CertificateIssued { .. }
            | Event::CertificateRevoked { .. }
            | Event::BootstrapTokenCreated { .. }
            | Event::BootstrapTokenUsed { .. } => "pki".to_owned(),
            Event::RentalInstanceObserved { .. } => "rentals".to_owned(),
        }
    }

    /// All type names, for CLI validation and docs.
    pub const TYPE_NAMES: &'static [&'static str] = &[
        "device_enrolled",
        "device_registered",
        "telemetry_recorded",
        "device_decommissioned",
        "job_dispatched",
        "job_started",
        "job_completed",
        "job_failed",
        "rental_price_quoted",
        "device_rate_set",
        "certificate_issued",
        "certificate_revoked",
        "bootstrap_token_created",
        "bootstrap_token_used",
        "host_key_pinned",
        "host_probed",
        "rental_instance_observed",
    ];
}
