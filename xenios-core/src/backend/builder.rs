//! Building an [`AiBackend`]: from a [`Config`], with parts a caller may supply.

use std::sync::Arc;
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};

use super::{AiBackend, Inner};
use crate::auth::Auth;
use crate::config::Config;
use crate::db::audit::AuditWriter;
use crate::db::{self, Database, PgPool};
use crate::error::{Error, Result};
use crate::jobs::Jobs;
use crate::llm::{FakeProvider, Llm, OpenRouterProvider, Provider, TokenBudget, Upstream};
use crate::redis::{self as xredis, RedisPool};

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

    /// Uses this HTTP client for upstream calls and the JWKS, shared by every thread.
    /// Without it, each thread gets an upstream client of its own ([`crate::llm::upstream`]).
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
        // Without a client of the embedder's, upstream LLM calls get a client per thread
        // (`llm::upstream`); the other HTTP calls (the JWKS) share the first one.
        let (http, upstream) = match self.http {
            Some(c) => (c.clone(), Upstream::Shared(c)),
            None => {
                let upstream = Upstream::per_thread(config.llm.connect_timeout)?;
                (upstream.shared().clone(), upstream)
            }
        };
        Parts {
            config,
            db,
            redis,
            http,
            upstream,
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
            upstream: Upstream::Shared(http.clone()),
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
    upstream: Upstream,
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
            upstream,
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
                upstream,
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
