//! The agent's outbox on a real sled directory: durable across reopen, ordered, an entry leaves only with
//! its receipt (or as a dead letter), the when-full policy (old heartbeats thinned, registrations kept),
//! and crash consistency (a writer SIGKILLed mid-stream loses nothing it acknowledged). Also the send loop
//! against a scripted transport, to pin its handling of every kind of answer.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use hwledger_adapters::agent::outbox::{EntryKind, Outbox, OutboxOptions, Pending, Resolution, Stamp};
use hwledger_adapters::agent::send::{ItemOutcome, SendFailure, SendOptions, Sender, Step, Transport};
use hwledger_engine::command::{Command, Submission};
use parking_lot::Mutex;

fn hb(n: i64) -> Submission {
    Submission {
        command_id: format!("box:hb:{n}"),
        expected_version: None,
        command: Command::RecordTelemetry { device_id: "box".into(), sampled_at: n, gpus: vec![] },
    }
}

fn reg(n: i64) -> Submission {
    Submission {
        command_id: format!("box:reg:{n}"),
        expected_version: None,
        command: Command::RegisterDevice { device_id: "box".into(), hostname: None, gpus: vec![] },
    }
}

fn ids(p: &[Pending]) -> Vec<String> {
    p.iter().map(|p| p.submission.command_id.clone()).collect()
}

fn receipt(seq: u64) -> Resolution {
    Resolution::Receipt { ledger_seq: seq, hash: "00".repeat(32), duplicate: false }
}

#[test]
fn entries_survive_reopen_in_order_with_their_counters() {
    let dir = tempfile::tempdir().unwrap();
    {
        let ob = Outbox::open(dir.path(), OutboxOptions::default()).unwrap();
        ob.enqueue(&[reg(1), hb(1)], Stamp { sampled_at: Some(1), inventory: Some([7; 32]) }, 10).unwrap();
        ob.enqueue(&[hb(2)], Stamp { sampled_at: Some(2), inventory: None }, 11).unwrap();
        ob.enqueue(&[hb(3)], Stamp { sampled_at: Some(3), inventory: None }, 12).unwrap();
    }
    let ob = Outbox::open(dir.path(), OutboxOptions::default()).unwrap();
    let pending = ob.pending().unwrap();
    assert_eq!(ids(&pending), ["box:reg:1", "box:hb:1", "box:hb:2", "box:hb:3"]);
    assert_eq!(pending.iter().map(|p| p.seq).collect::<Vec<_>>(), [1, 2, 3, 4]);
    assert_eq!(pending[0].kind, EntryKind::Registration);
    assert_eq!(pending[1].kind, EntryKind::Telemetry);
    assert_eq!(pending[3].queued_at, 12);
    assert_eq!(pending[0].submission, reg(1));
    // The stored JSON is exactly what goes on the wire.
    assert_eq!(pending[1].json, serde_json::to_vec(&hb(1)).unwrap());
    let stats = ob.stats();
    assert_eq!((stats.pending, stats.next_seq), (4, 5));
    assert_eq!(stats.pending_bytes, pending.iter().map(|p| p.json.len() as u64).sum::<u64>());
    assert_eq!(ob.registered_inventory(), Some([7; 32]));
    // sampled_at stays strictly increasing across the restart, whatever the clock says.
    assert_eq!(ob.next_sampled_at(2), 4);
    assert_eq!(ob.next_sampled_at(100), 100);
}

#[test]
fn peek_is_bounded_by_count_and_bytes_but_never_empty() {
    let dir = tempfile::tempdir().unwrap();
    let ob = Outbox::open(dir.path(), OutboxOptions::default()).unwrap();
    for n in 1..=10 {
        ob.enqueue(&[hb(n)], Stamp::default(), n).unwrap();
    }
    assert_eq!(ids(&ob.peek(3, usize::MAX).unwrap()), ["box:hb:1", "box:hb:2", "box:hb:3"]);
    let one = serde_json::to_vec(&hb(1)).unwrap().len();
    // Room for exactly two entries with the brackets and one comma.
    assert_eq!(ob.peek(100, 2 + one + 1 + one).unwrap().len(), 2);
    assert_eq!(ob.peek(100, 2 + one + one).unwrap().len(), 1);
    assert_eq!(ob.peek(100, 1).unwrap().len(), 1, "an entry bigger than the budget still goes alone");
    // Peeking removes nothing.
    assert_eq!(ob.stats().pending, 10);
}

