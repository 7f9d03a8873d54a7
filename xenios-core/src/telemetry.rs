//! Structured logging with `tracing`.
//!
//! JSON lines in staging and production (or with `LOG_FORMAT=json`), human-readable output in
//! development. Transports open a span carrying `correlation_id` for each request; the JSON
//! formatter writes the current span's fields on every line, so every log line of a request
//! carries its ID without each call site repeating it.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

use crate::config::{Config, LogFormat};

/// Installs the global subscriber. Safe to call more than once (later calls are no-ops), so
/// tests and embedders that already installed one are left alone.
pub fn init(config: &Config) {
    init_with(&config.log_level, config.log_format);
}

/// Installs the global subscriber from a filter and a format.
pub fn init_with(level: &str, format: LogFormat) {
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_span_events(FmtSpan::NONE);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Pretty => builder.with_target(false).compact().try_init(),
    };
}
