//! Request context: who is calling and under which correlation ID.
//!
//! The context is a core type, not a server detail, because the correlation ID must travel
//! from the HTTP request into enqueued jobs and outgoing LLM calls, and the principal decides
//! rate limits and audit rows. Transports build one per request and pass it to every
//! [`crate::AiBackend`] call that does work on a caller's behalf.

use std::fmt;

use crate::auth::{AuthError, Principal, UserContext};

/// Longest correlation ID accepted from a caller.
pub const MAX_CORRELATION_ID_LEN: usize = 128;

/// An ID that ties together every log line, job and upstream call of one request.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CorrelationId(String);

impl CorrelationId {
    /// A new random ID (UUID v4, hyphenated).
    pub fn generate() -> Self {
        Self(uuid::Uuid::new_v4().to_string())
    }

    /// Accepts a caller's ID when it is sane: 1 to 128 characters of `[A-Za-z0-9._:-]`.
    /// Anything else (too long, spaces, control characters that could forge log lines) is
    /// refused and the caller should [`generate`](Self::generate) one instead.
    pub fn parse(raw: &str) -> Option<Self> {
        let raw = raw.trim();
        let sane = !raw.is_empty()
            && raw.len() <= MAX_CORRELATION_ID_LEN
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
        sane.then(|| Self(raw.to_owned()))
    }

    /// The first sane candidate, or a generated ID.
    pub fn from_candidates<'a>(candidates: impl IntoIterator<Item = Option<&'a str>>) -> Self {
        candidates
            .into_iter()
            .flatten()
            .find_map(Self::parse)
            .unwrap_or_else(Self::generate)
    }

    /// The ID as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CorrelationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for CorrelationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CorrelationId({})", self.0)
    }
}

/// Everything core needs to know about the caller of one operation.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// The correlation ID of the request (or job, or CLI invocation).
    pub correlation_id: CorrelationId,
    /// Who is calling.
    pub principal: Principal,
}

impl RequestContext {
    /// A context for work the backend does on its own behalf (CLI, worker, startup).
    pub fn system() -> Self {
        Self {
            correlation_id: CorrelationId::generate(),
            principal: Principal::System,
        }
    }

    /// A context with the given correlation ID and principal.
    pub fn new(correlation_id: CorrelationId, principal: Principal) -> Self {
        Self {
            correlation_id,
            principal,
        }
    }

    /// The user ID, when the caller is a signed-in user.
    pub fn user_id(&self) -> Option<&str> {
        self.principal.user_id()
    }

    /// The signed-in user, or [`AuthError::MissingToken`] (401) for service and system calls.
    pub fn require_user(&self) -> Result<&UserContext, AuthError> {
        self.principal.require_user()
    }

    /// The signed-in, non-anonymous user: 401 without one, [`AuthError::Forbidden`] (403)
    /// for an anonymous sign-in.
    pub fn require_registered_user(&self) -> Result<&UserContext, AuthError> {
        self.principal.require_registered_user()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_sane_ids_and_refuses_the_rest() {
        assert_eq!(
            CorrelationId::parse(" req-42_a.b:c ").unwrap().as_str(),
            "req-42_a.b:c"
        );
        for bad in [
            "",
            "   ",
            "has space",
            "line\nbreak",
            "quote\"",
            "é",
            &"x".repeat(129),
        ] {
            assert!(CorrelationId::parse(bad).is_none(), "{bad:?} accepted");
        }
        assert!(CorrelationId::parse(&"x".repeat(128)).is_some());
    }

    #[test]
    fn falls_back_to_a_generated_uuid() {
        let id = CorrelationId::from_candidates([None, Some("bad id"), None]);
        assert!(uuid::Uuid::parse_str(id.as_str()).is_ok());
        let id = CorrelationId::from_candidates([Some("bad id"), Some("good-id")]);
        assert_eq!(id.as_str(), "good-id");
    }
}
