//! The mTLS front door: our own accept loop in front of a warp filter, because warp 0.4 has no
//! TLS and no filter can see a client certificate.
//!
//! Per connection: `accept` → connection cap (over it, the new connection is closed at once)
//! → TLS handshake under a timeout → the peer's certificate and its SHA-256 fingerprint become
//! a [`PeerInfo`] inserted into every request's extensions → HTTP/1.1 or HTTP/2 (hyper-util
//! `auto`) serving `warp::service(filter)`. A peer that completes the handshake must send the
//! head of its first request within [`TransportOptions::header_read_timeout`] too: hyper's own
//! header timeout covers HTTP/1.1 only after hyper-util has seen enough bytes to choose the
//! protocol, so a silent peer (or one that sends only part of the HTTP/2 preface) would
//! otherwise hold its connection slot forever. Handlers read the peer with [`peer()`]. Accept errors
//! back off (10 ms doubling to 1 s) instead of spinning; shutdown is graceful with a bounded
//! wait. Counters in [`TransportStats`] are for the metrics endpoint.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tower_service::Service;
use warp::Filter;

use crate::pki::{Fingerprint, PeerIdentity, PkiError, identity_from_cert_der};
use crate::tls::TlsConfigHandle;

/// First delay after a failed `accept` (e.g. EMFILE); doubles up to [`ACCEPT_BACKOFF_MAX`].
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
/// Longest delay between retries of a failing `accept`.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// What the transport knows about the peer of a request.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// SHA-256 of the client certificate, when one was presented (always, on the mTLS
    /// listener; never, on a server-auth-only enrollment listener).
    pub fingerprint: Option<Fingerprint>,
    /// The client certificate's DER (the leaf).
    pub cert_der: Option<Bytes>,
    /// The peer's address (`warp::addr::remote()` is `None` behind this transport).
    pub remote_addr: SocketAddr,
    /// The negotiated ALPN protocol, if any (`h2` or `http/1.1`).
    pub alpn: Option<Vec<u8>>,
}

impl PeerInfo {
    /// The role and validity the client certificate carries. `NoRole` if there is no
    /// certificate or it carries no `hwledger:` role. The fingerprint must still be checked
    /// against the registry: CA-signed is not enough.
    pub fn identity(&self) -> Result<PeerIdentity, PkiError> {
        match &self.cert_der {
            Some(der) => identity_from_cert_der(der),
            None => Err(PkiError::NoRole),
        }
    }
}

/// A warp filter extracting the [`PeerInfo`] of the current request. Rejects (as a missing
/// extension, a 500) only if the filter is served by something other than [`serve`].
pub fn peer() -> impl Filter<Extract = (PeerInfo,), Error = warp::Rejection> + Copy {
    warp::ext::get::<PeerInfo>()
}

/// Counters of the transport, shared with whoever exports metrics.
#[derive(Debug, Default)]
pub struct TransportStats {
    /// TCP connections accepted under the cap (handshake not necessarily completed).
    pub accepted: AtomicU64,
    /// Connections currently open (handshaking or serving).
    pub open_connections: AtomicU64,
    /// Handshakes that failed, timeouts included.
    pub handshake_failures: AtomicU64,
    /// Handshakes that did not finish within the timeout (a subset of the failures).
    pub handshake_timeouts: AtomicU64,
    /// Connections closed because no request head arrived within the header timeout after the handshake.
    pub first_request_timeouts: AtomicU64,
    /// Connections closed at once because the cap was reached.
    pub rejected_over_cap: AtomicU64,
    /// Failed `accept` calls (e.g. out of file descriptors).
    pub accept_errors: AtomicU64,
}

/// A plain copy of [`TransportStats`] at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct TransportStatsSnapshot {
    /// See [`TransportStats::accepted`].
    pub accepted: u64,
    /// See [`TransportStats::open_connections`].
    pub open_connections: u64,
    /// See [`TransportStats::handshake_failures`].
    pub handshake_failures: u64,
    /// See [`TransportStats::handshake_timeouts`].
    pub handshake_timeouts: u64,
    /// See [`TransportStats::first_request_timeouts`].
    pub first_request_timeouts: u64,
    /// See [`TransportStats::rejected_over_cap`].
    pub rejected_over_cap: u64,
    /// See [`TransportStats::accept_errors`].
    pub accept_errors: u64,
}

