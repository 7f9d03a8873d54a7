//! Celery task message protocol v2 on kombu's Redis transport: encode and decode.
//!
//! Hand-written on purpose: no Rust crate produces messages a Python Celery 5 worker, kombu's
//! restore and Flower all accept (rusty-celery sends a subset of the headers and no
//! `delivery_info.exchange`, which makes kombu raise `KeyError`; see
//! `shared/notes/celery-wire.md`). The shapes below follow celery's `amqp.as_task_v2` and
//! the traffic captured in `tests/fixtures/celery/`.
//!
//! An envelope is JSON: `body` (base64 of `[args, kwargs, embed]`), `content-encoding`,
//! `content-type`, `headers` (task id, name, retries, eta, expires, `timelimit` as
//! `[hard, soft]`...) and `properties` (`delivery_tag`, `delivery_info`, `priority`...).
//! Headers this crate adds, which Celery passes through untouched: `xenios_correlation_id`,
//! `xenios_user_id` and `xenios_owner` (a Python task reads them as
//! `self.request.xenios_owner`, Celery copying custom headers onto the request).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value, json};

/// Header carrying the correlation ID of the request that enqueued a task.
pub const CORRELATION_HEADER: &str = "xenios_correlation_id";
/// Header carrying the user on whose behalf a task runs.
pub const USER_HEADER: &str = "xenios_user_id";
/// Header carrying the job's owner: `user:<user id>` or `service` (see
/// [`crate::jobs::Owner`]).
pub const OWNER_HEADER: &str = "xenios_owner";

/// One task message, decoded (or about to be encoded).
#[derive(Debug, Clone, PartialEq)]
pub struct TaskMessage {
    /// Task id (also the result key suffix).
    pub id: String,
    /// Registered task name, e.g. `xenios.echo`.
    pub task: String,
    /// Positional arguments.
    pub args: Vec<Value>,
    /// Keyword arguments.
    pub kwargs: Map<String, Value>,
    /// Callbacks, errbacks, chain and chord (kept so they survive a round trip).
    pub embed: Value,
    /// Queue (the routing key of the default exchange).
    pub queue: String,
    /// Exchange of `delivery_info` (empty: the default exchange).
    pub exchange: String,
    /// Priority 0-9; on Redis 0 is served first (kombu's convention).
    pub priority: u8,
    /// Retries so far.
    pub retries: u32,
    /// Not to be run before.
    pub eta: Option<DateTime<Utc>>,
    /// Not to be run after (then it is revoked as expired).
    pub expires: Option<DateTime<Utc>>,
    /// Hard time limit in seconds, when set by the producer.
    pub hard_time_limit: Option<f64>,
    /// Soft time limit in seconds, when set by the producer.
    pub soft_time_limit: Option<f64>,
    /// Root of the workflow (the task itself when alone).
    pub root_id: Option<String>,
    /// Parent task, when enqueued by a task.
    pub parent_id: Option<String>,
    /// Group id, when part of a group.
    pub group: Option<String>,
    /// Name of the producer process (`gen<pid>@<host>`).
    pub origin: String,
    /// Correlation ID carried in [`CORRELATION_HEADER`].
    pub correlation_id: Option<String>,
    /// User ID carried in [`USER_HEADER`].
    pub user_id: Option<String>,
    /// Owner carried in [`OWNER_HEADER`] (`user:<id>` or `service`).
    pub owner: Option<String>,
    /// Whether the producer asked Celery not to store a result.
    pub ignore_result: bool,
    /// Transport delivery tag (a UUID), the key of the `unacked` bookkeeping.
    pub delivery_tag: String,
    /// `reply_to` property.
    pub reply_to: Option<String>,
    /// Whether kombu restored the message after a lost delivery.
    pub redelivered: bool,
    /// Headers this module does not model, kept for retries.
    pub extra_headers: Map<String, Value>,
}

