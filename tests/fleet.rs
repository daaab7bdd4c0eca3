//! End to end: the fleet commands of the real `hwledger` binary against real neighbours — an OpenSSH
//! sshd on 127.0.0.1 (`adapters/tests/support/sshd.rs`) with a fake `nvidia-smi` printing a captured
//! output, the rental-cloud stub (`adapters/tests/support/cloud_stub.rs`) serving captured provider
//! answers and failures, and a fake `tailscale` printing a captured status. Each test checks what the
//! ledger recorded (`log`, `devices`, `jobs`, `cost`), not only what the command printed.

#[path = "../adapters/tests/support/sshd.rs"]
mod sshd;

#[path = "../adapters/tests/support/cloud_stub.rs"]
mod cloud_stub;

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::Digest as _;
use sshd::Sshd;

const NVIDIA_FIXTURE: &str = "ssh/nvidia-smi-query-h100-80gb-hbm3-load.csv";
const ROCM_FIXTURE: &str = "gpu-and-cloud/rocm-smi/marimo-issue9237-rx7900xt-productname-use-vram.json";
const TAILSCALE_FIXTURE: &str = "gpu-and-cloud/tailscale/unattributed-openwrt-ikuai-running-1peer-errbuildinfo.json";
/// The nine columns of hwledger's nvidia-smi query (`adapters::gpu::NVIDIA_QUERY`).
const NVIDIA_QUERY: &str =
    "index,uuid,name,memory.total,memory.used,utilization.gpu,temperature.gpu,power.draw,driver_version";

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(rel)
}

/// A fresh data directory and configuration file, and a way to run the binary on them.
struct Fleet {
    dir: tempfile::TempDir,
}

