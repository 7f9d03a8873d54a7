//! State shared by the worker's tasks and read by the pidbox: messages in hand,
//! revocations, per-task overrides, counters, and the ways a job is concluded.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::{Value, json};
use tokio::sync::{Notify, Semaphore, mpsc};

use super::deps::WorkerDeps;
use crate::jobs::JobState;
use crate::jobs::broker::Finish;
use crate::jobs::events::{Clock, EventSender};
use crate::jobs::job_change;
use crate::jobs::protocol::{TaskMessage, args_repr, iso, kwargs_repr};
use crate::jobs::result::{PyException, meta};

use super::handler::TaskRegistry;
use super::limits::RateLimit;
use super::link::RedisLink;

#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) processed: AtomicU64,
    pub(super) succeeded: AtomicU64,
    pub(super) failed: AtomicU64,
    pub(super) retried: AtomicU64,
    pub(super) revoked: AtomicU64,
    pub(super) dead_lettered: AtomicU64,
    pub(super) given_back: AtomicU64,
    pub(super) unregistered: AtomicU64,
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
    pub(super) closing: bool,
}

impl Hand {
    pub(super) fn len(&self) -> usize {
        self.reserved.len() + self.active.len() + self.scheduled.len()
    }
}

#[derive(Debug, Default)]
pub(crate) struct Revoked {
    pub(super) set: HashSet<String>,
    pub(super) order: VecDeque<String>,
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
    pub(super) fn reason(self) -> &'static str {
        match self {
            Self::Revoked => "revoked",
            Self::Expired => "expired",
            Self::Terminated => "terminated",
        }
    }
}
/// Limits of one task name set at run time.
#[derive(Debug, Default)]
pub(crate) struct TaskOverrides {
    pub(super) soft: Option<Duration>,
    pub(super) hard: Option<Duration>,
    pub(super) rate: Option<Arc<RateLimit>>,
}

