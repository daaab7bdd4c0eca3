//! The acceptance check of `docs/FORMAT.md`: an independent verifier written from the document alone
//! (`tests/independent/verify.py`, Python standard library only) must read exports made by this engine.
//!
//! A ledger with every event variant is built in a temporary directory and exported as a bundle. The
//! Python verifier must print the engine's own Merkle root, decode every body to the same record the engine
//! decodes, and — on a series of tampered copies — report exactly the `(seq, kind)` breaks that
//! `hwledger_engine::export::verify_export` reports. The worked example of FORMAT.md §9 is checked against
//! the engine's encoder, so the document cannot drift from the code unnoticed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command as Process;

use hwledger_engine::chain::{GENESIS, Hash, chain_hash};
use hwledger_engine::codec::encode_record;
use hwledger_engine::event::{Actor, CertRole, DeviceKind, Event, EventRecord, GpuInfo, GpuReading, PriceQuote};
use hwledger_engine::export::{export, verify_export};
use hwledger_engine::ledger::Outcome;
use hwledger_engine::merkle::leaf_hash;
use hwledger_engine::note::Signer;
use hwledger_engine::verify::{Report, VerifyOptions};
use hwledger_engine::{Command, Context, Ledger, LedgerOptions, Submission};

const VERIFY_PY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/independent/verify.py");
const FORMAT_MD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/FORMAT.md");
const ORIGIN: &str = "test.example/log";
const T0: i64 = 1_700_000_000_000;
/// Telemetry events after the first checkpoint: enough for two full level-0 tiles and several blocks.
const HEARTBEATS: u64 = 600;

fn signer(seed: u8) -> Signer {
    Signer::from_seed(ORIGIN, &[seed; 32]).expect("signer")
}

fn reading(index: u32, util: Option<f32>, temp: Option<f32>, power: Option<f32>) -> GpuReading {
    GpuReading {
        index,
        vram_used_mib: Some(1000),
        vram_total_mib: Some(24_576),
        utilization_pct: util,
        temperature_c: temp,
        power_w: power,
    }
}

/// Submits one command and asserts it was accepted.
fn accept(ledger: &Ledger, id: &str, command: Command, actor: Actor, now: i64) {
    let sub = Submission { command_id: id.into(), expected_version: None, command };
    let outcome = ledger.submit(sub, Context::new(actor, now)).expect("submit");
    assert!(matches!(outcome, Outcome::Accepted(_)), "{id}: {outcome:?}");
}