impl Fleet {
    fn new() -> Fleet {
        let fleet = Fleet { dir: tempfile::tempdir().expect("tempdir") };
        fleet.config("");
        fleet
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    /// Writes the configuration file.
    fn config(&self, toml: &str) {
        std::fs::write(self.config_path(), toml).expect("write config");
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_hwledger"));
        c.arg("--data").arg(self.data()).arg("--config").arg(self.config_path()).args(args);
        for var in [
            "HWLEDGER_CONFIG",
            "HWLEDGER_DATA",
            "HWLEDGER_SERVER",
            "HWLEDGER_BUNDLE",
            "VAST_API_KEY",
            "RUNPOD_API_KEY",
            "LAMBDA_API_KEY",
        ] {
            c.env_remove(var);
        }
        c.stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run hwledger")
    }

    /// Runs and expects `code`, showing the output otherwise.
    fn expect(&self, code: i32, args: &[&str]) -> Output {
        let o = self.run(args);
        assert_eq!(o.status.code(), Some(code), "hwledger {args:?}\nstdout:\n{}\nstderr:\n{}", out(&o), err(&o));
        o
    }

    /// `--json` output of a read command, parsed.
    fn json(&self, args: &[&str]) -> Value {
        let mut full = vec!["--json"];
        full.extend_from_slice(args);
        let o = self.expect(0, &full);
        serde_json::from_str(out(&o).trim()).unwrap_or_else(|e| panic!("{args:?}: {e}: {}", out(&o)))
    }

    /// Every event of the log, as `log --json` prints them.
    fn events(&self) -> Vec<Value> {
        let o = self.expect(0, &["--json", "log"]);
        out(&o).lines().map(|l| serde_json::from_str(l).expect("event JSON")).collect()
    }

    fn event_types(&self) -> Vec<String> {
        self.events().iter().map(|e| event_type(e).to_owned()).collect()
    }

    fn submit(&self, lines: &[Value]) {
        let path = self.dir.path().join("submit.jsonl");
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(&path, text).expect("write submissions");
        self.expect(0, &["submit", path.to_str().expect("utf-8 path")]);
    }

    fn job(&self, job_id: &str) -> Value {
        let jobs = self.json(&["jobs"]);
        jobs.as_array()
            .and_then(|a| a.iter().find(|j| j["job_id"] == job_id))
            .cloned()
            .unwrap_or_else(|| panic!("no job {job_id} in {jobs}"))
    }
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The event type of a `log --json` line: the one key of its `record.event` object.
fn event_type(e: &Value) -> &str {
    e["record"]["event"].as_object().and_then(|m| m.keys().next()).map_or("?", String::as_str)
}

fn event_body(e: &Value) -> &Value {
    e["record"]["event"].as_object().and_then(|m| m.values().next()).unwrap_or(&Value::Null)
}

/// A fake nvidia-smi that prints the fixture only when called with exactly hwledger's arguments.
fn install_fake_nvidia(sshd: &Sshd) {
    let data = sshd.install_data("nvidia.csv", &fixture(NVIDIA_FIXTURE));
    sshd.install_tool(
        "nvidia-smi",
        &format!(
            "if [ \"$1\" = \"--query-gpu={NVIDIA_QUERY}\" ] && [ \"$2\" = \"--format=csv,noheader,nounits\" ] \
             && [ $# -eq 2 ]; then cat '{}'; else echo \"unexpected arguments: $*\" >&2; exit 2; fi",
            data.display()
        ),
    );
}

fn install_fake_rocm(sshd: &Sshd) {
    let data = sshd.install_data("rocm.json", &fixture(ROCM_FIXTURE));
    sshd.install_tool("rocm-smi", &format!("cat '{}'", data.display()));
}

fn key_arg(sshd: &Sshd) -> String {
    sshd.ed25519_key().display().to_string()
}

/// Probes the harness host as `device` (trust on first use) and checks it succeeded.
fn probe(fleet: &Fleet, sshd: &Sshd, device: &str) -> Value {
    let o = fleet
        .expect(0, &["--json", "probe", "ssh", &sshd.target_string(), "--key", &key_arg(sshd), "--device", device]);
    serde_json::from_str(out(&o).trim()).expect("probe JSON")
}

#[test]
fn probe_records_the_host_pins_its_key_on_first_use_and_refuses_a_changed_one() {
    let fleet = Fleet::new();
    let mut sshd = Sshd::start();
    install_fake_nvidia(&sshd);

    let first = probe(&fleet, &sshd, "gpu-1");
    assert_eq!(first["ok"], true);
    assert_eq!(first["host_key_trust"], "first_use");
    assert_eq!(first["host_key_fingerprint"], sshd.host_fingerprint());
    assert_eq!(fleet.event_types(), ["device_enrolled", "host_key_pinned", "device_registered", "host_probed"]);
    let events = fleet.events();
    assert_eq!(event_body(&events[1])["key_fingerprint"], sshd.host_fingerprint());
    let probed = event_body(&events[3]);
    assert_eq!(probed["ok"], true);
    assert_eq!(probed["gpus"][0]["vram_used_mib"], 19818);
    assert_eq!(probed["gpus"][0]["vram_total_mib"], 81559);

    let device = fleet.json(&["device", "gpu-1"]);
    assert_eq!(device["kind"]["ssh"]["target"], format!("{}@127.0.0.1:{}", sshd.user(), sshd.port()));
    assert_eq!(device["gpus"][0]["name"], "NVIDIA H100 80GB HBM3");
    assert_eq!(device["host_key"], sshd.host_fingerprint());
    assert_eq!(device["last_probe"]["ok"], true);
    let telemetry = fleet.json(&["telemetry", "gpu-1"]);
    assert_eq!(telemetry["gpus"][0]["latest"]["vram_used_mib"], 19818);

    // Again: checked against the pin; nothing re-pinned or re-registered.
    let again = probe(&fleet, &sshd, "gpu-1");
    assert_eq!(again["host_key_trust"], "pinned");
    assert_eq!(fleet.event_types().len(), 5);

    // The host comes back with another key: refused before logging in, exit 1, recorded as a failed probe.
    sshd.restart_with_new_host_key();
    let logins = sshd.accepted_logins();
    let o = fleet
        .expect(1, &["--json", "probe", "ssh", &sshd.target_string(), "--key", &key_arg(&sshd), "--device", "gpu-1"]);
    assert!(err(&o).contains("HOST KEY CHANGED"), "{}", err(&o));
    let line: Value = serde_json::from_str(out(&o).trim()).expect("JSON");
    assert_eq!(line["ok"], false);
    assert_eq!(line["error"]["code"], "host_key_changed");
    assert_eq!(sshd.accepted_logins(), logins, "no login with a changed host key");
    let events = fleet.events();
    let last = events.last().expect("events");
    assert_eq!(event_type(last), "host_probed");
    assert_eq!(event_body(last)["ok"], false);
    assert!(event_body(last)["detail"].as_str().is_some_and(|d| d.starts_with("host_key_changed")), "{last}");
    assert_eq!(events.iter().filter(|e| event_type(e) == "host_key_pinned").count(), 1, "the pin was not replaced");
    assert_eq!(fleet.json(&["device", "gpu-1"])["host_key"], first["host_key_fingerprint"]);
}

/// While `hwledger serve` holds the data directory, the fleet commands record through it over mTLS as the
/// bootstrap operator: a probe (trust on first use, host key pinned), a rate, and a dispatched job that the
/// server's cost projection prices. Afterwards the log has it all, once, with the operator as the actor.
#[test]
fn fleet_commands_record_through_a_running_server() {
    let fleet = Fleet::new();
    let sshd = Sshd::start();
    install_fake_nvidia(&sshd);
    let server = support::Server::start(&fleet.data(), false);
    let url = server.url("");

    // Locally the store is locked by the server: the commands say so instead of waiting or half-working.
    let locked = fleet.run(&["--json", "probe", "ssh", &sshd.target_string(), "--key", &key_arg(&sshd)]);
    assert_eq!(locked.status.code(), Some(2), "a local probe beside a running server:\n{}", err(&locked));
    assert!(err(&locked).contains("pass --server URL"), "{}", err(&locked));

    // `--server` on the command line (the bundle defaults to <data>/operator, which serve wrote).
    let o = fleet.expect(
        0,
        &[
            "--json",
            "probe",
            "ssh",
            &sshd.target_string(),
            "--key",
            &key_arg(&sshd),
            "--device",
            "gpu-1",
            "--server",
            &url,
        ],
    );
    let first: Value = serde_json::from_str(out(&o).trim()).expect("probe JSON");
    assert_eq!(first["ok"], true);
    assert_eq!(first["host_key_trust"], "first_use");

    // `server` in the configuration for the rest: submit, dispatch and the reads all go to the server.
    fleet.config(&format!(
        "server = {url:?}\n\n[[ssh_hosts]]\ndevice_id = \"gpu-1\"\ntarget = {:?}\nkey = {:?}\n",
        sshd.target_string(),
        key_arg(&sshd)
    ));
    fleet.submit(&[serde_json::json!({
        "command_id": "rate-1",
        "command": {"type": "set_device_rate", "device_id": "gpu-1", "micro_usd_per_hour": 3_600_000}
    })]);
    let device = fleet.json(&["device", "gpu-1"]);
    assert_eq!(device["host_key"], sshd.host_fingerprint());
    let args = [
        "--json",
        "dispatch",
        "--device",
        "gpu-1",
        "--model",
        "m",
        "--vram",
        "1000",
        "--price-from",
        "rate",
        "--job",
        "j-remote",
        "--",
        "echo",
        "remote",
    ];
    let o = fleet.expect(0, &args);
    let result: Value = serde_json::from_str(out(&o).trim()).expect("dispatch JSON");
    assert_eq!(result["outcome"]["outcome"], "completed");
    assert_eq!(result["output"]["stdout"], "remote\n");
    let job = fleet.job("j-remote");
    assert_eq!(job["status"], "completed");
    assert_eq!(job["micro_usd_per_hour"], 3_600_000);
    assert!(job["cost_micro_usd"].is_u64(), "priced by the server's cost projection: {job}");
    // A retry through the server runs nothing again.
    let retry = fleet.run(&args[1..]);
    assert_eq!(retry.status.code(), Some(1), "{}", err(&retry));
    assert!(err(&retry).contains("not running it again"), "{}", err(&retry));

    server.stop();
    fleet.config("");
    let events = fleet.events();
    let types: Vec<&str> = events.iter().map(event_type).collect();
    for (kind, n) in
        [("host_key_pinned", 1), ("host_probed", 1), ("job_dispatched", 1), ("job_started", 1), ("job_completed", 1)]
    {
        assert_eq!(types.iter().filter(|t| **t == kind).count(), n, "{kind} in {types:?}");
    }
    let dispatched = events.iter().find(|e| event_type(e) == "job_dispatched").expect("dispatched");
    assert_eq!(dispatched["record"]["actor"], serde_json::json!({"operator": "admin"}), "{dispatched}");
}

#[test]
fn probe_all_probes_the_configured_hosts_through_the_pool() {
    let fleet = Fleet::new();
    let nv = Sshd::start();
    install_fake_nvidia(&nv);
    let amd = Sshd::start();
    install_fake_rocm(&amd);
    amd.authorize(&nv.ed25519_key());
    let known_hosts = nv.dir().join("known_hosts");
    nv.write_known_hosts(&known_hosts);
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    fleet.config(&format!(
        "[ssh]\nkey = {key:?}\nconcurrency = 2\n\n\
         [[ssh_hosts]]\ndevice_id = \"nv-1\"\ntarget = {nv:?}\nknown_hosts = {kh:?}\n\n\
         [[ssh_hosts]]\ndevice_id = \"amd-1\"\ntarget = {amd:?}\n\n\
         [[ssh_hosts]]\ndevice_id = \"down-1\"\ntarget = \"root@127.0.0.1:{closed_port}\"\n",
        key = nv.ed25519_key().display().to_string(),
        nv = nv.target_string(),
        kh = known_hosts.display().to_string(),
        amd = amd.target_string(),
    ));
    let o = fleet.expect(1, &["--json", "probe", "--all"]);
    let lines: Vec<Value> = out(&o).lines().map(|l| serde_json::from_str(l).expect("JSON")).collect();
    let summary: Vec<(&str, bool, &str)> = lines
        .iter()
        .map(|l| {
            (
                l["device_id"].as_str().unwrap_or("?"),
                l["ok"].as_bool().unwrap_or(false),
                l["tool"].as_str().or(l["error"]["code"].as_str()).unwrap_or("?"),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [("nv-1", true, "nvidia-smi"), ("amd-1", true, "rocm-smi"), ("down-1", false, "connect_failed")]
    );
    assert_eq!(lines[0]["host_key_trust"], "known_hosts");
    let devices = fleet.json(&["devices"]);
    let ids: Vec<&str> = devices.as_array().expect("array").iter().filter_map(|d| d["device_id"].as_str()).collect();
    assert_eq!(ids, ["amd-1", "nv-1"], "a host never reached is not enrolled");
    let pins: Vec<Value> = fleet.events().into_iter().filter(|e| event_type(e) == "host_key_pinned").collect();
    assert_eq!(pins.len(), 1, "only the TOFU host is pinned; known_hosts is the authority for the other");
    assert_eq!(event_body(&pins[0])["device_id"], "amd-1");
    let amd_device = fleet.json(&["device", "amd-1"]);
    assert_eq!(amd_device["gpus"][0]["name"], "Radeon RX 7900 XT");
}

/// A probed SSH device with a rate of $2/h, ready for dispatch.
fn dispatch_ready(fleet: &Fleet, sshd: &Sshd) {
    install_fake_nvidia(sshd);
    probe(fleet, sshd, "gpu-1");
    fleet.submit(&[serde_json::json!({
        "command_id": "rate-1",
        "command": {"type": "set_device_rate", "device_id": "gpu-1", "micro_usd_per_hour": 2_000_000}
    })]);
    fleet.config(&format!(
        "[[ssh_hosts]]\ndevice_id = \"gpu-1\"\ntarget = {:?}\nkey = {:?}\n",
        sshd.target_string(),
        key_arg(sshd)
    ));
}

#[test]
fn a_succeeding_command_is_completed_and_priced_by_the_cost_projection() {
    let fleet = Fleet::new();
    let sshd = Sshd::start();
    dispatch_ready(&fleet, &sshd);
    let args = [
        "--json",
        "dispatch",
        "--device",
        "gpu-1",
        "--model",
        "llama-3-8b",
        "--vram",
        "40000",
        "--price-from",
        "rate",
        "--job",
        "j-ok",
        "--",
        "sleep 1; echo trained",
    ];
    let o = fleet.expect(0, &args);
    let result: Value = serde_json::from_str(out(&o).trim()).expect("JSON");
    assert_eq!(result["outcome"]["outcome"], "completed");
    assert_eq!(result["output"]["stdout"], "trained\n");

    let job = fleet.job("j-ok");
    assert_eq!(job["status"], "completed");
    assert_eq!(job["exit_status"], 0);
    assert_eq!(job["price_source"], "rate");
    assert_eq!(job["micro_usd_per_hour"], 2_000_000);
    let duration = job["duration_ms"].as_u64().expect("duration");
    assert!(duration >= 1000, "the command slept 1 s: {duration}");
    // cost = duration × rate / 1 h, rounded half up, once per job.
    assert_eq!(job["cost_micro_usd"].as_u64(), Some((duration * 2_000_000 + 1_800_000) / 3_600_000));
    let cost = fleet.json(&["cost", "--by", "backend"]);
    assert_eq!(cost["total_micro_usd"], job["cost_micro_usd"]);
    assert_eq!(cost["groups"][0]["key"], "ssh");
    let types = fleet.event_types();
    assert_eq!(types[types.len() - 3..], ["job_dispatched", "job_started", "job_completed"]);
    let dispatched = fleet.events().into_iter().find(|e| event_type(e) == "job_dispatched").expect("dispatch");
    assert_eq!(dispatched["record"]["command_id"], "job/j-ok/dispatch");
    assert_eq!(event_body(&dispatched)["price"]["source"], "rate");

    // A retry of the same job id runs nothing and appends nothing.
    let before = fleet.events().len();
    let o = fleet.expect(1, &args[1..]);
    assert!(err(&o).contains("not running it again"), "{}", err(&o));
    assert_eq!(fleet.events().len(), before);
}

#[test]
fn a_failing_command_is_failed_with_its_exit_status() {
    let fleet = Fleet::new();
    let mut sshd = Sshd::start();
    dispatch_ready(&fleet, &sshd);
    let o = fleet.expect(
        1,
        &[
            "dispatch",
            "--device",
            "gpu-1",
            "--model",
            "m",
            "--vram",
            "1000",
            "--job",
            "j-bad",
            "--",
            "echo oops >&2; exit 3",
        ],
    );
    assert!(err(&o).contains("oops"), "remote stderr is shown: {}", err(&o));
    let job = fleet.job("j-bad");
    assert_eq!(job["status"], "failed");
    assert_eq!(job["exit_status"], 3);
    assert!(job["failure_reason"].as_str().is_some_and(|r| r.starts_with("exited with status 3")), "{job}");
    // Without --price-from the device's rate prices it.
    assert_eq!(job["price_source"], "device_rate");

    // Too much VRAM: rejected by the ledger before anything runs.
    let o = fleet.expect(
        1,
        &["dispatch", "--device", "gpu-1", "--model", "m", "--vram", "90000", "--job", "j-big", "--", "true"],
    );
    assert!(err(&o).contains("vram_exceeded"), "{}", err(&o));
    assert!(fleet.json(&["jobs"]).as_array().is_some_and(|j| j.len() == 1));

    // The host's key changed: nothing runs, the job is failed as not started, exit 1.
    sshd.restart_with_new_host_key();
    install_fake_nvidia(&sshd);
    let logins = sshd.accepted_logins();
    let o = fleet.expect(
        1,
        &[
            "dispatch",
            "--device",
            "gpu-1",
            "--model",
            "m",
            "--vram",
            "1000",
            "--job",
            "j-mitm",
            "--",
            "touch /tmp/never",
        ],
    );
    assert!(err(&o).contains("HOST KEY CHANGED"), "{}", err(&o));
    assert_eq!(sshd.accepted_logins(), logins, "no login to a host with a changed key");
    let job = fleet.job("j-mitm");
    assert_eq!(job["status"], "failed");
    assert!(job["failure_reason"].as_str().is_some_and(|r| r.starts_with("not_started: host_key_changed")), "{job}");
    assert_eq!(job["started_at"], Value::Null);
}

#[test]
fn a_job_whose_connection_is_cut_is_not_completed_and_the_host_is_probed() {
    let fleet = Fleet::new();
    let sshd = Sshd::start();
    dispatch_ready(&fleet, &sshd);
    let child = fleet
        .command(&[
            "--json",
            "dispatch",
            "--device",
            "gpu-1",
            "--model",
            "m",
            "--vram",
            "1000",
            "--job",
            "j-cut",
            "--",
            "echo begun; sleep 30; echo done",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn dispatch");
    // Wait (bounded) until the command runs on the host, then kill sshd's session processes.
    let started = Instant::now();
    while !sshd.descendant_cmdlines().iter().any(|c| c.contains("sleep 30")) {
        assert!(started.elapsed() < Duration::from_secs(20), "the job never started on the host");
        std::thread::sleep(Duration::from_millis(50));
    }
    sshd.kill_connections();
    let o = child.wait_with_output().expect("dispatch ends");
    assert_eq!(o.status.code(), Some(1), "{}\n{}", out(&o), err(&o));
    let result: Value = serde_json::from_str(out(&o).trim()).expect("JSON");
    assert_eq!(result["outcome"]["outcome"], "outcome_unknown");
    assert_eq!(result["reprobe"]["ok"], true, "the listener survived, so the host answers the probe");

    let job = fleet.job("j-cut");
    assert_eq!(job["status"], "failed", "never completed");
    assert_eq!(job["exit_status"], Value::Null);
    let reason = job["failure_reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("outcome_unknown: connection_lost"), "{reason}");
    let types = fleet.event_types();
    assert_eq!(types[types.len() - 4..], ["job_dispatched", "job_started", "job_failed", "host_probed"]);
    assert!(!types.contains(&"job_completed".to_owned()));
}

#[test]
fn a_job_that_outlives_its_timeout_is_outcome_unknown_not_completed() {
    let fleet = Fleet::new();
    let sshd = Sshd::start();
    dispatch_ready(&fleet, &sshd);
    let o = fleet.expect(
        1,
        &[
            "--json",
            "dispatch",
            "--device",
            "gpu-1",
            "--model",
            "m",
            "--vram",
            "1000",
            "--job",
            "j-slow",
            "--timeout",
            "1s",
            "--",
            "sleep 30",
        ],
    );
    let result: Value = serde_json::from_str(out(&o).trim()).expect("JSON");
    assert_eq!(result["outcome"]["outcome"], "outcome_unknown");
    let job = fleet.job("j-slow");
    assert_eq!(job["status"], "failed");
    assert_eq!(job["exit_status"], Value::Null);
    let reason = job["failure_reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("outcome_unknown: command_timeout"), "{reason}");
    assert_eq!(fleet.event_types().last().map(String::as_str), Some("host_probed"));
}

/// A stub of the three clouds, kept running on its own runtime for the test's duration.
struct Clouds {
    stub: cloud_stub::Stub,
    _rt: tokio::runtime::Runtime,
}

impl Clouds {
    fn start() -> Clouds {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
        let stub = rt.block_on(cloud_stub::Stub::start());
        Clouds { stub, _rt: rt }
    }

    /// `[clouds.<provider>]` tables pointing at the stub's scenarios.
    fn config(&self, scenarios: &[(&str, &str)]) -> String {
        scenarios
            .iter()
            .map(|(p, s)| {
                format!("[clouds.{p}]\nbase_url = {:?}\napi_key = {:?}\n\n", self.stub.url(s), cloud_stub::KEY)
            })
            .collect()
    }
}

#[test]
fn prices_lists_the_cheapest_offer_per_gpu_type_through_the_disk_cache() {
    let fleet = Fleet::new();
    let clouds = Clouds::start();
    fleet.config(&clouds.config(&[("vast", "ok-vast"), ("runpod", "ok-runpod"), ("lambda", "server-error")]));

    let o = fleet.expect(0, &["--json", "-v", "prices"]);
    let v: Value = serde_json::from_str(out(&o).trim()).expect("JSON");
    let rows = v["cheapest"].as_array().expect("rows");
    let rtx3090 = rows.iter().find(|r| r["gpu_type"] == "rtx 3090").expect("rtx 3090");
    assert_eq!(rtx3090["provider"], "runpod", "RunPod community $0.22 beats vast's $1.33 per GPU");
    assert_eq!(rtx3090["usd_per_gpu_hour"], 0.22);
    let prices: Vec<f64> = rows.iter().filter_map(|r| r["usd_per_gpu_hour"].as_f64()).collect();
    assert!(prices.windows(2).all(|w| w[0] <= w[1]), "cheapest first: {prices:?}");
    assert_eq!(v["errors"][0]["provider"], "lambda");
    assert_eq!(v["errors"][0]["code"], "server_error");
    assert!(err(&o).contains("lambda"), "the failing provider is reported: {}", err(&o));
    assert_eq!((clouds.stub.hits("ok-vast"), clouds.stub.hits("ok-runpod")), (1, 1));
    assert!(fleet.data().join("cache/prices.json").is_file());

    // A second run within the hour is answered from the cache on disk; --refresh asks again.
    let o = fleet.expect(0, &["--json", "prices", "--gpu", "rtx 3090"]);
    let filtered: Value = serde_json::from_str(out(&o).trim()).expect("JSON");
    let types: Vec<&str> =
        filtered["cheapest"].as_array().expect("rows").iter().filter_map(|r| r["gpu_type"].as_str()).collect();
    assert_eq!(types, ["rtx 3090", "rtx 3090 ti"]);
    fleet.expect(0, &["--json", "prices"]);
    assert_eq!(
        (clouds.stub.hits("ok-vast"), clouds.stub.hits("ok-runpod")),
        (2, 2),
        "the unfiltered quotes were cached"
    );
    fleet.expect(0, &["--json", "prices", "--refresh"]);
    assert_eq!(clouds.stub.hits("ok-vast"), 3);

    // The key is never printed or logged (debug logging included) and never stored in the cache.
    let cache = std::fs::read_to_string(fleet.data().join("cache/prices.json")).expect("cache");
    for text in [out(&o), err(&o), cache] {
        assert!(!text.contains(cloud_stub::KEY), "key leaked: {text}");
    }

    // Every configured provider failing is an error (exit 2).
    fleet.config(&clouds.config(&[("vast", "unauthorized")]));
    let o = fleet.expect(2, &["prices", "--refresh"]);
    assert!(err(&o).contains("rejected the API key"), "{}", err(&o));
    assert!(!err(&o).contains(cloud_stub::KEY));
}

#[test]
fn suggest_lists_devices_with_free_vram_and_fitting_offers_cheapest_first() {
    let fleet = Fleet::new();
    let clouds = Clouds::start();
    fleet.config(&clouds.config(&[("runpod", "ok"), ("vast", "server-error")]));
    let gpu = |vram: u64| serde_json::json!([{"index": 0, "name": "RTX 4090", "uuid": null, "vram_total_mib": vram}]);
    let now_ms =
        u64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis())
            .expect("ms fit u64");
    let reading = |used: u64| serde_json::json!([{"index": 0, "vram_used_mib": used, "vram_total_mib": 24564, "utilization_pct": 5.0, "temperature_c": 40.0, "power_w": 50.0}]);
    let mut subs = Vec::new();
    for (id, used, rate) in [("idle", 1_000u64, Some(150_000u64)), ("busy", 20_000, Some(10_000)), ("norate", 0, None)]
    {
        subs.push(serde_json::json!({"command_id": format!("e-{id}"), "command": {"type": "enroll_device", "device_id": id, "kind": "local"}}));
        subs.push(serde_json::json!({"command_id": format!("r-{id}"), "command": {"type": "register_device", "device_id": id, "gpus": gpu(24564)}}));
        subs.push(serde_json::json!({"command_id": format!("t-{id}"), "command": {"type": "record_telemetry", "device_id": id, "sampled_at": now_ms, "gpus": reading(used)}}));
        if let Some(rate) = rate {
            subs.push(serde_json::json!({"command_id": format!("p-{id}"), "command": {"type": "set_device_rate", "device_id": id, "micro_usd_per_hour": rate}}));
        }
    }
    fleet.submit(&subs);

    let v = fleet.json(&["suggest", "--vram", "20000", "--hours", "2", "--offers", "3"]);
    let list = v["suggestions"].as_array().expect("suggestions");
    let names: Vec<String> = list
        .iter()
        .map(|s| match s["kind"].as_str() {
            Some("device") => s["device_id"].as_str().unwrap_or("?").to_owned(),
            _ => s["offer"]["offer_id"].as_str().unwrap_or("?").to_owned(),
        })
        .collect();
    // The idle device at $0.15/h, then RunPod's three cheapest offers with ≥ 20000 MiB per GPU (community
    // RTX A5000 $0.16, RTX A4500 $0.19 with 20 GiB, RTX 4000 Ada $0.20), then the device without a rate.
    // "busy" has only 4564 MiB free.
    assert_eq!(
        names,
        [
            "idle",
            "NVIDIA RTX A5000:community",
            "NVIDIA RTX A4500:community",
            "NVIDIA RTX 4000 Ada Generation:community",
            "norate"
        ]
    );
    assert_eq!(list[0]["cost_micro_usd"], 300_000, "2 h at $0.15/h");
    assert_eq!(list[0]["free_vram_mib"], 23_564);
    assert_eq!(list[4]["micro_usd_per_hour"], Value::Null);
    let offers: Vec<&Value> = list.iter().filter(|s| s["kind"] == "offer").collect();
    assert_eq!(offers.len(), 3);
    let rates: Vec<u64> = list.iter().filter_map(|s| s["micro_usd_per_hour"].as_u64()).collect();
    assert!(rates.windows(2).all(|w| w[0] <= w[1]), "cheapest first: {rates:?}");
    for o in &offers {
        assert!(o["offer"]["vram_mib"].as_u64().is_some_and(|m| m >= 20_000), "{o}");
        assert_eq!(o["cost_micro_usd"].as_u64(), o["micro_usd_per_hour"].as_u64().map(|r| r * 2));
    }
    assert_eq!(v["errors"][0]["provider"], "vast");
}

#[test]
fn dispatch_suggest_takes_the_top_device_only_after_confirmation() {
    let fleet = Fleet::new();
    let sshd = Sshd::start();
    dispatch_ready(&fleet, &sshd);
    let before = fleet.events().len();
    // No terminal and no --yes: refused, nothing recorded.
    let args = ["dispatch", "--suggest", "--model", "m", "--vram", "1000", "--job", "j-s", "--", "echo suggested"];
    let o = fleet.expect(2, &args);
    assert!(err(&o).contains("pass --yes"), "{}", err(&o));
    assert!(err(&o).contains("suggested: gpu-1"), "the suggestion is shown: {}", err(&o));
    assert_eq!(fleet.events().len(), before);
    // More VRAM free than any device has: nothing to suggest.
    let o = fleet.expect(1, &["dispatch", "--suggest", "--yes", "--model", "m", "--vram", "70000", "--", "true"]);
    assert!(err(&o).contains("no enrolled SSH device"), "{}", err(&o));
    let mut yes = vec!["dispatch", "--suggest", "--yes"];
    yes.extend_from_slice(&args[2..]);
    let o = fleet.expect(0, &yes);
    assert_eq!(out(&o), "suggested\n");
    let job = fleet.job("j-s");
    assert_eq!((job["device_id"].as_str(), job["status"].as_str()), (Some("gpu-1"), Some("completed")));
}

#[test]
fn dispatch_priced_from_a_provider_records_the_quote_as_an_event() {
    let fleet = Fleet::new();
    let sshd = Sshd::start();
    let clouds = Clouds::start();
    install_fake_nvidia(&sshd);
    probe(&fleet, &sshd, "gpu-1");
    fleet.config(&format!(
        "{}[[ssh_hosts]]\ndevice_id = \"gpu-1\"\ntarget = {:?}\nkey = {:?}\n",
        clouds.config(&[("runpod", "ok")]),
        sshd.target_string(),
        key_arg(&sshd)
    ));
    let o = fleet.expect(
        0,
        &[
            "-v",
            "dispatch",
            "--device",
            "gpu-1",
            "--model",
            "m",
            "--vram",
            "40000",
            "--price-from",
            "runpod",
            "--job",
            "j-rp",
            "--",
            "true",
        ],
    );
    assert!(!err(&o).contains(cloud_stub::KEY));
    let events = fleet.events();
    let quote = events.iter().find(|e| event_type(e) == "rental_price_quoted").expect("quote event");
    let q = event_body(quote);
    // The nvidia-smi name "NVIDIA H100 80GB HBM3" is RunPod's type id of "H100 SXM": community $2.69.
    assert_eq!(q["provider"], "runpod");
    assert_eq!(q["offer_id"], "NVIDIA H100 80GB HBM3:community");
    assert_eq!(q["micro_usd_per_hour"], 2_690_000);
    let job = fleet.job("j-rp");
    assert_eq!(job["status"], "completed");
    assert_eq!((job["price_source"].as_str(), job["micro_usd_per_hour"].as_u64()), (Some("runpod"), Some(2_690_000)));
    for e in &events {
        assert!(!e.to_string().contains(cloud_stub::KEY), "key in an event: {e}");
    }
}

#[test]
fn rentals_sync_records_instances_as_priced_rental_devices() {
    let fleet = Fleet::new();
    let clouds = Clouds::start();
    fleet.config(&clouds.config(&[("vast", "ok"), ("lambda", "ok")]));
    fleet.expect(0, &["rentals", "sync"]);
    let vast = fleet.json(&["device", "vast-13445220"]);
    assert_eq!(vast["kind"]["rental"]["provider"], "vast");
    assert_eq!(vast["micro_usd_per_hour"], 2_672_222);
    assert_eq!(vast["gpus"][0]["name"], "RTX 3090");
    let lambda = fleet.json(&["device", "lambda-0920582c7ff041399e34823a0be62549"]);
    assert_eq!(lambda["gpus"].as_array().map(Vec::len), Some(8));
    let observed = fleet.events().iter().filter(|e| event_type(e) == "rental_instance_observed").count();
    assert_eq!(observed, 2);
    // A second sync observes again but enrolls nothing new.
    fleet.expect(0, &["rentals", "sync"]);
    let types = fleet.event_types();
    assert_eq!(types.iter().filter(|t| *t == "device_enrolled").count(), 2);
    assert_eq!(types.iter().filter(|t| *t == "rental_instance_observed").count(), 4);
}

#[test]
fn discover_lists_unenrolled_tailscale_peers_and_creates_one_time_tokens() {
    let fleet = Fleet::new();
    let bin = fleet.dir.path().join("tailscale");
    std::fs::write(
        &bin,
        format!(
            "#!/bin/sh\n[ \"$1 $2\" = \"status --json\" ] || exit 64\ncat '{}'\n",
            fixture(TAILSCALE_FIXTURE).display()
        ),
    )
    .expect("write fake tailscale");
    std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let bin_arg = bin.display().to_string();

    let v = fleet.json(&["discover", "tailscale", "--tailscale-bin", &bin_arg]);
    let fresh = v["not_enrolled"].as_array().expect("list");
    assert_eq!(fresh.len(), 1);
    assert_eq!(fresh[0]["peer"]["host_name"], "iStoreOS");
    assert_eq!(fresh[0]["device_id"], "istoreos");
    assert!(fleet.event_types().is_empty(), "listing records nothing");

    let v =
        fleet.json(&["discover", "tailscale", "--tailscale-bin", &bin_arg, "--enroll", "istoreos.tail1fb5f0.ts.net"]);
    let token = v["tokens"][0]["token"].as_str().expect("token").to_owned();
    let events = fleet.events();
    assert_eq!(events.len(), 1);
    assert_eq!(event_type(&events[0]), "bootstrap_token_created");
    assert_eq!(event_body(&events[0])["device_id"], "istoreos");
    let hash = hex_lower(&sha2::Sha256::digest(token.as_bytes()));
    assert_eq!(event_body(&events[0])["token_hash"], hash, "only the token's SHA-256 is stored");
    assert!(!events[0].to_string().contains(&token), "the token itself is never stored");

    // Not a peer: a usage error, and nothing is created.
    fleet.expect(2, &["discover", "tailscale", "--tailscale-bin", &bin_arg, "--enroll", "nobody"]);
    // A broken tailscale is an error naming it.
    let o = fleet.expect(2, &["discover", "tailscale", "--tailscale-bin", "/nonexistent/tailscale"]);
    assert!(err(&o).contains("/nonexistent/tailscale"), "{}", err(&o));
    assert_eq!(fleet.events().len(), 1);
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