#[test]
fn an_entry_leaves_only_with_its_receipt_or_as_a_dead_letter() {
    let dir = tempfile::tempdir().unwrap();
    let ob = Outbox::open(dir.path(), OutboxOptions::default()).unwrap();
    ob.enqueue(&[reg(1), hb(1), hb(2), hb(3)], Stamp::default(), 5).unwrap();
    let batch = ob.peek(10, usize::MAX).unwrap();
    ob.resolve(
        &[
            (&batch[0], receipt(40)),
            (&batch[1], Resolution::Dead { code: "invalid_command".into(), message: "bad".into() }),
            (&batch[3], Resolution::Receipt { ledger_seq: 41, hash: "ab".repeat(32), duplicate: true }),
        ],
        99,
    )
    .unwrap();
    drop(ob);
    let ob = Outbox::open(dir.path(), OutboxOptions::default()).unwrap();
    assert_eq!(ids(&ob.pending().unwrap()), ["box:hb:2"], "the unresolved entry stays");
    let receipts = ob.receipts().unwrap();
    assert_eq!(receipts.len(), 2);
    assert_eq!((receipts[0].command_id.as_str(), receipts[0].ledger_seq), ("box:reg:1", 40));
    assert_eq!((receipts[1].sampled_at, receipts[1].duplicate, receipts[1].received_at), (Some(3), true, 99));
    let dead = ob.dead_letters().unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].code.as_str(), dead[0].submission.clone()), ("invalid_command", hb(1)));
    let s = ob.stats();
    assert_eq!((s.pending, s.receipts, s.dead_letters), (1, 2, 1));
}

#[test]
fn receipts_and_dead_letters_are_bounded_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let opts = OutboxOptions { max_receipts: 3, max_dead_letters: 2, ..OutboxOptions::default() };
    let ob = Outbox::open(dir.path(), opts).unwrap();
    for n in 1..=6 {
        ob.enqueue(&[hb(n)], Stamp::default(), n).unwrap();
        let p = ob.peek(1, usize::MAX).unwrap();
        let r = if n % 2 == 0 { receipt(n as u64) } else { Resolution::Dead { code: "x".into(), message: "y".into() } };
        ob.resolve(&[(&p[0], r)], n).unwrap();
    }
    let ob_stats = ob.stats();
    assert_eq!((ob_stats.receipts, ob_stats.dead_letters), (3, 2));
    assert_eq!(ob.receipts().unwrap().iter().map(|r| r.ledger_seq).collect::<Vec<_>>(), [2, 4, 6]);
    assert_eq!(
        ob.dead_letters().unwrap().iter().map(|d| d.submission.command_id.clone()).collect::<Vec<_>>(),
        ["box:hb:3", "box:hb:5"]
    );
}

#[test]
fn when_full_old_heartbeats_are_thinned_and_registrations_kept() {
    let dir = tempfile::tempdir().unwrap();
    let opts = OutboxOptions { max_entries: 9, ..OutboxOptions::default() };
    let ob = Outbox::open(dir.path(), opts).unwrap();
    ob.enqueue(&[reg(0)], Stamp::default(), 0).unwrap();
    for n in 1..=8 {
        assert!(ob.enqueue(&[hb(n)], Stamp::default(), n).unwrap().coalesced.is_empty());
    }
    // Full (9). The next heartbeat thins the oldest half of the 8 queued ones (hb1..hb4) by dropping its
    // 2nd and 4th: hb2 and hb4.
    let done = ob.enqueue(&[hb(9)], Stamp::default(), 9).unwrap();
    assert_eq!(done.coalesced, ["box:hb:2", "box:hb:4"]);
    let expect = |p: &[Pending], want: &[&str]| assert_eq!(ids(p), want);
    expect(
        &ob.pending().unwrap(),
        &["box:reg:0", "box:hb:1", "box:hb:3", "box:hb:5", "box:hb:6", "box:hb:7", "box:hb:8", "box:hb:9"],
    );
    ob.enqueue(&[hb(10)], Stamp::default(), 10).unwrap(); // 9 entries: fits
    // Next: the 8 heartbeats are 1 3 5 6 7 8 9 10; the oldest half (1 3 5 6) loses 3 and 6.
    let done = ob.enqueue(&[hb(11)], Stamp::default(), 11).unwrap();
    assert_eq!(done.coalesced, ["box:hb:3", "box:hb:6"]);
    // A registration arriving while full is kept, and room is made from heartbeats.
    ob.enqueue(&[hb(12)], Stamp::default(), 12).unwrap();
    ob.enqueue(&[reg(13)], Stamp::default(), 13).unwrap();
    let pending = ob.pending().unwrap();
    assert!(pending.len() <= 9);
    assert_eq!(pending[0].submission.command_id, "box:reg:0");
    assert!(ids(&pending).contains(&"box:reg:13".to_owned()));
    assert_eq!(ids(&pending).last().map(String::as_str), Some("box:reg:13"));
    assert_eq!(pending[1].submission.command_id, "box:hb:1", "the oldest heartbeat is kept");
    // The newest heartbeats are intact.
    let tail: Vec<String> = ids(&pending).into_iter().rev().skip(1).take(2).collect();
    assert_eq!(tail, ["box:hb:12", "box:hb:11"]);
    assert_eq!(ob.stats().coalesced_total, 4 + 2);
    // The counter survives a reopen.
    drop(ob);
    let ob = Outbox::open(dir.path(), opts).unwrap();
    assert_eq!(ob.stats().coalesced_total, 6);
}

