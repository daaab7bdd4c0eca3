//! Real-TLS tests of the mTLS transport on 127.0.0.1: the handshake matrix (valid, missing,
//! foreign, expired and not-yet-valid client certificates), HTTP/1.1 and HTTP/2, TLS 1.2,
//! `openssl s_client`, the handshake timeout, the connection cap, graceful shutdown, the
//! enrollment (server-auth only) listener, CSR-issued certificates and CA rotation.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use hwledger_wire::client_tls::{build_client, client_builder};
use hwledger_wire::pki::{IssuedCert, Pki, PkiOptions, Role, generate_key_and_csr};
use hwledger_wire::tls::{
    TlsConfigHandle, load_cert_chain_pem, load_private_key_pem, server_config, server_config_from_pki,
};
use hwledger_wire::transport::{PeerInfo, TransportOptions, TransportStats, peer, serve};
use rustls::ServerConfig;
use time::{Duration, OffsetDateTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use warp::Filter;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// Every wait in these tests is bounded by this.
const WAIT: StdDuration = StdDuration::from_secs(10);

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// The trivial application: echoes what the transport says about the peer.
fn echo() -> impl Filter<Extract = (impl warp::Reply,), Error = warp::Rejection> + Clone {
    warp::path("whoami").and(peer()).map(|p: PeerInfo| {
        let id = p.identity().ok();
        warp::reply::json(&serde_json::json!({
            "fingerprint": p.fingerprint.map(|f| f.to_string()),
            "role": id.as_ref().map(|i| i.role.kind()),
            "name": id.as_ref().map(|i| i.role.name().to_owned()),
            "alpn": p.alpn.map(|a| String::from_utf8_lossy(&a).into_owned()),
            "remote_ip": p.remote_addr.ip().to_string(),
        }))
    })
}

struct Server {
    addr: SocketAddr,
    stats: Arc<TransportStats>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), hwledger_wire::transport::TransportError>>,
}

impl Server {
    async fn start(tls: impl Into<TlsConfigHandle>, opts: TransportOptions) -> Result<Server, std::io::Error> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let stats = opts.stats.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, tls.into(), echo(), opts, async move {
            let _ = stopped.await;
        }));
        Ok(Server { addr, stats, stop: Some(stop), task })
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}/whoami", self.addr.port())
    }

    async fn stop(mut self) -> TestResult {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(WAIT, &mut self.task).await???;
        Ok(())
    }
}

/// Polls `cond` every 20 ms until it holds or [`WAIT`] passes.
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) -> TestResult {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > WAIT {
            return Err(format!("timed out waiting for {what}").into());
        }
        tokio::time::sleep(StdDuration::from_millis(20)).await;
    }
    Ok(())
}

fn quick_opts() -> TransportOptions {
    TransportOptions {
        handshake_timeout: StdDuration::from_secs(5),
        shutdown_grace: StdDuration::from_secs(2),
        ..TransportOptions::default()
    }
}

fn mtls_config(pki: &Pki, at: OffsetDateTime) -> Result<Arc<ServerConfig>, Box<dyn std::error::Error + Send + Sync>> {
    Ok(server_config_from_pki(pki, at, true)?)
}

fn client_for(
    ca_pem: &str,
    cert: Option<&IssuedCert>,
) -> Result<reqwest::Client, Box<dyn std::error::Error + Send + Sync>> {
    let identity = match cert {
        Some(c) => Some((c.cert_pem.as_bytes(), c.key_pem.as_deref().ok_or("no key")?.as_bytes())),
        None => None,
    };
    Ok(build_client(ca_pem.as_bytes(), identity, StdDuration::from_secs(5))?)
}

async fn whoami(client: &reqwest::Client, url: &str) -> Result<(reqwest::Version, serde_json::Value), reqwest::Error> {
    let resp = client.get(url).send().await?.error_for_status()?;
    let version = resp.version();
    Ok((version, resp.json().await?))
}

fn new_pki(dir: &std::path::Path) -> Result<Pki, Box<dyn std::error::Error + Send + Sync>> {
    // Created a day in the past so certificates can be issued "in the past" for expiry tests.
    Ok(Pki::init(dir, PkiOptions::default(), now() - Duration::days(1))?)
}

