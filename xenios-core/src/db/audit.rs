//! The background writer of audit rows (`inference_logs`, `job_queue_metadata`).
//!
//! Request paths and the worker's hot path must not wait for Postgres, so they hand rows to
//! a bounded channel ([`AuditWriter::inference`], [`AuditWriter::job`] never block) and one
//! task writes them in batches: rows that arrive within `AUDIT_BATCH_LINGER_MS` of the first
//! (or queued while the previous batch was being written) go in together, as one multi-row
//! statement per table. When the channel is
//! full or Postgres stays down past a few retries, rows are dropped and counted in
//! [`AuditStats`]; nothing else slows down. A backend built without a database
//! ([`AuditWriter::discarding`]) drops and counts every row at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::sql_types::{Array, Int4, Nullable, Text, Timestamptz};
use serde::Serialize;
use tokio::sync::{Notify, mpsc, oneshot};

use super::models::{JobStateChange, NewInferenceLog};
use super::schema::inference_logs;
use super::{DbError, PgPool};
use crate::jobs::JobState;

/// Most rows written in one statement.
const MAX_BATCH: usize = 500;
/// Attempts per batch before its rows are counted as failed.
const WRITE_ATTEMPTS: u32 = 3;

/// Counters of the writer, for `/metrics` and tests.
#[derive(Debug, Default)]
pub struct AuditStats {
    queued: AtomicU64,
    written: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
}

/// A snapshot of the audit writer's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct AuditStatsSnapshot {
    /// Rows accepted into the queue.
    pub queued: u64,
    /// Rows written to Postgres.
    pub written: u64,
    /// Rows refused because the queue was full (or the writer had stopped).
    pub dropped: u64,
    /// Rows given up on after repeated write errors.
    pub failed: u64,
}

impl AuditStats {
    /// Current values.
    pub fn snapshot(&self) -> AuditStatsSnapshot {
        AuditStatsSnapshot {
            queued: self.queued.load(Ordering::Relaxed),
            written: self.written.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

enum Command {
    Inference(Box<NewInferenceLog>),
    Job(Box<JobStateChange>),
    Flush(oneshot::Sender<()>),
}

/// Handle to the background writer. Cheap to clone.
#[derive(Clone)]
pub struct AuditWriter {
    /// None without a database: rows are dropped and counted, nothing is queued.
    tx: Option<mpsc::Sender<Command>>,
    stats: Arc<AuditStats>,
    /// Cuts the writer's batching wait short for a flush.
    flushing: Arc<Notify>,
    /// The writer task, stopped by [`AuditWriter::stop`].
    task: Option<tokio::task::AbortHandle>,
}

impl std::fmt::Debug for AuditWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditWriter")
            .field("stats", &self.stats.snapshot())
            .finish()
    }
}

impl AuditWriter {
    /// Starts the writer task on the current Tokio runtime. Without a runtime, every row is
    /// counted as dropped instead.
    pub fn start(pool: PgPool, capacity: usize, linger: Duration) -> Self {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let stats = Arc::new(AuditStats::default());
        let flushing = Arc::new(Notify::new());
        let task = match tokio::runtime::Handle::try_current() {
            Ok(handle) => Some(
                handle
                    .spawn(run(pool, rx, stats.clone(), linger, flushing.clone()))
                    .abort_handle(),
            ),
            Err(_) => {
                tracing::error!("no Tokio runtime: audit rows will be dropped");
                drop(rx);
                None
            }
        };
        Self {
            tx: Some(tx),
            stats,
            flushing,
            task,
        }
    }

    /// A writer for a backend without a database: every row is counted as dropped at once
    /// (no task, no queue, no log line per row), and flushes return at once.
    pub fn discarding() -> Self {
        Self {
            tx: None,
            stats: Arc::new(AuditStats::default()),
            flushing: Arc::new(Notify::new()),
            task: None,
        }
    }

    /// Stops the writer task (shutdown; flush first): rows queued later are dropped and
    /// counted.
    pub fn stop(&self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }

    /// False for a [`AuditWriter::discarding`] writer.
    pub fn has_database(&self) -> bool {
        self.tx.is_some()
    }

    /// Queues an inference log row; never waits.
    pub fn inference(&self, row: NewInferenceLog) {
        self.send(Command::Inference(Box::new(row)));
    }

    /// Queues a job state change; never waits.
    pub fn job(&self, change: JobStateChange) {
        self.send(Command::Job(Box::new(change)));
    }

