-- Embeddings for RAG, only where pgvector is available (Supabase has it). On a plain Postgres
-- without the extension this migration succeeds and creates nothing.
-- The extension is never installed into public: an existing installation (Supabase keeps it in
-- schema `extensions`) is reused, otherwise it goes into ai_backend.
DO $$
DECLARE
    vector_schema text;
BEGIN
    SELECT n.nspname INTO vector_schema
      FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
     WHERE e.extname = 'vector';
    IF vector_schema IS NULL THEN
        IF NOT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'vector') THEN
            RAISE NOTICE 'pgvector is not available: ai_backend.embeddings is not created';
            RETURN;
        END IF;
        CREATE EXTENSION IF NOT EXISTS vector WITH SCHEMA ai_backend;
        vector_schema := 'ai_backend';
    END IF;
    EXECUTE format($sql$
        CREATE TABLE IF NOT EXISTS ai_backend.embeddings (
            id          uuid        PRIMARY KEY,
            source_type text        NOT NULL,
            source_id   text        NOT NULL,
            chunk_index integer     NOT NULL DEFAULT 0 CHECK (chunk_index >= 0),
            content     text        NOT NULL,
            embedding   %I.vector(1536) NOT NULL,
            metadata    jsonb       NOT NULL DEFAULT '{}'::jsonb,
            user_id     uuid,
            created_at  timestamptz NOT NULL DEFAULT now(),
            UNIQUE (source_type, source_id, chunk_index)
        )$sql$, vector_schema);
    EXECUTE format(
        'CREATE INDEX IF NOT EXISTS embeddings_hnsw_idx ON ai_backend.embeddings '
        'USING hnsw (embedding %I.vector_cosine_ops)', vector_schema);
END
$$;