#[tokio::test]
async fn handshake_matrix() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let pki = new_pki(&tmp.path().join("fleet"))?;
    let other = new_pki(&tmp.path().join("other"))?;
    let t = now();
    let ca = pki.ca_bundle_pem(t);
    let server = Server::start(mtls_config(&pki, t)?, quick_opts()).await?;
    let url = server.url();

    // Valid agent certificate: served over HTTP/2 (ALPN), peer identity visible.
    let agent = pki.issue(&Role::agent("gpu-1")?, Duration::days(1), t)?;
    let (version, body) = whoami(&client_for(&ca, Some(&agent))?, &url).await?;
    assert_eq!(version, reqwest::Version::HTTP_2);
    assert_eq!(body["fingerprint"], agent.fingerprint.to_string());
    assert_eq!(body["role"], "agent");
    assert_eq!(body["name"], "gpu-1");
    assert_eq!(body["alpn"], "h2");
    assert_eq!(body["remote_ip"], "127.0.0.1");

    // The same over HTTP/1.1.
    let operator = pki.issue(&Role::operator("alice")?, Duration::days(1), t)?;
    let h1 = client_builder(
        ca.as_bytes(),
        Some((operator.cert_pem.as_bytes(), operator.key_pem.as_deref().ok_or("no key")?.as_bytes())),
        StdDuration::from_secs(5),
    )?
    .http1_only()
    .build()?;
    let (version, body) = whoami(&h1, &url).await?;
    assert_eq!(version, reqwest::Version::HTTP_11);
    assert_eq!(body["alpn"], "http/1.1");
    assert_eq!(body["role"], "operator");
    assert_eq!(body["fingerprint"], operator.fingerprint.to_string());

    // TLS 1.2 is accepted too.
    let tls12 = client_builder(
        ca.as_bytes(),
        Some((agent.cert_pem.as_bytes(), agent.key_pem.as_deref().ok_or("no key")?.as_bytes())),
        StdDuration::from_secs(5),
    )?
    .tls_version_max(reqwest::tls::Version::TLS_1_2)
    .build()?;
    let (_, body) = whoami(&tls12, &url).await?;
    assert_eq!(body["fingerprint"], agent.fingerprint.to_string());

    let failures_before = server.stats.snapshot().handshake_failures;
    let mut expected_failures = failures_before;
    let refused: Vec<(&str, Option<IssuedCert>)> = vec![
        ("no client certificate", None),
        ("certificate from another CA", Some(other.issue(&Role::agent("gpu-1")?, Duration::days(1), t)?)),
        ("expired certificate", Some(pki.issue(&Role::agent("gpu-1")?, Duration::hours(1), t - Duration::hours(20))?)),
        (
            "not-yet-valid certificate",
            Some(pki.issue(&Role::agent("gpu-1")?, Duration::days(30), t + Duration::days(2))?),
        ),
    ];
    for (case, cert) in &refused {
        let client = client_for(&ca, cert.as_ref())?;
        let result = whoami(&client, &url).await;
        assert!(result.is_err(), "{case}: was served: {result:?}");
        expected_failures += 1;
        let stats = server.stats.clone();
        wait_until(case, || stats.snapshot().handshake_failures >= expected_failures).await?;
    }
    assert_eq!(server.stats.snapshot().handshake_failures, expected_failures);

    // A client that does not trust the fleet CA refuses the server.
    let stranger = client_for(&other.ca_bundle_pem(t), Some(&agent))?;
    assert!(whoami(&stranger, &url).await.is_err());

    server.stop().await
}

/// Runs `openssl s_client` against the server, sending one HTTP/1.1 request; returns stdout.
async fn openssl_get(
    port: u16,
    ca_file: &std::path::Path,
    identity: Option<(&std::path::Path, &std::path::Path)>,
) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    let mut cmd = tokio::process::Command::new("openssl");
    cmd.arg("s_client")
        .arg("-connect")
        .arg(format!("127.0.0.1:{port}"))
        .arg("-servername")
        .arg("localhost")
        .arg("-CAfile")
        .arg(ca_file)
        .arg("-verify_return_error")
        .arg("-alpn")
        .arg("http/1.1")
        .arg("-quiet");
    if let Some((cert, key)) = identity {
        cmd.arg("-cert").arg(cert).arg("-key").arg(key);
    }
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| {
        format!(
            "cannot run `openssl` ({e}); install the OpenSSL command-line tool \
             (e.g. `apt-get install openssl`) to run this test"
        )
    })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(b"GET /whoami HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await?;
        // stdin stays open until dropped; -quiet implies -ign_eof, so s_client waits for the
        // server to close after the response.
        drop(stdin);
    }
    let out =
        tokio::time::timeout(WAIT, child.wait_with_output()).await.map_err(|_| "openssl s_client did not finish")??;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned() + "\n--- stderr ---\n" + &String::from_utf8_lossy(&out.stderr))
}

