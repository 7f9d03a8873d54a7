//! The finisher: stores results, pushes retries and acks, in batches, item by item.
//!
//! A batch goes to Redis in one round trip, but each item succeeds or fails on its own
//! ([`broker::finish_each`]): one item Redis refuses (a `WRONGTYPE` key, `OOM` at
//! `maxmemory`) never holds up the others. A refused item is tried again a few times, then
//! dead-lettered with a FAILURE result. When the connection fails, nobody knows which items
//! ran: they are tried again with backoff until Redis answers, but an item carrying a retry
//! is pushed again only if its message is still unacked (the push and the ack are one
//! atomic step, so an acked message has been pushed already).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use backon::BackoffBuilder;
use tokio::sync::mpsc;

use crate::jobs::JobState;
use crate::jobs::broker::{self, Finish};
use crate::jobs::protocol::TaskMessage;
use crate::jobs::result::{PyException, meta};

use super::state::Shared;

/// Finished deliveries waiting for the finisher; executions wait when it is full.
pub(super) const FINISH_QUEUE: usize = 1024;
/// Largest batch sent in one round trip.
const BATCH: usize = 256;
/// Times Redis may refuse one item before it is dead-lettered.
const ITEM_ATTEMPTS: u32 = 3;

struct Item {
    finish: Finish,
    refused: u32,
}

pub(super) async fn finisher_loop(shared: Arc<Shared>, mut rx: mpsc::Receiver<Finish>) {
    let mut batch: Vec<Item> = Vec::with_capacity(BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(Item {
            finish: first,
            refused: 0,
        });
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(f) => batch.push(Item {
                    finish: f,
                    refused: 0,
                }),
                Err(_) => break,
            }
        }
        let n = batch.len() as u64;
        finish_batch(&shared, &mut batch).await;
        batch.clear();
        if shared.pending_finishes.fetch_sub(n, Ordering::AcqRel) == n {
            shared.finisher_idle.notify_waiters();
        }
    }
}

/// Finishes every item of `batch` (or dead-letters it), however long Redis takes to answer.
async fn finish_batch(shared: &Shared, batch: &mut Vec<Item>) {
    let ttl = shared.jobs().result_expires;
    let mut backoff = backon::ExponentialBuilder::default()
        .with_min_delay(std::time::Duration::from_millis(50))
        .with_max_delay(std::time::Duration::from_secs(2))
        .without_max_times()
        .build();
    let mut uncertain = false;
    while !batch.is_empty() {
        let mut c = shared.link.conn();
        if uncertain {
            // The last round trip failed midway: items that ran are acked by now, and a
            // retry push must not happen twice.
            let tags: Vec<&str> = batch.iter().map(|i| i.finish.tag.as_str()).collect();
            match shared
                .link
                .track(broker::still_unacked(&mut c, &tags).await)
            {
                Ok(unacked) => {
                    let mut keep = unacked.into_iter();
                    batch.retain(|i| {
                        let still = keep.next().unwrap_or(true);
                        still || i.finish.tag.is_empty() || i.finish.push.is_none()
                    });
                    uncertain = false;
                }
                Err(e) => {
                    tracing::error!(error = %e, n = batch.len(), "cannot store results; retrying");
                    tokio::time::sleep(backoff.next().unwrap_or_default()).await;
                    continue;
                }
            }
        }
        let items: Vec<Finish> = batch.iter().map(|i| i.finish.clone()).collect();
        match shared
            .link
            .track(broker::finish_each(&mut c, &items, ttl).await)
        {
            Ok(outcomes) => {
                let mut refused = Vec::new();
                let mut outcomes = outcomes.into_iter();
                batch.retain_mut(|item| match outcomes.next() {
                    Some(Err(e)) => {
                        item.refused += 1;
                        tracing::error!(
                            error = %e, task_id = %item.finish.task_id, attempt = item.refused,
                            "Redis refused to finish a delivery"
                        );
                        if item.refused >= ITEM_ATTEMPTS {
                            refused.push((item.finish.clone(), e));
                            false
                        } else {
                            true
                        }
                    }
                    _ => false,
                });
                for (f, e) in refused {
                    dead_letter(shared, &f, &e.to_string()).await;
                }
                if !batch.is_empty() {
                    tokio::time::sleep(backoff.next().unwrap_or_default()).await;
                }
            }
            Err(e) => {
                // Results are never dropped: the messages stay unacked meanwhile.
                tracing::error!(error = %e, n = batch.len(), "cannot store results; retrying");
                uncertain = true;
                tokio::time::sleep(backoff.next().unwrap_or_default()).await;
            }
        }
    }
}

/// An item Redis keeps refusing: its message goes to the dead-letter list and a FAILURE
/// result is stored in place of the one that could not be, when Redis takes it.
async fn dead_letter(shared: &Shared, f: &Finish, error: &str) {
    shared
        .counters
        .dead_lettered
        .fetch_add(1, Ordering::Relaxed);
    tracing::error!(
        task_id = %f.task_id, error, list = broker::DEAD_LETTER_KEY,
        "cannot finish a delivery; moved it to the dead-letter list with a FAILURE result"
    );
    let mut c = shared.link.conn();
    let mut m = TaskMessage::new("", "");
    m.id = f.task_id.clone();
    let exc = PyException::new(
        "kombu.exceptions",
        "OperationalError",
        format!("the worker could not store this task's outcome: {error}"),
    );
    let failure = Finish {
        tag: String::new(),
        task_id: f.task_id.clone(),
        result: Some(meta(
            &m,
            JobState::Failure,
            &exc.to_json(),
            None,
            &shared.hostname,
        )),
        push: None,
    };
    let ttl = shared.jobs().result_expires;
    match broker::finish_each(&mut c, &[failure], ttl).await {
        Ok(o) if o.iter().all(Result::is_ok) => {}
        Ok(o) => {
            tracing::error!(outcome = ?o, task_id = %f.task_id, "cannot store the FAILURE either")
        }
        Err(e) => {
            tracing::error!(error = %e, task_id = %f.task_id, "cannot store the FAILURE either")
        }
    }
    if !f.tag.is_empty()
        && let Err(e) = broker::dead_letter_tag(&mut c, &f.tag).await
    {
        tracing::error!(error = %e, "cannot dead-letter the delivery; it stays in unacked");
    }
}
