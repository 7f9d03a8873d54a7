//! Postgres access: the diesel-async pool on bb8, migrations, the audit writer, and typed
//! queries.
//!
//! Our tables live in schema `ai_backend`; the app's tables in `public` are read, never
//! migrated. The pool is built without connecting, so the backend starts (and serves what
//! does not need the database) while Postgres is down, and recovers by itself when it
//! returns.
//!
//! - [`Database`] (`database.rs`): the handle behind [`crate::AiBackend::database`]: typed
//!   queries, migrations, the audit writer's flush and counters.
//! - [`DbError`] (`error.rs`): every Postgres failure, the diesel error kept as its source.
//! - `connect.rs`: TLS per `sslmode`, prepared-statement setting.
//! - `migrate.rs`: embedded migrations under an advisory lock.
//! - `audit.rs`: the bounded background writer of audit rows.
//! - `schema.rs`, [`models`]: diesel tables and typed rows.

pub(crate) mod audit;
mod batch;
pub(crate) mod connect;
mod database;
mod error;
pub(crate) mod migrate;
pub mod models;
pub(crate) mod schema;

pub use audit::{AuditStatsSnapshot, AuditWriter};
pub use database::Database;
pub use error::{DbError, NO_DATABASE, UrlError};

use diesel_async::AsyncPgConnection;
use diesel_async::pooled_connection::bb8::Pool;
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig};
use futures::FutureExt;
use secrecy::ExposeSecret;

use crate::config::DatabaseConfig;

/// The Postgres connection pool.
pub type PgPool = Pool<AsyncPgConnection>;

/// Builds the pool lazily: no connection is opened until the first query.
pub fn build_pool(config: &DatabaseConfig) -> Result<PgPool, DbError> {
    let (url, options) =
        connect::parse_url(config.url.expose_secret(), config.prepared_statements)?;
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