    fn send(&self, cmd: Command) {
        let Some(tx) = &self.tx else {
            // No database: dropping is the configured behaviour, not an incident to log.
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        match tx.try_send(cmd) {
            Ok(()) => {
                self.stats.queued.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                let dropped = self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                // One line per thousand, not per row: a full queue must not flood the log.
                if dropped.is_multiple_of(1000) {
                    tracing::warn!(dropped = dropped + 1, "audit queue full: rows dropped");
                }
            }
        }
    }

    /// Waits until every row queued before this call has been written (or given up on).
    /// With Postgres unreachable this can take a connect timeout per batch: processes that
    /// are stopping use [`AuditWriter::flush_within`]. Without a database it returns at once.
    pub async fn flush(&self) {
        let Some(queue) = &self.tx else { return };
        let (tx, rx) = oneshot::channel();
        if queue.send(Command::Flush(tx)).await.is_ok() {
            self.flushing.notify_one();
            let _ = rx.await;
        }
    }

    /// [`AuditWriter::flush`], but gives up after `timeout`: then logs how many rows are
    /// still queued (they are lost when the process exits) and returns false.
    pub async fn flush_within(&self, timeout: Duration) -> bool {
        if tokio::time::timeout(timeout, self.flush()).await.is_ok() {
            return true;
        }
        let s = self.stats();
        tracing::warn!(
            unwritten = s.queued.saturating_sub(s.written + s.failed),
            written = s.written,
            failed = s.failed,
            dropped = s.dropped,
            "audit rows still queued after {} s (is Postgres reachable?)",
            timeout.as_secs_f64()
        );
        false
    }

    /// The writer's counters.
    pub fn stats(&self) -> AuditStatsSnapshot {
        self.stats.snapshot()
    }
}

/// Lets rows gather for `linger` after the first, then takes what has queued (up to a
/// full batch). The writer sleeps meanwhile instead of waking for every row: a wake-up per
/// request is CPU taken from the requests. A flush ends the wait at once.
async fn linger_for_more(
    rx: &mut mpsc::Receiver<Command>,
    batch: &mut Vec<Command>,
    linger: Duration,
    flushing: &Notify,
) {
    let has_flush = batch.iter().any(|c| matches!(c, Command::Flush(_)));
    if linger.is_zero() || has_flush || batch.len() >= MAX_BATCH {
        return;
    }
    tokio::select! {
        () = tokio::time::sleep(linger) => {},
        () = flushing.notified() => {},
    }
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(c) => batch.push(c),
            Err(_) => break,
        }
    }
}

async fn run(
    pool: PgPool,
    mut rx: mpsc::Receiver<Command>,
    stats: Arc<AuditStats>,
    linger: Duration,
    flushing: Arc<Notify>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    // After a batch failed every attempt, Postgres counts as down: later batches get one
    // attempt each (no backoff), so an outage costs one connect timeout per batch instead
    // of several, and the queue keeps moving. The first success ends it.
    let mut down = false;
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        linger_for_more(&mut rx, &mut batch, linger, &flushing).await;
        let mut inference = Vec::new();
        let mut jobs: Vec<JobStateChange> = Vec::new();
        let mut waiters = Vec::new();
        for cmd in batch.drain(..) {
            match cmd {
                Command::Inference(row) => inference.push(*row),
                Command::Job(change) => jobs.push(*change),
                Command::Flush(w) => waiters.push(w),
            }
        }
        if !inference.is_empty() {
            let result = with_retries(attempts(down), || write_inference(&pool, &inference)).await;
            down = account(&stats, inference.len(), result, "inference_logs rows lost");
        }
        if !jobs.is_empty() {
            let n = jobs.len();
            let merged = merge_jobs(jobs);
            let result = with_retries(attempts(down), || write_jobs(&pool, &merged)).await;
            down = account(&stats, n, result, "job_queue_metadata changes lost");
        }
        for w in waiters {
            let _ = w.send(());
        }
    }
}

/// Write attempts per batch: one while Postgres counts as down.
fn attempts(down: bool) -> u32 {
    if down { 1 } else { WRITE_ATTEMPTS }
}

/// Counts a batch of `n` rows as written or failed; true when it failed (Postgres down).
fn account(stats: &AuditStats, n: usize, result: Result<(), DbError>, lost: &str) -> bool {
    let n = n as u64;
    match result {
        Ok(()) => {
            stats.written.fetch_add(n, Ordering::Relaxed);
            false
        }
        Err(e) => {
            tracing::error!(rows = n, error = %e, "{lost}");
            stats.failed.fetch_add(n, Ordering::Relaxed);
            true
        }
    }
}

async fn with_retries<F, Fut>(attempts: u32, mut write: F) -> Result<(), DbError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), DbError>>,
{
    use backon::Retryable;
    // 100 ms, then four times longer each time: 100, 400, 1600 ms...
    let backoff = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_factor(4.0)
        .without_max_delay()
        .with_max_times(usize::try_from(attempts.saturating_sub(1)).unwrap_or(usize::MAX));
    let mut attempt = 0u32;
    (|| {
        attempt += 1;
        let attempt = attempt;
        let written = write();
        async move {
            written.await.inspect_err(|e| {
                tracing::warn!(attempt, error = %e, "audit write failed");
            })
        }
    })
    .retry(backoff)
    .sleep(tokio::time::sleep)
    .await
}

