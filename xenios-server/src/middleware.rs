//! Request middleware: correlation IDs, access logs, error bodies, body size limit,
//! authentication and rate limits.

use std::time::Instant;

use poem::error::ReadBodyError;
use poem::http::{HeaderValue, StatusCode, Version, header};
use poem::{Endpoint, IntoResponse, Request, Response};
use tracing::Instrument;
use xenios_core::auth::AuthError;
use xenios_core::{AiBackend, CorrelationId, RequestContext};

use crate::error::{self, ApiError};

/// Response header that carries the correlation ID back to the caller.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Gives every request a correlation ID (the caller's `X-Request-ID` or `X-Correlation-ID`
/// when sane, a new UUID otherwise), runs it inside a tracing span carrying that ID (and the
/// user ID once authenticated), turns errors into JSON bodies, and echoes the ID in
/// `X-Request-ID`.
pub async fn correlation<E: Endpoint>(next: E, mut req: Request) -> poem::Result<Response> {
    let id = CorrelationId::from_candidates([
        req.header(REQUEST_ID_HEADER),
        req.header("x-correlation-id"),
    ]);
    req.extensions_mut().insert(id.clone());
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let span = tracing::info_span!(
        "request",
        correlation_id = %id,
        %method,
        %path,
        user_id = tracing::field::Empty
    );
    // Joins the caller's trace (W3C `traceparent`) when traces are exported.
    xenios_core::telemetry::set_parent(&span, req.header("traceparent"));
    let started = Instant::now();
    // The rest of the stack's future (about 12 KB) is boxed here, once. Held inline, it was
    // copied again by each wrapper above that moved it (the span's `Instrumented`, poem's
    // per-request boxing of the whole application): by callgrind, 11% of a proxied LLM
    // call's instructions (memcpy), gone with this box.
    let result = Box::pin(next.call(req)).instrument(span.clone()).await;
    let mut resp = match result {
        Ok(r) => r.into_response(),
        Err(e) => span.in_scope(|| error::into_response(e, &id)),
    };
    if let Ok(v) = HeaderValue::from_str(id.as_str()) {
        resp.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    let status = resp.status().as_u16();
    let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    // After the response is written (see xenios_core::deferred).
    xenios_core::deferred::after_answer(move || {
        let _in_request = span.enter();
        if path.starts_with("/health") {
            tracing::debug!(status, latency_us = micros, "request completed");
        } else {
            tracing::info!(status, latency_us = micros, "request completed");
        }
    });
    Ok(resp)
}

/// Turns errors into the JSON error response inside the CORS layer, so that 401, 413 and
/// 429 answers carry the CORS headers too and a browser can read them. ([`correlation`]
/// still converts whatever errors arise outside this layer.)
pub async fn error_bodies<E: Endpoint>(next: E, req: Request) -> poem::Result<Response> {
    let id = req
        .extensions()
        .get::<CorrelationId>()
        .cloned()
        .unwrap_or_else(CorrelationId::generate);
    Ok(match next.call(req).await {
        Ok(r) => r.into_response(),
        Err(e) => error::into_response(e, &id),
    })
}

/// Whether a path is part of the authenticated API: `/api/*`, `/v1/*` and `/metrics`
/// (the counters say too much about traffic to be public).
pub fn requires_api_key(path: &str) -> bool {
    path.starts_with("/api/") || path.starts_with("/v1/") || path == "/metrics"
}

/// A header's value as text; `Err` when it is present but not visible ASCII, so that a
/// credential that was sent is never mistaken for a missing one.
fn header_text(
    req: &Request,
    name: header::HeaderName,
    invalid: AuthError,
) -> Result<Option<&str>, ApiError> {
    match req.headers().get(name) {
        None => Ok(None),
        Some(v) => v.to_str().map(Some).map_err(|_| ApiError::from(invalid)),
    }
}

/// On `/api/*`, `/v1/*` and `/metrics`: checks `X-API-Key` and the optional `Authorization: Bearer`
/// token, applies the caller's rate limit, and puts the [`RequestContext`] (correlation ID and
/// principal) into the request's extensions for handlers (see [`crate::api::security`]).
pub async fn authenticate<E: Endpoint>(
    backend: AiBackend,
    next: E,
    mut req: Request,
) -> poem::Result<Response> {
    if requires_api_key(req.uri().path()) {
        let api_key = header_text(
            &req,
            header::HeaderName::from_static("x-api-key"),
            AuthError::InvalidApiKey,
        )?;
        let authorization = header_text(
            &req,
            header::AUTHORIZATION,
            AuthError::InvalidToken {
                detail: "Authorization is not ASCII".to_owned(),
            },
        )?;
        let principal = match backend.auth().authenticate(api_key, authorization).await {
            Ok(p) => p,
            Err(e) => {
                if let xenios_core::Error::Auth(AuthError::InvalidToken { detail }) = &e {
                    tracing::info!(reason = %detail, "bearer token refused");
                }
                return Err(ApiError::from(e).into());
            }
        };
        if let Some(user_id) = principal.user_id() {
            tracing::Span::current().record("user_id", user_id);
        }
        // Scrapes of /metrics are authenticated but not counted against the service's limit.
        if req.uri().path() != "/metrics" {
            backend
                .auth()
                .check_rate_limit(&principal)
                .await
                .map_err(ApiError::from)?;
        }
        let correlation_id = req
            .extensions()
            .get::<CorrelationId>()
            .cloned()
            .unwrap_or_else(CorrelationId::generate);
        req.extensions_mut()
            .insert(RequestContext::new(correlation_id, principal));
    }
    next.call(req).await.map(IntoResponse::into_response)
}

fn payload_too_large(max: usize) -> poem::Error {
    poem::Error::from_string(
        format!("request body larger than {max} bytes"),
        StatusCode::PAYLOAD_TOO_LARGE,
    )
}

/// Refuses request bodies larger than `max` bytes with 413 (`MAX_BODY_BYTES`).
///
/// poem's own `SizeLimit` answers 411 to every request without `Content-Length`, including
/// bodyless GETs, so this one checks `Content-Length` when there is one and otherwise (a
/// chunked HTTP/1.1 body, or HTTP/2 without a length) reads at most `max` bytes before
/// handing the buffered body on.
pub async fn body_limit<E: Endpoint>(
    max: usize,
    next: E,
    mut req: Request,
) -> poem::Result<Response> {
    match req.headers().get(header::CONTENT_LENGTH) {
        Some(len) => {
            // hyper has already refused a malformed Content-Length.
            let len = len
                .to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .unwrap_or(u64::MAX);
            if len > max as u64 {
                return Err(payload_too_large(max));
            }
        }
        None => {
            let streamed = req.headers().contains_key(header::TRANSFER_ENCODING)
                || req.version() >= Version::HTTP_2;
            if streamed {
                let body = req.take_body();
                let bytes = body.into_bytes_limit(max).await.map_err(|e| match e {
                    ReadBodyError::PayloadTooLarge => payload_too_large(max),
                    other => other.into(),
                })?;
                req.set_body(bytes);
            }
        }
    }
    next.call(req).await.map(IntoResponse::into_response)
}

/// The methods of each path of the document, as `(template, "GET, POST")`.
pub type AllowedMethods = std::sync::Arc<Vec<(String, String)>>;

/// The methods each path of an OpenAPI document declares.
pub fn allowed_methods(document: &str) -> AllowedMethods {
    let doc: serde_json::Value = serde_json::from_str(document).unwrap_or_default();
    let routes = doc["paths"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(path, item)| {
            let methods: Vec<String> = item
                .as_object()
                .into_iter()
                .flat_map(|o| o.keys())
                .map(|m| m.to_ascii_uppercase())
                .collect();
            (path.clone(), methods.join(", "))
        })
        .collect();
    std::sync::Arc::new(routes)
}

fn template_matches(template: &str, path: &str) -> bool {
    let mut t = template.split('/');
    let mut p = path.split('/');
    loop {
        match (t.next(), p.next()) {
            (None, None) => return true,
            (Some(ts), Some(ps)) if ts.starts_with('{') && !ps.is_empty() => {}
            (Some(ts), Some(ps)) if ts == ps => {}
            _ => return false,
        }
    }
}

/// Adds `Allow` (RFC 9110) to 405 answers: the methods the document declares for the path.
pub async fn allow_header<E: Endpoint>(
    routes: AllowedMethods,
    next: E,
    req: Request,
) -> poem::Result<Response> {
    let path = req.uri().path().to_owned();
    let mut resp = next.call(req).await?.into_response();
    if resp.status() == StatusCode::METHOD_NOT_ALLOWED
        && let Some((_, allow)) = routes.iter().find(|(t, _)| template_matches(t, &path))
        && let Ok(v) = HeaderValue::from_str(allow)
    {
        resp.headers_mut().insert(header::ALLOW, v);
    }
    Ok(resp)
}
