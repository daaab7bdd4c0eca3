//! The **snapshots** projection: GPU telemetry — the latest sample of every GPU plus a bounded, downsampled
//! history.
//!
//! Every sample updates three tiers of its GPU's series at once:
//!
//! | tier | resolution | kept for |
//! | --- | --- | --- |
//! | raw | every sample (at most [`MAX_RAW_PER_GPU`]) | the last hour |
//! | minute | 1-minute buckets, min/mean/max per metric | the last day |
//! | hour | 1-hour buckets, min/mean/max per metric | the last 30 days |
//!
//! Retention is measured back from the newest event time (`recorded_at`), never from a clock, so replay and
//! live agree. Older entries are dropped when their series is touched and by a sweep of every series once per
//! minute of event time; every tier is also capped in length, so the state grows with devices × GPUs ×
//! retention and never with the number of heartbeats (or with an agent whose clock runs wild).
//!
//! A query for a time range answers from the finest tier that covers each part of it: hour buckets for the
//! part older than a day, minute buckets for the part older than an hour, raw samples after that.

use std::collections::{HashMap, VecDeque};

use hwledger_engine::event::{DeviceId, Event, EventRecord, GpuReading, UnixMillis};
use serde::{Deserialize, Serialize};

use crate::projection::{Digest, Projection, StateDecodeError, decode_state, digest_of, encode_state, sorted};

/// One minute, in ms.
pub const MINUTE_MS: i64 = 60_000;
/// One hour, in ms.
pub const HOUR_MS: i64 = 60 * MINUTE_MS;
/// One day, in ms.
pub const DAY_MS: i64 = 24 * HOUR_MS;
/// Raw samples are kept for this long.
pub const RAW_RETENTION_MS: i64 = HOUR_MS;
/// Minute buckets are kept for this long.
pub const MINUTE_RETENTION_MS: i64 = DAY_MS;
/// Hour buckets are kept for this long.
pub const HOUR_RETENTION_MS: i64 = 30 * DAY_MS;
/// Most raw samples kept per GPU: one a second for the raw hour. A faster agent loses its oldest raw samples
/// (its minute buckets still have everything).
pub const MAX_RAW_PER_GPU: usize = 3_600;
/// Most minute buckets per GPU: a day, plus an hour of slack for samples stamped ahead of the ledger's time.
const MAX_MINUTE_BUCKETS: usize = 1_440 + 60;
/// Most hour buckets per GPU: 30 days, plus a day of slack for samples stamped ahead of the ledger's time.
const MAX_HOUR_BUCKETS: usize = 720 + 24;
/// How often (in event time) every series is swept of expired entries, not only the ones being written.
const SWEEP_EVERY_MS: i64 = MINUTE_MS;

/// One GPU's readings at one moment (`None`: the tool reported the value as unavailable).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// When the agent read the GPU (unix ms; for probes, when the probe was recorded).
    pub sampled_at: UnixMillis,
    /// VRAM in use, MiB.
    pub vram_used_mib: Option<u64>,
    /// VRAM total, MiB.
    pub vram_total_mib: Option<u64>,
    /// Utilisation, percent.
    pub utilization_pct: Option<f32>,
    /// Temperature, °C.
    pub temperature_c: Option<f32>,
    /// Power draw, W.
    pub power_w: Option<f32>,
}

impl Sample {
    fn from_reading(sampled_at: UnixMillis, r: &GpuReading) -> Sample {
        Sample {
            sampled_at,
            vram_used_mib: r.vram_used_mib,
            vram_total_mib: r.vram_total_mib,
            utilization_pct: r.utilization_pct,
            temperature_c: r.temperature_c,
            power_w: r.power_w,
        }
    }
}

/// Running min / sum / max of one metric in a bucket (mean = sum / count).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Agg {
    /// Samples that reported the metric.
    pub count: u32,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Sum of values.
    pub sum: f64,
}

