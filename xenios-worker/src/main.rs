//! `xenios-worker`: consumes Celery-compatible queues on Redis with the runtime of
//! `xenios_core::jobs::worker`; flags follow `celery worker`.

use std::process::ExitCode;

use clap::Parser;
use xenios_core::jobs::{Worker, WorkerOptions, tasks};

/// Celery-compatible queue worker (flags follow `celery worker`).
#[derive(Debug, Parser)]
#[command(name = "xenios-worker", version, about)]
struct Args {
    /// Comma-separated queues to consume, e.g. `default,llm`.
    #[arg(
        short = 'Q',
        long = "queues",
        default_value = "default",
        value_delimiter = ','
    )]
    queues: Vec<String>,
    /// Number of tasks run at once.
    #[arg(short = 'c', long = "concurrency", default_value_t = 4)]
    concurrency: usize,
    /// Worker name as shown in Flower (`name@host`; `%h` is the host name).
    #[arg(short = 'n', long = "hostname")]
    hostname: Option<String>,
    /// Messages taken ahead per concurrency slot.
    #[arg(long = "prefetch-multiplier", default_value_t = 4)]
    prefetch_multiplier: usize,
    /// Consume queues none of the worker's tasks routes to (`JOB_ROUTES`); by default the
    /// worker refuses to start on them, since it would fail every job it took there.
    #[arg(long = "allow-unhandled-queues")]
    allow_unhandled_queues: bool,
    /// Exit 0 when a worker running on this host is healthy (its heartbeat file
    /// `WORKER_HEALTH_FILE` is fresh), non-zero otherwise; for Docker healthchecks.
    #[arg(long = "check")]
    check: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let config = match xenios_core::Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("xenios-worker: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check {
        return match xenios_core::jobs::worker::health::check(&config.jobs) {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("xenios-worker: unhealthy: {e}");
                ExitCode::FAILURE
            }
        };
    }
    // Held to the end of main: dropping it flushes error reports and spans.
    let _telemetry = xenios_core::telemetry::init(&config);
    let backend = match xenios_core::AiBackend::builder(config).build().await {
        Ok(b) => b,
        Err(e) => {
            eprintln!("xenios-worker: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The one place handlers are installed: add new tasks in `tasks::register_builtin`.
    let registry = tasks::builtin_registry(&backend.config().jobs);
    let options = WorkerOptions {
        queues: args.queues,
        concurrency: args.concurrency,
        hostname: args.hostname,
        prefetch_multiplier: args.prefetch_multiplier,
    };
    match Worker::new(backend, registry, options)
        .allow_unhandled_queues(args.allow_unhandled_queues)
        .run(xenios_core::shutdown::signal())
        .await
    {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xenios-worker: {e}");
            tracing::error!(error = %e, "worker failed");
            ExitCode::FAILURE
        }
    }
}
