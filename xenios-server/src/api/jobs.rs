//! `/api/v1/jobs`: enqueue Celery-compatible jobs and read their state.
//!
//! Only tasks of the task catalog (`xenios_core::jobs::catalog`) callable by the caller are
//! accepted, on the catalog's queue. A user sees and revokes only their own jobs: any
//! other id, unknown or someone else's, is the same 404. The service sees all.

use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::types::Example;
use poem_openapi::{ApiResponse, Enum, Object, OpenApi};
use serde_json::{Value, json};
use xenios_core::AiBackend;
use xenios_core::jobs::{EnqueueRequest, JobResult, JobState as CoreJobState};

use super::ApiTags;
use super::security::Caller;
use super::text::Text;
use crate::error::{ApiError, EnqueueErrors, Errors, JobErrors, RevokeErrors};

/// Job routes.
#[derive(Debug)]
pub struct JobsApi {
    /// The engine.
    pub backend: AiBackend,
}

/// A job to enqueue.
#[derive(Debug, Object)]
#[oai(example)]
pub struct EnqueueBody {
    /// Task name, e.g. `xenios.echo`: a task of the catalog this caller may enqueue (built-in
    /// tasks and `JOB_EXTRA_TASKS`), else 422 `unknown_task`.
    pub task: Text,
    /// Positional arguments (a JSON array).
    pub args: Option<Value>,
    /// Keyword arguments (a JSON object).
    pub kwargs: Option<Value>,
    /// Not accepted: each task's queue is set by the catalog, and a request naming one is
    /// refused (422).
    pub queue: Option<Text>,
    /// Seconds to wait before the job may run.
    pub countdown: Option<f64>,
    /// Priority 0-9; 0 is served first.
    pub priority: Option<u8>,
}

/// A job's state, as Celery names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "UPPERCASE")]
pub enum JobState {
    /// Unknown or waiting (Celery reports unknown ids as PENDING too).
    Pending,
    /// Taken by a worker.
    Started,
    /// Failed, another attempt is scheduled.
    Retry,
    /// Finished successfully.
    Success,
    /// Finished with an error.
    Failure,
    /// Revoked (or expired) before it ran.
    Revoked,
}

impl From<CoreJobState> for JobState {
    fn from(s: CoreJobState) -> Self {
        match s {
            CoreJobState::Pending => Self::Pending,
            CoreJobState::Started => Self::Started,
            CoreJobState::Retry => Self::Retry,
            CoreJobState::Success => Self::Success,
            CoreJobState::Failure => Self::Failure,
            CoreJobState::Revoked => Self::Revoked,
        }
    }
}

/// An enqueued job.
#[derive(Debug, Object)]
#[oai(example)]
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
    pub state: JobState,
}

/// A job's state and result; fields not known yet are absent.
#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none, example)]
pub struct JobBody {
    /// Task id.
    pub id: String,
    /// The state (PENDING also for unknown ids).
    pub state: JobState,
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
            state: r.state.into(),
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
#[oai(example)]
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

impl Example for EnqueueBody {
    fn example() -> Self {
        EnqueueBody {
            task: "xenios.echo".into(),
            args: Some(json!([1, "a"])),
            kwargs: Some(json!({})),
            queue: None,
            countdown: Some(5.0),
            priority: Some(0),
        }
    }
}

const EXAMPLE_ID: &str = "0b6d2f7e-3c1a-4e5b-9f8d-7a6c5b4e3d21";

impl Example for EnqueuedBody {
    fn example() -> Self {
        EnqueuedBody {
            id: EXAMPLE_ID.to_owned(),
            task: "xenios.echo".to_owned(),
            queue: "default".to_owned(),
            correlation_id: "9b2f0c1e-5d7a-4c1b-8f3e-2a6d4e8b1c90".to_owned(),
            state: JobState::Pending,
        }
    }
}

impl Example for JobBody {
    fn example() -> Self {
        JobBody {
            id: EXAMPLE_ID.to_owned(),
            state: JobState::Success,
            result: Some(json!([1, "a"])),
            traceback: None,
            date_done: Some("2026-01-05T09:30:00.120000+00:00".to_owned()),
            task: Some("xenios.echo".to_owned()),
            retries: Some(0),
            worker: Some("celery@worker-1".to_owned()),
            queue: Some("default".to_owned()),
        }
    }
}

impl Example for RevokedBody {
    fn example() -> Self {
        RevokedBody {
            id: EXAMPLE_ID.to_owned(),
            revoked: true,
            terminate: false,
        }
    }
}

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::Jobs")]
impl JobsApi {
    /// Enqueues a job as a Celery message; returns its id at once (202).
    #[oai(path = "/jobs", method = "post")]
    async fn enqueue(
        &self,
        caller: Caller,
        body: Json<EnqueueBody>,
    ) -> Result<EnqueueResponse, Errors<EnqueueErrors>> {
        let ctx = caller.context()?;
        let body = body.0;
        let mut job = EnqueueRequest::new(body.task.0)
            .args(body.args)
            .and_then(|j| j.kwargs(body.kwargs))
            .map_err(ApiError)?;
        if let Some(c) = body.countdown {
            job = job.countdown_secs(c).map_err(ApiError)?;
        }
        job.queue = body.queue.map(|q| q.0);
        job.priority = body.priority;
        let e = self.backend.jobs().enqueue_for_caller(ctx, job).await?;
        Ok(EnqueueResponse::Accepted(Json(EnqueuedBody {
            id: e.id.to_string(),
            task: e.task,
            queue: e.queue,
            correlation_id: e.correlation_id,
            state: e.state.into(),
        })))
    }

    /// A job's state and result. A user gets 404 for any job that is not theirs (unknown
    /// ids included); the service sees every job, PENDING while unknown as in Celery.
    #[oai(path = "/jobs/:id", method = "get")]
    async fn get(
        &self,
        caller: Caller,
        id: Path<String>,
    ) -> Result<Json<JobBody>, Errors<JobErrors>> {
        Ok(Json(
            self.backend
                .jobs()
                .job_result_for(caller.context()?, &id.0)
                .await?
                .into(),
        ))
    }

    /// Revokes a job (Celery's `revoke`): workers skip it; with `terminate=true` a job that
    /// is already running is stopped too. The worker that meets it stores REVOKED. A user
    /// may revoke only their own jobs (404 otherwise, as for an unknown id).
    #[oai(path = "/jobs/:id", method = "delete")]
    async fn revoke(
        &self,
        caller: Caller,
        id: Path<String>,
        terminate: Query<Option<bool>>,
    ) -> Result<RevokeResponse, Errors<RevokeErrors>> {
        let terminate = terminate.0.unwrap_or(false);
        self.backend
            .jobs()
            .revoke_for(caller.context()?, &id.0, terminate)
            .await?;
        Ok(RevokeResponse::Accepted(Json(RevokedBody {
            id: id.0,
            revoked: true,
            terminate,
        })))
    }
}
