//! HTTP server settings (`HOST`, `PORT`, `CORS_ORIGINS`, `RATE_LIMIT_*`...).

use std::time::Duration;

use super::Environment;
use super::reader::Reader;

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
    /// (default 64, at most a quarter of the burst); see [`crate::auth::SharedRateLimiter`].
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
    /// `SERVER_THREADS`: threads serving HTTP, each its own event loop on its own listening
    /// socket (default 0: one per core; at most [`MAX_SERVER_THREADS`]).
    pub threads: usize,
}

/// The most `SERVER_THREADS` accepted.
pub const MAX_SERVER_THREADS: usize = 256;

impl ServerConfig {
    /// The threads to serve HTTP with: `SERVER_THREADS`, or one per core when 0.
    pub fn serving_threads(&self) -> usize {
        match self.threads {
            0 => std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
            n => n,
        }
    }
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

impl ServerConfig {
    /// Reads the section; `*` among `CORS_ORIGINS` is development only.
    pub(super) fn read(r: &mut Reader<'_>, environment: Environment) -> Self {
        let dev = environment == Environment::Development;
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
                lease: r.parse("RATE_LIMIT_LEASE", 64u32).max(1),
                redis_timeout: Duration::from_millis(
                    r.parse("RATE_LIMIT_REDIS_TIMEOUT_MS", 200u64).max(1),
                ),
            },
            threads: r.parse("SERVER_THREADS", 0usize),
        };
        if server.threads > MAX_SERVER_THREADS {
            r.problems.push(format!(
                "SERVER_THREADS: {} is more than {MAX_SERVER_THREADS} (0: one per core)",
                server.threads
            ));
        }
        if server.rate_limit.per_minute > 0 && server.rate_limit.burst == 0 {
            r.problems.push(
                "RATE_LIMIT_BURST: must be at least 1 while RATE_LIMIT_PER_MINUTE is set"
                    .to_owned(),
            );
        }
        server
    }
}
