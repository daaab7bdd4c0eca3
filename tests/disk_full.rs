//! Disk full through the server: the real `hwledger serve` with its data directory on a small tmpfs this test
//! mounts (root is needed for `mount`; without it the test fails with a clear message), filled up by ingest
//! over mTLS. Checks that commands are refused with `503 {"code":"storage_unavailable"}` while the disk is full
//! (never a crash, never a hang), that `/health` says `degraded` meanwhile, that the **running** server accepts
//! commands again by itself once space is freed, that retries of the refused commands (same ids) are appended
//! once or answered with their original receipt, and afterwards, offline: the chain verifies, every receipt a
//! client got is in the log exactly once, and the live projections equal a rebuild from the log.
//!
//! Figures: `RELIABILITY diskfull.server.*` lines (run with `--nocapture`).

#[path = "stress/mod.rs"]
mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command as Proc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{
    Answer, Server, figure, live_digests, log_events, operator_client, rebuilt_digests, submit, submit_batch,
    submit_until_answered, verify_intact,
};

/// A tmpfs mounted on a fresh directory, unmounted on drop.
struct Tmpfs {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Tmpfs {
    fn mount(size_mib: u64) -> Tmpfs {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("fs");
        std::fs::create_dir(&path).expect("mount point");
        let out = Proc::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m,mode=0700"), "tmpfs"])
            .arg(&path)
            .output();
        match out {
            Ok(o) if o.status.success() => Tmpfs { _dir: dir, path },
            Ok(o) => panic!(
                "this test mounts a {size_mib} MiB tmpfs to fill it up and needs root (`mount -t tmpfs` failed: {}); \
                 run it as root, as CI does",
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => panic!("this test needs the `mount` command to create a small filesystem: {e}"),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Proc::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn available_mib(dir: &Path) -> u64 {
    let out = Proc::new("df").args(["--output=avail", "-m"]).arg(dir).output().expect("df");
    String::from_utf8_lossy(&out.stdout).lines().nth(1).and_then(|l| l.trim().parse().ok()).unwrap_or(0)
}

/// Fills the filesystem of `dir` with a ballast file, leaving about `leave_mib`.
fn ballast(dir: &Path, leave_mib: u64) -> PathBuf {
    use std::io::Write;
    let path = dir.join("ballast");
    let mut f = std::fs::File::create(&path).expect("create ballast");
    let chunk = vec![0x5au8; 1 << 20];
    for _ in 0..available_mib(dir).saturating_sub(leave_mib) {
        if f.write_all(&chunk).is_err() {
            break;
        }
    }
    path
}

/// A heartbeat with 8 GPUs (fills the disk faster than an empty one).
fn big_heartbeat(id: &str, n: u64) -> Value {
    let gpus: Vec<Value> = (0..8)
        .map(|i| {
            json!({"index": i, "vram_used_mib": 1000 + n % 20000, "vram_total_mib": 24576,
                   "utilization_pct": (n % 100) as f64, "temperature_c": 55.0, "power_w": 210.0})
        })
        .collect();
    json!({"command_id": id, "command": {"type": "record_telemetry", "device_id": "dev-0",
           "sampled_at": 1_700_000_000_000i64 + i64::try_from(n).unwrap_or(0), "gpus": gpus}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_gives_503_and_the_running_server_recovers_by_itself() {
    let fs = Tmpfs::mount(64);
    let data = fs.path.join("data");
    let mut server = Server::start(&data, None);
    let base = server.url("");
    let client = operator_client(&data, Duration::from_secs(20));
    let a = submit_until_answered(&client, &base, &support::enroll_submission("dev-0"), 100).await;
    assert!(matches!(a, Answer::Accepted(_)), "{a:?}");
    let ballast = ballast(&fs.path, 10);

    // Ingest in batches of 40 until the server refuses with storage_unavailable (bounded).
    let mut receipts: HashMap<String, (u64, String)> = HashMap::new();
    let mut refused: Vec<Value> = Vec::new();
    let mut other_codes: HashMap<String, u64> = HashMap::new();
    let mut n = 0u64;
    let started = Instant::now();
    while refused.is_empty() && started.elapsed() < Duration::from_secs(240) {
        let items: Vec<Value> = (0..40)
            .map(|_| {
                n += 1;
                big_heartbeat(&format!("hb-{n}"), n)
            })
            .collect();
        for (item, answer) in items.iter().zip(submit_batch(&client, &base, &items).await) {
            let id = item["command_id"].as_str().unwrap_or_default().to_owned();
            match answer {
                Answer::Accepted(r) => {
                    receipts.insert(id, r);
                }
                Answer::Refused(_, code) if code == "storage_unavailable" => refused.push(item.clone()),
                Answer::Refused(status, code) => *other_codes.entry(format!("{status} {code}")).or_default() += 1,
                other => panic!("{id}: {other:?}\n{}", server.log()),
            }
        }
    }
    assert!(!refused.is_empty(), "the disk never filled up in {:?}", started.elapsed());
    assert!(other_codes.is_empty(), "unexpected answers: {other_codes:?}");
    let acknowledged_before_full = receipts.len();

    // While full: single commands get 503 storage_unavailable; /health says degraded or ok, never hangs.
    let mut single_503 = 0;
    for i in 0..5 {
        let hb = big_heartbeat(&format!("full-{i}"), n + 1 + i);
        match submit(&client, &base, &hb).await {
            Answer::Refused(503, code) => {
                assert_eq!(code, "storage_unavailable");
                single_503 += 1;
                refused.push(hb);
            }
            other => panic!("a command on a full disk: {other:?}"),
        }
    }
    let health: Value = client.get(format!("{base}/health")).send().await.expect("health").json().await.expect("json");
    println!("health while full: {health}");
    assert!(server.alive(), "the server died on a full disk:\n{}", server.log());

    // Free the space; the running server recovers by itself.
    std::fs::remove_file(&ballast).expect("remove ballast");
    let recovered_at = Instant::now();
    let mut recovered = None;
    for i in 0..200u64 {
        let hb = big_heartbeat(&format!("after-{i}"), n + 100 + i);
        match submit(&client, &base, &hb).await {
            Answer::Accepted(r) => {
                receipts.insert(format!("after-{i}"), r);
                recovered = Some(recovered_at.elapsed());
                break;
            }
            Answer::Refused(503, _) => refused.push(hb),
            other => panic!("after freeing space: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let Some(recovered) = recovered else {
        panic!("the server did not recover after space was freed:\n{}", server.log());
    };
    let health: Value = client.get(format!("{base}/health")).send().await.expect("health").json().await.expect("json");
    assert_eq!(health["status"], "ok", "{health}");

    // Retries of everything refused: appended once, or the original receipt if it had landed after all.
    let (mut appended, mut duplicate) = (0u64, 0u64);
    for item in &refused {
        let id = item["command_id"].as_str().unwrap_or_default().to_owned();
        match submit_until_answered(&client, &base, item, 100).await {
            Answer::Accepted(r) => {
                appended += 1;
                receipts.insert(id, r);
            }
            Answer::Duplicate(r) => {
                duplicate += 1;
                if let Some(prev) = receipts.get(&id) {
                    assert_eq!(prev, &r, "{id}: the retry's receipt differs");
                }
                receipts.insert(id, r);
            }
            other => panic!("retry of {id}: {other:?}"),
        }
    }

    // The live projections after the episode, then offline checks.
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
    let mut count: HashMap<&str, u32> = HashMap::new();
    for e in &events {
        *count.entry(e.command_id.as_str()).or_default() += 1;
    }
    assert!(count.values().all(|c| *c == 1), "a command id appended twice");
    for (id, (seq, hash)) in &receipts {
        let e = &events[usize::try_from(*seq - 1).expect("seq")];
        assert_eq!((&e.command_id, &e.hash), (id, hash), "acknowledged {id} is not in the log as receipted");
    }
    assert_eq!(rebuilt_digests(&data, head), live, "live projections differ from a rebuild after the episode");

    figure("diskfull.server.acknowledged_before_full", acknowledged_before_full);
    figure("diskfull.server.refused_503", refused.len());
    figure("diskfull.server.single_commands_503", single_503);
    figure("diskfull.server.recovered_after_ms", recovered.as_millis());
    figure("diskfull.server.retries_appended", appended);
    figure("diskfull.server.retries_answered_duplicate", duplicate);
    figure("diskfull.server.lost", 0);
}
