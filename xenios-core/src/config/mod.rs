//! Typed configuration, read from the environment (and an optional `.env` file).
//!
//! Every variable is documented where it is read, below, and again in `.env.example`.
//! Reading never stops at the first problem: [`Config::from_env`] collects every missing or
//! malformed variable and reports them together in one [`ConfigError`], so an operator fixes a
//! bad deployment in one go. Secrets are [`SecretString`]s: their `Debug` is redacted and they
//! are never logged.
//!
//! ## Layout
//! Each section reads its own variables (`fn read`) through the shared `Reader` (`reader.rs`):
//! `environment.rs` ([`Environment`], [`LogFormat`]), `database.rs`, `redis.rs`,
//! `supabase.rs`, `openrouter.rs`, `server.rs` (with CORS and rate limits), `jobs.rs`;
//! `llm.rs` ([`LlmConfig`]: routes, timeouts, retries, allowed models; the engine in
//! [`crate::llm`] applies them). This file holds
//! [`Config`], the API keys and the telemetry settings, and the order sections are read in.

mod database;
mod environment;
mod jobs;
pub mod llm;
mod openrouter;
pub(crate) mod reader;
mod redis;
mod server;
mod supabase;
#[cfg(test)]
mod tests;

use std::collections::HashMap;

use secrecy::{ExposeSecret, SecretString};

pub use database::DatabaseConfig;
pub use environment::{DEV_API_KEY, Environment, LogFormat, UnknownName};
pub use jobs::{DEFAULT_JOB_ROUTES, JobsConfig};
pub use llm::LlmConfig;
pub use openrouter::OpenRouterConfig;
pub use redis::RedisConfig;
pub use server::{CorsPolicy, RateLimitConfig, ServerConfig};
pub use supabase::{MAX_JWKS_CACHE_TTL, SupabaseConfig};

use reader::Reader;

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
    /// LLM routes, timeouts and retries (`LLM_*`, see [`llm`]).
    pub llm: LlmConfig,
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

        let database = DatabaseConfig::read(&mut r, dev, storage_optional);
        let redis = RedisConfig::read(&mut r, dev, storage_optional);
        let (api_key, api_key_previous) = read_api_keys(&mut r, dev, prod);
        let supabase = SupabaseConfig::read(&mut r, prod);
        let openrouter = OpenRouterConfig::read(&mut r, prod);
        let server = ServerConfig::read(&mut r, environment);
        let telemetry = Telemetry::read(&mut r, dev);
        let llm = LlmConfig::from_lookup(lookup, &mut r.problems);
        let jobs = JobsConfig::read(&mut r, dev);
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
            log_level: telemetry.log_level,
            log_format: telemetry.log_format,
            sentry_dsn: telemetry.sentry_dsn,
            otel_endpoint: telemetry.otel_endpoint,
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

/// `XENIOS_BACKEND_API_KEY` and `XENIOS_BACKEND_API_KEY_PREVIOUS`.
fn read_api_keys(
    r: &mut Reader<'_>,
    dev: bool,
    prod: bool,
) -> (SecretString, Option<SecretString>) {
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
    (api_key, api_key_previous)
}

/// `LOG_LEVEL`, `LOG_FORMAT`, `SENTRY_DSN`, `OTEL_EXPORTER_OTLP_ENDPOINT`.
struct Telemetry {
    log_level: String,
    log_format: LogFormat,
    sentry_dsn: Option<SecretString>,
    otel_endpoint: Option<String>,
}

impl Telemetry {
    fn read(r: &mut Reader<'_>, dev: bool) -> Self {
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
        Telemetry {
            log_level,
            log_format,
            sentry_dsn,
            otel_endpoint,
        }
    }
}
