//! `xenios-cli`: the backend from the command line, through `AiBackend` directly (no HTTP).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod jobs;

/// Command-line client of the Xenios AI backend.
#[derive(Debug, Parser)]
#[command(name = "xenios-cli", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the readiness of Postgres and Redis (exit 1 when not ready).
    Health,
    /// Print service status as JSON.
    Status,
    /// Apply the embedded database migrations (schema ai_backend).
    Migrate {
        /// Revert the most recent migration instead.
        #[arg(long)]
        revert_last: bool,
        /// Only list pending migrations.
        #[arg(long, conflicts_with = "revert_last")]
        pending: bool,
    },
    /// Enqueue a Celery-compatible job and print its id (or, with --wait, its result).
    Enqueue {
        /// Task name, e.g. `xenios.echo`.
        task: String,
        /// Positional arguments as a JSON array.
        #[arg(long, default_value = "[]")]
        args: String,
        /// Keyword arguments as a JSON object.
        #[arg(long, default_value = "{}")]
        kwargs: String,
        /// Queue (default: routed by task-name prefix).
        #[arg(long)]
        queue: Option<String>,
        /// Seconds before the job may run.
        #[arg(long)]
        countdown: Option<f64>,
        /// Priority 0-9 (0 first).
        #[arg(long)]
        priority: Option<u8>,
        /// Wait for the result and print it (exit 1 unless SUCCESS).
        #[arg(long)]
        wait: bool,
        /// Seconds to wait with --wait.
        #[arg(long, default_value_t = 60.0)]
        timeout: f64,
    },
    /// Print a job's state and result as JSON.
    Job {
        /// Task id.
        id: String,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match xenios_core::Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("xenios-cli: {e}");
            return ExitCode::from(2);
        }
    };
    xenios_core::telemetry::init_with("warn", xenios_core::config::LogFormat::Pretty);
    let backend = match xenios_core::AiBackend::builder(config).build().await {
        Ok(b) => b,
        Err(e) => {
            eprintln!("xenios-cli: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Enqueue {
            task,
            args,
            kwargs,
            queue,
            countdown,
            priority,
            wait,
            timeout,
        } => {
            jobs::enqueue(
                &backend, task, &args, &kwargs, queue, countdown, priority, wait, timeout,
            )
            .await
        }
        Command::Job { id } => jobs::show(&backend, &id).await,
        Command::Health => {
            let r = backend.readiness().await;
            for c in &r.components {
                match &c.error {
                    None => println!("{:<9} healthy   {} ms", c.name, c.latency_ms),
                    Some(e) => println!("{:<9} unhealthy {e}", c.name),
                }
            }
            if r.ready {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Migrate {
            revert_last,
            pending,
        } => {
            let result = if revert_last {
                backend.revert_last_migration().await
            } else if pending {
                backend.pending_migrations().await
            } else {
                backend.migrate().await
            };
            match result {
                Ok(versions) => {
                    let verb = if revert_last {
                        "reverted"
                    } else if pending {
                        "pending"
                    } else {
                        "applied"
                    };
                    if versions.is_empty() {
                        println!("{verb}: none (up to date)");
                    }
                    for v in versions {
                        println!("{verb}: {v}");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("xenios-cli: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Status => {
            let s = backend.status().await;
            match serde_json::to_string_pretty(&s) {
                Ok(json) => {
                    println!("{json}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("xenios-cli: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
