//! Decoding: an envelope read into typed structs ([`RawEnvelope`]), like encoding writes
//! them, then checked into a [`TaskMessage`].
//!
//! Celery tolerates odd values, so do these structs: a scalar of an unexpected type reads as
//! absent ([`lenient`]), a section that is not a mapping as missing ([`section`]). What a
//! message cannot do without (an id, a task name, a JSON body of `[args, kwargs, embed]`, a
//! readable `eta`/`expires`) is a [`DecodeError`] that still carries what could be read, so
//! the failure can be stored under the task id.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use super::message::{TaskMessage, default_embed};
use super::time::parse_time;
use super::unknown_headers;

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

/// A kombu envelope as found on a queue.
#[derive(Debug, Default, Deserialize)]
struct RawEnvelope {
    /// Kept as found (`null` included): its type decides how it is read.
    #[serde(default, deserialize_with = "present")]
    body: Option<Value>,
    #[serde(rename = "content-type", default, deserialize_with = "lenient")]
    content_type: Option<String>,
    #[serde(default, deserialize_with = "section")]
    headers: Option<RawHeaders>,
    #[serde(default, deserialize_with = "section")]
    properties: Option<RawProperties>,
}

/// Protocol v2 headers (and ours); the others are kept in `rest`.
#[derive(Debug, Default, Deserialize)]
struct RawHeaders {
    #[serde(default, deserialize_with = "lenient")]
    id: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    task: Option<String>,
    #[serde(default, deserialize_with = "present")]
    eta: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    expires: Option<Value>,
    #[serde(default, deserialize_with = "lenient")]
    timelimit: Option<Vec<Value>>,
    #[serde(default, deserialize_with = "lenient")]
    retries: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    root_id: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    parent_id: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    group: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    origin: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    ignore_result: Option<bool>,
    #[serde(default, deserialize_with = "lenient")]
    redelivered: Option<bool>,
    #[serde(
        rename = "xenios_correlation_id",
        default,
        deserialize_with = "lenient"
    )]
    correlation_id: Option<String>,
    #[serde(rename = "xenios_user_id", default, deserialize_with = "lenient")]
    user_id: Option<String>,
    #[serde(rename = "xenios_owner", default, deserialize_with = "lenient")]
    owner: Option<String>,
    #[serde(flatten)]
    rest: Map<String, Value>,
}

#[derive(Debug, Default, Deserialize)]
struct RawProperties {
    #[serde(default, deserialize_with = "lenient")]
    delivery_tag: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    body_encoding: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    reply_to: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    priority: Option<u64>,
    #[serde(default, deserialize_with = "section")]
    delivery_info: Option<RawDeliveryInfo>,
}

#[derive(Debug, Default, Deserialize)]
struct RawDeliveryInfo {
    #[serde(default, deserialize_with = "lenient")]
    routing_key: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    exchange: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    redelivered: Option<bool>,
}

/// A value of another type than `T` (or `null`) reads as absent instead of failing the
/// message.
fn lenient<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    Ok(serde_json::from_value(Value::deserialize(d)?).ok())
}

/// A section (`headers`, `properties`, `delivery_info`) that is not a mapping reads as
/// missing.
fn section<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    Ok(match Value::deserialize(d)? {
        v @ Value::Object(_) => serde_json::from_value(v).ok(),
        _ => None,
    })
}

/// A value kept as found, `null` included (absent only when the key is).
fn present<'de, D>(d: D) -> Result<Option<Value>, D::Error>
where
    D: Deserializer<'de>,
{
    Value::deserialize(d).map(Some)
}

impl TaskMessage {
    /// Decodes an envelope as found on a queue (or in `unacked`).
    pub fn decode(raw: &[u8]) -> Result<Self, DecodeError> {
        let envelope: RawEnvelope = serde_json::from_slice(raw).map_err(|e| {
            let reason = if e.is_data() {
                format!("no headers/properties: not a protocol v2 message ({e})")
            } else {
                format!("not JSON: {e}")
            };
            DecodeError {
                id: None,
                task: None,
                delivery_tag: None,
                reason,
            }
        })?;
        envelope.into_message()
    }

    /// Decodes an already parsed envelope.
    pub fn from_envelope(envelope: &Value) -> Result<Self, DecodeError> {
        RawEnvelope::deserialize(envelope)
            .unwrap_or_default()
            .into_message()
    }
}

