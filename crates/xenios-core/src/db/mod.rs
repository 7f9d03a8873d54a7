//! Postgres access: the diesel-async connection pool on bb8.
//!
//! Our tables live in schema `ai_backend`; the app's tables in `public` are read, never
//! migrated. The pool is built without connecting, so the backend starts (and serves what
//! does not need the database) while Postgres is down, and recovers by itself when it returns.

use diesel_async::AsyncPgConnection;
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::pooled_connection::bb8::Pool;
use secrecy::ExposeSecret;

use crate::config::DatabaseConfig;

/// The Postgres connection pool.
pub type PgPool = Pool<AsyncPgConnection>;

/// Builds the pool lazily: no connection is opened until the first query.
pub fn build_pool(config: &DatabaseConfig) -> PgPool {
    let manager =
        AsyncDieselConnectionManager::<AsyncPgConnection>::new(config.url.expose_secret());
    Pool::builder()
        .max_size(config.pool_size)
        .min_idle(Some(0))
        .connection_timeout(config.connect_timeout)
        .idle_timeout(Some(std::time::Duration::from_secs(300)))
        .build_unchecked(manager)
}
