//! The served OpenAPI document: poem-openapi's, plus what its attributes cannot say.
//!
//! The limits below are checked by core (with its own messages, which clients and tests rely
//! on), not by poem-openapi's validators; here they are written into the schemas so that the
//! document states exactly what the server accepts. Where core exports the constant, the
//! document reads it.
//!
//! - Security: every authenticated route takes `X-API-Key`, with or without a bearer token
//!   (poem-openapi can only say "one of the schemes").
//! - Request limits: lengths, ranges and patterns of core's validation.
//! - `EnqueueBody.queue`: refused whatever its value (each task's queue is the catalog's).

use serde_json::{Value, json};
use xenios_core::jobs::{MAX_DELAY, MAX_TASK_NAME_LEN};
use xenios_core::llm::policy::MAX_MODELS_PER_CALL;

/// Most messages in one LLM call (core's `llm::types` limit).
pub const MAX_MESSAGES: usize = 1_000;
/// Longest model id (core's `llm::types` limit).
pub const MAX_MODEL_ID_LEN: usize = 200;
/// Longest job id (core's `jobs::valid_task_id`).
pub const MAX_JOB_ID_LEN: usize = 128;

/// Constraints merged into `components.schemas.<schema>.properties.<property>`.
fn property_constraints() -> Vec<(&'static str, &'static str, Value)> {
    vec![
        (
            "LlmRequest",
            "messages",
            json!({"minItems": 1, "maxItems": MAX_MESSAGES}),
        ),
        (
            "LlmRequest",
            "temperature",
            json!({"minimum": 0, "maximum": 2}),
        ),
        ("LlmRequest", "max_tokens", json!({"minimum": 1})),
        (
            "LlmRequest",
            "models",
            json!({
                "minItems": 1,
                "maxItems": MAX_MODELS_PER_CALL,
                "uniqueItems": true,
                "items": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": MAX_MODEL_ID_LEN,
                    "pattern": "^[!-~]+$",
                },
            }),
        ),
        (
            "ChatCompletionRequest",
            "temperature",
            json!({"minimum": 0, "maximum": 2}),
        ),
        ("ChatCompletionRequest", "max_tokens", json!({"minimum": 1})),
        (
            "ChatCompletionRequest",
            "max_completion_tokens",
            json!({"minimum": 1}),
        ),
        (
            "ChatCompletionRequest",
            "messages",
            json!({"minItems": 1, "maxItems": MAX_MESSAGES}),
        ),
        (
            "EnqueueBody",
            "task",
            json!({
                "minLength": 1,
                "maxLength": MAX_TASK_NAME_LEN,
                "pattern": "^[A-Za-z0-9_.:-]+$",
            }),
        ),
        ("EnqueueBody", "args", json!({"type": "array"})),
        ("EnqueueBody", "kwargs", json!({"type": "object"})),
        (
            "EnqueueBody",
            "countdown",
            json!({"minimum": 0, "maximum": MAX_DELAY.as_secs()}),
        ),
        (
            "EnqueueBody",
            "priority",
            json!({"minimum": 0, "maximum": 9}),
        ),
    ]
}

/// The document served at `/openapi.json`, from poem-openapi's `spec`.
pub fn finish(spec: &str) -> String {
    let Ok(mut doc) = serde_json::from_str::<Value>(spec) else {
        return spec.to_owned();
    };
    let schemas = &mut doc["components"]["schemas"];
    for (schema, property, extra) in property_constraints() {
        if let Some(target) = schemas
            .get_mut(schema)
            .and_then(|s| s.get_mut("properties"))
            .and_then(|p| p.get_mut(property))
        {
            merge(target, extra);
        }
    }
    if let Some(queue) = schemas
        .get_mut("EnqueueBody")
        .and_then(|s| s.get_mut("properties"))
        .and_then(|p| p.get_mut("queue"))
    {
        *queue = json!({
            "description": "Not accepted: each task's queue is set by the task catalog, and a \
                            request naming one is refused (422).",
            "not": {},
        });
    }
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        for (path, item) in paths.iter_mut() {
            let Some(item) = item.as_object_mut() else {
                continue;
            };
            for op in item.values_mut() {
                fix_security(op);
                if path.contains("{id}") {
                    constrain_id(op);
                }
            }
        }
    }
    serde_json::to_string_pretty(&doc).unwrap_or_else(|_| spec.to_owned())
}

fn merge(target: &mut Value, extra: Value) {
    if let (Some(t), Value::Object(e)) = (target.as_object_mut(), extra) {
        t.extend(e);
    }
}

/// `X-API-Key` alone, or `X-API-Key` and a bearer token: never a bearer token alone.
fn fix_security(op: &mut Value) {
    let Some(security) = op.get_mut("security") else {
        return;
    };
    let schemes: Vec<String> = security
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_object)
        .flat_map(|o| o.keys().cloned())
        .collect();
    if schemes.iter().any(|s| s == "ApiKeyAuth") {
        *security = if schemes.iter().any(|s| s == "BearerAuth") {
            json!([{"ApiKeyAuth": [], "BearerAuth": []}, {"ApiKeyAuth": []}])
        } else {
            json!([{"ApiKeyAuth": []}])
        };
    }
}

/// A job id: 1 to 128 characters of `[A-Za-z0-9_.:-]` (others are 422).
fn constrain_id(op: &mut Value) {
    for param in op
        .get_mut("parameters")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        if param["in"] == "path" && param["name"] == "id" {
            merge(
                &mut param["schema"],
                json!({
                    "minLength": 1,
                    "maxLength": MAX_JOB_ID_LEN,
                    "pattern": "^[A-Za-z0-9_.:-]+$",
                }),
            );
        }
    }
}