/// Why a message could not be decoded. Carries what could be read, so that a failure can
/// still be stored under the task id.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("undecodable task message{}: {reason}", id.as_deref().map(|i| format!(" {i}")).unwrap_or_default())]
pub struct DecodeError {
    /// The task id, when the headers had one.
    pub id: Option<String>,
    /// The task name, when the headers had one.
    pub task: Option<String>,
    /// The delivery tag, when the properties had one.
    pub delivery_tag: Option<String>,
    /// What is wrong.
    pub reason: String,
}

impl TaskMessage {
    /// A new message for `task` with a fresh id and delivery tag, on `queue`.
    pub fn new(task: impl Into<String>, queue: impl Into<String>) -> Self {
        let id = uuid::Uuid::new_v4().to_string();
        let task: String = task.into();
        // W3C `traceparent` of an `enqueue` span when traces are exported (none otherwise):
        // the header opentelemetry-instrumentation-celery reads too.
        let extra_headers = crate::telemetry::enqueue_headers(&task);
        Self {
            root_id: Some(id.clone()),
            id,
            task,
            args: Vec::new(),
            kwargs: Map::new(),
            embed: default_embed(),
            queue: queue.into(),
            exchange: String::new(),
            priority: 0,
            retries: 0,
            eta: None,
            expires: None,
            hard_time_limit: None,
            soft_time_limit: None,
            parent_id: None,
            group: None,
            origin: origin(),
            correlation_id: None,
            user_id: None,
            owner: None,
            ignore_result: false,
            delivery_tag: uuid::Uuid::new_v4().to_string(),
            reply_to: None,
            redelivered: false,
            extra_headers,
        }
    }

    /// The message of the next attempt: same id, one more retry, a new delivery tag.
    pub fn next_attempt(&self, eta: Option<DateTime<Utc>>) -> Self {
        let mut next = self.clone();
        next.retries = self.retries.saturating_add(1);
        next.eta = eta;
        next.delivery_tag = uuid::Uuid::new_v4().to_string();
        next.redelivered = false;
        next
    }

    /// The JSON body `[args, kwargs, embed]`.
    pub fn body(&self) -> Value {
        json!([self.args, self.kwargs, self.embed])
    }

    /// The envelope as LPUSHed on the queue. Serialized from typed structs: building a
    /// `serde_json::Value` tree per message (a map insert per header) was most of the
    /// producer's CPU per job.
    pub fn encode(&self) -> String {
        // The same JSON as `body()`, written from references rather than a copied tree.
        let body =
            serde_json::to_string(&(&self.args, &self.kwargs, &self.embed)).unwrap_or_default();
        let envelope = Envelope {
            body: B64.encode(body),
            content_encoding: "utf-8",
            content_type: "application/json",
            headers: Headers {
                extra: unknown_headers(&self.extra_headers),
                lang: "py",
                task: &self.task,
                id: &self.id,
                shadow: None,
                eta: self.eta.map(iso),
                expires: self.expires.map(iso),
                group: self.group.as_deref(),
                group_index: None,
                retries: self.retries,
                timelimit: [self.hard_time_limit, self.soft_time_limit],
                root_id: self.root_id.as_deref(),
                parent_id: self.parent_id.as_deref(),
                argsrepr: args_repr(&self.args),
                kwargsrepr: kwargs_repr(&self.kwargs),
                origin: &self.origin,
                ignore_result: self.ignore_result,
                replaced_task_nesting: 0,
                stamped_headers: None,
                stamps: Map::new(),
                correlation_id: self.correlation_id.as_deref(),
                user_id: self.user_id.as_deref(),
                owner: self.owner.as_deref(),
                redelivered: self.redelivered.then_some(true),
            },
            properties: Properties {
                correlation_id: &self.id,
                reply_to: self.reply_to.as_deref(),
                delivery_mode: 2,
                delivery_info: DeliveryInfo {
                    exchange: &self.exchange,
                    routing_key: &self.queue,
                    redelivered: self.redelivered.then_some(true),
                },
                priority: self.priority,
                body_encoding: "base64",
                delivery_tag: &self.delivery_tag,
            },
        };
        // Serializing these plain structs cannot fail.
        serde_json::to_string(&envelope).unwrap_or_default()
    }

