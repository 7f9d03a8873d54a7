//! HTTP routes. Each maps onto one [`xenios_core::AiBackend`] call.

pub mod document;
pub mod health;
pub mod jobs;
pub mod llm;
pub mod me;
pub mod openai;
pub mod security;
pub mod status;
pub mod text;

use poem_openapi::Tags;

/// OpenAPI tags.
#[derive(Debug, Tags)]
pub enum ApiTags {
    /// Liveness and readiness probes (no authentication).
    Health,
    /// Service information.
    Status,
    /// The caller's identity.
    Auth,
    /// LLM calls routed by task, native and OpenAI-compatible.
    Llm,
    /// Celery-compatible jobs.
    Jobs,
}
