//! Typed rows of the tables in `db::schema`.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde::Serialize;
use uuid::Uuid;

use crate::jobs::JobState;

use super::schema::{extraction_cache, inference_logs, job_queue_metadata, profiles};

/// A state change of a job, sent to the background writer.
#[derive(Debug, Clone, PartialEq)]
pub struct JobStateChange {
    /// Celery task id.
    pub task_id: String,
    /// Task name, e.g. `xenios.echo`.
    pub task_name: String,
    /// Queue the job was routed to.
    pub queue: String,
    /// New state.
    pub status: JobState,
    /// Digest of the arguments (never the arguments themselves).
    pub args_digest: Option<String>,
    /// Attempts so far (Celery's `retries` + 1 once started).
    pub attempts: i32,
    /// Worker hostname, for started/finished states.
    pub worker: Option<String>,
    /// Error text, for failure/retry.
    pub error: Option<String>,
    /// Correlation ID of the request that enqueued the job.
    pub correlation_id: Option<String>,
    /// User on whose behalf the job runs.
    pub user_id: Option<Uuid>,
    /// Owner: `user:<id>` or `service` (see [`crate::jobs::Owner`]).
    pub owner: Option<String>,
    /// When the change happened.
    pub at: DateTime<Utc>,
    /// Text to cut out of `error` before it is written: the failure's quote of the job's
    /// arguments (job rows never hold arguments).
    pub(crate) redact: Option<String>,
}

impl JobStateChange {
    /// A change with only the required fields set.
    pub fn new(
        task_id: impl Into<String>,
        task_name: impl Into<String>,
        queue: impl Into<String>,
        status: JobState,
    ) -> Self {
        Self {
            task_id: task_id.into(),
            task_name: task_name.into(),
            queue: queue.into(),
            status,
            args_digest: None,
            attempts: 0,
            worker: None,
            error: None,
            correlation_id: None,
            user_id: None,
            owner: None,
            at: Utc::now(),
            redact: None,
        }
    }

    /// Folds a later change of the same job into this one, with the rules the database
    /// applies: a terminal state is final, otherwise the later state wins; other fields keep
    /// the first value seen (ids, digest) or the latest one (worker, error).
    pub(crate) fn absorb(&mut self, later: JobStateChange) {
        if !self.status.is_ready() && (later.status.is_ready() || later.at >= self.at) {
            self.status = later.status;
        }
        self.attempts = self.attempts.max(later.attempts);
        self.args_digest = self.args_digest.take().or(later.args_digest);
        self.correlation_id = self.correlation_id.take().or(later.correlation_id);
        self.user_id = self.user_id.or(later.user_id);
        self.owner = self.owner.take().or(later.owner);
        if later.worker.is_some() {
            self.worker = later.worker;
        }
        if later.error.is_some() {
            self.error = later.error;
            self.redact = later.redact;
        }
        self.at = self.at.max(later.at);
    }
}

/// A row of `ai_backend.job_queue_metadata`.
#[derive(Debug, Clone, Queryable, Selectable, Serialize)]
#[diesel(table_name = job_queue_metadata, check_for_backend(diesel::pg::Pg))]
pub struct JobRecord {
    /// Celery task id.
    pub task_id: String,
    /// Task name.
    pub task_name: String,
    /// Queue.
    pub queue: String,
    /// State (see [`JobState`]).
    pub status: String,
    /// Digest of the arguments.
    pub args_digest: Option<String>,
    /// Attempts so far.
    pub attempts: i32,
    /// When it was enqueued.
    pub enqueued_at: DateTime<Utc>,
    /// When it first started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it finished.
    pub finished_at: Option<DateTime<Utc>>,
    /// Last worker that held it.
    pub worker: Option<String>,
    /// Last error.
    pub error: Option<String>,
    /// Correlation ID.
    pub correlation_id: Option<String>,
    /// User.
    pub user_id: Option<Uuid>,
    /// Time of the latest change.
    pub updated_at: DateTime<Utc>,
    /// Owner: `user:<id>` or `service` (none for rows older than the column).
    pub owner: Option<String>,
}

/// Outcome of an LLM call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InferenceStatus {
    /// A completion was returned.
    Success,
    /// Every model failed.
    Error,
    /// The caller went away before the end.
    Cancelled,
}

impl InferenceStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Error => "error",
            Self::Cancelled => "cancelled",
        }
    }
}

