//! The typed HTTPS client of the hwledger API: one method per route, returning the [`crate::api`] types,
//! over a reqwest client that trusts only the fleet CA and presents the caller's certificate
//! ([`crate::client_tls`]). Used by the CLI (`--server`), the agent, and anything that talks to a server.
//!
//! ```text
//! let client = Client::from_bundle_dir("https://ledger:8443", Path::new("bundle"))?;
//! let receipt = client.submit(&submission).await?;        // 200 (accepted or duplicate)
//! let devices = client.devices(Some(receipt.receipt.seq)).await?;   // read-your-writes
//! ```
//!
//! Every non-2xx answer becomes [`ClientError::Api`] with the server's stable `code`; every body is read
//! with a size limit; [`ClientError::is_retryable`] tells an outbox whether to try again later (connect and
//! timeout failures, 5xx, 429) or to give up on the item (any other 4xx). Commands are idempotent by
//! `command_id`, so retrying a submission whose answer was lost returns the original receipt.

mod enroll;
mod sse;

use std::path::{Path, PathBuf};
use std::time::Duration;

use hwledger_projections::GroupBy;
use reqwest::header::{CONTENT_TYPE, HeaderMap, RETRY_AFTER};
use reqwest::{Method, StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::{
    BatchResponse, CaBundleResponse, CommandResponse, ConsistencyProofResponse, EnrollRequest, EnrollResponse,
    ErrorBody, EventsPage, HealthResponse, InclusionProofResponse, MAX_BATCH, MAX_EVENTS_LIMIT, Submission,
    WhoAmIResponse,
};
use crate::client_tls::{ClientTlsError, streaming_client_builder};

pub use enroll::{EnrollError, EnrolledBundle, redeem_bootstrap_token};
pub use sse::EventStream;

/// Default timeout of one request (connect, TLS handshake, server work, reading the answer).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest successful response body read, in bytes. The biggest legitimate answer is a page of
/// [`MAX_EVENTS_LIMIT`] events or a large fleet's device list: a few MiB.
pub const MAX_RESPONSE_BYTES: usize = 32 * 1024 * 1024;

/// Largest error body read: `{code, message}` is small; anything longer is cut (and then not JSON).
const MAX_ERROR_BYTES: usize = 64 * 1024;

/// How long an event stream may stay silent before the connection is presumed dead: the server sends a
/// keep-alive comment every 15 s.
pub const STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(45);

/// Largest CA bundle, certificate or key file read from a bundle directory.
const MAX_PEM_FILE: u64 = 1024 * 1024;

/// Why a request did not produce the expected answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error `{code, message}`.
    #[error("server answered {status}: {code}: {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The server's stable error code (`not_pinned`, `device_unknown`, ...).
        code: String,
        /// The server's message.
        message: String,
        /// The `Retry-After` the server asked for, if any.
        retry_after: Option<Duration>,
    },
    /// The server answered with a non-2xx status and a body that is not an API error (a proxy's page, a
    /// truncated body).
    #[error("server answered {status} with a body that is not an API error ({content_type}): {snippet}")]
    UnexpectedStatus {
        /// HTTP status.
        status: u16,
        /// Its `Content-Type`.
        content_type: String,
        /// The start of the body, for a human.
        snippet: String,
        /// The `Retry-After` the server asked for, if any.
        retry_after: Option<Duration>,
    },
    /// Connecting, the TLS handshake, sending or receiving failed, or the request timed out.
    #[error("request to {url} failed: {source}")]
    Transport {
        /// The URL asked for.
        url: String,
        /// What reqwest reported (its chain says whether it was connect, TLS, timeout...).
        #[source]
        source: reqwest::Error,
    },
    /// A 2xx answer whose body is not what the route returns.
    #[error("cannot decode the answer of {url}: {reason}")]
    Decode {
        /// The URL asked for.
        url: String,
        /// What was wrong.
        reason: String,
    },
    /// No answer (head) within the request timeout.
    #[error("no answer from {url} within {after:?}")]
    Timeout {
        /// The URL asked for.
        url: String,
        /// The timeout.
        after: Duration,
    },
    /// An answer larger than the client reads.
    #[error("the answer of {url} exceeds {limit} bytes")]
    BodyTooLarge {
        /// The URL asked for.
        url: String,
        /// The limit.
        limit: usize,
    },
    /// The HTTPS client could not be built from the CA bundle and identity.
    #[error(transparent)]
    Tls(#[from] ClientTlsError),
    /// The server URL is unusable.
    #[error("server URL {url:?}: {reason}")]
    BadUrl {
        /// The URL given.
        url: String,
        /// Why.
        reason: String,
    },
    /// A credential bundle directory or file could not be used.
    #[error("credential bundle {path}: {reason}")]
    Bundle {
        /// The directory or file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A request could not be formed from the arguments (e.g. an over-long batch).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
}

impl ClientError {
    /// Whether trying the same request again later may succeed: connect, TLS-transport and timeout failures,
    /// 5xx (503 `storage_unavailable`, `not_caught_up`, ...) and 429. Any other 4xx means the request itself is
    /// refused (bad input, not pinned, forbidden, conflict) and repeating it changes nothing; decoding and
    /// configuration errors are not retryable either.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Api { status, .. } | ClientError::UnexpectedStatus { status, .. } => {
                *status >= 500 || *status == 429 || *status == 408
            }
            ClientError::Transport { source, .. } => !source.is_builder() && !source.is_redirect(),
            ClientError::Timeout { .. } => true,
            ClientError::Decode { .. }
            | ClientError::BodyTooLarge { .. }
            | ClientError::Tls(_)
            | ClientError::BadUrl { .. }
            | ClientError::Bundle { .. }
            | ClientError::InvalidRequest(_) => false,
        }
    }

    /// How long the server asked the client to wait before retrying (`Retry-After` in seconds), if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ClientError::Api { retry_after, .. } | ClientError::UnexpectedStatus { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The server's error code, for [`ClientError::Api`].
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The HTTP status, when the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } | ClientError::UnexpectedStatus { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// The files of a credential bundle, as [`crate::pki::write_bundle`] writes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleFiles {
    /// `ca.crt`: the CA bundle to trust.
    pub ca: PathBuf,
    /// `<kind>-<name>.crt`: the client certificate.
    pub cert: PathBuf,
    /// `<kind>-<name>.key`: its private key.
    pub key: PathBuf,
}

