//! End-to-end tests of the API server: real TLS on 127.0.0.1:0, a real ledger in a temporary directory, a
//! real fleet PKI, and real clients (reqwest, curl, promtool). Covers the authorization matrix (handshake
//! failures, pins, revocation, decommission on an open HTTP/2 connection, roles), idempotency, body limits
//! and content types, the SSE resume, metrics, proofs, the dashboard, enrollment and the OpenAPI contract.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use futures_util::StreamExt;
use hwledger_engine::event::Actor;
use hwledger_engine::note::generate_signer;
use hwledger_engine::{Command, Context, Ledger, LedgerOptions, Outcome, Submission};
use hwledger_wire::client_tls::build_client;
use hwledger_wire::pki::{IssuedCert, Pki, PkiOptions, Role, TokenHash, generate_key_and_csr, write_bundle};
use hwledger_wire::server::routes::{API_ROUTES, DASHBOARD_ROUTES, ENROLL_ROUTES};
use hwledger_wire::server::{
    Clock, PinOutcome, RunningAddrs, Server, ServerConfig, ServerError, ensure_bootstrap_operator, pin_identity_async,
    unix_ms,
};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use tempfile::TempDir;
use time::{Duration, OffsetDateTime};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every wait in these tests is bounded by this.
const WAIT: StdDuration = StdDuration::from_secs(15);

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// A running server over a fresh ledger and PKI, with a bootstrap operator and an auditor.
struct Fixture {
    dir: TempDir,
    ledger: Arc<Ledger>,
    /// The head when the server started (the bootstrap operator and auditor pins are before it).
    start_seq: u64,
    pki: Arc<Pki>,
    addrs: RunningAddrs,
    ca_pem: String,
    operator: Client,
    auditor: Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<RunningAddrs, ServerError>>>,
}

impl Fixture {
    async fn start() -> Result<Fixture, BoxError> {
        Fixture::start_with(|_| {}).await
    }

    async fn start_with(tweak: impl FnOnce(&mut ServerConfig)) -> Result<Fixture, BoxError> {
        let dir = tempfile::tempdir()?;
        let pki = Arc::new(Pki::init(&dir.path().join("pki"), PkiOptions::default(), now())?);
        let (signer, _, _) = generate_signer("hwledger.test/fleet")?;
        let options = LedgerOptions {
            signer: Some(signer),
            origin: "hwledger.test/fleet".into(),
            checkpoint_interval_ms: 0,
            ..LedgerOptions::default()
        };
        let ledger = Arc::new(Ledger::open(&dir.path().join("ledger"), options)?);
        // The bootstrap operator, exactly as the CLI creates it at first start (blocking API).
        let bundle_dir = dir.path().join("bundles");
        let (l, p, b) = (ledger.clone(), pki.clone(), bundle_dir.clone());
        let op = tokio::task::spawn_blocking(move || {
            ensure_bootstrap_operator(&l, &p, &b, "root", Duration::days(30), now())
        })
        .await??;
        assert!(op.created);
        let ca_pem = pki.ca_bundle_pem(now());
        let operator = client_from_files(&ca_pem, &op.paths.cert, op.paths.key.as_deref())?;
        let auditor_cert = pki.issue(&Role::auditor("audrey")?, Duration::days(30), now())?;
        assert!(matches!(pin_identity_async(&ledger, &auditor_cert, now()).await?, PinOutcome::Pinned(_)));
        let auditor = client_for(&ca_pem, Some(&auditor_cert))?;

        let mut config = ServerConfig::new("127.0.0.1:0".parse()?, "127.0.0.1:0".parse()?);
        config.enroll_listen = Some("127.0.0.1:0".parse()?);
        config.shutdown_grace = StdDuration::from_secs(2);
        tweak(&mut config);
        let start_seq = ledger.head().seq;
        let server = Server::bind(config, ledger.clone(), pki.clone(), None).await?;
        let addrs = server.local_addrs();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(async move {
            let _ = stopped.await;
        }));
        Ok(Fixture {
            dir,
            ledger,
            start_seq,
            pki,
            addrs,
            ca_pem,
            operator,
            auditor,
            stop: Some(stop),
            task: Some(task),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.addrs.api.port())
    }

    fn enroll_url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.addrs.enroll.map_or(0, |a| a.port()))
    }

    /// Enrolls `device` (as the system) and returns an agent client with a pinned certificate for it.
    async fn agent(&self, device: &str) -> Result<(Client, IssuedCert), BoxError> {
        self.enroll_device(device).await?;
        let cert = self.pki.issue(&Role::agent(device)?, Duration::days(30), now())?;
        pin_identity_async(&self.ledger, &cert, now()).await?;
        Ok((client_for(&self.ca_pem, Some(&cert))?, cert))
    }

    async fn enroll_device(&self, device: &str) -> TestResult {
        let sub = Submission {
            command_id: format!("enroll-{device}"),
            expected_version: None,
            command: Command::EnrollDevice {
                device_id: device.into(),
                kind: hwledger_engine::event::DeviceKind::Local,
                hostname: None,
                labels: Default::default(),
            },
        };
        let outcome = self.ledger.submit_async(sub, Context::new(Actor::System, unix_ms(now()))).await?;
        assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");
        Ok(())
    }

    async fn stop(mut self) -> TestResult {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task).await???;
        }
        Ok(())
    }
}

fn client_for(ca_pem: &str, cert: Option<&IssuedCert>) -> Result<Client, BoxError> {
    let identity = cert.map(|c| (c.cert_pem.as_bytes(), c.key_pem.as_deref().unwrap_or_default().as_bytes()));
    Ok(build_client(ca_pem.as_bytes(), identity, StdDuration::from_secs(10))?)
}

fn client_from_files(ca_pem: &str, cert: &Path, key: Option<&Path>) -> Result<Client, BoxError> {
    let cert = std::fs::read(cert)?;
    let key = std::fs::read(key.ok_or("bundle has no key")?)?;
    Ok(build_client(ca_pem.as_bytes(), Some((&cert, &key)), StdDuration::from_secs(10))?)
}

