//! [`AiBackend`]: the one typed entry point of the engine, and its builder.
//!
//! The facade owns what every domain shares (the configuration, the pools, the background
//! tasks) and hands out one small handle per domain: [`AiBackend::llm`],
//! [`AiBackend::jobs`], [`AiBackend::auth`], [`AiBackend::database`]. What a caller does
//! lives on the handle of its domain; what concerns the whole backend (readiness, status,
//! shutdown) lives here.

use std::sync::Arc;
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;

use crate::auth::{Auth, Principal, UserContext};
use crate::config::Config;
use crate::context::RequestContext;
use crate::db::audit::AuditWriter;
use crate::db::{self, Database, PgPool};
use crate::error::{Component, Error, Result};
use crate::health::{self, ComponentHealth, Readiness};
use crate::jobs::Jobs;
use crate::jobs::worker::WorkerDeps;
use crate::llm::{FakeProvider, Llm, OpenRouterProvider, Provider, TokenBudget, TokenUsage};
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
    /// Built without Redis: a pool that never connects, see [`unconfigured_redis_pool`].
    redis: RedisPool,
    has_redis: bool,
    database: Database,
    auth: Auth,
    llm: Llm,
    jobs: Jobs,
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
    /// Audit rows are then dropped and counted in [`Database::audit_stats`] (`dropped`),
    /// flushes return at once, readiness reports `postgres` as not configured, and what
    /// needs Postgres (migrations, job records, profiles, the extraction cache) fails at
    /// once with [`db::DbError::NotConfigured`].
    pub fn without_database(mut self) -> Self {
        self.db = None;
        self.without_database = true;
        self
    }

    /// Builds without Redis, whatever `REDIS_URL` says (also the default when it is empty):
    /// for an embedder that only routes LLM calls. LLM calls work; the job queue (enqueue,
    /// results, workers) fails at once with [`Error::Unavailable`] for `redis`;
    /// [`Auth::check_rate_limit`] counts in this process only; readiness reports `redis`
    /// as not configured. Daily user token budgets need Redis: with
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

    /// Builds the backend. Everything that can be wrong with the configuration fails here
    /// (a `DATABASE_URL` or `REDIS_URL` that cannot be used, a budget without Redis), not
    /// on first use. Pools are lazy: this does not wait for Postgres or Redis, so the
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
        Parts {
            config,
            db,
            redis,
            http,
            llm_provider: self.llm_provider,
        }
        .assemble()
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
    /// Whether the built-in fake LLM answers (no `OPENROUTER_API_KEY` and no provider
    /// given to the builder).
    pub fake_llm: bool,
    /// Health of each dependency.
    pub components: Vec<ComponentHealth>,
}

/// Who is calling, as `/api/v1/me` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Whoami {
    /// `user`, `service` or `system` ([`Principal::kind_name`]).
    pub principal: &'static str,
    /// The signed-in user, for a user.
    pub user: Option<UserContext>,
    /// For a user: today's LLM token spending and the daily limit.
    pub tokens: Option<TokenUsage>,
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
    /// Tokio runtime: it starts the audit writer and event sender tasks.
    pub fn from_parts(
        config: Config,
        db: PgPool,
        redis: RedisPool,
        http: reqwest::Client,
    ) -> Result<AiBackend> {
        Parts {
            config,
            db: Some(db),
            redis: Some(redis),
            http,
            llm_provider: None,
        }
        .assemble()
    }
}

/// Everything [`AiBackend`] is assembled from.
struct Parts {
    config: Config,
    db: Option<PgPool>,
    redis: Option<RedisPool>,
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

impl Parts {
    fn assemble(self) -> Result<AiBackend> {
        let Parts {
            config,
            db,
            redis,
            http,
            llm_provider,
        } = self;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::Internal(
                "AiBackend must be built inside a Tokio runtime".to_owned(),
            ));
        }
        let has_redis = redis.is_some();
        let redis = match redis {
            Some(p) => p,
            None => unconfigured_redis_pool()?,
        };
        let audit = match &db {
            Some(pool) => AuditWriter::start(
                pool.clone(),
                config.database.audit_queue_capacity,
                config.database.audit_batch_linger,
            ),
            None => AuditWriter::discarding(),
        };
        let auth = Auth::new(&config, http.clone());
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
        let jobs = Jobs::new(&config, redis.clone(), has_redis, audit.clone())?;
        let database = Database::new(db, config.database.clone(), audit);
        Ok(AiBackend {
            inner: Arc::new(Inner {
                config,
                redis,
                has_redis,
                database,
                auth,
                llm,
                jobs,
                started_at: Instant::now(),
            }),
        })
    }
}

impl AiBackend {
    /// The configuration the backend was built with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// LLM calls: [`Llm::complete`] and [`Llm::stream`] along a task's route with retries
    /// and fallback, daily user budgets ([`Llm::budget`]), counters ([`Llm::metrics`]).
    pub fn llm(&self) -> &Llm {
        &self.inner.llm
    }

