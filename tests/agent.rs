//! End to end: the real `hwledger agent` against the real `hwledger serve`, both as child processes on
//! 127.0.0.1, with fake GPU tools (shell scripts printing captured outputs from `fixtures/`) and a 200 ms
//! heartbeat interval. What the agent recorded is read back from its outbox (`hwledger agent status
//! --json`: receipts, queued commands, dead letters) and from its log lines, and compared with the ledger
//! (`hwledger log --json`) after both processes stopped:
//!
//! - a server outage: every heartbeat sampled while the server was down is in the ledger exactly once;
//! - the agent SIGKILLed mid-backlog and restarted: nothing lost, nothing doubled;
//! - a tiny outbox: old heartbeats coalesced as documented, the registration survives;
//! - a heartbeat the ledger refuses: dead-lettered once with its code, never retried;
//! - an agent whose certificate is revoked: refused, and its queue kept (nothing dead-lettered);
//! - the device id comes from the certificate; a `--device` that disagrees is refused (exit 2).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_hwledger");
const DEVICE: &str = "box-1";
/// Upper bound of every wait below; the machine may be slow and shared, so generous (loops poll).
const WAIT: Duration = Duration::from_secs(90);

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(rel)
}

fn hw(data: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--data")
        .arg(data)
        .args(args)
        .env_remove("HWLEDGER_CONFIG")
        .env("HOME", data)
        .output()
        .expect("run hwledger")
}

fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A child process whose stderr lines are collected by a thread.
struct Proc {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    name: &'static str,
}

