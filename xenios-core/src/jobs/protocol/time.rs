//! Times on the wire: ISO 8601 as Python's `isoformat()` writes UTC times, and the forms
//! Celery sends.

use chrono::{DateTime, SecondsFormat, Utc};

/// ISO 8601 with microseconds and `+00:00`, as Python's `isoformat()` writes UTC times.
pub fn iso(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, false)
}

/// Parses the ISO 8601 forms Celery sends (with or without an offset; naive means UTC).
pub fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
        .ok()
        .map(|n| n.and_utc())
}
