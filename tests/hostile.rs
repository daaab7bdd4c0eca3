//! Hostile clients against the real `hwledger serve` on loopback, each attack bounded in count and time:
//! TLS-level slowloris (connections that never finish the handshake), HTTP-level slowloris after the handshake
//! (silent peers, a dribbled HTTP/1.1 header, half an HTTP/2 preface), oversized and lying bodies, deeply
//! nested JSON, invalid UTF-8, huge headers, a connection flood past the cap, and SSE clients that never read.
//!
//! Throughout, a well-behaved operator on its own established connection posts a heartbeat and reads
//! `/health` every 100 ms; every one of its requests must succeed (within a generous 10 s), and its latency
//! per attack is printed. After each attack the server must still be running, its resident memory
//! (`VmRSS` from /proc) must stay within a bound, and the attack's connections must have been closed by the
//! server where the attack holds them open. The server runs with small limits (cap 96, 2 s timeouts) so the
//! test is quick; the defaults are larger.
//!
//! Figures: `RELIABILITY hostile.<attack>.*` lines (run with `--nocapture`).

#[path = "stress/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use serde_json::{Value, json};
use support::{Server, figure, heartbeat, operator_bundle, operator_client, percentiles, submit_until_answered};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

const CAP: usize = 96;
const TIMEOUT_MS: u64 = 2000;
/// Largest growth of the server's resident memory one attack may cause.
const RSS_BOUND_KB: u64 = 160 * 1024;
/// Longest any request of the well-behaved client may take.
const SERVED_WITHIN: Duration = Duration::from_secs(10);

/// The well-behaved client's samples, per attack.
#[derive(Default)]
struct Probe {
    phase: String,
    samples: BTreeMap<String, Vec<f64>>,
    failures: Vec<String>,
}

async fn good_client(data: std::path::PathBuf, base: String, probe: Arc<Mutex<Probe>>, stop: Arc<AtomicBool>) {
    let client = operator_client(&data, SERVED_WITHIN);
    let mut n = 0u64;
    while !stop.load(Ordering::Acquire) {
        n += 1;
        let t = Instant::now();
        let hb = client.post(format!("{base}/v1/commands")).json(&heartbeat(&format!("good-{n}"), "dev-0", n)).send();
        let hb = tokio::time::timeout(SERVED_WITHIN, hb).await;
        let health = tokio::time::timeout(SERVED_WITHIN, client.get(format!("{base}/health")).send()).await;
        let ms = t.elapsed().as_secs_f64() * 1000.0 / 2.0;
        let ok = |r: &Result<Result<reqwest::Response, reqwest::Error>, _>| matches!(r, Ok(Ok(resp)) if resp.status().is_success());
        let (hb_ok, health_ok) = (ok(&hb), ok(&health));
        if let Ok(mut p) = probe.lock() {
            let phase = p.phase.clone();
            if hb_ok && health_ok {
                p.samples.entry(phase).or_default().push(ms);
            } else {
                p.failures.push(format!("{phase}: heartbeat {hb:?}, health {health:?}"));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Raw TLS client pieces: the operator's identity, trusted CA, and a connector with a given ALPN.
struct Raw {
    addr: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
}

impl Raw {
    fn new(data: &std::path::Path, addr: std::net::SocketAddr, alpn: &[&[u8]]) -> Raw {
        let (ca, cert, key) = operator_bundle(data);
        let mut roots = rustls::RootCertStore::empty();
        for c in hwledger_wire::tls::parse_certs_pem(&ca, "ca").expect("CA") {
            roots.add(c).expect("add root");
        }
        let chain = hwledger_wire::tls::parse_certs_pem(&cert, "cert").expect("cert");
        let key = hwledger_wire::tls::parse_private_key_pem(&key, "key").expect("key");
        let mut config = rustls::ClientConfig::builder_with_provider(hwledger_wire::tls::provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .expect("client auth");
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Raw { addr, config: Arc::new(config) }
    }

    async fn connect(&self) -> std::io::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(self.addr).await?;
        let name = ServerName::IpAddress(self.addr.ip().into());
        tokio::time::timeout(Duration::from_secs(10), TlsConnector::from(self.config.clone()).connect(name, tcp))
            .await
            .map_err(|_| std::io::Error::other("handshake timed out"))?
    }
}

/// Whether the peer has closed `s`: a read returns EOF or an error within `wait`.
async fn closed_by_peer<S: tokio::io::AsyncRead + Unpin>(s: &mut S, wait: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // Something was sent (an error response): keep reading until EOF.
            Ok(Ok(_)) => {}
        }
    }
}

/// A raw HTTP/1.1 request over TLS; returns the status line's code (or `None` if the server closed first).
async fn raw_http1(raw: &Raw, request: &[u8]) -> Option<u16> {
    let mut s = raw.connect().await.ok()?;
    if s.write_all(request).await.is_err() {
        // The server may answer and close before it read everything.
    }
    let mut resp = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => {
                resp.extend_from_slice(&buf[..n]);
                if resp.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
        }
    }
    let text = String::from_utf8_lossy(&resp);
    text.strip_prefix("HTTP/1.1 ").and_then(|r| r.get(..3)).and_then(|c| c.parse().ok())
}

/// A counter of the API listener from `/metrics`.
async fn metric(client: &reqwest::Client, base: &str, name: &str) -> u64 {
    let text = client.get(format!("{base}/metrics")).send().await.expect("metrics").text().await.expect("metrics text");
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains("listener=\"api\""))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .map(|v| v as u64)
        .sum()
}

