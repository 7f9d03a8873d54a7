//! Typed configuration, read from the environment (and an optional `.env` file).
//!
//! Every variable is documented where it is read, below, and again in `.env.example`.
//! Reading never stops at the first problem: [`Config::from_env`] collects every missing or
//! malformed variable and reports them together in one [`ConfigError`], so an operator fixes a
//! bad deployment in one go. Secrets are [`SecretString`]s: their `Debug` is redacted and they
//! are never logged.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

/// The API key used in development when `XENIOS_BACKEND_API_KEY` is not set. Never accepted
/// in staging or production.
pub const DEV_API_KEY: &str = "xenios-dev-key";

/// Deployment environment (`ENVIRONMENT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    /// Local development: human-readable logs, permissive defaults, fake LLM without a key.
    Development,
    /// Staging: production rules for logging, relaxed requirements on keys.
    Staging,
    /// Production: every secret required, no wildcard CORS.
    Production,
}

impl Environment {
    /// The name as written in `ENVIRONMENT`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Development => "development",
            Self::Staging => "staging",
            Self::Production => "production",
        }
    }
}

impl FromStr for Environment {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "development" | "dev" | "local" => Ok(Self::Development),
            "staging" | "stage" => Ok(Self::Staging),
            "production" | "prod" => Ok(Self::Production),
            other => Err(format!(
                "`{other}` is not one of development, staging, production"
            )),
        }
    }
}

impl fmt::Display for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Log output format (`LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line (staging and production default).
    Json,
    /// Human-readable, coloured when on a terminal (development default).
    Pretty,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "json" => Ok(Self::Json),
            "pretty" | "text" | "human" => Ok(Self::Pretty),
            other => Err(format!("`{other}` is not one of json, pretty")),
        }
    }
}

/// Postgres settings.
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// `DATABASE_URL`: a libpq-style URL. May carry a password, hence secret.
    /// `sslmode=require` (Supabase) turns TLS on. Empty when no database is configured
    /// (only [`Config::llm_only_from_env`] allows that).
    pub url: SecretString,
    /// `DATABASE_POOL_SIZE`: most connections held by this process (default 10).
    pub pool_size: u32,
    /// `DATABASE_CONNECT_TIMEOUT_MS`: how long a query waits for a pooled connection
    /// (default 5000).
    pub connect_timeout: Duration,
    /// `DATABASE_PREPARED_STATEMENTS`: cache prepared statements per connection (default true).
    /// Set to false behind Supabase's transaction pooler (port 6543), which cannot keep
    /// named statements across transactions.
    pub prepared_statements: bool,
    /// `RUN_MIGRATIONS`: apply embedded migrations when the server starts (default false).
    pub run_migrations: bool,
    /// `AUDIT_QUEUE_CAPACITY`: audit rows held in memory while Postgres is slow or down
    /// (default 10000); beyond it rows are dropped and counted.
    pub audit_queue_capacity: usize,
    /// `AUDIT_BATCH_LINGER_MS`: how long the audit writer gathers rows into one statement
    /// (default 20 ms; 0 writes whatever has queued at once). One insert per request would
    /// cost Postgres CPU, on the same machine, at every request.
    pub audit_batch_linger: Duration,
    /// `AUDIT_STORE_PAYLOADS`: also store prompts and outputs in `inference_logs`
    /// (default false: they may hold personal data).
    pub audit_store_payloads: bool,
}

/// Redis settings.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `REDIS_URL`, e.g. `redis://127.0.0.1:6379/0`. May carry a password, hence secret.
    /// Empty when no Redis is configured (only [`Config::llm_only_from_env`] allows that).
    pub url: SecretString,
    /// `REDIS_POOL_SIZE`: most connections held by this process (default 16).
    pub pool_size: u32,
}

/// Supabase Auth settings.
#[derive(Debug, Clone, Default)]
pub struct SupabaseConfig {
    /// `SUPABASE_URL`, e.g. `https://<ref>.supabase.co`.
    pub url: Option<String>,
    /// `SUPABASE_JWT_SECRET`: the legacy HS256 shared secret.
    pub jwt_secret: Option<SecretString>,
    /// `SUPABASE_JWKS_URL`: overrides `<SUPABASE_URL>/auth/v1/.well-known/jwks.json`.
    pub jwks_url: Option<String>,
    /// `SUPABASE_JWKS_CACHE_TTL_SECS`: how long a fetched key set is trusted before it is
    /// fetched again (default and maximum 600: Supabase's own edge caches it 10 minutes).
    pub jwks_cache_ttl: Duration,
    /// `SUPABASE_JWKS_MIN_REFRESH_MS`: least time between two fetches of the key set, so a
    /// flood of tokens with unknown `kid`s cannot turn into a flood of fetches (default 30000).
    pub jwks_min_refresh_interval: Duration,
    /// `SUPABASE_JWKS_TIMEOUT_MS`: deadline of one key-set fetch (default 5000).
    pub jwks_timeout: Duration,
}

impl SupabaseConfig {
    /// The expected `iss` of user tokens, `<SUPABASE_URL>/auth/v1`, when the URL is known.
    pub fn issuer(&self) -> Option<String> {
        self.url.as_ref().map(|u| format!("{u}/auth/v1"))
    }

