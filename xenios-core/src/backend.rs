//! [`AiBackend`]: the one typed entry point of the engine.

use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel_async::RunQueryDsl;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;

use crate::auth::{
    self, ApiKeyVerifier, AuthError, JwtVerifier, Principal, SharedLimiterStats, SharedRateLimiter,
};
use crate::config::Config;
use crate::context::RequestContext;
use crate::db::audit::{AuditStatsSnapshot, AuditWriter};
use crate::db::migrate::{self, Action};
use crate::db::models::{ExtractionCacheEntry, InferenceLog, JobRecord, Profile};
use crate::db::{self, PgPool, pool_error, query_error};
use crate::error::{Error, Result};
use crate::health::{self, ComponentHealth, Readiness};
use crate::llm::{
    Completion, CompletionRequest, FakeProvider, Llm, LlmStream, OpenRouterProvider, Provider,
    TokenBudget, TokenUsage,
};
use crate::redis::{self as xredis, RedisPool};

/// Name reported by `/api/v1/status`.
pub const SERVICE_NAME: &str = "xenios-ai-backend";
/// Version of this build.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Git commit of this build (`unknown` when built outside a checkout without `GIT_COMMIT`).
pub const GIT_COMMIT: &str = env!("XENIOS_GIT_COMMIT");

/// The engine. Cheap to clone: all clones share pools and state.
#[derive(Clone, Debug)]
pub struct AiBackend {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: Config,
    /// None when built without a database.
    db: Option<PgPool>,
    redis: RedisPool,
    /// False when built without Redis (then `redis` is a pool that never connects).
    has_redis: bool,
    http: reqwest::Client,
    api_keys: ApiKeyVerifier,
    audit: AuditWriter,
    jwt: JwtVerifier,
    rate_limiter: SharedRateLimiter,
    llm: Llm,
    jobs: crate::jobs::JobsState,
    started_at: Instant,
}

/// Builds an [`AiBackend`] from a [`Config`], optionally with parts supplied by the caller.
#[derive(Debug)]
pub struct AiBackendBuilder {
    config: Config,
    db: Option<PgPool>,
    redis: Option<RedisPool>,
    without_database: bool,
    without_redis: bool,
    http: Option<reqwest::Client>,
    llm_provider: Option<Arc<dyn Provider>>,
}

/// The message of the [`Error::Unavailable`] returned by what needs Postgres on a backend
/// built without a database.
pub const NO_DATABASE: &str =
    "no database configured (this backend was built without one: DATABASE_URL unset)";

/// Where a backend built without Redis points its (never used) Redis pool: a path that
/// cannot exist, so an accidental checkout fails locally, at once.
const NO_REDIS_URL: &str = "unix:///dev/null/no-redis-configured";

impl AiBackendBuilder {
    /// Uses this Postgres pool instead of building one from the config.
    pub fn db_pool(mut self, pool: PgPool) -> Self {
        self.db = Some(pool);
        self.without_database = false;
        self
    }

    /// Uses this Redis pool instead of building one from the config.
    pub fn redis_pool(mut self, pool: RedisPool) -> Self {
        self.redis = Some(pool);
        self.without_redis = false;
        self
    }

    /// Builds without Postgres, whatever `DATABASE_URL` says (also the default when it is
    /// empty, see [`Config::llm_only_from_env`]): for an embedder that only routes LLM calls.
    /// Audit rows are then dropped and counted in [`AiBackend::audit_stats`]
    /// (`dropped`), flushes return at once, readiness reports `postgres` as not configured,
    /// and what needs Postgres (migrations, job records, profiles, the extraction cache)
    /// fails at once with [`Error::Unavailable`] ([`NO_DATABASE`]).
    pub fn without_database(mut self) -> Self {
        self.db = None;
        self.without_database = true;
        self
    }

    /// Builds without Redis, whatever `REDIS_URL` says (also the default when it is empty):
    /// for an embedder that only routes LLM calls. LLM calls work; the job queue (enqueue,
    /// results, workers) fails at once with [`Error::Unavailable`] for `redis`;
    /// [`AiBackend::check_rate_limit`] counts in this process only; readiness reports
    /// `redis` as not configured. Daily user token budgets need Redis: with
    /// `LLM_USER_DAILY_TOKENS` set, [`AiBackendBuilder::build`] refuses.
    pub fn without_redis(mut self) -> Self {
        self.redis = None;
        self.without_redis = true;
        self
    }

