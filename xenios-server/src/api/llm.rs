//! `/api/v1/llm/complete` and `/api/v1/llm/stream`: LLM calls routed by task.

use futures::StreamExt;
use futures::stream::BoxStream;
use poem::web::sse::Event;
use poem_openapi::payload::{EventStream, Json, PlainText};
use poem_openapi::{ApiResponse, Enum, Object, OpenApi};
use xenios_core::AiBackend;
use xenios_core::llm::{CompletionRequest, Message, Role, StreamEvent, Task, Usage};

use super::ApiTags;
use super::security::Caller;
use super::text::Text;
use crate::error::{Errors, KeyOnlyErrors, LlmErrors};

/// LLM routes.
#[derive(Debug)]
pub struct LlmApi {
    /// The engine.
    pub backend: AiBackend,
}

/// Who wrote a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum ChatRole {
    /// Instructions for the model.
    System,
    /// The end user.
    User,
    /// The model.
    Assistant,
}

impl From<ChatRole> for Role {
    fn from(r: ChatRole) -> Self {
        match r {
            ChatRole::System => Role::System,
            ChatRole::User => Role::User,
            ChatRole::Assistant => Role::Assistant,
        }
    }
}

/// An LLM task: picks the route (models, temperature, max_tokens).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "snake_case")]
pub enum TaskName {
    /// Summary of a coaching session.
    SessionSummary,
    /// Insights across sessions.
    InsightGeneration,
    /// Conversational replies.
    Chat,
    /// A message's intent.
    IntentClassification,
    /// Entities in a text.
    EntityExtraction,
}

impl From<TaskName> for Task {
    fn from(t: TaskName) -> Self {
        match t {
            TaskName::SessionSummary => Task::SessionSummary,
            TaskName::InsightGeneration => Task::InsightGeneration,
            TaskName::Chat => Task::Chat,
            TaskName::IntentClassification => Task::IntentClassification,
            TaskName::EntityExtraction => Task::EntityExtraction,
        }
    }
}

/// One chat message.
#[derive(Debug, Clone, Object)]
pub struct ChatMessage {
    /// Who wrote it.
    pub role: ChatRole,
    /// The text.
    pub content: Text,
}

/// An LLM call.
#[derive(Debug, Object)]
#[oai(example)]
pub struct LlmRequest {
    /// The task: picks the models and defaults.
    pub task: TaskName,
    /// The conversation, oldest first.
    pub messages: Vec<ChatMessage>,
    /// Overrides the route's temperature (0 to 2).
    pub temperature: Option<f32>,
    /// Lowers the route's max_tokens (422 above the route's value).
    pub max_tokens: Option<u32>,
    /// Service only (403 `model_choice_forbidden` for users): overrides the route's models,
    /// tried in order; at most 5, each in `LLM_ALLOWED_MODELS` (403 `model_not_allowed`).
    pub models: Option<Vec<Text>>,
}

/// Token counts and cost.
#[derive(Debug, Clone, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct UsageBody {
    /// Prompt tokens.
    pub prompt_tokens: u32,
    /// Completion tokens.
    pub completion_tokens: u32,
    /// Both.
    pub total_tokens: u32,
    /// Cost in USD, as OpenRouter reports it; absent when not reported.
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
#[oai(skip_serializing_if_is_none, example)]
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
#[oai(skip_serializing_if_is_none, example)]
pub struct StreamEventBody {
    /// The event's type, also its SSE event name.
    #[oai(rename = "type")]
    pub kind: StreamEventType,
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

/// The type of a stream event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum, strum::IntoStaticStr)]
#[oai(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum StreamEventType {
    /// New text.
    Delta,
    /// The end of a successful stream.
    Done,
    /// The stream failed after it started.
    Error,
}

impl StreamEventType {
    /// The SSE event name.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

impl StreamEventBody {
    fn empty(kind: StreamEventType) -> Self {
        Self {
            kind,
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
                ..Self::empty(StreamEventType::Delta)
            },
            StreamEvent::Done(s) => Self {
                model_used: Some(s.model_used),
                fallback_used: Some(s.fallback_used),
                finish_reason: s.finish_reason,
                usage: Some(s.usage.into()),
                latency_ms: Some(s.latency_ms),
                ttft_ms: s.ttft_ms,
                ..Self::empty(StreamEventType::Done)
            },
            StreamEvent::Error { code, message } => Self {
                code: Some(code.to_string()),
                message: Some(message),
                ..Self::empty(StreamEventType::Error)
            },
        }
    }
}