impl Proc {
    fn spawn(name: &'static str, mut cmd: Command) -> Proc {
        let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Proc { child, lines, name }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    fn count(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    /// Waits until a line at index ≥ `from` satisfies `pred`; returns its index.
    fn wait_for(&mut self, from: usize, what: &str, pred: impl Fn(&str) -> bool) -> usize {
        let start = Instant::now();
        loop {
            if let Some(i) = self.lines().iter().skip(from).position(|l| pred(l)) {
                return from + i;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited ({status}) before {what}:\n{}", self.name, self.lines().join("\n"));
            }
            assert!(start.elapsed() < WAIT, "{} never logged {what}:\n{}", self.name, self.lines().join("\n"));
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until at least `n` lines after `from` satisfy `pred`.
    fn wait_count(&mut self, from: usize, n: usize, what: &str, pred: impl Fn(&str) -> bool) {
        let start = Instant::now();
        while self.lines().iter().skip(from).filter(|l| pred(l)).count() < n {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited ({status}) before {n}× {what}:\n{}", self.name, self.lines().join("\n"));
            }
            assert!(start.elapsed() < WAIT, "{} never logged {n}× {what}:\n{}", self.name, self.lines().join("\n"));
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends `signal` and waits for a clean exit (status 0).
    fn stop(mut self, signal: Signal) -> Vec<String> {
        kill(Pid::from_raw(i32::try_from(self.child.id()).unwrap()), signal).unwrap();
        let start = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(start.elapsed() < WAIT, "{} did not stop on {signal}", self.name);
            std::thread::sleep(Duration::from_millis(50));
        };
        // Let the reader thread drain the last lines.
        std::thread::sleep(Duration::from_millis(100));
        let lines = self.lines();
        assert!(status.success(), "{} exited {status} on {signal}:\n{}", self.name, lines.join("\n"));
        lines
    }

    /// SIGKILL: no chance to clean up.
    fn kill9(mut self) -> Vec<String> {
        self.child.kill().unwrap();
        let _ = self.child.wait();
        std::thread::sleep(Duration::from_millis(100));
        self.lines()
    }
}

impl Drop for Proc {
    /// A failing test must not leave a server or an agent running.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A data directory with device `box-1` enrolled and an agent bundle issued for it (done before the
/// server starts: the data directory is locked while it runs).
struct Fleet {
    tmp: tempfile::TempDir,
}

impl Fleet {
    fn new() -> Fleet {
        let tmp = tempfile::tempdir().unwrap();
        let fleet = Fleet { tmp };
        let cmd = fleet.path("enroll.json");
        std::fs::write(
            &cmd,
            format!(r#"{{"command_id":"enroll-{DEVICE}","command":{{"type":"enroll_device","device_id":"{DEVICE}","kind":"local"}}}}"#),
        )
        .unwrap();
        ok(hw(&fleet.data(), &["submit", cmd.to_str().unwrap()]));
        let issued = ok(hw(
            &fleet.data(),
            &["--json", "enroll", "agent", DEVICE, "--out", fleet.path("bundle").to_str().unwrap()],
        ));
        std::fs::write(fleet.path("fingerprint"), issued).unwrap();
        std::fs::create_dir_all(fleet.path("tools")).unwrap();
        fleet
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    fn data(&self) -> PathBuf {
        self.path("data")
    }

    /// Starts the server on `port` (0: any); returns it and the port it listens on.
    fn serve(&self, port: u16) -> (Proc, u16) {
        let mut cmd = Command::new(BIN);
        cmd.arg("--data")
            .arg(self.data())
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--dashboard-listen", "127.0.0.1:0"])
            .env_remove("HWLEDGER_CONFIG")
            .env("HOME", self.data());
        let mut p = Proc::spawn("server", cmd);
        let i = p.wait_for(0, "serving", |l| l.contains("hwledger: serving "));
        let line = p.lines()[i].clone();
        let addr = line.split("serving ").nth(1).and_then(|r| r.split(' ').next()).unwrap().to_owned();
        let port = addr.rsplit(':').next().unwrap().parse().unwrap();
        (p, port)
    }

    /// A fake `nvidia-smi` printing `body`'s output.
    fn tool(&self, name: &str, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.path("tools").join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    /// Starts `hwledger agent` against `port` with the fake tools on PATH and `extra` flags.
    fn agent(&self, port: u16, extra: &[&str]) -> Proc {
        let mut cmd = Command::new(BIN);
        cmd.args(["agent", "--server", &format!("https://localhost:{port}")])
            .arg("--bundle")
            .arg(self.path("bundle"))
            .arg("--state-dir")
            .arg(self.path("state"))
            .args(["--backoff-initial", "50ms", "--backoff-max", "400ms", "--hostname", "gpu-box"])
            .args(if extra.contains(&"--interval") { &[][..] } else { &["--interval", "200ms"][..] })
            .args(extra)
            .env_remove("HWLEDGER_CONFIG")
            .env("HOME", self.path("home"))
            .env("HWLEDGER_LOG", "info")
            // Only the fake tools and the shell's basics: no real GPU tool of this machine is found.
            .env("PATH", format!("{}:/usr/bin:/bin", self.path("tools").display()));
        Proc::spawn("agent", cmd)
    }

    fn status(&self) -> Value {
        let out =
            ok(hw(&self.data(), &["--json", "agent", "status", "--state-dir", self.path("state").to_str().unwrap()]));
        serde_json::from_str(out.trim()).unwrap()
    }

    /// The ledger's events of `kind` (after the server stopped).
    fn events(&self, kind: &str) -> Vec<Value> {
        let out = ok(hw(&self.data(), &["--json", "log", "--type", kind, "--limit", "1000000"]));
        out.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }
}

/// Ids of the heartbeats the agent logged as queued.
fn queued_heartbeats(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter_map(|l| l.split("queued heartbeat ").nth(1))
        .filter_map(|rest| rest.split(' ').next())
        .map(str::to_owned)
        .collect()
}

fn sampled_at(id: &str) -> i64 {
    id.rsplit(':').next().unwrap().parse().unwrap()
}

fn now_ms() -> i64 {
    i64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()).unwrap()
}

fn h100_tool(fleet: &Fleet) {
    fleet.tool("nvidia-smi", &format!("cat '{}'", fixture("ssh/nvidia-smi-query-h100-80gb-hbm3-load.csv").display()));
}

/// `sent N commands (...); M queued` with M = 0: the outbox was drained.
fn drained(l: &str) -> bool {
    l.contains("sent ") && l.ends_with("; 0 queued")
}

/// The checks shared by the outage and crash tests: every heartbeat the agent queued is either in the
/// ledger exactly once (with the receipt the agent holds) or still queued; the ledger has no telemetry the
/// agent does not hold a receipt for; one registration.
fn assert_exactly_once(fleet: &Fleet, queued: &[String]) -> BTreeMap<String, i64> {
    let status = fleet.status();
    let receipts: BTreeMap<String, u64> = status["receipts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["command_id"].as_str().unwrap().to_owned(), r["ledger_seq"].as_u64().unwrap()))
        .collect();
    let pending: BTreeSet<String> =
        status["pending"].as_array().unwrap().iter().map(|p| p["command_id"].as_str().unwrap().to_owned()).collect();
    assert!(status["dead_letters"].as_array().unwrap().is_empty(), "{status}");
    assert_eq!(status["stats"]["coalesced_total"], 0);

    let events = fleet.events("telemetry_recorded");
    let mut in_ledger: BTreeMap<String, (u64, i64)> = BTreeMap::new();
    let mut sampled = BTreeSet::new();
    for e in &events {
        let id = e["record"]["command_id"].as_str().unwrap().to_owned();
        let at = e["record"]["event"]["telemetry_recorded"]["sampled_at"].as_i64().unwrap();
        assert!(sampled.insert(at), "sampled_at {at} recorded twice");
        assert_eq!(sampled_at(&id), at);
        assert!(in_ledger.insert(id.clone(), (e["seq"].as_u64().unwrap(), at)).is_none(), "{id} twice in the ledger");
    }
    for id in queued {
        match (receipts.get(id), in_ledger.get(id)) {
            (Some(seq), Some((ledger_seq, _))) => assert_eq!(seq, ledger_seq, "{id}: receipt seq differs from the log"),
            (None, None) => assert!(pending.contains(id), "{id} was queued and is neither in the ledger nor queued"),
            (r, l) => panic!("{id}: receipt {r:?} but ledger {l:?}"),
        }
    }
    for id in in_ledger.keys() {
        assert!(receipts.contains_key(id), "{id} is in the ledger without a receipt in the outbox");
    }
    let registrations = fleet.events("device_registered");
    assert_eq!(registrations.len(), 1, "{registrations:?}");
    assert_eq!(registrations[0]["record"]["actor"]["agent"], DEVICE);
    let gpus = &registrations[0]["record"]["event"]["device_registered"]["gpus"];
    assert_eq!(gpus[0]["name"], "NVIDIA H100 80GB HBM3");
    in_ledger.into_iter().map(|(id, (_, at))| (id, at)).collect()
}

#[test]
fn every_heartbeat_of_a_server_outage_arrives_exactly_once() {
    let fleet = Fleet::new();
    h100_tool(&fleet);
    let (server, port) = fleet.serve(0);
    let mut agent = fleet.agent(port, &[]);
    agent.wait_for(0, "a first delivery", |l| l.contains("sent ") && l.contains("commands"));

    server.stop(Signal::SIGINT);
    let down_at = now_ms();
    let mark = agent.count();
    agent.wait_count(mark, 1, "server unreachable", |l| l.contains("server unreachable"));
    agent.wait_count(mark, 6, "heartbeats queued during the outage", |l| l.contains("queued heartbeat"));
    let up_at = now_ms();
    let (server, _) = fleet.serve(port);
    let mark = agent.count();
    agent.wait_for(mark, "the backlog drained", drained);
    let lines = agent.stop(Signal::SIGTERM);
    assert!(lines.iter().any(|l| l.contains("SIGTERM: stopping")), "{lines:?}");
    server.stop(Signal::SIGINT);

    let queued = queued_heartbeats(&lines);
    let recorded = assert_exactly_once(&fleet, &queued);
    let during: Vec<&String> = queued.iter().filter(|id| (down_at..=up_at).contains(&sampled_at(id))).collect();
    assert!(during.len() >= 5, "only {} heartbeats sampled during the outage", during.len());
    for id in during {
        assert!(recorded.contains_key(id), "{id}, sampled while the server was down, is not in the ledger");
    }
}

#[test]
fn an_agent_killed_mid_backlog_loses_and_doubles_nothing() {
    let fleet = Fleet::new();
    h100_tool(&fleet);
    let (server, port) = fleet.serve(0);
    // One command per request, so the backlog drains over many requests and the kill lands inside it.
    let mut agent = fleet.agent(port, &["--batch-max", "1"]);
    agent.wait_for(0, "a first delivery", |l| l.contains("sent "));
    server.stop(Signal::SIGINT);
    let mark = agent.count();
    // A backlog long enough (30 requests, each a durable commit) that the kill below lands inside it.
    agent.wait_count(mark, 30, "a backlog", |l| l.contains("queued heartbeat"));
    let (server, _) = fleet.serve(port);
    let mark = agent.count();
    agent.wait_for(mark, "the backlog starting to drain", |l| l.contains("sent 1 commands"));
    let mut lines = agent.kill9();
    let backlog_left = lines.iter().rev().find_map(|l| {
        l.rsplit("; ").next().and_then(|t| t.strip_suffix(" queued")).and_then(|n| n.parse::<usize>().ok())
    });
    assert!(backlog_left.is_some_and(|n| n > 0), "the kill did not land mid-backlog: {lines:?}");

    let mut agent = fleet.agent(port, &["--batch-max", "1"]);
    let first = agent.wait_for(0, "the restart", |l| l.contains("queued from before"));
    assert!(!agent.lines()[first].contains(" 0 commands queued from before"), "{}", agent.lines()[first]);
    agent.wait_for(0, "the backlog drained", drained);
    lines.extend(agent.stop(Signal::SIGTERM));
    server.stop(Signal::SIGINT);

    let queued = queued_heartbeats(&lines);
    let recorded = assert_exactly_once(&fleet, &queued);
    assert!(recorded.len() >= 30);
    // The restarted agent did not register again (same inventory, remembered in the outbox).
    assert_eq!(lines.iter().filter(|l| l.contains("queued registration")).count(), 1);
}

#[test]
fn a_tiny_outbox_coalesces_old_heartbeats_and_keeps_the_registration() {
    let fleet = Fleet::new();
    h100_tool(&fleet);
    // Nothing listens on this port yet: the agent queues and coalesces.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut agent = fleet.agent(port, &["--outbox-max-entries", "6", "--interval", "100ms"]);
    agent.wait_count(0, 3, "coalescing", |l| l.contains("outbox full: coalesced"));
    let lines = agent.stop(Signal::SIGTERM);
    let queued = queued_heartbeats(&lines);

    let status = fleet.status();
    let pending: Vec<(String, String)> = status["pending"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["kind"].as_str().unwrap().to_owned(), p["command_id"].as_str().unwrap().to_owned()))
        .collect();
    assert!(pending.len() <= 6, "{pending:?}");
    assert_eq!(pending[0].0, "registration", "{pending:?}");
    assert_eq!(pending[0].1, format!("{DEVICE}:reg:{}", sampled_at(&queued[0])));
    let kept: Vec<&String> = pending[1..].iter().map(|p| &p.1).collect();
    // The policy: the oldest heartbeat is kept, the newest is intact, and what is kept is in order.
    assert_eq!(kept.first().copied(), queued.first(), "the oldest heartbeat was dropped");
    assert_eq!(kept.last().copied(), queued.last(), "the newest heartbeat was dropped");
    let mut it = queued.iter();
    for k in &kept {
        assert!(it.any(|q| q == *k), "{k} is not in queue order");
    }
    let coalesced = status["stats"]["coalesced_total"].as_u64().unwrap();
    assert_eq!(coalesced as usize, queued.len() - kept.len(), "every heartbeat is kept, or counted as coalesced");
    // Each coalescing pass drops the 2nd, 4th, … of the oldest half: one or two at this size.
    let mut logged = 0;
    for l in lines.iter().filter(|l| l.contains("outbox full: coalesced")) {
        let n: usize = l.split("coalesced ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
        assert!((1..=2).contains(&n), "{l}");
        logged += n;
    }
    assert_eq!(logged as u64, coalesced);

    // The server comes up: the registration and the kept heartbeats arrive, the coalesced ones never do.
    let (server, _) = fleet.serve(port);
    let mut agent = fleet.agent(port, &["--outbox-max-entries", "6", "--interval", "100ms"]);
    agent.wait_for(0, "the backlog drained", drained);
    agent.stop(Signal::SIGTERM);
    server.stop(Signal::SIGINT);
    let in_ledger: BTreeSet<String> = fleet
        .events("telemetry_recorded")
        .iter()
        .map(|e| e["record"]["command_id"].as_str().unwrap().to_owned())
        .collect();
    for k in &kept {
        assert!(in_ledger.contains(*k), "kept heartbeat {k} did not arrive");
    }
    for q in &queued {
        if !kept.contains(&q) {
            assert!(!in_ledger.contains(q), "coalesced heartbeat {q} arrived");
        }
    }
    assert_eq!(fleet.events("device_registered").len(), 1);
}

#[test]
fn a_refused_heartbeat_is_dead_lettered_once_and_not_retried() {
    let fleet = Fleet::new();
    // Every other run reports the H100 capture with its temperature changed to 255 °C (a failed sensor):
    // outside the ledger's -60…200 °C, so that heartbeat is refused with `invalid_command`.
    let capture = fixture("ssh/nvidia-smi-query-h100-80gb-hbm3-load.csv");
    let counter = fleet.path("tools/count");
    fleet.tool(
        "nvidia-smi",
        &format!(
            "n=$(cat '{c}' 2>/dev/null || echo 0); n=$((n+1)); echo $n > '{c}'\n\
             if [ $((n % 2)) -eq 0 ]; then sed 's/, 59, /, 255, /' '{f}'; else cat '{f}'; fi",
            c = counter.display(),
            f = capture.display()
        ),
    );
    let (server, port) = fleet.serve(0);
    let mut agent = fleet.agent(port, &[]);
    agent.wait_count(0, 3, "dead letters", |l| l.contains("dead-lettered"));
    let mark = agent.count();
    agent.wait_for(mark, "a later delivery", |l| l.contains("sent "));
    let lines = agent.stop(Signal::SIGTERM);
    server.stop(Signal::SIGINT);

    let status = fleet.status();
    let dead = status["dead_letters"].as_array().unwrap();
    let logged = lines.iter().filter(|l| l.contains("dead-lettered")).count();
    assert_eq!(dead.len(), logged, "each refused heartbeat is dead-lettered exactly once");
    let mut ids = BTreeSet::new();
    for d in dead {
        assert_eq!(d["code"], "invalid_command", "{d}");
        assert!(d["message"].as_str().unwrap().contains("temperature"), "{d}");
        assert_eq!(d["submission"]["command"]["gpus"][0]["temperature_c"], 255.0);
        assert!(ids.insert(d["submission"]["command_id"].as_str().unwrap().to_owned()));
    }
    // Not retried: no dead letter is still queued, and the ledger holds none of them.
    let pending: BTreeSet<String> =
        status["pending"].as_array().unwrap().iter().map(|p| p["command_id"].as_str().unwrap().to_owned()).collect();
    assert!(pending.is_disjoint(&ids));
    let in_ledger: BTreeSet<String> = fleet
        .events("telemetry_recorded")
        .iter()
        .map(|e| e["record"]["command_id"].as_str().unwrap().to_owned())
        .collect();
    assert!(in_ledger.is_disjoint(&ids));
    // The good heartbeats between them were delivered.
    assert!(in_ledger.len() >= 2, "{in_ledger:?}");
    assert_eq!(fleet.events("device_registered").len(), 1);
}

#[test]
fn the_device_comes_from_the_certificate_and_a_mismatch_is_refused() {
    let fleet = Fleet::new();
    let run = |extra: &[&str]| {
        Command::new(BIN)
            .args(["agent", "--server", "https://localhost:9"])
            .arg("--bundle")
            .arg(fleet.path("bundle"))
            .arg("--state-dir")
            .arg(fleet.path("state"))
            .args(extra)
            .env_remove("HWLEDGER_CONFIG")
            .env("HOME", fleet.path("home"))
            .output()
            .unwrap()
    };
    let o = run(&["--device", "box-2"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("agent-box-2.crt"), "{}", String::from_utf8_lossy(&o.stderr));
    // A certificate renamed to claim another device still speaks for the device it names inside.
    std::fs::copy(fleet.path("bundle/agent-box-1.crt"), fleet.path("bundle/agent-box-2.crt")).unwrap();
    std::fs::copy(fleet.path("bundle/agent-box-1.key"), fleet.path("bundle/agent-box-2.key")).unwrap();
    let o = run(&["--device", "box-2"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("speaks for device box-1"), "{err}");
    // Two certificates and no --device: ambiguous.
    let o = run(&[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("choose one with --device"));
    let o = Command::new(BIN).args(["agent", "--bundle", "x"]).env_remove("HWLEDGER_SERVER").output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--server URL is required"));
}

#[test]
fn a_revoked_agent_keeps_its_queue_instead_of_dead_lettering_it() {
    let fleet = Fleet::new();
    h100_tool(&fleet);
    let (server, port) = fleet.serve(0);
    let mut agent = fleet.agent(port, &[]);
    agent.wait_for(0, "a first delivery", |l| l.contains("sent "));
    server.stop(Signal::SIGINT);
    // Revoke the agent's certificate while the server is down (the data directory is free then).
    let issued: Value =
        serde_json::from_str(std::fs::read_to_string(fleet.path("fingerprint")).unwrap().trim()).unwrap();
    let revoke = fleet.path("revoke.json");
    std::fs::write(
        &revoke,
        format!(
            r#"{{"command_id":"revoke-1","command":{{"type":"revoke_certificate","fingerprint":"{}","reason":"test"}}}}"#,
            issued["fingerprint"].as_str().unwrap()
        ),
    )
    .unwrap();
    ok(hw(&fleet.data(), &["submit", revoke.to_str().unwrap()]));
    let (server, _) = fleet.serve(port);
    let mark = agent.count();
    agent.wait_count(mark, 1, "the refusal", |l| l.contains("the server refuses this agent"));
    agent.wait_count(mark, 3, "heartbeats queued meanwhile", |l| l.contains("queued heartbeat"));
    let lines = agent.stop(Signal::SIGTERM);
    server.stop(Signal::SIGINT);
    assert!(lines.iter().any(|l| l.contains("not_pinned")), "{lines:?}");
    let status = fleet.status();
    assert!(status["dead_letters"].as_array().unwrap().is_empty(), "{status}");
    let pending = status["pending"].as_array().unwrap();
    assert!(pending.len() >= 3, "{status}");
    // Everything queued since the refusal is still there, to be sent once the device has a valid certificate.
    let queued = queued_heartbeats(&lines[mark..]);
    let ids: BTreeSet<&str> = pending.iter().map(|p| p["command_id"].as_str().unwrap()).collect();
    for id in &queued {
        assert!(ids.contains(id.as_str()), "{id} vanished");
    }
}
