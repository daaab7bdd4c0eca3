//! The HTTP plumbing every rental-cloud client shares: the API key (which never reaches a log or an
//! error), the client options, and one request path that maps statuses to [`CloudError`], honours a
//! 429's `Retry-After` with a single bounded retry, caps the body, and insists on exactly one JSON
//! document.

use std::fmt;
use std::time::Duration;

use reqwest::header::RETRY_AFTER;
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc2822;
use time::macros::format_description;

use super::{CloudError, Provider};

/// Default request timeout (connect + headers + body).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default longest `Retry-After` the client waits out before its single retry; a longer demand is
/// returned to the caller as [`CloudError::RateLimited`] instead of blocking a CLI command.
pub const DEFAULT_MAX_RETRY_WAIT: Duration = Duration::from_secs(30);
/// Default body cap. The largest real answer (vast's offer search at our limit) is a few hundred KiB;
/// 8 MiB leaves room while keeping a hostile or broken endpoint from exhausting memory.
pub const DEFAULT_MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
/// How much of a provider-supplied text (parser message, trailing line, error message) is kept in an
/// error: enough to diagnose, not enough to flood a log with a whole HTML page.
const MAX_DETAIL_CHARS: usize = 300;
/// Stands in for the API key wherever a provider echoed it back.
const REDACTED: &str = "<redacted>";

/// A provider API key. It is sent only in the `Authorization` header (marked sensitive), never in a
/// URL; `Debug` prints no part of it and there is no `Display`.
#[derive(Clone)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wraps a key taken from the config. Surrounding whitespace (a trailing newline from a file or a
    /// shell) is dropped; an empty key or one with characters an HTTP header cannot carry is refused.
    pub fn new(key: impl Into<String>) -> Result<Self, CloudError> {
        let key = key.into();
        let trimmed = key.trim();
        if trimmed.is_empty() {
            return Err(CloudError::InvalidApiKey { reason: "it is empty" });
        }
        if !trimmed.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(CloudError::InvalidApiKey { reason: "it contains spaces, control or non-ASCII characters" });
        }
        Ok(ApiKey(trimmed.to_owned()))
    }

    /// Reads the provider's key from its environment variable (`VAST_API_KEY`, `RUNPOD_API_KEY`,
    /// `LAMBDA_API_KEY`).
    pub fn from_env(provider: Provider) -> Result<Self, CloudError> {
        Self::from_lookup(provider, |name| std::env::var(name).ok())
    }

    /// Like [`ApiKey::from_env`] with the environment replaced by `lookup` (for configs that carry
    /// their own variable map, and for tests, which may not mutate the process environment).
    pub fn from_lookup(provider: Provider, lookup: impl FnOnce(&str) -> Option<String>) -> Result<Self, CloudError> {
        let env_var = provider.api_key_env();
        match lookup(env_var) {
            Some(value) if !value.trim().is_empty() => Self::new(value),
            _ => Err(CloudError::MissingApiKey { provider, env_var }),
        }
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// Per-client settings: where the API is, and how long and how much to wait for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientOptions {
    /// Scheme, host and optional path prefix, e.g. `https://console.vast.ai` or
    /// `http://127.0.0.1:4000/stub`; the client appends the API paths.
    pub base_url: String,
    /// Timeout of one whole request, body included.
    pub timeout: Duration,
    /// Longest `Retry-After` waited out before the single retry of a 429.
    pub max_retry_wait: Duration,
    /// Responses larger than this are refused with [`CloudError::TooLarge`].
    pub max_body_bytes: usize,
}

impl ClientOptions {
    /// The defaults for `provider`: its real API URL, 10 s timeout, 30 s retry cap, 8 MiB body cap.
    pub fn for_provider(provider: Provider) -> Self {
        ClientOptions {
            base_url: provider.default_base_url().to_owned(),
            timeout: DEFAULT_TIMEOUT,
            max_retry_wait: DEFAULT_MAX_RETRY_WAIT,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }

    /// The same options with another base URL.
    pub fn with_base_url(mut self, base_url: impl Into<String>) -> Self {
        self.base_url = base_url.into();
        self
    }

    /// The same options with another request timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The same options with another retry cap.
    pub fn with_max_retry_wait(mut self, max_retry_wait: Duration) -> Self {
        self.max_retry_wait = max_retry_wait;
        self
    }

    /// The same options with another body cap.
    pub fn with_max_body_bytes(mut self, max_body_bytes: usize) -> Self {
        self.max_body_bytes = max_body_bytes;
        self
    }
}

/// What one provider client holds: a reqwest client, the parsed base URL, the key and the limits.
pub(crate) struct HttpCore {
    provider: Provider,
    http: reqwest::Client,
    base: reqwest::Url,
    key: ApiKey,
    timeout: Duration,
    max_retry_wait: Duration,
    max_body_bytes: usize,
}

impl fmt::Debug for HttpCore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpCore")
            .field("provider", &self.provider)
            .field("base", &self.base.as_str())
            .field("key", &self.key)
            .field("timeout", &self.timeout)
            .field("max_retry_wait", &self.max_retry_wait)
            .field("max_body_bytes", &self.max_body_bytes)
            .finish()
    }
}

