//! The hwledger HTTPS API server: warp handlers over the mTLS transport, an optional enrollment listener
//! (server-auth TLS only, for bootstrap tokens), and a plain-HTTP dashboard bound to loopback.
//!
//! ```text
//! Server::bind(config, ledger, pki, read_models)   binds every listener (tests use 127.0.0.1:0)
//!     .local_addrs()                                 learn the bound ports
//!     .serve(shutdown).await                         serve until `shutdown` completes, then drain
//! ```
//!
//! Identity comes only from the client certificate: on **every** request its fingerprint must be pinned in
//! the ledger's decision state to an active identity (see [`routes`]), so revoking a certificate or
//! decommissioning a device takes effect on the next request, even on an open HTTP/2 connection.
//! Time enters through one [`Clock`].

mod auth_cache;
mod dashboard;
pub mod errors;
pub mod metrics;
pub mod openapi;
pub mod routes;
mod sse;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hwledger_engine::event::{Actor, CertRole};
use hwledger_engine::{Command, Context, Ledger, Outcome, Receipt, Rejection, Submission, SubmitError};
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::pki::{BundlePaths, Fingerprint, IssuedCert, Pki, PkiError, Role, identity_from_cert_der, write_bundle};
use crate::tls::{ServerIdentityFiles, TlsConfigHandle, TlsError, parse_certs_pem, server_config_for};
use crate::transport::{TransportOptions, TransportStats};

pub use errors::ApiError;
pub use metrics::Metrics;

/// Default request body limit: commands are small; a batch of 1000 heartbeats fits comfortably in 64 KiB
/// only when compact, so agents chunk their outbox by size as well as count.
pub const DEFAULT_BODY_LIMIT: u64 = 64 * 1024;

/// Default longest wait of a read with `?min_seq=N`.
pub const DEFAULT_READ_WAIT_MAX: Duration = Duration::from_secs(5);

/// Default validity of certificates signed at enrollment.
pub const DEFAULT_AGENT_CERT_VALIDITY: time::Duration = time::Duration::days(90);

/// How often the TLS configurations are rebuilt from the PKI, so a CA whose rotation overlap has ended
/// drops out of the trust set without a restart.
const TLS_REFRESH_EVERY: Duration = Duration::from_secs(60);

/// Events buffered per SSE client between the reader task and the socket. A slower client makes the reader
/// wait (and later re-read from the store), never grows memory.
const SSE_CLIENT_BUFFER: usize = 256;

/// The one source of time of the server (the engine never reads a clock; the server hands it the time).
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> OffsetDateTime + Send + Sync>);

impl Clock {
    /// The system clock (UTC).
    pub fn system() -> Clock {
        Clock(Arc::new(OffsetDateTime::now_utc))
    }

    /// A clock reading `f` (tests use a shifted or fixed clock).
    pub fn from_fn(f: impl Fn() -> OffsetDateTime + Send + Sync + 'static) -> Clock {
        Clock(Arc::new(f))
    }

    /// The current time.
    pub fn now(&self) -> OffsetDateTime {
        (self.0)()
    }

    /// The current time in unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        unix_ms(self.now())
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Clock({})", self.now())
    }
}

/// `t` in unix milliseconds, saturating far outside any certificate's lifetime.
pub fn unix_ms(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(if t.year() < 1970 { i64::MIN } else { i64::MAX })
}

/// Where and how the server listens.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The mTLS API listener.
    pub listen: SocketAddr,
    /// The plain-HTTP dashboard listener; must be a loopback address (operators reach it through an SSH
    /// tunnel).
    pub dashboard_listen: SocketAddr,
    /// The enrollment listener (server-auth TLS, `POST /v1/enroll` only), if enrollment is enabled.
    pub enroll_listen: Option<SocketAddr>,
    /// Largest request body accepted (`413 body_too_large` above it).
    pub body_limit: u64,
    /// Longest a TLS handshake may take.
    pub handshake_timeout: Duration,
    /// Longest a client may take to send a request's headers, and the head of its first request after the
    /// handshake.
    pub header_read_timeout: Duration,
    /// Most connections open at once per TLS listener.
    pub max_connections: usize,
    /// Longest a read with `?min_seq=N` waits for the log / read models to reach `N`.
    pub read_wait_max: Duration,
    /// Validity of agent certificates signed at enrollment.
    pub agent_cert_validity: time::Duration,
    /// How long shutdown waits for open connections.
    pub shutdown_grace: Duration,
    /// An operator-supplied server certificate and key, presented on the API and enrollment listeners
    /// instead of the auto-issued one (client certificates are still checked against the fleet CA).
    pub tls_identity: Option<ServerIdentityFiles>,
    /// The clock.
    pub clock: Clock,
}

