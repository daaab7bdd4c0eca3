//! The **dashboard** projection: the operator's one-screen view.
//!
//! The projection itself stores only what no other read model has: the ring buffer of the last
//! [`RECENT_EVENTS`] events (type, seq, time and device id only — never fingerprints, token hashes, hostnames or
//! free text, because the dashboard is served without authentication on loopback), lifetime counters, and GPU
//! usage integrated from telemetry intervals in 1-minute buckets over the last day of event time.
//!
//! [`DashboardView`] is composed at read time from all four projections at one seq ([`view`]): device and GPU
//! counts by status (stale depends on the reader's clock), active jobs against capacity, per-backend capacity
//! and utilisation, last-24h usage, estimated cost and rental spend, and the recent events.
//!
//! ## Usage accounting
//!
//! Between two telemetry samples of a device at `t1 < t2`, the readings of `t1` are taken to hold until `t2`
//! (credited to the minute bucket of `t2`): GPU-hours `Σ utilisation/100 × Δt`, VRAM-GiB-hours
//! `Σ used GiB × Δt`, observed GPU-hours `GPUs × Δt`. `Δt` is capped at [`MAX_USAGE_GAP_MS`], so a device that
//! went silent for a day is not credited a day of work. Samples older than the device's last one are ignored
//! for usage (they still count in the snapshots).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use hwledger_engine::event::{CertRole, DeviceId, Event, EventRecord, GpuReading, JobId, MicroUsd, UnixMillis};
use serde::{Deserialize, Serialize};

use crate::cost::{Cost, GroupBy, JobStatus};
use crate::projection::{Digest, Projection, StateDecodeError, decode_state, digest_of, encode_state, sorted};
use crate::registry::{DeviceStatus, Registry};
use crate::snapshots::Snapshots;

/// Events kept in the ring buffer.
pub const RECENT_EVENTS: usize = 50;
/// Longest interval between two samples credited as usage, ms (see the module docs).
pub const MAX_USAGE_GAP_MS: i64 = 5 * 60_000;
const MINUTE_MS: i64 = 60_000;
const DAY_MS: i64 = 86_400_000;
const MS_PER_HOUR: f64 = 3_600_000.0;
/// Usage buckets are kept for a day plus an hour of event time, so a dashboard read slightly behind the
/// newest event still sees a full day.
const USAGE_RETENTION_MS: i64 = DAY_MS + 60 * MINUTE_MS;
/// Most usage buckets kept (bounds the state even if agents' clocks run ahead).
const MAX_USAGE_BUCKETS: usize = 1_440 + 120;

/// One entry of the ring buffer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct RecentEvent {
    seq: u64,
    recorded_at: UnixMillis,
    /// Index into [`Event::TYPE_NAMES`] (a number rather than a string: no allocation per event).
    type_index: u8,
    device_id: Option<DeviceId>,
}

/// The last sample of a device, for integrating usage over the next interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct UsageSample {
    sampled_at: UnixMillis,
    /// Σ utilisation / 100 over the device's GPUs.
    busy_gpus: f64,
    /// Σ VRAM used over the device's GPUs, GiB.
    vram_gib: f64,
    /// GPUs in the sample.
    gpus: u32,
}

/// Usage integrated over one minute (by the end sample's time).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct UsageBucket {
    start: UnixMillis,
    gpu_hours: f64,
    vram_gib_hours: f64,
    observed_gpu_hours: f64,
}

/// The dashboard projection's own state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Dashboard {
    recent: VecDeque<RecentEvent>,
    events_total: u64,
    jobs_dispatched: u64,
    jobs_completed: u64,
    jobs_failed: u64,
    /// Device of each dispatched or started job, so job events in the ring show their device.
    active_jobs: HashMap<JobId, DeviceId>,
    last_sample: HashMap<DeviceId, UsageSample>,
    usage: VecDeque<UsageBucket>,
    newest_at: UnixMillis,
}

