//! [`Jobs`]: the producer side of the job queue, behind [`crate::AiBackend::jobs`]:
//! validates and enqueues jobs, reads and waits for their results, revokes them.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use secrecy::ExposeSecret;
use serde::Serialize;
use serde_json::json;

use super::broker::{self, redis_error};
use super::events::{self, Clock, EventSender};
use super::protocol::{self, TaskMessage, args_repr, kwargs_repr};
use super::{
    EnqueueRequest, JobResult, JobState, MAX_DELAY, MAX_PAYLOAD_BYTES, MAX_TASK_NAME_LEN, Owner,
    REDIS_REPLY_TIMEOUT, REVOKED_PREFIX, Router, TaskId, catalog, check_queue_name, check_task_id,
    job_change, owner_key, payload_size, pidbox, result, tasks, valid_task_name,
};
use crate::config::{Config, JobsConfig};
use crate::context::RequestContext;
use crate::db::audit::AuditWriter;
use crate::error::{Error, Result};
use crate::redis::RedisPool;

/// What an enqueue returns: what the HTTP API shows of a job it accepted.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Enqueued {
    /// The task id (Celery's).
    pub id: TaskId,
    /// The task name.
    pub task: String,
    /// The queue it was routed to.
    pub queue: String,
    /// The correlation ID carried in the message.
    pub correlation_id: String,
    /// Always [`JobState::Pending`]: nothing has run yet.
    pub state: JobState,
}

/// The job queue's producer. Cheap to clone.
#[derive(Clone)]
pub struct Jobs {
    config: JobsConfig,
    router: Router,
    catalog: Arc<catalog::Catalog>,
    /// None when built without Redis.
    client: Option<redis::Client>,
    /// The producer's connection: one multiplexed connection that reconnects by itself
    /// (redis-rs' `ConnectionManager`). Concurrent enqueues share it and are pipelined
    /// onto the socket together, and no pool checkout (with its PING round trip) sits on
    /// the enqueue path. None when built without Redis.
    producer: Option<redis::aio::ConnectionManager>,
    /// The Redis database number (`/n` of `REDIS_URL`): Celery's fanout channels name it.
    redis_db: i64,
    events: EventSender,
    audit: AuditWriter,
}

impl fmt::Debug for Jobs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Jobs")
            .field("router", &self.router)
            .field("catalog", &self.catalog.names())
            .field("redis_db", &self.redis_db)
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

/// Said by every job call of a backend built without Redis.
const NO_REDIS: &str = "no Redis configured (this backend was built without one: REDIS_URL unset)";

impl Jobs {
    /// The producer of `config`, its events sent through `pool`. With `redis_configured`
    /// false every call fails at once with [`Error::Unavailable`]. Fails when `REDIS_URL`
    /// cannot be used; call inside a Tokio runtime (the event sender starts a task).
    pub(crate) fn new(
        config: &Config,
        pool: RedisPool,
        redis_configured: bool,
        audit: AuditWriter,
    ) -> Result<Self> {
        let client = if redis_configured {
            Some(
                redis::Client::open(config.redis.url.expose_secret())
                    .map_err(|e| Error::Validation(format!("REDIS_URL: {:?}", e.kind())))?,
            )
        } else {
            None
        };
        let redis_db = client
            .as_ref()
            .map(|c| c.get_connection_info().redis_settings().db())
            .unwrap_or(0);
        let producer = match &client {
            Some(c) => Some(
                redis::aio::ConnectionManager::new_lazy_with_config(
                    c.clone(),
                    redis::aio::ConnectionManagerConfig::new()
                        .set_response_timeout(Some(REDIS_REPLY_TIMEOUT))
                        .set_connection_timeout(Some(Duration::from_secs(5)))
                        .set_number_of_retries(2)
                        .set_max_delay(Duration::from_secs(1)),
                )
                .map_err(|e| Error::Validation(format!("REDIS_URL: {:?}", e.kind())))?,
            ),
            None => None,
        };
        let events = EventSender::start(
            pool,
            redis_db,
            protocol::origin(),
            Arc::new(Clock::default()),
            config.jobs.task_events,
        );
        let router = Router::new(&config.jobs);
        let catalog = catalog::Catalog::new(
            tasks::builtin_registry(&config.jobs)
                .declarations()
                .into_iter()
                .chain(config.jobs.extra_tasks.iter().cloned()),
            &router,
        );
        Ok(Self {
            config: config.jobs.clone(),
            router,
            catalog: Arc::new(catalog),
            client,
            producer,
            redis_db,
            events,
            audit,
        })
    }

