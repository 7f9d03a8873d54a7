//! The provider seam: one model call, complete or streamed, and how it can fail.
//!
//! Providers know nothing about routes, retries or timeouts: the engine ([`super::Llm`])
//! wraps every call with those, so the fake provider exercises exactly the same rules as
//! OpenRouter.

use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::BoxStream;

use super::types::{Message, Usage};

/// One call to one model.
#[derive(Debug, Clone)]
pub struct ProviderRequest {
    /// Model id, e.g. `anthropic/claude-sonnet-4`.
    pub model: String,
    /// The conversation.
    pub messages: Vec<Message>,
    /// Sampling temperature.
    pub temperature: f32,
    /// Most tokens to generate.
    pub max_tokens: u32,
    /// Sent upstream (`X-Request-ID`) so both sides' logs line up.
    pub correlation_id: String,
}

/// A complete answer from one model.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProviderResponse {
    /// The text.
    pub content: String,
    /// The model that answered, when the upstream says.
    pub model: Option<String>,
    /// Why generation stopped.
    pub finish_reason: Option<String>,
    /// Tokens and cost.
    pub usage: Option<Usage>,
}

/// One parsed chunk of a stream.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProviderChunk {
    /// New text, if any.
    pub delta: Option<String>,
    /// The model that answers, when the chunk says.
    pub model: Option<String>,
    /// Set on the last content chunk.
    pub finish_reason: Option<String>,
    /// Usage (normally in the last chunk).
    pub usage: Option<Usage>,
}

impl ProviderChunk {
    /// Takes `next`'s model, usage and finish reason where it carries them (a later chunk
    /// overrides an earlier one) and returns its text, if any.
    pub fn merge(&mut self, next: ProviderChunk) -> Option<String> {
        if next.model.is_some() {
            self.model = next.model;
        }
        if next.usage.is_some() {
            self.usage = next.usage;
        }
        if next.finish_reason.is_some() {
            self.finish_reason = next.finish_reason;
        }
        next.delta
    }
}

/// A stream of chunks; dropping it cancels the upstream request.
pub type ChunkStream = BoxStream<'static, Result<ProviderChunk, ProviderError>>;

/// A model provider (OpenRouter, the fake).
pub trait Provider: Send + Sync + std::fmt::Debug {
    /// A short name for logs (`openrouter`, `fake`).
    fn name(&self) -> &'static str;

    /// One non-streaming call.
    fn complete<'a>(
        &'a self,
        req: &'a ProviderRequest,
    ) -> BoxFuture<'a, Result<ProviderResponse, ProviderError>>;

    /// Opens a stream; resolves once the upstream accepted the request (HTTP 200).
    fn stream<'a>(
        &'a self,
        req: &'a ProviderRequest,
    ) -> BoxFuture<'a, Result<ChunkStream, ProviderError>>;
}

/// How one call to one model failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProviderErrorKind {
    /// No connection could be made.
    Connect,
    /// No first token, or no end, in time.
    Timeout,
    /// The upstream answered with this HTTP status.
    Status(u16),
    /// The stream broke or carried an error chunk.
    MidStream,
    /// The upstream's answer could not be understood.
    InvalidResponse,
}

/// A failed call to one model: `connect error: ...`, `timeout: ...`, `HTTP 503: ...`,
/// `stream failed: ...` or `invalid response: ...` (the upstream's text, for logs).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", .kind.label())]
pub struct ProviderError {
    /// What kind of failure.
    pub kind: ProviderErrorKind,
    /// Details for logs and error messages (never a secret).
    pub message: String,
    /// How long the upstream asked us to wait (`Retry-After`).
    pub retry_after: Option<Duration>,
}

