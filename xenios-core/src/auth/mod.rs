//! Authentication without HTTP types: API keys, Supabase JWTs, per-caller rate limits.
//!
//! Transports extract the raw header values and call [`Auth::authenticate`]
//! (`gate.rs`, reached through [`crate::AiBackend::auth`])
//! (API key, then the optional bearer token); the result is a typed [`Principal`] or a typed
//! [`AuthError`] whose message never says more than "missing" or "invalid" (the reason is in
//! [`AuthError::InvalidToken`]'s `detail`, for logs only).
//!
//! - [`ApiKeyVerifier`]: `X-API-Key`, compared in constant time, with the previous key
//!   accepted during a rotation.
//! - [`JwtVerifier`]: Supabase access tokens, HS256 and ES256/RS256 from the JWKS.
//! - [`SharedRateLimiter`]: requests per minute per user (or for the service), shared by
//!   every replica through Redis; [`RateLimiter`]: the in-process fallback.

mod gate;
mod jwks;
mod jwt;
mod rate_limit;
mod shared_rate_limit;
mod verified;

pub use gate::Auth;
pub use jwt::{AUDIENCE, JwtVerifier, LEEWAY_SECS, MAX_TOKEN_LEN};
pub use rate_limit::RateLimiter;
pub use shared_rate_limit::{LEASE_TTL, RETRY_REDIS_AFTER, SharedLimiterStats, SharedRateLimiter};

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ErrorKind;

/// A signed-in Supabase user, from the claims of a verified access token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserContext {
    /// `sub`: the user's UUID.
    pub user_id: String,
    /// `role`: usually `authenticated`.
    pub role: String,
    /// `email`, when present.
    pub email: Option<String>,
    /// `session_id`, when present.
    pub session_id: Option<String>,
    /// `aal`: authenticator assurance level (`aal1`/`aal2`), when present.
    pub aal: Option<String>,
    /// `is_anonymous`: anonymous sign-ins are `authenticated` too.
    pub is_anonymous: bool,
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// The backend itself (CLI, worker, startup tasks).
    System,
    /// A backend-to-backend call: valid API key, no user token.
    Service,
    /// A signed-in user, behind a valid API key.
    User(UserContext),
}

impl Principal {
    /// What kind of caller this is, as the API names it: `user`, `service` or `system`.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Principal::User(_) => "user",
            Principal::Service => "service",
            Principal::System => "system",
        }
    }

    /// The user ID, when the principal is a user.
    pub fn user_id(&self) -> Option<&str> {
        match self {
            Principal::User(u) => Some(&u.user_id),
            _ => None,
        }
    }

    /// The user, or [`AuthError::MissingToken`] when the caller is not a signed-in user
    /// (a service call without a bearer token, or the system).
    pub fn require_user(&self) -> Result<&UserContext, AuthError> {
        match self {
            Principal::User(u) => Ok(u),
            _ => Err(AuthError::MissingToken),
        }
    }

    /// Like [`require_user`](Self::require_user), and [`AuthError::Forbidden`] for an
    /// anonymous sign-in.
    pub fn require_registered_user(&self) -> Result<&UserContext, AuthError> {
        let user = self.require_user()?;
        if user.is_anonymous {
            return Err(AuthError::Forbidden(
                "this needs a registered (non-anonymous) user".to_owned(),
            ));
        }
        Ok(user)
    }
}

/// The token of an `Authorization: Bearer <token>` header value (scheme case-insensitive).
/// Any other scheme, or an empty token, is [`AuthError::InvalidToken`]: a credential that was
/// sent but cannot be used is refused, never ignored.
pub fn bearer_token(authorization: &str) -> Result<&str, AuthError> {
    let (scheme, token) =
        authorization
            .trim()
            .split_once(' ')
            .ok_or_else(|| AuthError::InvalidToken {
                detail: "Authorization is not `Bearer <token>`".to_owned(),
            })?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(AuthError::InvalidToken {
            detail: "Authorization is not `Bearer <token>`".to_owned(),
        });
    }
    Ok(token)
}

/// Why a caller was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No API key was sent.
    #[error("missing API key")]
    MissingApiKey,
    /// The API key did not match.
    #[error("invalid API key")]
    InvalidApiKey,
    /// No bearer token where one is required.
    #[error("missing bearer token")]
    MissingToken,
    /// The bearer token failed verification; the detail is for logs only.
    #[error("invalid bearer token")]
    InvalidToken {
        /// Why, for the server log; never sent to the caller.
        detail: String,
    },
    /// Authenticated, but not allowed to do this.
    #[error("forbidden: {0}")]
    Forbidden(String),
}

impl AuthError {
    /// The classification of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            AuthError::Forbidden(_) => ErrorKind::Forbidden,
            _ => ErrorKind::Unauthenticated,
        }
    }

    /// A short machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::MissingApiKey => "missing_api_key",
            AuthError::InvalidApiKey => "invalid_api_key",
            AuthError::MissingToken => "missing_token",
            AuthError::InvalidToken { .. } => "invalid_token",
            AuthError::Forbidden(_) => "forbidden",
        }
    }
}

