//! `/api/v1/llm/complete` and `/api/v1/llm/stream`: LLM calls routed by task.

use futures::StreamExt;
use futures::stream::BoxStream;
use poem::web::sse::Event;
use poem_openapi::payload::{EventStream, Json, PlainText};
use poem_openapi::{ApiResponse, Object, OpenApi};
use xenios_core::llm::{CompletionRequest, Message, Role, StreamEvent, Task, Usage};
use xenios_core::{AiBackend, RequestContext};

use super::ApiTags;
use crate::error::ApiError;

/// The caller's context, as the auth layer stored it in the request.
///
/// Its absence is a bug (a route outside the authenticated paths, a middleware order gone
/// wrong): it fails closed with a 500, logged once by the error layer, never a guessed
/// principal.
pub fn request_context(req: &poem::Request) -> Result<RequestContext, ApiError> {
    req.extensions()
        .get::<RequestContext>()
        .cloned()
        .ok_or_else(|| {
            ApiError::from(xenios_core::Error::Internal(format!(
                "{} reached a handler without an auth context",
                req.uri().path()
            )))
        })
}

/// LLM routes.
#[derive(Debug)]
pub struct LlmApi {
    /// The engine.
    pub backend: AiBackend,
}

/// One chat message.
#[derive(Debug, Clone, Object)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

/// An LLM call.
#[derive(Debug, Object)]
pub struct LlmRequest {
    /// `session_summary`, `insight_generation`, `chat`, `intent_classification` or
    /// `entity_extraction`: picks the models and defaults.
    pub task: String,
    /// The conversation, oldest first.
    pub messages: Vec<ChatMessage>,
    /// Overrides the route's temperature (0 to 2).
    pub temperature: Option<f32>,
    /// Lowers the route's max_tokens (422 above the route's value).
    pub max_tokens: Option<u32>,
    /// Service only (403 `model_choice_forbidden` for users): overrides the route's models,
    /// tried in order; at most 5, each in `LLM_ALLOWED_MODELS` (403 `model_not_allowed`).
    pub models: Option<Vec<String>>,
}

/// Token counts and cost.
#[derive(Debug, Clone, Object)]
pub struct UsageBody {
    /// Prompt tokens.
    pub prompt_tokens: u32,
    /// Completion tokens.
    pub completion_tokens: u32,
    /// Both.
    pub total_tokens: u32,
    /// Cost in USD, as OpenRouter reports it.
    pub cost_usd: Option<f64>,
}

impl From<Usage> for UsageBody {
    fn from(u: Usage) -> Self {
        Self {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.total_tokens,
            cost_usd: u.cost_usd,
        }
    }
}

/// A completion.
#[derive(Debug, Object)]
pub struct CompletionBody {
    /// The generated text.
    pub content: String,
    /// The model that answered.
    pub model_used: String,
    /// The route's first model.
    pub model_requested: String,
    /// True when a fallback model answered.
    pub fallback_used: bool,
    /// Why generation stopped.
    pub finish_reason: Option<String>,
    /// Tokens and cost.
    pub usage: UsageBody,
    /// Cost in USD (same as `usage.cost_usd`).
    pub cost_usd: Option<f64>,
    /// Wall time of the call, retries and fallbacks included.
    pub latency_ms: u64,
}

/// One server-sent event of `/api/v1/llm/stream`; the SSE event name is its `type`. Fields
/// that do not apply to the event's type are left out.
#[derive(Debug, Clone, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct StreamEventBody {
    /// `delta`, `done` or `error`.
    #[oai(rename = "type")]
    pub kind: String,
    /// `delta`: the new text.
    pub content: Option<String>,
    /// `done`: the model that answered.
    pub model_used: Option<String>,
    /// `done`: true when a fallback model answered.
    pub fallback_used: Option<bool>,
    /// `done`: why generation stopped.
    pub finish_reason: Option<String>,
    /// `done`: tokens and cost.
    pub usage: Option<UsageBody>,
    /// `done`: wall time in ms.
    pub latency_ms: Option<u64>,
    /// `done`: time to first token in ms.
    pub ttft_ms: Option<u64>,
    /// `error`: machine-readable code.
    pub code: Option<String>,
    /// `error`: what went wrong.
    pub message: Option<String>,
}

impl StreamEventBody {
    fn empty(kind: &str) -> Self {
        Self {
            kind: kind.to_owned(),
            content: None,
            model_used: None,
            fallback_used: None,
            finish_reason: None,
            usage: None,
            latency_ms: None,
            ttft_ms: None,
            code: None,
            message: None,
        }
    }
}

