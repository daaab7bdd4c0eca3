//! `hwledger serve`: the ledger, its projections and the mTLS front door, until Ctrl-C.
//!
//! First run on an empty data directory: creates the fleet CA and a server certificate for localhost
//! (`<data>/pki`), an operator bundle (`<data>/operator`, pinned in the ledger) and the log key, then prints
//! the curl command that lists devices. Later runs reuse all of it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use clap::Args;
use hwledger_projections::{Projector, ProjectorOptions};
use hwledger_wire::pki::{Pki, PkiOptions};
use hwledger_wire::server::{ServerConfig, ensure_bootstrap_operator};
use hwledger_wire::tls::ServerIdentityFiles;

use super::reads::ProjectorReads;
use super::{Config, Global};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// API listen address (mTLS).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Dashboard listen address (must be loopback).
    #[arg(long)]
    pub dashboard_listen: Option<SocketAddr>,
    /// Enrollment listen address (server-authenticated TLS only; bootstrap tokens).
    #[arg(long)]
    pub enroll_listen: Option<SocketAddr>,
    /// Serve this certificate chain (PEM, leaf first) instead of the auto-issued one, e.g. a publicly
    /// trusted one. Client certificates are still checked against the fleet CA. Re-read every minute.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of `--tls-cert`.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

pub fn run(config: &Config, global: &Global, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let listen: SocketAddr = match args.listen {
        Some(a) => a,
        None => config.listen.parse().with_context(|| format!("listen address {:?}", config.listen))?,
    };
    let dashboard: SocketAddr = match args.dashboard_listen {
        Some(a) => a,
        None => config.dashboard_listen.parse().context("dashboard listen address")?,
    };
    let now = time::OffsetDateTime::now_utc();
    let ledger = Arc::new(config.open_ledger()?);
    ledger.warm_up();
    let pki = Arc::new(Pki::init(&config.data_dir.join("pki"), PkiOptions::default(), now).context("initialise PKI")?);
    let operator_dir = config.data_dir.join("operator");
    let op = ensure_bootstrap_operator(&ledger, &pki, &operator_dir, "admin", time::Duration::days(365), now)
        .context("create the operator bundle")?;
    let projector = Arc::new(Projector::open(ledger.store(), ProjectorOptions::default()).context("open projections")?);
    let stop = Arc::new(AtomicBool::new(false));
    let follower = {
        let (projector, ledger, stop) = (projector.clone(), ledger.clone(), stop.clone());
        std::thread::Builder::new()
            .name("hwledger-projector".into())
            .spawn(move || {
                if let Err(e) = projector.follow(&ledger, &stop) {
                    tracing::error!("projections stopped following the log: {e}");
                }
                if let Err(e) = projector.persist() {
                    tracing::error!("persisting projections: {e}");
                }
            })
            .context("start projector thread")?
    };
    let mut server_config = ServerConfig::new(listen, dashboard);
    server_config.enroll_listen = args.enroll_listen;
    server_config.max_connections = config.max_connections;
    server_config.handshake_timeout = std::time::Duration::from_millis(config.handshake_timeout_ms);
    server_config.header_read_timeout = std::time::Duration::from_millis(config.header_read_timeout_ms);
    server_config.body_limit = config.body_limit;
    server_config.tls_identity = match (args.tls_cert, args.tls_key) {
        (Some(cert), Some(key)) => Some(ServerIdentityFiles { cert, key }),
        _ => None,
    };
    let reads: Arc<dyn hwledger_wire::server::ReadModels> = Arc::new(ProjectorReads { projector: projector.clone() });
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("start runtime")?;
    let result = rt.block_on(async {
        let server = hwledger_wire::server::Server::bind(server_config, ledger.clone(), pki.clone(), Some(reads))
            .await
            .context("start the server")?;
        let addrs = server.local_addrs();
        let key = op.paths.key.as_ref().map(|k| k.display().to_string()).unwrap_or_default();
        if global.json {
            // One line on stdout when every listener is bound: how scripts and tests learn the ports.
            let ready = serde_json::json!({
                "event": "listening",
                "api": addrs.api.to_string(),
                "dashboard": addrs.dashboard.to_string(),
                "enroll": addrs.enroll.map(|a| a.to_string()),
                "data_dir": config.data_dir,
                "operator_bundle": operator_dir,
                "ca": op.paths.ca,
            });
            println!("{ready}");
            use std::io::Write as _;
            std::io::stdout().flush().context("write the startup line")?;
        }
        eprintln!(
            "hwledger: serving {} (mTLS), dashboard http://{}/dashboard, data {}",
            addrs.api,
            addrs.dashboard,
            config.data_dir.display()
        );
        eprintln!(
            "list devices:\n  curl --cert {} --key {key} --cacert {} https://localhost:{}/v1/devices",
            op.paths.cert.display(),
            op.paths.ca.display(),
            addrs.api.port()
        );
        server.serve(shutdown_signal()).await.context("serve")?;
        Ok::<(), anyhow::Error>(())
    });
    stop.store(true, Ordering::SeqCst);
    let _ = follower.join();
    ledger.close().context("close ledger")?;
    result?;
    eprintln!("hwledger: stopped cleanly at seq {}", ledger.head().seq);
    Ok(ExitCode::SUCCESS)
}

/// Completes on Ctrl-C (SIGINT) or SIGTERM (what systemd and `kill` send), for a graceful shutdown.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
                return;
            }
            Err(e) => tracing::warn!(error = %e, "cannot watch SIGTERM; stopping on Ctrl-C only"),
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
