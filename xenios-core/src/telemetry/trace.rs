//! OpenTelemetry traces over OTLP/HTTP (protobuf), on when `OTEL_EXPORTER_OTLP_ENDPOINT` is
//! set (spans go to `<endpoint>/v1/traces`).
//!
//! Spans are the `tracing` spans at `INFO` and above: `request` (each HTTP request, parented
//! on the caller's W3C `traceparent` header when it sends a valid one), `llm.attempt` (each
//! upstream LLM call, which sends its own `traceparent` upstream), `enqueue` (each message
//! published, whose `traceparent` travels in the Celery message headers, where Python's
//! opentelemetry-instrumentation-celery also reads and writes it) and `job` (see
//! [`job_span`]). So a request, the job it enqueues and that job's LLM calls share one trace.
//!
//! Without the variable no exporter, no tracer and no propagation: the helpers below return
//! at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use serde_json::{Map, Value};
use tracing::Span;
use tracing_opentelemetry::{OpenTelemetryLayer, OpenTelemetrySpanExt};
use tracing_subscriber::Registry;

use crate::config::Config;

/// The W3C trace context header, in HTTP requests and Celery message headers alike.
pub const TRACEPARENT: &str = "traceparent";

/// Whether the OpenTelemetry layer is installed: every helper checks this first.
static EXPORTING: AtomicBool = AtomicBool::new(false);

pub(super) fn set_exporting(on: bool) {
    EXPORTING.store(on, Ordering::Relaxed);
}

fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// The tracer provider exporting to `OTEL_EXPORTER_OTLP_ENDPOINT`, when set.
pub(super) fn provider(config: &Config) -> Option<SdkTracerProvider> {
    let endpoint = config.otel_endpoint.as_deref()?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
        .build();
    let exporter = match exporter {
        Ok(e) => e,
        Err(e) => {
            // The subscriber is not installed yet: say it on stderr.
            eprintln!("OTEL_EXPORTER_OTLP_ENDPOINT: cannot build the OTLP exporter: {e}");
            return None;
        }
    };
    let resource = Resource::builder()
        .with_service_name(crate::version::SERVICE_NAME)
        .with_attribute(opentelemetry::KeyValue::new(
            "deployment.environment.name",
            config.environment.as_str(),
        ))
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            crate::version::GIT_COMMIT,
        ))
        .build();
    Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build(),
    )
}

/// The `tracing` layer feeding `provider`.
pub(super) fn layer(provider: &SdkTracerProvider) -> OpenTelemetryLayer<Registry, SdkTracer> {
    tracing_opentelemetry::layer().with_tracer(provider.tracer("xenios"))
}

/// The `traceparent` of the current span, when traces are exported.
pub fn traceparent() -> Option<String> {
    if !exporting() {
        return None;
    }
    traceparent_of(&Span::current())
}

/// The `traceparent` of `span` (`00-<trace id>-<span id>-<flags>`), when traces are exported.
pub fn traceparent_of(span: &Span) -> Option<String> {
    if !exporting() {
        return None;
    }
    let cx = span.context();
    let otel_span = cx.span();
    let sc = otel_span.span_context();
    sc.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    })
}

/// Makes `span` a child of the remote span a W3C `traceparent` value names (an incoming
/// request's header, a Celery message's header). A missing or malformed value leaves `span`
/// a root: a caller cannot break tracing, only fail to join it.
pub fn set_parent(span: &Span, traceparent: Option<&str>) {
    if !exporting() {
        return;
    }
    let Some(value) = traceparent.filter(|v| v.len() <= 128) else {
        return;
    };
    let carrier: HashMap<String, String> =
        HashMap::from([(TRACEPARENT.to_owned(), value.to_owned())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    if cx.span().span_context().is_valid() {
        // Fails only when the span is disabled; nothing to do then.
        let _ = span.set_parent(cx);
    }
}

/// Headers to add to a Celery message being published from the current span: a
/// `traceparent` naming a new `enqueue` span (child of the current one) when traces are
/// exported, nothing otherwise.
pub fn enqueue_headers(task_name: &str) -> Map<String, Value> {
    let mut headers = Map::new();
    if !exporting() {
        return headers;
    }
    let span = tracing::info_span!("enqueue", task_name = %task_name, otel.kind = "producer");
    if let Some(tp) = traceparent_of(&span) {
        headers.insert(TRACEPARENT.to_owned(), Value::String(tp));
    }
    headers
}

/// The span a worker runs one job in: `job` with `task_id`, `task` (the task name) and
/// `correlation_id` (so every log line of the job carries them), child of the `traceparent`
/// in the message's headers when there is one (the enqueuing request's trace). The worker
/// runtime (`jobs::worker`, `execute`) runs every job inside it.
pub fn job_span(
    task_name: &str,
    task_id: &str,
    correlation_id: Option<&str>,
    headers: &Map<String, Value>,
) -> Span {
    let span = tracing::info_span!(
        "job",
        task_id = %task_id,
        task = %task_name,
        correlation_id = correlation_id.unwrap_or(""),
        otel.kind = "consumer"
    );
    set_parent(&span, headers.get(TRACEPARENT).and_then(Value::as_str));
    span
}
