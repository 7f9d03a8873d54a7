//! Postgres access: the diesel-async pool on bb8, migrations, the audit writer, and typed
//! queries.
//!
//! Our tables live in schema `ai_backend`; the app's tables in `public` are read, never
//! migrated. The pool is built without connecting, so the backend starts (and serves what
//! does not need the database) while Postgres is down, and recovers by itself when it
//! returns.
//!
//! - [`connect`]: TLS per `sslmode`, prepared-statement setting.
//! - [`migrate`]: embedded migrations under an advisory lock.
//! - [`audit`]: the bounded background writer of audit rows.
//! - [`schema`], [`models`]: diesel tables and typed rows.

pub mod audit;
pub mod connect;
pub mod migrate;
pub mod models;
pub mod schema;

use diesel_async::AsyncPgConnection;
use diesel_async::pooled_connection::bb8::Pool;
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig};
use futures::FutureExt;
use secrecy::ExposeSecret;

use crate::config::DatabaseConfig;
use crate::error::Error;

/// The Postgres connection pool.
pub type PgPool = Pool<AsyncPgConnection>;

/// Builds the pool lazily: no connection is opened until the first query.
pub fn build_pool(config: &DatabaseConfig) -> Result<PgPool, Error> {
    let (url, options) = connect::parse_url(config.url.expose_secret(), config.prepared_statements)
        .map_err(|e| Error::Validation(format!("DATABASE_URL: {e}")))?;
    let mut manager_config = ManagerConfig::default();
    manager_config.custom_setup = Box::new(move |url| {
        let options = options.clone();
        let url = url.to_owned();
        async move { connect::establish(&url, &options).await }.boxed()
    });
    let manager =
        AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(url, manager_config);
    Ok(Pool::builder()
        .max_size(config.pool_size)
        .min_idle(Some(0))
        .connection_timeout(config.connect_timeout)
        .idle_timeout(Some(std::time::Duration::from_secs(300)))
        .build_unchecked(manager))
}

/// Classifies a pool checkout failure: Postgres is down or too slow.
pub(crate) fn pool_error(e: impl std::fmt::Display) -> Error {
    Error::Unavailable {
        component: "postgres",
        message: e.to_string(),
    }
}

/// Classifies a query failure: a lost connection is "unavailable", the rest internal.
pub(crate) fn query_error(e: diesel::result::Error) -> Error {
    use diesel::result::Error as D;
    match &e {
        D::DatabaseError(diesel::result::DatabaseErrorKind::ClosedConnection, _)
        | D::BrokenTransactionManager => pool_error(e),
        _ => Error::Internal(format!("database: {e}")),
    }
}
