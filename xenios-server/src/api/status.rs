//! `/api/v1/status`: what is running, where, for how long, and how its dependencies are.

use poem_openapi::payload::Json;
use poem_openapi::{Enum, Object, OpenApi};
use xenios_core::{AiBackend, Environment};

use super::ApiTags;
use super::health::{ComponentBody, ComponentName, ComponentStatus};
use super::security::Caller;
use crate::error::{Errors, ReadErrors};

/// Status routes.
#[derive(Debug)]
pub struct StatusApi {
    /// The engine.
    pub backend: AiBackend,
}

/// The deployment environment (`ENVIRONMENT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum EnvironmentName {
    /// Local development.
    Development,
    /// Staging.
    Staging,
    /// Production.
    Production,
}

impl From<Environment> for EnvironmentName {
    fn from(e: Environment) -> Self {
        match e {
            Environment::Development => Self::Development,
            Environment::Staging => Self::Staging,
            Environment::Production => Self::Production,
        }
    }
}

/// Service status.
#[derive(Debug, Object)]
#[oai(example)]
pub struct StatusBody {
    /// Service name.
    pub service: String,
    /// Version.
    pub version: String,
    /// Git commit of the build.
    pub git_commit: String,
    /// The deployment environment.
    pub environment: EnvironmentName,
    /// Seconds since start.
    pub uptime_secs: u64,
    /// True when the built-in fake LLM stands in for OpenRouter.
    pub fake_llm: bool,
    /// Health of each dependency.
    pub components: Vec<ComponentBody>,
}

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::Status")]
impl StatusApi {
    /// Service name, version, git commit, environment, uptime and component status.
    #[oai(path = "/status", method = "get")]
    async fn status(&self, caller: Caller) -> Result<Json<StatusBody>, Errors<ReadErrors>> {
        caller.context()?;
        let s = self.backend.status().await;
        Ok(Json(StatusBody {
            service: s.service.to_owned(),
            version: s.version.to_owned(),
            git_commit: s.git_commit.to_owned(),
            environment: self.backend.config().environment.into(),
            uptime_secs: s.uptime_secs,
            fake_llm: s.fake_llm,
            components: s
                .components
                .into_iter()
                .map(|c| ComponentBody::new(c, self.backend.config().environment))
                .collect(),
        }))
    }
}

impl poem_openapi::types::Example for StatusBody {
    fn example() -> Self {
        StatusBody {
            service: "xenios-ai-backend".to_owned(),
            version: "0.1.0".to_owned(),
            git_commit: "f01b904".to_owned(),
            environment: EnvironmentName::Production,
            uptime_secs: 3600,
            fake_llm: false,
            components: vec![
                ComponentBody {
                    name: ComponentName::Postgres,
                    status: ComponentStatus::Healthy,
                    latency_ms: 2,
                    error: None,
                },
                ComponentBody {
                    name: ComponentName::Redis,
                    status: ComponentStatus::Healthy,
                    latency_ms: 1,
                    error: None,
                },
            ],
        }
    }
}