fn heartbeat(command_id: &str, device: &str, sampled_at: i64) -> Value {
    json!({
        "command_id": command_id,
        "command": {
            "type": "record_telemetry",
            "device_id": device,
            "sampled_at": sampled_at,
            "gpus": [{"index": 0, "vram_used_mib": 1000, "vram_total_mib": 24576,
                      "utilization_pct": 40.0, "temperature_c": 55.0, "power_w": 210.0}]
        }
    })
}

/// A response reduced to what the tests look at.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    content_type: String,
    text: String,
    json: Option<Value>,
}

impl Answer {
    fn code(&self) -> Option<&str> {
        self.json.as_ref().and_then(|j| j.get("code")).and_then(Value::as_str)
    }
}

async fn answer(resp: reqwest::Response) -> Result<Answer, BoxError> {
    let status = resp.status();
    let content_type = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let text = resp.text().await?;
    let json = serde_json::from_str(&text).ok();
    Ok(Answer { status, content_type, text, json })
}

async fn get(client: &Client, url: &str) -> Result<Answer, BoxError> {
    answer(client.get(url).send().await?).await
}

async fn post(client: &Client, url: &str, body: &Value) -> Result<Answer, BoxError> {
    answer(client.post(url).json(body).send().await?).await
}

fn expect(a: &Answer, status: u16, code: Option<&str>) -> TestResult {
    if a.status.as_u16() != status || (code.is_some() && a.code() != code) {
        return Err(format!("expected {status} {code:?}, got {} {}", a.status, a.text).into());
    }
    if !a.status.is_success() {
        // Every error is {code, message}.
        let j = a.json.as_ref().ok_or("error body is not JSON")?;
        if !(j.get("code").is_some_and(Value::is_string) && j.get("message").is_some_and(Value::is_string)) {
            return Err(format!("error body lacks code/message: {}", a.text).into());
        }
    }
    Ok(())
}

#[tokio::test]
async fn heartbeat_idempotency_and_conflicts() -> TestResult {
    // Room for 1001 submissions in one body, so the count limit is what refuses them.
    let f = Fixture::start_with(|c| c.body_limit = 256 * 1024).await?;
    let (agent, _) = f.agent("gpu-1").await?;
    let first = post(&agent, &f.url("/v1/commands"), &heartbeat("hb-1", "gpu-1", 1_000)).await?;
    expect(&first, 200, None)?;
    let body = first.json.as_ref().ok_or("no json")?;
    assert_eq!(body["status"], "accepted");
    assert_eq!(body["receipt"]["stream"], "device/gpu-1");
    // Retrying the same command: the same receipt, nothing appended.
    let head = f.ledger.head().seq;
    let retry = post(&agent, &f.url("/v1/commands"), &heartbeat("hb-1", "gpu-1", 1_000)).await?;
    expect(&retry, 200, None)?;
    let retry_body = retry.json.as_ref().ok_or("no json")?;
    assert_eq!(retry_body["status"], "duplicate");
    assert_eq!(retry_body["receipt"], body["receipt"]);
    assert_eq!(f.ledger.head().seq, head);
    // Same id, other body.
    let conflict = post(&agent, &f.url("/v1/commands"), &heartbeat("hb-1", "gpu-1", 2_000)).await?;
    expect(&conflict, 409, Some("duplicate_conflict"))?;
    // Optimistic concurrency.
    let mut stale = heartbeat("hb-2", "gpu-1", 3_000);
    stale["expected_version"] = json!(1);
    expect(&post(&agent, &f.url("/v1/commands"), &stale).await?, 409, Some("version_conflict"))?;
    // A rule rejection is 422 with the engine's code.
    let mut hot = heartbeat("hb-3", "gpu-1", 3_000);
    hot["command"]["gpus"][0]["temperature_c"] = json!(900.0);
    expect(&post(&agent, &f.url("/v1/commands"), &hot).await?, 422, Some("invalid_command"))?;
    // The batch path: one new, one duplicate, one rejected.
    let batch = json!([
        heartbeat("hb-4", "gpu-1", 4_000),
        heartbeat("hb-1", "gpu-1", 1_000),
        heartbeat("hb-5", "gpu-2", 5_000)
    ]);
    let b = post(&agent, &f.url("/v1/commands/batch"), &batch).await?;
    expect(&b, 200, None)?;
    let results = b.json.as_ref().and_then(|j| j["results"].as_array().cloned()).ok_or("no results")?;
    let statuses: Vec<&str> = results.iter().filter_map(|r| r["status"].as_str()).collect();
    assert_eq!(statuses, ["accepted", "duplicate", "rejected"]);
    assert_eq!(results[2]["code"], "forbidden");
    let too_many: Vec<Value> = (0..1001)
        .map(|i| json!({"command_id": format!("x{i}"), "command": {"type": "start_job", "job_id": "j"}}))
        .collect();
    let big = tokio::time::timeout(WAIT, post(&agent, &f.url("/v1/commands/batch"), &Value::Array(too_many))).await??;
    expect(&big, 413, Some("batch_too_large"))?;
    f.stop().await
}

