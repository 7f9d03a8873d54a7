//! The audit writer's two statements, one per table, each writing a whole batch as column
//! arrays (`unnest`) with SQL that never changes.
//!
//! Why not diesel's `insert_into(..).values(&rows)` and `sql_query`: a multi-row `VALUES`
//! has SQL that changes with the batch size, and `sql_query` is marked unsafe to cache, so
//! diesel-async prepared both afresh for every batch and closed them after: three round
//! trips to Postgres per batch and a new plan each time. These types have a static
//! [`QueryId`] and one fixed text, so a connection prepares each once and every later batch
//! is one round trip (Bind, Execute, Sync). With `DATABASE_PREPARED_STATEMENTS=false` (a
//! transaction-mode pooler) they run unprepared, as before.

use chrono::{DateTime, Utc};
use diesel::QueryResult;
use diesel::pg::Pg;
use diesel::query_builder::{AstPass, QueryFragment, QueryId};
use diesel::serialize::ToSql;
use diesel::sql_types::{
    Array, Bool, Float8, HasSqlType, Int4, Jsonb, Nullable, Text, Timestamptz, Uuid,
};

use super::models::{JobStateChange, NewInferenceLog};

/// Pushes one column array as the next parameter, then `sql` (its cast and what follows).
fn column<'b, ST, U>(out: &mut AstPass<'_, 'b, Pg>, values: &'b U, sql: &str) -> QueryResult<()>
where
    Pg: HasSqlType<ST>,
    U: ToSql<ST, Pg>,
{
    out.push_bind_param::<ST, U>(values)?;
    out.push_sql(sql);
    Ok(())
}

/// `inference_logs` rows as column arrays: one `INSERT .. SELECT FROM unnest(..)`. A row
/// whose id is already stored is skipped (a caller that reused a row).
#[derive(Default)]
pub(super) struct InferenceBatch {
    id: Vec<uuid::Uuid>,
    task_type: Vec<String>,
    model_requested: Vec<String>,
    model_used: Vec<Option<String>>,
    fallback_used: Vec<bool>,
    status: Vec<String>,
    prompt_tokens: Vec<Option<i32>>,
    completion_tokens: Vec<Option<i32>>,
    total_tokens: Vec<Option<i32>>,
    cost_usd: Vec<Option<f64>>,
    latency_ms: Vec<i32>,
    ttft_ms: Vec<Option<i32>>,
    streaming: Vec<bool>,
    error: Vec<Option<String>>,
    correlation_id: Vec<Option<String>>,
    user_id: Vec<Option<uuid::Uuid>>,
    request_payload: Vec<Option<serde_json::Value>>,
    response_payload: Vec<Option<serde_json::Value>>,
    created_at: Vec<DateTime<Utc>>,
}

impl InferenceBatch {
    /// The batch of `rows`, in order (moved, not copied).
    pub(super) fn of(rows: Vec<NewInferenceLog>) -> Self {
        let mut b = Self::default();
        for r in rows {
            b.id.push(r.id);
            b.task_type.push(r.task_type);
            b.model_requested.push(r.model_requested);
            b.model_used.push(r.model_used);
            b.fallback_used.push(r.fallback_used);
            b.status.push(r.status);
            b.prompt_tokens.push(r.prompt_tokens);
            b.completion_tokens.push(r.completion_tokens);
            b.total_tokens.push(r.total_tokens);
            b.cost_usd.push(r.cost_usd);
            b.latency_ms.push(r.latency_ms);
            b.ttft_ms.push(r.ttft_ms);
            b.streaming.push(r.streaming);
            b.error.push(r.error);
            b.correlation_id.push(r.correlation_id);
            b.user_id.push(r.user_id);
            b.request_payload.push(r.request_payload);
            b.response_payload.push(r.response_payload);
            b.created_at.push(r.created_at);
        }
        b
    }
}