impl ProviderError {
    /// A failure of `kind`.
    pub fn new(kind: ProviderErrorKind, message: impl Into<String>) -> Self {
        let mut message: String = message.into();
        if message.len() > 500 {
            let mut cut = 500;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        Self {
            kind,
            message,
            retry_after: None,
        }
    }

    /// With a `Retry-After` delay.
    pub fn with_retry_after(mut self, after: Option<Duration>) -> Self {
        self.retry_after = after;
        self
    }

    /// Whether the next model may succeed where this one failed: connect errors, timeouts,
    /// 408, 429, 5xx, broken streams and 404 (model unknown or without endpoints). 400, 401,
    /// 402, 403 and other 4xx would fail on every model.
    pub fn allows_fallback(&self) -> bool {
        match self.kind {
            ProviderErrorKind::Status(s) => matches!(s, 404 | 408 | 429 | 500..=599),
            _ => true,
        }
    }

    /// Whether the same model may succeed if asked again after a pause.
    pub fn is_retryable(&self) -> bool {
        match self.kind {
            ProviderErrorKind::Status(s) => matches!(s, 408 | 429 | 500..=599),
            ProviderErrorKind::InvalidResponse => false,
            _ => true,
        }
    }
}

/// How the engine's own timeout messages begin (see [`super::Llm`]).
const ENGINE_TIMEOUTS: [&str; 3] = [
    "no answer within ",
    "no first token within ",
    "stream not finished within ",
];

impl ProviderErrorKind {
    /// How logs and clients name the kind: `connect error`, `timeout`, `HTTP 503`,
    /// `stream failed`, `invalid response`.
    pub fn label(self) -> std::borrow::Cow<'static, str> {
        match self {
            ProviderErrorKind::Connect => "connect error".into(),
            ProviderErrorKind::Timeout => "timeout".into(),
            ProviderErrorKind::Status(s) => format!("HTTP {s}").into(),
            ProviderErrorKind::MidStream => "stream failed".into(),
            ProviderErrorKind::InvalidResponse => "invalid response".into(),
        }
    }
}

impl ProviderError {
    /// What a client may see of this failure: its kind and HTTP status, never the upstream's
    /// own text (which can carry account details such as a credit balance).
    pub fn public_summary(&self) -> String {
        match self.kind {
            // The engine's own deadlines say which one passed; a client library's timeout
            // text is not repeated.
            ProviderErrorKind::Timeout
                if ENGINE_TIMEOUTS.iter().any(|p| self.message.starts_with(p)) =>
            {
                format!("timeout: {}", self.message)
            }
            kind => kind.label().into_owned(),
        }
    }
}

/// Parses a `Retry-After` value in seconds (integer or decimal); dates are ignored.
pub fn parse_retry_after(raw: &str) -> Option<Duration> {
    let secs: f64 = raw.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(3600.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_and_retry_rules() {
        let e = |s| ProviderError::new(ProviderErrorKind::Status(s), "x");
        for s in [400, 401, 402, 403, 422] {
            assert!(!e(s).allows_fallback(), "{s}");
            assert!(!e(s).is_retryable(), "{s}");
        }
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(e(s).allows_fallback(), "{s}");
            assert!(e(s).is_retryable(), "{s}");
        }
        assert!(e(404).allows_fallback() && !e(404).is_retryable());
        assert!(ProviderError::new(ProviderErrorKind::Timeout, "t").allows_fallback());
        assert!(ProviderError::new(ProviderErrorKind::MidStream, "t").is_retryable());
    }

    #[test]
    fn display_names_the_kind_then_the_upstream_text() {
        let e = |kind| ProviderError::new(kind, "boom").to_string();
        assert_eq!(e(ProviderErrorKind::Connect), "connect error: boom");
        assert_eq!(e(ProviderErrorKind::Timeout), "timeout: boom");
        assert_eq!(e(ProviderErrorKind::Status(503)), "HTTP 503: boom");
        assert_eq!(e(ProviderErrorKind::MidStream), "stream failed: boom");
        assert_eq!(
            e(ProviderErrorKind::InvalidResponse),
            "invalid response: boom"
        );
        let quiet = ProviderError::new(ProviderErrorKind::Status(402), "credit balance 3.10");
        assert_eq!(quiet.public_summary(), "HTTP 402");
    }

    #[test]
    fn retry_after_parsing() {
        assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after(" 0.5 "), Some(Duration::from_millis(500)));
        assert_eq!(parse_retry_after("-1"), None);
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }
}
