//! The core error type.
//!
//! One enum for the whole facade, each variant wrapping a domain's own error where it has one.
//! Core knows no HTTP: [`Error::kind`] classifies an error and the server maps each
//! [`ErrorKind`] to a status code in one place (`xenios-server/src/error.rs`).

use std::time::Duration;

use crate::auth::AuthError;
use crate::config::ConfigError;
use crate::db::DbError;

/// A boxed error kept as the [`std::error::Error::source`] of a core error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A dependency of the backend that can be down.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, strum::IntoStaticStr, strum::Display,
)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
#[non_exhaustive]
pub enum Component {
    /// Postgres: audit rows, job rows, migrations, the extraction cache, profiles.
    Postgres,
    /// Redis: the job queue's broker and result backend, shared rate limits, budgets.
    Redis,
}

impl Component {
    /// The lower-case name used in logs, health reports and error messages.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// A classification of [`Error`], stable enough for a transport to map onto its status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The caller is not authenticated (HTTP 401).
    Unauthenticated,
    /// The caller is authenticated but not allowed (HTTP 403).
    Forbidden,
    /// The request is well-formed but its content is invalid (HTTP 422).
    Validation,
    /// The thing asked for does not exist (HTTP 404).
    NotFound,
    /// Too many requests (HTTP 429).
    RateLimited,
    /// A dependency (Postgres, Redis) is down or timed out (HTTP 503).
    Unavailable,
    /// Every upstream provider failed (HTTP 502).
    Upstream,
    /// An upstream did not answer in time (HTTP 504).
    UpstreamTimeout,
    /// A bug or an unexpected condition (HTTP 500).
    Internal,
}

