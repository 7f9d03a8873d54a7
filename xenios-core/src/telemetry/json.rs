//! The JSON log line, written straight to the line buffer.
//!
//! The same line as tracing-subscriber's JSON formatter with `flatten_event` and
//! `with_current_span` (`timestamp`, `level`, the event's fields, `target`, then `span`:
//! the current span's fields and its `name`), at a fraction of the cost. That formatter
//! keeps a span's fields as JSON text and, for every line, parses that text back into a
//! map and serializes it again, and it does the same to add a field recorded later (the
//! request span's `user_id`). Here a span's fields are kept as the inside of a JSON
//! object (`"a":1,"b":"x"`): a line copies them as they are, and a later field is
//! appended (a field recorded a second time takes the slow path: parse, replace, write).
//! Strings are escaped as serde_json escapes them.
//!
//! Profile of `GET /api/v1/me` before this: formatting the access line, its span and the
//! `user_id` record were about 15% of the server's CPU.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// Formats each event as one JSON line (see the module doc).
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct JsonLine;

/// Keeps a span's fields as the inside of a JSON object, ready to be copied into lines.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct SpanFields;

impl<S, N> FormatEvent<S, N> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        writer.write_str("{\"timestamp\":\"")?;
        SystemTime.format_time(&mut writer)?;
        write!(writer, "\",\"level\":\"{}\"", meta.level())?;
        let mut fields = Fields::new(&mut writer, true);
        event.record(&mut fields);
        fields.result?;
        writer.write_str(",\"target\":")?;
        string(&mut writer, meta.target())?;
        let span = event
            .parent()
            .and_then(|id| ctx.span(id))
            .or_else(|| ctx.lookup_current());
        if let Some(span) = span {
            writer.write_str(",\"span\":{")?;
            let extensions = span.extensions();
            if let Some(stored) = extensions.get::<FormattedFields<N>>()
                && !stored.fields.is_empty()
            {
                writer.write_str(&stored.fields)?;
                writer.write_char(',')?;
            }
            writer.write_str("\"name\":")?;
            string(&mut writer, span.name())?;
            writer.write_char('}')?;
        }
        writer.write_str("}\n")
    }
}

impl<'w> FormatFields<'w> for SpanFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut visitor = Fields::new(&mut writer, false);
        fields.record(&mut visitor);
        visitor.result
    }

    fn add_fields(
        &self,
        current: &mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        let mut again = false;
        fields.record(&mut Seen {
            stored: &current.fields,
            again: &mut again,
        });
        if !again {
            let first = current.fields.is_empty();
            let mut visitor = Fields::new(&mut current.fields, !first);
            fields.record(&mut visitor);
            return visitor.result;
        }
        // A field recorded a second time: its new value replaces the old one.
        let mut map: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&format!("{{{}}}", current.fields)).map_err(|_| fmt::Error)?;
        fields.record(&mut Values(&mut map));
        let mut text = String::new();
        let mut first = true;
        for (key, value) in &map {
            if !first {
                text.push(',');
            }
            first = false;
            string(&mut text, key)?;
            text.push(':');
            text.push_str(&value.to_string());
        }
        current.fields = text;
        Ok(())
    }
}

/// Writes fields as `"name":value` pairs, comma-separated (a leading comma when `comma`).
struct Fields<'a, W: fmt::Write> {
    writer: &'a mut W,
    comma: bool,
    result: fmt::Result,
}

impl<'a, W: fmt::Write> Fields<'a, W> {
    fn new(writer: &'a mut W, comma: bool) -> Self {
        Self {
            writer,
            comma,
            result: Ok(()),
        }
    }

    fn pair(&mut self, field: &Field, value: impl FnOnce(&mut W) -> fmt::Result) {
        if self.result.is_err() {
            return;
        }
        self.result = (|| {
            if self.comma {
                self.writer.write_char(',')?;
            }
            self.comma = true;
            string(self.writer, name(field))?;
            self.writer.write_char(':')?;
            value(self.writer)
        })();
    }
}

impl<W: fmt::Write> Visit for Fields<'_, W> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.pair(field, |w| {
            w.write_str(&serde_json::Value::from(value).to_string())
        });
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.pair(field, |w| write!(w, "{value}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.pair(field, |w| write!(w, "{value}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.pair(field, |w| write!(w, "{value}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.pair(field, |w| string(w, value));
    }

    fn record_bytes(&mut self, field: &Field, value: &[u8]) {
        self.pair(field, |w| {
            w.write_str(&serde_json::Value::from(value).to_string())
        });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.pair(field, |w| {
            w.write_char('"')?;
            write!(Escape(w), "{value:?}")?;
            w.write_char('"')
        });
    }
}

/// Notes whether any field being recorded is already stored.
struct Seen<'a> {
    stored: &'a str,
    again: &'a mut bool,
}

impl Visit for Seen<'_> {
    fn record_debug(&mut self, field: &Field, _: &dyn fmt::Debug) {
        // Most recorded fields are new (the request span's `user_id`): a name that JSON
        // writes as it is and that does not occur at all is not stored, found without
        // building anything.
        let bare = name(field);
        let escaped = bare.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20);
        if !escaped && !self.stored.contains(bare) {
            return;
        }
        // A key is the only place a quote-delimited `"name":` can appear: inside a string
        // value every quote is escaped.
        let mut key = String::with_capacity(field.name().len() + 3);
        if string(&mut key, name(field)).is_ok() {
            key.push(':');
            *self.again |= self.stored.contains(&key);
        }
    }
}

