//! API errors: every way a request can fail, each with a stable code and an HTTP status, rendered as
//! `{"code","message"}`. Engine rejections and submit errors map here in one place, so the mapping from
//! rule to status is visible at a glance (and pinned by a test).

use hwledger_engine::{Rejection, SubmitError};
use warp::http::StatusCode;

use crate::api::ErrorBody;

/// Seconds a client is asked to wait after a 503 (storage briefly unavailable, reads not caught up): long
/// enough not to hammer a struggling server, short enough that an agent's outbox drains promptly.
pub const RETRY_AFTER_SECS: &str = "1";

/// A failed request, ready to become a response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable code.
    pub code: &'static str,
    /// Human message.
    pub message: String,
}

impl ApiError {
    /// An error with this status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into() }
    }

    /// 400 `malformed_json`.
    pub fn malformed_json(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", message)
    }

    /// 400 `unknown_field`.
    pub fn unknown_field(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "unknown_field", message)
    }

    /// 400 `invalid_query`.
    pub fn invalid_query(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", message)
    }

    /// 403 `not_pinned`: the certificate is CA-valid but not pinned to an active identity.
    pub fn not_pinned(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "not_pinned", message)
    }

    /// 403 `forbidden`: the identity may not do this.
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 405 `method_not_allowed`.
    pub fn method_not_allowed(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", message)
    }

    /// 413 `body_too_large`.
    pub fn body_too_large(limit: u64) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request body exceeds the {limit}-byte limit"),
        )
    }

    /// 415 `unsupported_media_type`.
    pub fn unsupported_media_type(found: Option<&str>) -> ApiError {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            match found {
                Some(ct) => format!("Content-Type must be application/json, not {ct:?}"),
                None => "Content-Type must be application/json (header missing)".to_owned(),
            },
        )
    }

    /// 503 `storage_unavailable` (or another 503 code).
    pub fn unavailable(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
    }

    /// 500 `internal`: a bug or an impossible state; details go to the log, not the client.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// The JSON body.
    pub fn body(&self) -> ErrorBody {
        ErrorBody { code: self.code.to_owned(), message: self.message.clone() }
    }

    /// The HTTP response. A 503 carries `Retry-After` ([`RETRY_AFTER_SECS`]), which clients' outboxes honour.
    pub fn into_response(self) -> warp::reply::Response {
        let status = self.status;
        let reply = warp::reply::json(&self.body());
        let mut response = warp::reply::with_status(reply, status).into_response_compat();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(warp::http::header::RETRY_AFTER, warp::http::HeaderValue::from_static(RETRY_AFTER_SECS));
        }
        response
    }
}

/// `warp::Reply::into_response` under a name that does not clash with our inherent method.
trait IntoResponseCompat {
    fn into_response_compat(self) -> warp::reply::Response;
}

impl<T: warp::Reply> IntoResponseCompat for T {
    fn into_response_compat(self) -> warp::reply::Response {
        warp::Reply::into_response(self)
    }
}

/// The HTTP status of an engine rejection: 403 for permission, 404 for unknown entities, 409 for
/// idempotency and concurrency conflicts, 422 for every other rule.
pub fn rejection_status(r: &Rejection) -> StatusCode {
    match r {
        Rejection::Forbidden { .. } => StatusCode::FORBIDDEN,
        Rejection::DeviceUnknown { .. } | Rejection::JobUnknown { .. } | Rejection::CertificateUnknown { .. } => {
            StatusCode::NOT_FOUND
        }
        Rejection::DuplicateConflict { .. } | Rejection::VersionConflict { .. } | Rejection::TokenUsed => {
            StatusCode::CONFLICT
        }
        Rejection::TokenExpired => StatusCode::GONE,
        Rejection::TokenUnknown => StatusCode::FORBIDDEN,
        Rejection::DeviceDecommissioned { .. }
        | Rejection::DeviceExists { .. }
        | Rejection::JobExists { .. }
        | Rejection::JobTransition { .. }
        | Rejection::VramExceeded { .. }
        | Rejection::Invalid(_)
        | Rejection::CertificateExists { .. } => StatusCode::UNPROCESSABLE_ENTITY,
    }
}

impl From<&Rejection> for ApiError {
    fn from(r: &Rejection) -> ApiError {
        ApiError::new(rejection_status(r), r.code(), r.to_string())
    }
}

impl From<&SubmitError> for ApiError {
    fn from(e: &SubmitError) -> ApiError {
        // All fail-stop submit errors are "try again later" for a client: 503 with the engine's code.
        ApiError::unavailable(e.code(), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejection_statuses_are_pinned() {
        let cases: Vec<(Rejection, u16)> = vec![
            (Rejection::Forbidden { actor: "a".into(), action: "b".into() }, 403),
            (Rejection::DeviceUnknown { device_id: "d".into() }, 404),
            (Rejection::JobUnknown { job_id: "j".into() }, 404),
            (Rejection::DuplicateConflict { command_id: "c".into() }, 409),
            (Rejection::VersionConflict { stream: "s".into(), expected: 1, actual: 2 }, 409),
            (Rejection::TokenUsed, 409),
            (Rejection::TokenExpired, 410),
            (Rejection::TokenUnknown, 403),
            (Rejection::DeviceDecommissioned { device_id: "d".into() }, 422),
            (Rejection::Invalid("x".into()), 422),
        ];
        for (r, status) in cases {
            let e = ApiError::from(&r);
            assert_eq!(e.status.as_u16(), status, "{}", r.code());
            assert_eq!(e.code, r.code());
        }
        assert_eq!(ApiError::from(&SubmitError::Storage("disk".into())).code, "storage_unavailable");
        assert_eq!(ApiError::from(&SubmitError::Storage("disk".into())).status, StatusCode::SERVICE_UNAVAILABLE);
    }
}
