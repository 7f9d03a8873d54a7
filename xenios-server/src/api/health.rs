//! `/health`, `/health/live`, `/health/ready`: open probes for load balancers and Compose.

use poem_openapi::payload::Json;
use poem_openapi::types::Example;
use poem_openapi::{ApiResponse, Enum, Object, OpenApi};
use xenios_core::health::{ComponentHealth, Readiness};
use xenios_core::{AiBackend, Environment};

use super::ApiTags;

/// Health routes.
#[derive(Debug)]
pub struct HealthApi {
    /// The engine.
    pub backend: AiBackend,
}

/// A probe's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum ProbeStatus {
    /// `/health`.
    Healthy,
    /// `/health/live`.
    Alive,
}

/// A simple status body.
#[derive(Debug, Object)]
#[oai(example)]
pub struct HealthBody {
    /// `healthy` (`/health`) or `alive` (`/health/live`).
    pub status: ProbeStatus,
}

impl Example for HealthBody {
    fn example() -> Self {
        HealthBody {
            status: ProbeStatus::Healthy,
        }
    }
}

/// A dependency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum ComponentName {
    /// Postgres.
    Postgres,
    /// Redis.
    Redis,
}

/// A dependency's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum ComponentStatus {
    /// It answered in time.
    Healthy,
    /// It failed or timed out.
    Unhealthy,
}

/// One dependency's health.
#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct ComponentBody {
    /// The dependency.
    pub name: ComponentName,
    /// Its state.
    pub status: ComponentStatus,
    /// Probe round trip in milliseconds.
    pub latency_ms: u64,
    /// The failure, absent when healthy: the driver's text in development, a fixed text in
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
            name: if c.name == xenios_core::error::Component::Redis {
                ComponentName::Redis
            } else {
                ComponentName::Postgres
            },
            status: if c.healthy {
                ComponentStatus::Healthy
            } else {
                ComponentStatus::Unhealthy
            },
            latency_ms: c.latency_ms,
            error,
        }
    }
}

/// Readiness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "snake_case")]
pub enum ReadyStatus {
    /// Every dependency answered.
    Ready,
    /// At least one did not.
    NotReady,
}

/// Readiness body.
#[derive(Debug, Object)]
#[oai(example)]
pub struct ReadinessBody {
    /// Whether the server can serve.
    pub status: ReadyStatus,
    /// Each dependency.
    pub components: Vec<ComponentBody>,
}

impl ReadinessBody {
    fn new(r: Readiness, environment: Environment) -> Self {
        Self {
            status: if r.ready {
                ReadyStatus::Ready
            } else {
                ReadyStatus::NotReady
            },
            components: r
                .components
                .into_iter()
                .map(|c| ComponentBody::new(c, environment))
                .collect(),
        }
    }
}

impl Example for ReadinessBody {
    fn example() -> Self {
        ReadinessBody {
            status: ReadyStatus::Ready,
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
            status: ProbeStatus::Healthy,
        })
    }

    /// Liveness: 200 while the process runs; never touches dependencies.
    #[oai(path = "/health/live", method = "get")]
    async fn live(&self) -> Json<HealthBody> {
        Json(HealthBody {
            status: ProbeStatus::Alive,
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
