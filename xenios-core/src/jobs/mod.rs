//! Celery-compatible job queue on Redis: our producers feed Python Celery workers, Python
//! producers feed our workers, and one Flower shows both.
//!
//! ## Layout
//! - [`protocol`]: task message protocol v2 (encode/decode), hand-written.
//! - [`broker`]: kombu's Redis transport (queues, priority lists, `unacked` bookkeeping,
//!   restore of lost messages), with atomic take and ack in Lua.
//! - [`result`]: Celery's Redis result backend (`celery-task-meta-<id>`).
//! - [`events`]: `celeryev` events for Flower, heartbeat every 2 s.
//! - [`pidbox`]: replies to `celery inspect`/Flower (ping, stats, active_queues...).
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
//! ([`protocol::OWNER_HEADER`]), its job row and a small Redis key next to its result
//! ([`owner_key`]), which the HTTP API checks before showing or revoking a job.
//!
//! The [`crate::AiBackend`] facade enqueues ([`crate::AiBackend::enqueue`]), reads
//! ([`crate::AiBackend::job_result`]), waits for ([`crate::AiBackend::wait_result`]) and
//! revokes ([`crate::AiBackend::revoke`]) jobs.

pub mod broker;
pub mod catalog;
pub mod events;
mod job_state;
mod names;
pub mod pidbox;
pub mod protocol;
pub mod result;
pub mod tasks;
pub mod worker;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::config::{Config, JobsConfig};
use crate::context::RequestContext;
use crate::db::models::JobStateChange;
use crate::error::{Error, Result};
use crate::jobs::broker::redis_error;
use crate::jobs::events::{Clock, EventSender};
use crate::jobs::protocol::{TaskMessage, args_repr, kwargs_repr};
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

    /// Parses [`Owner::to_string`]'s form.
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

/// Jobs state held by the backend.
pub(crate) struct JobsState {
    pub(crate) router: Router,
    pub(crate) catalog: catalog::Catalog,
    pub(crate) client: std::result::Result<redis::Client, String>,
    /// The producer's connection: one multiplexed connection that reconnects by itself
    /// (redis-rs' `ConnectionManager`). Concurrent enqueues share it and are pipelined
    /// onto the socket together, and no pool checkout (with its PING round trip) sits on
    /// the enqueue path.
    producer: std::result::Result<redis::aio::ConnectionManager, String>,
    /// The Redis database number (of `REDIS_URL`), part of fanout channel names.
    pub(crate) redis_db: i64,
    pub(crate) events: EventSender,
}

impl fmt::Debug for JobsState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobsState")
            .field("router", &self.router)
            .field("catalog", &self.catalog.names())
            .field("redis_db", &self.redis_db)
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

impl JobsState {
    pub(crate) fn new(config: &Config, pool: RedisPool) -> Self {
        let client = redis::Client::open(config.redis.url.expose_secret())
            .map_err(|e| format!("REDIS_URL: {:?}", e.kind()));
        let redis_db = client
            .as_ref()
            .map(|c| c.get_connection_info().redis_settings().db())
            .unwrap_or(0);
        let events = EventSender::start(
            pool,
            redis_db,
            protocol::origin(),
            Arc::new(Clock::default()),
            config.jobs.task_events,
        );
        let producer = match (&client, tokio::runtime::Handle::try_current()) {
            (Ok(c), Ok(_)) => redis::aio::ConnectionManager::new_lazy_with_config(
                c.clone(),
                redis::aio::ConnectionManagerConfig::new()
                    .set_response_timeout(Some(REDIS_REPLY_TIMEOUT))
                    .set_connection_timeout(Some(Duration::from_secs(5)))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_secs(1)),
            )
            .map_err(|e| format!("REDIS_URL: {:?}", e.kind())),
            (Err(e), _) => Err(e.clone()),
            (Ok(_), Err(_)) => Err("no Tokio runtime".to_owned()),
        };
        let router = Router::new(&config.jobs);
        let catalog = catalog::Catalog::new(
            tasks::builtin_registry(&config.jobs)
                .declarations()
                .into_iter()
                .chain(config.jobs.extra_tasks.iter().cloned()),
            &router,
        );
        Self {
            router,
            catalog,
            client,
            producer,
            redis_db,
            events,
        }
    }

    /// A handle on the producer's connection (cheap: a clone of a multiplexed handle).
    pub(crate) fn producer(&self) -> Result<redis::aio::ConnectionManager> {
        self.producer.clone().map_err(crate::redis::unavailable)
    }

    pub(crate) fn client(&self) -> Result<&redis::Client> {
        self.client.as_ref().map_err(crate::redis::unavailable)
    }
}

