//! The background writer of audit rows (`inference_logs`, `job_queue_metadata`).
//!
//! Request paths and the worker's hot path must not wait for Postgres, so they hand rows to
//! a bounded channel ([`AuditWriter::inference`], [`AuditWriter::job`] never block) and one
//! task writes them in batches: rows that arrive within `AUDIT_BATCH_LINGER_MS` of the first
//! (or queued while the previous batch was being written) go in together, as one multi-row
//! statement per table ([`super::batch`]: prepared once per connection, then one round trip
//! per batch). The writer keeps one connection of its own, outside the pool: no checkout
//! ping per batch, and request paths never wait behind it for a pooled connection. It is
//! replaced after a lost connection, a statement that outlives `WRITE_TIMEOUT` and an idle
//! spell. When the channel is full or Postgres stays down past a few retries, rows are
//! dropped and counted in [`AuditStats`]; nothing else slows down. A backend built without a
//! database ([`AuditWriter::discarding`]) drops and counts every row at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use diesel::pg::Pg;
use diesel::query_builder::{QueryFragment, QueryId};
use diesel_async::AsyncPgConnection;
use diesel_async::pooled_connection::PoolableConnection;
use serde::Serialize;
use tokio::sync::{Notify, mpsc, oneshot};

use super::batch::{InferenceBatch, JobBatch};
use super::models::{JobStateChange, NewInferenceLog};
use super::{DbError, PgPool};
use crate::jobs::JobState;

/// Most rows written in one statement.
const MAX_BATCH: usize = 500;
/// Attempts per batch before its rows are counted as failed.
const WRITE_ATTEMPTS: u32 = 3;
/// Longest a batch statement may run. Past it the connection is in an unknown state (a
/// peer that vanished without a reset, a stuck server): it is dropped and the batch tried
/// again on a new one.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// The writer's connection is closed after this long unused, as the pool closes its idle
/// ones, so that a quiet process holds no connection a pooler might have dropped.
const IDLE_CLOSE: Duration = Duration::from_secs(300);

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
        // Rows handed over after an answer wait in tasks of this runtime's queue.
        crate::deferred::run_pending().await;
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
    let mut link = Link::new(pool);
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
            let n = inference.len();
            let batch = InferenceBatch::of(inference);
            let result;
            (link, result) = with_retries(attempts(down), link, &batch).await;
            down = account(&stats, n, result, "inference_logs rows lost");
        }
        if !jobs.is_empty() {
            let n = jobs.len();
            let merged = merge_jobs(jobs).into_iter();
            let batch = JobBatch::of(merged.map(|m| (m.change, m.started_at)));
            let result;
            (link, result) = with_retries(attempts(down), link, &batch).await;
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
fn account(stats: &AuditStats, n: usize, result: Result<(), WriteError>, lost: &str) -> bool {
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

/// Why one write attempt failed.
#[derive(Debug, thiserror::Error)]
enum WriteError {
    #[error("postgres unavailable: cannot connect: {0}")]
    Connect(#[source] diesel_async::pooled_connection::PoolError),
    #[error("postgres unavailable: no connection within {} ms", .0.as_millis())]
    ConnectTimeout(Duration),
    #[error("postgres unavailable: no answer within {} s", WRITE_TIMEOUT.as_secs())]
    Timeout,
    #[error(transparent)]
    Query(DbError),
}

/// The writer's own connection: opened on first use and kept, so that each batch is one
/// statement on a connection that already holds it prepared.
struct Link {
    pool: PgPool,
    conn: Option<(AsyncPgConnection, Instant)>,
}

impl Link {
    fn new(pool: PgPool) -> Self {
        Self { pool, conn: None }
    }

    /// The kept connection, or a new one when there is none, it was lost, or it sat idle
    /// longer than [`IDLE_CLOSE`]. Opening one is bounded by `DATABASE_CONNECT_TIMEOUT_MS`.
    async fn connection(&mut self) -> Result<&mut AsyncPgConnection, WriteError> {
        if let Some((conn, used)) = &mut self.conn
            && (conn.is_broken() || used.elapsed() > IDLE_CLOSE)
        {
            self.conn = None;
        }
        let conn = match self.conn.take() {
            Some((conn, _)) => conn,
            None => {
                let limit = self.pool.config().connection_timeout;
                tokio::time::timeout(limit, self.pool.dedicated_connection())
                    .await
                    .map_err(|_| WriteError::ConnectTimeout(limit))?
                    .map_err(WriteError::Connect)?
            }
        };
        let (conn, _) = self.conn.insert((conn, Instant::now()));
        Ok(conn)
    }

    /// Runs `query` within [`WRITE_TIMEOUT`]. A connection that timed out or broke is
    /// dropped; one that refused the statement (bad data) is kept.
    async fn execute<Q>(&mut self, query: &Q) -> Result<(), WriteError>
    where
        Q: QueryFragment<Pg> + QueryId + Send + Sync,
    {
        use diesel_async::RunQueryDsl;
        let conn = self.connection().await?;
        let result = tokio::time::timeout(WRITE_TIMEOUT, RunQueryDsl::execute(query, conn)).await;
        let result = match result {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(WriteError::Query(DbError::query(e))),
            Err(_) => Err(WriteError::Timeout),
        };
        if let Some((conn, used)) = &mut self.conn {
            if matches!(result, Err(WriteError::Timeout)) || conn.is_broken() {
                self.conn = None;
            } else {
                *used = Instant::now();
            }
        }
        result
    }
}

/// Writes `query` on `link`, up to `attempts` times; hands the link back with the result.
async fn with_retries<Q>(attempts: u32, link: Link, query: &Q) -> (Link, Result<(), WriteError>)
where
    Q: QueryFragment<Pg> + QueryId + Send + Sync,
{
    use backon::RetryableWithContext;
    // 100 ms, then four times longer each time: 100, 400, 1600 ms...
    let backoff = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_factor(4.0)
        .without_max_delay()
        .with_max_times(usize::try_from(attempts.saturating_sub(1)).unwrap_or(usize::MAX));
    let mut attempt = 0u32;
    (|mut link: Link| {
        attempt += 1;
        let attempt = attempt;
        async move {
            let result = link.execute(query).await.inspect_err(|e| {
                tracing::warn!(attempt, error = %e, "audit write failed");
            });
            (link, result)
        }
    })
    .retry(backoff)
    .sleep(tokio::time::sleep)
    .context(link)
    .await
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
