DROP INDEX IF EXISTS ai_backend.job_queue_metadata_owner_idx;
ALTER TABLE ai_backend.job_queue_metadata DROP COLUMN IF EXISTS owner;
