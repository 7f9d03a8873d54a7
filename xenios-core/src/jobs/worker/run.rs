//! The worker's lifecycle: connect, start the loops, run until shutdown, shut down warmly.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, Semaphore, mpsc};

use crate::AiBackend;
use crate::error::{Error, Result};
use crate::jobs::broker::{self, redis_error};
use crate::jobs::events::{Clock, EventSender, worker_fields};

use super::background::{enable_notifications, heartbeat_loop, listen};
use super::fetch::fetch_loop;
use super::finish::finisher_loop;
use super::handler::TaskRegistry;
use super::options::{WorkerOptions, WorkerSummary};
use super::state::{Counters, Hand, Revoked, Shared};

/// How long a stopping worker waits for its job rows to reach Postgres.
pub const AUDIT_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// A worker. Build with [`Worker::new`], then [`Worker::run`] (until a shutdown signal) or
/// [`Worker::run_until_idle`] (tests: until the queues are empty and nothing is in hand).
#[derive(Debug)]
pub struct Worker {
    backend: AiBackend,
    registry: TaskRegistry,
    options: WorkerOptions,
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
