//! `xenios-cli`: the backend from the command line, through `AiBackend` directly (no HTTP).
//!
//! ## Layout
//! - `cli.rs`: subcommands and flags, and which function runs each.
//! - `admin.rs`: `health`, `status`, `migrate`.
//! - `llm.rs`: `complete`, `stream` (and reading the prompt from stdin).
//! - `jobs.rs`: `enqueue`, `job`, `revoke`.

use std::process::ExitCode;

use clap::Parser;

mod admin;
mod cli;
mod jobs;
mod llm;

/// Audit rows are best effort here: the CLI does not hang when Postgres is down.
const AUDIT_FLUSH: std::time::Duration = std::time::Duration::from_secs(3);

#[tokio::main]
async fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let config = match xenios_core::Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("xenios-cli: {e}");
            return ExitCode::from(2);
        }
    };
    xenios_core::telemetry::init_with(&config.log_level, config.log_format);
    let backend = match xenios_core::AiBackend::builder(config).build().await {
        Ok(b) => b,
        Err(e) => {
            eprintln!("xenios-cli: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = cli.command.run(&backend).await;
    backend.shutdown(AUDIT_FLUSH).await;
    code
}
