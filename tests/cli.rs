//! End to end: the real `hwledger` binary on a fresh data directory — submit, log, export, verify (exit codes
//! 0 / 1 / 2 and the forensic report), import, checkpoint and proofs.

use std::path::Path;
use std::process::{Command, Output};

fn hw(data: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hwledger"))
        .arg("--data")
        .arg(data)
        .args(args)
        .env_remove("HWLEDGER_CONFIG")
        .output()
        .expect("run hwledger")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

const CMDS: &str = concat!(
    r#"{"command_id":"c1","command":{"type":"enroll_device","device_id":"box-1","kind":"local"}}"#,
    "\n",
    r#"{"command_id":"c2","command":{"type":"register_device","device_id":"box-1","gpus":[{"index":0,"name":"RTX 4090","uuid":null,"vram_total_mib":24564}]}}"#,
    "\n",
    r#"{"command_id":"c3","command":{"type":"record_telemetry","device_id":"box-1","sampled_at":1,"gpus":[]}}"#,
    "\n",
    r#"{"command_id":"c4","command":{"type":"record_telemetry","device_id":"box-1","sampled_at":2,"gpus":[]}}"#,
    "\n",
);

fn seeded() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let cmds = dir.path().join("cmds.jsonl");
    std::fs::write(&cmds, CMDS).unwrap();
    let o = hw(&dir.path().join("data"), &["submit", cmds.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(stdout(&o).lines().filter(|l| l.starts_with("accepted")).count(), 4);
    dir
}

#[test]
fn submit_is_idempotent_and_rejections_exit_1() {
    let dir = seeded();
    let data = dir.path().join("data");
    let cmds = dir.path().join("cmds.jsonl");
    let o = hw(&data, &["--json", "submit", cmds.to_str().unwrap()]);
    assert!(o.status.success());
    assert!(stdout(&o).lines().all(|l| l.contains(r#""status":"duplicate""#)), "{}", stdout(&o));
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"command_id":"c9","command":{"type":"record_telemetry","device_id":"nope","sampled_at":1,"gpus":[]}}"#,
    )
    .unwrap();
    let o = hw(&data, &["--json", "submit", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains(r#""code":"device_unknown""#), "{}", stdout(&o));
    let unknown_field = dir.path().join("uf.json");
    std::fs::write(&unknown_field, r#"{"command_id":"c9","bogus":1,"command":{"type":"start_job","job_id":"j"}}"#)
        .unwrap();
    let o = hw(&data, &["submit", unknown_field.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown field"));
}

#[test]
fn log_lists_events_with_filters() {
    let dir = seeded();
    let o = hw(&dir.path().join("data"), &["--json", "log", "--type", "telemetry_recorded"]);
    assert!(o.status.success());
    let lines: Vec<serde_json::Value> = stdout(&o).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["seq"], 3);
}

#[test]
fn export_verify_import_round_trip_and_tamper_exit_codes() {
    let dir = seeded();
    let data = dir.path().join("data");
    let bundle = dir.path().join("fleet.hwlx");
    let o = hw(&data, &["export", "--out", bundle.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let vkey = data.join("keys/log.vkey");
    let o = hw(&data, &["verify", "--bundle", bundle.to_str().unwrap(), "--vkey", vkey.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(stdout(&o).contains("INTACT"));

    // Flip one byte near the end of event 3's body: exit 1, seq 3, payload_altered, with evidence.
    let mut bytes = std::fs::read(&bundle).unwrap();
    let mut off = 13usize;
    for _ in 0..2 {
        let len = u32::from_le_bytes(bytes[off..off + 4].try_into().unwrap()) as usize;
        off += 4 + len + 32;
    }
    let len = u32::from_le_bytes(bytes[off..off + 4].try_into().unwrap()) as usize;
    bytes[off + 4 + len - 1] ^= 0x01;
    let tampered = dir.path().join("tampered.hwlx");
    std::fs::write(&tampered, &bytes).unwrap();
    let o = hw(&data, &["--json", "verify", "--bundle", tampered.to_str().unwrap(), "--vkey", vkey.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    let first = &report["breaks"][0];
    assert_eq!(first["seq"], 3);
    assert_eq!(first["kind"], "payload_altered");
    assert!(first["expected"].as_str().unwrap().len() == 64 && first["found"].as_str().unwrap().len() == 64);

    // A truncated file is a framing break (exit 1); a missing file is an I/O error (exit 2).
    std::fs::write(&tampered, &std::fs::read(&bundle).unwrap()[..40]).unwrap();
    let o = hw(&data, &["verify", "--bundle", tampered.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let o = hw(&data, &["verify", "--bundle", dir.path().join("missing").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));

    // A signature by another key is refused even though the bundle carries its own key.
    let other = "other+00000000+AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let o = hw(&data, &["verify", "--bundle", bundle.to_str().unwrap(), "--vkey", other]);
    assert_ne!(o.status.code(), Some(0));

    // Import into a new directory: same head, verifies; a retry of an imported command id is a duplicate.
    let data2 = dir.path().join("data2");
    let o = hw(&data2, &["import", bundle.to_str().unwrap(), "--vkey", vkey.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = hw(&data2, &["verify"]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    let o = hw(&data2, &["--json", "submit", dir.path().join("cmds.jsonl").to_str().unwrap()]);
    assert!(stdout(&o).lines().all(|l| l.contains("duplicate")), "{}", stdout(&o));
    // Import refuses a broken export.
    let mut broken = std::fs::read(&bundle).unwrap();
    broken[20] ^= 0xff;
    std::fs::write(&tampered, &broken).unwrap();
    let o = hw(&dir.path().join("data3"), &["import", tampered.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(!dir.path().join("data3/ledger").exists());
}

#[test]
fn checkpoint_and_proofs_verify_with_the_printed_values() {
    let dir = seeded();
    let data = dir.path().join("data");
    let o = hw(&data, &["checkpoint"]);
    assert!(o.status.success());
    assert!(stdout(&o).starts_with("hwledger\n4\n"), "{}", stdout(&o));
    assert!(stdout(&o).contains("\u{2014} hwledger "));
    let o = hw(&data, &["proof", "inclusion", "--seq", "2"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["tree_size"], 4);
    assert_eq!(v["proof"].as_array().unwrap().len(), 2);
    let o = hw(&data, &["proof", "consistency", "--from", "3"]);
    assert!(o.status.success());
}

#[test]
fn verify_with_recorded_head_detects_truncation() {
    let dir = seeded();
    let data = dir.path().join("data");
    let o = hw(&data, &["verify", "--head", "9:00000000000000000000000000000000000000000000000000000000000000aa"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("truncated"), "{}", stdout(&o));
    let o = hw(&data, &["verify", "--head", "garbage"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn serve_first_run_prints_a_working_curl_command_and_reuses_everything() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut fingerprints = Vec::new();
    for _run in 0..2 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_hwledger"))
            .arg("--data")
            .arg(&data)
            .args(["serve", "--listen", "127.0.0.1:0", "--dashboard-listen", "127.0.0.1:0"])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut curl = None;
        for _ in 0..200 {
            let Some(Ok(line)) = lines.next() else { break };
            if line.trim_start().starts_with("curl --cert") {
                curl = Some(line.trim().to_owned());
                break;
            }
        }
        let curl = curl.expect("serve printed a curl command");
        let args: Vec<&str> = curl.split_whitespace().skip(1).collect();
        let out = Command::new("curl").arg("-sS").args(&args).output().expect("run curl");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let body: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(body["devices"].is_array(), "{body}");
        // Without the client certificate the handshake fails.
        let no_cert: Vec<&str> = args
            .iter()
            .copied()
            .filter(|a| !a.contains("operator-admin"))
            .filter(|a| *a != "--cert" && *a != "--key")
            .collect();
        let out = Command::new("curl").arg("-sS").args(&no_cert).output().unwrap();
        assert!(!out.status.success());
        let _ = Command::new("kill").arg("-INT").arg(child.id().to_string()).status();
        let _ = child.wait();
        let ca = std::fs::read(data.join("operator/ca.crt")).unwrap();
        fingerprints.push((ca, std::fs::read(data.join("operator/operator-admin.crt")).unwrap()));
    }
    assert_eq!(fingerprints[0], fingerprints[1], "second run reuses the CA and the operator bundle");
}

#[test]
fn replay_as_of_a_past_seq_and_rebuild_give_consistent_digests() {
    let dir = seeded();
    let data = dir.path().join("data");
    let o = hw(&data, &["--json", "replay", "--until", "1", "--projection", "registry"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["seq"], 1);
    let devices = v["projections"]["registry"].as_array().unwrap();
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0]["gpus"].as_array().unwrap().len(), 0, "as of seq 1 the GPUs were not registered yet");
    let o = hw(&data, &["--json", "replay", "--until", "4"]);
    let head: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    let o = hw(&data, &["--json", "replay", "--rebuild"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rebuilt: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(rebuilt["seq"], 4);
    assert_eq!(head["digests"], rebuilt["digests"], "as-of at the head equals a rebuild");
    let o = hw(&data, &["replay", "--until", "4", "--projection", "nope"]);
    assert_eq!(o.status.code(), Some(2));
    let o = hw(&data, &["--json", "devices"]);
    let devices: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(devices[0]["device_id"], "box-1");
}

#[test]
fn receipt_verifies_offline_against_a_later_signed_checkpoint() {
    let dir = seeded();
    let data = dir.path().join("data");
    let one = dir.path().join("one.json");
    std::fs::write(
        &one,
        r#"{"command_id":"c5","command":{"type":"record_telemetry","device_id":"box-1","sampled_at":5,"gpus":[]}}"#,
    )
    .unwrap();
    let o = hw(&data, &["--json", "submit", one.to_str().unwrap()]);
    let line: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    let receipt = dir.path().join("receipt.json");
    std::fs::write(&receipt, line["result"].to_string()).unwrap();
    // The log grows after the receipt; the checkpoint is newer.
    std::fs::write(
        &one,
        r#"{"command_id":"c6","command":{"type":"record_telemetry","device_id":"box-1","sampled_at":6,"gpus":[]}}"#,
    )
    .unwrap();
    assert!(hw(&data, &["submit", one.to_str().unwrap()]).status.success());
    let cp = dir.path().join("cp.note");
    let o = hw(&data, &["checkpoint", "--sign"]);
    std::fs::write(&cp, &o.stdout).unwrap();
    let proof = dir.path().join("proof.json");
    let o = hw(&data, &["proof", "inclusion", "--seq", "5"]);
    std::fs::write(&proof, &o.stdout).unwrap();
    let vkey = data.join("keys/log.vkey");
    let args = |p: &Path| {
        vec![
            "receipt".to_owned(),
            "verify".into(),
            "--receipt".into(),
            receipt.to_str().unwrap().into(),
            "--proof".into(),
            p.to_str().unwrap().into(),
            "--checkpoint".into(),
            cp.to_str().unwrap().into(),
            "--vkey".into(),
            vkey.to_str().unwrap().into(),
        ]
    };
    let a = args(&proof);
    let o = hw(&data, &a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(stdout(&o).contains("VERIFIED: event 5 is in the log of 6 events"));
    // A proof whose sibling hash was altered is refused.
    let mut p: serde_json::Value = serde_json::from_slice(&std::fs::read(&proof).unwrap()).unwrap();
    p["proof"][0] = serde_json::Value::String("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into());
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, p.to_string()).unwrap();
    let a = args(&bad);
    let o = hw(&data, &a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stdout(&o).contains("NOT VERIFIED"));
}

#[test]
fn ca_init_is_idempotent_and_enroll_pins_a_private_bundle() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let a = hw(&data, &["--json", "ca", "init"]);
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    let b = hw(&data, &["--json", "ca", "init"]);
    assert_eq!(stdout(&a), stdout(&b), "a second init changes nothing");
    let status: serde_json::Value = serde_json::from_str(stdout(&a).trim()).unwrap();
    assert!(status["rotation_due_at"].is_string(), "{status}");
    let out = dir.path().join("bundle");
    let o = hw(&data, &["--json", "enroll", "auditor", "alice", "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    let key = v["key"].as_str().unwrap();
    assert_eq!(std::fs::metadata(key).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(&data).unwrap().permissions().mode() & 0o777, 0o700);
    let o = hw(&data, &["--json", "log", "--type", "certificate_issued"]);
    assert!(stdout(&o).contains(v["fingerprint"].as_str().unwrap()), "the certificate is pinned by an event");
}

#[test]
fn proofs_verify_offline_with_hwledger_verify_and_a_fork_is_refused() {
    let dir = seeded();
    let data = dir.path().join("data");
    let vkey = data.join("keys/log.vkey");
    let old = dir.path().join("old.note");
    std::fs::write(&old, hw(&data, &["checkpoint", "--sign"]).stdout).unwrap();
    let one = dir.path().join("one.json");
    std::fs::write(
        &one,
        r#"{"command_id":"c7","command":{"type":"record_telemetry","device_id":"box-1","sampled_at":7,"gpus":[]}}"#,
    )
    .unwrap();
    assert!(hw(&data, &["submit", one.to_str().unwrap()]).status.success());
    let new = dir.path().join("new.note");
    std::fs::write(&new, hw(&data, &["checkpoint", "--sign"]).stdout).unwrap();
    let cons = dir.path().join("cons.json");
    std::fs::write(&cons, hw(&data, &["proof", "consistency", "--from", "4"]).stdout).unwrap();
    let incl = dir.path().join("incl.json");
    std::fs::write(&incl, hw(&data, &["proof", "inclusion", "--seq", "2"]).stdout).unwrap();
    let (v, o, n, c, i) = (
        vkey.to_str().unwrap(),
        old.to_str().unwrap(),
        new.to_str().unwrap(),
        cons.to_str().unwrap(),
        incl.to_str().unwrap(),
    );
    let r = hw(&data, &["verify", "--proof", c, "--checkpoint", n, "--since", o, "--vkey", v]);
    assert_eq!(r.status.code(), Some(0), "{}", stdout(&r));
    let r = hw(&data, &["verify", "--proof", i, "--checkpoint", n, "--vkey", v]);
    assert_eq!(r.status.code(), Some(0), "{}", stdout(&r));
    // A fork: another ledger signed by the same key with a different history of the same size.
    let fork_data = dir.path().join("fork");
    std::fs::create_dir_all(fork_data.join("keys")).unwrap();
    for f in ["log.key", "log.vkey"] {
        std::fs::copy(data.join("keys").join(f), fork_data.join("keys").join(f)).unwrap();
    }
    let cmds = dir.path().join("cmds.jsonl");
    let forked = std::fs::read_to_string(&cmds).unwrap().replace("\"sampled_at\":2", "\"sampled_at\":99");
    std::fs::write(&cmds, forked).unwrap();
    assert!(hw(&fork_data, &["submit", cmds.to_str().unwrap()]).status.success());
    assert!(hw(&fork_data, &["submit", one.to_str().unwrap()]).status.success());
    let fork_new = dir.path().join("fork.note");
    std::fs::write(&fork_new, hw(&fork_data, &["checkpoint", "--sign"]).stdout).unwrap();
    let fork_cons = dir.path().join("fork-cons.json");
    std::fs::write(&fork_cons, hw(&fork_data, &["proof", "consistency", "--from", "4"]).stdout).unwrap();
    let r = hw(
        &data,
        &[
            "verify",
            "--proof",
            fork_cons.to_str().unwrap(),
            "--checkpoint",
            fork_new.to_str().unwrap(),
            "--since",
            o,
            "--vkey",
            v,
        ],
    );
    assert_eq!(r.status.code(), Some(1), "a forked history does not extend the old checkpoint: {}", stdout(&r));
    // The fork's bundle checked against the old checkpoint is caught too.
    let bundle = dir.path().join("fork.hwlx");
    assert!(hw(&fork_data, &["export", "--out", bundle.to_str().unwrap()]).status.success());
    let r = hw(&data, &["--json", "verify", "--bundle", bundle.to_str().unwrap(), "--vkey", v, "--since", o]);
    assert_eq!(r.status.code(), Some(1));
    assert!(stdout(&r).contains("\"inconsistent\""), "{}", stdout(&r));
}
