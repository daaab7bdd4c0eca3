//! The typed client (`hwledger_wire::client`) against the real server: real mTLS on 127.0.0.1:0, a real
//! ledger and the real projections in a temporary directory, a real fleet PKI. Every method round-trips;
//! server errors become `ClientError::Api` with their stable codes and the right retryability; a retried
//! submission returns the original receipt; the event stream resumes without gap or duplicate; enrollment
//! with a bootstrap token works, and a reused or expired token is refused with its code.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration as StdDuration;

use futures_util::StreamExt;
use hwledger_engine::event::{DeviceKind, GpuInfo, GpuReading};
use hwledger_engine::note::generate_signer;
use hwledger_engine::{Command, Ledger, LedgerOptions, Submission};
use hwledger_projections::{GroupBy, Projector, ProjectorOptions};
use hwledger_wire::api::{BatchItemResult, CommandStatus};
use hwledger_wire::client::{Client, ClientError, EnrollError, TelemetryQuery, redeem_bootstrap_token};
use hwledger_wire::pki::{Pki, PkiOptions, Role, write_bundle};
use hwledger_wire::server::{
    Clock, ReadModelError, ReadModels, ReadQuery, RunningAddrs, Server, ServerConfig, ServerError,
    ensure_bootstrap_operator, pin_identity_async, unix_ms,
};
use tempfile::TempDir;
use time::{Duration, OffsetDateTime};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type TestResult = Result<(), BoxError>;

/// Every wait in these tests is bounded by this.
const WAIT: StdDuration = StdDuration::from_secs(15);

/// A device is stale after this long without a heartbeat (as the CLI's adapter uses).
const HEARTBEAT: StdDuration = StdDuration::from_secs(30);

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// The projections served to the server: a small adapter like the binary's, over the real projector.
struct Reads(Arc<Projector>, Clock);

fn to_json<T: serde::Serialize>(v: T) -> Result<serde_json::Value, ReadModelError> {
    serde_json::to_value(v).map_err(|e| ReadModelError::Unavailable(e.to_string()))
}

impl ReadModels for Reads {
    fn applied_seq(&self) -> u64 {
        self.0.applied_seq()
    }
    fn devices(&self, _: &ReadQuery) -> Result<serde_json::Value, ReadModelError> {
        Ok(serde_json::json!({ "devices": to_json(self.0.devices(self.1.now_ms(), HEARTBEAT))? }))
    }
    fn device(&self, id: &str) -> Result<Option<serde_json::Value>, ReadModelError> {
        self.0.devices(self.1.now_ms(), HEARTBEAT).into_iter().find(|d| d.device_id == id).map(to_json).transpose()
    }
    fn telemetry(&self, q: &ReadQuery) -> Result<serde_json::Value, ReadModelError> {
        let device = q.params.get("device").ok_or_else(|| ReadModelError::BadRequest("device= is required".into()))?;
        let num = |k: &str| q.params.get(k).map(|v| v.parse::<i64>()).transpose();
        let from = num("from").map_err(|e| ReadModelError::BadRequest(e.to_string()))?.unwrap_or(i64::MIN);
        let to = num("to").map_err(|e| ReadModelError::BadRequest(e.to_string()))?.unwrap_or(i64::MAX);
        let gpu = q.params.get("gpu").map(|g| g.parse::<u32>()).transpose();
        let gpu = gpu.map_err(|e| ReadModelError::BadRequest(e.to_string()))?;
        self.0
            .telemetry(device, gpu, from, to)
            .map(to_json)
            .unwrap_or_else(|| Err(ReadModelError::NotFound(format!("no telemetry for device {device}"))))
    }
    fn jobs(&self, _: &ReadQuery) -> Result<serde_json::Value, ReadModelError> {
        Ok(serde_json::json!({ "jobs": to_json(self.0.jobs())? }))
    }
    fn cost(&self, q: &ReadQuery) -> Result<serde_json::Value, ReadModelError> {
        let secs = q
            .params
            .get("window")
            .and_then(|w| w.strip_suffix('s'))
            .and_then(|w| w.parse::<u64>().ok())
            .ok_or_else(|| ReadModelError::BadRequest("window=<seconds>s".into()))?;
        let by = match q.params.get("by").map(String::as_str) {
            Some("device") => GroupBy::Device,
            Some("backend") => GroupBy::Backend,
            Some("day") => GroupBy::Day,
            _ => GroupBy::None,
        };
        to_json(self.0.cost(self.1.now_ms(), StdDuration::from_secs(secs), by))
    }
    fn dashboard(&self) -> Result<serde_json::Value, ReadModelError> {
        to_json(self.0.dashboard(self.1.now_ms(), HEARTBEAT))
    }
}

