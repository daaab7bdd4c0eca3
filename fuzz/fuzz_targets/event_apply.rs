//! Fuzz what happens to events after they decode: the engine's `state::apply` and all four projections'
//! `apply`, their digests, their persisted encodings and their read paths, over a sequence of arbitrary
//! (decodable) events. `hwledger import` and `verify` accept any chain-consistent log, and a chain can be
//! recomputed by whoever writes the file, so these folds see events `decide` would never have accepted
//! (negative or extreme times, unknown devices, absurd prices): they must stay total.
//!
//! Input: a sequence of `u16 LE length ‖ body` frames; bodies that do not decode are skipped.
#![no_main]

use std::time::Duration;

use hwledger_engine::codec::{decode_record, decode_value, encode_value};
use hwledger_engine::state::{State, apply};
use hwledger_projections::{GroupBy, Projection, ProjectionName, Projections};
use libfuzzer_sys::fuzz_target;

/// Bounds the work per input (the corpus holds a few hundred events at most).
const MAX_EVENTS: usize = 512;

fuzz_target!(|data: &[u8]| {
    let mut state = State::default();
    let mut projections = Projections::default();
    let mut rest = data;
    let mut applied = 0usize;
    // Reader clocks: the extremes, a realistic now, and the earliest, latest and last event times seen.
    let (mut earliest, mut latest, mut last) = (i64::MAX, i64::MIN, 0i64);
    while applied < MAX_EVENTS {
        let Some((len, tail)) = rest.split_first_chunk::<2>() else { break };
        let len = usize::from(u16::from_le_bytes(*len)).min(tail.len());
        let (body, tail) = tail.split_at(len);
        rest = tail;
        let Ok(record) = decode_record(body) else { continue };
        apply(&mut state, &record);
        projections.apply(&record);
        earliest = earliest.min(record.recorded_at);
        latest = latest.max(record.recorded_at);
        last = record.recorded_at;
        applied += 1;
    }
    // The decision-state snapshot (`S` in the store) round-trips.
    let snapshot = encode_value(&state);
    let back: State = decode_value(&snapshot).expect("a state snapshot decodes");
    assert_eq!(back, state, "state snapshot round-trips");
    // Every projection's persisted state decodes to the same digest.
    for name in ProjectionName::ALL {
        let p = projections.get(name);
        let digest = p.digest();
        let bytes = p.encode();
        let again = match name {
            ProjectionName::Registry => decode_digest::<hwledger_projections::Registry>(&bytes),
            ProjectionName::Snapshots => decode_digest::<hwledger_projections::Snapshots>(&bytes),
            ProjectionName::Cost => decode_digest::<hwledger_projections::Cost>(&bytes),
            ProjectionName::Dashboard => decode_digest::<hwledger_projections::Dashboard>(&bytes),
        };
        assert_eq!(again, digest, "{name} state round-trips");
    }
    // Read paths at those clocks.
    let mut times = vec![i64::MIN, 0, 1_700_000_000_000, i64::MAX, earliest, latest, last];
    times.sort_unstable();
    times.dedup();
    let heartbeat = Duration::from_secs(90);
    for &now in &times {
        let _ = projections.registry.devices(now, heartbeat);
        for window in [Duration::from_secs(86_400), Duration::from_secs(30 * 86_400), Duration::MAX] {
            for by in [GroupBy::None, GroupBy::Device, GroupBy::Backend, GroupBy::Day] {
                let _ = projections.cost.cost(now, window, by);
            }
        }
        let _ = projections.dashboard_view(state.last_seq, now, heartbeat);
        for id in state.devices.keys() {
            let _ = projections.registry.device(id, now, heartbeat);
            let _ = projections.snapshots.telemetry(id, None, i64::MIN, now);
            let _ = projections.snapshots.telemetry(id, Some(0), now.saturating_sub(3_600_000), now);
        }
    }
    let _ = projections.cost.jobs();
    let _ = projections.snapshots.latest();
});

fn decode_digest<P: Projection>(bytes: &[u8]) -> hwledger_projections::Digest {
    P::decode(bytes).expect("a projection state decodes").digest()
}