    /// Where the project's public signing keys are: `SUPABASE_JWKS_URL`, or
    /// `<SUPABASE_URL>/auth/v1/.well-known/jwks.json`, or none (HS256 only).
    pub fn jwks_url(&self) -> Option<String> {
        self.jwks_url.clone().or_else(|| {
            self.issuer()
                .map(|iss| format!("{iss}/.well-known/jwks.json"))
        })
    }
}

/// Largest accepted `SUPABASE_JWKS_CACHE_TTL_SECS`.
pub const MAX_JWKS_CACHE_TTL: Duration = Duration::from_secs(600);

/// Per-caller rate limits (a signed-in user, or the service for API-key-only calls).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// `RATE_LIMIT_PER_MINUTE`: sustained requests per minute per caller (default 300;
    /// 0 turns rate limiting off).
    pub per_minute: u32,
    /// `RATE_LIMIT_BURST`: requests a caller may send at once before the per-minute rate
    /// applies (default 60).
    pub burst: u32,
    /// `RATE_LIMIT_LEASE`: most tokens one process takes from the shared Redis bucket at once
    /// (default 8, at most a quarter of the burst); see [`crate::auth::SharedRateLimiter`].
    pub lease: u32,
    /// `RATE_LIMIT_REDIS_TIMEOUT_MS`: how long a request waits for the shared limiter's Redis
    /// before the in-process limiter decides (default 200).
    pub redis_timeout: Duration,
}

impl RateLimitConfig {
    /// `per_minute` requests per minute with bursts of `burst`, the other settings default.
    pub fn new(per_minute: u32, burst: u32) -> Self {
        Self {
            per_minute,
            burst,
            lease: 8,
            redis_timeout: Duration::from_millis(200),
        }
    }
}

/// OpenRouter settings.
#[derive(Debug, Clone)]
pub struct OpenRouterConfig {
    /// `OPENROUTER_API_KEY`. Without it (development only) the built-in fake LLM is used.
    pub api_key: Option<SecretString>,
    /// `OPENROUTER_BASE_URL` (default `https://openrouter.ai/api/v1`).
    pub base_url: String,
}

/// HTTP server settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// `HOST` (default `0.0.0.0`).
    pub host: String,
    /// `PORT` (default 8000).
    pub port: u16,
    /// `CORS_ORIGINS`: comma-separated allowed origins (default `http://localhost:3000` in
    /// development, none otherwise: no cross-origin access). `*` (any origin) is accepted in
    /// development only.
    pub cors_origins: Vec<String>,
    /// `SHUTDOWN_TIMEOUT_SECS`: how long in-flight requests may run after SIGTERM (default 20;
    /// with the 5 s audit flush after it, a stop fits a 30 s grace period).
    pub shutdown_timeout: Duration,
    /// `READY_TIMEOUT_MS`: per-component deadline of the readiness probe (default 1000).
    pub ready_timeout: Duration,
    /// `MAX_BODY_BYTES`: largest accepted request body (default 1 MiB).
    pub max_body_bytes: usize,
    /// Per-caller rate limits of the authenticated API.
    pub rate_limit: RateLimitConfig,
}

/// What cross-origin requests the server allows ([`ServerConfig::cors`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorsPolicy {
    /// Allowed origins; empty means any origin (`CORS_ORIGINS=*`, development only).
    pub origins: Vec<String>,
    /// Allowed methods.
    pub methods: &'static [&'static str],
    /// Allowed request headers.
    pub headers: &'static [&'static str],
    /// Response headers a browser may read.
    pub expose_headers: &'static [&'static str],
    /// How long a browser may cache a preflight answer.
    pub max_age: Duration,
}

