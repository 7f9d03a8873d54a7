DROP TABLE IF EXISTS ai_backend.extraction_cache;
DROP TABLE IF EXISTS ai_backend.inference_logs;
DROP TABLE IF EXISTS ai_backend.job_queue_metadata;
-- The schema itself stays: it also holds diesel's migration bookkeeping.