    /// A handle on the producer's connection (cheap: a clone of a multiplexed handle).
    pub(crate) fn producer(&self) -> Result<redis::aio::ConnectionManager> {
        self.producer
            .clone()
            .ok_or_else(|| crate::redis::unavailable(NO_REDIS))
    }

    /// The Redis client, for dedicated connections (pub/sub, workers).
    pub(crate) fn client(&self) -> Result<&redis::Client> {
        self.client
            .as_ref()
            .ok_or_else(|| crate::redis::unavailable(NO_REDIS))
    }

    /// The Redis database number of `REDIS_URL`.
    pub(crate) fn redis_db(&self) -> i64 {
        self.redis_db
    }

    /// Task events dropped because their queue was full (Redis down).
    pub fn dropped_events(&self) -> u64 {
        self.events.dropped()
    }

    /// Publishes queued task events and stops the event sender (shutdown).
    pub(crate) async fn shutdown(&self) {
        self.events.flush().await;
        self.events.stop();
    }
    /// Builds the message of a request, validating it (bad input is [`Error::Validation`]).
    pub fn job_message(&self, ctx: &RequestContext, req: EnqueueRequest) -> Result<TaskMessage> {
        if !valid_task_name(&req.task) {
            return Err(Error::Validation(format!(
                "task must be 1-{MAX_TASK_NAME_LEN} characters of [A-Za-z0-9_.:-]"
            )));
        }
        let queue = match req.queue {
            Some(q) => q,
            None => self.router.route(&req.task).to_owned(),
        };
        check_queue_name(&queue)?;
        let priority = req.priority.unwrap_or(0);
        if priority > 9 {
            return Err(Error::Validation("priority must be 0-9".to_owned()));
        }
        let size = payload_size(&req.args, &req.kwargs);
        if size > MAX_PAYLOAD_BYTES {
            return Err(Error::Validation(format!(
                "args and kwargs are {size} bytes encoded; the limit is {MAX_PAYLOAD_BYTES}"
            )));
        }
        let now = Utc::now();
        let delay = |d: Duration, what: &str| -> Result<chrono::Duration> {
            if d > MAX_DELAY {
                return Err(Error::Validation(format!(
                    "{what} is more than a year away"
                )));
            }
            chrono::Duration::from_std(d)
                .map_err(|_| Error::Validation(format!("{what} is too large")))
        };
        let eta = match (req.eta, req.countdown) {
            (Some(eta), _) => Some(eta),
            (None, Some(c)) if !c.is_zero() => Some(now + delay(c, "countdown")?),
            _ => None,
        };
        if let Some(eta) = eta
            && eta - now > delay(MAX_DELAY, "eta")?
        {
            return Err(Error::Validation("eta is more than a year away".to_owned()));
        }
        let mut m = TaskMessage::new(req.task, queue);
        m.args = req.args;
        m.kwargs = req.kwargs;
        m.priority = priority;
        m.eta = eta;
        m.expires = req.expires;
        if let Some(tl) = req.time_limits {
            for d in [tl.soft, tl.hard].into_iter().flatten() {
                if d.is_zero() || d > MAX_DELAY {
                    return Err(Error::Validation(
                        "time limits must be positive and under a year".to_owned(),
                    ));
                }
            }
            if let (Some(s), Some(h)) = (tl.soft, tl.hard)
                && s > h
            {
                return Err(Error::Validation(
                    "the soft time limit must not exceed the hard one".to_owned(),
                ));
            }
            m.soft_time_limit = tl.soft.map(|d| d.as_secs_f64());
            m.hard_time_limit = tl.hard.map(|d| d.as_secs_f64());
        }
        m.correlation_id = Some(ctx.correlation_id.as_str().to_owned());
        m.user_id = ctx.user_id().map(str::to_owned);
        m.owner = Some(Owner::of(ctx).to_string());
        Ok(m)
    }

