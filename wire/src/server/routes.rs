//! Routing, authorization and the handlers of the mTLS API and the enrollment listener.
//!
//! One warp filter per listener captures the request (peer, method, path, query, headers, body stream) and
//! hands it to [`dispatch_api`] / [`dispatch_enroll`], which do, in this order:
//!
//! 1. `GET /health` is answered to any TLS peer;
//! 2. **authorization on every request**: the client certificate's fingerprint must be pinned in the
//!    ledger's decision state, not revoked, not expired, for the role the certificate names, and — for an
//!    agent — for a device that exists and is not decommissioned; otherwise `403 not_pinned`;
//! 3. route match (`404 not_found`, `405 method_not_allowed`), then the role check (`403 forbidden`);
//! 4. for bodies: `415` unless `Content-Type: application/json`, `413` over the limit, `400` for malformed
//!    JSON or unknown fields;
//! 5. the handler; engine rejections map to statuses in [`super::errors`].
//!
//! Every answer is counted in the metrics by route template, method and status.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use hwledger_engine::event::{Actor, CertRole};
use hwledger_engine::state::DeviceStatus;
use hwledger_engine::{Command, Context, Outcome, Submission};
use serde::Serialize;
use serde::de::DeserializeOwned;
use warp::Filter;
use warp::http::{HeaderMap, Method, StatusCode, header};

use super::errors::ApiError;
use super::{App, ReadModelError, ReadQuery, openapi, sse};
use crate::api::{
    BatchItemResult, BatchResponse, CaBundleResponse, CommandResponse, CommandStatus, ConsistencyProofResponse,
    DEFAULT_EVENTS_LIMIT, DeviceBody, DevicesResponse, EnrollRequest, EnrollResponse, EventBody, EventsPage,
    HealthResponse, InclusionProofResponse, MAX_BATCH, MAX_EVENTS_LIMIT, ReceiptBody, WhoAmIResponse,
};
use crate::pki::{Fingerprint, PkiError, Role, TokenHash};
use crate::transport::{PeerInfo, peer};

/// Every route of the mTLS API listener: (method, path template). The OpenAPI contract test checks each
/// appears in the document.
pub const API_ROUTES: &[(&str, &str)] = &[
    ("GET", "/health"),
    ("GET", "/metrics"),
    ("GET", "/v1/openapi.json"),
    ("GET", "/v1/whoami"),
    ("GET", "/v1/ca-bundle"),
    ("POST", "/v1/commands"),
    ("POST", "/v1/commands/batch"),
    ("GET", "/v1/events"),
    ("GET", "/v1/events/stream"),
    ("GET", "/v1/checkpoint"),
    ("GET", "/v1/proof/inclusion"),
    ("GET", "/v1/proof/consistency"),
    ("GET", "/v1/devices"),
    ("GET", "/v1/devices/{id}"),
    ("GET", "/v1/telemetry"),
    ("GET", "/v1/jobs"),
    ("GET", "/v1/cost"),
    ("GET", "/v1/dashboard"),
    ("GET", "/v1/projections"),
];

/// Every route of the enrollment listener.
pub const ENROLL_ROUTES: &[(&str, &str)] = &[("GET", "/health"), ("POST", "/v1/enroll")];

/// Every route of the loopback dashboard listener (plain HTTP).
pub const DASHBOARD_ROUTES: &[(&str, &str)] = &[("GET", "/dashboard"), ("GET", "/snapshot.json")];

/// A matched route of the API listener.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    Health,
    Metrics,
    OpenApi,
    WhoAmI,
    CaBundle,
    Commands,
    CommandsBatch,
    Events,
    EventsStream,
    Checkpoint,
    ProofInclusion,
    ProofConsistency,
    Devices,
    Device(String),
    Telemetry,
    Jobs,
    Cost,
    Dashboard,
    Projections,
}

impl Route {
    /// Matches a path: the route, its template (the metrics label) and its method.
    fn parse(path: &str) -> Option<(Route, &'static str, Method)> {
        let get = Method::GET;
        Some(match path {
            "/health" => (Route::Health, "/health", get),
            "/metrics" => (Route::Metrics, "/metrics", get),
            "/v1/openapi.json" => (Route::OpenApi, "/v1/openapi.json", get),
            "/v1/whoami" => (Route::WhoAmI, "/v1/whoami", get),
            "/v1/ca-bundle" => (Route::CaBundle, "/v1/ca-bundle", get),
            "/v1/commands" => (Route::Commands, "/v1/commands", Method::POST),
            "/v1/commands/batch" => (Route::CommandsBatch, "/v1/commands/batch", Method::POST),
            "/v1/events" => (Route::Events, "/v1/events", get),
            "/v1/events/stream" => (Route::EventsStream, "/v1/events/stream", get),
            "/v1/checkpoint" => (Route::Checkpoint, "/v1/checkpoint", get),
            "/v1/proof/inclusion" => (Route::ProofInclusion, "/v1/proof/inclusion", get),
            "/v1/proof/consistency" => (Route::ProofConsistency, "/v1/proof/consistency", get),
            "/v1/devices" => (Route::Devices, "/v1/devices", get),
            "/v1/telemetry" => (Route::Telemetry, "/v1/telemetry", get),
            "/v1/jobs" => (Route::Jobs, "/v1/jobs", get),
            "/v1/cost" => (Route::Cost, "/v1/cost", get),
            "/v1/dashboard" => (Route::Dashboard, "/v1/dashboard", get),
            "/v1/projections" => (Route::Projections, "/v1/projections", get),
            other => {
                let id = other.strip_prefix("/v1/devices/")?;
                if id.is_empty() || id.contains('/') {
                    return None;
                }
                (Route::Device(id.to_owned()), "/v1/devices/{id}", get)
            }
        })
    }
}