    /// The job queue's producer: enqueue, results, revocation.
    pub fn jobs(&self) -> &Jobs {
        &self.inner.jobs
    }

    /// Authentication (API key, Supabase tokens) and rate limits.
    pub fn auth(&self) -> &Auth {
        &self.inner.auth
    }

    /// Postgres: migrations, job and inference rows, the extraction cache, profiles, and
    /// the audit writer's counters.
    pub fn database(&self) -> &Database {
        &self.inner.database
    }

    /// True unless built without a database.
    pub fn has_database(&self) -> bool {
        self.inner.database.is_configured()
    }

    /// True unless built without Redis.
    pub fn has_redis(&self) -> bool {
        self.inner.has_redis
    }

    /// The parts a [`crate::jobs::worker::Worker`] runs on (jobs settings and client, Redis,
    /// job rows, the LLM handle), handed over so the worker never holds the facade.
    pub fn worker_deps(&self) -> WorkerDeps {
        let i = &self.inner;
        WorkerDeps::new(
            i.config.jobs.clone(),
            i.config.redis.url.clone(),
            i.jobs.clone(),
            i.redis.clone(),
            i.database.clone(),
            i.llm.clone(),
        )
    }

    /// Time since the backend was built.
    pub fn uptime(&self) -> Duration {
        self.inner.started_at.elapsed()
    }

    /// Applies the migration policy of the configuration at startup: with
    /// `RUN_MIGRATIONS` on, applies pending migrations and returns their versions; off,
    /// does nothing (an operator runs `xenios-cli migrate`).
    pub async fn prepare(&self) -> Result<Vec<String>> {
        if !self.inner.config.database.run_migrations {
            return Ok(Vec::new());
        }
        let applied = self.inner.database.migrate().await?;
        tracing::info!(applied = ?applied, "migrations up to date");
        Ok(applied)
    }

    /// Who `ctx` is, with today's token use for a user.
    pub async fn whoami(&self, ctx: &RequestContext) -> Result<Whoami> {
        let principal = ctx.principal.kind_name();
        Ok(match &ctx.principal {
            Principal::User(u) => {
                let tokens = match self.inner.llm.budget() {
                    Some(b) => b.usage(&u.user_id).await?,
                    None => TokenUsage { used: 0, limit: 0 },
                };
                Whoami {
                    principal,
                    user: Some(u.clone()),
                    tokens: Some(tokens),
                }
            }
            _ => Whoami {
                principal,
                user: None,
                tokens: None,
            },
        })
    }

    /// Stops what construction started: waits (at most `deadline`) for queued audit rows
    /// and job events to be written, then stops the audit writer and the event sender.
    /// Returns false when audit rows were still queued at the deadline (they are counted
    /// as dropped). Call once, when the process stops; the backend must not be used after.
    pub async fn shutdown(&self, deadline: Duration) -> bool {
        let (flushed, ()) = tokio::join!(self.inner.database.flush_audit_within(deadline), async {
            if tokio::time::timeout(deadline, self.inner.jobs.shutdown())
                .await
                .is_err()
            {
                tracing::warn!("job events still queued at shutdown");
            }
        });
        self.inner.database.audit().stop();
        flushed
    }

    /// Probes Postgres and Redis concurrently, each within `READY_TIMEOUT_MS`; one the
    /// backend was built without is reported as not configured, never probed.
    pub async fn readiness(&self) -> Readiness {
        let deadline = self.inner.config.server.ready_timeout;
        let pg = async {
            if self.has_database() {
                health::probe(Component::Postgres, deadline, self.inner.database.ping()).await
            } else {
                ComponentHealth::not_configured(Component::Postgres)
            }
        };
        let redis = async {
            if self.has_redis() {
                health::probe(Component::Redis, deadline, self.ping_redis()).await
            } else {
                ComponentHealth::not_configured(Component::Redis)
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
            fake_llm: self.inner.llm.provider_name() == Provider::name(&FakeProvider),
            components: readiness.components,
        }
    }

    async fn ping_redis(&self) -> Result<()> {
        let mut conn = self
            .inner
            .redis
            .get()
            .await
            .map_err(|e| Error::unavailable_from(Component::Redis, e))?;
        let pong: String = xredis::redis::cmd("PING")
            .query_async(&mut *conn)
            .await
            .map_err(xredis::error)?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(xredis::unavailable(format!(
                "unexpected PING reply `{pong}`"
            )))
        }
    }
}

impl From<&AiBackend> for WorkerDeps {
    fn from(backend: &AiBackend) -> Self {
        backend.worker_deps()
    }
}

impl From<AiBackend> for WorkerDeps {
    fn from(backend: AiBackend) -> Self {
        backend.worker_deps()
    }
}
