//! Decoding: an envelope read into typed structs ([`RawEnvelope`]), like encoding writes
//! them, then checked into a [`TaskMessage`].
//!
//! Celery tolerates odd values, so do these structs: a scalar of an unexpected type reads as
//! absent ([`lenient`], and each [`Section`]'s fields), a section that is not a mapping as
//! missing ([`section`]). What a message cannot do without (an id, a task name, a JSON body
//! of `[args, kwargs, embed]`, a readable `eta`/`expires`) is a [`DecodeError`] that still
//! carries what could be read, so the failure can be stored under the task id.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, Utc};
use serde::de::{DeserializeOwned, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use super::message::{TaskMessage, default_embed};
use super::time::parse_time;
use super::{CORRELATION_HEADER, KNOWN_HEADERS, OWNER_HEADER, USER_HEADER};

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
#[derive(Debug, Default)]
struct RawHeaders {
    id: Option<String>,
    task: Option<String>,
    eta: Option<Value>,
    expires: Option<Value>,
    timelimit: Option<Vec<Value>>,
    retries: Option<u64>,
    root_id: Option<String>,
    parent_id: Option<String>,
    group: Option<String>,
    origin: Option<String>,
    ignore_result: Option<bool>,
    redelivered: Option<bool>,
    correlation_id: Option<String>,
    user_id: Option<String>,
    owner: Option<String>,
    /// The headers [`TaskMessage`] does not model, kept for retries.
    rest: Map<String, Value>,
}

impl Section for RawHeaders {
    fn entry<'de, A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<bool, A::Error> {
        match key {
            "id" => self.id = string(map.next_value()?),
            "task" => self.task = string(map.next_value()?),
            "eta" => self.eta = Some(map.next_value()?),
            "expires" => self.expires = Some(map.next_value()?),
            "timelimit" => {
                self.timelimit = match map.next_value()? {
                    Value::Array(a) => Some(a),
                    _ => None,
                }
            }
            "retries" => self.retries = map.next_value::<Value>()?.as_u64(),
            "root_id" => self.root_id = string(map.next_value()?),
            "parent_id" => self.parent_id = string(map.next_value()?),
            "group" => self.group = string(map.next_value()?),
            "origin" => self.origin = string(map.next_value()?),
            "ignore_result" => self.ignore_result = map.next_value::<Value>()?.as_bool(),
            "redelivered" => self.redelivered = map.next_value::<Value>()?.as_bool(),
            CORRELATION_HEADER => self.correlation_id = string(map.next_value()?),
            USER_HEADER => self.user_id = string(map.next_value()?),
            OWNER_HEADER => self.owner = string(map.next_value()?),
            // The rest of the headers `TaskMessage` holds (`argsrepr`, `stamps`...) are
            // written anew by encoding: skipped unread.
            k if KNOWN_HEADERS.contains(&k) => return Ok(false),
            k => {
                let v = map.next_value()?;
                self.rest.insert(k.to_owned(), v);
            }
        }
        Ok(true)
    }
}

#[derive(Debug, Default)]
struct RawProperties {
    delivery_tag: Option<String>,
    body_encoding: Option<String>,
    reply_to: Option<String>,
    priority: Option<u64>,
    delivery_info: Option<RawDeliveryInfo>,
}

impl Section for RawProperties {
    fn entry<'de, A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<bool, A::Error> {
        match key {
            "delivery_tag" => self.delivery_tag = string(map.next_value()?),
            "body_encoding" => self.body_encoding = string(map.next_value()?),
            "reply_to" => self.reply_to = string(map.next_value()?),
            "priority" => self.priority = map.next_value::<Value>()?.as_u64(),
            "delivery_info" => self.delivery_info = map.next_value::<Sectioned<_>>()?.0,
            _ => return Ok(false),
        }
        Ok(true)
    }
}

#[derive(Debug, Default)]
struct RawDeliveryInfo {
    routing_key: Option<String>,
    exchange: Option<String>,
    redelivered: Option<bool>,
}

impl Section for RawDeliveryInfo {
    fn entry<'de, A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<bool, A::Error> {
        match key {
            "routing_key" => self.routing_key = string(map.next_value()?),
            "exchange" => self.exchange = string(map.next_value()?),
            "redelivered" => self.redelivered = map.next_value::<Value>()?.as_bool(),
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// A mapping of the envelope (`headers`, `properties`, `delivery_info`) read entry by entry
/// as it is parsed: each known key into its field, leniently (a value of an unexpected
/// type, or `null`, reads as absent, as Celery tolerates odd values); a duplicate key's
/// last value wins.
///
/// Hand-written rather than derived: a derived struct with a flattened `rest` parsed the
/// headers into a map, then into serde's buffer, then each field again, which made decoding
/// a third of the worker's CPU per job.
trait Section: Default {
    /// Reads the value of `key` from `map` into its field; `Ok(false)`, without reading it,
    /// when this section does not keep that key (the caller skips the value).
    fn entry<'de, A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<bool, A::Error>;
}

/// A section, or `None` when the value there is not a mapping.
struct Sectioned<T>(Option<T>);

impl<'de, T: Section> Deserialize<'de> for Sectioned<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SectionVisitor(PhantomData))
            .map(Sectioned)
    }
}

struct SectionVisitor<T>(PhantomData<T>);

impl<'de, T: Section> Visitor<'de> for SectionVisitor<T> {
    type Value = Option<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a mapping (anything else reads as missing)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut section = T::default();
        while let Some(key) = map.next_key::<Key<'de>>()? {
            if !section.entry(&key.0, &mut map)? {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(Some(section))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// A mapping's key, borrowed from the input when it has no escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E>(self, s: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s)))
            }
        }
        d.deserialize_str(V)
    }
}

/// A string, or absent when the value is of another type (or `null`).
fn string(v: Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s),
        _ => None,
    }
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

/// A section (`headers`, `properties`) that is not a mapping reads as missing.
fn section<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Section,
{
    Sectioned::deserialize(d).map(|s| s.0)
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
        let (headers, properties) = (self.headers, self.properties);
        let id = headers.as_ref().and_then(|h| h.id.clone());
        let task = headers.as_ref().and_then(|h| h.task.clone());
        let delivery_tag = properties.as_ref().and_then(|p| p.delivery_tag.clone());
        let fail = |reason: String| DecodeError {
            id: id.clone(),
            task: task.clone(),
            delivery_tag: delivery_tag.clone(),
            reason,
        };
        let (Some(headers), Some(props)) = (headers, properties) else {
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
            extra_headers: headers.rest,
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
