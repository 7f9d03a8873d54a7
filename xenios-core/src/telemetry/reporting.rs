//! Error reports to Sentry (`SENTRY_DSN`).
//!
//! What becomes an event:
//! - every `ERROR` log line, which is how the server's one error-to-response place
//!   (`xenios-server/src/error.rs`) logs each 5xx answer (tags `status`, `code`);
//! - the `WARN` line with which `xenios_core::llm` reports a call on which every model failed
//!   (fields `task` and `error`, no `model`);
//! - panics (Sentry's panic integration);
//! - failed jobs, through [`report_job_failure`], which the worker calls once per failure.
//!
//! Every event is tagged with `correlation_id`, `task`, `task_name`, `task_id` when the
//! current span (or the event) has them, and carries `environment` (`ENVIRONMENT`) and
//! `release` (the git commit of the build).
//!
//! What never leaves: event fields other than those tags (so no `error` text, which may quote
//! an upstream answer), request data (bodies, headers such as `Authorization`, `X-API-Key`,
//! cookies), user data, breadcrumbs (log lines) and any configured secret (API keys, database
//! and Redis URLs, the JWT secret, the DSN), which is replaced wherever it would appear.
//! Messages are the static text of the log line, clipped.

use std::collections::BTreeMap;
use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};
use sentry::protocol::{Context, Event, Value};
use tracing::{Level, Metadata};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::registry::LookupSpan;

use super::fields;
use crate::config::Config;

/// Event fields copied into tags (besides the span fields of [`fields::TAG_FIELDS`]).
const EVENT_TAG_FIELDS: [&str; 6] = [
    "correlation_id",
    "task",
    "task_name",
    "task_id",
    "status",
    "code",
];

/// Contexts kept on an event (what the SDK itself adds about the process and OS).
const KEPT_CONTEXTS: [&str; 4] = ["os", "rust", "device", "runtime"];

/// Longest message or exception text kept.
const MAX_TEXT: usize = 300;

/// What replaces a secret found in an event.
const REDACTED: &str = "[redacted]";

/// Starts the Sentry client when `SENTRY_DSN` is set; `None` (nothing sent) otherwise.
pub(super) fn init(config: &Config) -> Option<sentry::ClientInitGuard> {
    let options = client_options(config)?;
    Some(sentry::init(options))
}

/// The client options for `config`, `None` without a (valid) `SENTRY_DSN`.
pub(crate) fn client_options(config: &Config) -> Option<sentry::ClientOptions> {
    let dsn = config
        .sentry_dsn
        .as_ref()?
        .expose_secret()
        .parse::<sentry::types::Dsn>()
        .ok()?;
    let secrets = Arc::new(secret_values(config));
    let mut options = sentry::ClientOptions::new();
    options.dsn = Some(dsn);
    options.release = Some(crate::version::GIT_COMMIT.into());
    options.environment = Some(config.environment.as_str().into());
    options.send_default_pii = false;
    options.attach_stacktrace = false;
    options.max_breadcrumbs = 0;
    options.before_breadcrumb = Some(Arc::new(|_| None));
    options.before_send = Some(Arc::new(move |event| Some(scrub(event, &secrets))));
    Some(options)
}

/// The layer turning `ERROR` lines (and the LLM all-models-failed line) into events.
pub(super) fn layer<S>() -> impl Layer<S> + Send + Sync
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    sentry_tracing::ErrorLayer::new().with_filter(filter_fn(reported))
}

/// Whether a log line becomes an event.
fn reported(md: &Metadata<'_>) -> bool {
    if !md.is_event() {
        return false;
    }
    if *md.level() == Level::ERROR {
        return true;
    }
    // `tracing::warn!(task, error, "LLM call failed")` in llm/mod.rs: every model failed.
    // (The line about a stream broken after its first token names its `model`.)
    *md.level() == Level::WARN
        && md.target().starts_with("xenios_core::llm")
        && md.fields().field("task").is_some()
        && md.fields().field("error").is_some()
        && md.fields().field("model").is_none()
}

/// Reports a failed job (an exception, a time limit, an undecodable message). Call it once
/// per failure, where the job's state is set to FAILURE; `error_type` is a short class of the
/// failure (e.g. `TimeLimitExceeded`, `HandlerError`), never the error text, which may quote
/// the job's input or output. Does nothing without `SENTRY_DSN`.
pub fn report_job_failure(
    task_name: &str,
    task_id: &str,
    correlation_id: Option<&str>,
    error_type: &str,
) {
    if sentry::Hub::current().client().is_none() {
        return;
    }
    let mut tags = BTreeMap::new();
    tags.insert("task_name".to_owned(), clip(task_name, 200));
    tags.insert("task_id".to_owned(), clip(task_id, 200));
    tags.insert("error_type".to_owned(), clip(error_type, 200));
    if let Some(id) = correlation_id {
        tags.insert("correlation_id".to_owned(), clip(id, 200));
    }
    sentry::capture_event(Event {
        level: sentry::Level::Error,
        message: Some(format!(
            "job {} failed: {}",
            clip(task_name, 100),
            clip(error_type, 100)
        )),
        logger: Some("xenios_core::jobs".to_owned()),
        tags,
        ..Default::default()
    });
}