/// Reply timeout of Redis commands of the job queue. redis-rs defaults to 500 ms, which a
/// loaded 2-core machine exceeds now and then; a job call would rather wait than fail.
pub const REDIS_REPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A pooled connection with the job queue's reply timeout.
pub(crate) async fn pooled(
    pool: &RedisPool,
) -> Result<bb8::PooledConnection<'_, bb8_redis::RedisConnectionManager>> {
    let mut conn = pool.get().await.map_err(crate::redis::unavailable)?;
    conn.set_response_timeout(REDIS_REPLY_TIMEOUT);
    Ok(conn)
}

/// Bytes of the JSON encoding of `args` and `kwargs`, counted without building the string.
fn payload_size(args: &[Value], kwargs: &Map<String, Value>) -> usize {
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

impl crate::AiBackend {
    /// Builds the message of a request, validating it (bad input is [`Error::Validation`]).
    pub fn job_message(&self, ctx: &RequestContext, req: EnqueueRequest) -> Result<TaskMessage> {
        if !valid_task_name(&req.task) {
            return Err(Error::Validation(format!(
                "task must be 1-{MAX_TASK_NAME_LEN} characters of [A-Za-z0-9_.:-]"
            )));
        }
        let queue = match req.queue {
            Some(q) => q,
            None => self.jobs_state().router.route(&req.task).to_owned(),
        };
        check_queue_name(&queue).map_err(|e| Error::Validation(e.to_string()))?;
        let priority = req.priority.unwrap_or(0);
        if priority > 9 {
            return Err(Error::Validation("priority must be 0-9".to_owned()));
        }
        let size = payload_size(&req.args, &req.kwargs);
        if size > MAX_PAYLOAD_BYTES {
            return Err(Error::Validation(format!(
                "args and kwargs are {size} bytes encoded; the limit is {MAX_PAYLOAD_BYTES}"
            )));
        }
        let now = Utc::now();
        let delay = |d: Duration, what: &str| -> Result<chrono::Duration> {
            if d > MAX_DELAY {
                return Err(Error::Validation(format!(
                    "{what} is more than a year away"
                )));
            }
            chrono::Duration::from_std(d)
                .map_err(|_| Error::Validation(format!("{what} is too large")))
        };
        let eta = match (req.eta, req.countdown) {
            (Some(eta), _) => Some(eta),
            (None, Some(c)) if !c.is_zero() => Some(now + delay(c, "countdown")?),
            _ => None,
        };
        if let Some(eta) = eta
            && eta - now > delay(MAX_DELAY, "eta")?
        {
            return Err(Error::Validation("eta is more than a year away".to_owned()));
        }
        let mut m = TaskMessage::new(req.task, queue);
        m.args = req.args;
        m.kwargs = req.kwargs;
        m.priority = priority;
        m.eta = eta;
        m.expires = req.expires;
        if let Some(tl) = req.time_limits {
            for d in [tl.soft, tl.hard].into_iter().flatten() {
                if d.is_zero() || d > MAX_DELAY {
                    return Err(Error::Validation(
                        "time limits must be positive and under a year".to_owned(),
                    ));
                }
            }
            if let (Some(s), Some(h)) = (tl.soft, tl.hard)
                && s > h
            {
                return Err(Error::Validation(
                    "the soft time limit must not exceed the hard one".to_owned(),
                ));
            }
            m.soft_time_limit = tl.soft.map(|d| d.as_secs_f64());
            m.hard_time_limit = tl.hard.map(|d| d.as_secs_f64());
        }
        m.correlation_id = Some(ctx.correlation_id.as_str().to_owned());
        m.user_id = ctx.user_id().map(str::to_owned);
        m.owner = Some(Owner::of(ctx).to_string());
        Ok(m)
    }

    /// The task catalog: what HTTP callers may enqueue (see [`catalog`]).
    pub fn job_catalog(&self) -> &catalog::Catalog {
        &self.jobs_state().catalog
    }

    /// Builds the message of a request from an outside caller: only a catalogued task this
    /// caller may enqueue ([`Error::UnknownTask`] otherwise), on the catalog's queue (a
    /// request naming a queue is refused), with arguments within the task's size limit.
    pub fn caller_job_message(
        &self,
        ctx: &RequestContext,
        mut req: EnqueueRequest,
    ) -> Result<TaskMessage> {
        if !valid_task_name(&req.task) {
            return Err(Error::Validation(format!(
                "task must be 1-{MAX_TASK_NAME_LEN} characters of [A-Za-z0-9_.:-]"
            )));
        }
        let entry = self
            .jobs_state()
            .catalog
            .authorize(&ctx.principal, &req.task)?;
        if req.queue.is_some() {
            return Err(Error::Validation(
                "queue cannot be chosen: each task's queue is set by the task catalog".to_owned(),
            ));
        }
        let size = payload_size(&req.args, &req.kwargs);
        if size > entry.max_arg_bytes {
            return Err(Error::Validation(format!(
                "args and kwargs are {size} bytes encoded; `{}` accepts at most {}",
                entry.name, entry.max_arg_bytes
            )));
        }
        req.queue = Some(entry.queue.clone());
        self.job_message(ctx, req)
    }

    /// Enqueues a job as a Celery protocol-v2 message and returns its task id.
    pub async fn enqueue(&self, ctx: &RequestContext, req: EnqueueRequest) -> Result<TaskId> {
        let mut ids = self.enqueue_many(ctx, vec![req]).await?;
        ids.pop()
            .ok_or_else(|| Error::Internal("enqueue returned no id".to_owned()))
    }

    /// Enqueues many jobs in pipelined round trips (all validated first: one bad request
    /// enqueues nothing).
    pub async fn enqueue_many(
        &self,
        ctx: &RequestContext,
        reqs: Vec<EnqueueRequest>,
    ) -> Result<Vec<TaskId>> {
        let messages = reqs
            .into_iter()
            .map(|r| self.job_message(ctx, r))
            .collect::<Result<Vec<_>>>()?;
        self.publish_messages(&messages).await?;
        Ok(messages
            .into_iter()
            .map(|m| TaskId::of_message(m.id))
            .collect())
    }

    /// Publishes ready-made messages (with `task-sent` events and pending job rows).
    /// A message's owner (when set) is written to [`owner_key`] first, in the same round
    /// trip, living as long as its result can (the delay to its ETA plus twice
    /// `JOB_RESULT_EXPIRES_SECS`).
    pub async fn publish_messages(&self, messages: &[TaskMessage]) -> Result<()> {
        for m in messages {
            check_queue_name(&m.queue).map_err(|e| Error::Validation(e.to_string()))?;
        }
        let mut conn = self.jobs_state().producer()?;
        let keep = self.config().jobs.result_expires.as_secs().max(1) * 2;
        let now = Utc::now();
        for chunk in messages.chunks(1000) {
            let owners: Vec<(String, String, u64)> = chunk
                .iter()
                .filter_map(|m| {
                    let wait = m
                        .eta
                        .map(|eta| (eta - now).num_seconds().max(0).unsigned_abs())
                        .unwrap_or(0);
                    m.owner
                        .clone()
                        .map(|o| (owner_key(&m.id), o, keep.saturating_add(wait)))
                })
                .collect();
            let out: Vec<(String, String)> = chunk.iter().map(broker::outgoing).collect();
            broker::publish_owned(&mut conn, &owners, &out).await?;
        }
        let events = &self.jobs_state().events;
        for m in messages {
            self.audit().job(job_change(m, JobState::Pending));
            events.task(
                "task-sent",
                json!({
                    "uuid": m.id, "root_id": m.root_id, "parent_id": m.parent_id,
                    "name": m.task, "args": args_repr(&m.args),
                    "kwargs": kwargs_repr(&m.kwargs),
                    "retries": m.retries, "eta": m.eta.map(protocol::iso),
                    "expires": m.expires.map(protocol::iso), "queue": m.queue,
                    "exchange": m.exchange, "routing_key": m.queue,
                }),
            );
        }
        Ok(())
    }

    /// The owner recorded for a job at enqueue, if any (jobs of Python producers have none).
    pub async fn job_owner(&self, task_id: &str) -> Result<Option<Owner>> {
        let mut conn = self.jobs_state().producer()?;
        let raw: Option<String> = redis::cmd("GET")
            .arg(owner_key(task_id))
            .query_async(&mut conn)
            .await
            .map_err(redis_error)?;
        Ok(raw.as_deref().and_then(Owner::parse))
    }

    /// A job's result as `ctx` may see it: the service sees every job (PENDING for unknown
    /// ids, as in Celery); a user only their own, and any other id, unknown or someone
    /// else's or of unknown owner, is the same [`Error::NotFound`]. Owner and result are
    /// read in one round trip.
    pub async fn job_result_for(&self, ctx: &RequestContext, task_id: &str) -> Result<JobResult> {
        if !valid_task_id(task_id) {
            return Err(Error::Validation(TASK_ID_RULE.to_owned()));
        }
        let mut conn = self.jobs_state().producer()?;
        let (owner, raw): (Option<String>, Option<String>) = redis::pipe()
            .cmd("GET")
            .arg(owner_key(task_id))
            .cmd("GET")
            .arg(result::result_key(task_id))
            .query_async(&mut conn)
            .await
            .map_err(redis_error)?;
        let visible = match owner.as_deref().and_then(Owner::parse) {
            Some(o) => o.visible_to(ctx),
            None => ctx.user_id().is_none(),
        };
        if !visible {
            return Err(Error::NotFound("job".to_owned()));
        }
        Ok(raw
            .and_then(|r| JobResult::parse(task_id, &r))
            .unwrap_or_else(|| JobResult::pending(task_id)))
    }

    /// [`crate::AiBackend::revoke`] on behalf of `ctx`: a user may revoke only their own
    /// jobs, any other id is [`Error::NotFound`] (and nothing is revoked).
    pub async fn revoke_for(
        &self,
        ctx: &RequestContext,
        task_id: &str,
        terminate: bool,
    ) -> Result<()> {
        if !valid_task_id(task_id) {
            return Err(Error::Validation(TASK_ID_RULE.to_owned()));
        }
        if ctx.user_id().is_some()
            && !self
                .job_owner(task_id)
                .await?
                .is_some_and(|o| o.visible_to(ctx))
        {
            return Err(Error::NotFound("job".to_owned()));
        }
        self.revoke(task_id, terminate).await
    }

    /// The stored result of a job (PENDING when nothing is stored yet, as in Celery).
    pub async fn job_result(&self, task_id: &str) -> Result<JobResult> {
        let mut conn = self.jobs_state().producer()?;
        let raw: Option<String> = redis::cmd("GET")
            .arg(result::result_key(task_id))
            .query_async(&mut conn)
            .await
            .map_err(redis_error)?;
        Ok(raw
            .and_then(|r| JobResult::parse(task_id, &r))
            .unwrap_or_else(|| JobResult::pending(task_id)))
    }

    /// Waits until a job's result is ready (SUCCESS, FAILURE or REVOKED), up to `timeout`,
    /// on the result's pub/sub channel (a dedicated connection), like Celery's `get()`.
    /// Returns the latest known result, ready or not, when the time is up.
    pub async fn wait_result(&self, task_id: &str, timeout: Duration) -> Result<JobResult> {
        use futures::StreamExt;
        let key = result::result_key(task_id);
        let mut pubsub = self
            .jobs_state()
            .client()?
            .get_async_pubsub()
            .await
            .map_err(redis_error)?;
        pubsub.subscribe(&key).await.map_err(redis_error)?;
        // Subscribed first, then read: a result stored in between is not missed. A failed
        // read (a pooled connection timing out under load) is not fatal: the result will
        // still arrive on the channel, and is read again at the deadline.
        let mut latest = match self.job_result(task_id).await {
            Ok(r) if r.state.is_ready() => return Ok(r),
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the result yet; waiting on its channel");
                JobResult::pending(task_id)
            }
        };
        let mut stream = pubsub.on_message();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, stream.next()).await {
                Ok(Some(msg)) => {
                    if let Some(r) = std::str::from_utf8(msg.get_payload_bytes())
                        .ok()
                        .and_then(|raw| JobResult::parse(task_id, raw))
                    {
                        if r.state.is_ready() {
                            return Ok(r);
                        }
                        latest = r;
                    }
                }
                Ok(None) => {
                    return Err(crate::redis::unavailable("result subscription closed"));
                }
                Err(_) => {
                    return Ok(match self.job_result(task_id).await {
                        Ok(r) => r,
                        Err(_) => latest,
                    });
                }
            }
        }
    }

    /// Revokes a job: running workers are told through the pidbox broadcast (Python ones
    /// too), and ours also honour it when started later (a marker kept for
    /// `JOB_RESULT_EXPIRES_SECS`). The worker that meets the job stores REVOKED and its job
    /// row. With `terminate`, a job already running is stopped as well (our workers drop
    /// its handler; Celery's send its process SIGTERM); without it, it runs to the end.
    pub async fn revoke(&self, task_id: &str, terminate: bool) -> Result<()> {
        if !valid_task_id(task_id) {
            return Err(Error::Validation(TASK_ID_RULE.to_owned()));
        }
        let state = self.jobs_state();
        let ttl = self.config().jobs.result_expires.as_secs().max(1);
        let request = pidbox::request(
            "revoke",
            json!({"task_id": task_id, "terminate": terminate, "signal": "SIGTERM"}),
            None,
        );
        let channel = events::fanout_channel(state.redis_db, "celery.pidbox", "");
        let mut conn = self.jobs_state().producer()?;
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(format!("{REVOKED_PREFIX}{task_id}"))
            .arg(1)
            .arg("EX")
            .arg(ttl)
            .ignore()
            .cmd("PUBLISH")
            .arg(channel)
            .arg(request)
            .ignore();
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(redis_error)?;
        Ok(())
    }
}