impl Agg {
    fn add(&mut self, v: Option<f64>) {
        let Some(v) = v else { return };
        if self.count == 0 {
            self.min = v;
            self.max = v;
        } else {
            self.min = self.min.min(v);
            self.max = self.max.max(v);
        }
        self.sum += v;
        self.count = self.count.saturating_add(1);
    }

    fn stat(&self) -> Option<Stat> {
        (self.count > 0).then(|| Stat { min: self.min, mean: self.sum / f64::from(self.count), max: self.max })
    }
}

/// A downsampled stretch of one GPU's telemetry.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    /// Start of the bucket (unix ms, aligned to its width).
    pub start: UnixMillis,
    /// Samples folded in.
    pub samples: u32,
    /// VRAM in use, MiB.
    pub vram_used_mib: Agg,
    /// Utilisation, percent.
    pub utilization_pct: Agg,
    /// Temperature, °C.
    pub temperature_c: Agg,
    /// Power, W.
    pub power_w: Agg,
}

impl Bucket {
    fn new(start: UnixMillis) -> Bucket {
        Bucket {
            start,
            samples: 0,
            vram_used_mib: Agg::default(),
            utilization_pct: Agg::default(),
            temperature_c: Agg::default(),
            power_w: Agg::default(),
        }
    }

    fn add(&mut self, s: &Sample) {
        self.samples = self.samples.saturating_add(1);
        // u64 MiB → f64 is exact below 2^53 MiB (8 ZiB).
        self.vram_used_mib.add(s.vram_used_mib.map(|v| v as f64));
        self.utilization_pct.add(s.utilization_pct.map(f64::from));
        self.temperature_c.add(s.temperature_c.map(f64::from));
        self.power_w.add(s.power_w.map(f64::from));
    }
}

/// The history of one GPU.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct GpuSeries {
    index: u32,
    /// The sample with the greatest `sampled_at` (the later event wins a tie).
    latest: Sample,
    /// Sorted by `sampled_at`.
    raw: VecDeque<Sample>,
    /// 1-minute buckets.
    minutes: Tier,
    /// 1-hour buckets.
    hours: Tier,
    /// A lower bound of the event time at which the oldest entry of some tier falls out of retention: below it
    /// [`GpuSeries::expire`] has nothing to do and skips reading the tiers' fronts, which are cold in memory
    /// (one cache miss per GPU per heartbeat otherwise). Derived, so neither stored nor compared nor digested;
    /// `i64::MIN` (after decoding) means "check".
    #[serde(skip, default = "unknown_horizon")]
    expiry_horizon: UnixMillis,
}

fn unknown_horizon() -> UnixMillis {
    UnixMillis::MIN
}

/// `t` as an expiry horizon. Near `i64::MIN` the retention cuts (`newest_at.saturating_sub(..)`) saturate and
/// stop being the inverse of `t + retention`: there the horizon is "always check".
fn horizon(t: UnixMillis) -> UnixMillis {
    const SATURATING: UnixMillis = UnixMillis::MIN + 2 * HOUR_RETENTION_MS;
    if t < SATURATING { UnixMillis::MIN } else { t }
}

/// Equal histories; the derived expiry horizon does not count.
impl PartialEq for GpuSeries {
    fn eq(&self, other: &GpuSeries) -> bool {
        self.index == other.index
            && self.latest == other.latest
            && self.raw == other.raw
            && self.minutes == other.minutes
            && self.hours == other.hours
    }
}

/// One tier of buckets, sorted by start. The newest bucket — the one almost every sample lands in — is held
/// inline (`open`), beside the series' other hot fields, and only moves to `closed` when a later bucket
/// starts: a heartbeat then updates memory the series already has in cache instead of a deque's cold tail
/// (which cost a cache miss per GPU per tier per heartbeat). It is serialized as the plain sorted list of
/// buckets, so the state's bytes and digest do not depend on this split.
#[derive(Debug, Clone, Default, PartialEq)]
struct Tier {
    /// Every bucket but the newest, sorted by start.
    closed: VecDeque<Bucket>,
    /// The bucket with the greatest start (`None` only when the tier is empty).
    open: Option<Bucket>,
}