/// A ledger holding every event variant, then [`HEARTBEATS`] telemetry events. Returns the ledger and the
/// checkpoint signed before the heartbeats (an "older" checkpoint).
fn build(dir: &Path) -> (Ledger, (u64, String)) {
    let options = LedgerOptions {
        signer: Some(signer(9)),
        origin: ORIGIN.into(),
        checkpoint_interval_ms: 0,
        ..LedgerOptions::default()
    };
    let ledger = Ledger::open(dir, options).expect("open ledger");
    let op = || Actor::Operator("alice".into());
    let labels: BTreeMap<String, String> =
        [("rack".to_owned(), "a-1".to_owned()), ("zone".to_owned(), "eu ☁".to_owned())].into();
    let steps: Vec<(&str, Command, Actor)> = vec![
        (
            "enroll-dev-1",
            Command::EnrollDevice {
                device_id: "dev-1".into(),
                kind: DeviceKind::Local,
                hostname: Some("box-1".into()),
                labels,
            },
            op(),
        ),
        (
            "enroll-ssh-1",
            Command::EnrollDevice {
                device_id: "ssh-1".into(),
                kind: DeviceKind::Ssh { target: "root@10.0.0.2:2222".into() },
                hostname: None,
                labels: BTreeMap::new(),
            },
            op(),
        ),
        (
            "enroll-rent-1",
            Command::EnrollDevice {
                device_id: "rent-1".into(),
                kind: DeviceKind::Rental { provider: "vast".into(), instance_id: "i-123".into() },
                hostname: None,
                labels: BTreeMap::new(),
            },
            op(),
        ),
        (
            "register-dev-1",
            Command::RegisterDevice {
                device_id: "dev-1".into(),
                hostname: Some("box-1".into()),
                gpus: vec![
                    GpuInfo {
                        index: 0,
                        name: "NVIDIA GeForce RTX 4090".into(),
                        uuid: Some("GPU-5f2c".into()),
                        vram_total_mib: 24_564,
                    },
                    GpuInfo { index: 1, name: "Apple M1".into(), uuid: None, vram_total_mib: 0 },
                ],
            },
            Actor::Agent("dev-1".into()),
        ),
        (
            "hb-first",
            Command::RecordTelemetry {
                device_id: "dev-1".into(),
                sampled_at: -1,
                gpus: vec![reading(0, Some(33.3), Some(-5.25), None), reading(1, None, None, Some(9_999.9))],
            },
            Actor::Agent("dev-1".into()),
        ),
        ("rate-dev-1", Command::SetDeviceRate { device_id: "dev-1".into(), micro_usd_per_hour: 1_250_000 }, op()),
        (
            "job-1",
            Command::DispatchJob {
                job_id: "job-1".into(),
                device_id: "dev-1".into(),
                model: "llama-3-70b".into(),
                vram_mib: 8_000,
                price: Some(PriceQuote {
                    source: "rate".into(),
                    micro_usd_per_hour: 1_250_000,
                    offer_id: None,
                    quoted_at: T0,
                }),
            },
            op(),
        ),
        ("job-1-start", Command::StartJob { job_id: "job-1".into() }, Actor::Agent("dev-1".into())),
        ("job-1-done", Command::CompleteJob { job_id: "job-1".into(), exit_status: 0 }, Actor::Agent("dev-1".into())),
        (
            "job-2",
            Command::DispatchJob {
                job_id: "job-2".into(),
                device_id: "dev-1".into(),
                model: "sd-xl".into(),
                vram_mib: 300,
                price: None,
            },
            op(),
        ),
        (
            "job-2-fail",
            Command::FailJob { job_id: "job-2".into(), exit_status: Some(-9), reason: "killed".into() },
            op(),
        ),
        (
            "quote-1",
            Command::QuoteRentalPrice {
                provider: "vast".into(),
                gpu_name: "RTX 4090".into(),
                gpu_count: 2,
                micro_usd_per_hour: 700_000,
                offer_id: Some("o-77".into()),
                quoted_at: T0 - 5,
            },
            op(),
        ),
        (
            "cert-bob",
            Command::IssueCertificate {
                role: CertRole::Operator("bob".into()),
                fingerprint: [0xab; 32],
                serial: "01".into(),
                not_after: T0 + 86_400_000,
            },
            op(),
        ),
        ("revoke-bob", Command::RevokeCertificate { fingerprint: [0xab; 32], reason: "lost laptop".into() }, op()),
        (
            "token-9",
            Command::CreateBootstrapToken {
                token_hash: [0x11; 32],
                device_id: "dev-9".into(),
                expires_at: T0 + 3_600_000,
            },
            op(),
        ),
        (
            "redeem-9",
            Command::RedeemBootstrapToken {
                token_hash: [0x11; 32],
                fingerprint: [0x22; 32],
                serial: "02".into(),
                not_after: T0 + 86_400_000,
                hostname: Some("nine".into()),
            },
            Actor::System,
        ),
        ("pin-ssh-1", Command::PinHostKey { device_id: "ssh-1".into(), key_fingerprint: "SHA256:q1w2e3".into() }, op()),
        (
            "probe-ok",
            Command::RecordProbe {
                device_id: "ssh-1".into(),
                ok: true,
                detail: "2 GPUs".into(),
                gpus: vec![reading(0, Some(100.0), Some(81.0), Some(450.5))],
            },
            op(),
        ),
        (
            "probe-fail",
            Command::RecordProbe { device_id: "ssh-1".into(), ok: false, detail: "timeout".into(), gpus: vec![] },
            op(),
        ),
        (
            "observe-1",
            Command::ObserveRentalInstance {
                provider: "vast".into(),
                instance_id: "i-123".into(),
                gpu_name: "RTX 4090".into(),
                gpu_count: 1,
                status: "running".into(),
                micro_usd_per_hour: Some(700_000),
            },
            op(),
        ),
        (
            "observe-2",
            Command::ObserveRentalInstance {
                provider: "runpod".into(),
                instance_id: "p-9".into(),
                gpu_name: "A100".into(),
                gpu_count: 8,
                status: "exited".into(),
                micro_usd_per_hour: None,
            },
            op(),
        ),
        (
            "decommission-rent-1",
            Command::DecommissionDevice { device_id: "rent-1".into(), reason: "returned".into() },
            op(),
        ),
    ];
    for (i, (id, command, actor)) in steps.into_iter().enumerate() {
        accept(&ledger, id, command, actor, T0 + i as i64);
    }
    let older = ledger.latest_checkpoint().expect("a checkpoint is signed with every commit");
    let items: Vec<_> = (0..HEARTBEATS)
        .map(|i| {
            let util = (i % 101) as f32;
            let command = Command::RecordTelemetry {
                device_id: "dev-1".into(),
                sampled_at: T0 + i as i64,
                gpus: vec![reading(0, Some(util), Some(60.5), Some(300.0))],
            };
            (
                Submission { command_id: format!("hb-{i}"), expected_version: None, command },
                Context::new(Actor::Agent("dev-1".into()), T0 + 1_000 + i as i64),
            )
        })
        .collect();
    for outcome in ledger.submit_many(items).wait() {
        assert!(matches!(outcome, Ok(Outcome::Accepted(_))), "{outcome:?}");
    }
    (ledger, older)
}

