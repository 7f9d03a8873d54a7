//! Celery-compatible job queue on Redis: our producers feed Python Celery workers, Python
//! producers feed our workers, and one Flower shows both.
//!
//! ## Layout
//! - `protocol`: task message protocol v2 (encode/decode), hand-written; its message is
//!   [`TaskMessage`], and its headers of ours are [`CORRELATION_HEADER`], [`USER_HEADER`]
//!   and [`OWNER_HEADER`].
//! - `broker`: kombu's Redis transport (queues, priority lists, `unacked` bookkeeping,
//!   restore of lost messages), with atomic take and ack in Lua.
//! - [`result`]: Celery's Redis result backend (`celery-task-meta-<id>`).
//! - `events`: `celeryev` events for Flower, heartbeat every 2 s.
//! - `pidbox`: replies to `celery inspect`/Flower (ping, stats, active_queues...).
//! - [`worker`]: the runtime: task registry, concurrency, acks_late, retries, time limits,
//!   warm shutdown. The `xenios-worker` binary is a shell over it.
//! - [`tasks`]: the handlers shipped with the worker (`xenios.echo`, `xenios.noop`...).
//! - [`catalog`]: which tasks HTTP callers may enqueue, on which queue, by whom, how large.
//! - `job_state`: [`JobState`], the six states of a job, with its diesel mapping to
//!   `job_queue_metadata.status`.
//! - `names`: the checked names [`TaskName`], [`QueueName`] and [`TaskId`].
//!
//! ## Names and owners
//! A queue is a Redis key, so a queue name may never be a key the broker, Celery or this
//! backend uses for something else ([`reserved_queue`]): every queue, from a request,
//! `JOB_ROUTES`, `JOB_DEFAULT_QUEUE`, `JOB_EXTRA_TASKS` or `xenios-worker -Q`, passes
//! [`check_queue_name`]. Every job records its [`Owner`] in its message
//! ([`OWNER_HEADER`]), its job row and a small Redis key next to its result
//! ([`owner_key`]), which the HTTP API checks before showing or revoking a job.
//!
//! [`Jobs`] (`client/`, reached through [`crate::AiBackend::jobs`]) enqueues
//! ([`Jobs::enqueue`], [`Jobs::enqueue_for_caller`]), reads ([`Jobs::job_result`]), waits
//! for ([`Jobs::wait_result`]) and revokes ([`Jobs::revoke`]) jobs.

pub(crate) mod broker;
pub mod catalog;
mod client;
pub(crate) mod events;
mod job_state;
mod names;
pub(crate) mod pidbox;
pub(crate) mod protocol;
pub mod result;
pub mod tasks;
pub mod worker;

pub use client::{Enqueued, Jobs};
pub use protocol::{CORRELATION_HEADER, DecodeError, OWNER_HEADER, TaskMessage, USER_HEADER};

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::config::JobsConfig;
use crate::context::RequestContext;
use crate::db::models::JobStateChange;
use crate::error::{Error, Result};
use crate::redis::RedisPool;

pub use crate::jobs::job_state::JobState;
pub use crate::jobs::names::{NameError, QueueName, TaskId, TaskName};
pub use crate::jobs::result::JobResult;
pub use crate::jobs::worker::{
    TaskContext, TaskError, TaskRegistry, Worker, WorkerOptions, WorkerSummary,
};

/// Largest encoded `args` + `kwargs` of one job.
pub const MAX_PAYLOAD_BYTES: usize = 512 * 1024;
/// Longest task name.
pub const MAX_TASK_NAME_LEN: usize = 200;
/// Longest countdown or distance to an ETA or expiry.
pub const MAX_DELAY: Duration = Duration::from_secs(365 * 24 * 3600);

