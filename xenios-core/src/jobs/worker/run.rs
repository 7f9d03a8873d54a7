//! The worker's lifecycle: connect, start the loops, run until shutdown, shut down warmly.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, Semaphore, mpsc};

use crate::error::{Error, Result};
use crate::jobs::broker;
use crate::jobs::events::{Clock, EventSender, worker_fields};

use super::background::{enable_notifications, heartbeat_loop, listen};
use super::deps::WorkerDeps;
use super::fetch::fetch_loop;
use super::finish::{FINISH_QUEUE, finisher_loop};
use super::handler::TaskRegistry;
use super::health::{self, health_loop};
use super::link::RedisLink;
use super::options::{WorkerOptions, WorkerSummary};
use super::state::{Counters, Hand, Revoked, Shared};

/// How long a stopping worker waits for Redis to take back the messages it holds.
const GIVE_BACK_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a stopping worker waits for its job rows to reach Postgres.
pub const AUDIT_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// A worker. Build with [`Worker::new`], then [`Worker::run`] (until a shutdown signal) or
/// [`Worker::run_until_idle`] (tests: until the queues are empty and nothing is in hand).
#[derive(Debug)]
pub struct Worker {
    deps: WorkerDeps,
    registry: TaskRegistry,
    options: WorkerOptions,
    allow_unhandled_queues: bool,
}

impl Worker {
    /// A worker over `deps` (an [`crate::AiBackend`], or what
    /// [`crate::AiBackend::worker_deps`] hands over) running the handlers of `registry`.
    pub fn new(
        deps: impl Into<WorkerDeps>,
        registry: TaskRegistry,
        options: WorkerOptions,
    ) -> Self {
        Self {
            deps: deps.into(),
            registry,
            options,
            allow_unhandled_queues: false,
        }
    }

    /// Lets the worker consume queues none of its tasks routes to (`JOB_ROUTES`); by
    /// default [`Worker::run`] refuses them, naming them, since every job taken there would
    /// fail as not registered. For a queue shared with workers of other task sets.
    pub fn allow_unhandled_queues(mut self, allow: bool) -> Self {
        self.allow_unhandled_queues = allow;
        self
    }