#[tokio::test]
async fn openssl_s_client_with_and_without_a_client_certificate() -> TestResult {
    let found =
        std::process::Command::new("openssl").arg("version").output().map(|o| o.status.success()).unwrap_or(false);
    assert!(
        found,
        "the `openssl` binary is required by this test and was not found on PATH; \
         install it (e.g. `apt-get install openssl`)"
    );
    let tmp = tempfile::tempdir()?;
    let pki = new_pki(&tmp.path().join("fleet"))?;
    let t = now();
    let agent = pki.issue(&Role::agent("ossl-1")?, Duration::days(1), t)?;
    let paths = hwledger_wire::pki::write_bundle(&tmp.path().join("creds"), &agent, &pki.ca_bundle_pem(t))?;
    let key = paths.key.clone().ok_or("no key written")?;
    let server = Server::start(mtls_config(&pki, t)?, quick_opts()).await?;

    let out = openssl_get(server.addr.port(), &paths.ca, Some((&paths.cert, &key))).await?;
    assert!(out.contains("HTTP/1.1 200"), "{out}");
    assert!(out.contains(&agent.fingerprint.to_string()), "{out}");
    assert!(out.contains("\"role\":\"agent\""), "{out}");

    let failures = server.stats.snapshot().handshake_failures;
    let out = openssl_get(server.addr.port(), &paths.ca, None).await?;
    assert!(!out.contains("HTTP/1.1 200"), "{out}");
    let stats = server.stats.clone();
    wait_until("handshake failure counted", || stats.snapshot().handshake_failures > failures).await?;
    server.stop().await
}

#[tokio::test]
async fn silent_connection_is_dropped_after_the_handshake_timeout() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let pki = new_pki(tmp.path())?;
    let t = now();
    let opts = TransportOptions { handshake_timeout: StdDuration::from_millis(500), ..quick_opts() };
    let server = Server::start(mtls_config(&pki, t)?, opts).await?;

    let started = Instant::now();
    let mut silent = TcpStream::connect(server.addr).await?;
    // A good client is served while the silent one holds its connection.
    let agent = pki.issue(&Role::agent("a")?, Duration::days(1), t)?;
    let (_, body) = whoami(&client_for(&pki.ca_bundle_pem(t), Some(&agent))?, &server.url()).await?;
    assert_eq!(body["name"], "a");

    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(WAIT, silent.read(&mut buf)).await?;
    let elapsed = started.elapsed();
    assert!(matches!(n, Ok(0) | Err(_)), "silent connection got data: {n:?}");
    assert!(elapsed >= StdDuration::from_millis(400), "closed too early: {elapsed:?}");
    assert_eq!(server.stats.snapshot().handshake_timeouts, 1);
    server.stop().await
}

#[tokio::test]
async fn connections_past_the_cap_are_closed() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let pki = new_pki(tmp.path())?;
    let t = now();
    let opts = TransportOptions { max_connections: 2, handshake_timeout: StdDuration::from_secs(30), ..quick_opts() };
    let server = Server::start(mtls_config(&pki, t)?, opts).await?;
    let stats = server.stats.clone();
    let agent = pki.issue(&Role::agent("a")?, Duration::days(1), t)?;
    let ca = pki.ca_bundle_pem(t);

    let hold_1 = TcpStream::connect(server.addr).await?;
    let hold_2 = TcpStream::connect(server.addr).await?;
    wait_until("two connections open", || stats.snapshot().open_connections == 2).await?;

    let mut extra = TcpStream::connect(server.addr).await?;
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(WAIT, extra.read(&mut buf)).await?;
    assert!(matches!(n, Ok(0) | Err(_)), "over-cap connection got data: {n:?}");
    assert_eq!(stats.snapshot().rejected_over_cap, 1);
    assert!(whoami(&client_for(&ca, Some(&agent))?, &server.url()).await.is_err());

    drop(hold_1);
    drop(hold_2);
    wait_until("slots released", || stats.snapshot().open_connections == 0).await?;
    let (_, body) = whoami(&client_for(&ca, Some(&agent))?, &server.url()).await?;
    assert_eq!(body["fingerprint"], agent.fingerprint.to_string());
    server.stop().await
}

