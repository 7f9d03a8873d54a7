//! The one place where errors become HTTP responses.
//!
//! Every error, from a core call, poem's router (unknown route, wrong method) or
//! poem-openapi's request parsing (malformed JSON), leaves the server as
//! `{"error": {"code", "message", "correlation_id"}}` with a status chosen here:
//! auth -> 401/403, validation -> 422, not found -> 404, rate limit -> 429 (with
//! `Retry-After`), dependency down -> 503, all providers failed -> 502, upstream timeout -> 504.
//! 5xx are logged here, once.

use poem::error::ResponseError;
use poem::http::{HeaderValue, StatusCode, header};
use poem::{IntoResponse, Response};
use serde::Serialize;
use xenios_core::{CorrelationId, ErrorKind};

/// A core error on its way out of a handler.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct ApiError(#[from] pub xenios_core::Error);

impl From<xenios_core::auth::AuthError> for ApiError {
    fn from(e: xenios_core::auth::AuthError) -> Self {
        ApiError(e.into())
    }
}

impl ResponseError for ApiError {
    fn status(&self) -> StatusCode {
        status_of(self.0.kind())
    }
}

/// The HTTP status of each kind of core error.
pub fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
        ErrorKind::Forbidden => StatusCode::FORBIDDEN,
        ErrorKind::Validation => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Upstream => StatusCode::BAD_GATEWAY,
        ErrorKind::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The JSON error body.
#[derive(Debug, Serialize, poem_openapi::Object)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, poem_openapi::Object)]
pub struct ErrorDetail {
    /// Machine-readable code, e.g. `invalid_api_key`.
    pub code: String,
    /// Human-readable message.
    pub message: String,
    /// The request's correlation ID, also in the `X-Request-ID` header.
    pub correlation_id: String,
}

/// Turns any error that reached the top of the stack into the JSON error response.
pub fn into_response(err: poem::Error, correlation_id: &CorrelationId) -> Response {
    let (status, code, message, retry_after) = match err.downcast_ref::<ApiError>() {
        Some(ApiError(core)) => (
            status_of(core.kind()),
            core.code().to_owned(),
            core.public_message(),
            core.retry_after(),
        ),
        None => {
            let status = err.status();
            (
                status,
                generic_code(status).to_owned(),
                generic_message(&err),
                None,
            )
        }
    };
    if status.is_server_error() {
        tracing::error!(status = status.as_u16(), code = %code, error = %err, "request failed");
    } else {
        tracing::debug!(status = status.as_u16(), code = %code, error = %err, "request refused");
    }
    let body = ErrorBody {
        error: ErrorDetail {
            code,
            message,
            correlation_id: correlation_id.to_string(),
        },
    };
    let mut resp = poem::web::Json(body).with_status(status).into_response();
    if let Some(after) = retry_after {
        let secs = after.as_secs().max(1);
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    resp
}

fn generic_code(status: StatusCode) -> &'static str {
    match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNAUTHORIZED => "unauthenticated",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::TOO_MANY_REQUESTS => "rate_limited",
        StatusCode::UNPROCESSABLE_ENTITY => "validation_error",
        s if s.is_client_error() => "bad_request",
        StatusCode::SERVICE_UNAVAILABLE => "service_unavailable",
        _ => "internal_error",
    }
}

fn generic_message(err: &poem::Error) -> String {
    let status = err.status();
    if status.is_server_error() {
        return "internal error".to_owned();
    }
    match status {
        StatusCode::NOT_FOUND => "no such route".to_owned(),
        StatusCode::METHOD_NOT_ALLOWED => "method not allowed on this route".to_owned(),
        _ => err.to_string(),
    }
}
