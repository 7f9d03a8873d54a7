//! Logs, error reports and traces.
//!
//! # Layout
//! - this file: the global `tracing` subscriber. JSON lines in staging and production (or
//!   with `LOG_FORMAT=json`), human-readable output in development. Transports open a span
//!   carrying `correlation_id` for each request; the JSON formatter (`json`, tracing-subscriber's
//!   line made cheaper) writes the current span's fields on every line, so every log line of
//!   a request carries its ID. Lines are written by a thread of their own (`log_writer`).
//! - [`reporting`]: Sentry (`SENTRY_DSN`): 5xx responses, panics, failed jobs and LLM calls on
//!   which every model failed become events tagged with correlation ID, task, environment and
//!   release, scrubbed of secrets, prompts and outputs.
//! - [`trace`]: OpenTelemetry (`OTEL_EXPORTER_OTLP_ENDPOINT`): spans of HTTP requests, LLM
//!   attempts, enqueues and jobs exported over OTLP/HTTP; W3C `traceparent` carried into
//!   Celery message headers and upstream LLM calls.
//! - `fields`: a small layer remembering a few span fields (correlation ID, task) so that
//!   error reports can be tagged with them.
//!
//! Without `SENTRY_DSN` and `OTEL_EXPORTER_OTLP_ENDPOINT` neither a Sentry client nor an
//! exporter is installed: nothing is sent and the cost is that of logging alone.

mod fields;
mod json;
pub mod reporting;
pub mod trace;

use std::io::BufWriter;
use std::time::Duration;

use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::config::{Config, LogFormat};

pub use reporting::report_job_failure;
pub use trace::{enqueue_headers, job_span, set_parent, traceparent, traceparent_of};

/// What [`init`] installed. Keep it alive for the life of the process: dropping it flushes
/// queued error reports and spans (bounded), then stops sending them.
#[must_use = "dropping the guard stops error reporting and trace export"]
pub struct Telemetry {
    sentry: Option<sentry::ClientInitGuard>,
    tracer: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
    /// The log writer thread: dropping it writes the lines still queued.
    _log_lines: Option<WorkerGuard>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("sentry", &self.sentry.is_some())
            .field("traces", &self.tracer.is_some())
            .finish()
    }
}

impl Telemetry {
    /// Whether error reports are sent (`SENTRY_DSN` set).
    pub fn reports_errors(&self) -> bool {
        self.sentry.is_some()
    }

    /// Whether spans are exported (`OTEL_EXPORTER_OTLP_ENDPOINT` set).
    pub fn exports_traces(&self) -> bool {
        self.tracer.is_some()
    }

    /// Sends what is queued (error reports and finished spans), waiting at most `timeout`
    /// for error reports. False when something could not be sent in time.
    pub fn flush(&self, timeout: Duration) -> bool {
        let mut ok = true;
        if let Some(tracer) = &self.tracer {
            ok &= tracer.force_flush().is_ok();
        }
        if self.sentry.is_some()
            && let Some(client) = sentry::Hub::current().client()
        {
            ok &= client.flush(Some(timeout));
        }
        ok
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(tracer) = self.tracer.take() {
            let _ = tracer.shutdown();
            trace::set_exporting(false);
        }
        // The Sentry guard flushes (bounded by its shutdown timeout) when it drops.
    }
}

/// Installs the global subscriber, and Sentry and the OTLP exporter when configured. Safe to
/// call more than once (later calls leave the first subscriber in place), so tests and
/// embedders that already installed one are left alone.
pub fn init(config: &Config) -> Telemetry {
    let sentry = reporting::init(config);
    let tracer = trace::provider(config);
    let (lines, log_lines) = log_writer();
    let mut layers: Vec<Box<dyn Layer<Registry> + Send + Sync>> =
        vec![fmt_layer(&config.log_level, config.log_format, lines)];
    if let Some(provider) = &tracer {
        layers.push(
            trace::layer(provider)
                .with_filter(LevelFilter::INFO)
                .boxed(),
        );
    }
    if sentry.is_some() {
        layers.push(fields::SpanFields.boxed());
        layers.push(reporting::layer().boxed());
    }
    let installed = tracing_subscriber::registry()
        .with(layers)
        .try_init()
        .is_ok();
    if installed && tracer.is_some() {
        trace::set_exporting(true);
    }
    Telemetry {
        sentry,
        tracer,
        _log_lines: installed.then_some(log_lines),
    }
}

