//! Embedding `xenios-core` in another Rust service: build the engine from the environment
//! and use it directly, without the HTTP server.
//!
//! `cargo run -p xenios-embedding-example`

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let config = match xenios_core::Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let backend = match xenios_core::AiBackend::builder(config).build().await {
        Ok(b) => b,
        Err(e) => {
            eprintln!("cannot build the backend: {e}");
            return ExitCode::FAILURE;
        }
    };
    let status = backend.status().await;
    println!(
        "{} {} ({}) in {}",
        status.service, status.version, status.git_commit, status.environment
    );
    for c in status.components {
        println!(
            "  {:<9} {}",
            c.name,
            c.error.as_deref().unwrap_or("healthy")
        );
    }
    ExitCode::SUCCESS
}
