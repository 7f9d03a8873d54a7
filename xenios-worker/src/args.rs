//! The worker's flags, as `celery worker` spells them, over core's defaults.

use clap::Parser;
use xenios_core::config::JobsConfig;
use xenios_core::jobs::WorkerOptions;

/// Celery-compatible queue worker (flags follow `celery worker`).
#[derive(Debug, Parser)]
#[command(name = "xenios-worker", version, about)]
pub(crate) struct Args {
    /// Comma-separated queues to consume, e.g. `default,llm` (default: `JOB_DEFAULT_QUEUE`).
    #[arg(short = 'Q', long = "queues", value_delimiter = ',')]
    pub(crate) queues: Option<Vec<String>>,
    /// Number of tasks run at once [default: 4].
    #[arg(short = 'c', long = "concurrency")]
    pub(crate) concurrency: Option<usize>,
    /// Worker name as shown in Flower (`name@host`; `%h` is the host name).
    #[arg(short = 'n', long = "hostname")]
    pub(crate) hostname: Option<String>,
    /// Messages taken ahead per concurrency slot [default: 4].
    #[arg(long = "prefetch-multiplier")]
    pub(crate) prefetch_multiplier: Option<usize>,
    /// Consume queues none of the worker's tasks routes to (`JOB_ROUTES`); by default the
    /// worker refuses to start on them, since it would fail every job it took there.
    #[arg(long = "allow-unhandled-queues")]
    pub(crate) allow_unhandled_queues: bool,
    /// Exit 0 when a worker running on this host is healthy (its heartbeat file
    /// `WORKER_HEALTH_FILE` is fresh), non-zero otherwise; for Docker healthchecks.
    #[arg(long = "check")]
    pub(crate) check: bool,
}

impl Args {
    /// The flags over core's defaults for this configuration.
    pub(crate) fn options(&self, config: &JobsConfig) -> WorkerOptions {
        let d = WorkerOptions::for_config(config);
        WorkerOptions {
            queues: self.queues.clone().unwrap_or(d.queues),
            concurrency: self.concurrency.unwrap_or(d.concurrency),
            hostname: self.hostname.clone(),
            prefetch_multiplier: self.prefetch_multiplier.unwrap_or(d.prefetch_multiplier),
        }
    }
}