/// Who is calling, established from the certificate and its pin.
#[derive(Debug, Clone)]
pub(crate) struct Principal {
    pub(crate) role: Role,
    pub(crate) fingerprint: Fingerprint,
    pub(crate) actor: Actor,
}

/// What the dispatchers see of a request.
pub(crate) struct RequestParts {
    pub(crate) peer: PeerInfo,
    pub(crate) method: Method,
    pub(crate) path: String,
    pub(crate) query: String,
    pub(crate) headers: HeaderMap,
}

/// The warp filter of the mTLS API listener.
pub(crate) fn api_filter(
    app: Arc<App>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone + Send + Sync + 'static {
    capture().and(warp::body::stream()).then(move |parts: RequestParts, body| {
        let app = app.clone();
        async move {
            let start = Instant::now();
            let method = parts.method.clone();
            let (label, response) = dispatch_api(&app, parts, body).await;
            app.metrics.observe_request(label, method.as_str(), response.status().as_u16(), start.elapsed());
            response
        }
    })
}

/// The warp filter of the enrollment listener.
pub(crate) fn enroll_filter(
    app: Arc<App>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone + Send + Sync + 'static {
    capture().and(warp::body::stream()).then(move |parts: RequestParts, body| {
        let app = app.clone();
        async move {
            let start = Instant::now();
            let method = parts.method.clone();
            let (label, response) = dispatch_enroll(&app, parts, body).await;
            app.metrics.observe_request(label, method.as_str(), response.status().as_u16(), start.elapsed());
            response
        }
    })
}

/// Captures peer, method, path, query and headers of any request.
fn capture() -> impl Filter<Extract = (RequestParts,), Error = warp::Rejection> + Clone + Send + Sync + 'static {
    let query = warp::query::raw().or(warp::any().map(String::new)).unify();
    peer().and(warp::method()).and(warp::path::full()).and(query).and(warp::header::headers_cloned()).map(
        |peer: PeerInfo, method: Method, path: warp::path::FullPath, query: String, headers: HeaderMap| RequestParts {
            peer,
            method,
            path: path.as_str().to_owned(),
            query,
            headers,
        },
    )
}

/// A JSON response.
pub(crate) fn json_response<T: Serialize>(status: StatusCode, value: &T) -> warp::reply::Response {
    warp::reply::Reply::into_response(warp::reply::with_status(warp::reply::json(value), status))
}

fn ok_json<T: Serialize>(value: &T) -> Result<warp::reply::Response, ApiError> {
    Ok(json_response(StatusCode::OK, value))
}

fn text_response(content_type: &'static str, body: String) -> warp::reply::Response {
    warp::reply::Reply::into_response(warp::reply::with_header(body, header::CONTENT_TYPE, content_type))
}

