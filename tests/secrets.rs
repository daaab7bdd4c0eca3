//! Secrets, end to end, with the real `hwledger` binary: every private key and secret file the binary
//! writes (`submit`, `ca init`, `enroll`, `serve`) is mode 0600 and every directory holding one is 0700 — even
//! under a permissive umask, so the modes are set, not inherited — and a bootstrap token, the agent's and the
//! server's private keys never show up in the server's debug log, in `/metrics`, in any answer the server
//! sends (successes and refusals), in `hwledger log --json`, in an export bundle, or anywhere in the raw bytes
//! of the sled store.
//!
//! Rental-cloud API keys (from the configuration file and from the environment) never show up in what
//! `hwledger prices` prints or logs at trace level, nor in its cache or anywhere in the data directory, even
//! when the provider echoes the key back in an error.
//!
//! The clients are `curl` (installed by `scripts/test.sh`), talking to the server on loopback over mTLS with
//! the operator bundle the server wrote, and to its enrollment listener with TLS only, as an agent would.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hwledger_wire::pki::{Role, TokenHash, generate_key_and_csr};

#[path = "../adapters/tests/support/cloud_stub.rs"]
mod cloud_stub;

/// How long the server may take to start or stop.
const WAIT: Duration = Duration::from_secs(30);

/// `hwledger --data DATA ARGS` run through `sh` with umask 0, so every mode the binary does not set
/// explicitly would come out world-readable (0666 files, 0777 directories).
fn hw_cmd(data: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg("umask 0; exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_hwledger"))
        .arg("--data")
        .arg(data)
        .args(args)
        .env_remove("HWLEDGER_CONFIG")
        .env("HOME", data.parent().unwrap_or(data))
        .env("NO_COLOR", "1");
    c
}

fn hw(data: &Path, args: &[&str]) -> Output {
    let o = hw_cmd(data, args).output().expect("run hwledger");
    assert!(o.status.success(), "hwledger {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    o
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display())).permissions().mode()
        & 0o777
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("read {}: {e}", d.display())) {
            let path = entry.expect("directory entry").path();
            if path.is_dir() { todo.push(path) } else { out.push(path) }
        }
    }
    out.sort();
    out
}

/// Whether a file holds secret material: a PEM private key or a signed-note signer key.
fn is_secret(bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(bytes);
    text.contains("PRIVATE KEY-----") || text.contains("PRIVATE+KEY+")
}

/// A running `hwledger serve` on loopback ports, its stderr collected.
struct Server {
    child: Child,
    log: Arc<Mutex<String>>,
    api: String,
    enroll: String,
}

/// Removes ANSI colour sequences (`ESC [ ... m`) so log lines parse whatever the terminal settings.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The value of `key=VALUE` in a log line.
fn field(line: &str, key: &str) -> Option<String> {
    let start = line.find(&format!("{key}="))? + key.len() + 1;
    let rest = &line[start..];
    let value = rest.split_whitespace().next()?;
    Some(value.trim_start_matches("Some(").trim_end_matches(')').to_owned())
}

