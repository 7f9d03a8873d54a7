//! Building, checking and publishing job messages: [`Jobs::enqueue`] and its kin.

use std::time::Duration;

use chrono::Utc;
use serde::Serialize;
use serde_json::json;

use super::Jobs;
use crate::context::RequestContext;
use crate::error::{Error, Result};
use crate::jobs::broker;
use crate::jobs::protocol::{self, TaskMessage, args_repr, kwargs_repr};
use crate::jobs::{
    EnqueueRequest, JobState, MAX_DELAY, MAX_PAYLOAD_BYTES, MAX_TASK_NAME_LEN, Owner, TaskId,
    catalog, check_queue_name, job_change, owner_key, payload_size, valid_task_name,
};

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

impl Jobs {
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
            events.task("task-sent", || {
                json!({
                    "uuid": m.id, "root_id": m.root_id, "parent_id": m.parent_id,
                    "name": m.task, "args": args_repr(&m.args),
                    "kwargs": kwargs_repr(&m.kwargs),
                    "retries": m.retries, "eta": m.eta.map(protocol::iso),
                    "expires": m.expires.map(protocol::iso), "queue": m.queue,
                    "exchange": m.exchange, "routing_key": m.queue,
                })
            });
        }
        Ok(())
    }
}