impl BundleFiles {
    /// Finds the bundle in `dir`: `ca.crt` plus exactly one `<stem>.key` with its `<stem>.crt`. A directory
    /// holding several identities is refused (naming them) rather than guessed at.
    pub fn find(dir: &Path) -> Result<BundleFiles, ClientError> {
        let bad = |reason: String| ClientError::Bundle { path: dir.to_path_buf(), reason };
        let entries = std::fs::read_dir(dir).map_err(|e| bad(format!("cannot list the directory: {e}")))?;
        let mut keys = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| bad(format!("cannot list the directory: {e}")))?;
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "key") && path.is_file() {
                keys.push(path);
            }
        }
        keys.sort();
        let key = match keys.as_slice() {
            [] => return Err(bad("no private key (*.key) in it".into())),
            [one] => one.clone(),
            many => {
                let names: Vec<String> =
                    many.iter().filter_map(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned()).collect();
                return Err(bad(format!(
                    "it holds several identities ({}); pass --cert/--key/--ca instead",
                    names.join(", ")
                )));
            }
        };
        let cert = key.with_extension("crt");
        if !cert.is_file() {
            return Err(bad(format!("{} has no matching {}", display_name(&key), display_name(&cert))));
        }
        let ca = dir.join("ca.crt");
        if !ca.is_file() {
            return Err(bad("no ca.crt in it".into()));
        }
        Ok(BundleFiles { ca, cert, key })
    }
}

fn display_name(p: &Path) -> String {
    p.file_name().map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into_owned())
}

/// Reads a PEM file of a bundle, bounded.
pub(crate) fn read_pem_file(path: &Path) -> Result<Vec<u8>, ClientError> {
    use std::io::Read;
    let bad = |reason: String| ClientError::Bundle { path: path.to_path_buf(), reason };
    let file = std::fs::File::open(path).map_err(|e| bad(format!("cannot open: {e}")))?;
    let mut buf = Vec::new();
    file.take(MAX_PEM_FILE + 1).read_to_end(&mut buf).map_err(|e| bad(format!("cannot read: {e}")))?;
    if u64::try_from(buf.len()).unwrap_or(u64::MAX) > MAX_PEM_FILE {
        return Err(bad(format!("larger than {MAX_PEM_FILE} bytes; not a PEM certificate or key")));
    }
    Ok(buf)
}

