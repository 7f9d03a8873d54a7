//! What the backend reports of itself: readiness, status, who is calling.

use serde::Serialize;

use super::AiBackend;
use crate::auth::{Principal, UserContext};
use crate::context::RequestContext;
use crate::error::{Component, Error, Result};
use crate::health::{self, ComponentHealth, Readiness};
use crate::llm::{FakeProvider, Provider, TokenUsage};
use crate::redis::{self as xredis};
use crate::version::{GIT_COMMIT, SERVICE_NAME, VERSION};

/// What `/api/v1/status` reports.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceStatus {
    /// Service name.
    pub service: &'static str,
    /// Crate version.
    pub version: &'static str,
    /// Git commit of the build.
    pub git_commit: &'static str,
    /// `ENVIRONMENT`.
    pub environment: &'static str,
    /// Seconds since the backend was built.
    pub uptime_secs: u64,
    /// Whether the built-in fake LLM answers (no `OPENROUTER_API_KEY` and no provider
    /// given to the builder).
    pub fake_llm: bool,
    /// Health of each dependency.
    pub components: Vec<ComponentHealth>,
}

/// Who is calling, as `/api/v1/me` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Whoami {
    /// `user`, `service` or `system` ([`Principal::kind_name`]).
    pub principal: &'static str,
    /// The signed-in user, for a user.
    pub user: Option<UserContext>,
    /// For a user: today's LLM token spending and the daily limit.
    pub tokens: Option<TokenUsage>,
}

impl AiBackend {
    /// Who `ctx` is, with today's token use for a user.
    pub async fn whoami(&self, ctx: &RequestContext) -> Result<Whoami> {
        let principal = ctx.principal.kind_name();
        Ok(match &ctx.principal {
            Principal::User(u) => {
                let tokens = match self.inner.llm.budget() {
                    Some(b) => b.usage(&u.user_id).await?,
                    None => TokenUsage { used: 0, limit: 0 },
                };
                Whoami {
                    principal,
                    user: Some(u.clone()),
                    tokens: Some(tokens),
                }
            }
            _ => Whoami {
                principal,
                user: None,
                tokens: None,
            },
        })
    }

    /// Probes Postgres and Redis concurrently, each within `READY_TIMEOUT_MS`; one the
    /// backend was built without is reported as not configured, never probed.
    pub async fn readiness(&self) -> Readiness {
        let deadline = self.inner.config.server.ready_timeout;
        let pg = async {
            if self.has_database() {
                health::probe(Component::Postgres, deadline, self.inner.database.ping()).await
            } else {
                ComponentHealth::not_configured(Component::Postgres)
            }
        };
        let redis = async {
            if self.has_redis() {
                health::probe(Component::Redis, deadline, self.ping_redis()).await
            } else {
                ComponentHealth::not_configured(Component::Redis)
            }
        };
        let (pg, redis) = tokio::join!(pg, redis);
        Readiness::from_components(vec![pg, redis])
    }

    /// Service identity, uptime and component health.
    pub async fn status(&self) -> ServiceStatus {
        let readiness = self.readiness().await;
        ServiceStatus {
            service: SERVICE_NAME,
            version: VERSION,
            git_commit: GIT_COMMIT,
            environment: self.inner.config.environment.as_str(),
            uptime_secs: self.uptime().as_secs(),
            fake_llm: self.inner.llm.provider_name() == Provider::name(&FakeProvider),
            components: readiness.components,
        }
    }

    async fn ping_redis(&self) -> Result<()> {
        let mut conn = self
            .inner
            .redis
            .get()
            .await
            .map_err(|e| Error::unavailable_from(Component::Redis, e))?;
        let pong: String = xredis::redis::cmd("PING")
            .query_async(&mut *conn)
            .await
            .map_err(xredis::error)?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(xredis::unavailable(format!(
                "unexpected PING reply `{pong}`"
            )))
        }
    }
}
