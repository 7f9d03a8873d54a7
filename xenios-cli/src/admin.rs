//! `health`, `status` and `migrate`.

use std::process::ExitCode;

use xenios_core::AiBackend;

/// `health`: one line per dependency; exit 1 when not ready.
pub async fn health(backend: &AiBackend) -> ExitCode {
    let r = backend.readiness().await;
    for c in &r.components {
        match &c.error {
            None => println!("{:<9} healthy   {} ms", c.name.as_str(), c.latency_ms),
            Some(e) => println!("{:<9} unhealthy {e}", c.name.as_str()),
        }
    }
    if r.ready {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `status`: the service status as JSON.
pub async fn status(backend: &AiBackend) -> ExitCode {
    match serde_json::to_string_pretty(&backend.status().await) {
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

/// `migrate`: apply, list pending (`--pending`) or revert the last (`--revert-last`).
pub async fn migrate(backend: &AiBackend, revert_last: bool, pending: bool) -> ExitCode {
    let db = backend.database();
    let (verb, result) = if revert_last {
        ("reverted", db.revert_last_migration().await)
    } else if pending {
        ("pending", db.pending_migrations().await)
    } else {
        ("applied", db.migrate().await)
    };
    match result {
        Ok(versions) => {
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
