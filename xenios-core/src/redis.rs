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

/// A Redis error, classified in the one way every module reports it; the Redis error stays
/// the source. A key that holds the wrong type for what is asked of it (`WRONGTYPE`, or a
/// script's `XENIOS_WRONGTYPE`), or a reply of another shape than expected, is
/// [`Error::Inconsistent`]: Redis answered, and asking again will not help until the key is
/// repaired (HTTP 500). Anything else (down, restarting, `OOM` at `maxmemory`, read-only)
/// is [`Error::Unavailable`], which a caller may retry (a 503 `queue_unavailable`). In a
/// pipeline, one wrong-type reply makes the whole error [`Error::Inconsistent`].
pub(crate) fn error(e: ::redis::RedisError) -> Error {
    let wrong_data = e.kind() == ::redis::ErrorKind::UnexpectedReturnType
        || e.clone()
            .into_server_errors()
            .is_some_and(|errors| errors.iter().any(|(_, s)| is_wrong_type(s.code())));
    if wrong_data {
        Error::Inconsistent {
            component: Component::Redis,
            message: e.to_string(),
            source: Box::new(e),
        }
    } else {
        Error::unavailable_from(Component::Redis, e)
    }
}

/// Whether a Redis error code says a key holds the wrong type for what was asked of it: Redis'
/// own `WRONGTYPE`, or our scripts' `XENIOS_WRONGTYPE`. Such errors are bad data, not an outage.
pub(crate) fn is_wrong_type(code: &str) -> bool {
    matches!(code, "WRONGTYPE" | "XENIOS_WRONGTYPE")
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn server(code: &str) -> ::redis::RedisError {
        ::redis::make_extension_error(code.to_owned(), Some("detail".to_owned()))
    }

    #[test]
    fn wrong_types_are_bad_data_and_the_rest_is_an_outage() {
        for code in ["WRONGTYPE", "XENIOS_WRONGTYPE"] {
            let e = error(server(code));
            assert_eq!(e.kind(), ErrorKind::Internal, "{code}: {e}");
            assert_eq!(e.code(), "internal_error");
            assert!(std::error::Error::source(&e).is_some());
        }
        for code in ["OOM", "LOADING", "READONLY", "MASTERDOWN", "BUSY"] {
            let e = error(server(code));
            assert_eq!(e.kind(), ErrorKind::Unavailable, "{code}: {e}");
            assert_eq!(e.code(), "queue_unavailable");
        }
        let io = ::redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert_eq!(error(io).kind(), ErrorKind::Unavailable);
    }
}