/// A time limit in seconds as a message or a control command gives it (hostile input):
/// `None` unless positive and finite; above `max` (`JOB_MAX_TIME_LIMIT_SECS`) it is cut to
/// `max` (1e9 would disable a hard limit, 1e20 does not fit a `Duration`).
pub(crate) fn time_limit(secs: f64, max: Duration) -> Option<Duration> {
    (secs.is_finite() && secs > 0.0)
        .then(|| Duration::try_from_secs_f64(secs).map_or(max, |d| d.min(max)))
}
/// Key prefix of revocations that workers started later still honour.
pub const REVOKED_PREFIX: &str = "xenios.revoked.";
/// Key prefix of job owners (`xenios.owner.<task id>`), see [`owner_key`].
pub const OWNER_PREFIX: &str = "xenios.owner.";
/// The key namespaces of this backend (revocations, owners, the dead-letter list, and any
/// key added later: budgets, rate limits...): no queue may live in them.
pub const OWN_KEY_PREFIXES: [&str; 2] = ["xenios.", "xenios:"];

/// Why `name` cannot be a queue, if it is a key the broker, Celery or this backend uses for
/// something else: kombu's `unacked`, `unacked_index`, `unacked_mutex` and `_kombu.*`
/// bindings, Celery's `celery-task-meta-*`/`celery-taskset-meta-*` results, `celeryev*`
/// events and `*.pidbox` control queues, and this backend's own `xenios.*`/`xenios:*`
/// keys (the dead-letter list, revocations, owners...). A queue there would turn the key
/// into a list and break whatever reads it.
pub fn reserved_queue(name: &str) -> Option<&'static str> {
    if [
        broker::UNACKED_KEY,
        broker::UNACKED_INDEX_KEY,
        broker::UNACKED_MUTEX_KEY,
    ]
    .contains(&name)
    {
        return Some("kombu's bookkeeping of unacknowledged messages");
    }
    if name.starts_with(broker::BINDING_PREFIX) || name.starts_with("_kombu.") {
        return Some("kombu's exchange bindings");
    }
    if name.starts_with("celery-task-meta-") || name.starts_with("celery-taskset-meta-") {
        return Some("Celery's result keys");
    }
    if name.starts_with("celeryev") {
        return Some("Celery's event exchange");
    }
    if name.ends_with(".pidbox") {
        return Some("Celery's remote-control queues");
    }
    if OWN_KEY_PREFIXES.iter().any(|p| name.starts_with(p)) {
        return Some("this backend's own keys (dead letters, revocations, owners...)");
    }
    None
}

/// Checks a queue name: 1-128 characters of `[A-Za-z0-9_.:-]` and not [`reserved_queue`].
/// The error names the queue and why. [`QueueName::parse`] keeps the checked name.
pub fn check_queue_name(name: &str) -> std::result::Result<(), NameError> {
    QueueName::parse(name).map(drop)
}

/// Who a job belongs to: the user who enqueued it, or the service (API-key calls without a
/// user token, the CLI, Python producers). Written as `user:<id>` or `service`, so that no
/// user id can pass for the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// The service (and the backend itself).
    Service,
    /// A signed-in user, by id.
    User(String),
}

impl Owner {
    /// The owner of jobs enqueued by `ctx`.
    pub fn of(ctx: &RequestContext) -> Self {
        match ctx.user_id() {
            Some(u) => Self::User(u.to_owned()),
            None => Self::Service,
        }
    }

    /// Parses the form `Owner`'s `Display` writes.
    pub fn parse(raw: &str) -> Option<Self> {
        match raw.strip_prefix("user:") {
            Some(u) if !u.is_empty() => Some(Self::User(u.to_owned())),
            Some(_) => None,
            None => (raw == "service").then_some(Self::Service),
        }
    }

    /// Whether `ctx` may see and revoke this owner's jobs: the service sees all, a user
    /// only their own.
    pub fn visible_to(&self, ctx: &RequestContext) -> bool {
        match ctx.user_id() {
            None => true,
            Some(u) => matches!(self, Self::User(o) if o == u),
        }
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Service => f.write_str("service"),
            Self::User(u) => write!(f, "user:{u}"),
        }
    }
}

/// The Redis key of a job's owner, written with the message and kept past its result, so
/// that an ownership check never waits on the job row.
pub fn owner_key(task_id: &str) -> String {
    format!("{OWNER_PREFIX}{task_id}")
}