struct Attack<'a> {
    server: &'a Server,
    probe: &'a Arc<Mutex<Probe>>,
    name: &'static str,
    rss_before: u64,
}

impl<'a> Attack<'a> {
    fn begin(server: &'a Server, probe: &'a Arc<Mutex<Probe>>, name: &'static str) -> Attack<'a> {
        if let Ok(mut p) = probe.lock() {
            p.phase = name.to_owned();
        }
        let rss_before = server.rss_kb().expect("server RSS");
        println!("attack {name}: server RSS {rss_before} kB before");
        Attack { server, probe, name, rss_before }
    }

    /// Checks the server survived with bounded memory, that the well-behaved client was served during the
    /// attack, and prints the figures of this attack.
    async fn end(self) {
        // Give the well-behaved client time for a few requests inside this attack's window (bounded).
        for _ in 0..100 {
            let n = self.probe.lock().map(|p| p.samples.get(self.name).map_or(0, Vec::len)).unwrap_or(0);
            if n >= 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(self.server.alive(), "{}: the server died:\n{}", self.name, self.server.log());
        let rss = self.server.rss_kb().expect("server RSS after the attack");
        let grew = rss.saturating_sub(self.rss_before);
        assert!(grew < RSS_BOUND_KB, "{}: resident memory grew by {grew} kB (bound {RSS_BOUND_KB})", self.name);
        let mut p = self.probe.lock().expect("probe");
        let mut samples = p.samples.remove(self.name).unwrap_or_default();
        assert!(!samples.is_empty(), "{}: the well-behaved client was not served during the attack", self.name);
        let (p50, p99, max) = percentiles(&mut samples);
        figure(&format!("hostile.{}.good_client_p50_ms", self.name), format!("{p50:.1}"));
        figure(&format!("hostile.{}.good_client_p99_ms", self.name), format!("{p99:.1}"));
        figure(&format!("hostile.{}.good_client_max_ms", self.name), format!("{max:.1}"));
        figure(&format!("hostile.{}.good_client_requests", self.name), samples.len() * 2);
        figure(&format!("hostile.{}.rss_growth_kb", self.name), grew);
        println!(
            "attack {}: survived; RSS {rss} kB (+{grew}); good client p50 {p50:.1} ms, p99 {p99:.1} ms",
            self.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_survives_hostile_clients_and_keeps_serving() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "max_connections = {CAP}\nhandshake_timeout_ms = {TIMEOUT_MS}\nheader_read_timeout_ms = {TIMEOUT_MS}\n"
        ),
    )
    .expect("write config");
    let mut server = Server::start(&data, Some(&config));
    let base = server.url("");
    let admin = operator_client(&data, SERVED_WITHIN);
    let a = submit_until_answered(&admin, &base, &support::enroll_submission("dev-0"), 100).await;
    assert!(matches!(a, support::Answer::Accepted(_)), "{a:?}");

    let probe = Arc::new(Mutex::new(Probe { phase: "baseline".into(), ..Probe::default() }));
    let stop = Arc::new(AtomicBool::new(false));
    let good = tokio::spawn(good_client(data.clone(), base.clone(), probe.clone(), stop.clone()));
    let h1 = Raw::new(&data, server.api, &[b"http/1.1"]);
    let h2 = Raw::new(&data, server.api, &[b"h2"]);
    let timeout = Duration::from_millis(TIMEOUT_MS);

    // Baseline.
    let attack = Attack::begin(&server, &probe, "baseline");
    tokio::time::sleep(Duration::from_secs(2)).await;
    attack.end().await;

    // 1. TLS slowloris: connections that send nothing, or a TLS record header and then one byte at a time.
    let attack = Attack::begin(&server, &probe, "tls_slowloris");
    let before = metric(&admin, &base, "hwledger_tls_handshake_timeouts").await;
    let mut socks = Vec::new();
    for i in 0..(CAP / 2) {
        let mut s = TcpStream::connect(server.api).await.expect("connect");
        if i % 2 == 1 {
            let _ = s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00]).await;
        }
        socks.push(s);
    }
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        for s in socks.iter_mut().skip(1).step_by(2) {
            let _ = s.write_all(&[0x01]).await;
        }
    }
    let mut closed = 0;
    for s in &mut socks {
        if closed_by_peer(s, timeout * 2).await {
            closed += 1;
        }
    }
    let timeouts = metric(&admin, &base, "hwledger_tls_handshake_timeouts").await - before;
    assert_eq!(closed, socks.len(), "every stalled handshake is closed by the server");
    assert!(timeouts >= socks.len() as u64, "handshake timeouts counted: {timeouts}");
    figure("hostile.tls_slowloris.connections", socks.len());
    figure("hostile.tls_slowloris.closed_by_server", closed);
    drop(socks);
    attack.end().await;

    // 2. HTTP slowloris after the handshake: silent peers (HTTP/1.1 and HTTP/2 ALPN), half an HTTP/2 preface,
    //    and an HTTP/1.1 header dribbled one byte every 300 ms. All must be closed after the header timeout.
    let attack = Attack::begin(&server, &probe, "http_slowloris");
    let before = metric(&admin, &base, "hwledger_first_request_timeouts").await;
    let mut conns = Vec::new();
    for i in 0..40 {
        let raw = if i % 2 == 0 { &h1 } else { &h2 };
        let mut s = raw.connect().await.expect("TLS handshake");
        match i % 4 {
            0 | 1 => {}
            2 => s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").await.expect("write"),
            _ => s.write_all(b"PRI * HTTP/2.0\r\n").await.expect("write"),
        }
        conns.push((i, s));
    }
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        for (i, s) in conns.iter_mut() {
            if *i % 4 == 2 {
                let _ = s.write_all(b"X").await;
            }
        }
    }
    let mut closed = 0;
    for (i, s) in &mut conns {
        if closed_by_peer(s, timeout * 3).await {
            closed += 1;
        } else {
            println!("http_slowloris: connection {i} (kind {}) still open", *i % 4);
        }
    }
    let first_request_timeouts = metric(&admin, &base, "hwledger_first_request_timeouts").await - before;
    assert_eq!(closed, conns.len(), "every stalled connection is closed by the server after the header timeout");
    figure("hostile.http_slowloris.connections", conns.len());
    figure("hostile.http_slowloris.closed_by_server", closed);
    figure("hostile.http_slowloris.first_request_timeouts", first_request_timeouts);
    drop(conns);
    attack.end().await;

    // 3. Oversized bodies: declared too large (refused before reading), streamed without a length (cut off at
    //    the limit), and a Content-Length that lies.
    let attack = Attack::begin(&server, &probe, "oversized_bodies");
    let big = vec![b'x'; 4 << 20];
    let mut statuses = BTreeMap::<String, u64>::new();
    for _ in 0..10 {
        let r = admin
            .post(format!("{base}/v1/commands"))
            .header("content-type", "application/json")
            .body(big.clone())
            .send()
            .await;
        *statuses.entry(r.map(|r| r.status().as_u16().to_string()).unwrap_or_else(|_| "closed".into())).or_default() +=
            1;
    }
    for _ in 0..5 {
        let chunks = futures_util::stream::iter((0..256).map(|_| Ok::<_, std::io::Error>(vec![b' '; 64 * 1024])));
        let r = admin
            .post(format!("{base}/v1/commands/batch"))
            .header("content-type", "application/json")
            .body(reqwest::Body::wrap_stream(chunks))
            .send()
            .await;
        *statuses.entry(r.map(|r| r.status().as_u16().to_string()).unwrap_or_else(|_| "closed".into())).or_default() +=
            1;
    }
    assert!(statuses.keys().all(|k| k == "413" || k == "closed"), "oversized bodies: {statuses:?}");
    assert!(statuses.get("413").copied().unwrap_or(0) >= 10, "oversized bodies are answered 413: {statuses:?}");
    let lying = raw_http1(
        &h1,
        b"POST /v1/commands HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\n{\"command_id\":\"a\",\"command\":{}}",
    )
    .await;
    assert_eq!(lying, Some(400), "a body cut short by its Content-Length is malformed JSON");
    figure("hostile.oversized_bodies.requests", 16);
    attack.end().await;

    // 4. Deeply nested JSON and invalid UTF-8: 400 malformed_json, never a crash (serde_json's depth limit).
    let attack = Attack::begin(&server, &probe, "nested_json_and_bad_utf8");
    let deep_array = format!("{}{}", "[".repeat(30_000), "]".repeat(30_000));
    let deep_object = format!("{{\"command_id\":{}1{}}}", "{\"a\":".repeat(10_000), "}".repeat(10_000));
    let mut bad_utf8 = br#"{"command_id":"x"#.to_vec();
    bad_utf8.extend_from_slice(&[0xff, 0xfe, 0xc3]);
    bad_utf8.extend_from_slice(br#"","command":{"type":"start_job","job_id":"j"}}"#);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("/v1/commands", deep_array.clone().into_bytes()),
        ("/v1/commands/batch", deep_array.into_bytes()),
        ("/v1/commands", deep_object.into_bytes()),
        ("/v1/commands", bad_utf8.clone()),
        ("/v1/commands/batch", [b"[".as_slice(), &bad_utf8, b"]"].concat()),
    ];
    for (path, body) in &cases {
        let r = admin
            .post(format!("{base}{path}"))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .expect("answered");
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!((status, v["code"].as_str()), (400, Some("malformed_json")), "{path}: {v}");
    }
    // Invalid UTF-8 in a header value and in the path: answered (any 4xx) or closed, never a crash.
    let weird = raw_http1(&h1, b"GET /v1/devices HTTP/1.1\r\nHost: x\r\nX-Bad: \xff\xfe\r\n\r\n").await;
    let weird_path = raw_http1(&h1, b"GET /v1/devices/%ff%fe HTTP/1.1\r\nHost: x\r\n\r\n").await;
    println!("bad UTF-8 header -> {weird:?}, bad UTF-8 path -> {weird_path:?}");
    assert!(weird.is_none_or(|s| s < 500) && weird_path.is_none_or(|s| s < 500));
    figure("hostile.nested_json_and_bad_utf8.requests", cases.len() + 2);
    attack.end().await;

    // 5. Huge headers: one 1 MiB header value, and 500 headers.
    let attack = Attack::begin(&server, &probe, "huge_headers");
    let mut one_big = b"GET /v1/devices HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    one_big.extend(std::iter::repeat_n(b'a', 1 << 20));
    one_big.extend_from_slice(b"\r\n\r\n");
    let mut many = b"GET /v1/devices HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..500 {
        many.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    for req in [&one_big, &many] {
        let status = raw_http1(&h1, req).await;
        assert!(status.is_none_or(|s| s == 431 || s == 400), "huge headers answered {status:?}");
    }
    let r = admin.get(format!("{base}/v1/devices")).header("x-big", "a".repeat(200_000)).send().await;
    println!("HTTP/2 request with a 200 kB header: {:?}", r.as_ref().map(|r| r.status()));
    figure("hostile.huge_headers.requests", 3);
    attack.end().await;

    // 6. A connection flood past the cap: 4 x CAP connections at once, held, then dropped.
    let attack = Attack::begin(&server, &probe, "connection_flood");
    let before = metric(&admin, &base, "hwledger_connections_rejected_over_cap").await;
    let mut flood = Vec::new();
    for _ in 0..(CAP * 4) {
        if let Ok(s) = TcpStream::connect(server.api).await {
            flood.push(s);
        }
    }
    let fds = server.open_fds().unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rejected = metric(&admin, &base, "hwledger_connections_rejected_over_cap").await - before;
    assert!(rejected > 0, "connections past the cap are closed at once");
    assert!(fds < CAP * 2 + 64, "the server holds {fds} descriptors: the cap does not bound them");
    drop(flood);
    // A new connection is served again once the flood has gone (handshaking slots time out).
    let fresh = operator_client(&data, SERVED_WITHIN);
    let mut served_after = None;
    for _ in 0..100 {
        if let Ok(r) = fresh.get(format!("{base}/health")).send().await {
            if r.status().is_success() {
                served_after = Some(());
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served_after.is_some(), "a new client is served again after the flood");
    figure("hostile.connection_flood.connections", CAP * 4);
    figure("hostile.connection_flood.rejected_over_cap", rejected);
    figure("hostile.connection_flood.server_fds", fds);
    attack.end().await;

    // 7. SSE clients that never read, while 20 000 events are appended.
    let attack = Attack::begin(&server, &probe, "sse_never_read");
    let mut readers = Vec::new();
    for _ in 0..24 {
        let mut s = h1.connect().await.expect("TLS handshake");
        s.write_all(b"GET /v1/events/stream?from=1 HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
            .await
            .expect("write");
        readers.push(s);
    }
    let mut n = 0u64;
    for b in 0..50u64 {
        let items: Vec<Value> = (0..400)
            .map(|i| {
                n += 1;
                let id = format!("sse-{b}-{i}");
                json!({"command_id": id, "command": {"type": "record_telemetry", "device_id": "dev-0",
                       "sampled_at": 1_800_000_000_000i64 + i64::try_from(n).unwrap_or(0), "gpus": []}})
            })
            .collect();
        // Batches of 400 compact heartbeats fit the 64 KiB body limit.
        let r = admin.post(format!("{base}/v1/commands/batch")).json(&items).send().await.expect("batch");
        assert!(r.status().is_success(), "batch {b}: {}", r.status());
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    figure("hostile.sse_never_read.clients", readers.len());
    figure("hostile.sse_never_read.events_appended", n);
    attack.end().await;
    drop(readers);

    stop.store(true, Ordering::Release);
    let _ = tokio::time::timeout(Duration::from_secs(20), good).await;
    let failures = probe.lock().map(|p| p.failures.clone()).unwrap_or_default();
    assert!(failures.is_empty(), "the well-behaved client was refused or timed out: {failures:?}");
    assert_eq!(server.interrupt(), Some(0), "clean shutdown after the attacks:\n{}", server.log());
}
