//! Harness shared by the end-to-end reliability tests (crash matrix, disk full, hostile clients, concurrency
//! through the server): runs the real `hwledger` binary — `serve` on 127.0.0.1:0 and the offline tools —,
//! talks to the server over mTLS with the operator bundle `serve` creates in `<data>/operator/`, and prints
//! what a test measured as `RELIABILITY <key> <value>` lines, which `scripts/reliability.sh` collects into
//! docs/RELIABILITY.md (run the tests with `--nocapture` to see them).

#![allow(dead_code)] // Each test target uses a different part of the harness.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_hwledger");

/// Longest a server may take to start listening (a restart after SIGKILL includes sled's recovery and the
/// projections' catch-up from their last checkpoint).
pub const START_WAIT: Duration = Duration::from_secs(60);

/// Prints one figure for the reliability report.
pub fn figure(key: &str, value: impl std::fmt::Display) {
    println!("RELIABILITY {key} {value}");
}

/// Deterministic xorshift64* generator: a seed printed by the test reproduces its run.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (0 is replaced by a fixed odd constant).
    pub fn new(seed: u64) -> Rng {
        Rng(if seed == 0 { 0x9e37_79b9_7f4a_7c15 } else { seed })
    }

    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// An environment variable parsed as a number, or `default`.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(default)
}

/// Runs `hwledger --data DATA ARGS...` to completion.
pub fn hw(data: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--data")
        .arg(data)
        .args(args)
        .env_remove("HWLEDGER_CONFIG")
        .env_remove("HWLEDGER_LISTEN")
        .output()
        .expect("run the hwledger binary")
}

/// Text of a process's output, for assertion messages.
pub fn show(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).chars().take(4000).collect::<String>(),
        String::from_utf8_lossy(&o.stderr).chars().take(4000).collect::<String>()
    )
}

/// A running `hwledger serve`.
pub struct Server {
    child: Child,
    /// The mTLS API address.
    pub api: SocketAddr,
    /// Its data directory.
    pub data: PathBuf,
    /// Everything it wrote to stderr so far.
    log: Arc<Mutex<String>>,
}

impl Server {
    /// Starts `hwledger serve` on 127.0.0.1:0 over `data` (with `config`, a TOML file, if given) and waits until
    /// it listens.
    pub fn start(data: &Path, config: Option<&Path>) -> Server {
        let mut cmd = Command::new(BIN);
        cmd.arg("--data").arg(data);
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        let mut child = cmd
            .args(["serve", "--listen", "127.0.0.1:0", "--dashboard-listen", "127.0.0.1:0"])
            .env_remove("HWLEDGER_LISTEN")
            .env("HWLEDGER_LOG", "warn,hwledger=info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn hwledger serve");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel::<SocketAddr>();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line
                    .strip_prefix("hwledger: serving ")
                    .and_then(|rest| rest.split(' ').next())
                    .and_then(|a| a.parse::<SocketAddr>().ok())
                {
                    let _ = tx.send(addr);
                }
                if let Ok(mut l) = sink.lock() {
                    // Keep the log bounded: a long run only needs its tail for a failure message.
                    if l.len() > 256 * 1024 {
                        let cut = l.len() - 128 * 1024;
                        let cut = (cut..l.len()).find(|i| l.is_char_boundary(*i)).unwrap_or(l.len());
                        l.drain(..cut);
                    }
                    l.push_str(&line);
                    l.push('\n');
                }
            }
        });
        let api = match rx.recv_timeout(START_WAIT) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "hwledger serve did not start listening within {START_WAIT:?}:\n{}",
                    log.lock().map(|l| l.clone()).unwrap_or_default()
                );
            }
        };
        Server { child, api, data: data.to_path_buf(), log }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `https://127.0.0.1:PORT/path`.
    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.api)
    }

    /// SIGKILL: no destructor runs, nothing is flushed.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGINT (what Ctrl-C sends): the server drains and closes the ledger; returns its exit code.
    pub fn interrupt(&mut self) -> Option<i32> {
        let _ = Command::new("kill").args(["-INT", &self.pid().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        None
    }

    /// Whether the process is still running (not exited, not a zombie), from /proc.
    pub fn alive(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .map(|s| !s.lines().any(|l| l.starts_with("State:") && (l.contains("Z (") || l.contains("X ("))))
            .unwrap_or(false)
    }

    /// Resident set size (kB) from /proc/PID/status.
    pub fn rss_kb(&self) -> Option<u64> {
        proc_status_kb(self.pid(), "VmRSS:")
    }

    /// Open file descriptors of the process.
    pub fn open_fds(&self) -> Option<usize> {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid())).ok().map(|d| d.count())
    }

    /// What the server logged so far.
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `kB` field of /proc/PID/status.
pub fn proc_status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.trim_start_matches(field).trim().trim_end_matches("kB").trim().parse().ok()
}