    /// Uses this HTTP client for upstream calls.
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.http = Some(client);
        self
    }

    /// Uses this LLM provider instead of OpenRouter (or the fake without a key).
    pub fn llm_provider(mut self, provider: Arc<dyn Provider>) -> Self {
        self.llm_provider = Some(provider);
        self
    }

    /// Builds the backend. Pools are lazy: this does not wait for Postgres or Redis, so the
    /// process can start (and report itself not ready) while they are down.
    pub async fn build(self) -> Result<AiBackend> {
        let mut config = self.config;
        let db = match self.db {
            Some(p) => Some(p),
            None if self.without_database || config.database.url.expose_secret().is_empty() => {
                config.database.url = SecretString::from("");
                None
            }
            None => Some(db::build_pool(&config.database)?),
        };
        let redis = match self.redis {
            Some(p) => Some(p),
            None if self.without_redis || config.redis.url.expose_secret().is_empty() => {
                if config.llm.user_daily_tokens > 0 {
                    return Err(Error::Validation(
                        "LLM_USER_DAILY_TOKENS: daily token budgets are kept in Redis; set it \
                         to 0 or configure REDIS_URL"
                            .to_owned(),
                    ));
                }
                // The job queue and the shared rate limiter read the URL: empty, they have no
                // client and fail (or fall back) at once.
                config.redis.url = SecretString::from("");
                None
            }
            None => Some(xredis::build_pool(&config.redis)?),
        };
        let http = match self.http {
            Some(c) => c,
            None => upstream_http_client(config.llm.connect_timeout)?,
        };
        AiBackend::assemble(config, db, redis, http, self.llm_provider)
    }
}

/// The HTTP client used for upstream calls: pooled connections, HTTP/2 where offered.
pub fn default_http_client() -> Result<reqwest::Client> {
    upstream_http_client(Duration::from_secs(10))
}

/// [`default_http_client`] with the given connect timeout (`LLM_CONNECT_TIMEOUT_MS`).
pub fn upstream_http_client(connect_timeout: Duration) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .user_agent(concat!("xenios-ai-backend/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(connect_timeout)
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .build()
        .map_err(|e| Error::Internal(format!("cannot build the HTTP client: {e}")))
}

/// What `/api/v1/status` reports.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceStatus {
    /// Service name.
    pub service: &'static str,
    /// Crate version.
    pub version: &'static str,
    /// Git commit of the build.
    pub git_commit: &'static str,
    /// `ENVIRONMENT`.
    pub environment: &'static str,
    /// Seconds since the backend was built.
    pub uptime_secs: u64,
    /// Whether the fake LLM stands in for OpenRouter.
    pub fake_llm: bool,
    /// Health of each dependency.
    pub components: Vec<ComponentHealth>,
}

impl AiBackend {
    /// Starts building a backend from a configuration.
    pub fn builder(config: Config) -> AiBackendBuilder {
        AiBackendBuilder {
            config,
            db: None,
            redis: None,
            without_database: false,
            without_redis: false,
            http: None,
            llm_provider: None,
        }
    }

    /// Assembles a backend from ready-made parts (tests and embedders). Call it inside a
    /// Tokio runtime: it starts the audit writer task.
    pub fn from_parts(
        config: Config,
        db: PgPool,
        redis: RedisPool,
        http: reqwest::Client,
    ) -> AiBackend {
        let parts = AssembledParts {
            config,
            db: Some(db),
            redis,
            has_redis: true,
            http,
            llm_provider: None,
        };
        parts.assemble()
    }

    fn assemble(
        config: Config,
        db: Option<PgPool>,
        redis: Option<RedisPool>,
        http: reqwest::Client,
        llm_provider: Option<Arc<dyn Provider>>,
    ) -> Result<AiBackend> {
        let has_redis = redis.is_some();
        let redis = match redis {
            Some(p) => p,
            None => unconfigured_redis_pool()?,
        };
        let parts = AssembledParts {
            config,
            db,
            redis,
            has_redis,
            http,
            llm_provider,
        };
        Ok(parts.assemble())
    }
}

/// Everything [`AiBackend`] is assembled from.
struct AssembledParts {
    config: Config,
    db: Option<PgPool>,
    redis: RedisPool,
    has_redis: bool,
    http: reqwest::Client,
    llm_provider: Option<Arc<dyn Provider>>,
}

