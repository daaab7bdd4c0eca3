//! W5 of `hwledger bench`: 64 concurrent mTLS clients on loopback, each on its own kept-alive connection with
//! its own agent certificate, posting the standard heartbeats through the real server stack in-process (TLS
//! handshake, per-request pin check, body limits, JSON, durable group commit, the projections following the
//! log as in `hwledger serve`) with the typed client, for a fixed count.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use hwledger_engine::Submission;
use hwledger_projections::{Projector, ProjectorOptions};
use hwledger_wire::api::CommandStatus;
use hwledger_wire::client::{Client, ClientOptions};
use hwledger_wire::pki::{Pki, PkiOptions, Role};
use hwledger_wire::server::{Server, ServerConfig, pin_identity};

use super::reads::ProjectorReads;

/// Concurrent clients (and agent identities, one device each).
pub const CLIENTS: u64 = 64;

/// One W5 run: `(commands/s, p50 ms, p99 ms)` over `n` heartbeats in a fresh data directory `dir`, over
/// HTTP/1.1 keep-alive (`http1`) or HTTP/2.
pub fn w5(
    dir: &Path,
    n: u64,
    http1: bool,
    setup: impl Fn(&Path) -> anyhow::Result<hwledger_engine::Ledger>,
) -> anyhow::Result<(f64, f64, f64)> {
    let ledger = Arc::new(setup(&dir.join("ledger"))?);
    let now = time::OffsetDateTime::now_utc();
    let pki = Arc::new(Pki::init(&dir.join("pki"), PkiOptions::default(), now).context("initialise PKI")?);
    let ca_pem = pki.ca_bundle_pem(now);
    let mut identities = Vec::new();
    for c in 0..CLIENTS {
        let cert = pki.issue(&Role::agent(&format!("dev-{c:03}"))?, time::Duration::days(1), now)?;
        pin_identity(&ledger, &cert, now).context("pin a benchmark agent")?;
        let key = cert.key_pem.clone().context("issued certificate without a key")?;
        identities.push((cert.cert_pem.clone(), key));
    }
    // Per client: its device's share of the standard heartbeats, in order.
    let per = n / CLIENTS;
    let work: Vec<Vec<Submission>> = (0..CLIENTS)
        .map(|c| {
            super::bench::heartbeats(c * per, per, 500 + c)
                .into_iter()
                .map(|(mut sub, _)| {
                    if let hwledger_engine::Command::RecordTelemetry { device_id, .. } = &mut sub.command {
                        *device_id = format!("dev-{c:03}");
                    }
                    sub
                })
                .collect()
        })
        .collect();

    let projector = Arc::new(Projector::open(ledger.store(), ProjectorOptions::default())?);
    let stop = Arc::new(AtomicBool::new(false));
    let follower = {
        let (projector, ledger, stop) = (projector.clone(), ledger.clone(), stop.clone());
        std::thread::Builder::new().name("bench-projector".into()).spawn(move || {
            if let Err(e) = projector.follow(&ledger, &stop) {
                tracing::error!("projections stopped following the log: {e}");
            }
        })?
    };

    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("start runtime")?;
    let result = rt.block_on(async {
        let mut config = ServerConfig::new("127.0.0.1:0".parse()?, "127.0.0.1:0".parse()?);
        config.shutdown_grace = Duration::from_secs(5);
        let reads: Arc<dyn hwledger_wire::server::ReadModels> = Arc::new(ProjectorReads { projector });
        let server = Server::bind(config, ledger.clone(), pki.clone(), Some(reads)).await?;
        let url = format!("https://127.0.0.1:{}", server.local_addrs().api.port());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(server.serve(async move {
            let _ = stop_rx.await;
        }));
        // Connect and authenticate every client before the clock starts: W5 measures kept-alive connections.
        let mut clients = Vec::new();
        for (cert, key) in &identities {
            let options = ClientOptions { timeout: Duration::from_secs(30), http1_only: http1 };
            let identity = Some((cert.as_bytes(), key.as_bytes()));
            let client = Client::with_options(&url, ca_pem.as_bytes(), identity, options)?;
            client.whoami().await.context("warm up a benchmark client")?;
            clients.push(client);
        }
        let start = Instant::now();
        let tasks: Vec<_> = clients
            .into_iter()
            .zip(work)
            .map(|(client, subs)| {
                tokio::spawn(async move {
                    let mut lat = Vec::with_capacity(subs.len());
                    for sub in subs {
                        let t = Instant::now();
                        let answer = client.submit(&sub).await?;
                        lat.push(t.elapsed().as_secs_f64() * 1e3);
                        if answer.status != CommandStatus::Accepted {
                            bail!("W5: {} was not accepted: {:?}", sub.command_id, answer.status);
                        }
                    }
                    Ok::<Vec<f64>, anyhow::Error>(lat)
                })
            })
            .collect();
        let mut lat = Vec::new();
        for t in tasks {
            lat.extend(t.await.context("W5 client task")??);
        }
        let elapsed = start.elapsed().as_secs_f64();
        let _ = stop_tx.send(());
        serving.await.context("W5 server task")??;
        Ok::<_, anyhow::Error>((lat, elapsed))
    });
    stop.store(true, Ordering::SeqCst);
    let _ = follower.join();
    let (mut lat, elapsed) = result?;
    ledger.close()?;
    let count = per * CLIENTS;
    lat.sort_by(f64::total_cmp);
    Ok((count as f64 / elapsed, super::bench::percentile(&lat, 0.5), super::bench::percentile(&lat, 0.99)))
}