/// An export file taken apart: its events and its two trailing sections.
#[derive(Clone, Debug)]
struct Parsed {
    events: Vec<(Vec<u8>, Hash)>,
    checkpoint: Vec<u8>,
    vkey: Vec<u8>,
}

fn u32_at(bytes: &[u8], at: usize) -> (usize, usize) {
    let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    (usize::try_from(len).expect("fits"), at + 4)
}

/// Parses an export the engine wrote (test-side, with panics: the input is our own file).
fn parse(bytes: &[u8]) -> Parsed {
    assert_eq!(&bytes[..5], b"HWLX\x01");
    let count = u64::from_le_bytes(bytes[5..13].try_into().expect("8 bytes"));
    let mut at = 13;
    let mut events = Vec::new();
    for _ in 0..count {
        let (len, body_at) = u32_at(bytes, at);
        let hash: Hash = bytes[body_at + len..body_at + len + 32].try_into().expect("32 bytes");
        events.push((bytes[body_at..body_at + len].to_vec(), hash));
        at = body_at + len + 32;
    }
    let (cp_len, cp_at) = u32_at(bytes, at);
    let (vk_len, vk_at) = u32_at(bytes, cp_at + cp_len);
    assert_eq!(vk_at + vk_len, bytes.len());
    Parsed { events, checkpoint: bytes[cp_at..cp_at + cp_len].to_vec(), vkey: bytes[vk_at..vk_at + vk_len].to_vec() }
}

/// Writes an export per FORMAT.md §6.
fn unparse(p: &Parsed) -> Vec<u8> {
    let mut out = b"HWLX\x01".to_vec();
    out.extend_from_slice(&(p.events.len() as u64).to_le_bytes());
    for (body, hash) in &p.events {
        out.extend_from_slice(&u32::try_from(body.len()).expect("small").to_le_bytes());
        out.extend_from_slice(body);
        out.extend_from_slice(hash);
    }
    for section in [&p.checkpoint, &p.vkey] {
        out.extend_from_slice(&u32::try_from(section.len()).expect("small").to_le_bytes());
        out.extend_from_slice(section);
    }
    out
}

/// Recomputes every chain hash: a rewrite of history that keeps the chain itself consistent.
fn rechain(p: &mut Parsed) {
    let mut prev = GENESIS;
    for (body, hash) in &mut p.events {
        *hash = chain_hash(&prev, body);
        prev = *hash;
    }
}

struct PyRun {
    code: i32,
    stdout: String,
    stderr: String,
}

fn python(file: &Path, args: &[&str]) -> PyRun {
    let out = Process::new("python3")
        .arg(VERIFY_PY)
        .arg(file)
        .args(args)
        .output()
        .expect("run python3 (it must be installed)");
    PyRun {
        code: out.status.code().expect("python3 exited normally"),
        stdout: String::from_utf8(out.stdout).expect("UTF-8 stdout"),
        stderr: String::from_utf8(out.stderr).expect("UTF-8 stderr"),
    }
}

/// The `(seq, kind)` pairs of the verifier's `BROKEN` lines.
fn py_breaks(run: &PyRun) -> Vec<(u64, String)> {
    run.stdout
        .lines()
        .filter_map(|l| l.strip_prefix("BROKEN seq="))
        .map(|rest| {
            let (seq, kind) = rest.split_once(" kind=").expect("BROKEN line format");
            (seq.parse().expect("seq"), kind.split(' ').next().expect("kind").to_owned())
        })
        .collect()
}

