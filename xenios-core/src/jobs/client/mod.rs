//! [`Jobs`]: the producer side of the job queue, behind [`crate::AiBackend::jobs`].
//!
//! One concept a file: the producer and its connection here, building and publishing
//! messages in `enqueue.rs`, reading and waiting for results in `results.rs`, revoking in
//! `revoke.rs`.

mod enqueue;
mod results;
mod revoke;

pub use enqueue::Enqueued;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use secrecy::ExposeSecret;

use super::events::{Clock, EventSender};
use super::protocol::{self};
use super::{REDIS_REPLY_TIMEOUT, Router, catalog, tasks};
use crate::config::{Config, JobsConfig};
use crate::db::audit::AuditWriter;
use crate::error::{Error, Result};
use crate::redis::RedisPool;

/// The job queue's producer. Cheap to clone.
#[derive(Clone)]
pub struct Jobs {
    config: JobsConfig,
    router: Router,
    catalog: Arc<catalog::Catalog>,
    /// None when built without Redis.
    client: Option<redis::Client>,
    /// The producer's connection: one multiplexed connection that reconnects by itself
    /// (redis-rs' `ConnectionManager`). Concurrent enqueues share it and are pipelined
    /// onto the socket together, and no pool checkout (with its PING round trip) sits on
    /// the enqueue path. None when built without Redis.
    producer: Option<redis::aio::ConnectionManager>,
    /// The Redis database number (`/n` of `REDIS_URL`): Celery's fanout channels name it.
    redis_db: i64,
    events: EventSender,
    audit: AuditWriter,
}

impl fmt::Debug for Jobs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Jobs")
            .field("router", &self.router)
            .field("catalog", &self.catalog.names())
            .field("redis_db", &self.redis_db)
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

/// Said by every job call of a backend built without Redis.
const NO_REDIS: &str = "no Redis configured (this backend was built without one: REDIS_URL unset)";

impl Jobs {
    /// The producer of `config`, its events sent through `pool`. With `redis_configured`
    /// false every call fails at once with [`Error::Unavailable`]. Fails when `REDIS_URL`
    /// cannot be used; call inside a Tokio runtime (the event sender starts a task).
    pub(crate) fn new(
        config: &Config,
        pool: RedisPool,
        redis_configured: bool,
        audit: AuditWriter,
    ) -> Result<Self> {
        let client = if redis_configured {
            Some(
                redis::Client::open(config.redis.url.expose_secret())
                    .map_err(|e| Error::Validation(format!("REDIS_URL: {:?}", e.kind())))?,
            )
        } else {
            None
        };
        let redis_db = client
            .as_ref()
            .map(|c| c.get_connection_info().redis_settings().db())
            .unwrap_or(0);
        let producer = match &client {
            Some(c) => Some(
                redis::aio::ConnectionManager::new_lazy_with_config(
                    c.clone(),
                    redis::aio::ConnectionManagerConfig::new()
                        .set_response_timeout(Some(REDIS_REPLY_TIMEOUT))
                        .set_connection_timeout(Some(Duration::from_secs(5)))
                        .set_number_of_retries(2)
                        .set_max_delay(Duration::from_secs(1)),
                )
                .map_err(|e| Error::Validation(format!("REDIS_URL: {:?}", e.kind())))?,
            ),
            None => None,
        };
        let events = EventSender::start(
            pool,
            redis_db,
            protocol::origin(),
            Arc::new(Clock::default()),
            config.jobs.task_events,
        );
        let router = Router::new(&config.jobs);
        let catalog = catalog::Catalog::new(
            tasks::builtin_registry(&config.jobs)
                .declarations()
                .into_iter()
                .chain(config.jobs.extra_tasks.iter().cloned()),
            &router,
        );
        Ok(Self {
            config: config.jobs.clone(),
            router,
            catalog: Arc::new(catalog),
            client,
            producer,
            redis_db,
            events,
            audit,
        })
    }

    /// A handle on the producer's connection (cheap: a clone of a multiplexed handle).
    pub(crate) fn producer(&self) -> Result<redis::aio::ConnectionManager> {
        self.producer
            .clone()
            .ok_or_else(|| crate::redis::unavailable(NO_REDIS))
    }

    /// The Redis client, for dedicated connections (pub/sub, workers).
    pub(crate) fn client(&self) -> Result<&redis::Client> {
        self.client
            .as_ref()
            .ok_or_else(|| crate::redis::unavailable(NO_REDIS))
    }

    /// The Redis database number of `REDIS_URL`.
    pub(crate) fn redis_db(&self) -> i64 {
        self.redis_db
    }

    /// Task events dropped because their queue was full (Redis down).
    pub fn dropped_events(&self) -> u64 {
        self.events.dropped()
    }

    /// Publishes queued task events and stops the event sender (shutdown).
    pub(crate) async fn shutdown(&self) {
        self.events.flush().await;
        self.events.stop();
    }
}