impl ServerConfig {
    /// A configuration with the default limits.
    pub fn new(listen: SocketAddr, dashboard_listen: SocketAddr) -> ServerConfig {
        ServerConfig {
            listen,
            dashboard_listen,
            enroll_listen: None,
            body_limit: DEFAULT_BODY_LIMIT,
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(30),
            max_connections: 1024,
            read_wait_max: DEFAULT_READ_WAIT_MAX,
            agent_cert_validity: DEFAULT_AGENT_CERT_VALIDITY,
            shutdown_grace: Duration::from_secs(10),
            tls_identity: None,
            clock: Clock::system(),
        }
    }
}

/// Extra filters of a projection read (`?device=...&window=...`), `min_seq` removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadQuery {
    /// Query parameters, percent-decoded.
    pub params: BTreeMap<String, String>,
}

/// Why a read model could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadModelError {
    /// The thing asked for does not exist (404 `not_found`).
    #[error("{0}")]
    NotFound(String),
    /// The query is invalid (400 `invalid_query`).
    #[error("{0}")]
    BadRequest(String),
    /// The read model cannot answer now (503 `read_model_unavailable`).
    #[error("{0}")]
    Unavailable(String),
}

/// The projections' read side, as the server sees it: the extension point through which
/// `hwledger-projections` serves devices, telemetry, jobs, cost and the dashboard. Every method returns a
/// JSON value that is sent as is (documented in the OpenAPI document as an open object).
pub trait ReadModels: Send + Sync + 'static {
    /// The last event seq every read model has applied (reads with `?min_seq=N` wait for `N`).
    fn applied_seq(&self) -> u64;
    /// `GET /v1/devices`: an object with a `devices` array.
    fn devices(&self, query: &ReadQuery) -> Result<serde_json::Value, ReadModelError>;
    /// `GET /v1/devices/{id}`: the device, or `None` if unknown (404 `device_unknown`).
    fn device(&self, device_id: &str) -> Result<Option<serde_json::Value>, ReadModelError>;
    /// `GET /v1/telemetry`: latest readings and bounded history.
    fn telemetry(&self, query: &ReadQuery) -> Result<serde_json::Value, ReadModelError>;
    /// `GET /v1/jobs`.
    fn jobs(&self, query: &ReadQuery) -> Result<serde_json::Value, ReadModelError>;
    /// `GET /v1/cost`.
    fn cost(&self, query: &ReadQuery) -> Result<serde_json::Value, ReadModelError>;
    /// `GET /v1/dashboard`, `/snapshot.json` and the HTML dashboard.
    fn dashboard(&self) -> Result<serde_json::Value, ReadModelError>;
    /// `GET /v1/projections`: where each read model stands and the digest of its state, so a client can
    /// compare the live read models with a rebuild from the log (`hwledger replay --until SEQ`).
    fn projections(&self, query: &ReadQuery) -> Result<serde_json::Value, ReadModelError> {
        let _ = query;
        Err(ReadModelError::Unavailable("these read models do not report their digests".to_owned()))
    }
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A listener could not be bound.
    #[error("cannot bind the {what} listener on {addr}: {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The configuration is unusable.
    #[error("invalid server configuration: {0}")]
    Config(String),
    /// TLS could not be configured from the PKI.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The transport failed.
    #[error(transparent)]
    Transport(#[from] crate::transport::TransportError),
}

/// Where a running server listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunningAddrs {
    /// The mTLS API.
    pub api: SocketAddr,
    /// The loopback dashboard.
    pub dashboard: SocketAddr,
    /// The enrollment listener, if any.
    pub enroll: Option<SocketAddr>,
}

/// Everything a request handler needs, shared by all listeners.
pub(crate) struct App {
    pub(crate) ledger: Arc<Ledger>,
    pub(crate) pki: Arc<Pki>,
    pub(crate) read_models: Option<Arc<dyn ReadModels>>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) clock: Clock,
    pub(crate) body_limit: u64,
    pub(crate) read_wait_max: Duration,
    pub(crate) agent_cert_validity: time::Duration,
    /// Flips to `true` at shutdown; long-lived responses (SSE) end when it does.
    pub(crate) shutdown: watch::Receiver<bool>,
    pub(crate) sse_buffer: usize,
    /// Successful pin checks, reused while the ledger's auth epoch is unchanged.
    pub(crate) auth_cache: auth_cache::AuthCache,
}

