//! Executing one message: rate limit, concurrency slot, time limits, revocation, outcome.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::FutureExt;
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};
use tracing::Instrument;

use crate::jobs::JobState;
use crate::jobs::broker;
use crate::jobs::job_change;
use crate::jobs::protocol::{args_repr, kwargs_repr, py_repr};
use crate::jobs::result::PyException;

use super::handler::{TaskContext, TaskError};
use super::state::{Held, Revocation, Shared, Slot, lock, now_ts};

pub(super) enum Outcome {
    Done(std::result::Result<Value, TaskError>),
    Panicked(String),
    HardLimit(f64),
    Terminated,
}

/// Runs one message inside a span naming its task id, task name and correlation ID, so
/// every log line of the job (the handler's included) carries them.
pub(super) async fn execute(shared: Arc<Shared>, tag: String, held: Held, slot: Slot) {
    let m = &held.message;
    // Joins the producer's W3C `traceparent` (ours or opentelemetry-instrumentation-celery's)
    // when traces are exported, so the job is a child of the request that enqueued it.
    let span = crate::telemetry::job_span(
        &m.task,
        &m.id,
        m.correlation_id.as_deref(),
        &m.extra_headers,
    );
    execute_inner(shared, tag, held, slot)
        .instrument(span)
        .await;
}

async fn execute_inner(shared: Arc<Shared>, tag: String, held: Held, slot: Slot) {
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
        shared.revoked(&m, &tag, Revocation::Revoked).await;
        drop(permit);
        drop(slot);
        shared.hand_changed.notify_waiters();
        return;
    }
    shared.events.task("task-started", || json!({"uuid": m.id}));
    let mut started_row = job_change(&m, JobState::Started);
    started_row.worker = Some(shared.hostname.clone());
    started_row.attempts = started_row.attempts.saturating_add(1);
    shared.deps.audit_writer().job(started_row);

    let jobs = shared.jobs();
    let (soft, hard) = shared.time_limits(&m);
    let (soft_tx, soft_rx) = watch::channel(false);
    let ctx = TaskContext {
        task_id: m.id.clone(),
        task_name: m.task.clone(),
        retries: m.retries,
        correlation_id: m.correlation_id.clone(),
        user_id: m.user_id.clone(),
        llm: shared.deps.llm.clone(),
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
            () = shared.abandoned() => {
                // The shutdown deadline passed and the message was given back: the
                // handler is dropped and nothing is concluded (another worker runs it).
                lock(&shared.running).remove(&m.id);
                tracing::warn!(task_id = %m.id, task = %m.task, "abandoned at the shutdown deadline; the message is back on its queue");
                return;
            }
        }
    };
    lock(&shared.running).remove(&m.id);
    let runtime = clock.elapsed().as_secs_f64();
    *lock(&shared.totals).entry(m.task.clone()).or_insert(0) += 1;
    shared.counters.processed.fetch_add(1, Ordering::Relaxed);
    match outcome {
        Outcome::Done(Ok(value)) => {
            shared
                .conclude(&m, &tag, JobState::Success, &value, None, None)
                .await;
            shared.counters.succeeded.fetch_add(1, Ordering::Relaxed);
            shared.events.task(
                "task-succeeded",
                || json!({"uuid": m.id, "result": py_repr(&value), "runtime": runtime}),
            );
            let mut c = job_change(&m, JobState::Success);
            c.worker = Some(shared.hostname.clone());
            c.attempts = c.attempts.saturating_add(1);
            shared.deps.audit_writer().job(c);
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
                shared.fail(&m, &tag, &exc, Some(runtime)).await;
            } else {
                // A handler's countdown is capped like a producer's (a year).
                let delay = countdown
                    .unwrap_or_else(|| Duration::from_secs(2u64.saturating_pow(m.retries).min(600)))
                    .min(crate::jobs::MAX_DELAY);
                let eta = Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
                let next = m.next_attempt(Some(eta));
                let exc = PyException::new(
                    "celery.exceptions",
                    "Retry",
                    format!("Retry in {}s: {reason}", delay.as_secs_f64()),
                );
                let tb = exc.traceback(&m.task);
                shared
                    .conclude(
                        &m,
                        &tag,
                        JobState::Retry,
                        &exc.to_json(),
                        Some(&tb),
                        Some(broker::outgoing(&next)),
                    )
                    .await;
                shared.counters.retried.fetch_add(1, Ordering::Relaxed);
                shared.events.task(
                    "task-retried",
                    || json!({"uuid": m.id, "exception": exc.repr(), "traceback": tb}),
                );
                let mut c = job_change(&m, JobState::Retry);
                c.worker = Some(shared.hostname.clone());
                c.error = Some(reason);
                c.attempts = c.attempts.saturating_add(1);
                shared.deps.audit_writer().job(c);
            }
        }
        Outcome::Done(Err(TaskError::SoftTimeLimitExceeded)) => {
            let exc = PyException::new(
                "billiard.exceptions",
                "SoftTimeLimitExceeded",
                format!("{}", soft.as_secs_f64()),
            );
            shared.fail(&m, &tag, &exc, Some(runtime)).await;
        }
        Outcome::Done(Err(TaskError::Failed {
            module,
            kind,
            message,
        })) => {
            tracing::info!(task_id = %m.id, task = %m.task, error = %message, "task failed");
            shared
                .fail(
                    &m,
                    &tag,
                    &PyException::new(&module, &kind, message),
                    Some(runtime),
                )
                .await;
        }
        Outcome::Panicked(msg) => {
            tracing::error!(task_id = %m.id, task = %m.task, panic = %msg, "task handler panicked");
            let exc = PyException::new(
                "builtins",
                "RuntimeError",
                format!("task handler panicked: {msg}"),
            );
            shared.fail(&m, &tag, &exc, Some(runtime)).await;
        }
        Outcome::Terminated => {
            tracing::warn!(task_id = %m.id, task = %m.task, "terminated by revoke; handler stopped");
            shared.revoked(&m, &tag, Revocation::Terminated).await;
        }
        Outcome::HardLimit(secs) => {
            tracing::error!(task_id = %m.id, task = %m.task, limit_secs = secs, "hard time limit exceeded; handler stopped");
            let exc = PyException::new(
                "billiard.exceptions",
                "TimeLimitExceeded",
                format!("{secs}"),
            );
            shared.fail(&m, &tag, &exc, Some(runtime)).await;
        }
    }
    shared.hand().active.remove(&tag);
    drop(permit);
    drop(slot);
    shared.hand_changed.notify_waiters();
}
