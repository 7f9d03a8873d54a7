//! Revoking jobs: the marker ours honour and the broadcast Celery's hear.

use serde_json::json;

use super::Jobs;
use crate::context::RequestContext;
use crate::error::{Error, Result};
use crate::jobs::broker::redis_error;
use crate::jobs::events;
use crate::jobs::{REVOKED_PREFIX, check_task_id, pidbox};

impl Jobs {
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