/// A server with its listeners bound, not yet serving.
pub struct Server {
    config: ServerConfig,
    api: TcpListener,
    dashboard: TcpListener,
    enroll: Option<TcpListener>,
    addrs: RunningAddrs,
    api_tls: TlsConfigHandle,
    enroll_tls: Option<TlsConfigHandle>,
    api_stats: Arc<TransportStats>,
    enroll_stats: Arc<TransportStats>,
    app: Arc<App>,
    shutdown_tx: watch::Sender<bool>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("addrs", &self.addrs).finish()
    }
}

async fn bind_one(what: &'static str, addr: SocketAddr) -> Result<(TcpListener, SocketAddr), ServerError> {
    let err = |source| ServerError::Bind { what, addr, source };
    let listener = TcpListener::bind(addr).await.map_err(err)?;
    let local = listener.local_addr().map_err(err)?;
    Ok((listener, local))
}

impl Server {
    /// Validates `config`, builds the TLS configurations from `pki` and binds every listener.
    pub async fn bind(
        config: ServerConfig,
        ledger: Arc<Ledger>,
        pki: Arc<Pki>,
        read_models: Option<Arc<dyn ReadModels>>,
    ) -> Result<Server, ServerError> {
        if !config.dashboard_listen.ip().is_loopback() {
            return Err(ServerError::Config(format!(
                "the dashboard listens on plain HTTP and must be bound to loopback, not {}",
                config.dashboard_listen
            )));
        }
        if config.body_limit == 0 {
            return Err(ServerError::Config("body_limit must be at least 1 byte".into()));
        }
        if config.max_connections == 0 {
            return Err(ServerError::Config("max_connections must be at least 1".into()));
        }
        if config.handshake_timeout.is_zero() || config.header_read_timeout.is_zero() {
            return Err(ServerError::Config("handshake and header read timeouts must be positive".into()));
        }
        if config.agent_cert_validity <= time::Duration::ZERO {
            return Err(ServerError::Config("agent_cert_validity must be positive".into()));
        }
        let now = config.clock.now();
        let identity = config.tls_identity.as_ref();
        let api_tls = TlsConfigHandle::new(server_config_for(&pki, now, identity, true)?);
        let enroll_tls = match config.enroll_listen {
            Some(_) => Some(TlsConfigHandle::new(server_config_for(&pki, now, identity, false)?)),
            None => None,
        };
        let (api, api_addr) = bind_one("API", config.listen).await?;
        let (dashboard, dashboard_addr) = bind_one("dashboard", config.dashboard_listen).await?;
        let (enroll, enroll_addr) = match config.enroll_listen {
            Some(addr) => {
                let (l, a) = bind_one("enrollment", addr).await?;
                (Some(l), Some(a))
            }
            None => (None, None),
        };
        let api_stats = Arc::new(TransportStats::default());
        let enroll_stats = Arc::new(TransportStats::default());
        let mut listeners = vec![("api", api_stats.clone())];
        if enroll.is_some() {
            listeners.push(("enroll", enroll_stats.clone()));
        }
        let metrics = Arc::new(Metrics::new(ledger.clone(), listeners));
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let app = Arc::new(App {
            ledger,
            pki,
            read_models,
            metrics,
            clock: config.clock.clone(),
            body_limit: config.body_limit,
            read_wait_max: config.read_wait_max,
            agent_cert_validity: config.agent_cert_validity,
            shutdown: shutdown_rx,
            sse_buffer: SSE_CLIENT_BUFFER,
            auth_cache: auth_cache::AuthCache::default(),
        });
        Ok(Server {
            addrs: RunningAddrs { api: api_addr, dashboard: dashboard_addr, enroll: enroll_addr },
            config,
            api,
            dashboard,
            enroll,
            api_tls,
            enroll_tls,
            api_stats,
            enroll_stats,
            app,
            shutdown_tx,
        })
    }

    /// Where the listeners are bound.
    pub fn local_addrs(&self) -> RunningAddrs {
        self.addrs
    }

    /// The mTLS listener's TLS configuration: replace it after a CA rotation (it is also rebuilt from the
    /// PKI every minute).
    pub fn api_tls(&self) -> TlsConfigHandle {
        self.api_tls.clone()
    }

