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
//! - What this deployment's configuration decides ([`Facts`]): the job tasks of the catalog,
//!   each LLM route's `max_tokens`. The committed `openapi.json` is the document of the
//!   default development configuration.
//! - At least one message must have text (core refuses a conversation of blank messages).
//! - Optional request fields are nullable (poem-openapi reads `null` as absent); response
//!   fields that can be absent are left out, never `null`.
//! - Event streams: one `{event, data}` per server-sent event, `data` the JSON of the item;
//!   `/v1/chat/completions` answers JSON as well.

use serde_json::{Value, json};
use xenios_core::jobs::{MAX_DELAY, MAX_TASK_NAME_LEN};
use xenios_core::llm::policy::MAX_MODELS_PER_CALL;

/// Most messages in one LLM call (core's `llm::types` limit).
pub const MAX_MESSAGES: usize = 1_000;
/// Longest model id (core's `llm::types` limit).
pub const MAX_MODEL_ID_LEN: usize = 200;
/// Longest job id (core's `jobs::valid_task_id`).
pub const MAX_JOB_ID_LEN: usize = 128;

/// What the document takes from the configuration.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// Job tasks HTTP callers may enqueue (the catalog), sorted.
    pub job_tasks: Vec<String>,
    /// Each LLM task's name and its route's `max_tokens`.
    pub route_max_tokens: Vec<(String, u32)>,
}

impl Facts {
    /// The facts of a backend's configuration.
    pub fn of(backend: &xenios_core::AiBackend) -> Self {
        let routes = &backend.config().llm.routes;
        Facts {
            job_tasks: backend
                .jobs()
                .job_catalog()
                .names()
                .into_iter()
                .map(str::to_owned)
                .collect(),
            route_max_tokens: xenios_core::llm::Task::ALL
                .iter()
                .map(|t| (t.as_str().to_owned(), routes.route(*t).max_tokens))
                .collect(),
        }
    }
}

/// Unicode's White_Space (what `str::trim` removes), spelled out so that every regex dialect
/// reads it alike.
const WHITE_SPACE: &str =
    "\\t\\n\\u000b\\f\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000";

/// Request schemas: poem-openapi reads `null` as absent for their optional fields.
const REQUEST_SCHEMAS: [&str; 4] = [
    "LlmRequest",
    "ChatCompletionRequest",
    "OpenAiMessage",
    "EnqueueBody",
];

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
        (
            "ChatCompletionRequest",
            "max_tokens",
            json!({"minimum": 0, "maximum": u32::MAX}),
        ),
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
        (
            "EnqueueBody",
            "kwargs",
            json!({"type": "object", "additionalProperties": {}}),
        ),
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
pub fn finish(spec: &str, facts: &Facts) -> String {
    let Ok(mut doc) = serde_json::from_str::<Value>(spec) else {
        return spec.to_owned();
    };
    let schemas = &mut doc["components"]["schemas"];
    configured(schemas, facts);
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
            "nullable": true,
            "enum": [null],
        });
    }
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        for (path, item) in paths.iter_mut() {
            let Some(item) = item.as_object_mut() else {
                continue;
            };
            for op in item.values_mut() {
                declare_internal_error(op);
                fix_security(op);
                describe_events(op);
                if path.contains("{id}") {
                    constrain_id(op);
                }
            }
        }
    }
    serde_json::to_string_pretty(&doc).unwrap_or_else(|_| spec.to_owned())
}