#[test]
fn a_full_outbox_without_heartbeats_refuses_instead_of_dropping_registrations() {
    let dir = tempfile::tempdir().unwrap();
    let ob = Outbox::open(dir.path(), OutboxOptions { max_entries: 2, ..OutboxOptions::default() }).unwrap();
    ob.enqueue(&[reg(1), reg(2)], Stamp::default(), 0).unwrap();
    let err = ob.enqueue(&[reg(3)], Stamp { sampled_at: Some(3), inventory: Some([1; 32]) }, 0).unwrap_err();
    assert_eq!(err.code(), "outbox_full");
    assert_eq!(ids(&ob.pending().unwrap()), ["box:reg:1", "box:reg:2"]);
    assert_eq!(ob.registered_inventory(), None, "nothing of a refused enqueue is applied");
}

#[test]
fn the_byte_bound_also_triggers_coalescing() {
    let dir = tempfile::tempdir().unwrap();
    let one = serde_json::to_vec(&hb(1)).unwrap().len() as u64;
    let ob = Outbox::open(dir.path(), OutboxOptions { max_bytes: one * 4, ..OutboxOptions::default() }).unwrap();
    for n in 1..=4 {
        ob.enqueue(&[hb(n)], Stamp::default(), n).unwrap();
    }
    let done = ob.enqueue(&[hb(5)], Stamp::default(), 5).unwrap();
    assert_eq!(done.coalesced, ["box:hb:2"]);
    assert!(ob.stats().pending_bytes <= one * 4);
}

#[test]
fn a_command_too_big_for_one_request_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ob = Outbox::open(dir.path(), OutboxOptions::default()).unwrap();
    let huge = Submission {
        command_id: "big".into(),
        expected_version: None,
        command: Command::RegisterDevice { device_id: "box".into(), hostname: Some("h".repeat(70_000)), gpus: vec![] },
    };
    assert_eq!(ob.enqueue(&[huge], Stamp::default(), 0).unwrap_err().code(), "command_too_large");
    assert_eq!(ob.stats().pending, 0);
}

#[test]
fn a_held_outbox_cannot_be_opened_twice() {
    let dir = tempfile::tempdir().unwrap();
    let _held = Outbox::open(dir.path(), OutboxOptions::default()).unwrap();
    // Within the same process sled's lock is per-open file, so the second open waits and then fails.
    let err = Outbox::open(dir.path(), OutboxOptions::default()).unwrap_err();
    assert_eq!(err.code(), "outbox_locked", "{err}");
}

/// The writer half of the crash test: enqueue and resolve forever, printing each acknowledged step.
fn crash_child(dir: &str) -> ! {
    let ob = Outbox::open(std::path::Path::new(dir), OutboxOptions::default()).unwrap();
    let mut n = ob.stats().next_seq as i64 + 1_000_000;
    // Bounded: the parent kills this process long before; a parent that died closes stdout, and the next
    // println! ends this process too.
    for _ in 0..50_000 {
        n += 1;
        ob.enqueue(&[hb(n)], Stamp { sampled_at: Some(n), inventory: None }, n).unwrap();
        println!("Q box:hb:{n}");
        if n % 3 == 0 {
            let p = ob.peek(2, usize::MAX).unwrap();
            let done: Vec<(&Pending, Resolution)> = p.iter().map(|p| (p, receipt(p.seq))).collect();
            ob.resolve(&done, n).unwrap();
            for p in &p {
                println!("R {}", p.submission.command_id);
            }
        }
    }
    std::process::exit(0)
}

