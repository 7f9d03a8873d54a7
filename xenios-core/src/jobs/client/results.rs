//! Reading and waiting for job results, as a caller may see them.

use std::time::Duration;

use super::Jobs;
use crate::context::RequestContext;
use crate::error::{Error, Result};
use crate::jobs::broker::redis_error;
use crate::jobs::{JobResult, Owner, check_task_id, owner_key, result};

impl Jobs {
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
}