impl LlmRequest {
    fn into_core(self) -> CompletionRequest {
        CompletionRequest {
            task: self.task.into(),
            messages: self
                .messages
                .into_iter()
                .map(|m| Message::new(m.role.into(), m.content.0))
                .collect(),
            temperature: self.temperature,
            max_tokens: self.max_tokens,
            models: self
                .models
                .map(|models| models.into_iter().map(|m| m.0).collect()),
        }
    }
}

impl poem_openapi::types::Example for LlmRequest {
    fn example() -> Self {
        LlmRequest {
            task: TaskName::Chat,
            messages: vec![
                ChatMessage {
                    role: ChatRole::System,
                    content: "You are a concise coaching assistant.".into(),
                },
                ChatMessage {
                    role: ChatRole::User,
                    content: "Suggest one habit for better sleep.".into(),
                },
            ],
            temperature: Some(0.7),
            max_tokens: Some(256),
            models: None,
        }
    }
}

fn example_usage() -> UsageBody {
    UsageBody {
        prompt_tokens: 24,
        completion_tokens: 18,
        total_tokens: 42,
        cost_usd: Some(0.00042),
    }
}

impl poem_openapi::types::Example for CompletionBody {
    fn example() -> Self {
        CompletionBody {
            content: "Go to bed at the same time every night.".to_owned(),
            model_used: "anthropic/claude-sonnet-4.5".to_owned(),
            model_requested: "anthropic/claude-sonnet-4.5".to_owned(),
            fallback_used: false,
            finish_reason: Some("stop".to_owned()),
            usage: example_usage(),
            cost_usd: Some(0.00042),
            latency_ms: 840,
        }
    }
}

impl poem_openapi::types::Example for StreamEventBody {
    fn example() -> Self {
        Self {
            model_used: Some("anthropic/claude-sonnet-4.5".to_owned()),
            fallback_used: Some(false),
            finish_reason: Some("stop".to_owned()),
            usage: Some(example_usage()),
            latency_ms: Some(840),
            ttft_ms: Some(210),
            ..Self::empty(StreamEventType::Done)
        }
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
        caller: Caller,
        body: Json<LlmRequest>,
    ) -> Result<Json<CompletionBody>, Errors<LlmErrors>> {
        let c = self
            .backend
            .llm()
            .complete(caller.context()?, body.0.into_core())
            .await?;
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
    async fn metrics(&self, caller: Caller) -> Result<MetricsResponse, Errors<KeyOnlyErrors>> {
        caller.context()?;
        let b = &self.backend;
        let readings = xenios_core::metrics::Readings {
            audit: b.database().audit_stats(),
            rate_limit: b.auth().rate_limit_stats(),
            previous_api_key_uses: b.auth().previous_api_key_uses(),
        };
        let text = xenios_core::metrics::render(b.llm().metrics(), &readings);
        Ok(MetricsResponse::Ok(PlainText(text)))
    }

    /// Stream: the same as server-sent events. `delta` events carry text as it arrives, then
    /// one `done` event (usage, model used) or one `error` event if the stream fails after it
    /// started. Failures before the first token are ordinary HTTP errors (502/504). Closing
    /// the connection cancels the upstream request.
    #[oai(path = "/api/v1/llm/stream", method = "post")]
    async fn stream(
        &self,
        caller: Caller,
        body: Json<LlmRequest>,
    ) -> Result<EventStream<EventBodies>, Errors<LlmErrors>> {
        let stream = self
            .backend
            .llm()
            .stream(caller.context()?, body.0.into_core())
            .await?;
        let events = stream.map(StreamEventBody::from).boxed();
        Ok(EventStream::new(events)
            .keep_alive(std::time::Duration::from_secs(15))
            .to_event(|e| {
                let json = poem_openapi::types::ToJSON::to_json_string(&e);
                Event::message(json).event_type(e.kind.as_str())
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
