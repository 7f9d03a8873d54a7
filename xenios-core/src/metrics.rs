//! Prometheus metrics: names, help texts and the latency histogram live here, and
//! [`render`] writes them in the OpenMetrics text format (`/metrics` only serves the text).
//!
//! Counters that change on every call ([`LlmMetrics`]) are `prometheus-client` metrics the
//! engine updates in place; figures other components keep themselves (audit rows, the shared
//! rate limiter, previous-key uses) are read when the page is rendered ([`Readings`]).
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `xenios_llm_calls_total`, `_streams_total`, `_fallbacks_total`, `_retries_total`, `_errors_total` | counter | |
//! | `xenios_llm_latency_seconds` | histogram | `le` |
//! | `xenios_audit_rows_{queued,written,dropped,failed}_total` | counter | |
//! | `xenios_rate_limit_redis_up` | gauge | |
//! | `xenios_rate_limit_{leases,fallback_checks,redis_failures}_total` | counter | |
//! | `xenios_api_key_previous_uses_total` | counter | |

use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::auth::SharedLimiterStats;
use crate::db::audit::AuditStatsSnapshot;

/// Upper bounds (seconds) of the LLM latency histogram's buckets.
pub const LATENCY_BUCKETS_SECONDS: [f64; 10] =
    [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Counters of the LLM engine. Cheap to clone: clones share the same values.
#[derive(Debug, Clone)]
pub struct LlmMetrics {
    calls: Counter,
    streams: Counter,
    fallbacks: Counter,
    retries: Counter,
    errors: Counter,
    latency: Histogram,
}

impl Default for LlmMetrics {
    fn default() -> Self {
        Self {
            calls: Counter::default(),
            streams: Counter::default(),
            fallbacks: Counter::default(),
            retries: Counter::default(),
            errors: Counter::default(),
            latency: Histogram::new(LATENCY_BUCKETS_SECONDS),
        }
    }
}

impl LlmMetrics {
    /// A call started (complete or stream).
    pub(crate) fn call(&self) {
        self.calls.inc();
    }

    /// A streamed call started (counted in [`LlmMetrics::call`] too).
    pub(crate) fn stream(&self) {
        self.streams.inc();
    }

    /// A fallback model answered.
    pub(crate) fn fallback(&self) {
        self.fallbacks.inc();
    }

    /// A model is asked again.
    pub(crate) fn retry(&self) {
        self.retries.inc();
    }

    /// A call failed.
    pub(crate) fn error(&self) {
        self.errors.inc();
    }

    /// A call ended after `latency`.
    pub(crate) fn observe(&self, latency: Duration) {
        self.latency.observe(latency.as_secs_f64());
    }

    /// Calls so far (complete and stream).
    pub fn calls(&self) -> u64 {
        self.calls.get()
    }

    fn register(&self, registry: &mut Registry) {
        for (name, help, counter) in [
            ("llm_calls", "LLM calls (complete and stream)", &self.calls),
            ("llm_streams", "Streamed LLM calls", &self.streams),
            (
                "llm_fallbacks",
                "Calls answered by a fallback model",
                &self.fallbacks,
            ),
            ("llm_retries", "Retries of one model", &self.retries),
            ("llm_errors", "Calls that failed", &self.errors),
        ] {
            registry.register(name, help, counter.clone());
        }
        registry.register(
            "llm_latency_seconds",
            "Wall time of LLM calls",
            self.latency.clone(),
        );
    }
}

/// What other components count themselves, read when the page is rendered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Readings {
    /// The audit writer's rows.
    pub audit: AuditStatsSnapshot,
    /// The shared rate limiter.
    pub rate_limit: SharedLimiterStats,
    /// Requests authenticated with `XENIOS_BACKEND_API_KEY_PREVIOUS`.
    pub previous_api_key_uses: u64,
}

