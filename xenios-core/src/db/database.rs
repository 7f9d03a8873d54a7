//! [`Database`]: everything the backend reads from and writes to Postgres.

use std::time::Duration;

use diesel_async::RunQueryDsl;
use secrecy::ExposeSecret;

use super::audit::{AuditStatsSnapshot, AuditWriter};
use super::error::DbError;
use super::migrate::{self, Action};
use super::models::{ExtractionCacheEntry, InferenceLog, JobRecord, Profile};
use super::{PgPool, connect};
use crate::config::DatabaseConfig;

use crate::error::{Error, Result};

fn query_error(e: diesel::result::Error) -> Error {
    DbError::query(e).into()
}

/// The Postgres side of the backend ([`crate::AiBackend::database`]): typed queries,
/// migrations, and the audit writer that every LLM call and job state change feeds.
///
/// Built without a database ([`crate::AiBackendBuilder::without_database`]), every query
/// fails at once with [`DbError::NotConfigured`], audit rows are dropped and counted, and
/// flushes return at once.
#[derive(Debug, Clone)]
pub struct Database {
    pool: Option<PgPool>,
    config: DatabaseConfig,
    audit: AuditWriter,
}

impl Database {
    pub(crate) fn new(pool: Option<PgPool>, config: DatabaseConfig, audit: AuditWriter) -> Self {
        Self {
            pool,
            config,
            audit,
        }
    }

    /// True unless built without a database.
    pub fn is_configured(&self) -> bool {
        self.pool.is_some()
    }

    /// The background writer of audit rows (inference logs, job state changes), for rows an
    /// embedder records itself.
    pub fn audit(&self) -> &AuditWriter {
        &self.audit
    }

    async fn conn(
        &self,
    ) -> Result<
        bb8::PooledConnection<
            '_,
            diesel_async::pooled_connection::AsyncDieselConnectionManager<
                diesel_async::AsyncPgConnection,
            >,
        >,
    > {
        let pool = self.pool.as_ref().ok_or(DbError::NotConfigured)?;
        Ok(pool.get().await.map_err(DbError::Pool)?)
    }

    /// Round trip of `SELECT 1` (readiness).
    pub(crate) async fn ping(&self) -> Result<()> {
        let mut conn = self.conn().await?;
        diesel::sql_query("SELECT 1")
            .execute(&mut conn)
            .await
            .map(|_| ())
            .map_err(query_error)
    }

    /// Applies pending migrations (idempotent, safe to race with other processes) and
    /// returns the versions applied.
    pub async fn migrate(&self) -> Result<Vec<String>> {
        self.migration(Action::Run).await
    }

    /// Reverts the most recent migration and returns its version.
    pub async fn revert_last_migration(&self) -> Result<Vec<String>> {
        self.migration(Action::RevertLast).await
    }

    /// Names of the migrations not yet applied.
    pub async fn pending_migrations(&self) -> Result<Vec<String>> {
        self.migration(Action::Pending).await
    }

    async fn migration(&self, action: Action) -> Result<Vec<String>> {
        if self.pool.is_none() {
            return Err(DbError::NotConfigured.into());
        }
        let (url, options) = connect::parse_url(
            self.config.url.expose_secret(),
            self.config.prepared_statements,
        )
        .map_err(DbError::Url)?;
        Ok(migrate::execute(url, options, action).await?)
    }

    /// Flushes queued audit rows and waits for them to be written (tests).
    pub async fn flush_audit(&self) {
        self.audit.flush().await;
    }

    /// [`Database::flush_audit`] bounded by `timeout` (for shutdowns); false when rows
    /// were still queued at the deadline (the count is logged).
    pub async fn flush_audit_within(&self, timeout: Duration) -> bool {
        self.audit.flush_within(timeout).await
    }

    /// Counters of the audit writer.
    pub fn audit_stats(&self) -> AuditStatsSnapshot {
        self.audit.stats()
    }

    /// The stored metadata of one job.
    pub async fn job_record(&self, task_id: &str) -> Result<Option<JobRecord>> {
        use super::schema::job_queue_metadata::dsl;
        use diesel::{ExpressionMethods, OptionalExtension, QueryDsl, SelectableHelper};
        let mut conn = self.conn().await?;
        dsl::job_queue_metadata
            .filter(dsl::task_id.eq(task_id))
            .select(JobRecord::as_select())
            .first(&mut conn)
            .await
            .optional()
            .map_err(query_error)
    }

    /// Inference log rows of one correlation ID, oldest first.
    pub async fn inference_logs_for(&self, correlation_id: &str) -> Result<Vec<InferenceLog>> {
        use super::schema::inference_logs::dsl;
        use diesel::{ExpressionMethods, QueryDsl, SelectableHelper};
        let mut conn = self.conn().await?;
        dsl::inference_logs
            .filter(dsl::correlation_id.eq(correlation_id))
            .order(dsl::created_at.asc())
            .select(InferenceLog::as_select())
            .load(&mut conn)
            .await
            .map_err(query_error)
    }

    /// A cached extraction of a document, unless it expired.
    pub async fn cached_extraction(
        &self,
        content_hash: &str,
        extractor: &str,
        extractor_version: &str,
    ) -> Result<Option<ExtractionCacheEntry>> {
        use super::schema::extraction_cache::dsl;
        use diesel::{
            BoolExpressionMethods, ExpressionMethods, OptionalExtension, QueryDsl, SelectableHelper,
        };
        let mut conn = self.conn().await?;
        dsl::extraction_cache
            .filter(dsl::content_hash.eq(content_hash))
            .filter(dsl::extractor.eq(extractor))
            .filter(dsl::extractor_version.eq(extractor_version))
            .filter(
                dsl::expires_at
                    .is_null()
                    .or(dsl::expires_at.gt(diesel::dsl::now)),
            )
            .select(ExtractionCacheEntry::as_select())
            .first(&mut conn)
            .await
            .optional()
            .map_err(query_error)
    }

    /// Stores (or replaces) an extraction result. The hash must be lower-case SHA-256 hex.
    pub async fn store_extraction(&self, entry: &ExtractionCacheEntry) -> Result<()> {
        use super::schema::extraction_cache::dsl;
        use diesel::ExpressionMethods;
        use diesel::upsert::excluded;
        let valid_hash = entry.content_hash.len() == 64
            && entry
                .content_hash
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !valid_hash {
            return Err(DbError::Invalid(
                "content_hash must be 64 lower-case hex characters (SHA-256)",
            )
            .into());
        }
        let mut conn = self.conn().await?;
        diesel::insert_into(dsl::extraction_cache)
            .values(entry)
            .on_conflict((dsl::content_hash, dsl::extractor, dsl::extractor_version))
            .do_update()
            .set((
                dsl::result.eq(excluded(dsl::result)),
                dsl::created_at.eq(excluded(dsl::created_at)),
                dsl::expires_at.eq(excluded(dsl::expires_at)),
            ))
            .execute(&mut conn)
            .await
            .map(|_| ())
            .map_err(query_error)
    }

    /// Reads a profile from the app's shared `public.profiles` table.
    pub async fn profile(&self, user_id: uuid::Uuid) -> Result<Option<Profile>> {
        use super::schema::profiles::dsl;
        use diesel::{ExpressionMethods, OptionalExtension, QueryDsl, SelectableHelper};
        let mut conn = self.conn().await?;
        dsl::profiles
            .filter(dsl::id.eq(user_id))
            .select(Profile::as_select())
            .first(&mut conn)
            .await
            .optional()
            .map_err(query_error)
    }
}
