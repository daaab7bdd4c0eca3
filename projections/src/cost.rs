//! The **cost** projection: jobs through their lifecycle (dispatched → started → completed | failed) and what
//! they cost; totals per device, per backend and per UTC day over a window; rental spend.
//!
//! ## How a job is priced
//!
//! Prices come only from events, never from a feed at read time:
//!
//! 1. the quote carried by `JobDispatched` (the rental offer, or an operator's price), else
//! 2. the device's rate (`DeviceRateSet`) in effect at dispatch, else
//! 3. the device's rate in effect when the job ended (a rate set while the job ran), else
//! 4. the job is *unpriced*: counted in `jobs_unpriced`, never guessed.
//!
//! ## Rounding
//!
//! `cost = duration_ms × micro_usd_per_hour / 3 600 000`, computed exactly in 128-bit integers and rounded
//! **half up** to a whole micro-USD, once per job (so per-job costs are what sums add up; no drift).
//! Duration runs from `JobStarted` to the end event, both by `recorded_at`; a job that failed before starting
//! lasted 0 ms and costs 0.
//!
//! ## Windows
//!
//! A job's cost belongs to the moment it ended: a window `(end − length, end]` and a UTC day contain the jobs
//! that *ended* in them. Jobs still running at the window's end are reported separately as an estimate
//! (`running_accrued_micro_usd`: what they would cost if they stopped then).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use hwledger_engine::event::{DeviceId, DeviceKind, Event, EventRecord, JobId, MicroUsd, UnixMillis};
use serde::{Deserialize, Serialize};

use crate::projection::{
    Digest, Projection, StateDecodeError, decode_state, digest_of, duration_ms, encode_state, sorted,
};

const MS_PER_HOUR: u128 = 3_600_000;
const MS_PER_DAY: i64 = 86_400_000;
/// The price source recorded when a job is priced from its device's rate rather than a quote.
pub const DEVICE_RATE_SOURCE: &str = "device_rate";

/// A job's lifecycle (the engine's own type: the same states, the same rules).
pub use hwledger_engine::state::JobStatus;

/// The hourly price a job is charged at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobPrice {
    /// Micro-USD per hour for the whole device/offer.
    pub micro_usd_per_hour: MicroUsd,
    /// The quote's source (`vast`, `rate`, ...) or [`DEVICE_RATE_SOURCE`].
    pub source: String,
}

/// A job as the cost projection stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Device it was sent to.
    pub device_id: DeviceId,
    /// Model it runs.
    pub model: String,
    /// VRAM it asked for, MiB.
    pub vram_mib: u64,
    /// Lifecycle.
    pub status: JobStatus,
    /// Seq of the dispatch (orders job listings).
    pub dispatched_seq: u64,
    /// `recorded_at` of the dispatch.
    pub dispatched_at: UnixMillis,
    /// `recorded_at` of the start.
    pub started_at: Option<UnixMillis>,
    /// `recorded_at` of the completion or failure.
    pub ended_at: Option<UnixMillis>,
    /// Price it is charged at, if known (see the module docs).
    pub price: Option<JobPrice>,
    /// Exit status reported at the end.
    pub exit_status: Option<i32>,
    /// Failure reason.
    pub failure_reason: Option<String>,
}

/// Rounds `duration_ms × micro_usd_per_hour / 3 600 000` half up (see the module docs).
pub fn cost_of_duration(duration_ms: u64, micro_usd_per_hour: MicroUsd) -> MicroUsd {
    let exact_numerator = u128::from(duration_ms) * u128::from(micro_usd_per_hour);
    let rounded = (exact_numerator + MS_PER_HOUR / 2) / MS_PER_HOUR;
    u64::try_from(rounded).unwrap_or(u64::MAX)
}

/// Milliseconds from `start` to `end` (0 if `end` is earlier), exact over the whole `i64` range: a log
/// written by hand can hold any times, and `end - start` in `i64` overflows for far-apart ones.
fn ms_between(start: UnixMillis, end: UnixMillis) -> u64 {
    u64::try_from(i128::from(end) - i128::from(start)).unwrap_or(0)
}

impl Job {
    /// Run time in ms: start to end, or start to `at` for a job still running at `at`; 0 if never started.
    pub fn duration_ms_at(&self, at: UnixMillis) -> u64 {
        match self.started_at {
            None => 0,
            Some(start) => {
                let end = self.ended_at.unwrap_or(at);
                ms_between(start, end)
            }
        }
    }