#[tokio::test]
async fn refusal_matrix() -> TestResult {
    let f = Fixture::start().await?;
    let (agent, agent_cert) = f.agent("gpu-1").await?;
    expect(&get(&agent, &f.url("/v1/whoami")).await?, 200, None)?;

    // No client certificate: the handshake fails.
    let anonymous = client_for(&f.ca_pem, None)?;
    assert!(anonymous.get(f.url("/health")).send().await.is_err(), "request without a client cert succeeded");
    // A certificate from another CA: the handshake fails.
    let other_dir = tempfile::tempdir()?;
    let other = Pki::init(other_dir.path(), PkiOptions::default(), now())?;
    let foreign = other.issue(&Role::agent("gpu-1")?, Duration::days(1), now())?;
    assert!(client_for(&f.ca_pem, Some(&foreign))?.get(f.url("/health")).send().await.is_err());

    // CA-valid but never pinned: 403 not_pinned on every route, /health excepted.
    let unpinned = f.pki.issue(&Role::agent("gpu-1")?, Duration::days(1), now())?;
    let unpinned = client_for(&f.ca_pem, Some(&unpinned))?;
    expect(&get(&unpinned, &f.url("/health")).await?, 200, None)?;
    expect(&post(&unpinned, &f.url("/v1/commands"), &heartbeat("u-1", "gpu-1", 1)).await?, 403, Some("not_pinned"))?;
    expect(&get(&unpinned, &f.url("/v1/nonexistent")).await?, 403, Some("not_pinned"))?;

    // An agent speaking for another device; an agent on an operator route; an auditor writing.
    f.enroll_device("gpu-2").await?;
    expect(&post(&agent, &f.url("/v1/commands"), &heartbeat("a-1", "gpu-2", 1)).await?, 403, Some("forbidden"))?;
    expect(&get(&agent, &f.url("/v1/events")).await?, 403, Some("forbidden"))?;
    expect(&get(&agent, &f.url("/v1/devices/gpu-2")).await?, 403, Some("forbidden"))?;
    expect(&get(&agent, &f.url("/v1/devices/gpu-1")).await?, 200, None)?;
    let decommission = json!({"command_id": "d-1", "command": {"type": "decommission_device", "device_id": "gpu-2"}});
    expect(&post(&agent, &f.url("/v1/commands"), &decommission).await?, 403, Some("forbidden"))?;
    expect(&post(&f.auditor, &f.url("/v1/commands"), &heartbeat("au-1", "gpu-1", 1)).await?, 403, Some("forbidden"))?;
    expect(&get(&f.auditor, &f.url("/v1/events")).await?, 200, None)?;
    expect(&get(&f.operator, &f.url("/v1/nonexistent")).await?, 404, Some("not_found"))?;
    expect(&answer(f.operator.delete(f.url("/v1/events")).send().await?).await?, 405, Some("method_not_allowed"))?;

    // Pinned, then revoked: refused on the next request.
    let (agent3, cert3) = f.agent("gpu-3").await?;
    expect(&post(&agent3, &f.url("/v1/commands"), &heartbeat("g3-1", "gpu-3", 1)).await?, 200, None)?;
    let revoke = json!({"command_id": "rev-3", "command": {"type": "revoke_certificate",
        "fingerprint": cert3.fingerprint.to_string(), "reason": "laptop stolen"}});
    expect(&post(&f.operator, &f.url("/v1/commands"), &revoke).await?, 200, None)?;
    expect(&post(&agent3, &f.url("/v1/commands"), &heartbeat("g3-2", "gpu-3", 2)).await?, 403, Some("not_pinned"))?;

    // Decommissioned while its HTTP/2 connection stays open: the next request on it is refused.
    let who = get(&agent, &f.url("/v1/whoami")).await?;
    expect(&who, 200, None)?;
    let who = who.json.ok_or("no json")?;
    assert_eq!(who["alpn"], "h2");
    assert_eq!(who["fingerprint"], agent_cert.fingerprint.to_string());
    let again = get(&agent, &f.url("/v1/whoami")).await?.json.ok_or("no json")?;
    assert_eq!(again["remote_addr"], who["remote_addr"], "the agent's requests did not share one connection");
    let accepted_before = accepted_connections(&f).await?;
    let decommission =
        json!({"command_id": "d-gpu-1", "command": {"type": "decommission_device", "device_id": "gpu-1"}});
    expect(&post(&f.operator, &f.url("/v1/commands"), &decommission).await?, 200, None)?;
    expect(&post(&agent, &f.url("/v1/commands"), &heartbeat("a-2", "gpu-1", 2)).await?, 403, Some("not_pinned"))?;
    expect(&get(&agent, &f.url("/v1/whoami")).await?, 403, Some("not_pinned"))?;
    // No new connection was accepted: the refusal came on the agent's open connection.
    assert_eq!(accepted_connections(&f).await?, accepted_before);
    f.stop().await
}

/// `hwledger_connections_accepted_total{listener="api"}` as the operator sees it.
async fn accepted_connections(f: &Fixture) -> Result<u64, BoxError> {
    let m = get(&f.operator, &f.url("/metrics")).await?;
    expect(&m, 200, None)?;
    m.text
        .lines()
        .find_map(|l| l.strip_prefix("hwledger_connections_accepted_total{listener=\"api\"} "))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| "no accepted-connections metric".into())
}

#[tokio::test]
async fn bodies_limits_and_content_types() -> TestResult {
    let f = Fixture::start().await?;
    let (agent, _) = f.agent("gpu-1").await?;
    let url = f.url("/v1/commands");
    // Over the 64 KiB limit.
    let mut huge = heartbeat("big", "gpu-1", 1);
    huge["command"]["gpus"][0]["pad"] = json!("x".repeat(70 * 1024));
    expect(&post(&agent, &url, &huge).await?, 413, Some("body_too_large"))?;
    // Over the limit without a Content-Length (chunked).
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..80).map(|_| Ok(vec![b' '; 1024])).collect();
    let streamed = agent
        .post(&url)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(chunks)))
        .send()
        .await?;
    expect(&answer(streamed).await?, 413, Some("body_too_large"))?;
    // Unknown fields, at the top and inside the command.
    let mut extra = heartbeat("uf-1", "gpu-1", 1);
    extra["priority"] = json!(9);
    expect(&post(&agent, &url, &extra).await?, 400, Some("unknown_field"))?;
    let mut inner = heartbeat("uf-2", "gpu-1", 1);
    inner["command"]["device"] = json!("gpu-1");
    expect(&post(&agent, &url, &inner).await?, 400, Some("unknown_field"))?;
    // Malformed JSON, truncated JSON, wrong types.
    for body in ["{", "{\"command_id\": 1, \"command\": {}}", "[1,2", ""] {
        let r = agent.post(&url).header("content-type", "application/json").body(body.to_owned()).send().await?;
        expect(&answer(r).await?, 400, Some("malformed_json"))?;
    }
    // Wrong or missing content type.
    let body = heartbeat("ct-1", "gpu-1", 1).to_string();
    let r = agent.post(&url).header("content-type", "text/plain").body(body.clone()).send().await?;
    expect(&answer(r).await?, 415, Some("unsupported_media_type"))?;
    let r = agent.post(&url).body(body.clone()).send().await?;
    expect(&answer(r).await?, 415, Some("unsupported_media_type"))?;
    let r = agent.post(&url).header("content-type", "application/json; charset=utf-8").body(body).send().await?;
    expect(&answer(r).await?, 200, None)?;
    // Bad queries.
    expect(&get(&f.operator, &f.url("/v1/events?from=abc")).await?, 400, Some("invalid_query"))?;
    expect(&get(&f.operator, &f.url("/v1/events?bogus=1")).await?, 400, Some("invalid_query"))?;
    expect(&get(&f.operator, &f.url("/v1/events?limit=5000")).await?, 400, Some("invalid_query"))?;
    f.stop().await
}

