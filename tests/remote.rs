//! End to end over the network: the real `hwledger serve` binary on 127.0.0.1:0 (ports read from its
//! `--json` startup line) driven by the real `hwledger` CLI with `--server`: submit and every read subcommand
//! give the same output as against the data directory itself; token enrollment both ways (token created
//! over the API and locally, redeemed by `enroll redeem`), with a reused and an expired token refused with
//! their codes; and a bring-your-own server certificate from a separate CA.

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

/// Longest the tests wait for the server to start or stop.
const WAIT: Duration = Duration::from_secs(60);

fn hw(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hwledger"))
        .args(args)
        .env_remove("HWLEDGER_CONFIG")
        .env_remove("HWLEDGER_SERVER")
        .env_remove("HWLEDGER_BUNDLE")
        .env_remove("HWLEDGER_DATA")
        .env("HOME", std::env::temp_dir())
        .output()
        .expect("run hwledger")
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// A running `hwledger serve`.
struct Server {
    child: Child,
    api: String,
    enroll: Option<String>,
    operator_bundle: PathBuf,
    stderr: PathBuf,
}

impl Server {
    fn start(data: &Path, extra: &[&str]) -> Server {
        std::fs::create_dir_all(data).unwrap();
        let stderr = data.with_extension("stderr.log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_hwledger"))
            .args([
                "--json",
                "--data",
                p(data),
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--dashboard-listen",
                "127.0.0.1:0",
            ])
            .args(extra)
            .env_remove("HWLEDGER_CONFIG")
            .env_remove("HWLEDGER_LISTEN")
            .env("HOME", std::env::temp_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("start hwledger serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(WAIT).unwrap_or_default();
        let ready: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
            let _ = child.kill();
            panic!("no startup line ({e}): {line:?}; stderr: {}", std::fs::read_to_string(&stderr).unwrap_or_default())
        });
        assert_eq!(ready["event"], "listening");
        let port = |k: &str| ready[k].as_str().map(|a| a.rsplit(':').next().unwrap_or_default().to_owned());
        Server {
            api: format!("https://127.0.0.1:{}", port("api").unwrap()),
            enroll: port("enroll").map(|p| format!("https://127.0.0.1:{p}")),
            operator_bundle: PathBuf::from(ready["operator_bundle"].as_str().unwrap()),
            child,
            stderr,
        }
    }

    /// Stops the server gracefully (SIGTERM) and checks it exits cleanly.
    fn stop(mut self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).expect("pid fits i32"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("send SIGTERM");
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let log = std::fs::read_to_string(&self.stderr).unwrap_or_default();
                assert!(status.success(), "serve exited with {status}: {log}");
                assert!(log.contains("stopped cleanly"), "{log}");
                return;
            }
            assert!(std::time::Instant::now() < deadline, "serve did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const CMDS: &str = concat!(
    r#"{"command_id":"c1","command":{"type":"enroll_device","device_id":"box-1","kind":"local","hostname":"box-1.lan"}}"#,
    "\n",
    r#"{"command_id":"c2","command":{"type":"register_device","device_id":"box-1","gpus":[{"index":0,"name":"RTX 4090","uuid":null,"vram_total_mib":24564}]}}"#,
    "\n",
    r#"{"command_id":"c3","command":{"type":"record_telemetry","device_id":"box-1","sampled_at":1000,"gpus":[{"index":0,"vram_used_mib":512,"vram_total_mib":24564,"utilization_pct":37.0,"temperature_c":61.0,"power_w":150.0}]}}"#,
    "\n",
    r#"{"command_id":"c4","command":{"type":"dispatch_job","job_id":"job-1","device_id":"box-1","model":"llama-3-8b","vram_mib":8000}}"#,
    "\n",
);

/// Removes the fields computed from "now" at read time, which differ between two reads.
fn without_now(mut v: Value) -> Value {
    if let Value::Object(map) = &mut v {
        for k in ["now", "window_start", "window_end"] {
            map.remove(k);
        }
    }
    v
}

#[test]
fn submit_and_reads_over_the_server_match_the_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cmds = dir.path().join("cmds.jsonl");
    std::fs::write(&cmds, CMDS).unwrap();
    let server = Server::start(&data, &[]);
    let bundle = server.operator_bundle.clone();
    let remote = |args: &[&str]| -> Output {
        let mut all = args.to_vec();
        all.extend(["--server", &server.api, "--bundle", p(&bundle)]);
        hw(&all)
    };

    let o = remote(&["submit", p(&cmds)]);
    assert_eq!(o.status.code(), Some(0), "{}{}", out(&o), err(&o));
    assert_eq!(out(&o).lines().filter(|l| l.starts_with("accepted")).count(), 4, "{}", out(&o));
    // A retry returns the original receipts.
    let first = hw(&["--json", "submit", p(&cmds), "--server", &server.api, "--bundle", p(&bundle)]);
    assert!(out(&first).lines().all(|l| l.contains(r#""status":"duplicate""#)), "{}", out(&first));
    // A rejected command: exit 1 with its code, as locally.
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"command_id":"c9","command":{"type":"record_telemetry","device_id":"nope","sampled_at":1,"gpus":[]}}"#,
    )
    .unwrap();
    let o = remote(&["--json", "submit", p(&bad)]);
    assert_eq!(o.status.code(), Some(1), "{}", err(&o));
    assert!(out(&o).contains(r#""code":"device_unknown""#), "{}", out(&o));
    // The operator identity comes from the certificate, so --operator is a usage error remotely.
    let o = remote(&["submit", p(&cmds), "--operator", "bob"]);
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));

    let reads: &[&[&str]] = &[
        &["--json", "devices"],
        &["devices"],
        &["--json", "device", "box-1"],
        &["--json", "telemetry", "box-1"],
        &["--json", "telemetry", "box-1", "--gpu", "0", "--from", "0", "--to", "5000"],
        &["--json", "jobs"],
        &["jobs"],
        &["--json", "cost", "--window", "7d", "--by", "device"],
        &["--json", "dashboard"],
    ];
    let remote_answers: Vec<Output> = reads.iter().map(|r| remote(r)).collect();
    let missing = remote(&["device", "nope"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(err(&missing).contains("device nope is not enrolled"), "{}", err(&missing));

    // A certificate the server does not know: refused (403 not_pinned), exit 1.
    let stranger = dir.path().join("stranger");
    let o = hw(&["--data", p(&dir.path().join("other")), "enroll", "operator", "eve", "--out", p(&stranger)]);
    assert!(o.status.success(), "{}", err(&o));
    std::fs::copy(bundle.join("ca.crt"), stranger.join("ca.crt")).unwrap();
    let o = hw(&["devices", "--server", &server.api, "--bundle", p(&stranger)]);
    assert_ne!(o.status.code(), Some(0), "another fleet's certificate must not be accepted");
    server.stop();

    // The same reads against the data directory, now that the server has released it.
    for (args, remote) in reads.iter().zip(&remote_answers) {
        let mut local_args = vec!["--data", p(&data)];
        local_args.extend_from_slice(args);
        let local = hw(&local_args);
        assert_eq!(local.status.code(), Some(0), "{args:?}: {}", err(&local));
        assert_eq!(remote.status.code(), Some(0), "{args:?}: {}", err(remote));
        if args.first() == Some(&"--json") {
            let l: Value = serde_json::from_str(out(&local).trim()).unwrap();
            let r: Value = serde_json::from_str(out(remote).trim()).unwrap();
            assert_eq!(without_now(r), without_now(l), "{args:?}");
        } else {
            assert_eq!(out(remote), out(&local), "{args:?}");
        }
    }
    let devices: Value = serde_json::from_str(out(&remote_answers[0]).trim()).unwrap();
    assert_eq!(devices[0]["device_id"], "box-1");
    assert_eq!(devices[0]["hostname"], "box-1.lan");
}

#[test]
fn token_enrollment_both_ways_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, &["--enroll-listen", "127.0.0.1:0"]);
    let ops = server.operator_bundle.clone();
    let ca = ops.join("ca.crt");
    let enroll_url = server.enroll.clone().unwrap();
    let token_for = |device: &str, ttl: &str| -> String {
        let o = hw(&["--json", "enroll", "token", device, "--ttl", ttl, "--server", &server.api, "--bundle", p(&ops)]);
        assert_eq!(o.status.code(), Some(0), "{}", err(&o));
        let v: Value = serde_json::from_str(out(&o).trim()).unwrap();
        assert_eq!(v["device_id"], device);
        v["token"].as_str().unwrap().to_owned()
    };
    let redeem = |token: &str, device: &str, out_dir: &Path| -> Output {
        hw(&[
            "--json",
            "enroll",
            "redeem",
            "--server",
            &enroll_url,
            "--ca",
            p(&ca),
            "--token",
            token,
            "--device",
            device,
            "--out",
            p(out_dir),
        ])
    };

    // Over the API: operator creates the token, the device redeems it and can heartbeat at once.
    let token = token_for("gpu-new", "1h");
    let dev = dir.path().join("dev");
    let o = redeem(&token, "gpu-new", &dev);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let answer: Value = serde_json::from_str(out(&o).trim()).unwrap();
    assert_eq!(answer["device_id"], "gpu-new");
    let key = dev.join("agent-gpu-new.key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    }
    assert!(dev.join("agent-gpu-new.crt").is_file() && dev.join("ca.crt").is_file());
    let hb = dir.path().join("hb.json");
    std::fs::write(
        &hb,
        r#"{"command_id":"n1","command":{"type":"record_telemetry","device_id":"gpu-new","sampled_at":5,"gpus":[]}}"#,
    )
    .unwrap();
    let o = hw(&["submit", p(&hb), "--server", &server.api, "--bundle", p(&dev)]);
    assert_eq!(o.status.code(), Some(0), "{}{}", out(&o), err(&o));
    // The agent speaks only for itself.
    let other = dir.path().join("other.json");
    std::fs::write(
        &other,
        r#"{"command_id":"n2","command":{"type":"record_telemetry","device_id":"gpu-x","sampled_at":5,"gpus":[]}}"#,
    )
    .unwrap();
    let o = hw(&["--json", "submit", p(&other), "--server", &server.api, "--bundle", p(&dev)]);
    assert_eq!(o.status.code(), Some(1));

    // A reused token is refused with its code.
    let o = redeem(&token, "gpu-new", &dir.path().join("dev-again"));
    assert_eq!(o.status.code(), Some(1), "{}", err(&o));
    assert!(err(&o).contains("token_used"), "{}", err(&o));
    assert!(!dir.path().join("dev-again/agent-gpu-new.key").exists());
    // An expired token is refused with its code.
    let short = token_for("gpu-late", "1s");
    std::thread::sleep(Duration::from_millis(1500));
    let o = redeem(&short, "gpu-late", &dir.path().join("late"));
    assert_eq!(o.status.code(), Some(1), "{}", err(&o));
    assert!(err(&o).contains("token_expired"), "{}", err(&o));
    // An unknown one too.
    let o = redeem("bogus-token", "gpu-x", &dir.path().join("x"));
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("token_unknown"), "{}", err(&o));
    server.stop();

    // Locally: the operator creates the token on the data directory; after a restart the device redeems it.
    let o = hw(&["--data", p(&data), "enroll", "token", "gpu-local", "--ttl", "2h"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let local_token = out(&o).trim().to_owned();
    assert_eq!(local_token.len(), 43, "{local_token}");
    let server = Server::start(&data, &["--enroll-listen", "127.0.0.1:0"]);
    let o = hw(&[
        "enroll",
        "redeem",
        "--server",
        server.enroll.as_deref().unwrap(),
        "--ca",
        p(&ca),
        "--token",
        &local_token,
        "--device",
        "gpu-local",
        "--out",
        p(&dir.path().join("local-dev")),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let o = hw(&["--json", "device", "gpu-local", "--server", &server.api, "--bundle", p(&ops)]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let device: Value = serde_json::from_str(out(&o).trim()).unwrap();
    assert_eq!(device["cert_fingerprints"].as_array().map(Vec::len), Some(1), "{device}");
    server.stop();
}

#[test]
fn serve_with_a_bring_your_own_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // A separate CA (think: a public one) and a server certificate for the loopback names.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "byo test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server_params = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let server_cert = server_params.signed_by(&server_key, &issuer).unwrap();
    let (byo_ca, byo_cert, byo_key) =
        (dir.path().join("byo-ca.crt"), dir.path().join("srv.crt"), dir.path().join("srv.key"));
    std::fs::write(&byo_ca, ca_cert.pem()).unwrap();
    std::fs::write(&byo_cert, server_cert.pem()).unwrap();
    std::fs::write(&byo_key, server_key.serialize_pem()).unwrap();

    let server = Server::start(&data, &["--tls-cert", p(&byo_cert), "--tls-key", p(&byo_key)]);
    let ops = server.operator_bundle.clone();
    let (cert, key) = (ops.join("operator-admin.crt"), ops.join("operator-admin.key"));
    // Trusting the separate CA, with the fleet client certificate: accepted.
    let o =
        hw(&["--json", "devices", "--server", &server.api, "--cert", p(&cert), "--key", p(&key), "--ca", p(&byo_ca)]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert_eq!(out(&o).trim(), "[]");
    // Trusting only the fleet CA: the auto-issued certificate is not presented, so the handshake fails.
    let o = hw(&["devices", "--server", &server.api, "--bundle", p(&ops)]);
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    // Client certificates are still checked against the fleet CA: another fleet's operator is refused.
    let other = dir.path().join("other");
    let o = hw(&["--data", p(&dir.path().join("otherdata")), "enroll", "operator", "eve", "--out", p(&other)]);
    assert!(o.status.success(), "{}", err(&o));
    let o = hw(&[
        "devices",
        "--server",
        &server.api,
        "--cert",
        p(&other.join("operator-eve.crt")),
        "--key",
        p(&other.join("operator-eve.key")),
        "--ca",
        p(&byo_ca),
    ]);
    assert_eq!(o.status.code(), Some(2), "another CA's client certificate fails the handshake: {}", err(&o));
    server.stop();
}
