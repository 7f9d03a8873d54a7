//! LLM orchestration: per-task routing, retries, fallback, streaming and the audit log.
//!
//! ## Layout
//! - [`types`]: what callers send and get back ([`CompletionRequest`], [`Completion`],
//!   [`StreamEvent`]).
//! - [`routing`]: the [`Task`] routing table and [`LlmConfig`] (timeouts, retries),
//!   defined and read in [`crate::config::llm`] and re-exported here.
//! - [`provider`]: the [`Provider`] trait and [`ProviderError`] with the fallback rules.
//! - [`openrouter`]: the real provider. [`fake`]: the offline one, driven by model names.
//!   [`upstream`]: its HTTP client, one per thread by default.
//! - [`input`]: the rules for requests from outside: roles, OpenAI content parts, whether
//!   an OpenAI `model` is a task or a model id.
//! - [`policy`]: who may choose models and `max_tokens`. [`budget`]: per-user daily token
//!   budgets in Redis.
//! - `engine`: [`Llm`], the engine that applies routes, timeouts, retries and fallback to
//!   any provider; `stream`: its streamed calls ([`LlmStream`]).
//! - `retry`: when a model is asked again (backoff, `Retry-After`, the waiting budget).
//! - `audit`: the one `inference_logs` row per call, written even when the caller leaves.
//! - `error`: [`LlmError`] and the [`StreamErrorCode`]s a stream can end with.
//! - The engine's counters are [`crate::metrics::LlmMetrics`].
//!
//! ## Rules
//! Models of a route are tried in order. A retryable failure (connect error, timeout, 408,
//! 429, 5xx, a stream broken before its first token) is retried on the same model with
//! exponential backoff and jitter, honouring `Retry-After`, at most `LLM_MAX_RETRIES` times
//! and within `LLM_RETRY_BUDGET_MS` of waiting; then the next model is tried. 400, 401, 402
//! and 403 stop at once. Once a token reached the caller a stream is never restarted: a later
//! failure ends it with an error event.

mod audit;
pub mod budget;
mod engine;
mod error;
pub mod fake;
pub mod input;
pub mod openrouter;
pub mod policy;
pub mod provider;
mod retry;
pub mod routing;
mod stream;
pub mod types;
pub mod upstream;

pub use self::budget::{TokenBudget, TokenUsage};
pub use self::engine::Llm;
pub use self::error::{LlmError, ModelFailure, StreamErrorCode};
pub use self::fake::FakeProvider;
pub use self::openrouter::OpenRouterProvider;
pub use self::provider::{
    ChunkStream, Provider, ProviderChunk, ProviderError, ProviderErrorKind, ProviderRequest,
    ProviderResponse,
};
pub use self::routing::{LlmConfig, Route, RoutingTable, Task, UnknownTaskName};
pub use self::stream::LlmStream;
pub use self::types::{
    Completion, CompletionRequest, Message, ModelListError, Role, StreamEvent, StreamSummary, Usage,
};
pub use self::upstream::Upstream;
