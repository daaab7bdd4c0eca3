//! The one error type of the rental-cloud clients. Every variant carries the provider it came from and a
//! stable `code()` that callers (the CLI's `--json` output, the price cache's logs) can match on. No
//! variant ever carries the API key: texts taken from a response are passed through the client's
//! redaction before they are stored here.

use std::time::Duration;

use super::Provider;

/// Why a call to a rental-cloud API failed.
#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    /// No key configured and the provider's environment variable is unset or empty.
    #[error("no API key for {provider}: set {env_var} or put the key in the config")]
    MissingApiKey {
        /// The provider whose key is missing.
        provider: Provider,
        /// The environment variable that was consulted.
        env_var: &'static str,
    },
    /// The configured key cannot be sent in an HTTP header.
    #[error("the API key is unusable: {reason}")]
    InvalidApiKey {
        /// What is wrong with it (never the key itself).
        reason: &'static str,
    },
    /// The configured base URL is not an absolute http(s) URL.
    #[error("invalid base URL for {provider}: {detail}")]
    InvalidBaseUrl {
        /// The provider the URL was configured for.
        provider: Provider,
        /// Why the URL was refused.
        detail: String,
    },
    /// HTTP 401 or 403: the key is wrong, expired or lacks permission.
    #[error("{provider} rejected the API key (HTTP {status}); check {env_var} or the configured key", env_var = provider.api_key_env())]
    Unauthorized {
        /// The provider that refused the key.
        provider: Provider,
        /// 401 or 403.
        status: u16,
    },
    /// HTTP 429, after at most one retry.
    #[error("{provider} is rate-limiting requests (HTTP 429){}", retry_hint(*retry_after))]
    RateLimited {
        /// The provider that limited us.
        provider: Provider,
        /// The wait the provider asked for (`Retry-After`), if it gave a usable one.
        retry_after: Option<Duration>,
    },
    /// HTTP 5xx: the provider failed; retrying later may help.
    #[error("{provider} API failed with HTTP {status}; try again later")]
    Server {
        /// The provider whose API failed.
        provider: Provider,
        /// The 5xx status.
        status: u16,
    },
    /// Any other non-success status (e.g. 404 when the base URL points at the wrong service).
    #[error("{provider} API answered HTTP {status}, which this client does not expect; check the base URL")]
    UnexpectedStatus {
        /// The provider that answered.
        provider: Provider,
        /// The status it answered with.
        status: u16,
    },
    /// The body is not JSON, or not the JSON shape the API documents.
    #[error("{provider} returned a body that is not the expected JSON: {detail}")]
    MalformedJson {
        /// The provider that sent it.
        provider: Provider,
        /// What was wrong (parser message or the missing member).
        detail: String,
    },
    /// A complete JSON document followed by non-JSON text (vast prints e.g. "Machine ID 24126 not found
    /// or not rentable." after the offers array).
    #[error("{provider} returned a JSON document followed by extra text: {line:?}")]
    TrailingGarbage {
        /// The provider that sent it.
        provider: Provider,
        /// The first line of the extra text, shortened.
        line: String,
    },
    /// The provider answered but reported an error in the body (GraphQL `errors[]`, Lambda `error`).
    #[error("{provider} reported an error: {message}")]
    ProviderError {
        /// The provider that reported it.
        provider: Provider,
        /// The provider's message(s), joined with "; ".
        message: String,
    },
    /// No complete answer within the configured request timeout.
    #[error("{provider} did not answer within {timeout:?}")]
    Timeout {
        /// The provider that was slow.
        provider: Provider,
        /// The configured timeout.
        timeout: Duration,
    },
    /// Connection, TLS or protocol failure before a complete answer arrived.
    #[error("could not talk to {provider}: {detail}")]
    Transport {
        /// The provider we tried to reach.
        provider: Provider,
        /// The transport's description of the failure (no URL, no key).
        detail: String,
    },
    /// The body exceeded the configured size cap.
    #[error("{provider} sent a response larger than the {limit_bytes}-byte limit")]
    TooLarge {
        /// The provider that sent it.
        provider: Provider,
        /// The configured cap.
        limit_bytes: usize,
    },
}

fn retry_hint(retry_after: Option<Duration>) -> String {
    match retry_after {
        Some(wait) => format!("; retry after {} s", wait.as_secs()),
        None => "; no usable Retry-After was given".to_owned(),
    }
}

impl CloudError {
    /// A stable, machine-readable name for the error kind. Clients match on these; a test pins them.
    pub fn code(&self) -> &'static str {
        match self {
            CloudError::MissingApiKey { .. } => "missing_api_key",
            CloudError::InvalidApiKey { .. } => "invalid_api_key",
            CloudError::InvalidBaseUrl { .. } => "invalid_base_url",
            CloudError::Unauthorized { .. } => "unauthorized",
            CloudError::RateLimited { .. } => "rate_limited",
            CloudError::Server { .. } => "server_error",
            CloudError::UnexpectedStatus { .. } => "unexpected_status",
            CloudError::MalformedJson { .. } => "malformed_json",
            CloudError::TrailingGarbage { .. } => "trailing_garbage",
            CloudError::ProviderError { .. } => "provider_error",
            CloudError::Timeout { .. } => "timeout",
            CloudError::Transport { .. } => "transport",
            CloudError::TooLarge { .. } => "too_large",
        }
    }

    /// Whether trying the same call again later can succeed without changing the configuration.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            CloudError::RateLimited { .. }
                | CloudError::Server { .. }
                | CloudError::Timeout { .. }
                | CloudError::Transport { .. }
        )
    }
}
