//! `xenios-cli`: the backend from the command line, through `AiBackend` directly (no HTTP).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