    /// The server's metrics.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.app.metrics.clone()
    }

    /// Serves every listener until `shutdown` completes, then stops accepting, ends live streams and waits
    /// (at most the configured grace) for open requests.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> Result<RunningAddrs, ServerError> {
        let Server {
            config,
            api,
            dashboard,
            enroll,
            addrs,
            api_tls,
            enroll_tls,
            api_stats,
            enroll_stats,
            app,
            shutdown_tx,
        } = self;
        let stopped = |rx: watch::Receiver<bool>| async move {
            let mut rx = rx;
            let _ = rx.wait_for(|stop| *stop).await;
        };
        let opts = |stats: Arc<TransportStats>| TransportOptions {
            handshake_timeout: config.handshake_timeout,
            header_read_timeout: config.header_read_timeout,
            max_connections: config.max_connections,
            shutdown_grace: config.shutdown_grace,
            stats,
        };
        tracing::info!(api = %addrs.api, dashboard = %addrs.dashboard, enroll = ?addrs.enroll, "hwledger server listening");

        let api_fut = crate::transport::serve(
            api,
            api_tls.clone(),
            routes::api_filter(app.clone()),
            opts(api_stats),
            stopped(app.shutdown.clone()),
        );
        let enroll_fut = {
            let app = app.clone();
            let tls = enroll_tls.clone();
            let opts = opts(enroll_stats);
            let stop = stopped(app.shutdown.clone());
            async move {
                match (enroll, tls) {
                    (Some(listener), Some(tls)) => {
                        crate::transport::serve(listener, tls, routes::enroll_filter(app), opts, stop).await
                    }
                    _ => Ok(()),
                }
            }
        };
        let dashboard_fut = warp::serve(dashboard::filter(app.clone()))
            .incoming(dashboard)
            .graceful(stopped(app.shutdown.clone()))
            .run();
        let refresh_fut = {
            let app = app.clone();
            let identity = config.tls_identity.clone();
            let mut stop = app.shutdown.clone();
            async move {
                loop {
                    tokio::select! {
                        _ = stop.wait_for(|s| *s) => break,
                        () = tokio::time::sleep(TLS_REFRESH_EVERY) => {}
                    }
                    let now = app.clock.now();
                    match server_config_for(&app.pki, now, identity.as_ref(), true) {
                        Ok(c) => api_tls.replace(c),
                        Err(e) => {
                            tracing::error!(error = %e, "rebuilding the API TLS configuration failed; keeping the old one")
                        }
                    }
                    if let Some(handle) = &enroll_tls {
                        match server_config_for(&app.pki, now, identity.as_ref(), false) {
                            Ok(c) => handle.replace(c),
                            Err(e) => tracing::error!(error = %e, "rebuilding the enrollment TLS configuration failed"),
                        }
                    }
                }
            }
        };
        let trigger = async move {
            shutdown.await;
            tracing::info!("hwledger server shutting down");
            shutdown_tx.send_replace(true);
        };
        let (api_result, enroll_result, (), (), ()) =
            tokio::join!(api_fut, enroll_fut, dashboard_fut, refresh_fut, trigger);
        api_result?;
        enroll_result?;
        Ok(addrs)
    }
}

/// Binds with `config`, serves until `shutdown` completes, and returns where it listened.
pub async fn run(
    config: ServerConfig,
    ledger: Arc<Ledger>,
    pki: Arc<Pki>,
    extra: Option<Arc<dyn ReadModels>>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<RunningAddrs, ServerError> {
    Server::bind(config, ledger, pki, extra).await?.serve(shutdown).await
}

/// What pinning a certificate did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinOutcome {
    /// Pinned now.
    Pinned(Receipt),
    /// It was pinned before (same command re-sent, or issued through another path).
    AlreadyPinned,
}