impl HttpCore {
    pub(crate) fn new(provider: Provider, key: ApiKey, options: ClientOptions) -> Result<Self, CloudError> {
        let base = reqwest::Url::parse(options.base_url.trim())
            .map_err(|e| CloudError::InvalidBaseUrl { provider, detail: e.to_string() })?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(CloudError::InvalidBaseUrl {
                provider,
                detail: format!("scheme {:?} is not http or https", base.scheme()),
            });
        }
        if base.cannot_be_a_base() || base.query().is_some() || base.fragment().is_some() {
            return Err(CloudError::InvalidBaseUrl {
                provider,
                detail: "it must be scheme://host[:port][/prefix] without query or fragment".to_owned(),
            });
        }
        if !base.username().is_empty() || base.password().is_some() {
            // A key smuggled into the URL would end up in logs; keys go through ApiKey only.
            return Err(CloudError::InvalidBaseUrl {
                provider,
                detail: "it must not contain credentials; configure the API key instead".to_owned(),
            });
        }
        let http = reqwest::Client::builder()
            .timeout(options.timeout)
            .connect_timeout(options.timeout)
            .user_agent(concat!("hwledger/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CloudError::Transport { provider, detail: error_chain(&e.without_url()) })?;
        Ok(HttpCore {
            provider,
            http,
            base,
            key,
            timeout: options.timeout,
            max_retry_wait: options.max_retry_wait,
            max_body_bytes: options.max_body_bytes,
        })
    }

    /// `base` + `path` (path starts with '/'), keeping any prefix the base URL carries.
    fn url(&self, path: &str) -> reqwest::Url {
        let mut url = self.base.clone();
        let joined = format!("{}{}", self.base.path().trim_end_matches('/'), path);
        url.set_path(&joined);
        url
    }

    /// GET `path` with query pairs and return its single JSON document.
    pub(crate) async fn get_json(&self, path: &str, query: &[(&str, &str)]) -> Result<Value, CloudError> {
        let mut url = self.url(path);
        if !query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (name, value) in query {
                pairs.append_pair(name, value);
            }
        }
        let body = self.execute(|| self.http.get(url.clone())).await?;
        self.parse_document(&body)
    }

    /// POST a JSON body to `path` and return the single JSON document of the answer.
    pub(crate) async fn post_json(&self, path: &str, payload: &Value) -> Result<Value, CloudError> {
        let url = self.url(path);
        let bytes = serde_json::to_vec(payload).map_err(|e| CloudError::MalformedJson {
            provider: self.provider,
            detail: format!("could not encode the request: {e}"),
        })?;
        let body = self
            .execute(|| {
                self.http
                    .post(url.clone())
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(bytes.clone())
            })
            .await?;
        self.parse_document(&body)
    }

