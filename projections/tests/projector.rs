//! The projector against a real ledger: checkpoints and resuming, rebuilds (version change, corruption, a
//! foreign checkpoint, on command), time travel, the live tail and read-your-writes waits.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hwledger_engine::command::Command;
use hwledger_engine::event::DeviceKind;
use hwledger_projections::cost::GroupBy;
use hwledger_projections::{AsOf, DeviceStatus, ProjectionName, Projector, ProjectorOptions};
use support::{TestLedger, assert_matches_replay, dispatch, enroll, issue, register, telemetry};

const T0: i64 = 1_710_028_800_000;
const MIN: i64 = 60_000;
const HB: Duration = Duration::from_secs(30);

/// A small fleet with some history: `n` rounds of telemetry from three devices, jobs and a revoked cert.
fn populate(t: &TestLedger, rounds: i64) {
    t.accept(T0, enroll("local-1", DeviceKind::Local));
    t.accept(T0, enroll("ssh-1", DeviceKind::Ssh { target: "root@10.0.0.2".into() }));
    t.accept(T0, enroll("rent-1", DeviceKind::Rental { provider: "vast".into(), instance_id: "i-1".into() }));
    t.accept(T0, register("local-1", 2));
    t.accept(T0, register("rent-1", 1));
    t.accept(T0, issue("local-1", [7; 32]));
    t.accept(T0, issue("local-1", [8; 32]));
    t.accept(T0, Command::RevokeCertificate { fingerprint: [7; 32], reason: "rotated".into() });
    t.accept(T0, Command::SetDeviceRate { device_id: "local-1".into(), micro_usd_per_hour: 400_000 });
    for i in 0..rounds {
        let now = T0 + i * MIN;
        t.accept(now, telemetry("local-1", now, 2, (i % 100) as f32, 1_000 + (i as u64 % 50)));
        t.accept(now, telemetry("rent-1", now, 1, 75.0, 8_000));
        // A job every 10 rounds, running for 5 rounds (5 minutes of recorded time).
        if i % 10 == 0 {
            let job = format!("job-{i}");
            let on_rental = i % 20 == 0;
            t.accept(now, dispatch(&job, if on_rental { "rent-1" } else { "local-1" }, on_rental.then_some(2_000_000)));
            t.accept(now, Command::StartJob { job_id: job });
        }
        if i % 10 == 5 {
            t.accept(now, Command::CompleteJob { job_id: format!("job-{}", i - 5), exit_status: 0 });
        }
    }
}

#[test]
fn open_catches_up_and_reads_serialize() {
    let t = TestLedger::new();
    populate(&t, 30);
    let p = Projector::open(t.ledger.store(), ProjectorOptions::default()).expect("open projector");
    assert_eq!(p.applied_seq(), t.head());
    assert_matches_replay(&p, &t);

    let now = T0 + 30 * MIN;
    let devices = p.devices(now, HB);
    assert_eq!(devices.len(), 3);
    let local = devices.iter().find(|d| d.device_id == "local-1").expect("local-1");
    assert_eq!(local.status, DeviceStatus::Active);
    assert_eq!(local.cert_fingerprints, vec![hex::encode([8u8; 32])]);
    let ssh = devices.iter().find(|d| d.device_id == "ssh-1").expect("ssh-1");
    assert_eq!(ssh.status, DeviceStatus::Enrolled);

    let tel = p.telemetry("local-1", Some(1), T0, now).expect("telemetry of local-1");
    assert_eq!(tel.gpus.len(), 1);
    assert_eq!(tel.gpus[0].points.len(), 30, "30 raw samples within the last hour");

    let jobs = p.jobs();
    assert_eq!(jobs.len(), 3);
    // job-0 and job-20 on the rental at 2 USD/h for 5 min: 166 667 micro-USD each (166 666.67 rounded half up);
    // job-10 on local-1 at its 0.4 USD/h rate: 33 333.33 → 33 333.
    let costs: Vec<Option<u64>> = jobs.iter().map(|j| j.cost_micro_usd).collect();
    assert_eq!(costs, [Some(166_667), Some(33_333), Some(166_667)]);
    let report = p.cost(now, Duration::from_secs(86_400), GroupBy::Backend);
    assert_eq!(report.total_micro_usd, 366_667);
    assert_eq!(report.rental_spend_micro_usd, 333_334);

    let dash = p.dashboard(now, HB);
    assert_eq!(dash.seq, t.head());
    assert_eq!(dash.jobs.capacity_gpus, 3);
    assert_eq!(dash.recent_events.len(), 50);

    for value in [
        serde_json::to_value(&devices),
        serde_json::to_value(&tel),
        serde_json::to_value(&jobs),
        serde_json::to_value(&report),
        serde_json::to_value(&dash),
        serde_json::to_value(p.status()),
    ] {
        let v = value.expect("read models serialize to JSON");
        assert!(!v.is_null());
    }
    let dash_json = serde_json::to_string(&dash).expect("json");
    assert!(!dash_json.contains(&hex::encode([8u8; 32])), "dashboard must not carry fingerprints");
    assert!(!dash_json.contains("local-1.lan"), "dashboard must not carry hostnames");
}