impl QueryId for InferenceBatch {
    type QueryId = Self;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl QueryFragment<Pg> for InferenceBatch {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        let o = &mut out;
        o.push_sql(
            "INSERT INTO ai_backend.inference_logs (id, task_type, model_requested, \
             model_used, fallback_used, status, prompt_tokens, completion_tokens, \
             total_tokens, cost_usd, latency_ms, ttft_ms, streaming, error, correlation_id, \
             user_id, request_payload, response_payload, created_at) \
             SELECT * FROM unnest(",
        );
        column::<Array<Uuid>, _>(o, &self.id, "::uuid[], ")?;
        column::<Array<Text>, _>(o, &self.task_type, "::text[], ")?;
        column::<Array<Text>, _>(o, &self.model_requested, "::text[], ")?;
        column::<Array<Nullable<Text>>, _>(o, &self.model_used, "::text[], ")?;
        column::<Array<Bool>, _>(o, &self.fallback_used, "::bool[], ")?;
        column::<Array<Text>, _>(o, &self.status, "::text[], ")?;
        column::<Array<Nullable<Int4>>, _>(o, &self.prompt_tokens, "::int4[], ")?;
        column::<Array<Nullable<Int4>>, _>(o, &self.completion_tokens, "::int4[], ")?;
        column::<Array<Nullable<Int4>>, _>(o, &self.total_tokens, "::int4[], ")?;
        column::<Array<Nullable<Float8>>, _>(o, &self.cost_usd, "::float8[], ")?;
        column::<Array<Int4>, _>(o, &self.latency_ms, "::int4[], ")?;
        column::<Array<Nullable<Int4>>, _>(o, &self.ttft_ms, "::int4[], ")?;
        column::<Array<Bool>, _>(o, &self.streaming, "::bool[], ")?;
        column::<Array<Nullable<Text>>, _>(o, &self.error, "::text[], ")?;
        column::<Array<Nullable<Text>>, _>(o, &self.correlation_id, "::text[], ")?;
        column::<Array<Nullable<Uuid>>, _>(o, &self.user_id, "::uuid[], ")?;
        column::<Array<Nullable<Jsonb>>, _>(o, &self.request_payload, "::jsonb[], ")?;
        column::<Array<Nullable<Jsonb>>, _>(o, &self.response_payload, "::jsonb[], ")?;
        column::<Array<Timestamptz>, _>(
            o,
            &self.created_at,
            "::timestamptz[]) ON CONFLICT (id) DO NOTHING",
        )
    }
}

/// `job_queue_metadata` changes as column arrays: one upsert whose conflict rules never move
/// a job backwards (a terminal state stays, a later change wins over an earlier one), the
/// same precedence as [`JobStateChange::absorb`].
#[derive(Default)]
pub(super) struct JobBatch {
    task_id: Vec<String>,
    task_name: Vec<String>,
    queue: Vec<String>,
    status: Vec<&'static str>,
    args_digest: Vec<Option<String>>,
    attempts: Vec<i32>,
    at: Vec<DateTime<Utc>>,
    started_at: Vec<Option<DateTime<Utc>>>,
    finished_at: Vec<Option<DateTime<Utc>>>,
    worker: Vec<Option<String>>,
    error: Vec<Option<String>>,
    correlation_id: Vec<Option<String>>,
    user_id: Vec<Option<uuid::Uuid>>,
    owner: Vec<Option<String>>,
}

impl JobBatch {
    /// The batch of each job's folded change and the time it first started (at most one
    /// entry per job), in order. The error text loses the change's `redact` text.
    pub(super) fn of(
        jobs: impl IntoIterator<Item = (JobStateChange, Option<DateTime<Utc>>)>,
    ) -> Self {
        let mut b = Self::default();
        for (c, started_at) in jobs {
            b.status.push(c.status.db_name());
            b.attempts.push(c.attempts.max(0));
            b.finished_at.push(c.status.is_ready().then_some(c.at));
            b.at.push(c.at);
            b.started_at.push(started_at);
            b.error.push(match (c.error, &c.redact) {
                (Some(e), Some(q)) if !q.is_empty() => Some(e.replace(q.as_str(), "")),
                (e, _) => e,
            });
            b.task_id.push(c.task_id);
            b.task_name.push(c.task_name);
            b.queue.push(c.queue);
            b.args_digest.push(c.args_digest);
            b.worker.push(c.worker);
            b.correlation_id.push(c.correlation_id);
            b.user_id.push(c.user_id);
            b.owner.push(c.owner);
        }
        b
    }
}

