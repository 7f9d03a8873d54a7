//! The worker runtime: takes messages from Celery queues, runs registered Rust handlers.
//!
//! - **Delivery**: messages are taken atomically into `unacked` ([`broker::take`]) and acked
//!   after the handler finished (acks_late), in the same Lua step that stores the result.
//!   A worker that dies leaves its messages in `unacked`; any worker (ours or Celery's)
//!   restores them after the visibility timeout (reject_on_worker_lost: no FAILURE stored).
//!   While it lives, a worker refreshes what it holds every heartbeat.
//! - **Waking**: a pub/sub connection of its own listens to keyspace notifications of the
//!   queue lists (enabled with `CONFIG SET` when allowed; otherwise the worker polls every
//!   50 ms) and to the pidbox channel; the pool serves everything else.
//! - **Limits**: soft limit -> [`TaskContext::soft_time_limit`] resolves and the handler may
//!   clean up (returning [`TaskError::SoftTimeLimitExceeded`] stores Celery's
//!   `SoftTimeLimitExceeded`); hard limit -> the handler's future is dropped and
//!   `TimeLimitExceeded` stored. Defaults `JOB_SOFT_TIME_LIMIT_SECS`/`JOB_HARD_TIME_LIMIT_SECS`.
//! - **Retries**: a handler returns [`TaskError::Retry`]; a new message with `retries + 1` and
//!   an ETA (exponential backoff unless given) replaces the old one atomically.
//! - **Warm shutdown**: stop taking, let running handlers finish, put reserved and ETA
//!   messages back at the front of their queues. Nothing is lost.
//! - **Bad input**: unknown task names get a stored `NotRegistered` failure; undecodable
//!   messages go to [`broker::DEAD_LETTER_KEY`] with a stored failure when their id is known.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::FutureExt;
use redis::aio::MultiplexedConnection;
use serde::Serialize;
use serde_json::{Map, Value, json};
use tokio::sync::{Notify, Semaphore, mpsc, watch};

use crate::AiBackend;
use crate::db::models::JobStatus;
use crate::error::{Error, Result};
use crate::jobs::broker::{self, Finish, Taken, redis_error};
use crate::jobs::events::{Clock, EventSender, HEARTBEAT_FREQ, worker_fields};
use crate::jobs::protocol::{TaskMessage, args_repr, iso, kwargs_repr, py_repr};
use crate::jobs::result::{PyException, TaskState, meta};
use crate::jobs::{REVOKED_PREFIX, job_change, pidbox};

/// How long a stopping worker waits for its job rows to reach Postgres.
pub const AUDIT_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

type BoxFuture = Pin<Box<dyn Future<Output = Result<Value, TaskError>> + Send>>;
type Handler = Arc<dyn Fn(TaskContext, Vec<Value>, Map<String, Value>) -> BoxFuture + Send + Sync>;

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
    /// The engine, for handlers that call it (LLM completions...).
    pub backend: AiBackend,
    soft: watch::Receiver<bool>,
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
#[derive(Clone, Default)]
pub struct TaskRegistry {
    handlers: HashMap<String, Handler>,
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

    fn get(&self, name: &str) -> Option<Handler> {
        self.handlers.get(name).cloned()
    }
}

/// How to run a worker (the flags of `celery worker`).
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Queues to consume (`-Q`).
    pub queues: Vec<String>,
    /// Handlers run at once (`-c`).
    pub concurrency: usize,
    /// Node name (`-n`); `%h` is replaced by the host name. Default `xenios-<pid>@<host>`.
    pub hostname: Option<String>,
    /// Messages taken ahead per concurrency slot (Celery's prefetch multiplier, default 4).
    pub prefetch_multiplier: usize,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            queues: vec!["default".to_owned()],
            concurrency: 4,
            hostname: None,
            prefetch_multiplier: 4,
        }
    }
}

/// Counters of a finished run.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct WorkerSummary {
    /// Handlers finished (any outcome).
    pub processed: u64,
    /// Successes.
    pub succeeded: u64,
    /// Failures (including time limits and unknown tasks).
    pub failed: u64,
    /// Retries scheduled.
    pub retried: u64,
    /// Revoked or expired jobs skipped.
    pub revoked: u64,
    /// Undecodable messages moved to the dead-letter list.
    pub dead_lettered: u64,
    /// Messages put back on their queues at shutdown.
    pub given_back: u64,
}

#[derive(Debug, Default)]
struct Counters {
    processed: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    revoked: AtomicU64,
    dead_lettered: AtomicU64,
    given_back: AtomicU64,
}

/// A message this worker holds.
#[derive(Debug, Clone)]
pub(crate) struct Held {
    pub(crate) message: Arc<TaskMessage>,
    pub(crate) started: Option<f64>,
}

#[derive(Debug, Default)]
pub(crate) struct Hand {
    pub(crate) reserved: HashMap<String, Held>,
    pub(crate) active: HashMap<String, Held>,
    pub(crate) scheduled: HashMap<String, Held>,
    closing: bool,
}

impl Hand {
    fn len(&self) -> usize {
        self.reserved.len() + self.active.len() + self.scheduled.len()
    }
}

#[derive(Debug, Default)]
pub(crate) struct Revoked {
    set: HashSet<String>,
    order: VecDeque<String>,
}

impl Revoked {
    const CAP: usize = 50_000;