/// A typed client of one hwledger server.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    /// The base URL without a trailing slash (`https://host:8443` or `https://host/prefix`).
    base: String,
    timeout: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("base", &self.base).field("timeout", &self.timeout).finish()
    }
}

/// How a [`Client`] talks to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientOptions {
    /// Timeout of one request (connect, handshake, server work, reading the answer).
    pub timeout: Duration,
    /// Speak HTTP/1.1 (one kept-alive connection, one request at a time on it) instead of negotiating
    /// HTTP/2 (many concurrent requests on one connection).
    pub http1_only: bool,
}

impl Default for ClientOptions {
    fn default() -> ClientOptions {
        ClientOptions { timeout: DEFAULT_TIMEOUT, http1_only: false }
    }
}

/// The optional filters of `GET /v1/telemetry`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TelemetryQuery {
    /// The device.
    pub device: String,
    /// Only samples at or after this time (unix ms).
    pub from: Option<i64>,
    /// Only samples at or before this time (unix ms).
    pub to: Option<i64>,
    /// Only this GPU index.
    pub gpu: Option<u32>,
}

fn group_by_param(by: GroupBy) -> &'static str {
    match by {
        GroupBy::None => "none",
        GroupBy::Device => "device",
        GroupBy::Backend => "backend",
        GroupBy::Day => "day",
    }
}

impl Client {
    /// A client of the server at `base_url` (`https://host:port`, optionally with a path prefix) trusting
    /// only the CA certificates in `ca_pem`, presenting `identity = (cert_pem, key_pem)` if given (the
    /// enrollment listener needs none), with `timeout` per request.
    pub fn new(
        base_url: &str,
        ca_pem: &[u8],
        identity: Option<(&[u8], &[u8])>,
        timeout: Duration,
    ) -> Result<Client, ClientError> {
        Client::with_options(base_url, ca_pem, identity, ClientOptions { timeout, ..ClientOptions::default() })
    }

    /// [`Client::new`] with every option.
    pub fn with_options(
        base_url: &str,
        ca_pem: &[u8],
        identity: Option<(&[u8], &[u8])>,
        options: ClientOptions,
    ) -> Result<Client, ClientError> {
        let base = normalise_base(base_url)?;
        let timeout = options.timeout;
        if timeout.is_zero() {
            return Err(ClientError::InvalidRequest("the request timeout must be positive".into()));
        }
        let mut builder = streaming_client_builder(ca_pem, identity, timeout)?
            // Per read, so a silent event stream is noticed; ordinary requests also carry `timeout`.
            .read_timeout(timeout.max(STREAM_IDLE_TIMEOUT))
            .tcp_nodelay(true);
        if options.http1_only {
            builder = builder.http1_only();
        }
        let http = builder.build().map_err(ClientTlsError::Build)?;
        Ok(Client { http, base, timeout })
    }

    /// A client with the credentials in a bundle directory (`ca.crt`, `<kind>-<name>.crt`, `.key`), as
    /// written by `hwledger enroll … --out DIR`, `enroll redeem` and the server's first start.
    pub fn from_bundle_dir(base_url: &str, dir: &Path) -> Result<Client, ClientError> {
        let files = BundleFiles::find(dir)?;
        Client::from_files(base_url, &files.ca, &files.cert, &files.key)
    }

    /// A client with credentials from three PEM files.
    pub fn from_files(base_url: &str, ca: &Path, cert: &Path, key: &Path) -> Result<Client, ClientError> {
        let ca_pem = read_pem_file(ca)?;
        let cert_pem = read_pem_file(cert)?;
        let key_pem = read_pem_file(key)?;
        Client::new(base_url, &ca_pem, Some((&cert_pem, &key_pem)), DEFAULT_TIMEOUT)
    }

    /// The base URL, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `POST /v1/commands`: one command; `status` says whether it was appended now or is a duplicate (the
    /// original receipt). A rule violation is `Api` with the rejection's code (`device_unknown`, ...).
    pub async fn submit(&self, submission: &Submission) -> Result<CommandResponse, ClientError> {
        self.post_json("/v1/commands", submission).await
    }