/// A running server with projections, a bootstrap operator bundle on disk and an auditor bundle.
struct Fixture {
    dir: TempDir,
    ledger: Arc<Ledger>,
    pki: Arc<Pki>,
    addrs: RunningAddrs,
    ca_pem: String,
    operator_dir: PathBuf,
    auditor_dir: PathBuf,
    /// Milliseconds added to the server's clock (to expire tokens without sleeping).
    clock_offset: Arc<AtomicI64>,
    stop_projector: Arc<AtomicBool>,
    projector_thread: Option<std::thread::JoinHandle<()>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<RunningAddrs, ServerError>>>,
}

impl Fixture {
    async fn start(tweak: impl FnOnce(&mut ServerConfig)) -> Result<Fixture, BoxError> {
        let dir = tempfile::tempdir()?;
        let pki = Arc::new(Pki::init(&dir.path().join("pki"), PkiOptions::default(), now())?);
        let (signer, _, _) = generate_signer("hwledger.test/client")?;
        let options = LedgerOptions {
            signer: Some(signer),
            origin: "hwledger.test/client".into(),
            checkpoint_interval_ms: 0,
            ..LedgerOptions::default()
        };
        let ledger = Arc::new(Ledger::open(&dir.path().join("ledger"), options)?);
        let operator_dir = dir.path().join("operator");
        let (l, p, d) = (ledger.clone(), pki.clone(), operator_dir.clone());
        tokio::task::spawn_blocking(move || ensure_bootstrap_operator(&l, &p, &d, "root", Duration::days(30), now()))
            .await??;
        let auditor_dir = dir.path().join("auditor");
        let auditor = pki.issue(&Role::auditor("audrey")?, Duration::days(30), now())?;
        pin_identity_async(&ledger, &auditor, now()).await?;
        write_bundle(&auditor_dir, &auditor, &pki.ca_bundle_pem(now()))?;

        let projector = Arc::new(Projector::open(ledger.store(), ProjectorOptions::default())?);
        let stop_projector = Arc::new(AtomicBool::new(false));
        let projector_thread = {
            let (p, l, s) = (projector.clone(), ledger.clone(), stop_projector.clone());
            std::thread::spawn(move || {
                let _ = p.follow(&l, &s);
            })
        };
        let clock_offset = Arc::new(AtomicI64::new(0));
        let offset = clock_offset.clone();
        let clock =
            Clock::from_fn(move || OffsetDateTime::now_utc() + Duration::milliseconds(offset.load(Ordering::SeqCst)));
        let mut config = ServerConfig::new("127.0.0.1:0".parse()?, "127.0.0.1:0".parse()?);
        config.enroll_listen = Some("127.0.0.1:0".parse()?);
        config.shutdown_grace = StdDuration::from_secs(2);
        config.clock = clock.clone();
        tweak(&mut config);
        let reads: Arc<dyn ReadModels> = Arc::new(Reads(projector, clock));
        let server = Server::bind(config, ledger.clone(), pki.clone(), Some(reads)).await?;
        let addrs = server.local_addrs();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(async move {
            let _ = stopped.await;
        }));
        Ok(Fixture {
            ca_pem: pki.ca_bundle_pem(now()),
            dir,
            ledger,
            pki,
            addrs,
            operator_dir,
            auditor_dir,
            clock_offset,
            stop_projector,
            projector_thread: Some(projector_thread),
            stop: Some(stop),
            task: Some(task),
        })
    }

    fn api_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addrs.api.port())
    }

    fn enroll_url(&self) -> String {
        format!("https://localhost:{}/", self.addrs.enroll.map_or(0, |a| a.port()))
    }

    fn operator(&self) -> Result<Client, ClientError> {
        Client::from_bundle_dir(&self.api_url(), &self.operator_dir)
    }

    fn auditor(&self) -> Result<Client, ClientError> {
        Client::from_bundle_dir(&self.api_url(), &self.auditor_dir)
    }

    /// An agent bundle for `device` (which must be enrolled), pinned, as a client.
    async fn agent(&self, device: &str) -> Result<Client, BoxError> {
        let cert = self.pki.issue(&Role::agent(device)?, Duration::days(30), now())?;
        pin_identity_async(&self.ledger, &cert, now()).await?;
        let dir = self.dir.path().join(format!("agent-{device}"));
        write_bundle(&dir, &cert, &self.ca_pem)?;
        Ok(Client::from_bundle_dir(&self.api_url(), &dir)?)
    }

    async fn stop(mut self) -> TestResult {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task).await???;
        }
        self.stop_projector.store(true, Ordering::SeqCst);
        if let Some(t) = self.projector_thread.take() {
            t.join().map_err(|_| "projector thread panicked")?;
        }
        Ok(())
    }
}