#[test]
fn a_writer_killed_mid_stream_loses_nothing_it_acknowledged() {
    if let Ok(dir) = std::env::var("HWLEDGER_OUTBOX_CRASH_CHILD") {
        crash_child(&dir);
    }
    let dir = tempfile::tempdir().unwrap();
    let mut queued = BTreeSet::new();
    let mut received = BTreeSet::new();
    for round in 0..3 {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "a_writer_killed_mid_stream_loses_nothing_it_acknowledged",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("HWLEDGER_OUTBOX_CRASH_CHILD", dir.path())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut seen = 0;
        while seen < 60 + 40 * round {
            let Some(line) = lines.next() else { break };
            let line = line.unwrap();
            if let Some(id) = line.strip_prefix("Q ") {
                queued.insert(id.to_owned());
                seen += 1;
            } else if let Some(id) = line.strip_prefix("R ") {
                received.insert(id.to_owned());
            }
        }
        child.kill().unwrap(); // SIGKILL
        let _ = child.wait();
        // Lines printed before the kill but not yet read are also acknowledged steps.
        for line in lines.map_while(Result::ok) {
            if let Some(id) = line.strip_prefix("Q ") {
                queued.insert(id.to_owned());
            } else if let Some(id) = line.strip_prefix("R ") {
                received.insert(id.to_owned());
            }
        }
        let ob = Outbox::open(dir.path(), OutboxOptions::default()).unwrap();
        let pending: BTreeSet<String> = ids(&ob.pending().unwrap()).into_iter().collect();
        let receipts: BTreeSet<String> = ob.receipts().unwrap().into_iter().map(|r| r.command_id).collect();
        assert!(seen > 0, "the child wrote nothing");
        for id in &queued {
            assert!(pending.contains(id) || receipts.contains(id), "round {round}: {id} was acknowledged and is gone");
        }
        for id in &received {
            assert!(
                receipts.contains(id) && !pending.contains(id),
                "round {round}: resolved {id} is not resolved on disk"
            );
        }
        assert!(pending.is_disjoint(&receipts));
        let stats = ob.stats();
        assert_eq!(stats.pending, pending.len());
        assert_eq!(stats.receipts, receipts.len());
    }
}

/// A transport that answers from a script and records what it was sent.
struct Scripted {
    answers: Mutex<Vec<Result<Vec<ItemOutcome>, SendFailure>>>,
    sent: Mutex<Vec<Vec<String>>>,
    calls: AtomicUsize,
}

impl Scripted {
    fn new(mut answers: Vec<Result<Vec<ItemOutcome>, SendFailure>>) -> Arc<Scripted> {
        answers.reverse();
        Arc::new(Scripted { answers: Mutex::new(answers), sent: Mutex::new(vec![]), calls: AtomicUsize::new(0) })
    }
}

/// The transport handed to the sender; the test keeps the other `Arc` to look at what was sent.
struct Handle(Arc<Scripted>);

impl Transport for Handle {
    async fn send_batch(&self, batch: &[Pending]) -> Result<Vec<ItemOutcome>, SendFailure> {
        let this = &self.0;
        this.calls.fetch_add(1, Ordering::SeqCst);
        this.sent.lock().push(ids(batch));
        this.answers
            .lock()
            .pop()
            .unwrap_or_else(|| Err(SendFailure::Transient { message: "script ended".into(), retry_after: None }))
    }
}

fn stored(id: &str, seq: u64) -> ItemOutcome {
    ItemOutcome::Stored { command_id: id.into(), ledger_seq: seq, hash: "cd".repeat(32), duplicate: false }
}

