//! The **registry** projection: every device of the fleet — identity, how it is reached, its GPUs, labels,
//! pinned agent certificates and SSH host key, when it enrolled and when it was last seen.
//!
//! Status is split in two. What the log says is stored ([`Lifecycle`]: enrolled, active, decommissioned);
//! *stale* depends on the reader's clock and is computed at read time from `last_seen` and the heartbeat
//! interval the caller passes in, so the stored state (and its digest) never depends on when it is read.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use hwledger_engine::event::{
    CertRole, DeviceId, DeviceKind, Event, EventRecord, Fingerprint, GpuInfo, MicroUsd, UnixMillis,
};
use serde::{Deserialize, Serialize};

use crate::projection::{
    Digest, Projection, StateDecodeError, decode_state, digest_of, duration_ms, encode_state, sorted,
};

/// A device is stale after this many heartbeat intervals without being seen: one late heartbeat is jitter,
/// three missed in a row mean the agent (or its host) is gone.
pub const MISSED_HEARTBEATS_FOR_STALE: i64 = 3;

/// What the log says about a device's lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lifecycle {
    /// Enrolled; no inventory, telemetry or successful probe yet.
    Enrolled,
    /// Has registered, reported telemetry or answered a probe.
    Active,
    /// Left the fleet for good.
    Decommissioned,
}

/// A device's status as shown to a reader at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceStatus {
    /// Enrolled, never seen.
    Enrolled,
    /// Seen within [`MISSED_HEARTBEATS_FOR_STALE`] heartbeat intervals.
    Active,
    /// Seen once, but not recently.
    Stale,
    /// Left the fleet.
    Decommissioned,
}

/// A device as the registry stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// How it is reached (local agent, SSH, rental).
    pub kind: DeviceKind,
    /// Hostname as last reported or declared.
    pub hostname: Option<String>,
    /// Current inventory (replaced by each registration).
    pub gpus: Vec<GpuInfo>,
    /// Lifecycle from the log.
    pub lifecycle: Lifecycle,
    /// Operator labels given at enrollment.
    pub labels: BTreeMap<String, String>,
    /// Pinned, unrevoked agent certificates (SHA-256 of the DER).
    pub cert_fingerprints: BTreeSet<Fingerprint>,
    /// Pinned SSH host key fingerprint, for agentless hosts.
    pub host_key: Option<String>,
    /// `recorded_at` of the enrollment.
    pub enrolled_at: UnixMillis,
    /// `recorded_at` of the last registration, telemetry or successful probe.
    pub last_seen: Option<UnixMillis>,
    /// `recorded_at` of the decommissioning.
    pub decommissioned_at: Option<UnixMillis>,
    /// Operator-set hourly rate, if any.
    pub micro_usd_per_hour: Option<MicroUsd>,
    /// Outcome of the last agentless probe: `(recorded_at, ok)`.
    pub last_probe: Option<(UnixMillis, bool)>,
}

/// The registry projection.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Registry {
    devices: HashMap<DeviceId, DeviceRecord>,
    /// Which device each pinned agent certificate belongs to, so a revocation (which names only the
    /// fingerprint) finds its device without scanning the fleet.
    cert_owner: HashMap<Fingerprint, DeviceId>,
}

/// A device as served to readers (`--json`, HTTP).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceView {
    /// Device id.
    pub device_id: DeviceId,
    /// Hostname.
    pub hostname: Option<String>,
    /// How it is reached.
    pub kind: DeviceKind,
    /// Cost/capacity backend: `local`, `ssh` or the rental provider.
    pub backend: String,
    /// Status at the time of the read.
    pub status: DeviceStatus,
    /// GPUs.
    pub gpus: Vec<GpuInfo>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Pinned agent certificate fingerprints, lowercase hex, sorted.
    pub cert_fingerprints: Vec<String>,
    /// Pinned SSH host key fingerprint.
    pub host_key: Option<String>,
    /// Enrollment time (unix ms).
    pub enrolled_at: UnixMillis,
    /// Last seen (unix ms).
    pub last_seen: Option<UnixMillis>,
    /// Decommissioning time (unix ms).
    pub decommissioned_at: Option<UnixMillis>,
    /// Hourly rate (micro-USD).
    pub micro_usd_per_hour: Option<MicroUsd>,
    /// Last probe: when and whether it succeeded.
    pub last_probe: Option<ProbeView>,
}

/// The outcome of the last agentless probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ProbeView {
    /// When (unix ms).
    pub at: UnixMillis,
    /// Whether it succeeded.
    pub ok: bool,
}