/// Errors returned by [`crate::AiBackend`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Authentication or authorization failed.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The input is invalid; the message says what and where.
    #[error("{0}")]
    Validation(String),
    /// The named thing was not found.
    #[error("{0} not found")]
    NotFound(String),
    /// A job request names a task this caller may not enqueue (not in the task catalog, or
    /// not callable by this caller: both look the same to the caller).
    #[error("unknown task `{0}`: not a task this caller may enqueue")]
    UnknownTask(String),
    /// The caller exceeded its rate limit.
    #[error("rate limit exceeded, retry in {} s", retry_after.as_secs().max(1))]
    RateLimited {
        /// How long until a request will be accepted again.
        retry_after: Duration,
    },
    /// A dependency is down or did not answer in time.
    #[error("{component} unavailable: {message}")]
    Unavailable {
        /// Which dependency.
        component: Component,
        /// What went wrong, without secrets.
        message: String,
        /// The client library's error, when there is one (a Redis error...).
        #[source]
        source: Option<BoxError>,
    },
    /// A dependency answered, but holds data this backend cannot use (a Redis key of the
    /// wrong type): not an outage, and retrying will not help until it is repaired.
    #[error("{component} holds inconsistent data: {message}")]
    Inconsistent {
        /// Which dependency.
        component: Component,
        /// What it answered.
        message: String,
        /// The client library's error.
        #[source]
        source: BoxError,
    },
    /// A Postgres operation failed (see [`DbError`]).
    #[error(transparent)]
    Db(#[from] DbError),
    /// An unexpected internal failure.
    #[error("internal error: {0}")]
    Internal(String),
    /// No model could serve an LLM call; lists each model's failure in order.
    #[error(transparent)]
    Llm(#[from] crate::llm::LlmError),
    /// Authenticated, but this caller may not do this; `code` names the rule (e.g.
    /// `model_choice_forbidden`).
    #[error("{message}")]
    Forbidden {
        /// Machine-readable code.
        code: &'static str,
        /// What is not allowed, for the caller.
        message: String,
    },
    /// The user spent today's LLM token budget (`LLM_USER_DAILY_TOKENS`).
    #[error("daily token budget of {limit} tokens used up, resets in {} s", retry_after.as_secs().max(1))]
    BudgetExceeded {
        /// The daily limit.
        limit: u64,
        /// Time until the budget resets (the next UTC midnight).
        retry_after: Duration,
    },
}

impl Error {
    /// [`Error::Unavailable`] with a message only.
    pub(crate) fn unavailable(component: Component, message: impl std::fmt::Display) -> Self {
        Error::Unavailable {
            component,
            message: message.to_string(),
            source: None,
        }
    }

    /// [`Error::Unavailable`] caused by a client library's error, kept as the source.
    pub(crate) fn unavailable_from<E>(component: Component, e: E) -> Self
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        Error::Unavailable {
            component,
            message: e.to_string(),
            source: Some(Box::new(e)),
        }
    }

    /// The dependency that is down, for an [`ErrorKind::Unavailable`] error.
    pub fn component(&self) -> Option<Component> {
        match self {
            Error::Unavailable { component, .. } => Some(*component),
            Error::Db(e) if e.kind() == ErrorKind::Unavailable => Some(Component::Postgres),
            _ => None,
        }
    }

    /// The classification of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Config(_) | Error::Internal(_) | Error::Inconsistent { .. } => {
                ErrorKind::Internal
            }
            Error::Auth(e) => e.kind(),
            Error::Validation(_) | Error::UnknownTask(_) => ErrorKind::Validation,
            Error::NotFound(_) => ErrorKind::NotFound,
            Error::RateLimited { .. } => ErrorKind::RateLimited,
            Error::Unavailable { .. } => ErrorKind::Unavailable,
            Error::Db(e) => e.kind(),
            Error::Llm(e) if e.is_timeout() => ErrorKind::UpstreamTimeout,
            Error::Llm(_) => ErrorKind::Upstream,
            Error::Forbidden { .. } => ErrorKind::Forbidden,
            Error::BudgetExceeded { .. } => ErrorKind::RateLimited,
        }
    }

    /// A short machine-readable code for API bodies, e.g. `unauthenticated`.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Config(_) => "config_error",
            Error::Auth(e) => e.code(),
            Error::Validation(_) => "validation_error",
            Error::UnknownTask(_) => "unknown_task",
            Error::NotFound(_) => "not_found",
            Error::RateLimited { .. } => "rate_limited",
            // Redis is the job queue's broker (it also keeps the daily token budgets): a
            // client told `queue_unavailable` knows an enqueue may be retried.
            Error::Unavailable {
                component: Component::Redis,
                ..
            } => "queue_unavailable",
            Error::Unavailable { .. } => "service_unavailable",
            Error::Db(e) => match e.kind() {
                ErrorKind::Validation => "validation_error",
                ErrorKind::Unavailable => "service_unavailable",
                _ => "internal_error",
            },
            Error::Internal(_) | Error::Inconsistent { .. } => "internal_error",
            Error::Llm(e) if e.refused => "upstream_refused",
            Error::Llm(e) if e.is_timeout() => "upstream_timeout",
            Error::Llm(_) => "all_models_failed",
            Error::Forbidden { code, .. } => code,
            Error::BudgetExceeded { .. } => "budget_exceeded",
        }
    }

    /// What a client may be told: internal errors say only "internal error", LLM failures
    /// name the models tried and how each failed (status, timeout) but never the provider's
    /// own error text (see [`crate::llm::LlmError::public_message`]). The full text
    /// ([`std::fmt::Display`]) is for logs.
    pub fn public_message(&self) -> String {
        match self {
            Error::Llm(e) => e.public_message(),
            e if e.kind() == ErrorKind::Internal => "internal error".to_owned(),
            e => e.to_string(),
        }
    }

    /// How long the caller should wait before retrying, when that is known.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::RateLimited { retry_after } | Error::BudgetExceeded { retry_after, .. } => {
                Some(*retry_after)
            }
            _ => None,
        }
    }

    /// Whether trying the same call again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind(),
            ErrorKind::RateLimited
                | ErrorKind::Unavailable
                | ErrorKind::Upstream
                | ErrorKind::UpstreamTimeout
        )
    }
}

/// Shorthand for results of core calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;