#[tokio::test]
async fn the_send_loop_handles_every_kind_of_answer() {
    let dir = tempfile::tempdir().unwrap();
    let ob = Arc::new(Outbox::open(dir.path(), OutboxOptions::default()).unwrap());
    ob.enqueue(&[reg(1), hb(1), hb(2), hb(3)], Stamp::default(), 0).unwrap();
    let rejected = |code: &str, retryable| ItemOutcome::Rejected { code: code.into(), message: "m".into(), retryable };
    let t = Scripted::new(vec![
        // 1: server down.
        Err(SendFailure::Transient { message: "connection refused".into(), retry_after: None }),
        // 2: 429 with Retry-After.
        Err(SendFailure::Transient { message: "429".into(), retry_after: Some(std::time::Duration::from_secs(7)) }),
        // 3: the answer names the wrong command: nothing is recorded.
        Ok(vec![stored("box:hb:9", 1), stored("box:hb:1", 2), stored("box:hb:2", 3), stored("box:hb:3", 4)]),
        // 4: registration stored, hb1 refused for good, hb2 storage trouble, hb3 stored.
        Ok(vec![
            stored("box:reg:1", 10),
            rejected("invalid_command", false),
            rejected("storage_unavailable", true),
            stored("box:hb:3", 11),
        ]),
        // 5: hb2 again: stored.
        Ok(vec![stored("box:hb:2", 12)]),
    ]);
    let mut sender = Sender::new(ob.clone(), Handle(t.clone()), SendOptions::default());
    assert!(matches!(sender.round().await.unwrap(), Step::Backoff(_)));
    match sender.round().await.unwrap() {
        Step::Backoff(d) => assert!(d >= std::time::Duration::from_secs(7), "Retry-After ignored: {d:?}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(sender.round().await.unwrap(), Step::Backoff(_)));
    assert_eq!(ob.stats().pending, 4, "a confused answer changes nothing");
    assert!(matches!(sender.round().await.unwrap(), Step::Backoff(_)), "a retryable item means backing off");
    assert_eq!(ids(&ob.pending().unwrap()), ["box:hb:2"]);
    let receipts: Vec<(String, u64)> =
        ob.receipts().unwrap().into_iter().map(|r| (r.command_id, r.ledger_seq)).collect();
    assert_eq!(receipts, [("box:reg:1".to_owned(), 10), ("box:hb:3".to_owned(), 11)]);
    let dead = ob.dead_letters().unwrap();
    assert_eq!((dead.len(), dead[0].code.as_str()), (1, "invalid_command"));
    assert_eq!(sender.round().await.unwrap(), Step::Sent { delivered: 1, duplicates: 0, dead: 0, kept: 0 });
    assert_eq!(sender.round().await.unwrap(), Step::Idle);
    // Every round sent the oldest entries still queued, in order.
    let sent = t.sent.lock().clone();
    assert_eq!(sent[0], ["box:reg:1", "box:hb:1", "box:hb:2", "box:hb:3"]);
    assert_eq!(sent[3], sent[0]);
    assert_eq!(sent[4], ["box:hb:2"]);
    assert_eq!(t.calls.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn a_refused_batch_is_bisected_down_to_the_one_bad_command() {
    let dir = tempfile::tempdir().unwrap();
    let ob = Arc::new(Outbox::open(dir.path(), OutboxOptions::default()).unwrap());
    ob.enqueue(&[hb(1), hb(2), hb(3), hb(4)], Stamp::default(), 0).unwrap();
    let too_large = || Err(SendFailure::BadBatch { code: "body_too_large".into(), message: "m".into() });
    let t = Scripted::new(vec![
        too_large(),                                            // [1 2 3 4]
        Ok(vec![stored("box:hb:1", 1), stored("box:hb:2", 2)]), // [1 2]
        too_large(),                                            // [3 4]
        too_large(),                                            // [3]: dead-lettered
        Ok(vec![stored("box:hb:4", 3)]),                        // [4]
    ]);
    let mut sender = Sender::new(ob.clone(), Handle(t.clone()), SendOptions::default());
    for _ in 0..5 {
        assert!(matches!(sender.round().await.unwrap(), Step::Sent { .. }));
    }
    assert_eq!(sender.round().await.unwrap(), Step::Idle);
    let dead = ob.dead_letters().unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].submission.command_id.as_str(), dead[0].code.as_str()), ("box:hb:3", "body_too_large"));
    assert_eq!(ob.receipts().unwrap().len(), 3);
    let sent = t.sent.lock().clone();
    assert_eq!(sent.iter().map(Vec::len).collect::<Vec<_>>(), [4, 2, 2, 1, 1]);
}

#[tokio::test]
async fn a_refused_agent_keeps_everything_and_waits_the_longest_backoff() {
    let dir = tempfile::tempdir().unwrap();
    let ob = Arc::new(Outbox::open(dir.path(), OutboxOptions::default()).unwrap());
    ob.enqueue(&[hb(1), hb(2)], Stamp::default(), 0).unwrap();
    let t = Scripted::new(vec![Err(SendFailure::Refused { code: "not_pinned".into(), message: "m".into() })]);
    let options = SendOptions::default();
    let mut sender = Sender::new(ob.clone(), Handle(t), options);
    assert_eq!(sender.round().await.unwrap(), Step::Backoff(options.backoff.max));
    assert_eq!(ob.stats().pending, 2);
    assert_eq!(ob.stats().dead_letters, 0);
}