impl ServerConfig {
    /// The CORS policy: None without configured origins, and then no CORS header is ever
    /// sent (an empty allow-list would mean any origin). `*` allows any origin.
    pub fn cors(&self) -> Option<CorsPolicy> {
        if self.cors_origins.is_empty() {
            return None;
        }
        Some(CorsPolicy {
            origins: self
                .cors_origins
                .iter()
                .filter(|o| o.as_str() != "*")
                .cloned()
                .collect(),
            methods: &["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
            headers: &[
                "authorization",
                "content-type",
                "x-api-key",
                "x-request-id",
                "x-correlation-id",
            ],
            expose_headers: &["x-request-id", "retry-after"],
            max_age: Duration::from_secs(600),
        })
    }
}

/// Job queue settings (Celery-compatible queues on Redis, see [`crate::jobs`]).
#[derive(Debug, Clone)]
pub struct JobsConfig {
    /// `JOB_DEFAULT_QUEUE`: queue of tasks no route matches (default `default`).
    pub default_queue: String,
    /// `JOB_ROUTES`: comma-separated `prefix=queue` pairs; the longest task-name prefix wins
    /// (default routes `xenios.llm.`, `llm.` to `llm`, and likewise `extraction`,
    /// `transcription`, `analytics`).
    pub routes: Vec<(String, String)>,
    /// `JOB_VISIBILITY_TIMEOUT_SECS`: how long a taken, unacknowledged message may go without
    /// a sign of life from its worker before it is restored to its queue (default 3600, as
    /// kombu). Live workers refresh the messages they hold, so long jobs are not duplicated.
    pub visibility_timeout: Duration,
    /// `JOB_RESULT_EXPIRES_SECS`: lifetime of `celery-task-meta-*` results (default 86400).
    pub result_expires: Duration,
    /// `JOB_SOFT_TIME_LIMIT_SECS`: default soft limit; the handler is told (default 300).
    pub soft_time_limit: Duration,
    /// `JOB_HARD_TIME_LIMIT_SECS`: default hard limit; the handler is stopped (default 600).
    pub hard_time_limit: Duration,
    /// `JOB_MAX_RETRIES`: retries a handler may ask for (default 3).
    pub max_retries: u32,
    /// `JOB_TASK_EVENTS`: workers send task events for Flower from the start, like
    /// `celery worker -E` (default true).
    pub task_events: bool,
    /// `JOB_MAX_TIME_LIMIT_SECS`: longest time limit a message or a `time_limit` control
    /// command may ask for; longer ones are cut to it (default 86400).
    pub max_time_limit: Duration,
    /// `JOB_MAX_MESSAGE_BYTES`: largest message a worker runs; larger ones are
    /// dead-lettered with a FAILURE result (default 262144, 256 KiB).
    pub max_message_bytes: usize,
    /// `JOB_MAX_ETA_HELD`: ETA/countdown messages a worker holds in memory beyond its
    /// prefetch; past that they take prefetch slots and the rest wait in Redis (default 1000).
    pub max_eta_held: usize,
    /// `WORKER_SHUTDOWN_TIMEOUT_SECS`: how long a warm shutdown waits for running jobs
    /// before it gives their messages back to their queues and exits (default 100, below
    /// the compose files' 120 s `stop_grace_period`).
    pub worker_shutdown_timeout: Duration,
    /// `WORKER_HEALTH_FILE`: the file a running worker rewrites every 2 s while Redis answers
    /// it; `xenios-worker --check` reads it (default `/tmp/xenios-worker.health`).
    pub worker_health_file: std::path::PathBuf,
    /// `WORKER_HEALTH_MAX_AGE_SECS`: `xenios-worker --check` fails when the health file is
    /// older than this (default 30).
    pub worker_health_max_age: Duration,
    /// `WORKER_REDIS_GIVE_UP_SECS`: a worker without Redis for this long exits non-zero, for
    /// its supervisor to restart it (default: never gives up).
    pub worker_redis_give_up: Option<Duration>,
    /// `JOB_DIAGNOSTIC_TASKS`: register (and catalogue) `xenios.sleep` and `xenios.fail`
    /// (default true in development only).
    pub diagnostic_tasks: bool,
    /// `JOB_EXTRA_TASKS`: tasks of Python workers HTTP callers may enqueue, as
    /// comma-separated `name/queue/users|service/max_bytes` (see
    /// [`crate::jobs::catalog::parse_extra_tasks`]).
    pub extra_tasks: Vec<crate::jobs::catalog::TaskDecl>,
}

/// The whole configuration of the backend.
#[derive(Debug, Clone)]
pub struct Config {
    /// `ENVIRONMENT` (default development).
    pub environment: Environment,
    /// HTTP server settings.
    pub server: ServerConfig,
    /// Postgres settings.
    pub database: DatabaseConfig,
    /// Redis settings.
    pub redis: RedisConfig,
    /// Supabase Auth settings.
    pub supabase: SupabaseConfig,
    /// `XENIOS_BACKEND_API_KEY`: the key the app's proxy sends in `X-API-Key`.
    /// Defaults to [`DEV_API_KEY`] in development only.
    pub api_key: SecretString,
    /// `XENIOS_BACKEND_API_KEY_PREVIOUS`: the key being rotated out, accepted beside the
    /// current one until every client uses the new key (optional; uses are counted in
    /// `/metrics` and logged).
    pub api_key_previous: Option<SecretString>,
    /// OpenRouter settings.
    pub openrouter: OpenRouterConfig,
    /// `DEEPGRAM_API_KEY`: transcription provider key (optional).
    pub deepgram_api_key: Option<SecretString>,
    /// `LOG_LEVEL`: a tracing filter such as `info` or `xenios_core=debug,info` (default info).
    pub log_level: String,
    /// `LOG_FORMAT`: json or pretty (default: pretty in development, json otherwise).
    pub log_format: LogFormat,
    /// `SENTRY_DSN` (optional): where error reports go (see [`crate::telemetry::reporting`]).
    pub sentry_dsn: Option<SecretString>,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` (optional): base URL of an OTLP/HTTP collector, e.g.
    /// `http://otel-collector:4318`; spans go to `<it>/v1/traces` (see
    /// [`crate::telemetry::trace`]).
    pub otel_endpoint: Option<String>,
    /// LLM routes, timeouts and retries (`LLM_*`, see [`crate::llm::routing`]).
    pub llm: crate::llm::LlmConfig,
    /// Job queue settings.
    pub jobs: JobsConfig,
}

/// Every problem found while reading the configuration, reported together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration ({} problem{}):\n  - {}", problems.len(), if problems.len() == 1 { "" } else { "s" }, problems.join("\n  - "))]
pub struct ConfigError {
    /// One line per problem, each naming its variable.
    pub problems: Vec<String>,
}

/// Reads variables and collects problems, so that all are reported at once.
struct Reader<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
    problems: Vec<String>,
}

