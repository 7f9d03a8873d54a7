//! The job queue against real Redis and Postgres: routing, priority, ETA, expiry, retries,
//! time limits, result shapes (checked against captured Celery traffic), malformed input,
//! revoke, the HTTP and CLI surfaces, and the real worker binary killed or stopped mid-job.
//!
//! The shared helpers are here; the tests are in `queue` (the queue's rules, with an
//! in-process worker), `surfaces` (HTTP and CLI) and `process` (the real worker binary
//! killed, stopped, or cut off from Postgres).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod process;
mod queue;
mod surfaces;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use xenios_tests::cli::run_cli;

use serde_json::{Value, json};
use xenios_core::jobs::TaskMessage;
use xenios_core::jobs::{
    EnqueueRequest, JobState, TaskContext, TaskError, TaskRegistry, Worker, WorkerOptions, tasks,
};
use xenios_core::redis::redis;
use xenios_core::{AiBackend, CorrelationId, RequestContext};
use xenios_tests::jobs_support::{ChildWorker, backend_on, count, vars_for, wait_taken};
use xenios_tests::{API_KEY, TestApp, TestDb, TestRedis, wait_for};

const CELERY_RESULT_KEYS: [&str; 6] = [
    "status",
    "result",
    "traceback",
    "children",
    "date_done",
    "task_id",
];

fn opts(queues: &[&str], concurrency: usize) -> WorkerOptions {
    WorkerOptions {
        queues: queues.iter().map(|q| (*q).to_owned()).collect(),
        concurrency,
        hostname: Some("test@%h".to_owned()),
        prefetch_multiplier: 1,
    }
}

/// A worker with the built-in tasks on `default`, running until the sender is used or dropped.
fn spawn_builtin_worker(
    backend: &AiBackend,
    concurrency: usize,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<xenios_core::Result<xenios_core::jobs::WorkerSummary>>,
) {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let worker = Worker::new(
        backend.clone(),
        tasks::builtin_registry(&backend.config().jobs),
        opts(&["default"], concurrency),
    );
    (
        tx,
        tokio::spawn(worker.run(async {
            let _ = rx.await;
        })),
    )
}

fn ctx(id: &str) -> RequestContext {
    RequestContext::new(
        CorrelationId::parse(id).unwrap(),
        xenios_core::auth::Principal::Service,
    )
}

async fn drain(backend: &AiBackend, registry: TaskRegistry, queues: &[&str], c: usize) {
    tokio::time::timeout(
        Duration::from_secs(30),
        Worker::new(backend.clone(), registry, opts(queues, c)).run_until_idle(),
    )
    .await
    .expect("worker did not go idle in time")
    .unwrap();
}