/// A row to insert into `ai_backend.inference_logs` (one per LLM call).
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = inference_logs)]
pub struct NewInferenceLog {
    /// Row id (generated by the caller, so it can be logged before the write).
    pub id: Uuid,
    /// Task type, e.g. `chat`.
    pub task_type: String,
    /// The primary model of the route.
    pub model_requested: String,
    /// The model that answered (None when all failed).
    pub model_used: Option<String>,
    /// True when a fallback model answered.
    pub fallback_used: bool,
    /// `success`, `error` or `cancelled` (see [`InferenceStatus`]).
    pub status: String,
    /// Prompt tokens.
    pub prompt_tokens: Option<i32>,
    /// Completion tokens.
    pub completion_tokens: Option<i32>,
    /// Total tokens.
    pub total_tokens: Option<i32>,
    /// Cost in USD as reported by OpenRouter.
    pub cost_usd: Option<f64>,
    /// Wall time of the whole call.
    pub latency_ms: i32,
    /// Time to first token (streaming).
    pub ttft_ms: Option<i32>,
    /// Whether the call streamed.
    pub streaming: bool,
    /// The error, when the call failed.
    pub error: Option<String>,
    /// Correlation ID of the request.
    pub correlation_id: Option<String>,
    /// User on whose behalf the call ran.
    pub user_id: Option<Uuid>,
    /// The request, only with `AUDIT_STORE_PAYLOADS=true`.
    pub request_payload: Option<serde_json::Value>,
    /// The response, only with `AUDIT_STORE_PAYLOADS=true`.
    pub response_payload: Option<serde_json::Value>,
    /// When the call started.
    pub created_at: DateTime<Utc>,
}

impl NewInferenceLog {
    /// A log row with the required fields and everything else empty.
    pub fn new(
        task_type: impl Into<String>,
        model_requested: impl Into<String>,
        status: InferenceStatus,
    ) -> Self {
        Self {
            id: Uuid::new_v4(),
            task_type: task_type.into(),
            model_requested: model_requested.into(),
            model_used: None,
            fallback_used: false,
            status: status.as_str().to_owned(),
            prompt_tokens: None,
            completion_tokens: None,
            total_tokens: None,
            cost_usd: None,
            latency_ms: 0,
            ttft_ms: None,
            streaming: false,
            error: None,
            correlation_id: None,
            user_id: None,
            request_payload: None,
            response_payload: None,
            created_at: Utc::now(),
        }
    }
}

/// A row of `ai_backend.inference_logs`.
#[derive(Debug, Clone, Queryable, Selectable, Serialize)]
#[diesel(table_name = inference_logs, check_for_backend(diesel::pg::Pg))]
pub struct InferenceLog {
    /// Row id.
    pub id: Uuid,
    /// Task type.
    pub task_type: String,
    /// Primary model of the route.
    pub model_requested: String,
    /// Model that answered.
    pub model_used: Option<String>,
    /// True when a fallback answered.
    pub fallback_used: bool,
    /// Outcome.
    pub status: String,
    /// Prompt tokens.
    pub prompt_tokens: Option<i32>,
    /// Completion tokens.
    pub completion_tokens: Option<i32>,
    /// Total tokens.
    pub total_tokens: Option<i32>,
    /// Cost in USD.
    pub cost_usd: Option<f64>,
    /// Wall time.
    pub latency_ms: i32,
    /// Time to first token.
    pub ttft_ms: Option<i32>,
    /// Whether it streamed.
    pub streaming: bool,
    /// Error text.
    pub error: Option<String>,
    /// Correlation ID.
    pub correlation_id: Option<String>,
    /// User.
    pub user_id: Option<Uuid>,
    /// Stored request (opt-in).
    pub request_payload: Option<serde_json::Value>,
    /// Stored response (opt-in).
    pub response_payload: Option<serde_json::Value>,
    /// When the call started.
    pub created_at: DateTime<Utc>,
}

/// A row of `ai_backend.extraction_cache`.
#[derive(Debug, Clone, Queryable, Selectable, Insertable, Serialize)]
#[diesel(table_name = extraction_cache, check_for_backend(diesel::pg::Pg))]
pub struct ExtractionCacheEntry {
    /// SHA-256 of the document content, lower-case hex.
    pub content_hash: String,
    /// Extractor name, e.g. `docling`.
    pub extractor: String,
    /// Extractor version; a new version misses the cache.
    pub extractor_version: String,
    /// The extracted result.
    pub result: serde_json::Value,
    /// When it was stored.
    pub created_at: DateTime<Utc>,
    /// When it stops being served (None: never).
    pub expires_at: Option<DateTime<Utc>>,
}

/// A row of the app's `public.profiles` table (read-only for us).
#[derive(Debug, Clone, Queryable, Selectable, Serialize)]
#[diesel(table_name = profiles, check_for_backend(diesel::pg::Pg))]
pub struct Profile {
    /// The user's id (same as `auth.users.id`).
    pub id: Uuid,
    /// Email.
    pub email: Option<String>,
    /// Display name.
    pub full_name: Option<String>,
    /// App role (coach, client, admin...).
    pub role: Option<String>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}