/// Why a certificate could not be pinned.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// The engine refused (e.g. an agent certificate for an unknown or decommissioned device).
    #[error("the ledger refused to pin the certificate ({}): {}", .0.code(), .0)]
    Rejected(Rejection),
    /// The ledger could not make it durable.
    #[error("the ledger could not pin the certificate: {0}")]
    Submit(#[from] SubmitError),
    /// The PKI failed (issuing, writing or reading a bundle).
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// A bundle certificate on disk is unusable.
    #[error("the certificate in {path} is unusable: {reason}")]
    BadBundle {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// The engine's role for a PKI role.
pub fn cert_role(role: &Role) -> CertRole {
    match role {
        Role::Agent { device_id } => CertRole::Agent(device_id.clone()),
        Role::Operator { name } => CertRole::Operator(name.clone()),
        Role::Auditor { name } => CertRole::Auditor(name.clone()),
    }
}

/// The submission that pins a certificate (`IssueCertificate` with an idempotent command id).
fn pin_submission(role: &Role, fingerprint: &Fingerprint, serial: &str, not_after: OffsetDateTime) -> Submission {
    Submission {
        command_id: format!("pin-{fingerprint}"),
        expected_version: None,
        command: Command::IssueCertificate {
            role: cert_role(role),
            fingerprint: fingerprint.0,
            serial: serial.to_owned(),
            not_after: unix_ms(not_after),
        },
    }
}

fn pin_result(result: Result<Outcome, SubmitError>) -> Result<PinOutcome, PinError> {
    match result? {
        Outcome::Accepted(r) => Ok(PinOutcome::Pinned(r)),
        Outcome::Duplicate(_) | Outcome::Rejected(Rejection::CertificateExists { .. }) => Ok(PinOutcome::AlreadyPinned),
        Outcome::Rejected(r) => Err(PinError::Rejected(r)),
    }
}

/// Pins an issued certificate in the ledger (`IssueCertificate` as [`Actor::System`]), so the server accepts
/// it. Blocking: for the CLI, outside an async runtime. Idempotent.
pub fn pin_identity(ledger: &Ledger, cert: &IssuedCert, now: OffsetDateTime) -> Result<PinOutcome, PinError> {
    let sub = pin_submission(&cert.role, &cert.fingerprint, &cert.serial, cert.not_after);
    pin_result(ledger.submit(sub, Context::new(Actor::System, unix_ms(now))))
}

/// [`pin_identity`] for async callers.
pub async fn pin_identity_async(
    ledger: &Ledger,
    cert: &IssuedCert,
    now: OffsetDateTime,
) -> Result<PinOutcome, PinError> {
    let sub = pin_submission(&cert.role, &cert.fingerprint, &cert.serial, cert.not_after);
    pin_result(ledger.submit_async(sub, Context::new(Actor::System, unix_ms(now))).await)
}

/// The bootstrap operator's credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapOperator {
    /// Where the bundle is.
    pub paths: BundlePaths,
    /// Its certificate's fingerprint (pinned).
    pub fingerprint: Fingerprint,
    /// Whether it was created by this call (false: it existed and is pinned).
    pub created: bool,
}

/// Makes sure the bootstrap operator bundle `<out_dir>/operator-<name>.{crt,key}` exists and is pinned:
/// on first start it is issued, written (key 0600) and pinned; later it is only checked (and pinned, if a
/// crash came between writing and pinning). Blocking: call before starting the server's runtime.
pub fn ensure_bootstrap_operator(
    ledger: &Ledger,
    pki: &Pki,
    out_dir: &Path,
    name: &str,
    validity: time::Duration,
    now: OffsetDateTime,
) -> Result<BootstrapOperator, PinError> {
    let role = Role::operator(name)?;
    let stem = role.file_stem();
    let cert_path = out_dir.join(format!("{stem}.crt"));
    let key_path = out_dir.join(format!("{stem}.key"));
    if cert_path.exists() && key_path.exists() {
        let bad = |reason: String| PinError::BadBundle { path: cert_path.clone(), reason };
        let pem = std::fs::read(&cert_path).map_err(|e| bad(e.to_string()))?;
        let certs = parse_certs_pem(&pem, &cert_path.display().to_string()).map_err(|e| bad(e.to_string()))?;
        let der = certs.first().ok_or_else(|| bad("no certificate".into()))?;
        let id = identity_from_cert_der(der.as_ref()).map_err(|e| bad(e.to_string()))?;
        if id.role != role {
            return Err(bad(format!("it is for {}, not {role}", id.role)));
        }
        let revoked = ledger.with_state(|s| s.certs.get(&id.fingerprint.0).map(|c| c.revoked));
        if revoked == Some(true) {
            return Err(bad("its fingerprint is revoked; remove the bundle to issue a new one".into()));
        }
        if revoked.is_none() {
            let sub = pin_submission(&role, &id.fingerprint, &id.serial, id.not_after);
            pin_result(ledger.submit(sub, Context::new(Actor::System, unix_ms(now))))?;
        }
        let paths = BundlePaths { ca: out_dir.join("ca.crt"), cert: cert_path, key: Some(key_path) };
        return Ok(BootstrapOperator { paths, fingerprint: id.fingerprint, created: false });
    }
    let cert = pki.issue(&role, validity, now)?;
    let paths = write_bundle(out_dir, &cert, &pki.ca_bundle_pem(now))?;
    pin_identity(ledger, &cert, now)?;
    Ok(BootstrapOperator { paths, fingerprint: cert.fingerprint, created: true })
}
