//! The audit row of one call (`inference_logs`): written exactly once, whatever happens to
//! the call, with the payloads as typed JSON when `AUDIT_STORE_PAYLOADS` is on.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::types::{Message, Usage};
use crate::db::audit::AuditWriter;
use crate::db::models::{InferenceStatus, NewInferenceLog};

/// Writes the audit row of a call exactly once: explicitly when the call ends, or as
/// `cancelled` when the call is dropped first (caller gone, stream aborted).
#[derive(Debug)]
pub(crate) struct AuditGuard {
    audit: AuditWriter,
    row: Option<NewInferenceLog>,
    pub(crate) started: Instant,
}

impl AuditGuard {
    /// A guard that writes `row` (as `cancelled` unless finished otherwise).
    pub(crate) fn new(audit: AuditWriter, row: NewInferenceLog) -> Self {
        Self {
            audit,
            row: Some(row),
            started: Instant::now(),
        }
    }

    /// Writes the row with `status`, after `fill` completed it; later calls do nothing.
    pub(crate) fn finish(
        &mut self,
        status: InferenceStatus,
        fill: impl FnOnce(&mut NewInferenceLog),
    ) {
        if let Some(mut row) = self.row.take() {
            row.status = status.as_str().to_owned();
            row.latency_ms = millis_i32(self.started.elapsed());
            fill(&mut row);
            let audit = self.audit.clone();
            crate::deferred::after_answer(move || audit.inference(row));
        }
    }
}

impl Drop for AuditGuard {
    fn drop(&mut self) {
        self.finish(InferenceStatus::Cancelled, |_| {});
    }
}

/// `request_payload`: what was asked, after the route filled in the defaults.
#[derive(Debug, Serialize)]
pub(crate) struct RequestPayload<'a> {
    pub messages: &'a [Message],
    pub models: &'a [String],
    pub temperature: f32,
    pub max_tokens: u32,
}

/// `response_payload`: what came back (`partial` when a stream broke after its first token).
#[derive(Debug, Serialize)]
pub(crate) struct ResponsePayload<'a> {
    pub content: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<Option<&'a str>>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub partial: bool,
}

impl<'a> ResponsePayload<'a> {
    /// A whole answer.
    pub(crate) fn done(content: &'a str, finish_reason: Option<&'a str>) -> Self {
        Self {
            content,
            finish_reason: Some(finish_reason),
            partial: false,
        }
    }

    /// The text of a stream that broke after its first token.
    pub(crate) fn partial(content: &'a str) -> Self {
        Self {
            content,
            finish_reason: None,
            partial: true,
        }
    }
}

/// A payload as the JSON column stores it.
pub(crate) fn payload(p: &impl Serialize) -> Option<serde_json::Value> {
    serde_json::to_value(p).ok()
}

pub(crate) fn millis_i32(d: Duration) -> i32 {
    i32::try_from(d.as_millis()).unwrap_or(i32::MAX)
}

pub(crate) fn millis_u64(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Copies token counts and cost into the row.
pub(crate) fn usage_into_row(row: &mut NewInferenceLog, u: &Usage) {
    let i = |n: u32| Some(i32::try_from(n).unwrap_or(i32::MAX));
    row.prompt_tokens = i(u.prompt_tokens);
    row.completion_tokens = i(u.completion_tokens);
    row.total_tokens = i(u.total_tokens);
    row.cost_usd = u.cost_usd;
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn payloads_keep_the_stored_json_shape() {
        let messages = [Message::user("hi")];
        let models = ["m".to_owned()];
        let req = RequestPayload {
            messages: &messages,
            models: &models,
            temperature: 0.5,
            max_tokens: 7,
        };
        assert_eq!(
            payload(&req),
            Some(json!({
                "messages": [{"role": "user", "content": "hi"}],
                "models": ["m"],
                "temperature": 0.5,
                "max_tokens": 7,
            }))
        );
        assert_eq!(
            payload(&ResponsePayload::done("x", None)),
            Some(json!({"content": "x", "finish_reason": null}))
        );
        assert_eq!(
            payload(&ResponsePayload::done("x", Some("stop"))),
            Some(json!({"content": "x", "finish_reason": "stop"}))
        );
        assert_eq!(
            payload(&ResponsePayload::partial("x")),
            Some(json!({"content": "x", "partial": true}))
        );
    }
}
