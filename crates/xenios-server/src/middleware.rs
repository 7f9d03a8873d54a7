//! Request middleware: correlation IDs, access logs, error bodies, API keys.

use std::time::Instant;

use poem::http::HeaderValue;
use poem::{Endpoint, IntoResponse, Request, Response};
use tracing::Instrument;
use xenios_core::{AiBackend, CorrelationId};

use crate::error::{self, ApiError};

/// Response header that carries the correlation ID back to the caller.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Gives every request a correlation ID (the caller's `X-Request-ID` or `X-Correlation-ID`
/// when sane, a new UUID otherwise), runs it inside a tracing span carrying that ID, turns
/// errors into JSON bodies, and echoes the ID in `X-Request-ID`.
pub async fn correlation<E: Endpoint>(next: E, mut req: Request) -> poem::Result<Response> {
    let id = CorrelationId::from_candidates([
        req.header(REQUEST_ID_HEADER),
        req.header("x-correlation-id"),
    ]);
    req.extensions_mut().insert(id.clone());
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let span = tracing::info_span!("request", correlation_id = %id, %method, %path);
    let started = Instant::now();
    let result = next.call(req).instrument(span.clone()).await;
    let mut resp = match result {
        Ok(r) => r.into_response(),
        Err(e) => span.in_scope(|| error::into_response(e, &id)),
    };
    if let Ok(v) = HeaderValue::from_str(id.as_str()) {
        resp.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    let status = resp.status().as_u16();
    let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    span.in_scope(|| {
        if path.starts_with("/health") {
            tracing::debug!(status, latency_us = micros, "request completed");
        } else {
            tracing::info!(status, latency_us = micros, "request completed");
        }
    });
    Ok(resp)
}

/// Whether a path is part of the authenticated API.
pub fn requires_api_key(path: &str) -> bool {
    path.starts_with("/api/") || path.starts_with("/v1/")
}

/// Refuses `/api/*` and `/v1/*` requests without the right `X-API-Key`.
pub async fn api_key<E: Endpoint>(
    backend: AiBackend,
    next: E,
    req: Request,
) -> poem::Result<Response> {
    if requires_api_key(req.uri().path()) {
        backend
            .verify_api_key(req.header("x-api-key"))
            .map_err(ApiError::from)?;
    }
    next.call(req).await.map(IntoResponse::into_response)
}
