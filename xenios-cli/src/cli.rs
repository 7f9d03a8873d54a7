//! The command line: subcommands and flags (clap), and which function runs each.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use xenios_core::AiBackend;

use crate::{admin, jobs, llm};

/// Command-line client of the Xenios AI backend.
#[derive(Debug, Parser)]
#[command(name = "xenios-cli", version, about)]
pub struct Cli {
    #[command(subcommand)]
    /// What to do.
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
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
    /// Run one LLM completion along a task's route and print it.
    Complete(LlmArgs),
    /// Stream one LLM completion, printing tokens as they arrive.
    Stream(LlmArgs),
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
    /// Revoke a job: workers (Rust and Python) skip it.
    Revoke {
        /// Task id.
        id: String,
        /// Stop it too if it is already running.
        #[arg(long)]
        terminate: bool,
    },
}

#[derive(Debug, clap::Args)]
pub struct LlmArgs {
    /// Task: session_summary, insight_generation, chat, intent_classification,
    /// entity_extraction.
    #[arg(long, default_value = "chat")]
    pub task: String,
    /// Use this model (or comma-separated models) instead of the task's route.
    #[arg(long)]
    pub model: Option<String>,
    /// Optional system prompt.
    #[arg(long)]
    pub system: Option<String>,
    /// The user prompt; `-` or nothing reads it from stdin (one trailing newline dropped).
    pub prompt: Option<String>,
}

impl Command {
    /// Runs the subcommand; its exit code.
    pub async fn run(self, backend: &AiBackend) -> ExitCode {
        match self {
            Command::Health => admin::health(backend).await,
            Command::Status => admin::status(backend).await,
            Command::Migrate {
                revert_last,
                pending,
            } => admin::migrate(backend, revert_last, pending).await,
            Command::Complete(args) => llm::complete(backend, args, false).await,
            Command::Stream(args) => llm::complete(backend, args, true).await,
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
                let job = jobs::JobArgs {
                    task,
                    args,
                    kwargs,
                    queue,
                    countdown,
                    priority,
                };
                jobs::enqueue(backend, job, wait.then_some(timeout)).await
            }
            Command::Job { id } => jobs::show(backend, &id).await,
            Command::Revoke { id, terminate } => jobs::revoke(backend, &id, terminate).await,
        }
    }
}