fn sub(id: &str, command: Command) -> Submission {
    Submission { command_id: id.into(), expected_version: None, command }
}

fn enroll(device: &str) -> Command {
    Command::EnrollDevice {
        device_id: device.into(),
        kind: DeviceKind::Local,
        hostname: None,
        labels: Default::default(),
    }
}

fn register(device: &str) -> Command {
    Command::RegisterDevice {
        device_id: device.into(),
        hostname: Some(format!("{device}.lan")),
        gpus: vec![GpuInfo { index: 0, name: "RTX 4090".into(), uuid: None, vram_total_mib: 24_564 }],
    }
}

fn heartbeat(device: &str, at: i64) -> Command {
    Command::RecordTelemetry {
        device_id: device.into(),
        sampled_at: at,
        gpus: vec![GpuReading {
            index: 0,
            vram_used_mib: Some(1000),
            vram_total_mib: Some(24_564),
            utilization_pct: Some(40.0),
            temperature_c: Some(55.0),
            power_w: Some(210.0),
        }],
    }
}

fn api_code(e: &ClientError) -> Option<(u16, &str)> {
    match e {
        ClientError::Api { status, code, .. } => Some((*status, code.as_str())),
        _ => None,
    }
}

#[tokio::test]
async fn every_method_round_trips() -> TestResult {
    let f = Fixture::start(|_| {}).await?;
    let op = f.operator()?;
    let t = unix_ms(now());

    let who = op.whoami().await?;
    assert_eq!((who.role.as_str(), who.name.as_str()), ("operator", "root"));
    let health = op.health().await?;
    assert_eq!(health.status, "ok");

    let first = op.submit(&sub("c-enroll", enroll("gpu-1"))).await?;
    assert_eq!(first.status, CommandStatus::Accepted);
    let batch = op
        .submit_batch(&[
            sub("c-register", register("gpu-1")),
            sub("c-hb-1", heartbeat("gpu-1", t - 1000)),
            sub("c-hb-2", heartbeat("gpu-1", t)),
            sub(
                "c-job",
                Command::DispatchJob {
                    job_id: "job-1".into(),
                    device_id: "gpu-1".into(),
                    model: "llama".into(),
                    vram_mib: 1000,
                    price: None,
                },
            ),
        ])
        .await?;
    assert_eq!(batch.results.len(), 4);
    let last_seq = match batch.results.last() {
        Some(BatchItemResult::Accepted { receipt }) => receipt.seq,
        other => return Err(format!("expected accepted, got {other:?}").into()),
    };

    // Reads with min_seq see the writes (read-your-writes through the projections).
    let devices = op.devices(Some(last_seq)).await?;
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0]["device_id"], "gpu-1");
    assert_eq!(devices[0]["hostname"], "gpu-1.lan");
    let device = op.device("gpu-1", Some(last_seq)).await?;
    assert_eq!(device["device_id"], "gpu-1");
    let telemetry =
        op.telemetry(&TelemetryQuery { device: "gpu-1".into(), gpu: Some(0), ..Default::default() }, None).await?;
    assert!(telemetry.to_string().contains("55"), "{telemetry}");
    let jobs = op.jobs(Some(last_seq)).await?;
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0]["job_id"], "job-1");
    let cost = op.cost(StdDuration::from_secs(86_400), GroupBy::Device, None).await?;
    assert_eq!(cost["group_by"], "device");
    let dashboard = op.dashboard(Some(last_seq)).await?;
    assert_eq!(dashboard["devices"]["total"], 1);

    // The log, proofs and checkpoint, as an auditor.
    let auditor = f.auditor()?;
    let page = auditor.events(1, None, Some(last_seq)).await?;
    assert_eq!(page.head_seq, f.ledger.head().seq);
    assert_eq!(page.events.first().map(|e| e.seq), Some(1));
    assert!(page.events.iter().any(|e| e.event_type == "job_dispatched"));
    let head = page.head_seq;
    let proof = auditor.inclusion_proof(last_seq, None, None).await?;
    assert_eq!((proof.seq, proof.tree_size, proof.leaf_index), (last_seq, head, last_seq - 1));
    let consistency = auditor.consistency_proof(1, Some(head), None).await?;
    assert_eq!((consistency.from, consistency.to), (1, head));
    assert_eq!(consistency.to_root, proof.root, "the same tree has one root");
    let checkpoint = auditor.checkpoint(Some(head)).await?;
    assert!(checkpoint.starts_with("hwledger.test/client\n"), "{checkpoint}");
    assert_eq!(auditor.ca_bundle().await?.ca_pem, f.ca_pem);
    assert!(auditor.metrics().await?.contains("# TYPE"));
    assert!(auditor.openapi().await?["paths"]["/v1/commands"].is_object());

    // The event stream from the start of the log yields every event in order.
    let mut stream = auditor.events_stream(Some(0)).await?;
    let mut seqs = Vec::new();
    while seqs.len() < usize::try_from(head)? {
        let event = tokio::time::timeout(WAIT, stream.next()).await?.ok_or("stream ended")??;
        seqs.push(event.seq);
    }
    assert_eq!(seqs, (1..=head).collect::<Vec<_>>());
    assert_eq!(stream.last_event_id(), Some(head));
    f.stop().await
}