impl Reader<'_> {
    /// A set, non-blank variable.
    fn get(&self, name: &str) -> Option<String> {
        (self.lookup)(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    fn parse<T: FromStr>(&mut self, name: &str, default: T) -> T
    where
        T::Err: fmt::Display,
    {
        match self.get(name) {
            None => default,
            Some(raw) => match raw.parse() {
                Ok(v) => v,
                Err(e) => {
                    self.problems
                        .push(format!("{name}: cannot parse `{raw}`: {e}"));
                    default
                }
            },
        }
    }

    fn bool(&mut self, name: &str, default: bool) -> bool {
        match self.get(name).map(|v| v.to_ascii_lowercase()) {
            None => default,
            Some(v) if matches!(v.as_str(), "1" | "true" | "yes" | "on") => true,
            Some(v) if matches!(v.as_str(), "0" | "false" | "no" | "off") => false,
            Some(v) => {
                self.problems
                    .push(format!("{name}: `{v}` is not a boolean (true/false)"));
                default
            }
        }
    }

    fn secret(&self, name: &str) -> Option<SecretString> {
        self.get(name).map(SecretString::from)
    }

    fn missing(&mut self, name: &str, why: &str) {
        self.problems.push(format!("{name}: missing ({why})"));
    }
}

impl Config {
    /// Reads the configuration from the process environment, after loading `.env` from the
    /// current directory if there is one (variables already set win over the file).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::read_env(false)
    }

    fn read_env(storage_optional: bool) -> Result<Self, ConfigError> {
        // A missing .env is normal; a malformed one is worth a problem line.
        let mut dotenv_problem = None;
        match dotenvy::dotenv() {
            Ok(_) => {}
            Err(e) if e.not_found() => {}
            Err(e) => dotenv_problem = Some(format!(".env: cannot be read: {e}")),
        }
        let result = Self::read(&|name| std::env::var(name).ok(), storage_optional);
        match (result, dotenv_problem) {
            (Ok(config), None) => Ok(config),
            (Ok(_), Some(p)) => Err(ConfigError { problems: vec![p] }),
            (Err(mut e), Some(p)) => {
                e.problems.insert(0, p);
                Err(e)
            }
            (Err(e), None) => Err(e),
        }
    }

    /// Reads the configuration from an explicit map (tests, embedders), with the same rules
    /// and defaults as [`Config::from_env`].
    pub fn from_map(vars: &HashMap<String, String>) -> Result<Self, ConfigError> {
        Self::from_lookup(&|name| vars.get(name).cloned())
    }

    /// Reads the configuration through any variable lookup function.
    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        Self::read(lookup, false)
    }

    /// [`Config::from_env`] for an embedder that only routes LLM calls: `DATABASE_URL` and
    /// `REDIS_URL` are optional in every environment (checked when set). An unset one is
    /// left empty, and [`crate::AiBackend::builder`] then builds the backend without that
    /// store (see [`crate::AiBackendBuilder::without_database`]). The server and the worker
    /// never read their configuration this way: they need both.
    pub fn llm_only_from_env() -> Result<Self, ConfigError> {
        Self::read_env(true)
    }

    /// [`Config::llm_only_from_env`] through any variable lookup function.
    pub fn llm_only_from_lookup(
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        Self::read(lookup, true)
    }

    fn read(
        lookup: &dyn Fn(&str) -> Option<String>,
        storage_optional: bool,
    ) -> Result<Self, ConfigError> {
        let mut r = Reader {
            lookup,
            problems: Vec::new(),
        };
        let environment = r.parse("ENVIRONMENT", Environment::Development);
        let dev = environment == Environment::Development;
        let prod = environment == Environment::Production;

        let database_url = match r.secret("DATABASE_URL") {
            Some(url) => {
                if let Err(e) = url::Url::parse(url.expose_secret()) {
                    // Never echo the URL itself: it may contain a password.
                    r.problems
                        .push(format!("DATABASE_URL: not a valid URL ({e})"));
                }
                url
            }
            None if storage_optional => SecretString::from(""),
            None if dev => SecretString::from("postgres://postgres:postgres@127.0.0.1:5432/xenios"),
            None => {
                r.missing("DATABASE_URL", "required outside development");
                SecretString::from("")
            }
        };
        let redis_url = match r.secret("REDIS_URL") {
            Some(url) => {
                match url::Url::parse(url.expose_secret()) {
                    Ok(u) if matches!(u.scheme(), "redis" | "rediss" | "unix") => {}
                    Ok(u) => r.problems.push(format!(
                        "REDIS_URL: scheme `{}` is not redis, rediss or unix",
                        u.scheme()
                    )),
                    Err(e) => r.problems.push(format!("REDIS_URL: not a valid URL ({e})")),
                }
                url
            }
            None if storage_optional => SecretString::from(""),
            None if dev => SecretString::from("redis://127.0.0.1:6379/0"),
            None => {
                r.missing("REDIS_URL", "required outside development");
                SecretString::from("")
            }
        };

        let api_key = match r.secret("XENIOS_BACKEND_API_KEY") {
            Some(k) if prod && k.expose_secret().len() < 16 => {
                r.problems.push(
                    "XENIOS_BACKEND_API_KEY: too short for production (at least 16 characters)"
                        .to_owned(),
                );
                k
            }
            Some(k) => k,
            None if dev => SecretString::from(DEV_API_KEY),
            None => {
                r.missing(
                    "XENIOS_BACKEND_API_KEY",
                    "every /api/v1 call is authenticated with it",
                );
                SecretString::from("")
            }
        };

        let api_key_previous = r.secret("XENIOS_BACKEND_API_KEY_PREVIOUS");
        if let Some(k) = &api_key_previous
            && prod
            && k.expose_secret().len() < 16
        {
            r.problems.push(
                "XENIOS_BACKEND_API_KEY_PREVIOUS: too short for production (at least 16 characters)"
                    .to_owned(),
            );
        }

        let supabase = SupabaseConfig {
            url: r
                .get("SUPABASE_URL")
                .map(|u| u.trim_end_matches('/').to_owned()),
            jwt_secret: r.secret("SUPABASE_JWT_SECRET"),
            jwks_url: r.get("SUPABASE_JWKS_URL"),
            jwks_cache_ttl: Duration::from_secs(r.parse("SUPABASE_JWKS_CACHE_TTL_SECS", 600u64)),
            jwks_min_refresh_interval: Duration::from_millis(
                r.parse("SUPABASE_JWKS_MIN_REFRESH_MS", 30_000u64),
            ),
            jwks_timeout: Duration::from_millis(r.parse("SUPABASE_JWKS_TIMEOUT_MS", 5000u64)),
        };
        if supabase.jwks_cache_ttl > MAX_JWKS_CACHE_TTL {
            r.problems.push(format!(
                "SUPABASE_JWKS_CACHE_TTL_SECS: at most {} (Supabase rotates keys behind a \
                 10-minute cache)",
                MAX_JWKS_CACHE_TTL.as_secs()
            ));
        }
        if supabase.jwks_timeout.is_zero() {
            r.problems
                .push("SUPABASE_JWKS_TIMEOUT_MS: must be greater than 0".to_owned());
        }
        for (name, value) in [
            ("SUPABASE_URL", &supabase.url),
            ("SUPABASE_JWKS_URL", &supabase.jwks_url),
        ] {
            if let Some(v) = value {
                match url::Url::parse(v) {
                    Ok(u) if matches!(u.scheme(), "http" | "https") => {}
                    _ => r
                        .problems
                        .push(format!("{name}: `{v}` is not an http(s) URL")),
                }
            }
        }
        if prod && supabase.url.is_none() {
            r.missing(
                "SUPABASE_URL",
                "production verifies user JWTs against the project's issuer and JWKS",
            );
        }
        if prod && supabase.jwt_secret.is_none() && supabase.url.is_none() {
            r.missing(
                "SUPABASE_JWT_SECRET",
                "production needs the legacy secret or SUPABASE_URL for JWKS",
            );
        }

        let openrouter = OpenRouterConfig {
            api_key: r.secret("OPENROUTER_API_KEY"),
            base_url: r
                .get("OPENROUTER_BASE_URL")
                .unwrap_or_else(|| "https://openrouter.ai/api/v1".to_owned())
                .trim_end_matches('/')
                .to_owned(),
        };
        if url::Url::parse(&openrouter.base_url).is_err() {
            r.problems.push(format!(
                "OPENROUTER_BASE_URL: `{}` is not a valid URL",
                openrouter.base_url
            ));
        }
        if prod && openrouter.api_key.is_none() {
            r.missing(
                "OPENROUTER_API_KEY",
                "production never falls back to the fake LLM",
            );
        }

        let cors_origins: Vec<String> = match r.get("CORS_ORIGINS") {
            Some(v) => v
                .split(',')
                .map(|o| o.trim().trim_end_matches('/').to_owned())
                .filter(|o| !o.is_empty())
                .collect(),
            None if dev => vec!["http://localhost:3000".to_owned()],
            None => Vec::new(),
        };
        for origin in &cors_origins {
            if origin == "*" {
                if !dev {
                    r.problems.push(format!(
                        "CORS_ORIGINS: a wildcard `*` origin is refused in {environment}"
                    ));
                }
            } else if !(origin.starts_with("http://") || origin.starts_with("https://"))
                || url::Url::parse(origin).is_err()
            {
                r.problems.push(format!(
                    "CORS_ORIGINS: `{origin}` is not an origin like https://app.example.com"
                ));
            }
        }

        let log_format = r.parse(
            "LOG_FORMAT",
            if dev {
                LogFormat::Pretty
            } else {
                LogFormat::Json
            },
        );
        let log_level = r.get("LOG_LEVEL").unwrap_or_else(|| "info".to_owned());
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&log_level) {
            r.problems.push(format!(
                "LOG_LEVEL: `{log_level}` is not a valid filter ({e})"
            ));
        }

        let server = ServerConfig {
            host: r.get("HOST").unwrap_or_else(|| "0.0.0.0".to_owned()),
            port: r.parse("PORT", 8000u16),
            cors_origins,
            shutdown_timeout: Duration::from_secs(r.parse("SHUTDOWN_TIMEOUT_SECS", 20u64)),
            ready_timeout: Duration::from_millis(r.parse("READY_TIMEOUT_MS", 1000u64)),
            max_body_bytes: r.parse("MAX_BODY_BYTES", 1024 * 1024usize),
            rate_limit: RateLimitConfig {
                per_minute: r.parse("RATE_LIMIT_PER_MINUTE", 300u32),
                burst: r.parse("RATE_LIMIT_BURST", 60u32),
                lease: r.parse("RATE_LIMIT_LEASE", 8u32).max(1),
                redis_timeout: Duration::from_millis(
                    r.parse("RATE_LIMIT_REDIS_TIMEOUT_MS", 200u64).max(1),
                ),
            },
        };
        if server.rate_limit.per_minute > 0 && server.rate_limit.burst == 0 {
            r.problems.push(
                "RATE_LIMIT_BURST: must be at least 1 while RATE_LIMIT_PER_MINUTE is set"
                    .to_owned(),
            );
        }
        let database = DatabaseConfig {
            url: database_url,
            pool_size: r.parse("DATABASE_POOL_SIZE", 10u32).max(1),
            connect_timeout: Duration::from_millis(r.parse("DATABASE_CONNECT_TIMEOUT_MS", 5000u64)),
            prepared_statements: r.bool("DATABASE_PREPARED_STATEMENTS", true),
            run_migrations: r.bool("RUN_MIGRATIONS", false),
            audit_queue_capacity: r.parse("AUDIT_QUEUE_CAPACITY", 10_000usize).max(1),
            audit_batch_linger: Duration::from_millis(
                r.parse("AUDIT_BATCH_LINGER_MS", 20u64).min(10_000),
            ),
            audit_store_payloads: r.bool("AUDIT_STORE_PAYLOADS", false),
        };
        let redis = RedisConfig {
            url: redis_url,
            pool_size: r.parse("REDIS_POOL_SIZE", 16u32).max(1),
        };

        let llm = crate::llm::LlmConfig::from_lookup(lookup, &mut r.problems);
        let jobs = read_jobs_config(&mut r, dev);
        let sentry_dsn = r.secret("SENTRY_DSN");
        if let Some(dsn) = &sentry_dsn
            && let Err(e) = dsn.expose_secret().parse::<sentry::types::Dsn>()
        {
            // Never echo the DSN: its key is a credential.
            r.problems
                .push(format!("SENTRY_DSN: not a valid Sentry DSN ({e})"));
        }
        let otel_endpoint = r.get("OTEL_EXPORTER_OTLP_ENDPOINT");
        if let Some(endpoint) = &otel_endpoint {
            match url::Url::parse(endpoint) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => {}
                _ => r.problems.push(
                    "OTEL_EXPORTER_OTLP_ENDPOINT: not an http(s) URL such as http://collector:4318"
                        .to_owned(),
                ),
            }
        }
        let config = Config {
            llm,
            jobs,
            environment,
            server,
            database,
            redis,
            supabase,
            api_key,
            api_key_previous,
            openrouter,
            deepgram_api_key: r.secret("DEEPGRAM_API_KEY"),
            log_level,
            log_format,
            sentry_dsn,
            otel_endpoint,
        };
        if r.problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError {
                problems: r.problems,
            })
        }
    }

    /// True when the built-in fake LLM stands in for OpenRouter (no key, not production).
    pub fn uses_fake_llm(&self) -> bool {
        self.openrouter.api_key.is_none()
    }

    /// What a process should warn about at startup: settings that are valid but probably
    /// not what an operator wants (the fake LLM, the development API key, bearer tokens that
    /// can never be verified, an unchecked token issuer).
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.uses_fake_llm() {
            out.push("OPENROUTER_API_KEY is not set: using the built-in fake LLM".to_owned());
        }
        if self.environment == Environment::Development
            && self.api_key.expose_secret() == DEV_API_KEY
        {
            out.push(format!(
                "XENIOS_BACKEND_API_KEY is not set: development accepts the key `{DEV_API_KEY}`"
            ));
        }
        if self.supabase.jwt_secret.is_none() && self.supabase.jwks_url().is_none() {
            out.push(
                "neither SUPABASE_JWT_SECRET nor SUPABASE_URL is set: every bearer token is \
                 refused"
                    .to_owned(),
            );
        } else if self.supabase.url.is_none() {
            out.push("SUPABASE_URL is not set: the `iss` of user tokens is not checked".to_owned());
        }
        out
    }

    /// The socket address the server binds, `HOST:PORT`.
    pub fn bind_address(&self) -> String {
        if self.server.host.contains(':') {
            format!("[{}]:{}", self.server.host, self.server.port)
        } else {
            format!("{}:{}", self.server.host, self.server.port)
        }
    }
}