#[test]
fn killed_mid_catch_up_resumes_from_its_checkpoint_exactly() {
    let t = TestLedger::new();
    populate(&t, 60);
    let head = t.head();
    let k = 37;
    {
        // Checkpoints every 37 events while catching up; then "killed": dropped without a final persist.
        let p = Projector::open(t.ledger.store(), ProjectorOptions { persist_every: k }).expect("open");
        assert_eq!(p.applied_seq(), head);
    }
    let p = Projector::open(t.ledger.store(), ProjectorOptions::default()).expect("reopen");
    let last_checkpoint = head / k * k;
    for s in p.status() {
        assert_eq!(s.loaded_seq, last_checkpoint, "{} resumed from {}", s.name, s.loaded_seq);
        assert_eq!(s.rebuilt, None);
        assert_eq!(s.applied_seq, head);
    }
    assert_matches_replay(&p, &t);

    // A persist on demand makes the next open start at the head.
    p.persist().expect("persist");
    drop(p);
    let p = Projector::open(t.ledger.store(), ProjectorOptions::default()).expect("reopen");
    assert!(p.status().iter().all(|s| s.loaded_seq == head));
    assert_matches_replay(&p, &t);
}

/// Rewrites the stored checkpoint of one projection.
fn tamper(t: &TestLedger, name: &str, f: impl FnOnce(&mut Vec<u8>)) {
    let path = t.ledger.store().dir().join("projections").join(format!("{name}.ckpt"));
    let mut value = std::fs::read(&path).expect("a checkpoint exists");
    f(&mut value);
    std::fs::write(&path, value).expect("rewrite checkpoint");
}

#[test]
fn unusable_checkpoints_are_rebuilt_from_the_log() {
    let t = TestLedger::new();
    populate(&t, 20);
    let p = Projector::open(t.ledger.store(), ProjectorOptions::default()).expect("open");
    p.persist().expect("persist");
    drop(p);

    // Version 0 stored, code is at version 1.
    tamper(&t, "snapshots", |v| v[1..5].copy_from_slice(&0u32.to_le_bytes()));
    // State bytes cut short.
    tamper(&t, "cost", |v| v.truncate(v.len() - 3));
    // A checkpoint whose chain hash is not this log's.
    tamper(&t, "registry", |v| v[13] ^= 0xff);

    let p = Projector::open(t.ledger.store(), ProjectorOptions::default()).expect("reopen");
    let status = p.status();
    let why = |n: ProjectionName| status.iter().find(|s| s.name == n).and_then(|s| s.rebuilt.clone());
    assert_eq!(why(ProjectionName::Snapshots).as_deref(), Some("version changed from 0 to 1"));
    assert!(why(ProjectionName::Cost).is_some_and(|w| w.starts_with("checkpoint unreadable")), "{status:?}");
    assert!(why(ProjectionName::Registry).is_some_and(|w| w.contains("does not match")), "{status:?}");
    assert_eq!(why(ProjectionName::Dashboard), None);
    assert_matches_replay(&p, &t);

    // A checkpoint beyond the end of the log (e.g. the log was restored from an older copy).
    p.persist().expect("persist");
    drop(p);
    tamper(&t, "dashboard", |v| v[5..13].copy_from_slice(&(t.head() + 5).to_le_bytes()));
    let p = Projector::open(t.ledger.store(), ProjectorOptions::default()).expect("reopen");
    let dash = p.status().into_iter().find(|s| s.name == ProjectionName::Dashboard).expect("dashboard");
    assert!(dash.rebuilt.is_some_and(|w| w.contains("beyond the log's end")));
    assert_matches_replay(&p, &t);
}

#[test]
fn rebuild_on_command_drops_and_replays() {
    let t = TestLedger::new();
    populate(&t, 15);
    let p = Projector::open(t.ledger.store(), ProjectorOptions::default()).expect("open");
    let (_, before) = p.digests();
    assert_eq!(p.rebuild(t.ledger.store(), Some(ProjectionName::Cost)).expect("rebuild cost"), t.head());
    let status = p.status();
    assert_eq!(status[2].rebuilt.as_deref(), Some("on command"));
    assert_eq!(status[0].rebuilt.as_deref(), Some("no checkpoint"));
    assert_eq!(p.digests().1, before);
    p.rebuild(t.ledger.store(), None).expect("rebuild all");
    assert!(p.status().iter().all(|s| s.rebuilt.as_deref() == Some("on command")));
    assert_eq!(p.digests().1, before);
    // The rebuild wrote fresh checkpoints: a reopen resumes from the head.
    drop(p);
    let p = Projector::open(t.ledger.store(), ProjectorOptions::default()).expect("reopen");
    assert!(p.status().iter().all(|s| s.loaded_seq == t.head() && s.rebuilt.is_none()));
}

