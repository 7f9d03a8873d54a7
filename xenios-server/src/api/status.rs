//! `/api/v1/status`: what is running, where, for how long, and how its dependencies are.

use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};
use xenios_core::AiBackend;

use super::ApiTags;
use super::health::ComponentBody;
use super::security::Caller;

/// Status routes.
#[derive(Debug)]
pub struct StatusApi {
    /// The engine.
    pub backend: AiBackend,
}

/// Service status.
#[derive(Debug, Object)]
pub struct StatusBody {
    /// Service name.
    pub service: String,
    /// Version.
    pub version: String,
    /// Git commit of the build.
    pub git_commit: String,
    /// `development`, `staging` or `production`.
    pub environment: String,
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
    async fn status(&self, _caller: Caller) -> Json<StatusBody> {
        let s = self.backend.status().await;
        Json(StatusBody {
            service: s.service.to_owned(),
            version: s.version.to_owned(),
            git_commit: s.git_commit.to_owned(),
            environment: s.environment.to_owned(),
            uptime_secs: s.uptime_secs,
            fake_llm: s.fake_llm,
            components: s
                .components
                .into_iter()
                .map(|c| ComponentBody::new(c, self.backend.config().environment))
                .collect(),
        })
    }
}