    /// `POST /v1/commands/batch`: up to [`MAX_BATCH`] commands in one durable group; one result per
    /// submission, in order (per-item rejections are results, not errors).
    pub async fn submit_batch(&self, submissions: &[Submission]) -> Result<BatchResponse, ClientError> {
        if submissions.len() > MAX_BATCH {
            return Err(ClientError::InvalidRequest(format!(
                "{} submissions in one batch; at most {MAX_BATCH}",
                submissions.len()
            )));
        }
        let response: BatchResponse = self.post_json("/v1/commands/batch", &submissions).await?;
        if response.results.len() != submissions.len() {
            return Err(ClientError::Decode {
                url: self.url_string("/v1/commands/batch"),
                reason: format!("{} results for {} submissions", response.results.len(), submissions.len()),
            });
        }
        Ok(response)
    }

    /// `GET /v1/devices`: the registry projection's devices (JSON objects as the server renders them).
    pub async fn devices(&self, min_seq: Option<u64>) -> Result<Vec<serde_json::Value>, ClientError> {
        let url = self.url("/v1/devices", &[], min_seq)?;
        let value: serde_json::Value = self.get_json(url.clone()).await?;
        take_array(value, "devices", &url)
    }

    /// `GET /v1/devices/{id}`: one device; `Api { code: "device_unknown" }` if it is not enrolled.
    pub async fn device(&self, device_id: &str, min_seq: Option<u64>) -> Result<serde_json::Value, ClientError> {
        let mut url = self.url("/v1/devices", &[], min_seq)?;
        url.path_segments_mut()
            .map_err(|()| ClientError::BadUrl { url: self.base.clone(), reason: "cannot be a base".into() })?
            .push(device_id);
        self.get_json(url).await
    }

    /// `GET /v1/telemetry`: a device's latest readings and bounded history.
    pub async fn telemetry(&self, q: &TelemetryQuery, min_seq: Option<u64>) -> Result<serde_json::Value, ClientError> {
        let from = q.from.map(|v| v.to_string());
        let to = q.to.map(|v| v.to_string());
        let gpu = q.gpu.map(|v| v.to_string());
        let mut params = vec![("device", q.device.as_str())];
        params.extend(from.as_deref().map(|v| ("from", v)));
        params.extend(to.as_deref().map(|v| ("to", v)));
        params.extend(gpu.as_deref().map(|v| ("gpu", v)));
        let url = self.url("/v1/telemetry", &params, min_seq)?;
        self.get_json(url).await
    }

    /// `GET /v1/jobs`: every job and its cost.
    pub async fn jobs(&self, min_seq: Option<u64>) -> Result<Vec<serde_json::Value>, ClientError> {
        let url = self.url("/v1/jobs", &[], min_seq)?;
        let value: serde_json::Value = self.get_json(url.clone()).await?;
        take_array(value, "jobs", &url)
    }

    /// `GET /v1/cost`: totals over the `window` ending now, grouped `by`.
    pub async fn cost(
        &self,
        window: Duration,
        by: GroupBy,
        min_seq: Option<u64>,
    ) -> Result<serde_json::Value, ClientError> {
        let window = format!("{}s", window.as_secs());
        let url = self.url("/v1/cost", &[("window", &window), ("by", group_by_param(by))], min_seq)?;
        self.get_json(url).await
    }

    /// `GET /v1/dashboard`: the operator dashboard projection.
    pub async fn dashboard(&self, min_seq: Option<u64>) -> Result<serde_json::Value, ClientError> {
        let url = self.url("/v1/dashboard", &[], min_seq)?;
        self.get_json(url).await
    }

    /// `GET /v1/events`: one page of events `from..=to` (auditors and operators). Follow `next_from` for the
    /// rest of the range; `to = None` means up to the head.
    pub async fn events(&self, from: u64, to: Option<u64>, min_seq: Option<u64>) -> Result<EventsPage, ClientError> {
        let from = from.to_string();
        let to = to.map(|t| t.to_string());
        let limit = MAX_EVENTS_LIMIT.to_string();
        let mut params = vec![("from", from.as_str()), ("limit", limit.as_str())];
        params.extend(to.as_deref().map(|t| ("to", t)));
        let url = self.url("/v1/events", &params, min_seq)?;
        self.get_json(url).await
    }

