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
    let registry = tasks::builtin_registry();
    let options = WorkerOptions {
        queues: args.queues,
        concurrency: args.concurrency,
        hostname: args.hostname,
        prefetch_multiplier: args.prefetch_multiplier,
    };
    match Worker::new(backend, registry, options)
        .run(xenios_core::shutdown::signal())
        .await
    {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "worker failed");
            ExitCode::FAILURE
        }
    }
}