impl Tier {
    fn len(&self) -> usize {
        self.closed.len() + usize::from(self.open.is_some())
    }

    /// Oldest first.
    fn iter(&self) -> impl DoubleEndedIterator<Item = &Bucket> {
        self.closed.iter().chain(self.open.iter())
    }

    fn front(&self) -> Option<&Bucket> {
        self.closed.front().or(self.open.as_ref())
    }

    /// Adds `s` to the bucket of width `width` it falls in, keeping the tier sorted and at most `cap` long
    /// (dropping the oldest buckets).
    fn add(&mut self, s: &Sample, width: i64, cap: usize) {
        let start = align(s.sampled_at, width);
        match &mut self.open {
            Some(open) if open.start == start => open.add(s),
            Some(open) if open.start < start => {
                let mut fresh = Bucket::new(start);
                fresh.add(s);
                let done = std::mem::replace(open, fresh);
                self.closed.push_back(done);
            }
            Some(_) => add_to_buckets(&mut self.closed, s, width),
            None => {
                let mut fresh = Bucket::new(start);
                fresh.add(s);
                self.open = Some(fresh);
            }
        }
        while self.len() > cap && self.closed.pop_front().is_some() {}
    }

    /// Drops the buckets that end at or before `from`.
    fn expire(&mut self, from: UnixMillis, width: i64) {
        let expired = |b: &Bucket| b.start.saturating_add(width) <= from;
        while self.closed.front().is_some_and(expired) {
            self.closed.pop_front();
        }
        if self.closed.is_empty() && self.open.as_ref().is_some_and(expired) {
            self.open = None;
        }
    }
}

impl Serialize for Tier {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for Tier {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Tier, D::Error> {
        let mut closed = VecDeque::<Bucket>::deserialize(deserializer)?;
        if !closed.iter().zip(closed.iter().skip(1)).all(|(a, b)| a.start < b.start) {
            return Err(serde::de::Error::custom("buckets are not sorted by start"));
        }
        let open = closed.pop_back();
        Ok(Tier { closed, open })
    }
}

fn align(t: UnixMillis, width: i64) -> UnixMillis {
    t.div_euclid(width).saturating_mul(width)
}

fn align_up(t: UnixMillis, width: i64) -> UnixMillis {
    let a = align(t, width);
    if a == t { a } else { a.saturating_add(width) }
}

/// Adds `s` to the bucket of width `width` it falls in, keeping `buckets` sorted.
fn add_to_buckets(buckets: &mut VecDeque<Bucket>, s: &Sample, width: i64) {
    let start = align(s.sampled_at, width);
    // Samples almost always land in the newest bucket: check it before searching.
    match buckets.back_mut() {
        Some(last) if last.start == start => last.add(s),
        Some(last) if last.start < start => {
            let mut b = Bucket::new(start);
            b.add(s);
            buckets.push_back(b);
        }
        None => {
            let mut b = Bucket::new(start);
            b.add(s);
            buckets.push_back(b);
        }
        Some(_) => {
            let pos = buckets.partition_point(|b| b.start < start);
            match buckets.get_mut(pos) {
                Some(b) if b.start == start => b.add(s),
                _ => {
                    let mut b = Bucket::new(start);
                    b.add(s);
                    buckets.insert(pos, b);
                }
            }
        }
    }
}

impl GpuSeries {
    fn new(index: u32, first: Sample) -> GpuSeries {
        GpuSeries {
            index,
            latest: first,
            raw: VecDeque::new(),
            minutes: Tier::default(),
            hours: Tier::default(),
            expiry_horizon: UnixMillis::MAX,
        }
    }

