-- The backend's own tables. Everything lives in schema ai_backend; the app's tables in
-- public are shared with the Next.js app and never touched by these migrations.
CREATE SCHEMA IF NOT EXISTS ai_backend;

-- One row per job, following every state change (written by the background writer).
CREATE TABLE ai_backend.job_queue_metadata (
    task_id        text        PRIMARY KEY CHECK (length(task_id) BETWEEN 1 AND 255),
    task_name      text        NOT NULL CHECK (length(task_name) BETWEEN 1 AND 255),
    queue          text        NOT NULL,
    status         text        NOT NULL
        CHECK (status IN ('pending', 'started', 'retry', 'success', 'failure', 'revoked')),
    args_digest    text,
    attempts       integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    enqueued_at    timestamptz NOT NULL DEFAULT now(),
    started_at     timestamptz,
    finished_at    timestamptz,
    worker         text,
    error          text,
    correlation_id text,
    user_id        uuid,
    updated_at     timestamptz NOT NULL DEFAULT now()
);
-- Dashboards list jobs by state and age; users see their own jobs; logs join on correlation id.
CREATE INDEX job_queue_metadata_status_enqueued_idx
    ON ai_backend.job_queue_metadata (status, enqueued_at DESC);
CREATE INDEX job_queue_metadata_user_idx
    ON ai_backend.job_queue_metadata (user_id, enqueued_at DESC) WHERE user_id IS NOT NULL;
CREATE INDEX job_queue_metadata_task_name_idx
    ON ai_backend.job_queue_metadata (task_name, enqueued_at DESC);
CREATE INDEX job_queue_metadata_correlation_idx
    ON ai_backend.job_queue_metadata (correlation_id) WHERE correlation_id IS NOT NULL;

-- One row per LLM call. Prompts and outputs are stored only when AUDIT_STORE_PAYLOADS=true.
CREATE TABLE ai_backend.inference_logs (
    id                uuid             PRIMARY KEY,
    task_type         text             NOT NULL,
    model_requested   text             NOT NULL,
    model_used        text,
    fallback_used     boolean          NOT NULL DEFAULT false,
    status            text             NOT NULL CHECK (status IN ('success', 'error', 'cancelled')),
    prompt_tokens     integer          CHECK (prompt_tokens >= 0),
    completion_tokens integer          CHECK (completion_tokens >= 0),
    total_tokens      integer          CHECK (total_tokens >= 0),
    cost_usd          double precision CHECK (cost_usd >= 0),
    latency_ms        integer          NOT NULL CHECK (latency_ms >= 0),
    ttft_ms           integer          CHECK (ttft_ms >= 0),
    streaming         boolean          NOT NULL DEFAULT false,
    error             text,
    correlation_id    text,
    user_id           uuid,
    request_payload   jsonb,
    response_payload  jsonb,
    created_at        timestamptz      NOT NULL DEFAULT now()
);
CREATE INDEX inference_logs_created_idx ON ai_backend.inference_logs (created_at DESC);
CREATE INDEX inference_logs_user_idx
    ON ai_backend.inference_logs (user_id, created_at DESC) WHERE user_id IS NOT NULL;
CREATE INDEX inference_logs_task_idx ON ai_backend.inference_logs (task_type, created_at DESC);
CREATE INDEX inference_logs_correlation_idx
    ON ai_backend.inference_logs (correlation_id) WHERE correlation_id IS NOT NULL;

-- Document content hash -> extracted result, per extractor and version.
CREATE TABLE ai_backend.extraction_cache (
    content_hash      text        NOT NULL CHECK (content_hash ~ '^[0-9a-f]{64}$'),
    extractor         text        NOT NULL,
    extractor_version text        NOT NULL,
    result            jsonb       NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    expires_at        timestamptz,
    PRIMARY KEY (content_hash, extractor, extractor_version)
);
CREATE INDEX extraction_cache_expires_idx
    ON ai_backend.extraction_cache (expires_at) WHERE expires_at IS NOT NULL;