#[tokio::test]
async fn api_errors_are_typed_with_their_codes() -> TestResult {
    let f = Fixture::start(|c| c.read_wait_max = StdDuration::from_millis(200)).await?;
    let op = f.operator()?;
    op.submit(&sub("e-1", enroll("gpu-1"))).await?;
    op.submit(&sub("e-2", enroll("gpu-2"))).await?;
    let agent = f.agent("gpu-1").await?;
    let auditor = f.auditor()?;

    let cases: Vec<(&str, Result<(), ClientError>, u16, &str)> = vec![
        ("unknown device read", op.device("nope", None).await.map(drop), 404, "device_unknown"),
        ("rule violation", op.submit(&sub("e-3", heartbeat("nope", 1))).await.map(drop), 404, "device_unknown"),
        (
            "agent speaking for another device",
            agent.submit(&sub("e-4", heartbeat("gpu-2", 1))).await.map(drop),
            403,
            "forbidden",
        ),
        ("agent reading the log", agent.events(1, None, None).await.map(drop), 403, "forbidden"),
        ("auditor submitting", auditor.submit(&sub("e-5", heartbeat("gpu-1", 1))).await.map(drop), 403, "forbidden"),
        ("same id, other command", op.submit(&sub("e-1", enroll("gpu-9"))).await.map(drop), 409, "duplicate_conflict"),
        ("not caught up", op.devices(Some(u64::MAX / 2)).await.map(drop), 503, "not_caught_up"),
    ];
    for (what, result, status, code) in cases {
        let err = result.err().ok_or(format!("{what}: expected an error"))?;
        assert_eq!(api_code(&err), Some((status, code)), "{what}: {err}");
        assert_eq!(err.is_retryable(), status >= 500, "{what}: retryable");
        if status == 503 {
            assert_eq!(err.retry_after(), Some(StdDuration::from_secs(1)), "{what}: Retry-After");
        }
    }

    // A certificate the server does not know (issued, never pinned) is refused per request: 403 not_pinned.
    let stranger = f.pki.issue(&Role::operator("mallory")?, Duration::days(1), now())?;
    let dir = f.dir.path().join("stranger");
    write_bundle(&dir, &stranger, &f.ca_pem)?;
    let err = Client::from_bundle_dir(&f.api_url(), &dir)?.devices(None).await.err().ok_or("expected not_pinned")?;
    assert_eq!(api_code(&err), Some((403, "not_pinned")), "{err}");
    assert!(!err.is_retryable());

    // Nothing listening: a transport error, retryable.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let gone = Client::from_bundle_dir(&format!("https://127.0.0.1:{port}"), &f.operator_dir)?;
    let err = gone.health().await.err().ok_or("expected a transport error")?;
    assert!(matches!(err, ClientError::Transport { .. }), "{err}");
    assert!(err.is_retryable());

    // Bad configuration is refused before any request.
    assert!(matches!(Client::from_bundle_dir("http://127.0.0.1:1", &f.operator_dir), Err(ClientError::BadUrl { .. })));
    assert!(matches!(Client::from_bundle_dir(&f.api_url(), f.dir.path()), Err(ClientError::Bundle { .. })));
    f.stop().await
}