/// Reads SSE events from `resp` until one with id `until` arrives; returns (ids, data of each).
async fn read_sse(resp: reqwest::Response, until: u64) -> Result<Vec<(u64, Value)>, BoxError> {
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    let mut out = Vec::new();
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.checked_duration_since(Instant::now()).ok_or("SSE: timed out")?;
        let chunk = tokio::time::timeout(left, stream.next()).await?.ok_or("SSE: stream ended")??;
        buf.push_str(std::str::from_utf8(&chunk)?);
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let mut id = None;
            let mut data = None;
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = Some(v.trim().parse::<u64>()?);
                } else if let Some(v) = line.strip_prefix("data:") {
                    data = Some(serde_json::from_str::<Value>(v.trim())?);
                }
            }
            if let (Some(id), Some(data)) = (id, data) {
                out.push((id, data));
                if id >= until {
                    return Ok(out);
                }
            }
        }
    }
}

#[tokio::test]
async fn sse_resumes_without_gaps_or_duplicates() -> TestResult {
    let f = Fixture::start().await?;
    let (agent, _) = f.agent("gpu-1").await?;
    for i in 0..20 {
        expect(&post(&agent, &f.url("/v1/commands"), &heartbeat(&format!("s-{i}"), "gpu-1", i)).await?, 200, None)?;
    }
    let resume_after = f.ledger.head().seq - 10;
    let resp =
        f.auditor.get(f.url("/v1/events/stream")).header("Last-Event-ID", resume_after.to_string()).send().await?;
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|c| c.starts_with("text/event-stream"))
    );
    // More events arrive while the client is reading the backlog and then the live tail.
    let writer = {
        let agent = agent.clone();
        let url = f.url("/v1/commands");
        tokio::spawn(async move {
            for i in 20..60 {
                let r = post(&agent, &url, &heartbeat(&format!("s-{i}"), "gpu-1", i)).await?;
                expect(&r, 200, None)?;
            }
            Ok::<(), BoxError>(())
        })
    };
    tokio::time::timeout(WAIT, writer).await???;
    let target = f.ledger.head().seq;
    let got = read_sse(resp, target).await?;
    let ids: Vec<u64> = got.iter().map(|(id, _)| *id).collect();
    let expected: Vec<u64> = (resume_after + 1..=target).collect();
    assert_eq!(ids, expected, "SSE ids must be exactly the seqs after Last-Event-ID");
    for (id, data) in &got {
        assert_eq!(data["seq"].as_u64(), Some(*id));
        assert_eq!(data["type"], "telemetry_recorded");
    }
    // An agent may not follow the log.
    expect(&get(&agent, &f.url("/v1/events/stream")).await?, 403, Some("forbidden"))?;
    // A bad Last-Event-ID is a 400.
    let bad = f.auditor.get(f.url("/v1/events/stream")).header("Last-Event-ID", "x").send().await?;
    expect(&answer(bad).await?, 400, Some("invalid_query"))?;
    // Shutdown ends an open stream instead of hanging on it.
    let open = f.auditor.get(f.url("/v1/events/stream?from=1")).send().await?;
    assert_eq!(open.status(), 200);
    let started = Instant::now();
    f.stop().await?;
    assert!(started.elapsed() < StdDuration::from_secs(2), "shutdown waited for the SSE client");
    drop(open);
    Ok(())
}

#[tokio::test]
async fn events_checkpoint_and_proofs() -> TestResult {
    let f = Fixture::start().await?;
    let (agent, _) = f.agent("gpu-1").await?;
    for i in 0..5 {
        expect(&post(&agent, &f.url("/v1/commands"), &heartbeat(&format!("p-{i}"), "gpu-1", i)).await?, 200, None)?;
    }
    let head = f.ledger.head().seq;
    let page = get(&f.auditor, &f.url("/v1/events?from=2&limit=3")).await?;
    expect(&page, 200, None)?;
    let page = page.json.ok_or("no json")?;
    let seqs: Vec<u64> =
        page["events"].as_array().ok_or("no events")?.iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert_eq!(seqs, [2, 3, 4]);
    assert_eq!(page["next_from"], 5);
    assert_eq!(page["head_seq"], head);

    let note = get(&f.auditor, &f.url("/v1/checkpoint")).await?;
    expect(&note, 200, None)?;
    assert!(note.content_type.starts_with("text/plain"));
    let signer_note = note.text.clone();
    assert!(signer_note.starts_with("hwledger.test/fleet\n"), "{signer_note}");
    let size: u64 = signer_note.lines().nth(1).and_then(|l| l.parse().ok()).ok_or("no size line")?;
    let cp_root = signer_note.lines().nth(2).ok_or("no root line")?.to_owned();

    let inc = get(&f.auditor, &f.url(&format!("/v1/proof/inclusion?seq=1&size={size}"))).await?;
    expect(&inc, 200, None)?;
    let inc = inc.json.ok_or("no json")?;
    assert_eq!(inc["root"], cp_root.as_str(), "inclusion root must match the checkpoint root");
    assert_eq!(inc["leaf_index"], 0);
    let cons = get(&f.auditor, &f.url(&format!("/v1/proof/consistency?from=2&to={size}"))).await?;
    expect(&cons, 200, None)?;
    let cons = cons.json.ok_or("no json")?;
    assert_eq!(cons["to_root"], cp_root.as_str());
    // Verify the consistency proof with the engine's verifier.
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let to32 = |v: &Value| -> Result<[u8; 32], BoxError> {
        let bytes = b64.decode(v.as_str().ok_or("not a string")?)?;
        Ok(<[u8; 32]>::try_from(bytes.as_slice())?)
    };
    let proof: Vec<[u8; 32]> =
        cons["proof"].as_array().ok_or("no proof")?.iter().map(to32).collect::<Result<_, _>>()?;
    let cp = |size: u64, root: [u8; 32]| hwledger_engine::checkpoint::Checkpoint {
        origin: "hwledger.test/fleet".into(),
        size,
        root,
        extensions: vec![],
    };
    hwledger_engine::verify::check_consistency(
        &cp(2, to32(&cons["from_root"])?),
        &cp(size, to32(&cons["to_root"])?),
        &proof,
    )?;
    expect(
        &get(&f.auditor, &f.url(&format!("/v1/proof/inclusion?seq={}&size={size}", size + 5))).await?,
        400,
        Some("invalid_range"),
    )?;
    expect(&get(&f.auditor, &f.url("/v1/proof/inclusion")).await?, 400, Some("invalid_query"))?;

    // min_seq: a read waits for the head, bounded.
    let wait_url = f.url(&format!("/v1/devices?min_seq={}", head + 1));
    let waiter = {
        let op = f.operator.clone();
        tokio::spawn(async move { get(&op, &wait_url).await })
    };
    tokio::time::sleep(StdDuration::from_millis(100)).await;
    expect(&post(&agent, &f.url("/v1/commands"), &heartbeat("p-late", "gpu-1", 99)).await?, 200, None)?;
    let waited = tokio::time::timeout(WAIT, waiter).await???;
    expect(&waited, 200, None)?;
    assert!(waited.json.as_ref().and_then(|j| j["as_of_seq"].as_u64()).is_some_and(|s| s > head));
    // Projection-only reads without projections.
    expect(&get(&f.operator, &f.url("/v1/telemetry")).await?, 503, Some("read_model_unavailable"))?;
    f.stop().await
}

