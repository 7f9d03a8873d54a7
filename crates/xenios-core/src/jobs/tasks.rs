//! Handlers shipped with `xenios-worker`.
//!
//! - `xenios.echo`: returns its positional arguments (diagnostics, interop tests).
//! - `xenios.noop`: returns null (benchmarks).
//! - `xenios.sleep`: sleeps `kwargs.seconds` (default 1, at most 3600); when the soft time
//!   limit passes it stops early and reports it, so limits and shutdowns can be exercised.
//! - `xenios.fail`: fails with `kwargs.message`; with `kwargs.retry_until` it asks for a
//!   retry until that many retries happened, then returns the retry count.
//!
//! Hook for more: [`register_builtin`] is the one list the worker binary installs. The LLM
//! task (`xenios.llm.complete`, routed to the `llm` queue) belongs here once the LLM layer
//! lands: register it in [`register_builtin`] with a handler that calls the backend through
//! [`TaskContext::backend`].

use std::time::Duration;

use serde_json::{Map, Value};

use crate::jobs::worker::{TaskContext, TaskError, TaskRegistry};

/// Registers every shipped handler.
pub fn register_builtin(registry: &mut TaskRegistry) -> &mut TaskRegistry {
    registry
        .register("xenios.echo", echo)
        .register("xenios.noop", noop)
        .register("xenios.sleep", sleep)
        .register("xenios.fail", fail)
}

/// A registry with the shipped handlers.
pub fn builtin_registry() -> TaskRegistry {
    let mut r = TaskRegistry::new();
    register_builtin(&mut r);
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