#[tokio::test]
async fn a_retried_submission_returns_the_original_receipt() -> TestResult {
    let f = Fixture::start(|_| {}).await?;
    let op = f.operator()?;
    op.submit(&sub("r-0", enroll("gpu-1"))).await?;
    let agent = f.agent("gpu-1").await?;
    let hb = sub("r-1", heartbeat("gpu-1", 1));
    let original = agent.submit(&hb).await?;
    assert_eq!(original.status, CommandStatus::Accepted);
    let head = f.ledger.head().seq;
    let retry = agent.submit(&hb).await?;
    assert_eq!(retry.status, CommandStatus::Duplicate);
    assert_eq!(retry.receipt, original.receipt, "the retry gets the original receipt");
    assert_eq!(f.ledger.head().seq, head, "nothing appended by the retry");
    // In a batch too, next to a new command.
    let batch = agent.submit_batch(&[hb.clone(), sub("r-2", heartbeat("gpu-1", 2))]).await?;
    match batch.results.as_slice() {
        [BatchItemResult::Duplicate { receipt }, BatchItemResult::Accepted { .. }] => {
            assert_eq!(*receipt, original.receipt)
        }
        other => return Err(format!("unexpected batch results {other:?}").into()),
    }
    f.stop().await
}

#[tokio::test]
async fn the_event_stream_resumes_without_gaps_or_duplicates() -> TestResult {
    let f = Fixture::start(|_| {}).await?;
    let op = f.operator()?;
    op.submit(&sub("s-0", enroll("gpu-1"))).await?;
    let start = f.ledger.head().seq;
    for i in 0..10 {
        op.submit(&sub(&format!("s-{}", i + 1), heartbeat("gpu-1", i))).await?;
    }
    let auditor = f.auditor()?;
    let mut stream = auditor.events_stream(Some(start)).await?;
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(tokio::time::timeout(WAIT, stream.next()).await?.ok_or("stream ended")??.seq);
    }
    let resume = stream.last_event_id();
    drop(stream);
    // More events while disconnected.
    for i in 10..20 {
        op.submit(&sub(&format!("s-{}", i + 1), heartbeat("gpu-1", i))).await?;
    }
    let head = f.ledger.head().seq;
    let mut stream = auditor.events_stream(resume).await?;
    while seen.last() != Some(&head) {
        seen.push(tokio::time::timeout(WAIT, stream.next()).await?.ok_or("stream ended")??.seq);
    }
    assert_eq!(seen, (start + 1..=head).collect::<Vec<_>>());
    // Agents may not follow the log.
    let agent = f.agent("gpu-1").await?;
    let err = agent.events_stream(None).await.err().ok_or("expected forbidden")?;
    assert_eq!(api_code(&err), Some((403, "forbidden")));
    f.stop().await
}

