//! [`AiBackend`]: the one typed entry point of the engine, and its builder.
//!
//! The facade owns what every domain shares (the configuration, the pools, the background
//! tasks) and hands out one small handle per domain: [`AiBackend::llm`],
//! [`AiBackend::jobs`], [`AiBackend::auth`], [`AiBackend::database`]. What a caller does
//! lives on the handle of its domain; what concerns the whole backend (readiness, status,
//! shutdown) lives here.
//!
//! One concept a file: the facade and its handles here, building it in `builder.rs`,
//! what it reports of itself (readiness, status, who is calling) in `status.rs`.

mod builder;
mod status;

pub use builder::{AiBackendBuilder, default_http_client, upstream_http_client};
pub use status::{ServiceStatus, Whoami};

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::auth::Auth;
use crate::config::Config;
use crate::db::Database;
use crate::error::Result;
use crate::jobs::Jobs;
use crate::jobs::worker::WorkerDeps;
use crate::llm::Llm;
use crate::redis::RedisPool;

pub use crate::version::{GIT_COMMIT, SERVICE_NAME, VERSION};

/// The engine. Cheap to clone: all clones share pools and state.
#[derive(Clone, Debug)]
pub struct AiBackend {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: Config,
    /// Built without Redis: a pool that never connects, see `builder::unconfigured_redis_pool`.
    redis: RedisPool,
    has_redis: bool,
    database: Database,
    auth: Auth,
    llm: Llm,
    jobs: Jobs,
    started_at: Instant,
}

impl AiBackend {
    /// The configuration the backend was built with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// LLM calls: [`Llm::complete`] and [`Llm::stream`] along a task's route with retries
    /// and fallback, daily user budgets ([`Llm::budget`]), counters ([`Llm::metrics`]).
    pub fn llm(&self) -> &Llm {
        &self.inner.llm
    }

    /// The job queue's producer: enqueue, results, revocation.
    pub fn jobs(&self) -> &Jobs {
        &self.inner.jobs
    }

    /// Authentication (API key, Supabase tokens) and rate limits.
    pub fn auth(&self) -> &Auth {
        &self.inner.auth
    }

    /// Postgres: migrations, job and inference rows, the extraction cache, profiles, and
    /// the audit writer's counters.
    pub fn database(&self) -> &Database {
        &self.inner.database
    }

    /// True unless built without a database.
    pub fn has_database(&self) -> bool {
        self.inner.database.is_configured()
    }

    /// True unless built without Redis.
    pub fn has_redis(&self) -> bool {
        self.inner.has_redis
    }

    /// The parts a [`crate::jobs::worker::Worker`] runs on (jobs settings and client, Redis,
    /// job rows, the LLM handle), handed over so the worker never holds the facade.
    pub fn worker_deps(&self) -> WorkerDeps {
        let i = &self.inner;
        WorkerDeps::new(
            i.config.jobs.clone(),
            i.config.redis.url.clone(),
            i.jobs.clone(),
            i.redis.clone(),
            i.database.clone(),
            i.llm.clone(),
        )
    }

    /// Time since the backend was built.
    pub fn uptime(&self) -> Duration {
        self.inner.started_at.elapsed()
    }

    /// Applies the migration policy of the configuration at startup: with
    /// `RUN_MIGRATIONS` on, applies pending migrations and returns their versions; off,
    /// does nothing (an operator runs `xenios-cli migrate`).
    pub async fn prepare(&self) -> Result<Vec<String>> {
        if !self.inner.config.database.run_migrations {
            return Ok(Vec::new());
        }
        let applied = self.inner.database.migrate().await?;
        tracing::info!(applied = ?applied, "migrations up to date");
        Ok(applied)
    }

    /// Stops what construction started: waits (at most `deadline`) for queued audit rows
    /// and job events to be written, then stops the audit writer and the event sender.
    /// Returns false when audit rows were still queued at the deadline (they are counted
    /// as dropped). Call once, when the process stops; the backend must not be used after.
    pub async fn shutdown(&self, deadline: Duration) -> bool {
        let (flushed, ()) = tokio::join!(self.inner.database.flush_audit_within(deadline), async {
            if tokio::time::timeout(deadline, self.inner.jobs.shutdown())
                .await
                .is_err()
            {
                tracing::warn!("job events still queued at shutdown");
            }
        });
        self.inner.database.audit().stop();
        flushed
    }
}

impl From<&AiBackend> for WorkerDeps {
    fn from(backend: &AiBackend) -> Self {
        backend.worker_deps()
    }
}

impl From<AiBackend> for WorkerDeps {
    fn from(backend: AiBackend) -> Self {
        backend.worker_deps()
    }
}