/// State shared by the worker's tasks (and read by the pidbox).
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) deps: WorkerDeps,
    pub(super) registry: TaskRegistry,
    pub(crate) hostname: String,
    pub(crate) queues: Vec<String>,
    pub(super) keys: Vec<(String, String)>,
    pub(crate) concurrency: usize,
    pub(crate) prefetch: usize,
    pub(crate) link: RedisLink,
    pub(crate) events: EventSender,
    pub(crate) clock: Arc<Clock>,
    pub(crate) hand: Mutex<Hand>,
    pub(crate) revoked: Mutex<Revoked>,
    pub(crate) totals: Mutex<HashMap<String, u64>>,
    /// Handlers running now, by task id: `revoke(terminate=True)` stops them.
    pub(super) running: Mutex<HashMap<String, Arc<Notify>>>,
    /// Time and rate limits per task name, set by the `time_limit` and `rate_limit`
    /// control commands (Celery's, sent by `celery control` or Flower).
    pub(super) overrides: Mutex<HashMap<String, TaskOverrides>>,
    pub(super) counters: Counters,
    pub(super) exec: Arc<Semaphore>,
    pub(super) prefetch_sem: Arc<Semaphore>,
    pub(super) finisher: mpsc::Sender<Finish>,
    pub(super) finisher_idle: Notify,
    pub(super) pending_finishes: AtomicU64,
    pub(super) wake: Notify,
    pub(super) stopping: AtomicBool,
    pub(super) stop_notify: Notify,
    pub(super) hand_changed: Notify,
    /// Set when the shutdown deadline passed: running handlers are dropped unconcluded
    /// (their messages were given back).
    pub(super) abandoned: AtomicBool,
    pub(super) abandon_notify: Notify,
    /// Set when Redis stayed unreachable longer than `WORKER_REDIS_GIVE_UP_SECS`.
    pub(super) gave_up: AtomicBool,
    pub(crate) started: Instant,
    /// The Redis database number (of `REDIS_URL`), part of fanout channel names.
    pub(crate) redis_db: i64,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(super) fn now_ts() -> f64 {
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
    pub(super) fn time_limits(&self, m: &TaskMessage) -> (Duration, Duration) {
        // A message's own limits are hostile input: NaN, negative and zero mean "unset",
        // anything above `JOB_MAX_TIME_LIMIT_SECS` is cut to it (1e9 would disable the hard
        // limit; 1e20 does not even fit a Duration).
        let max = self.jobs().max_time_limit;
        let own = |s: Option<f64>| s.and_then(|s| crate::jobs::time_limit(s, max));
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

    pub(super) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    pub(super) async fn stopped(&self) {
        loop {
            let notified = self.stop_notify.notified();
            if self.is_stopping() {
                return;
            }
            notified.await;
        }
    }

    pub(super) fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        self.stop_notify.notify_waiters();
        self.wake.notify_waiters();
    }

    /// Drops running handlers without concluding them (the shutdown deadline passed).
    pub(super) fn abandon(&self) {
        self.abandoned.store(true, Ordering::Release);
        self.abandon_notify.notify_waiters();
    }

    pub(super) async fn abandoned(&self) {
        loop {
            let notified = self.abandon_notify.notified();
            if self.abandoned.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    /// Unregistered tasks met so far (pidbox `stats`).
    pub(crate) fn unregistered(&self) -> u64 {
        self.counters.unregistered.load(Ordering::Relaxed)
    }

    pub(super) fn jobs(&self) -> &crate::config::JobsConfig {
        &self.deps.jobs_config
    }

    /// Hands a finished delivery to the finisher; waits while its queue is full
    /// (backpressure on execution).
    pub(super) async fn submit(&self, f: Finish) {
        self.pending_finishes.fetch_add(1, Ordering::AcqRel);
        if self.finisher.send(f).await.is_err() {
            self.pending_finishes.fetch_sub(1, Ordering::AcqRel);
        }
    }

    pub(super) fn task_fields(m: &TaskMessage) -> Value {
        json!({
            "uuid": m.id, "name": m.task, "args": args_repr(&m.args),
            "kwargs": kwargs_repr(&m.kwargs),
            "root_id": m.root_id, "parent_id": m.parent_id, "retries": m.retries,
            "eta": m.eta.map(iso), "expires": m.expires.map(iso),
        })
    }

    /// Stores a terminal or retry result and acks, in one step.
    pub(super) async fn conclude(
        &self,
        m: &TaskMessage,
        tag: &str,
        state: JobState,
        result: &Value,
        traceback: Option<&str>,
        push: Option<(String, String)>,
    ) {
        let stored = (!m.ignore_result || state != JobState::Success)
            .then(|| meta(m, state, result, traceback, &self.hostname));
        self.submit(Finish {
            tag: tag.to_owned(),
            task_id: m.id.clone(),
            result: stored,
            push,
        })
        .await;
    }

    pub(super) async fn fail(
        &self,
        m: &TaskMessage,
        tag: &str,
        exc: &PyException,
        runtime: Option<f64>,
    ) {
        let tb = exc.traceback(&m.task);
        self.conclude(m, tag, JobState::Failure, &exc.to_json(), Some(&tb), None)
            .await;
        self.counters.failed.fetch_add(1, Ordering::Relaxed);
        // Sentry (when configured) gets the exception's type only: its text may quote the job's
        // input, which never leaves the backend.
        crate::telemetry::report_job_failure(
            &m.task,
            &m.id,
            m.correlation_id.as_deref(),
            &format!("{}.{}", exc.module, exc.kind),
        );
        self.events.task(
            "task-failed",
            || json!({"uuid": m.id, "exception": exc.repr(), "traceback": tb, "runtime": runtime}),
        );
        let mut c = job_change(m, JobState::Failure);
        c.worker = Some(self.hostname.clone());
        c.error = Some(format!("{}: {}", exc.kind, exc.message));
        c.attempts = c.attempts.saturating_add(1);
        self.deps.audit_writer().job(c);
    }

    pub(super) async fn revoked(&self, m: &TaskMessage, tag: &str, why: Revocation) {
        let exc = PyException::new("celery.exceptions", "TaskRevokedError", why.reason());
        self.conclude(m, tag, JobState::Revoked, &exc.to_json(), None, None)
            .await;
        self.counters.revoked.fetch_add(1, Ordering::Relaxed);
        let terminated = why == Revocation::Terminated;
        self.events.task("task-revoked", || {
            json!({
                "uuid": m.id, "terminated": terminated,
                "signum": if terminated { json!(15) } else { Value::Null },
                "expired": why == Revocation::Expired,
            })
        });
        let mut c = job_change(m, JobState::Revoked);
        c.worker = Some(self.hostname.clone());
        if why != Revocation::Revoked {
            c.error = Some(why.reason().to_owned());
        }
        self.deps.audit_writer().job(c);
    }
}

/// Releases one prefetch slot when dropped.
pub(super) struct Slot(pub(super) Option<Arc<Semaphore>>);

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            s.add_permits(1);
        }
    }
}