#[tokio::test]
async fn min_seq_wait_is_bounded() -> TestResult {
    let f = Fixture::start_with(|c| c.read_wait_max = StdDuration::from_millis(200)).await?;
    let started = Instant::now();
    let far = get(&f.operator, &f.url("/v1/devices?min_seq=1000000")).await?;
    expect(&far, 503, Some("not_caught_up"))?;
    assert!(started.elapsed() < StdDuration::from_secs(3));
    f.stop().await
}

#[tokio::test]
async fn curl_lists_devices() -> TestResult {
    let f = Fixture::start().await?;
    f.enroll_device("gpu-curl").await?;
    let cert = f.pki.issue(&Role::operator("curly")?, Duration::days(1), now())?;
    pin_identity_async(&f.ledger, &cert, now()).await?;
    let out = f.dir.path().join("curl-bundle");
    let paths = write_bundle(&out, &cert, &f.ca_pem)?;
    let output = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new("curl")
            .arg("--silent")
            .arg("--show-error")
            .arg("--fail-with-body")
            .arg("--max-time")
            .arg("10")
            .arg("--cert")
            .arg(&paths.cert)
            .arg("--key")
            .arg(paths.key.as_ref().ok_or("no key")?)
            .arg("--cacert")
            .arg(&paths.ca)
            .arg(f.url("/v1/devices"))
            .stdin(Stdio::null())
            .output(),
    )
    .await??;
    assert!(output.status.success(), "curl failed: {}", String::from_utf8_lossy(&output.stderr));
    let body: Value = serde_json::from_slice(&output.stdout)?;
    let ids: Vec<&str> =
        body["devices"].as_array().ok_or("no devices")?.iter().filter_map(|d| d["device_id"].as_str()).collect();
    assert_eq!(ids, ["gpu-curl"]);
    assert_eq!(body["devices"][0]["status"], "enrolled");
    f.stop().await
}

/// Finds `promtool`, installing Debian's `prometheus` package if it is missing.
fn promtool() -> Result<std::path::PathBuf, BoxError> {
    let find = || {
        std::env::var_os("PATH")
            .into_iter()
            .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .map(|d| d.join("promtool"))
            .find(|p| p.is_file())
    };
    if let Some(p) = find() {
        return Ok(p);
    }
    let status = std::process::Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends", "prometheus"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .status()?;
    if !status.success() {
        return Err("promtool is missing and `apt-get install -y prometheus` failed".into());
    }
    find().ok_or_else(|| "promtool still missing after installing prometheus".into())
}

#[tokio::test]
async fn metrics_pass_promtool() -> TestResult {
    let f = Fixture::start().await?;
    let (agent, _) = f.agent("gpu-1").await?;
    expect(&post(&agent, &f.url("/v1/commands"), &heartbeat("m-1", "gpu-1", 1)).await?, 200, None)?;
    expect(&post(&agent, &f.url("/v1/commands"), &heartbeat("m-1", "gpu-1", 2)).await?, 409, None)?;
    expect(&get(&agent, &f.url("/metrics")).await?, 403, Some("forbidden"))?;
    let m = get(&f.operator, &f.url("/metrics")).await?;
    expect(&m, 200, None)?;
    for needle in [
        "hwledger_http_requests_total{route=\"/v1/commands\",method=\"POST\",status=\"200\"} 1",
        "hwledger_http_requests_total{route=\"/v1/commands\",method=\"POST\",status=\"409\"} 1",
        "hwledger_http_request_duration_seconds_bucket{",
        "hwledger_commit_duration_seconds_count 2",
        "hwledger_commands_total{outcome=\"duplicate_conflict\"} 1",
        "hwledger_ledger_head_seq ",
        "hwledger_connections_open{listener=\"api\"}",
    ] {
        assert!(m.text.contains(needle), "metrics lack {needle:?}:\n{}", m.text);
    }
    assert!(m.content_type.starts_with("text/plain; version=0.0.4"), "{}", m.content_type);
    let om = f
        .operator
        .get(f.url("/metrics"))
        .header("accept", "application/openmetrics-text; version=1.0.0")
        .send()
        .await?;
    let om = answer(om).await?;
    expect(&om, 200, None)?;
    assert!(om.content_type.starts_with("application/openmetrics-text"));
    assert!(om.text.ends_with("# EOF\n"));
    let appended = format!("hwledger_events_appended_total {}\n", f.ledger.head().seq - f.start_seq);
    assert!(m.text.contains(&appended), "metrics lack {appended:?}");
    let promtool = promtool()?;
    let mut child = tokio::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().ok_or("no stdin")?;
        stdin.write_all(m.text.as_bytes()).await?;
    }
    let out = tokio::time::timeout(WAIT, child.wait_with_output()).await??;
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    f.stop().await
}