    fn add(&mut self, s: Sample, newest_at: UnixMillis) {
        // `latest` is the greatest sample time seen, so a sample at or after it goes at the end of `raw` without
        // reading `raw`'s tail (cold memory); an earlier one is inserted in order, after equal times.
        let in_order = s.sampled_at >= self.latest.sampled_at;
        if in_order {
            self.latest = s;
        }
        if s.sampled_at > newest_at.saturating_sub(RAW_RETENTION_MS) {
            if in_order {
                self.raw.push_back(s);
            } else {
                let pos = self.raw.partition_point(|r| r.sampled_at <= s.sampled_at);
                self.raw.insert(pos, s);
            }
            while self.raw.len() > MAX_RAW_PER_GPU {
                self.raw.pop_front();
            }
            self.lower_horizon(s.sampled_at.saturating_add(RAW_RETENTION_MS));
        }
        let minute = align(s.sampled_at, MINUTE_MS).saturating_add(MINUTE_MS);
        if minute > newest_at.saturating_sub(MINUTE_RETENTION_MS) {
            self.minutes.add(&s, MINUTE_MS, MAX_MINUTE_BUCKETS);
            self.lower_horizon(minute.saturating_add(MINUTE_RETENTION_MS));
        }
        let hour = align(s.sampled_at, HOUR_MS).saturating_add(HOUR_MS);
        if hour > newest_at.saturating_sub(HOUR_RETENTION_MS) {
            self.hours.add(&s, HOUR_MS, MAX_HOUR_BUCKETS);
            self.lower_horizon(hour.saturating_add(HOUR_RETENTION_MS));
        }
    }

    /// An entry that expires at `t` was added: the horizon is at most `t`. (Entries dropped by a cap only
    /// make the horizon more conservative, which costs one check.)
    fn lower_horizon(&mut self, t: UnixMillis) {
        self.expiry_horizon = self.expiry_horizon.min(horizon(t));
    }

    /// Drops entries that fell out of their tier's retention.
    fn expire(&mut self, newest_at: UnixMillis) {
        if newest_at < self.expiry_horizon {
            return;
        }
        let raw_from = newest_at.saturating_sub(RAW_RETENTION_MS);
        while self.raw.front().is_some_and(|s| s.sampled_at <= raw_from) {
            self.raw.pop_front();
        }
        self.minutes.expire(newest_at.saturating_sub(MINUTE_RETENTION_MS), MINUTE_MS);
        self.hours.expire(newest_at.saturating_sub(HOUR_RETENTION_MS), HOUR_MS);
        // Each tier's front expires once `newest_at` reaches its time plus the tier's retention (the
        // conditions above, solved for `newest_at`).
        let raw = self.raw.front().map(|s| s.sampled_at.saturating_add(RAW_RETENTION_MS));
        let minute =
            self.minutes.front().map(|b| b.start.saturating_add(MINUTE_MS).saturating_add(MINUTE_RETENTION_MS));
        let hour = self.hours.front().map(|b| b.start.saturating_add(HOUR_MS).saturating_add(HOUR_RETENTION_MS));
        self.expiry_horizon = [raw, minute, hour].into_iter().flatten().min().map_or(UnixMillis::MAX, horizon);
    }

    fn retained(&self) -> usize {
        self.raw.len() + self.minutes.len() + self.hours.len()
    }
}

/// Statistics of one metric over a point.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Stat {
    /// Smallest value.
    pub min: f64,
    /// Mean.
    pub mean: f64,
    /// Largest value.
    pub max: f64,
}

/// The tier a history point comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    /// One sample.
    Raw,
    /// A 1-minute bucket.
    Minute,
    /// A 1-hour bucket.
    Hour,
}

/// One point of a GPU's history.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Point {
    /// Sample time, or the bucket's start (unix ms).
    pub at: UnixMillis,
    /// Which tier.
    pub resolution: Resolution,
    /// Samples in the point.
    pub samples: u32,
    /// VRAM in use, MiB.
    pub vram_used_mib: Option<Stat>,
    /// Utilisation, percent.
    pub utilization_pct: Option<Stat>,
    /// Temperature, °C.
    pub temperature_c: Option<Stat>,
    /// Power, W.
    pub power_w: Option<Stat>,
}

