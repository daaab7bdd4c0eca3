//! Crash matrix: the real `hwledger serve` under concurrent ingest over mTLS (32 client tasks by default, on
//! their own connections, posting heartbeats one by one and in batches), SIGKILLed at seeded random moments —
//! while serving, and now and then during startup (sled recovery, projection catch-up) — and restarted.
//!
//! After every kill, offline: `hwledger verify --json` exits 0; seqs are gapless; no command id appears twice
//! in the log; every receipt a client was given is in the log with exactly its seq and hash. After every
//! restart, before ingest resumes: the live projections' digests (`GET /v1/projections`) equal a rebuild from
//! the log (`hwledger replay --until HEAD`). Clients retry every command that got no answer, with the same
//! command id and body; a retry must be answered with the original receipt (`duplicate`) or be appended once.
//! At the end every command any client created is in the log exactly once: none lost, none duplicated.
//!
//! `HWLEDGER_CRASH_KILLS=N` (default 5), `HWLEDGER_CRASH_SEED`, `HWLEDGER_CRASH_CLIENTS` (default 32).
//! Figures: `RELIABILITY crash.*` lines (run with `--nocapture`).

#[path = "stress/mod.rs"]
mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{
    Answer, Receipt, Rng, Server, env_u64, figure, heartbeat, live_digests, log_events, operator_client,
    rebuilt_digests, submit, submit_batch, submit_until_answered, verify_intact,
};

const DEVICES: u64 = 8;
/// Items in one batch submission of the batch-posting tasks.
const BATCH: usize = 8;

/// What the clients know: every command they created and every receipt they were given.
#[derive(Default)]
struct Book {
    /// Command id → body, for every command a client created.
    sent: HashMap<String, Value>,
    /// Command id → the receipt the client holds.
    receipts: HashMap<String, Receipt>,
    /// Retries answered `duplicate` (the first attempt had landed but its answer was lost in the kill).
    retried_duplicate: u64,
    /// Retries answered `accepted` (the first attempt had not landed).
    retried_accepted: u64,
    /// Anything a correct server never does.
    anomalies: Vec<String>,
}

impl Book {
    fn record(&mut self, id: &str, answer: &Answer, retry: bool) -> bool {
        let (receipt, duplicate) = match answer {
            Answer::Accepted(r) => (r, false),
            Answer::Duplicate(r) => (r, true),
            Answer::Refused(503, _) | Answer::Lost(_) => return false,
            Answer::Refused(status, code) => {
                self.anomalies.push(format!("{id}: refused {status} {code}"));
                return true;
            }
        };
        match self.receipts.get(id) {
            Some(prev) if prev != receipt => {
                self.anomalies.push(format!("{id}: receipt changed from {prev:?} to {receipt:?}"));
            }
            Some(_) if !duplicate => self.anomalies.push(format!("{id}: accepted a second time")),
            Some(_) => {}
            None => {
                if duplicate && !retry {
                    self.anomalies.push(format!("{id}: a fresh command was answered duplicate"));
                }
                if retry {
                    if duplicate {
                        self.retried_duplicate += 1;
                    } else {
                        self.retried_accepted += 1;
                    }
                }
                self.receipts.insert(id.to_owned(), receipt.clone());
            }
        }
        true
    }
}

