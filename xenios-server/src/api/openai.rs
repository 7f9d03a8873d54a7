//! `POST /v1/chat/completions`: OpenAI-compatible, so any OpenAI SDK can use the backend.
//! `model` is a task name (its route, with fallback) or, for the service only, a model id
//! (that model alone, with the `chat` defaults; users get 403 `model_choice_forbidden`).

use futures::StreamExt;
use futures::stream::BoxStream;
use poem::web::sse::Event;
use poem_openapi::payload::{EventStream, Json};
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde_json::{Value, json};
use xenios_core::AiBackend;
use xenios_core::llm::{CompletionRequest, StreamEvent, input};

use super::ApiTags;
use super::llm::request_context;
use crate::error::ApiError;

/// OpenAI-compatible routes.
#[derive(Debug)]
pub struct OpenAiApi {
    /// The engine.
    pub backend: AiBackend,
}

/// An OpenAI chat message; `content` is a string or a list of `{"type": "text"}` parts.
#[derive(Debug, Object)]
pub struct OpenAiMessage {
    /// `system`, `developer`, `user` or `assistant`.
    pub role: String,
    /// The text, or text parts.
    pub content: Option<Value>,
}

/// An OpenAI chat-completions request (unknown fields are ignored).
#[derive(Debug, Object)]
pub struct ChatCompletionRequest {
    /// A task name (`chat`, `session_summary`...) or, for the service only, a model id.
    pub model: String,
    /// The conversation.
    pub messages: Vec<OpenAiMessage>,
    /// Stream the answer as server-sent chunks.
    pub stream: Option<bool>,
    /// Sampling temperature (0 to 2).
    pub temperature: Option<f32>,
    /// Most tokens to generate.
    pub max_tokens: Option<u32>,
    /// Most tokens to generate (newer name).
    pub max_completion_tokens: Option<u32>,
}

/// The answer: a JSON completion, or chunks when `stream` is true.
#[derive(ApiResponse)]
pub enum ChatCompletionResponse {
    /// A `chat.completion` object.
    #[oai(status = 200)]
    Complete(Json<Value>),
    /// `chat.completion.chunk` events, then `[DONE]`.
    #[oai(status = 200)]
    Stream(EventStream<BoxStream<'static, Value>>),
}

impl std::fmt::Debug for ChatCompletionResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Complete(v) => f.debug_tuple("Complete").field(&v.0).finish(),
            Self::Stream(_) => f.write_str("Stream(..)"),
        }
    }
}

fn to_core(body: ChatCompletionRequest) -> Result<(CompletionRequest, bool), ApiError> {
    let messages = input::messages(
        body.messages
            .into_iter()
            .enumerate()
            .map(|(i, m)| Ok((m.role, input::openai_content(m.content, i)?)))
            .collect::<xenios_core::Result<Vec<_>>>()?,
    )?;
    let (task, models) = input::task_or_model(body.model);
    Ok((
        CompletionRequest {
            task,
            messages,
            temperature: body.temperature,
            max_tokens: body.max_completion_tokens.or(body.max_tokens),
            models,
        },
        body.stream.unwrap_or(false),
    ))
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[OpenApi(tag = "ApiTags::Llm")]
impl OpenAiApi {
    /// OpenAI-compatible chat completions (stream and non-stream). `model` may be a task
    /// name, which uses that task's route with fallback, or a model id.
    #[oai(path = "/v1/chat/completions", method = "post")]
    async fn chat_completions(
        &self,
        req: &poem::Request,
        body: Json<ChatCompletionRequest>,
    ) -> poem::Result<ChatCompletionResponse> {
        let ctx = request_context(req)?;
        let (core, stream) = to_core(body.0)?;
        let id = format!("chatcmpl-{}", ctx.correlation_id);
        let created = now_secs();
        if !stream {
            let c = self
                .backend
                .llm()
                .complete(&ctx, core)
                .await
                .map_err(ApiError::from)?;
            return Ok(ChatCompletionResponse::Complete(Json(json!({
                "id": id,
                "object": "chat.completion",
                "created": created,
                "model": c.model_used,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": c.content},
                    "finish_reason": c.finish_reason.unwrap_or_else(|| "stop".to_owned()),
                }],
                "usage": {
                    "prompt_tokens": c.usage.prompt_tokens,
                    "completion_tokens": c.usage.completion_tokens,
                    "total_tokens": c.usage.total_tokens,
                    "cost": c.usage.cost_usd,
                },
            }))));
        }
        let route_model = core
            .models
            .as_ref()
            .and_then(|m| m.first().cloned())
            .unwrap_or_else(|| core.task.to_string());
        let events = self
            .backend
            .llm()
            .stream(&ctx, core)
            .await
            .map_err(ApiError::from)?;
        let chunk = move |model: &str, delta: Value, finish: Value| {
            json!({
                "id": id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            })
        };
        let mut first = true;
        let body = events
            .flat_map(move |e| {
                let items: Vec<Value> = match e {
                    StreamEvent::Delta { content } => {
                        let delta = if first {
                            json!({"role": "assistant", "content": content})
                        } else {
                            json!({"content": content})
                        };
                        first = false;
                        vec![chunk(&route_model, delta, Value::Null)]
                    }
                    StreamEvent::Done(s) => {
                        let mut last = chunk(
                            &s.model_used,
                            json!({}),
                            json!(s.finish_reason.unwrap_or_else(|| "stop".to_owned())),
                        );
                        last["usage"] = json!({
                            "prompt_tokens": s.usage.prompt_tokens,
                            "completion_tokens": s.usage.completion_tokens,
                            "total_tokens": s.usage.total_tokens,
                            "cost": s.usage.cost_usd,
                        });
                        vec![last, Value::String("[DONE]".to_owned())]
                    }
                    StreamEvent::Error { code, message } => vec![json!({
                        "error": {"code": code, "message": message, "type": "upstream_error"}
                    })],
                };
                futures::stream::iter(items)
            })
            .boxed();
        Ok(ChatCompletionResponse::Stream(
            EventStream::new(body)
                .keep_alive(std::time::Duration::from_secs(15))
                .to_event(|v| match v {
                    Value::String(s) => Event::message(s),
                    other => Event::message(other.to_string()),
                }),
        ))
    }
}
