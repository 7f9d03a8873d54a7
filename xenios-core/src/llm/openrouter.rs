//! The OpenRouter provider: OpenAI-shaped chat completions over reqwest (pooled
//! connections, HTTP/2 where the server offers it), a client per thread by default
//! ([`super::upstream`]).
//!
//! Streams are parsed with `eventsource-stream`: `:` comment lines (`: OPENROUTER
//! PROCESSING`) are skipped by the parser, `data: [DONE]` ends the stream, and a `data:`
//! chunk with a top-level `error` (or `finish_reason: "error"`) becomes a mid-stream failure.

use eventsource_stream::Eventsource;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use reqwest::header::HeaderValue;
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use tracing::Instrument;

use super::provider::{
    ChunkStream, Provider, ProviderChunk, ProviderError, ProviderErrorKind, ProviderRequest,
    ProviderResponse, parse_retry_after,
};
use super::types::{Message, Usage};
use super::upstream::Upstream;

/// Calls `POST {OPENROUTER_BASE_URL}/chat/completions`.
///
/// The URL and the `Authorization` header are built once, not per call: parsing a URL
/// (IDNA included) and formatting the header showed up in the per-request profile.
#[derive(Clone)]
pub struct OpenRouterProvider {
    http: std::sync::Arc<Upstream>,
    /// An unusable URL or key fails every call the same way: 401-like, so no fallback is
    /// tried (the configuration refuses both, so this is for embedders' mistakes).
    url: Result<reqwest::Url, ProviderError>,
    authorization: Result<HeaderValue, ProviderError>,
}

impl std::fmt::Debug for OpenRouterProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenRouterProvider")
            .field("url", &self.url.as_ref().map(reqwest::Url::as_str))
            .finish_non_exhaustive()
    }
}

/// The request body, serialized straight from the request (no intermediate JSON tree).
#[derive(Serialize)]
struct ChatBody<'a> {
    model: &'a str,
    messages: &'a [Message],
    temperature: f32,
    max_tokens: u32,
    /// OpenRouter's switch for usage and cost in the answer.
    usage: Include,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
}

#[derive(Serialize)]
struct Include {
    include: bool,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

impl OpenRouterProvider {
    /// A provider on `http` (a client, or [`Upstream::per_thread`]), against `base_url`
    /// (e.g. `https://openrouter.ai/api/v1`). An invalid URL or key (the configuration
    /// refuses both) fails every call.
    pub fn new(http: impl Into<Upstream>, base_url: &str, api_key: SecretString) -> Self {
        let refused = |m: String| ProviderError::new(ProviderErrorKind::Status(401), m);
        let url = reqwest::Url::parse(&format!(
            "{}/chat/completions",
            base_url.trim_end_matches('/')
        ))
        .map_err(|e| refused(format!("OPENROUTER_BASE_URL is not a valid URL: {e}")));
        let authorization = HeaderValue::from_str(&format!("Bearer {}", api_key.expose_secret()))
            .map(|mut v| {
                v.set_sensitive(true);
                v
            })
            .map_err(|_| refused("OPENROUTER_API_KEY is not a valid header value".to_owned()));
        Self {
            http: std::sync::Arc::new(http.into()),
            url,
            authorization,
        }
    }

