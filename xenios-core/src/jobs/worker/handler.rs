//! The handler API: what a task handler receives ([`TaskContext`]), how it ends other than
//! with a value ([`TaskError`]), and the registry of handlers by name ([`TaskRegistry`]).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::watch;

use crate::error::Result;
use crate::llm::Llm;

pub(super) type BoxFuture = Pin<Box<dyn Future<Output = Result<Value, TaskError>> + Send>>;
pub(super) type Handler =
    Arc<dyn Fn(TaskContext, Vec<Value>, Map<String, Value>) -> BoxFuture + Send + Sync>;

/// How a handler ends other than with a value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum TaskError {
    /// The task failed; stored as a Python exception `module.kind(message)`.
    #[error("{kind}: {message}")]
    Failed {
        /// Exception module (`builtins` by default).
        module: String,
        /// Exception class (`RuntimeError` by default).
        kind: String,
        /// The message.
        message: String,
    },
    /// Run again later (counted in the message's `retries`).
    #[error("retry: {reason}")]
    Retry {
        /// Why.
        reason: String,
        /// Delay before the next attempt (default: 2^retries seconds, at most 10 minutes).
        countdown: Option<Duration>,
        /// Most retries for this task (default `JOB_MAX_RETRIES`).
        max_retries: Option<u32>,
    },
    /// The handler gave up after being told its soft time limit passed.
    #[error("soft time limit exceeded")]
    SoftTimeLimitExceeded,
}

impl TaskError {
    /// A failure stored as `RuntimeError(message)`.
    pub fn failed(message: impl Into<String>) -> Self {
        Self::Failed {
            module: "builtins".to_owned(),
            kind: "RuntimeError".to_owned(),
            message: message.into(),
        }
    }

    /// A failure stored as the Python exception `module.kind(message)`.
    pub fn exception(module: &str, kind: &str, message: impl Into<String>) -> Self {
        Self::Failed {
            module: module.to_owned(),
            kind: kind.to_owned(),
            message: message.into(),
        }
    }

    /// Asks for another attempt after the default backoff.
    pub fn retry(reason: impl Into<String>) -> Self {
        Self::Retry {
            reason: reason.into(),
            countdown: None,
            max_retries: None,
        }
    }

    /// Asks for another attempt after `countdown`.
    pub fn retry_in(reason: impl Into<String>, countdown: Duration) -> Self {
        Self::Retry {
            reason: reason.into(),
            countdown: Some(countdown),
            max_retries: None,
        }
    }
}

/// What a handler knows about its job.
#[derive(Debug, Clone)]
pub struct TaskContext {
    /// Task id.
    pub task_id: String,
    /// Task name.
    pub task_name: String,
    /// Retries so far.
    pub retries: u32,
    /// Correlation ID of the request that enqueued the job.
    pub correlation_id: Option<String>,
    /// User on whose behalf the job runs.
    pub user_id: Option<String>,
    /// The LLM engine, for handlers that call a model.
    pub llm: Llm,
    pub(super) soft: watch::Receiver<bool>,
}

impl TaskContext {
    /// Whether the soft time limit has passed.
    pub fn soft_time_limit_exceeded(&self) -> bool {
        *self.soft.borrow()
    }

    /// Resolves when the soft time limit passes (never, if the job ends first).
    pub async fn soft_time_limit(&self) {
        let mut rx = self.soft.clone();
        if rx.wait_for(|v| *v).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// `Err(SoftTimeLimitExceeded)` once the soft limit passed, for `?` in loops.
    pub fn check_soft_limit(&self) -> Result<(), TaskError> {
        if self.soft_time_limit_exceeded() {
            Err(TaskError::SoftTimeLimitExceeded)
        } else {
            Ok(())
        }
    }
}

/// Task handlers by name, each with its declaration (queue, callers, argument size; see
/// [`crate::jobs::catalog`]). The `xenios-worker` binary fills one with
/// [`crate::jobs::tasks::register_builtin`]; embedders and tests add their own.
///
/// The `xenios-worker` binary runs every handler on its one thread, beside its Redis loops:
/// a handler awaits its I/O and puts CPU-heavy or blocking work in
/// `tokio::task::spawn_blocking`, or it holds up every other job and the heartbeats.
#[derive(Clone, Default)]
pub struct TaskRegistry {
    pub(super) handlers: HashMap<String, Handler>,
    declarations: HashMap<String, crate::jobs::catalog::TaskDecl>,
}

impl std::fmt::Debug for TaskRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskRegistry")
            .field("tasks", &self.names())
            .finish()
    }
}

impl TaskRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `handler` under its declaration's name (replacing any previous one). A bare
    /// name declares an internal task, which HTTP callers cannot enqueue; declare it with
    /// [`crate::jobs::catalog::TaskDecl::users`] or `::service` to say who may.
    pub fn register<F, Fut>(
        &mut self,
        declaration: impl Into<crate::jobs::catalog::TaskDecl>,
        handler: F,
    ) -> &mut Self
    where
        F: Fn(TaskContext, Vec<Value>, Map<String, Value>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, TaskError>> + Send + 'static,
    {
        let declaration = declaration.into();
        let h: Handler = Arc::new(move |ctx, args, kwargs| Box::pin(handler(ctx, args, kwargs)));
        self.handlers.insert(declaration.name.clone(), h);
        self.declarations
            .insert(declaration.name.clone(), declaration);
        self
    }

    /// The declarations of the registered handlers, sorted by name.
    pub fn declarations(&self) -> Vec<crate::jobs::catalog::TaskDecl> {
        let mut v: Vec<_> = self.declarations.values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Registered names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.handlers.keys().cloned().collect();
        v.sort();
        v
    }

    pub(super) fn get(&self, name: &str) -> Option<Handler> {
        self.handlers.get(name).cloned()
    }
}
