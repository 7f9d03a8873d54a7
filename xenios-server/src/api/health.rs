//! `/health`, `/health/live`, `/health/ready`: open probes for load balancers and Compose.

use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use xenios_core::health::{ComponentHealth, Readiness};
use xenios_core::{AiBackend, Environment};

use super::ApiTags;

/// Health routes.
#[derive(Debug)]
pub struct HealthApi {
    /// The engine.
    pub backend: AiBackend,
}

/// A simple status body.
#[derive(Debug, Object)]
pub struct HealthBody {
    /// `healthy` or `alive`.
    pub status: String,
}

/// One dependency's health.
#[derive(Debug, Object)]
pub struct ComponentBody {
    /// `postgres` or `redis`.
    pub name: String,
    /// `healthy` or `unhealthy`.
    pub status: String,
    /// Probe round trip in milliseconds.
    pub latency_ms: u64,
    /// The failure, when there is one: the driver's text in development, a fixed text in
    /// staging and production (the details are in the server log).
    pub error: Option<String>,
}

impl ComponentBody {
    /// The body of one component. Outside development the error text (a driver message that
    /// can name hosts, users or versions) goes to the log, not to the unauthenticated caller.
    pub fn new(c: ComponentHealth, environment: Environment) -> Self {
        let error = match c.error {
            Some(e) if environment != Environment::Development => {
                tracing::warn!(component = c.name.as_str(), error = %e, "dependency unhealthy");
                Some("unhealthy (details in the server log)".to_owned())
            }
            other => other,
        };
        Self {
            name: c.name.as_str().to_owned(),
            status: if c.healthy { "healthy" } else { "unhealthy" }.to_owned(),
            latency_ms: c.latency_ms,
            error,
        }
    }
}

/// Readiness body.
#[derive(Debug, Object)]
pub struct ReadinessBody {
    /// `ready` or `not_ready`.
    pub status: String,
    /// Each dependency.
    pub components: Vec<ComponentBody>,
}

impl ReadinessBody {
    fn new(r: Readiness, environment: Environment) -> Self {
        Self {
            status: if r.ready { "ready" } else { "not_ready" }.to_owned(),
            components: r
                .components
                .into_iter()
                .map(|c| ComponentBody::new(c, environment))
                .collect(),
        }
    }
}

/// Readiness response.
#[derive(Debug, ApiResponse)]
pub enum ReadyResponse {
    /// Postgres and Redis answered in time.
    #[oai(status = 200)]
    Ready(Json<ReadinessBody>),
    /// At least one dependency is down; the body says which and why.
    #[oai(status = 503)]
    NotReady(Json<ReadinessBody>),
}

#[OpenApi(tag = "ApiTags::Health")]
impl HealthApi {
    /// Health: 200 while the server runs.
    #[oai(path = "/health", method = "get")]
    async fn health(&self) -> Json<HealthBody> {
        Json(HealthBody {
            status: "healthy".to_owned(),
        })
    }

    /// Liveness: 200 while the process runs; never touches dependencies.
    #[oai(path = "/health/live", method = "get")]
    async fn live(&self) -> Json<HealthBody> {
        Json(HealthBody {
            status: "alive".to_owned(),
        })
    }

    /// Readiness: 200 only when Postgres and Redis answer within a short timeout, else 503
    /// with each component's status (and, in development only, its error text).
    #[oai(path = "/health/ready", method = "get")]
    async fn ready(&self) -> ReadyResponse {
        let readiness = self.backend.readiness().await;
        let ready = readiness.ready;
        let body = ReadinessBody::new(readiness, self.backend.config().environment);
        if ready {
            ReadyResponse::Ready(Json(body))
        } else {
            ReadyResponse::NotReady(Json(body))
        }
    }
}