    pub(crate) fn add(&mut self, id: &str) {
        if self.set.insert(id.to_owned()) {
            self.order.push_back(id.to_owned());
            while self.order.len() > Self::CAP {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }

    pub(crate) fn contains(&self, id: &str) -> bool {
        self.set.contains(id)
    }

    pub(crate) fn ids(&self) -> Vec<String> {
        self.order.iter().cloned().collect()
    }
}

/// Why a job ends REVOKED.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Revocation {
    /// Revoked before it started.
    Revoked,
    /// Its `expires` passed before it started.
    Expired,
    /// Revoked with `terminate=True` while it ran: its handler was stopped.
    Terminated,
}

impl Revocation {
    fn reason(self) -> &'static str {
        match self {
            Self::Revoked => "revoked",
            Self::Expired => "expired",
            Self::Terminated => "terminated",
        }
    }
}

/// A task rate limit (Celery's `rate_limit` strings: `10/s`, `100/m`, `1000/h`, `5`).
pub(crate) struct RateLimit {
    /// The string it was set from, for `inspect`.
    pub(crate) spec: String,
    limiter: governor::DefaultDirectRateLimiter,
}

impl std::fmt::Debug for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit")
            .field("spec", &self.spec)
            .finish()
    }
}

impl RateLimit {
    /// Parses a Celery rate (as kombu's `rate()`): `None` for `0` (no limit).
    pub(crate) fn parse(spec: &str) -> std::result::Result<Option<Self>, String> {
        let s = spec.trim();
        let (ops, per) = match s.split_once('/') {
            Some((ops, unit)) => {
                let per = match unit.trim().chars().next() {
                    Some('s') => 1.0,
                    Some('m') => 60.0,
                    Some('h') => 3600.0,
                    _ => return Err(format!("unknown rate unit in {s:?} (use s, m or h)")),
                };
                (ops.trim(), per)
            }
            None => (s, 1.0),
        };
        let ops: f64 = ops
            .parse()
            .map_err(|_| format!("{s:?} is not a rate such as 10/s, 100/m or 1000/h"))?;
        if !ops.is_finite() || ops < 0.0 {
            return Err(format!("{s:?} is not a positive rate"));
        }
        if ops == 0.0 {
            return Ok(None);
        }
        let period = Duration::from_secs_f64(per / ops);
        let quota = governor::Quota::with_period(period)
            .ok_or_else(|| format!("{s:?} is too fast a rate"))?;
        Ok(Some(Self {
            spec: s.to_owned(),
            limiter: governor::RateLimiter::direct(quota),
        }))
    }
}

/// Limits of one task name set at run time.
#[derive(Debug, Default)]
pub(crate) struct TaskOverrides {
    soft: Option<Duration>,
    hard: Option<Duration>,
    rate: Option<Arc<RateLimit>>,
}

/// State shared by the worker's tasks (and read by the pidbox).
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) backend: AiBackend,
    registry: TaskRegistry,
    pub(crate) hostname: String,
    pub(crate) queues: Vec<String>,
    keys: Vec<(String, String)>,
    pub(crate) concurrency: usize,
    pub(crate) prefetch: usize,
    conn: MultiplexedConnection,
    pub(crate) events: EventSender,
    pub(crate) clock: Arc<Clock>,
    pub(crate) hand: Mutex<Hand>,
    pub(crate) revoked: Mutex<Revoked>,
    pub(crate) totals: Mutex<HashMap<String, u64>>,
    /// Handlers running now, by task id: `revoke(terminate=True)` stops them.
    running: Mutex<HashMap<String, Arc<Notify>>>,
    /// Time and rate limits per task name, set by the `time_limit` and `rate_limit`
    /// control commands (Celery's, sent by `celery control` or Flower).
    overrides: Mutex<HashMap<String, TaskOverrides>>,
    counters: Counters,
    exec: Arc<Semaphore>,
    prefetch_sem: Arc<Semaphore>,
    finisher: mpsc::UnboundedSender<Finish>,
    finisher_idle: Notify,
    pending_finishes: AtomicU64,
    wake: Notify,
    stopping: AtomicBool,
    stop_notify: Notify,
    hand_changed: Notify,
    pub(crate) started: Instant,
    pub(crate) db: i64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_ts() -> f64 {
    Utc::now().timestamp_micros() as f64 / 1e6
}

