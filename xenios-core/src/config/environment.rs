//! The deployment environment and the log format.

use std::fmt;
use std::str::FromStr;

/// The API key used in development when `XENIOS_BACKEND_API_KEY` is not set. Never accepted
/// in staging or production.
pub const DEV_API_KEY: &str = "xenios-dev-key";

/// Deployment environment (`ENVIRONMENT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr)]
#[strum(serialize_all = "lowercase")]
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
        self.into()
    }
}

/// A value of `ENVIRONMENT` or `LOG_FORMAT` that is none of the names it may take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{given}` is not one of {expected}")]
pub struct UnknownName {
    /// What was given (trimmed, lower-case).
    pub given: String,
    /// The names it may take.
    pub expected: &'static str,
}

impl FromStr for Environment {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "development" | "dev" | "local" => Ok(Self::Development),
            "staging" | "stage" => Ok(Self::Staging),
            "production" | "prod" => Ok(Self::Production),
            other => Err(UnknownName {
                given: other.to_owned(),
                expected: "development, staging, production",
            }),
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
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "json" => Ok(Self::Json),
            "pretty" | "text" | "human" => Ok(Self::Pretty),
            other => Err(UnknownName {
                given: other.to_owned(),
                expected: "json, pretty",
            }),
        }
    }
}