    /// `GET /v1/events/stream`: the live event stream. With `last_event_id = Some(n)` it starts at seq
    /// `n + 1` (`Some(0)`: the whole log), with `None` at the next event appended. Resume after a broken
    /// connection with [`EventStream::last_event_id`]: no gap, no duplicate.
    pub async fn events_stream(&self, last_event_id: Option<u64>) -> Result<EventStream, ClientError> {
        let url = self.url("/v1/events/stream", &[], None)?;
        let mut req = self.http.get(url.clone()).header(reqwest::header::ACCEPT, "text/event-stream");
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id.to_string());
        }
        // No whole-request timeout here: the stream lives as long as the caller reads it; the client's
        // read timeout notices a dead connection. The answer's head must still come within `timeout`.
        let resp = tokio::time::timeout(self.timeout, req.send())
            .await
            .map_err(|_| ClientError::Timeout { url: url.to_string(), after: self.timeout })
            .and_then(|r| r.map_err(|source| ClientError::Transport { url: url.to_string(), source }))?;
        let resp = check_status(resp, &url).await?;
        let content_type = header_string(resp.headers(), CONTENT_TYPE);
        if !content_type.starts_with("text/event-stream") {
            return Err(ClientError::Decode {
                url: url.to_string(),
                reason: format!("expected text/event-stream, got {content_type:?}"),
            });
        }
        Ok(EventStream::new(url.to_string(), resp, last_event_id))
    }

    /// `GET /v1/checkpoint`: the latest signed checkpoint, C2SP signed-note text (verify it with the log's
    /// vkey).
    pub async fn checkpoint(&self, min_seq: Option<u64>) -> Result<String, ClientError> {
        let url = self.url("/v1/checkpoint", &[], min_seq)?;
        let (_, body) = self.send(self.http.get(url.clone()), &url).await?;
        String::from_utf8(body)
            .map_err(|_| ClientError::Decode { url: url.to_string(), reason: "the checkpoint is not UTF-8".into() })
    }

    /// `GET /v1/proof/inclusion`: proof that event `seq` is in the tree of `size` (default: the head).
    pub async fn inclusion_proof(
        &self,
        seq: u64,
        size: Option<u64>,
        min_seq: Option<u64>,
    ) -> Result<InclusionProofResponse, ClientError> {
        let seq = seq.to_string();
        let size = size.map(|s| s.to_string());
        let mut params = vec![("seq", seq.as_str())];
        params.extend(size.as_deref().map(|s| ("size", s)));
        let url = self.url("/v1/proof/inclusion", &params, min_seq)?;
        self.get_json(url).await
    }

    /// `GET /v1/proof/consistency`: proof that the tree of size `to` (default: the head) extends `from`.
    pub async fn consistency_proof(
        &self,
        from: u64,
        to: Option<u64>,
        min_seq: Option<u64>,
    ) -> Result<ConsistencyProofResponse, ClientError> {
        let from = from.to_string();
        let to = to.map(|s| s.to_string());
        let mut params = vec![("from", from.as_str())];
        params.extend(to.as_deref().map(|s| ("to", s)));
        let url = self.url("/v1/proof/consistency", &params, min_seq)?;
        self.get_json(url).await
    }

    /// `GET /v1/ca-bundle`: the CA certificates trusted now (refresh it after a CA rotation).
    pub async fn ca_bundle(&self) -> Result<CaBundleResponse, ClientError> {
        let url = self.url("/v1/ca-bundle", &[], None)?;
        self.get_json(url).await
    }

    /// `GET /health`: liveness and the head seq (any TLS peer; on the enrollment listener too).
    pub async fn health(&self) -> Result<HealthResponse, ClientError> {
        let url = self.url("/health", &[], None)?;
        self.get_json(url).await
    }

    /// `GET /v1/whoami`: the identity the server reads from this client's certificate and pin.
    pub async fn whoami(&self) -> Result<WhoAmIResponse, ClientError> {
        let url = self.url("/v1/whoami", &[], None)?;
        self.get_json(url).await
    }

    /// `GET /metrics`: Prometheus text format (operators and auditors).
    pub async fn metrics(&self) -> Result<String, ClientError> {
        let url = self.url("/metrics", &[], None)?;
        let (_, body) = self.send(self.http.get(url.clone()), &url).await?;
        String::from_utf8(body)
            .map_err(|_| ClientError::Decode { url: url.to_string(), reason: "the metrics are not UTF-8".into() })
    }

    /// `GET /v1/openapi.json`: the API's OpenAPI 3 document.
    pub async fn openapi(&self) -> Result<serde_json::Value, ClientError> {
        let url = self.url("/v1/openapi.json", &[], None)?;
        self.get_json(url).await
    }

    /// `POST /v1/enroll` on the enrollment listener (this client needs no identity): spends a bootstrap
    /// token for a certificate over the CSR. A spent token is `Api { code: "token_used" }`, an expired one
    /// `token_expired`, an unknown one `token_unknown`.
    pub async fn enroll(&self, request: &EnrollRequest) -> Result<EnrollResponse, ClientError> {
        self.post_json("/v1/enroll", request).await
    }

    /// Creates a one-time bootstrap token for `device_id`, valid until `expires_at` (unix ms), recording
    /// only its hash through `POST /v1/commands` (operators). Returns the token (show it once) and the
    /// receipt.
    pub async fn create_bootstrap_token(
        &self,
        device_id: &str,
        expires_at: i64,
    ) -> Result<(crate::pki::BootstrapToken, CommandResponse), ClientError> {
        let (token, submission) = crate::pki::bootstrap_token_submission(device_id, expires_at)
            .map_err(|e| ClientError::InvalidRequest(e.to_string()))?;
        let response = self.submit(&submission).await?;
        Ok((token, response))
    }

    fn url_string(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `base + path ? params & min_seq`, percent-encoded.
    fn url(&self, path: &str, params: &[(&str, &str)], min_seq: Option<u64>) -> Result<Url, ClientError> {
        let text = self.url_string(path);
        let mut url =
            Url::parse(&text).map_err(|e| ClientError::BadUrl { url: text.clone(), reason: e.to_string() })?;
        let min_seq = min_seq.map(|m| m.to_string());
        if !params.is_empty() || min_seq.is_some() {
            let mut pairs = url.query_pairs_mut();
            for (k, v) in params {
                pairs.append_pair(k, v);
            }
            if let Some(m) = &min_seq {
                pairs.append_pair("min_seq", m);
            }
        }
        Ok(url)
    }

    async fn get_json<T: DeserializeOwned>(&self, url: Url) -> Result<T, ClientError> {
        let (_, body) = self.send(self.http.get(url.clone()), &url).await?;
        decode(&body, &url)
    }

    async fn post_json<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let url = self.url(path, &[], None)?;
        let bytes = serde_json::to_vec(body).map_err(|e| ClientError::InvalidRequest(e.to_string()))?;
        let req = self.http.request(Method::POST, url.clone()).header(CONTENT_TYPE, "application/json").body(bytes);
        let (_, body) = self.send(req, &url).await?;
        decode(&body, &url)
    }

    /// Sends with the per-request timeout; a 2xx answer's body (bounded) or the error.
    async fn send(&self, req: reqwest::RequestBuilder, url: &Url) -> Result<(StatusCode, Vec<u8>), ClientError> {
        let resp = req
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|source| ClientError::Transport { url: url.to_string(), source })?;
        let mut resp = check_status(resp, url).await?;
        let status = resp.status();
        let body = read_limited(&mut resp, MAX_RESPONSE_BYTES, url)
            .await?
            .ok_or_else(|| ClientError::BodyTooLarge { url: url.to_string(), limit: MAX_RESPONSE_BYTES })?;
        Ok((status, body))
    }
}