#[tokio::test]
async fn shutdown_is_graceful_and_bounded() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let pki = new_pki(tmp.path())?;
    let t = now();
    let server = Server::start(mtls_config(&pki, t)?, quick_opts()).await?;
    let agent = pki.issue(&Role::agent("a")?, Duration::days(1), t)?;
    let client = client_for(&pki.ca_bundle_pem(t), Some(&agent))?;
    // The client keeps its HTTP/2 connection open in its pool.
    whoami(&client, &server.url()).await?;
    assert_eq!(server.stats.snapshot().open_connections, 1);
    // An idle raw connection mid-handshake must not hold shutdown up past the grace period.
    let _idle = TcpStream::connect(server.addr).await?;
    let stats = server.stats.clone();
    let url = server.url();
    let started = Instant::now();
    server.stop().await?;
    assert!(started.elapsed() < StdDuration::from_secs(4), "{:?}", started.elapsed());
    assert_eq!(stats.snapshot().open_connections, 0);
    assert!(whoami(&client, &url).await.is_err());
    Ok(())
}

#[tokio::test]
async fn enrollment_listener_needs_no_client_certificate() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let pki = new_pki(tmp.path())?;
    let t = now();
    // Bring-your-own style: the server certificate and key loaded from PEM files.
    let chain = load_cert_chain_pem(&pki.server_cert_path())?;
    let key = load_private_key_pem(&pki.dir().join("server.key"))?;
    let config = server_config(&[], chain, key, false)?;
    let server = Server::start(config, quick_opts()).await?;
    let (_, body) = whoami(&client_for(&pki.ca_bundle_pem(t), None)?, &server.url()).await?;
    assert_eq!(body["fingerprint"], serde_json::Value::Null);
    assert_eq!(body["role"], serde_json::Value::Null);
    server.stop().await
}

#[tokio::test]
async fn csr_issued_certificate_works_with_the_role_the_server_chose() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let pki = new_pki(tmp.path())?;
    let t = now();
    // Device side: key and CSR (asking, in vain, to be an operator).
    let (key_pem, csr_pem) = generate_key_and_csr(&Role::operator("root")?)?;
    // Server side: signs as agent "dev-42".
    let signed = pki.sign_csr(&csr_pem, &Role::agent("dev-42")?, Duration::days(1), t)?;
    let server = Server::start(mtls_config(&pki, t)?, quick_opts()).await?;
    let client = build_client(
        pki.ca_bundle_pem(t).as_bytes(),
        Some((signed.cert_pem.as_bytes(), key_pem.as_bytes())),
        StdDuration::from_secs(5),
    )?;
    let (_, body) = whoami(&client, &server.url()).await?;
    assert_eq!(body["role"], "agent");
    assert_eq!(body["name"], "dev-42");
    assert_eq!(body["fingerprint"], signed.fingerprint.to_string());
    server.stop().await
}

#[tokio::test]
async fn rotation_overlap_then_old_ca_refused() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let mut pki = new_pki(tmp.path())?;
    let t = now();
    let old_bundle = pki.ca_bundle_pem(t);
    let old_cert = pki.issue(&Role::agent("old")?, Duration::days(30), t)?;
    pki.rotate(Duration::hours(1), t)?;
    let new_cert = pki.issue(&Role::agent("new")?, Duration::days(30), t)?;
    assert_eq!(new_cert.ca_generation, 2);

    // During the overlap both certificates pass.
    let handle = TlsConfigHandle::new(mtls_config(&pki, t)?);
    let server = Server::start(handle.clone(), quick_opts()).await?;
    let bundle = pki.ca_bundle_pem(t);
    for cert in [&old_cert, &new_cert] {
        let (_, body) = whoami(&client_for(&bundle, Some(cert))?, &server.url()).await?;
        assert_eq!(body["fingerprint"], cert.fingerprint.to_string());
    }
    // An agent that still has only the old CA bundle can verify the server (cross certificate).
    let (_, body) = whoami(&client_for(&old_bundle, Some(&old_cert))?, &server.url()).await?;
    assert_eq!(body["name"], "old");

    // After the overlap, the old CA is out of the trust set: its certificate fails.
    let later = t + Duration::hours(2);
    handle.replace(mtls_config(&pki, later)?);
    let later_bundle = pki.ca_bundle_pem(later);
    assert_eq!(later_bundle.matches("BEGIN CERTIFICATE").count(), 1);
    assert!(whoami(&client_for(&later_bundle, Some(&old_cert))?, &server.url()).await.is_err());
    let (_, body) = whoami(&client_for(&later_bundle, Some(&new_cert))?, &server.url()).await?;
    assert_eq!(body["name"], "new");
    server.stop().await
}