/// One client task: posts heartbeats (retries first) until `stop`, returning what is still unanswered.
async fn client_task(
    task: u64,
    data: std::path::PathBuf,
    base: Arc<RwLock<String>>,
    book: Arc<Mutex<Book>>,
    stop: Arc<AtomicBool>,
    mut pending: Vec<(String, Value, bool)>,
    next: Arc<Mutex<HashMap<u64, u64>>>,
) -> Vec<(String, Value, bool)> {
    let client = operator_client(&data, Duration::from_secs(10));
    let batching = task % 4 == 3;
    let fresh = |n: &mut u64| {
        let i = *n;
        *n += 1;
        let id = format!("t{task}-{i}");
        let body = heartbeat(&id, &format!("dev-{}", (task + i) % DEVICES), i);
        (id, body, false)
    };
    let mut n = next.lock().map(|m| m.get(&task).copied().unwrap_or(0)).unwrap_or(0);
    while !stop.load(Ordering::Acquire) {
        let want = if batching { BATCH } else { 1 };
        let mut items = Vec::with_capacity(want);
        while items.len() < want {
            match pending.pop() {
                Some(p) => items.push(p),
                None => {
                    let item = fresh(&mut n);
                    if let Ok(mut b) = book.lock() {
                        b.sent.insert(item.0.clone(), item.1.clone());
                    }
                    items.push(item);
                }
            }
        }
        let url = base.read().map(|b| b.clone()).unwrap_or_default();
        let answers = if batching {
            let bodies: Vec<Value> = items.iter().map(|i| i.1.clone()).collect();
            submit_batch(&client, &url, &bodies).await
        } else {
            vec![submit(&client, &url, &items[0].1).await]
        };
        let mut unanswered = 0;
        if let Ok(mut b) = book.lock() {
            for ((id, body, retry), answer) in items.into_iter().zip(&answers) {
                if !b.record(&id, answer, retry) {
                    unanswered += 1;
                    pending.push((id, body, true));
                }
            }
        }
        if unanswered > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    if let Ok(mut m) = next.lock() {
        m.insert(task, n);
    }
    pending
}

/// Offline checks of the data directory against what the clients hold. Returns (head, events in the log).
fn check_log(data: &Path, book: &Book, round: &str) -> (u64, usize) {
    let head = verify_intact(data);
    let events = log_events(data);
    assert_eq!(events.len() as u64, head, "{round}: log and verify disagree on the head");
    let mut by_id: HashMap<&str, usize> = HashMap::new();
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.seq, i as u64 + 1, "{round}: seqs must be gapless");
        *by_id.entry(e.command_id.as_str()).or_default() += 1;
    }
    let duplicated: Vec<_> = by_id.iter().filter(|(_, n)| **n > 1).collect();
    assert!(duplicated.is_empty(), "{round}: command ids appended more than once: {duplicated:?}");
    let mut lost = Vec::new();
    for (id, (seq, hash)) in &book.receipts {
        let found = usize::try_from(*seq).ok().and_then(|s| s.checked_sub(1)).and_then(|i| events.get(i));
        match found {
            Some(e) if e.command_id == *id && e.hash == *hash => {}
            other => lost.push(format!("{id} seq {seq}: found {:?}", other.map(|e| (&e.command_id, &e.hash)))),
        }
    }
    assert!(lost.is_empty(), "{round}: acknowledged receipts missing from the log: {lost:?}");
    (head, events.len())
}

