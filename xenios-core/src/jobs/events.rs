//! Celery events (the `celeryev` fanout exchange), which Flower reads.
//!
//! On Redis a fanout exchange is a PUBLISH on `/<db>.celeryev/<routing key>`. Worker events
//! (`worker-online`, `worker-heartbeat` every 2 s, `worker-offline`) go out at once; task
//! events are batched, like Celery's, as one message with a JSON list body under
//! `task.multi`, by a background task, so the worker's hot path only queues them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use crate::jobs::protocol::envelope;
use crate::redis::RedisPool;

/// Heartbeat period, in seconds (Celery's `freq`).
pub const HEARTBEAT_FREQ: f64 = 2.0;

/// A Lamport clock shared by events and pidbox replies.
#[derive(Debug, Default)]
pub struct Clock(AtomicU64);

impl Clock {
    /// Advances and returns the clock.
    pub fn tick(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Moves the clock past a value seen from another node.
    pub fn adjust(&self, other: u64) -> u64 {
        let mut cur = self.0.load(Ordering::Relaxed);
        loop {
            let next = cur.max(other) + 1;
            match self
                .0
                .compare_exchange(cur, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(seen) => cur = seen,
            }
        }
    }

    /// The current value.
    pub fn value(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The channel of a fanout exchange and routing key on Redis database `redis_db`.
pub fn fanout_channel(redis_db: i64, exchange: &str, routing_key: &str) -> String {
    if routing_key.is_empty() {
        format!("/{redis_db}.{exchange}")
    } else {
        format!("/{redis_db}.{exchange}/{routing_key}")
    }
}

/// Sends events as one node (`hostname`).
#[derive(Debug, Clone)]
pub struct EventSender {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pool: RedisPool,
    /// The Redis database number, part of fanout channel names.
    redis_db: i64,
    hostname: String,
    clock: Arc<Clock>,
    task_events: AtomicBool,
    queue: mpsc::Sender<Value>,
    dropped: AtomicU64,
    /// The batching task, stopped by [`EventSender::stop`].
    batcher: std::sync::OnceLock<tokio::task::AbortHandle>,
}

impl EventSender {
    /// Starts the sender and its batching task. Call inside a Tokio runtime.
    pub fn start(
        pool: RedisPool,
        redis_db: i64,
        hostname: String,
        clock: Arc<Clock>,
        task_events: bool,
    ) -> Self {
        let (tx, rx) = mpsc::channel(65_536);
        let inner = Arc::new(Inner {
            pool,
            redis_db,
            hostname,
            clock,
            task_events: AtomicBool::new(task_events),
            queue: tx,
            dropped: AtomicU64::new(0),
            batcher: std::sync::OnceLock::new(),
        });
        let task = tokio::spawn(batcher(Arc::downgrade(&inner), rx));
        let _ = inner.batcher.set(task.abort_handle());
        Self { inner }
    }

    /// Stops the batching task (shutdown; [`EventSender::flush`] first). Events queued
    /// later are dropped and counted.
    pub fn stop(&self) {
        if let Some(task) = self.inner.batcher.get() {
            task.abort();
        }
    }

    /// Turns task events on or off (pidbox `enable_events` / `disable_events`).
    pub fn set_task_events(&self, on: bool) {
        self.inner.task_events.store(on, Ordering::Relaxed);
    }

    /// Whether task events are sent.
    pub fn task_events(&self) -> bool {
        self.inner.task_events.load(Ordering::Relaxed)
    }

    /// The common fields of every event.
    fn base(&self, kind: &str, mut fields: Map<String, Value>) -> Value {
        fields.insert("hostname".into(), json!(self.inner.hostname));
        fields.insert("utcoffset".into(), json!(0));
        fields.insert("pid".into(), json!(std::process::id()));
        fields.insert("clock".into(), json!(self.inner.clock.tick()));
        fields.insert(
            "timestamp".into(),
            json!(chrono::Utc::now().timestamp_micros() as f64 / 1e6),
        );
        fields.insert("type".into(), json!(kind));
        Value::Object(fields)
    }

    /// Queues a task event (`task-received`, `task-started`...), batched. `fields` is
    /// called only when task events are on: with them off (the default) a job pays nothing
    /// for the `repr`s and maps its events would carry.
    pub fn task(&self, kind: &str, fields: impl FnOnce() -> Value) {
        if !self.task_events() {
            return;
        }
        let fields = match fields() {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        let ev = self.base(kind, fields);
        if self.inner.queue.try_send(ev).is_err() {
            self.inner.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Publishes one event at once (worker events, `task-sent`).
    pub async fn send_now(&self, kind: &str, fields: Value) {
        let fields = match fields {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        let ev = self.base(kind, fields);
        let rk = kind.replace('-', ".");
        publish(
            &self.inner.pool,
            self.inner.redis_db,
            &self.inner.hostname,
            &rk,
            &ev,
        )
        .await;
    }

    /// Task events dropped because the queue was full (Redis down).
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// Waits until queued task events are published (shutdown, tests).
    pub async fn flush(&self) {
        for _ in 0..200 {
            if self.inner.queue.capacity() == self.inner.queue.max_capacity() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        // One more period for the batch in flight (its linger, then its publish).
        tokio::time::sleep(EVENT_LINGER + std::time::Duration::from_millis(20)).await;
    }
}

async fn publish(pool: &RedisPool, redis_db: i64, hostname: &str, rk: &str, body: &Value) {
    let payload = envelope(body, "celeryev", rk, json!({"hostname": hostname}), 1);
    let channel = fanout_channel(redis_db, "celeryev", rk);
    let result = async {
        let mut conn = crate::jobs::pooled(pool).await?;
        redis::cmd("PUBLISH")
            .arg(&channel)
            .arg(&payload)
            .query_async::<i64>(&mut *conn)
            .await
            .map_err(crate::jobs::broker::redis_error)
    }
    .await;
    if let Err(e) = result {
        tracing::debug!(error = %e, routing_key = rk, "event not sent");
    }
}

/// How long the batcher lets task events gather after the first one before it publishes
/// them. Without it, every event woke the batcher, which published what little had queued
/// (about three events per `PUBLISH`: one job's received, started and succeeded); the wake-ups
/// and envelopes cost the worker more CPU than running the job (`scripts/bench-jobs.sh` with
/// `BENCH_TASK_EVENTS=1`). Flower sees an event at most this much later; its timestamp is
/// still the moment it happened.
const EVENT_LINGER: std::time::Duration = std::time::Duration::from_millis(5);

async fn batcher(inner: std::sync::Weak<Inner>, mut rx: mpsc::Receiver<Value>) {
    let mut batch = Vec::with_capacity(512);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        tokio::time::sleep(EVENT_LINGER).await;
        while batch.len() < 512 {
            match rx.try_recv() {
                Ok(ev) => batch.push(ev),
                Err(_) => break,
            }
        }
        let Some(inner) = inner.upgrade() else { break };
        let body = Value::Array(std::mem::take(&mut batch));
        publish(
            &inner.pool,
            inner.redis_db,
            &inner.hostname,
            "task.multi",
            &body,
        )
        .await;
    }
}

/// The fields of worker events (online, heartbeat, offline).
pub fn worker_fields(active: usize, processed: u64) -> Value {
    json!({
        "freq": HEARTBEAT_FREQ,
        "active": active,
        "processed": processed,
        "loadavg": loadavg(),
        "sw_ident": "xenios-worker",
        "sw_ver": env!("CARGO_PKG_VERSION"),
        "sw_sys": std::env::consts::OS,
    })
}

fn loadavg() -> Vec<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| {
            s.split_whitespace()
                .take(3)
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .unwrap_or_else(|| vec![0.0, 0.0, 0.0])
}