    /// The cost of a finished job, if priced.
    pub fn cost(&self) -> Option<MicroUsd> {
        let end = self.ended_at?;
        Some(cost_of_duration(self.duration_ms_at(end), self.price.as_ref()?.micro_usd_per_hour))
    }

    /// Whether the job was running (dispatched or started, not yet ended) at `at`.
    pub fn running_at(&self, at: UnixMillis) -> bool {
        self.dispatched_at <= at && self.ended_at.is_none_or(|e| e > at)
    }
}

/// What the cost projection needs to know about a device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct CostDevice {
    /// `local`, `ssh` or the rental provider.
    backend: String,
    /// Rentals are what "rental spend" adds up.
    rental: bool,
    /// Operator-set hourly rate.
    rate: Option<MicroUsd>,
}

/// The cost projection.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cost {
    jobs: HashMap<JobId, Job>,
    devices: HashMap<DeviceId, CostDevice>,
}

#[derive(Serialize)]
struct Canonical<'a> {
    jobs: Vec<(&'a JobId, &'a Job)>,
    devices: Vec<(&'a DeviceId, &'a CostDevice)>,
}

/// How a cost report groups its totals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    /// One total only.
    None,
    /// Per device.
    Device,
    /// Per backend (`local`, `ssh`, rental provider).
    Backend,
    /// Per UTC day the jobs ended (`YYYY-MM-DD`).
    Day,
}

/// One group of a cost report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CostGroup {
    /// Device id, backend or `YYYY-MM-DD`.
    pub key: String,
    /// Cost of the priced jobs that ended in the window, micro-USD.
    pub micro_usd: MicroUsd,
    /// The part of it spent on rental devices.
    pub rental_micro_usd: MicroUsd,
    /// Jobs that ended in the window (priced or not).
    pub jobs: u64,
    /// Their run time, ms.
    pub duration_ms: u64,
}

/// Costs over a window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CostReport {
    /// Window start (exclusive, unix ms).
    pub window_start: UnixMillis,
    /// Window end (inclusive, unix ms).
    pub window_end: UnixMillis,
    /// Grouping of `groups`.
    pub group_by: GroupBy,
    /// Cost of the priced jobs that ended in the window.
    pub total_micro_usd: MicroUsd,
    /// The part of it spent on rental devices.
    pub rental_spend_micro_usd: MicroUsd,
    /// Jobs that ended in the window.
    pub jobs_ended: u64,
    /// Of those, jobs with no price (not in the totals).
    pub jobs_unpriced: u64,
    /// Estimated cost of the priced jobs running at the window's end, had they stopped then.
    pub running_accrued_micro_usd: MicroUsd,
    /// Jobs running at the window's end.
    pub jobs_running: u64,
    /// Totals per group, sorted by key (empty for [`GroupBy::None`]).
    pub groups: Vec<CostGroup>,
}

/// A job as served to readers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobView {
    /// Job id.
    pub job_id: JobId,
    /// Device.
    pub device_id: DeviceId,
    /// Backend of the device.
    pub backend: String,
    /// Model.
    pub model: String,
    /// VRAM asked for, MiB.
    pub vram_mib: u64,
    /// Lifecycle.
    pub status: JobStatus,
    /// Dispatch time (unix ms).
    pub dispatched_at: UnixMillis,
    /// Start time.
    pub started_at: Option<UnixMillis>,
    /// End time.
    pub ended_at: Option<UnixMillis>,
    /// Run time of a finished job, ms.
    pub duration_ms: Option<u64>,
    /// Hourly price, micro-USD.
    pub micro_usd_per_hour: Option<MicroUsd>,
    /// Where the price came from.
    pub price_source: Option<String>,
    /// Cost of a finished, priced job, micro-USD.
    pub cost_micro_usd: Option<MicroUsd>,
    /// Exit status.
    pub exit_status: Option<i32>,
    /// Failure reason.
    pub failure_reason: Option<String>,
}

/// `YYYY-MM-DD` of the UTC day containing `at`.
pub fn utc_day(at: UnixMillis) -> String {
    let day = at.div_euclid(MS_PER_DAY);
    // 2 440 588 is the Julian day number of 1970-01-01.
    let julian = i32::try_from(day).ok().and_then(|d| d.checked_add(2_440_588));
    match julian.and_then(|j| time::Date::from_julian_day(j).ok()) {
        Some(d) => format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day()),
        // Beyond the calendar `time` supports (±9999 years): name the day by its number since the epoch.
        None => format!("epoch-day-{day}"),
    }
}