/// Answers one request of the API listener; returns the route label for the metrics and the response.
async fn dispatch_api<S, B>(app: &App, parts: RequestParts, body: S) -> (&'static str, warp::reply::Response)
where
    S: Stream<Item = Result<B, warp::Error>> + Send,
    B: Buf + Send,
{
    let matched = Route::parse(&parts.path);
    let label = matched.as_ref().map_or("unmatched", |(_, t, _)| *t);
    let mut body = std::pin::pin!(body.fuse());
    let result = async {
        if let Some((Route::Health, _, m)) = &matched {
            check_method(&parts.method, m)?;
            return health(app);
        }
        let principal = authorize(app, &parts.peer).await?;
        let Some((route, _, method)) = matched else {
            return Err(ApiError::not_found(format!("no route {} {}", parts.method, parts.path)));
        };
        check_method(&parts.method, &method)?;
        handle_api(app, route, &parts, &principal, body.as_mut()).await
    }
    .await;
    if result.is_err() {
        drain_body(body.as_mut(), app.body_limit).await;
    }
    (label, result.unwrap_or_else(ApiError::into_response))
}

/// Answers one request of the enrollment listener.
async fn dispatch_enroll<S, B>(app: &App, parts: RequestParts, body: S) -> (&'static str, warp::reply::Response)
where
    S: Stream<Item = Result<B, warp::Error>> + Send,
    B: Buf + Send,
{
    let mut body = std::pin::pin!(body.fuse());
    let (label, result) = match parts.path.as_str() {
        "/health" => ("/health", check_method(&parts.method, &Method::GET).and_then(|()| health(app))),
        "/v1/enroll" => (
            "/v1/enroll",
            async {
                check_method(&parts.method, &Method::POST)?;
                let req: EnrollRequest = read_json(app, &parts.headers, body.as_mut()).await?;
                enroll(app, req).await
            }
            .await,
        ),
        other => (
            "unmatched",
            Err(ApiError::not_found(format!("no route {} {other} on the enrollment listener", parts.method))),
        ),
    };
    if result.is_err() {
        drain_body(body.as_mut(), app.body_limit).await;
    }
    (label, result.unwrap_or_else(ApiError::into_response))
}

/// Longest a refused request waits for the rest of its body (see [`drain_body`]).
const DRAIN_MAX_WAIT: Duration = Duration::from_secs(1);

/// Reads and discards what is left of a refused request's body — at most `limit` bytes and
/// [`DRAIN_MAX_WAIT`] — before the error is sent. A refusal decided from the headers alone (not pinned,
/// forbidden, wrong route) would otherwise answer an HTTP/2 stream whose body is still arriving, and hyper
/// then resets the stream; curl reports that as "Stream error in the HTTP/2 framing layer" instead of showing
/// the JSON error. Past either bound the stream is reset as before.
async fn drain_body<S, B>(body: S, limit: u64)
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let mut body = std::pin::pin!(body);
    let mut seen = 0u64;
    let _ = tokio::time::timeout(DRAIN_MAX_WAIT, async {
        while let Some(Ok(chunk)) = body.next().await {
            seen = seen.saturating_add(u64::try_from(chunk.remaining()).unwrap_or(u64::MAX));
            if seen > limit {
                break;
            }
        }
    })
    .await;
}

fn check_method(got: &Method, want: &Method) -> Result<(), ApiError> {
    if got == want {
        Ok(())
    } else {
        Err(ApiError::method_not_allowed(format!("use {want} for this route, not {got}")))
    }
}

/// Establishes who the peer is: the certificate's role, confirmed by an active pin in the ledger.
///
/// The pin is checked on every request: from the [`super::auth_cache`] while the ledger's auth epoch says no
/// commit has touched pins or devices since, else from the ledger's decision state. The writer holds that state
/// for the whole of a group commit (including the fdatasync); rather than block a runtime worker (and with
/// it every other connection) until then, a request that finds it busy waits on a blocking thread, so the
/// workers keep reading requests, which join the next group commit.
pub(crate) async fn authorize(app: &App, peer: &PeerInfo) -> Result<Principal, ApiError> {
    let Some(fingerprint) = peer.fingerprint else {
        return Err(ApiError::not_pinned("no client certificate was presented"));
    };
    // While the store is being recovered the decision state is empty: refuse with "retry later", not 403 (and
    // not from the cache either: nothing may be authorised while the ledger cannot write).
    if let Some(why) = app.ledger.unavailable() {
        // Requests are what make the writer retry the reopen; refused ones must ask for it.
        app.ledger.retry_storage();
        return Err(ApiError::unavailable("storage_unavailable", why));
    }
    let now = app.clock.now_ms();
    // Read before the state: if a commit changes pins in between, the entry is stale at once.
    let epoch = app.ledger.auth_epoch();
    if let Some(principal) = app.auth_cache.get(&fingerprint, epoch, now) {
        return Ok(principal);
    }
    let identity = peer
        .identity()
        .map_err(|e| ApiError::not_pinned(format!("certificate {fingerprint} carries no usable role: {e}")))?;
    let role = identity.role;
    let answer = match app.ledger.try_with_state(|state| check_pin(state, fingerprint, &role, now)) {
        Some(answer) => answer,
        None => {
            let ledger = app.ledger.clone();
            tokio::task::spawn_blocking(move || ledger.with_state(|state| check_pin(state, fingerprint, &role, now)))
                .await
                .map_err(|e| ApiError::internal(format!("checking the certificate pin: {e}")))?
        }
    };
    let (principal, not_after) = answer?;
    app.auth_cache.put(fingerprint, epoch, not_after, principal.clone());
    Ok(principal)
}

/// The pin check itself: pinned, not revoked, not expired, for this role and name; an agent's device enrolled
/// and not decommissioned. Returns the principal and the pin's expiry.
fn check_pin(
    state: &hwledger_engine::state::State,
    fingerprint: Fingerprint,
    role: &Role,
    now: i64,
) -> Result<(Principal, i64), ApiError> {
    let refuse = |why: &str| Err(ApiError::not_pinned(format!("certificate {fingerprint} ({role}) {why}")));
    let Some(pin) = state.certs.get(&fingerprint.0) else {
        return refuse("is not pinned in the ledger");
    };
    if pin.revoked {
        return refuse("is revoked");
    }
    if pin.not_after <= now {
        return refuse("has expired");
    }
    let pinned_matches = match (&pin.role, role) {
        (CertRole::Agent(d), Role::Agent { device_id }) => d == device_id,
        (CertRole::Operator(n), Role::Operator { name }) | (CertRole::Auditor(n), Role::Auditor { name }) => n == name,
        _ => false,
    };
    if !pinned_matches {
        return refuse("is pinned to a different identity");
    }
    let actor = match role {
        Role::Agent { device_id } => {
            match state.devices.get(device_id) {
                None => return refuse("speaks for a device that is not enrolled"),
                Some(d) if d.status == DeviceStatus::Decommissioned => {
                    return refuse("speaks for a decommissioned device");
                }
                Some(_) => {}
            }
            Actor::Agent(device_id.clone())
        }
        Role::Operator { name } => Actor::Operator(name.clone()),
        Role::Auditor { name } => Actor::Auditor(name.clone()),
    };
    Ok((Principal { role: role.clone(), fingerprint, actor }, pin.not_after))
}

/// Operators and auditors only.
fn require_reader(p: &Principal) -> Result<(), ApiError> {
    match p.role {
        Role::Operator { .. } | Role::Auditor { .. } => Ok(()),
        Role::Agent { .. } => {
            Err(ApiError::forbidden(format!("{} may not use this route (operators and auditors only)", p.role)))
        }
    }
}

async fn handle_api<S, B>(
    app: &App,
    route: Route,
    parts: &RequestParts,
    principal: &Principal,
    body: S,
) -> Result<warp::reply::Response, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>> + Send,
    B: Buf + Send,
{
    match route {
        Route::Health => health(app),
        Route::Metrics => {
            require_reader(principal)?;
            // OpenMetrics for scrapers that ask for it; the Prometheus text format otherwise.
            let openmetrics = parts
                .headers
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|a| a.contains("application/openmetrics-text"));
            let rendered = if openmetrics { app.metrics.render_openmetrics() } else { app.metrics.render_prometheus() };
            let text = rendered.map_err(|e| ApiError::internal(format!("encoding metrics: {e}")))?;
            Ok(text_response(
                if openmetrics {
                    "application/openmetrics-text; version=1.0.0; charset=utf-8"
                } else {
                    "text/plain; version=0.0.4; charset=utf-8"
                },
                text,
            ))
        }
        Route::OpenApi => ok_json(&openapi::document()),
        Route::WhoAmI => ok_json(&WhoAmIResponse {
            role: principal.role.kind().to_owned(),
            name: principal.role.name().to_owned(),
            fingerprint: principal.fingerprint.to_string(),
            remote_addr: parts.peer.remote_addr.to_string(),
            alpn: parts.peer.alpn.as_deref().map(|a| String::from_utf8_lossy(a).into_owned()),
        }),
        Route::CaBundle => ok_json(&CaBundleResponse { ca_pem: app.pki.ca_bundle_pem(app.clock.now()) }),
        Route::Commands => {
            require_writer(principal)?;
            let sub: Submission = read_json(app, &parts.headers, body).await?;
            submit_one(app, principal, sub).await
        }
        Route::CommandsBatch => {
            require_writer(principal)?;
            let items: Vec<serde_json::Value> = read_json(app, &parts.headers, body).await?;
            submit_batch(app, principal, items).await
        }
        Route::Events => {
            require_reader(principal)?;
            let q = Query::parse(&parts.query)?;
            q.allow(&["from", "to", "limit", "min_seq"])?;
            wait_ledger(app, &q).await?;
            events_page(app, &q).await
        }
        Route::EventsStream => {
            require_reader(principal)?;
            let q = Query::parse(&parts.query)?;
            q.allow(&["from"])?;
            let last_event_id = match parts.headers.get("last-event-id") {
                None => None,
                Some(v) => Some(v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()).ok_or_else(|| {
                    ApiError::invalid_query("Last-Event-ID must be the decimal seq of the last event received")
                })?),
            };
            // Resume after Last-Event-ID; else from `?from=` (default: only new events).
            let from = match (last_event_id, q.u64("from")?) {
                (Some(id), _) => id.saturating_add(1),
                (None, Some(from)) => from.max(1),
                (None, None) => app.ledger.head().seq.saturating_add(1),
            };
            Ok(sse::response(app, from))
        }
        Route::Checkpoint => {
            require_reader(principal)?;
            let q = Query::parse(&parts.query)?;
            q.allow(&["min_seq"])?;
            wait_ledger(app, &q).await?;
            match app.ledger.latest_checkpoint() {
                Some((_, note)) => Ok(text_response("text/plain; charset=utf-8", note)),
                None => Err(ApiError::new(StatusCode::NOT_FOUND, "no_checkpoint", "no checkpoint has been signed yet")),
            }
        }
        Route::ProofInclusion => {
            require_reader(principal)?;
            let q = Query::parse(&parts.query)?;
            q.allow(&["seq", "size", "min_seq"])?;
            wait_ledger(app, &q).await?;
            inclusion(app, &q)
        }
        Route::ProofConsistency => {
            require_reader(principal)?;
            let q = Query::parse(&parts.query)?;
            q.allow(&["from", "to", "min_seq"])?;
            wait_ledger(app, &q).await?;
            consistency(app, &q)
        }
        Route::Devices => {
            require_reader(principal)?;
            let q = Query::parse(&parts.query)?;
            match &app.read_models {
                Some(rm) => {
                    wait_read_models(app, &q).await?;
                    ok_json(&rm.devices(&q.read_query()).map_err(read_model_error)?)
                }
                None => {
                    q.allow(&["min_seq"])?;
                    wait_ledger(app, &q).await?;
                    ok_json(&devices_from_state(app, None))
                }
            }
        }
        Route::Device(id) => {
            if let Role::Agent { device_id } = &principal.role {
                if *device_id != id {
                    return Err(ApiError::forbidden(format!("agent {device_id} may only read its own device")));
                }
            }
            let q = Query::parse(&parts.query)?;
            q.allow(&["min_seq"])?;
            let unknown =
                || ApiError::new(StatusCode::NOT_FOUND, "device_unknown", format!("device {id} is not enrolled"));
            match &app.read_models {
                Some(rm) => {
                    wait_read_models(app, &q).await?;
                    ok_json(&rm.device(&id).map_err(read_model_error)?.ok_or_else(unknown)?)
                }
                None => {
                    wait_ledger(app, &q).await?;
                    let page = devices_from_state(app, Some(&id));
                    ok_json(&page.devices.into_iter().next().ok_or_else(unknown)?)
                }
            }
        }
        Route::Telemetry | Route::Jobs | Route::Cost | Route::Projections => {
            require_reader(principal)?;
            let q = Query::parse(&parts.query)?;
            let Some(rm) = &app.read_models else {
                return Err(ApiError::unavailable(
                    "read_model_unavailable",
                    "this server runs without projections; telemetry, jobs and cost are not available",
                ));
            };
            wait_read_models(app, &q).await?;
            let rq = q.read_query();
            let value = match route {
                Route::Telemetry => rm.telemetry(&rq),
                Route::Jobs => rm.jobs(&rq),
                Route::Projections => rm.projections(&rq),
                _ => rm.cost(&rq),
            };
            ok_json(&value.map_err(read_model_error)?)
        }
        Route::Dashboard => {
            require_reader(principal)?;
            let q = Query::parse(&parts.query)?;
            q.allow(&["min_seq"])?;
            match &app.read_models {
                Some(rm) => {
                    wait_read_models(app, &q).await?;
                    ok_json(&rm.dashboard().map_err(read_model_error)?)
                }
                None => {
                    wait_ledger(app, &q).await?;
                    ok_json(&super::dashboard::fallback_summary(app))
                }
            }
        }
    }
}