impl DeviceRecord {
    /// Status at `now`: stale when seen before but not within [`MISSED_HEARTBEATS_FOR_STALE`] × `heartbeat`.
    pub fn status(&self, now: UnixMillis, heartbeat: Duration) -> DeviceStatus {
        match (self.lifecycle, self.last_seen) {
            (Lifecycle::Decommissioned, _) => DeviceStatus::Decommissioned,
            (_, None) => DeviceStatus::Enrolled,
            (_, Some(seen)) => {
                let limit = duration_ms(heartbeat).saturating_mul(MISSED_HEARTBEATS_FOR_STALE);
                if now.saturating_sub(seen) > limit { DeviceStatus::Stale } else { DeviceStatus::Active }
            }
        }
    }

    fn view(&self, device_id: &str, now: UnixMillis, heartbeat: Duration) -> DeviceView {
        DeviceView {
            device_id: device_id.to_owned(),
            hostname: self.hostname.clone(),
            kind: self.kind.clone(),
            backend: self.kind.backend().to_owned(),
            status: self.status(now, heartbeat),
            gpus: self.gpus.clone(),
            labels: self.labels.clone(),
            cert_fingerprints: self.cert_fingerprints.iter().map(hex::encode).collect(),
            host_key: self.host_key.clone(),
            enrolled_at: self.enrolled_at,
            last_seen: self.last_seen,
            decommissioned_at: self.decommissioned_at,
            micro_usd_per_hour: self.micro_usd_per_hour,
            last_probe: self.last_probe.map(|(at, ok)| ProbeView { at, ok }),
        }
    }

    fn seen(&mut self, at: UnixMillis) {
        self.last_seen = Some(self.last_seen.map_or(at, |s| s.max(at)));
        if self.lifecycle == Lifecycle::Enrolled {
            self.lifecycle = Lifecycle::Active;
        }
    }
}

impl Registry {
    /// Every device, sorted by id, with its status at `now`.
    pub fn devices(&self, now: UnixMillis, heartbeat: Duration) -> Vec<DeviceView> {
        let mut out: Vec<DeviceView> = self.devices.iter().map(|(id, d)| d.view(id, now, heartbeat)).collect();
        out.sort_unstable_by(|a, b| a.device_id.cmp(&b.device_id));
        out
    }

    /// One device, with its status at `now`.
    pub fn device(&self, device_id: &str, now: UnixMillis, heartbeat: Duration) -> Option<DeviceView> {
        self.devices.get(device_id).map(|d| d.view(device_id, now, heartbeat))
    }

    /// The stored record of a device.
    pub fn record(&self, device_id: &str) -> Option<&DeviceRecord> {
        self.devices.get(device_id)
    }

    /// Every stored record, unordered.
    pub fn records(&self) -> impl Iterator<Item = (&DeviceId, &DeviceRecord)> {
        self.devices.iter()
    }

    /// Number of devices ever enrolled.
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    /// True when no device was ever enrolled.
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// The device an agent certificate is pinned to, if it is pinned and not revoked.
    pub fn device_of_certificate(&self, fingerprint: &Fingerprint) -> Option<&str> {
        self.cert_owner.get(fingerprint).map(String::as_str)
    }
}

/// The canonical form hashed by [`Registry::digest`].
#[derive(Serialize)]
struct Canonical<'a> {
    devices: Vec<(&'a DeviceId, &'a DeviceRecord)>,
    cert_owner: Vec<(&'a Fingerprint, &'a DeviceId)>,
}