impl Cost {
    fn backend_of(&self, device_id: &str) -> (&str, bool) {
        match self.devices.get(device_id) {
            Some(d) => (d.backend.as_str(), d.rental),
            None => ("unknown", false),
        }
    }

    /// A job by id.
    pub fn job(&self, job_id: &str) -> Option<&Job> {
        self.jobs.get(job_id)
    }

    fn view(&self, job_id: &str, j: &Job) -> JobView {
        JobView {
            job_id: job_id.to_owned(),
            device_id: j.device_id.clone(),
            backend: self.backend_of(&j.device_id).0.to_owned(),
            model: j.model.clone(),
            vram_mib: j.vram_mib,
            status: j.status,
            dispatched_at: j.dispatched_at,
            started_at: j.started_at,
            ended_at: j.ended_at,
            duration_ms: j.ended_at.map(|e| j.duration_ms_at(e)),
            micro_usd_per_hour: j.price.as_ref().map(|p| p.micro_usd_per_hour),
            price_source: j.price.as_ref().map(|p| p.source.clone()),
            cost_micro_usd: j.cost(),
            exit_status: j.exit_status,
            failure_reason: j.failure_reason.clone(),
        }
    }

    /// Every job, in dispatch order.
    pub fn jobs(&self) -> Vec<JobView> {
        let mut all: Vec<(&JobId, &Job)> = self.jobs.iter().collect();
        all.sort_unstable_by_key(|(_, j)| j.dispatched_seq);
        all.into_iter().map(|(id, j)| self.view(id, j)).collect()
    }

    /// One job.
    pub fn job_view(&self, job_id: &str) -> Option<JobView> {
        self.jobs.get(job_id).map(|j| self.view(job_id, j))
    }

    /// Jobs dispatched or started, with their device's backend.
    pub fn active_jobs(&self) -> impl Iterator<Item = (&JobId, &Job, &str)> {
        self.jobs.iter().filter(|(_, j)| j.status.is_active()).map(|(id, j)| (id, j, self.backend_of(&j.device_id).0))
    }

    /// Costs of the jobs that ended in `(window_end − window, window_end]`, grouped.
    pub fn cost(&self, window_end: UnixMillis, window: Duration, group_by: GroupBy) -> CostReport {
        let window_start = window_end.saturating_sub(duration_ms(window));
        let mut report = CostReport {
            window_start,
            window_end,
            group_by,
            total_micro_usd: 0,
            rental_spend_micro_usd: 0,
            jobs_ended: 0,
            jobs_unpriced: 0,
            running_accrued_micro_usd: 0,
            jobs_running: 0,
            groups: Vec::new(),
        };
        let mut groups: BTreeMap<String, CostGroup> = BTreeMap::new();
        for j in self.jobs.values() {
            let (backend, rental) = self.backend_of(&j.device_id);
            match j.ended_at {
                Some(end) if end > window_start && end <= window_end => {
                    let cost = j.cost();
                    let micro_usd = cost.unwrap_or(0);
                    let rental_micro_usd = if rental { micro_usd } else { 0 };
                    report.jobs_ended += 1;
                    if cost.is_none() {
                        report.jobs_unpriced += 1;
                    }
                    report.total_micro_usd = report.total_micro_usd.saturating_add(micro_usd);
                    report.rental_spend_micro_usd = report.rental_spend_micro_usd.saturating_add(rental_micro_usd);
                    let key = match group_by {
                        GroupBy::None => continue,
                        GroupBy::Device => j.device_id.clone(),
                        GroupBy::Backend => backend.to_owned(),
                        GroupBy::Day => utc_day(end),
                    };
                    let g = groups.entry(key).or_insert_with_key(|k| CostGroup {
                        key: k.clone(),
                        micro_usd: 0,
                        rental_micro_usd: 0,
                        jobs: 0,
                        duration_ms: 0,
                    });
                    g.micro_usd = g.micro_usd.saturating_add(micro_usd);
                    g.rental_micro_usd = g.rental_micro_usd.saturating_add(rental_micro_usd);
                    g.jobs += 1;
                    g.duration_ms = g.duration_ms.saturating_add(j.duration_ms_at(end));
                }
                _ if j.running_at(window_end) => {
                    report.jobs_running += 1;
                    if let Some(p) = &j.price {
                        // Only the part that ran by the window's end: a job that ended later is cut at it.
                        let ran = match j.started_at {
                            Some(s) => ms_between(s, window_end),
                            _ => 0,
                        };
                        report.running_accrued_micro_usd = report
                            .running_accrued_micro_usd
                            .saturating_add(cost_of_duration(ran, p.micro_usd_per_hour));
                    }
                }
                _ => {}
            }
        }
        report.groups = groups.into_values().collect();
        report
    }