fn read_model_error(e: ReadModelError) -> ApiError {
    match e {
        ReadModelError::NotFound(m) => ApiError::not_found(m),
        ReadModelError::BadRequest(m) => ApiError::invalid_query(m),
        ReadModelError::Unavailable(m) => ApiError::unavailable("read_model_unavailable", m),
    }
}

/// Agents and operators submit; auditors are read-only.
fn require_writer(p: &Principal) -> Result<(), ApiError> {
    match p.role {
        Role::Agent { .. } | Role::Operator { .. } => Ok(()),
        Role::Auditor { .. } => {
            Err(ApiError::forbidden(format!("{} is read-only and may not submit commands", p.role)))
        }
    }
}

fn health(app: &App) -> Result<warp::reply::Response, ApiError> {
    let broken = app.ledger.broken();
    let unavailable = app.ledger.unavailable();
    if unavailable.is_some() {
        app.ledger.retry_storage();
    }
    ok_json(&HealthResponse {
        status: if broken.is_some() || unavailable.is_some() { "degraded" } else { "ok" }.to_owned(),
        head_seq: app.ledger.head().seq,
        broken,
        unavailable,
    })
}

/// Checks the content type and reads the body (bounded) and parses it.
async fn read_json<T, S, B>(app: &App, headers: &HeaderMap, body: S) -> Result<T, ApiError>
where
    T: DeserializeOwned,
    S: Stream<Item = Result<B, warp::Error>> + Send,
    B: Buf + Send,
{
    check_json_content_type(headers)?;
    let bytes = read_body(app.body_limit, headers, body).await?;
    parse_json(&bytes)
}