impl Projection for Registry {
    fn name(&self) -> &'static str {
        "registry"
    }

    fn version(&self) -> u32 {
        1
    }

    fn apply(&mut self, record: &EventRecord) {
        let at = record.recorded_at;
        match &record.event {
            Event::DeviceEnrolled { device_id, kind, hostname, labels } => {
                self.devices.insert(
                    device_id.clone(),
                    DeviceRecord {
                        kind: kind.clone(),
                        hostname: hostname.clone(),
                        gpus: Vec::new(),
                        lifecycle: Lifecycle::Enrolled,
                        labels: labels.clone(),
                        cert_fingerprints: BTreeSet::new(),
                        host_key: None,
                        enrolled_at: at,
                        last_seen: None,
                        decommissioned_at: None,
                        micro_usd_per_hour: None,
                        last_probe: None,
                    },
                );
            }
            Event::DeviceRegistered { device_id, hostname, gpus } => {
                if let Some(d) = self.devices.get_mut(device_id.as_str()) {
                    d.gpus.clone_from(gpus);
                    if hostname.is_some() {
                        d.hostname.clone_from(hostname);
                    }
                    d.seen(at);
                }
            }
            Event::TelemetryRecorded { device_id, .. } => {
                if let Some(d) = self.devices.get_mut(device_id.as_str()) {
                    d.seen(at);
                }
            }
            Event::HostProbed { device_id, ok, .. } => {
                if let Some(d) = self.devices.get_mut(device_id.as_str()) {
                    d.last_probe = Some((at, *ok));
                    if *ok {
                        d.seen(at);
                    }
                }
            }
            Event::DeviceDecommissioned { device_id, .. } => {
                if let Some(d) = self.devices.get_mut(device_id.as_str()) {
                    d.lifecycle = Lifecycle::Decommissioned;
                    d.decommissioned_at = Some(at);
                }
            }
            Event::DeviceRateSet { device_id, micro_usd_per_hour } => {
                if let Some(d) = self.devices.get_mut(device_id.as_str()) {
                    d.micro_usd_per_hour = Some(*micro_usd_per_hour);
                }
            }
            Event::HostKeyPinned { device_id, key_fingerprint } => {
                if let Some(d) = self.devices.get_mut(device_id.as_str()) {
                    d.host_key = Some(key_fingerprint.clone());
                }
            }
            Event::CertificateIssued { role: CertRole::Agent(device_id), fingerprint, .. } => {
                if let Some(d) = self.devices.get_mut(device_id.as_str()) {
                    d.cert_fingerprints.insert(*fingerprint);
                    self.cert_owner.insert(*fingerprint, device_id.clone());
                }
            }
            Event::CertificateRevoked { fingerprint, .. } => {
                if let Some(owner) = self.cert_owner.remove(fingerprint) {
                    if let Some(d) = self.devices.get_mut(owner.as_str()) {
                        d.cert_fingerprints.remove(fingerprint);
                    }
                }
            }
            Event::CertificateIssued { .. }
            | Event::JobDispatched { .. }
            | Event::JobStarted { .. }
            | Event::JobCompleted { .. }
            | Event::JobFailed { .. }
            | Event::RentalPriceQuoted { .. }
            | Event::BootstrapTokenCreated { .. }
            | Event::BootstrapTokenUsed { .. }
            | Event::RentalInstanceObserved { .. } => {}
        }
    }

    fn digest(&self) -> Digest {
        digest_of(&Canonical { devices: sorted(&self.devices), cert_owner: sorted(&self.cert_owner) })
    }

    fn encode(&self) -> Vec<u8> {
        encode_state(self)
    }

    fn decode(bytes: &[u8]) -> Result<Self, StateDecodeError> {
        decode_state(bytes)
    }
}

#[cfg(test)]
mod tests {
    use hwledger_engine::Actor;

    use super::*;

    fn rec(seq: u64, at: UnixMillis, event: Event) -> EventRecord {
        EventRecord {
            seq,
            recorded_at: at,
            command_id: format!("c{seq}"),
            actor: Actor::System,
            stream_version: 1,
            event,
        }
    }

    fn fleet() -> Registry {
        let mut r = Registry::default();
        let events = vec![
            Event::DeviceEnrolled {
                device_id: "gpu-a".into(),
                kind: DeviceKind::Local,
                hostname: Some("a.lan".into()),
                labels: BTreeMap::from([("rack".into(), "r1".into())]),
            },
            Event::DeviceEnrolled {
                device_id: "ssh-b".into(),
                kind: DeviceKind::Ssh { target: "root@b:22".into() },
                hostname: None,
                labels: BTreeMap::new(),
            },
            Event::DeviceEnrolled {
                device_id: "rent-c".into(),
                kind: DeviceKind::Rental { provider: "vast".into(), instance_id: "i-9".into() },
                hostname: None,
                labels: BTreeMap::new(),
            },
            Event::DeviceRegistered {
                device_id: "gpu-a".into(),
                hostname: None,
                gpus: vec![GpuInfo { index: 0, name: "RTX 4090".into(), uuid: None, vram_total_mib: 24_564 }],
            },
            Event::CertificateIssued {
                role: CertRole::Agent("gpu-a".into()),
                fingerprint: [1; 32],
                serial: "01".into(),
                not_after: 99_000_000,
            },
            Event::CertificateIssued {
                role: CertRole::Agent("gpu-a".into()),
                fingerprint: [2; 32],
                serial: "02".into(),
                not_after: 99_000_000,
            },
            Event::CertificateIssued {
                role: CertRole::Operator("alice".into()),
                fingerprint: [3; 32],
                serial: "03".into(),
                not_after: 99_000_000,
            },
            Event::CertificateRevoked { fingerprint: [1; 32], reason: "rotated".into() },
            Event::HostKeyPinned { device_id: "ssh-b".into(), key_fingerprint: "SHA256:abc".into() },
            Event::HostProbed { device_id: "ssh-b".into(), ok: false, detail: "timeout".into(), gpus: vec![] },
            Event::DeviceRateSet { device_id: "gpu-a".into(), micro_usd_per_hour: 450_000 },
            Event::DeviceDecommissioned { device_id: "rent-c".into(), reason: "returned".into() },
        ];
        for (i, e) in events.into_iter().enumerate() {
            let seq = i as u64 + 1;
            r.apply(&rec(seq, 1_000 * seq as i64, e));
        }
        r
    }

