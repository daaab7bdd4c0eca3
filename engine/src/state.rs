//! The engine's decision state, and [`apply`]: how each event changes it.
//!
//! This is the minimum [`crate::decide`] needs to enforce the rules (devices, jobs, certificates, tokens,
//! stream versions) — not a read model (those live in `hwledger-projections`). `apply` is infallible and
//! holds no rules: every rule lives in `decide`, so replay can never disagree with what was decided live.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::event::{CertRole, DeviceId, DeviceKind, Event, EventRecord, Fingerprint, GpuInfo, JobId, UnixMillis};

/// Lifecycle of a device as far as the rules care.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceStatus {
    /// Enrolled, no inventory yet.
    Enrolled,
    /// Has registered or reported.
    Active,
    /// Gone for good.
    Decommissioned,
}

/// What the rules know about a device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceState {
    /// How it is reached.
    pub kind: DeviceKind,
    /// Lifecycle.
    pub status: DeviceStatus,
    /// Current inventory.
    pub gpus: Vec<GpuInfo>,
    /// Version of the `device/<id>` stream.
    pub version: u64,
    /// Pinned SSH host key, if any.
    pub host_key: Option<String>,
}

impl DeviceState {
    /// The largest VRAM of any one GPU (a job runs on one GPU), MiB.
    pub fn max_gpu_vram_mib(&self) -> u64 {
        self.gpus.iter().map(|g| g.vram_total_mib).max().unwrap_or(0)
    }
}

/// A job's lifecycle; it only moves forward. Also the job status of the cost read model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Sent to a device.
    Dispatched,
    /// Running.
    Started,
    /// Ended successfully.
    Completed,
    /// Ended in failure.
    Failed,
}

impl JobStatus {
    /// Dispatched or started.
    pub fn is_active(self) -> bool {
        matches!(self, JobStatus::Dispatched | JobStatus::Started)
    }

    /// Snake-case name for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Dispatched => "dispatched",
            JobStatus::Started => "started",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
        }
    }
}

/// What the rules know about a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobState {
    /// Target device.
    pub device_id: DeviceId,
    /// Lifecycle.
    pub status: JobStatus,
    /// Version of the `job/<id>` stream.
    pub version: u64,
}

/// A certificate pinned by an issuance event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CertState {
    /// Role granted.
    pub role: CertRole,
    /// Expiry (unix ms).
    pub not_after: UnixMillis,
    /// Revoked certificates stay known so that revocation is final.
    pub revoked: bool,
}

/// A bootstrap token, by hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenState {
    /// The device the token enrolls.
    pub device_id: DeviceId,
    /// Expiry (unix ms).
    pub expires_at: UnixMillis,
    /// Single use.
    pub used: bool,
}

/// The decision state: everything [`crate::decide`] consults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Last applied sequence number (0 for an empty log).
    pub last_seq: u64,
    /// Recorded time of the last applied event; the ledger never records an earlier time after it.
    pub last_recorded_at: UnixMillis,
    /// Devices by id.
    pub devices: HashMap<DeviceId, DeviceState>,
    /// Jobs by id.
    pub jobs: HashMap<JobId, JobState>,
    /// Certificates by fingerprint.
    pub certs: HashMap<Fingerprint, CertState>,
    /// Bootstrap tokens by SHA-256 of the token.
    pub tokens: HashMap<[u8; 32], TokenState>,
    /// Versions of the singleton streams `prices`, `pki`, `rentals`.
    pub prices_version: u64,
    /// See `prices_version`.
    pub pki_version: u64,
    /// See `prices_version`.
    pub rentals_version: u64,
}

impl State {
    /// The current version of `stream` (0 if it does not exist).
    pub fn stream_version(&self, stream: &StreamRef<'_>) -> u64 {
        match stream {
            StreamRef::Device(id) => self.devices.get(*id).map_or(0, |d| d.version),
            StreamRef::Job(id) => self.jobs.get(*id).map_or(0, |j| j.version),
            StreamRef::Prices => self.prices_version,
            StreamRef::Pki => self.pki_version,
            StreamRef::Rentals => self.rentals_version,
        }
    }

    /// The version `event` would get as the next event of its stream, given the current state.
    pub fn next_version(&self, event: &Event) -> u64 {
        self.stream_version(&StreamRef::of_event(event)) + 1
    }
}

