//! Worker health for orchestrators: a heartbeat file and the check that reads it.
//!
//! A running worker rewrites `WORKER_HEALTH_FILE` every 2 s, but only while Redis answers
//! it (its take, heartbeat or finish steps succeeded within the last [`HEALTHY_WITHIN`]).
//! `xenios-worker --check` ([`check`]) succeeds iff the file exists and is younger than
//! `WORKER_HEALTH_MAX_AGE_SECS`, so Docker's healthcheck sees a wedged or disconnected
//! worker as unhealthy. With `WORKER_REDIS_GIVE_UP_SECS`, a worker that has not reached
//! Redis for that long stops and exits non-zero, for its supervisor to restart it.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use crate::config::JobsConfig;

use super::state::Shared;

/// A worker whose Redis last answered longer ago than this is not healthy.
pub const HEALTHY_WITHIN: Duration = Duration::from_secs(10);
/// How often the health file is rewritten.
const WRITE_EVERY: Duration = Duration::from_secs(2);

/// Why a worker is not healthy.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HealthError {
    /// The health file cannot be read.
    #[error("no worker heartbeat at {}: {source}", path.display())]
    Missing {
        /// The health file.
        path: std::path::PathBuf,
        /// Why it cannot be read.
        #[source]
        source: std::io::Error,
    },
    /// The health file is older than `WORKER_HEALTH_MAX_AGE_SECS`.
    #[error(
        "the worker heartbeat at {} is {} s old (limit {} s)",
        path.display(),
        age.as_secs(),
        limit.as_secs()
    )]
    Stale {
        /// The health file.
        path: std::path::PathBuf,
        /// Its age.
        age: Duration,
        /// The oldest it may be.
        limit: Duration,
    },
}

/// Checks the health file of a worker running on this host: `Ok(age)` when it exists and
/// is younger than `WORKER_HEALTH_MAX_AGE_SECS`, else why not.
pub fn check(config: &JobsConfig) -> Result<Duration, HealthError> {
    let path = &config.worker_health_file;
    let modified = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .map_err(|source| HealthError::Missing {
            path: path.clone(),
            source,
        })?;
    let age = SystemTime::now()
        .duration_since(modified)
        .unwrap_or_default();
    if age > config.worker_health_max_age {
        return Err(HealthError::Stale {
            path: path.clone(),
            age,
            limit: config.worker_health_max_age,
        });
    }
    Ok(age)
}

/// Writes the health file atomically (a rename), so a check never reads half a file.
fn write(path: &Path) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let now = chrono::Utc::now().to_rfc3339();
    std::fs::write(&tmp, format!("{now}\n"))?;
    std::fs::rename(&tmp, path)
}

/// Keeps the health file fresh while Redis answers; gives up after
/// `WORKER_REDIS_GIVE_UP_SECS` without it.
pub(super) async fn health_loop(shared: Arc<Shared>) {
    let path = shared.jobs().worker_health_file.clone();
    let give_up = shared.jobs().worker_redis_give_up;
    let mut tick = tokio::time::interval(WRITE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned = false;
    loop {
        tick.tick().await;
        let silent = shared.link.since_ok();
        if silent < HEALTHY_WITHIN {
            if let Err(e) = write(&path) {
                if !warned {
                    tracing::warn!(error = %e, path = %path.display(), "cannot write the health file");
                    warned = true;
                }
            } else {
                warned = false;
            }
        }
        if let Some(limit) = give_up
            && silent >= limit
        {
            tracing::error!(
                silent_secs = silent.as_secs(),
                "no answer from Redis for longer than WORKER_REDIS_GIVE_UP_SECS; giving up"
            );
            shared.gave_up.store(true, Ordering::Release);
            shared.stop();
            return;
        }
    }
}

/// Removes the health file of a worker that stops.
pub(super) fn remove(config: &JobsConfig) {
    let _ = std::fs::remove_file(&config.worker_health_file);
}