#[derive(Serialize)]
struct Canonical<'a> {
    recent: &'a VecDeque<RecentEvent>,
    counters: [u64; 4],
    active_jobs: Vec<(&'a JobId, &'a DeviceId)>,
    last_sample: Vec<(&'a DeviceId, &'a UsageSample)>,
    usage: &'a VecDeque<UsageBucket>,
    newest_at: UnixMillis,
}

/// The position of an event's type in [`Event::TYPE_NAMES`].
fn type_index(event: &Event) -> u8 {
    match event {
        Event::DeviceEnrolled { .. } => 0,
        Event::DeviceRegistered { .. } => 1,
        Event::TelemetryRecorded { .. } => 2,
        Event::DeviceDecommissioned { .. } => 3,
        Event::JobDispatched { .. } => 4,
        Event::JobStarted { .. } => 5,
        Event::JobCompleted { .. } => 6,
        Event::JobFailed { .. } => 7,
        Event::RentalPriceQuoted { .. } => 8,
        Event::DeviceRateSet { .. } => 9,
        Event::CertificateIssued { .. } => 10,
        Event::CertificateRevoked { .. } => 11,
        Event::BootstrapTokenCreated { .. } => 12,
        Event::BootstrapTokenUsed { .. } => 13,
        Event::HostKeyPinned { .. } => 14,
        Event::HostProbed { .. } => 15,
        Event::RentalInstanceObserved { .. } => 16,
    }
}

impl Dashboard {
    /// The device an event concerns, if it names one (directly, through its job, or as an agent certificate).
    fn device_of<'e>(&'e self, event: &'e Event) -> Option<&'e str> {
        match event {
            Event::DeviceEnrolled { device_id, .. }
            | Event::DeviceRegistered { device_id, .. }
            | Event::TelemetryRecorded { device_id, .. }
            | Event::DeviceDecommissioned { device_id, .. }
            | Event::JobDispatched { device_id, .. }
            | Event::DeviceRateSet { device_id, .. }
            | Event::BootstrapTokenCreated { device_id, .. }
            | Event::HostKeyPinned { device_id, .. }
            | Event::HostProbed { device_id, .. }
            | Event::CertificateIssued { role: CertRole::Agent(device_id), .. } => Some(device_id),
            Event::JobStarted { job_id } | Event::JobCompleted { job_id, .. } | Event::JobFailed { job_id, .. } => {
                self.active_jobs.get(job_id.as_str()).map(String::as_str)
            }
            Event::CertificateIssued { .. }
            | Event::CertificateRevoked { .. }
            | Event::BootstrapTokenUsed { .. }
            | Event::RentalPriceQuoted { .. }
            | Event::RentalInstanceObserved { .. } => None,
        }
    }

    fn push_recent(&mut self, record: &EventRecord) {
        // Reuse the evicted entry's string buffer: no allocation per event once the ring is full.
        let mut entry = if self.recent.len() >= RECENT_EVENTS { self.recent.pop_front() } else { None }
            .unwrap_or(RecentEvent { seq: 0, recorded_at: 0, type_index: 0, device_id: None });
        entry.seq = record.seq;
        entry.recorded_at = record.recorded_at;
        entry.type_index = type_index(&record.event);
        match (self.device_of(&record.event), &mut entry.device_id) {
            (Some(d), Some(buf)) => {
                buf.clear();
                buf.push_str(d);
            }
            (Some(d), slot @ None) => *slot = Some(d.to_owned()),
            (None, slot) => *slot = None,
        }
        self.recent.push_back(entry);
    }