    /// The task catalog: what HTTP callers may enqueue (see [`catalog`]).
    pub fn job_catalog(&self) -> &catalog::Catalog {
        &self.catalog
    }

    /// Builds the message of a request from an outside caller: only a catalogued task this
    /// caller may enqueue ([`Error::UnknownTask`] otherwise), on the catalog's queue (a
    /// request naming a queue is refused), with arguments within the task's size limit.
    fn caller_job_message(
        &self,
        ctx: &RequestContext,
        mut req: EnqueueRequest,
    ) -> Result<TaskMessage> {
        if !valid_task_name(&req.task) {
            return Err(Error::Validation(format!(
                "task must be 1-{MAX_TASK_NAME_LEN} characters of [A-Za-z0-9_.:-]"
            )));
        }
        let entry = self.catalog.authorize(&ctx.principal, &req.task)?;
        if req.queue.is_some() {
            return Err(Error::Validation(
                "queue cannot be chosen: each task's queue is set by the task catalog".to_owned(),
            ));
        }
        let size = payload_size(&req.args, &req.kwargs);
        if size > entry.max_arg_bytes {
            return Err(Error::Validation(format!(
                "args and kwargs are {size} bytes encoded; `{}` accepts at most {}",
                entry.name, entry.max_arg_bytes
            )));
        }
        req.queue = Some(entry.queue.clone());
        self.job_message(ctx, req)
    }

    /// Enqueues a job as a Celery protocol-v2 message: any valid task name (a Python worker
    /// may be the one to run it), on the routed or chosen queue. For a trusted caller (an
    /// embedder, the CLI); requests from outside go through [`Jobs::enqueue_for_caller`].
    pub async fn enqueue(&self, ctx: &RequestContext, req: EnqueueRequest) -> Result<Enqueued> {
        let message = self.job_message(ctx, req)?;
        self.publish(ctx, message).await
    }

    /// Enqueues a job for an outside (HTTP) caller: only a task of the catalog this caller
    /// may enqueue ([`Error::UnknownTask`] otherwise), on the catalog's queue (a request
    /// naming a queue is refused), with arguments within the task's size limit.
    pub async fn enqueue_for_caller(
        &self,
        ctx: &RequestContext,
        req: EnqueueRequest,
    ) -> Result<Enqueued> {
        let message = self.caller_job_message(ctx, req)?;
        self.publish(ctx, message).await
    }

    async fn publish(&self, ctx: &RequestContext, message: TaskMessage) -> Result<Enqueued> {
        self.publish_messages(std::slice::from_ref(&message))
            .await?;
        Ok(Enqueued {
            id: TaskId::of_message(message.id),
            task: message.task,
            queue: message.queue,
            correlation_id: ctx.correlation_id.to_string(),
            state: JobState::Pending,
        })
    }

    /// Enqueues many jobs in pipelined round trips (all validated first: one bad request
    /// enqueues nothing).
    pub async fn enqueue_many(
        &self,
        ctx: &RequestContext,
        reqs: Vec<EnqueueRequest>,
    ) -> Result<Vec<TaskId>> {
        let messages = reqs
            .into_iter()
            .map(|r| self.job_message(ctx, r))
            .collect::<Result<Vec<_>>>()?;
        self.publish_messages(&messages).await?;
        Ok(messages
            .into_iter()
            .map(|m| TaskId::of_message(m.id))
            .collect())
    }

