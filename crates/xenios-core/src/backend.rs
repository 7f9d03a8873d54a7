//! [`AiBackend`]: the one typed entry point of the engine.

use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel_async::RunQueryDsl;
use serde::Serialize;

use crate::auth::{self, ApiKeyVerifier, AuthError, JwtVerifier, Principal, RateLimiter};
use crate::config::Config;
use crate::db::{self, PgPool};
use crate::error::{Error, Result};
use crate::health::{self, ComponentHealth, Readiness};
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
    db: PgPool,
    redis: RedisPool,
    http: reqwest::Client,
    api_keys: ApiKeyVerifier,
    jwt: JwtVerifier,
    rate_limiter: RateLimiter,
    started_at: Instant,
}

/// Builds an [`AiBackend`] from a [`Config`], optionally with parts supplied by the caller.
#[derive(Debug)]
pub struct AiBackendBuilder {
    config: Config,
    db: Option<PgPool>,
    redis: Option<RedisPool>,
    http: Option<reqwest::Client>,
}

impl AiBackendBuilder {
    /// Uses this Postgres pool instead of building one from the config.
    pub fn db_pool(mut self, pool: PgPool) -> Self {
        self.db = Some(pool);
        self
    }

    /// Uses this Redis pool instead of building one from the config.
    pub fn redis_pool(mut self, pool: RedisPool) -> Self {
        self.redis = Some(pool);
        self
    }

    /// Uses this HTTP client for upstream calls.
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.http = Some(client);
        self
    }

    /// Builds the backend. Pools are lazy: this does not wait for Postgres or Redis, so the
    /// process can start (and report itself not ready) while they are down.
    pub async fn build(self) -> Result<AiBackend> {
        let db = match self.db {
            Some(p) => p,
            None => db::build_pool(&self.config.database),
        };
        let redis = match self.redis {
            Some(p) => p,
            None => xredis::build_pool(&self.config.redis)?,
        };
        let http = match self.http {
            Some(c) => c,
            None => default_http_client()?,
        };
        Ok(AiBackend::from_parts(self.config, db, redis, http))
    }
}

/// The HTTP client used for upstream calls: pooled connections, HTTP/2 where offered.
pub fn default_http_client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .user_agent(concat!("xenios-ai-backend/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(10))
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
            http: None,
        }
    }

    /// Assembles a backend from ready-made parts (tests and embedders).
    pub fn from_parts(
        config: Config,
        db: PgPool,
        redis: RedisPool,
        http: reqwest::Client,
    ) -> AiBackend {
        let api_keys = ApiKeyVerifier::new(&config.api_key);
        let jwt = JwtVerifier::new(&config.supabase, http.clone());
        let rate_limiter = RateLimiter::new(&config.server.rate_limit);
        AiBackend {
            inner: Arc::new(Inner {
                config,
                db,
                redis,
                http,
                api_keys,
                jwt,
                rate_limiter,
                started_at: Instant::now(),
            }),
        }
    }

    /// The configuration the backend was built with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The Postgres pool.
    pub fn db(&self) -> &PgPool {
        &self.inner.db
    }

    /// The Redis pool.
    pub fn redis(&self) -> &RedisPool {
        &self.inner.redis
    }

    /// The shared HTTP client for upstream calls.
    pub fn http(&self) -> &reqwest::Client {
        &self.inner.http
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
    pub async fn authenticate(
        &self,
        api_key: Option<&str>,
        authorization: Option<&str>,
    ) -> std::result::Result<Principal, AuthError> {
        self.verify_api_key(api_key)?;
        match authorization {
            None => Ok(Principal::Service),
            Some(header) => self.verify_bearer(auth::bearer_token(header)?).await,
        }
    }

    /// Counts one request against the caller's rate limit (`RATE_LIMIT_PER_MINUTE`,
    /// `RATE_LIMIT_BURST`); [`Error::RateLimited`] with the wait when over it.
    pub fn check_rate_limit(&self, principal: &Principal) -> Result<()> {
        self.inner.rate_limiter.check(principal)
    }

    /// Probes Postgres and Redis concurrently, each within `READY_TIMEOUT_MS`.
    pub async fn readiness(&self) -> Readiness {
        let deadline = self.inner.config.server.ready_timeout;
        let (pg, redis) = tokio::join!(
            health::probe("postgres", deadline, self.ping_postgres()),
            health::probe("redis", deadline, self.ping_redis()),
        );
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
        let mut conn = self.inner.db.get().await.map_err(|e| e.to_string())?;
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