impl Point {
    fn raw(s: &Sample) -> Point {
        let one = |v: Option<f64>| v.map(|v| Stat { min: v, mean: v, max: v });
        Point {
            at: s.sampled_at,
            resolution: Resolution::Raw,
            samples: 1,
            vram_used_mib: one(s.vram_used_mib.map(|v| v as f64)),
            utilization_pct: one(s.utilization_pct.map(f64::from)),
            temperature_c: one(s.temperature_c.map(f64::from)),
            power_w: one(s.power_w.map(f64::from)),
        }
    }

    fn bucket(b: &Bucket, resolution: Resolution) -> Point {
        Point {
            at: b.start,
            resolution,
            samples: b.samples,
            vram_used_mib: b.vram_used_mib.stat(),
            utilization_pct: b.utilization_pct.stat(),
            temperature_c: b.temperature_c.stat(),
            power_w: b.power_w.stat(),
        }
    }
}

/// One GPU's latest sample and history in a range.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuTelemetry {
    /// GPU index on its host.
    pub index: u32,
    /// Latest sample.
    pub latest: Sample,
    /// History points in the range, oldest first.
    pub points: Vec<Point>,
}

/// A device's telemetry in a range.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceTelemetry {
    /// Device id.
    pub device_id: DeviceId,
    /// The event time retention is measured from (unix ms).
    pub newest_at: UnixMillis,
    /// Requested range start (unix ms, inclusive).
    pub from: UnixMillis,
    /// Requested range end (unix ms, inclusive).
    pub to: UnixMillis,
    /// GPUs, by index.
    pub gpus: Vec<GpuTelemetry>,
}

/// The latest sample of one GPU of the fleet.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatestSample {
    /// Device id.
    pub device_id: DeviceId,
    /// GPU index.
    pub index: u32,
    /// The sample.
    pub sample: Sample,
}

/// The snapshots projection.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshots {
    /// Greatest `recorded_at` applied: retention is measured back from it.
    newest_at: UnixMillis,
    /// `newest_at` at the last sweep of every series.
    last_sweep_at: UnixMillis,
    /// Per device, its GPUs sorted by index.
    devices: HashMap<DeviceId, Vec<GpuSeries>>,
}

#[derive(Serialize)]
struct Canonical<'a> {
    newest_at: UnixMillis,
    last_sweep_at: UnixMillis,
    devices: Vec<(&'a DeviceId, &'a Vec<GpuSeries>)>,
}

impl Snapshots {
    fn record(&mut self, device_id: &str, sampled_at: UnixMillis, readings: &[GpuReading]) {
        if readings.is_empty() {
            return;
        }
        let newest_at = self.newest_at;
        let gpus = match self.devices.get_mut(device_id) {
            Some(g) => g,
            None => self.devices.entry(device_id.to_owned()).or_default(),
        };
        for r in readings {
            let s = Sample::from_reading(sampled_at, r);
            let pos = gpus.partition_point(|g| g.index < r.index);
            let series = match gpus.get_mut(pos) {
                Some(g) if g.index == r.index => g,
                _ => {
                    gpus.insert(pos, GpuSeries::new(r.index, s));
                    match gpus.get_mut(pos) {
                        Some(g) => g,
                        None => continue,
                    }
                }
            };
            series.add(s, newest_at);
            series.expire(newest_at);
        }
    }

    fn sweep(&mut self) {
        let newest_at = self.newest_at;
        for gpus in self.devices.values_mut() {
            for g in gpus.iter_mut() {
                g.expire(newest_at);
            }
        }
        self.last_sweep_at = newest_at;
    }

    /// The event time retention is measured from.
    pub fn newest_at(&self) -> UnixMillis {
        self.newest_at
    }