    fn record_usage(&mut self, device_id: &str, sampled_at: UnixMillis, readings: &[GpuReading]) {
        let mut now = UsageSample { sampled_at, busy_gpus: 0.0, vram_gib: 0.0, gpus: 0 };
        for r in readings {
            now.busy_gpus += r.utilization_pct.map_or(0.0, |u| f64::from(u) / 100.0);
            // MiB → GiB; u64 → f64 is exact below 2^53 MiB.
            now.vram_gib += r.vram_used_mib.map_or(0.0, |m| m as f64 / 1024.0);
            now.gpus = now.gpus.saturating_add(1);
        }
        let prev = match self.last_sample.get_mut(device_id) {
            Some(prev) => prev,
            None => {
                self.last_sample.insert(device_id.to_owned(), now);
                return;
            }
        };
        if sampled_at <= prev.sampled_at {
            return;
        }
        let dt = sampled_at.saturating_sub(prev.sampled_at).min(MAX_USAGE_GAP_MS);
        // dt ≤ 5 min: exact in f64.
        let hours = dt as f64 / MS_PER_HOUR;
        let credit = UsageBucket {
            start: sampled_at.div_euclid(MINUTE_MS).saturating_mul(MINUTE_MS),
            gpu_hours: prev.busy_gpus * hours,
            vram_gib_hours: prev.vram_gib * hours,
            observed_gpu_hours: f64::from(prev.gpus) * hours,
        };
        *prev = now;
        if credit.start.saturating_add(MINUTE_MS) <= self.newest_at.saturating_sub(USAGE_RETENTION_MS) {
            return;
        }
        let usage = &mut self.usage;
        let pos = match usage.back() {
            Some(last) if last.start < credit.start => usage.len(),
            _ => usage.partition_point(|b| b.start < credit.start),
        };
        match usage.get_mut(pos) {
            Some(b) if b.start == credit.start => {
                b.gpu_hours += credit.gpu_hours;
                b.vram_gib_hours += credit.vram_gib_hours;
                b.observed_gpu_hours += credit.observed_gpu_hours;
            }
            _ => usage.insert(pos, credit),
        }
        while usage.len() > MAX_USAGE_BUCKETS {
            usage.pop_front();
        }
    }

    fn expire_usage(&mut self) {
        let from = self.newest_at.saturating_sub(USAGE_RETENTION_MS);
        while self.usage.front().is_some_and(|b| b.start.saturating_add(MINUTE_MS) <= from) {
            self.usage.pop_front();
        }
    }

    /// Usage in `(end − window, end]` by bucket start.
    fn usage_in(&self, end: UnixMillis, window: i64) -> UsageView {
        let start = end.saturating_sub(window);
        let mut u = UsageView { gpu_hours: 0.0, vram_gib_hours: 0.0, observed_gpu_hours: 0.0 };
        for b in self.usage.iter().filter(|b| b.start > start && b.start <= end) {
            u.gpu_hours += b.gpu_hours;
            u.vram_gib_hours += b.vram_gib_hours;
            u.observed_gpu_hours += b.observed_gpu_hours;
        }
        u
    }
}

impl Projection for Dashboard {
    fn name(&self) -> &'static str {
        "dashboard"
    }

    fn version(&self) -> u32 {
        1
    }

    fn apply(&mut self, record: &EventRecord) {
        let advanced = record.recorded_at > self.newest_at;
        self.newest_at = self.newest_at.max(record.recorded_at);
        self.events_total += 1;
        self.push_recent(record);
        match &record.event {
            Event::JobDispatched { job_id, device_id, .. } => {
                self.jobs_dispatched += 1;
                self.active_jobs.insert(job_id.clone(), device_id.clone());
            }
            Event::JobCompleted { job_id, .. } => {
                self.jobs_completed += 1;
                self.active_jobs.remove(job_id.as_str());
            }
            Event::JobFailed { job_id, .. } => {
                self.jobs_failed += 1;
                self.active_jobs.remove(job_id.as_str());
            }
            Event::TelemetryRecorded { device_id, sampled_at, gpus } => {
                self.record_usage(device_id, *sampled_at, gpus);
            }
            Event::HostProbed { device_id, ok: true, gpus, .. } if !gpus.is_empty() => {
                self.record_usage(device_id, record.recorded_at, gpus);
            }
            Event::DeviceDecommissioned { device_id, .. } => {
                self.last_sample.remove(device_id.as_str());
            }
            _ => {}
        }
        if advanced {
            self.expire_usage();
        }
    }

    fn digest(&self) -> Digest {
        digest_of(&Canonical {
            recent: &self.recent,
            counters: [self.events_total, self.jobs_dispatched, self.jobs_completed, self.jobs_failed],
            active_jobs: sorted(&self.active_jobs),
            last_sample: sorted(&self.last_sample),
            usage: &self.usage,
            newest_at: self.newest_at,
        })
    }

    fn encode(&self) -> Vec<u8> {
        encode_state(self)
    }

    fn decode(bytes: &[u8]) -> Result<Self, StateDecodeError> {
        decode_state(bytes)
    }
}

