//! Concurrency through the server (the smaller sibling of `engine/tests/concurrency.rs`): 16 operator client
//! tasks on their own mTLS connections × 300 commands each, posted one by one and in batches, with repeated
//! command ids (same body from many tasks: one append and duplicates; another body: `duplicate_conflict`) and
//! racing decommissions of a few devices while the others keep sending their heartbeats.
//!
//! Checks, offline after a clean shutdown: seqs gapless, no command id twice in the log, every accepted receipt
//! in the log with its seq and hash and every duplicate answer carrying it, each device decommissioned at most
//! once and no heartbeat after it, the chain verifies, and the live projections equal a rebuild.
//!
//! `HWLEDGER_CONCURRENCY_SERVER_TASKS` (default 16) and `HWLEDGER_CONCURRENCY_SERVER_COMMANDS` (per task,
//! default 300). Figures: `RELIABILITY concurrency.server.*` lines (run with `--nocapture`).

#[path = "stress/mod.rs"]
mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{
    Answer, Receipt, Rng, Server, env_u64, figure, heartbeat, live_digests, log_events, operator_client,
    rebuilt_digests, submit, submit_batch, submit_until_answered, verify_intact,
};

const DEVICES: u64 = 12;
const DOOMED: u64 = 4;

/// (command id, kind, answer).
type Answers = Vec<(String, &'static str, Answer)>;

async fn task(t: u64, per: u64, data: std::path::PathBuf, base: String) -> Answers {
    let client = operator_client(&data, Duration::from_secs(20));
    let mut rng = Rng::new(0x5eed ^ (t + 1).wrapping_mul(0x9e37_79b9));
    let mut out = Vec::new();
    let mut k = 0u64;
    while k < per {
        let group = if t.is_multiple_of(2) { 1 } else { (1 + rng.below(10)).min(per - k) };
        let mut items: Vec<(String, &'static str, Value)> = Vec::new();
        for _ in 0..group {
            let item = if [per / 3, 2 * per / 3].contains(&k) {
                let device = (u64::from(k == 2 * per / 3) * 2 + t % 2) % DOOMED;
                let id = format!("decom-{t}-{k}");
                let body = json!({"command_id": id, "command": {"type": "decommission_device",
                                  "device_id": format!("dev-{device}"), "reason": "race"}});
                (id, "decommission", body)
            } else {
                match rng.below(8) {
                    0 => {
                        let (d, j) = (rng.below(DEVICES), rng.below(16));
                        let id = format!("shared-{d}-{j}");
                        let body = heartbeat(&id, &format!("dev-{d}"), 1_000_000 + j);
                        (id, "shared", body)
                    }
                    1 => {
                        let id = format!("conflict-{}", rng.below(8));
                        let body = heartbeat(&id, &format!("dev-{}", DEVICES - 1), t * 1_000_000 + k);
                        (id, "conflict", body)
                    }
                    _ => {
                        let id = format!("hb-{t}-{k}");
                        let body = heartbeat(&id, &format!("dev-{}", rng.below(DEVICES)), t * 1_000_000 + k);
                        (id, "unique", body)
                    }
                }
            };
            items.push(item);
            k += 1;
        }
        let answers = if items.len() == 1 {
            vec![submit(&client, &base, &items[0].2).await]
        } else {
            let bodies: Vec<Value> = items.iter().map(|i| i.2.clone()).collect();
            submit_batch(&client, &base, &bodies).await
        };
        for ((id, kind, _), answer) in items.into_iter().zip(answers) {
            assert!(!matches!(answer, Answer::Lost(_)), "{id}: no answer: {answer:?}");
            out.push((id, kind, answer));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_clients_through_the_server_never_lose_duplicate_or_break_a_rule() {
    let tasks = env_u64("HWLEDGER_CONCURRENCY_SERVER_TASKS", 16).max(1);
    let per = env_u64("HWLEDGER_CONCURRENCY_SERVER_COMMANDS", 300).max(4);
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let mut server = Server::start(&data, None);
    let base = server.url("");
    let client = operator_client(&data, Duration::from_secs(20));
    for d in 0..DEVICES {
        let a = submit_until_answered(&client, &base, &support::enroll_submission(&format!("dev-{d}")), 100).await;
        assert!(matches!(a, Answer::Accepted(_)), "enroll dev-{d}: {a:?}");
    }
    let started = Instant::now();
    let handles: Vec<_> = (0..tasks).map(|t| tokio::spawn(task(t, per, data.clone(), base.clone()))).collect();
    let mut answers: Answers = Vec::new();
    for h in handles {
        answers.extend(h.await.expect("task panicked"));
    }
    let seconds = started.elapsed().as_secs_f64();
    let head: u64 = client
        .get(format!("{base}/health"))
        .send()
        .await
        .expect("health")
        .json::<Value>()
        .await
        .expect("json")["head_seq"]
        .as_u64()
        .expect("head_seq");
    let (applied, live) = live_digests(&client, &base, head).await;
    assert_eq!(applied, head);
    assert_eq!(server.interrupt(), Some(0), "clean shutdown:\n{}", server.log());

    assert_eq!(verify_intact(&data), head);
    let events = log_events(&data);
    let mut in_log: HashMap<&str, usize> = HashMap::new();
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.seq, i as u64 + 1, "seqs are gapless");
        assert!(in_log.insert(e.command_id.as_str(), i).is_none(), "{} appended twice", e.command_id);
    }
    let mut accepted: HashMap<&str, &Receipt> = HashMap::new();
    let mut codes: HashMap<String, u64> = HashMap::new();
    for (id, _, answer) in &answers {
        let code = match answer {
            Answer::Accepted(r) => {
                assert!(accepted.insert(id.as_str(), r).is_none(), "{id} accepted twice");
                let e = &events[usize::try_from(r.0 - 1).expect("seq")];
                assert_eq!((&e.command_id, &e.hash), (id, &r.1), "accepted {id} is not in the log as receipted");
                "accepted".to_owned()
            }
            Answer::Duplicate(_) => "duplicate".to_owned(),
            Answer::Refused(_, code) => code.clone(),
            Answer::Lost(why) => panic!("{id}: lost: {why}"),
        };
        *codes.entry(code).or_default() += 1;
    }
    for (id, _, answer) in &answers {
        if let Answer::Duplicate(r) = answer {
            assert_eq!(accepted.get(id.as_str()).copied(), Some(r), "{id}: a duplicate answer with another receipt");
        }
    }
    let unexpected: Vec<_> = codes
        .keys()
        .filter(|c| !["accepted", "duplicate", "duplicate_conflict", "device_decommissioned"].contains(&c.as_str()))
        .collect();
    assert!(unexpected.is_empty(), "unexpected answers: {codes:?}");
    let setup = events.len() - accepted.len();
    assert!(
        events[setup..].iter().all(|e| accepted.contains_key(e.command_id.as_str())),
        "an event nobody was told of"
    );
    let mut decommissioned: HashMap<String, u64> = HashMap::new();
    let mut violations = 0u64;
    for e in &events {
        // Events are externally tagged: `{"telemetry_recorded": {"device_id": ...}}`.
        let Some((kind, body)) = e.record["event"].as_object().and_then(|o| o.iter().next()) else {
            panic!("event {} has no type: {}", e.seq, e.record)
        };
        let device = body["device_id"].as_str().unwrap_or_default().to_owned();
        match Some(kind.as_str()) {
            Some("device_decommissioned") => {
                assert!(decommissioned.insert(device.clone(), e.seq).is_none(), "{device} decommissioned twice");
            }
            Some("telemetry_recorded") if decommissioned.contains_key(&device) => violations += 1,
            _ => {}
        }
    }
    assert_eq!(violations, 0, "heartbeats accepted after their device's decommission");
    assert!(!decommissioned.is_empty(), "no racing decommission won");
    assert_eq!(rebuilt_digests(&data, head), live, "live projections differ from a rebuild");

    println!("answers by code: {codes:?}");
    let n = |c: &str| codes.get(c).copied().unwrap_or(0);
    figure("concurrency.server.tasks", tasks);
    figure("concurrency.server.commands", answers.len());
    figure("concurrency.server.accepted", n("accepted"));
    figure("concurrency.server.duplicates_answered", n("duplicate"));
    figure("concurrency.server.conflicts", n("duplicate_conflict"));
    figure("concurrency.server.rejected_decommissioned", n("device_decommissioned"));
    figure("concurrency.server.decommissions", decommissioned.len());
    figure("concurrency.server.events", head);
    figure("concurrency.server.lost", 0);
    figure("concurrency.server.duplicated", 0);
    figure("concurrency.server.rule_violations", violations);
    figure("concurrency.server.seconds", format!("{seconds:.1}"));
}
