//! Fetching: take messages within the prefetch budget, reject what cannot be run, hand
//! the rest to [`super::execute`] (now, or at their ETA).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use backon::Retryable;
use chrono::Utc;
use serde_json::json;

use crate::error::Result;
use crate::jobs::JobState;
use crate::jobs::REVOKED_PREFIX;
use crate::jobs::broker::{self, Finish, Taken};
use crate::jobs::protocol::{DecodeError, TaskMessage};
use crate::jobs::result::{PyException, meta};

use super::execute::execute;
use super::state::{Held, Revocation, Shared, Slot, lock};

pub(super) async fn fetch_loop(
    shared: Arc<Shared>,
    poll: Duration,
    until_idle: bool,
) -> Result<()> {
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
        let wake = shared.wake.notified();
        // Idle is judged before the take: anything a pending finish pushes (a retry) is
        // on the queue by the time the take runs.
        let idle_before = until_idle
            && shared.hand().len() == 0
            && shared.pending_finishes.load(Ordering::Acquire) == 0;
        // Redis down or restarting: take again with backoff (at most 1 s apart, so that
        // draining resumes soon after it is back) until it answers or the worker stops.
        let take = || async {
            let mut c = shared.link.conn();
            shared
                .link
                .track(broker::take(&mut c, &shared.keys, slots).await)
        };
        let taken = take
            .retry(
                backon::ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(50))
                    .with_max_delay(Duration::from_secs(1))
                    .with_jitter()
                    .without_max_times(),
            )
            .sleep(tokio::time::sleep)
            .when(|_| !shared.is_stopping())
            .notify(|e, after| {
                tracing::warn!(error = %e, retry_in_ms = after.as_millis() as u64, "cannot take messages; retrying");
            })
            .await;
        let taken = match taken {
            Ok(t) => t,
            Err(_) => {
                shared.prefetch_sem.add_permits(slots);
                return Ok(());
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

pub(super) async fn dispatch(shared: &Arc<Shared>, taken: Vec<Taken>) {
    let mut messages = Vec::with_capacity(taken.len());
    for Taken { tag, raw } in taken {
        match TaskMessage::decode(raw.as_bytes()) {
            Ok(m) if raw.len() > shared.jobs().max_message_bytes => {
                shared.prefetch_sem.add_permits(1);
                let e = DecodeError {
                    reason: format!(
                        "the message is {} bytes; the limit is {} (JOB_MAX_MESSAGE_BYTES)",
                        raw.len(),
                        shared.jobs().max_message_bytes
                    ),
                    id: Some(m.id),
                    task: Some(m.task),
                    delivery_tag: Some(m.delivery_tag),
                };
                reject_undecodable(shared, &tag, &raw, &e).await;
            }
            Ok(mut m) => {
                if m.queue.is_empty() {
                    // Without a routing key a retry would be pushed to the empty key.
                    m.queue = source_queue(shared, &tag).await;
                }
                messages.push((tag, m, raw));
            }
            Err(e) => {
                shared.prefetch_sem.add_permits(1);
                reject_undecodable(shared, &tag, &raw, &e).await;
            }
        }
    }
    if messages.is_empty() {
        return;
    }
    // Revocations recorded in Redis (by producers, or while this worker was not running).
    // One MGET for the batch (a key of another type reads as absent).
    let revoked: Vec<bool> = {
        let mut mget = redis::cmd("MGET");
        for (_, m, _) in &messages {
            mget.arg(format!("{REVOKED_PREFIX}{}", m.id));
        }
        let mut c = shared.link.conn();
        mget.query_async::<Vec<Option<Vec<u8>>>>(&mut c)
            .await
            .ok()
            .filter(|found| found.len() == messages.len())
            .map(|found| found.iter().map(Option::is_some).collect())
            .unwrap_or_else(|| vec![false; messages.len()])
    };
    let now = Utc::now();
    for ((tag, m, raw), in_redis) in messages.into_iter().zip(revoked) {
        let slot = Slot(Some(shared.prefetch_sem.clone()));
        shared
            .events
            .task("task-received", || Shared::task_fields(&m));
        if in_redis || lock(&shared.revoked).contains(&m.id) {
            tracing::info!(task_id = %m.id, task = %m.task, "discarding revoked task");
            shared.revoked(&m, &tag, Revocation::Revoked).await;
            continue;
        }
        if m.expires.is_some_and(|e| e <= now) {
            tracing::info!(task_id = %m.id, task = %m.task, "discarding expired task");
            shared.revoked(&m, &tag, Revocation::Expired).await;
            continue;
        }
        if shared.registry.get(&m.task).is_none() {
            tracing::error!(
                task_id = %m.id, task = %m.task, queue = %m.queue,
                list = broker::DEAD_LETTER_KEY,
                "received unregistered task; storing NotRegistered failure and dead-lettering the message"
            );
            shared.counters.unregistered.fetch_add(1, Ordering::Relaxed);
            shared
                .counters
                .dead_lettered
                .fetch_add(1, Ordering::Relaxed);
            let mut c = shared.link.conn();
            if let Err(e) = broker::dead_letter(&mut c, &tag, &raw).await {
                tracing::error!(error = %e, "cannot dead-letter an unregistered task; acking it");
            }
            shared
                .events
                .task("task-rejected", || json!({"uuid": m.id, "requeue": false}));
            let exc = PyException::new(
                "celery.exceptions",
                "NotRegistered",
                format!("'{}'", m.task),
            );
            shared.fail(&m, &tag, &exc, None).await;
            continue;
        }
        let held = Held {
            message: Arc::new(m),
            started: None,
        };
        match held.message.eta.filter(|eta| *eta > now) {
            Some(eta) => {
                // ETA jobs do not count against prefetch, up to `JOB_MAX_ETA_HELD` of them:
                // past that they keep their slot, and the rest wait in Redis.
                let slot = {
                    let mut hand = shared.hand();
                    let held_slot = if hand.scheduled.len() < shared.jobs().max_eta_held {
                        drop(slot);
                        Slot(None)
                    } else {
                        slot
                    };
                    hand.scheduled.insert(tag.clone(), held);
                    held_slot
                };
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
                    execute(shared, tag, held, slot).await;
                });
            }
            None => {
                shared.hand().reserved.insert(tag.clone(), held.clone());
                tokio::spawn(execute(shared.clone(), tag, held, slot));
            }
        }
    }
}

pub(super) async fn reject_undecodable(
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
    let mut c = shared.link.conn();
    if let Some(id) = &e.id {
        let mut m = TaskMessage::new(e.task.clone().unwrap_or_default(), "");
        m.id = id.clone();
        let exc = PyException::new("kombu.exceptions", "DecodeError", e.reason.clone());
        let result = meta(
            &m,
            JobState::Failure,
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
            .task("task-rejected", || json!({"uuid": id, "requeue": false}));
    }
    if let Err(err) = broker::dead_letter(&mut c, tag, raw).await {
        tracing::error!(error = %err, "cannot move an undecodable message; it stays in unacked");
    }
}

/// The queue a message without a routing key was taken from: the one queue consumed, or the
/// routing key `take` recorded with it in `unacked`, or the default queue.
async fn source_queue(shared: &Shared, tag: &str) -> String {
    if let [only] = shared.queues.as_slice() {
        return only.clone();
    }
    let mut c = shared.link.conn();
    match broker::unacked_routing_key(&mut c, tag).await {
        Ok(Some(q)) => q,
        _ => shared
            .queues
            .first()
            .cloned()
            .unwrap_or_else(|| shared.jobs().default_queue.clone()),
    }
}
