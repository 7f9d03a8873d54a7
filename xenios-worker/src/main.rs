//! `xenios-worker`: consumes Celery-compatible queues on Redis with the runtime of
//! `xenios_core::jobs::worker`; flags follow `celery worker`.

use std::process::ExitCode;

use clap::Parser;
use xenios_core::config::JobsConfig;
use xenios_core::jobs::worker::{AUDIT_FLUSH_TIMEOUT, health};
use xenios_core::jobs::{Worker, WorkerOptions, tasks};

/// Celery-compatible queue worker (flags follow `celery worker`).
#[derive(Debug, Parser)]
#[command(name = "xenios-worker", version, about)]
struct Args {
    /// Comma-separated queues to consume, e.g. `default,llm` (default: `JOB_DEFAULT_QUEUE`).
    #[arg(short = 'Q', long = "queues", value_delimiter = ',')]
    queues: Option<Vec<String>>,
    /// Number of tasks run at once [default: 4].
    #[arg(short = 'c', long = "concurrency")]
    concurrency: Option<usize>,
    /// Worker name as shown in Flower (`name@host`; `%h` is the host name).
    #[arg(short = 'n', long = "hostname")]
    hostname: Option<String>,
    /// Messages taken ahead per concurrency slot [default: 4].
    #[arg(long = "prefetch-multiplier")]
    prefetch_multiplier: Option<usize>,
    /// Consume queues none of the worker's tasks routes to (`JOB_ROUTES`); by default the
    /// worker refuses to start on them, since it would fail every job it took there.
    #[arg(long = "allow-unhandled-queues")]
    allow_unhandled_queues: bool,
    /// Exit 0 when a worker running on this host is healthy (its heartbeat file
    /// `WORKER_HEALTH_FILE` is fresh), non-zero otherwise; for Docker healthchecks.
    #[arg(long = "check")]
    check: bool,
}

impl Args {
    /// The flags over core's defaults for this configuration.
    fn options(&self, config: &JobsConfig) -> WorkerOptions {
        let d = WorkerOptions::for_config(config);
        WorkerOptions {
            queues: self.queues.clone().unwrap_or(d.queues),
            concurrency: self.concurrency.unwrap_or(d.concurrency),
            hostname: self.hostname.clone(),
            prefetch_multiplier: self.prefetch_multiplier.unwrap_or(d.prefetch_multiplier),
        }
    }
}

fn fail(code: ExitCode, what: impl std::fmt::Display) -> ExitCode {
    eprintln!("xenios-worker: {what}");
    code
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let config = match xenios_core::Config::from_env() {
        Ok(c) => c,
        Err(e) => return fail(ExitCode::from(2), e),
    };
    if args.check {
        return match health::check(&config.jobs) {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => fail(ExitCode::FAILURE, format_args!("unhealthy: {e}")),
        };
    }
    // Held to the end of main: dropping it flushes error reports and spans.
    let _telemetry = xenios_core::telemetry::init(&config);
    let options = args.options(&config.jobs);
    let backend = match xenios_core::AiBackend::builder(config).build().await {
        Ok(b) => b,
        Err(e) => return fail(ExitCode::FAILURE, e),
    };
    // The one place handlers are installed: add new tasks in `tasks::register_builtin`.
    let registry = tasks::builtin_registry(&backend.config().jobs);
    let outcome = Worker::new(backend.clone(), registry, options)
        .allow_unhandled_queues(args.allow_unhandled_queues)
        .run(xenios_core::shutdown::signal())
        .await;
    backend.shutdown(AUDIT_FLUSH_TIMEOUT).await;
    match outcome {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "worker failed");
            fail(ExitCode::FAILURE, e)
        }
    }
}