impl Shared {
    pub(crate) fn hand(&self) -> std::sync::MutexGuard<'_, Hand> {
        lock(&self.hand)
    }

    pub(crate) fn revoke_local(&self, id: &str) {
        lock(&self.revoked).add(id);
    }

    pub(crate) fn revoked_ids(&self) -> Vec<String> {
        lock(&self.revoked).ids()
    }

    /// Stops the handler of a running job (`revoke(terminate=True)`); false when the job
    /// is not running here. Call after [`Shared::revoke_local`]: a job about to start then
    /// sees the revocation instead.
    pub(crate) fn terminate(&self, id: &str) -> bool {
        match lock(&self.running).get(id) {
            Some(stop) => {
                stop.notify_one();
                true
            }
            None => false,
        }
    }

    /// Sets the time limits of a task name (the `time_limit` control command); `None`
    /// falls back to the worker's defaults. False for a task this worker does not know.
    pub(crate) fn set_time_limits(
        &self,
        task: &str,
        soft: Option<Duration>,
        hard: Option<Duration>,
    ) -> bool {
        if self.registry.get(task).is_none() {
            return false;
        }
        let mut o = lock(&self.overrides);
        let entry = o.entry(task.to_owned()).or_default();
        entry.soft = soft;
        entry.hard = hard;
        true
    }

    /// Sets or clears (`None`) the rate limit of a task name (the `rate_limit` control
    /// command). False for a task this worker does not know.
    pub(crate) fn set_rate_limit(&self, task: &str, rate: Option<RateLimit>) -> bool {
        if self.registry.get(task).is_none() {
            return false;
        }
        lock(&self.overrides)
            .entry(task.to_owned())
            .or_default()
            .rate = rate.map(Arc::new);
        true
    }

    /// The rate limit of a task name, if any.
    pub(crate) fn rate_limit(&self, task: &str) -> Option<Arc<RateLimit>> {
        lock(&self.overrides).get(task).and_then(|o| o.rate.clone())
    }

    /// Soft and hard limits of a message: its own, else the task's (control command),
    /// else the worker's defaults.
    fn time_limits(&self, m: &TaskMessage) -> (Duration, Duration) {
        let own = |s: Option<f64>| {
            s.filter(|s| s.is_finite() && *s > 0.0)
                .map(Duration::from_secs_f64)
        };
        let (task_soft, task_hard) = lock(&self.overrides)
            .get(&m.task)
            .map(|o| (o.soft, o.hard))
            .unwrap_or_default();
        let jobs = self.jobs();
        (
            own(m.soft_time_limit)
                .or(task_soft)
                .unwrap_or(jobs.soft_time_limit),
            own(m.hard_time_limit)
                .or(task_hard)
                .unwrap_or(jobs.hard_time_limit),
        )
    }

    /// Begins a warm shutdown (the `shutdown` control command), as SIGTERM does.
    pub(crate) fn request_shutdown(&self) {
        tracing::warn!("got shutdown from remote; warm shutdown");
        self.stop();
    }

    pub(crate) fn totals(&self) -> HashMap<String, u64> {
        lock(&self.totals).clone()
    }

    pub(crate) fn processed(&self) -> u64 {
        self.counters.processed.load(Ordering::Relaxed)
    }

    pub(crate) fn registered(&self) -> Vec<String> {
        self.registry.names()
    }

    fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    async fn stopped(&self) {
        loop {
            let notified = self.stop_notify.notified();
            if self.is_stopping() {
                return;
            }
            notified.await;
        }
    }

    fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        self.stop_notify.notify_waiters();
        self.wake.notify_waiters();
    }

    fn jobs(&self) -> &crate::config::JobsConfig {
        &self.backend.config().jobs
    }

    fn submit(&self, f: Finish) {
        self.pending_finishes.fetch_add(1, Ordering::AcqRel);
        if self.finisher.send(f).is_err() {
            self.pending_finishes.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn task_fields(m: &TaskMessage) -> Value {
        json!({
            "uuid": m.id, "name": m.task, "args": args_repr(&m.args),
            "kwargs": kwargs_repr(&m.kwargs),
            "root_id": m.root_id, "parent_id": m.parent_id, "retries": m.retries,
            "eta": m.eta.map(iso), "expires": m.expires.map(iso),
        })
    }

    /// Stores a terminal or retry result and acks, in one step.
    fn conclude(
        &self,
        m: &TaskMessage,
        tag: &str,
        state: TaskState,
        result: &Value,
        traceback: Option<&str>,
        push: Option<(String, String)>,
    ) {
        let stored = (!m.ignore_result || state != TaskState::Success)
            .then(|| meta(m, state, result, traceback, &self.hostname));
        self.submit(Finish {
            tag: tag.to_owned(),
            task_id: m.id.clone(),
            result: stored,
            push,
        });
    }

    fn fail(&self, m: &TaskMessage, tag: &str, exc: &PyException, runtime: Option<f64>) {
        let tb = exc.traceback(&m.task);
        self.conclude(m, tag, TaskState::Failure, &exc.to_json(), Some(&tb), None);
        self.counters.failed.fetch_add(1, Ordering::Relaxed);
        self.events.task(
            "task-failed",
            json!({"uuid": m.id, "exception": exc.repr(), "traceback": tb, "runtime": runtime}),
        );
        let mut c = job_change(m, JobStatus::Failure);
        c.worker = Some(self.hostname.clone());
        c.error = Some(format!("{}: {}", exc.kind, exc.message));
        c.attempts = c.attempts.saturating_add(1);
        self.backend.audit().job(c);
    }

    fn revoked(&self, m: &TaskMessage, tag: &str, why: Revocation) {
        let exc = PyException::new("celery.exceptions", "TaskRevokedError", why.reason());
        self.conclude(m, tag, TaskState::Revoked, &exc.to_json(), None, None);
        self.counters.revoked.fetch_add(1, Ordering::Relaxed);
        let terminated = why == Revocation::Terminated;
        self.events.task(
            "task-revoked",
            json!({
                "uuid": m.id, "terminated": terminated,
                "signum": if terminated { json!(15) } else { Value::Null },
                "expired": why == Revocation::Expired,
            }),
        );
        let mut c = job_change(m, JobStatus::Revoked);
        c.worker = Some(self.hostname.clone());
        if why != Revocation::Revoked {
            c.error = Some(why.reason().to_owned());
        }
        self.backend.audit().job(c);
    }
}

/// A worker. Build with [`Worker::new`], then [`Worker::run`] (until a shutdown signal) or
/// [`Worker::run_until_idle`] (tests: until the queues are empty and nothing is in hand).
#[derive(Debug)]
pub struct Worker {
    backend: AiBackend,
    registry: TaskRegistry,
    options: WorkerOptions,
}

/// Releases one prefetch slot when dropped.
struct Slot(Option<Arc<Semaphore>>);

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            s.add_permits(1);
        }
    }
}