impl QueryId for JobBatch {
    type QueryId = Self;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl QueryFragment<Pg> for JobBatch {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        let o = &mut out;
        o.push_sql(
            "INSERT INTO ai_backend.job_queue_metadata AS j (task_id, task_name, queue, \
             status, args_digest, attempts, enqueued_at, started_at, finished_at, worker, \
             error, correlation_id, user_id, updated_at, owner) \
             SELECT t.task_id, t.task_name, t.queue, t.status, t.args_digest, t.attempts, \
             t.at, t.started_at, t.finished_at, t.worker, t.error, t.correlation_id, \
             t.user_id, t.at, t.owner FROM unnest(",
        );
        column::<Array<Text>, _>(o, &self.task_id, "::text[], ")?;
        column::<Array<Text>, _>(o, &self.task_name, "::text[], ")?;
        column::<Array<Text>, _>(o, &self.queue, "::text[], ")?;
        column::<Array<Text>, _>(o, &self.status, "::text[], ")?;
        column::<Array<Nullable<Text>>, _>(o, &self.args_digest, "::text[], ")?;
        column::<Array<Int4>, _>(o, &self.attempts, "::int4[], ")?;
        column::<Array<Timestamptz>, _>(o, &self.at, "::timestamptz[], ")?;
        column::<Array<Nullable<Timestamptz>>, _>(o, &self.started_at, "::timestamptz[], ")?;
        column::<Array<Nullable<Timestamptz>>, _>(o, &self.finished_at, "::timestamptz[], ")?;
        column::<Array<Nullable<Text>>, _>(o, &self.worker, "::text[], ")?;
        column::<Array<Nullable<Text>>, _>(o, &self.error, "::text[], ")?;
        column::<Array<Nullable<Text>>, _>(o, &self.correlation_id, "::text[], ")?;
        column::<Array<Nullable<Uuid>>, _>(o, &self.user_id, "::uuid[], ")?;
        column::<Array<Nullable<Text>>, _>(o, &self.owner, "::text[]) ")?;
        o.push_sql(
            "AS t(task_id, task_name, queue, status, args_digest, attempts, at, \
             started_at, finished_at, worker, error, correlation_id, user_id, owner) \
             ON CONFLICT (task_id) DO UPDATE SET \
             status = CASE \
               WHEN j.status IN ('success', 'failure', 'revoked') THEN j.status \
               WHEN EXCLUDED.status IN ('success', 'failure', 'revoked') THEN EXCLUDED.status \
               WHEN EXCLUDED.updated_at >= j.updated_at THEN EXCLUDED.status \
               ELSE j.status END, \
             task_name = CASE WHEN j.task_name = 'unknown' THEN EXCLUDED.task_name \
               ELSE j.task_name END, \
             queue = CASE WHEN j.queue = 'unknown' THEN EXCLUDED.queue ELSE j.queue END, \
             args_digest = COALESCE(j.args_digest, EXCLUDED.args_digest), \
             attempts = GREATEST(j.attempts, EXCLUDED.attempts), \
             enqueued_at = LEAST(j.enqueued_at, EXCLUDED.enqueued_at), \
             started_at = COALESCE(j.started_at, EXCLUDED.started_at), \
             finished_at = COALESCE(EXCLUDED.finished_at, j.finished_at), \
             worker = COALESCE(EXCLUDED.worker, j.worker), \
             error = COALESCE(EXCLUDED.error, j.error), \
             correlation_id = COALESCE(j.correlation_id, EXCLUDED.correlation_id), \
             user_id = COALESCE(j.user_id, EXCLUDED.user_id), \
             owner = COALESCE(j.owner, EXCLUDED.owner), \
             updated_at = GREATEST(j.updated_at, EXCLUDED.updated_at)",
        );
        Ok(())
    }
}

// diesel-async caches a prepared statement only for a query with a static id.
const _: () = assert!(<InferenceBatch as QueryId>::HAS_STATIC_QUERY_ID);
const _: () = assert!(<JobBatch as QueryId>::HAS_STATIC_QUERY_ID);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::models::InferenceStatus;

    /// The text before ` -- binds: [..]` in diesel's debug output.
    fn sql(q: &impl QueryFragment<Pg>) -> String {
        let s = diesel::debug_query::<Pg, _>(q).to_string();
        s.split(" -- binds").next().unwrap_or_default().to_owned()
    }

    #[test]
    fn both_statements_are_cacheable_and_their_text_does_not_depend_on_the_batch() {
        let row = NewInferenceLog::new("chat", "m", InferenceStatus::Success);
        let one = InferenceBatch::of(vec![row.clone()]);
        let two = InferenceBatch::of(vec![row.clone(), row]);
        assert_eq!(sql(&one), sql(&two));
        assert!(sql(&one).ends_with("$19::timestamptz[]) ON CONFLICT (id) DO NOTHING"));
        assert!(sql(&JobBatch::default()).contains("$14::text[]) AS t(task_id"));
        assert!(one.is_safe_to_cache_prepared(&Pg).unwrap());
        assert!(JobBatch::default().is_safe_to_cache_prepared(&Pg).unwrap());
    }
}