/// Every configured secret, and the password of every configured URL, as text to redact.
fn secret_values(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let mut add = |s: &SecretString| {
        let text = s.expose_secret();
        if let Ok(url) = url::Url::parse(text)
            && let Some(password) = url.password()
        {
            out.push(password.to_owned());
            if let Ok(decoded) = urlencoding_decode(password) {
                out.push(decoded);
            }
        }
        out.push(text.to_owned());
    };
    add(&config.api_key);
    add(&config.database.url);
    add(&config.redis.url);
    for s in [
        &config.openrouter.api_key,
        &config.deepgram_api_key,
        &config.supabase.jwt_secret,
        &config.sentry_dsn,
    ]
    .into_iter()
    .flatten()
    {
        add(s);
    }
    // Short values (an empty URL, a one-letter password) would redact ordinary words.
    out.retain(|s| s.len() >= 6);
    out.sort_by_key(|s| std::cmp::Reverse(s.len()));
    out.dedup();
    out
}

fn urlencoding_decode(s: &str) -> Result<String, std::string::FromUtf8Error> {
    let mut bytes = Vec::with_capacity(s.len());
    let raw = s.as_bytes();
    let mut i = 0;
    while i < raw.len() {
        let hex = raw
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        if raw[i] == b'%'
            && let Some(b) = hex
        {
            bytes.push(b);
            i += 3;
        } else {
            bytes.push(raw[i]);
            i += 1;
        }
    }
    String::from_utf8(bytes)
}

/// `text` with every secret replaced and clipped to `max` characters.
fn clean(text: &str, secrets: &[String], max: usize) -> String {
    let mut t = text.to_owned();
    for s in secrets {
        if t.contains(s.as_str()) {
            t = t.replace(s.as_str(), REDACTED);
        }
    }
    clip(&t, max)
}

fn clip(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

fn tag_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Keeps what an event may carry (see the module doc) and adds the span tags.
fn scrub(mut event: Event<'static>, secrets: &[String]) -> Event<'static> {
    // Whitelisted fields of the log line (sentry-tracing puts them in a context).
    let mut tags: BTreeMap<String, String> = BTreeMap::new();
    for ctx in event.contexts.values() {
        if let Context::Other(map) = ctx {
            for key in EVENT_TAG_FIELDS {
                if let Some(v) = map.get(key).and_then(tag_text) {
                    tags.insert(key.to_owned(), v);
                }
            }
        }
    }
    for (k, v) in fields::current() {
        tags.entry(k.to_owned()).or_insert(v);
    }
    for (k, v) in std::mem::take(&mut event.tags) {
        if EVENT_TAG_FIELDS.contains(&k.as_str()) || k == "error_type" {
            tags.entry(k).or_insert(v);
        }
    }
    event.tags = tags
        .into_iter()
        .map(|(k, v)| (k, clean(&v, secrets, 200)))
        .collect();
    event
        .contexts
        .retain(|k, _| KEPT_CONTEXTS.contains(&k.as_str()));
    event.extra.clear();
    event.request = None;
    event.user = None;
    event.breadcrumbs.values.clear();
    event.message = event.message.map(|m| clean(&m, secrets, MAX_TEXT));
    if let Some(entry) = event.logentry.as_mut() {
        entry.message = clean(&entry.message, secrets, MAX_TEXT);
        entry.params.clear();
    }
    for exc in event.exception.values.iter_mut() {
        exc.value = exc.value.as_deref().map(|v| clean(v, secrets, MAX_TEXT));
    }
    event
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Config {
        let map = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::from_map(&map).unwrap()
    }

    #[test]
    fn without_a_dsn_no_client_is_built() {
        assert!(client_options(&config(&[])).is_none());
        let o = client_options(&config(&[("SENTRY_DSN", "http://k@127.0.0.1:9/1")])).unwrap();
        assert_eq!(o.environment.as_deref(), Some("development"));
        assert_eq!(o.release.as_deref(), Some(crate::version::GIT_COMMIT));
        assert!(!o.send_default_pii);
    }

    #[test]
    fn scrub_keeps_tags_and_drops_fields_request_and_secrets() {
        let c = config(&[
            ("OPENROUTER_API_KEY", "sk-or-very-secret"),
            ("DATABASE_URL", "postgres://u:pa%24sword99@db/x"),
        ]);
        let secrets = secret_values(&c);
        let mut fields = BTreeMap::new();
        fields.insert("status".to_owned(), Value::from(502));
        fields.insert("code".to_owned(), Value::from("upstream_error"));
        fields.insert("error".to_owned(), Value::from("the prompt said hello"));
        let mut event = Event {
            message: Some("request failed with sk-or-very-secret and pa$sword99".to_owned()),
            request: Some(sentry::protocol::Request {
                data: Some("the prompt".to_owned()),
                ..Default::default()
            }),
            ..Default::default()
        };
        event
            .contexts
            .insert("Rust Tracing Fields".to_owned(), Context::Other(fields));
        event.extra.insert("prompt".to_owned(), Value::from("x"));
        let e = scrub(event, &secrets);
        assert_eq!(e.tags["status"], "502");
        assert_eq!(e.tags["code"], "upstream_error");
        assert!(e.contexts.is_empty() && e.extra.is_empty() && e.request.is_none());
        let text = serde_json::to_string(&e).unwrap();
        assert!(!text.contains("sk-or-very-secret"), "{text}");
        assert!(!text.contains("pa$sword99"), "{text}");
        assert!(!text.contains("prompt"), "{text}");
        assert!(text.contains(REDACTED));
    }
}