impl Worker {
    /// A worker over `backend` running the handlers of `registry`.
    pub fn new(backend: AiBackend, registry: TaskRegistry, options: WorkerOptions) -> Self {
        Self {
            backend,
            registry,
            options,
        }
    }

    /// The node name this worker will use.
    pub fn hostname(&self) -> String {
        let host = crate::jobs::protocol::hostname();
        match &self.options.hostname {
            Some(h) => h.replace("%h", &host),
            None => format!("xenios-{}@{host}", std::process::id()),
        }
    }

    /// Runs until `shutdown` resolves, then shuts down warmly.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<WorkerSummary> {
        self.run_inner(shutdown, false).await
    }

    /// Runs until the queues are empty and nothing is in hand (ETA jobs included), then
    /// stops. Keeps tests deterministic without sleeps.
    pub async fn run_until_idle(self) -> Result<WorkerSummary> {
        self.run_inner(std::future::pending(), true).await
    }

    async fn run_inner(
        self,
        shutdown: impl Future<Output = ()> + Send,
        until_idle: bool,
    ) -> Result<WorkerSummary> {
        let queues: Vec<String> = self
            .options
            .queues
            .iter()
            .map(|q| q.trim().to_owned())
            .filter(|q| !q.is_empty())
            .collect();
        if queues.is_empty() || !queues.iter().all(|q| crate::jobs::valid_queue_name(q)) {
            return Err(Error::Validation(
                "queues must be names of [A-Za-z0-9_.:-]".to_owned(),
            ));
        }
        let hostname = self.hostname();
        let concurrency = self.options.concurrency.max(1);
        let prefetch = concurrency * self.options.prefetch_multiplier.max(1);
        let state = self.backend.jobs_state();
        let client = state.client()?.clone();
        let db = state.db;
        // The worker's own connection (pipelined, shared by its tasks), with a response
        // timeout that tolerates a loaded machine better than the pool's default 500 ms.
        let conn = client
            .get_multiplexed_async_connection_with_config(
                &redis::AsyncConnectionConfig::new()
                    .set_response_timeout(Some(crate::jobs::REDIS_REPLY_TIMEOUT))
                    .set_connection_timeout(Some(Duration::from_secs(5))),
            )
            .await
            .map_err(redis_error)?;
        let clock = Arc::new(Clock::default());
        let events = EventSender::start(
            self.backend.redis().clone(),
            db,
            hostname.clone(),
            clock.clone(),
            self.backend.config().jobs.task_events,
        );
        let (ftx, frx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            keys: broker::consume_keys(&queues),
            backend: self.backend.clone(),
            registry: self.registry,
            hostname: hostname.clone(),
            queues: queues.clone(),
            concurrency,
            prefetch,
            conn,
            events,
            clock,
            hand: Mutex::new(Hand::default()),
            revoked: Mutex::new(Revoked::default()),
            totals: Mutex::new(HashMap::new()),
            running: Mutex::new(HashMap::new()),
            overrides: Mutex::new(HashMap::new()),
            counters: Counters::default(),
            exec: Arc::new(Semaphore::new(concurrency)),
            prefetch_sem: Arc::new(Semaphore::new(prefetch)),
            finisher: ftx,
            finisher_idle: Notify::new(),
            pending_finishes: AtomicU64::new(0),
            wake: Notify::new(),
            stopping: AtomicBool::new(false),
            stop_notify: Notify::new(),
            hand_changed: Notify::new(),
            started: Instant::now(),
            db,
        });
        {
            let mut c = shared.conn.clone();
            broker::load_scripts(&mut c).await?;
            broker::declare_queues(&mut c, &queues).await?;
            let restored =
                broker::restore_visible(&mut c, shared.jobs().visibility_timeout).await?;
            if restored > 0 {
                tracing::warn!(restored, "restored messages of lost workers");
            }
        }
        let finisher = tokio::spawn(finisher_loop(shared.clone(), frx));
        let notifications = enable_notifications(&shared.conn).await;
        let listener = tokio::spawn(listen(shared.clone(), client));
        let heartbeat = tokio::spawn(heartbeat_loop(shared.clone()));
        shared
            .events
            .send_now("worker-online", worker_fields(0, 0))
            .await;
        tracing::info!(
            hostname = %hostname, queues = ?queues, concurrency,
            tasks = ?shared.registry.names(), "worker ready"
        );
        let poll = if notifications {
            Duration::from_secs(1)
        } else {
            Duration::from_millis(50)
        };
        let fetch = fetch_loop(shared.clone(), poll, until_idle);
        tokio::pin!(fetch);
        tokio::pin!(shutdown);
        let fetch_result = tokio::select! {
            r = &mut fetch => r,
            () = &mut shutdown => {
                tracing::info!("warm shutdown: no new jobs; finishing those running");
                // Let the fetcher finish its step: a take in flight must not be dropped.
                shared.stop();
                fetch.await
            }
        };
        // Warm shutdown.
        let give_back: Vec<String> = {
            let mut hand = shared.hand();
            hand.closing = true;
            hand.reserved
                .keys()
                .chain(hand.scheduled.keys())
                .cloned()
                .collect()
        };
        shared.stop();
        loop {
            let changed = shared.hand_changed.notified();
            if shared.hand().active.is_empty() {
                break;
            }
            changed.await;
        }
        {
            let mut c = shared.conn.clone();
            match broker::give_back(&mut c, &give_back).await {
                Ok(n) => {
                    shared
                        .counters
                        .given_back
                        .fetch_add(n as u64, Ordering::Relaxed);
                    if n > 0 {
                        tracing::info!(n, "put reserved and scheduled jobs back on their queues");
                    }
                }
                Err(e) => tracing::error!(
                    error = %e,
                    "could not put jobs back; they stay in unacked and will be restored"
                ),
            }
        }
        loop {
            let idle = shared.finisher_idle.notified();
            if shared.pending_finishes.load(Ordering::Acquire) == 0 {
                break;
            }
            idle.await;
        }
        listener.abort();
        heartbeat.abort();
        finisher.abort();
        shared
            .events
            .send_now(
                "worker-offline",
                worker_fields(0, shared.counters.processed.load(Ordering::Relaxed)),
            )
            .await;
        shared.events.flush().await;
        // Job rows are not worth hanging a stopping worker: Postgres may be what is down.
        self.backend.flush_audit_within(AUDIT_FLUSH_TIMEOUT).await;
        let c = &shared.counters;
        let summary = WorkerSummary {
            processed: c.processed.load(Ordering::Relaxed),
            succeeded: c.succeeded.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            retried: c.retried.load(Ordering::Relaxed),
            revoked: c.revoked.load(Ordering::Relaxed),
            dead_lettered: c.dead_lettered.load(Ordering::Relaxed),
            given_back: c.given_back.load(Ordering::Relaxed),
        };
        tracing::info!(?summary, "worker stopped");
        fetch_result.map(|()| summary)
    }
}

