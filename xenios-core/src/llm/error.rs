//! How an LLM call fails: [`LlmError`] (every model of the route failed, or one refused)
//! and the typed codes a stream ends with ([`StreamErrorCode`]).

use serde::Serialize;

use super::provider::{ProviderError, ProviderErrorKind};
use super::routing::Task;

/// One model's failure within a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFailure {
    /// The model.
    pub model: String,
    /// Its last error.
    pub error: ProviderError,
    /// How many times it was tried.
    pub attempts: u32,
}

/// A call that no model could serve.
///
/// [`std::fmt::Display`] has the full text, the providers' own messages included, for logs
/// and audit rows; [`LlmError::public_message`] is what a client may see. The source is the
/// last model's error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.render(false))]
pub struct LlmError {
    /// The task of the call.
    pub task: Task,
    /// Each model's failure, in the order tried.
    pub failures: Vec<ModelFailure>,
    /// True when a non-retryable answer (400/401/402/403) stopped the call before the
    /// remaining models were tried.
    pub refused: bool,
}

impl LlmError {
    /// True when every model failed by timing out.
    pub fn is_timeout(&self) -> bool {
        !self.failures.is_empty()
            && self
                .failures
                .iter()
                .all(|f| f.error.kind == ProviderErrorKind::Timeout)
    }

    /// The message a client may see: the task, each model tried in order with the kind of its
    /// failure (HTTP status, timeout...) and its attempts, but never the provider's error
    /// body. [`std::fmt::Display`] has the full text, for logs and audit rows.
    pub fn public_message(&self) -> String {
        self.render(true)
    }

    /// The code a stream ends with when this error stops it before its first token.
    pub fn stream_code(&self) -> StreamErrorCode {
        if self.refused {
            StreamErrorCode::UpstreamRefused
        } else if self.is_timeout() {
            StreamErrorCode::UpstreamTimeout
        } else {
            StreamErrorCode::AllModelsFailed
        }
    }

    fn render(&self, public: bool) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        if self.refused {
            let _ = write!(
                out,
                "the upstream refused the {} request (not retried, no fallback): ",
                self.task
            );
        } else {
            let _ = write!(out, "all models failed for task {}: ", self.task);
        }
        for (i, fail) in self.failures.iter().enumerate() {
            if i > 0 {
                out.push_str("; ");
            }
            let error = if public {
                fail.error.public_summary()
            } else {
                fail.error.to_string()
            };
            let _ = write!(
                out,
                "{}) {}: {} ({} attempt{})",
                i + 1,
                fail.model,
                error,
                fail.attempts,
                if fail.attempts == 1 { "" } else { "s" }
            );
        }
        out
    }
}

/// The earlier models' failures of a call that succeeded, for its audit row.
pub(crate) fn failures_text(task: Task, failures: Vec<ModelFailure>) -> Option<String> {
    (!failures.is_empty()).then(|| {
        LlmError {
            task,
            failures,
            refused: false,
        }
        .to_string()
    })
}

/// Why a stream ended with an error event ([`super::StreamEvent::Error`]); serialized as
/// its snake_case name (`upstream_timeout`...), the `code` clients read.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    strum::AsRefStr,
    strum::Display,
    strum::EnumString,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
#[non_exhaustive]
pub enum StreamErrorCode {
    /// The model did not finish (or start) within the configured time.
    UpstreamTimeout,
    /// The stream broke, or carried an error chunk, after its first token.
    UpstreamStreamFailed,
    /// Every model of the route failed before a first token.
    AllModelsFailed,
    /// The upstream refused the request (400/401/402/403): not retried, no fallback.
    UpstreamRefused,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_codes_keep_their_wire_names() {
        for (code, name) in [
            (StreamErrorCode::UpstreamTimeout, "upstream_timeout"),
            (
                StreamErrorCode::UpstreamStreamFailed,
                "upstream_stream_failed",
            ),
            (StreamErrorCode::AllModelsFailed, "all_models_failed"),
            (StreamErrorCode::UpstreamRefused, "upstream_refused"),
        ] {
            assert_eq!(code.as_ref(), name);
            assert_eq!(code.to_string(), name);
            assert_eq!(
                serde_json::to_value(code).ok(),
                Some(serde_json::json!(name))
            );
            assert_eq!(name.parse::<StreamErrorCode>().ok(), Some(code));
        }
    }
}
