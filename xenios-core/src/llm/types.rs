//! The shapes callers see: requests, completions, usage and stream events.

use serde::{Deserialize, Serialize};

use super::error::StreamErrorCode;
use super::routing::Task;
use crate::error::{Error, Result};

pub use crate::config::llm::ModelListError;
pub(crate) use crate::config::llm::validate_models;

/// Most messages in one request.
const MAX_MESSAGES: usize = 1_000;

/// Who wrote a chat message. Its wire name is `system`, `user` or `assistant`; parsing also
/// takes OpenAI's `developer` as `system`.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    strum::IntoStaticStr,
    strum::Display,
    strum::EnumString,
)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum Role {
    /// Instructions for the model.
    #[strum(to_string = "system", serialize = "developer")]
    System,
    /// The end user.
    User,
    /// The model.
    Assistant,
}

impl Role {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// Parses `system`, `user`, `assistant` (and OpenAI's `developer` as `system`).
    pub fn parse(raw: &str) -> Option<Self> {
        raw.parse().ok()
    }
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Who wrote it.
    pub role: Role,
    /// The text.
    pub content: String,
}

impl Message {
    /// A message from `role`.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
        }
    }

    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new(Role::User, content)
    }

    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new(Role::System, content)
    }
}

/// What to ask a model, and which route to take.
#[derive(Debug, Clone, PartialEq)]
pub struct CompletionRequest {
    /// The task: picks the route (models, temperature, max_tokens) and names the audit row.
    pub task: Task,
    /// The conversation, oldest first.
    pub messages: Vec<Message>,
    /// Overrides the route's temperature (0 to 2).
    pub temperature: Option<f32>,
    /// Overrides the route's max_tokens (at least 1).
    pub max_tokens: Option<u32>,
    /// Overrides the route's models (tried in order); e.g. one explicit model id.
    pub models: Option<Vec<String>>,
}

impl CompletionRequest {
    /// A request for `task` with the route's defaults.
    pub fn new(task: Task, messages: Vec<Message>) -> Self {
        Self {
            task,
            messages,
            temperature: None,
            max_tokens: None,
            models: None,
        }
    }

    /// Checks the request; every problem is a [`Error::Validation`] naming the field.
    pub fn validate(&self) -> Result<()> {
        if self.messages.is_empty() {
            return Err(Error::Validation(
                "messages: at least one message is required".to_owned(),
            ));
        }
        if self.messages.len() > MAX_MESSAGES {
            return Err(Error::Validation(format!(
                "messages: at most {MAX_MESSAGES} messages"
            )));
        }
        if self.messages.iter().all(|m| m.content.trim().is_empty()) {
            return Err(Error::Validation(
                "messages: every message is empty".to_owned(),
            ));
        }
        if let Some(t) = self.temperature
            && !(0.0..=2.0).contains(&t)
        {
            return Err(Error::Validation(format!(
                "temperature: {t} is not between 0 and 2"
            )));
        }
        if self.max_tokens == Some(0) {
            return Err(Error::Validation(
                "max_tokens: must be at least 1".to_owned(),
            ));
        }
        if let Some(models) = &self.models {
            validate_models(models).map_err(|e| Error::Validation(format!("models: {e}")))?;
        }
        Ok(())
    }
}

/// Token counts and cost of one call, as the upstream reported them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens in the prompt.
    pub prompt_tokens: u32,
    /// Tokens generated.
    pub completion_tokens: u32,
    /// Both.
    pub total_tokens: u32,
    /// Cost in USD (OpenRouter's `usage.cost`).
    pub cost_usd: Option<f64>,
    /// Prompt tokens served from the provider's cache.
    pub cached_tokens: Option<u32>,
    /// Tokens spent on reasoning.
    pub reasoning_tokens: Option<u32>,
}

/// A finished completion.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Completion {
    /// The generated text.
    pub content: String,
    /// The model that answered (as the upstream named it).
    pub model_used: String,
    /// The first model of the route.
    pub model_requested: String,
    /// True when a model other than the first answered.
    pub fallback_used: bool,
    /// Why generation stopped (`stop`, `length`...), when reported.
    pub finish_reason: Option<String>,
    /// Tokens and cost.
    pub usage: Usage,
    /// Wall time of the whole call, retries and fallbacks included.
    pub latency_ms: u64,
}

/// The end of a successful stream.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StreamSummary {
    /// The model that answered.
    pub model_used: String,
    /// The first model of the route.
    pub model_requested: String,
    /// True when a model other than the first answered.
    pub fallback_used: bool,
    /// Why generation stopped, when reported.
    pub finish_reason: Option<String>,
    /// Tokens and cost (zero when the upstream sent none).
    pub usage: Usage,
    /// Wall time of the whole call.
    pub latency_ms: u64,
    /// Time to the first token.
    pub ttft_ms: Option<u64>,
}

/// One event of a streamed completion.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamEvent {
    /// Text generated since the previous delta.
    Delta {
        /// The text.
        content: String,
    },
    /// The stream ended normally; always the last event.
    Done(StreamSummary),
    /// The stream failed after tokens were sent; always the last event.
    Error {
        /// Machine-readable code.
        code: StreamErrorCode,
        /// What went wrong.
        message: String,
    },
}