/// Soft and hard time limits of one job (the worker's defaults when unset).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TimeLimits {
    /// Soft limit: the handler is told and may clean up.
    pub soft: Option<Duration>,
    /// Hard limit: the handler is stopped and FAILURE stored.
    pub hard: Option<Duration>,
}

/// A job to enqueue. Build with [`EnqueueRequest::new`] and the typed setters.
#[derive(Debug, Clone, Default)]
pub struct EnqueueRequest {
    /// Task name, e.g. `xenios.echo`; any name (a Python worker may be the one to run it).
    pub task: String,
    /// Positional arguments.
    pub args: Vec<Value>,
    /// Keyword arguments.
    pub kwargs: Map<String, Value>,
    /// Queue; by default routed by task-name prefix (`JOB_ROUTES`).
    pub queue: Option<String>,
    /// Run no sooner than this long after enqueueing.
    pub countdown: Option<Duration>,
    /// Run no sooner than this time (wins over `countdown`).
    pub eta: Option<DateTime<Utc>>,
    /// Revoke as expired when not started by then.
    pub expires: Option<DateTime<Utc>>,
    /// Priority 0-9, 0 served first (kombu's Redis convention); default 0.
    pub priority: Option<u8>,
    /// Time limits (default: the worker's, 300 s / 600 s).
    pub time_limits: Option<TimeLimits>,
}

impl EnqueueRequest {
    /// A job of `task` without arguments.
    pub fn new(task: impl Into<String>) -> Self {
        Self {
            task: task.into(),
            ..Self::default()
        }
    }

    /// Sets positional arguments from any value that serializes to a JSON array (a tuple,
    /// a `Vec`, a `json!([...])`).
    pub fn args<T: Serialize>(mut self, args: T) -> Result<Self> {
        match serde_json::to_value(args) {
            Ok(Value::Array(a)) => {
                self.args = a;
                Ok(self)
            }
            Ok(Value::Null) => {
                self.args = Vec::new();
                Ok(self)
            }
            Ok(_) => Err(Error::Validation("args must be a JSON array".to_owned())),
            Err(e) => Err(Error::Validation(format!("args: {e}"))),
        }
    }

    /// Sets keyword arguments from any value that serializes to a JSON object.
    pub fn kwargs<T: Serialize>(mut self, kwargs: T) -> Result<Self> {
        match serde_json::to_value(kwargs) {
            Ok(Value::Object(k)) => {
                self.kwargs = k;
                Ok(self)
            }
            Ok(Value::Null) => {
                self.kwargs = Map::new();
                Ok(self)
            }
            Ok(_) => Err(Error::Validation("kwargs must be a JSON object".to_owned())),
            Err(e) => Err(Error::Validation(format!("kwargs: {e}"))),
        }
    }

    /// Sets the queue.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }

    /// Sets a countdown.
    pub fn countdown(mut self, countdown: Duration) -> Self {
        self.countdown = Some(countdown);
        self
    }

    /// Sets a countdown given in seconds by a caller (HTTP, the CLI): 0 to [`MAX_DELAY`]
    /// (one year), else [`Error::Validation`].
    pub fn countdown_secs(self, secs: f64) -> Result<Self> {
        Ok(self.countdown(countdown(secs)?))
    }

    /// Sets an ETA.
    pub fn eta(mut self, eta: DateTime<Utc>) -> Self {
        self.eta = Some(eta);
        self
    }

    /// Sets an expiry time.
    pub fn expires(mut self, expires: DateTime<Utc>) -> Self {
        self.expires = Some(expires);
        self
    }

    /// Sets the priority (0-9, 0 first).
    pub fn priority(mut self, priority: u8) -> Self {
        self.priority = Some(priority);
        self
    }

    /// Sets time limits.
    pub fn time_limits(mut self, soft: Option<Duration>, hard: Option<Duration>) -> Self {
        self.time_limits = Some(TimeLimits { soft, hard });
        self
    }
}

/// A countdown in seconds from a caller, checked: finite, 0 to [`MAX_DELAY`] (one year).
pub fn countdown(secs: f64) -> Result<Duration> {
    if secs.is_finite() && (0.0..=MAX_DELAY.as_secs_f64()).contains(&secs) {
        Ok(Duration::from_secs_f64(secs))
    } else {
        Err(Error::Validation(format!(
            "countdown must be 0 to {} seconds",
            MAX_DELAY.as_secs()
        )))
    }
}

