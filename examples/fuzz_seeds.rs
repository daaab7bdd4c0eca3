//! Writes the generated seed inputs of the fuzz targets in `fuzz/` (run by `fuzz/seed.sh`):
//!
//! ```sh
//! cargo run --example fuzz_seeds -- fuzz/corpus
//! ```
//!
//! The inputs are made by the real code paths, so fuzzing starts from the shapes hwledger really reads: a
//! ledger built by submitting every command type (and the frozen fixture ledger's commands) through
//! `Ledger::submit` with the fuzz targets' fixed log key, then its event bodies, blocks, idempotency groups,
//! an export bundle and signed checkpoints; the frozen fixture ledger's event bodies; CSRs, certificates and role URIs from a real fleet CA; Merkle
//! proofs from a real tree. Captured inputs (fixtures) are copied by `fuzz/seed.sh` itself. Files are named
//! `gen-<what>`, and a run overwrites what an earlier run wrote (the output is deterministic except for
//! keys and certificates, which are fresh each run).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use hwledger_engine::chain::Hash;
use hwledger_engine::checkpoint::{Checkpoint, sign_checkpoint};
use hwledger_engine::event::Actor;
use hwledger_engine::merkle::{MemoryTree, consistency_proof, inclusion_proof, leaf_hash, root};
use hwledger_engine::note::{Signer, sign_note};
use hwledger_engine::store::parse_block;
use hwledger_engine::{Context, Ledger, LedgerOptions, Submission};
use hwledger_wire::pki::{Pki, PkiOptions, Role, generate_key_and_csr};

/// The log key the fuzz targets pin (`fuzz/fuzz_targets/export_bundle.rs`, `signed_note.rs`).
const FUZZ_ORIGIN: &str = "hwledger.fuzz/log";
const FUZZ_SEED: [u8; 32] = [7; 32];
const WITNESS_SEED: [u8; 32] = [9; 32];

/// Commands beyond the frozen fixture's, so every command type and both token outcomes appear.
const EXTRA_COMMANDS: &str = r#"
{"command_id":"g-001","command":{"type":"enroll_device","device_id":"ssh-box","kind":{"ssh":{"target":"root@10.0.0.9:22"}},"labels":{"rack":"r1","gpu":"a100"}}}
{"command_id":"g-002","command":{"type":"register_device","device_id":"ssh-box","hostname":"ssh-box.lan","gpus":[{"index":0,"name":"NVIDIA A100-SXM4-80GB","uuid":"GPU-aaaa","vram_total_mib":81920}]}}
{"command_id":"g-003","command":{"type":"record_probe","device_id":"ssh-box","ok":false,"detail":"nvidia-smi: command not found","gpus":[{"index":0,"vram_used_mib":1,"vram_total_mib":81920,"utilization_pct":0.0,"temperature_c":-5.5,"power_w":0.0}]}}
{"command_id":"g-004","command":{"type":"create_bootstrap_token","token_hash":"2d3f1cbbe0a2b3ef4d53c0e7a0e1e4f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9","device_id":"fresh-box","expires_at":4102444800000}}
{"command_id":"g-005","command":{"type":"redeem_bootstrap_token","token_hash":"2d3f1cbbe0a2b3ef4d53c0e7a0e1e4f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9","fingerprint":"cc00000000000000000000000000000000000000000000000000000000000003","serial":"7f01","not_after":4102444800000,"hostname":"fresh-box.lan"}}
{"command_id":"g-006","command":{"type":"dispatch_job","job_id":"job-3","device_id":"ssh-box","model":"mixtral","vram_mib":40000}}
{"command_id":"g-007","command":{"type":"start_job","job_id":"job-3"}}
{"command_id":"g-008","command":{"type":"record_telemetry","device_id":"ssh-box","sampled_at":1763900090000,"gpus":[{"index":0,"vram_used_mib":39000,"vram_total_mib":81920,"utilization_pct":99.5,"temperature_c":71.0,"power_w":398.0}]}}
{"command_id":"g-009","command":{"type":"issue_certificate","role":{"operator":"alice"},"fingerprint":"dd00000000000000000000000000000000000000000000000000000000000004","serial":"02","not_after":4102444800000}}
{"command_id":"g-010","command":{"type":"issue_certificate","role":{"auditor":"bob"},"fingerprint":"ee00000000000000000000000000000000000000000000000000000000000005","serial":"03","not_after":4102444800000}}
{"command_id":"g-011","expected_version":4,"command":{"type":"record_telemetry","device_id":"ssh-box","sampled_at":1763900120000,"gpus":[]}}
{"command_id":"g-012","command":{"type":"fail_job","job_id":"job-3","reason":"lost contact"}}
"#;