/// Turns on keyspace notifications for lists, when the server allows CONFIG.
async fn enable_notifications(conn: &MultiplexedConnection) -> bool {
    let mut c = conn.clone();
    let current: std::result::Result<Vec<String>, _> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("notify-keyspace-events")
        .query_async(&mut c)
        .await;
    let flags = match current {
        Ok(v) => v.get(1).cloned().unwrap_or_default(),
        Err(e) => {
            tracing::info!(error = %e, "no CONFIG access: polling queues every 50 ms");
            return false;
        }
    };
    let has_k = flags.contains('K');
    let has_l = flags.contains('l') || flags.contains('A');
    if has_k && has_l {
        return true;
    }
    let mut wanted = flags.clone();
    if !has_k {
        wanted.push('K');
    }
    if !has_l {
        wanted.push('l');
    }
    let set: std::result::Result<(), _> = redis::cmd("CONFIG")
        .arg("SET")
        .arg("notify-keyspace-events")
        .arg(&wanted)
        .query_async(&mut c)
        .await;
    match set {
        Ok(()) => true,
        Err(e) => {
            tracing::info!(error = %e, "cannot enable keyspace notifications: polling every 50 ms");
            false
        }
    }
}

/// Keyspace notifications (wake the fetcher) and pidbox requests, on a dedicated connection.
async fn listen(shared: Arc<Shared>, client: redis::Client) {
    use futures::StreamExt;
    let pidbox_channel = crate::jobs::events::fanout_channel(shared.db, "celery.pidbox", "");
    let mut backoff = Duration::from_millis(100);
    loop {
        let attempt = async {
            let mut pubsub = client.get_async_pubsub().await?;
            for q in &shared.queues {
                pubsub
                    .psubscribe(format!("__keyspace@{}__:{q}*", shared.db))
                    .await?;
            }
            pubsub.subscribe(&pidbox_channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        match attempt.await {
            Ok(pubsub) => {
                backoff = Duration::from_millis(100);
                // Anything pushed while we were not listening.
                shared.wake.notify_one();
                let mut stream = pubsub.into_on_message();
                while let Some(msg) = stream.next().await {
                    let channel = msg.get_channel_name();
                    if channel == pidbox_channel {
                        let payload = msg.get_payload_bytes().to_vec();
                        let shared = shared.clone();
                        tokio::spawn(async move { pidbox::handle(&shared, &payload).await });
                    } else if matches!(msg.get_payload_bytes(), b"lpush" | b"rpush") {
                        shared.wake.notify_one();
                    }
                }
                tracing::warn!("pub/sub connection lost; reconnecting");
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot subscribe; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn heartbeat_loop(shared: Arc<Shared>) {
    let vt = shared.jobs().visibility_timeout;
    let restore_every = (vt / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
    let mut last_restore = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(HEARTBEAT_FREQ));
    tick.tick().await;
    loop {
        tick.tick().await;
        let (active, tags) = {
            let hand = shared.hand();
            let tags: Vec<String> = hand
                .reserved
                .keys()
                .chain(hand.active.keys())
                .chain(hand.scheduled.keys())
                .cloned()
                .collect();
            (hand.active.len(), tags)
        };
        shared
            .events
            .send_now(
                "worker-heartbeat",
                worker_fields(active, shared.processed()),
            )
            .await;
        let mut c = shared.conn.clone();
        if let Err(e) = broker::touch(&mut c, &tags).await {
            tracing::warn!(error = %e, "cannot refresh held messages");
        }
        if last_restore.elapsed() >= restore_every {
            last_restore = Instant::now();
            match broker::restore_visible(&mut c, vt).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::warn!(restored = n, "restored messages of lost workers");
                    shared.wake.notify_one();
                }
                Err(e) => tracing::warn!(error = %e, "restore of lost messages failed"),
            }
        }
    }
}

async fn finisher_loop(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Finish>) {
    let mut batch = Vec::with_capacity(256);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < 256 {
            match rx.try_recv() {
                Ok(f) => batch.push(f),
                Err(_) => break,
            }
        }
        let ttl = shared.jobs().result_expires;
        let mut backoff = Duration::from_millis(50);
        loop {
            let mut c = shared.conn.clone();
            match broker::finish(&mut c, &batch, ttl).await {
                Ok(()) => break,
                Err(e) => {
                    // Results are never dropped: the messages stay unacked meanwhile.
                    tracing::error!(error = %e, n = batch.len(), "cannot store results; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        let n = batch.len() as u64;
        batch.clear();
        if shared.pending_finishes.fetch_sub(n, Ordering::AcqRel) == n {
            shared.finisher_idle.notify_waiters();
        }
    }
}

async fn fetch_loop(shared: Arc<Shared>, poll: Duration, until_idle: bool) -> Result<()> {
    let mut backoff = Duration::from_millis(50);
    loop {
        if shared.is_stopping() {
            return Ok(());
        }
        // Wait for at least one free prefetch slot.
        let first = tokio::select! {
            p = shared.prefetch_sem.clone().acquire_owned() => p,
            () = shared.stopped() => return Ok(()),
        };
        let Ok(first) = first else { return Ok(()) };
        first.forget();
        let mut slots = 1usize;
        let extra = shared.prefetch_sem.available_permits().min(255);
        if extra > 0
            && let Ok(p) = shared
                .prefetch_sem
                .clone()
                .try_acquire_many_owned(extra as u32)
        {
            p.forget();
            slots += extra;
        }
        let mut c = shared.conn.clone();
        let wake = shared.wake.notified();
        // Idle is judged before the take: anything a pending finish pushes (a retry) is
        // on the queue by the time the take runs.
        let idle_before = until_idle
            && shared.hand().len() == 0
            && shared.pending_finishes.load(Ordering::Acquire) == 0;
        let taken = broker::take(&mut c, &shared.keys, slots).await;
        let taken = match taken {
            Ok(t) => {
                backoff = Duration::from_millis(50);
                t
            }
            Err(e) => {
                shared.prefetch_sem.add_permits(slots);
                tracing::warn!(error = %e, "cannot take messages; retrying");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {},
                    () = shared.stopped() => return Ok(()),
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let unused = slots - taken.len().min(slots);
        if unused > 0 {
            shared.prefetch_sem.add_permits(unused);
        }
        if taken.is_empty() {
            if idle_before {
                return Ok(());
            }
            let changed = shared.hand_changed.notified();
            tokio::select! {
                () = wake => {},
                () = tokio::time::sleep(poll) => {},
                () = changed, if until_idle => {},
                () = shared.stopped() => return Ok(()),
            }
            continue;
        }
        dispatch(&shared, taken).await;
    }
}

async fn dispatch(shared: &Arc<Shared>, taken: Vec<Taken>) {
    let mut messages = Vec::with_capacity(taken.len());
    for t in taken {
        match t {
            Taken::Dead { raw } => {
                shared.prefetch_sem.add_permits(1);
                shared
                    .counters
                    .dead_lettered
                    .fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    bytes = raw.len(),
                    list = broker::DEAD_LETTER_KEY,
                    "rejected a message without a delivery tag (not a kombu envelope); moved to the dead-letter list"
                );
            }
            Taken::Message { tag, raw } => match TaskMessage::decode(raw.as_bytes()) {
                Ok(m) => messages.push((tag, m)),
                Err(e) => {
                    shared.prefetch_sem.add_permits(1);
                    reject_undecodable(shared, &tag, &raw, &e).await;
                }
            },
        }
    }
    if messages.is_empty() {
        return;
    }
    // Revocations recorded in Redis (by producers, or while this worker was not running).
    let revoked: Vec<bool> = {
        let mut pipe = redis::pipe();
        for (_, m) in &messages {
            pipe.cmd("EXISTS").arg(format!("{REVOKED_PREFIX}{}", m.id));
        }
        let mut c = shared.conn.clone();
        pipe.query_async(&mut c)
            .await
            .unwrap_or_else(|_| vec![false; messages.len()])
    };
    let now = Utc::now();
    for ((tag, m), in_redis) in messages.into_iter().zip(revoked) {
        let slot = Slot(Some(shared.prefetch_sem.clone()));
        let fields = Shared::task_fields(&m);
        shared.events.task("task-received", fields);
        if in_redis || lock(&shared.revoked).contains(&m.id) {
            tracing::info!(task_id = %m.id, task = %m.task, "discarding revoked task");
            shared.revoked(&m, &tag, Revocation::Revoked);
            continue;
        }
        if m.expires.is_some_and(|e| e <= now) {
            tracing::info!(task_id = %m.id, task = %m.task, "discarding expired task");
            shared.revoked(&m, &tag, Revocation::Expired);
            continue;
        }
        if shared.registry.get(&m.task).is_none() {
            tracing::error!(
                task_id = %m.id, task = %m.task, queue = %m.queue,
                "received unregistered task; storing NotRegistered failure and dropping the message"
            );
            shared
                .events
                .task("task-rejected", json!({"uuid": m.id, "requeue": false}));
            let exc = PyException::new(
                "celery.exceptions",
                "NotRegistered",
                format!("'{}'", m.task),
            );
            shared.fail(&m, &tag, &exc, None);
            continue;
        }
        let held = Held {
            message: Arc::new(m),
            started: None,
        };
        match held.message.eta.filter(|eta| *eta > now) {
            Some(eta) => {
                drop(slot); // ETA jobs do not count against prefetch.
                shared.hand().scheduled.insert(tag.clone(), held);
                let shared = shared.clone();
                tokio::spawn(async move {
                    let wait = (eta - Utc::now()).to_std().unwrap_or_default();
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {},
                        () = shared.stopped() => return,
                    }
                    let held = {
                        let mut hand = shared.hand();
                        if hand.closing {
                            return;
                        }
                        match hand.scheduled.remove(&tag) {
                            Some(h) => {
                                hand.reserved.insert(tag.clone(), h.clone());
                                h
                            }
                            None => return,
                        }
                    };
                    execute(shared, tag, held, Slot(None)).await;
                });
            }
            None => {
                shared.hand().reserved.insert(tag.clone(), held.clone());
                tokio::spawn(execute(shared.clone(), tag, held, slot));
            }
        }
    }
}

async fn reject_undecodable(
    shared: &Shared,
    tag: &str,
    raw: &str,
    e: &crate::jobs::protocol::DecodeError,
) {
    shared
        .counters
        .dead_lettered
        .fetch_add(1, Ordering::Relaxed);
    tracing::error!(
        task_id = ?e.id, task = ?e.task, reason = %e.reason, list = broker::DEAD_LETTER_KEY,
        "rejected an undecodable task message; moved to the dead-letter list"
    );
    let mut c = shared.conn.clone();
    if let Some(id) = &e.id {
        let mut m = TaskMessage::new(e.task.clone().unwrap_or_default(), "");
        m.id = id.clone();
        let exc = PyException::new("kombu.exceptions", "DecodeError", e.reason.clone());
        let result = meta(
            &m,
            TaskState::Failure,
            &exc.to_json(),
            Some(&exc.traceback(&m.task)),
            &shared.hostname,
        );
        let f = Finish {
            tag: String::new(),
            task_id: id.clone(),
            result: Some(result),
            push: None,
        };
        if let Err(err) = broker::finish(&mut c, &[f], shared.jobs().result_expires).await {
            tracing::error!(error = %err, "cannot store the failure of an undecodable message");
        }
        shared
            .events
            .task("task-rejected", json!({"uuid": id, "requeue": false}));
    }
    if let Err(err) = broker::dead_letter(&mut c, tag, raw).await {
        tracing::error!(error = %err, "cannot move an undecodable message; it stays in unacked");
    }
}

enum Outcome {
    Done(std::result::Result<Value, TaskError>),
    Panicked(String),
    HardLimit(f64),
    Terminated,
}

async fn execute(shared: Arc<Shared>, tag: String, held: Held, slot: Slot) {
    let m = held.message.clone();
    // A rate-limited task waits here, still reserved, without taking an execution slot.
    if let Some(rate) = shared.rate_limit(&m.task) {
        tokio::select! {
            () = rate.limiter.until_ready() => {},
            () = shared.stopped() => return,
        }
    }
    let permit = tokio::select! {
        p = shared.exec.clone().acquire_owned() => p,
        () = shared.stopped() => return,
    };
    let Ok(permit) = permit else { return };
    let Some(handler) = shared.registry.get(&m.task) else {
        return;
    };
    // Registered as running before the revocation check: a `revoke(terminate=True)` either
    // finds it here or has flagged it already.
    let stop = Arc::new(Notify::new());
    lock(&shared.running).insert(m.id.clone(), stop.clone());
    let revoked_meanwhile = lock(&shared.revoked).contains(&m.id);
    let started = now_ts();
    {
        let mut hand = shared.hand();
        if hand.closing {
            drop(hand);
            lock(&shared.running).remove(&m.id);
            return;
        }
        let h = hand.reserved.remove(&tag);
        if let (Some(mut h), false) = (h, revoked_meanwhile) {
            h.started = Some(started);
            hand.active.insert(tag.clone(), h);
        }
    }
    if revoked_meanwhile {
        lock(&shared.running).remove(&m.id);
        tracing::info!(task_id = %m.id, task = %m.task, "discarding a task revoked while reserved");
        shared.revoked(&m, &tag, Revocation::Revoked);
        drop(permit);
        drop(slot);
        shared.hand_changed.notify_waiters();
        return;
    }
    shared.events.task("task-started", json!({"uuid": m.id}));
    let mut started_row = job_change(&m, JobStatus::Started);
    started_row.worker = Some(shared.hostname.clone());
    started_row.attempts = started_row.attempts.saturating_add(1);
    shared.backend.audit().job(started_row);

    let jobs = shared.jobs();
    let (soft, hard) = shared.time_limits(&m);
    let (soft_tx, soft_rx) = watch::channel(false);
    let ctx = TaskContext {
        task_id: m.id.clone(),
        task_name: m.task.clone(),
        retries: m.retries,
        correlation_id: m.correlation_id.clone(),
        user_id: m.user_id.clone(),
        backend: shared.backend.clone(),
        soft: soft_rx,
    };
    let clock = Instant::now();
    let fut = AssertUnwindSafe(handler(ctx, m.args.clone(), m.kwargs.clone())).catch_unwind();
    tokio::pin!(fut);
    let soft_sleep = tokio::time::sleep(soft);
    let hard_sleep = tokio::time::sleep(hard);
    let terminated = stop.notified();
    tokio::pin!(soft_sleep, hard_sleep, terminated);
    let mut soft_fired = false;
    let outcome = loop {
        tokio::select! {
            r = &mut fut => break match r {
                Ok(r) => Outcome::Done(r),
                Err(panic) => Outcome::Panicked(
                    panic.downcast_ref::<&str>().map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "panic".to_owned())),
            },
            () = &mut soft_sleep, if !soft_fired => {
                soft_fired = true;
                tracing::warn!(task_id = %m.id, task = %m.task, limit_secs = soft.as_secs_f64(), "soft time limit exceeded");
                let _ = soft_tx.send(true);
            }
            () = &mut hard_sleep => break Outcome::HardLimit(hard.as_secs_f64()),
            () = &mut terminated => break Outcome::Terminated,
        }
    };
    lock(&shared.running).remove(&m.id);
    let runtime = clock.elapsed().as_secs_f64();
    *lock(&shared.totals).entry(m.task.clone()).or_insert(0) += 1;
    shared.counters.processed.fetch_add(1, Ordering::Relaxed);
    match outcome {
        Outcome::Done(Ok(value)) => {
            shared.conclude(&m, &tag, TaskState::Success, &value, None, None);
            shared.counters.succeeded.fetch_add(1, Ordering::Relaxed);
            if shared.events.task_events() {
                shared.events.task(
                    "task-succeeded",
                    json!({"uuid": m.id, "result": py_repr(&value), "runtime": runtime}),
                );
            }
            let mut c = job_change(&m, JobStatus::Success);
            c.worker = Some(shared.hostname.clone());
            c.attempts = c.attempts.saturating_add(1);
            shared.backend.audit().job(c);
        }
        Outcome::Done(Err(TaskError::Retry {
            reason,
            countdown,
            max_retries,
        })) => {
            let max = max_retries.unwrap_or(jobs.max_retries);
            if m.retries >= max {
                tracing::warn!(task_id = %m.id, task = %m.task, retries = m.retries, "max retries exceeded");
                let exc = PyException::new(
                    "celery.exceptions",
                    "MaxRetriesExceededError",
                    format!(
                        "Can't retry {}[{}] args:{} kwargs:{}: {reason}",
                        m.task,
                        m.id,
                        args_repr(&m.args),
                        kwargs_repr(&m.kwargs)
                    ),
                );
                shared.fail(&m, &tag, &exc, Some(runtime));
            } else {
                let delay = countdown.unwrap_or_else(|| {
                    Duration::from_secs(2u64.saturating_pow(m.retries).min(600))
                });
                let eta = Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
                let next = m.next_attempt(Some(eta));
                let exc = PyException::new(
                    "celery.exceptions",
                    "Retry",
                    format!("Retry in {}s: {reason}", delay.as_secs_f64()),
                );
                let tb = exc.traceback(&m.task);
                shared.conclude(
                    &m,
                    &tag,
                    TaskState::Retry,
                    &exc.to_json(),
                    Some(&tb),
                    Some(broker::outgoing(&next)),
                );
                shared.counters.retried.fetch_add(1, Ordering::Relaxed);
                shared.events.task(
                    "task-retried",
                    json!({"uuid": m.id, "exception": exc.repr(), "traceback": tb}),
                );
                let mut c = job_change(&m, JobStatus::Retry);
                c.worker = Some(shared.hostname.clone());
                c.error = Some(reason);
                c.attempts = c.attempts.saturating_add(1);
                shared.backend.audit().job(c);
            }
        }
        Outcome::Done(Err(TaskError::SoftTimeLimitExceeded)) => {
            let exc = PyException::new(
                "billiard.exceptions",
                "SoftTimeLimitExceeded",
                format!("{}", soft.as_secs_f64()),
            );
            shared.fail(&m, &tag, &exc, Some(runtime));
        }
        Outcome::Done(Err(TaskError::Failed {
            module,
            kind,
            message,
        })) => {
            tracing::info!(task_id = %m.id, task = %m.task, error = %message, "task failed");
            shared.fail(
                &m,
                &tag,
                &PyException::new(&module, &kind, message),
                Some(runtime),
            );
        }
        Outcome::Panicked(msg) => {
            tracing::error!(task_id = %m.id, task = %m.task, panic = %msg, "task handler panicked");
            let exc = PyException::new(
                "builtins",
                "RuntimeError",
                format!("task handler panicked: {msg}"),
            );
            shared.fail(&m, &tag, &exc, Some(runtime));
        }
        Outcome::Terminated => {
            tracing::warn!(task_id = %m.id, task = %m.task, "terminated by revoke; handler stopped");
            shared.revoked(&m, &tag, Revocation::Terminated);
        }
        Outcome::HardLimit(secs) => {
            tracing::error!(task_id = %m.id, task = %m.task, limit_secs = secs, "hard time limit exceeded; handler stopped");
            let exc = PyException::new(
                "billiard.exceptions",
                "TimeLimitExceeded",
                format!("{secs}"),
            );
            shared.fail(&m, &tag, &exc, Some(runtime));
        }
    }
    shared.hand().active.remove(&tag);
    drop(permit);
    drop(slot);
    shared.hand_changed.notify_waiters();
}

#[cfg(test)]
mod tests {
    use super::RateLimit;

    #[test]
    fn rate_limits_parse_like_kombus_rate() {
        for (spec, enabled) in [
            ("10/s", true),
            ("100/m", true),
            ("1000/h", true),
            ("5", true),
            ("0.5/sec", true),
            ("0", false),
            ("0/m", false),
        ] {
            let parsed = RateLimit::parse(spec).unwrap_or_else(|e| panic!("{spec}: {e}"));
            assert_eq!(parsed.is_some(), enabled, "{spec}");
        }
        for bad in ["fast", "10/d", "-1/s", "NaN", "", "1e300/s"] {
            assert!(RateLimit::parse(bad).is_err(), "{bad}");
        }
    }
}
