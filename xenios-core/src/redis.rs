//! The Redis connection pool (bb8-redis).
//!
//! Built lazily like the Postgres pool; every checkout is tested with a PING, so connections
//! broken by a Redis restart are replaced without a restart of ours.

use bb8_redis::RedisConnectionManager;
use secrecy::ExposeSecret;

use crate::config::RedisConfig;
use crate::error::{Component, Error};

pub use ::redis;

/// The Redis connection pool.
pub type RedisPool = bb8::Pool<RedisConnectionManager>;

/// Redis is down, did not answer, or refused what it was asked: the one way every module
/// reports it (a 503 `queue_unavailable` to HTTP callers, see [`Error::code`]). The Redis
/// error stays the source.
pub(crate) fn error(e: ::redis::RedisError) -> Error {
    Error::unavailable_from(Component::Redis, e)
}

/// [`error`] for a condition found by this backend rather than reported by the client.
pub(crate) fn unavailable(message: impl std::fmt::Display) -> Error {
    Error::unavailable(Component::Redis, message)
}

/// Builds the pool lazily: no connection is opened until the first command.
pub fn build_pool(config: &RedisConfig) -> Result<RedisPool, Error> {
    let manager = RedisConnectionManager::new(config.url.expose_secret())
        .map_err(|e| Error::Validation(format!("REDIS_URL: {}", e.kind_description())))?;
    Ok(bb8::Pool::builder()
        .max_size(config.pool_size)
        .min_idle(Some(0))
        .connection_timeout(std::time::Duration::from_secs(5))
        .build_unchecked(manager))
}

trait KindDescription {
    fn kind_description(&self) -> String;
}

impl KindDescription for redis::RedisError {
    /// The error's category and detail, which for a URL parse error never contain the URL.
    fn kind_description(&self) -> String {
        format!(
            "{:?}: {}",
            self.kind(),
            self.detail().unwrap_or("invalid URL")
        )
    }
}
