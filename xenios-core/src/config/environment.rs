//! The deployment environment and the log format.

use std::fmt;
use std::str::FromStr;

/// The API key used in development when `XENIOS_BACKEND_API_KEY` is not set. Never accepted
/// in staging or production.
pub const DEV_API_KEY: &str = "xenios-dev-key";

/// Deployment environment (`ENVIRONMENT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
        match self {
            Self::Development => "development",
            Self::Staging => "staging",
            Self::Production => "production",
        }
    }
}

impl FromStr for Environment {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "development" | "dev" | "local" => Ok(Self::Development),
            "staging" | "stage" => Ok(Self::Staging),
            "production" | "prod" => Ok(Self::Production),
            other => Err(format!(
                "`{other}` is not one of development, staging, production"
            )),
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
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "json" => Ok(Self::Json),
            "pretty" | "text" | "human" => Ok(Self::Pretty),
            other => Err(format!("`{other}` is not one of json, pretty")),
        }
    }
}