    /// The queues of `queues` that none of this worker's tasks routes to.
    pub fn unhandled_queues(&self, queues: &[String]) -> Vec<String> {
        let router = crate::jobs::Router::new(&self.deps.jobs_config);
        // A handler declared on a queue of its own (`TaskDecl::on_queue`) is routed there;
        // the others by `JOB_ROUTES`.
        let routed: std::collections::HashSet<String> = self
            .registry
            .declarations()
            .into_iter()
            .map(|d| d.queue.unwrap_or_else(|| router.route(&d.name).to_owned()))
            .collect();
        queues
            .iter()
            .filter(|q| !routed.contains(q.as_str()))
            .cloned()
            .collect()
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
        if queues.is_empty() {
            return Err(Error::Validation("no queue to consume".to_owned()));
        }
        // A malformed name or a reserved key (`unacked`, `celery-task-meta-*`...) is refused
        // before anything else, naming the queue (broker::declare_queues refuses them too,
        // for callers of the broker itself).
        for q in &queues {
            crate::jobs::check_queue_name(q)?;
        }
        if !self.allow_unhandled_queues {
            let unhandled = self.unhandled_queues(&queues);
            if !unhandled.is_empty() {
                return Err(Error::Validation(format!(
                    "no task of this worker routes to queue {} (JOB_ROUTES); it would take \
                     their jobs only to fail them. Consume a queue its tasks route to, or \
                     pass --allow-unhandled-queues",
                    unhandled.join(", ")
                )));
            }
        }
        let hostname = self.hostname();
        let concurrency = self.options.concurrency.max(1);
        let prefetch = concurrency * self.options.prefetch_multiplier.max(1);
        let jobs = &self.deps.jobs;
        let client = jobs.client()?.clone();
        let redis_db = jobs.redis_db();
        // The worker's own connection (pipelined, shared by its tasks), reconnecting.
        let link = RedisLink::connect(client.clone())?;
        let clock = Arc::new(Clock::default());
        let events = EventSender::start(
            self.deps.redis.clone(),
            redis_db,
            hostname.clone(),
            clock.clone(),
            self.deps.jobs_config.task_events,
        );
        let (ftx, frx) = mpsc::channel(FINISH_QUEUE);
        let shared = Arc::new(Shared {
            keys: broker::consume_keys(&queues),
            deps: self.deps.clone(),
            registry: self.registry,
            hostname: hostname.clone(),
            queues: queues.clone(),
            concurrency,
            prefetch,
            link,
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
            abandoned: AtomicBool::new(false),
            abandon_notify: Notify::new(),
            gave_up: AtomicBool::new(false),
            started: Instant::now(),
            redis_db,
        });
        {
            // None of these is needed to start: a Redis that refuses writes (`maxmemory`)
            // must not keep a worker from draining what is queued. Scripts load again on
            // NOSCRIPT, bindings are declared again at the next start, and restores run with
            // every heartbeat.
            let mut c = shared.link.conn();
            if let Err(e) = broker::load_scripts(&mut c).await {
                tracing::warn!(error = %e, "cannot load the scripts now; they load on first use");
            }
            if let Err(e) = broker::declare_queues(&mut c, &queues).await {
                tracing::warn!(error = %e, "cannot declare the queues' bindings now");
            }
            match broker::restore_visible(&mut c, shared.jobs().visibility_timeout).await {
                Ok(0) => {}
                Ok(restored) => tracing::warn!(restored, "restored messages of lost workers"),
                Err(e) => tracing::warn!(error = %e, "cannot restore lost messages now"),
            }
        }
        let finisher = tokio::spawn(finisher_loop(shared.clone(), frx));
        let notifications = enable_notifications(&mut shared.link.conn()).await;
        let listener = tokio::spawn(listen(shared.clone(), client));
        let heartbeat = tokio::spawn(heartbeat_loop(shared.clone()));
        let health = tokio::spawn(health_loop(shared.clone()));
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
        if shared.gave_up.load(Ordering::Acquire) {
            // Redis has been gone too long: nothing can be given back or stored. What this
            // worker holds stays in `unacked`, restored after the visibility timeout.
            shared.abandon();
            for t in [&listener, &heartbeat, &finisher, &health] {
                t.abort();
            }
            health::remove(shared.jobs());
            return Err(crate::redis::unavailable(format_args!(
                "no answer from Redis for {} s (WORKER_REDIS_GIVE_UP_SECS)",
                shared.link.since_ok().as_secs()
            )));
        }
        // Warm shutdown: running jobs get until the deadline, then their messages go back
        // to their queues with the reserved and scheduled ones, at once.
        let deadline = tokio::time::Instant::now() + shared.jobs().worker_shutdown_timeout;
        let mut give_back: Vec<String> = {
            let mut hand = shared.hand();
            hand.closing = true;
            hand.reserved
                .keys()
                .chain(hand.scheduled.keys())
                .cloned()
                .collect()
        };
        shared.stop();
        let drained = tokio::time::timeout_at(deadline, async {
            loop {
                let changed = shared.hand_changed.notified();
                if shared.hand().active.is_empty() {
                    break;
                }
                changed.await;
            }
        })
        .await
        .is_ok();
        if !drained {
            let active: Vec<String> = shared.hand().active.keys().cloned().collect();
            tracing::warn!(
                n = active.len(),
                timeout_secs = shared.jobs().worker_shutdown_timeout.as_secs(),
                "shutdown deadline passed; giving running jobs back to their queues"
            );
            shared.abandon();
            give_back.extend(active);
        }
        {
            let mut c = shared.link.conn();
            let given =
                tokio::time::timeout(GIVE_BACK_TIMEOUT, broker::give_back(&mut c, &give_back));
            match given.await {
                Ok(Ok(n)) => {
                    shared
                        .counters
                        .given_back
                        .fetch_add(n as u64, Ordering::Relaxed);
                    if n > 0 {
                        tracing::info!(n, "put held jobs back on their queues");
                    }
                }
                Ok(Err(e)) => tracing::error!(
                    error = %e,
                    "could not put jobs back; they stay in unacked and will be restored"
                ),
                Err(_) => tracing::error!(
                    "Redis did not answer in time; held jobs stay in unacked and will be restored"
                ),
            }
        }
        // Results of finished jobs: until the deadline (or a few seconds past it, when the
        // deadline already passed); their messages stay unacked if they cannot be stored.
        let finish_by = deadline.max(tokio::time::Instant::now() + GIVE_BACK_TIMEOUT);
        let finished = tokio::time::timeout_at(finish_by, async {
            loop {
                let idle = shared.finisher_idle.notified();
                if shared.pending_finishes.load(Ordering::Acquire) == 0 {
                    break;
                }
                idle.await;
            }
        })
        .await;
        if finished.is_err() {
            tracing::error!(
                pending = shared.pending_finishes.load(Ordering::Acquire),
                "results not stored by the deadline; their messages stay unacked and will be restored"
            );
        }
        health.abort();
        health::remove(shared.jobs());
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
        self.deps
            .database
            .flush_audit_within(AUDIT_FLUSH_TIMEOUT)
            .await;
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
