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
use poem_openapi::error::ParseRequestPayloadError;
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
#[oai(example)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, poem_openapi::Object)]
pub struct ErrorDetail {
    /// Machine-readable code, e.g. `invalid_api_key`.
    pub code: ErrorCode,
    /// Human-readable message.
    pub message: String,
    /// The request's correlation ID, also in the `X-Request-ID` header.
    pub correlation_id: String,
}

impl poem_openapi::types::Example for ErrorBody {
    fn example() -> Self {
        ErrorBody {
            error: ErrorDetail {
                code: ErrorCode::InvalidApiKey,
                message: "invalid API key".to_owned(),
                correlation_id: "9b2f0c1e-5d7a-4c1b-8f3e-2a6d4e8b1c90".to_owned(),
            },
        }
    }
}

/// Every `error.code` the server sends: the codes of core's `Error::code()` and of
/// [`generic_code`] (router and request-parsing errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, poem_openapi::Enum)]
#[serde(rename_all = "snake_case")]
#[oai(rename_all = "snake_case")]
pub enum ErrorCode {
    /// No `X-API-Key` header.
    MissingApiKey,
    /// `X-API-Key` did not match.
    InvalidApiKey,
    /// The route needs a user and no bearer token was sent.
    MissingToken,
    /// The bearer token failed verification.
    InvalidToken,
    /// Authentication failed.
    Unauthenticated,
    /// Authenticated but not allowed.
    Forbidden,
    /// A user named models (only the service may).
    ModelChoiceForbidden,
    /// A model outside `LLM_ALLOWED_MODELS`.
    ModelNotAllowed,
    /// The request is invalid; the message says which field.
    ValidationError,
    /// A job task this caller may not enqueue.
    UnknownTask,
    /// Malformed request (e.g. a query parameter of the wrong type).
    BadRequest,
    /// Unknown route or job.
    NotFound,
    /// The path exists, the method does not.
    MethodNotAllowed,
    /// The body is larger than `MAX_BODY_BYTES`.
    PayloadTooLarge,
    /// The body is not `application/json`.
    UnsupportedMediaType,
    /// Too many requests; see `Retry-After`.
    RateLimited,
    /// The user's daily LLM token budget is spent; see `Retry-After`.
    BudgetExceeded,
    /// Redis (the job broker) is unreachable; retry later.
    QueueUnavailable,
    /// Postgres is unreachable; retry later.
    ServiceUnavailable,
    /// The LLM provider refused the request.
    UpstreamRefused,
    /// Every model of the route failed.
    AllModelsFailed,
    /// Every model of the route timed out.
    UpstreamTimeout,
    /// The server's configuration is invalid.
    ConfigError,
    /// A bug; details are in the server log.
    InternalError,
}

impl ErrorCode {
    /// The code of a wire name; `None` for a name this enum does not know (a bug: a test
    /// checks every core error).
    pub fn parse(code: &str) -> Option<Self> {
        use poem_openapi::types::ParseFromJSON;
        Self::parse_from_json(Some(serde_json::Value::String(code.to_owned()))).ok()
    }
}

