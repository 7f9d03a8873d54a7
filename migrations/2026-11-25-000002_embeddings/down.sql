-- The extension is left installed: other schemas may use it.
DROP TABLE IF EXISTS ai_backend.embeddings;