fn check_json_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err(ApiError::unsupported_media_type(None));
    };
    let text = value.to_str().map_err(|_| ApiError::unsupported_media_type(Some("<non-ASCII>")))?;
    let essence = text.split(';').next().unwrap_or_default().trim();
    if essence.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(ApiError::unsupported_media_type(Some(text)))
    }
}

/// Reads at most `limit` bytes of body; more is `413 body_too_large` (refused early when Content-Length
/// already says so).
async fn read_body<S, B>(limit: u64, headers: &HeaderMap, body: S) -> Result<Bytes, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>> + Send,
    B: Buf + Send,
{
    if let Some(len) =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|s| s.parse::<u64>().ok())
    {
        if len > limit {
            return Err(ApiError::body_too_large(limit));
        }
    }
    let mut body = std::pin::pin!(body);
    let mut buf = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk.map_err(|e| ApiError::malformed_json(format!("reading the request body failed: {e}")))?;
        let total = u64::try_from(buf.len().saturating_add(chunk.remaining())).unwrap_or(u64::MAX);
        if total > limit {
            return Err(ApiError::body_too_large(limit));
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            let n = part.len();
            buf.extend_from_slice(part);
            chunk.advance(n);
        }
    }
    Ok(buf.freeze())
}

/// Parses JSON, telling unknown fields apart from other malformed input.
fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| json_error(&e, None))
}

fn json_error(e: &serde_json::Error, item: Option<usize>) -> ApiError {
    let prefix = item.map(|i| format!("item {i}: ")).unwrap_or_default();
    if e.classify() == serde_json::error::Category::Data && e.to_string().contains("unknown field") {
        ApiError::unknown_field(format!("{prefix}{e}"))
    } else {
        ApiError::malformed_json(format!("{prefix}{e}"))
    }
}

