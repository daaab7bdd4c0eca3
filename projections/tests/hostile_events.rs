//! Regression tests from fuzzing (`fuzz/fuzz_targets/event_apply.rs`): events that `decide` would never
//! accept but that a hand-made log can carry — `hwledger import` and `verify` accept any chain-consistent
//! export, and whoever writes the file can recompute the chain. The projections must fold them and answer
//! reads without panicking or overflowing, whatever the times in them and whatever the reader's clock.

use std::time::Duration;

use hwledger_engine::event::{Actor, DeviceKind, Event, EventRecord, PriceQuote, UnixMillis};
use hwledger_projections::{GroupBy, Projections};

/// A realistic reader's clock: 2023-11-14.
const NOW: UnixMillis = 1_700_000_000_000;

fn fold(events: &[(UnixMillis, Event)]) -> Projections {
    let mut p = Projections::default();
    for (i, (at, event)) in events.iter().enumerate() {
        let seq = u64::try_from(i).expect("few events") + 1;
        p.apply(&EventRecord {
            seq,
            recorded_at: *at,
            command_id: format!("c{seq}"),
            actor: Actor::System,
            stream_version: 1,
            event: event.clone(),
        });
    }
    p
}

/// Found by `event_apply` (crash-15924fca…: the frozen v1 ledger with one job's start time mutated): the cost of
/// a priced job still running at the window's end was computed as `window_end - started_at` in plain `i64`, which
/// overflows (a panic in debug builds, a wrapped nonsense value in release) for a start time far in the past.
#[test]
fn a_running_job_started_at_the_dawn_of_time_is_costed_exactly_without_overflow() {
    let p = fold(&[
        (
            0,
            Event::DeviceEnrolled {
                device_id: "box".into(),
                kind: DeviceKind::Local,
                hostname: None,
                labels: Default::default(),
            },
        ),
        (
            0,
            Event::JobDispatched {
                job_id: "j".into(),
                device_id: "box".into(),
                model: "m".into(),
                vram_mib: 1,
                price: Some(PriceQuote {
                    source: "rate".into(),
                    micro_usd_per_hour: 1_000_000,
                    offer_id: None,
                    quoted_at: 0,
                }),
            },
        ),
        (i64::MIN + 1, Event::JobStarted { job_id: "j".into() }),
    ]);
    for by in [GroupBy::None, GroupBy::Device, GroupBy::Backend, GroupBy::Day] {
        let report = p.cost.cost(NOW, Duration::from_secs(86_400), by);
        assert_eq!(report.jobs_running, 1);
        // It has run for NOW - (i64::MIN + 1) ms, more than i64::MAX ms but well within u64: costed exactly.
        let ran = u64::try_from(NOW).expect("positive") + u64::try_from(i64::MAX).expect("positive");
        assert_eq!(report.running_accrued_micro_usd, hwledger_projections::cost::cost_of_duration(ran, 1_000_000));
    }
    let _ = p.dashboard_view(3, NOW, Duration::from_secs(90));
    let _ = p.dashboard_view(3, i64::MAX, Duration::from_secs(90));
}
