//! Remembers a few span fields (correlation ID, task, job) in the span's extensions, so that
//! an error report captured anywhere inside the span can be tagged with them.

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Subscriber, dispatcher};
use tracing_subscriber::Registry;
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

/// Span fields that become tags of error reports. None may hold a prompt or a secret.
pub(crate) const TAG_FIELDS: [&str; 4] = ["correlation_id", "task", "task_name", "task_id"];

/// Longest tag value kept (Sentry refuses longer ones).
const MAX_TAG_LEN: usize = 200;

/// The recorded fields of one span.
#[derive(Debug, Default, Clone)]
struct Recorded(Vec<(&'static str, String)>);

impl Visit for Recorded {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if TAG_FIELDS.contains(&field.name()) {
            self.put(field, format!("{value:?}"));
        }
    }
}

impl Recorded {
    fn put(&mut self, field: &Field, value: String) {
        let Some(name) = TAG_FIELDS.iter().find(|n| **n == field.name()) else {
            return;
        };
        let value: String = value.chars().take(MAX_TAG_LEN).collect();
        if value.is_empty() {
            return;
        }
        match self.0.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = value,
            None => self.0.push((name, value)),
        }
    }
}

/// The layer; installed only when error reports are on.
#[derive(Debug)]
pub(crate) struct SpanFields;

impl<S> Layer<S> for SpanFields
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut recorded = Recorded::default();
        attrs.record(&mut recorded);
        if !recorded.0.is_empty()
            && let Some(span) = ctx.span(id)
        {
            span.extensions_mut().insert(recorded);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut ext = span.extensions_mut();
        match ext.get_mut::<Recorded>() {
            Some(r) => values.record(r),
            None => {
                let mut recorded = Recorded::default();
                values.record(&mut recorded);
                if !recorded.0.is_empty() {
                    ext.insert(recorded);
                }
            }
        }
    }
}

/// The tag fields of the current span and its parents (the innermost value wins).
pub(crate) fn current() -> Vec<(&'static str, String)> {
    let span = tracing::Span::current();
    let Some(id) = span.id() else {
        return Vec::new();
    };
    dispatcher::get_default(|dispatch| {
        let Some(registry) = dispatch.downcast_ref::<Registry>() else {
            return Vec::new();
        };
        let Some(span) = registry.span(&id) else {
            return Vec::new();
        };
        let mut out: Vec<(&'static str, String)> = Vec::new();
        for s in span.scope() {
            if let Some(r) = s.extensions().get::<Recorded>() {
                for (k, v) in &r.0 {
                    if !out.iter().any(|(n, _)| n == k) {
                        out.push((k, v.clone()));
                    }
                }
            }
        }
        out
    })
}