fn context(app: &App, principal: &Principal) -> Context {
    Context::new(principal.actor.clone(), app.clock.now_ms())
}

async fn submit_one(app: &App, principal: &Principal, sub: Submission) -> Result<warp::reply::Response, ApiError> {
    let started = Instant::now();
    let result = app.ledger.submit_async(sub, context(app, principal)).await;
    app.metrics.observe_commit(started.elapsed());
    let response = match &result {
        Ok(Outcome::Accepted(r)) => Ok(CommandResponse { status: CommandStatus::Accepted, receipt: r.into() }),
        Ok(Outcome::Duplicate(r)) => Ok(CommandResponse { status: CommandStatus::Duplicate, receipt: r.into() }),
        Ok(Outcome::Rejected(rejection)) => Err(ApiError::from(rejection)),
        Err(e) => Err(ApiError::from(e)),
    };
    match &response {
        Ok(r) => {
            app.metrics.observe_command(if r.status == CommandStatus::Accepted { "accepted" } else { "duplicate" })
        }
        Err(e) => app.metrics.observe_command(e.code),
    }
    ok_json(&response?)
}

async fn submit_batch(
    app: &App,
    principal: &Principal,
    items: Vec<serde_json::Value>,
) -> Result<warp::reply::Response, ApiError> {
    if items.len() > MAX_BATCH {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "batch_too_large",
            format!("{} submissions in one batch; at most {MAX_BATCH}", items.len()),
        ));
    }
    let ctx = context(app, principal);
    let mut subs = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let sub: Submission = serde_json::from_value(item).map_err(|e| json_error(&e, Some(i)))?;
        subs.push((sub, ctx.clone()));
    }
    let n = subs.len();
    if n == 0 {
        return ok_json(&BatchResponse { results: Vec::new() });
    }
    let started = Instant::now();
    let outcomes = app.ledger.submit_many(subs).outcomes().await;
    app.metrics.observe_commit(started.elapsed());
    if outcomes.len() != n {
        return Err(ApiError::unavailable("ledger_closed", "the ledger closed before answering"));
    }
    let results = outcomes
        .iter()
        .map(|o| {
            let item = match o {
                Ok(Outcome::Accepted(r)) => BatchItemResult::Accepted { receipt: ReceiptBody::from(r) },
                Ok(Outcome::Duplicate(r)) => BatchItemResult::Duplicate { receipt: ReceiptBody::from(r) },
                Ok(Outcome::Rejected(r)) => {
                    BatchItemResult::Rejected { code: r.code().to_owned(), message: r.to_string() }
                }
                Err(e) => BatchItemResult::Rejected { code: e.code().to_owned(), message: e.to_string() },
            };
            app.metrics.observe_command(match &item {
                BatchItemResult::Accepted { .. } => "accepted",
                BatchItemResult::Duplicate { .. } => "duplicate",
                BatchItemResult::Rejected { code, .. } => code,
            });
            item
        })
        .collect();
    ok_json(&BatchResponse { results })
}

/// Query parameters, percent-decoded, each at most once.
pub(crate) struct Query(BTreeMap<String, String>);

impl Query {
    /// Parses `a=1&b=x%20y`.
    pub(crate) fn parse(raw: &str) -> Result<Query, ApiError> {
        let mut map = BTreeMap::new();
        for pair in raw.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let k = percent_decode(k)?;
            let v = percent_decode(v)?;
            if map.insert(k.clone(), v).is_some() {
                return Err(ApiError::invalid_query(format!("query parameter {k:?} is given more than once")));
            }
        }
        Ok(Query(map))
    }

    /// Refuses parameters outside `known`.
    fn allow(&self, known: &[&str]) -> Result<(), ApiError> {
        match self.0.keys().find(|k| !known.contains(&k.as_str())) {
            Some(k) => {
                Err(ApiError::invalid_query(format!("unknown query parameter {k:?}; known: {}", known.join(", "))))
            }
            None => Ok(()),
        }
    }

    /// A decimal u64 parameter.
    pub(crate) fn u64(&self, key: &str) -> Result<Option<u64>, ApiError> {
        self.0
            .get(key)
            .map(|v| {
                v.parse::<u64>().map_err(|_| {
                    ApiError::invalid_query(format!("query parameter {key} must be a non-negative integer, got {v:?}"))
                })
            })
            .transpose()
    }

    fn read_query(&self) -> ReadQuery {
        let mut params = self.0.clone();
        params.remove("min_seq");
        ReadQuery { params }
    }
}

/// Longest query value accepted after decoding; no parameter of this API needs more.
const MAX_QUERY_VALUE: usize = 1024;

