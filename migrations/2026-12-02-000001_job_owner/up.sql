-- Who a job belongs to: `user:<user id>` or `service` (the same text as the message header
-- `xenios_owner`). Rows written before this column have no owner.
ALTER TABLE ai_backend.job_queue_metadata ADD COLUMN owner text;
-- Users list their own jobs; operators look up a caller's jobs.
CREATE INDEX job_queue_metadata_owner_idx
    ON ai_backend.job_queue_metadata (owner, enqueued_at DESC) WHERE owner IS NOT NULL;