impl Server {
    fn start(data: &Path) -> Server {
        let mut child = hw_cmd(
            data,
            &[
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--dashboard-listen",
                "127.0.0.1:0",
                "--enroll-listen",
                "127.0.0.1:0",
            ],
        )
        .env("HWLEDGER_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start hwledger serve");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().expect("stderr");
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let clean = strip_ansi(&line);
                if clean.contains("hwledger server listening") {
                    let _ = tx.send(clean.clone());
                }
                sink.lock().expect("log lock").push_str(&(clean + "\n"));
            }
        });
        let line = match rx.recv_timeout(WAIT) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!("server did not start:\n{}", log.lock().expect("log lock"));
            }
        };
        let api = field(&line, "api").unwrap_or_else(|| panic!("no api address in {line:?}"));
        let enroll = field(&line, "enroll").unwrap_or_else(|| panic!("no enroll address in {line:?}"));
        let server = Server { child, log, api, enroll };
        server.wait_ready(&data.join("operator/ca.crt"));
        server
    }

    /// Waits until the enrollment listener answers `/health`: the server is serving (and handles Ctrl-C).
    fn wait_ready(&self, ca: &Path) {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            let o = Command::new("curl")
                .args([
                    "--silent",
                    "--max-time",
                    "5",
                    "--output",
                    "/dev/null",
                    "--write-out",
                    "%{http_code}",
                    "--cacert",
                ])
                .arg(ca)
                .arg(format!("https://{}/health", self.enroll))
                .stdin(Stdio::null())
                .output()
                .expect("run curl (scripts/test.sh installs it; apt-get install curl)");
            if o.stdout == b"200" {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("server never became ready:\n{}", self.log.lock().expect("log lock"));
    }

    /// Ctrl-C, then wait for the clean exit (which releases the data directory).
    fn stop(mut self) -> (String, String) {
        let pid = self.child.id().to_string();
        let status = Command::new("sh").arg("-c").arg(format!("kill -INT {pid}")).status().expect("kill -INT");
        assert!(status.success());
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for server") {
                assert!(status.success(), "server exited with {status}:\n{}", self.log.lock().expect("log lock"));
                break;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("server did not stop:\n{}", self.log.lock().expect("log lock"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut stdout = String::new();
        if let Some(mut out) = self.child.stdout.take() {
            let _ = std::io::Read::read_to_string(&mut out, &mut stdout);
        }
        // The reader thread ends at EOF; give it a moment to append the last lines.
        std::thread::sleep(Duration::from_millis(100));
        let log = self.log.lock().expect("log lock").clone();
        (log, stdout)
    }
}

/// One curl request; returns (HTTP status, body). `operator` is the operator bundle directory, for mTLS.
fn curl(url: &str, ca: &Path, operator: Option<&Path>, body: Option<&str>) -> (u16, String) {
    let mut c = Command::new("curl");
    c.args(["--silent", "--show-error", "--max-time", "20", "--write-out", "\n%{http_code}", "--cacert"]).arg(ca);
    if let Some(dir) = operator {
        c.arg("--cert").arg(dir.join("operator-admin.crt")).arg("--key").arg(dir.join("operator-admin.key"));
    }
    if let Some(b) = body {
        c.args(["-H", "content-type: application/json", "--data-binary", b]);
    }
    let o = c.arg(url).stdin(Stdio::null()).output().unwrap_or_else(|e| {
        panic!("run curl (scripts/test.sh installs it; apt-get install curl): {e}");
    });
    assert!(o.status.success(), "curl {url}: {}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').expect("curl wrote the status line");
    (code.trim().parse().expect("HTTP status"), body.to_owned())
}

#[test]
fn private_keys_are_0600_and_their_directories_0700_after_a_real_run() {
    let root = tempfile::tempdir().expect("temp dir");
    let data = root.path().join("data");
    let cmds = root.path().join("cmds.jsonl");
    std::fs::write(
        &cmds,
        r#"{"command_id":"c1","command":{"type":"enroll_device","device_id":"box-1","kind":"local"}}"#,
    )
    .expect("write commands");
    // Each entry point that creates state, on a fresh directory, in the order an operator might use them.
    hw(&data, &["submit", cmds.to_str().expect("utf-8 path")]);
    hw(&data, &["ca", "init"]);
    let bundle = root.path().join("alice");
    hw(&data, &["enroll", "auditor", "alice", "--out", bundle.to_str().expect("utf-8 path")]);
    let server = Server::start(&data);
    server.stop();

    assert_eq!(mode(&data), 0o700, "the data directory");
    let mut secrets = Vec::new();
    for dir in [&data, &bundle] {
        for file in files(dir) {
            let bytes = std::fs::read(&file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
            if !is_secret(&bytes) {
                continue;
            }
            assert_eq!(mode(&file), 0o600, "{} holds a private key", file.display());
            let mut parent = file.parent();
            while let Some(p) = parent {
                assert_eq!(mode(p), 0o700, "{} holds a private key below it", p.display());
                if p == dir.as_path() {
                    break;
                }
                parent = p.parent();
            }
            secrets.push(file.strip_prefix(root.path()).expect("under root").display().to_string());
        }
    }
    // The keys the binary is known to write, so this cannot pass by finding nothing.
    for expected in [
        "data/keys/log.key",
        "data/pki/ca/ca-1.key",
        "data/pki/server.key",
        "data/operator/operator-admin.key",
        "alice/auditor-alice.key",
    ] {
        assert!(secrets.iter().any(|s| s == expected), "{expected} not found among secret files {secrets:?}");
    }
}

/// The base64 lines of a PEM block's body (the key material itself), long enough to be unique.
fn pem_lines(pem: &str) -> Vec<String> {
    pem.lines().filter(|l| !l.starts_with("-----") && l.len() >= 16).map(str::to_owned).collect()
}

#[test]
fn tokens_and_private_keys_never_reach_logs_metrics_answers_events_exports_or_the_store() {
    let root = tempfile::tempdir().expect("temp dir");
    let data = root.path().join("data");
    let server = Server::start(&data);
    let operator = data.join("operator");
    let ca = operator.join("ca.crt");
    // The server certificate names 127.0.0.1, where both listeners are.
    let api = |path: &str| format!("https://{}{path}", server.api);
    let enroll = |path: &str| format!("https://{}{path}", server.enroll);
    let mut answers: Vec<(String, u16, String)> = Vec::new();
    let mut call = |what: &str, url: String, op: bool, body: Option<&str>| -> (u16, String) {
        let (status, text) = curl(&url, &ca, op.then_some(operator.as_path()), body);
        answers.push((what.to_owned(), status, text.clone()));
        (status, text)
    };

    // An operator creates a bootstrap token for a new device; only its hash goes to the server.
    let token = "hwl-boot-6f1d2c9a7b3e4f5081a2b3c4d5e6f708";
    let spare = "hwl-boot-spare-0a1b2c3d4e5f60718293a4b5c6d7e8f9";
    let in_an_hour = (time::OffsetDateTime::now_utc() + time::Duration::hours(1)).unix_timestamp() * 1000;
    for (id, t, expires_at) in [("tok-1", token, in_an_hour), ("tok-2", spare, in_an_hour)] {
        let create = serde_json::json!({"command_id": id, "command": {"type": "create_bootstrap_token",
            "token_hash": TokenHash::of(t).to_string(), "device_id": format!("gpu-{id}"), "expires_at": expires_at}});
        let (status, text) = call("create token", api("/v1/commands"), true, Some(&create.to_string()));
        assert_eq!(status, 200, "{text}");
    }
    // The agent enrolls with it; its key never leaves it.
    let role = Role::agent("gpu-tok-1").expect("role");
    let (agent_key, csr) = generate_key_and_csr(&role).expect("CSR");
    let enroll_body = serde_json::json!({"token": token, "csr_pem": csr, "hostname": "gpu-new.lan"}).to_string();
    let (status, text) = call("enroll", enroll("/v1/enroll"), false, Some(&enroll_body));
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("BEGIN CERTIFICATE"), "the answer carries the certificate: {text}");
    // Refusals: the spent token again, a wrong token, a bad CSR with a live token, a malformed body holding
    // the token, an unknown field, the token where an operator's command is expected.
    let (_, csr2) = generate_key_and_csr(&role).expect("CSR");
    let refusals = [
        ("reuse", serde_json::json!({"token": token, "csr_pem": csr2}).to_string(), 409),
        ("wrong token", serde_json::json!({"token": format!("{token}x"), "csr_pem": csr2}).to_string(), 403),
        ("bad csr", serde_json::json!({"token": spare, "csr_pem": "not a CSR"}).to_string(), 400),
        ("truncated", format!("{{\"token\": \"{spare}\", \"csr_pem\": \"-----BEGIN"), 400),
        ("unknown field", serde_json::json!({"token": spare, "csr_pem": csr2, "role": "operator"}).to_string(), 400),
    ];
    for (what, body, want) in refusals {
        let (status, text) = call(what, enroll("/v1/enroll"), false, Some(&body));
        assert_eq!(status, want, "{what}: {text}");
    }
    let (status, metrics) = call("metrics", api("/metrics"), true, None);
    assert_eq!(status, 200, "{metrics}");
    assert!(metrics.contains("hwledger_http_requests_total"), "{metrics}");
    let (status, events) = call("events", api("/v1/events?from=1"), true, None);
    assert_eq!(status, 200, "{events}");
    assert!(events.contains("bootstrap_token_used"), "the redemption is an event: {events}");
    let (log, stdout) = server.stop();
    assert!(log.contains("device enrolled with a bootstrap token"), "the debug log is captured:\n{log}");

    // Offline views of the same data directory.
    let log_json = String::from_utf8(hw(&data, &["--json", "log"]).stdout).expect("utf-8");
    assert!(log_json.contains("bootstrap_token_created"), "{log_json}");
    let export = root.path().join("fleet.hwlx");
    hw(&data, &["export", "--out", export.to_str().expect("utf-8 path")]);

    // What must never appear: the tokens, and every private key's material.
    let mut needles: Vec<(String, String)> = vec![("token".into(), token.into()), ("token".into(), spare.into())];
    needles.extend(pem_lines(&agent_key).into_iter().map(|l| ("agent key".to_owned(), l)));
    for file in files(&data) {
        let text = String::from_utf8_lossy(&std::fs::read(&file).expect("read")).into_owned();
        if text.contains("PRIVATE KEY-----") {
            let what = file.strip_prefix(&data).expect("under data").display().to_string();
            needles.extend(pem_lines(&text).into_iter().map(|l| (what.clone(), l)));
        } else if let Some(rest) = text.trim().strip_prefix("PRIVATE+KEY+") {
            // name+keyid+base64(0x01 ‖ seed): the third field (base64 may itself contain '+') is the secret.
            let seed = rest.splitn(3, '+').nth(2).unwrap_or_default();
            if seed.len() >= 16 {
                needles.push(("log key".into(), seed.to_owned()));
            }
        }
    }
    for what in ["pki/server.key", "pki/ca/ca-1.key", "operator/operator-admin.key", "log key", "agent key"] {
        assert!(needles.iter().any(|(w, _)| w == what), "no material found for {what}");
    }

    let mut haystacks: Vec<(String, Vec<u8>)> = vec![
        ("server stderr (debug log)".into(), log.into_bytes()),
        ("server stdout".into(), stdout.into_bytes()),
        ("hwledger log --json".into(), log_json.into_bytes()),
        ("export bundle".into(), std::fs::read(&export).expect("read export")),
    ];
    haystacks.extend(
        answers.into_iter().map(|(what, status, body)| (format!("answer to {what} ({status})"), body.into_bytes())),
    );
    for file in files(&data.join("ledger")) {
        haystacks.push((format!("store file {}", file.display()), std::fs::read(&file).expect("read store file")));
    }
    let mut leaks = Vec::new();
    for (where_, hay) in &haystacks {
        for (what, needle) in &needles {
            if hay.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                leaks.push(format!("{what} found in {where_}"));
            }
        }
    }
    assert!(leaks.is_empty(), "secrets leaked:\n{}", leaks.join("\n"));
}

#[test]
fn cloud_api_keys_never_reach_output_trace_logs_or_the_data_directory() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let stub = rt.block_on(cloud_stub::Stub::start());
    let root = tempfile::tempdir().expect("temp dir");
    let data = root.path().join("data");
    let config = root.path().join("config.toml");
    let table = |provider: &str, scenario: &str, key: bool| {
        let key = if key { format!("api_key = {:?}\n", cloud_stub::KEY) } else { String::new() };
        format!("[clouds.{provider}]\nbase_url = {:?}\n{key}\n", stub.url(scenario))
    };
    let run = |tables: String, args: &[&str]| -> Output {
        std::fs::write(&config, tables).expect("write config");
        let mut all = vec!["--config", config.to_str().expect("utf-8 path")];
        all.extend_from_slice(args);
        // RunPod's key comes from its environment variable, the others' from the file.
        hw_cmd(&data, &all).env("HWLEDGER_LOG", "trace").env("RUNPOD_API_KEY", cloud_stub::KEY).output().expect("run")
    };
    let mut outputs = Vec::new();
    let ok = run(
        table("vast", "ok-vast", true) + &table("runpod", "ok-runpod", false) + &table("lambda", "ok-lambda", true),
        &["--json", "-v", "prices", "--refresh"],
    );
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("usd_per_gpu_hour"), "prices were fetched");
    outputs.push(ok);
    // Providers that refuse the key or echo it back in their error answers.
    for (vast, runpod, lambda) in
        [("leak-vast-msg", "leak-graphql", "leak-lambda-error"), ("leak-trailing", "unauthorized", "leak-malformed")]
    {
        let o = run(
            table("vast", vast, true) + &table("runpod", runpod, false) + &table("lambda", lambda, true),
            &["--json", "-v", "prices", "--refresh"],
        );
        assert_eq!(o.status.code(), Some(2), "every provider failed: {}", String::from_utf8_lossy(&o.stderr));
        outputs.push(o);
    }
    assert!(stub.hits("leak-graphql") > 0 && stub.hits("leak-vast-msg") > 0, "the echoing providers were asked");
    let mut leaks = Vec::new();
    for (i, o) in outputs.iter().enumerate() {
        for (name, bytes) in [("stdout", &o.stdout), ("stderr", &o.stderr)] {
            if String::from_utf8_lossy(bytes).contains(cloud_stub::KEY) {
                leaks.push(format!("run {i} {name}"));
            }
        }
    }
    assert!(String::from_utf8_lossy(&outputs[0].stderr).lines().count() > 20, "trace logging is on");
    let stored = files(&data);
    assert!(stored.iter().any(|f| f.ends_with("cache/prices.json")), "the price cache was written: {stored:?}");
    for file in stored {
        let bytes = std::fs::read(&file).expect("read data file");
        if bytes.windows(cloud_stub::KEY.len()).any(|w| w == cloud_stub::KEY.as_bytes()) {
            leaks.push(file.display().to_string());
        }
    }
    assert!(leaks.is_empty(), "the API key leaked into: {leaks:?}");
    assert_eq!(mode(&data), 0o700, "the data directory `prices` created for its cache");
}