impl Readings {
    fn register(&self, registry: &mut Registry) {
        let counters = [
            (
                "audit_rows_queued",
                "Audit rows (inference_logs, job_queue_metadata) queued for Postgres",
                self.audit.queued,
            ),
            (
                "audit_rows_written",
                "Audit rows written to Postgres",
                self.audit.written,
            ),
            (
                "audit_rows_dropped",
                "Audit rows dropped because the queue was full",
                self.audit.dropped,
            ),
            (
                "audit_rows_failed",
                "Audit rows given up on after write errors",
                self.audit.failed,
            ),
            (
                "rate_limit_leases",
                "Token leases taken from the shared Redis bucket (Redis round trips of the limiter)",
                self.rate_limit.leases,
            ),
            (
                "rate_limit_fallback_checks",
                "Requests rate-limited in process because Redis was unreachable",
                self.rate_limit.fallback_checks,
            ),
            (
                "rate_limit_redis_failures",
                "Failed or timed-out Redis calls of the rate limiter",
                self.rate_limit.redis_failures,
            ),
            (
                "api_key_previous_uses",
                "Requests authenticated with XENIOS_BACKEND_API_KEY_PREVIOUS",
                self.previous_api_key_uses,
            ),
        ];
        for (name, help, value) in counters {
            registry.register(name, help, ConstCounter::new(value));
        }
        registry.register(
            "rate_limit_redis_up",
            "1 while rate limits are shared through Redis, 0 while this process uses its in-process fallback",
            ConstGauge::new(i64::from(self.rate_limit.redis_up)),
        );
    }
}

/// The metrics page: the LLM engine's counters and `readings`, in the OpenMetrics text
/// format (serve it as [`CONTENT_TYPE`]). Every name starts with `xenios_`; counters end in
/// `_total`.
pub fn render(llm: &LlmMetrics, readings: &Readings) -> String {
    let mut registry = Registry::with_prefix("xenios");
    llm.register(&mut registry);
    readings.register(&mut registry);
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &registry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, name: &str) -> Option<String> {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .map(str::to_owned)
    }

    #[test]
    fn names_help_and_values_are_the_published_ones() {
        let llm = LlmMetrics::default();
        llm.call();
        llm.call();
        llm.stream();
        llm.retry();
        llm.observe(Duration::from_millis(120));
        let readings = Readings {
            audit: AuditStatsSnapshot {
                queued: 3,
                written: 2,
                dropped: 0,
                failed: 1,
            },
            rate_limit: SharedLimiterStats {
                redis_up: true,
                leases: 4,
                fallback_checks: 0,
                redis_failures: 5,
            },
            previous_api_key_uses: 6,
        };
        let text = render(&llm, &readings);
        for (name, want) in [
            ("xenios_llm_calls_total", "2"),
            ("xenios_llm_streams_total", "1"),
            ("xenios_llm_fallbacks_total", "0"),
            ("xenios_llm_retries_total", "1"),
            ("xenios_llm_errors_total", "0"),
            ("xenios_llm_latency_seconds_count", "1"),
            ("xenios_llm_latency_seconds_bucket{le=\"0.1\"}", "0"),
            ("xenios_llm_latency_seconds_bucket{le=\"0.25\"}", "1"),
            ("xenios_llm_latency_seconds_bucket{le=\"+Inf\"}", "1"),
            ("xenios_audit_rows_queued_total", "3"),
            ("xenios_audit_rows_written_total", "2"),
            ("xenios_audit_rows_dropped_total", "0"),
            ("xenios_audit_rows_failed_total", "1"),
            ("xenios_rate_limit_redis_up", "1"),
            ("xenios_rate_limit_leases_total", "4"),
            ("xenios_rate_limit_fallback_checks_total", "0"),
            ("xenios_rate_limit_redis_failures_total", "5"),
            ("xenios_api_key_previous_uses_total", "6"),
        ] {
            assert_eq!(value(&text, name).as_deref(), Some(want), "{name}\n{text}");
        }
        assert!(
            text.contains("# HELP xenios_llm_calls LLM calls (complete and stream).\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE xenios_llm_latency_seconds histogram\n"));
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