/// Collects fields as JSON values (the slow path of [`SpanFields::add_fields`]).
struct Values<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl Visit for Values<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(name(field).to_owned(), value.into());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(name(field).to_owned(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(name(field).to_owned(), value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(name(field).to_owned(), value.into());
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(name(field).to_owned(), value.into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(name(field).to_owned(), format!("{value:?}").into());
    }
}

/// A field's name as written (`r#type` is `type`).
fn name(field: &Field) -> &str {
    let name = field.name();
    name.strip_prefix("r#").unwrap_or(name)
}

/// Writes `s` as a JSON string.
fn string(w: &mut impl fmt::Write, s: &str) -> fmt::Result {
    w.write_char('"')?;
    Escape(&mut *w).write_str(s)?;
    w.write_char('"')
}

/// Escapes what passes through as serde_json does inside a string: `"`, `\` and the
/// control characters below U+0020 (as `\n`, `\t`... or `\u00XX`).
struct Escape<'a, W: fmt::Write + ?Sized>(&'a mut W);

impl<W: fmt::Write + ?Sized> fmt::Write for Escape<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let bytes = s.as_bytes();
        let mut start = 0;
        for (i, &b) in bytes.iter().enumerate() {
            let escaped: &str = match b {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0x08 => "\\b",
                0x0c => "\\f",
                0..=0x1f => "",
                _ => continue,
            };
            // Only ASCII bytes are escaped, so `start..i` are char boundaries.
            self.0.write_str(&s[start..i])?;
            if escaped.is_empty() {
                let code = [
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[usize::from(b >> 4)],
                    HEX[usize::from(b & 0xf)],
                ];
                self.0
                    .write_str(std::str::from_utf8(&code).map_err(|_| fmt::Error)?)?;
            } else {
                self.0.write_str(escaped)?;
            }
            start = i + 1;
        }
        self.0.write_str(&s[start..])
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Lines {
        type Writer = Lines;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    /// The lines `f` logs, each parsed; and the raw text.
    fn logged(f: impl FnOnce()) -> (Vec<serde_json::Value>, String) {
        let lines = Lines::default();
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(lines.clone())
            .fmt_fields(SpanFields)
            .event_format(JsonLine);
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        let parsed = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        (parsed, text)
    }

    #[test]
    fn a_line_carries_level_fields_target_and_the_span_with_later_fields() {
        let (lines, _) = logged(|| {
            let span = tracing::info_span!(
                "request",
                correlation_id = "c-1",
                method = %"GET",
                user_id = tracing::field::Empty
            );
            span.record("user_id", "u-9");
            span.in_scope(|| {
                tracing::info!(
                    status = 200u16,
                    ok = true,
                    took = -3i64,
                    "request completed"
                )
            });
        });
        assert_eq!(lines.len(), 1);
        let l = &lines[0];
        assert_eq!(l["level"], "INFO");
        assert_eq!(l["message"], "request completed");
        assert_eq!(l["status"], 200);
        assert_eq!(l["ok"], true);
        assert_eq!(l["took"], -3);
        assert_eq!(l["target"], module_path!());
        assert_eq!(
            l["span"],
            serde_json::json!({"correlation_id": "c-1", "method": "GET", "user_id": "u-9", "name": "request"})
        );
        let ts = l["timestamp"].as_str().unwrap();
        assert!(ts.ends_with('Z') && ts.len() == 27, "{ts}");
    }

    #[test]
    fn a_field_recorded_twice_keeps_its_last_value_once() {
        let (lines, text) = logged(|| {
            let span = tracing::info_span!("job", task = "a", attempt = 1u64);
            span.record("attempt", 2u64);
            span.in_scope(|| tracing::warn!("again"));
        });
        assert_eq!(lines[0]["span"]["attempt"], 2);
        assert_eq!(lines[0]["span"]["task"], "a");
        assert_eq!(text.matches("attempt").count(), 1, "{text}");
    }

    #[test]
    fn hostile_text_stays_one_line_of_valid_json() {
        let hostile = "a\"b\\c\nd\re\tf\u{1}g\u{1f}h\u{8}\u{c}\u{7f}é😀\"}],\"level\":\"ERROR";
        let (lines, text) = logged(|| {
            let span = tracing::info_span!("request", path = %hostile);
            span.in_scope(|| tracing::info!(value = hostile, debug = ?hostile, "{hostile}"));
        });
        assert_eq!(text.lines().count(), 1, "{text}");
        let l = &lines[0];
        assert_eq!(l["level"], "INFO");
        assert_eq!(l["value"], hostile);
        assert_eq!(l["message"], hostile);
        assert_eq!(l["debug"], format!("{hostile:?}"));
        assert_eq!(l["span"]["path"], hostile);
        // Escaped exactly as serde_json escapes.
        assert!(
            text.contains(&serde_json::to_string(hostile).unwrap()),
            "{text}"
        );
    }

    #[test]
    fn an_event_outside_any_span_has_no_span() {
        let (lines, _) = logged(|| tracing::error!(n = 1.5f64, nan = f64::NAN, "x"));
        assert!(lines[0].get("span").is_none());
        assert_eq!(lines[0]["n"], 1.5);
        assert!(lines[0]["nan"].is_null());
        assert_eq!(lines[0]["level"], "ERROR");
    }
}