/// The Redis pool of a backend built without Redis: nothing uses it (the job queue has no
/// client, budgets are refused), and a checkout would fail locally within 100 ms.
fn unconfigured_redis_pool() -> Result<RedisPool> {
    let manager = bb8_redis::RedisConnectionManager::new(NO_REDIS_URL)
        .map_err(|e| Error::Internal(format!("placeholder Redis pool: {e}")))?;
    Ok(bb8::Pool::builder()
        .max_size(1)
        .min_idle(Some(0))
        .retry_connection(false)
        .connection_timeout(Duration::from_millis(100))
        .build_unchecked(manager))
}

impl AssembledParts {
    fn assemble(self) -> AiBackend {
        let AssembledParts {
            config,
            db,
            redis,
            has_redis,
            http,
            llm_provider,
        } = self;
        let api_keys =
            ApiKeyVerifier::with_previous(&config.api_key, config.api_key_previous.as_ref());
        let audit = match &db {
            Some(pool) => AuditWriter::start(
                pool.clone(),
                config.database.audit_queue_capacity,
                config.database.audit_batch_linger,
            ),
            None => AuditWriter::discarding(),
        };
        let jwt = JwtVerifier::new(&config.supabase, http.clone());
        let rate_limiter = SharedRateLimiter::new(&config.server.rate_limit, &config.redis);
        let provider: Arc<dyn Provider> = match (llm_provider, &config.openrouter.api_key) {
            (Some(p), _) => p,
            (None, Some(key)) => Arc::new(OpenRouterProvider::new(
                http.clone(),
                &config.openrouter.base_url,
                key.clone(),
            )),
            (None, None) => Arc::new(FakeProvider),
        };
        let budget = (has_redis && config.llm.user_daily_tokens > 0)
            .then(|| TokenBudget::new(redis.clone(), config.llm.user_daily_tokens));
        let llm = Llm::with_budget(
            provider,
            config.llm.clone(),
            audit.clone(),
            config.database.audit_store_payloads,
            budget,
        );
        let jobs = crate::jobs::JobsState::new(&config, redis.clone());
        AiBackend {
            inner: Arc::new(Inner {
                config,
                db,
                redis,
                has_redis,
                http,
                api_keys,
                audit,
                jwt,
                rate_limiter,
                llm,
                jobs,
                started_at: Instant::now(),
            }),
        }
    }
}

impl AiBackend {
    /// The configuration the backend was built with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The Postgres pool; None when built without a database
    /// ([`AiBackendBuilder::without_database`]).
    pub fn db(&self) -> Option<&PgPool> {
        self.inner.db.as_ref()
    }

    /// The Postgres pool, or [`Error::Unavailable`] ([`NO_DATABASE`]) without a database.
    fn pg(&self) -> Result<&PgPool> {
        self.inner.db.as_ref().ok_or_else(|| Error::Unavailable {
            component: "postgres",
            message: NO_DATABASE.to_owned(),
        })
    }

    /// True unless built without a database.
    pub fn has_database(&self) -> bool {
        self.inner.db.is_some()
    }

    /// True unless built without Redis.
    pub fn has_redis(&self) -> bool {
        self.inner.has_redis
    }

    /// The Redis pool. Built without Redis ([`AiBackendBuilder::without_redis`]), a pool
    /// that never connects: every checkout fails within 100 ms.
    pub fn redis(&self) -> &RedisPool {
        &self.inner.redis
    }

    /// The shared HTTP client for upstream calls.
    pub fn http(&self) -> &reqwest::Client {
        &self.inner.http
    }

    /// The background writer of audit rows (inference logs, job state changes).
    pub fn audit(&self) -> &AuditWriter {
        &self.inner.audit
    }

    /// The LLM engine: routing table, provider, counters.
    pub fn llm(&self) -> &Llm {
        &self.inner.llm
    }

    /// One LLM completion along the request's task route, with retries and fallback; writes
    /// an `inference_logs` row and sends the correlation ID upstream.
    pub async fn complete(
        &self,
        ctx: &RequestContext,
        req: CompletionRequest,
    ) -> Result<Completion> {
        self.inner.llm.complete(ctx, req).await
    }

    /// A streamed LLM completion (see [`Llm::stream`]): resolves at the first token, fails
    /// like [`AiBackend::complete`] when no model produced one; dropping the stream cancels
    /// the upstream request.
    pub async fn stream(&self, ctx: &RequestContext, req: CompletionRequest) -> Result<LlmStream> {
        self.inner.llm.stream(ctx, req).await
    }