#[test]
fn as_of_a_seq_or_a_time_leaves_live_state_alone() {
    let t = TestLedger::new();
    let a = t.accept(T0, enroll("a", DeviceKind::Local));
    t.accept(T0 + MIN, register("a", 1));
    let before_b = t.accept(T0 + 2 * MIN, telemetry("a", T0 + 2 * MIN, 1, 10.0, 100));
    t.accept(T0 + 3 * MIN, enroll("b", DeviceKind::Local));
    t.accept(T0 + 4 * MIN, Command::DecommissionDevice { device_id: "a".into(), reason: "gone".into() });
    let p = Projector::open(t.ledger.store(), ProjectorOptions::default()).expect("open");
    let live = p.digests();

    let at_a = p.as_of(t.ledger.store(), AsOf::Seq(a)).expect("as of seq");
    assert_eq!(at_a.seq, 1);
    let devs = at_a.projections.registry.devices(T0, HB);
    assert_eq!(devs.len(), 1);
    assert_eq!(devs[0].status, DeviceStatus::Enrolled);

    // Time: everything recorded at or before T0 + 2 min 30 s.
    let past = p.as_of(t.ledger.store(), AsOf::Time(T0 + 2 * MIN + 30_000)).expect("as of time");
    assert_eq!(past.seq, before_b);
    let devs = past.projections.registry.devices(T0 + 2 * MIN, HB);
    assert_eq!(
        devs.iter().map(|d| (d.device_id.as_str(), d.status)).collect::<Vec<_>>(),
        [("a", DeviceStatus::Active)]
    );
    assert_eq!(past.projections.snapshots.latest().len(), 1);
    // Exactly at an event's time includes it; before the first event is empty; beyond the end is the head.
    assert_eq!(p.as_of(t.ledger.store(), AsOf::Time(T0 + 3 * MIN)).expect("as of").seq, 4);
    assert_eq!(p.as_of(t.ledger.store(), AsOf::Time(T0 - 1)).expect("as of").seq, 0);
    assert_eq!(p.as_of(t.ledger.store(), AsOf::Time(i64::MAX)).expect("as of").seq, t.head());
    assert_eq!(p.as_of(t.ledger.store(), AsOf::Seq(u64::MAX)).expect("as of").seq, t.head());

    // The past view equals a projector that had stopped there.
    let head_view = p.as_of(t.ledger.store(), AsOf::Seq(t.head())).expect("as of head");
    assert_eq!(head_view.projections.digests(), live.1);
    assert_eq!(p.digests(), live, "time travel does not touch the live read models");
}

#[test]
fn follow_applies_the_live_tail_and_wait_for_is_bounded() {
    let t = TestLedger::new();
    t.accept(T0, enroll("a", DeviceKind::Local));
    let p = Projector::open(t.ledger.store(), ProjectorOptions { persist_every: 3 }).expect("open");
    let shutdown = AtomicBool::new(false);
    std::thread::scope(|s| {
        let follower = s.spawn(|| p.follow(&t.ledger, &shutdown));
        let ledger = &t.ledger;
        let mut next = 100;
        let mut submit = |command: Command| {
            next += 1;
            let sub =
                hwledger_engine::Submission { command_id: format!("live-{next}"), expected_version: None, command };
            let out = ledger.submit(sub, hwledger_engine::Context::new(hwledger_engine::Actor::System, T0 + next));
            out.ok().and_then(|o| o.receipt().map(|r| r.seq)).expect("accepted")
        };
        submit(register("a", 1));
        let mut last = 0;
        for i in 0..20 {
            last = submit(telemetry("a", T0 + i * 1_000, 1, 50.0, 10));
        }
        assert_eq!(p.wait_for(last, Duration::from_secs(10)), Ok(last));
        assert_eq!(p.snapshots().latest().len(), 1);
        assert_eq!(p.registry().device("a", T0, HB).map(|d| d.status), Some(DeviceStatus::Active));
        let err = p.wait_for(last + 1, Duration::from_millis(30)).expect_err("nothing will reach that seq");
        assert_eq!((err.wanted, err.applied), (last + 1, last));
        shutdown.store(true, Ordering::Release);
        follower.join().expect("follower thread").expect("follow ends cleanly");
    });
    // Periodic checkpoints were written while following.
    assert!(p.status().iter().all(|s| s.persisted_seq >= 18), "{:?}", p.status());
    assert_matches_replay(&p, &t);
}
