//! `/api/v1/jobs`: enqueue Celery-compatible jobs and read their state.
//!
//! Only tasks of the task catalog (`xenios_core::jobs::catalog`) callable by the caller are
//! accepted, on the catalog's queue. A user sees and revokes only their own jobs: any
//! other id, unknown or someone else's, is the same 404. The service sees all.

use poem::Request;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde_json::Value;
use xenios_core::AiBackend;
use xenios_core::jobs::{EnqueueRequest, JobResult};

use super::ApiTags;
use super::llm::request_context;
use crate::error::ApiError;

/// Job routes.
#[derive(Debug)]
pub struct JobsApi {
    /// The engine.
    pub backend: AiBackend,
}

/// A job to enqueue.
#[derive(Debug, Object)]
pub struct EnqueueBody {
    /// Task name, e.g. `xenios.echo`: a task of the catalog this caller may enqueue (built-in
    /// tasks and `JOB_EXTRA_TASKS`), else 422 `unknown_task`.
    pub task: String,
    /// Positional arguments (a JSON array).
    pub args: Option<Value>,
    /// Keyword arguments (a JSON object).
    pub kwargs: Option<Value>,
    /// Not accepted: each task's queue is set by the catalog, and a request naming one is
    /// refused (422).
    pub queue: Option<String>,
    /// Seconds to wait before the job may run.
    pub countdown: Option<f64>,
    /// Priority 0-9; 0 is served first.
    pub priority: Option<u8>,
}

/// An enqueued job.
#[derive(Debug, Object)]
pub struct EnqueuedBody {
    /// Task id (Celery's).
    pub id: String,
    /// Task name.
    pub task: String,
    /// Queue it was routed to.
    pub queue: String,
    /// Correlation ID carried in the message.
    pub correlation_id: String,
    /// `PENDING`.
    pub state: String,
}

/// A job's state and result.
#[derive(Debug, Object)]
pub struct JobBody {
    /// Task id.
    pub id: String,
    /// PENDING, STARTED, RETRY, SUCCESS, FAILURE or REVOKED (PENDING also for unknown ids).
    pub state: String,
    /// Return value, or `{exc_type, exc_message, exc_module}` for a failure.
    pub result: Option<Value>,
    /// Traceback of a failure.
    pub traceback: Option<String>,
    /// When it finished (RFC 3339).
    pub date_done: Option<String>,
    /// Task name, when known.
    pub task: Option<String>,
    /// Retries before this result.
    pub retries: Option<u64>,
    /// Worker that wrote the result.
    pub worker: Option<String>,
    /// Queue it ran from.
    pub queue: Option<String>,
}

impl From<JobResult> for JobBody {
    fn from(r: JobResult) -> Self {
        Self {
            id: r.task_id,
            state: r.state.as_str().to_owned(),
            result: (!r.result.is_null()).then_some(r.result),
            traceback: r.traceback,
            date_done: r.date_done.map(|d| d.to_rfc3339()),
            task: r.name,
            retries: r.retries,
            worker: r.worker,
            queue: r.queue,
        }
    }
}

/// A revocation.
#[derive(Debug, Object)]
pub struct RevokedBody {
    /// Task id.
    pub id: String,
    /// Always true: workers skip the job, or stop it when `terminate` was asked for.
    pub revoked: bool,
    /// Whether a running job is stopped too.
    pub terminate: bool,
}

/// Revoke response.
#[derive(Debug, ApiResponse)]
pub enum RevokeResponse {
    /// Revocation broadcast to every worker (Rust and Python).
    #[oai(status = 202)]
    Accepted(Json<RevokedBody>),
}

/// Enqueue response.
#[derive(Debug, ApiResponse)]
pub enum EnqueueResponse {
    /// Enqueued.
    #[oai(status = 202)]
    Accepted(Json<EnqueuedBody>),
}

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::Jobs")]
impl JobsApi {
    /// Enqueues a job as a Celery message; returns its id at once (202).
    #[oai(path = "/jobs", method = "post")]
    async fn enqueue(
        &self,
        req: &Request,
        body: Json<EnqueueBody>,
    ) -> poem::Result<EnqueueResponse> {
        let ctx = request_context(req)?;
        let body = body.0;
        let mut job = EnqueueRequest::new(body.task)
            .args(body.args)
            .and_then(|j| j.kwargs(body.kwargs))
            .map_err(ApiError)?;
        if let Some(c) = body.countdown {
            job = job.countdown_secs(c).map_err(ApiError)?;
        }
        job.queue = body.queue;
        job.priority = body.priority;
        let e = self
            .backend
            .jobs()
            .enqueue_for_caller(&ctx, job)
            .await
            .map_err(ApiError)?;
        Ok(EnqueueResponse::Accepted(Json(EnqueuedBody {
            id: e.id.to_string(),
            task: e.task,
            queue: e.queue,
            correlation_id: e.correlation_id,
            state: e.state.as_str().to_owned(),
        })))
    }

    /// A job's state and result. A user gets 404 for any job that is not theirs (unknown
    /// ids included); the service sees every job, PENDING while unknown as in Celery.
    #[oai(path = "/jobs/:id", method = "get")]
    async fn get(&self, req: &Request, id: Path<String>) -> poem::Result<Json<JobBody>> {
        let ctx = request_context(req)?;
        Ok(Json(
            self.backend
                .jobs()
                .job_result_for(&ctx, &id.0)
                .await
                .map_err(ApiError)?
                .into(),
        ))
    }

    /// Revokes a job (Celery's `revoke`): workers skip it; with `terminate=true` a job that
    /// is already running is stopped too. The worker that meets it stores REVOKED. A user
    /// may revoke only their own jobs (404 otherwise, as for an unknown id).
    #[oai(path = "/jobs/:id", method = "delete")]
    async fn revoke(
        &self,
        req: &Request,
        id: Path<String>,
        terminate: Query<Option<bool>>,
    ) -> poem::Result<RevokeResponse> {
        let ctx = request_context(req)?;
        let terminate = terminate.0.unwrap_or(false);
        self.backend
            .jobs()
            .revoke_for(&ctx, &id.0, terminate)
            .await
            .map_err(ApiError)?;
        Ok(RevokeResponse::Accepted(Json(RevokedBody {
            id: id.0,
            revoked: true,
            terminate,
        })))
    }
}