    /// Sends the request built by `build` (rebuilt for the retry), maps the status, reads the body.
    async fn execute(&self, build: impl Fn() -> reqwest::RequestBuilder) -> Result<Vec<u8>, CloudError> {
        let mut retried = false;
        loop {
            let response = build()
                .bearer_auth(self.key.expose())
                .header(reqwest::header::ACCEPT, "application/json")
                .send()
                .await
                .map_err(|e| self.map_reqwest(e))?;
            let status = response.status();
            if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
                let retry_after = response
                    .headers()
                    .get(RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, OffsetDateTime::now_utc()));
                match retry_after {
                    Some(wait) if !retried && wait <= self.max_retry_wait => {
                        tracing::info!(
                            provider = %self.provider,
                            wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                            "rate limited; retrying once after Retry-After"
                        );
                        retried = true;
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                    _ => {
                        return Err(CloudError::RateLimited { provider: self.provider, retry_after });
                    }
                }
            }
            if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
                return Err(CloudError::Unauthorized { provider: self.provider, status: status.as_u16() });
            }
            if status.is_server_error() {
                return Err(CloudError::Server { provider: self.provider, status: status.as_u16() });
            }
            if !status.is_success() {
                return Err(CloudError::UnexpectedStatus { provider: self.provider, status: status.as_u16() });
            }
            return self.read_body(response).await;
        }
    }

    /// Reads the body chunk by chunk, refusing it as soon as it passes the cap (a declared
    /// Content-Length over the cap is refused before reading anything).
    async fn read_body(&self, mut response: reqwest::Response) -> Result<Vec<u8>, CloudError> {
        let too_large = || CloudError::TooLarge { provider: self.provider, limit_bytes: self.max_body_bytes };
        if let Some(declared) = response.content_length()
            && usize::try_from(declared).map_or(true, |n| n > self.max_body_bytes)
        {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| self.map_reqwest(e))? {
            if chunk.len() > self.max_body_bytes.saturating_sub(body.len()) {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    fn map_reqwest(&self, error: reqwest::Error) -> CloudError {
        let error = error.without_url();
        if error.is_timeout() {
            CloudError::Timeout { provider: self.provider, timeout: self.timeout }
        } else {
            CloudError::Transport { provider: self.provider, detail: self.redact(&error_chain(&error)) }
        }
    }

    /// Parses exactly one JSON document; a second, non-JSON tail is [`CloudError::TrailingGarbage`].
    pub(crate) fn parse_document(&self, body: &[u8]) -> Result<Value, CloudError> {
        let mut documents = serde_json::Deserializer::from_slice(body).into_iter::<Value>();
        let value = match documents.next() {
            None => return Err(self.malformed("the body is empty")),
            Some(Err(e)) => return Err(self.malformed(&e.to_string())),
            Some(Ok(value)) => value,
        };
        let rest = body.get(documents.byte_offset()..).unwrap_or_default();
        let rest = rest.trim_ascii();
        if !rest.is_empty() {
            let text = String::from_utf8_lossy(rest);
            let line = text.lines().next().unwrap_or_default();
            return Err(CloudError::TrailingGarbage { provider: self.provider, line: self.redact(line) });
        }
        Ok(value)
    }

    /// A [`CloudError::MalformedJson`] whose detail is redacted and shortened.
    pub(crate) fn malformed(&self, detail: &str) -> CloudError {
        CloudError::MalformedJson { provider: self.provider, detail: self.redact(detail) }
    }

    /// A [`CloudError::ProviderError`] whose message is redacted and shortened.
    pub(crate) fn provider_error(&self, message: &str) -> CloudError {
        CloudError::ProviderError { provider: self.provider, message: self.redact(message) }
    }

    /// Removes the API key from a provider-supplied text (some APIs echo what they were sent) and
    /// shortens it to [`MAX_DETAIL_CHARS`].
    pub(crate) fn redact(&self, text: &str) -> String {
        let cleaned = text.replace(self.key.expose(), REDACTED);
        shorten(&cleaned)
    }
}

fn shorten(text: &str) -> String {
    match text.char_indices().nth(MAX_DETAIL_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// "outer: inner: innermost" for an error and its sources.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        let inner_text = inner.to_string();
        if !text.contains(&inner_text) {
            text.push_str(": ");
            text.push_str(&inner_text);
        }
        source = inner.source();
    }
    text
}

/// Parses a `Retry-After` value: delay-seconds, or an HTTP-date (IMF-fixdate, or any RFC 2822 date)
/// turned into the wait from `now` (zero if the date has passed). `None` if it is neither.
pub fn parse_retry_after(value: &str, now: OffsetDateTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Absurdly long digit strings do not fit u64: treat them as unusable, not as zero.
        return value.parse::<u64>().ok().map(Duration::from_secs);
    }
    let imf_fixdate =
        format_description!("[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT");
    let at = time::PrimitiveDateTime::parse(value, imf_fixdate)
        .map(|t| t.assume_utc())
        .or_else(|_| OffsetDateTime::parse(value, &Rfc2822))
        .ok()?;
    let wait = at - now;
    if wait.is_negative() { Some(Duration::ZERO) } else { Duration::try_from(wait).ok() }
}