fn percent_decode(s: &str) -> Result<String, ApiError> {
    let bad =
        || ApiError::invalid_query(format!("bad percent-encoding in {:?}", s.chars().take(80).collect::<String>()));
    if s.len() > MAX_QUERY_VALUE * 3 {
        return Err(ApiError::invalid_query("query parameter too long"));
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or_else(bad)?;
                let hex = std::str::from_utf8(hex).map_err(|_| bad())?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            other => {
                out.push(other);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}

/// Waits (bounded by `read_wait_max`) until `current()` reaches `?min_seq`, if given.
async fn wait_for_seq(app: &App, q: &Query, current: impl Fn() -> u64) -> Result<(), ApiError> {
    let Some(min) = q.u64("min_seq")? else {
        return Ok(());
    };
    let deadline = Instant::now() + app.read_wait_max;
    let mut delay = Duration::from_millis(2);
    loop {
        let at = current();
        if at >= min {
            return Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(ApiError::unavailable(
                "not_caught_up",
                format!(
                    "reads are at seq {at}, not yet at min_seq {min} after {} ms; retry",
                    app.read_wait_max.as_millis()
                ),
            ));
        }
        tokio::time::sleep(delay.min(deadline - now)).await;
        delay = (delay * 2).min(Duration::from_millis(50));
    }
}

async fn wait_ledger(app: &App, q: &Query) -> Result<(), ApiError> {
    wait_for_seq(app, q, || app.ledger.head().seq).await
}

async fn wait_read_models(app: &App, q: &Query) -> Result<(), ApiError> {
    match &app.read_models {
        Some(rm) => wait_for_seq(app, q, || rm.applied_seq()).await,
        None => wait_ledger(app, q).await,
    }
}

async fn events_page(app: &App, q: &Query) -> Result<warp::reply::Response, ApiError> {
    let from = q.u64("from")?.unwrap_or(1);
    let to = q.u64("to")?.unwrap_or(u64::MAX);
    let limit = q.u64("limit")?.unwrap_or(DEFAULT_EVENTS_LIMIT);
    if from == 0 {
        return Err(ApiError::invalid_query("from must be at least 1 (seqs start at 1)"));
    }
    if to < from {
        return Err(ApiError::invalid_query(format!("to ({to}) must not be below from ({from})")));
    }
    if !(1..=MAX_EVENTS_LIMIT).contains(&limit) {
        return Err(ApiError::invalid_query(format!("limit must be 1-{MAX_EVENTS_LIMIT}")));
    }
    let head = app.ledger.head().seq;
    let wanted_end = to.min(head);
    let end = wanted_end.min(from.saturating_add(limit - 1));
    let events = if from > end {
        Vec::new()
    } else {
        let ledger = app.ledger.clone();
        tokio::task::spawn_blocking(move || ledger.read(from, end))
            .await
            .map_err(|e| ApiError::internal(format!("reading events: {e}")))?
            .map_err(|e| ApiError::unavailable("storage_unavailable", format!("reading events {from}-{end}: {e}")))?
    };
    let next_from = (end < wanted_end).then(|| end + 1);
    ok_json(&EventsPage { events: events.iter().map(EventBody::from).collect(), head_seq: head, next_from })
}

fn proof_error(e: hwledger_engine::ledger::ProofError) -> ApiError {
    match e {
        hwledger_engine::ledger::ProofError::Range(m) => ApiError::new(StatusCode::BAD_REQUEST, "invalid_range", m),
        hwledger_engine::ledger::ProofError::Store(m) => ApiError::unavailable("storage_unavailable", m),
    }
}

fn inclusion(app: &App, q: &Query) -> Result<warp::reply::Response, ApiError> {
    let seq = q.u64("seq")?.ok_or_else(|| ApiError::invalid_query("seq is required"))?;
    let size = q.u64("size")?.unwrap_or_else(|| app.ledger.head().seq);
    let proof = app.ledger.inclusion_proof(seq, size).map_err(proof_error)?;
    let root = app.ledger.root(size).map_err(proof_error)?;
    ok_json(&InclusionProofResponse {
        seq,
        leaf_index: seq - 1,
        tree_size: size,
        root: B64.encode(root),
        proof: proof.iter().map(|h| B64.encode(h)).collect(),
    })
}

fn consistency(app: &App, q: &Query) -> Result<warp::reply::Response, ApiError> {
    let from = q.u64("from")?.ok_or_else(|| ApiError::invalid_query("from is required"))?;
    let to = q.u64("to")?.unwrap_or_else(|| app.ledger.head().seq);
    if from > to {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_range",
            format!("from ({from}) exceeds to ({to})"),
        ));
    }
    let proof = app.ledger.consistency_proof(from, to).map_err(proof_error)?;
    let from_root = if from == 0 { None } else { Some(B64.encode(app.ledger.root(from).map_err(proof_error)?)) };
    let to_root = B64.encode(app.ledger.root(to).map_err(proof_error)?);
    ok_json(&ConsistencyProofResponse {
        from,
        to,
        from_root,
        to_root,
        proof: proof.iter().map(|h| B64.encode(h)).collect(),
    })
}