async fn write_inference(pool: &PgPool, rows: &[NewInferenceLog]) -> Result<(), DbError> {
    use diesel_async::RunQueryDsl;
    let mut conn = pool.get().await.map_err(DbError::Pool)?;
    // Several rows of one call may repeat an id only if a caller reused a row: skip those.
    diesel::insert_into(inference_logs::table)
        .values(rows)
        .on_conflict_do_nothing()
        .execute(&mut conn)
        .await
        .map(|_| ())
        .map_err(DbError::query)
}

/// A job's changes within one batch, folded together, with the time it first started.
struct MergedJob {
    change: JobStateChange,
    started_at: Option<DateTime<Utc>>,
}

/// Folds changes of the same job together (one statement cannot update a row twice).
fn merge_jobs(changes: Vec<JobStateChange>) -> Vec<MergedJob> {
    let mut order: Vec<String> = Vec::new();
    let mut by_id: HashMap<String, MergedJob> = HashMap::new();
    for c in changes {
        let started = (c.status == JobState::Started).then_some(c.at);
        match by_id.get_mut(&c.task_id) {
            Some(m) => {
                m.started_at = m.started_at.or(started);
                m.change.absorb(c);
            }
            None => {
                order.push(c.task_id.clone());
                by_id.insert(
                    c.task_id.clone(),
                    MergedJob {
                        change: c,
                        started_at: started,
                    },
                );
            }
        }
    }
    order
        .into_iter()
        .filter_map(|id| by_id.remove(&id))
        .collect()
}

/// One upsert for the whole batch, with the same precedence rules as
/// [`JobStateChange::absorb`] so that late or reordered events never move a job backwards.
const UPSERT_JOBS: &str = r#"
INSERT INTO ai_backend.job_queue_metadata AS j
    (task_id, task_name, queue, status, args_digest, attempts, enqueued_at, started_at,
     finished_at, worker, error, correlation_id, user_id, updated_at, owner)
SELECT t.task_id, t.task_name, t.queue, t.status, t.args_digest, t.attempts,
       t.at, t.started_at, t.finished_at, t.worker, t.error, t.correlation_id,
       t.user_id::uuid, t.at, t.owner
  FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int4[],
              $7::timestamptz[], $8::timestamptz[], $9::timestamptz[], $10::text[],
              $11::text[], $12::text[], $13::text[], $14::text[])
    AS t(task_id, task_name, queue, status, args_digest, attempts, at, started_at,
         finished_at, worker, error, correlation_id, user_id, owner)
ON CONFLICT (task_id) DO UPDATE SET
    status = CASE
        WHEN j.status IN ('success', 'failure', 'revoked') THEN j.status
        WHEN EXCLUDED.status IN ('success', 'failure', 'revoked') THEN EXCLUDED.status
        WHEN EXCLUDED.updated_at >= j.updated_at THEN EXCLUDED.status
        ELSE j.status END,
    task_name = CASE WHEN j.task_name = 'unknown' THEN EXCLUDED.task_name ELSE j.task_name END,
    queue = CASE WHEN j.queue = 'unknown' THEN EXCLUDED.queue ELSE j.queue END,
    args_digest = COALESCE(j.args_digest, EXCLUDED.args_digest),
    attempts = GREATEST(j.attempts, EXCLUDED.attempts),
    enqueued_at = LEAST(j.enqueued_at, EXCLUDED.enqueued_at),
    started_at = COALESCE(j.started_at, EXCLUDED.started_at),
    finished_at = COALESCE(EXCLUDED.finished_at, j.finished_at),
    worker = COALESCE(EXCLUDED.worker, j.worker),
    error = COALESCE(EXCLUDED.error, j.error),
    correlation_id = COALESCE(j.correlation_id, EXCLUDED.correlation_id),
    user_id = COALESCE(j.user_id, EXCLUDED.user_id),
    owner = COALESCE(j.owner, EXCLUDED.owner),
    updated_at = GREATEST(j.updated_at, EXCLUDED.updated_at)
"#;

/// The batch as column arrays, for `unnest`.
#[derive(Default)]
struct JobColumns {
    task_id: Vec<String>,
    task_name: Vec<String>,
    queue: Vec<String>,
    status: Vec<String>,
    args_digest: Vec<Option<String>>,
    attempts: Vec<i32>,
    at: Vec<DateTime<Utc>>,
    started_at: Vec<Option<DateTime<Utc>>>,
    finished_at: Vec<Option<DateTime<Utc>>>,
    worker: Vec<Option<String>>,
    error: Vec<Option<String>>,
    correlation_id: Vec<Option<String>>,
    user_id: Vec<Option<String>>,
    owner: Vec<Option<String>>,
}