/// Whether `name` may be a task name: 1-200 characters of `[A-Za-z0-9_.:-]`.
pub fn valid_task_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TASK_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

/// What [`valid_task_id`] accepts, for error messages.
pub const TASK_ID_RULE: &str = "job id must be 1-128 characters of [A-Za-z0-9._:-]";

/// Whether `id` may be a task id: 1-128 characters of `[A-Za-z0-9._:-]` (UUIDs, and the
/// custom ids Celery producers pick in practice).
pub fn valid_task_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// [`Error::Validation`] ([`TASK_ID_RULE`]) unless [`valid_task_id`].
pub fn check_task_id(id: &str) -> Result<()> {
    TaskId::parse(id)?;
    Ok(())
}

/// Whether `name` may be a queue name: 1-128 characters of `[A-Za-z0-9_.:-]`.
pub fn valid_queue_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

/// Routes task names to queues by the longest matching prefix.
#[derive(Debug, Clone)]
pub struct Router {
    default_queue: String,
    routes: Vec<(String, String)>,
}

impl Router {
    /// The router of a configuration.
    pub fn new(config: &JobsConfig) -> Self {
        let mut routes = config.routes.clone();
        routes.sort_by_key(|r| std::cmp::Reverse(r.0.len()));
        Self {
            default_queue: config.default_queue.clone(),
            routes,
        }
    }

    /// The queue of a task.
    pub fn route(&self, task: &str) -> &str {
        self.routes
            .iter()
            .find(|(prefix, _)| task.starts_with(prefix.as_str()))
            .map(|(_, q)| q.as_str())
            .unwrap_or(&self.default_queue)
    }
}

/// Reply timeout of Redis commands of the job queue. redis-rs defaults to 500 ms, which a
/// loaded 2-core machine exceeds now and then; a job call would rather wait than fail.
pub const REDIS_REPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A pooled connection with the job queue's reply timeout.
pub(crate) async fn pooled(
    pool: &RedisPool,
) -> Result<bb8::PooledConnection<'_, bb8_redis::RedisConnectionManager>> {
    let mut conn = pool
        .get()
        .await
        .map_err(|e| Error::unavailable_from(crate::error::Component::Redis, e))?;
    conn.set_response_timeout(REDIS_REPLY_TIMEOUT);
    Ok(conn)
}

/// Bytes of the JSON encoding of `args` and `kwargs`, counted without building the string.
pub(crate) fn payload_size(args: &[Value], kwargs: &Map<String, Value>) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut n = Count(0);
    // Writing JSON values into a counter cannot fail.
    let _ = serde_json::to_writer(&mut n, args);
    let _ = serde_json::to_writer(&mut n, kwargs);
    n.0
}

/// A digest of arguments for job rows (never the arguments themselves).
pub(crate) fn args_digest(args: &[Value], kwargs: &Map<String, Value>) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    // Serialized straight into the hasher (it is an `io::Write`): no JSON tree, no string.
    if serde_json::to_writer(&mut h, &(args, kwargs)).is_err() {
        h.update(b"unserializable");
    }
    format!("{:x}", h.finalize())
}

/// The job row change of a message. A failure's error text may quote the arguments (Celery's
/// `MaxRetriesExceededError` names them): the change carries that quote so the audit writer
/// cuts it out, and job rows never hold arguments.
pub(crate) fn job_change(m: &TaskMessage, status: JobState) -> JobStateChange {
    let mut c = JobStateChange::new(&m.id, &m.task, &m.queue, status);
    c.args_digest = Some(args_digest(&m.args, &m.kwargs));
    if status == JobState::Failure {
        c.redact = Some(result::args_quote(m));
    }
    c.owner = m.owner.clone();
    c.correlation_id = m.correlation_id.clone();
    c.user_id = m
        .user_id
        .as_deref()
        .and_then(|u| uuid::Uuid::parse_str(u).ok());
    c.attempts = i32::try_from(m.retries).unwrap_or(i32::MAX);
    c
}