    async fn send(
        &self,
        req: &ProviderRequest,
        stream: bool,
    ) -> Result<reqwest::Response, ProviderError> {
        let url = self.url.as_ref().map_err(Clone::clone)?;
        let authorization = self.authorization.as_ref().map_err(Clone::clone)?;
        let body = ChatBody {
            model: &req.model,
            messages: &req.messages,
            temperature: req.temperature,
            max_tokens: req.max_tokens,
            usage: Include { include: true },
            stream: stream.then_some(true),
            stream_options: stream.then_some(StreamOptions {
                include_usage: true,
            }),
        };
        // One span per upstream attempt; its W3C trace context travels upstream. It repeats
        // the correlation ID so that log lines inside it still carry it.
        let span = tracing::info_span!(
            "llm.attempt",
            model = %req.model,
            stream,
            correlation_id = %req.correlation_id,
            otel.kind = "client"
        );
        let mut request = self
            .http
            .client()
            .post(url.clone())
            .header(reqwest::header::AUTHORIZATION, authorization.clone())
            .header("X-Request-ID", &req.correlation_id)
            .header("X-Title", "Xenios AI Backend");
        if let Some(traceparent) = crate::telemetry::traceparent_of(&span) {
            request = request.header(crate::telemetry::trace::TRACEPARENT, traceparent);
        }
        let resp = request
            .json(&body)
            .send()
            .instrument(span)
            .await
            .map_err(transport_error)?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let text = resp.text().await.unwrap_or_default();
        // An OpenAI-shaped error object: `{"error": {"message": ..}}` (or any `error`).
        let message = serde_json::from_str::<serde_json::Map<String, Value>>(&text)
            .ok()
            .and_then(|body| body.get("error").map(error_text))
            .unwrap_or_else(|| {
                status
                    .canonical_reason()
                    .unwrap_or("upstream error")
                    .to_owned()
            });
        Err(
            ProviderError::new(ProviderErrorKind::Status(status.as_u16()), message)
                .with_retry_after(retry_after),
        )
    }
}

fn transport_error(e: reqwest::Error) -> ProviderError {
    // reqwest's Display names the URL but never headers, so the key cannot leak here.
    let kind = if e.is_connect() {
        ProviderErrorKind::Connect
    } else if e.is_timeout() {
        ProviderErrorKind::Timeout
    } else if e.is_decode() || e.is_body() {
        ProviderErrorKind::MidStream
    } else {
        ProviderErrorKind::Connect
    };
    ProviderError::new(kind, e.without_url().to_string())
}

/// `{"error": ..}`'s text: its `message`, the value itself when it is a string, else the
/// JSON of it.
fn error_text(e: &Value) -> String {
    e.get("message")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| match e {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
}

/// An answer or stream chunk as OpenRouter sends it, read straight into these structs.
///
/// Typed structs rather than a `serde_json::Value` tree walked with `pointer`: building that
/// tree's maps and escaping its pointers were a visible share of each proxied call's CPU.
/// Fields the backend does not use are skipped unread. Scalars of an unexpected type read
/// as absent ([`lenient`]), so an odd `model` or token count never fails a good answer.
#[derive(Deserialize)]
struct Wire {
    #[serde(default, deserialize_with = "lenient")]
    model: Option<String>,
    #[serde(default)]
    choices: Option<Vec<WireChoice>>,
    #[serde(default)]
    usage: Option<WireUsage>,
    /// OpenRouter reports a failure of the model behind it here, even with HTTP 200.
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct WireChoice {
    /// Complete answers.
    #[serde(default)]
    message: Option<WireText>,
    /// Stream chunks.
    #[serde(default)]
    delta: Option<WireText>,
    #[serde(default, deserialize_with = "lenient")]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct WireText {
    #[serde(default, deserialize_with = "lenient")]
    content: Option<String>,
}

#[derive(Deserialize)]
struct WireUsage {
    #[serde(default, deserialize_with = "lenient")]
    prompt_tokens: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    completion_tokens: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    total_tokens: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    cost: Option<f64>,
    #[serde(default)]
    prompt_tokens_details: Option<WireDetails>,
    #[serde(default)]
    completion_tokens_details: Option<WireDetails>,
}

#[derive(Deserialize)]
struct WireDetails {
    #[serde(default, deserialize_with = "lenient")]
    cached_tokens: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    reasoning_tokens: Option<u64>,
}

/// A scalar that reads as `None` when it is null or of another type, instead of failing the
/// whole answer.
fn lenient<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    Ok(serde_json::from_value(Value::deserialize(d)?).ok())
}

/// Which kind of payload [`Wire::read`] reads: its text is `choices[0].message` in an answer,
/// `choices[0].delta` in a stream chunk.
#[derive(Clone, Copy)]
enum Shape {
    Answer,
    Chunk,
}

/// What the backend uses of an answer or chunk.
struct Read {
    text: Option<String>,
    finish_reason: Option<String>,
    model: Option<String>,
    usage: Option<Usage>,
}

impl Wire {
    /// Parses an answer or chunk; its `error` (OpenRouter's failure behind a 200) is a
    /// mid-stream failure.
    fn read(data: &[u8], shape: Shape) -> Result<Read, ProviderError> {
        let what = match shape {
            Shape::Answer => "body",
            Shape::Chunk => "stream chunk",
        };
        let wire: Wire = serde_json::from_slice(data).map_err(|e| {
            ProviderError::new(
                ProviderErrorKind::InvalidResponse,
                format!("{what} is not an OpenAI-shaped JSON object: {e}"),
            )
        })?;
        if let Some(e) = &wire.error {
            return Err(ProviderError::new(
                ProviderErrorKind::MidStream,
                error_text(e),
            ));
        }
        let usage = wire.usage();
        let first = wire.choices.and_then(|c| c.into_iter().next());
        let (text, finish_reason) = match first {
            Some(c) => {
                let text = match shape {
                    Shape::Answer => c.message,
                    Shape::Chunk => c.delta,
                };
                (text.and_then(|t| t.content), c.finish_reason)
            }
            None => (None, None),
        };
        Ok(Read {
            text,
            finish_reason,
            model: wire.model,
            usage,
        })
    }

    fn usage(&self) -> Option<Usage> {
        let u = self.usage.as_ref()?;
        let n = |v: Option<u64>| v.map(|n| u32::try_from(n).unwrap_or(u32::MAX));
        let prompt = n(u.prompt_tokens).unwrap_or(0);
        let completion = n(u.completion_tokens).unwrap_or(0);
        Some(Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: n(u.total_tokens).unwrap_or(prompt.saturating_add(completion)),
            cost_usd: u.cost,
            cached_tokens: n(u
                .prompt_tokens_details
                .as_ref()
                .and_then(|d| d.cached_tokens)),
            reasoning_tokens: n(u
                .completion_tokens_details
                .as_ref()
                .and_then(|d| d.reasoning_tokens)),
        })
    }
}

/// One `data:` payload of a stream.
fn parse_chunk(data: &str) -> Result<ProviderChunk, ProviderError> {
    let r = Wire::read(data.as_bytes(), Shape::Chunk)?;
    if r.finish_reason.as_deref() == Some("error") {
        return Err(ProviderError::new(
            ProviderErrorKind::MidStream,
            "finish_reason error",
        ));
    }
    Ok(ProviderChunk {
        delta: r.text.filter(|s| !s.is_empty()),
        model: r.model,
        finish_reason: r.finish_reason,
        usage: r.usage,
    })
}

impl Provider for OpenRouterProvider {
    fn name(&self) -> &'static str {
        "openrouter"
    }