fn engine_breaks(report: &Report) -> Vec<(u64, String)> {
    report.breaks.iter().map(|b| (b.seq, b.kind.as_str().to_owned())).collect()
}

/// The fixture shared by the tests: a bundle and what the engine says about it.
struct Bundle {
    _dir: tempfile::TempDir,
    path: PathBuf,
    vkey_file: PathBuf,
    older_note: PathBuf,
    older_size: u64,
    n: u64,
    root_hex: String,
    records: Vec<EventRecord>,
    bytes: Vec<u8>,
}

fn bundle() -> Bundle {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ledger, (older_size, older)) = build(&dir.path().join("ledger"));
    let (n, note) = ledger.sign_checkpoint_now(T0 + 10_000).expect("sign").expect("a checkpoint");
    assert_eq!(n, ledger.head().seq);
    let vkey = signer(9).verifier().to_vkey();
    let path = dir.path().join("bundle.hwlx");
    let summary = export(ledger.store(), &path, Some(&note), Some(&vkey)).expect("export");
    assert_eq!(summary.events, n);
    let vkey_file = dir.path().join("log.vkey");
    std::fs::write(&vkey_file, format!("{vkey}\n")).expect("write vkey");
    let older_note = dir.path().join("older.note");
    std::fs::write(&older_note, &older).expect("write older checkpoint");
    let root_hex = hex::encode(ledger.root(n).expect("root"));
    let records = ledger.read(1, n).expect("read").into_iter().map(|e| e.record).collect();
    let bytes = std::fs::read(&path).expect("read bundle");
    ledger.close().expect("close");
    Bundle { _dir: dir, path, vkey_file, older_note, older_size, n, root_hex, records, bytes }
}

#[test]
fn format_md_test_vector_matches_the_engine() {
    let record = EventRecord {
        seq: 300,
        recorded_at: 1_700_000_000_000,
        command_id: "hb-1".into(),
        actor: Actor::Agent("dev-1".into()),
        stream_version: 2,
        event: Event::TelemetryRecorded {
            device_id: "dev-1".into(),
            sampled_at: 1_699_999_999_000,
            gpus: vec![GpuReading {
                index: 0,
                vram_used_mib: Some(1000),
                vram_total_mib: Some(24_576),
                utilization_pct: Some(50.0),
                temperature_c: None,
                power_w: Some(300.5),
            }],
        },
    };
    let body = encode_record(&record);
    let doc = std::fs::read_to_string(FORMAT_MD).expect("read docs/FORMAT.md");
    let lines = [
        format!("body       {}", hex::encode(&body)),
        format!("leaf hash  {}", hex::encode(leaf_hash(&body))),
        format!("chain hash {}", hex::encode(chain_hash(&GENESIS, &body))),
    ];
    for line in &lines {
        assert!(doc.contains(line.as_str()), "docs/FORMAT.md §9 must contain {line:?}");
    }
    assert!(doc.contains(&hex::encode(hwledger_engine::chain::CHAIN_TAG)), "FORMAT.md §2 must give the tag bytes");
}

#[test]
fn intact_bundle_verifies_with_the_engines_root_and_decodes_to_the_engines_records() {
    let b = bundle();
    let dump = b.path.with_extension("jsonl");
    let vkey = b.vkey_file.to_str().expect("UTF-8 path");
    let run = python(&b.path, &["--vkey", vkey, "--dump", dump.to_str().expect("UTF-8 path")]);
    assert_eq!(run.code, 0, "stdout: {}\nstderr: {}", run.stdout, run.stderr);
    assert_eq!(run.stdout, format!("OK {} {}\n", b.n, b.root_hex));

    // Every body decodes, per FORMAT.md §1, to exactly the record the engine decodes.
    let dumped = std::fs::read_to_string(&dump).expect("read dump");
    let lines: Vec<&str> = dumped.lines().collect();
    assert_eq!(lines.len() as u64, b.n);
    for (line, record) in lines.iter().zip(&b.records) {
        let from_python: serde_json::Value = serde_json::from_str(line).expect("dump line is JSON");
        assert_eq!(from_python, serde_json::to_value(record).expect("record to JSON"), "seq {}", record.seq);
    }
    // The log exercises every event type, so the decoder tables of the document are all checked.
    let types: BTreeSet<&str> = b.records.iter().map(|r| r.event.type_name()).collect();
    assert_eq!(types, Event::TYPE_NAMES.iter().copied().collect::<BTreeSet<_>>());

    // The engine agrees, and so does the verifier with the older checkpoint as `--since`.
    let opts = VerifyOptions { verifier: Some(signer(9).verifier()), ..VerifyOptions::default() };
    assert!(verify_export(&b.path, &opts, |_| {}).expect("verify").intact());
    let since = b.older_note.to_str().expect("UTF-8 path");
    let run = python(&b.path, &["--vkey", vkey, "--since", since]);
    assert_eq!((run.code, run.stdout.clone()), (0, format!("OK {} {}\n", b.n, b.root_hex)), "{}", run.stderr);
}

