//! kombu envelopes of any message (events, pidbox), and how a producer names itself.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

/// `gen<pid>@<host>`, as Celery names a producer.
pub fn origin() -> String {
    format!("gen{}@{}", std::process::id(), hostname())
}

/// This machine's host name (`$HOSTNAME`, then `localhost`, when it cannot be read).
pub fn hostname() -> String {
    gethostname::gethostname()
        .into_string()
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_owned())
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