impl From<StreamEvent> for StreamEventBody {
    fn from(e: StreamEvent) -> Self {
        match e {
            StreamEvent::Delta { content } => Self {
                content: Some(content),
                ..Self::empty("delta")
            },
            StreamEvent::Done(s) => Self {
                model_used: Some(s.model_used),
                fallback_used: Some(s.fallback_used),
                finish_reason: s.finish_reason,
                usage: Some(s.usage.into()),
                latency_ms: Some(s.latency_ms),
                ttft_ms: s.ttft_ms,
                ..Self::empty("done")
            },
            StreamEvent::Error { code, message } => Self {
                code: Some(code.to_string()),
                message: Some(message),
                ..Self::empty("error")
            },
        }
    }
}

/// Turns API messages into core messages, refusing unknown roles.
pub fn core_messages(messages: Vec<ChatMessage>) -> Result<Vec<Message>, ApiError> {
    messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let role = Role::parse(&m.role).ok_or_else(|| {
                xenios_core::Error::Validation(format!(
                    "messages[{i}].role: `{}` is not system, user or assistant",
                    m.role.chars().take(32).collect::<String>()
                ))
            })?;
            Ok(Message::new(role, m.content))
        })
        .collect()
}

impl LlmRequest {
    fn into_core(self) -> Result<CompletionRequest, ApiError> {
        let task: Task =
            self.task
                .parse()
                .map_err(|e: xenios_core::llm::routing::UnknownTaskName| {
                    xenios_core::Error::Validation(format!("task: {e}"))
                })?;
        Ok(CompletionRequest {
            task,
            messages: core_messages(self.messages)?,
            temperature: self.temperature,
            max_tokens: self.max_tokens,
            models: self.models,
        })
    }
}

/// The body type of the SSE stream.
pub type EventBodies = BoxStream<'static, StreamEventBody>;

#[OpenApi(tag = "ApiTags::Llm")]
impl LlmApi {
    /// Complete: runs the task's route (primary model, then fallbacks) and returns the
    /// completion, the model used, whether a fallback answered, usage, cost and latency.
    /// 422 for bad input, 502 when every model failed (the message lists each failure in
    /// order), 504 when every model timed out.
    #[oai(path = "/api/v1/llm/complete", method = "post")]
    async fn complete(
        &self,
        req: &poem::Request,
        body: Json<LlmRequest>,
    ) -> poem::Result<Json<CompletionBody>> {
        let ctx = request_context(req)?;
        let c = self
            .backend
            .complete(&ctx, body.0.into_core()?)
            .await
            .map_err(ApiError::from)?;
        Ok(Json(CompletionBody {
            content: c.content,
            model_used: c.model_used,
            model_requested: c.model_requested,
            fallback_used: c.fallback_used,
            finish_reason: c.finish_reason,
            cost_usd: c.usage.cost_usd,
            usage: c.usage.into(),
            latency_ms: c.latency_ms,
        }))
    }

    /// Prometheus text metrics (needs `X-API-Key`): LLM calls, streams, fallbacks, retries,
    /// errors and a latency histogram (seconds); audit rows; the shared rate limiter (Redis
    /// up, leases, fallback checks); uses of the previous API key.
    #[oai(path = "/metrics", method = "get")]
    async fn metrics(&self) -> MetricsResponse {
        let b = &self.backend;
        let readings = xenios_core::metrics::Readings {
            audit: b.audit_stats(),
            rate_limit: b.rate_limit_stats(),
            previous_api_key_uses: b.previous_api_key_uses(),
        };
        let text = xenios_core::metrics::render(b.llm().metrics(), &readings);
        MetricsResponse::Ok(PlainText(text))
    }

    /// Stream: the same as server-sent events. `delta` events carry text as it arrives, then
    /// one `done` event (usage, model used) or one `error` event if the stream fails after it
    /// started. Failures before the first token are ordinary HTTP errors (502/504). Closing
    /// the connection cancels the upstream request.
    #[oai(path = "/api/v1/llm/stream", method = "post")]
    async fn stream(
        &self,
        req: &poem::Request,
        body: Json<LlmRequest>,
    ) -> poem::Result<EventStream<EventBodies>> {
        let ctx = request_context(req)?;
        let stream = self
            .backend
            .stream(&ctx, body.0.into_core()?)
            .await
            .map_err(ApiError::from)?;
        let events = stream.map(StreamEventBody::from).boxed();
        Ok(EventStream::new(events)
            .keep_alive(std::time::Duration::from_secs(15))
            .to_event(|e| {
                let json = poem_openapi::types::ToJSON::to_json_string(&e);
                Event::message(json).event_type(e.kind)
            }))
    }
}

/// `/metrics`: the OpenMetrics text of [`xenios_core::metrics::render`].
#[derive(ApiResponse)]
enum MetricsResponse {
    /// The metrics.
    #[oai(
        status = 200,
        content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8"
    )]
    Ok(PlainText<String>),
}