/// The operator bundle `serve` wrote: (CA bundle, certificate, key) PEM bytes.
pub fn operator_bundle(data: &Path) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let dir = data.join("operator");
    let read = |name: &str| std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("read {name}: {e}"));
    (read("ca.crt"), read("operator-admin.crt"), read("operator-admin.key"))
}

/// An HTTPS client presenting the operator's certificate (HTTP/2 when the server offers it).
pub fn operator_client(data: &Path, timeout: Duration) -> reqwest::Client {
    let (ca, cert, key) = operator_bundle(data);
    hwledger_wire::client_tls::build_client(&ca, Some((&cert, &key)), timeout).expect("build the operator client")
}

/// The operator client forced to HTTP/1.1 (one request at a time per connection).
pub fn operator_client_http1(data: &Path, timeout: Duration) -> reqwest::Client {
    let (ca, cert, key) = operator_bundle(data);
    hwledger_wire::client_tls::client_builder(&ca, Some((&cert, &key)), timeout)
        .expect("operator client builder")
        .http1_only()
        .build()
        .expect("build the operator client")
}

/// A submission enrolling `device`.
pub fn enroll_submission(device: &str) -> Value {
    json!({"command_id": format!("enroll-{device}"),
           "command": {"type": "enroll_device", "device_id": device, "kind": "local"}})
}

/// A heartbeat submission; the body depends only on its arguments, so a retry sends identical bytes.
pub fn heartbeat(command_id: &str, device: &str, n: u64) -> Value {
    let n_i = i64::try_from(n).unwrap_or(i64::MAX);
    json!({
        "command_id": command_id,
        "command": {
            "type": "record_telemetry",
            "device_id": device,
            "sampled_at": 1_700_000_000_000i64 + n_i,
            "gpus": [{"index": 0, "vram_used_mib": 1000 + n % 20000, "vram_total_mib": 24576,
                      "utilization_pct": (n % 100) as f64, "temperature_c": 55.0, "power_w": 210.0}]
        }
    })
}

/// A receipt as a client keeps it: (seq, hash).
pub type Receipt = (u64, String);

/// What a submission came back as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// `accepted` with its receipt.
    Accepted(Receipt),
    /// `duplicate` with the original receipt.
    Duplicate(Receipt),
    /// An HTTP error with its `{code}`.
    Refused(u16, String),
    /// No answer (connection refused, reset, timed out): the outcome is unknown.
    Lost(String),
}

fn receipt_of(v: &Value) -> Option<Receipt> {
    let seq = v.get("seq")?.as_u64()?;
    let hash = v.get("hash")?.as_str()?.to_owned();
    Some((seq, hash))
}

/// Parses one `{status, receipt}` or batch item.
pub fn answer_of(status: &str, receipt: Option<&Value>) -> Option<Answer> {
    let r = receipt.and_then(receipt_of)?;
    match status {
        "accepted" => Some(Answer::Accepted(r)),
        "duplicate" => Some(Answer::Duplicate(r)),
        _ => None,
    }
}

/// `POST /v1/commands`.
pub async fn submit(client: &reqwest::Client, base: &str, body: &Value) -> Answer {
    let resp = match client.post(format!("{base}/v1/commands")).json(body).send().await {
        Ok(r) => r,
        Err(e) => return Answer::Lost(e.to_string()),
    };
    let status = resp.status().as_u16();
    let value: Value = match resp.json().await {
        Ok(v) => v,
        Err(e) => return Answer::Lost(format!("reading the answer: {e}")),
    };
    if status == 200 {
        let s = value.get("status").and_then(Value::as_str).unwrap_or_default();
        answer_of(s, value.get("receipt")).unwrap_or_else(|| Answer::Refused(200, format!("unexpected body {value}")))
    } else {
        Answer::Refused(status, value.get("code").and_then(Value::as_str).unwrap_or("?").to_owned())
    }
}