    /// Number of jobs ever dispatched.
    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    /// True when no job was ever dispatched.
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }
}

impl Projection for Cost {
    fn name(&self) -> &'static str {
        "cost"
    }

    fn version(&self) -> u32 {
        1
    }

    fn apply(&mut self, record: &EventRecord) {
        let at = record.recorded_at;
        match &record.event {
            Event::DeviceEnrolled { device_id, kind, .. } => {
                self.devices.insert(
                    device_id.clone(),
                    CostDevice {
                        backend: kind.backend().to_owned(),
                        rental: matches!(kind, DeviceKind::Rental { .. }),
                        rate: None,
                    },
                );
            }
            Event::DeviceRateSet { device_id, micro_usd_per_hour } => {
                if let Some(d) = self.devices.get_mut(device_id.as_str()) {
                    d.rate = Some(*micro_usd_per_hour);
                }
            }
            Event::JobDispatched { job_id, device_id, model, vram_mib, price } => {
                let price = match price {
                    Some(q) => Some(JobPrice { micro_usd_per_hour: q.micro_usd_per_hour, source: q.source.clone() }),
                    None => self.device_rate(device_id),
                };
                self.jobs.insert(
                    job_id.clone(),
                    Job {
                        device_id: device_id.clone(),
                        model: model.clone(),
                        vram_mib: *vram_mib,
                        status: JobStatus::Dispatched,
                        dispatched_seq: record.seq,
                        dispatched_at: at,
                        started_at: None,
                        ended_at: None,
                        price,
                        exit_status: None,
                        failure_reason: None,
                    },
                );
            }
            Event::JobStarted { job_id } => {
                if let Some(j) = self.jobs.get_mut(job_id.as_str()) {
                    j.status = JobStatus::Started;
                    j.started_at = Some(at);
                }
            }
            Event::JobCompleted { job_id, exit_status } => {
                self.end(job_id, at, JobStatus::Completed, Some(*exit_status), None)
            }
            Event::JobFailed { job_id, exit_status, reason } => {
                self.end(job_id, at, JobStatus::Failed, *exit_status, Some(reason));
            }
            _ => {}
        }
    }

    fn digest(&self) -> Digest {
        digest_of(&Canonical { jobs: sorted(&self.jobs), devices: sorted(&self.devices) })
    }

    fn encode(&self) -> Vec<u8> {
        encode_state(self)
    }

    fn decode(bytes: &[u8]) -> Result<Self, StateDecodeError> {
        decode_state(bytes)
    }
}

impl Cost {
    fn device_rate(&self, device_id: &str) -> Option<JobPrice> {
        let rate = self.devices.get(device_id)?.rate?;
        Some(JobPrice { micro_usd_per_hour: rate, source: DEVICE_RATE_SOURCE.to_owned() })
    }