/// Counts per device status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StatusCounts {
    /// Enrolled, never seen.
    pub enrolled: u64,
    /// Seen recently.
    pub active: u64,
    /// Not seen recently.
    pub stale: u64,
    /// Decommissioned.
    pub decommissioned: u64,
    /// All.
    pub total: u64,
}

impl StatusCounts {
    fn add(&mut self, status: DeviceStatus, n: u64) {
        let slot = match status {
            DeviceStatus::Enrolled => &mut self.enrolled,
            DeviceStatus::Active => &mut self.active,
            DeviceStatus::Stale => &mut self.stale,
            DeviceStatus::Decommissioned => &mut self.decommissioned,
        };
        *slot += n;
        self.total += n;
    }
}

/// Jobs against capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct JobsView {
    /// Dispatched or running.
    pub active: u64,
    /// Running.
    pub running: u64,
    /// Dispatched, not started.
    pub queued: u64,
    /// GPUs of active devices.
    pub capacity_gpus: u64,
    /// Jobs ever dispatched.
    pub lifetime_dispatched: u64,
    /// Jobs ever completed.
    pub lifetime_completed: u64,
    /// Jobs ever failed.
    pub lifetime_failed: u64,
}

/// One backend's capacity and load.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BackendView {
    /// `local`, `ssh` or the rental provider.
    pub backend: String,
    /// Devices not decommissioned.
    pub devices: u64,
    /// Active devices.
    pub active_devices: u64,
    /// GPUs of active devices.
    pub capacity_gpus: u64,
    /// Jobs dispatched or running on it.
    pub active_jobs: u64,
    /// Mean utilisation of the latest samples of its active devices' GPUs, percent.
    pub utilization_pct: Option<f64>,
}

/// GPU usage over a window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct UsageView {
    /// Utilisation-weighted GPU-hours (a GPU at 50 % for 2 h is 1 GPU-hour).
    pub gpu_hours: f64,
    /// VRAM in use × time, GiB-hours.
    pub vram_gib_hours: f64,
    /// GPU-hours observed by telemetry, whatever the load.
    pub observed_gpu_hours: f64,
}

/// The last 24 hours.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Last24hView {
    /// Usage.
    pub usage: UsageView,
    /// Cost of jobs that ended, plus the accrued cost of jobs still running, micro-USD.
    pub estimated_cost_micro_usd: MicroUsd,
    /// Rental spend of jobs that ended, micro-USD.
    pub rental_spend_micro_usd: MicroUsd,
    /// Jobs that ended.
    pub jobs_ended: u64,
}

/// An entry of the recent-events list: no secrets, by construction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecentEventView {
    /// Seq.
    pub seq: u64,
    /// Recorded time (unix ms).
    pub recorded_at: UnixMillis,
    /// Event type (`telemetry_recorded`, ...).
    #[serde(rename = "type")]
    pub event_type: &'static str,
    /// The device it concerns, if any.
    pub device_id: Option<DeviceId>,
}