#[test]
fn a_bundle_with_an_older_checkpoint_is_checked_at_that_size() {
    let b = bundle();
    let mut p = parse(&b.bytes);
    p.checkpoint = std::fs::read(&b.older_note).expect("older note");
    let path = b.path.with_extension("older.hwlx");
    std::fs::write(&path, unparse(&p)).expect("write");
    let vkey = b.vkey_file.to_str().expect("UTF-8 path");
    let run = python(&path, &["--vkey", vkey]);
    assert_eq!((run.code, run.stdout.clone()), (0, format!("OK {} {}\n", b.n, b.root_hex)), "{}", run.stderr);
    assert!(b.older_size < b.n);

    // An event before the older checkpoint's size rewritten, chain recomputed: only the signature catches it.
    let mut rewritten = p.clone();
    let last = rewritten.events[3].0.len() - 1;
    rewritten.events[3].0[last] ^= 0x01;
    rechain(&mut rewritten);
    std::fs::write(&path, unparse(&rewritten)).expect("write");
    let run = python(&path, &["--vkey", vkey]);
    let engine = verify_export(
        &path,
        &VerifyOptions { verifier: Some(signer(9).verifier()), ..VerifyOptions::default() },
        |_| {},
    )
    .expect("verify");
    assert_eq!(py_breaks(&run), vec![(b.older_size, "checkpoint_mismatch".to_owned())], "{}", run.stderr);
    assert_eq!(py_breaks(&run), engine_breaks(&engine));
}

/// One tampered copy: how to make it, extra verifier arguments, and the breaks both verifiers must report
/// (`None`: just "the same as the engine, and at least one").
struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    head: Option<(u64, Hash)>,
    since: bool,
    vkey: VkeyChoice,
    expect: Option<Vec<(u64, &'static str)>>,
}

#[derive(Clone, Copy)]
enum VkeyChoice {
    Log,
    OtherKeySameName,
    /// No `--vkey`: the checkpoint's signature goes unchecked, its size and root do not (FORMAT.md §7.1).
    NoKey,
}