    fn end(&mut self, job_id: &str, at: UnixMillis, status: JobStatus, exit: Option<i32>, reason: Option<&String>) {
        let late_price = match self.jobs.get(job_id) {
            Some(j) if j.price.is_none() => self.device_rate(&j.device_id),
            _ => None,
        };
        if let Some(j) = self.jobs.get_mut(job_id) {
            j.status = status;
            j.ended_at = Some(at);
            j.exit_status = exit;
            j.failure_reason = reason.cloned();
            if j.price.is_none() {
                j.price = late_price;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use hwledger_engine::Actor;
    use hwledger_engine::event::PriceQuote;

    use super::*;

    const H: i64 = 3_600_000;
    /// 2024-03-10T00:00:00Z.
    const DAY0: i64 = 1_710_028_800_000;

    struct Log {
        cost: Cost,
        seq: u64,
    }

    impl Log {
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
            self.cost.apply(&r);
        }
    }

    fn enroll(device: &str, kind: DeviceKind) -> Event {
        Event::DeviceEnrolled { device_id: device.into(), kind, hostname: None, labels: Default::default() }
    }

    fn dispatch(job: &str, device: &str, price: Option<MicroUsd>) -> Event {
        Event::JobDispatched {
            job_id: job.into(),
            device_id: device.into(),
            model: "llama".into(),
            vram_mib: 1_000,
            price: price.map(|p| PriceQuote {
                source: "vast".into(),
                micro_usd_per_hour: p,
                offer_id: Some("o-1".into()),
                quoted_at: 0,
            }),
        }
    }

    fn scenario() -> Cost {
        let mut log = Log { cost: Cost::default(), seq: 0 };
        log.at(DAY0, enroll("local-1", DeviceKind::Local));
        log.at(DAY0, enroll("rent-1", DeviceKind::Rental { provider: "vast".into(), instance_id: "i".into() }));
        log.at(DAY0, Event::DeviceRateSet { device_id: "local-1".into(), micro_usd_per_hour: 600_000 });
        // j1: local at the device rate, 90 min → 0.9 USD.
        log.at(DAY0 + H, dispatch("j1", "local-1", None));
        log.at(DAY0 + H, Event::JobStarted { job_id: "j1".into() });
        log.at(DAY0 + H + 90 * 60_000, Event::JobCompleted { job_id: "j1".into(), exit_status: 0 });
        // j2: rental at the quoted 1.999999 USD/h for 1 ms → 0.555… micro-USD, rounds half up to 1.
        log.at(DAY0 + 3 * H, dispatch("j2", "rent-1", Some(1_999_999)));
        log.at(DAY0 + 3 * H, Event::JobStarted { job_id: "j2".into() });
        log.at(DAY0 + 3 * H + 1, Event::JobFailed { job_id: "j2".into(), exit_status: Some(1), reason: "oom".into() });
        // j3: rental, 2 h at 1.5 USD/h, ends the next day → 3 USD.
        log.at(DAY0 + 23 * H, dispatch("j3", "rent-1", Some(1_500_000)));
        log.at(DAY0 + 23 * H, Event::JobStarted { job_id: "j3".into() });
        log.at(DAY0 + 25 * H, Event::JobCompleted { job_id: "j3".into(), exit_status: 0 });
        // j4: failed before starting: 0 ms, 0 USD.
        log.at(DAY0 + 25 * H, dispatch("j4", "rent-1", Some(1_500_000)));
        log.at(
            DAY0 + 25 * H,
            Event::JobFailed { job_id: "j4".into(), exit_status: None, reason: "no capacity".into() },
        );
        // j5: still running at 1 USD/h since DAY0 + 26 h.
        log.at(DAY0 + 26 * H, dispatch("j5", "local-1", Some(1_000_000)));
        log.at(DAY0 + 26 * H, Event::JobStarted { job_id: "j5".into() });
        // j6: unpriced (ssh device with no rate), 1 h.
        log.at(DAY0 + 26 * H, enroll("ssh-1", DeviceKind::Ssh { target: "u@h".into() }));
        log.at(DAY0 + 26 * H, dispatch("j6", "ssh-1", None));
        log.at(DAY0 + 26 * H, Event::JobStarted { job_id: "j6".into() });
        log.at(DAY0 + 27 * H, Event::JobCompleted { job_id: "j6".into(), exit_status: 0 });
        log.cost
    }

    #[test]
    fn rounding_is_half_up_per_job() {
        assert_eq!(cost_of_duration(90 * 60_000, 600_000), 900_000);
        assert_eq!(cost_of_duration(1, 1_999_999), 1);
        assert_eq!(cost_of_duration(1, 1_799_999), 0);
        assert_eq!(cost_of_duration(1, 1_800_000), 1, "exactly half rounds up");
        assert_eq!(cost_of_duration(u64::MAX, u64::MAX), u64::MAX, "saturates instead of wrapping");
    }

    #[test]
    fn jobs_have_durations_prices_and_costs() {
        let c = scenario();
        let jobs = c.jobs();
        let ids: Vec<&str> = jobs.iter().map(|j| j.job_id.as_str()).collect();
        assert_eq!(ids, ["j1", "j2", "j3", "j4", "j5", "j6"]);
        let j1 = &jobs[0];
        assert_eq!((j1.duration_ms, j1.cost_micro_usd), (Some(5_400_000), Some(900_000)));
        assert_eq!(j1.price_source.as_deref(), Some(DEVICE_RATE_SOURCE));
        assert_eq!(jobs[1].cost_micro_usd, Some(1));
        assert_eq!(jobs[1].status, JobStatus::Failed);
        assert_eq!(jobs[1].failure_reason.as_deref(), Some("oom"));
        assert_eq!(jobs[2].cost_micro_usd, Some(3_000_000));
        assert_eq!((jobs[3].duration_ms, jobs[3].cost_micro_usd), (Some(0), Some(0)));
        assert_eq!((jobs[4].status, jobs[4].cost_micro_usd), (JobStatus::Started, None));
        assert_eq!((jobs[5].cost_micro_usd, jobs[5].micro_usd_per_hour), (None, None));
        assert_eq!(c.active_jobs().count(), 1);
    }

    #[test]
    fn totals_per_window_device_backend_and_day() {
        let c = scenario();
        let end = DAY0 + 28 * H;
        let day = c.cost(end, Duration::from_secs(24 * 3600), GroupBy::Backend);
        // Ended in (DAY0 + 4 h, DAY0 + 28 h]: j3, j4, j6.
        assert_eq!(day.jobs_ended, 3);
        assert_eq!(day.jobs_unpriced, 1);
        assert_eq!(day.total_micro_usd, 3_000_000);
        assert_eq!(day.rental_spend_micro_usd, 3_000_000);
        // j5 has run 2 h at 1 USD/h by the window's end.
        assert_eq!((day.jobs_running, day.running_accrued_micro_usd), (1, 2_000_000));
        let keys: Vec<(&str, u64, u64)> = day.groups.iter().map(|g| (g.key.as_str(), g.micro_usd, g.jobs)).collect();
        assert_eq!(keys, [("ssh", 0, 1), ("vast", 3_000_000, 2)]);

        let week = c.cost(end, Duration::from_secs(7 * 24 * 3600), GroupBy::Device);
        assert_eq!(week.total_micro_usd, 3_900_001);
        assert_eq!(week.rental_spend_micro_usd, 3_000_001);
        let per_device: Vec<(&str, u64)> = week.groups.iter().map(|g| (g.key.as_str(), g.micro_usd)).collect();
        assert_eq!(per_device, [("local-1", 900_000), ("rent-1", 3_000_001), ("ssh-1", 0)]);

        let days = c.cost(end, Duration::from_secs(30 * 24 * 3600), GroupBy::Day);
        let per_day: Vec<(&str, u64, u64)> =
            days.groups.iter().map(|g| (g.key.as_str(), g.micro_usd, g.jobs)).collect();
        assert_eq!(per_day, [("2024-03-10", 900_001, 2), ("2024-03-11", 3_000_000, 3)]);

        // A window ending before j3 ended sees it as running: 1 h of 1.5 USD/h accrued.
        let earlier = c.cost(DAY0 + 24 * H, Duration::from_secs(3600), GroupBy::None);
        assert_eq!((earlier.jobs_ended, earlier.jobs_running, earlier.running_accrued_micro_usd), (0, 1, 1_500_000));
        assert!(earlier.groups.is_empty());
    }

    #[test]
    fn late_rate_prices_an_unpriced_job_and_state_round_trips() {
        let mut log = Log { cost: Cost::default(), seq: 0 };
        log.at(0, enroll("d", DeviceKind::Local));
        log.at(0, dispatch("j", "d", None));
        log.at(0, Event::JobStarted { job_id: "j".into() });
        log.at(H / 2, Event::DeviceRateSet { device_id: "d".into(), micro_usd_per_hour: 2_000_000 });
        log.at(H, Event::JobCompleted { job_id: "j".into(), exit_status: 0 });
        assert_eq!(log.cost.job("j").and_then(Job::cost), Some(2_000_000));
        let decoded = Cost::decode(&log.cost.encode()).expect("round trip");
        assert_eq!(decoded, log.cost);
        assert_eq!(decoded.digest(), log.cost.digest());
        assert_eq!(utc_day(DAY0 - 1), "2024-03-09");
        assert_eq!(utc_day(i64::MAX), format!("epoch-day-{}", i64::MAX / 86_400_000));
    }
}