#[tokio::test]
async fn enrollment_with_a_bootstrap_token() -> TestResult {
    let f = Fixture::start().await?;
    let anonymous = client_for(&f.ca_pem, None)?;
    let create = |token: &str, device: &str, expires_at: i64, id: &str| {
        json!({"command_id": id, "command": {"type": "create_bootstrap_token",
            "token_hash": TokenHash::of(token).to_string(), "device_id": device, "expires_at": expires_at}})
    };
    let token = "tok-valid-0123456789abcdefghijklmnopqrstuv";
    let in_an_hour = unix_ms(now() + Duration::hours(1));
    expect(&post(&f.operator, &f.url("/v1/commands"), &create(token, "gpu-new", in_an_hour, "t-1")).await?, 200, None)?;
    let (key_pem, csr_pem) = generate_key_and_csr(&Role::agent("whatever-the-device-claims")?)?;
    let req = json!({"token": token, "csr_pem": csr_pem, "hostname": "gpu-new.lan"});
    // The enrollment listener needs no client certificate; the API listener is not it.
    let enrolled = post(&anonymous, &f.enroll_url("/v1/enroll"), &req).await?;
    expect(&enrolled, 200, None)?;
    let body = enrolled.json.ok_or("no json")?;
    assert_eq!(body["device_id"], "gpu-new", "the device comes from the token, not the request");
    let cert_pem = body["cert_pem"].as_str().ok_or("no cert")?;
    assert_eq!(body["ca_pem"], f.ca_pem.as_str());
    // The new certificate is pinned: the device can heartbeat at once.
    let device =
        build_client(f.ca_pem.as_bytes(), Some((cert_pem.as_bytes(), key_pem.as_bytes())), StdDuration::from_secs(10))?;
    let who = get(&device, &f.url("/v1/whoami")).await?;
    expect(&who, 200, None)?;
    assert_eq!(who.json.as_ref().map(|j| j["name"].clone()), Some(json!("gpu-new")));
    expect(&post(&device, &f.url("/v1/commands"), &heartbeat("n-1", "gpu-new", 1)).await?, 200, None)?;
    // The CA bundle is served on the mTLS port.
    let bundle = get(&device, &f.url("/v1/ca-bundle")).await?;
    expect(&bundle, 200, None)?;
    assert_eq!(bundle.json.as_ref().map(|j| j["ca_pem"].clone()), Some(json!(f.ca_pem)));
    // Reuse is refused.
    let (_, csr2) = generate_key_and_csr(&Role::agent("x")?)?;
    let reuse = post(&anonymous, &f.enroll_url("/v1/enroll"), &json!({"token": token, "csr_pem": csr2})).await?;
    expect(&reuse, 409, Some("token_used"))?;
    // Unknown token.
    let unknown = post(&anonymous, &f.enroll_url("/v1/enroll"), &json!({"token": "nope", "csr_pem": csr2})).await?;
    expect(&unknown, 403, Some("token_unknown"))?;
    // Expired token.
    let short = "tok-short-0123456789abcdefghijklmnopqrstuv";
    let soon = unix_ms(now() + Duration::milliseconds(1000));
    expect(&post(&f.operator, &f.url("/v1/commands"), &create(short, "gpu-late", soon, "t-2")).await?, 200, None)?;
    tokio::time::sleep(StdDuration::from_millis(1200)).await;
    let expired = post(&anonymous, &f.enroll_url("/v1/enroll"), &json!({"token": short, "csr_pem": csr2})).await?;
    expect(&expired, 410, Some("token_expired"))?;
    // Garbage CSR, unknown fields, wrong listener.
    let token3 = "tok-three-0123456789abcdefghijklmnopqrstuv";
    expect(&post(&f.operator, &f.url("/v1/commands"), &create(token3, "gpu-3", in_an_hour, "t-3")).await?, 200, None)?;
    let bad_csr = post(&anonymous, &f.enroll_url("/v1/enroll"), &json!({"token": token3, "csr_pem": "junk"})).await?;
    expect(&bad_csr, 400, Some("invalid_csr"))?;
    let extra =
        post(&anonymous, &f.enroll_url("/v1/enroll"), &json!({"token": token3, "csr_pem": csr2, "role": "operator"}))
            .await?;
    expect(&extra, 400, Some("unknown_field"))?;
    expect(&post(&f.operator, &f.url("/v1/enroll"), &req).await?, 404, Some("not_found"))?;
    expect(&get(&anonymous, &f.enroll_url("/v1/devices")).await?, 404, Some("not_found"))?;
    f.stop().await
}

#[tokio::test]
async fn dashboard_on_loopback() -> TestResult {
    let f = Fixture::start().await?;
    f.enroll_device("gpu-1").await?;
    let plain = reqwest::Client::builder().timeout(StdDuration::from_secs(10)).build()?;
    let base = format!("http://127.0.0.1:{}", f.addrs.dashboard.port());
    let page = get(&plain, &format!("{base}/dashboard")).await?;
    expect(&page, 200, None)?;
    assert!(page.content_type.starts_with("text/html"));
    assert!(page.text.contains("<meta http-equiv=\"refresh\" content=\"5\">"));
    assert!(!page.text.to_ascii_lowercase().contains("<script"));
    assert!(page.text.contains("enrolled"));
    let snap = get(&plain, &format!("{base}/snapshot.json")).await?;
    expect(&snap, 200, None)?;
    assert_eq!(snap.json.as_ref().map(|j| j["head_seq"].clone()), Some(json!(f.ledger.head().seq)));
    expect(&get(&plain, &format!("{base}/elsewhere")).await?, 404, Some("not_found"))?;
    let dash = get(&f.operator, &f.url("/v1/dashboard")).await?;
    expect(&dash, 200, None)?;
    f.stop().await?;

    // The dashboard refuses to listen anywhere but loopback.
    let dir = tempfile::tempdir()?;
    let pki = Arc::new(Pki::init(&dir.path().join("pki"), PkiOptions::default(), now())?);
    let ledger = Arc::new(Ledger::open(&dir.path().join("ledger"), LedgerOptions::default())?);
    let config = ServerConfig::new("127.0.0.1:0".parse()?, "0.0.0.0:0".parse()?);
    assert!(matches!(Server::bind(config, ledger, pki, None).await, Err(ServerError::Config(_))));
    Ok(())
}