/// Checks `X-API-Key` values against the configured key, and the previous key while one is
/// being rotated out (`XENIOS_BACKEND_API_KEY_PREVIOUS`), in constant time.
///
/// `subtle`'s slice comparison returns early on a length mismatch, which would leak the key's
/// length; comparing fixed-size SHA-256 digests removes that. Both keys are always compared,
/// so the time does not say which one matched.
#[derive(Clone)]
pub struct ApiKeyVerifier {
    digest: [u8; 32],
    previous: Option<[u8; 32]>,
    previous_uses: Arc<AtomicU64>,
    last_warned: Arc<AtomicU64>,
}

/// Least time between two warnings about uses of the previous API key.
const PREVIOUS_KEY_WARN_EVERY_SECS: u64 = 60;

impl std::fmt::Debug for ApiKeyVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKeyVerifier([REDACTED])")
    }
}

impl ApiKeyVerifier {
    /// A verifier for the given key.
    pub fn new(key: &SecretString) -> Self {
        Self::with_previous(key, None)
    }

    /// A verifier for the current key and, during a rotation, the previous one.
    pub fn with_previous(key: &SecretString, previous: Option<&SecretString>) -> Self {
        Self {
            digest: Sha256::digest(key.expose_secret().as_bytes()).into(),
            previous: previous.map(|p| Sha256::digest(p.expose_secret().as_bytes()).into()),
            previous_uses: Arc::new(AtomicU64::new(0)),
            last_warned: Arc::new(AtomicU64::new(0)),
        }
    }

    /// How many requests were accepted with the previous key.
    pub fn previous_key_uses(&self) -> u64 {
        self.previous_uses.load(Ordering::Relaxed)
    }

    /// `Ok(())` when `presented` is the configured key (or the previous one).
    pub fn verify(&self, presented: Option<&str>) -> Result<(), AuthError> {
        let presented = presented.ok_or(AuthError::MissingApiKey)?;
        if presented.is_empty() {
            return Err(AuthError::MissingApiKey);
        }
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let current = digest.ct_eq(&self.digest);
        // Compared even without a previous key (against a digest no input has), so both
        // paths cost the same.
        let previous = digest.ct_eq(&self.previous.unwrap_or([0u8; 32]))
            & subtle::Choice::from(u8::from(self.previous.is_some()));
        if bool::from(current) {
            Ok(())
        } else if bool::from(previous) {
            self.previous_used();
            Ok(())
        } else {
            Err(AuthError::InvalidApiKey)
        }
    }

    fn previous_used(&self) {
        let uses = self.previous_uses.fetch_add(1, Ordering::Relaxed) + 1;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let last = self.last_warned.load(Ordering::Relaxed);
        if now >= last + PREVIOUS_KEY_WARN_EVERY_SECS
            && self
                .last_warned
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                uses,
                "a request used XENIOS_BACKEND_API_KEY_PREVIOUS: finish the key rotation"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_key_missing_invalid_valid() {
        let v = ApiKeyVerifier::new(&SecretString::from("right-key"));
        assert_eq!(v.verify(None), Err(AuthError::MissingApiKey));
        assert_eq!(v.verify(Some("")), Err(AuthError::MissingApiKey));
        assert_eq!(v.verify(Some("wrong-key")), Err(AuthError::InvalidApiKey));
        assert_eq!(v.verify(Some("right-ke")), Err(AuthError::InvalidApiKey));
        assert_eq!(v.verify(Some("right-key")), Ok(()));
        assert_eq!(v.previous_key_uses(), 0);
    }

    #[test]
    fn the_previous_key_is_accepted_and_counted() {
        let v = ApiKeyVerifier::with_previous(
            &SecretString::from("new-key"),
            Some(&SecretString::from("old-key")),
        );
        assert_eq!(v.verify(Some("new-key")), Ok(()));
        assert_eq!(v.previous_key_uses(), 0);
        assert_eq!(v.verify(Some("old-key")), Ok(()));
        assert_eq!(v.verify(Some("old-key")), Ok(()));
        assert_eq!(v.previous_key_uses(), 2);
        assert_eq!(v.verify(Some("other")), Err(AuthError::InvalidApiKey));
        // Without a previous key, the all-zero placeholder digest matches nothing.
        let v = ApiKeyVerifier::new(&SecretString::from("k"));
        assert_eq!(v.verify(Some("x")), Err(AuthError::InvalidApiKey));
    }

    #[test]
    fn bearer_header_parsing() {
        assert_eq!(bearer_token("Bearer abc"), Ok("abc"));
        assert_eq!(bearer_token("bearer  abc "), Ok("abc"));
        for bad in ["", "Bearer", "Bearer ", "Basic abc", "abc", "Token abc"] {
            assert!(
                matches!(bearer_token(bad), Err(AuthError::InvalidToken { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn user_requirements() {
        let mut user = UserContext {
            user_id: "u".into(),
            role: "authenticated".into(),
            email: None,
            session_id: None,
            aal: None,
            is_anonymous: false,
        };
        assert!(
            Principal::User(user.clone())
                .require_registered_user()
                .is_ok()
        );
        user.is_anonymous = true;
        let anon = Principal::User(user);
        assert!(anon.require_user().is_ok());
        assert_eq!(
            anon.require_registered_user().unwrap_err().kind(),
            ErrorKind::Forbidden
        );
        assert_eq!(
            Principal::Service.require_user(),
            Err(AuthError::MissingToken)
        );
    }
}