    fn complete<'a>(
        &'a self,
        req: &'a ProviderRequest,
    ) -> BoxFuture<'a, Result<ProviderResponse, ProviderError>> {
        async move {
            let resp = self.send(req, false).await?;
            let body = resp.bytes().await.map_err(|e| {
                ProviderError::new(
                    ProviderErrorKind::MidStream,
                    format!("body not received: {}", e.without_url()),
                )
            })?;
            let r = Wire::read(&body, Shape::Answer)?;
            let content = r.text.ok_or_else(|| {
                ProviderError::new(
                    ProviderErrorKind::InvalidResponse,
                    "no choices[0].message.content",
                )
            })?;
            Ok(ProviderResponse {
                content,
                model: r.model,
                finish_reason: r.finish_reason,
                usage: r.usage,
            })
        }
        .boxed()
    }

    fn stream<'a>(
        &'a self,
        req: &'a ProviderRequest,
    ) -> BoxFuture<'a, Result<ChunkStream, ProviderError>> {
        async move {
            let resp = self.send(req, true).await?;
            let events = resp.bytes_stream().eventsource();
            let chunks = events
                .map(|event| match event {
                    Ok(e) if e.data.trim() == "[DONE]" => None,
                    Ok(e) if e.data.trim().is_empty() => Some(Ok(ProviderChunk::default())),
                    Ok(e) => Some(parse_chunk(&e.data)),
                    Err(e) => Some(Err(ProviderError::new(
                        ProviderErrorKind::MidStream,
                        e.to_string(),
                    ))),
                })
                // `[DONE]` ends the stream even if the connection stays open.
                .take_while(|item| futures::future::ready(item.is_some()))
                .filter_map(futures::future::ready);
            Ok(chunks.boxed())
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_chunks_errors_and_usage() {
        let c = parse_chunk(
            r#"{"model":"m","choices":[{"delta":{"content":"Hi"},"finish_reason":null}]}"#,
        )
        .unwrap();
        assert_eq!(c.delta.as_deref(), Some("Hi"));
        let c = parse_chunk(
            r#"{"choices":[{"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5,"cost":0.01,"prompt_tokens_details":{"cached_tokens":1}}}"#,
        )
        .unwrap();
        let u = c.usage.unwrap();
        assert_eq!(
            (u.total_tokens, u.cost_usd, u.cached_tokens),
            (5, Some(0.01), Some(1))
        );
        let e = parse_chunk(
            r#"{"error":{"code":502,"message":"provider died"},"choices":[{"delta":{"content":""},"finish_reason":"error"}]}"#,
        )
        .unwrap_err();
        assert_eq!(e.kind, ProviderErrorKind::MidStream);
        assert!(e.message.contains("provider died"));
        assert!(parse_chunk("not json").is_err());
    }

    #[test]
    fn odd_scalars_read_as_absent_and_null_error_is_no_error() {
        // A float count, a numeric model and `error: null` do not fail a good chunk.
        let c = parse_chunk(
            r#"{"model":7,"error":null,"choices":[{"delta":{"content":"Hi"},"finish_reason":null}],"usage":{"prompt_tokens":2.5,"completion_tokens":3,"cost":"x"}}"#,
        )
        .unwrap();
        assert_eq!(c.delta.as_deref(), Some("Hi"));
        assert_eq!(c.model, None);
        let u = c.usage.unwrap();
        assert_eq!(
            (
                u.prompt_tokens,
                u.completion_tokens,
                u.total_tokens,
                u.cost_usd
            ),
            (0, 3, 3, None)
        );
        // No choices at all is a chunk without text (usage-only chunks look like this).
        let c = parse_chunk(r#"{"choices":[],"usage":{"total_tokens":9}}"#).unwrap();
        assert_eq!((c.delta, c.usage.unwrap().total_tokens), (None, 9));
        // An error given as a plain string keeps its text.
        let e = parse_chunk(r#"{"error":"overloaded"}"#).unwrap_err();
        assert_eq!(
            (e.kind, e.message.as_str()),
            (ProviderErrorKind::MidStream, "overloaded")
        );
        // A JSON value that is not an object is an invalid response, not a panic.
        for bad in ["[1,2]", "\"text\"", r#"{"choices":{"0":1}}"#] {
            let e = parse_chunk(bad).unwrap_err();
            assert_eq!(e.kind, ProviderErrorKind::InvalidResponse, "{bad}");
        }
    }
}
