//! Diesel table definitions. `ai_backend.*` are ours (see `migrations/`); `public.*` belong
//! to the Xenios app and are only read.
#![allow(missing_docs)]

diesel::table! {
    ai_backend.job_queue_metadata (task_id) {
        task_id -> Text,
        task_name -> Text,
        queue -> Text,
        status -> Text,
        args_digest -> Nullable<Text>,
        attempts -> Int4,
        enqueued_at -> Timestamptz,
        started_at -> Nullable<Timestamptz>,
        finished_at -> Nullable<Timestamptz>,
        worker -> Nullable<Text>,
        error -> Nullable<Text>,
        correlation_id -> Nullable<Text>,
        user_id -> Nullable<Uuid>,
        updated_at -> Timestamptz,
        owner -> Nullable<Text>,
    }
}

diesel::table! {
    ai_backend.inference_logs (id) {
        id -> Uuid,
        task_type -> Text,
        model_requested -> Text,
        model_used -> Nullable<Text>,
        fallback_used -> Bool,
        status -> Text,
        prompt_tokens -> Nullable<Int4>,
        completion_tokens -> Nullable<Int4>,
        total_tokens -> Nullable<Int4>,
        cost_usd -> Nullable<Float8>,
        latency_ms -> Int4,
        ttft_ms -> Nullable<Int4>,
        streaming -> Bool,
        error -> Nullable<Text>,
        correlation_id -> Nullable<Text>,
        user_id -> Nullable<Uuid>,
        request_payload -> Nullable<Jsonb>,
        response_payload -> Nullable<Jsonb>,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    ai_backend.extraction_cache (content_hash, extractor, extractor_version) {
        content_hash -> Text,
        extractor -> Text,
        extractor_version -> Text,
        result -> Jsonb,
        created_at -> Timestamptz,
        expires_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    /// The app's user profiles (Supabase convention: one row per auth.users id).
    public.profiles (id) {
        id -> Uuid,
        email -> Nullable<Text>,
        full_name -> Nullable<Text>,
        role -> Nullable<Text>,
        created_at -> Timestamptz,
    }
}