#[tokio::test]
async fn bootstrap_operator_is_idempotent_and_time_comes_from_the_clock() -> TestResult {
    let f = Fixture::start().await?;
    let bundle_dir = f.dir.path().join("bundles");
    let (l, p, b) = (f.ledger.clone(), f.pki.clone(), bundle_dir.clone());
    let again =
        tokio::task::spawn_blocking(move || ensure_bootstrap_operator(&l, &p, &b, "root", Duration::days(30), now()))
            .await??;
    assert!(!again.created, "a second start must reuse the pinned bundle");
    f.stop().await?;

    // A server whose clock is a day ahead sees a token that expires in an hour as expired.
    let ahead = Clock::from_fn(|| OffsetDateTime::now_utc() + Duration::days(1));
    let f = Fixture::start_with(move |c| c.clock = ahead).await?;
    let token = "tok-clock-0123456789abcdefghijklmnopqrstuv";
    let create = json!({"command_id": "t-clock", "command": {"type": "create_bootstrap_token",
        "token_hash": TokenHash::of(token).to_string(), "device_id": "gpu-c", "expires_at": unix_ms(now() + Duration::hours(1))}});
    // Created directly (the server's own clock would refuse an expiry in its past).
    let sub: Submission = serde_json::from_value(create)?;
    let outcome = f.ledger.submit_async(sub, Context::new(Actor::System, unix_ms(now()))).await?;
    assert!(matches!(outcome, Outcome::Accepted(_)));
    let (_, csr) = generate_key_and_csr(&Role::agent("gpu-c")?)?;
    let anonymous = client_for(&f.ca_pem, None)?;
    let r = post(&anonymous, &f.enroll_url("/v1/enroll"), &json!({"token": token, "csr_pem": csr})).await?;
    expect(&r, 410, Some("token_expired"))?;
    f.stop().await
}

/// Checks real responses against the OpenAPI document: the route and status are documented, JSON bodies
/// carry every required field of their schema and no field a closed schema does not name.
struct Contract {
    doc: Value,
}

impl Contract {
    fn resolve<'a>(&'a self, schema: &'a Value) -> Result<&'a Value, BoxError> {
        match schema.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let name = r.strip_prefix("#/components/schemas/").ok_or("unsupported $ref")?;
                self.doc["components"]["schemas"].get(name).ok_or_else(|| format!("missing schema {name}").into())
            }
            None => Ok(schema),
        }
    }

    fn check_value(&self, schema: &Value, value: &Value, at: &str) -> TestResult {
        let schema = self.resolve(schema)?;
        if value.is_null() {
            return if schema["nullable"] == true || schema.as_object().is_some_and(|o| o.is_empty()) {
                Ok(())
            } else {
                Err(format!("{at}: null where the schema is not nullable").into())
            };
        }
        match schema.get("type").and_then(Value::as_str) {
            Some("object") => {
                let obj = value.as_object().ok_or_else(|| format!("{at}: expected an object"))?;
                for req in schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str) {
                    if !obj.contains_key(req) {
                        return Err(format!("{at}: required field {req} missing").into());
                    }
                }
                let props = schema.get("properties").and_then(Value::as_object);
                for (k, v) in obj {
                    match props.and_then(|p| p.get(k)) {
                        Some(s) => self.check_value(s, v, &format!("{at}.{k}"))?,
                        None if schema["additionalProperties"] == false => {
                            return Err(format!("{at}: field {k} is not in the closed schema").into());
                        }
                        None => {}
                    }
                }
            }
            Some("array") => {
                let items = value.as_array().ok_or_else(|| format!("{at}: expected an array"))?;
                for (i, item) in items.iter().enumerate() {
                    self.check_value(&schema["items"], item, &format!("{at}[{i}]"))?;
                }
            }
            Some("string") if !value.is_string() => return Err(format!("{at}: expected a string").into()),
            Some("integer") if !(value.is_i64() || value.is_u64()) => {
                return Err(format!("{at}: expected an integer").into());
            }
            _ => {}
        }
        if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
            if !allowed.contains(value) {
                return Err(format!("{at}: {value} is not one of {allowed:?}").into());
            }
        }
        Ok(())
    }

    fn check(&self, method: &str, template: &str, a: &Answer) -> TestResult {
        let op = &self.doc["paths"][template][method.to_ascii_lowercase()];
        if !op.is_object() {
            return Err(format!("{method} {template} is not documented").into());
        }
        let status = a.status.as_str();
        let resp = op["responses"]
            .get(status)
            .ok_or_else(|| format!("{method} {template}: status {status} not documented"))?;
        let content = resp["content"].as_object().ok_or_else(|| format!("{method} {template} {status}: no content"))?;
        let media = a.content_type.split(';').next().unwrap_or_default().trim();
        let documented = content
            .get(media)
            .ok_or_else(|| format!("{method} {template} {status}: media type {media} not documented"))?;
        if media == "application/json" {
            let value = a.json.as_ref().ok_or_else(|| format!("{method} {template}: body is not JSON"))?;
            self.check_value(&documented["schema"], value, &format!("{method} {template} {status}"))?;
        }
        Ok(())
    }
}