/// A stream, borrowed (avoids building `device/<id>` strings on the hot path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamRef<'a> {
    /// `device/<id>`
    Device(&'a str),
    /// `job/<id>`
    Job(&'a str),
    /// `prices`
    Prices,
    /// `pki`
    Pki,
    /// `rentals`
    Rentals,
}

impl<'a> StreamRef<'a> {
    /// The stream an event belongs to.
    pub fn of_event(event: &'a Event) -> StreamRef<'a> {
        match event {
            Event::DeviceEnrolled { device_id, .. }
            | Event::DeviceRegistered { device_id, .. }
            | Event::TelemetryRecorded { device_id, .. }
            | Event::DeviceDecommissioned { device_id, .. }
            | Event::DeviceRateSet { device_id, .. }
            | Event::HostKeyPinned { device_id, .. }
            | Event::HostProbed { device_id, .. } => StreamRef::Device(device_id),
            Event::JobDispatched { job_id, .. }
            | Event::JobStarted { job_id }
            | Event::JobCompleted { job_id, .. }
            | Event::JobFailed { job_id, .. } => StreamRef::Job(job_id),
            Event::RentalPriceQuoted { .. } => StreamRef::Prices,
            Event::CertificateIssued { .. }
            | Event::CertificateRevoked { .. }
            | Event::BootstrapTokenCreated { .. }
            | Event::BootstrapTokenUsed { .. } => StreamRef::Pki,
            Event::RentalInstanceObserved { .. } => StreamRef::Rentals,
        }
    }

    /// The stream's name as used in receipts and filters.
    pub fn name(&self) -> String {
        match self {
            StreamRef::Device(id) => format!("device/{id}"),
            StreamRef::Job(id) => format!("job/{id}"),
            StreamRef::Prices => "prices".into(),
            StreamRef::Pki => "pki".into(),
            StreamRef::Rentals => "rentals".into(),
        }
    }
}

/// Applies one stored event. Infallible and rule-free: it trusts that `decide` accepted the event.
/// Events that reference unknown entities (possible only in a hand-made log) are applied as far as they can be.
pub fn apply(state: &mut State, record: &EventRecord) {
    state.last_seq = record.seq;
    state.last_recorded_at = state.last_recorded_at.max(record.recorded_at);
    apply_event(state, &record.event);
}

fn bump_device<'s>(state: &'s mut State, id: &str) -> Option<&'s mut DeviceState> {
    let d = state.devices.get_mut(id)?;
    d.version += 1;
    Some(d)
}

fn bump_job<'s>(state: &'s mut State, id: &str) -> Option<&'s mut JobState> {
    let j = state.jobs.get_mut(id)?;
    j.version += 1;
    Some(j)
}

fn apply_event(state: &mut State, event: &Event) {
    match event {
        Event::DeviceEnrolled { device_id, kind, .. } => {
            let version = state.devices.get(device_id).map_or(0, |d| d.version) + 1;
            state.devices.insert(
                device_id.clone(),
                DeviceState {
                    kind: kind.clone(),
                    status: DeviceStatus::Enrolled,
                    gpus: Vec::new(),
                    version,
                    host_key: None,
                },
            );
        }
        Event::DeviceRegistered { device_id, gpus, .. } => {
            if let Some(d) = bump_device(state, device_id) {
                d.gpus = gpus.clone();
                if d.status == DeviceStatus::Enrolled {
                    d.status = DeviceStatus::Active;
                }
            }
        }
        Event::TelemetryRecorded { device_id, .. } | Event::HostProbed { device_id, .. } => {
            if let Some(d) = bump_device(state, device_id) {
                if d.status == DeviceStatus::Enrolled {
                    d.status = DeviceStatus::Active;
                }
            }
        }
        Event::DeviceDecommissioned { device_id, .. } => {
            if let Some(d) = bump_device(state, device_id) {
                d.status = DeviceStatus::Decommissioned;
            }
        }
        Event::DeviceRateSet { device_id, .. } => {
            bump_device(state, device_id);
        }
        Event::HostKeyPinned { device_id, key_fingerprint } => {
            if let Some(d) = bump_device(state, device_id) {
                d.host_key = Some(key_fingerprint.clone());
            }
        }
        Event::JobDispatched { job_id, device_id, .. } => {
            let version = state.jobs.get(job_id).map_or(0, |j| j.version) + 1;
            state.jobs.insert(
                job_id.clone(),
                JobState { device_id: device_id.clone(), status: JobStatus::Dispatched, version },
            );
        }
        Event::JobStarted { job_id } => {
            if let Some(j) = bump_job(state, job_id) {
                j.status = JobStatus::Started;
            }
        }
        Event::JobCompleted { job_id, .. } => {
            if let Some(j) = bump_job(state, job_id) {
                j.status = JobStatus::Completed;
            }
        }
        Event::JobFailed { job_id, .. } => {
            if let Some(j) = bump_job(state, job_id) {
                j.status = JobStatus::Failed;
            }
        }
        Event::RentalPriceQuoted { .. } => state.prices_version += 1,
        Event::RentalInstanceObserved { .. } => state.rentals_version += 1,
        Event::CertificateIssued { role, fingerprint, not_after, .. } => {
            state.pki_version += 1;
            state.certs.insert(*fingerprint, CertState { role: role.clone(), not_after: *not_after, revoked: false });
        }
        Event::CertificateRevoked { fingerprint, .. } => {
            state.pki_version += 1;
            if let Some(c) = state.certs.get_mut(fingerprint) {
                c.revoked = true;
            }
        }
        Event::BootstrapTokenCreated { token_hash, device_id, expires_at } => {
            state.pki_version += 1;
            state
                .tokens
                .insert(*token_hash, TokenState { device_id: device_id.clone(), expires_at: *expires_at, used: false });
        }
        Event::BootstrapTokenUsed { token_hash } => {
            state.pki_version += 1;
            if let Some(t) = state.tokens.get_mut(token_hash) {
                t.used = true;
            }
        }
    }
}
