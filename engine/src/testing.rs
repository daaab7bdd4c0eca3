//! Test support: given / when / then over [`decide`], and small event builders.
//!
//! ```text
//! given([enrolled("dev-1")]).when(Command::RecordTelemetry { .. }).then_rejected("device_unknown");
//! ```

use crate::command::{Command, Context};
use crate::decide::{Rejection, decide};
use crate::event::{Actor, DeviceKind, Event, EventRecord, GpuInfo};
use crate::state::{State, apply};

/// A state built from past events.
#[derive(Debug, Clone, Default)]
pub struct Given {
    state: State,
}

/// Starts a scenario from `events` (applied in order with seqs from 1).
pub fn given(events: impl IntoIterator<Item = Event>) -> Given {
    let mut state = State::default();
    for (i, event) in events.into_iter().enumerate() {
        let record = EventRecord {
            seq: i as u64 + 1,
            recorded_at: 1_000,
            command_id: format!("given-{i}"),
            actor: Actor::System,
            stream_version: state.next_version(&event),
            event,
        };
        apply(&mut state, &record);
    }
    Given { state }
}

impl Given {
    /// Decides `command` as the system actor at time 10 000.
    pub fn when(self, command: Command) -> Then {
        self.when_as(Actor::System, command)
    }

    /// Decides `command` as `actor`.
    pub fn when_as(self, actor: Actor, command: Command) -> Then {
        let result = decide(&self.state, &command, &Context::new(actor, 10_000));
        Then { result }
    }

    /// The state.
    pub fn state(&self) -> &State {
        &self.state
    }
}

/// The outcome of a decision, to assert on.
#[derive(Debug)]
pub struct Then {
    /// What `decide` returned.
    pub result: Result<Vec<Event>, Rejection>,
}

impl Then {
    /// Asserts the command was accepted with exactly these events.
    #[track_caller]
    pub fn then_events(self, expected: impl IntoIterator<Item = Event>) {
        let expected: Vec<Event> = expected.into_iter().collect();
        match self.result {
            Ok(events) => assert_eq!(events, expected),
            Err(r) => panic!("expected events, got rejection {}: {r}", r.code()),
        }
    }

    /// Asserts the command was rejected with this code.
    #[track_caller]
    pub fn then_rejected(self, code: &str) {
        match self.result {
            Ok(events) => panic!("expected rejection {code}, got events {events:?}"),
            Err(r) => assert_eq!(r.code(), code, "rejection was: {r}"),
        }
    }
}

/// `device_enrolled` for a local device.
pub fn enrolled(device_id: &str) -> Event {
    Event::DeviceEnrolled {
        device_id: device_id.into(),
        kind: DeviceKind::Local,
        hostname: None,
        labels: Default::default(),
    }
}

/// `device_registered` with one GPU of `vram_mib`.
pub fn registered(device_id: &str, vram_mib: u64) -> Event {
    Event::DeviceRegistered {
        device_id: device_id.into(),
        hostname: None,
        gpus: vec![GpuInfo { index: 0, name: "NVIDIA RTX 4090".into(), uuid: None, vram_total_mib: vram_mib }],
    }
}

/// `job_dispatched` of `job_id` to `device_id`.
pub fn dispatched(job_id: &str, device_id: &str) -> Event {
    Event::JobDispatched {
        job_id: job_id.into(),
        device_id: device_id.into(),
        model: "llama".into(),
        vram_mib: 1024,
        price: None,
    }
}

/// A telemetry command for `device_id` with one GPU.
pub fn telemetry(device_id: &str, sampled_at: i64) -> Command {
    Command::RecordTelemetry {
        device_id: device_id.into(),
        sampled_at,
        gpus: vec![crate::event::GpuReading {
            index: 0,
            vram_used_mib: Some(1000),
            vram_total_mib: Some(24576),
            utilization_pct: Some(50.0),
            temperature_c: Some(60.0),
            power_w: Some(300.0),
        }],
    }
}