#[tokio::test]
async fn openapi_contract() -> TestResult {
    let f = Fixture::start().await?;
    let doc = get(&f.auditor, &f.url("/v1/openapi.json")).await?;
    expect(&doc, 200, None)?;
    let contract = Contract { doc: doc.json.clone().ok_or("no json")? };
    assert_eq!(contract.doc["openapi"].as_str().map(|v| v.starts_with("3.")), Some(true));
    // Every route the server answers is documented, and the document invents none.
    let mut served: Vec<(&str, &str)> =
        API_ROUTES.iter().chain(ENROLL_ROUTES).chain(DASHBOARD_ROUTES).copied().collect();
    served.sort_unstable();
    served.dedup();
    let mut documented = Vec::new();
    for (path, ops) in contract.doc["paths"].as_object().ok_or("no paths")? {
        for method in ops.as_object().ok_or("bad path item")?.keys() {
            documented.push((method.to_ascii_uppercase(), path.clone()));
        }
    }
    documented.sort_unstable();
    let served_owned: Vec<(String, String)> = served.iter().map(|(m, p)| ((*m).to_owned(), (*p).to_owned())).collect();
    assert_eq!(served_owned, documented);

    let (agent, _) = f.agent("gpu-1").await?;
    let plain = reqwest::Client::builder().timeout(StdDuration::from_secs(10)).build()?;
    let dash = |p: &str| format!("http://127.0.0.1:{}{p}", f.addrs.dashboard.port());
    let anonymous = client_for(&f.ca_pem, None)?;
    let mut seen: Vec<(&str, &str, Answer)> = vec![
        ("GET", "/health", get(&agent, &f.url("/health")).await?),
        ("POST", "/v1/commands", post(&agent, &f.url("/v1/commands"), &heartbeat("c-1", "gpu-1", 1)).await?),
        ("POST", "/v1/commands", post(&agent, &f.url("/v1/commands"), &heartbeat("c-1", "gpu-1", 1)).await?),
        ("POST", "/v1/commands", post(&agent, &f.url("/v1/commands"), &heartbeat("c-1", "gpu-1", 2)).await?),
        ("POST", "/v1/commands", post(&agent, &f.url("/v1/commands"), &heartbeat("c-2", "gpu-9", 2)).await?),
        ("POST", "/v1/commands", post(&f.operator, &f.url("/v1/commands"), &heartbeat("c-3", "gpu-9", 2)).await?),
        ("POST", "/v1/commands", post(&agent, &f.url("/v1/commands"), &json!({"command_id": 1})).await?),
        (
            "POST",
            "/v1/commands/batch",
            post(
                &agent,
                &f.url("/v1/commands/batch"),
                &json!([heartbeat("c-4", "gpu-1", 3), heartbeat("c-5", "gpu-2", 3)]),
            )
            .await?,
        ),
        ("GET", "/metrics", get(&f.operator, &f.url("/metrics")).await?),
        ("GET", "/metrics", get(&agent, &f.url("/metrics")).await?),
        ("GET", "/v1/whoami", get(&agent, &f.url("/v1/whoami")).await?),
        ("GET", "/v1/ca-bundle", get(&agent, &f.url("/v1/ca-bundle")).await?),
        ("GET", "/v1/events", get(&f.auditor, &f.url("/v1/events?from=1&limit=2")).await?),
        ("GET", "/v1/events", get(&f.auditor, &f.url("/v1/events?from=0")).await?),
        ("GET", "/v1/checkpoint", get(&f.auditor, &f.url("/v1/checkpoint")).await?),
        ("GET", "/v1/proof/inclusion", get(&f.auditor, &f.url("/v1/proof/inclusion?seq=1")).await?),
        ("GET", "/v1/proof/inclusion", get(&f.auditor, &f.url("/v1/proof/inclusion?seq=999")).await?),
        ("GET", "/v1/proof/consistency", get(&f.auditor, &f.url("/v1/proof/consistency?from=1")).await?),
        ("GET", "/v1/proof/consistency", get(&f.auditor, &f.url("/v1/proof/consistency?from=0")).await?),
        ("GET", "/v1/devices", get(&f.operator, &f.url("/v1/devices")).await?),
        ("GET", "/v1/devices/{id}", get(&f.operator, &f.url("/v1/devices/gpu-1")).await?),
        ("GET", "/v1/devices/{id}", get(&f.operator, &f.url("/v1/devices/gpu-404")).await?),
        ("GET", "/v1/telemetry", get(&f.operator, &f.url("/v1/telemetry")).await?),
        ("GET", "/v1/jobs", get(&f.operator, &f.url("/v1/jobs")).await?),
        ("GET", "/v1/cost", get(&f.operator, &f.url("/v1/cost")).await?),
        ("GET", "/v1/dashboard", get(&f.operator, &f.url("/v1/dashboard")).await?),
        ("GET", "/v1/dashboard", get(&agent, &f.url("/v1/dashboard")).await?),
        (
            "POST",
            "/v1/enroll",
            post(&anonymous, &f.enroll_url("/v1/enroll"), &json!({"token": "t", "csr_pem": "x"})).await?,
        ),
        ("POST", "/v1/enroll", post(&anonymous, &f.enroll_url("/v1/enroll"), &json!({"token": "t"})).await?),
        ("GET", "/health", get(&anonymous, &f.enroll_url("/health")).await?),
        ("GET", "/dashboard", get(&plain, &dash("/dashboard")).await?),
        ("GET", "/snapshot.json", get(&plain, &dash("/snapshot.json")).await?),
    ];
    let sse = f.auditor.get(f.url("/v1/events/stream?from=1")).send().await?;
    let sse_status = sse.status();
    let sse_type = sse.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    drop(sse);
    seen.push((
        "GET",
        "/v1/events/stream",
        Answer { status: sse_status, content_type: sse_type, text: String::new(), json: None },
    ));
    let text = agent.post(f.url("/v1/commands")).header("content-type", "text/plain").body("{}").send().await?;
    seen.push(("POST", "/v1/commands", answer(text).await?));

    let mut statuses: Vec<u16> = Vec::new();
    for (method, template, a) in &seen {
        contract.check(method, template, a).map_err(|e| format!("{e}\nbody: {}", a.text))?;
        statuses.push(a.status.as_u16());
    }
    statuses.sort_unstable();
    statuses.dedup();
    // The exercise reached the interesting statuses, not only 200s.
    for s in [200, 400, 403, 404, 409, 415, 503] {
        assert!(statuses.contains(&s), "no {s} response was checked against the contract");
    }
    f.stop().await
}
