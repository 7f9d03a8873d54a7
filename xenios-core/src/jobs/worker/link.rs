//! The worker's Redis connection and its health.
//!
//! One multiplexed connection shared by the worker's tasks that reconnects by itself after
//! Redis restarts or the network drops it (redis-rs' `ConnectionManager`), replaced outright
//! after several failures in a row (a half-open connection only ever times out). Every
//! answer from Redis is recorded: the health file and `WORKER_REDIS_GIVE_UP_SECS` judge
//! the worker by how long ago Redis last answered.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::error::Result;
use crate::jobs::broker::redis_error;

use super::state::lock;

/// Failures in a row after which the connection is replaced by a fresh one.
const REPLACE_AFTER: u32 = 3;

/// The worker's Redis connection; see the module doc.
pub(crate) struct RedisLink {
    client: redis::Client,
    conn: Mutex<ConnectionManager>,
    failures: AtomicU32,
    last_ok: Mutex<Instant>,
}

impl std::fmt::Debug for RedisLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLink")
            .field("failures", &self.failures)
            .finish_non_exhaustive()
    }
}

fn config() -> ConnectionManagerConfig {
    // A response timeout that tolerates a loaded machine better than the default 500 ms;
    // reconnection attempts at most 1 s apart, so draining resumes soon after Redis is back.
    ConnectionManagerConfig::new()
        .set_response_timeout(Some(crate::jobs::REDIS_REPLY_TIMEOUT))
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_secs(1))
}

impl RedisLink {
    /// A link that connects on first use: a worker started before Redis (a container
    /// that comes up first, a Redis restarting) waits for it with the fetch loop's backoff
    /// instead of exiting. Fails only on a client that cannot make connections at all.
    pub(crate) fn connect(client: redis::Client) -> Result<Self> {
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config())
            .map_err(redis_error)?;
        Ok(Self {
            client,
            conn: Mutex::new(conn),
            failures: AtomicU32::new(0),
            last_ok: Mutex::new(Instant::now()),
        })
    }

    /// A handle on the connection (cheap).
    pub(crate) fn conn(&self) -> ConnectionManager {
        lock(&self.conn).clone()
    }

    /// Records an answer from Redis.
    pub(crate) fn ok(&self) {
        self.failures.store(0, Ordering::Relaxed);
        *lock(&self.last_ok) = Instant::now();
    }

    /// Records a failed command; replaces the connection after several in a row.
    pub(crate) fn failed(&self) {
        if self.failures.fetch_add(1, Ordering::Relaxed) + 1 < REPLACE_AFTER {
            return;
        }
        self.failures.store(0, Ordering::Relaxed);
        match ConnectionManager::new_lazy_with_config(self.client.clone(), config()) {
            Ok(fresh) => {
                tracing::warn!("Redis keeps failing; replacing the worker's connection");
                *lock(&self.conn) = fresh;
            }
            Err(e) => tracing::warn!(error = %e, "cannot build a fresh Redis connection"),
        }
    }

    /// Records the outcome of a command and passes it on.
    pub(crate) fn track<T>(&self, r: Result<T>) -> Result<T> {
        match &r {
            Ok(_) => self.ok(),
            Err(_) => self.failed(),
        }
        r
    }

    /// How long ago Redis last answered.
    pub(crate) fn since_ok(&self) -> Duration {
        lock(&self.last_ok).elapsed()
    }
}