impl TransportStats {
    /// Reads every counter.
    pub fn snapshot(&self) -> TransportStatsSnapshot {
        TransportStatsSnapshot {
            accepted: self.accepted.load(Ordering::Relaxed),
            open_connections: self.open_connections.load(Ordering::Relaxed),
            handshake_failures: self.handshake_failures.load(Ordering::Relaxed),
            handshake_timeouts: self.handshake_timeouts.load(Ordering::Relaxed),
            first_request_timeouts: self.first_request_timeouts.load(Ordering::Relaxed),
            rejected_over_cap: self.rejected_over_cap.load(Ordering::Relaxed),
            accept_errors: self.accept_errors.load(Ordering::Relaxed),
        }
    }
}

/// Limits and timeouts of the transport.
#[derive(Debug, Clone)]
pub struct TransportOptions {
    /// Longest a TLS handshake may take; a peer that connects and sends nothing is dropped
    /// after this, so it cannot hold a connection slot.
    pub handshake_timeout: Duration,
    /// Most connections open at once (handshaking or serving). Over it, new connections are
    /// closed immediately, which keeps memory and descriptors bounded under a flood.
    pub max_connections: usize,
    /// Longest an HTTP/1.1 client may take to send a request's headers, and any client to send the
    /// head of its first request after the handshake (slow-loris guard).
    pub header_read_timeout: Duration,
    /// How long shutdown waits for open connections to finish before dropping them.
    pub shutdown_grace: Duration,
    /// Where the counters go; clone the `Arc` before calling [`serve`] to read them.
    pub stats: Arc<TransportStats>,
}

impl Default for TransportOptions {
    fn default() -> Self {
        TransportOptions {
            handshake_timeout: Duration::from_secs(10),
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
            stats: Arc::default(),
        }
    }
}

/// Why [`serve`] could not run.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The listener is unusable.
    #[error("transport: listener unusable: {0}")]
    Listener(#[source] std::io::Error),
    /// The options make no sense.
    #[error("transport: invalid options: {0}")]
    InvalidOptions(&'static str),
}

/// Holds a connection slot and keeps `open_connections` honest however the task ends.
struct ConnectionSlot {
    stats: Arc<TransportStats>,
    _permit: OwnedSemaphorePermit,
}

impl ConnectionSlot {
    fn new(stats: Arc<TransportStats>, permit: OwnedSemaphorePermit) -> Self {
        stats.open_connections.fetch_add(1, Ordering::Relaxed);
        ConnectionSlot { stats, _permit: permit }
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.stats.open_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves `filter` over TLS on `listener` until `shutdown` completes, then shuts down
/// gracefully: stops accepting, asks open connections to finish, waits at most
/// `opts.shutdown_grace`, and drops whatever is left.
///
/// `tls` is an `Arc<ServerConfig>` or a [`TlsConfigHandle`] (to swap configurations while
/// running). Every request reaching `filter` carries a [`PeerInfo`] extension.
pub async fn serve<F>(
    listener: TcpListener,
    tls: impl Into<TlsConfigHandle>,
    filter: F,
    opts: TransportOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), TransportError>
where
    F: Filter + Clone + Send + Sync + 'static,
    F::Extract: warp::Reply,
{
    if opts.max_connections == 0 {
        return Err(TransportError::InvalidOptions("max_connections must be at least 1"));
    }
    let tls: TlsConfigHandle = tls.into();
    let local = listener.local_addr().map_err(TransportError::Listener)?;
    let stats = opts.stats.clone();
    let slots = Arc::new(Semaphore::new(opts.max_connections));
    let graceful = GracefulShutdown::new();
    let mut tasks = JoinSet::new();
    let mut http = auto::Builder::new(TokioExecutor::new());
    http.http1().timer(TokioTimer::new()).header_read_timeout(opts.header_read_timeout);
    http.http2().timer(TokioTimer::new());
    let service = warp::service(filter);
    let mut backoff = ACCEPT_BACKOFF_MIN;
    tracing::info!(%local, max_connections = opts.max_connections, "mTLS transport listening");

    let shutdown = std::pin::pin!(shutdown);
    let mut shutdown = shutdown;
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(e) = joined
                    && e.is_panic()
                {
                    tracing::error!(error = %e, "connection task panicked");
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, remote_addr)) => {
                    backoff = ACCEPT_BACKOFF_MIN;
                    // Small request/response exchanges: without TCP_NODELAY, Nagle's algorithm holds a
                    // response's last segment back until the peer's delayed ACK (tens of ms per request).
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::debug!(%remote_addr, error = %e, "cannot set TCP_NODELAY");
                    }
                    let Ok(permit) = slots.clone().try_acquire_owned() else {
                        stats.rejected_over_cap.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%remote_addr, "connection cap reached; closing new connection");
                        drop(stream);
                        continue;
                    };
                    stats.accepted.fetch_add(1, Ordering::Relaxed);
                    let slot = ConnectionSlot::new(stats.clone(), permit);
                    tasks.spawn(serve_connection(Connection {
                        stream,
                        remote_addr,
                        acceptor: TlsAcceptor::from(tls.current()),
                        http: http.clone(),
                        watcher: graceful.watcher(),
                        handshake_timeout: opts.handshake_timeout,
                        first_request_timeout: opts.header_read_timeout,
                        stats: stats.clone(),
                        slot,
                    }, service.clone()));
                }
                Err(e) => {
                    stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                    if is_per_connection_error(&e) {
                        tracing::debug!(error = %e, "accept: connection failed before it was accepted");
                        continue;
                    }
                    tracing::warn!(error = %e, delay_ms = backoff.as_millis(), "accept failed; backing off");
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                }
            }
        }
    }

    drop(listener);
    let open = graceful.count();
    tracing::info!(open, "transport shutting down; waiting for connections to finish");
    if tokio::time::timeout(opts.shutdown_grace, graceful.shutdown()).await.is_err() {
        tracing::warn!(
            grace_ms = opts.shutdown_grace.as_millis(),
            "connections still open after the grace period; dropping them"
        );
    }
    tasks.shutdown().await;
    tracing::info!("transport stopped");
    Ok(())
}