/// The rules that depend on the configuration, and those across fields.
fn configured(schemas: &mut Value, facts: &Facts) {
    let blank = format!("^[{WHITE_SPACE}]*$");
    let not_blank = json!({"type": "string", "pattern": format!("[^{WHITE_SPACE}]")});
    if let Some(task) = schemas.pointer_mut("/EnqueueBody/properties/task")
        && !facts.job_tasks.is_empty()
    {
        merge(task, json!({"enum": facts.job_tasks}));
    }
    // Native: `max_tokens` at most the route's of the chosen task; not every message blank
    // (OpenAPI 3.0 has no `contains`: "not all items blank").
    if let Some(s) = schemas.get_mut("LlmRequest") {
        let per_task: Vec<Value> = facts
            .route_max_tokens
            .iter()
            .map(|(task, max)| {
                json!({"properties": {
                    "task": {"enum": [task]},
                    "max_tokens": {"maximum": max},
                }})
            })
            .collect();
        merge(
            s,
            json!({
                // In `allOf`, so that generated types intersect (not unite) the branches.
                "allOf": [{"anyOf": per_task}],
                "properties": {"messages": {
                    "not": {"items": {"properties": {"content": {"type": "string", "pattern": blank}}}},
                }},
            }),
        );
    }
    // OpenAI-compatible: a task's name picks its route, any other model id the `chat` one;
    // `max_completion_tokens` wins over `max_tokens`. A message's text is its string content
    // or the `text` of its parts.
    if let Some(s) = schemas.get_mut("ChatCompletionRequest") {
        let tasks: Vec<&str> = facts
            .route_max_tokens
            .iter()
            .map(|(t, _)| t.as_str())
            .collect();
        let chat_max = facts
            .route_max_tokens
            .iter()
            .find(|(t, _)| t == "chat")
            .map(|(_, m)| *m);
        let mut branches = Vec::new();
        let limits = facts
            .route_max_tokens
            .iter()
            .map(|(t, m)| (json!({"enum": [t]}), *m))
            .chain(chat_max.map(|m| (json!({"not": {"enum": tasks}}), m)));
        for (model, max) in limits {
            let given = json!({"type": "integer"});
            branches.push(json!({
                "required": ["max_completion_tokens"],
                "properties": {
                    "model": model,
                    "max_completion_tokens": {"type": "integer", "maximum": max},
                },
            }));
            branches.push(json!({
                "not": {
                    "required": ["max_completion_tokens"],
                    "properties": {"max_completion_tokens": given},
                },
                "properties": {"model": model, "max_tokens": {"minimum": 1, "maximum": max}},
            }));
        }
        let text_part = json!({
            "type": "object",
            "required": ["text"],
            "properties": {"text": not_blank},
        });
        let has_text = json!({"anyOf": [
            not_blank,
            {"type": "array", "not": {"items": {"not": text_part}}},
        ]});
        merge(
            s,
            json!({
                "allOf": [{"anyOf": branches}],
                "properties": {"messages": {
                    "not": {"items": {"properties": {"content": {"not": has_text}}}},
                }},
            }),
        );
    }
    if let Some(content) = schemas.pointer_mut("/OpenAiMessage/properties/content") {
        merge(
            content,
            json!({"anyOf": [{"type": "string"}, {"type": "array", "items": {}}]}),
        );
    }
    if let Some(model) = schemas.pointer_mut("/ChatCompletionRequest/properties/model") {
        merge(
            model,
            json!({"minLength": 1, "maxLength": MAX_MODEL_ID_LEN, "pattern": "^[!-~]+$"}),
        );
    }
    for name in REQUEST_SCHEMAS {
        let Some(schema) = schemas.get_mut(name) else {
            continue;
        };
        let required: Vec<String> = schema["required"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
        for (field, property) in schema["properties"].as_object_mut().into_iter().flatten() {
            if !required.contains(field) {
                merge(property, json!({"nullable": true}));
            }
        }
    }
}

/// OpenAPI 3.0 has no schema for a stream: poem-openapi writes an array of the events. What
/// a client (and schemathesis) reads is one event, `{event, data}`, whose `data` is the JSON
/// text of the item schema. `/v1/chat/completions` answers JSON too (without `stream`).
fn describe_events(op: &mut Value) {
    let Some(ok) = op.pointer_mut("/responses/200/content") else {
        return;
    };
    let Some(sse) = ok.get_mut("text/event-stream") else {
        return;
    };
    let item = sse["schema"]["items"].clone();
    let is_chunks = item.as_object().is_some_and(|o| o.is_empty());
    let data = if is_chunks {
        json!({
            "type": "string",
            "description": "A `chat.completion.chunk` object as JSON, or `[DONE]` last.",
        })
    } else {
        json!({
            "type": "string",
            "description": "The event as JSON.",
            "contentMediaType": "application/json",
            "contentSchema": item,
        })
    };
    sse["schema"] = json!({
        "type": "object",
        "description": "One server-sent event.",
        "required": ["data"],
        "properties": {
            "event": {"type": "string", "description": "The event's type (SSE `event:`)."},
            "data": data,
        },
    });
    if is_chunks {
        ok["application/json; charset=utf-8"] = json!({
            "schema": {"$ref": "#/components/schemas/ChatCompletionBody"},
        });
    }
}

/// Merges `extra` into `target`, object members recursively.
/// Every route can fail in a way nobody planned for (a bug, a panic caught by the server):
/// that is a 500 in the error shape, `code` `internal_error`, logged once with its
/// correlation ID.
fn declare_internal_error(op: &mut Value) {
    let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else {
        return;
    };
    responses.entry("500").or_insert_with(|| {
        json!({
            "description": "An unexpected server error (`internal_error`); the server logs it \
                            once, with the correlation ID the body carries.",
            "content": {"application/json; charset=utf-8": {
                "schema": {"$ref": "#/components/schemas/ErrorBody"}
            }}
        })
    });
}

fn merge(target: &mut Value, extra: Value) {
    match (target, extra) {
        (Value::Object(t), Value::Object(e)) => {
            for (k, v) in e {
                match t.get_mut(&k) {
                    Some(existing) if existing.is_object() && v.is_object() => merge(existing, v),
                    _ => {
                        t.insert(k, v);
                    }
                }
            }
        }
        (t, e) => *t = e,
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