    /// Publishes ready-made messages (with `task-sent` events and pending job rows).
    /// A message's owner (when set) is written to [`owner_key`] first, in the same round
    /// trip, living as long as its result can (the delay to its ETA plus twice
    /// `JOB_RESULT_EXPIRES_SECS`).
    pub(crate) async fn publish_messages(&self, messages: &[TaskMessage]) -> Result<()> {
        for m in messages {
            check_queue_name(&m.queue)?;
        }
        let mut conn = self.producer()?;
        let keep = self.config.result_expires.as_secs().max(1) * 2;
        let now = Utc::now();
        for chunk in messages.chunks(1000) {
            let owners: Vec<(String, String, u64)> = chunk
                .iter()
                .filter_map(|m| {
                    let wait = m
                        .eta
                        .map(|eta| (eta - now).num_seconds().max(0).unsigned_abs())
                        .unwrap_or(0);
                    m.owner
                        .clone()
                        .map(|o| (owner_key(&m.id), o, keep.saturating_add(wait)))
                })
                .collect();
            let out: Vec<(String, String)> = chunk.iter().map(broker::outgoing).collect();
            broker::publish_owned(&mut conn, &owners, &out).await?;
        }
        let events = &self.events;
        for m in messages {
            self.audit.job(job_change(m, JobState::Pending));
            events.task(
                "task-sent",
                json!({
                    "uuid": m.id, "root_id": m.root_id, "parent_id": m.parent_id,
                    "name": m.task, "args": args_repr(&m.args),
                    "kwargs": kwargs_repr(&m.kwargs),
                    "retries": m.retries, "eta": m.eta.map(protocol::iso),
                    "expires": m.expires.map(protocol::iso), "queue": m.queue,
                    "exchange": m.exchange, "routing_key": m.queue,
                }),
            );
        }
        Ok(())
    }

    /// The owner recorded for a job at enqueue, if any (jobs of Python producers have none).
    pub async fn job_owner(&self, task_id: &str) -> Result<Option<Owner>> {
        let mut conn = self.producer()?;
        let raw: Option<String> = redis::cmd("GET")
            .arg(owner_key(task_id))
            .query_async(&mut conn)
            .await
            .map_err(redis_error)?;
        Ok(raw.as_deref().and_then(Owner::parse))
    }

    /// A job's result as `ctx` may see it: the service sees every job (PENDING for unknown
    /// ids, as in Celery); a user only their own, and any other id, unknown or someone
    /// else's or of unknown owner, is the same [`Error::NotFound`]. Owner and result are
    /// read in one round trip.
    pub async fn job_result_for(&self, ctx: &RequestContext, task_id: &str) -> Result<JobResult> {
        check_task_id(task_id)?;
        let mut conn = self.producer()?;
        let (owner, raw): (Option<String>, Option<String>) = redis::pipe()
            .cmd("GET")
            .arg(owner_key(task_id))
            .cmd("GET")
            .arg(result::result_key(task_id))
            .query_async(&mut conn)
            .await
            .map_err(redis_error)?;
        let visible = match owner.as_deref().and_then(Owner::parse) {
            Some(o) => o.visible_to(ctx),
            None => ctx.user_id().is_none(),
        };
        if !visible {
            return Err(Error::NotFound("job".to_owned()));
        }
        Ok(raw
            .and_then(|r| JobResult::parse(task_id, &r))
            .unwrap_or_else(|| JobResult::pending(task_id)))
    }