/// Submissions the `command_json` target's fleet accepts (its devices, jobs and tokens), as its actors see them.
const FLEET_COMMANDS: &[(&str, &str)] = &[
    (
        "telemetry",
        r#"{"command_id":"x-1","command":{"type":"record_telemetry","device_id":"dev-1","sampled_at":5,"gpus":[{"index":0,"vram_used_mib":10,"vram_total_mib":24576,"utilization_pct":50.0,"temperature_c":60.0,"power_w":300.0}]}}"#,
    ),
    (
        "register",
        r#"{"command_id":"x-2","command":{"type":"register_device","device_id":"dev-1","gpus":[{"index":0,"name":"RTX 4090","uuid":null,"vram_total_mib":24576}]}}"#,
    ),
    ("start", r#"{"command_id":"x-3","command":{"type":"start_job","job_id":"job-1"}}"#),
    ("complete", r#"{"command_id":"x-4","command":{"type":"complete_job","job_id":"job-started","exit_status":0}}"#),
    (
        "dispatch",
        r#"{"command_id":"x-5","command":{"type":"dispatch_job","job_id":"job-new","device_id":"dev-1","model":"m","vram_mib":100,"price":{"source":"rate","micro_usd_per_hour":1000,"offer_id":"o-1","quoted_at":1}}}"#,
    ),
    (
        "redeem",
        r#"{"command_id":"x-6","command":{"type":"redeem_bootstrap_token","token_hash":"TOKEN","fingerprint":"2200000000000000000000000000000000000000000000000000000000000000","serial":"0a","not_after":9000000000000}}"#,
    ),
    (
        "decommission",
        r#"{"command_id":"x-7","command":{"type":"decommission_device","device_id":"dev-2","reason":"gone"}}"#,
    ),
    (
        "pin",
        r#"{"command_id":"x-8","command":{"type":"pin_host_key","device_id":"dev-1","key_fingerprint":"SHA256:xyz"}}"#,
    ),
    (
        "revoke",
        r#"{"command_id":"x-9","command":{"type":"revoke_certificate","fingerprint":"1111111111111111111111111111111111111111111111111111111111111111","reason":"r"}}"#,
    ),
    (
        "array",
        r#"[{"command_id":"a-1","command":{"type":"enroll_device","device_id":"dev-9","kind":"local"}},{"command_id":"a-2","expected_version":1,"command":{"type":"register_device","device_id":"dev-9","gpus":[]}},{"command_id":"a-3","command":{"type":"set_device_rate","device_id":"dev-9","micro_usd_per_hour":5}}]"#,
    ),
];

fn main() -> Result<()> {
    let out = std::env::args_os().nth(1).map(PathBuf::from).context("usage: fuzz_seeds CORPUS_DIR")?;
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let work = tempfile::tempdir().context("temporary directory")?;
    let mut seeds = Seeds { out, written: 0 };

    // A ledger with every command type, signed by the fuzz key.
    let signer = Signer::from_seed(FUZZ_ORIGIN, &FUZZ_SEED)?;
    let options = LedgerOptions {
        signer: Some(signer.clone()),
        origin: FUZZ_ORIGIN.to_owned(),
        checkpoint_interval_ms: 0,
        ..LedgerOptions::default()
    };
    let ledger_dir = work.path().join("ledger");
    let ledger = Ledger::open(&ledger_dir, options).context("open a scratch ledger")?;
    let fixture = std::fs::read_to_string(repo.join("fixtures/ledgers/v1/cmds.jsonl")).context("read cmds.jsonl")?;
    let mut now = 1_763_900_000_000;
    for (i, line) in fixture.lines().chain(EXTRA_COMMANDS.lines()).filter(|l| !l.trim().is_empty()).enumerate() {
        let sub: Submission = serde_json::from_str(line).with_context(|| format!("parse {line}"))?;
        now += 30_000;
        let outcome = ledger.submit(sub, Context::new(Actor::System, now))?;
        if outcome.receipt().is_none() {
            bail!("seed command {i} was not accepted: {outcome:?}");
        }
        seeds.write("command_json", &format!("gen-ledger-{i:03}"), line.as_bytes())?;
    }
    let cmds: String = fixture
        .lines()
        .chain(EXTRA_COMMANDS.lines())
        .filter(|l| !l.trim().is_empty())
        .map(|l| format!("{l}\n"))
        .collect();
    seeds.write("command_json", "gen-ledger-all.jsonl", cmds.as_bytes())?;
    let live = hwledger_wire::pki::TokenHash::of("fuzz-token").to_string();
    for (name, json) in FLEET_COMMANDS {
        seeds.write("command_json", &format!("gen-fleet-{name}"), json.replace("TOKEN", &live).as_bytes())?;
    }

    // Its stored bytes: event bodies, blocks, idempotency groups, the verified head.
    let head = ledger.head();
    let mut bodies = Vec::new();
    for (k, v) in ledger.store().raw_tree()?.iter().filter_map(Result::ok) {
        match k.first() {
            Some(b'B') => {
                seeds.write("store_block", &format!("gen-block-{}", hex::encode(&k[1..])), &v)?;
                let events = parse_block(&v).map_err(anyhow::Error::msg)?;
                bodies.extend(events.iter().map(|e| e.body.to_vec()));
            }
            Some(b'C') => seeds.write("store_block", &format!("gen-commands-{}", hex::encode(&k[1..])), &v)?,
            Some(b'M') => seeds.write("store_block", "gen-verified", &v)?,
            _ => {}
        }
    }
    if u64::try_from(bodies.len())? != head.seq {
        bail!("read {} bodies back, the head is {}", bodies.len(), head.seq);
    }
    for (i, body) in bodies.iter().enumerate() {
        seeds.write("event_decode", &format!("gen-body-{:03}", i + 1), body)?;
    }
    seeds.write("event_apply", "gen-ledger", &frames(&bodies)?)?;
    // The frozen fixture ledger's events, as its first build wrote them.
    let mut fixture_bodies = Vec::new();
    hwledger_engine::export::read_export(&repo.join("fixtures/ledgers/v1/v1.hwlx"), |_, body, _| {
        fixture_bodies.push(body.to_vec())
    })?;
    for (i, body) in fixture_bodies.iter().enumerate() {
        seeds.write("event_decode", &format!("fix-v1-body-{:03}", i + 1), body)?;
    }
    seeds.write("event_apply", "fix-v1-ledger", &frames(&fixture_bodies)?)?;

    // Exports: the full bundle (checkpoint by the fuzz key + vkey), and one without sections.
    let checkpoint = ledger.sign_checkpoint_now(now)?.map(|c| c.1).context("sign a checkpoint")?;
    let vkey = signer.verifier().to_vkey();
    let bundle = work.path().join("bundle.hwlx");
    hwledger_engine::export::export(ledger.store(), &bundle, Some(&checkpoint), Some(&vkey))?;
    seeds.write("export_bundle", "gen-bundle", &std::fs::read(&bundle)?)?;
    let bare = work.path().join("bare.hwlx");
    hwledger_engine::export::export(ledger.store(), &bare, None, None)?;
    seeds.write("export_bundle", "gen-export", &std::fs::read(&bare)?)?;
    ledger.close()?;

    // Notes and keys: the log's checkpoint, the same with a witness cosignature, a plain note.
    seeds.write("signed_note", "gen-checkpoint", checkpoint.as_bytes())?;
    let witness = Signer::from_seed("witness.fuzz", &WITNESS_SEED)?;
    let text = checkpoint.split_once("\n\n").map(|(t, _)| format!("{t}\n")).context("checkpoint text")?;
    let cosigned = sign_note(&text, &witness)?;
    let witness_line = cosigned.rsplit_once("\n\n").map(|(_, s)| s).context("witness line")?;
    seeds.write("signed_note", "gen-cosigned", format!("{checkpoint}{witness_line}").as_bytes())?;
    seeds.write("signed_note", "gen-text", text.as_bytes())?;
    let extended = Checkpoint { extensions: vec!["ext one".into()], ..Checkpoint::parse(&text)? };
    seeds.write("signed_note", "gen-extended", sign_checkpoint(&extended, &signer)?.as_bytes())?;
    seeds.write("vkey", "gen-vkey", vkey.as_bytes())?;
    seeds.write("vkey", "gen-witness-vkey", witness.verifier().to_vkey().as_bytes())?;
    seeds.write("vkey", "gen-signer-key", signer.to_key_string().as_bytes())?;

    // PKI: CSRs as the enrollment listener receives them, certificates as TLS peers present them.
    let t0 = time::macros::datetime!(2030-01-01 00:00:00 UTC);
    let pki = Pki::init(&work.path().join("pki"), PkiOptions::default(), t0)?;
    for (i, role) in [Role::agent("dev-fuzz")?, Role::operator("alice")?].iter().enumerate() {
        let (_key, csr) = generate_key_and_csr(role)?;
        seeds.write("enroll_csr", &format!("gen-csr-{i}"), csr.as_bytes())?;
        let body = serde_json::json!({"token": "fuzz-token", "csr_pem": csr, "hostname": "box.lan"});
        seeds.write("enroll_csr", &format!("gen-enroll-{i}"), body.to_string().as_bytes())?;
    }
    for role in [Role::agent("dev-1")?, Role::operator("alice")?, Role::auditor("bob")?] {
        let cert = pki.issue(&role, time::Duration::days(30), t0)?;
        seeds.write("cert_identity", &format!("gen-cert-{}", role.file_stem()), &cert.cert_der)?;
        seeds.write("cert_identity", &format!("gen-uri-{}", role.file_stem()), role.to_uri().as_bytes())?;
    }
    for (i, der) in pki.trust_roots(t0).iter().chain(pki.server_cert_chain(t0).iter()).enumerate() {
        seeds.write("cert_identity", &format!("gen-chain-{i}"), der.as_ref())?;
    }

    // Merkle proofs over a real tree, in the target's layout.
    let tree = MemoryTree::from_leaf_data((0u64..64).map(|i| i.to_le_bytes()));
    for (index, size, size2) in [(0u64, 1u64, 1u64), (3, 8, 13), (12, 13, 64), (63, 64, 64)] {
        let mut input = Vec::new();
        for n in [index, size, size2] {
            input.extend_from_slice(&n.to_le_bytes());
        }
        let r1: Hash = root(&tree, size)?;
        let r2: Hash = root(&tree, size2)?;
        input.extend_from_slice(&r1);
        input.extend_from_slice(&r2);
        input.extend_from_slice(&leaf_hash(&index.to_le_bytes()));
        let mut inclusion = input.clone();
        for h in inclusion_proof(&tree, index, size)? {
            inclusion.extend_from_slice(&h);
        }
        seeds.write("merkle_proof", &format!("gen-inclusion-{index}-{size}"), &inclusion)?;
        for h in consistency_proof(&tree, size, size2)? {
            input.extend_from_slice(&h);
        }
        seeds.write("merkle_proof", &format!("gen-consistency-{size}-{size2}"), &input)?;
    }
    eprintln!("fuzz_seeds: wrote {} generated inputs under {}", seeds.written, seeds.out.display());
    Ok(())
}

/// Bodies in the `event_apply` target's layout: `u16 LE length ‖ body` each.
fn frames(bodies: &[Vec<u8>]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for body in bodies {
        out.extend_from_slice(&u16::try_from(body.len())?.to_le_bytes());
        out.extend_from_slice(body);
    }
    Ok(out)
}

/// Where seeds go: `<out>/<target>/<name>`.
struct Seeds {
    out: PathBuf,
    written: usize,
}

impl Seeds {
    fn write(&mut self, target: &str, name: &str, bytes: &[u8]) -> Result<()> {
        let dir = self.out.join(target);
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        std::fs::write(dir.join(name), bytes).with_context(|| format!("write {target}/{name}"))?;
        self.written += 1;
        Ok(())
    }
}
