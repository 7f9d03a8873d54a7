//! Handlers shipped with `xenios-worker`.
//!
//! - `xenios.echo`: returns its positional arguments (diagnostics, interop tests).
//! - `xenios.noop`: returns null (benchmarks).
//! - `xenios.sleep`: sleeps `kwargs.seconds` (default 1, at most 3600); when the soft time
//!   limit passes it stops early and reports it, so limits and shutdowns can be exercised.
//! - `xenios.fail`: fails with `kwargs.message`; with `kwargs.retry_until` it asks for a
//!   retry until that many retries happened, then returns the retry count.
//!
//! - `xenios.llm.complete` (routed to the `llm` queue): one routed completion through the LLM
//!   layer. kwargs: `task` (default `chat`), `messages` (OpenAI-style list) or `prompt`,
//!   optional `temperature`, `max_tokens`, `models`. The job's correlation ID and user travel
//!   into the upstream call and its `inference_logs` row. Invalid input fails the job
//!   (`ValueError`); upstream failures that may pass (rate limits, outages) ask for a retry.
//!
//! [`register_builtin`] is the one list the worker binary installs, and each handler's
//! declaration there is also what the API's task catalog knows of it
//! ([`crate::jobs::catalog`]):
//!
//! | task | callers | args + kwargs | why |
//! |---|---|---|---|
//! | `xenios.echo` | users | 64 KiB | harmless, lets clients check the queue end to end |
//! | `xenios.noop` | users | 4 KiB | costs nothing but a slot |
//! | `xenios.llm.complete` (`llm` by route) | users | 256 KiB | runs as the user, so the LLM layer's limits for users apply |
//! | `xenios.sleep`, `xenios.fail` | service | 4 KiB | diagnostics: only with `JOB_DIAGNOSTIC_TASKS=true` (development default); a sleep holds a worker slot for up to an hour |

use std::time::Duration;

use serde_json::{Map, Value};

use crate::auth::{Principal, UserContext};
use crate::config::JobsConfig;
use crate::context::{CorrelationId, RequestContext};
use crate::jobs::catalog::TaskDecl;
use crate::jobs::worker::{TaskContext, TaskError, TaskRegistry};
use crate::llm::{CompletionRequest, Message, Role, Task};

/// Names of every shipped handler, diagnostic ones included.
pub const BUILTIN_NAMES: [&str; 5] = [
    "xenios.echo",
    "xenios.fail",
    "xenios.llm.complete",
    "xenios.noop",
    "xenios.sleep",
];

/// Registers every shipped handler with its declaration; the diagnostic ones
/// (`xenios.sleep`, `xenios.fail`) only with `JOB_DIAGNOSTIC_TASKS=true`.
pub fn register_builtin<'a>(
    registry: &'a mut TaskRegistry,
    jobs: &JobsConfig,
) -> &'a mut TaskRegistry {
    registry
        .register(TaskDecl::users("xenios.echo", 64 * 1024), echo)
        .register(TaskDecl::users("xenios.noop", 4 * 1024), noop)
        .register(
            TaskDecl::users("xenios.llm.complete", 256 * 1024),
            llm_complete,
        );
    if jobs.diagnostic_tasks {
        registry
            .register(TaskDecl::service("xenios.sleep", 4 * 1024), sleep)
            .register(TaskDecl::service("xenios.fail", 4 * 1024), fail);
    }
    registry
}

/// A registry with the shipped handlers.
pub fn builtin_registry(jobs: &JobsConfig) -> TaskRegistry {
    let mut r = TaskRegistry::new();
    register_builtin(&mut r, jobs);
    r
}

async fn echo(_: TaskContext, args: Vec<Value>, _: Map<String, Value>) -> Result<Value, TaskError> {
    Ok(Value::Array(args))
}

async fn noop(_: TaskContext, _: Vec<Value>, _: Map<String, Value>) -> Result<Value, TaskError> {
    Ok(Value::Null)
}

async fn sleep(
    ctx: TaskContext,
    _: Vec<Value>,
    kwargs: Map<String, Value>,
) -> Result<Value, TaskError> {
    let secs = kwargs
        .get("seconds")
        .and_then(Value::as_f64)
        .filter(|s| s.is_finite() && *s >= 0.0)
        .unwrap_or(1.0)
        .min(3600.0);
    tokio::select! {
        () = tokio::time::sleep(Duration::from_secs_f64(secs)) => Ok(Value::from(secs)),
        () = ctx.soft_time_limit() => Err(TaskError::SoftTimeLimitExceeded),
    }
}

async fn fail(
    ctx: TaskContext,
    _: Vec<Value>,
    kwargs: Map<String, Value>,
) -> Result<Value, TaskError> {
    if let Some(until) = kwargs.get("retry_until").and_then(Value::as_u64) {
        if u64::from(ctx.retries) < until {
            let countdown = kwargs
                .get("countdown")
                .and_then(Value::as_f64)
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(|s| Duration::from_secs_f64(s.min(3600.0)));
            return Err(TaskError::Retry {
                reason: format!("attempt {} of {}", ctx.retries + 1, until + 1),
                countdown,
                max_retries: kwargs
                    .get("max_retries")
                    .and_then(Value::as_u64)
                    .map(|m| m.min(u64::from(u32::MAX)) as u32),
            });
        }
        return Ok(Value::from(ctx.retries));
    }
    let message = kwargs
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("failed on request");
    Err(TaskError::exception("builtins", "ValueError", message))
}