    /// [`Jobs::revoke`] on behalf of `ctx`: a user may revoke only their own
    /// jobs, any other id is [`Error::NotFound`] (and nothing is revoked).
    pub async fn revoke_for(
        &self,
        ctx: &RequestContext,
        task_id: &str,
        terminate: bool,
    ) -> Result<()> {
        check_task_id(task_id)?;
        if ctx.user_id().is_some()
            && !self
                .job_owner(task_id)
                .await?
                .is_some_and(|o| o.visible_to(ctx))
        {
            return Err(Error::NotFound("job".to_owned()));
        }
        self.revoke(task_id, terminate).await
    }

    /// The stored result of a job (PENDING when nothing is stored yet, as in Celery); an id
    /// that cannot be a task id is [`Error::Validation`] (`TASK_ID_RULE`).
    pub async fn job_result(&self, task_id: &str) -> Result<JobResult> {
        check_task_id(task_id)?;
        let mut conn = self.producer()?;
        let raw: Option<String> = redis::cmd("GET")
            .arg(result::result_key(task_id))
            .query_async(&mut conn)
            .await
            .map_err(redis_error)?;
        Ok(raw
            .and_then(|r| JobResult::parse(task_id, &r))
            .unwrap_or_else(|| JobResult::pending(task_id)))
    }

    /// Waits until a job's result is ready (SUCCESS, FAILURE or REVOKED), up to `timeout`,
    /// on the result's pub/sub channel (a dedicated connection), like Celery's `get()`.
    /// Returns the latest known result, ready or not, when the time is up.
    pub async fn wait_result(&self, task_id: &str, timeout: Duration) -> Result<JobResult> {
        use futures::StreamExt;
        check_task_id(task_id)?;
        let key = result::result_key(task_id);
        let mut pubsub = self
            .client()?
            .get_async_pubsub()
            .await
            .map_err(redis_error)?;
        pubsub.subscribe(&key).await.map_err(redis_error)?;
        // Subscribed first, then read: a result stored in between is not missed. A failed
        // read (a pooled connection timing out under load) is not fatal: the result will
        // still arrive on the channel, and is read again at the deadline.
        let mut latest = match self.job_result(task_id).await {
            Ok(r) if r.state.is_ready() => return Ok(r),
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the result yet; waiting on its channel");
                JobResult::pending(task_id)
            }
        };
        let mut stream = pubsub.on_message();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, stream.next()).await {
                Ok(Some(msg)) => {
                    if let Some(r) = std::str::from_utf8(msg.get_payload_bytes())
                        .ok()
                        .and_then(|raw| JobResult::parse(task_id, raw))
                    {
                        if r.state.is_ready() {
                            return Ok(r);
                        }
                        latest = r;
                    }
                }
                Ok(None) => {
                    return Err(crate::redis::unavailable("result subscription closed"));
                }
                Err(_) => {
                    return Ok(match self.job_result(task_id).await {
                        Ok(r) => r,
                        Err(_) => latest,
                    });
                }
            }
        }
    }

    /// Revokes a job: running workers are told through the pidbox broadcast (Python ones
    /// too), and ours also honour it when started later (a marker kept for
    /// `JOB_RESULT_EXPIRES_SECS`). The worker that meets the job stores REVOKED and its job
    /// row. With `terminate`, a job already running is stopped as well (our workers drop
    /// its handler; Celery's send its process SIGTERM); without it, it runs to the end.
    pub async fn revoke(&self, task_id: &str, terminate: bool) -> Result<()> {
        check_task_id(task_id)?;
        let ttl = self.config.result_expires.as_secs().max(1);
        let request = pidbox::request(
            "revoke",
            json!({"task_id": task_id, "terminate": terminate, "signal": "SIGTERM"}),
            None,
        );
        let channel = events::fanout_channel(self.redis_db, "celery.pidbox", "");
        let mut conn = self.producer()?;
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(format!("{REVOKED_PREFIX}{task_id}"))
            .arg(1)
            .arg("EX")
            .arg(ttl)
            .ignore()
            .cmd("PUBLISH")
            .arg(channel)
            .arg(request)
            .ignore();
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(redis_error)?;
        Ok(())
    }
}