async fn write_jobs(pool: &PgPool, changes: &[MergedJob]) -> Result<(), DbError> {
    use diesel_async::RunQueryDsl;
    let mut cols = JobColumns::default();
    for MergedJob {
        change: c,
        started_at,
    } in changes
    {
        cols.task_id.push(c.task_id.clone());
        cols.task_name.push(c.task_name.clone());
        cols.queue.push(c.queue.clone());
        cols.status.push(c.status.db_name().to_owned());
        cols.args_digest.push(c.args_digest.clone());
        cols.attempts.push(c.attempts.max(0));
        cols.at.push(c.at);
        cols.started_at.push(*started_at);
        cols.finished_at.push(c.status.is_ready().then_some(c.at));
        cols.worker.push(c.worker.clone());
        cols.error.push(match (&c.error, &c.redact) {
            (Some(e), Some(q)) if !q.is_empty() => Some(e.replace(q.as_str(), "")),
            (e, _) => e.clone(),
        });
        cols.correlation_id.push(c.correlation_id.clone());
        cols.user_id.push(c.user_id.map(|u| u.to_string()));
        cols.owner.push(c.owner.clone());
    }
    let mut conn = pool.get().await.map_err(DbError::Pool)?;
    diesel::sql_query(UPSERT_JOBS)
        .bind::<Array<Text>, _>(cols.task_id)
        .bind::<Array<Text>, _>(cols.task_name)
        .bind::<Array<Text>, _>(cols.queue)
        .bind::<Array<Text>, _>(cols.status)
        .bind::<Array<Nullable<Text>>, _>(cols.args_digest)
        .bind::<Array<Int4>, _>(cols.attempts)
        .bind::<Array<Timestamptz>, _>(cols.at)
        .bind::<Array<Nullable<Timestamptz>>, _>(cols.started_at)
        .bind::<Array<Nullable<Timestamptz>>, _>(cols.finished_at)
        .bind::<Array<Nullable<Text>>, _>(cols.worker)
        .bind::<Array<Nullable<Text>>, _>(cols.error)
        .bind::<Array<Nullable<Text>>, _>(cols.correlation_id)
        .bind::<Array<Nullable<Text>>, _>(cols.user_id)
        .bind::<Array<Nullable<Text>>, _>(cols.owner)
        .execute(&mut conn)
        .await
        .map(|_| ())
        .map_err(DbError::query)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_discarding_writer_counts_rows_as_dropped_and_flushes_at_once() {
        let w = AuditWriter::discarding();
        assert!(!w.has_database());
        w.job(JobStateChange::new(
            "t1",
            "x.echo",
            "default",
            JobState::Pending,
        ));
        w.job(JobStateChange::new(
            "t2",
            "x.echo",
            "default",
            JobState::Pending,
        ));
        assert!(w.flush_within(Duration::from_millis(1)).await);
        assert_eq!(
            w.stats(),
            AuditStatsSnapshot {
                queued: 0,
                written: 0,
                dropped: 2,
                failed: 0
            }
        );
    }

    #[test]
    fn merging_keeps_terminal_states_and_latest_progress() {
        let t0 = Utc::now();
        let mut a = JobStateChange::new("t1", "x.echo", "default", JobState::Pending);
        a.at = t0;
        let mut b = JobStateChange::new("t1", "x.echo", "default", JobState::Started);
        b.at = t0 + chrono::Duration::milliseconds(5);
        b.worker = Some("w1".into());
        b.attempts = 1;
        let mut c = JobStateChange::new("t1", "x.echo", "default", JobState::Success);
        c.at = t0 + chrono::Duration::milliseconds(9);
        let mut late = JobStateChange::new("t1", "x.echo", "default", JobState::Started);
        late.at = t0 + chrono::Duration::milliseconds(20);
        let other = JobStateChange::new("t2", "x.noop", "default", JobState::Pending);
        let merged = merge_jobs(vec![a, other, b, c, late]);
        assert_eq!(merged.len(), 2);
        let first = &merged[0].change;
        assert_eq!(first.task_id, "t1");
        assert_eq!(first.status, JobState::Success);
        assert_eq!(first.worker.as_deref(), Some("w1"));
        assert_eq!(first.attempts, 1);
        assert_eq!(
            merged[0].started_at,
            Some(t0 + chrono::Duration::milliseconds(5))
        );
        assert_eq!(merged[1].change.task_id, "t2");
    }
}