fn invalid(message: impl Into<String>) -> TaskError {
    TaskError::exception("builtins", "ValueError", message)
}

/// Reads the LLM job's kwargs into a request; every problem names its field.
fn llm_request(kwargs: &Map<String, Value>) -> Result<CompletionRequest, TaskError> {
    let task_name = kwargs.get("task").and_then(Value::as_str).unwrap_or("chat");
    let task: Task = task_name
        .parse()
        .map_err(|e| invalid(format!("task: {e}")))?;
    let messages: Vec<Message> = match (kwargs.get("messages"), kwargs.get("prompt")) {
        (Some(m), _) => {
            serde_json::from_value(m.clone()).map_err(|e| invalid(format!("messages: {e}")))?
        }
        (None, Some(Value::String(p))) => vec![Message::new(Role::User, p.clone())],
        _ => {
            return Err(invalid(
                "kwargs need `messages` (a list) or `prompt` (a string)",
            ));
        }
    };
    let mut req = CompletionRequest::new(task, messages);
    req.temperature = kwargs
        .get("temperature")
        .and_then(Value::as_f64)
        .map(|t| t as f32);
    req.max_tokens = kwargs
        .get("max_tokens")
        .and_then(Value::as_u64)
        .map(|t| t.min(u64::from(u32::MAX)) as u32);
    if let Some(models) = kwargs.get("models") {
        req.models = Some(
            serde_json::from_value(models.clone()).map_err(|e| invalid(format!("models: {e}")))?,
        );
    }
    req.validate().map_err(|e| invalid(e.to_string()))?;
    Ok(req)
}

async fn llm_complete(
    ctx: TaskContext,
    _: Vec<Value>,
    kwargs: Map<String, Value>,
) -> Result<Value, TaskError> {
    let req = llm_request(&kwargs)?;
    let correlation_id = ctx
        .correlation_id
        .as_deref()
        .and_then(CorrelationId::parse)
        .unwrap_or_else(CorrelationId::generate);
    let principal = match &ctx.user_id {
        Some(user_id) => Principal::User(UserContext {
            user_id: user_id.clone(),
            role: "authenticated".to_owned(),
            email: None,
            session_id: None,
            aal: None,
            is_anonymous: false,
        }),
        None => Principal::System,
    };
    let request_ctx = RequestContext::new(correlation_id, principal);
    let completion = tokio::select! {
        r = ctx.llm.complete(&request_ctx, req) => r,
        () = ctx.soft_time_limit() => return Err(TaskError::SoftTimeLimitExceeded),
    };
    match completion {
        Ok(c) => serde_json::to_value(&c)
            .map_err(|e| TaskError::exception("builtins", "RuntimeError", e.to_string())),
        // Run the whole call again only when no model answered at all: a timeout or a
        // broken stream may have been generated (and billed) already.
        Err(e) if e.is_retryable() && !a_model_answered(&e) => Err(TaskError::Retry {
            reason: e.public_message(),
            countdown: e.retry_after(),
            max_retries: None,
        }),
        // The stored result gets what a client may see (models tried, how each failed), never
        // the provider's own error text; the full error is in the log and `inference_logs`.
        Err(e) => Err(TaskError::exception(
            "xenios",
            "LlmError",
            e.public_message(),
        )),
    }
}

/// Whether some model may have produced (and billed) an answer: it timed out or its stream
/// broke, rather than refusing the connection or answering with an error status.
fn a_model_answered(e: &crate::Error) -> bool {
    use crate::llm::provider::ProviderErrorKind;
    match e {
        crate::Error::Llm(l) => l.failures.iter().any(|f| {
            matches!(
                f.error.kind,
                ProviderErrorKind::Timeout | ProviderErrorKind::MidStream
            )
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jobs(diagnostic: bool) -> JobsConfig {
        let mut vars = std::collections::HashMap::new();
        vars.insert("ENVIRONMENT".to_owned(), "development".to_owned());
        vars.insert("JOB_DIAGNOSTIC_TASKS".to_owned(), diagnostic.to_string());
        let mut jobs = crate::Config::from_map(&vars).map(|c| c.jobs).unwrap();
        jobs.diagnostic_tasks = diagnostic;
        jobs
    }

    #[test]
    fn builtin_names_list_every_handler_and_diagnostics_are_optional() {
        assert_eq!(builtin_registry(&jobs(true)).names(), BUILTIN_NAMES);
        let names = builtin_registry(&jobs(false)).names();
        assert!(
            !names
                .iter()
                .any(|n| n == "xenios.sleep" || n == "xenios.fail")
        );
        assert!(names.iter().any(|n| n == "xenios.echo"));
    }
}