    /// Job queue state (router, dedicated Redis client, producer events).
    pub(crate) fn jobs_state(&self) -> &crate::jobs::JobsState {
        &self.inner.jobs
    }

    /// Counters of the audit writer.
    pub fn audit_stats(&self) -> AuditStatsSnapshot {
        self.inner.audit.stats()
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
        self.pg()?;
        let db = &self.inner.config.database;
        let (url, options) = db::connect::parse_url(db.url.expose_secret(), db.prepared_statements)
            .map_err(|e| Error::Validation(format!("DATABASE_URL: {e}")))?;
        migrate::execute(url, options, action)
            .await
            .map_err(|message| Error::Unavailable {
                component: "postgres",
                message: format!("migration failed: {message}"),
            })
    }

    /// Flushes queued audit rows and waits for them to be written (shutdown, tests).
    pub async fn flush_audit(&self) {
        self.inner.audit.flush().await;
    }

    /// [`AiBackend::flush_audit`] bounded by `timeout` (for shutdowns); false when rows
    /// were still queued at the deadline (the count is logged).
    pub async fn flush_audit_within(&self, timeout: std::time::Duration) -> bool {
        self.inner.audit.flush_within(timeout).await
    }

    /// The stored metadata of one job.
    pub async fn job_record(&self, task_id: &str) -> Result<Option<JobRecord>> {
        use crate::db::schema::job_queue_metadata::dsl;
        use diesel::{ExpressionMethods, OptionalExtension, QueryDsl, SelectableHelper};
        let mut conn = self.pg()?.get().await.map_err(pool_error)?;
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
        use crate::db::schema::inference_logs::dsl;
        use diesel::{ExpressionMethods, QueryDsl, SelectableHelper};
        let mut conn = self.pg()?.get().await.map_err(pool_error)?;
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
        use crate::db::schema::extraction_cache::dsl;
        use diesel::{
            BoolExpressionMethods, ExpressionMethods, OptionalExtension, QueryDsl, SelectableHelper,
        };
        let mut conn = self.pg()?.get().await.map_err(pool_error)?;
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
        use crate::db::schema::extraction_cache::dsl;
        use diesel::ExpressionMethods;
        use diesel::upsert::excluded;
        let valid_hash = entry.content_hash.len() == 64
            && entry
                .content_hash
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !valid_hash {
            return Err(Error::Validation(
                "content_hash must be 64 lower-case hex characters (SHA-256)".to_owned(),
            ));
        }
        let mut conn = self.pg()?.get().await.map_err(pool_error)?;
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
        use crate::db::schema::profiles::dsl;
        use diesel::{ExpressionMethods, OptionalExtension, QueryDsl, SelectableHelper};
        let mut conn = self.pg()?.get().await.map_err(pool_error)?;
        dsl::profiles
            .filter(dsl::id.eq(user_id))
            .select(Profile::as_select())
            .first(&mut conn)
            .await
            .optional()
            .map_err(query_error)
    }

    /// Time since the backend was built.
    pub fn uptime(&self) -> Duration {
        self.inner.started_at.elapsed()
    }

    /// Checks an `X-API-Key` value in constant time.
    pub fn verify_api_key(&self, presented: Option<&str>) -> std::result::Result<(), AuthError> {
        self.inner.api_keys.verify(presented)
    }

    /// Verifies a Supabase access token (without the `Bearer ` prefix): HS256 against
    /// `SUPABASE_JWT_SECRET`, ES256/RS256 against the project's JWKS.
    pub async fn verify_bearer(&self, token: &str) -> std::result::Result<Principal, AuthError> {
        self.inner.jwt.verify(token).await
    }

    /// Authenticates a call from its raw `X-API-Key` and `Authorization` header values.
    ///
    /// The API key is always required. Without an `Authorization` header the caller is
    /// [`Principal::Service`] (backend to backend); with one, it must be a valid
    /// `Bearer <Supabase JWT>` and the caller is that user: a token that is present but
    /// invalid is refused, never ignored.
    ///
    /// OpenAI-style clients can only send one credential, as `Authorization: Bearer <key>`:
    /// without an `X-API-Key`, a bearer equal to the API key is the service principal.
    pub async fn authenticate(
        &self,
        api_key: Option<&str>,
        authorization: Option<&str>,
    ) -> std::result::Result<Principal, AuthError> {
        if let (None, Some(header)) = (api_key, authorization) {
            let token = auth::bearer_token(header)?;
            return match self.verify_api_key(Some(token)) {
                Ok(()) => Ok(Principal::Service),
                Err(_) => Err(AuthError::MissingApiKey),
            };
        }
        self.verify_api_key(api_key)?;
        match authorization {
            None => Ok(Principal::Service),
            Some(header) => self.verify_bearer(auth::bearer_token(header)?).await,
        }
    }

