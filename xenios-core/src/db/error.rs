//! [`DbError`]: what can go wrong with Postgres, each case keeping the diesel or pool error
//! as its source.

use crate::error::{BoxError, ErrorKind};

/// The message of [`DbError::NotConfigured`].
pub const NO_DATABASE: &str =
    "no database configured (this backend was built without one: DATABASE_URL unset)";

/// A Postgres failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DbError {
    /// The backend was built without a database ([`crate::AiBackendBuilder::without_database`]).
    #[error("postgres unavailable: {NO_DATABASE}")]
    NotConfigured,
    /// No pooled connection within `DATABASE_CONNECT_TIMEOUT_MS` (Postgres down or slow).
    #[error("postgres unavailable: {0}")]
    Pool(#[source] diesel_async::pooled_connection::bb8::RunError),
    /// The connection was lost during a query.
    #[error("postgres unavailable: {0}")]
    ConnectionLost(#[source] diesel::result::Error),
    /// A query failed for another reason (a bug, a schema mismatch).
    #[error("database: {0}")]
    Query(#[source] diesel::result::Error),
    /// `DATABASE_URL` cannot be used.
    #[error("DATABASE_URL: {0}")]
    Url(#[from] UrlError),
    /// Migrating failed at `step`.
    #[error("postgres unavailable: migration failed: {step}: {source}")]
    Migration {
        /// What was being done (connect, lock, migrate).
        step: &'static str,
        /// diesel's error.
        #[source]
        source: BoxError,
    },
    /// A value to store breaks a rule of its table; the message says which.
    #[error("{0}")]
    Invalid(&'static str),
}

/// Why `DATABASE_URL` cannot be used (never quotes the URL, which holds the password).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UrlError {
    /// Not a URL at all.
    #[error("not a valid URL ({0})")]
    Parse(#[from] url::ParseError),
    /// An `sslmode` libpq knows but we do not support, or no `sslmode` at all.
    #[error("sslmode `{0}` is not supported")]
    SslMode(String),
}

impl DbError {
    /// The classification of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            DbError::NotConfigured
            | DbError::Pool(_)
            | DbError::ConnectionLost(_)
            | DbError::Migration { .. } => ErrorKind::Unavailable,
            DbError::Url(_) | DbError::Invalid(_) => ErrorKind::Validation,
            DbError::Query(_) => ErrorKind::Internal,
        }
    }

    /// A query failure: a lost connection is "unavailable", the rest internal.
    pub(crate) fn query(e: diesel::result::Error) -> Self {
        use diesel::result::Error as D;
        match &e {
            D::DatabaseError(diesel::result::DatabaseErrorKind::ClosedConnection, _)
            | D::BrokenTransactionManager => DbError::ConnectionLost(e),
            _ => DbError::Query(e),
        }
    }
}