/// The dashboard.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DashboardView {
    /// Seq the read models are at.
    pub seq: u64,
    /// The time the view was computed for (unix ms).
    pub now: UnixMillis,
    /// Devices by status.
    pub devices: StatusCounts,
    /// GPUs by their device's status.
    pub gpus: StatusCounts,
    /// Jobs against capacity.
    pub jobs: JobsView,
    /// Per backend, sorted by name.
    pub backends: Vec<BackendView>,
    /// The last 24 hours before `now`.
    pub last_24h: Last24hView,
    /// Events applied in total.
    pub events_total: u64,
    /// The last events, newest first.
    pub recent_events: Vec<RecentEventView>,
}

#[derive(Default)]
struct BackendAcc {
    devices: u64,
    active_devices: u64,
    capacity_gpus: u64,
    active_jobs: u64,
    util_sum: f64,
    util_n: u64,
}

/// Composes the dashboard from the four projections (all at `seq`) for a reader at `now`.
pub fn view(
    registry: &Registry,
    snapshots: &Snapshots,
    cost: &Cost,
    dashboard: &Dashboard,
    seq: u64,
    now: UnixMillis,
    heartbeat: Duration,
) -> DashboardView {
    let mut devices = StatusCounts::default();
    let mut gpus = StatusCounts::default();
    let mut backends: BTreeMap<&str, BackendAcc> = BTreeMap::new();
    for (id, d) in registry.records() {
        let status = d.status(now, heartbeat);
        let n_gpus = d.gpus.len() as u64;
        devices.add(status, 1);
        gpus.add(status, n_gpus);
        if status == DeviceStatus::Decommissioned {
            continue;
        }
        let b = backends.entry(d.kind.backend()).or_default();
        b.devices += 1;
        if status == DeviceStatus::Active {
            b.active_devices += 1;
            b.capacity_gpus += n_gpus;
            for (_, s) in snapshots.latest_of(id) {
                if let Some(u) = s.utilization_pct {
                    b.util_sum += f64::from(u);
                    b.util_n += 1;
                }
            }
        }
    }
    let (mut active, mut running) = (0u64, 0u64);
    for (_, job, backend) in cost.active_jobs() {
        active += 1;
        if job.status == JobStatus::Started {
            running += 1;
        }
        if let Some(b) = backends.get_mut(backend) {
            b.active_jobs += 1;
        }
    }
    let day = cost.cost(now, Duration::from_millis(86_400_000), GroupBy::None);
    DashboardView {
        seq,
        now,
        devices,
        gpus,
        jobs: JobsView {
            active,
            running,
            queued: active - running,
            capacity_gpus: gpus.active,
            lifetime_dispatched: dashboard.jobs_dispatched,
            lifetime_completed: dashboard.jobs_completed,
            lifetime_failed: dashboard.jobs_failed,
        },
        backends: backends
            .into_iter()
            .map(|(name, b)| BackendView {
                backend: name.to_owned(),
                devices: b.devices,
                active_devices: b.active_devices,
                capacity_gpus: b.capacity_gpus,
                active_jobs: b.active_jobs,
                // Counts of GPUs are far below 2^53: exact as f64.
                utilization_pct: (b.util_n > 0).then(|| b.util_sum / b.util_n as f64),
            })
            .collect(),
        last_24h: Last24hView {
            usage: dashboard.usage_in(now, DAY_MS),
            estimated_cost_micro_usd: day.total_micro_usd.saturating_add(day.running_accrued_micro_usd),
            rental_spend_micro_usd: day.rental_spend_micro_usd,
            jobs_ended: day.jobs_ended,
        },
        events_total: dashboard.events_total,
        recent_events: dashboard
            .recent
            .iter()
            .rev()
            .map(|e| RecentEventView {
                seq: e.seq,
                recorded_at: e.recorded_at,
                event_type: Event::TYPE_NAMES.get(usize::from(e.type_index)).copied().unwrap_or("unknown"),
                device_id: e.device_id.clone(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use hwledger_engine::Actor;
    use hwledger_engine::event::{DeviceKind, GpuInfo, PriceQuote};

    use super::*;

    const M: i64 = 60_000;
    const T0: i64 = 1_710_028_800_000;

    fn reading(util: f32, vram_mib: u64) -> GpuReading {
        GpuReading {
            index: 0,
            vram_used_mib: Some(vram_mib),
            vram_total_mib: Some(24_576),
            utilization_pct: Some(util),
            temperature_c: None,
            power_w: None,
        }
    }

    fn one_of_each() -> Vec<Event> {
        vec![
            Event::DeviceEnrolled {
                device_id: "d".into(),
                kind: DeviceKind::Local,
                hostname: Some("secret-host.internal".into()),
                labels: Default::default(),
            },
            Event::DeviceRegistered { device_id: "d".into(), hostname: None, gpus: vec![] },
            Event::TelemetryRecorded { device_id: "d".into(), sampled_at: 0, gpus: vec![] },
            Event::DeviceDecommissioned { device_id: "d".into(), reason: "r".into() },
            Event::JobDispatched {
                job_id: "j".into(),
                device_id: "d".into(),
                model: "m".into(),
                vram_mib: 1,
                price: None,
            },
            Event::JobStarted { job_id: "j".into() },
            Event::JobCompleted { job_id: "j".into(), exit_status: 0 },
            Event::JobFailed { job_id: "j".into(), exit_status: None, reason: "r".into() },
            Event::RentalPriceQuoted {
                provider: "p".into(),
                gpu_name: "g".into(),
                gpu_count: 1,
                micro_usd_per_hour: 1,
                offer_id: None,
                quoted_at: 0,
            },
            Event::DeviceRateSet { device_id: "d".into(), micro_usd_per_hour: 1 },
            Event::CertificateIssued {
                role: CertRole::Agent("d".into()),
                fingerprint: [0xab; 32],
                serial: "s".into(),
                not_after: 0,
            },
            Event::CertificateRevoked { fingerprint: [0xab; 32], reason: "r".into() },
            Event::BootstrapTokenCreated { token_hash: [0xcd; 32], device_id: "d".into(), expires_at: 0 },
            Event::BootstrapTokenUsed { token_hash: [0xcd; 32] },
            Event::HostKeyPinned { device_id: "d".into(), key_fingerprint: "SHA256:hostkey".into() },
            Event::HostProbed { device_id: "d".into(), ok: true, detail: "d".into(), gpus: vec![] },
            Event::RentalInstanceObserved {
                provider: "p".into(),
                instance_id: "i".into(),
                gpu_name: "g".into(),
                gpu_count: 1,
                status: "s".into(),
                micro_usd_per_hour: None,
            },
        ]
    }

    struct Fleet {
        registry: Registry,
        snapshots: Snapshots,
        cost: Cost,
        dashboard: Dashboard,
        seq: u64,
    }

    impl Fleet {
        fn new() -> Fleet {
            Fleet {
                registry: Registry::default(),
                snapshots: Snapshots::default(),
                cost: Cost::default(),
                dashboard: Dashboard::default(),
                seq: 0,
            }
        }

        fn at(&mut self, at: UnixMillis, event: Event) {
            self.seq += 1;
            let r = EventRecord {
                seq: self.seq,
                recorded_at: at,
                command_id: format!("c{}", self.seq),
                actor: Actor::System,
                stream_version: 1,
                event,
            };
            self.registry.apply(&r);
            self.snapshots.apply(&r);
            self.cost.apply(&r);
            self.dashboard.apply(&r);
        }

        fn telemetry(&mut self, at: UnixMillis, device: &str, util: f32, vram: u64) {
            self.at(
                at,
                Event::TelemetryRecorded { device_id: device.into(), sampled_at: at, gpus: vec![reading(util, vram)] },
            );
        }

        fn view(&self, now: UnixMillis) -> DashboardView {
            view(&self.registry, &self.snapshots, &self.cost, &self.dashboard, self.seq, now, Duration::from_secs(60))
        }
    }

    fn enroll(device: &str, kind: DeviceKind, gpus: u32) -> [Event; 2] {
        [
            Event::DeviceEnrolled { device_id: device.into(), kind, hostname: None, labels: Default::default() },
            Event::DeviceRegistered {
                device_id: device.into(),
                hostname: None,
                gpus: (0..gpus)
                    .map(|index| GpuInfo { index, name: "RTX".into(), uuid: None, vram_total_mib: 24_576 })
                    .collect(),
            },
        ]
    }

    #[test]
    fn type_index_matches_the_engine_type_names() {
        let all = one_of_each();
        assert_eq!(all.len(), Event::TYPE_NAMES.len());
        for e in &all {
            assert_eq!(Event::TYPE_NAMES[usize::from(type_index(e))], e.type_name());
        }
    }

    #[test]
    fn ring_buffer_keeps_the_last_50_without_secrets() {
        let mut f = Fleet::new();
        for round in 0..4 {
            for e in one_of_each() {
                f.at(T0 + round, e);
            }
        }
        let v = f.view(T0);
        assert_eq!(v.events_total, 68);
        assert_eq!(v.recent_events.len(), RECENT_EVENTS);
        assert_eq!(v.recent_events[0].seq, 68);
        assert_eq!(v.recent_events[49].seq, 19);
        assert_eq!(v.recent_events[0].event_type, "rental_instance_observed");
        let json = serde_json::to_string(&v.recent_events).expect("serializes");
        for secret in ["abab", "cdcd", "secret-host", "SHA256:hostkey"] {
            assert!(!json.contains(secret), "{secret} leaked into {json}");
        }
        // Job events name the job's device.
        let started = v.recent_events.iter().find(|e| e.event_type == "job_started").expect("a job_started");
        assert_eq!(started.device_id.as_deref(), Some("d"));
        assert_eq!(
            v.recent_events.iter().find(|e| e.event_type == "certificate_revoked").map(|e| &e.device_id),
            Some(&None)
        );
    }

    #[test]
    fn counts_capacity_utilisation_usage_and_cost() {
        let mut f = Fleet::new();
        for e in enroll("a", DeviceKind::Local, 2) {
            f.at(T0, e);
        }
        for e in enroll("b", DeviceKind::Rental { provider: "vast".into(), instance_id: "i".into() }, 1) {
            f.at(T0, e);
        }
        for e in enroll("c", DeviceKind::Local, 4) {
            f.at(T0, e);
        }
        f.at(
            T0,
            Event::DeviceEnrolled {
                device_id: "new".into(),
                kind: DeviceKind::Local,
                hostname: None,
                labels: Default::default(),
            },
        );
        f.at(T0, Event::DeviceDecommissioned { device_id: "c".into(), reason: "old".into() });
        // a: 100 % then 50 %, one minute apart; b: 20 %, 2 GiB.
        f.telemetry(T0 + M, "a", 100.0, 4_096);
        f.telemetry(T0 + 2 * M, "a", 50.0, 2_048);
        f.telemetry(T0 + 2 * M, "b", 20.0, 2_048);
        f.telemetry(T0 + 3 * M, "b", 20.0, 2_048);
        // A rental job: 1 h at 3 USD/h, ended; another running for 30 min at 3 USD/h.
        let price = PriceQuote { source: "vast".into(), micro_usd_per_hour: 3_000_000, offer_id: None, quoted_at: 0 };
        f.at(
            T0 + 3 * M,
            Event::JobDispatched {
                job_id: "j1".into(),
                device_id: "b".into(),
                model: "m".into(),
                vram_mib: 1,
                price: Some(price.clone()),
            },
        );
        f.at(T0 + 3 * M, Event::JobStarted { job_id: "j1".into() });
        f.at(T0 + 63 * M, Event::JobCompleted { job_id: "j1".into(), exit_status: 0 });
        f.at(
            T0 + 63 * M,
            Event::JobDispatched {
                job_id: "j2".into(),
                device_id: "b".into(),
                model: "m".into(),
                vram_mib: 1,
                price: Some(price),
            },
        );
        f.at(T0 + 63 * M, Event::JobStarted { job_id: "j2".into() });
        f.at(
            T0 + 63 * M,
            Event::JobDispatched {
                job_id: "j3".into(),
                device_id: "a".into(),
                model: "m".into(),
                vram_mib: 1,
                price: None,
            },
        );

        // Read at T0 + 93 min with a 60 s heartbeat: a and b were last seen ≥ 90 min ago → stale.
        let late = f.view(T0 + 93 * M);
        assert_eq!((late.devices.stale, late.devices.enrolled, late.devices.decommissioned), (2, 1, 1));
        assert_eq!(late.jobs.capacity_gpus, 0);

        // Read right after the last telemetry: a and b active.
        let v = f.view(T0 + 3 * M);
        assert_eq!(v.devices, StatusCounts { enrolled: 1, active: 2, stale: 0, decommissioned: 1, total: 4 });
        assert_eq!(v.gpus, StatusCounts { enrolled: 0, active: 3, stale: 0, decommissioned: 4, total: 7 });
        let backends: Vec<(&str, u64, u64, Option<f64>)> =
            v.backends.iter().map(|b| (b.backend.as_str(), b.devices, b.capacity_gpus, b.utilization_pct)).collect();
        assert_eq!(backends, [("local", 2, 2, Some(50.0)), ("vast", 1, 1, Some(20.0))]);

        // At T0 + 93 min: usage of the last day. a: 1 min at 100 % (4 GiB) → 1/60 GPU-h, 4/60 GiB-h;
        // b: 1 min at 20 % (2 GiB) → 0.2/60 GPU-h, 2/60 GiB-h.
        let u = late.last_24h.usage;
        assert!((u.gpu_hours - 1.2 / 60.0).abs() < 1e-12, "{u:?}");
        assert!((u.vram_gib_hours - 6.0 / 60.0).abs() < 1e-12, "{u:?}");
        assert!((u.observed_gpu_hours - 2.0 / 60.0).abs() < 1e-12, "{u:?}");
        // 3 USD ended + 30 min of j2 accrued (1.5 USD); all rental spend is j1's 3 USD.
        assert_eq!(late.last_24h.estimated_cost_micro_usd, 4_500_000);
        assert_eq!(late.last_24h.rental_spend_micro_usd, 3_000_000);
        assert_eq!(
            (
                late.jobs.active,
                late.jobs.running,
                late.jobs.queued,
                late.jobs.lifetime_dispatched,
                late.jobs.lifetime_completed
            ),
            (2, 1, 1, 3, 1)
        );
        let dec = Dashboard::decode(&f.dashboard.encode()).expect("round trip");
        assert_eq!(dec.digest(), f.dashboard.digest());
    }

    #[test]
    fn usage_gap_is_capped_and_old_usage_expires() {
        let mut f = Fleet::new();
        for e in enroll("a", DeviceKind::Local, 1) {
            f.at(T0, e);
        }
        f.telemetry(T0, "a", 100.0, 1_024);
        // Silent for an hour: only 5 minutes are credited.
        f.telemetry(T0 + 60 * M, "a", 100.0, 1_024);
        let u = f.view(T0 + 60 * M).last_24h.usage;
        assert!((u.gpu_hours - 5.0 / 60.0).abs() < 1e-12, "{u:?}");
        // Two days later the old bucket has expired from the state.
        f.telemetry(T0 + 2 * DAY_MS, "a", 0.0, 0);
        assert_eq!(f.dashboard.usage.len(), 1);
        assert_eq!(f.view(T0 + 2 * DAY_MS).last_24h.usage.gpu_hours, 5.0 / 60.0);
    }
}