/// Errors of `accept` that concern one connection, not the listener: retry at once.
fn is_per_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::Interrupted
    )
}

/// Everything a connection task needs.
struct Connection {
    stream: TcpStream,
    remote_addr: SocketAddr,
    acceptor: TlsAcceptor,
    http: auto::Builder<TokioExecutor>,
    watcher: Watcher,
    handshake_timeout: Duration,
    first_request_timeout: Duration,
    stats: Arc<TransportStats>,
    slot: ConnectionSlot,
}

async fn serve_connection<S>(conn: Connection, service: S)
where
    S: Service<hyper::Request<Incoming>, Response = warp::reply::Response, Error = std::convert::Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let Connection {
        stream,
        remote_addr,
        acceptor,
        http,
        watcher,
        handshake_timeout,
        first_request_timeout,
        stats,
        slot,
    } = conn;
    let _slot = slot;
    let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
        Err(_) => {
            stats.handshake_failures.fetch_add(1, Ordering::Relaxed);
            stats.handshake_timeouts.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%remote_addr, timeout_ms = handshake_timeout.as_millis(), "TLS handshake timed out");
            return;
        }
        Ok(Err(e)) => {
            stats.handshake_failures.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%remote_addr, reason = %e, "TLS handshake failed");
            return;
        }
        Ok(Ok(tls)) => tls,
    };
    let (_, session) = tls.get_ref();
    let cert_der =
        session.peer_certificates().and_then(|certs| certs.first()).map(|c| Bytes::copy_from_slice(c.as_ref()));
    let info = PeerInfo {
        fingerprint: cert_der.as_deref().map(Fingerprint::of_der),
        cert_der,
        remote_addr,
        alpn: session.alpn_protocol().map(<[u8]>::to_vec),
    };
    tracing::debug!(
        %remote_addr,
        fingerprint = info.fingerprint.map(|f| f.to_string()),
        alpn = info.alpn.as_deref().map(String::from_utf8_lossy).as_deref(),
        "TLS connection established"
    );
    // Notified when the first request head has been parsed (a permit is stored if nobody waits yet).
    let first_request = Arc::new(tokio::sync::Notify::new());
    let seen = first_request.clone();
    let per_request = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        seen.notify_one();
        req.extensions_mut().insert(info.clone());
        let mut service = service.clone();
        async move { service.call(req).await }
    });
    let conn = watcher.watch(http.serve_connection(TokioIo::new(tls), per_request));
    let deadline = async {
        match tokio::time::timeout(first_request_timeout, first_request.notified()).await {
            Err(_) => {}
            // From now on hyper's own timeouts apply.
            Ok(()) => std::future::pending().await,
        }
    };
    tokio::select! {
        ended = conn => {
            if let Err(e) = ended {
                tracing::debug!(%remote_addr, error = %e, "connection ended with an error");
            }
        }
        () = deadline => {
            stats.first_request_timeouts.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                %remote_addr,
                timeout_ms = first_request_timeout.as_millis(),
                "no request head after the handshake within the timeout; closing"
            );
        }
    }
}