impl RawEnvelope {
    fn into_message(self) -> Result<TaskMessage, DecodeError> {
        let id = self.headers.as_ref().and_then(|h| h.id.clone());
        let task = self.headers.as_ref().and_then(|h| h.task.clone());
        let delivery_tag = self
            .properties
            .as_ref()
            .and_then(|p| p.delivery_tag.clone());
        let fail = |reason: String| DecodeError {
            id: id.clone(),
            task: task.clone(),
            delivery_tag: delivery_tag.clone(),
            reason,
        };
        let (Some(headers), Some(props)) = (self.headers, self.properties) else {
            return Err(fail(
                "no headers/properties: not a protocol v2 message".to_owned(),
            ));
        };
        let id = id.clone().ok_or_else(|| fail("no headers.id".to_owned()))?;
        let task = task
            .clone()
            .ok_or_else(|| fail("no headers.task".to_owned()))?;
        let content_type = self.content_type.as_deref().unwrap_or("application/json");
        if content_type != "application/json" {
            return Err(fail(format!(
                "content-type `{content_type}` is not supported (only application/json)"
            )));
        }
        let raw_body = self.body.ok_or_else(|| fail("no body".to_owned()))?;
        let body: Value = match (props.body_encoding.as_deref(), raw_body) {
            (Some("base64"), Value::String(b)) => {
                let bytes = B64
                    .decode(b.as_bytes())
                    .map_err(|e| fail(format!("body is not base64: {e}")))?;
                serde_json::from_slice(&bytes)
                    .map_err(|e| fail(format!("body is not JSON: {e}")))?
            }
            (_, Value::String(s)) => {
                serde_json::from_str(&s).map_err(|e| fail(format!("body is not JSON: {e}")))?
            }
            (_, other) => other,
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
        // Times further away than a year are hostile or broken: cut to a year from now.
        let latest = Utc::now() + chrono::Duration::days(365);
        let time = |k: &str, v: Option<Value>| {
            read_time(k, v)
                .map(|t| t.map(|t| t.min(latest)))
                .map_err(|e| fail(e.to_string()))
        };
        let eta = time("eta", headers.eta)?;
        let expires = time("expires", headers.expires)?;
        let limit = |i: usize| {
            headers
                .timelimit
                .as_ref()
                .and_then(|tl| tl.get(i))
                .and_then(Value::as_f64)
        };
        let (hard_time_limit, soft_time_limit) = (limit(0), limit(1));
        let delivery_info = props.delivery_info.unwrap_or_default();
        let redelivered = headers
            .redelivered
            .or(delivery_info.redelivered)
            .unwrap_or(false);
        Ok(TaskMessage {
            queue: delivery_info.routing_key.unwrap_or_default(),
            exchange: delivery_info.exchange.unwrap_or_default(),
            delivery_tag: delivery_tag
                .clone()
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            reply_to: props.reply_to,
            id,
            task,
            args,
            kwargs,
            embed,
            priority: props.priority.unwrap_or(0).min(9) as u8,
            retries: headers.retries.unwrap_or(0).min(u64::from(u32::MAX)) as u32,
            eta,
            expires,
            hard_time_limit,
            soft_time_limit,
            root_id: headers.root_id,
            parent_id: headers.parent_id,
            group: headers.group,
            origin: headers.origin.unwrap_or_default(),
            correlation_id: headers.correlation_id,
            user_id: headers.user_id,
            owner: headers.owner,
            ignore_result: headers.ignore_result.unwrap_or(false),
            redelivered,
            extra_headers: unknown_headers(&headers.rest),
        })
    }
}

/// `eta`/`expires`: ISO 8601, or seconds since the epoch (clamped to a year from now).
fn read_time(k: &str, v: Option<Value>) -> Result<Option<DateTime<Utc>>, BadTime> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => parse_time(&s)
            .map(Some)
            .ok_or_else(|| BadTime::NotIso8601(k.to_owned(), s)),
        Some(Value::Number(n)) => Ok(n.as_f64().filter(|secs| secs.is_finite()).and_then(|secs| {
            let far = (Utc::now() + chrono::Duration::days(366)).timestamp() as f64;
            DateTime::from_timestamp_millis((secs.clamp(0.0, far) * 1000.0) as i64)
        })),
        Some(_) => Err(BadTime::NotATime(k.to_owned())),
    }
}

/// Why a time header (`eta`, `expires`) cannot be read.
#[derive(Debug, thiserror::Error)]
enum BadTime {
    #[error("headers.{0} `{1}` is not an ISO 8601 time")]
    NotIso8601(String, String),
    #[error("headers.{0} is not a time")]
    NotATime(String),
}