/// Checks a base URL: absolute `https`, no query or fragment; returned without a trailing slash.
fn normalise_base(base_url: &str) -> Result<String, ClientError> {
    let bad = |reason: &str| ClientError::BadUrl { url: base_url.to_owned(), reason: reason.to_owned() };
    let url = Url::parse(base_url.trim()).map_err(|e| bad(&e.to_string()))?;
    if url.scheme() != "https" {
        return Err(bad("must be https:// (the API is only served over TLS)"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("has no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("must not carry a query or fragment"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("must not carry credentials (identity comes from the client certificate)"));
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

fn header_string(headers: &HeaderMap, name: reqwest::header::HeaderName) -> String {
    headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
}

/// `Retry-After` as delta-seconds (the form the hwledger server sends).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers.get(RETRY_AFTER)?.to_str().ok()?.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Passes a 2xx answer through; turns any other into `Api` (from its `{code, message}`) or
/// `UnexpectedStatus`.
async fn check_status(mut resp: reqwest::Response, url: &Url) -> Result<reqwest::Response, ClientError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let retry_after = retry_after(resp.headers());
    let content_type = header_string(resp.headers(), CONTENT_TYPE);
    let body = read_limited(&mut resp, MAX_ERROR_BYTES, url).await?;
    if let Some(err) = body.as_deref().and_then(|b| serde_json::from_slice::<ErrorBody>(b).ok()) {
        return Err(ClientError::Api { status: status.as_u16(), code: err.code, message: err.message, retry_after });
    }
    let snippet = body.as_deref().map_or_else(
        || format!("(longer than {MAX_ERROR_BYTES} bytes)"),
        |b| String::from_utf8_lossy(&b[..b.len().min(200)]).into_owned(),
    );
    Err(ClientError::UnexpectedStatus { status: status.as_u16(), content_type, snippet, retry_after })
}

/// Reads the body, at most `limit` bytes: `None` if it is longer (the rest is not read).
async fn read_limited(resp: &mut reqwest::Response, limit: usize, url: &Url) -> Result<Option<Vec<u8>>, ClientError> {
    if resp.content_length().is_some_and(|n| usize::try_from(n).map_or(true, |n| n > limit)) {
        return Ok(None);
    }
    let mut out = Vec::new();
    while let Some(chunk) =
        resp.chunk().await.map_err(|source| ClientError::Transport { url: url.to_string(), source })?
    {
        if out.len().saturating_add(chunk.len()) > limit {
            return Ok(None);
        }
        out.extend_from_slice(&chunk);
    }
    Ok(Some(out))
}

fn decode<T: DeserializeOwned>(body: &[u8], url: &Url) -> Result<T, ClientError> {
    serde_json::from_slice(body).map_err(|e| ClientError::Decode { url: url.to_string(), reason: e.to_string() })
}

/// `{"<key>": [...]}` → the array.
fn take_array(value: serde_json::Value, key: &str, url: &Url) -> Result<Vec<serde_json::Value>, ClientError> {
    match value {
        serde_json::Value::Object(mut map) => match map.remove(key) {
            Some(serde_json::Value::Array(items)) => Ok(items),
            _ => Err(ClientError::Decode { url: url.to_string(), reason: format!("no {key:?} array in the answer") }),
        },
        _ => Err(ClientError::Decode { url: url.to_string(), reason: "the answer is not a JSON object".into() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_checked() {
        assert_eq!(normalise_base("https://h:8443/").ok().as_deref(), Some("https://h:8443"));
        assert_eq!(normalise_base("https://h/prefix/").ok().as_deref(), Some("https://h/prefix"));
        for bad in ["http://h:8443", "h:8443", "", "https://u:p@h", "https://h/?q=1", "https://h/#f"] {
            assert!(matches!(normalise_base(bad), Err(ClientError::BadUrl { .. })), "{bad}");
        }
    }

    #[test]
    fn retryability() {
        let api = |status: u16| ClientError::Api {
            status,
            code: "x".into(),
            message: String::new(),
            retry_after: Some(Duration::from_secs(2)),
        };
        for s in [500, 502, 503, 429, 408] {
            assert!(api(s).is_retryable(), "{s}");
        }
        for s in [400, 401, 403, 404, 409, 410, 413, 415, 422] {
            assert!(!api(s).is_retryable(), "{s}");
        }
        assert_eq!(api(503).retry_after(), Some(Duration::from_secs(2)));
        assert!(!ClientError::Decode { url: String::new(), reason: String::new() }.is_retryable());
        assert!(!ClientError::InvalidRequest(String::new()).is_retryable());
    }

    #[test]
    fn bundle_discovery() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        assert!(matches!(BundleFiles::find(dir.path()), Err(ClientError::Bundle { .. })));
        std::fs::write(dir.path().join("agent-a.key"), "k")?;
        assert!(BundleFiles::find(dir.path()).is_err(), "a key without its certificate");
        std::fs::write(dir.path().join("agent-a.crt"), "c")?;
        assert!(BundleFiles::find(dir.path()).is_err(), "no ca.crt");
        std::fs::write(dir.path().join("ca.crt"), "ca")?;
        let found = BundleFiles::find(dir.path())?;
        assert_eq!(found.key, dir.path().join("agent-a.key"));
        assert_eq!(found.cert, dir.path().join("agent-a.crt"));
        std::fs::write(dir.path().join("operator-b.key"), "k")?;
        let err = BundleFiles::find(dir.path()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("several identities"), "{err}");
        Ok(())
    }
}
