//! `xenios-server`: reads the configuration, sets up logging and serves until SIGTERM.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let config = match xenios_core::Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("xenios-server: {e}");
            return ExitCode::from(2);
        }
    };
    // Held to the end of main: dropping it flushes error reports and spans.
    let _telemetry = xenios_core::telemetry::init(&config);
    match xenios_server::serve(config, xenios_core::shutdown::signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "xenios-server failed");
            ExitCode::FAILURE
        }
    }
}