/// Devices from the engine's decision state (the fallback until projections are wired in).
pub(crate) fn devices_from_state(app: &App, only: Option<&str>) -> DevicesResponse {
    app.ledger.with_state(|state| {
        let mut devices: Vec<DeviceBody> = state
            .devices
            .iter()
            .filter(|(id, _)| only.is_none_or(|o| o == id.as_str()))
            .map(|(id, d)| {
                let mut certificates: Vec<String> = state
                    .certs
                    .iter()
                    .filter(|(_, c)| !c.revoked && matches!(&c.role, CertRole::Agent(dev) if dev == id))
                    .map(|(fp, _)| hex::encode(fp))
                    .collect();
                certificates.sort();
                DeviceBody {
                    device_id: id.clone(),
                    kind: serde_json::to_value(&d.kind).unwrap_or(serde_json::Value::Null),
                    status: match d.status {
                        DeviceStatus::Enrolled => "enrolled",
                        DeviceStatus::Active => "active",
                        DeviceStatus::Decommissioned => "decommissioned",
                    }
                    .to_owned(),
                    gpus: d.gpus.iter().filter_map(|g| serde_json::to_value(g).ok()).collect(),
                    version: d.version,
                    host_key: d.host_key.clone(),
                    certificates,
                }
            })
            .collect();
        devices.sort_by(|a, b| a.device_id.cmp(&b.device_id));
        DevicesResponse { devices, as_of_seq: state.last_seq }
    })
}

/// `POST /v1/enroll`: spends a bootstrap token for a certificate signed over the device's CSR.
async fn enroll(app: &App, req: EnrollRequest) -> Result<warp::reply::Response, ApiError> {
    let now = app.clock.now();
    let now_ms = super::unix_ms(now);
    let token_hash = TokenHash::of(&req.token);
    let token_unknown = || ApiError::new(StatusCode::FORBIDDEN, "token_unknown", "bootstrap token is not known");
    // Over-long input is not a token; refuse without looking further.
    if req.token.is_empty() || req.token.len() > 256 {
        return Err(token_unknown());
    }
    let token = app.ledger.with_state(|s| s.tokens.get(&token_hash.0).cloned()).ok_or_else(token_unknown)?;
    // Checked here too (the engine decides again atomically) so a spent or expired token costs no signature.
    if token.used {
        return Err(ApiError::from(&hwledger_engine::Rejection::TokenUsed));
    }
    if token.expires_at <= now_ms {
        return Err(ApiError::from(&hwledger_engine::Rejection::TokenExpired));
    }
    let role = Role::agent(&token.device_id).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_command",
            format!("the token's device id is unusable: {e}"),
        )
    })?;
    let cert = app.pki.sign_csr(&req.csr_pem, &role, app.agent_cert_validity, now).map_err(|e| match e {
        PkiError::CsrTooLarge { .. } => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", e.to_string()),
        PkiError::MalformedCsr { .. } | PkiError::CsrBadSignature | PkiError::CsrUnsupportedKey => {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_csr", e.to_string())
        }
        other => {
            tracing::error!(error = %other, "signing an enrollment CSR failed");
            ApiError::internal("the server could not sign the certificate")
        }
    })?;
    let sub = Submission {
        command_id: format!("enroll-{}", cert.fingerprint),
        expected_version: None,
        command: Command::RedeemBootstrapToken {
            token_hash: token_hash.0,
            fingerprint: cert.fingerprint.0,
            serial: cert.serial.clone(),
            not_after: super::unix_ms(cert.not_after),
            hostname: req.hostname,
        },
    };
    let started = Instant::now();
    let result = app.ledger.submit_async(sub, Context::new(Actor::System, now_ms)).await;
    app.metrics.observe_commit(started.elapsed());
    let receipt = match result {
        Ok(Outcome::Accepted(r) | Outcome::Duplicate(r)) => r,
        Ok(Outcome::Rejected(r)) => return Err(ApiError::from(&r)),
        Err(e) => return Err(ApiError::from(&e)),
    };
    tracing::info!(device = %token.device_id, fingerprint = %cert.fingerprint, "device enrolled with a bootstrap token");
    ok_json(&EnrollResponse {
        device_id: token.device_id,
        cert_pem: cert.cert_pem,
        ca_pem: app.pki.ca_bundle_pem(now),
        fingerprint: cert.fingerprint.to_string(),
        not_after: super::unix_ms(cert.not_after),
        receipt: ReceiptBody::from(&receipt),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_parse() {
        assert_eq!(Route::parse("/v1/devices/gpu-1").map(|r| r.0), Some(Route::Device("gpu-1".into())));
        assert!(Route::parse("/v1/devices/a/b").is_none());
        assert!(Route::parse("/v1/devices/").is_none());
        assert!(Route::parse("/nope").is_none());
        for (method, path) in API_ROUTES {
            let concrete = path.replace("{id}", "x");
            let parsed = Route::parse(&concrete);
            assert_eq!(parsed.map(|(_, t, m)| (m.as_str().to_owned(), t)), Some(((*method).to_owned(), *path)));
        }
    }

    #[test]
    fn query_parsing_is_total() {
        assert!(Query::parse("a=1&b=x%20y+z").is_ok());
        assert!(Query::parse("a=1&a=2").is_err());
        assert!(Query::parse("a=%zz").is_err());
        assert!(Query::parse("a=%e").is_err());
        assert!(Query::parse("a=%ff").is_err());
        assert!(Query::parse("").is_ok_and(|q| q.0.is_empty()));
        let q = Query::parse("n=12&m=-1").ok();
        assert_eq!(q.as_ref().map(|q| q.u64("n").ok()), Some(Some(Some(12))));
        assert!(q.as_ref().is_some_and(|q| q.u64("m").is_err()));
    }
}