/// Where [`init`]'s log lines go: standard error, written by a thread of their own.
///
/// A request formats its line and queues it; it never takes the lock on standard error or
/// makes a `write` call. The thread writes what has queued in one `write` (a 64 KiB
/// buffer, flushed each time the queue is empty), so under load many lines cost one call
/// and at rest each line is written at once. Writing in place was about a tenth of the
/// server's CPU on `GET /api/v1/me` (the call itself, and the two Tokio workers contending
/// for the lock); with this writer the same run answers more requests (README, benchmarks).
/// The queue is not lossy: when it is full (128,000 lines) a request waits for room rather
/// than drop a line. Lines still queued are written when [`Telemetry`] drops, at the end
/// of `main`.
fn log_writer() -> (NonBlocking, WorkerGuard) {
    NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("xenios-log")
        .finish(BufWriter::with_capacity(64 * 1024, std::io::stderr()))
}

/// Installs the global subscriber (logs only) from a filter and a format.
/// Lines are written in place, as they are logged (the CLI's few lines appear in order with
/// what it prints).
pub fn init_with(level: &str, format: LogFormat) {
    let _ = tracing_subscriber::registry()
        .with(fmt_layer(level, format, std::io::stderr))
        .try_init();
}

fn fmt_layer<W>(level: &str, format: LogFormat, writer: W) -> Box<dyn Layer<Registry> + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_span_events(FmtSpan::NONE);
    let layer = match format {
        LogFormat::Json => builder
            .fmt_fields(json::SpanFields)
            .event_format(json::JsonLine)
            .boxed(),
        LogFormat::Pretty => builder.with_target(false).compact().boxed(),
    };
    match log_filter(level) {
        LogFilter::Level(bare) => layer.with_filter(bare).boxed(),
        LogFilter::Directives(directives) => layer.with_filter(*directives).boxed(),
    }
}

/// What [`log_filter`] makes of `LOG_LEVEL`.
enum LogFilter {
    Level(LevelFilter),
    Directives(Box<EnvFilter>),
}

/// The filter for `LOG_LEVEL`. A bare level (the usual `info`) is checked by comparing
/// levels; only directives per target (`info,xenios_core::jobs=debug`) need an
/// [`EnvFilter`], which matches every span and event against them (about 3% of the CPU of
/// a proxied LLM call, measured with `scripts/bench-llm.sh`). A text that is neither falls
/// back to `info` (the configuration refuses it before this).
fn log_filter(level: &str) -> LogFilter {
    match level.trim().parse::<LevelFilter>() {
        Ok(bare) => LogFilter::Level(bare),
        Err(_) => LogFilter::Directives(Box::new(
            EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info")),
        )),
    }
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::filter::LevelFilter;

    use super::{LogFilter, log_filter};

    fn level(text: &str) -> Option<LevelFilter> {
        match log_filter(text) {
            LogFilter::Level(l) => Some(l),
            LogFilter::Directives(_) => None,
        }
    }

    fn directives(text: &str) -> Option<String> {
        match log_filter(text) {
            LogFilter::Level(_) => None,
            LogFilter::Directives(f) => Some(f.to_string()),
        }
    }

    #[test]
    fn a_bare_level_is_compared_and_directives_go_to_env_filter() {
        assert_eq!(level("info"), Some(LevelFilter::INFO));
        assert_eq!(level(" WARN "), Some(LevelFilter::WARN));
        assert_eq!(level("off"), Some(LevelFilter::OFF));
        assert_eq!(
            directives("info,xenios_core::jobs=debug").as_deref(),
            Some("xenios_core::jobs=debug,info")
        );
        // Not a filter at all (refused by the configuration first): info.
        assert_eq!(directives("info,[").as_deref(), Some("info"));
    }
}