    /// Counts one request against the caller's rate limit (`RATE_LIMIT_PER_MINUTE`,
    /// `RATE_LIMIT_BURST`), shared by every replica through Redis (in leases, see
    /// [`SharedRateLimiter`]); [`Error::RateLimited`] with the wait when over it.
    pub async fn check_rate_limit(&self, principal: &Principal) -> Result<()> {
        self.inner.rate_limiter.check(principal).await
    }

    /// Counters of the shared rate limiter (Redis up, leases, fallback checks).
    pub fn rate_limit_stats(&self) -> SharedLimiterStats {
        self.inner.rate_limiter.stats()
    }

    /// Requests accepted with `XENIOS_BACKEND_API_KEY_PREVIOUS` since start.
    pub fn previous_api_key_uses(&self) -> u64 {
        self.inner.api_keys.previous_key_uses()
    }

    /// Today's LLM token spending of a user and the daily limit (`LLM_USER_DAILY_TOKENS`;
    /// limit 0 and nothing read from Redis when there is no budget).
    pub async fn user_token_usage(&self, user_id: &str) -> Result<TokenUsage> {
        match self.inner.llm.budget() {
            Some(b) => b.usage(user_id).await,
            None => Ok(TokenUsage { used: 0, limit: 0 }),
        }
    }

    /// [`Error::BudgetExceeded`] when `user_id` has spent today's token budget.
    ///
    /// [`AiBackend::complete`] and [`AiBackend::stream`] already check and charge the user of
    /// a [`RequestContext`] whose principal is a user (a job handler passes one built from the
    /// job's owner); these methods are for work that spends tokens on a user's behalf some
    /// other way.
    pub async fn check_user_budget(&self, user_id: &str) -> Result<()> {
        match self.inner.llm.budget() {
            Some(b) => b.check(user_id).await,
            None => Ok(()),
        }
    }

    /// Adds `tokens` to today's spending of `user_id` (no-op without a budget); returns the
    /// new total.
    pub async fn charge_user_tokens(&self, user_id: &str, tokens: u64) -> Result<u64> {
        match self.inner.llm.budget() {
            Some(b) => b.charge(user_id, tokens).await,
            None => Ok(0),
        }
    }

    /// Probes Postgres and Redis concurrently, each within `READY_TIMEOUT_MS`; one the
    /// backend was built without is reported as not configured, never probed.
    pub async fn readiness(&self) -> Readiness {
        let deadline = self.inner.config.server.ready_timeout;
        let pg = async {
            if self.has_database() {
                health::probe("postgres", deadline, self.ping_postgres()).await
            } else {
                ComponentHealth::not_configured("postgres")
            }
        };
        let redis = async {
            if self.has_redis() {
                health::probe("redis", deadline, self.ping_redis()).await
            } else {
                ComponentHealth::not_configured("redis")
            }
        };
        let (pg, redis) = tokio::join!(pg, redis);
        Readiness::from_components(vec![pg, redis])
    }

    /// Service identity, uptime and component health.
    pub async fn status(&self) -> ServiceStatus {
        let readiness = self.readiness().await;
        ServiceStatus {
            service: SERVICE_NAME,
            version: VERSION,
            git_commit: GIT_COMMIT,
            environment: self.inner.config.environment.as_str(),
            uptime_secs: self.uptime().as_secs(),
            fake_llm: self.inner.config.uses_fake_llm(),
            components: readiness.components,
        }
    }

    async fn ping_postgres(&self) -> std::result::Result<(), String> {
        let mut conn = self
            .pg()
            .map_err(|e| e.to_string())?
            .get()
            .await
            .map_err(|e| e.to_string())?;
        diesel::sql_query("SELECT 1")
            .execute(&mut conn)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    async fn ping_redis(&self) -> std::result::Result<(), String> {
        let mut conn = self.inner.redis.get().await.map_err(|e| e.to_string())?;
        let pong: String = xredis::redis::cmd("PING")
            .query_async(&mut *conn)
            .await
            .map_err(|e| e.to_string())?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(format!("unexpected PING reply `{pong}`"))
        }
    }
}
