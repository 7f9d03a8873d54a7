//! [`WorkerDeps`]: the parts of the engine a worker runs on, handed over at construction so
//! the jobs domain never reaches up into the facade. [`crate::AiBackend::worker_deps`]
//! builds them (and `From<&AiBackend>` lets [`super::Worker::new`] take a backend directly).

use secrecy::SecretString;

use crate::config::JobsConfig;
use crate::db::{AuditWriter, Database};
use crate::jobs::Jobs;
use crate::llm::Llm;
use crate::redis::RedisPool;

/// What a worker needs from the engine: the jobs settings and client, the Redis pool, the
/// database (for job rows) and the LLM handle its handlers get in [`super::TaskContext`].
/// Cheap to clone: every part shares its pools and state.
#[derive(Debug, Clone)]
pub struct WorkerDeps {
    pub(super) jobs_config: JobsConfig,
    pub(crate) redis_url: SecretString,
    pub(super) jobs: Jobs,
    pub(crate) redis: RedisPool,
    pub(super) database: Database,
    pub(super) llm: Llm,
}

impl WorkerDeps {
    /// The parts, each built by the engine (the backend built with them).
    pub(crate) fn new(
        jobs_config: JobsConfig,
        redis_url: SecretString,
        jobs: Jobs,
        redis: RedisPool,
        database: Database,
        llm: Llm,
    ) -> Self {
        Self {
            jobs_config,
            redis_url,
            jobs,
            redis,
            database,
            llm,
        }
    }

    /// The job settings the worker runs with.
    pub fn jobs_config(&self) -> &JobsConfig {
        &self.jobs_config
    }

    /// The writer of job rows.
    pub(crate) fn audit_writer(&self) -> &AuditWriter {
        self.database.audit()
    }
}