/// Default `JOB_ROUTES`.
pub const DEFAULT_JOB_ROUTES: &str = "xenios.llm.=llm,llm.=llm,xenios.extraction.=extraction,\
extraction.=extraction,xenios.transcription.=transcription,transcription.=transcription,\
xenios.analytics.=analytics,analytics.=analytics";

fn read_jobs_config(r: &mut Reader<'_>, dev: bool) -> JobsConfig {
    let default_queue = r
        .get("JOB_DEFAULT_QUEUE")
        .unwrap_or_else(|| "default".to_owned());
    if let Err(e) = crate::jobs::check_queue_name(&default_queue) {
        r.problems.push(format!("JOB_DEFAULT_QUEUE: {e}"));
    }
    let raw_routes = r
        .get("JOB_ROUTES")
        .unwrap_or_else(|| DEFAULT_JOB_ROUTES.to_owned());
    let mut routes = Vec::new();
    for pair in raw_routes
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        match pair.split_once('=') {
            Some((prefix, queue)) if !prefix.trim().is_empty() => {
                match crate::jobs::check_queue_name(queue.trim()) {
                    Ok(()) => routes.push((prefix.trim().to_owned(), queue.trim().to_owned())),
                    Err(e) => r.problems.push(format!("JOB_ROUTES: `{pair}`: {e}")),
                }
            }
            _ => r.problems.push(format!(
                "JOB_ROUTES: `{pair}` is not `task-name-prefix=queue`"
            )),
        }
    }
    let diagnostic_tasks = r.bool("JOB_DIAGNOSTIC_TASKS", dev);
    let extra_tasks = match r.get("JOB_EXTRA_TASKS") {
        None => Vec::new(),
        Some(raw) => {
            // Every built-in name, whatever JOB_DIAGNOSTIC_TASKS says: a Python task may
            // not take the name of a Rust one.
            let names = crate::jobs::tasks::BUILTIN_NAMES;
            let (decls, problems) = crate::jobs::catalog::parse_extra_tasks(&raw, &names);
            r.problems.extend(problems);
            decls
        }
    };
    let soft = r.parse("JOB_SOFT_TIME_LIMIT_SECS", 300.0f64);
    let hard = r.parse("JOB_HARD_TIME_LIMIT_SECS", 600.0f64);
    for (name, v) in [
        ("JOB_SOFT_TIME_LIMIT_SECS", soft),
        ("JOB_HARD_TIME_LIMIT_SECS", hard),
    ] {
        if !(v.is_finite() && v > 0.0 && v < 1e7) {
            r.problems
                .push(format!("{name}: must be a positive number of seconds"));
        }
    }
    let secs = |v: f64| {
        Duration::from_secs_f64(if v.is_finite() && v > 0.0 && v < 1e7 {
            v
        } else {
            1.0
        })
    };
    JobsConfig {
        default_queue,
        routes,
        visibility_timeout: Duration::from_secs(
            r.parse("JOB_VISIBILITY_TIMEOUT_SECS", 3600u64).max(1),
        ),
        result_expires: Duration::from_secs(r.parse("JOB_RESULT_EXPIRES_SECS", 86_400u64).max(1)),
        soft_time_limit: secs(soft),
        hard_time_limit: secs(hard),
        max_retries: r.parse("JOB_MAX_RETRIES", 3u32),
        task_events: r.bool("JOB_TASK_EVENTS", true),
        max_time_limit: Duration::from_secs(
            r.parse("JOB_MAX_TIME_LIMIT_SECS", 86_400u64)
                .clamp(1, 365 * 24 * 3600),
        ),
        max_message_bytes: r.parse("JOB_MAX_MESSAGE_BYTES", 256 * 1024usize).max(1024),
        max_eta_held: r.parse("JOB_MAX_ETA_HELD", 1000usize),
        worker_shutdown_timeout: Duration::from_secs(
            r.parse("WORKER_SHUTDOWN_TIMEOUT_SECS", 100u64)
                .min(24 * 3600),
        ),
        worker_health_file: r
            .get("WORKER_HEALTH_FILE")
            .unwrap_or_else(|| "/tmp/xenios-worker.health".to_owned())
            .into(),
        worker_health_max_age: Duration::from_secs(
            r.parse("WORKER_HEALTH_MAX_AGE_SECS", 30u64).max(1),
        ),
        worker_redis_give_up: r
            .get("WORKER_REDIS_GIVE_UP_SECS")
            .is_some()
            .then(|| Duration::from_secs(r.parse("WORKER_REDIS_GIVE_UP_SECS", 0u64).max(1))),
        diagnostic_tasks,
        extra_tasks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn development_has_local_defaults() {
        let c = Config::from_map(&vars(&[])).unwrap();
        assert_eq!(c.environment, Environment::Development);
        assert_eq!(c.server.port, 8000);
        assert_eq!(c.server.host, "0.0.0.0");
        assert_eq!(c.log_format, LogFormat::Pretty);
        assert_eq!(c.api_key.expose_secret(), DEV_API_KEY);
        assert!(c.uses_fake_llm());
    }

    #[test]
    fn production_reports_every_missing_variable_at_once() {
        let err = Config::from_map(&vars(&[("ENVIRONMENT", "production")])).unwrap_err();
        let text = err.to_string();
        for name in [
            "DATABASE_URL",
            "REDIS_URL",
            "XENIOS_BACKEND_API_KEY",
            "SUPABASE_URL",
            "SUPABASE_JWT_SECRET",
            "OPENROUTER_API_KEY",
        ] {
            assert!(text.contains(name), "{name} not named in: {text}");
        }
        assert_eq!(err.problems.len(), 6, "{text}");
    }

    #[test]
    fn production_refuses_wildcard_cors_and_never_echoes_secrets() {
        let err = Config::from_map(&vars(&[
            ("ENVIRONMENT", "production"),
            ("DATABASE_URL", "postgres://u:hunter2hunter2@db/x"),
            ("REDIS_URL", "redis://r:6379"),
            ("XENIOS_BACKEND_API_KEY", "short-secret"),
            ("SUPABASE_URL", "https://abc.supabase.co"),
            ("OPENROUTER_API_KEY", "sk-or-very-secret"),
            ("CORS_ORIGINS", "*"),
        ]))
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("CORS_ORIGINS"), "{text}");
        assert!(text.contains("XENIOS_BACKEND_API_KEY: too short"), "{text}");
        assert!(!text.contains("hunter2"));
        assert!(!text.contains("short-secret"));
        assert!(!text.contains("sk-or-very-secret"));
    }

    #[test]
    fn malformed_values_are_named() {
        let err = Config::from_map(&vars(&[
            ("PORT", "eighty"),
            ("LOG_FORMAT", "xml"),
            ("ENVIRONMENT", "qa"),
            ("DATABASE_PREPARED_STATEMENTS", "maybe"),
        ]))
        .unwrap_err();
        let text = err.to_string();
        for name in [
            "PORT",
            "LOG_FORMAT",
            "ENVIRONMENT",
            "DATABASE_PREPARED_STATEMENTS",
        ] {
            assert!(text.contains(name), "{name} not named in: {text}");
        }
    }

    #[test]
    fn supabase_issuer_and_jwks_url_derive_from_the_project_url() {
        let c = Config::from_map(&vars(&[("SUPABASE_URL", "https://abc.supabase.co/")])).unwrap();
        assert_eq!(
            c.supabase.issuer().as_deref(),
            Some("https://abc.supabase.co/auth/v1")
        );
        assert_eq!(
            c.supabase.jwks_url().as_deref(),
            Some("https://abc.supabase.co/auth/v1/.well-known/jwks.json")
        );
        assert_eq!(c.supabase.jwks_cache_ttl, Duration::from_secs(600));
        let c = Config::from_map(&vars(&[
            ("SUPABASE_URL", "https://abc.supabase.co"),
            ("SUPABASE_JWKS_URL", "http://127.0.0.1:9/jwks"),
        ]))
        .unwrap();
        assert_eq!(
            c.supabase.jwks_url().as_deref(),
            Some("http://127.0.0.1:9/jwks")
        );
        assert!(
            Config::from_map(&vars(&[]))
                .unwrap()
                .supabase
                .jwks_url()
                .is_none()
        );
    }

    #[test]
    fn jwks_cache_ttl_and_rate_limits_are_bounded() {
        let err = Config::from_map(&vars(&[
            ("SUPABASE_JWKS_CACHE_TTL_SECS", "601"),
            ("RATE_LIMIT_BURST", "0"),
        ]))
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("SUPABASE_JWKS_CACHE_TTL_SECS"), "{text}");
        assert!(text.contains("RATE_LIMIT_BURST"), "{text}");
        let c = Config::from_map(&vars(&[
            ("RATE_LIMIT_PER_MINUTE", "0"),
            ("RATE_LIMIT_BURST", "0"),
        ]))
        .unwrap();
        assert_eq!(c.server.rate_limit.per_minute, 0);
    }

    #[test]
    fn abuse_limits_are_read_and_checked_with_the_rest() {
        let err = Config::from_map(&vars(&[
            ("ENVIRONMENT", "staging"),
            ("DATABASE_URL", "postgres://u@db/x"),
            ("REDIS_URL", "redis://r:6379"),
            ("XENIOS_BACKEND_API_KEY", "k"),
            ("CORS_ORIGINS", "*"),
            ("LLM_ALLOWED_MODELS", "a b"),
            ("LLM_USER_DAILY_TOKENS", "lots"),
        ]))
        .unwrap_err();
        let text = err.to_string();
        for name in [
            "CORS_ORIGINS",
            "LLM_ALLOWED_MODELS",
            "LLM_USER_DAILY_TOKENS",
        ] {
            assert!(text.contains(name), "{name} not named in: {text}");
        }
        let c = Config::from_map(&vars(&[
            ("XENIOS_BACKEND_API_KEY_PREVIOUS", "old-key"),
            ("LLM_USER_DAILY_TOKENS", "5000"),
            ("RATE_LIMIT_LEASE", "4"),
        ]))
        .unwrap();
        assert_eq!(
            c.api_key_previous.as_ref().map(|k| k.expose_secret()),
            Some("old-key")
        );
        assert_eq!(c.llm.user_daily_tokens, 5000);
        assert_eq!(c.server.rate_limit.lease, 4);
        assert!(!format!("{c:?}").contains("old-key"));
    }

    #[test]
    fn llm_only_configs_need_no_database_or_redis_in_any_environment() {
        let prod = vars(&[
            ("ENVIRONMENT", "production"),
            ("XENIOS_BACKEND_API_KEY", "a-production-key-of-length"),
            ("SUPABASE_URL", "https://abc.supabase.co"),
            ("OPENROUTER_API_KEY", "sk-or-key"),
        ]);
        let text = Config::from_map(&prod).unwrap_err().to_string();
        assert!(
            text.contains("DATABASE_URL") && text.contains("REDIS_URL"),
            "{text}"
        );
        let c = Config::llm_only_from_lookup(&|name| prod.get(name).cloned()).unwrap();
        assert!(c.database.url.expose_secret().is_empty());
        assert!(c.redis.url.expose_secret().is_empty());
        // No development defaults either: unset means no store.
        let c = Config::llm_only_from_lookup(&|_| None).unwrap();
        assert!(c.database.url.expose_secret().is_empty());
        assert!(c.redis.url.expose_secret().is_empty());
        // A set URL is still checked, and used.
        let err = Config::llm_only_from_lookup(&|name| {
            (name == "REDIS_URL").then(|| "http://nope".to_owned())
        })
        .unwrap_err();
        assert!(err.to_string().contains("REDIS_URL"), "{err}");
        let c = Config::llm_only_from_lookup(&|name| {
            (name == "DATABASE_URL").then(|| "postgres://u@db/x".to_owned())
        })
        .unwrap();
        assert_eq!(c.database.url.expose_secret(), "postgres://u@db/x");
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let c = Config::from_map(&vars(&[("OPENROUTER_API_KEY", "sk-or-topsecret")])).unwrap();
        let debug = format!("{c:?}");
        assert!(!debug.contains("sk-or-topsecret"));
        assert!(!debug.contains(DEV_API_KEY));
    }
}