#[test]
fn tampered_bundles_give_the_same_breaks_as_the_engine() {
    let b = bundle();
    let n = b.n;
    let base = parse(&b.bytes);
    let with = |f: &dyn Fn(&mut Parsed)| {
        let mut p = base.clone();
        f(&mut p);
        unparse(&p)
    };
    let hash_at = |seq: u64| base.events[usize::try_from(seq - 1).expect("small")].1;
    let case = |name, bytes, expect: Option<Vec<(u64, &'static str)>>| Case {
        name,
        bytes,
        head: None,
        since: false,
        vkey: VkeyChoice::Log,
        expect,
    };

    let mut cases = vec![
        // The brief's acceptance case: one byte of one body flipped.
        case(
            "flip the last byte of body 5",
            with(&|p| {
                let last = p.events[4].0.len() - 1;
                p.events[4].0[last] ^= 0x40;
            }),
            Some(vec![(5, "payload_altered"), (n, "checkpoint_mismatch")]),
        ),
        case(
            "flip a byte of stored hash 7",
            with(&|p| p.events[6].1[0] ^= 1),
            Some(vec![(7, "payload_altered"), (8, "payload_altered")]),
        ),
        case(
            "unknown body version at 9",
            with(&|p| p.events[8].0[0] = 2),
            Some(vec![(9, "payload_altered"), (9, "undecodable"), (n, "checkpoint_mismatch")]),
        ),
        case(
            "unknown event variant at 10",
            with(&|p| {
                // Every body of this log has a 1-byte seq, stream version etc.; find the variant byte by re-encoding.
                let record = hwledger_engine::codec::decode_record(&p.events[9].0).expect("decodes");
                let body = encode_record(&record);
                let variant_at = body.len() - encode_event_len(&record);
                p.events[9].0[variant_at] = 17;
            }),
            Some(vec![(10, "payload_altered"), (10, "undecodable"), (n, "checkpoint_mismatch")]),
        ),
        case("swap events 10 and 11", with(&|p| p.events.swap(9, 10)), None),
        case(
            "drop event 12",
            with(&|p| {
                p.events.remove(11);
            }),
            None,
        ),
        case(
            "repeat event 3",
            with(&|p| {
                let e = p.events[2].clone();
                p.events.insert(3, e);
            }),
            None,
        ),
        case(
            "drop the last event",
            with(&|p| {
                p.events.pop();
            }),
            Some(vec![(n, "truncated")]),
        ),
        case(
            "rewrite event 40 and recompute the chain",
            with(&|p| {
                p.events[39].0[5] ^= 0x01;
                rechain(p);
            }),
            None,
        ),
        case(
            "alter the signed root",
            with(&|p| {
                let text = String::from_utf8(p.checkpoint.clone()).expect("UTF-8");
                let root_line = text.lines().nth(2).expect("root line").to_owned();
                let flipped = if root_line.starts_with('A') {
                    root_line.replacen('A', "B", 1)
                } else {
                    format!("A{}", &root_line[1..])
                };
                p.checkpoint = text.replacen(&root_line, &flipped, 1).into_bytes();
            }),
            Some(vec![(n, "checkpoint_mismatch")]),
        ),
        case(
            "bad magic",
            {
                let mut v = b.bytes.clone();
                v[0] = b'X';
                v
            },
            Some(vec![(1, "framing")]),
        ),
        case(
            "file cut inside event 20",
            {
                let mut v = b.bytes.clone();
                let p = parse(&b.bytes);
                let upto: usize = 13 + p.events[..19].iter().map(|(body, _)| 4 + body.len() + 32).sum::<usize>() + 10;
                v.truncate(upto);
                v
            },
            Some(vec![(20, "framing")]),
        ),
        case(
            "trailing byte",
            {
                let mut v = b.bytes.clone();
                v.push(0);
                v
            },
            Some(vec![(n + 1, "framing")]),
        ),
        case(
            "count one too high",
            {
                let mut v = b.bytes.clone();
                v[5..13].copy_from_slice(&(n + 1).to_le_bytes());
                v
            },
            None,
        ),
    ];
    cases.push(Case {
        head: Some((7, [0x5a; 32])),
        ..case("recorded head with another hash", b.bytes.clone(), Some(vec![(7, "head_mismatch")]))
    });
    cases.push(Case {
        head: Some((n + 5, hash_at(n))),
        ..case("recorded head beyond the end", b.bytes.clone(), Some(vec![(n + 1, "truncated")]))
    });
    cases.push(Case { head: Some((n, hash_at(n))), ..case("recorded head present", b.bytes.clone(), Some(vec![])) });
    cases.push(Case {
        vkey: VkeyChoice::OtherKeySameName,
        ..case("another key of the same name", b.bytes.clone(), Some(vec![(n, "checkpoint_mismatch")]))
    });
    let alter_root = |p: &mut Parsed| {
        let text = String::from_utf8(p.checkpoint.clone()).expect("UTF-8");
        let root_line = text.lines().nth(2).expect("root line").to_owned();
        let flipped =
            if root_line.starts_with('A') { root_line.replacen('A', "B", 1) } else { format!("A{}", &root_line[1..]) };
        p.checkpoint = text.replacen(&root_line, &flipped, 1).into_bytes();
    };
    cases.push(Case { vkey: VkeyChoice::NoKey, ..case("intact, no key", b.bytes.clone(), Some(vec![])) });
    cases.push(Case {
        vkey: VkeyChoice::NoKey,
        ..case("alter the checkpoint's root, no key", with(&alter_root), Some(vec![(n, "checkpoint_mismatch")]))
    });
    cases.push(Case {
        vkey: VkeyChoice::NoKey,
        ..case(
            "flip the last byte of body 5, no key",
            with(&|p| {
                let last = p.events[4].0.len() - 1;
                p.events[4].0[last] ^= 0x40;
            }),
            Some(vec![(5, "payload_altered"), (n, "checkpoint_mismatch")]),
        )
    });
    cases.push(Case {
        since: true,
        ..case(
            "older checkpoint, history rewritten before it",
            with(&|p| {
                p.events[2].0[4] ^= 0x01;
                rechain(p);
            }),
            None,
        )
    });

    let dir = b.path.parent().expect("parent").to_path_buf();
    for (i, c) in cases.iter().enumerate() {
        let path = dir.join(format!("case-{i}.hwlx"));
        std::fs::write(&path, &c.bytes).expect("write case");
        let (verifier, vkey_text) = match c.vkey {
            VkeyChoice::Log => (Some(signer(9).verifier()), signer(9).verifier().to_vkey()),
            VkeyChoice::OtherKeySameName => (Some(signer(10).verifier()), signer(10).verifier().to_vkey()),
            VkeyChoice::NoKey => (None, String::new()),
        };
        let since_text = std::fs::read_to_string(&b.older_note).expect("older note");
        let opts = VerifyOptions { head: c.head, verifier, since: c.since.then(|| since_text.clone()) };
        let engine = engine_breaks(&verify_export(&path, &opts, |_| {}).expect("engine verify"));

        let head_arg = c.head.map(|(seq, h)| format!("{seq}:{}", hex::encode(h)));
        let mut args: Vec<&str> = if vkey_text.is_empty() { vec![] } else { vec!["--vkey", &vkey_text] };
        if let Some(h) = &head_arg {
            args.extend(["--head", h]);
        }
        if c.since {
            args.extend(["--since", b.older_note.to_str().expect("UTF-8 path")]);
        }
        let run = python(&path, &args);
        let py = py_breaks(&run);
        assert_eq!(py, engine, "{}: python and engine disagree\npython stderr:\n{}", c.name, run.stderr);
        match &c.expect {
            Some(expect) => {
                let expect: Vec<(u64, String)> = expect.iter().map(|(s, k)| (*s, (*k).to_owned())).collect();
                assert_eq!(py, expect, "{}: {}", c.name, run.stderr);
            }
            None => assert!(!py.is_empty(), "{}: a break must be found", c.name),
        }
        let want_code = if py.is_empty() { 0 } else { 1 };
        assert_eq!(run.code, want_code, "{}: exit code; stdout {}", c.name, run.stdout);
        if py.is_empty() {
            assert_eq!(run.stdout, format!("OK {n} {}\n", b.root_hex), "{}", c.name);
        }
    }
}

