//! Authentication without HTTP types: API keys and (later) Supabase JWTs.
//!
//! Transports extract the raw header values and call [`ApiKeyVerifier::verify`]; the result
//! is a typed [`Principal`] or a typed [`AuthError`] whose message never says more than
//! "missing" or "invalid".

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
    /// The user ID, when the principal is a user.
    pub fn user_id(&self) -> Option<&str> {
        match self {
            Principal::User(u) => Some(&u.user_id),
            _ => None,
        }
    }
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

/// Checks `X-API-Key` values against the configured key in constant time.
///
/// `subtle`'s slice comparison returns early on a length mismatch, which would leak the key's
/// length; comparing fixed-size SHA-256 digests removes that.
#[derive(Clone)]
pub struct ApiKeyVerifier {
    digest: [u8; 32],
}

impl std::fmt::Debug for ApiKeyVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKeyVerifier([REDACTED])")
    }
}

impl ApiKeyVerifier {
    /// A verifier for the given key.
    pub fn new(key: &SecretString) -> Self {
        Self {
            digest: Sha256::digest(key.expose_secret().as_bytes()).into(),
        }
    }

    /// `Ok(())` when `presented` is the configured key.
    pub fn verify(&self, presented: Option<&str>) -> Result<(), AuthError> {
        let presented = presented.ok_or(AuthError::MissingApiKey)?;
        if presented.is_empty() {
            return Err(AuthError::MissingApiKey);
        }
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        if bool::from(digest.ct_eq(&self.digest)) {
            Ok(())
        } else {
            Err(AuthError::InvalidApiKey)
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
    }
}