/// Turns any error that reached the top of the stack into the JSON error response.
pub fn into_response(err: poem::Error, correlation_id: &CorrelationId) -> Response {
    let (status, code, message, retry_after) = match err.downcast_ref::<ApiError>() {
        Some(ApiError(core)) => (
            status_of(core.kind()),
            ErrorCode::parse(core.code()).unwrap_or_else(|| {
                tracing::error!(code = core.code(), "error code missing from ErrorCode");
                ErrorCode::InternalError
            }),
            core.public_message(),
            core.retry_after(),
        ),
        // A body that is not JSON or does not match the route's schema (a type, an enum, a
        // limit): the same 422 as core's validation.
        None if err.is::<ParseRequestPayloadError>() => (
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::ValidationError,
            err.to_string(),
            None,
        ),
        None => {
            let status = err.status();
            (status, generic_code(status), generic_message(&err), None)
        }
    };
    if status.is_server_error() {
        tracing::error!(status = status.as_u16(), code = %code.name(), error = %err, "request failed");
    } else {
        tracing::debug!(status = status.as_u16(), code = %code.name(), error = %err, "request refused");
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

fn generic_code(status: StatusCode) -> ErrorCode {
    match status {
        StatusCode::NOT_FOUND => ErrorCode::NotFound,
        StatusCode::METHOD_NOT_ALLOWED => ErrorCode::MethodNotAllowed,
        StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::PayloadTooLarge,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ErrorCode::UnsupportedMediaType,
        StatusCode::UNAUTHORIZED => ErrorCode::Unauthenticated,
        StatusCode::FORBIDDEN => ErrorCode::Forbidden,
        StatusCode::TOO_MANY_REQUESTS => ErrorCode::RateLimited,
        StatusCode::UNPROCESSABLE_ENTITY => ErrorCode::ValidationError,
        s if s.is_client_error() => ErrorCode::BadRequest,
        StatusCode::SERVICE_UNAVAILABLE => ErrorCode::ServiceUnavailable,
        _ => ErrorCode::InternalError,
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

impl ErrorCode {
    /// The wire name, e.g. `invalid_api_key`.
    pub fn name(self) -> String {
        use poem_openapi::types::ToJSON;
        match self.to_json() {
            Some(serde_json::Value::String(s)) => s,
            _ => String::new(),
        }
    }
}

/// The error statuses one route can answer (beyond its success), for its OpenAPI document.
pub trait ErrorStatuses: Send + Sync + 'static {
    /// The statuses, ascending.
    const STATUSES: &'static [u16];
}

/// A route's error: any error, turned into the JSON error body by the error layer, and typed
/// by the statuses the route declares so that the document lists each of them with the
/// [`ErrorBody`] schema.
pub struct Errors<S>(pub poem::Error, std::marker::PhantomData<S>);

impl<S> std::fmt::Debug for Errors<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Errors").field(&self.0).finish()
    }
}

impl<S> From<poem::Error> for Errors<S> {
    fn from(e: poem::Error) -> Self {
        Errors(e, std::marker::PhantomData)
    }
}

impl<S> From<ApiError> for Errors<S> {
    fn from(e: ApiError) -> Self {
        poem::Error::from(e).into()
    }
}

impl<S> From<xenios_core::Error> for Errors<S> {
    fn from(e: xenios_core::Error) -> Self {
        ApiError(e).into()
    }
}

impl<S> From<Errors<S>> for poem::Error {
    fn from(e: Errors<S>) -> Self {
        e.0
    }
}

impl<S: Send> IntoResponse for Errors<S> {
    fn into_response(self) -> Response {
        self.0.into_response()
    }
}

fn status_description(status: u16) -> &'static str {
    match status {
        400 => "A query parameter is malformed (`bad_request`).",
        401 => {
            "`X-API-Key` missing or wrong, or the bearer token invalid (`missing_api_key`, \
                `invalid_api_key`, `missing_token`, `invalid_token`)."
        }
        403 => {
            "Authenticated but not allowed (`forbidden`, `model_choice_forbidden`, \
                `model_not_allowed`)."
        }
        404 => "No such job for this caller (`not_found`).",
        413 => "The body is larger than `MAX_BODY_BYTES` (`payload_too_large`).",
        415 => "The body is not `application/json` (`unsupported_media_type`).",
        422 => {
            "The request is invalid; the message names the field (`validation_error`, \
                `unknown_task`)."
        }
        429 => {
            "Rate limit or daily token budget exceeded; retry after `Retry-After` seconds \
                (`rate_limited`, `budget_exceeded`)."
        }
        502 => "Every model of the route failed (`all_models_failed`, `upstream_refused`).",
        503 => "Postgres or Redis is unreachable (`service_unavailable`, `queue_unavailable`).",
        504 => "Every model of the route timed out (`upstream_timeout`).",
        _ => "An error.",
    }
}

impl<S: ErrorStatuses> poem_openapi::ApiResponse for Errors<S> {
    fn meta() -> poem_openapi::registry::MetaResponses {
        use poem_openapi::registry::{MetaHeader, MetaMediaType, MetaResponse, MetaResponses};
        use poem_openapi::types::Type;
        MetaResponses {
            responses: S::STATUSES
                .iter()
                .map(|&status| MetaResponse {
                    description: status_description(status),
                    status: Some(status),
                    status_range: None,
                    content: vec![MetaMediaType {
                        content_type: "application/json; charset=utf-8",
                        schema: ErrorBody::schema_ref(),
                    }],
                    headers: if status == 429 {
                        vec![MetaHeader {
                            name: "Retry-After".to_owned(),
                            description: Some("Seconds until a retry may succeed.".to_owned()),
                            required: true,
                            deprecated: false,
                            schema: u64::schema_ref(),
                        }]
                    } else {
                        Vec::new()
                    },
                })
                .collect(),
        }
    }

    fn register(registry: &mut poem_openapi::registry::Registry) {
        use poem_openapi::types::Type;
        ErrorBody::register(registry);
    }
}

macro_rules! statuses {
    ($($(#[$doc:meta])* $name:ident = [$($s:literal),*];)*) => {$(
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name;
        impl ErrorStatuses for $name {
            const STATUSES: &'static [u16] = &[$($s),*];
        }
    )*};
}

statuses! {
    /// `/metrics`: the API key only, no rate limit.
    KeyOnlyErrors = [401];
    /// A GET of the authenticated API.
    ReadErrors = [401, 429];
    /// `/api/v1/me`: reads today's token use from Redis.
    MeErrors = [401, 429, 503];
    /// The LLM routes (native and OpenAI-compatible).
    LlmErrors = [401, 403, 413, 415, 422, 429, 502, 503, 504];
    /// `POST /api/v1/jobs`.
    EnqueueErrors = [401, 413, 415, 422, 429, 503];
    /// `GET /api/v1/jobs/{id}`.
    JobErrors = [401, 404, 422, 429, 503];
    /// `DELETE /api/v1/jobs/{id}`.
    RevokeErrors = [400, 401, 404, 422, 429, 503];
}