/// Bytes that the `event` field takes at the end of a record's body (its variant index included).
fn encode_event_len(record: &EventRecord) -> usize {
    hwledger_engine::codec::encode_value(&record.event).len()
}

#[test]
fn a_forged_huge_seq_is_reported_without_unbounded_work() {
    let b = bundle();
    let mut p = parse(&b.bytes);
    let mut record = hwledger_engine::codec::decode_record(&p.events[1].0).expect("decodes");
    record.seq = 1 << 40;
    p.events[1].0 = encode_record(&record);
    rechain(&mut p);
    let path = b.path.with_extension("forged.hwlx");
    std::fs::write(&path, unparse(&p)).expect("write");
    let run = python(&path, &[]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    // Seq 2 is missing; every later event is "late" (reordered); the rest of the forged gap is one line.
    assert!(run.stdout.contains("BROKEN seq=2 kind=event_missing\n"), "{}", run.stdout);
    assert!(run.stdout.contains("BROKEN seq=3 kind=events_reordered\n"), "{}", run.stdout);
    let tail = format!("BROKEN seq={} kind=event_missing through={}\n", b.n + 1, (1u64 << 40) - 1);
    assert!(run.stdout.ends_with(&tail), "{}", run.stdout);
    assert!(run.stdout.lines().count() < 2_000, "output stays bounded");
}

#[test]
fn usage_and_io_errors_exit_2() {
    let b = bundle();
    let missing = b.path.with_extension("absent");
    assert_eq!(python(&missing, &[]).code, 2);
    assert_eq!(python(&b.path, &["--vkey", "not-a-vkey"]).code, 2);
    let skey = signer(9).to_key_string();
    assert_eq!(python(&b.path, &["--vkey", &skey]).code, 2, "a signer key is refused as a vkey");
    assert_eq!(python(&b.path, &["--head", "12"]).code, 2);
    assert_eq!(
        python(&b.path, &["--since", b.older_note.to_str().expect("UTF-8 path")]).code,
        2,
        "--since needs --vkey"
    );
    assert_eq!(python(&b.path, &["--no-such-flag"]).code, 2);
}
