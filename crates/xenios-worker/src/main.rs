//! `xenios-worker`: consumes Celery-compatible queues on Redis.

use std::process::ExitCode;

use clap::Parser;

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
    /// Worker name as shown in Flower (`celery@<host>` style).
    #[arg(short = 'n', long = "hostname")]
    hostname: Option<String>,
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
    xenios_core::telemetry::init(&config);
    tracing::error!(
        queues = ?args.queues,
        concurrency = args.concurrency,
        hostname = ?args.hostname,
        "the task runtime is not part of this build yet (issue 6)"
    );
    ExitCode::FAILURE
}
