//! `POST /v1/chat/completions`: OpenAI-compatible, so any OpenAI SDK can use the backend.
//! `model` is a task name (its route, with fallback) or, for the service only, a model id
//! (that model alone, with the `chat` defaults; users get 403 `model_choice_forbidden`).

use futures::StreamExt;
use futures::stream::BoxStream;
use poem::web::sse::Event;
use poem_openapi::payload::{EventStream, Json};
use poem_openapi::types::Example;
use poem_openapi::{ApiResponse, Enum, Object, OpenApi};
use serde_json::{Value, json};
use xenios_core::AiBackend;
use xenios_core::llm::{CompletionRequest, Message, Role, StreamEvent, input};

use super::ApiTags;
use super::security::Caller;
use super::text::Text;
use crate::error::{ApiError, Errors, LlmErrors};

/// OpenAI-compatible routes.
#[derive(Debug)]
pub struct OpenAiApi {
    /// The engine.
    pub backend: AiBackend,
}

/// The role of an OpenAI chat message (`developer` is read as `system`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum OpenAiRole {
    /// Instructions.
    System,
    /// Instructions (OpenAI's newer name).
    Developer,
    /// The end user.
    User,
    /// The model.
    Assistant,
}

impl From<OpenAiRole> for Role {
    fn from(r: OpenAiRole) -> Self {
        match r {
            OpenAiRole::System | OpenAiRole::Developer => Role::System,
            OpenAiRole::User => Role::User,
            OpenAiRole::Assistant => Role::Assistant,
        }
    }
}

/// An OpenAI chat message; `content` is a string or a list of `{"type": "text"}` parts.
#[derive(Debug, Object)]
pub struct OpenAiMessage {
    /// Who wrote it.
    pub role: OpenAiRole,
    /// The text, or text parts.
    pub content: Option<Value>,
}

/// An OpenAI chat-completions request (unknown fields are ignored).
#[derive(Debug, Object)]
#[oai(example)]
pub struct ChatCompletionRequest {
    /// A task name (`chat`, `session_summary`...) or, for the service only, a model id.
    pub model: Text,
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

impl Example for ChatCompletionRequest {
    fn example() -> Self {
        ChatCompletionRequest {
            model: "chat".into(),
            messages: vec![OpenAiMessage {
                role: OpenAiRole::User,
                content: Some(Value::String(
                    "Suggest one habit for better sleep.".to_owned(),
                )),
            }],
            stream: Some(false),
            temperature: Some(0.7),
            max_tokens: None,
            max_completion_tokens: Some(256),
        }
    }
}

/// The assistant's message.
#[derive(Debug, Object)]
pub struct AssistantMessage {
    /// Always `assistant`.
    pub role: String,
    /// The generated text.
    pub content: String,
}

/// One choice (there is always exactly one).
#[derive(Debug, Object)]
pub struct ChoiceBody {
    /// Always 0.
    pub index: u32,
    /// The answer.
    pub message: AssistantMessage,
    /// Why generation stopped (`stop` when the model did not say).
    pub finish_reason: String,
}

/// Token counts and cost.
#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct OpenAiUsage {
    /// Prompt tokens.
    pub prompt_tokens: u32,
    /// Completion tokens.
    pub completion_tokens: u32,
    /// Both.
    pub total_tokens: u32,
    /// Cost in USD (OpenRouter's `usage.cost`); absent when not reported.
    pub cost: Option<f64>,
}

/// A `chat.completion` object.
#[derive(Debug, Object)]
#[oai(example)]
pub struct ChatCompletionBody {
    /// `chatcmpl-` and the correlation ID.
    pub id: String,
    /// Always `chat.completion`.
    pub object: String,
    /// Unix time, seconds.
    pub created: u64,
    /// The model that answered.
    pub model: String,
    /// The answer.
    pub choices: Vec<ChoiceBody>,
    /// Tokens and cost.
    pub usage: OpenAiUsage,
}

impl Example for ChatCompletionBody {
    fn example() -> Self {
        ChatCompletionBody {
            id: "chatcmpl-9b2f0c1e-5d7a-4c1b-8f3e-2a6d4e8b1c90".to_owned(),
            object: "chat.completion".to_owned(),
            created: 1_767_605_400,
            model: "anthropic/claude-sonnet-4.5".to_owned(),
            choices: vec![ChoiceBody {
                index: 0,
                message: AssistantMessage {
                    role: "assistant".to_owned(),
                    content: "Go to bed at the same time every night.".to_owned(),
                },
                finish_reason: "stop".to_owned(),
            }],
            usage: OpenAiUsage {
                prompt_tokens: 24,
                completion_tokens: 18,
                total_tokens: 42,
                cost: Some(0.00042),
            },
        }
    }
}

/// The answer: a JSON completion, or chunks when `stream` is true.
#[derive(ApiResponse)]
pub enum ChatCompletionResponse {
    /// A `chat.completion` object.
    #[oai(status = 200)]
    Complete(Json<ChatCompletionBody>),
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
    let messages = body
        .messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            Ok(Message::new(
                m.role.into(),
                input::openai_content(m.content, i)?,
            ))
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let (task, models) = input::task_or_model(body.model.0);
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
        caller: Caller,
        body: Json<ChatCompletionRequest>,
    ) -> Result<ChatCompletionResponse, Errors<LlmErrors>> {
        let ctx = caller.context()?;
        let (core, stream) = to_core(body.0)?;
        let id = format!("chatcmpl-{}", ctx.correlation_id);
        let created = now_secs();
        if !stream {
            let c = self.backend.llm().complete(ctx, core).await?;
            return Ok(ChatCompletionResponse::Complete(Json(ChatCompletionBody {
                id,
                object: "chat.completion".to_owned(),
                created,
                model: c.model_used,
                choices: vec![ChoiceBody {
                    index: 0,
                    message: AssistantMessage {
                        role: "assistant".to_owned(),
                        content: c.content,
                    },
                    finish_reason: c.finish_reason.unwrap_or_else(|| "stop".to_owned()),
                }],
                usage: OpenAiUsage {
                    prompt_tokens: c.usage.prompt_tokens,
                    completion_tokens: c.usage.completion_tokens,
                    total_tokens: c.usage.total_tokens,
                    cost: c.usage.cost_usd,
                },
            })));
        }
        let route_model = core
            .models
            .as_ref()
            .and_then(|m| m.first().cloned())
            .unwrap_or_else(|| core.task.to_string());
        let events = self.backend.llm().stream(ctx, core).await?;
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