    /// A device's telemetry between `from` and `to` (inclusive, unix ms), for one GPU or all. `None` if the
    /// device never reported telemetry.
    pub fn telemetry(
        &self,
        device_id: &str,
        gpu: Option<u32>,
        from: UnixMillis,
        to: UnixMillis,
    ) -> Option<DeviceTelemetry> {
        let gpus = self.devices.get(device_id)?;
        // Tier boundaries, aligned so the tiers neither overlap nor leave gaps.
        let minute_cut = align_up(self.newest_at.saturating_sub(MINUTE_RETENTION_MS), HOUR_MS);
        let raw_cut_all = align_up(self.newest_at.saturating_sub(RAW_RETENTION_MS), MINUTE_MS);
        let in_range = |t: UnixMillis| t >= from && t <= to;
        let out = gpus
            .iter()
            .filter(|g| gpu.is_none_or(|i| i == g.index))
            .map(|g| {
                // If the raw cap dropped samples inside the raw hour, minute buckets cover that stretch.
                let raw_cut = match g.raw.front() {
                    Some(first) if g.raw.len() >= MAX_RAW_PER_GPU => {
                        raw_cut_all.max(align_up(first.sampled_at, MINUTE_MS))
                    }
                    _ => raw_cut_all,
                };
                let mut points = Vec::new();
                points.extend(
                    g.hours
                        .iter()
                        .filter(|b| b.start.saturating_add(HOUR_MS) <= minute_cut && in_range(b.start))
                        .map(|b| Point::bucket(b, Resolution::Hour)),
                );
                points.extend(
                    g.minutes
                        .iter()
                        .filter(|b| b.start >= minute_cut && b.start < raw_cut && in_range(b.start))
                        .map(|b| Point::bucket(b, Resolution::Minute)),
                );
                points
                    .extend(g.raw.iter().filter(|s| s.sampled_at >= raw_cut && in_range(s.sampled_at)).map(Point::raw));
                GpuTelemetry { index: g.index, latest: g.latest, points }
            })
            .collect();
        Some(DeviceTelemetry { device_id: device_id.to_owned(), newest_at: self.newest_at, from, to, gpus: out })
    }

    /// The latest sample of every GPU of the fleet, sorted by device and index.
    pub fn latest(&self) -> Vec<LatestSample> {
        let mut out: Vec<LatestSample> = self
            .devices
            .iter()
            .flat_map(|(id, gpus)| {
                gpus.iter().map(move |g| LatestSample { device_id: id.clone(), index: g.index, sample: g.latest })
            })
            .collect();
        out.sort_unstable_by(|a, b| a.device_id.cmp(&b.device_id).then(a.index.cmp(&b.index)));
        out
    }

    /// The latest samples of one device's GPUs, by index.
    pub fn latest_of(&self, device_id: &str) -> impl Iterator<Item = (u32, &Sample)> {
        self.devices.get(device_id).into_iter().flatten().map(|g| (g.index, &g.latest))
    }

    /// Raw samples plus buckets held across the fleet: bounded by GPUs × retention, whatever the heartbeat count.
    pub fn retained_points(&self) -> usize {
        self.devices.values().flatten().map(GpuSeries::retained).sum()
    }
}

