//! How to run a worker ([`WorkerOptions`]) and what a run did ([`WorkerSummary`]).

use serde::Serialize;

use crate::config::JobsConfig;

/// How to run a worker (the flags of `celery worker`).
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Queues to consume (`-Q`).
    pub queues: Vec<String>,
    /// Handlers run at once (`-c`).
    pub concurrency: usize,
    /// Node name (`-n`); `%h` is replaced by the host name. Default `xenios-<pid>@<host>`.
    pub hostname: Option<String>,
    /// Messages taken ahead per concurrency slot (Celery's prefetch multiplier, default 4).
    pub prefetch_multiplier: usize,
}

/// Default of `-c`.
pub const DEFAULT_CONCURRENCY: usize = 4;
/// Default of `--prefetch-multiplier`.
pub const DEFAULT_PREFETCH_MULTIPLIER: usize = 4;

impl Default for WorkerOptions {
    /// Queue `default`, 4 at once, 4 ahead per slot.
    fn default() -> Self {
        Self {
            queues: vec!["default".to_owned()],
            concurrency: DEFAULT_CONCURRENCY,
            hostname: None,
            prefetch_multiplier: DEFAULT_PREFETCH_MULTIPLIER,
        }
    }
}

impl WorkerOptions {
    /// The defaults of a configuration: consume `JOB_DEFAULT_QUEUE`.
    pub fn for_config(config: &JobsConfig) -> Self {
        Self {
            queues: vec![config.default_queue.clone()],
            ..Self::default()
        }
    }
}

/// Counters of a finished run.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct WorkerSummary {
    /// Handlers finished (any outcome).
    pub processed: u64,
    /// Successes.
    pub succeeded: u64,
    /// Failures (including time limits and unknown tasks).
    pub failed: u64,
    /// Retries scheduled.
    pub retried: u64,
    /// Revoked or expired jobs skipped.
    pub revoked: u64,
    /// Undecodable messages moved to the dead-letter list.
    pub dead_lettered: u64,
    /// Messages put back on their queues at shutdown.
    pub given_back: u64,
}