    /// Decodes an envelope as found on a queue (or in `unacked`).
    pub fn decode(raw: &[u8]) -> Result<Self, DecodeError> {
        let envelope: Value = serde_json::from_slice(raw).map_err(|e| DecodeError {
            id: None,
            task: None,
            delivery_tag: None,
            reason: format!("not JSON: {e}"),
        })?;
        Self::from_envelope(&envelope)
    }

    /// Decodes an already parsed envelope.
    pub fn from_envelope(envelope: &Value) -> Result<Self, DecodeError> {
        let headers = envelope.get("headers").and_then(Value::as_object);
        let props = envelope.get("properties").and_then(Value::as_object);
        let header_str = |k: &str| {
            headers
                .and_then(|h| h.get(k))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let id = header_str("id");
        let task = header_str("task");
        let delivery_tag = props
            .and_then(|p| p.get("delivery_tag"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        let fail = |reason: String| DecodeError {
            id: id.clone(),
            task: task.clone(),
            delivery_tag: delivery_tag.clone(),
            reason,
        };
        let (Some(headers), Some(props)) = (headers, props) else {
            return Err(fail(
                "no headers/properties: not a protocol v2 message".to_owned(),
            ));
        };
        let id = id.clone().ok_or_else(|| fail("no headers.id".to_owned()))?;
        let task = task
            .clone()
            .ok_or_else(|| fail("no headers.task".to_owned()))?;
        let content_type = envelope
            .get("content-type")
            .and_then(Value::as_str)
            .unwrap_or("application/json");
        if content_type != "application/json" {
            return Err(fail(format!(
                "content-type `{content_type}` is not supported (only application/json)"
            )));
        }
        let raw_body = envelope
            .get("body")
            .ok_or_else(|| fail("no body".to_owned()))?;
        let body: Value = match (props.get("body_encoding").and_then(Value::as_str), raw_body) {
            (Some("base64"), Value::String(b)) => {
                let bytes = B64
                    .decode(b.as_bytes())
                    .map_err(|e| fail(format!("body is not base64: {e}")))?;
                serde_json::from_slice(&bytes)
                    .map_err(|e| fail(format!("body is not JSON: {e}")))?
            }
            (_, Value::String(s)) => {
                serde_json::from_str(s).map_err(|e| fail(format!("body is not JSON: {e}")))?
            }
            (_, other) => other.clone(),
        };
        let Value::Array(parts) = body else {
            return Err(fail(
                "body is not [args, kwargs, embed] (protocol v1 is not supported)".to_owned(),
            ));
        };
        let mut parts = parts.into_iter();
        let args = match parts.next() {
            Some(Value::Array(a)) => a,
            Some(Value::Null) | None => Vec::new(),
            Some(_) => return Err(fail("args is not a list".to_owned())),
        };
        let kwargs = match parts.next() {
            Some(Value::Object(k)) => k,
            Some(Value::Null) | None => Map::new(),
            Some(_) => return Err(fail("kwargs is not a mapping".to_owned())),
        };
        let embed = parts.next().unwrap_or_else(default_embed);
        let delivery_info = props.get("delivery_info").and_then(Value::as_object);
        let di_str = |k: &str| {
            delivery_info
                .and_then(|d| d.get(k))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let time = |k: &str| -> Result<Option<DateTime<Utc>>, DecodeError> {
            match headers.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => parse_time(s)
                    .map(Some)
                    .ok_or_else(|| fail(format!("headers.{k} `{s}` is not an ISO 8601 time"))),
                Some(Value::Number(n)) => {
                    Ok(n.as_f64().filter(|secs| secs.is_finite()).and_then(|secs| {
                        let far = (Utc::now() + chrono::Duration::days(366)).timestamp() as f64;
                        DateTime::from_timestamp_millis((secs.clamp(0.0, far) * 1000.0) as i64)
                    }))
                }
                Some(_) => Err(fail(format!("headers.{k} is not a time"))),
            }
        };
        // Times further away than a year are hostile or broken: cut to a year from now.
        let latest = Utc::now() + chrono::Duration::days(365);
        let eta = time("eta")?.map(|t| t.min(latest));
        let expires = time("expires")?.map(|t| t.min(latest));
        let (hard, soft) = match headers.get("timelimit") {
            Some(Value::Array(tl)) => (
                tl.first().and_then(Value::as_f64),
                tl.get(1).and_then(Value::as_f64),
            ),
            _ => (None, None),
        };
        let retries = headers
            .get("retries")
            .and_then(Value::as_u64)
            .unwrap_or(0)
            .min(u64::from(u32::MAX)) as u32;
        let priority = props
            .get("priority")
            .and_then(Value::as_u64)
            .unwrap_or(0)
            .min(9) as u8;
        let redelivered = headers
            .get("redelivered")
            .and_then(Value::as_bool)
            .or_else(|| {
                delivery_info
                    .and_then(|d| d.get("redelivered"))
                    .and_then(Value::as_bool)
            })
            .unwrap_or(false);
        let extra_headers = unknown_headers(headers);
        let hstr = |k: &str| headers.get(k).and_then(Value::as_str).map(str::to_owned);
        Ok(Self {
            queue: di_str("routing_key").unwrap_or_default(),
            exchange: di_str("exchange").unwrap_or_default(),
            delivery_tag: delivery_tag
                .clone()
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            reply_to: props
                .get("reply_to")
                .and_then(Value::as_str)
                .map(str::to_owned),
            id,
            task,
            args,
            kwargs,
            embed,
            priority,
            retries,
            eta,
            expires,
            hard_time_limit: hard,
            soft_time_limit: soft,
            root_id: hstr("root_id"),
            parent_id: hstr("parent_id"),
            group: hstr("group"),
            origin: hstr("origin").unwrap_or_default(),
            correlation_id: hstr(CORRELATION_HEADER),
            user_id: hstr(USER_HEADER),
            owner: hstr(OWNER_HEADER),
            ignore_result: headers
                .get("ignore_result")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            redelivered,
            extra_headers,
        })
    }
}

fn default_embed() -> Value {
    json!({"callbacks": null, "errbacks": null, "chain": null, "chord": null})
}

/// `gen<pid>@<host>`, as Celery names a producer.
pub fn origin() -> String {
    format!("gen{}@{}", std::process::id(), hostname())
}

/// This machine's host name (`localhost` when it cannot be read).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_owned())
}

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

/// Longest `argsrepr`/`kwargsrepr` (Celery's `argsrepr_maxsize`/`kwargsrepr_maxsize`).
pub const REPR_MAX_CHARS: usize = 1024;

/// Cuts a repr to [`REPR_MAX_CHARS`] characters, ending in `...` when cut, as Celery's
/// `saferepr` does.
fn cut_repr(s: String) -> String {
    if s.chars().count() <= REPR_MAX_CHARS {
        return s;
    }
    let mut out: String = s.chars().take(REPR_MAX_CHARS - 3).collect();
    out.push_str("...");
    out
}

/// Python's `repr` of positional arguments: a tuple, cut at [`REPR_MAX_CHARS`].
pub fn args_repr(args: &[Value]) -> String {
    let items: Vec<String> = args.iter().map(py_repr).collect();
    cut_repr(match items.len() {
        1 => format!("({},)", items[0]),
        _ => format!("({})", items.join(", ")),
    })
}

/// Python's `repr` of a JSON value (what Celery shows in `argsrepr` and in events).
pub fn py_repr(v: &Value) -> String {
    match v {
        Value::Null => "None".to_owned(),
        Value::Bool(true) => "True".to_owned(),
        Value::Bool(false) => "False".to_owned(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => py_str(s),
        Value::Array(a) => format!("[{}]", a.iter().map(py_repr).collect::<Vec<_>>().join(", ")),
        Value::Object(o) => dict_repr(o),
    }
}

/// Python's `repr` of a dict (Celery's `kwargsrepr`), cut at [`REPR_MAX_CHARS`].
pub fn kwargs_repr(kwargs: &Map<String, Value>) -> String {
    cut_repr(dict_repr(kwargs))
}

/// Python's `repr` of a dict, without copying it into a `Value`.
fn dict_repr(kwargs: &Map<String, Value>) -> String {
    format!(
        "{{{}}}",
        kwargs
            .iter()
            .map(|(k, v)| format!("{}: {}", py_str(k), py_repr(v)))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

fn py_str(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// Base64 of a JSON value, as kombu puts bodies in envelopes.
pub fn b64_json(v: &Value) -> String {
    B64.encode(v.to_string())
}

/// Decodes the base64 JSON body of any kombu envelope (events, pidbox messages).
pub fn envelope_body(envelope: &Value) -> Option<Value> {
    let body = envelope.get("body")?;
    let encoding = envelope
        .get("properties")
        .and_then(|p| p.get("body_encoding"))
        .and_then(Value::as_str);
    match (encoding, body) {
        (Some("base64"), Value::String(b)) => {
            let bytes = B64.decode(b.as_bytes()).ok()?;
            serde_json::from_slice(&bytes).ok()
        }
        (_, Value::String(s)) => serde_json::from_str(s).ok(),
        (_, other) => Some(other.clone()),
    }
}

/// A kombu envelope around `body` for `exchange`/`routing_key` with the given headers.
pub fn envelope(
    body: &Value,
    exchange: &str,
    routing_key: &str,
    headers: Value,
    delivery_mode: u8,
) -> String {
    json!({
        "body": b64_json(body),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers,
        "properties": {
            "delivery_mode": delivery_mode,
            "delivery_info": {"exchange": exchange, "routing_key": routing_key},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": uuid::Uuid::new_v4().to_string(),
        },
    })
    .to_string()
}

/// Headers of protocol v2 (and ours) that [`TaskMessage`] holds in its own fields.
const KNOWN_HEADERS: &[&str] = &[
    "lang",
    "task",
    "id",
    "shadow",
    "eta",
    "expires",
    "group",
    "group_index",
    "retries",
    "timelimit",
    "root_id",
    "parent_id",
    "argsrepr",
    "kwargsrepr",
    "origin",
    "ignore_result",
    "replaced_task_nesting",
    "stamped_headers",
    "stamps",
    "redelivered",
    CORRELATION_HEADER,
    USER_HEADER,
    OWNER_HEADER,
];

/// The headers [`TaskMessage`] does not model (kept for retries): decoding keeps them, and
/// encoding never lets them repeat a header it writes itself.
fn unknown_headers(headers: &Map<String, Value>) -> Map<String, Value> {
    headers
        .iter()
        .filter(|(k, _)| !KNOWN_HEADERS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// A kombu envelope as [`TaskMessage::encode`] writes it.
#[derive(serde::Serialize)]
struct Envelope<'a> {
    body: String,
    #[serde(rename = "content-encoding")]
    content_encoding: &'static str,
    #[serde(rename = "content-type")]
    content_type: &'static str,
    headers: Headers<'a>,
    properties: Properties<'a>,
}

/// Protocol v2 headers; ours (`xenios_*`) only when set.
#[derive(serde::Serialize)]
struct Headers<'a> {
    #[serde(flatten)]
    extra: Map<String, Value>,
    lang: &'static str,
    task: &'a str,
    id: &'a str,
    shadow: Option<&'a str>,
    eta: Option<String>,
    expires: Option<String>,
    group: Option<&'a str>,
    group_index: Option<u32>,
    retries: u32,
    timelimit: [Option<f64>; 2],
    root_id: Option<&'a str>,
    parent_id: Option<&'a str>,
    argsrepr: String,
    kwargsrepr: String,
    origin: &'a str,
    ignore_result: bool,
    replaced_task_nesting: u32,
    stamped_headers: Option<Vec<String>>,
    stamps: Map<String, Value>,
    #[serde(
        rename = "xenios_correlation_id",
        skip_serializing_if = "Option::is_none"
    )]
    correlation_id: Option<&'a str>,
    #[serde(rename = "xenios_user_id", skip_serializing_if = "Option::is_none")]
    user_id: Option<&'a str>,
    #[serde(rename = "xenios_owner", skip_serializing_if = "Option::is_none")]
    owner: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    redelivered: Option<bool>,
}

#[derive(serde::Serialize)]
struct Properties<'a> {
    correlation_id: &'a str,
    reply_to: Option<&'a str>,
    delivery_mode: u8,
    delivery_info: DeliveryInfo<'a>,
    priority: u8,
    body_encoding: &'static str,
    delivery_tag: &'a str,
}

#[derive(serde::Serialize)]
struct DeliveryInfo<'a> {
    exchange: &'a str,
    routing_key: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    redelivered: Option<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const VECTOR: &str = include_str!("../../../tests/fixtures/celery/task-message.json");

    #[test]
    fn decodes_the_captured_celery_message() {
        let m = TaskMessage::decode(VECTOR.as_bytes()).unwrap();
        assert_eq!(m.id, "7c35feae-fed3-41c8-a02d-a68f83e3a4e3");
        assert_eq!(m.task, "tasks.add");
        assert_eq!(m.args, vec![json!(2), json!(3)]);
        assert!(m.kwargs.is_empty());
        assert_eq!(m.queue, "celery");
        assert_eq!(m.exchange, "");
        assert_eq!(m.delivery_tag, "46fb9a54-9e71-4c9d-b4f7-216659ba6785");
        assert_eq!(m.retries, 0);
        assert_eq!((m.hard_time_limit, m.soft_time_limit), (None, None));
        assert_eq!(m.root_id.as_deref(), Some(m.id.as_str()));
        assert!(!m.redelivered);
        assert!(m.extra_headers.is_empty(), "{:?}", m.extra_headers);
    }

    #[test]
    fn encodes_the_same_shape_as_celery() {
        let vector: Value = serde_json::from_str(VECTOR).unwrap();
        let decoded = TaskMessage::decode(VECTOR.as_bytes()).unwrap();
        let ours: Value = serde_json::from_str(&decoded.encode()).unwrap();
        // Same keys at every level, same values except the producer-specific ones.
        for section in ["headers", "properties"] {
            let a: Vec<_> = vector[section].as_object().unwrap().keys().collect();
            let b: Vec<_> = ours[section].as_object().unwrap().keys().collect();
            let mut a = a.clone();
            let mut b = b.clone();
            a.sort();
            b.sort();
            assert_eq!(a, b, "{section} keys");
        }
        for k in ["content-encoding", "content-type"] {
            assert_eq!(ours[k], vector[k], "{k}");
        }
        // Same body once decoded (Python's json.dumps spaces differ, the JSON does not).
        assert_eq!(envelope_body(&ours), envelope_body(&vector));
        assert_eq!(
            envelope_body(&vector),
            Some(
                json!([[2, 3], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}])
            )
        );
        for k in [
            "lang",
            "task",
            "id",
            "eta",
            "expires",
            "retries",
            "timelimit",
            "root_id",
            "parent_id",
            "argsrepr",
            "kwargsrepr",
            "ignore_result",
            "stamps",
        ] {
            assert_eq!(ours["headers"][k], vector["headers"][k], "headers.{k}");
        }
        for k in [
            "correlation_id",
            "delivery_mode",
            "delivery_info",
            "priority",
            "body_encoding",
            "delivery_tag",
            "reply_to",
        ] {
            assert_eq!(
                ours["properties"][k], vector["properties"][k],
                "properties.{k}"
            );
        }
    }

    #[test]
    fn reprs_are_cut_at_1024_characters_as_celery_does() {
        let long = vec![json!("x".repeat(5000))];
        let r = args_repr(&long);
        assert_eq!(r.chars().count(), REPR_MAX_CHARS);
        assert!(r.ends_with("..."));
        let mut k = Map::new();
        k.insert("k".into(), json!("é".repeat(3000)));
        assert_eq!(kwargs_repr(&k).chars().count(), REPR_MAX_CHARS);
        assert_eq!(args_repr(&[json!(1)]), "(1,)");
    }

    #[test]
    fn far_etas_and_expiries_are_cut_to_a_year() {
        let mut m = TaskMessage::new("t", "q");
        m.eta = Some(Utc::now());
        let mut v: Value = serde_json::from_str(&m.encode()).unwrap();
        v["headers"]["eta"] = json!("9999-12-31T00:00:00+00:00");
        v["headers"]["expires"] = json!(1e300);
        let d = TaskMessage::decode(v.to_string().as_bytes()).unwrap();
        let year = Utc::now() + chrono::Duration::days(366);
        assert!(d.eta.unwrap() < year);
        assert!(d.expires.unwrap() < year);
    }

    #[test]
    fn timelimit_is_hard_then_soft_and_times_are_iso() {
        let mut m = TaskMessage::new("x.y", "default");
        m.hard_time_limit = Some(10.0);
        m.soft_time_limit = Some(5.0);
        let eta = parse_time("2026-11-25T18:00:00.5+00:00").unwrap();
        m.eta = Some(eta);
        m.correlation_id = Some("req-1".into());
        let v: Value = serde_json::from_str(&m.encode()).unwrap();
        assert_eq!(v["headers"]["timelimit"], json!([10.0, 5.0]));
        assert_eq!(v["headers"]["eta"], "2026-11-25T18:00:00.500000+00:00");
        assert_eq!(v["headers"][CORRELATION_HEADER], "req-1");
        let back = TaskMessage::decode(m.encode().as_bytes()).unwrap();
        assert_eq!(back, m);
        // Naive times (Celery with enable_utc and no tz) are UTC.
        assert_eq!(parse_time("2026-11-25T18:00:00.5"), Some(eta));
    }

    #[test]
    fn reprs_match_python() {
        assert_eq!(args_repr(&[json!(2), json!(3)]), "(2, 3)");
        assert_eq!(args_repr(&[json!("a")]), "('a',)");
        assert_eq!(args_repr(&[]), "()");
        assert_eq!(
            py_repr(&json!({"k": [true, null, "it's"]})),
            "{'k': [True, None, \"it's\"]}"
        );
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        for raw in [
            &b"not json"[..],
            b"{}",
            b"[]",
            b"{\"headers\": {\"id\": \"a\"}, \"properties\": {}}",
            b"{\"headers\": {\"id\": \"a\", \"task\": \"t\"}, \"properties\": {\"body_encoding\": \"base64\"}, \"body\": \"!!\"}",
            b"{\"headers\": {\"id\": \"a\", \"task\": \"t\"}, \"properties\": {}, \"body\": \"{}\"}",
            b"{\"headers\": {\"id\": \"a\", \"task\": \"t\", \"eta\": \"soon\"}, \"properties\": {}, \"body\": [[], {}, {}]}",
            b"{\"headers\": {\"id\": \"a\", \"task\": \"t\"}, \"properties\": {}, \"content-type\": \"application/x-python-serialize\", \"body\": \"x\"}",
        ] {
            assert!(TaskMessage::decode(raw).is_err(), "{}", String::from_utf8_lossy(raw));
        }
        let e = TaskMessage::decode(
            b"{\"headers\": {\"id\": \"a\", \"task\": \"t\"}, \"properties\": {}, \"body\": 5}",
        )
        .unwrap_err();
        assert_eq!(e.id.as_deref(), Some("a"));
        assert_eq!(e.task.as_deref(), Some("t"));
    }
}