/// Spawns `serve` and SIGKILLs it after `after` without waiting for it to listen (a kill during startup).
fn kill_during_startup(data: &Path, after: Duration) {
    let mut child = std::process::Command::new(support::BIN)
        .arg("--data")
        .arg(data)
        .args(["serve", "--listen", "127.0.0.1:0", "--dashboard-listen", "127.0.0.1:0"])
        .env("HWLEDGER_LOG", "error")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn serve");
    std::thread::sleep(after);
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_commands_survive_sigkill_of_the_server() {
    let kills = env_u64("HWLEDGER_CRASH_KILLS", 5).max(1);
    let seed = env_u64("HWLEDGER_CRASH_SEED", 0x00c0_ffee_d00d);
    let clients = env_u64("HWLEDGER_CRASH_CLIENTS", 32).clamp(1, 256);
    println!("crash matrix: {kills} kills, {clients} clients, seed {seed}");
    let started = Instant::now();
    let mut rng = Rng::new(seed);
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let book = Arc::new(Mutex::new(Book::default()));
    let next = Arc::new(Mutex::new(HashMap::new()));
    let base = Arc::new(RwLock::new(String::new()));
    let mut pending: Vec<Vec<(String, Value, bool)>> = vec![Vec::new(); usize::try_from(clients).unwrap_or(1)];
    // Digests rebuilt offline after the last kill, to compare with the restarted server's.
    let mut expected: Option<(u64, BTreeMap<String, String>)> = None;
    let (mut startup_kills, mut projection_checks, mut max_life_ms) = (0u64, 0u64, 0u64);

    for round in 0..=kills {
        let label = format!("round {round} (seed {seed})");
        if round > 0 && rng.below(3) == 0 {
            // A kill while the server opens: sled recovery, the bootstrap checks, projection catch-up.
            kill_during_startup(&data, Duration::from_millis(rng.below(400)));
            startup_kills += 1;
            let (head, _) = check_log(&data, &book.lock().expect("book"), &format!("{label}, startup kill"));
            let rebuilt = rebuilt_digests(&data, head);
            if let Some((h, d)) = &expected {
                assert_eq!((*h, d), (head, &rebuilt), "{label}: a kill during startup changed the log");
            }
            expected = Some((head, rebuilt));
        }
        let mut server = Server::start(&data, None);
        let url = server.url("");
        if let Ok(mut b) = base.write() {
            *b = url.clone();
        }
        let client = operator_client(&data, Duration::from_secs(10));
        if round == 0 {
            for d in 0..DEVICES {
                let a =
                    submit_until_answered(&client, &url, &support::enroll_submission(&format!("dev-{d}")), 100).await;
                assert!(matches!(a, Answer::Accepted(_)), "enroll dev-{d}: {a:?}");
            }
        }
        if let Some((head, rebuilt)) = expected.take() {
            let (applied, live) = live_digests(&client, &url, head).await;
            assert_eq!(applied, head, "{label}: the restarted server's projections are past the log's head");
            assert_eq!(live, rebuilt, "{label}: live projections differ from a rebuild from the log");
            projection_checks += 1;
        }
        if round == kills {
            // The last round: no kill; retry everything still unanswered, then stop cleanly.
            let left: Vec<(String, Value, bool)> = pending.iter_mut().flat_map(std::mem::take).collect();
            for (id, body, _) in left {
                let a = submit_until_answered(&client, &url, &body, 200).await;
                let recorded = book.lock().expect("book").record(&id, &a, true);
                assert!(recorded, "{label}: {id} still unanswered after the final retries: {a:?}");
            }
            assert_eq!(server.interrupt(), Some(0), "clean shutdown:\n{}", server.log());
            break;
        }

        let stop = Arc::new(AtomicBool::new(false));
        let tasks: Vec<_> = pending
            .iter_mut()
            .enumerate()
            .map(|(t, p)| {
                tokio::spawn(client_task(
                    t as u64,
                    data.clone(),
                    base.clone(),
                    book.clone(),
                    stop.clone(),
                    std::mem::take(p),
                    next.clone(),
                ))
            })
            .collect();
        // A random lifetime; some kills come almost at once, most after a burst of ingest.
        let life = Duration::from_millis(if rng.below(5) == 0 { rng.below(60) } else { 150 + rng.below(1350) });
        max_life_ms = max_life_ms.max(u64::try_from(life.as_millis()).unwrap_or(u64::MAX));
        tokio::time::sleep(life).await;
        server.kill();
        stop.store(true, Ordering::Release);
        for (t, task) in tasks.into_iter().enumerate() {
            pending[t] = tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("a client task did not stop")
                .expect("client task panicked");
        }
        let (head, events) = check_log(&data, &book.lock().expect("book"), &label);
        let unanswered: usize = pending.iter().map(Vec::len).sum();
        println!("{label}: killed after {life:?}: {events} events, {unanswered} commands unanswered");
        expected = Some((head, rebuilt_digests(&data, head)));
    }

    // Every command any client created is in the log exactly once, with the receipt its client holds.
    let b = book.lock().expect("book");
    let (head, events) = check_log(&data, &b, "final");
    let receipted: HashSet<&String> = b.receipts.keys().collect();
    let lost: Vec<&String> = b.sent.keys().filter(|id| !receipted.contains(id)).collect();
    assert!(lost.is_empty(), "commands never acknowledged: {lost:?}");
    assert!(b.anomalies.is_empty(), "the server misbehaved: {:?}", b.anomalies);
    let heartbeats = b.sent.len();
    assert!(heartbeats > 0, "no client ever got a command through");
    figure("crash.kills", kills);
    figure("crash.startup_kills", startup_kills);
    figure("crash.clients", clients);
    figure("crash.seed", seed);
    figure("crash.commands", heartbeats);
    figure("crash.events", events);
    figure("crash.head_seq", head);
    figure("crash.retries_answered_duplicate", b.retried_duplicate);
    figure("crash.retries_appended", b.retried_accepted);
    figure("crash.projection_checks", projection_checks);
    figure("crash.lost", lost.len());
    figure("crash.duplicates", 0);
    figure("crash.seconds", format!("{:.1}", started.elapsed().as_secs_f64()));
    println!("crash matrix passed: {kills} kills, {heartbeats} commands, none lost, none duplicated");
}
