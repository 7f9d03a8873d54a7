//! Celery task message protocol v2 on kombu's Redis transport: encode and decode.
//!
//! Hand-written on purpose: no Rust crate produces messages a Python Celery 5 worker, kombu's
//! restore and Flower all accept (rusty-celery sends a subset of the headers and no
//! `delivery_info.exchange`, which makes kombu raise `KeyError`; see
//! `shared/notes/celery-wire.md`). The shapes follow celery's `amqp.as_task_v2` and the
//! traffic captured in `tests/fixtures/celery/`.
//!
//! An envelope is JSON: `body` (base64 of `[args, kwargs, embed]`), `content-encoding`,
//! `content-type`, `headers` (task id, name, retries, eta, expires, `timelimit` as
//! `[hard, soft]`...) and `properties` (`delivery_tag`, `delivery_info`, `priority`...).
//! Headers this crate adds, which Celery passes through untouched: `xenios_correlation_id`,
//! `xenios_user_id` and `xenios_owner` (a Python task reads them as
//! `self.request.xenios_owner`, Celery copying custom headers onto the request).
//!
//! ## Layout
//! - `message`: [`TaskMessage`], one task message in memory.
//! - `encode`: [`TaskMessage::encode`], serialized from borrowed typed structs.
//! - `decode`: [`TaskMessage::decode`] and [`DecodeError`], deserialized into typed structs
//!   whose scalars of an unexpected type read as absent, as Celery itself tolerates them.
//! - `kombu`: envelopes of other kombu messages (events, pidbox), the producer's `origin`.
//! - `repr`: Python's `repr` of arguments (`argsrepr`, `kwargsrepr`, events).
//! - `time`: ISO 8601 times as Python writes and Celery sends them.

mod decode;
mod encode;
mod kombu;
mod message;
mod repr;
mod time;

pub use self::decode::DecodeError;
pub use self::kombu::{envelope, envelope_body, hostname, origin};
pub use self::message::TaskMessage;
pub use self::repr::{args_repr, kwargs_repr, py_repr};
pub use self::time::{iso, parse_time};

/// Header carrying the correlation ID of the request that enqueued a task.
pub const CORRELATION_HEADER: &str = "xenios_correlation_id";
/// Header carrying the user on whose behalf a task runs.
pub const USER_HEADER: &str = "xenios_user_id";
/// Header carrying the job's owner: `user:<user id>` or `service` (see
/// [`crate::jobs::Owner`]).
pub const OWNER_HEADER: &str = "xenios_owner";

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
fn unknown_headers(
    headers: &serde_json::Map<String, serde_json::Value>,
) -> serde_json::Map<String, serde_json::Value> {
    headers
        .iter()
        .filter(|(k, _)| !KNOWN_HEADERS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use serde_json::{Value, json};

    use super::*;

    const VECTOR: &str = include_str!("../../../../tests/fixtures/celery/task-message.json");

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
    fn odd_typed_headers_read_as_absent_and_unknown_ones_are_kept() {
        let raw = json!({
            "headers": {
                "id": "a", "task": "t", "retries": "3", "root_id": 5, "parent_id": null,
                "ignore_result": "yes", "timelimit": "x", "xenios_owner": 7,
                "xenios_correlation_id": ["c"], "origin": {"o": 1},
                "traceparent": "00-abc-def-01", "argsrepr": "(1,)",
            },
            "properties": {
                "delivery_tag": 9, "priority": -1, "reply_to": "r",
                "delivery_info": {"routing_key": "q", "exchange": 3, "redelivered": true},
            },
            "body": [[1], {}, {}],
        });
        let m = TaskMessage::decode(raw.to_string().as_bytes()).unwrap();
        assert_eq!((m.id.as_str(), m.task.as_str()), ("a", "t"));
        assert_eq!((m.retries, m.ignore_result, m.priority), (0, false, 0));
        assert_eq!((m.root_id, m.parent_id), (None, None));
        assert_eq!((m.owner, m.correlation_id), (None, None));
        assert_eq!(m.origin, "");
        assert_eq!((m.hard_time_limit, m.soft_time_limit), (None, None));
        assert_eq!((m.queue.as_str(), m.exchange.as_str()), ("q", ""));
        assert_eq!(m.reply_to.as_deref(), Some("r"));
        assert!(m.redelivered);
        // A delivery tag of another type reads as none, and the message gets a fresh one.
        assert!(!m.delivery_tag.is_empty() && m.delivery_tag != "9");
        // Headers it does not model are kept (for retries); the ones it does are not.
        let extra: Vec<&str> = m.extra_headers.keys().map(String::as_str).collect();
        assert_eq!(extra, ["traceparent"]);
        assert_eq!(m.args, [json!(1)]);
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
