//! Fuzz command JSON and the rules: bytes are parsed as the front door and `hwledger submit` parse them
//! (one submission, an array, or JSON lines, unknown fields refused), and every submission that parses is
//! decided, in order, by `decide` against a small fleet (enrolled, active and decommissioned devices, jobs in
//! every state, a certificate, live and spent bootstrap tokens) as each kind of actor. Accepted events are
//! applied as the ledger would, so later submissions see them. Invariants checked:
//!
//! - parsing and deciding never panic;
//! - an auditor is never allowed to write, and an agent never speaks for another device;
//! - every accepted event encodes to a body the decoder reads back (≤ 1 MiB), and its free text is bounded
//!   and free of control characters, as `decide` promises for everything it stores.
#![no_main]

use std::sync::LazyLock;

use hwledger_engine::codec::{decode_record, encode_record};
use hwledger_engine::decide::{MAX_TEXT_LEN, command_stream};
use hwledger_engine::event::{Actor, CertRole, Event, EventRecord};
use hwledger_engine::state::{State, apply};
use hwledger_engine::testing::{dispatched, enrolled, given, registered};
use hwledger_engine::{Context, Submission, decide};
use libfuzzer_sys::fuzz_target;

/// SHA-256 of a bootstrap token, as the ledger stores it (`fuzz-token` is live, `fuzz-spent` used).
fn token_hash(token: &str) -> [u8; 32] {
    hwledger_wire::pki::TokenHash::of(token).0
}

static FLEET: LazyLock<State> = LazyLock::new(|| {
    let job_started = "job-started";
    given([
        enrolled("dev-1"),
        registered("dev-1", 24_576),
        enrolled("dev-2"),
        enrolled("dev-gone"),
        Event::DeviceDecommissioned { device_id: "dev-gone".into(), reason: "retired".into() },
        dispatched("job-1", "dev-1"),
        dispatched(job_started, "dev-1"),
        Event::JobStarted { job_id: job_started.into() },
        dispatched("job-done", "dev-1"),
        Event::JobStarted { job_id: "job-done".into() },
        Event::JobCompleted { job_id: "job-done".into(), exit_status: 0 },
        Event::CertificateIssued {
            role: CertRole::Agent("dev-1".into()),
            fingerprint: [0x11; 32],
            serial: "01".into(),
            not_after: 9_000_000_000_000,
        },
        Event::BootstrapTokenCreated {
            token_hash: token_hash("fuzz-token"),
            device_id: "dev-new".into(),
            expires_at: 9_000_000_000_000,
        },
        Event::BootstrapTokenCreated {
            token_hash: token_hash("fuzz-spent"),
            device_id: "dev-2".into(),
            expires_at: 9_000_000_000_000,
        },
        Event::BootstrapTokenUsed { token_hash: token_hash("fuzz-spent") },
        Event::HostKeyPinned { device_id: "dev-2".into(), key_fingerprint: "SHA256:abc".into() },
    ])
    .state()
    .clone()
});

/// Parses like `hwledger submit`: an array, one object, or JSON lines (lines that do not parse are skipped
/// here; the CLI refuses the whole input).
fn submissions(text: &str) -> Vec<Submission> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        return serde_json::from_str(trimmed).unwrap_or_default();
    }
    if let Ok(one) = serde_json::from_str::<Submission>(trimmed) {
        return vec![one];
    }
    text.lines().filter_map(|l| serde_json::from_str(l).ok()).take(64).collect()
}

fn actors() -> [Actor; 5] {
    [
        Actor::System,
        Actor::Operator("op".into()),
        Actor::Agent("dev-1".into()),
        Actor::Agent("dev-gone".into()),
        Actor::Auditor("aud".into()),
    ]
}

/// The device an event is about: its own device id, or the device of the job it concerns.
fn device_of<'a>(state: &'a State, event: &'a Event) -> Option<&'a str> {
    match event {
        Event::DeviceEnrolled { device_id, .. }
        | Event::DeviceRegistered { device_id, .. }
        | Event::TelemetryRecorded { device_id, .. }
        | Event::DeviceDecommissioned { device_id, .. }
        | Event::DeviceRateSet { device_id, .. }
        | Event::HostKeyPinned { device_id, .. }
        | Event::HostProbed { device_id, .. }
        | Event::JobDispatched { device_id, .. } => Some(device_id.as_str()),
        Event::JobStarted { job_id } | Event::JobCompleted { job_id, .. } | Event::JobFailed { job_id, .. } => {
            state.jobs.get(job_id).map(|j| j.device_id.as_str())
        }
        _ => None,
    }
}

/// Every string inside an event (walking its JSON form), to check the bounds `decide` promises.
fn strings(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(a) => a.iter().for_each(|v| strings(v, out)),
        serde_json::Value::Object(o) => o.iter().for_each(|(k, v)| {
            out.push(k.clone());
            strings(v, out);
        }),
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let subs = submissions(text);
    if subs.is_empty() {
        return;
    }
    for actor in actors() {
        let mut state = FLEET.clone();
        for (i, sub) in subs.iter().enumerate() {
            let now = 1_700_000_000_000 + i64::try_from(i).unwrap_or(0);
            let ctx = Context::new(actor.clone(), now);
            if let Some(expected) = sub.expected_version {
                if state.stream_version(&command_stream(&sub.command)) != expected {
                    continue;
                }
            }
            let Ok(events) = decide(&state, &sub.command, &ctx) else { continue };
            assert!(!matches!(actor, Actor::Auditor(_)), "an auditor wrote {events:?}");
            for event in events {
                if let Actor::Agent(own) = &actor {
                    let device = device_of(&state, &event);
                    assert_eq!(device, Some(own.as_str()), "agent {own} spoke beyond its device: {event:?}");
                }
                let json = serde_json::to_value(&event).expect("events render as JSON");
                let mut texts = Vec::new();
                strings(&json, &mut texts);
                for s in texts {
                    assert!(s.len() <= MAX_TEXT_LEN, "accepted event carries {} bytes of text: {event:?}", s.len());
                    assert!(
                        !s.chars().any(|c| c.is_control() && c != '\n' && c != '\t'),
                        "accepted event carries control characters: {event:?}"
                    );
                }
                let record = EventRecord {
                    seq: state.last_seq + 1,
                    recorded_at: now,
                    command_id: sub.command_id.clone(),
                    actor: actor.clone(),
                    stream_version: state.next_version(&event),
                    event,
                };
                let body = encode_record(&record);
                let back = decode_record(&body).expect("an accepted event's body decodes");
                assert_eq!(encode_record(&back), body);
                apply(&mut state, &record);
            }
        }
    }
});