#[tokio::test]
async fn enrollment_with_a_bootstrap_token() -> TestResult {
    let f = Fixture::start(|_| {}).await?;
    let op = f.operator()?;
    let ca = f.ca_pem.as_bytes();
    let in_an_hour = unix_ms(now() + Duration::hours(1));

    let (token, created) = op.create_bootstrap_token("gpu-new", in_an_hour).await?;
    assert_eq!(created.status, CommandStatus::Accepted);
    let out = f.dir.path().join("device");
    let bundle =
        redeem_bootstrap_token(&f.enroll_url(), ca, token.as_str(), "gpu-new", Some("gpu-new.lan".into()), &out)
            .await?;
    assert_eq!(bundle.device_id, "gpu-new");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&bundle.files.key)?.permissions().mode() & 0o777, 0o600);
    }
    // The new identity works at once on the mTLS API.
    let device = Client::from_bundle_dir(&f.api_url(), &out)?;
    let who = device.whoami().await?;
    assert_eq!(
        (who.role.as_str(), who.name.as_str(), who.fingerprint.as_str()),
        ("agent", "gpu-new", bundle.fingerprint.as_str())
    );
    device.submit(&sub("n-1", heartbeat("gpu-new", 1))).await?;

    // A reused token is refused with its code, and nothing is written.
    let out2 = f.dir.path().join("device2");
    let err = redeem_bootstrap_token(&f.enroll_url(), ca, token.as_str(), "gpu-new", None, &out2)
        .await
        .err()
        .ok_or("reuse must fail")?;
    assert_eq!(err.code(), Some("token_used"), "{err}");
    assert!(!out2.join("agent-gpu-new.key").exists(), "the unused key is removed");
    // An existing identity is not overwritten.
    let err = redeem_bootstrap_token(&f.enroll_url(), ca, "whatever", "gpu-new", None, &out)
        .await
        .err()
        .ok_or("overwrite must fail")?;
    assert!(matches!(err, EnrollError::Pki(_)), "{err}");
    // A token for another device is reported, not silently used under the wrong name.
    let (other, _) = op.create_bootstrap_token("gpu-other", in_an_hour).await?;
    let err = redeem_bootstrap_token(&f.enroll_url(), ca, other.as_str(), "gpu-mine", None, &out2)
        .await
        .err()
        .ok_or("wrong device must fail")?;
    assert!(matches!(&err, EnrollError::OtherDevice { token_device, .. } if token_device == "gpu-other"), "{err}");
    // An expired token: the server's clock moves two hours on.
    let (late, _) = op.create_bootstrap_token("gpu-late", in_an_hour).await?;
    f.clock_offset.store(2 * 3_600_000, Ordering::SeqCst);
    let err = redeem_bootstrap_token(&f.enroll_url(), ca, late.as_str(), "gpu-late", None, &out2)
        .await
        .err()
        .ok_or("expired must fail")?;
    assert_eq!(err.code(), Some("token_expired"), "{err}");
    // An unknown token.
    let err = redeem_bootstrap_token(&f.enroll_url(), ca, "not-a-token", "gpu-x", None, &out2)
        .await
        .err()
        .ok_or("unknown must fail")?;
    assert_eq!(err.code(), Some("token_unknown"), "{err}");
    // The ledger holds the token's hash only, never the token.
    let ledger = f.ledger.clone();
    let events = tokio::task::spawn_blocking(move || ledger.read(1, ledger.head().seq)).await??;
    let text = serde_json::to_string(&events.iter().map(|e| &e.record).collect::<Vec<_>>())?;
    assert!(!text.contains(token.as_str()));
    f.stop().await
}

/// The DER of the certificate the server presents to a client trusting `ca_pem` (with `identity`).
async fn presented_cert(url: &str, ca_pem: &[u8], identity: (&[u8], &[u8])) -> Result<Vec<u8>, BoxError> {
    let http = hwledger_wire::client_tls::client_builder(ca_pem, Some(identity), WAIT)?.tls_info(true).build()?;
    let resp = http.get(format!("{url}/v1/whoami")).send().await?;
    assert_eq!(resp.status(), 200);
    let info = resp.extensions().get::<reqwest::tls::TlsInfo>().ok_or("no TLS info")?;
    Ok(info.peer_certificate().ok_or("no peer certificate")?.to_vec())
}

#[tokio::test]
async fn a_bring_your_own_server_certificate_replaces_the_auto_issued_one() -> TestResult {
    // A separate CA and a server certificate for the loopback names from it.
    let dir = tempfile::tempdir()?;
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "separate CA");
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate()?;
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?
        .signed_by(&key, &issuer)?;
    let files = hwledger_wire::tls::ServerIdentityFiles {
        cert: dir.path().join("server.crt"),
        key: dir.path().join("server.key"),
    };
    std::fs::write(&files.cert, cert.pem())?;
    std::fs::write(&files.key, key.serialize_pem())?;

    let f = Fixture::start(move |c| c.tls_identity = Some(files)).await?;
    let op_cert = std::fs::read(f.operator_dir.join("operator-root.crt"))?;
    let op_key = std::fs::read(f.operator_dir.join("operator-root.key"))?;
    let presented = presented_cert(&f.api_url(), ca_cert.pem().as_bytes(), (&op_cert, &op_key)).await?;
    assert_eq!(presented, cert.der().to_vec(), "the operator-supplied certificate is presented");
    assert_ne!(
        hwledger_wire::pki::Fingerprint::of_der(&presented),
        f.pki.server_fingerprint(),
        "not the auto-issued one"
    );
    // A client trusting only the fleet CA cannot verify it; the fleet client certificate is still required.
    let fleet_only = Client::from_bundle_dir(&f.api_url(), &f.operator_dir)?;
    assert!(matches!(fleet_only.health().await, Err(ClientError::Transport { .. })));
    let anonymous = Client::new(&f.api_url(), ca_cert.pem().as_bytes(), None, WAIT)?;
    assert!(anonymous.health().await.is_err(), "no client certificate: the handshake fails");
    // The enrollment listener presents it too.
    let enroll = Client::new(&f.enroll_url(), ca_cert.pem().as_bytes(), None, WAIT)?;
    assert_eq!(enroll.health().await?.status, "ok");
    f.stop().await
}