impl Projection for Snapshots {
    fn name(&self) -> &'static str {
        "snapshots"
    }

    fn version(&self) -> u32 {
        1
    }

    fn apply(&mut self, record: &EventRecord) {
        self.newest_at = self.newest_at.max(record.recorded_at);
        match &record.event {
            Event::TelemetryRecorded { device_id, sampled_at, gpus } => self.record(device_id, *sampled_at, gpus),
            Event::HostProbed { device_id, ok: true, gpus, .. } => self.record(device_id, record.recorded_at, gpus),
            _ => {}
        }
        if self.newest_at.saturating_sub(self.last_sweep_at) >= SWEEP_EVERY_MS {
            self.sweep();
        }
    }

    fn digest(&self) -> Digest {
        digest_of(&Canonical {
            newest_at: self.newest_at,
            last_sweep_at: self.last_sweep_at,
            devices: sorted(&self.devices),
        })
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

    fn reading(index: u32, util: f32, vram: u64) -> GpuReading {
        GpuReading {
            index,
            vram_used_mib: Some(vram),
            vram_total_mib: Some(24_000),
            utilization_pct: Some(util),
            temperature_c: Some(50.0),
            power_w: None,
        }
    }

    fn telemetry(seq: u64, at: UnixMillis, device: &str, gpus: Vec<GpuReading>) -> EventRecord {
        EventRecord {
            seq,
            recorded_at: at,
            command_id: format!("c{seq}"),
            actor: Actor::System,
            stream_version: seq,
            event: Event::TelemetryRecorded { device_id: device.into(), sampled_at: at, gpus },
        }
    }

    const T0: UnixMillis = 1_700_000_000_000 - 1_700_000_000_000 % DAY_MS;

    #[test]
    fn a_tier_is_stored_as_the_plain_sorted_list_of_its_buckets() {
        let sample = |at: UnixMillis, util: f32| Sample::from_reading(at, &reading(0, util, 100));
        let mut tier = Tier::default();
        // In order, a new bucket (closing the open one), and a late sample into an older bucket.
        for (at, util) in [(T0, 10.0), (T0 + 5_000, 20.0), (T0 + 3 * MINUTE_MS, 30.0), (T0 + 61_000, 40.0)] {
            tier.add(&sample(at, util), MINUTE_MS, 100);
        }
        let buckets: Vec<Bucket> = tier.iter().copied().collect();
        assert_eq!(buckets.iter().map(|b| b.start).collect::<Vec<_>>(), [T0, T0 + MINUTE_MS, T0 + 3 * MINUTE_MS]);
        assert_eq!(tier.open.map(|b| b.start), Some(T0 + 3 * MINUTE_MS));
        // The same bytes as the list (the layout of earlier checkpoints), and back to the same split.
        let bytes = encode_state(&tier);
        assert_eq!(bytes, encode_state(&buckets));
        let back: Tier = decode_state(&bytes).expect("decode");
        assert_eq!(back, tier);
        // The cap drops the oldest buckets, never the open one.
        tier.add(&sample(T0 + 4 * MINUTE_MS, 50.0), MINUTE_MS, 2);
        assert_eq!(tier.iter().map(|b| b.start).collect::<Vec<_>>(), [T0 + 3 * MINUTE_MS, T0 + 4 * MINUTE_MS]);
        // Expiry empties the closed buckets first, then the open one.
        tier.expire(T0 + 4 * MINUTE_MS, MINUTE_MS);
        assert_eq!(tier.iter().map(|b| b.start).collect::<Vec<_>>(), [T0 + 4 * MINUTE_MS]);
        tier.expire(T0 + 5 * MINUTE_MS, MINUTE_MS);
        assert_eq!(tier.len(), 0);
        // A stored list out of order is refused, not silently mis-split.
        let unsorted = encode_state(&vec![buckets[1], buckets[0]]);
        assert!(decode_state::<Tier>(&unsorted).is_err());
    }

    #[test]
    fn latest_and_buckets_have_min_mean_max() {
        let mut s = Snapshots::default();
        // Three samples in the same minute, 10 s apart, on GPU 0; one on GPU 1.
        s.apply(&telemetry(1, T0, "a", vec![reading(0, 10.0, 1_000), reading(1, 90.0, 5_000)]));
        s.apply(&telemetry(2, T0 + 10_000, "a", vec![reading(0, 20.0, 3_000)]));
        s.apply(&telemetry(3, T0 + 20_000, "a", vec![reading(0, 60.0, 2_000)]));
        let latest = s.latest();
        assert_eq!(latest.len(), 2);
        assert_eq!(latest[0].sample.utilization_pct, Some(60.0));
        assert_eq!(latest[1].sample.utilization_pct, Some(90.0));

        let g0 = &s.devices["a"][0];
        assert_eq!(g0.raw.len(), 3);
        assert_eq!(g0.minutes.len(), 1);
        assert_eq!(g0.hours.len(), 1);
        let m = *g0.minutes.iter().next().expect("a minute bucket");
        assert_eq!(m.samples, 3);
        assert_eq!(m.utilization_pct.stat(), Some(Stat { min: 10.0, mean: 30.0, max: 60.0 }));
        assert_eq!(m.vram_used_mib.stat(), Some(Stat { min: 1_000.0, mean: 2_000.0, max: 3_000.0 }));
        assert_eq!(m.power_w.stat(), None, "power was never reported");

        // Within the last hour everything comes back raw.
        let t = s.telemetry("a", Some(0), T0 - DAY_MS, T0 + DAY_MS).expect("device a");
        assert_eq!(t.gpus.len(), 1);
        assert_eq!(t.gpus[0].points.len(), 3);
        assert!(t.gpus[0].points.iter().all(|p| p.resolution == Resolution::Raw));
        assert!(s.telemetry("nope", None, 0, 1).is_none());
    }

    #[test]
    fn history_is_downsampled_by_age_and_bounded() {
        let mut s = Snapshots::default();
        // 40 days of one sample every 30 s for one GPU: 115 200 heartbeats.
        let step = 30_000;
        let n = 40 * DAY_MS / step;
        for i in 0..n {
            let at = T0 + i * step;
            s.apply(&telemetry(u64::try_from(i).unwrap_or(0) + 1, at, "a", vec![reading(0, (i % 100) as f32, 100)]));
        }
        let newest = T0 + (n - 1) * step;
        assert_eq!(s.newest_at(), newest);
        let g = &s.devices["a"][0];
        // Raw: samples strictly after newest − 1 h: 120 of them (one every 30 s).
        assert_eq!(g.raw.len(), 120);
        // Minute buckets overlapping the last day: 1 440 (+1 for the partly expired one at the boundary).
        assert!((1_440..=1_441).contains(&g.minutes.len()), "minutes: {}", g.minutes.len());
        assert!((720..=721).contains(&g.hours.len()), "hours: {}", g.hours.len());
        let retained = s.retained_points();
        assert!(retained < 2_300, "retained {retained} points for {n} heartbeats");

        let t = s.telemetry("a", None, 0, i64::MAX).expect("device a");
        let points = &t.gpus[0].points;
        let count = |r: Resolution| points.iter().filter(|p| p.resolution == r).count();
        assert_eq!(count(Resolution::Raw), 120);
        // Minute buckets from the hour boundary after newest − 1 day up to the minute boundary after newest − 1 h.
        let minute_cut = align_up(newest - DAY_MS, HOUR_MS);
        let raw_cut = align_up(newest - HOUR_MS, MINUTE_MS);
        assert_eq!(count(Resolution::Minute) as i64, (raw_cut - minute_cut) / MINUTE_MS);
        // Times strictly increase across tiers: no overlap.
        assert!(points.windows(2).all(|w| w[0].at < w[1].at));
        // An hour bucket holds 120 samples of 0..99 cycling: mean of that window is well defined.
        let hour = points.iter().find(|p| p.resolution == Resolution::Hour).expect("hour buckets");
        assert_eq!(hour.samples, 120);
        // Nothing older than 30 days is kept.
        assert!(points.first().is_some_and(|p| p.at + HOUR_MS > newest - HOUR_RETENTION_MS));
    }

    #[test]
    fn out_of_order_samples_land_in_their_bucket() {
        let mut s = Snapshots::default();
        s.apply(&telemetry(1, T0 + 120_000, "a", vec![reading(0, 50.0, 1)]));
        let mut late = telemetry(2, T0 + 130_000, "a", vec![reading(0, 10.0, 1)]);
        if let Event::TelemetryRecorded { sampled_at, .. } = &mut late.event {
            *sampled_at = T0 + 5_000;
        }
        s.apply(&late);
        let g = &s.devices["a"][0];
        assert_eq!(g.latest.utilization_pct, Some(50.0), "an older sample does not replace the latest");
        assert_eq!(g.minutes.iter().map(|b| b.start).collect::<Vec<_>>(), vec![T0, T0 + 120_000]);
        assert_eq!(g.raw.iter().map(|r| r.sampled_at).collect::<Vec<_>>(), vec![T0 + 5_000, T0 + 120_000]);
        let decoded = Snapshots::decode(&s.encode()).expect("round trip");
        assert_eq!(decoded.digest(), s.digest());
    }
}