/// `POST /v1/commands/batch`: one answer per item (all `Lost` if the request got no answer).
pub async fn submit_batch(client: &reqwest::Client, base: &str, items: &[Value]) -> Vec<Answer> {
    let lost = |why: String| vec![Answer::Lost(why); items.len()];
    let resp = match client.post(format!("{base}/v1/commands/batch")).json(&items).send().await {
        Ok(r) => r,
        Err(e) => return lost(e.to_string()),
    };
    let status = resp.status().as_u16();
    let value: Value = match resp.json().await {
        Ok(v) => v,
        Err(e) => return lost(format!("reading the answer: {e}")),
    };
    if status != 200 {
        let code = value.get("code").and_then(Value::as_str).unwrap_or("?").to_owned();
        return vec![Answer::Refused(status, code); items.len()];
    }
    let results = value.get("results").and_then(Value::as_array).cloned().unwrap_or_default();
    if results.len() != items.len() {
        return vec![Answer::Refused(200, format!("{} results for {} items", results.len(), items.len())); items.len()];
    }
    results
        .iter()
        .map(|r| {
            let s = r.get("status").and_then(Value::as_str).unwrap_or_default();
            answer_of(s, r.get("receipt")).unwrap_or_else(|| {
                Answer::Refused(200, r.get("code").and_then(Value::as_str).unwrap_or("?").to_owned())
            })
        })
        .collect()
}

/// Submits until the server gives an answer (bounded: `tries` attempts 50 ms apart).
pub async fn submit_until_answered(client: &reqwest::Client, base: &str, body: &Value, tries: u32) -> Answer {
    let mut last = Answer::Lost("not tried".into());
    for _ in 0..tries {
        last = submit(client, base, body).await;
        if !matches!(last, Answer::Lost(_)) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    last
}

/// An event of `hwledger log --json`: (seq, hash, command id, event type).
#[derive(Debug, Clone)]
pub struct LoggedEvent {
    /// Seq.
    pub seq: u64,
    /// Chain hash (hex).
    pub hash: String,
    /// The command that appended it.
    pub command_id: String,
    /// Its record, as JSON.
    pub record: Value,
}

/// Every event of the data directory, through `hwledger log --json` (the server must not hold the store).
pub fn log_events(data: &Path) -> Vec<LoggedEvent> {
    let o = hw(data, &["--json", "log", "--limit", "100000000"]);
    assert!(o.status.success(), "hwledger log failed: {}", show(&o));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("log line {l:?}: {e}"));
            LoggedEvent {
                seq: v["seq"].as_u64().expect("seq"),
                hash: v["hash"].as_str().expect("hash").to_owned(),
                command_id: v["record"]["command_id"].as_str().expect("command id").to_owned(),
                record: v["record"].clone(),
            }
        })
        .collect()
}

/// `hwledger verify --json` on the data directory: asserts exit 0 and an intact report; returns the head seq.
pub fn verify_intact(data: &Path) -> u64 {
    let o = hw(data, &["--json", "verify"]);
    assert_eq!(o.status.code(), Some(0), "verify must pass: {}", show(&o));
    let report: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("verify JSON: {e}: {}", show(&o)));
    assert_eq!(report["breaks"].as_array().map(Vec::len), Some(0), "{report}");
    report["head_seq"].as_u64().expect("head_seq")
}

/// The four projections' digests rebuilt from the log at `seq` (`hwledger replay --until SEQ --json`).
pub fn rebuilt_digests(data: &Path, seq: u64) -> BTreeMap<String, String> {
    let o = hw(data, &["--json", "replay", "--until", &seq.to_string()]);
    assert!(o.status.success(), "replay --until failed: {}", show(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("replay JSON");
    assert_eq!(v["seq"].as_u64(), Some(seq), "replay stopped elsewhere: {v}");
    v["digests"]
        .as_object()
        .expect("digests")
        .iter()
        .map(|(k, d)| (k.clone(), d.as_str().unwrap_or_default().to_owned()))
        .collect()
}

/// The live server's projection digests once every projection has applied `seq` (`GET /v1/projections`).
pub async fn live_digests(client: &reqwest::Client, server_base: &str, seq: u64) -> (u64, BTreeMap<String, String>) {
    let url = format!("{server_base}/v1/projections?min_seq={seq}");
    let v: Value = client
        .get(&url)
        .send()
        .await
        .expect("GET /v1/projections")
        .error_for_status()
        .expect("projections status")
        .json()
        .await
        .expect("projections JSON");
    let applied = v["applied_seq"].as_u64().expect("applied_seq");
    let digests = v["projections"]
        .as_array()
        .expect("projections")
        .iter()
        .map(|p| {
            assert_eq!(p["applied_seq"].as_u64(), Some(applied), "projections at different seqs: {v}");
            (p["name"].as_str().unwrap_or_default().to_owned(), p["digest"].as_str().unwrap_or_default().to_owned())
        })
        .collect();
    (applied, digests)
}

/// Latency samples (ms) → "p50 p99 max" figures.
pub fn percentiles(samples: &mut [f64]) -> (f64, f64, f64) {
    if samples.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples[i.min(samples.len() - 1)]
    };
    (at(0.5), at(0.99), samples[samples.len() - 1])
}