    #[test]
    fn devices_carry_identity_kind_gpus_pins_and_times() {
        let r = fleet();
        let hb = Duration::from_secs(10);
        let a = r.device("gpu-a", 4_000, hb).expect("gpu-a enrolled");
        assert_eq!(a.hostname.as_deref(), Some("a.lan"), "registration without hostname keeps the enrolled one");
        assert_eq!(a.backend, "local");
        assert_eq!(a.status, DeviceStatus::Active);
        assert_eq!(a.gpus.len(), 1);
        assert_eq!(a.enrolled_at, 1_000);
        assert_eq!(a.last_seen, Some(4_000));
        assert_eq!(a.cert_fingerprints, vec![hex::encode([2u8; 32])], "revoked pin removed, operator cert ignored");
        assert_eq!(a.micro_usd_per_hour, Some(450_000));
        assert_eq!(a.labels.get("rack").map(String::as_str), Some("r1"));

        let b = r.device("ssh-b", 4_000, hb).expect("ssh-b enrolled");
        assert_eq!(b.backend, "ssh");
        assert_eq!(b.status, DeviceStatus::Enrolled, "a failed probe is not a sighting");
        assert_eq!(b.host_key.as_deref(), Some("SHA256:abc"));
        assert_eq!(b.last_probe, Some(ProbeView { at: 10_000, ok: false }));

        let c = r.device("rent-c", 4_000, hb).expect("rent-c enrolled");
        assert_eq!(c.backend, "vast");
        assert_eq!(c.status, DeviceStatus::Decommissioned);
        assert_eq!(c.decommissioned_at, Some(12_000));

        let ids: Vec<String> = r.devices(0, hb).into_iter().map(|d| d.device_id).collect();
        assert_eq!(ids, ["gpu-a", "rent-c", "ssh-b"]);
        assert_eq!(r.device_of_certificate(&[2; 32]), Some("gpu-a"));
        assert_eq!(r.device_of_certificate(&[1; 32]), None);
    }

    #[test]
    fn stale_is_computed_at_read_time_from_the_heartbeat_interval() {
        let r = fleet();
        let hb = Duration::from_secs(10);
        // Last seen at 4 000 ms; stale after 3 × 10 s = 30 000 ms.
        assert_eq!(r.device("gpu-a", 34_000, hb).map(|d| d.status), Some(DeviceStatus::Active));
        assert_eq!(r.device("gpu-a", 34_001, hb).map(|d| d.status), Some(DeviceStatus::Stale));
        assert_eq!(r.device("gpu-a", 34_001, Duration::from_secs(60)).map(|d| d.status), Some(DeviceStatus::Active));
        // Reading does not change the state.
        assert_eq!(r.digest(), fleet().digest());
    }

    #[test]
    fn state_round_trips_and_digest_ignores_map_order() {
        let r = fleet();
        let decoded = Registry::decode(&r.encode()).expect("round trip");
        assert_eq!(decoded, r);
        assert_eq!(decoded.digest(), r.digest());
        // Same content, inserted in another order.
        let mut other = Registry::default();
        let mut entries: Vec<_> = r.devices.iter().collect();
        entries.reverse();
        for (k, v) in entries {
            other.devices.insert(k.clone(), v.clone());
        }
        other.cert_owner = r.cert_owner.clone();
        assert_eq!(other.digest(), r.digest());
        assert!(Registry::decode(&[0xff, 0xff, 0xff]).is_err());
    }
}
